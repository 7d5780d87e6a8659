"""`python -m bench.messagebus`: messages/s through each message-bus plugin vs the broker's own client.

For each backend (memory, nats, rabbitmq, redis; `--backends` to choose) it starts `upf registry` and
`upf plugin message-bus-<backend>` as processes on 127.0.0.1 (free ports), then measures, from this one
asyncio process:

- published/s: `--messages` Publish calls, `--concurrency` at a time, each answered once the broker
  stored the message (JetStream PubAck, RabbitMQ publisher confirm, the XADD reply); with `--batch N`,
  PublishBatch calls of N messages instead (concurrency / 8 calls at a time);
- consumed/s: the same number read back through a durable subscription and acknowledged, each ack
  confirmed by the broker (the plugin's AckResult; directly: ack_sync, XACK's reply, basic.ack).

and the same with the broker's Python client directly (nats-py, aio-pika, redis-py), with the same
confirmations, so that the ratio (plugin / direct) is the cost of the plugin hop (gRPC, identity
check, validation). The memory bus has no direct counterpart. Brokers: the shared ones on
127.0.0.1 (NATS 4222, RabbitMQ 5672, Redis 6379), with names of the run's own, deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import grpc
import nats
import yaml
from redis.asyncio import Redis
from upf.registry.v1 import registry_pb2, registry_pb2_grpc

from bench.harness import HOST, Server, cpu_seconds, free_port, log
from common.rpc.channel import Channel
from plugins.messagebus.plugin import BusSettings, make_backend
from plugins.sdk.identity import caller_token_hook
from plugins.sdk.messagebus import MessageBusClient, Outgoing
from registry.credentials import RegistrationCredentials

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("memory", "nats", "rabbitmq", "redis")
URLS = {
    "memory": "",
    "nats": "nats://127.0.0.1:4222",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/",
    "redis": "redis://127.0.0.1:6379/0",
}
SECRET = "bench-registration-secret"
PAYLOAD = b"x" * 100


async def bounded(count: int, concurrency: int, one: Callable[[int], Awaitable[object]]) -> float:
    """Run one(0..count-1), `concurrency` at a time; the calls per second."""
    numbers = iter(range(count))

    async def worker() -> None:
        for number in numbers:
            await one(number)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


# --- through the plugin -------------------------------------------------------------------------------


async def through_plugin(
    client: MessageBusClient, count: int, concurrency: int, cpu: Callable[[], float], batch: int
) -> tuple[float, float, float, float]:
    """(published/s, consumed/s, plugin CPU us per published message, per consumed message)."""
    subject = f"bench{secrets.token_hex(4)}.events"
    await (await client.subscribe(subject, durable="bench").open()).close()  # the durable exists first
    before = cpu()
    if batch > 1:
        outgoing = [Outgoing(subject, PAYLOAD)] * batch
        calls = await bounded(count // batch, max(1, concurrency // 8), lambda _n: client.publish_batch(outgoing))
        published = calls * batch
    else:
        published = await bounded(count, concurrency, lambda _n: client.publish(subject, PAYLOAD))
    publish_cpu, before = cpu() - before, cpu()
    received = 0
    acks: set[asyncio.Task[None]] = set()
    started = time.perf_counter()
    async with client.subscribe(subject, durable="bench", max_in_flight=1000) as messages:
        async for message in messages:
            task = asyncio.create_task(message.ack())
            acks.add(task)
            task.add_done_callback(acks.discard)
            received += 1
            if received == count:
                break
        await asyncio.gather(*acks)
    consumed = count / (time.perf_counter() - started)
    return published, consumed, publish_cpu / count * 1e6, (cpu() - before) / count * 1e6


# --- directly ----------------------------------------------------------------------------------------


async def direct_nats(count: int, concurrency: int) -> tuple[float, float]:
    nc = await nats.connect(URLS["nats"])
    js = nc.jetstream()
    stream, subject = f"bench_{secrets.token_hex(4)}", f"bench{secrets.token_hex(4)}.events"
    try:
        await js.add_stream(name=stream, subjects=[subject])
        subscription = await js.pull_subscribe(subject, durable="bench", stream=stream)
        published = await bounded(count, concurrency, lambda _n: js.publish(subject, PAYLOAD))
        started, received = time.perf_counter(), 0
        while received < count:
            batch = await subscription.fetch(min(64, count - received), timeout=5)
            await asyncio.gather(*(msg.ack_sync() for msg in batch))
            received += len(batch)
        return published, count / (time.perf_counter() - started)
    finally:
        await js.delete_stream(stream)
        await nc.close()


async def direct_rabbitmq(count: int, concurrency: int) -> tuple[float, float]:
    connection = await aio_pika.connect(URLS["rabbitmq"])
    name = f"bench.{secrets.token_hex(4)}"
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC)
        queue = await channel.declare_queue(name, durable=True)
        await queue.bind(exchange, "events")

        async def publish(_n: int) -> None:
            message = aio_pika.Message(PAYLOAD, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await exchange.publish(message, "events")

        published = await bounded(count, concurrency, publish)
        consumer = await connection.channel()
        await consumer.set_qos(prefetch_count=1000)
        started, received = time.perf_counter(), 0
        async with (await consumer.get_queue(name)).iterator() as messages:
            async for message in messages:
                await message.ack()
                received += 1
                if received == count:
                    break
        await consumer.set_qos(prefetch_count=1000)  # a round trip: the acks before it were handled
        consumed = count / (time.perf_counter() - started)
        await channel.queue_delete(name)
        await channel.exchange_delete(name)
        return published, consumed
    finally:
        await connection.close()


async def direct_redis(count: int, concurrency: int) -> tuple[float, float]:
    client = Redis.from_url(URLS["redis"])
    key = f"upf:bench:{secrets.token_hex(4)}"
    try:
        await client.xgroup_create(key, "bench", id="$", mkstream=True)
        published = await bounded(count, concurrency, lambda _n: client.xadd(key, {"p": PAYLOAD}))
        started, received = time.perf_counter(), 0
        while received < count:
            reply: Any = await client.xreadgroup("bench", "c", {key: ">"}, count=64, block=1000)
            for _key, entries in reply or ():
                await asyncio.gather(*(client.xack(key, "bench", entry_id) for entry_id, _ in entries))
                received += len(entries)
        return published, count / (time.perf_counter() - started)
    finally:
        await client.delete(key)
        await client.aclose()


DIRECT = {"nats": direct_nats, "rabbitmq": direct_rabbitmq, "redis": direct_redis}


# --- processes ---------------------------------------------------------------------------------------


def identity_token(registry: str) -> str:
    manifest = json.dumps(
        {"id": "bench-client", "version": "1.0.0", "name": "bench", "type": "business", "requires": []}
    )
    credential = RegistrationCredentials(SECRET.encode()).for_plugin("bench-client")
    with grpc.insecure_channel(registry) as channel:
        request = registry_pb2.RegisterRequest(manifest=manifest, credential=credential, endpoint="127.0.0.1:1")
        return str(registry_pb2_grpc.RegistryStub(channel).Register(request, timeout=10).identity_token)


async def measure(
    backend: str, registry: str, run_dir: Path, count: int, concurrency: int, batch: int
) -> dict[str, object]:
    port, prefix = (
        free_port(),
        (f"upf:bench:{secrets.token_hex(4)}" if backend == "redis" else f"bench-{secrets.token_hex(4)}"),
    )
    plugin_id = f"message-bus-{backend}"
    argv = [str(Path(sys.executable).parent / "upf"), "plugin", plugin_id, "--port", str(port), "--registry", registry,
            "--bus-prefix", prefix, "--log-level", "warning"]  # fmt: skip
    if URLS[backend]:
        argv += ["--bus-url", URLS[backend]]
    plugin = Server(plugin_id, argv, [port], run_dir / f"{plugin_id}.log")
    credential = RegistrationCredentials(SECRET.encode()).for_plugin(plugin_id)
    plugin.start(ROOT, env={"UPF_REGISTRATION_CREDENTIAL": credential})
    try:
        plugin.wait_ready()
        token = identity_token(registry)
        channel = Channel(f"{HOST}:{port}", metadata_hooks=[caller_token_hook(lambda: token)])  # as the SDK's
        try:
            pids = plugin.pids()
            plugin_rates = await through_plugin(
                MessageBusClient(channel), count, concurrency, lambda: cpu_seconds(pids), batch
            )
        finally:
            await channel.close(None)
    finally:
        plugin.stop()
        if backend != "memory":
            cleanup = make_backend(BusSettings(backend, URLS[backend], prefix))
            if backend == "rabbitmq":
                cleanup.declared.add(f"{prefix}.bench-client__d__bench")  # type: ignore[attr-defined]
            await cleanup.destroy()  # type: ignore[attr-defined]
            await cleanup.close()
    direct = await DIRECT[backend](count, concurrency) if backend in DIRECT else None
    return {"backend": backend, "plugin": plugin_rates, "direct": direct}


def table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| bus | published/s plugin | direct | ratio | consumed+acked/s plugin | direct | ratio |"
        " plugin CPU us/msg (publish, consume) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        plugin = row["plugin"]
        direct = row["direct"]
        assert isinstance(plugin, tuple)
        cells = [str(row["backend"])]
        for index in (0, 1):
            cells.append(f"{plugin[index]:,.0f}")
            if isinstance(direct, tuple):
                cells += [f"{direct[index]:,.0f}", f"{plugin[index] / direct[index]:.2f}x"]
            else:
                cells += ["-", "-"]
        cells.append(f"{plugin[2]:.0f}, {plugin[3]:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    run_dir = Path(tempfile.mkdtemp(prefix="bench-messagebus-"))
    registry_port = free_port()
    config = run_dir / "registry.yaml"
    config.write_text(
        yaml.safe_dump({"port": registry_port, "registration": {"secret": SECRET}, "logLevel": "warning"})
    )
    registry = Server(
        "registry", [str(Path(sys.executable).parent / "upf"), "registry", "--config", str(config)],
        [registry_port], run_dir / "registry.log",
    )  # fmt: skip
    registry.start(ROOT)
    rows = []
    try:
        registry.wait_ready()
        for backend in args.backends:
            log(f"messagebus: {backend}, {args.messages} messages, {args.concurrency} publishes at a time")
            rows.append(
                await measure(backend, f"{HOST}:{registry_port}", run_dir, args.messages, args.concurrency, args.batch)
            )
    finally:
        registry.stop()
    print(table(rows))
    log(f"logs in {run_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000, help="messages per measurement (default 5000)")
    parser.add_argument("--concurrency", type=int, default=32, help="publishes in flight (default 32)")
    parser.add_argument(
        "--batch", type=int, default=1, help="messages per PublishBatch call (default 1: one Publish per message)"
    )
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS), help="which buses")
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
