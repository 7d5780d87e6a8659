"""`upf plugin orders` as its own process: it registers, finds storage and cache through the registry,
serves, and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import grpc
from upf.orders.v1 import orders_pb2 as pb, orders_pb2_grpc
from upf.registry.v1 import registry_pb2

from tests.conformance.cache.harness import poll
from tests.plugins.orders.harness import UPF, Backends, Stack, create_request, run_stack
from tests.support.processes import Process, _died, free_port, wait_until


def _routable(stack: Stack) -> bool:
    # DEGRADED, not HEALTHY: no message-bus plugin provides the optional IMessageBus yet, and the
    # registry says so. The gateway routes DEGRADED plugins.
    reply = stack.registry.stub.ListPlugins(registry_pb2.ListPluginsRequest(), timeout=2)
    return any(
        p.plugin_id == "orders-plugin"
        and any(i.health == registry_pb2.HEALTH_STATE_DEGRADED and "IMessageBus" in i.caused_by for i in p.instances)
        for p in reply.plugins
    )


async def test_upf_plugin_orders_registers_and_serves(tmp_path: Path) -> None:
    with run_stack(Backends("storage-sqlite", "cache-memory"), tmp_path) as stack:
        env = {key: value for key, value in os.environ.items() if not key.startswith("UPF_")}
        env["UPF_REGISTRATION_CREDENTIAL"] = stack.registry.credential("orders-plugin")
        port = free_port()
        args = [UPF, "plugin", "orders", "--registry", stack.registry.target, "--port", str(port)]
        process = Process([*args, "--drain-grace", "1"], env=env, log=tmp_path / "orders.log")
        try:
            wait_until(
                lambda: _routable(stack) or (not process.alive() and _died(process)),
                what="orders-plugin to be registered (DEGRADED without IMessageBus)",
            )
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = orders_pb2_grpc.OrdersStub(channel)
                request = create_request("cust-process", str(uuid.uuid4()))

                async def created() -> pb.CreateOrderResponse | None:
                    try:
                        return await stub.CreateOrder(request)
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() != grpc.StatusCode.UNAVAILABLE:  # until its first dependency lookup
                            raise
                        return None

                first = await poll(created, timeout=15, what="orders-plugin to reach storage")
                again = await stub.CreateOrder(request)
                assert again.replayed
                assert again.order == first.order
        finally:
            assert process.stop() == 0, process.output()
