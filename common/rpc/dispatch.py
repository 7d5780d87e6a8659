"""Running one call's method handler: the four call shapes of grpc.RpcMethodHandler, and how each
way a handler can end becomes the call's status.

As grpc.aio: an AbortError (context.abort) ends the call with the status the servicer gave, even if
the servicer caught it; any other exception ends it with UNKNOWN, logged here, its traceback never
sent; a handler that returns ends it with the code it set (OK if none).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from common.rpc.call import ServedCall
from common.rpc.wire import EOF, MessageError, Metadata

__all__ = ["FindHandler", "run_call"]

logger = logging.getLogger(__name__)

# How long a call's end waits for a client that is still sending (see _end): until it half-closes or
# sends nothing for _QUIET seconds, and never longer than _SETTLE_LIMIT.
_QUIET = 0.02
_SETTLE_LIMIT = 0.2

# The handler for a call's path and metadata (interceptors included); None: no such method.
# (grpc's classes are generic only in grpc-stubs, hence the quotes.)
FindHandler = Callable[[str, Metadata], Awaitable["grpc.RpcMethodHandler[Any, Any] | None"]]


async def run_call(call: ServedCall, find: FindHandler) -> None:
    context = call.context
    try:
        handler = await find(call.path, call.metadata)
        if handler is None:
            await _end(call, grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
            return
        call.handler = handler
        await _serve(call, handler)
    except grpc.aio.AbortError:
        pass  # the status is the context's, below
    except MessageError as exc:  # a request message that does not deserialize
        call.finish(exc.code, exc.message)  # it arrived: no need to wait for it
    except asyncio.CancelledError:
        # The call ended (reset, deadline, shutdown) and cancelled its handler, or the handler
        # cancelled itself: either way nothing waits for this task.
        call.finish(grpc.StatusCode.CANCELLED, "the call was cancelled")
        return
    except Exception as exc:
        if not context.aborted:
            logger.exception("method handler %s failed", call.path)
            await _end(call, grpc.StatusCode.UNKNOWN, f"Unexpected error in the method handler: {type(exc).__name__}")
    await _end(call, context.code() or grpc.StatusCode.OK, context.details())


async def _end(call: ServedCall, code: grpc.StatusCode, details: str) -> None:
    """The call's trailers, once the client has finished sending its request or paused.

    grpcio's asyncio client fails a client-streaming call with INTERNAL ("Internal error from Core"),
    not the status sent, when the stream ends while it is still sending a message. A call that ends
    before reading all of its request (an unknown method, an abort up front) ended that early in
    70 % of 400 tries of a two-message request (grpc.aio's server, slower to answer: 4 %), and the
    gateway's descriptor fetch, which asks for reflection v1 before v1alpha, failed now and then.
    Waiting for the request's end (already there for a unary request) while the client keeps
    sending, and sending no RST_STREAM in ServedCall.finish: 0 in 800.
    """
    if not (call.request_ended or call.closed):
        await call.request_settled(_QUIET, _SETTLE_LIMIT)
    call.finish(code, details)


async def _serve(call: ServedCall, handler: grpc.RpcMethodHandler[Any, Any]) -> None:
    context = call.context
    request: Any
    if handler.request_streaming:
        request = _Requests(call)
    else:
        message = await call.next_message()
        if message is None:
            if not call.closed:
                call.finish(grpc.StatusCode.INTERNAL, "the request carries no message")
            return
        request = call.deserialize(message)
    if handler.response_streaming:
        # grpc-stubs type the behaviours for grpc's synchronous server: here they are coroutines or async generators.
        behavior: Any = handler.stream_stream if handler.request_streaming else handler.unary_stream
        result = behavior(request, context)
        if hasattr(result, "__aiter__"):  # an async generator: each item is a response message
            async for response in result:
                await call.write(response)
        elif inspect.isawaitable(result):  # a coroutine that writes through context.write()
            await result
        else:
            raise TypeError(f"a streaming handler returned {type(result).__name__}, not an async generator")
        return
    behavior = handler.stream_unary if handler.request_streaming else handler.unary_unary
    response = behavior(request, context)
    if inspect.isawaitable(response):
        response = await response
    code = context.code()
    if (code is None or code is grpc.StatusCode.OK) and not call.closed:
        serialize = handler.response_serializer
        await call.send_message(serialize(response) if serialize is not None else response)


class _Requests:
    """The request messages of a client-streaming call, as the async iterator a servicer reads."""

    __slots__ = ("_call",)

    def __init__(self, call: ServedCall) -> None:
        self._call = call

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        message = await self._call.read()
        if message is EOF:
            raise StopAsyncIteration
        return message
