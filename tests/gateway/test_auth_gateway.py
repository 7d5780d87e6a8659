"""JWT verification in a real gateway process, against a real local Keycloak-style issuer.

Every attack of the research notes (gateways.md 2.3) is refused on each entry point: alg none, HS/RS
confusion, expired, not yet valid, wrong issuer, wrong audience, unknown kid, tampered payload, and
spoofed identity headers. The identity that reaches the plugin is the verified one only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from upf.demo.v1 import demo_pb2
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from tests.conftest import ALLOWED_ORIGIN
from tests.gateway.test_grpc_websockets import BINARY_HEADERS, SUBPROTOCOL, TIMEOUT, unary, ws_url
from tests.gateway.test_js_clients import CLIENTS
from tests.gateway.test_registry_routing import FAST, OK, Plugin, gateway_config, register, say
from tests.support.events import events_client, events_url
from tests.support.grpcweb import BINARY, frame, parse_response
from tests.support.node import node_call, require_node
from tests.support.oidc_issuer import OidcIssuer, tamper
from tests.support.processes import Gateway, run_gateway, wait_until
from tests.support.registry_process import run_registry

UNAUTHENTICATED, PERMISSION_DENIED = 16, 7


@pytest.fixture(scope="module")
def issuer() -> Iterator[OidcIssuer]:
    with OidcIssuer(style="keycloak") as running:
        yield running


@pytest.fixture(scope="module")
def auth_gateway(issuer: OidcIssuer, probe_address: str, work_dir: Path) -> Iterator[Gateway]:
    config = {
        "upstreams": {"accept.v1.Probe": [probe_address]},
        "publicPaths": ["/api/manifests", "/open/*"],
        "cors": {"allowOrigins": [ALLOWED_ORIGIN]},
        "auth": {
            "enabled": True,
            "leeway": 5,
            "issuers": [
                {
                    "issuer": issuer.issuer,
                    "audience": ["upf-api"],
                    "algorithms": ["RS256"],
                    "discovery": True,
                    "rolesClaim": "realm_access.roles",
                }
            ],
            "roles": {"user": ["probe:call", "orders:*"]},
        },
    }
    with run_gateway(config, work_dir) as gateway:
        yield gateway


def call(gateway: Gateway, pb: Any, token: str | None, headers: dict[str, str] | None = None) -> Any:
    sent = {"content-type": BINARY, **(headers or {})}
    if token is not None:
        sent["authorization"] = f"Bearer {token}"
    body = frame(pb.CallRequest(payload=b"hi").SerializeToString())
    r = httpx.post(f"{gateway.url}/accept.v1.Probe/Unary", content=body, headers=sent, timeout=10)
    return parse_response(r.status_code, dict(r.headers), r.content)


def reply_metadata(pb: Any, response: Any) -> dict[str, str]:
    assert response.status == 0, response.message
    reply = pb.CallReply()
    reply.ParseFromString(response.messages[0])
    return dict(reply.metadata)


# Each attack, with the reason the gateway gives for refusing it: an attack refused for another reason
# (a tampered token taken for one with an unknown kid, a check moved) is a finding, not a pass.
ATTACKS: dict[str, tuple[Callable[[OidcIssuer], str], str]] = {
    "alg none": (lambda i: i.mint(alg="none", key=None), "algorithm 'none' is not accepted"),
    "HS256 keyed with the public key": (
        lambda i: i.mint(alg="HS256", key=i.public_pem()),
        "algorithm 'HS256' is not accepted",
    ),
    "expired": (lambda i: i.mint({"exp": i.now() - 60, "iat": i.now() - 400}), "the token has expired"),
    "not yet valid": (lambda i: i.mint({"nbf": i.now() + 300}), "the token is not valid yet"),
    "wrong issuer": (lambda i: i.mint({"iss": "https://evil.example/realms/upf"}), "the token's issuer is not trusted"),
    "wrong audience": (lambda i: i.mint({"aud": "someone-else"}), "the token is not meant for this audience"),
    "unknown kid": (lambda i: i.mint(key=i.new_key()), "the token's signing key is unknown"),
    "tampered payload": (
        lambda i: tamper(i.mint(), {"sub": "admin", "realm_access": {"roles": ["admin"]}}),
        "the token's signature does not verify",
    ),
    "no kid": (lambda i: i.mint(headers={"kid": None}), "the token names no signing key (kid)"),
    # Signed by the issuer, but with an expiry pyjwt cannot read.
    "exp not a number": (lambda i: i.mint({"exp": "tomorrow"}), "the token is malformed"),
    "not a JWT": (lambda i: "not-a-jwt", "the token is not a JWT"),
    "garbage segments": (lambda i: "e30.e30.e30", "the token names no algorithm (alg)"),
}


def attacks(issuer: OidcIssuer) -> dict[str, str]:
    return {name: make(issuer) for name, (make, _) in ATTACKS.items()}


def test_a_valid_token_reaches_the_plugin_as_the_verified_identity(
    auth_gateway: Gateway, issuer: OidcIssuer, pb: Any
) -> None:
    token = issuer.mint()
    spoofed = {"x-upf-user-id": "admin", "x-upf-user-roles": "admin", "x-upf-user-permissions": "*"}
    metadata = reply_metadata(pb, call(auth_gateway, pb, token, spoofed))
    alice = issuer.users["alice"]
    assert metadata["x-upf-user-id"] == alice.sub
    assert metadata["x-upf-user-email"] == alice.email
    assert metadata["x-upf-user-roles"] == "user,offline_access"
    assert metadata["x-upf-user-permissions"] == "probe:call,orders:*"  # mapped from the role
    assert "authorization" not in metadata  # the token stays at the gateway


def test_no_token_is_unauthenticated(auth_gateway: Gateway, pb: Any) -> None:
    response = call(auth_gateway, pb, None)
    assert response.http_status == 200
    assert response.status == UNAUTHENTICATED
    assert response.message == "this call needs a bearer token"


@pytest.mark.parametrize("attack", ATTACKS)
def test_each_attack_is_refused_over_grpc_web(auth_gateway: Gateway, issuer: OidcIssuer, pb: Any, attack: str) -> None:
    make, reason = ATTACKS[attack]
    response = call(auth_gateway, pb, make(issuer))
    assert response.http_status == 200
    assert (response.status, response.message) == (UNAUTHENTICATED, f"invalid token: {reason}")


@pytest.mark.parametrize("attack", ["alg none", "HS256 keyed with the public key", "expired", "tampered payload"])
def test_each_attack_is_refused_over_rest_with_a_challenge(
    auth_gateway: Gateway, issuer: OidcIssuer, attack: str
) -> None:
    r = httpx.get(f"{auth_gateway.url}/api/auth/me", headers={"authorization": f"Bearer {attacks(issuer)[attack]}"})
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/json"
    assert r.json()["code"] == "UNAUTHENTICATED"
    assert r.headers["www-authenticate"].startswith('Bearer realm="upf", error="invalid_token"')


def test_rest_without_a_token_is_401_with_a_bare_challenge(auth_gateway: Gateway) -> None:
    r = httpx.get(f"{auth_gateway.url}/api/auth/me")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="upf"'
    assert r.json() == {"code": "UNAUTHENTICATED", "message": "this call needs a bearer token"}


def test_me_shows_the_verified_identity(auth_gateway: Gateway, issuer: OidcIssuer) -> None:
    r = httpx.get(f"{auth_gateway.url}/api/auth/me", headers={"authorization": f"Bearer {issuer.mint()}"})
    assert r.status_code == 200
    me = r.json()
    assert me["userId"] == issuer.users["alice"].sub
    assert me["roles"] == ["user", "offline_access"]
    assert me["issuer"] == issuer.issuer


def test_public_paths_need_no_token_and_ignore_a_bad_one(auth_gateway: Gateway) -> None:
    assert httpx.get(f"{auth_gateway.url}/api/manifests").status_code == 200
    r = httpx.get(f"{auth_gateway.url}/api/manifests", headers={"authorization": "Bearer junk"})
    assert r.status_code == 200
    assert httpx.get(f"{auth_gateway.url}/healthz").status_code == 200
    # A prefix pattern: no route there, but auth lets it through to the router's 404. (POST: a GET
    # of such a path is the web shell's, public whatever publicPaths say.)
    assert httpx.post(f"{auth_gateway.url}/open/anything").status_code == 404
    assert httpx.post(f"{auth_gateway.url}/closed/anything").status_code == 401


def test_the_jwks_endpoint_serves_the_trusted_keys(auth_gateway: Gateway, issuer: OidcIssuer) -> None:
    call_ok = httpx.get(f"{auth_gateway.url}/api/auth/me", headers={"authorization": f"Bearer {issuer.mint()}"})
    assert call_ok.status_code == 200
    r = httpx.get(f"{auth_gateway.url}/.well-known/jwks.json")
    assert r.status_code == 200
    kids = {key["kid"] for key in r.json()["keys"]}
    assert issuer.signing_key.kid in kids
    assert all("d" not in key for key in r.json()["keys"])  # public parts only


def test_native_grpc_verifies_tokens_too(auth_gateway: Gateway, issuer: OidcIssuer, pb: Any, pb_grpc: Any) -> None:
    with grpc.insecure_channel(auth_gateway.grpc_target) as channel:
        stub = pb_grpc.ProbeStub(channel)
        reply = stub.Unary(
            pb.CallRequest(payload=b"n"),
            metadata=[("authorization", f"Bearer {issuer.mint()}"), ("x-upf-user-id", "admin")],
            timeout=10,
        )
        assert dict(reply.metadata)["x-upf-user-id"] == issuer.users["alice"].sub
        assert "authorization" not in dict(reply.metadata)
        for attack in ("alg none", "tampered payload", "unknown kid"):
            with pytest.raises(grpc.RpcError) as caught:
                stub.Unary(
                    pb.CallRequest(), metadata=[("authorization", f"Bearer {attacks(issuer)[attack]}")], timeout=10
                )
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED, attack
        with pytest.raises(grpc.RpcError) as caught:
            stub.Unary(pb.CallRequest(), timeout=10)
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_grpc_websockets_take_the_token_from_the_header_block(
    auth_gateway: Gateway, issuer: OidcIssuer, pb: Any
) -> None:
    with_token = BINARY_HEADERS + f"authorization: Bearer {issuer.mint()}\r\n".encode()
    answer = await unary(auth_gateway, pb, header_block=with_token, payload=b"ws")
    assert answer.status == 0, answer.message
    reply = pb.CallReply()
    reply.ParseFromString(answer.replies[0])
    assert dict(reply.metadata)["x-upf-user-id"] == issuer.users["alice"].sub
    refused = await unary(auth_gateway, pb, payload=b"ws")
    assert refused.status == UNAUTHENTICATED
    forged = BINARY_HEADERS + f"authorization: Bearer {attacks(issuer)['alg none']}\r\n".encode()
    assert (await unary(auth_gateway, pb, header_block=forged)).status == UNAUTHENTICATED


async def test_a_websocket_upgrade_with_a_bad_token_is_refused_before_the_handshake(
    auth_gateway: Gateway, issuer: OidcIssuer
) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(
            ws_url(auth_gateway, "Unary"),
            subprotocols=[SUBPROTOCOL],
            additional_headers={"authorization": f"Bearer {attacks(issuer)['expired']}"},
            proxy=None,
            open_timeout=TIMEOUT,
        ):
            pass
    assert info.value.response.status_code == 403


def test_with_the_jwks_endpoint_down_cached_keys_work_and_unknown_kids_are_refused(
    issuer: OidcIssuer, probe_address: str, work_dir: Path, pb: Any
) -> None:
    config = {
        "upstreams": {"accept.v1.Probe": [probe_address]},
        "auth": {
            "enabled": True,
            "jwksMaxAge": 2,
            "issuers": [{"issuer": issuer.issuer, "algorithms": ["RS256"], "jwksUri": issuer.jwks_uri}],
        },
    }
    with run_gateway(config, work_dir) as gateway:
        assert call(gateway, pb, issuer.mint()).status == 0
        fetches = issuer.jwks_fetches
        issuer.jwks_mode = "error"
        try:
            # Past the cache's max age the background refresh fails, and keeps the keys it has.
            wait_until(lambda: issuer.jwks_fetches >= fetches + 2, timeout=15, what="refreshes to fail")
            assert call(gateway, pb, issuer.mint()).status == 0  # a new token, signed by the cached key
            stranger = issuer.mint(key=issuer.new_key())
            assert call(gateway, pb, stranger).status == UNAUTHENTICATED
            # Random kids do not drive fetches: at most one refetch per cooldown for all of them.
            before = issuer.jwks_fetches
            for _ in range(20):
                assert call(gateway, pb, issuer.mint(key=issuer.new_key())).status == UNAUTHENTICATED
            assert issuer.jwks_fetches <= before + 2  # the cooldown's one, and a scheduled refresh at most
        finally:
            issuer.jwks_mode = "ok"


def test_a_manifest_required_permission_is_enforced(issuer: OidcIssuer, work_dir: Path) -> None:
    # Say needs echo:say (the role "user" grants it); Count, by the interface's "*" policy, needs nothing more.
    text = json.dumps(
        {
            "id": "guarded-echo",
            "version": "1.0.0",
            "name": "Guarded",
            "description": "echo behind a permission",
            "type": "business",
            "provides": [
                {
                    "name": "IEcho",
                    "version": "1.0.0",
                    "protoFile": "demo.proto",
                    "grpcServices": ["upf.demo.v1.Echo"],
                    "methods": ["Say", "Count"],
                    "policies": {"Say": {"requiredPermission": "echo:say"}},
                }
            ],
        }
    )
    plugin = Plugin(work_dir)
    with ExitStack() as stack, httpx.Client(timeout=5) as client:
        registry = stack.enter_context(run_registry(FAST, work_dir))
        plugin.start()
        stack.callback(plugin.stop)
        register(registry, plugin, "guarded-1", text)
        auth = {
            "enabled": True,
            "issuers": [{"issuer": issuer.issuer, "algorithms": ["RS256"], "jwksUri": issuer.jwks_uri,
                         "rolesClaim": "realm_access.roles"}],
            "roles": {"user": ["echo:say"]},
        }  # fmt: skip
        gateway = stack.enter_context(run_gateway(gateway_config(registry, auth=auth), work_dir))
        allowed = {"authorization": f"Bearer {issuer.mint()}"}
        wait_until(lambda: say(client, gateway.url, headers=allowed)[0] == OK, what="the plugin to be routed")
        assert say(client, gateway.url, headers=allowed)[1] == "hi @" + str(plugin.port)
        roleless = {"authorization": f"Bearer {issuer.mint({'realm_access': {'roles': []}})}"}
        assert say(client, gateway.url, headers=roleless) == (
            PERMISSION_DENIED,
            "this call needs the permission echo:say",
        )
        assert say(client, gateway.url)[0] == UNAUTHENTICATED
        r = client.post(
            f"{gateway.url}/api/upf.demo.v1.Echo/Say",
            content=frame(demo_pb2.SayRequest(text="x").SerializeToString()),
            headers={"content-type": BINARY, **roleless},
        )
        assert r.status_code == 200  # gRPC-Web: the status is in grpc-status, never an HTTP error
        assert r.headers["grpc-status"] == str(PERMISSION_DENIED)


async def test_live_events_take_the_token_from_a_subprotocol_and_check_each_topic(
    issuer: OidcIssuer, work_dir: Path
) -> None:
    config = {
        "grpcPort": 0,
        "events": {"enabled": True, "bus": "memory", "publish": True},
        "auth": {
            "enabled": True,
            "issuers": [{"issuer": issuer.issuer, "algorithms": ["RS256"], "jwksUri": issuer.jwks_uri,
                         "rolesClaim": "realm_access.roles"}],
            "roles": {"user": ["events:order.*", "events:publish:order.created"]},
        },
    }  # fmt: skip
    token = issuer.mint()
    with run_gateway(config, work_dir) as gateway:
        # A browser's way: the token as a second subprotocol; the server answers with the real one.
        offered = [Subprotocol("upf-events.v1"), Subprotocol(f"bearer.{token}")]
        async with events_client(events_url(gateway), subprotocols=offered) as client:
            assert client.ws.subprotocol == "upf-events.v1"
            assert (await client.subscribe("order.*"))["topics"] == ["order.*"]
            await client.send({"type": "subscribe", "topics": ["admin.>"]})
            refused = await client.expect("error")
            assert (refused["code"], refused["topic"]) == ("forbidden", "admin.>")
            assert (await client.expect("subscribed"))["topics"] == []
            bearer = {"authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(timeout=10) as http:
                allowed = await http.post(f"{gateway.url}/api/events/order.created", content=b"{}", headers=bearer)
                assert allowed.status_code == 200, allowed.text
                denied = await http.post(f"{gateway.url}/api/events/order.deleted", content=b"{}", headers=bearer)
                assert denied.status_code == 403
                anonymous = await http.post(f"{gateway.url}/api/events/order.created", content=b"{}")
                assert anonymous.status_code == 401
            event = await client.expect("event")
            assert event["topic"] == "order.created"
        for subprotocols in ([Subprotocol("upf-events.v1")], [Subprotocol(f"bearer.{attacks(issuer)['expired']}")]):
            with pytest.raises(InvalidStatus) as info:
                async with events_client(events_url(gateway), subprotocols=subprotocols):
                    pass
            assert info.value.response.status_code == 403


def test_the_traffic_admin_api_needs_the_permission_and_metrics_stay_public(
    issuer: OidcIssuer, probe_address: str, work_dir: Path
) -> None:
    config = {
        "upstreams": {"accept.v1.Probe": [probe_address]},
        "admin": {"enabled": True},
        "auth": {
            "enabled": True,
            "issuers": [{"issuer": issuer.issuer, "algorithms": ["RS256"], "jwksUri": issuer.jwks_uri,
                         "rolesClaim": "realm_access.roles"}],
            "roles": {"operator": ["admin:traffic"]},
        },
    }  # fmt: skip
    with run_gateway(config, work_dir) as gateway:
        url = f"{gateway.url}/api/admin/traffic"
        assert httpx.get(url).status_code == 401
        user = {"authorization": f"Bearer {issuer.mint()}"}
        assert httpx.get(url, headers=user).status_code == 403
        operator = {"authorization": f"Bearer {issuer.mint({'realm_access': {'roles': ['operator']}})}"}
        answer = httpx.get(url, headers=operator)
        assert answer.status_code == 200
        assert "accept.v1.Probe" in answer.json()["breakers"]
        assert httpx.get(f"{gateway.url}/metrics").status_code == 200  # a default public path, for scrapers


@pytest.mark.parametrize("client", CLIENTS)
def test_real_grpc_web_clients_send_tokens_and_see_auth_errors(
    client: str, auth_gateway: Gateway, issuer: OidcIssuer, probe_gen: Path
) -> None:
    node = require_node(("@connectrpc/connect-node", "grpc-web", "xhr2", "@protobuf-ts/grpcweb-transport"))
    schema = str(probe_gen / "probe.binpb")

    def run(**spec: Any) -> dict[str, Any]:
        return node_call(node, "call.mjs", client, auth_gateway.url, schema, {"method": "Unary", "request": {}, **spec})

    admitted = run(headers={"authorization": f"Bearer {issuer.mint()}"})
    assert admitted["code"] == 0, admitted
    assert admitted["messages"][0]["metadata"]["x-upf-user-id"] == issuer.users["alice"].sub
    refused = run(headers={"authorization": f"Bearer {attacks(issuer)['expired']}"})
    assert refused["code"] == UNAUTHENTICATED
    assert "the token has expired" in refused["message"]
    anonymous = run()
    assert anonymous["code"] == UNAUTHENTICATED


async def test_an_events_socket_ends_when_its_token_expires(issuer: OidcIssuer, work_dir: Path) -> None:
    config = {
        "grpcPort": 0,
        "events": {"enabled": True, "bus": "memory", "heartbeatInterval": 0.2},
        "auth": {
            "enabled": True,
            "leeway": 0,
            "issuers": [{"issuer": issuer.issuer, "algorithms": ["RS256"], "jwksUri": issuer.jwks_uri}],
            "roles": {},
        },
    }
    with run_gateway(config, work_dir) as gateway:
        # Minted once the gateway is up (its start-up must not eat the token's lifetime); 3 s covers
        # the first verification, with the key fetch, on a slow machine.
        brief = issuer.mint({"exp": issuer.now() + 3, "permissions": ["events:*"]})
        offered = [Subprotocol("upf-events.v1"), Subprotocol(f"bearer.{brief}")]
        async with events_client(events_url(gateway), subprotocols=offered) as client:
            assert (await client.subscribe("order.*"))["topics"] == ["order.*"]
            _, closed = await client.closed(timeout=10)
    assert (closed.code, closed.reason) == (1008, "the token has expired")
