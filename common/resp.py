"""One pipelined connection to Redis: the commands of one event-loop turn leave in one write, and the
replies come back in order, parsed by hiredis.

For the hot commands that redis-py makes expensive: the gateway's rate-limit decisions (one EVALSHA
each, a budget of 15 us of gateway CPU, issue 5) and the plugins' single-key commands (a cache Get, a
bus Publish). Through redis-py each command checks out a pooled connection and pays its own send, its
own read and redis-py's per-command bookkeeping: 47-114 us of CPU, against 3-7 us here
(bench/README.md, "Rate limiter cost" and "Cache plugins"). Everything else (SCAN, pub/sub, blocking
reads, TLS, Unix sockets) stays on redis-py, and this client raises redis-py's exceptions, so that
callers map errors once whichever client ran the command:

- one TCP connection, opened on first use and again after it is lost; AUTH and SELECT from the
  `redis://[[user]:password@]host[:port][/db]` URL when it is opened (a refusal closes it);
- replies are matched to waiting futures in order. A caller that stops waiting does not disturb the
  others: its reply still arrives, in its place, and is dropped;
- scripts run by EVALSHA, and again after SCRIPT LOAD when Redis forgot them (restart, SCRIPT FLUSH);
- failure fails every waiting command at once: when the connection is lost (ConnectionError), and
  when the oldest reply is older than `timeout` (TimeoutError; the connection is dropped too, since
  the replies still owed on it could no longer be matched). One watchdog timer per connection, armed
  for the oldest waiting reply, not one timer per command.

Plain TCP redis:// only; `commands_for` gives the same calls on redis-py for rediss:// and unix://.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis
import redis.asyncio
from redis.exceptions import (
    ConnectionError,
    NoScriptError,
    ResponseError,
    TimeoutError as ReplyTimeout,  # not the builtin, which asyncio.timeout raises
)

from common.corking import CorkedTransport

__all__ = [
    "Arg",
    "Commands",
    "RedisPyCommands",
    "RespClient",
    "Script",
    "bulks",
    "commands_for",
    "encode",
    "handles_url",
]

Arg = bytes | str | int | float


def handles_url(url: str) -> bool:
    """Whether RespClient speaks to this URL: plain TCP redis:// only (no TLS, no Unix sockets)."""
    return url.startswith("redis://")


def bulks(*parts: bytes) -> bytes:
    """RESP2 bulk strings, without the array header: for callers that encode a command's fixed parts once."""
    return b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)


def _bytes(arg: Arg) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, int):
        return b"%d" % arg
    return repr(arg).encode()  # a float, every digit


def encode(*args: Arg) -> bytes:
    """A command as a RESP2 array of bulk strings."""
    return b"*%d\r\n" % len(args) + bulks(*map(_bytes, args))


class Script:
    """A Lua script, run by its SHA1 and loaded into Redis the first time Redis does not know it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()  # Redis names scripts by their SHA1


def _error(reply: ResponseError) -> ResponseError:
    return NoScriptError(str(reply)) if str(reply).startswith("NOSCRIPT") else reply


class _Connection(asyncio.Protocol):
    """One connection's replies, handed in order to the futures of the commands that asked for them."""

    def __init__(self, client: RespClient, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.loop = loop
        self.raw: asyncio.Transport | None = None
        self.corked: CorkedTransport | None = None
        self.closed = False
        self.lost: asyncio.Future[None] = loop.create_future()  # set by connection_lost
        self.reader = hiredis.Reader(replyError=ResponseError)
        # (future, loop time the command was written), oldest first: the order replies arrive in.
        self.pending: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports (the gateway's loop) do not subclass asyncio.Transport: a cast, not a check.
        self.raw = cast(asyncio.Transport, transport)
        self.corked = CorkedTransport(self.raw, self.loop)

    def request(self, payload: bytes) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self.loop.create_future()
        if self.closed or self.raw is None or self.corked is None:
            future.set_exception(ConnectionError("the Redis connection is closed"))
            return future
        now = self.loop.time()
        if self.watchdog is None:
            # Armed once and left running while commands come and go: one timer per `timeout`
            # seconds, not one set and cancelled per command (a few us each with one in flight).
            self.watchdog = self.loop.call_at(now + self.client.timeout, self._check_age)
        if self.pending:
            self.corked.write(payload)  # merged with the other commands of this loop iteration
        else:
            # Nothing in flight, so nothing corked: out at once, without a flush callback (the
            # usual case on a quiet process; a busy one always has commands in flight).
            self.raw.write(payload)
        self.pending.append((future, now))
        return future

    def data_received(self, data: bytes) -> None:
        reader, pending = self.reader, self.pending
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                if not pending:
                    raise hiredis.ProtocolError("a reply nobody asked for")
                future = pending.popleft()[0]
                if future.done():
                    continue  # its caller stopped waiting; the reply still had to be consumed
                if isinstance(reply, ResponseError):
                    future.set_exception(_error(reply))
                else:
                    future.set_result(reply)
        except hiredis.ProtocolError as exc:
            self.fail(ConnectionError(f"Redis protocol error: {exc}"))

    def _check_age(self) -> None:
        # Runs when the oldest pending reply may be overdue; re-armed for the next oldest otherwise,
        # and left unarmed when nothing is pending (the next command arms it).
        self.watchdog = None
        if not self.pending:
            return
        due = self.pending[0][1] + self.client.timeout
        if self.loop.time() >= due:
            self.fail(ReplyTimeout(f"Redis did not answer within {self.client.timeout:g} s"))
        else:
            self.watchdog = self.loop.call_at(due, self._check_age)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(ConnectionError(f"lost the Redis connection ({exc or 'closed by the server'})"))
        if not self.lost.done():
            self.lost.set_result(None)

    def fail(self, error: ConnectionError | ReplyTimeout) -> None:
        """Close the connection and fail every pending command with `error`."""
        if not self.closed:
            self.closed = True
            if self.raw is not None:
                self.raw.abort()
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        pending, self.pending = self.pending, deque()
        for future, _ in pending:
            if not future.done():
                future.set_exception(error)
        self.client._lost(self)


class RespClient:
    """One pipelined connection to the Redis of a `redis://` URL, opened lazily; see the module docstring.

    `await client.execute("GET", key)`, `await client.run(script, keys, args)`, or `await client.call(payload)`
    with a command encoded beforehand (`encode`, `bulks`). Not for blocking commands (BLPOP, XREAD BLOCK):
    they would hold every command behind them.

    Args:
        url: `redis://[[user]:password@]host[:port][/db]`.
        timeout: the most any reply may take, in seconds.
        connect_timeout: seconds to connect and set the connection up; `timeout` when not given.

    Raises (from every call): redis-py's ConnectionError (no connection, lost, refused set-up), TimeoutError
    (no reply within `timeout`), ResponseError (Redis answered with an error; NoScriptError for NOSCRIPT).
    """

    def __init__(self, url: str, *, timeout: float = 2.0, connect_timeout: float | None = None) -> None:
        if not handles_url(url):
            raise ValueError(f"{url.split('://')[0]}:// is not supported here: a plain TCP redis:// URL")
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.timeout = timeout
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        handshake = []
        if parts.password is not None:
            credentials = [unquote(parts.password)]
            if parts.username:
                credentials.insert(0, unquote(parts.username))
            handshake.append(encode("AUTH", *credentials))
        db = parts.path.strip("/")
        if db and db != "0":
            handshake.append(encode("SELECT", db))
        self._handshake = handshake
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None

    async def call(self, payload: bytes) -> Any:
        """Send one encoded command and wait for its reply."""
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._connect()
        return await connection.request(payload)

    async def execute(self, *args: Arg) -> Any:
        return await self.call(encode(*args))

    async def run(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:  # a new or restarted Redis, or SCRIPT FLUSH
            await self.execute("SCRIPT", "LOAD", script.text)
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    async def ping(self) -> bool:
        return bool(await self.execute("PING") == b"PONG")

    async def aclose(self) -> None:
        """Close the connection (a later command opens another, as redis-py's clients do)."""
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.fail(ConnectionError("the Redis client was closed"))
            await connection.lost

    def _lost(self, connection: _Connection) -> None:
        if self._connection is connection:
            self._connection = None  # the next call opens a new one

    async def _connect(self) -> _Connection:
        # Concurrent first calls share one attempt; shielded so that one caller's cancellation
        # does not abort the connection the others wait for.
        task = self._connecting
        if task is None:
            task = self._connecting = asyncio.get_running_loop().create_task(self._open())
            task.add_done_callback(self._connected)
        return await asyncio.shield(task)

    def _connected(self, task: asyncio.Task[_Connection]) -> None:
        # Cleared as soon as the attempt ends, even if every caller waiting for it was cancelled,
        # so that a failed attempt is never handed to a later call.
        if self._connecting is task:
            self._connecting = None

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        where = f"{self.host}:{self.port}"
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(lambda: _Connection(self, loop), self.host, self.port)
        except TimeoutError:
            raise ConnectionError(f"Redis at {where} did not answer within {self.connect_timeout:g} s") from None
        except OSError as exc:
            raise ConnectionError(f"cannot connect to Redis at {where} ({exc})") from None
        try:
            # Awaited before any other command is sent; the watchdog bounds them like any reply.
            for payload in self._handshake:
                await connection.request(payload)
        except ResponseError as exc:
            connection.fail(ConnectionError(f"Redis refused the connection set-up: {exc}"))
            raise ConnectionError(f"Redis refused the connection set-up: {exc}") from None
        except BaseException:
            connection.fail(ConnectionError("the connection set-up was cut short"))
            raise
        if connection.closed:
            raise ConnectionError("lost the Redis connection while setting it up")
        self._connection = connection
        return connection


class RedisPyCommands:
    """RespClient's `execute` and `run` on a redis-py client: for the URLs RespClient does not speak."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client = client

    async def execute(self, *args: Arg) -> Any:
        return await self._client.execute_command(*args)  # type: ignore[no-untyped-call]

    async def run(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        try:
            return await self._client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self._client.script_load(script.text)
            return await self._client.evalsha(script.sha, len(keys), *keys, *args)

    async def aclose(self) -> None:
        """The redis-py client is its owner's to close."""


Commands = RespClient | RedisPyCommands


def commands_for(
    url: str, client: redis.asyncio.Redis, *, timeout: float, connect_timeout: float | None = None
) -> Commands:
    """RespClient for a redis:// URL; otherwise the same calls on `client`, a redis-py client of `url`."""
    if handles_url(url):
        return RespClient(url, timeout=timeout, connect_timeout=connect_timeout)
    return RedisPyCommands(client)
