"""`python -m bench.login_flood`: other calls' latency while bad logins pour in.

Starts `upf run` (the embedded auth plugin with its default argon2id cost, the demo plugin), signs
the demo user in, and measures gRPC-Web `upf.demo.v1.Echo/Say` calls with that token from
--clients concurrent clients: first alone (the baseline), then while --logins wrong-password
logins for `demo` arrive from --addresses client addresses (X-Forwarded-For, loopback trusted as
the proxy), --rate a second; that phase is measured for as long as the logins take. Prints p50 /
p99 / failures per phase and what the logins got (401: a password was checked; 429: refused before
any hash, by the per-address or per-user limit or the plugin's bound on checks at once).
Target (issue 18): p99 under the flood <= 2 x baseline.

    python -m bench.login_flood [--logins 1000] [--addresses 4] [--rate 100] [--duration 10] [--clients 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import yaml
from upf.demo.v1 import demo_pb2

from bench.harness import HOST, Server, free_port, log

ROOT = Path(__file__).resolve().parents[1]
SAY = "/api/upf.demo.v1.Echo/Say"
BODY = b"\0" + len(demo_pb2.SayRequest(text="hi").SerializeToString()).to_bytes(4, "big")
BODY += demo_pb2.SayRequest(text="hi").SerializeToString()


async def measure(
    url: str, token: str, clients: int, seconds: float, until: asyncio.Future[Any] | None = None
) -> dict[str, Any]:
    """Echo/Say calls for `seconds`, or until `until` is done."""
    latencies: list[float] = []
    failures = 0
    stop = time.monotonic() + seconds
    headers = {"content-type": "application/grpc-web+proto", "authorization": f"Bearer {token}"}

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal failures
        while (time.monotonic() < stop) if until is None else not until.done():
            started = time.perf_counter()
            try:
                answer = await http.post(SAY, content=BODY, headers=headers)
                ok = (
                    answer.status_code == 200
                    and b"grpc-status: 0" in answer.content + answer.headers.get("grpc-status", "").encode()
                )
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                failures += 1

    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")

    return {"calls": len(latencies), "failures": failures, "p50_ms": pct(0.50), "p99_ms": pct(0.99)}


async def flood(url: str, logins: int, addresses: int, rate: float) -> tuple[Counter[int], float]:
    """`logins` wrong-password logins, `rate` a second (each sent on time, whatever the answers take)."""
    answers: Counter[int] = Counter()
    started = time.monotonic()

    async def one(http: httpx.AsyncClient, i: int) -> None:
        await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
        address = f"198.51.100.{i % addresses + 1}"
        try:
            answer = await http.post(
                "/api/auth/login",
                json={"username": "demo", "password": f"guess-{i}"},
                headers={"x-forwarded-for": address},
            )
            answers[answer.status_code] += 1
        except httpx.HTTPError:
            answers[0] += 1

    limits = httpx.Limits(max_connections=64)  # a few clients behind a few addresses, as an attacker would be
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        await asyncio.gather(*(one(http, i) for i in range(logins)))
    return answers, time.monotonic() - started


async def under_flood(url: str, token: str, args: argparse.Namespace) -> tuple[dict[str, Any], Counter[int], float]:
    """The flood from a process of its own (its work must not slow the measuring client), measured meanwhile."""
    argv = [sys.executable, "-m", "bench.login_flood", "--flooder", url, "--logins", str(args.logins)]
    argv += ["--addresses", str(args.addresses), "--rate", str(args.rate)]
    flooder = await asyncio.create_subprocess_exec(*argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    try:
        output = asyncio.ensure_future(flooder.communicate())
        measured = await measure(url, token, args.clients, 0, until=output)
        out, _ = await output
    finally:
        if flooder.returncode is None:
            flooder.kill()
            await flooder.wait()
    result = json.loads(out)
    return measured, Counter({int(status): count for status, count in result["answers"].items()}), result["took"]


def run(args: argparse.Namespace) -> int:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="upf-login-flood-") as tmp:
        work = Path(tmp)
        config = {
            "httpPort": port,
            "grpcPort": 0,
            "registryUrl": f"{HOST}:{free_port()}",
            "logLevel": "warning",
            "accessLog": False,
            "shell": {"enabled": False},
            "rateLimiting": {"trustedProxies": ["127.0.0.1/32"]},
        }
        (work / "run.yaml").write_text(yaml.safe_dump(config))
        upf = str(Path(sys.executable).parent / "upf")
        platform = Server(
            "upf run", [upf, "run", "--config", str(work / "run.yaml")], [port], work / "run.log",
            ready_url=f"http://{HOST}:{port}/readyz",
        )  # fmt: skip
        url = f"http://{HOST}:{port}"
        try:
            platform.start(ROOT)
            platform.wait_ready(120)
            token = _sign_in(url)
            asyncio.run(measure(url, token, args.clients, 2))  # warm-up
            baseline = asyncio.run(measure(url, token, args.clients, args.duration))
            log("baseline:", baseline)
            attacked, answers, took = asyncio.run(under_flood(url, token, args))
            log("under the flood:", attacked, dict(answers))
        finally:
            platform.stop()
    ratio = attacked["p99_ms"] / baseline["p99_ms"]
    print("| phase | calls | failed | p50 ms | p99 ms |\n| --- | ---: | ---: | ---: | ---: |")
    for name, phase in (("baseline", baseline), (f"{args.logins} bad logins", attacked)):
        print(f"| {name} | {phase['calls']} | {phase['failures']} | {phase['p50_ms']:.2f} | {phase['p99_ms']:.2f} |")
    print(f"\np99 under the flood / baseline: {ratio:.2f} (target <= 2)")
    print(f"logins: {dict(sorted(answers.items()))} (HTTP status: count) in {took:.1f} s")
    return 0 if ratio <= 2 and attacked["failures"] == 0 else 1


def _sign_in(url: str) -> str:
    deadline = time.monotonic() + 60
    while True:
        answer = httpx.post(
            f"{url}/api/auth/login",
            json={"username": "demo", "password": "demo-password"},
            headers={"x-forwarded-for": "192.0.2.1"},
            timeout=30,
        )
        if answer.status_code == 200:
            return str(answer.json()["accessToken"])
        if time.monotonic() > deadline:
            raise RuntimeError(f"could not sign the demo user in: {answer.status_code} {answer.text}")
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logins", type=int, default=1000, help="wrong-password logins sent")
    parser.add_argument("--addresses", type=int, default=4, help="client addresses they come from")
    parser.add_argument("--rate", type=float, default=100.0, help="logins sent a second (1000 at 100/s: 10 s)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds the baseline is measured")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients calling Echo/Say")
    parser.add_argument("--flooder", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flooder is not None:
        answers, took = asyncio.run(flood(args.flooder, args.logins, args.addresses, args.rate))
        print(json.dumps({"answers": answers, "took": took}))
        return
    raise SystemExit(run(args))


if __name__ == "__main__":
    main()
