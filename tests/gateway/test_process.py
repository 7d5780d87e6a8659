"""The gateway as an operator runs it: health endpoints, several workers, a clean stop on SIGTERM."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from tests.support.grpcweb import BINARY, frame, parse_response
from tests.support.processes import Gateway, run_gateway


def test_healthz_and_readyz(gateway: Gateway) -> None:
    assert httpx.get(f"{gateway.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.url}/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


def test_unknown_rest_path_is_a_json_404_not_html(gateway: Gateway) -> None:
    # REST lives under /api/; any other GET is a route of the web shell (tests/shell).
    r = httpx.get(f"{gateway.url}/api/no/such/page")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/json")
    assert "<html" not in r.text.lower()


def test_two_workers_serve_grpc_web_and_native_grpc(probe_address: str, work_dir: Path, pb: Any, pb_grpc: Any) -> None:
    config = {"workers": 2, "upstreams": {"accept.v1.Probe": [probe_address]}}
    with run_gateway(config, work_dir) as gateway:
        with httpx.Client() as client:
            for n in range(20):  # new connections spread over both workers
                body = frame(pb.CallRequest(payload=str(n).encode()).SerializeToString())
                r = client.post(
                    f"{gateway.url}/accept.v1.Probe/Unary",
                    content=body,
                    headers={"content-type": BINARY, "connection": "close"},
                )
                response = parse_response(r.status_code, dict(r.headers), r.content)
                assert pb.CallReply.FromString(response.messages[0]).payload == str(n).encode()
        with grpc.insecure_channel(gateway.grpc_target) as channel:
            reply = pb_grpc.ProbeStub(channel).Unary(pb.CallRequest(payload=b"native"), timeout=10)
        assert reply.payload == b"native"


def test_sigterm_stops_the_gateway_cleanly(probe_address: str, work_dir: Path) -> None:
    with run_gateway({"upstreams": {"accept.v1.Probe": [probe_address]}}, work_dir) as gateway:
        returncode = gateway.process.stop(signal.SIGTERM)
    assert returncode == 0
    assert "Application shutdown complete" in gateway.process.output()
    assert "Traceback" not in gateway.process.output()


@pytest.mark.parametrize("access_log", [False, True])
async def test_websocket_handshakes_are_logged_only_with_the_access_log(
    probe_address: str, work_dir: Path, access_log: bool
) -> None:
    config = {"upstreams": {"accept.v1.Probe": [probe_address]}, "logLevel": "info", "accessLog": access_log}
    with run_gateway(config, work_dir) as gateway:
        url = f"ws://127.0.0.1:{gateway.http_port}/accept.v1.Probe/Bidi"
        async with connect(url, subprotocols=[Subprotocol("grpc-websockets")], proxy=None, open_timeout=5):
            pass
        # uvicorn logs the handshake before it answers it: once connected, the line is in the log or never.
        if access_log:
            output = gateway.process.output()
            assert '"WebSocket /accept.v1.Probe/Bidi" [accepted]' in output
            assert "connection open" in output
        else:
            output = gateway.process.output()
            assert "WebSocket" not in output
            assert "connection open" not in output
            assert "Uvicorn running" in output  # the rest of the info log is still there
