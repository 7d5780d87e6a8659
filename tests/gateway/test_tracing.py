"""Tracing across processes: a trace a client starts is one trace through the gateway and the plugin.

Real processes: `upf gateway` with tracing.otlpEndpoint, `upf plugin demo` with
OTEL_EXPORTER_OTLP_ENDPOINT, both exporting OTLP/gRPC to a collector served by this test (grpcio and
OpenTelemetry's own TraceService definitions). With tracing off the client's traceparent still
reaches the plugin, unchanged (gateway/telemetry/calls.py).
"""

from __future__ import annotations

import os
import secrets
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from upf.demo.v1 import demo_pb2

from tests.plugins.orders.harness import create_request
from tests.support.grpcweb import BINARY, frame, parse_response
from tests.support.processes import Gateway, Process, free_port, run_gateway, wait_until

UPF = str(Path(sys.executable).parent / "upf")
SERVER, CLIENT = trace_pb2.Span.SPAN_KIND_SERVER, trace_pb2.Span.SPAN_KIND_CLIENT


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector: keeps every span with its resource's service.name."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[tuple[str, trace_pb2.Span]] = []

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self.lock:
            for resource_spans in request.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append((attributes.get("service.name", ""), span))
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: bytes) -> list[tuple[str, trace_pb2.Span]]:
        with self.lock:
            return [(service, span) for service, span in self.spans if span.trace_id == trace_id]


@pytest.fixture(scope="module")
def collector() -> Iterator[tuple[Collector, str]]:
    servicer = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(None)


@pytest.fixture(scope="module")
def traced_platform(collector: tuple[Collector, str], work_dir: Path) -> Iterator[Gateway]:
    """The demo plugin (no registry: a static upstream) and a gateway, both exporting to the collector."""
    _, endpoint = collector
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("UPF_", "OTEL_"))}
    env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{endpoint}", "OTEL_BSP_SCHEDULE_DELAY": "50"}
    # The registry is nowhere: the plugin serves anyway and retries its registration in the background.
    args = [UPF, "plugin", "demo", "--registry", f"127.0.0.1:{free_port()}", "--port", str(port), "--drain-grace", "1"]
    plugin = Process(args, env=env, log=work_dir / f"traced-demo-{port}.log")
    # Two replicas in turn, one of them down: every other call is refused by it unsent and retried on
    # the live one (a transparent retry), so retries show in the traces.
    config = {
        "upstreams": {"upf.demo.v1.Echo": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{port}"]},
        "loadBalancing": "round_robin",
        "tracing": {"otlpEndpoint": endpoint, "exportInterval": 0.05},
        "rateLimiting": {"enabled": True, "requestsPerSecond": 1000, "burstSize": 1000},  # a step with a span
    }
    try:
        with run_gateway(config, work_dir) as gateway:
            wait_until(lambda: say(gateway, "ready?")[0] == 0, what="the demo plugin to answer through the gateway")
            yield gateway
    finally:
        plugin.stop()


def say(gateway: Gateway, text: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    body = frame(demo_pb2.SayRequest(text=text).SerializeToString())
    response = httpx.post(
        f"{gateway.url}/upf.demo.v1.Echo/Say",
        content=body,
        headers={"content-type": BINARY, **(headers or {})},
        timeout=10.0,
    )
    parsed = parse_response(response.status_code, dict(response.headers), response.content)
    return parsed.status, parsed.messages[0] if parsed.messages else b""


def test_a_trace_started_by_a_client_is_one_trace_across_gateway_and_plugin(
    traced_platform: Gateway, collector: tuple[Collector, str]
) -> None:
    spans, _ = collector
    trace_id, client_span = secrets.token_bytes(16), secrets.token_bytes(8)
    traceparent = f"00-{trace_id.hex()}-{client_span.hex()}-01"
    status, message = say(traced_platform, "traced", {"traceparent": traceparent, "tracestate": "vendor=kept"})
    assert status == 0
    assert demo_pb2.SayResponse.FromString(message).text == "echo: traced"

    def the_trace() -> list[tuple[str, Any]] | None:
        found = spans.of_trace(trace_id)
        kinds = {(service, span.kind) for service, span in found}
        return found if {("upf-gateway", SERVER), ("upf-gateway", CLIENT), ("demo-plugin", SERVER)} <= kinds else None

    found = wait_until(the_trace, timeout=20, what="the gateway's and the plugin's spans at the collector")
    [call] = [span for service, span in found if service == "upf-gateway" and span.kind == SERVER]
    attempts = [span for service, span in found if service == "upf-gateway" and span.kind == CLIENT]
    [served] = [span for service, span in found if service == "demo-plugin"]
    # client -> gateway call -> gateway attempt -> plugin call: one trace, each the parent of the next.
    assert call.parent_span_id == client_span
    assert {attempt.parent_span_id for attempt in attempts} == {call.span_id}
    [attempt] = [attempt for attempt in attempts if attempt.status.code != trace_pb2.Status.STATUS_CODE_ERROR]
    assert served.parent_span_id == attempt.span_id
    [limit] = [span for service, span in found if span.name == "rate limit"]
    assert limit.parent_span_id == call.span_id
    assert call.name == attempt.name == served.name == "upf.demo.v1.Echo/Say"
    assert call.trace_state == "vendor=kept"  # the client's tracestate goes on with its trace
    attributes = {a.key: a.value for a in call.attributes}
    assert attributes["rpc.service"].string_value == "upf.demo.v1.Echo"
    assert attributes["rpc.grpc.status_code"].int_value == 0


def test_a_call_without_a_trace_starts_one_at_the_gateway(
    traced_platform: Gateway, collector: tuple[Collector, str]
) -> None:
    spans, _ = collector
    status, _ = say(traced_platform, "untraced", {"x-marker": "untraced"})
    assert status == 0

    def new_trace() -> list[tuple[str, Any]] | None:
        with spans.lock:
            roots = [
                span
                for service, span in spans.spans
                if service == "upf-gateway" and span.kind == SERVER and not span.parent_span_id
            ]
        for root in roots:
            found = spans.of_trace(root.trace_id)
            if any(service == "demo-plugin" for service, _ in found):
                return found
        return None

    found = wait_until(new_trace, timeout=20, what="a trace the gateway started, with the plugin's span")
    ids = {span.span_id for _, span in found}
    [served] = [span for service, span in found if service == "demo-plugin"]
    assert served.parent_span_id in ids


def test_with_tracing_off_the_clients_traceparent_reaches_the_plugin_unchanged(gateway: Gateway, pb: Any) -> None:
    traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    response = httpx.post(
        f"{gateway.url}/accept.v1.Probe/Unary",
        content=frame(pb.CallRequest().SerializeToString()),
        headers={"content-type": BINARY, "traceparent": traceparent, "tracestate": "a=1,b=2"},
        timeout=10.0,
    )
    parsed = parse_response(response.status_code, dict(response.headers), response.content)
    assert parsed.status == 0, parsed.message
    metadata = dict(pb.CallReply.FromString(parsed.messages[0]).metadata)
    assert metadata["traceparent"] == traceparent
    assert metadata["tracestate"] == "a=1,b=2"


def test_with_tracing_off_native_grpc_passes_the_traceparent_through(gateway: Gateway, pb: Any, pb_grpc: Any) -> None:
    traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        reply = pb_grpc.ProbeStub(channel).Unary(pb.CallRequest(), metadata=[("traceparent", traceparent)], timeout=10)
    assert dict(reply.metadata)["traceparent"] == traceparent


def test_a_retried_call_shows_each_attempt_and_the_plugin_under_the_one_that_reached_it(
    traced_platform: Gateway, collector: tuple[Collector, str]
) -> None:
    spans, _ = collector
    trace_ids = [secrets.token_bytes(16) for _ in range(2)]
    for trace_id in trace_ids:  # in turn: one of the two calls goes to the replica that is down first
        assert (
            say(traced_platform, "retried", {"traceparent": f"00-{trace_id.hex()}-{secrets.token_hex(8)}-01"})[0] == 0
        )

    def retried() -> list[Any] | None:
        for trace_id in trace_ids:
            found = spans.of_trace(trace_id)
            attempts = [span for service, span in found if service == "upf-gateway" and span.kind == CLIENT]
            served = [span for service, span in found if service == "demo-plugin"]
            if len(attempts) == 2 and served:
                return [*sorted(attempts, key=lambda span: span.start_time_unix_nano), served[0]]
        return None

    first, second, served = wait_until(retried, timeout=20, what="a trace with two attempts")
    numbers = [{a.key: a.value for a in span.attributes}["upf.attempt"].int_value for span in (first, second)]
    assert numbers == [1, 2]
    assert first.status.code == trace_pb2.Status.STATUS_CODE_ERROR  # UNAVAILABLE: nothing listens there
    assert {a.key: a.value for a in first.attributes}["rpc.grpc.status_code"].int_value == 14
    assert served.parent_span_id == second.span_id


def test_a_server_stream_is_traced_in_the_plugin_too(
    traced_platform: Gateway, collector: tuple[Collector, str]
) -> None:
    spans, _ = collector
    trace_id = secrets.token_bytes(16)
    response = httpx.post(
        f"{traced_platform.url}/upf.demo.v1.Echo/Count",
        content=frame(demo_pb2.CountRequest(count=3).SerializeToString()),
        headers={"content-type": BINARY, "traceparent": f"00-{trace_id.hex()}-{secrets.token_hex(8)}-01"},
        timeout=10.0,
    )
    parsed = parse_response(response.status_code, dict(response.headers), response.content)
    assert (parsed.status, len(parsed.messages)) == (0, 3)

    def served() -> list[Any] | None:
        # Both processes export on their own schedules: wait for the gateway's attempt as well.
        found = spans.of_trace(trace_id)
        plugin = [span for service, span in found if service == "demo-plugin"]
        attempts = {span.span_id for service, span in found if service == "upf-gateway" and span.kind == CLIENT}
        return [attempts, plugin[0]] if plugin and attempts else None

    attempts, plugin = wait_until(served, timeout=20, what="the plugin's span of the stream and the attempt")
    assert plugin.name == "upf.demo.v1.Echo/Count"
    assert plugin.parent_span_id in attempts
    assert plugin.end_time_unix_nano > plugin.start_time_unix_nano  # ended after its last message


def test_upf_run_traces_its_embedded_plugins_under_their_own_names(
    collector: tuple[Collector, str], work_dir: Path
) -> None:
    spans, endpoint = collector
    config = {
        "registryUrl": f"127.0.0.1:{free_port()}",  # a developer's own registry may hold 50052
        "tracing": {"otlpEndpoint": endpoint, "exportInterval": 0.05},
    }
    with run_gateway(config, work_dir, command="run") as gateway:
        login = httpx.post(
            f"{gateway.url}/api/auth/login", json={"username": "demo", "password": "demo-password"}, timeout=10
        )
        assert login.status_code == 200, login.text
        token = login.json()["accessToken"]
        trace_id = secrets.token_bytes(16)

        def created() -> bool:
            # Routed once orders-plugin has passed its first health check; each try is a trace of its own.
            request = create_request(f"cust-{secrets.token_hex(4)}", secrets.token_hex(8)).SerializeToString()
            traceparent = f"00-{trace_id.hex()}-{secrets.token_hex(8)}-01"
            response = httpx.post(
                f"{gateway.url}/api/upf.orders.v1.Orders/CreateOrder",
                content=frame(request),
                headers={"content-type": BINARY, "authorization": f"Bearer {token}", "traceparent": traceparent},
                timeout=10,
            )
            return parse_response(response.status_code, dict(response.headers), response.content).status == 0

        wait_until(created, timeout=30, what="orders-plugin to be routed and reach storage")

        def the_trace() -> list[tuple[str, Any]] | None:
            found = spans.of_trace(trace_id)
            served = {service for service, span in found if span.kind == SERVER}
            return found if {"upf-gateway", "orders-plugin", "storage-sqlite"} <= served else None

        # The gateway's call, orders-plugin's, and the storage call orders-plugin made: one trace, each
        # embedded plugin under its own service name.
        found = wait_until(the_trace, timeout=20, what="the embedded plugins' spans at the collector")
        calls = {s.span_id for service, s in found if service == "orders-plugin" and s.name.endswith("/CreateOrder")}
        stored = [s for service, s in found if service == "storage-sqlite" and s.kind == SERVER]
        assert stored
        assert {s.parent_span_id for s in stored} <= calls  # orders-plugin's call is the parent of its storage calls
