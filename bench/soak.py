"""`python -m bench.soak`: a long run of mixed traffic at 80% of the capacity measured at its start.

Starts `upf run` on 127.0.0.1 (registry, auth, the demo plugin and the gateway in one process) with
auth on (the demo user's JWT on every call), rate limiting on Redis (127.0.0.1:6379, a key prefix
of the run's own, limits far above the offered load so that every call is decided and none is
refused; the keys are deleted at the end), circuit breakers and retries on (the defaults) and live
events on. Then, from this one client process:

  1. capacity: --concurrency closed-loop clients run the mix below for --capacity-seconds (after a
     short warm-up); the calls completed a second are the capacity of this machine as it is now,
     load generator included.
  2. soak: the same mix, open-loop at --load x capacity for --minutes. Each call starts at its
     scheduled time whatever the earlier ones are doing, and its latency counts from that time, so
     a stall shows up in the latency instead of slowing the offered load (no coordinated omission).

The mix, in a fixed cycle of 10 arrivals: 6 gRPC-Web unary upf.demo.v1.Echo/Say, 2 gRPC-Web
server streams Echo/Count (5 messages), 1 grpc-websockets Echo/Say (a socket per call) and 1 event
published (POST /api/events/soak.<run>) that --subscribers /api/events WebSockets, open for the
whole run, must each receive. Every answer is checked (status, messages, grpc-status 0).

Every --window seconds it samples the platform process's RSS (/proc/PID/status VmRSS) and open
file descriptors (/proc/PID/fd), and prints p50 / p99 per window. Verdict, PASS or FAIL each:
no errors (any error is listed by kind), and RSS and descriptors flat after the warm-up (the first
minute): the median of the last minute's samples at most 5% above the median of the minute after
the warm-up (short runs: the warm-up is a third of the run, the two spans halves of the rest).
Exits 1 on any FAIL. Every process started is stopped by its PID.

    .venv/bin/python -m bench.soak                      # 10 minutes (+ about 40 s to start and measure)
    .venv/bin/python -m bench.soak --minutes 1          # a short try
    .venv/bin/python -m bench.soak --minutes 0.1 --capacity-seconds 2 --rate 50   # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
import uvloop
import yaml
from upf.demo.v1 import demo_pb2
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.typing import Subprotocol

from bench import harness
from bench.harness import HOST, Server, free_port, log
from bench.wire import TRAILER_FLAG, CheckFailed, frame, parse_frames

ROOT = Path(__file__).resolve().parents[1]
REDIS_URL = "redis://127.0.0.1:6379/0"
SAY = "/api/upf.demo.v1.Echo/Say"
COUNT = "/api/upf.demo.v1.Echo/Count"
COUNT_MESSAGES = 5
SAY_BODY = frame(demo_pb2.SayRequest(text="soak").SerializeToString())
COUNT_BODY = frame(demo_pb2.CountRequest(count=COUNT_MESSAGES).SerializeToString())
# The order arrivals take, over and over: 60% unary, 20% server streams, 10% grpc-websockets, 10% events.
CYCLE = ("unary", "stream", "unary", "grpcws", "unary", "stream", "unary", "publish", "unary", "unary")
CALL_TIMEOUT = 10.0
GROWTH_LIMIT = 0.05


class Failed(Exception):
    """A call whose answer was not what a client expects; the message is the error's kind."""


# --- the calls ------------------------------------------------------------------------------------


def grpc_status(trailer: bytes) -> str:
    for line in trailer.decode("latin-1").split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() == "grpc-status":
            return value.strip()
    return "none"


def check_frames(body: bytes, messages: int, header_frame: bool = False) -> list[bytes]:
    """The data frames of a gRPC-Web body (or a grpc-websockets stream, which starts with a header
    frame) that ends with a trailer frame holding grpc-status 0; `messages` of them."""
    try:
        frames = parse_frames(body)
    except CheckFailed as exc:
        raise Failed(f"malformed frames: {exc}") from None
    if header_frame:
        if not frames or not frames[0][0] & TRAILER_FLAG:
            raise Failed("no header frame")
        frames = frames[1:]
    if not frames or not frames[-1][0] & TRAILER_FLAG:
        raise Failed("no trailer frame")
    status = grpc_status(frames[-1][1])
    if status != "0":
        raise Failed(f"grpc-status {status}")
    data = [payload for flags, payload in frames[:-1] if not flags & TRAILER_FLAG]
    if len(data) != messages:
        raise Failed(f"{len(data)} messages instead of {messages}")
    return data


class Connection:
    """One keep-alive HTTP/1.1 connection, a request at a time. Much cheaper per call than a general
    client: the load generator shares the machine's cores with the platform it measures."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, head: bytes, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        try:
            writer.write(b"POST %s HTTP/1.1\r\n%scontent-length: %d\r\n\r\n%s" % (path.encode(), head, len(body), body))
            lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            if headers.get("transfer-encoding") == "chunked":
                content = bytearray()
                while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                    content += (await reader.readexactly(size + 2))[:-2]
                await reader.readuntil(b"\r\n")  # the end of the (empty) trailer section
            else:
                content = bytearray(await reader.readexactly(int(headers.get("content-length", "0"))))
        except BaseException:
            self.close()  # a half-read answer leaves the connection unusable
            raise
        if headers.get("connection") == "close":
            self.close()
        return status, headers, bytes(content)

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


class Client:
    """The calls of the mix, with the demo user's token; the HTTP ones on the connection given."""

    def __init__(self, url: str, token: str, topic: str) -> None:
        self.url = url
        self.token = token
        self.topic = topic
        self.host, _, port = url.removeprefix("http://").rpartition(":")
        self.port = int(port)
        host = f"host: {self.host}:{self.port}\r\n"
        self.grpc_web_head = (
            f"{host}content-type: application/grpc-web+proto\r\nx-grpc-web: 1\r\nauthorization: Bearer {token}\r\n"
        ).encode()
        self.publish_head = f"{host}content-type: application/json\r\nauthorization: Bearer {token}\r\n".encode()
        self.ws_header_block = (
            f"content-type: application/grpc-web+proto\r\nx-grpc-web: 1\r\nauthorization: Bearer {token}\r\n"
        ).encode()
        self.published: dict[str, float] = {}  # event id -> when its publish was answered

    def connection(self) -> Connection:
        return Connection(self.host, self.port)

    async def grpc_web(self, conn: Connection, path: str, body: bytes) -> bytes:
        status, headers, content = await conn.post(path, self.grpc_web_head, body)
        if status != 200:
            raise Failed(f"HTTP {status}")
        if "grpc-status" in headers and headers["grpc-status"] != "0":
            raise Failed(f"grpc-status {headers['grpc-status']}")  # trailers-only
        return content

    async def unary(self, conn: Connection) -> None:
        (reply,) = check_frames(await self.grpc_web(conn, SAY, SAY_BODY), 1)
        if demo_pb2.SayResponse.FromString(reply).text != "echo: soak":
            raise Failed("wrong Say reply")

    async def stream(self, conn: Connection) -> None:
        replies = check_frames(await self.grpc_web(conn, COUNT, COUNT_BODY), COUNT_MESSAGES)
        if [demo_pb2.CountResponse.FromString(r).n for r in replies] != list(range(1, COUNT_MESSAGES + 1)):
            raise Failed("wrong Count replies")

    async def grpcws(self, conn: Connection) -> None:
        """A socket of its own per call, as the protocol has it (`conn` is not used)."""
        received = bytearray()
        async with connect(
            self.url.replace("http://", "ws://") + SAY,
            subprotocols=[Subprotocol("grpc-websockets")],
            compression=None,
            proxy=None,
            open_timeout=CALL_TIMEOUT,
        ) as ws:
            await ws.send(self.ws_header_block)
            await ws.send(b"\x00" + SAY_BODY)
            await ws.send(b"\x01")  # half-close
            with contextlib.suppress(ConnectionClosed):
                async for message in ws:
                    if not isinstance(message, bytes):
                        raise Failed("grpc-websockets: a text message")
                    received += message
        if ws.close_code != 1000:
            raise Failed(f"grpc-websockets close {ws.close_code}")
        (reply,) = check_frames(bytes(received), 1, header_frame=True)
        if demo_pb2.SayResponse.FromString(reply).text != "echo: soak":
            raise Failed("wrong Say reply (grpc-websockets)")

    async def publish(self, conn: Connection) -> None:
        status, _, content = await conn.post(f"/api/events/{self.topic}", self.publish_head, b'{"soak": true}')
        if status != 200:
            raise Failed(f"publish: HTTP {status}")
        self.published[str(json.loads(content)["id"])] = time.monotonic()

    def call(self, kind: str, conn: Connection) -> Awaitable[None]:
        calls: dict[str, Callable[[Connection], Awaitable[None]]] = {
            "unary": self.unary,
            "stream": self.stream,
            "grpcws": self.grpcws,
            "publish": self.publish,
        }
        return calls[kind](conn)


class Subscriber:
    """One /api/events socket for the whole run: the ids of the events it received."""

    def __init__(self, url: str, token: str, topic: str, record: Callable[[str], None]) -> None:
        self.url = f"{url.replace('http://', 'ws://')}/api/events?topics={topic}"
        self.token = token
        self.record = record
        self.received: set[str] = set()
        self.arrived = asyncio.Event()
        self.ws: ClientConnection | None = None
        self.task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self.ws = await connect(
            self.url, additional_headers={"authorization": f"Bearer {self.token}"}, proxy=None, open_timeout=30
        )
        first = json.loads(await self.ws.recv())
        if first["type"] != "subscribed":
            raise RuntimeError(f"the events socket answered {first}")
        self.task = asyncio.ensure_future(self.read())

    async def read(self) -> None:
        assert self.ws is not None
        try:
            async for text in self.ws:
                message = json.loads(text)
                if message["type"] == "event":
                    self.received.add(message["id"])
                    self.arrived.set()
                elif message["type"] != "heartbeat":
                    self.record(f"events socket: {message['type']} {message.get('code', '')}".strip())
        except ConnectionClosed:
            pass
        self.record(f"events socket closed ({self.ws.close_code})")

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.ws is not None:
            await self.ws.close()


# --- measuring ------------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float  # seconds since the soak began
    rss_kib: int
    fds: int
    load1: float


@dataclass
class Recorder:
    """Latencies (ms) and errors per window of the scheduled start times."""

    window: float
    started: float = field(default_factory=time.monotonic)
    latencies: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    offered: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    errors_in: Counter[int] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    by_kind: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def slot(self, at: float) -> int:
        return int((at - self.started) // self.window)

    async def run(self, kind: str, scheduled: float, call: Awaitable[None]) -> None:
        self.offered[self.slot(scheduled)] += 1
        self.kinds[kind] += 1
        try:
            await asyncio.wait_for(call, CALL_TIMEOUT)
        except Failed as exc:
            self.error(f"{kind}: {exc}", scheduled)
        except TimeoutError:
            self.error(f"{kind}: no answer within {CALL_TIMEOUT:g} s", scheduled)
        except (WebSocketException, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.error(f"{kind}: {type(exc).__name__}", scheduled)
        else:
            took = (time.monotonic() - scheduled) * 1000
            self.latencies[self.slot(scheduled)].append(took)
            self.by_kind[kind].append(took)

    def error(self, kind: str, at: float | None = None) -> None:
        self.errors[kind] += 1
        self.errors_in[self.slot(time.monotonic() if at is None else at)] += 1


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def kind_latencies(recorder: Recorder) -> str:
    return ", ".join(
        f"{kind} p50 {pct(values, 0.5):.2f} / p99 {pct(values, 0.99):.2f} ms"
        for kind, values in sorted(recorder.by_kind.items())
    )


def read_proc(pid: int) -> tuple[int, int]:
    """VmRSS in KiB and the number of open file descriptors of `pid`."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


async def sample_every(pid: int, recorder: Recorder, samples: list[Sample], until: float) -> None:
    # Just before each window's end: the last one while the load still runs (its connections still open).
    next_at = recorder.started + recorder.window - min(1.0, recorder.window / 4)
    while next_at < until:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        rss, fds = read_proc(pid)
        samples.append(Sample(time.monotonic() - recorder.started, rss, fds, os.getloadavg()[0]))
        window = recorder.slot(time.monotonic())
        if window >= 0:
            done = recorder.latencies.get(window, [])  # the window so far
            log(
                f"  {samples[-1].t:6.0f} s  RSS {rss / 1024:7.1f} MiB  fds {fds:4d}  "
                f"p50 {pct(done, 0.5):7.2f} ms  p99 {pct(done, 0.99):7.2f} ms  errors {sum(recorder.errors.values())}"
            )
        next_at += recorder.window


async def capacity(client: Client, concurrency: int, seconds: float) -> tuple[float, Recorder]:
    """Calls completed a second by `concurrency` closed-loop clients running the mix, after a warm-up."""
    for warm_up in (True, False):
        recorder = Recorder(window=seconds)
        stop = time.monotonic() + (min(2.0, seconds) if warm_up else seconds)

        async def loop(offset: int, recorder: Recorder = recorder, stop: float = stop) -> None:
            n, conn = offset, client.connection()
            while time.monotonic() < stop:
                kind = CYCLE[n % len(CYCLE)]
                await recorder.run(kind, time.monotonic(), client.call(kind, conn))
                n += 1
            conn.close()

        await asyncio.gather(*(loop(i) for i in range(concurrency)))
    done = sum(len(v) for v in recorder.latencies.values())
    return done / seconds, recorder


async def open_loop(client: Client, rate: float, seconds: float, recorder: Recorder, connections: int) -> int:
    """Arrivals every 1/rate s from recorder.started, each due at its time whatever the others do: the
    HTTP calls queue for `connections` keep-alive connections (the wait counts in their latency), a
    grpc-websockets call opens its socket at once."""
    queue: asyncio.Queue[tuple[str, float] | None] = asyncio.Queue()

    async def worker() -> None:
        conn = client.connection()
        while (job := await queue.get()) is not None:
            kind, scheduled = job
            if time.monotonic() - scheduled > CALL_TIMEOUT:
                recorder.offered[recorder.slot(scheduled)] += 1
                recorder.error(f"{kind}: not started within {CALL_TIMEOUT:g} s", scheduled)
                continue
            await recorder.run(kind, scheduled, client.call(kind, conn))
        conn.close()

    workers = [asyncio.ensure_future(worker()) for _ in range(connections)]
    sockets: set[asyncio.Task[None]] = set()
    n, total = 0, int(rate * seconds)
    while n < total:
        now = time.monotonic()
        while n < total and recorder.started + n / rate <= now:
            kind, scheduled = CYCLE[n % len(CYCLE)], recorder.started + n / rate
            if kind == "grpcws":
                task = asyncio.ensure_future(recorder.run(kind, scheduled, client.call(kind, client.connection())))
                sockets.add(task)
                task.add_done_callback(sockets.discard)
            else:
                queue.put_nowait((kind, scheduled))
            n += 1
        await asyncio.sleep(max(0.0, recorder.started + n / rate - time.monotonic()))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers, *sockets)
    return n


@dataclass
class Result:
    capacity: float
    capacity_p50: float
    capacity_p99: float
    rate: float
    arrivals: int
    recorder: Recorder
    samples: list[Sample]
    events_published: int
    events_expected: int
    limiter_decisions: float
    cpu_cores: dict[str, float]  # over the soak: the platform, this load generator, the whole machine


async def soak(url: str, token: str, pid: int, args: argparse.Namespace, topic: str) -> Result:
    client = Client(url, token, topic)
    recorder = Recorder(window=args.window)
    subscribers = [Subscriber(url, token, topic, recorder.error) for _ in range(args.subscribers)]
    try:
        for subscriber in subscribers:
            await subscriber.open()
        if args.rate:
            measured, cap = args.rate / args.load, Recorder(window=1)
        else:
            log(f"capacity: {args.concurrency} closed-loop clients for {args.capacity_seconds:g} s")
            measured, cap = await capacity(client, args.concurrency, args.capacity_seconds)
            log("  " + kind_latencies(cap))
            for kind, count in cap.errors.items():
                recorder.errors[f"(capacity) {kind}"] += count
        rate = args.rate or measured * args.load
        seconds = args.minutes * 60
        log(f"capacity {measured:,.0f} calls/s; soak at {rate:,.0f} calls/s for {seconds:g} s")
        recorder.started = time.monotonic()
        cpu_before = (harness.cpu_seconds([pid]), own_cpu_seconds(), harness.machine_busy_seconds())
        samples: list[Sample] = []
        sampler = asyncio.ensure_future(sample_every(pid, recorder, samples, recorder.started + seconds))
        arrivals = await open_loop(client, rate, seconds, recorder, args.connections)
        await sampler
        took = time.monotonic() - recorder.started
        cpu_after = (harness.cpu_seconds([pid]), own_cpu_seconds(), harness.machine_busy_seconds())
        cores = [(after - before) / took for before, after in zip(cpu_before, cpu_after, strict=True)]
        # Every event published must reach every subscriber; the last ones may still be on their way.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                for subscriber in subscribers:
                    while client.published.keys() - subscriber.received:
                        subscriber.arrived.clear()
                        await subscriber.arrived.wait()
        for subscriber in subscribers:
            missing = len(client.published.keys() - subscriber.received)
            if missing:
                recorder.errors["events: not delivered to a subscriber"] += missing
    finally:
        for subscriber in subscribers:
            await subscriber.close()
    everything = [v for values in cap.latencies.values() for v in values]
    return Result(
        capacity=measured,
        capacity_p50=pct(everything, 0.5),
        capacity_p99=pct(everything, 0.99),
        rate=rate,
        arrivals=arrivals,
        recorder=recorder,
        samples=samples,
        events_published=len(client.published),
        events_expected=len(client.published) * len(subscribers),
        limiter_decisions=decisions(url),
        cpu_cores=dict(zip(("platform", "generator", "machine"), cores, strict=True)),
    )


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def decisions(url: str) -> float:
    """Rate-limit decisions the gateway counted (its /metrics): proof that every call went through the limiter."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("upf_ratelimit_decisions_total{")
    )


# --- the verdict ----------------------------------------------------------------------------------


def spans(seconds: float) -> tuple[float, float]:
    """(warm-up end, span compared at each end): a minute each, or thirds of a short run."""
    if seconds >= 180:
        return 60.0, 60.0
    return seconds / 3, seconds / 3


def growth(samples: list[Sample], seconds: float, value: Callable[[Sample], float]) -> tuple[float, float, float]:
    """(median just after the warm-up, median at the end, growth as a fraction)."""
    warm, span = spans(seconds)
    first = [value(s) for s in samples if warm <= s.t < warm + span] or [value(samples[-1])]
    last = [value(s) for s in samples if s.t >= seconds - span] or [value(samples[-1])]
    start, end = statistics.median(first), statistics.median(last)
    return start, end, (end - start) / start


def verdict(result: Result, seconds: float) -> list[tuple[str, bool, str]]:
    errors = sum(result.recorder.errors.values())
    listed = "; ".join(f"{kind}: {count}" for kind, count in result.recorder.errors.most_common()) or "none"
    rss = growth(result.samples, seconds, lambda s: s.rss_kib / 1024)
    fds = growth(result.samples, seconds, lambda s: s.fds)
    return [
        ("errors = 0", errors == 0, f"{errors} ({listed})"),
        (
            "RSS growth after warm-up < 5%",
            rss[2] < GROWTH_LIMIT,
            f"{rss[0]:.1f} -> {rss[1]:.1f} MiB ({rss[2]:+.1%})",
        ),
        ("open fds growth after warm-up < 5%", fds[2] < GROWTH_LIMIT, f"{fds[0]:.0f} -> {fds[1]:.0f} ({fds[2]:+.1%})"),
    ]


def render(result: Result, args: argparse.Namespace, seconds: float, load: tuple[float, float]) -> str:
    rec = result.recorder
    lines = [
        f"bench.soak: {seconds / 60:g} min open-loop, mix per 10 calls: 6 unary Say, 2 Count streams (5 messages), "
        f"1 grpc-websockets Say, 1 event published to {args.subscribers} /api/events subscribers; "
        f"{os.cpu_count()} cores shared by every process on the machine",
        "",
        f"Machine load average (1 min) at the start and end: {load[0]:.2f}, {load[1]:.2f}",
        f"Capacity ({args.concurrency} closed-loop clients, {args.capacity_seconds:g} s): "
        f"{result.capacity:,.0f} calls/s (p50 {result.capacity_p50:.2f} ms, p99 {result.capacity_p99:.2f} ms)",
        f"Offered: {result.rate:,.0f} calls/s ({args.load:.0%} of capacity), {result.arrivals:,} calls; "
        + ", ".join(f"{kind} {count:,}" for kind, count in sorted(rec.kinds.items())),
        f"Latency by kind: {kind_latencies(rec)}",
        "CPU during the soak, in cores: "
        + ", ".join(f"{name} {cores:.2f}" for name, cores in result.cpu_cores.items())
        + " (machine: every process on it, busy time from /proc/stat)",
        f"Events: {result.events_published:,} published, {result.events_expected:,} deliveries expected",
        f"Rate-limit decisions counted by the gateway (Redis): {result.limiter_decisions:,.0f}",
        "",
        "| minute | calls | errors | p50 ms | p99 ms | max ms | RSS MiB (end) | open fds (end) | load avg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    per_minute = max(1, round(60 / rec.window))
    windows = sorted(rec.offered)
    for minute in range(0, len(windows), per_minute):
        chunk = windows[minute : minute + per_minute]
        done = [v for w in chunk for v in rec.latencies.get(w, [])]
        errors = sum(rec.errors_in[w] for w in chunk)
        end = (chunk[-1] + 1) * rec.window
        sample = min(result.samples, key=lambda s: abs(s.t - end))
        lines.append(
            f"| {minute // per_minute + 1} | {sum(rec.offered[w] for w in chunk):,} | {errors} | "
            f"{pct(done, 0.5):.2f} | {pct(done, 0.99):.2f} | {max(done, default=float('nan')):.1f} | "
            f"{sample.rss_kib / 1024:.1f} | {sample.fds} | {sample.load1:.2f} |"
        )
    everything = [v for values in rec.latencies.values() for v in values]
    lines.append(
        f"| all | {result.arrivals:,} | {sum(rec.errors.values())} | {pct(everything, 0.5):.2f} | "
        f"{pct(everything, 0.99):.2f} | {max(everything, default=float('nan')):.1f} | | | |"
    )
    lines += ["", f"Per {rec.window:g} s window:", "", "| from s | calls | errors | p50 ms | p99 ms | RSS MiB | fds |"]
    lines.append("|---|---|---|---|---|---|---|")
    for w in windows:
        done = rec.latencies.get(w, [])
        sample = min(result.samples, key=lambda s: abs(s.t - (w + 1) * rec.window))
        lines.append(
            f"| {w * rec.window:g} | {rec.offered[w]:,} | {rec.errors_in[w]} | {pct(done, 0.5):.2f} | "
            f"{pct(done, 0.99):.2f} | {sample.rss_kib / 1024:.1f} | {sample.fds} |"
        )
    lines.append("")
    for name, passed, detail in verdict(result, seconds):
        lines.append(f"{'PASS' if passed else 'FAIL'}  {name}: {detail}")
    return "\n".join(lines)


# --- the run --------------------------------------------------------------------------------------


def platform_config(port: int, prefix: str) -> dict[str, object]:
    huge = {"requestsPerSecond": 1e9, "burstSize": 1_000_000_000}
    return {
        "host": HOST,
        "httpPort": port,
        "grpcPort": 0,
        "registryUrl": f"{HOST}:{free_port()}",
        "logLevel": "warning",
        "accessLog": False,
        "shell": {"enabled": False},
        "auth": {
            "enabled": True,
            "issuers": [{"issuer": f"http://{HOST}:{port}"}],
            # The demo user's role, allowed to publish and subscribe to events besides its own permissions.
            "roles": {"user": ["events:*"]},
        },
        "rateLimiting": {"enabled": True, "store": "redis", "redisUrl": REDIS_URL, "keyPrefix": prefix, **huge},
        # The memory bus keeps the newest maxMessages events for clients that resume. The default,
        # 100,000, takes this run's ~150 events/s the whole ten minutes to fill, and a ring filling up
        # is memory by design, not a leak; 5,000 fill within the warm-up, so growth after it is real.
        "events": {"enabled": True, "bus": "memory", "publish": True, "maxMessages": 5000},
        # Every socket of the run comes from 127.0.0.1: the per-client connection caps would stop it.
        "edge": {"unlimitedClients": [f"{HOST}/32"]},
    }


def sign_in(url: str) -> str:
    deadline = time.monotonic() + 60
    while True:
        answer = httpx.post(f"{url}/api/auth/login", json={"username": "demo", "password": "demo-password"}, timeout=30)
        if answer.status_code == 200:
            return str(answer.json()["accessToken"])
        if time.monotonic() > deadline:
            raise RuntimeError(f"could not sign the demo user in: {answer.status_code} {answer.text}")
        time.sleep(0.5)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak (10)")
    parser.add_argument("--load", type=float, default=0.8, help="offered load as a fraction of capacity (0.8)")
    parser.add_argument("--capacity-seconds", type=float, default=15.0, help="seconds capacity is measured (15)")
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop clients measuring capacity (32)")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections of the soak (64)")
    parser.add_argument("--rate", type=float, help="calls a second to offer, instead of measuring capacity")
    parser.add_argument("--window", type=float, default=10.0, help="seconds per latency window and sample (10)")
    parser.add_argument("--subscribers", type=int, default=8, help="/api/events sockets open for the run (8)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seconds = args.minutes * 60
    port = free_port()
    run_id = uuid.uuid4().hex[:10]
    prefix = f"upf:soak:{run_id}"
    store = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    store.ping()
    with tempfile.TemporaryDirectory(prefix="upf-soak-") as tmp:
        work = Path(tmp)
        (work / "run.yaml").write_text(yaml.safe_dump(platform_config(port, prefix)))
        upf = str(Path(sys.executable).parent / "upf")
        platform = Server(
            "upf run", [upf, "run", "--config", str(work / "run.yaml")], [port], work / "run.log",
            ready_url=f"http://{HOST}:{port}/readyz",
        )  # fmt: skip
        url = f"http://{HOST}:{port}"
        load_before = os.getloadavg()[0]
        try:
            platform.start(work)
            platform.wait_ready(120)
            token = sign_in(url)
            result = uvloop.run(soak(url, token, platform.pid, args, f"soak.{run_id}"))
            redis_keys = sum(1 for _ in store.scan_iter(match=f"{prefix}:*", count=1000))
        finally:
            platform.stop()
            with contextlib.suppress(redis.RedisError):
                keys = list(store.scan_iter(match=f"{prefix}:*", count=1000))
                if keys:
                    store.delete(*keys)
            store.close()
        if platform.popen is not None and platform.popen.returncode not in (0, -15):
            log(f"upf run exited {platform.popen.returncode}:\n{platform.output()[-2000:]}")
    print(render(result, args, seconds, (load_before, os.getloadavg()[0])))
    print(f"Rate-limit keys left in Redis under {prefix}: {redis_keys} (deleted)")
    return 0 if all(passed for _, passed, _ in verdict(result, seconds)) else 1


if __name__ == "__main__":
    sys.exit(main())
