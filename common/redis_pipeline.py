"""One Redis connection that pipelines: the commands issued in one event-loop turn leave in one write,
and the replies are handed back in order.

For the hot single-key commands of plugins (a cache Get, a bus Publish): through redis-py each command
takes a pooled connection, its own send and its own read, and redis-py's per-command bookkeeping
(retries, metrics) cost more than the round trip. Here concurrent callers share one connection, one
write and one read per turn, parsed by hiredis. Everything else (SCAN, pub/sub, blocking reads)
stays on redis-py, whose exceptions this module raises so that callers map errors once.

A caller that stops waiting (a deadline) does not disturb the others: its reply still arrives in
order and is dropped. A lost connection fails the commands that were waiting on it, and the next
command connects again. Plain TCP redis:// URLs only, as the gateway's limiter client: for rediss://
and unix://, `commands_for` gives the same two calls on redis-py (which does TLS and Unix sockets).

The gateway's rate limiter has its own pipelined client (gateway/ratelimit/resp.py: StoreErrors, a
watchdog instead of per-call deadlines, and reply patterns matched in one C call for its scripts);
the two should become one here, with the limiter's fast paths as hooks.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
import redis.asyncio
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError, NoScriptError, ResponseError

from common.corking import CorkedTransport

Arg = bytes | str | int | float


def _encode(args: Sequence[Arg]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int):
            data = b"%d" % arg
        else:
            data = repr(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class Script:
    """A Lua script run by its SHA1, loaded into Redis the first time Redis does not know it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()  # Redis names scripts by their SHA1


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._corked: CorkedTransport | None = None
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def send(self, args: Sequence[Arg], waiter: asyncio.Future[Any]) -> None:
        """Written with the rest of this loop iteration's commands; the waiter gets the reply."""
        assert self._corked is not None
        self.waiting.append(waiter)
        self._corked.write(_encode(args))  # on a closing transport dropped: connection_lost fails the waiter

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._corked = CorkedTransport(transport, asyncio.get_running_loop())

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            waiter = self.waiting.popleft()
            if waiter.done():  # its caller stopped waiting
                continue
            if isinstance(reply, ResponseError):
                waiter.set_exception(NoScriptError(str(reply)) if str(reply).startswith("NOSCRIPT") else reply)
            else:
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        error = ConnectionError(f"the connection to Redis was lost ({exc or 'closed by Redis'})")
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_exception(error)
        if not self.lost.done():
            self.lost.set_result(None)


class PipelinedRedis:
    """`await redis.execute("GET", key)`; `await redis.run(script, keys, args)`. Not for blocking commands."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 6379, *, db: int = 0, username: str | None = None,
        password: str | None = None, connect_timeout: float = 2.0,
    ) -> None:  # fmt: skip
        self.host = host
        self.port = port
        self._hello: list[list[Arg]] = []
        if password is not None:
            self._hello.append(["AUTH", username, password] if username else ["AUTH", password])
        if db:
            self._hello.append(["SELECT", db])
        self._connect_timeout = connect_timeout
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None

    @classmethod
    def from_url(cls, url: str, *, connect_timeout: float = 2.0) -> PipelinedRedis:
        if not url.startswith("redis://"):
            raise ValueError(f"{url.split('://')[0]}:// is not supported here: a plain TCP redis:// URL")
        options = parse_url(url)
        return cls(
            options.get("host", "127.0.0.1"), int(options.get("port", 6379)), db=int(options.get("db", 0)),
            username=options.get("username"), password=options.get("password"), connect_timeout=connect_timeout,
        )  # fmt: skip

    async def execute(self, *args: Arg) -> Any:
        connection = self._connection
        if connection is None or connection.transport is None or connection.transport.is_closing():
            connection = await self._connect()
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        connection.send(args, waiter)
        return await waiter

    async def run(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:  # a new or restarted Redis, or SCRIPT FLUSH
            await self.execute("SCRIPT", "LOAD", script.text)
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    async def _connect(self) -> _Connection:
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.create_task(self._opened())
        return await asyncio.shield(self._connecting)

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        connection: _Connection | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await loop.create_connection(_Connection, self.host, self.port)
                for command in self._hello:
                    waiter: asyncio.Future[Any] = loop.create_future()
                    connection.send(command, waiter)
                    await waiter
        except BaseException:
            if connection is not None and connection.transport is not None:
                connection.transport.close()  # refused AUTH or SELECT, or cut short: not kept half open
            raise
        return connection

    async def _opened(self) -> _Connection:
        try:
            self._connection = await self._open()
            return self._connection
        except TimeoutError:
            where = f"{self.host}:{self.port}"
            raise ConnectionError(f"Redis at {where} did not answer within {self._connect_timeout:g} s") from None
        except OSError as exc:
            raise ConnectionError(f"Redis at {self.host}:{self.port} cannot be reached ({exc})") from None

    async def aclose(self) -> None:
        """Closes the connection (the next command, if any, opens another, as redis-py's clients do)."""
        connection, self._connection = self._connection, None
        if connection is not None and connection.transport is not None:
            connection.transport.close()
            await connection.lost


class RedisPyCommands:
    """PipelinedRedis's calls on a redis-py client: for the URLs it does not speak (rediss://, unix://)."""

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


Commands = PipelinedRedis | RedisPyCommands


def commands_for(url: str, client: redis.asyncio.Redis, *, connect_timeout: float = 2.0) -> Commands:
    """PipelinedRedis for a redis:// URL; otherwise the same calls on `client`, a redis-py client of `url`."""
    if url.startswith("redis://"):
        return PipelinedRedis.from_url(url, connect_timeout=connect_timeout)
    return RedisPyCommands(client)
