"""Infrastructure services are internal: the gateway refuses outside calls to them, on gRPC-Web and
native gRPC alike, while plugins still reach them directly. `exposed` in a manifest says otherwise."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import httpx
from upf.demo.v1 import demo_pb2, demo_pb2_grpc
from upf.registry.v1 import registry_pb2 as pb

from tests.gateway.test_registry_routing import OK, Plugin, gateway_config, register, say
from tests.support.processes import run_gateway, wait_until
from tests.support.registry_process import run_registry

PERMISSION_DENIED = 7


def manifest(plugin_id: str, plugin_type: str, exposed: bool | None = None) -> str:
    provided: dict[str, Any] = {
        "name": "IEcho",
        "version": "1.0.0",
        "protoFile": "demo.proto",
        "grpcServices": ["upf.demo.v1.Echo"],
    }
    if exposed is not None:
        provided["exposed"] = exposed
    body = {"id": plugin_id, "version": "1.0.0", "name": plugin_id, "type": plugin_type, "provides": [provided]}
    return json.dumps(body)


def native_say(target: str) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(target) as channel:
        try:
            reply = demo_pb2_grpc.EchoStub(channel).Say(demo_pb2.SayRequest(text="hi"), timeout=5)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, reply.text


def test_an_infrastructure_service_is_refused_at_the_edge_until_its_manifest_exposes_it(work_dir: Path) -> None:
    plugin = Plugin(work_dir)
    with ExitStack() as stack, httpx.Client(timeout=5) as client:
        # Registered before the gateway starts, and never renewed: the lease must outlast a slow start.
        registry = stack.enter_context(run_registry({"leaseTtl": 300}, work_dir))
        plugin.start()
        stack.callback(plugin.stop)
        lease = register(registry, plugin, "store-1", manifest("store-plugin", "infrastructure"))
        gateway = stack.enter_context(run_gateway(gateway_config(registry), work_dir))

        refused = (PERMISSION_DENIED, "upf.demo.v1.Echo is internal to the platform")
        wait_until(lambda: say(client, gateway.url)[0] == PERMISSION_DENIED, what="the gateway to know the plugin")
        status, message = say(client, gateway.url)
        assert (status, message[: len(refused[1])]) == refused
        code, details = native_say(gateway.grpc_target)
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert details.startswith(refused[1])
        # Other plugins call it directly, as before.
        assert native_say(plugin.endpoint) == (grpc.StatusCode.OK, f"hi @{plugin.port}")

        # The same plugin, re-registered with `exposed: true`: routed.
        registry.stub.Unregister(pb.UnregisterRequest(lease_id=lease))
        register(registry, plugin, "store-2", manifest("store-plugin", "infrastructure", exposed=True))
        wait_until(lambda: say(client, gateway.url) == (OK, f"hi @{plugin.port}"), what="the exposed service routed")
        assert native_say(gateway.grpc_target) == (grpc.StatusCode.OK, f"hi @{plugin.port}")


def test_a_business_service_marked_not_exposed_is_refused_too(work_dir: Path) -> None:
    plugin = Plugin(work_dir)
    with ExitStack() as stack, httpx.Client(timeout=5) as client:
        registry = stack.enter_context(run_registry({"leaseTtl": 300}, work_dir))
        plugin.start()
        stack.callback(plugin.stop)
        register(registry, plugin, "private-1", manifest("private-plugin", "business", exposed=False))
        gateway = stack.enter_context(run_gateway(gateway_config(registry), work_dir))
        wait_until(lambda: say(client, gateway.url)[0] == PERMISSION_DENIED, what="the gateway to know the plugin")
        assert native_say(gateway.grpc_target)[0] == grpc.StatusCode.PERMISSION_DENIED
