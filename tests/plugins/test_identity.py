"""Caller identity: the registry signs who each instance is, a plugin's dependency calls carry it, and
the callee believes the token only when the registry's key verifies it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from upf.demo.v1 import demo_pb2, demo_pb2_grpc
from upf.registry.v1 import registry_pb2 as pb, registry_pb2_grpc

from plugins.sdk import DependencyUnavailable, Plugin, Timings
from plugins.sdk.identity import (
    CALLER_TOKEN_METADATA,
    Caller,
    CallerVerifier,
    IdentityUnavailable,
    InvalidCallerToken,
)
from registry.identity import AUDIENCE, ISSUER, IdentityIssuer
from registry.store.memory import MemoryPluginStore
from tests.support.registry_process import RunningRegistry, run_registry

CALLEE = {
    "id": "callee-plugin",
    "version": "1.0.0",
    "name": "Callee",
    "type": "infrastructure",
    "provides": [
        {"name": "IEcho", "version": "1.0.0", "protoFile": "demo.proto", "grpcServices": ["upf.demo.v1.Echo"]}
    ],
}
CALLER = {
    "id": "caller-plugin",
    "version": "1.0.0",
    "name": "Caller",
    "type": "business",
    "requires": [{"interface": "IEcho", "version": "^1"}],
}
FAST = Timings(stop_notice=0, drain_grace=0.5, resolve_cache_ttl=0.1)


class WhoCalls(demo_pb2_grpc.EchoServicer):
    """Answers with the verified caller: plugin id / instance id."""

    def __init__(self, verifier: CallerVerifier) -> None:
        self.verifier = verifier

    async def Say(self, request: demo_pb2.SayRequest, context: Any) -> demo_pb2.SayResponse:
        caller = await self.verifier.caller(context)
        return demo_pb2.SayResponse(text=f"{caller.plugin_id}/{caller.instance_id}")

    async def Count(self, request: demo_pb2.CountRequest, context: Any) -> AsyncIterator[demo_pb2.CountResponse]:
        # A streaming call: the caller's token must come with it too (n = the caller's id length).
        caller = await self.verifier.caller(context)
        yield demo_pb2.CountResponse(n=len(caller.plugin_id))


@pytest.fixture(scope="module")
def registry(work_dir: Path) -> Any:
    with run_registry({}, work_dir) as running:
        yield running


def manifest_file(tmp_path: Path, body: dict[str, Any]) -> Path:
    path = tmp_path / f"{body['id']}.json"
    path.write_text(json.dumps(body))
    return path


@pytest.fixture
async def pair(registry: RunningRegistry, tmp_path: Path) -> AsyncIterator[tuple[Plugin, Plugin, CallerVerifier]]:
    channel = grpc.aio.insecure_channel(registry.target)
    verifier = CallerVerifier.from_registry(registry_pb2_grpc.RegistryStub(channel))
    callee = Plugin(
        manifest_file(tmp_path, CALLEE),
        [(demo_pb2_grpc.add_EchoServicer_to_server, WhoCalls(verifier))],
        registry=registry.target,
        timings=FAST,
        handle_signals=False,
        credential=registry.credential,
    )
    caller = Plugin(
        manifest_file(tmp_path, CALLER),
        [],
        registry=registry.target,
        timings=FAST,
        handle_signals=False,
        credential=registry.credential,
    )
    tasks = [await callee.start(), await caller.start()]
    try:
        yield callee, caller, verifier
    finally:
        for plugin, task in zip((callee, caller), tasks, strict=True):
            await plugin._shutdown(task)
        await channel.close(None)


async def say_through(caller: Plugin) -> str:
    deadline = time.monotonic() + 10
    while True:
        try:
            channel = await caller.channel("IEcho")
        except DependencyUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)  # the registry has not seen the callee healthy yet: look again
            continue
        reply = await demo_pb2_grpc.EchoStub(channel).Say(demo_pb2.SayRequest(text="who"), timeout=5)
        return reply.text


async def say_with(endpoint: str, metadata: tuple[tuple[str, str], ...] = ()) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(endpoint) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await demo_pb2_grpc.EchoStub(channel).Say(demo_pb2.SayRequest(text="who"), metadata=metadata, timeout=5)
    return caught.value


async def test_a_dependency_call_carries_the_callers_identity_and_nothing_else_passes(
    pair: tuple[Plugin, Plugin, CallerVerifier], registry: RunningRegistry
) -> None:
    callee, caller, _ = pair
    assert await say_through(caller) == f"caller-plugin/{caller.instance_id}"
    stream = demo_pb2_grpc.EchoStub(await caller.channel("IEcho")).Count(demo_pb2.CountRequest(count=1), timeout=5)
    assert [reply.n async for reply in stream] == [len("caller-plugin")]

    # No token: refused, and the message says what is missing.
    refused = await say_with(callee.endpoint)
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    assert CALLER_TOKEN_METADATA in (refused.details() or "")

    # A name merely claimed: a token made with another key under the registry's key id.
    keys = json.loads(registry.stub.GetIdentityKeys(pb.GetIdentityKeysRequest()).jwks_json)["keys"]
    forged = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "callee-plugin", "iid": "x", "exp": 2**33},
        Ed25519PrivateKey.generate(),
        algorithm="EdDSA",
        headers={"kid": keys[0]["kid"]},
    )
    refused = await say_with(callee.endpoint, ((CALLER_TOKEN_METADATA, forged),))
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Signature verification failed" in (refused.details() or "")


async def test_renewing_the_lease_brings_a_new_token_for_the_same_plugin(registry: RunningRegistry) -> None:
    manifest = json.dumps(CALLER | {"id": "renewing-plugin", "requires": []})
    reply = registry.stub.Register(registry.register_request(manifest, endpoint="127.0.0.1:1"))
    renewed = registry.stub.RenewLease(pb.RenewLeaseRequest(lease_id=reply.lease_id))
    keys = registry.stub.GetIdentityKeys(pb.GetIdentityKeysRequest())
    registry.stub.Unregister(pb.UnregisterRequest(lease_id=reply.lease_id))
    verifier = CallerVerifier(fetch_from(keys))
    for token in (reply.identity_token, renewed.identity_token):
        assert await verifier.verify(token) == Caller("renewing-plugin", reply.instance_id)


# --- the verifier's rules, with a real issuer and an injected clock -----------------------------------


def fetch_from(*replies: pb.GetIdentityKeysResponse | Exception) -> Callable[[], Any]:
    """Key fetches answered in turn by `replies` (the last one repeats); counts the calls."""
    answers = list(replies)

    async def fetch() -> pb.GetIdentityKeysResponse:
        fetch.calls += 1  # type: ignore[attr-defined]
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    fetch.calls = 0  # type: ignore[attr-defined]
    return fetch


def keys_of(issuer: IdentityIssuer) -> pb.GetIdentityKeysResponse:
    return pb.GetIdentityKeysResponse(jwks_json=issuer.jwks_json, issuer=ISSUER, audience=AUDIENCE)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def issuer(clock: Clock, ttl: float = 300) -> IdentityIssuer:
    return await IdentityIssuer.from_store(MemoryPluginStore(), ttl=ttl, clock=clock)


async def test_an_expired_token_is_refused_after_the_leeway() -> None:
    clock = Clock()
    signer = await issuer(clock, ttl=60)
    verifier = CallerVerifier(fetch_from(keys_of(signer)), clock=clock, leeway=30)
    token = signer.issue("orders-plugin", "orders-1")
    clock.now += 60 + 30
    assert (await verifier.verify(token)).plugin_id == "orders-plugin"
    clock.now += 1
    with pytest.raises(InvalidCallerToken, match="expired"):
        await verifier.verify(token)


async def test_a_token_for_another_audience_or_issuer_is_refused() -> None:
    clock = Clock()
    signer = await issuer(clock)
    verifier = CallerVerifier(fetch_from(keys_of(signer)), clock=clock)
    for claim, value in (("aud", "someone-else"), ("iss", "not-the-registry")):
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "orders-plugin", "exp": int(clock.now) + 60, claim: value}
        token = jwt.encode(claims, signer._key, algorithm="EdDSA", headers={"kid": signer.kid})
        with pytest.raises(InvalidCallerToken, match="refused"):
            await verifier.verify(token)


async def test_a_new_registry_key_is_fetched_once_and_unknown_key_ids_do_not_flood_the_registry() -> None:
    clock = Clock()
    old, new = await issuer(clock), await issuer(clock)
    fetch = fetch_from(keys_of(old), keys_of(new))
    verifier = CallerVerifier(fetch, clock=clock, refetch_interval=5)
    assert (await verifier.verify(old.issue("a", "a-1"))).plugin_id == "a"
    clock.now += 6  # the registry restarted with a new key
    assert (await verifier.verify(new.issue("b", "b-1"))).plugin_id == "b"
    assert fetch.calls == 2  # type: ignore[attr-defined]
    for _ in range(3):  # tokens under key ids nobody uses: one fetch at most per interval
        with pytest.raises(InvalidCallerToken, match="does not use"):
            await verifier.verify(jwt.encode({"sub": "x"}, "k" * 32, headers={"kid": "made-up"}))
    assert fetch.calls == 2  # type: ignore[attr-defined]


async def test_keys_that_cannot_be_fetched_make_the_call_unavailable_not_unauthenticated() -> None:
    clock = Clock()
    signer = await issuer(clock)
    down = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "refused", "")
    verifier = CallerVerifier(fetch_from(down, keys_of(signer)), clock=clock, refetch_interval=0)
    with pytest.raises(IdentityUnavailable, match="UNAVAILABLE"):
        await verifier.verify(signer.issue("a", "a-1"))
    assert (await verifier.verify(signer.issue("a", "a-1"))).plugin_id == "a"  # the registry is back


@pytest.mark.parametrize("token", ["", "not-a-jwt", jwt.encode({"sub": "x"}, "k" * 32)])
async def test_a_missing_or_malformed_token_is_refused_with_a_reason(token: str) -> None:
    clock = Clock()
    verifier = CallerVerifier(fetch_from(keys_of(await issuer(clock))), clock=clock)
    with pytest.raises(InvalidCallerToken) as refused:
        await verifier.verify(token)
    assert str(refused.value)
