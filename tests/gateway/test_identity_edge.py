"""Identity at the edge (and the default edge limits), on a real gateway with a real issuer and
the probe backend (which answers with the metadata it received):

- a token whose identity claims hold control characters is refused at verification;
- roles and permissions reach plugins so that a comma inside a value stays inside it, and the SDK
  reads them back as sent (plugins/sdk/user.py);
- identity headers other proxies use are dropped from client requests on every path and entry
  point, public paths included.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from gateway.settings import GatewaySettings
from plugins.sdk import user_of
from tests.gateway.test_auth_gateway import call, reply_metadata as metadata_of
from tests.support.grpcweb import BINARY, frame, parse_response
from tests.support.oidc_issuer import OidcIssuer
from tests.support.processes import Gateway, run_gateway

UNAUTHENTICATED = 16
FOREIGN = {
    "x-forwarded-user": "admin",
    "X-User-Id": "admin",
    "x-user-roles": "admin",
    "remote-user": "admin",
    "x-authenticated-userid": "admin",
    "X-Auth-Request-Email": "admin@example.org",
    "x-consumer-username": "admin",
    "x-jwt-claims": '{"sub": "admin"}',
}


@pytest.fixture(scope="module")
def issuer() -> Iterator[OidcIssuer]:
    with OidcIssuer(style="keycloak") as running:
        yield running


@pytest.fixture(scope="module")
def gateway(issuer: OidcIssuer, probe_address: str, work_dir: Path) -> Iterator[Gateway]:
    config = {
        "upstreams": {"accept.v1.Probe": [probe_address]},
        "publicPaths": ["/api/accept.v1.Probe/*"],  # the same method, public under /api
        "auth": {
            "enabled": True,
            "issuers": [
                {
                    "issuer": issuer.issuer,
                    "audience": ["upf-api"],
                    "algorithms": ["RS256"],
                    "discovery": True,
                    "rolesClaim": "realm_access.roles",
                }
            ],
            "roles": {"user": ["probe:call"]},
        },
    }
    with run_gateway(config, work_dir) as running:
        yield running


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "alice\r\nINFO forged log line"},
        {"sub": "alice\x00"},
        {"email": "alice@example.org\n"},
        {"name": "Alice\x85"},  # C1: NEL
        {"realm_access": {"roles": ["user", "admin\r\n"]}},
        {"permissions": ["probe:call\x1b[31m"]},
        {"sub": "alice\u2028forged"},
    ],
    ids=["sub-crlf", "sub-nul", "email-lf", "name-c1", "role-crlf", "permission-esc", "sub-u2028"],
)
def test_identity_claims_with_control_characters_are_refused(
    gateway: Gateway, issuer: OidcIssuer, pb: Any, claims: dict[str, Any]
) -> None:
    token = issuer.mint(claims)
    response = call(gateway, pb, token)
    assert response.status == UNAUTHENTICATED
    assert "control characters" in response.message
    me = httpx.get(f"{gateway.url}/api/auth/me", headers={"authorization": f"Bearer {token}"}, timeout=10)
    assert me.status_code == 401
    assert "forged" not in gateway.process.output()


def test_a_comma_inside_a_role_stays_inside_it(gateway: Gateway, issuer: OidcIssuer, pb: Any) -> None:
    roles = ["user", "team:a,b", "50% off", "Zürich"]
    token = issuer.mint({"realm_access": {"roles": roles}, "permissions": ["orders:read,write"]})
    metadata = metadata_of(pb, call(gateway, pb, token))
    assert metadata["x-upf-user-roles"] == "user,team:a%2Cb,50%25 off,Z%C3%BCrich"
    user = user_of(metadata.items())
    assert user is not None
    assert user.user_id == issuer.users["alice"].sub
    assert user.roles == tuple(roles)
    assert user.permissions == ("orders:read,write", "probe:call")


@pytest.mark.parametrize("path", ["/api/accept.v1.Probe/Unary", "/accept.v1.Probe/Unary"], ids=["public", "private"])
def test_other_proxies_identity_headers_never_reach_a_plugin(
    gateway: Gateway, issuer: OidcIssuer, pb: Any, path: str
) -> None:
    sent = {"content-type": BINARY, **FOREIGN, "x-kept": "yes"}
    if path == "/accept.v1.Probe/Unary":
        sent["authorization"] = f"Bearer {issuer.mint()}"
    body = frame(pb.CallRequest(payload=b"hi").SerializeToString())
    r = httpx.post(f"{gateway.url}{path}", content=body, headers=sent, timeout=10)
    metadata = metadata_of(pb, parse_response(r.status_code, dict(r.headers), r.content))
    assert metadata["x-kept"] == "yes"
    assert not {name.lower() for name in FOREIGN} & set(metadata)


def test_native_grpc_drops_them_too(gateway: Gateway, issuer: OidcIssuer, pb: Any, pb_grpc: Any) -> None:
    metadata = [("authorization", f"Bearer {issuer.mint()}"), ("x-kept", "yes")]
    metadata += [(name.lower(), value) for name, value in FOREIGN.items()]
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        reply = pb_grpc.ProbeStub(channel).Unary(pb.CallRequest(payload=b"n"), metadata=metadata, timeout=10)
    received = dict(reply.metadata)
    assert received["x-kept"] == "yes"
    assert not {name.lower() for name in FOREIGN} & set(received)


def test_the_list_is_configurable() -> None:
    settings = GatewaySettings.model_validate({"edge": {"identityHeaders": ["x-my-user"]}})
    assert settings.edge.identity_headers == ["x-my-user"]
    default = GatewaySettings().edge.identity_headers
    for name in ("x-forwarded-user", "x-auth-request-user", "remote-user", "x-consumer-username", "x-jwt-claims"):
        assert name in default


# This gateway runs with the default edge limits: the issue's own requests, as `upf run` got them.


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": "Bearer " + "x" * (1024 * 1024)},  # a 1 MiB header
        {f"x-h{i}": "1" for i in range(2000)},  # 2,000 headers
    ],
    ids=["1-MiB-header", "2000-headers"],
)
def test_the_default_limits_refuse_oversized_heads_with_431(gateway: Gateway, headers: dict[str, str]) -> None:
    try:
        r = httpx.get(f"{gateway.url}/healthz", headers=headers, timeout=10)
    except httpx.TransportError:
        return  # closed before the client finished sending: refused all the same (no 200)
    assert r.status_code == 431
