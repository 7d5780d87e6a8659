"""The gRPC-Web interop cases and what a client's user must see of each, in one place for both users:
tests/gateway/test_grpcweb_interop.py asserts them against the gateway, bench/conformance.py runs
them against the gateway and Traefik side by side.

CASES holds grpc/grpc-web's interop cases (doc/interop-test-descriptions.md) and, after them, a few
from our own protocol checklist (shared/research/grpc-web.md section 4) where translators are known
to differ. Each case is one call as tests/js/interop.mjs takes it, made against
tests/support/interop_server.py (grpc.testing.TestService), and a check of what a client reported
(interop.mjs's JSON, or the grpcio shape of the test module): the check raises Mismatch with what
the user saw instead, in a few words.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

TEST_SERVICE = "grpc.testing.TestService"
UNIMPLEMENTED_SERVICE = "grpc.testing.UnimplementedService"

# The JavaScript clients of tests/js (CLIENT-client.mjs), in the order tables show them.
CLIENTS = ["connect", "grpc-web", "protobuf-ts"]

ECHO_INITIAL_KEY, ECHO_INITIAL_VALUE = "x-grpc-test-echo-initial", "test_initial_metadata_value"
ECHO_TRAILING_KEY, ECHO_TRAILING_VALUE = "x-grpc-test-echo-trailing-bin", b"\xab\xab\xab"
TEST_STATUS_MESSAGE = "test status message"
SPECIAL_STATUS_MESSAGE = "\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n"
# Its grpc-message value on the wire (percent-encoded UTF-8), which @protobuf-ts shows undecoded.
SPECIAL_STATUS_MESSAGE_ON_THE_WIRE = (
    "%09%0Atest with whitespace%0D%0Aand Unicode BMP %E2%98%BA and non-BMP %F0%9F%98%88%09%0A"
)
LARGE_REQUEST, LARGE_RESPONSE = 271828, 314159
STREAM_SIZES = [31415, 9, 2653, 58979]
# Above gRPC's default 4 MiB message limit: a proxy must be configured to carry it (GATEWAY_LIMIT).
HUGE_RESPONSE = 5 * 1024 * 1024
GATEWAY_LIMIT = 8 * 1024 * 1024
# headers_before_first_message: the server sends its headers at once and its first message 800 ms
# later; the client must have the headers well before that.
LATE_FIRST_MESSAGE_US, LATE_HEADERS_MS = 800_000, 400
# deadline_mid_stream: a message every 150 ms, a deadline of 400 ms: two messages, then the deadline.
SLOW_STREAM_MESSAGES, SLOW_STREAM_INTERVAL_US, SLOW_STREAM_DEADLINE_MS = 8, 150_000, 400

STATUS_NAMES = [
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
]  # fmt: skip

Seen = dict[str, Any]


class Mismatch(Exception):
    """What the client's user saw instead of what the case expects."""


@dataclass(frozen=True)
class Case:
    name: str
    call: dict[str, Any]  # as interop.mjs takes it (see there)
    check: Callable[[str, Seen], None]  # (client, what it reported); raises Mismatch
    source: str  # where the case comes from: "interop" (grpc-web's) or a checklist id


def problem(case: Case, client: str, seen: Seen) -> str | None:
    """None when the client's user saw what the case expects, else what they saw instead."""
    try:
        case.check(client, seen)
    except Mismatch as mismatch:
        return str(mismatch)
    return None


def gateway_config(backend: str) -> dict[str, Any]:
    """The gateway in front of the interop server, for both of its services (as Envoy is configured
    in grpc-web's interop set-up); messages up to 8 MiB, for large_response_5mib."""
    return {"upstreams": {TEST_SERVICE: [backend], UNIMPLEMENTED_SERVICE: [backend]}, "maxMessageBytes": GATEWAY_LIMIT}


# What the checks use.


def status_name(code: Any) -> str:
    return STATUS_NAMES[code] if isinstance(code, int) and 0 <= code < len(STATUS_NAMES) else f"code {code!r}"


def saw_status(seen: Seen) -> str:
    """The status as the user saw it, e.g. `UNKNOWN: "HTTP 500"`."""
    message = seen.get("message") or ""
    return status_name(seen.get("code")) + (f": {message!r}" if message else "")


def expect_status(seen: Seen, code: int, message: str | None = None) -> None:
    if seen.get("code") != code or (message is not None and seen.get("message") != message):
        raise Mismatch(saw_status(seen))


def expect_ok(seen: Seen) -> None:
    expect_status(seen, 0)


def b64(value: str) -> bytes:
    return base64.b64decode(value + "=" * (-len(value) % 4))


def bodies(seen: Seen) -> list[bytes]:
    return [b64(message.get("payload", {}).get("body", "")) for message in seen.get("messages", [])]


def expect_sizes(seen: Seen, sizes: list[int]) -> None:
    """The messages are payloads of these many zero bytes."""
    got = bodies(seen)
    if got != [bytes(size) for size in sizes]:
        lengths = [len(body) for body in got]
        raise Mismatch(f"{saw_status(seen)}, messages of {lengths} bytes instead of {sizes}")


def expect_messages(seen: Seen, messages: list[dict[str, Any]]) -> None:
    if seen.get("messages") != messages:
        raise Mismatch(f"{saw_status(seen)}, {len(seen.get('messages', []))} message(s) instead of {len(messages)}")


def expect_header(seen: Seen, key: str, value: str) -> None:
    headers = seen.get("headers")
    if headers is None:
        raise Mismatch(f"{saw_status(seen)}, but no response headers reported")
    if headers.get(key) != value:
        raise Mismatch(f"{saw_status(seen)}, header {key} = {headers.get(key)!r}")


def expect_binary_trailer(seen: Seen, key: str, value: bytes, *, on_error: bool = False) -> None:
    """A -bin trailer (base64, as clients show them); for a failed call the clients show trailers
    with the error (errorMetadata), not as trailers."""
    trailers = {**(seen.get("errorMetadata") or {}), **(seen.get("trailers") or {})} if on_error else seen["trailers"]
    if trailers is None or key not in trailers:
        raise Mismatch(f"{saw_status(seen)}, no trailer {key}")
    if b64(trailers[key]) != value:
        raise Mismatch(f"{saw_status(seen)}, trailer {key} = {trailers[key]!r}")


# The calls, and their checks.


def zeros(size: int) -> str:
    return base64.b64encode(bytes(size)).decode()


def large_unary_request() -> dict[str, Any]:
    return {"responseSize": LARGE_RESPONSE, "payload": {"body": zeros(LARGE_REQUEST)}}


def status(message: str) -> dict[str, Any]:
    return {"code": 2, "message": message}


ECHO_METADATA: dict[str, Any] = {
    "headers": {ECHO_INITIAL_KEY: ECHO_INITIAL_VALUE},
    "binaryHeaders": {ECHO_TRAILING_KEY: base64.b64encode(ECHO_TRAILING_VALUE).decode()},
}


def interop_call(name: str, method: str, *, service: str = TEST_SERVICE, **spec: Any) -> dict[str, Any]:
    """One call as interop.mjs takes it (the request in protobuf JSON; see interop.mjs)."""
    return {"name": name, "service": service, "method": method, **spec}


def check_empty(client: str, seen: Seen) -> None:
    expect_ok(seen)
    expect_messages(seen, [{}])


def check_large_unary(client: str, seen: Seen) -> None:
    expect_ok(seen)
    expect_sizes(seen, [LARGE_RESPONSE])
    if seen["messages"][0]["payload"].get("type") != "COMPRESSABLE":
        raise Mismatch(f"payload type {seen['messages'][0]['payload'].get('type')!r}")


def check_server_streaming(client: str, seen: Seen) -> None:
    expect_ok(seen)
    expect_sizes(seen, STREAM_SIZES)


def check_custom_metadata(client: str, seen: Seen) -> None:
    # grpc-web reports the response headers only at the end of the call ('metadata'), which is
    # enough here: the case is about their values.
    expect_ok(seen)
    expect_sizes(seen, [LARGE_RESPONSE])
    expect_header(seen, ECHO_INITIAL_KEY, ECHO_INITIAL_VALUE)
    expect_binary_trailer(seen, ECHO_TRAILING_KEY, ECHO_TRAILING_VALUE)


def check_status_code_and_message(client: str, seen: Seen) -> None:
    expect_status(seen, 2, TEST_STATUS_MESSAGE)
    expect_messages(seen, [])


def special_status_check(sizes: list[int]) -> Callable[[str, Seen], None]:
    def check(client: str, seen: Seen) -> None:
        if client == "protobuf-ts":
            # It shows grpc-message as it arrives, without percent-decoding it (as in
            # test_js_clients.py): a limitation of that client, whichever proxy it talks to.
            expect_status(seen, 2, SPECIAL_STATUS_MESSAGE_ON_THE_WIRE)
        else:
            expect_status(seen, 2, SPECIAL_STATUS_MESSAGE)
        expect_sizes(seen, sizes)

    return check


def check_unimplemented(client: str, seen: Seen) -> None:
    expect_status(seen, 12)
    expect_messages(seen, [])


def check_empty_stream(client: str, seen: Seen) -> None:
    expect_ok(seen)
    expect_messages(seen, [])


def check_error_after_headers(client: str, seen: Seen) -> None:
    expect_status(seen, 2, TEST_STATUS_MESSAGE)
    expect_messages(seen, [])
    if client != "grpc-web":
        # grpc-web fires 'error' as it parses the trailer frame, and 'metadata' (the headers) only
        # when the response completes, after interop.mjs has taken the error as the call's end
        # (grpc/grpc-web:javascript/net/grpc/web/grpcwebclientreadablestream.js).
        expect_header(seen, ECHO_INITIAL_KEY, ECHO_INITIAL_VALUE)


def check_trailers_on_error(client: str, seen: Seen) -> None:
    expect_status(seen, 2, TEST_STATUS_MESSAGE)
    expect_binary_trailer(seen, ECHO_TRAILING_KEY, ECHO_TRAILING_VALUE, on_error=True)


def check_deadline_mid_stream(client: str, seen: Seen) -> None:
    # Whoever notices the deadline first (client timer, proxy or server), the user sees
    # DEADLINE_EXCEEDED after the messages that came before it.
    expect_status(seen, 4)
    count = len(seen.get("messages", []))
    if not 0 < count < SLOW_STREAM_MESSAGES:
        raise Mismatch(f"{saw_status(seen)} after {count} of {SLOW_STREAM_MESSAGES} messages")


def check_headers_before_first_message(client: str, seen: Seen) -> None:
    expect_ok(seen)
    expect_sizes(seen, [1])
    expect_header(seen, ECHO_INITIAL_KEY, ECHO_INITIAL_VALUE)
    # grpc-web reports the headers only when the response completes: it cannot show when they came.
    headers_ms = seen.get("headersMs")
    if client != "grpc-web" and (headers_ms is None or headers_ms > LATE_HEADERS_MS):
        late = "never reported" if headers_ms is None else f"after {headers_ms:.0f} ms"
        raise Mismatch(f"headers {late}; the first message came after {LATE_FIRST_MESSAGE_US // 1000} ms")


def check_huge_response(client: str, seen: Seen) -> None:
    expect_ok(seen)
    expect_sizes(seen, [HUGE_RESPONSE])


def case(name: str, method: str, check: Callable[[str, Seen], None], source: str = "interop", **spec: Any) -> Case:
    return Case(name, interop_call(name, method, **spec), check, source)


CASES: list[Case] = [
    case("empty_unary", "EmptyCall", check_empty),
    # A deadline of 5 s (grpc-timeout on the wire): the call ends well within it.
    case("empty_unary_with_deadline", "EmptyCall", check_empty, timeoutMs=5000),
    case("large_unary", "UnaryCall", check_large_unary, request=large_unary_request()),
    case(
        "server_streaming",
        "StreamingOutputCall",
        check_server_streaming,
        request={"responseParameters": [{"size": s, "intervalUs": i * 10} for i, s in enumerate(STREAM_SIZES)]},
    ),
    # The interop descriptions' custom_metadata, status_code_and_message and special_status_message
    # make their streaming half with FullDuplexCall, which gRPC-Web cannot make: StreamingOutputCall
    # stands in for it.
    case("custom_metadata_unary", "UnaryCall", check_custom_metadata, request=large_unary_request(), **ECHO_METADATA),
    case(
        "custom_metadata_streaming",
        "StreamingOutputCall",
        check_custom_metadata,
        request={"responseParameters": [{"size": LARGE_RESPONSE}], "payload": {"body": zeros(LARGE_REQUEST)}},
        **ECHO_METADATA,
    ),
    case(
        "status_code_and_message_unary",
        "UnaryCall",
        check_status_code_and_message,
        request={"responseStatus": status(TEST_STATUS_MESSAGE)},
    ),
    # No message before the error: the backend answers trailers-only (our checklist's S1).
    case(
        "status_code_and_message_streaming",
        "StreamingOutputCall",
        check_status_code_and_message,
        request={"responseStatus": status(TEST_STATUS_MESSAGE)},
    ),
    case(
        "special_status_message_unary",
        "UnaryCall",
        special_status_check([]),
        request={"responseStatus": status(SPECIAL_STATUS_MESSAGE)},
    ),
    # After one reply: the status comes in trailers after a message (the gRPC-Web trailer frame), not
    # in a trailers-only response as in the unary case.
    case(
        "special_status_message_streaming",
        "StreamingOutputCall",
        special_status_check([1]),
        request={"responseParameters": [{"size": 1}], "responseStatus": status(SPECIAL_STATUS_MESSAGE)},
    ),
    case("unimplemented_method", "UnimplementedCall", check_unimplemented),
    case("unimplemented_service", "UnimplementedCall", check_unimplemented, service=UNIMPLEMENTED_SERVICE),
    # From here on, our checklist's cases (shared/research/grpc-web.md section 4).
    # R4: a server stream that ends OK without a message (the backend answers trailers-only).
    case("empty_stream", "StreamingOutputCall", check_empty_stream, "R4", request={}),
    # S3: an error after the response headers went out (echoed initial metadata), no message: headers
    # then a trailer frame, not trailers-only.
    case(
        "error_after_headers_streaming",
        "StreamingOutputCall",
        check_error_after_headers,
        "S3",
        request={"responseStatus": status(TEST_STATUS_MESSAGE)},
        headers=ECHO_METADATA["headers"],
    ),
    # M4: a -bin trailer in a trailers-only error (it travels as an HTTP header there).
    case(
        "trailers_only_error_with_bin_trailer",
        "UnaryCall",
        check_trailers_on_error,
        "M4",
        request={"responseStatus": status(TEST_STATUS_MESSAGE)},
        binaryHeaders=ECHO_METADATA["binaryHeaders"],
    ),
    # R1: the response headers (echoed initial metadata) reach the client when the server sends them,
    # not with the first message, which comes later (as with a direct gRPC call).
    case(
        "headers_before_first_message",
        "StreamingOutputCall",
        check_headers_before_first_message,
        "R1",
        request={"responseParameters": [{"size": 1, "intervalUs": LATE_FIRST_MESSAGE_US}]},
        headers=ECHO_METADATA["headers"],
    ),
    # M6: the deadline expires while the stream is running.
    case(
        "deadline_mid_stream",
        "StreamingOutputCall",
        check_deadline_mid_stream,
        "M6",
        request={"responseParameters": [{"size": 1, "intervalUs": SLOW_STREAM_INTERVAL_US}] * SLOW_STREAM_MESSAGES},
        timeoutMs=SLOW_STREAM_DEADLINE_MS,
    ),
    # F16: a response above gRPC's default 4 MiB limit (the gateway is configured for 8 MiB).
    case("large_response_5mib", "UnaryCall", check_huge_response, "F16", request={"responseSize": HUGE_RESPONSE}),
]
CALLS: list[dict[str, Any]] = [case.call for case in CASES]
CASE_BY_NAME: dict[str, Case] = {case.name: case for case in CASES}
