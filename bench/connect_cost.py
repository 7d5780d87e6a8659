"""`python -m bench.connect_cost`: the gateway's CPU per call for the same unary call as gRPC-Web,
Connect JSON and Connect binary, measured in one run against one gateway and one backend.

    python -m bench.connect_cost [--seconds 5] [--rounds 3] [--conns 16] [--size 100]

Starts on 127.0.0.1 the bench backend (bench.v1.Echo, with reflection) and `upf gateway` with it as a
static upstream; wrk (one thread, HTTP/1.1 keep-alive) drives each protocol in turn, round after round
(so that drift on a shared machine hits all three alike). Gateway CPU per call is the gateway
process's user + system time over the run (/proc) divided by the calls wrk completed; the table shows
each protocol's median over the rounds and its ratio to gRPC-Web. Target (issue 16): JSON at most
1.5x the gateway CPU of gRPC-Web per call.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import struct
import sys
import tempfile
from pathlib import Path

from bench import harness, wire

HOST = "127.0.0.1"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def bodies(size: int, run_dir: Path) -> dict[str, tuple[Path, Path, dict[str, str]]]:
    """Per protocol: the request body file, the wrk script, and the script's environment."""
    message = b"\x0a" + _varint(size) + b"x" * size  # bench.v1.Msg{payload: size bytes}
    files = {
        "gRPC-Web": (struct.pack(">BI", 0, len(message)) + message, HERE / "grpcweb.lua", {}),
        "Connect JSON": (
            json.dumps({"payload": base64.b64encode(b"x" * size).decode()}).encode(),
            HERE / "post.lua",
            {"CONTENT_TYPE": "application/json"},
        ),
        "Connect binary": (message, HERE / "post.lua", {"CONTENT_TYPE": "application/proto"}),
    }
    out = {}
    for name, (body, script, env) in files.items():
        path = run_dir / f"body-{name.replace(' ', '-')}.bin"
        path.write_bytes(body)
        out[name] = (path, script, env)
    return out


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.connect_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="each wrk run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the three protocols (default 3)")
    parser.add_argument("--conns", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--size", type=int, default=100, help="payload bytes (default 100)")
    args = parser.parse_args()
    harness.find_tool("wrk", "apt-get install wrk")
    with tempfile.TemporaryDirectory(prefix="upf-bench-connect-") as tmp:
        run_dir = Path(tmp)
        gen_dir = run_dir / "gen"
        wire.generate(gen_dir)
        backend_port, http_port, grpc_port = harness.free_port(), harness.free_port(), harness.free_port()
        backend = harness.Server(
            "backend",
            [sys.executable, "-m", "bench.backend", "--address", f"{HOST}:{backend_port}", "--gen-dir", str(gen_dir)],
            [backend_port],
            run_dir / "backend.log",
        )
        config = run_dir / "gateway.yaml"
        config.write_text(
            f"host: {HOST}\nhttpPort: {http_port}\ngrpcPort: {grpc_port}\nlogLevel: warning\naccessLog: false\n"
            f'upstreams:\n  {wire.SERVICE}: ["{HOST}:{backend_port}"]\n'
        )
        gateway = harness.Server(
            "gateway",
            [harness.find_tool("upf", "run `make install`"), "gateway", "--config", str(config)],
            [http_port],
            run_dir / "gateway.log",
            ready_url=f"http://{HOST}:{http_port}/readyz",
        )
        url = f"http://{HOST}:{http_port}{wire.UNARY}"
        per_call: dict[str, list[float]] = {}
        p50: dict[str, list[float]] = {}
        try:
            backend.start(ROOT)
            backend.wait_ready()
            gateway.start(ROOT)
            gateway.wait_ready()
            kinds = bodies(args.size, run_dir)
            for body, script, env in kinds.values():  # warm-up: descriptors fetched, caches filled
                harness.wrk(url, body, conns=2, seconds=1, script=script, script_env=env)
            for round_ in range(args.rounds):
                for name, (body, script, env) in kinds.items():
                    before = harness.cpu_seconds(gateway.pids())
                    _run, stats = harness.wrk(
                        url, body, conns=args.conns, seconds=args.seconds, script=script, script_env=env
                    )
                    used = harness.cpu_seconds(gateway.pids()) - before
                    if stats.errors or not stats.requests:
                        raise SystemExit(f"{name}: {stats.errors} errors ({stats.error_detail})")
                    per_call.setdefault(name, []).append(used / stats.requests * 1e6)
                    p50.setdefault(name, []).append(stats.p50_ms)
                    harness.log(f"round {round_ + 1} {name}: {per_call[name][-1]:.1f} us/call, {stats.requests} calls")
        finally:
            gateway.stop()
            backend.stop()
    base = statistics.median(per_call["gRPC-Web"])
    print(f"\nUnary {args.size} B, wrk -c{args.conns}, {args.rounds} rounds of {args.seconds:g} s (medians)\n")
    print("| protocol | gateway CPU per call | vs gRPC-Web | p50 |")
    print("| --- | ---: | ---: | ---: |")
    for name, values in per_call.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} us | {median / base:.2f}x | {statistics.median(p50[name]):.2f} ms |")


if __name__ == "__main__":
    main()
