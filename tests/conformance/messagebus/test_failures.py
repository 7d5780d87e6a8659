"""IMessageBus under failure: the bus plugin SIGKILLed, and the broker restarted, mid-stream.

One body for every backend with the "persistence" capability: 10,000 messages go through a durable
consumer; at a third of the way the plugin process is SIGKILLed and started again, at two thirds the
broker is restarted. Afterwards every message whose Publish succeeded was delivered at least once, and
no message was delivered again after the bus confirmed its ack. Publisher and consumer retry through
the outages, as a plugin would. The brokers are the test's own (brokers.py): a nats-server, a
redis-server and a RabbitMQ node on free ports with their data in temp dirs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from plugins.messagebus.plugin import BusSettings, build, make_backend
from plugins.sdk.identity import caller_token_interceptors
from plugins.sdk.messagebus import BusUnavailable, Message, MessageBusClient, MessageBusError, Published
from tests.conformance.messagebus.brokers import Broker
from tests.conformance.messagebus.conftest import FAST, registered
from tests.conformance.messagebus.harness import bus_settings, caller_token
from tests.support.processes import Process, free_port, wait_until
from tests.support.registry_process import RunningRegistry, run_registry

MESSAGES = 10_000
# What the killed plugin had taken from the broker comes again after this (NATS, Redis); short, so that
# the test does not wait long for it.
ACK_WAIT = 3.0
PERSISTENT = ("nats", "rabbitmq", "redis")
# Reconnect fast after the plugin comes back (grpc's default first backoff is a second, growing).
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 300),
]


@dataclass
class Ledger:
    """What the test saw: published (Publish answered), delivered, acks confirmed, and any violation."""

    published: set[int] = field(default_factory=set)  # payload numbers
    delivered: set[int] = field(default_factory=set)  # payload numbers
    # Message ids (a publish retried after an outage may store a second message with the same payload:
    # that one is delivered too, and is not a redelivery).
    confirmed: set[str] = field(default_factory=set)
    again_after_confirm: list[str] = field(default_factory=list)
    deliveries: int = 0
    all_delivered: asyncio.Event = field(default_factory=asyncio.Event)


async def run_stream(
    client: MessageBusClient, disruptions: list[Callable[[], Awaitable[None]]], *, timeout: float
) -> Ledger:
    """10,000 messages through a durable consumer; the disruptions happen one after the other, each once
    a further share of the messages was delivered (a third, two thirds with two of them)."""
    ledger = Ledger()
    topic = f"failure{os.getpid()}.stream"
    # The durable exists before the first publish, so it owes us every message.
    await (await client.subscribe(topic, durable="survivor", ack_wait=ACK_WAIT).open()).close()
    publishing_done = asyncio.Event()
    next_number = iter(range(MESSAGES))
    progress = asyncio.Condition()

    async def publisher() -> None:
        for number in next_number:
            while True:
                try:
                    await client.publish(topic, str(number).encode())
                    break
                except MessageBusError:
                    await asyncio.sleep(0.02)  # the bus is away: retry, as a plugin would
            ledger.published.add(number)

    async def settle(message: Message) -> None:
        try:
            await message.ack()
        except MessageBusError:
            return  # not confirmed: it may come again, which is allowed
        ledger.confirmed.add(message.id)

    async def consumer() -> None:
        acks: set[asyncio.Task[None]] = set()
        while True:
            try:
                async with client.subscribe(
                    topic, durable="survivor", max_in_flight=100, ack_wait=ACK_WAIT
                ) as messages:
                    async for message in messages:
                        number = int(message.payload)
                        ledger.deliveries += 1
                        if message.id in ledger.confirmed:
                            ledger.again_after_confirm.append(message.id)
                        ledger.delivered.add(number)
                        if len(ledger.delivered) % 100 == 0 or len(ledger.delivered) == MESSAGES:
                            async with progress:
                                progress.notify_all()
                        task = asyncio.create_task(settle(message))
                        acks.add(task)
                        task.add_done_callback(acks.discard)
            except MessageBusError:
                await asyncio.sleep(0.02)  # subscribe again once the bus is back

    async def publishers() -> None:
        await asyncio.gather(*(publisher() for _ in range(16)))
        publishing_done.set()
        async with progress:
            progress.notify_all()

    tasks = [asyncio.create_task(publishers()), asyncio.create_task(consumer())]
    try:
        async with asyncio.timeout(timeout):
            for index, disrupt in enumerate(disruptions, start=1):
                share = MESSAGES * index // (len(disruptions) + 1)
                async with progress:
                    await progress.wait_for(lambda share=share: len(ledger.delivered) >= share)  # type: ignore[misc]
                await disrupt()
            async with progress:
                await progress.wait_for(lambda: publishing_done.is_set() and ledger.published <= ledger.delivered)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return ledger


def check(ledger: Ledger) -> None:
    assert len(ledger.published) == MESSAGES
    missing = ledger.published - ledger.delivered
    assert not missing, f"{len(missing)} published messages never delivered, e.g. {sorted(missing)[:5]}"
    assert not ledger.again_after_confirm, (
        f"{len(ledger.again_after_confirm)} delivered again after their ack was confirmed: "
        f"{ledger.again_after_confirm[:5]}"
    )


@asynccontextmanager
async def client_of(endpoint: str, token: str) -> AsyncIterator[MessageBusClient]:
    channel = grpc.aio.insecure_channel(
        endpoint, interceptors=caller_token_interceptors(lambda: token), options=FAST_RECONNECT
    )
    try:
        yield MessageBusClient(channel, timeout=5.0)
    finally:
        await channel.close(None)


# --- the plugin killed ------------------------------------------------------------------------------


class PluginProcess:
    """`upf plugin message-bus-<backend>` on a fixed port, so that a restart is found at the same place."""

    def __init__(self, settings: BusSettings, registry: RunningRegistry, log_dir: Path) -> None:
        self.settings = settings
        self.registry = registry
        self.log_dir = log_dir
        self.port = free_port()
        self.process: Process | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        upf = str(Path(sys.executable).parent / "upf")
        plugin_id = f"message-bus-{self.settings.backend}"
        args = [
            upf, "plugin", plugin_id, "--port", str(self.port), "--registry", self.registry.target,
            "--bus-url", self.settings.url, "--bus-prefix", self.settings.prefix, "--log-level", "warning",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("UPF_")}
        env["UPF_REGISTRATION_CREDENTIAL"] = self.registry.credential(plugin_id)
        log = self.log_dir / f"{plugin_id}-{self.port}-{self.starts}.log"
        self.process = Process(args, env=env, log=log)
        wait_until(self._listening, what=f"{plugin_id} to listen on {self.port}")

    def _listening(self) -> bool:
        assert self.process is not None
        if not self.process.alive():
            raise AssertionError(f"the plugin exited:\n{self.process.output()}")
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=0.2)
            except grpc.FutureTimeoutError:
                return False
        return True

    def kill(self) -> None:
        if self.process is not None:
            self.process.stop(signal.SIGKILL)


# --- the broker restarted -----------------------------------------------------------------------------


@contextmanager
def broker_binaries(backend: str) -> Iterator[None]:
    """The test fails (never skips) without the server it runs of its own."""
    binary = {"nats": "nats-server", "redis": "redis-server", "rabbitmq": "rabbitmq-server"}[backend]
    if shutil.which(binary, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") is None:
        pytest.fail(f"{binary} is needed: the test restarts a {backend} of its own")
    yield


@pytest.mark.parametrize("backend", PERSISTENT)
async def test_the_plugin_killed_and_the_broker_restarted_mid_stream_lose_nothing(backend: str, tmp_path: Path) -> None:
    """The plugin runs as its own process against a broker of the test's own; at a third of the stream
    the plugin is SIGKILLed and started again, at two thirds the broker is (brokers.py says how)."""
    with broker_binaries(backend), run_registry({}, tmp_path) as registry:
        # A registry of the test's own: a killed plugin's lease (and its claim on the service) outlives it.
        token = caller_token(registry, "bus-caller-a")
        broker = Broker(backend, tmp_path)
        await broker.start()
        settings = bus_settings(backend, broker.url)
        plugin = PluginProcess(settings, registry, tmp_path)
        await asyncio.to_thread(plugin.start)

        async def kill_and_restart_plugin() -> None:
            plugin.kill()
            await asyncio.to_thread(plugin.start)

        async def restart_broker() -> None:
            await broker.stop()
            await broker.start()

        try:
            async with client_of(f"127.0.0.1:{plugin.port}", token) as client:
                ledger = await run_stream(client, [kill_and_restart_plugin, restart_broker], timeout=90)
        finally:
            plugin.kill()
            await broker.stop()
            broker.remove()
        check(ledger)


@pytest.mark.parametrize("backend", PERSISTENT)
async def test_a_broker_that_is_away_is_unavailable_until_it_is_back(
    backend: str, registry: RunningRegistry, tokens: dict[str, str], tmp_path: Path
) -> None:
    """The plugin starts while its broker is down, answers UNAVAILABLE saying so, and works once the
    broker is up, without a restart."""
    with broker_binaries(backend):
        broker = Broker(backend, tmp_path)
        settings = bus_settings(backend, broker.url)
        backend_object = make_backend(settings)
        plugin = build(
            settings,
            registry=registry.target,
            credential=registry.credential,
            handle_signals=False,
            timings=FAST,
            backend=backend_object,
        )
        task = asyncio.create_task(plugin.run())
        await registered(plugin)
        try:
            async with client_of(plugin.endpoint, tokens["a"]) as client:
                with pytest.raises(BusUnavailable, match="unavailable"):
                    await client.publish("away.subject", b"x")
                with pytest.raises(BusUnavailable, match="unavailable"):
                    await client.subscribe("away.subject").open()
                await broker.start()
                published = await eventually_published(client)
                assert published.id
        finally:
            await plugin.stop()
            await task
            await backend_object.close()
            await broker.stop()
            broker.remove()


async def eventually_published(client: MessageBusClient) -> Published:
    async with asyncio.timeout(10):
        while True:
            try:
                return await client.publish("away.subject", b"x")
            except BusUnavailable:
                await asyncio.sleep(0.05)  # polling, with the deadline above
