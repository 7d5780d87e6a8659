"""REST from google.api.http annotations, as a curl user calls it: the orders plugin on `upf run`
(annotated in proto/upf/orders/v1/orders.proto), and a plugin whose annotations change when it
re-registers (tests/support/rest_plugin.py), served under /api/ without a gateway restart. Transcoded
calls go through the one call path: authenticated and rate-limited once, errors as JSON."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway.test_access_log import access_lines, line_with
from tests.support.oidc_issuer import OidcIssuer
from tests.support.processes import Gateway, Process, _died, free_port, run_gateway, wait_until
from tests.support.registry_process import RunningRegistry, run_registry

# ---------------------------------------------------------------------------------------------------
# The orders plugin on `upf run` (auth on, the demo user)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, str]]]:
    work = tmp_path_factory.mktemp("rest-upf-run")
    config = {"registryUrl": f"127.0.0.1:{free_port()}", "accessLog": True}  # as `upf run` has it by default
    with run_gateway(config, work, command="run") as gateway:
        login = httpx.post(
            f"{gateway.url}/api/auth/login", json={"username": "demo", "password": "demo-password"}, timeout=10
        )
        auth = {"authorization": f"Bearer {login.json()['accessToken']}"}

        def routed() -> bool:
            return httpx.get(f"{gateway.url}/api/v1/orders", headers=auth, timeout=10).status_code == 200

        wait_until(routed, timeout=30, what="the orders plugin's REST routes")
        yield gateway, auth


def test_orders_over_rest_create_get_list_and_update(platform: tuple[Gateway, dict[str, str]]) -> None:
    gateway, auth = platform
    api = f"{gateway.url}/api/v1/orders"
    customer = f"c-{uuid.uuid4().hex[:8]}"
    item = {"productId": "p1", "quantity": 2, "unitPriceMinor": "250"}
    with httpx.Client(headers=auth, timeout=10) as client:
        created = client.post(api, json={"customerId": customer, "items": [item], "currency": "EUR"})
        assert created.status_code == 200, created.text
        assert created.headers["content-type"] == "application/json"
        order = created.json()["order"]
        assert (order["customerId"], order["status"], order["totalMinor"]) == (customer, "ORDER_STATUS_PENDING", "500")

        # response_body: "order": the answer is the order itself, not {"order": ...}
        got = client.get(f"{api}/{order['id']}")
        assert got.status_code == 200, got.text
        assert got.json() == order

        client.post(api, json={"customerId": customer, "items": [item]})
        page = client.get(api, params={"customerId": customer, "pageSize": 1})  # query parameters
        assert page.status_code == 200, page.text
        assert len(page.json()["orders"]) == 1
        assert page.json()["totalCount"] == "2"
        assert page.json()["nextPageToken"]

        patched = client.patch(f"{api}/{order['id']}", json={"status": "ORDER_STATUS_CONFIRMED"})
        assert patched.status_code == 200, patched.text
        assert patched.json()["order"]["status"] == "ORDER_STATUS_CONFIRMED"
        # The additional binding: the status in the path, expected_version in the query.
        version = patched.json()["order"]["version"]
        shipped = client.post(f"{api}/{order['id']}/status/ORDER_STATUS_SHIPPED", params={"expectedVersion": version})
        assert shipped.status_code == 200, shipped.text
        assert shipped.json()["order"]["status"] == "ORDER_STATUS_SHIPPED"
        stale = client.post(f"{api}/{order['id']}/status/ORDER_STATUS_DELIVERED", params={"expectedVersion": version})
        assert (stale.status_code, stale.json()["code"]) == (409, "ABORTED")  # the plugin's error, mapped

        missing = client.get(f"{api}/no-such-order")
        assert missing.status_code == 404
        assert missing.json()["code"] == "NOT_FOUND"

    # One access line per REST call, naming the method it stands for.
    request_id = f"rest-{uuid.uuid4().hex[:8]}"
    httpx.get(f"{api}/{order['id']}", headers={**auth, "x-request-id": request_id}, timeout=10)
    line = line_with(gateway, requestId=request_id)
    assert (line["protocol"], line["service"], line["method"]) == ("rest", "upf.orders.v1.Orders", "GetOrder")
    assert (line["grpcStatus"], line["httpStatus"], line["path"]) == ("OK", 200, f"/api/v1/orders/{order['id']}")
    assert len([ln for ln in access_lines(gateway) if ln.get("requestId") == request_id]) == 1


def test_wrong_types_are_400_naming_the_field(platform: tuple[Gateway, dict[str, str]]) -> None:
    gateway, auth = platform
    api = f"{gateway.url}/api/v1/orders"
    status = httpx.post(f"{api}/o-1/status/ORDER_STATUS_LOST", headers=auth, timeout=10)
    assert status.status_code == 400
    assert status.json()["code"] == "INVALID_ARGUMENT"
    assert "status" in status.json()["message"]
    page = httpx.get(api, params={"pageSize": "ten"}, headers=auth, timeout=10)
    assert page.status_code == 400
    assert "pageSize" in page.json()["message"] or "page_size" in page.json()["message"]
    body = httpx.post(api, content=b"{not json", headers={**auth, "content-type": "application/json"}, timeout=10)
    assert (body.status_code, body.json()["code"]) == (400, "INVALID_ARGUMENT")
    assert "Traceback" not in body.text


def test_rest_needs_a_token_and_unknown_routes_are_json_404_or_405(platform: tuple[Gateway, dict[str, str]]) -> None:
    gateway, auth = platform
    anonymous = httpx.get(f"{gateway.url}/api/v1/orders", timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.json()["code"] == "UNAUTHENTICATED"
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    unknown = httpx.get(f"{gateway.url}/api/v1/nothing/here", headers=auth, timeout=10)
    assert unknown.status_code == 404
    assert unknown.headers["content-type"].startswith("application/json")
    # A path that routes take, with a method none of them takes: 405, naming the ones they do.
    wrong_verb = httpx.delete(f"{gateway.url}/api/v1/orders/o-1", headers=auth, timeout=10)
    assert wrong_verb.status_code == 405
    assert wrong_verb.headers["allow"] == "GET, PATCH"
    assert wrong_verb.json() == {
        "code": "UNIMPLEMENTED",
        "message": "DELETE is not allowed at /api/v1/orders/o-1; it takes GET, PATCH",
    }
    assert httpx.put(f"{gateway.url}/api/v1/orders", headers=auth, timeout=10).headers["allow"] == "GET, POST"
    # Without a token it is the 401 any unknown path gets: the route table is not shown to strangers.
    assert httpx.delete(f"{gateway.url}/api/v1/orders/o-1", timeout=10).status_code == 401
    # The gateway's own endpoints are not a plugin's to take.
    assert httpx.get(f"{gateway.url}/api/manifests", headers=auth, timeout=10).status_code == 200


# ---------------------------------------------------------------------------------------------------
# A plugin with annotations of its own: DELETE, PUT with a body field, response_body of a scalar,
# a path variable that must be a number, and new annotations on re-registration.


@contextmanager
def rest_plugin(work_dir: Path, *options: str) -> Iterator[str]:
    port = free_port()
    args = [sys.executable, "-m", "tests.support.rest_plugin", "--port", str(port), *options]
    process = Process(args, log=work_dir / f"rest-plugin-{port}.log")
    try:
        wait_until(lambda: "PORT " in process.output() or (not process.alive() and _died(process)), what="plugin")
        yield f"127.0.0.1:{port}"
    finally:
        process.stop()


# Fast health checks; leases long enough for a gateway that starts slowly on a busy machine (the test
# registers on the plugin's behalf and does not renew).
REGISTRY = {
    "leaseTtl": 300,
    "health": {"interval": 0.2, "timeout": 0.5, "failuresBeforeUnhealthy": 2, "successesBeforeHealthy": 1},
}


def _manifest(version: str, policies: dict[str, Any] | None = None) -> str:
    interface: dict[str, Any] = {
        "name": "IThings",
        "version": "1.0.0",
        "protoFile": "things.proto",
        "grpcServices": ["rest.v1.Things"],
    }
    if policies is not None:
        interface |= {"methods": ["Get", "Delete", "Rename", "Size"], "policies": policies}
    return json.dumps(
        {
            "id": "things",
            "version": version,
            "name": "Things",
            "description": "REST test plugin",
            "type": "business",
            "provides": [interface],
        }
    )


def _register(registry: RunningRegistry, version: str, endpoint: str, policies: dict[str, Any] | None = None) -> None:
    text = _manifest(version, policies)
    registry.stub.Register(registry.register_request(text, instance_id="things-1", endpoint=endpoint))


def test_rest_routes_follow_a_plugin_that_re_registers(tmp_path: Path) -> None:
    with (
        run_registry(REGISTRY, tmp_path) as registry,
        rest_plugin(tmp_path) as first,
        run_gateway({"registryUrl": registry.target, "routeRefreshInterval": 1}, tmp_path) as gateway,
        httpx.Client(base_url=f"{gateway.url}/api", timeout=10) as client,
    ):
        _register(registry, "1.0.0", first)
        wait_until(lambda: client.get("/v1/things/7").status_code == 200, timeout=20, what="the REST route")
        assert client.get("/v1/things/7").json() == {"id": "7", "name": "thing 7"}
        assert client.get("/v2/things/7").status_code == 404  # not annotated yet

        deleted = client.delete("/v1/things/8")
        assert (deleted.status_code, deleted.json()["name"]) == (200, "deleted")
        gone = client.delete("/v1/things/404")
        assert (gone.status_code, gone.json()) == (404, {"code": "NOT_FOUND", "message": "no thing 404"})
        renamed = client.put("/v1/things/9", json="blue box")  # body: "name": the body is that field
        assert renamed.json() == {"id": "9", "name": "blue box"}
        assert client.get("/v1/things/4/size").json() == 40  # response_body of a scalar field

        # A server stream: one JSON line per message, as grpc-gateway writes them.
        counted = client.get("/v1/things/3/count")
        assert (counted.status_code, counted.headers["content-type"]) == (200, "application/x-ndjson")
        assert [json.loads(line) for line in counted.text.splitlines()] == [
            {"result": {"id": str(n), "name": f"thing {n}"}} for n in (1, 2, 3)
        ]
        empty = client.get("/v1/things/0/count")
        assert (empty.status_code, empty.text) == (200, "")
        # Failing before any message: the error answer of a unary call. After some: a last error line.
        none = client.get("/v1/things/404/count")
        assert (none.status_code, none.json()) == (404, {"code": "NOT_FOUND", "message": "no thing 404"})
        broken = client.get("/v1/things/13/count")
        assert broken.status_code == 200
        assert [json.loads(line) for line in broken.text.splitlines()] == [
            {"result": {"id": "1", "name": "thing 1"}},
            {"result": {"id": "2", "name": "thing 2"}},
            {"error": {"code": "DATA_LOSS", "message": "broken after 2"}},
        ]
        with client.stream("GET", "/v1/things/2/count") as streamed:  # lines as they come, for curl -N
            assert [json.loads(line)["result"]["id"] for line in streamed.iter_lines()] == ["1", "2"]

        bad = client.get("/v1/things/seven")
        assert bad.status_code == 400
        assert bad.json()["code"] == "INVALID_ARGUMENT"
        assert "id" in bad.json()["message"]

        # The same plugin, next version, with one more binding: served once it has re-registered.
        with rest_plugin(tmp_path, "--v2") as second:
            _register(registry, "1.1.0", second)
            wait_until(lambda: client.get("/v2/things/7").status_code == 200, timeout=20, what="the new route")
            assert client.get("/v2/things/7").json() == {"id": "7", "name": "thing 7"}
            assert client.get("/v1/things/7").status_code == 200


def test_a_rest_call_is_rate_limited_once(tmp_path: Path) -> None:
    burst = 4
    with rest_plugin(tmp_path) as address:
        config: dict[str, Any] = {
            "upstreams": {"rest.v1.Things": [address]},
            # No refill to speak of during the test: exactly `burst` calls may pass.
            "rateLimiting": {"enabled": True, "requestsPerSecond": 0.001, "burstSize": burst},
        }
        with run_gateway(config, tmp_path) as gateway, httpx.Client(timeout=10) as client:
            answers = [client.get(f"{gateway.url}/api/v1/things/{n}") for n in range(burst + 3)]
    assert [a.status_code for a in answers] == [200] * burst + [429] * 3
    assert answers[0].headers["ratelimit-policy"]  # the quota of an allowed call, as on every entry point
    refused = answers[-1]
    assert refused.json()["code"] == "RESOURCE_EXHAUSTED"
    assert "retry-after" in refused.headers


def test_rest_calls_carry_the_verified_identity_and_meet_manifest_permissions(tmp_path: Path) -> None:
    with (
        OidcIssuer(style="keycloak") as issuer,
        run_registry(REGISTRY, tmp_path) as registry,
        rest_plugin(tmp_path) as address,
    ):
        _register(registry, "1.0.0", address, {"Delete": {"requiredPermission": "things:delete"}})
        auth = {
            "enabled": True,
            "issuers": [{"issuer": issuer.issuer, "algorithms": ["RS256"], "jwksUri": issuer.jwks_uri,
                         "rolesClaim": "realm_access.roles"}],
            "roles": {"admin": ["things:delete"]},
        }  # fmt: skip
        config = {"registryUrl": registry.target, "routeRefreshInterval": 1, "auth": auth}
        with (
            run_gateway(config, tmp_path) as gateway,
            httpx.Client(base_url=f"{gateway.url}/api", timeout=10) as client,
        ):
            user = {"authorization": f"Bearer {issuer.mint({'sub': 's-user'})}"}
            wait_until(lambda: client.get("/v1/things/1", headers=user).status_code == 200, what="the REST route")
            # A client's own identity header never reaches the plugin: the verified subject does.
            got = client.get("/v1/things/1", headers={**user, "x-upf-user-id": "mallory"})
            assert got.json() == {"id": "1", "name": "thing 1", "caller": "s-user"}

            anonymous = client.get("/v1/things/1")
            assert (anonymous.status_code, anonymous.json()["code"]) == (401, "UNAUTHENTICATED")
            refused = client.delete("/v1/things/1", headers=user)  # the manifest's requiredPermission
            assert refused.status_code == 403
            assert refused.json() == {
                "code": "PERMISSION_DENIED",
                "message": "this call needs the permission things:delete",
            }
            admin = {"authorization": f"Bearer {issuer.mint({'realm_access': {'roles': ['admin']}})}"}
            assert client.delete("/v1/things/1", headers=admin).status_code == 200
