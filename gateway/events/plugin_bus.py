"""The bus behind /api/events when it is the deployment's IMessageBus plugin (`events.bus: plugin`).

One bus for plugins and for the UI: an event a plugin publishes on IMessageBus (order.created)
reaches the browsers subscribed to it, and POST /api/events/{topic} publishes on IMessageBus.

The gateway keeps one subscription to the plugin (upf.messagebus.v1.MessageBus/Subscribe, every
subject: `>`), found through the registry's routes like any service, with the caller identity the
registry signed for the gateway (identity.py). Each delivery is acknowledged at once and appended to
an in-process ring (memory.py), from which /api/events clients read: ids, resuming with lastEventId
and slow-consumer handling are those of the memory bus, so ids are this gateway process's own. When the
plugin or its broker goes away, the subscription is made again (with backoff, through whichever
instance the registry routes to); a plugin with the "replay" capability then resumes after the last
sequence relayed (when its history outlives a restart, "persistence"), so the ring misses nothing.

Subjects that are not gateway topics (gateway/events/topics.py) are not relayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import grpc
from upf.messagebus.v1 import messagebus_pb2 as pb, messagebus_pb2_grpc

from gateway.events.bus import BusUnavailable, Subscription
from gateway.events.identity import CALLER_TOKEN_METADATA, GatewayIdentity, IdentityNotReady
from gateway.events.memory import MemoryBus
from gateway.events.topics import InvalidTopic, check_topic

__all__ = ["MESSAGE_BUS_SERVICE", "PluginBus"]

logger = logging.getLogger(__name__)

MESSAGE_BUS_SERVICE = "upf.messagebus.v1.MessageBus"
_CALL_TIMEOUT = 5.0
_BACKOFF_MAX = 2.0
_REMEMBERED_IDS = 4096  # message ids relayed, so that a publish can answer with its event id
_ACK_WAIT = 30.0


class PluginBus:
    def __init__(
        self,
        endpoints: Callable[[str], Sequence[str]],
        identity: GatewayIdentity,
        *,
        max_messages: int = 100_000,
        max_age: float | None = None,
        misconfigured: str | None = None,
    ) -> None:
        self._endpoints = endpoints  # service -> routable endpoints (the registry's routes)
        self._identity = identity
        self._ring = MemoryBus(max_messages=max_messages, max_age=max_age)
        self._connected = False
        self._endpoint = ""
        self._misconfigured = misconfigured  # a setting is missing: never connects, and says so
        self.error = misconfigured or "not connected yet"
        self._last_sequence = 0
        self._sequenced = False
        self._relayed: OrderedDict[str, str] = OrderedDict()  # message id -> event id
        self._waiting: dict[str, asyncio.Future[str]] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._task: asyncio.Task[None] | None = None

    # --- MessageBus ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._misconfigured:
            logger.error("events: %s", self._misconfigured)
            return
        await self._identity.start()
        self._task = asyncio.create_task(self._relay_forever(), name="events-plugin-bus")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()
        if not self._misconfigured:
            await self._identity.close()

    def status(self) -> Mapping[str, Any]:
        status: dict[str, Any] = {
            "bus": "plugin",
            "connected": self._connected,
            "lastId": self._ring.status()["lastId"],
        }
        if self._endpoint:
            status["endpoint"] = self._endpoint
        if not self._connected:
            status["error"] = self.error
        return status

    async def publish(self, topic: str, data: bytes) -> str:
        """Publish on IMessageBus; the event id once the event came back through the subscription."""
        check_topic(topic)
        if self._misconfigured:
            raise BusUnavailable(self._misconfigured)
        stub, metadata, _ = await self._stub()
        try:
            reply = await stub.Publish(
                pb.PublishRequest(subject=topic, payload=data), metadata=metadata, timeout=_CALL_TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise ValueError(exc.details()) from None
            raise BusUnavailable(f"the message bus plugin: {exc.code().name}: {exc.details()}") from None
        known = self._relayed.get(reply.id)
        if known is not None:
            return known
        waiting = self._waiting.setdefault(reply.id, asyncio.get_running_loop().create_future())
        try:
            return await asyncio.wait_for(asyncio.shield(waiting), _CALL_TIMEOUT)
        except TimeoutError:
            raise BusUnavailable("the message bus plugin stored the event but has not delivered it back") from None
        finally:
            self._waiting.pop(reply.id, None)

    async def last_id(self) -> str:
        return await self._ring.last_id()

    async def subscribe(self, patterns: Sequence[str], from_id: str | None = None) -> Subscription:
        if not self._connected:
            raise BusUnavailable(f"the message bus plugin is not reachable: {self.error}")
        return await self._ring.subscribe(patterns, from_id)

    # --- the relay -----------------------------------------------------------------------------

    async def _stub(self) -> tuple[messagebus_pb2_grpc.MessageBusAsyncStub, list[tuple[str, str]], str]:
        """A stub for the plugin instance in use (another routable one when it is gone), with the
        gateway's identity token; BusUnavailable when there is none or no token."""
        endpoints = self._endpoints(MESSAGE_BUS_SERVICE)
        if not endpoints:
            raise BusUnavailable("no IMessageBus plugin is registered and healthy")
        endpoint = self._endpoint if self._endpoint in endpoints else endpoints[0]
        channel = self._channels.get(endpoint)
        if channel is None:
            channel = self._channels[endpoint] = grpc.aio.insecure_channel(endpoint)
        try:
            token = await self._identity.token(_CALL_TIMEOUT)
        except IdentityNotReady as exc:
            raise BusUnavailable(str(exc)) from None
        return messagebus_pb2_grpc.MessageBusStub(channel), [(CALLER_TOKEN_METADATA, token)], endpoint

    async def _relay_forever(self) -> None:
        backoff = 0.1
        while True:
            try:
                async for _ in self._relay():
                    backoff = 0.1  # the subscription stands: a later loss starts the backoff over
            except asyncio.CancelledError:
                raise
            except BusUnavailable as exc:
                self.error = str(exc)
            except grpc.aio.AioRpcError as exc:
                self.error = f"the message bus plugin at {self._endpoint}: {exc.code().name}: {exc.details()}"
                self._forget(self._endpoint)
            except Exception as exc:
                logger.exception("events: relaying from the message bus plugin failed")
                self.error = f"relaying failed: {type(exc).__name__}"
            else:
                self.error = f"the message bus plugin at {self._endpoint} ended the subscription"
            if self._connected:
                logger.warning("events: lost the message bus plugin (%s); subscribing again", self.error)
            self._connected = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    def _forget(self, endpoint: str) -> None:
        channel = self._channels.pop(endpoint, None)
        if channel is not None:
            task = asyncio.create_task(channel.close(None))
            task.add_done_callback(lambda t: t.exception())

    async def _relay(self) -> AsyncIterator[None]:
        """Subscribe and relay until the stream ends; yields once the subscription is ready."""
        stub, metadata, self._endpoint = await self._stub()
        capabilities = await stub.GetCapabilities(pb.GetCapabilitiesRequest(), metadata=metadata, timeout=_CALL_TIMEOUT)
        # Sequences that grow with every message of the bus: a message delivered again is recognised.
        self._sequenced = "sequence" in capabilities.capabilities
        start = pb.SubscribeStart(subject=">", ack_wait=_ACK_WAIT)
        # Resuming after the last relayed sequence only where the bus keeps its history across
        # restarts; a bus without "persistence" starts again from 1, and the resume would skip them.
        if self._last_sequence and {"replay", "persistence"} <= set(capabilities.capabilities):
            start.deliver_policy = pb.DELIVER_POLICY_BY_SEQUENCE
            start.start_sequence = self._last_sequence + 1
        else:
            start.deliver_policy = pb.DELIVER_POLICY_NEW
        # Message ids are a bus's own (message-bus-memory counts from 1 again when it restarts, and
        # another plugin has ids of its own): those relayed before are no help from here on.
        self._relayed.clear()
        upstream: asyncio.Queue[pb.SubscribeRequest] = asyncio.Queue()
        upstream.put_nowait(pb.SubscribeRequest(start=start))

        async def requests() -> AsyncIterator[pb.SubscribeRequest]:
            while True:
                yield await upstream.get()

        call = stub.Subscribe(requests(), metadata=metadata)
        try:
            async for response in call:
                kind = response.WhichOneof("kind")
                if kind == "ready":
                    self._connected, self.error = True, ""
                    logger.info("events: relaying the message bus plugin at %s", self._endpoint)
                    yield
                elif kind == "delivery":
                    upstream.put_nowait(pb.SubscribeRequest(ack=pb.Ack(ack_id=response.delivery.ack_id)))
                    self._relay_one(response.delivery)
                elif kind == "ack_result" and not response.ack_result.ok:
                    logger.debug("events: an ack was not taken: %s", response.ack_result.error)
        finally:
            call.cancel()

    def _relay_one(self, delivery: pb.Delivery) -> None:
        message = delivery.message
        if self._sequenced and message.sequence:
            if message.sequence <= self._last_sequence and delivery.delivery_count > 1:
                return  # delivered again (at least once): relayed already
            # (A first delivery below the last sequence: the bus started a new history, e.g. a
            # message-bus-memory plugin restarted.)
            self._last_sequence = message.sequence
        try:
            check_topic(message.subject)
        except InvalidTopic:
            return
        event_id = self._ring.publish_nowait(message.subject, message.payload)
        if message.id:
            self._relayed[message.id] = event_id
            if len(self._relayed) > _REMEMBERED_IDS:
                self._relayed.popitem(last=False)
            waiting = self._waiting.get(message.id)
            if waiting is not None and not waiting.done():
                waiting.set_result(event_id)
