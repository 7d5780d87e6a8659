"""Running one call's method handler: the four call shapes of grpc.RpcMethodHandler, and how each
way a handler can end becomes the call's status.

As grpc.aio: an AbortError (context.abort) ends the call with the status the servicer gave, even if
the servicer caught it; any other exception ends it with UNKNOWN, logged here, its traceback never
sent; a handler that returns ends it with the code it set (OK if none).
"""

from __future__ import annotations

import asyncio
import contextlib
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

# The handler for a call's path and metadata (interceptors included); None: no such method.
# (grpc's classes are generic only in grpc-stubs, hence the quotes.)
FindHandler = Callable[[str, Metadata], Awaitable["grpc.RpcMethodHandler[Any, Any] | None"]]


async def run_call(call: ServedCall, find: FindHandler) -> None:
    context = call.context
    try:
        handler = await find(call.path, call.metadata)
        if handler is None:
            await call.end(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
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
            await call.end(grpc.StatusCode.UNKNOWN, f"Unexpected error in the method handler: {type(exc).__name__}")
    await call.end(context.code() or grpc.StatusCode.OK, context.details())


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
            # Closed on the way out, cancellation included: its finally blocks run inside this task,
            # which stop() waits for, not in a finalizer task the loop may never run (at shutdown).
            async with contextlib.aclosing(result) if hasattr(result, "aclose") else contextlib.nullcontext():
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
