"""`Context`: the grpc.aio.ServicerContext a servicer gets from common.rpc.Server, one per call.

It keeps what the servicer says about the call (status, details, metadata) and hands reads, writes
and the call's state to the call itself (common/rpc/call.py). As in grpc.aio, `abort` sends the
status at once and raises AbortError; the status stands even if the servicer catches that exception.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
import grpc.aio

from common.rpc.wire import Metadata, metadata_block

if TYPE_CHECKING:
    from common.rpc.call import ServedCall

__all__ = ["Context"]

DoneCallback = Callable[["Context"], None]


class Context(grpc.aio.ServicerContext[Any, Any]):
    __slots__ = ("_call", "_code", "_details", "_done_callbacks", "_trailing", "aborted")

    def __init__(self, call: ServedCall) -> None:
        self._call = call
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: Metadata = ()
        self._done_callbacks: list[DoneCallback] | None = None
        self.aborted = False

    # --- messages -----------------------------------------------------------------------------

    async def read(self) -> Any:
        """The next request message, or grpc.aio.EOF once the client has half-closed."""
        return await self._call.read()

    async def write(self, message: Any) -> None:
        await self._call.write(message)

    async def send_initial_metadata(self, initial_metadata: Iterable[tuple[str, str | bytes]]) -> None:
        if self._call.headers_sent:
            raise grpc.aio.UsageError("initial metadata has been sent already")
        self._call.send_headers(metadata_block(initial_metadata))

    # --- status -------------------------------------------------------------------------------

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Iterable[tuple[str, str | bytes]] = ()
    ) -> NoReturn:
        if code is grpc.StatusCode.OK:
            raise grpc.aio.UsageError("abort() needs a status code other than OK")
        self._code = code
        self._details = details
        if trailing_metadata:
            self._trailing = tuple(trailing_metadata)
        self.aborted = True
        # The status goes to the client now, as grpc.aio sends it: the servicer's clean-up (its finally
        # blocks, which may wait on a backend that is away) does not hold the client's answer back.
        await self._call.end(code, details)
        raise grpc.aio.AbortError("the servicer aborted the call")

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        await self.abort(status.code, status.details, status.trailing_metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        if not self.aborted:
            self._code = code

    def set_details(self, details: str) -> None:
        if not self.aborted:
            self._details = details

    def set_trailing_metadata(self, trailing_metadata: Iterable[tuple[str, str | bytes]]) -> None:
        self._trailing = tuple(trailing_metadata)

    # None until the servicer sets one, as grpcio answers: the tracing interceptor
    # (plugins/sdk/tracing.py) then tells a failure from a success by whether the handler raised.
    def code(self) -> grpc.StatusCode | None:  # type: ignore[override]
        return self._code

    def details(self) -> str:
        return self._details

    # Tuples of (key, value), as grpc.aio's own context returns at run time (grpc-stubs say its Metadata class).
    def trailing_metadata(self) -> Metadata:  # type: ignore[override]
        return self._trailing

    # --- the call -----------------------------------------------------------------------------

    def invocation_metadata(self) -> Metadata:  # type: ignore[override]  # tuples, as trailing_metadata
        return self._call.metadata

    def time_remaining(self) -> float | None:  # type: ignore[override]  # None: no deadline, as grpc.aio answers
        return self._call.time_remaining()

    def cancelled(self) -> bool:
        return self._call.cancelled

    def done(self) -> bool:
        return self._call.closed

    def peer(self) -> str:
        return self._call.peer()

    def add_done_callback(self, callback: DoneCallback) -> None:
        if self._call.closed:
            callback(self)
            return
        if self._done_callbacks is None:
            self._done_callbacks = []
        self._done_callbacks.append(callback)

    def call_done_callbacks(self) -> None:
        callbacks, self._done_callbacks = self._done_callbacks, None
        for callback in callbacks or ():
            callback(self)

    # --- accepted for grpc.aio's sake: no TLS, responses never compressed ----------------------

    def set_compression(self, compression: grpc.Compression) -> None:
        return None

    def disable_next_message_compression(self) -> None:
        return None

    def peer_identities(self) -> Iterable[bytes] | None:
        return None

    def peer_identity_key(self) -> str | None:
        return None

    def auth_context(self) -> Mapping[str, Iterable[bytes]]:
        return {}
