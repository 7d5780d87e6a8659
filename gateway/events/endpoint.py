"""`/api/events`: live events from the message bus over a WebSocket, as JSON text messages.

Handshake
  `GET /api/events?topics=order.*,user.42&lastEventId=41` with `Upgrade: websocket`; the subprotocol
  `upf-events.v1` is echoed when offered (a browser offers it beside `bearer.<token>`, its way of
  sending a token: see gateway/middleware/auth.py), none is needed otherwise.
  Both query parameters are optional (`topics` may also be repeated). The Origin is checked as for
  grpc-websockets: allowed when `events.allowOrigins` (by default `cors.allowOrigins`) lists it or
  holds "*", when it is the gateway's own origin, or when there is none (not a browser); otherwise
  HTTP 403. During a shutdown, HTTP 503. The topics in the URL are handled like a first subscribe
  message, before any message from the client.

Client -> server (text messages, one JSON object each, at most 64 KiB)
  {"type": "subscribe", "topics": ["order.*", "user.42"], "lastEventId": "41"}
      Adds topic patterns (gateway/events/topics.py: `*` one token, `>` the rest, `#` read as `>`).
      Events published from now on are sent; with `lastEventId`, every retained event after that id
      first, each once, then live ones. `lastEventId` is taken only while the connection has no
      subscription (in the URL, or the first subscribe message): it is a reconnecting client's
      position, and ids are per bus, not per topic.
  {"type": "unsubscribe", "topics": ["order.*"]}
      Removes patterns, exactly as they were subscribed. Events already on their way may still come.
  Any other type, unknown fields or a binary message get an error message; the socket stays open.

Server -> client (text messages)
  {"type": "event", "id": "42", "topic": "order.created", "time": "2026-11-01T10:00:00.123Z", "data": "..."}
      `data` is the payload as text when it is UTF-8 (JSON payloads arrive as a JSON string, to be
      parsed by the client); otherwise base64, and the event carries `"encoding": "base64"`. `id`
      is what to send back as `lastEventId` after a reconnect. Ids increase; none comes twice.
  {"type": "subscribed", "topics": ["order.*", "user.42"]}
      The answer to each subscribe: the patterns it added (normalized; already subscribed ones
      included), after an error for each it refused. Every event published after it is delivered.
  {"type": "unsubscribed", "topics": ["order.*"]}
  {"type": "heartbeat", "time": "..."}
      After `events.heartbeatInterval` seconds without any other message, so a client (or proxy)
      can tell a quiet socket from a dead one.
  {"type": "error", "code": "...", "message": "...", "topic": "...", "lastEventId": "..."}
      `topic` or `lastEventId` when the error is about one. Codes:
        bad_request        not JSON, not an object, unknown type or field, a binary message
        invalid_topic      not a topic pattern
        forbidden          the caller may not subscribe to this pattern (below)
        too_many_topics    more than `events.maxTopicsPerConnection` patterns on this connection
        unknown_event_id   `lastEventId` is not an id this bus issued
        event_id_too_old   the events after `lastEventId` are no longer retained; subscribe without
                           it (and reload what the events would have told)
        unavailable        the message bus cannot be reached; the socket then closes with 1013

Close codes
  1001  the gateway is shutting down (reconnect, with lastEventId, to another instance)
  1013  "slow consumer: N events behind": more than `events.queueSize` messages were waiting for
        this socket when a live event came; the queue is dropped instead of growing. Reconnect with
        the last id received (the replay is paced by the client, not cut). Also after `unavailable`.
  1011  the gateway failed (logged; no details to the client)
  1008  "the token has expired" / "the session has ended": with auth, the caller's token is checked
        again before every message and heartbeat; log in again and reconnect

Permissions
  When auth put an Identity in the scope (gateway/auth/identity.py), subscribing to pattern P needs
  the permission `events:P`, or `events:*` / `*`, or `events:G` for a pattern G that covers P
  (`events:order.*` allows `order.*` and `order.created`; `events:order.>` allows anything under
  `order.`). Without an Identity (auth off) every pattern is allowed. Checked at subscribe time;
  the token's expiry and revocation are checked for as long as the socket is open (1008 above).

Flow: one bus subscription per connection, for all its patterns. Adding patterns replaces it by one
starting where the old one stopped (so nothing is missed nor repeated for the old patterns) while
the new patterns only take events after the bus's newest id at that moment. A bounded outbox feeds
the socket; the socket's own backpressure (uvicorn stops accepting sends while the client does not
read) makes the outbox fill up for a slow reader, which is then cut. Only live events count: a
replay (the events stored before the subscription, after lastEventId) is sent at the pace the
client reads, so a client resuming after a cut is not cut again for being behind by design.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import Receive, Scope, Send

from common.tasks import cancel_and_wait
from gateway.auth.identity import Identity, identity_of
from gateway.events.bus import (
    BusError,
    BusUnavailable,
    Event,
    EventIdTooOld,
    MessageBus,
    SubscriberLagged,
    Subscription,
    UnknownEventId,
    parse_event_id,
)
from gateway.events.topics import InvalidTopic, Pattern, parse_pattern
from gateway.websocket.handshake import Upgrade
from gateway.websocket.open_sockets import OpenSockets

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_TRY_AGAIN_LATER",
    "MAX_CONTROL_MESSAGE",
    "EventsEndpoint",
    "event_message",
    "topic_permitted",
]

logger = logging.getLogger(__name__)

SUBPROTOCOL = "upf-events.v1"  # optional; echoed so that a browser may offer it beside bearer.<token>
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TRY_AGAIN_LATER = 1013
MAX_CONTROL_MESSAGE = 64 * 1024
SHUTTING_DOWN = "the gateway is shutting down"
_FIELDS = {"subscribe": frozenset({"type", "topics", "lastEventId"}), "unsubscribe": frozenset({"type", "topics"})}


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_message(event: Event) -> str:
    message: dict[str, str] = {"type": "event", "id": event.id, "topic": event.topic, "time": _timestamp(event.time)}
    try:
        message["data"] = event.data.decode("utf-8")
    except UnicodeDecodeError:
        message["data"] = base64.b64encode(event.data).decode("ascii")
        message["encoding"] = "base64"
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


def topic_permitted(identity: Identity | None, pattern: Pattern) -> bool:
    if identity is None:
        return True  # auth is off
    if identity.permits(f"events:{pattern.text}"):
        return True
    for granted in identity.permissions:
        if granted.startswith("events:"):
            try:
                if parse_pattern(granted.removeprefix("events:")).covers(pattern):
                    return True
            except InvalidTopic:
                continue  # another kind of events permission (events:publish:...)
    return False


class _Refused(Exception):
    """A client message that gets an error message; the socket stays open."""

    def __init__(self, code: str, message: str, **about: str) -> None:
        super().__init__(message)
        self.code = code
        self.about = about


class EventsEndpoint:
    """Mounted with WebSocketRoute at /api/events."""

    def __init__(
        self,
        bus: MessageBus,
        *,
        sockets: OpenSockets,
        allow_origins: Sequence[str],
        heartbeat_interval: float = 15.0,
        queue_size: int = 256,
        max_topics: int = 32,
        close_timeout: float = 5.0,
        still_valid: Callable[[Identity], str | None] | None = None,
    ) -> None:
        self.bus = bus
        self.sockets = sockets
        self.upgrade = Upgrade(sockets, allow_origins, SUBPROTOCOL, required=False)
        self.heartbeat_interval = heartbeat_interval
        self.queue_size = queue_size
        self.max_topics = max_topics
        self.close_timeout = close_timeout  # for the close frame to get past a client that stopped reading
        # Auth's check of a caller verified at the upgrade: asked before each message and each
        # heartbeat, so a logout or an expired token ends the socket (1008) within a heartbeat.
        self.still_valid = still_valid

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not await self.upgrade.accept(scope, receive, send):
            return
        connection = _Connection(self, scope, receive, send)
        with self.sockets.registered(connection, "events"):
            await connection.run()


class _Connection:
    """One socket: a reader for control messages, a pump from the bus, a writer to the socket."""

    # For the OpenSockets: no call to let finish, so a drain closes it at once with 1001.
    cut = False

    def __init__(self, endpoint: EventsEndpoint, scope: Scope, receive: Receive, send: Send) -> None:
        self._endpoint = endpoint
        self._bus = endpoint.bus
        self._scope = scope
        self._receive = receive
        self._send = send
        self._identity = identity_of(scope)
        self._outbox: deque[str] = deque()
        self._queued = asyncio.Event()  # set when the outbox gets a message
        self._sent = asyncio.Event()  # set when the writer took one off
        self._ended: asyncio.Future[tuple[int, str, bool] | None] = asyncio.get_running_loop().create_future()
        # Active patterns, each with its floor: only events with a larger id are for it.
        self._patterns: dict[str, tuple[Pattern, int]] = {}
        self._subscription: Subscription | None = None
        self._pump: asyncio.Task[None] | None = None

    # Ending -------------------------------------------------------------------------------------

    def _end(self, code: int | None, reason: str = "", *, flush: bool = False) -> None:
        """Stop (the first call wins): close with `code` (None: the client is gone), after the outbox if `flush`."""
        if not self._ended.done():
            self._ended.set_result(None if code is None else (code, reason, flush))

    async def going_away(self) -> None:
        """The registry's drain: returns at once, the connection's own task closes the socket."""
        self._end(CLOSE_GOING_AWAY, SHUTTING_DOWN)

    async def send_close(self, code: int, reason: str) -> None:
        with contextlib.suppress(OSError, TimeoutError):
            # A client that stopped reading holds the close frame back (uvicorn waits for the
            # socket's buffer to drain); after the timeout the server's keepalive deals with it.
            async with asyncio.timeout(self._endpoint.close_timeout):
                await self._send({"type": "websocket.close", "code": code, "reason": reason})

    async def run(self) -> None:
        writer = asyncio.create_task(self._write())
        reader: asyncio.Task[None] | None = None
        try:
            try:
                await self._subscribe_from_query()
            except Exception:
                logger.exception("events: the subscription from the URL failed inside the gateway")
                self._end(CLOSE_INTERNAL_ERROR, "the gateway failed")
            if not self._ended.done():
                reader = asyncio.create_task(self._read())
            ended = await self._ended
        finally:
            for task in (reader, writer, self._pump):
                if task is not None:
                    await _cancel(task)
            if self._subscription is not None:
                await self._subscription.close()
        if ended is None:
            return
        code, reason, flush = ended
        if flush:
            await self._flush()
        await self.send_close(code, reason)

    async def _flush(self) -> None:
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(self._endpoint.close_timeout):
                while self._outbox:
                    await self._send({"type": "websocket.send", "text": self._outbox[0]})
                    self._outbox.popleft()

    # Out ----------------------------------------------------------------------------------------

    def _enqueue(self, text: str) -> None:
        if self._ended.done():
            return
        if len(self._outbox) >= self._endpoint.queue_size:
            behind = len(self._outbox) + 1
            self._outbox.clear()  # the point: this memory goes now, not when the client catches up
            self._end(CLOSE_TRY_AGAIN_LATER, f"slow consumer: {behind} events behind")
            return
        self._outbox.append(text)
        self._queued.set()

    def _reply(self, kind: str, **fields: Any) -> None:
        self._enqueue(json.dumps({"type": kind, **fields}, ensure_ascii=False, separators=(",", ":")))

    def _error(self, code: str, message: str, **about: str) -> None:
        self._reply("error", code=code, message=message, **about)

    def _caller_gone(self) -> bool:
        """Whether the caller's token expired or its session was revoked; if so, the socket ends."""
        check, identity = self._endpoint.still_valid, self._identity
        if check is None or identity is None:
            return False
        reason = check(identity)
        if reason is not None:
            self._outbox.clear()
            self._end(CLOSE_POLICY_VIOLATION, reason)
            return True
        return False

    async def _write(self) -> None:
        interval = self._endpoint.heartbeat_interval
        try:
            while True:
                if self._caller_gone():
                    return
                if not self._outbox:
                    self._queued.clear()
                    try:
                        async with asyncio.timeout(interval):
                            await self._queued.wait()
                    except TimeoutError:
                        heartbeat = json.dumps(
                            {"type": "heartbeat", "time": _timestamp(time.time())}, separators=(",", ":")
                        )
                        await self._send({"type": "websocket.send", "text": heartbeat})
                    continue
                # Taken off only once sent: a message cancelled while waiting for the socket is kept.
                await self._send({"type": "websocket.send", "text": self._outbox[0]})
                self._outbox.popleft()
                self._sent.set()
        except OSError:  # uvicorn's ClientDisconnected
            self._end(None)

    # In -----------------------------------------------------------------------------------------

    async def _read(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "websocket.disconnect":
                self._end(None)
                return
            if message["type"] != "websocket.receive":
                continue
            try:
                await self._handle(message.get("text"))
            except _Refused as refused:
                self._error(refused.code, str(refused), **refused.about)
            except Exception:
                logger.exception("events: a client message failed inside the gateway")
                self._end(CLOSE_INTERNAL_ERROR, "the gateway failed")
                return

    async def _handle(self, text: str | None) -> None:
        if text is None:
            raise _Refused("bad_request", "send JSON text messages; binary messages are not part of this protocol")
        if len(text) > MAX_CONTROL_MESSAGE:
            raise _Refused("bad_request", f"a message may be at most {MAX_CONTROL_MESSAGE} bytes")
        try:
            message = json.loads(text)
        except ValueError:
            raise _Refused("bad_request", "the message is not JSON") from None
        if not isinstance(message, dict):
            raise _Refused("bad_request", 'a message must be a JSON object with a "type"')
        kind = message.get("type")
        if kind not in _FIELDS:
            shown = json.dumps(kind)[:40]
            raise _Refused("bad_request", f'unknown message type {shown}; expected "subscribe" or "unsubscribe"')
        unknown = sorted(str(key) for key in message if key not in _FIELDS[kind])
        if unknown:
            raise _Refused("bad_request", f"unknown field(s) in {kind}: {', '.join(unknown)}")
        topics = message.get("topics")
        if not isinstance(topics, list) or not all(isinstance(topic, str) for topic in topics):
            raise _Refused("bad_request", f'{kind} needs "topics": a list of topic patterns (strings)')
        if kind == "unsubscribe":
            await self._unsubscribe(topics)
            return
        last_event_id = message.get("lastEventId")
        if last_event_id is not None and not isinstance(last_event_id, str):
            raise _Refused("bad_request", '"lastEventId" must be a string: an event id as it was received')
        await self._subscribe(topics, last_event_id)

    async def _subscribe_from_query(self) -> None:
        topics: list[str] = []
        last_event_id: str | None = None
        query = self._scope.get("query_string", b"").decode("latin-1")
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name == "topics":
                topics += [topic.strip() for topic in value.split(",") if topic.strip()]
            elif name == "lastEventId" and value:
                last_event_id = value
        if not topics:
            if last_event_id is not None:
                self._error("bad_request", "lastEventId without topics: nothing to resume", lastEventId=last_event_id)
            return
        try:
            await self._subscribe(topics, last_event_id)
        except _Refused as refused:
            self._error(refused.code, str(refused), **refused.about)

    # Subscriptions ------------------------------------------------------------------------------

    async def _subscribe(self, topics: list[str], last_event_id: str | None) -> None:
        limit = self._endpoint.max_topics
        if len(topics) > limit:
            raise _Refused("too_many_topics", f"at most {limit} topics per connection; the message names {len(topics)}")
        if last_event_id is not None and self._patterns:
            raise _Refused(
                "bad_request",
                "lastEventId is taken only while the connection has no subscription (reconnect to resume)",
                lastEventId=last_event_id,
            )
        accepted: list[str] = []
        added: dict[str, Pattern] = {}
        for topic in topics:
            try:
                pattern = parse_pattern(topic)
            except InvalidTopic as exc:
                self._error("invalid_topic", str(exc), topic=topic)
                continue
            if not topic_permitted(self._identity, pattern):
                needed = f"events:{pattern.text}"
                self._error("forbidden", f"not allowed to subscribe to {pattern.text} (needs {needed})", topic=topic)
                continue
            if pattern.text not in self._patterns and pattern.text not in added:
                if len(self._patterns) + len(added) >= limit:
                    self._error("too_many_topics", f"at most {limit} topics per connection", topic=topic)
                    continue
                added[pattern.text] = pattern
            if pattern.text not in accepted:
                accepted.append(pattern.text)
        if added:
            try:
                await self._add(list(added.values()), last_event_id)
            except BusUnavailable as exc:
                self._error("unavailable", str(exc))
                self._end(CLOSE_TRY_AGAIN_LATER, "the message bus is unavailable", flush=True)
                return
            except UnknownEventId as exc:
                raise _Refused("unknown_event_id", str(exc), lastEventId=str(last_event_id)) from None
            except EventIdTooOld as exc:
                raise _Refused("event_id_too_old", str(exc), lastEventId=str(last_event_id)) from None
        self._reply("subscribed", topics=accepted)

    async def _add(self, patterns: list[Pattern], last_event_id: str | None) -> None:
        """Replace the bus subscription by one for the old and the new patterns (see the module doc)."""
        newest = int(await self._bus.last_id())
        floor = parse_event_id(last_event_id) if last_event_id is not None else newest
        assert floor is not None
        position: int | None = None
        if self._subscription is not None:
            await self._stop_pump()
            position = int(await self._subscription.position())
            await self._subscription.close()
            self._subscription = None
        floors = {text: (pattern, max(old, position or 0)) for text, (pattern, old) in self._patterns.items()}
        floors.update((pattern.text, (pattern, floor)) for pattern in patterns)
        start = min(old for _, old in floors.values())
        texts = [pattern.text for pattern, _ in floors.values()]
        try:
            subscription = await self._bus.subscribe(texts, str(start))
        except EventIdTooOld as exc:
            if last_event_id is not None:
                raise
            # Only events that went out already (the old subscription kept up) were dropped since.
            subscription = await self._bus.subscribe(texts, str(exc.oldest - 1))
        self._patterns = floors
        self._subscription = subscription
        self._pump = asyncio.create_task(self._run_pump(subscription, newest))

    async def _unsubscribe(self, topics: list[str]) -> None:
        removed: list[str] = []
        for topic in topics:
            try:
                text = parse_pattern(topic).text
            except InvalidTopic as exc:
                self._error("invalid_topic", str(exc), topic=topic)
                continue
            if self._patterns.pop(text, None) is not None:
                removed.append(text)
        # The bus subscription stays as it is (the pump filters by the patterns left), unless
        # nothing is left.
        if not self._patterns and self._subscription is not None:
            await self._stop_pump()
            await self._subscription.close()
            self._subscription = None
        self._reply("unsubscribed", topics=removed)

    async def _stop_pump(self) -> None:
        if self._pump is not None:
            await _cancel(self._pump)
            self._pump = None

    async def _run_pump(self, subscription: Subscription, replay_end: int) -> None:
        """Bus -> outbox. Events up to `replay_end` (stored before the subscription) are a replay:
        paced by the socket, filling at most half the outbox, since the bus keeps them anyway and a
        resuming client must not be cut for being behind by design. Later (live) events are never
        waited for: a full outbox then cuts the socket."""
        replay_room = max(1, self._endpoint.queue_size // 2)
        try:
            async for event in subscription:
                number = int(event.id)
                tokens = event.topic.split(".")
                if not any(number > floor and p.matches_tokens(tokens) for p, floor in self._patterns.values()):
                    continue
                while number <= replay_end and len(self._outbox) >= replay_room:
                    self._sent.clear()
                    await self._sent.wait()
                self._enqueue(event_message(event))
                if self._ended.done():
                    return
        except SubscriberLagged:
            self._end(CLOSE_TRY_AGAIN_LATER, "slow consumer: fell behind the retained events")
        except BusError as exc:
            self._error("unavailable", str(exc))
            self._end(CLOSE_TRY_AGAIN_LATER, "the message bus is unavailable", flush=True)
        except Exception:
            logger.exception("events: the subscription of a connection failed")
            self._end(CLOSE_INTERNAL_ERROR, "the gateway failed")


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel and wait until it is over; a failure it ended with is logged."""
    await cancel_and_wait(task, again_after=1.0)  # its unsubscribe may take a round trip or two
    if not task.cancelled() and task.exception() is not None:
        logger.error("events: a connection task failed", exc_info=task.exception())
