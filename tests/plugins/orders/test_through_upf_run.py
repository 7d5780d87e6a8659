"""`upf run` starts the orders plugin with the embedded storage and cache: the demo user logs in and
creates and lists an order with gRPC-Web, as a browser would."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
from upf.orders.v1 import orders_pb2 as pb

from tests.plugins.orders.harness import create_request
from tests.support.grpcweb import RESPONSE_TYPE, GrpcWebResponse, frame, parse_response
from tests.support.processes import free_port, run_gateway, wait_until


def _call(client: httpx.Client, method: str, request: bytes) -> GrpcWebResponse:
    reply = client.post(
        f"/api/upf.orders.v1.Orders/{method}",
        content=frame(request),
        headers={"content-type": RESPONSE_TYPE, "x-grpc-web": "1"},
    )
    return parse_response(reply.status_code, dict(reply.headers), reply.content)


def test_upf_run_serves_orders_to_the_demo_user_over_grpc_web(tmp_path: Path) -> None:
    # The embedded registry on a free port: a developer's own registry may hold 50052.
    with run_gateway({"registryUrl": f"127.0.0.1:{free_port()}"}, tmp_path, command="run") as gateway:
        login = httpx.post(
            f"{gateway.url}/api/auth/login", json={"username": "demo", "password": "demo-password"}, timeout=10
        )
        assert login.status_code == 200, login.text
        headers = {"authorization": f"Bearer {login.json()['accessToken']}"}
        with httpx.Client(base_url=gateway.url, headers=headers, timeout=10) as client:
            customer = f"cust-{uuid.uuid4().hex[:8]}"
            create = create_request(customer, str(uuid.uuid4())).SerializeToString()

            def created() -> GrpcWebResponse | None:
                # Routed once orders-plugin passes its first health check and reaches storage.
                answer = _call(client, "CreateOrder", create)
                return answer if answer.status == 0 else None

            answer = wait_until(created, timeout=30, what="orders-plugin to be routed and reach storage")
            order = pb.CreateOrderResponse.FromString(answer.messages[0]).order
            assert order.customer_id == customer
            assert order.status == pb.ORDER_STATUS_PENDING

            # Its UI remote (built by `make orders-ui`), served by the plugin and relayed by the gateway.
            manifest = next(p for p in client.get("/api/manifests").json()["plugins"] if p["id"] == "orders-plugin")
            assert [n["path"] for n in manifest["ui"]["navigation"]] == ["/orders"]
            entry = client.get("/plugins/orders-plugin/ui/remoteEntry.js")
            assert entry.status_code == 200, entry.text

            listed = _call(client, "ListOrders", pb.ListOrdersRequest(customer_id=customer).SerializeToString())
            assert listed.status == 0, listed.message
            reply = pb.ListOrdersResponse.FromString(listed.messages[0])
            assert [o.id for o in reply.orders] == [order.id]
            assert reply.total_count == 1

            # Without a token the gateway refuses before the plugin is reached.
            anonymous = httpx.post(
                f"{gateway.url}/api/upf.orders.v1.Orders/ListOrders",
                content=frame(b""),
                headers={"content-type": RESPONSE_TYPE},
            )
            refused = parse_response(anonymous.status_code, dict(anonymous.headers), anonymous.content)
            assert refused.status == 16  # UNAUTHENTICATED
