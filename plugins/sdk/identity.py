"""Caller identity between plugins: who is calling, from a token the registry signed.

The registry gives every registered instance an identity token (registry.proto: a JWT, EdDSA, `sub` the
plugin id) and a new one on every lease renewal. The caller's side sends it on each call:

    channel = Channel(endpoint, metadata_hooks=[caller_token_hook(lambda: token)])      # common.rpc
    channel = grpc.aio.insecure_channel(endpoint, interceptors=caller_token_interceptors(lambda: token))

(`Plugin.channel()` does the first). The callee's side checks it with the registry's public keys:

    verifier = CallerVerifier.from_registry(registry_stub)
    caller = await verifier.caller(context)        # Caller(plugin_id, instance_id), or the call ends:
                                                    # UNAUTHENTICATED (no token, a bad one) or
                                                    # UNAVAILABLE (the keys cannot be fetched)

so an infrastructure plugin keeps each caller's data apart by a name the caller could not make up.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import grpc
import jwt
from upf.registry.v1 import registry_pb2 as pb, registry_pb2_grpc

from common.rpc.channel import MetadataHook

__all__ = [
    "CALLER_TOKEN_METADATA",
    "Caller",
    "CallerVerifier",
    "IdentityUnavailable",
    "InvalidCallerToken",
    "RegistryCallers",
    "caller_token_hook",
    "caller_token_interceptors",
]

CALLER_TOKEN_METADATA = "upf-caller-token"
_ISSUER = "upf-registry"
_AUDIENCE = "upf-plugins"
_Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
_VERIFIED_MAX = 4096  # tokens remembered as verified


@dataclass(frozen=True, slots=True)
class Caller:
    plugin_id: str
    instance_id: str


class InvalidCallerToken(Exception):
    """The token is missing, malformed, not signed by the registry, expired or meant for others."""


class IdentityUnavailable(Exception):
    """The registry's keys could not be fetched, so no token can be checked now."""


KeyFetch = Callable[[], Awaitable[pb.GetIdentityKeysResponse]]


class CallerVerifier:
    def __init__(
        self,
        fetch_keys: KeyFetch,
        *,
        clock: Callable[[], float] = time.time,
        leeway: float = 30.0,
        refetch_interval: float = 5.0,
    ) -> None:
        self._fetch_keys = fetch_keys
        self._clock = clock
        self._leeway = leeway  # clock skew between the registry's host and this one
        # A token with an unknown key id makes us fetch the keys again (the registry restarted with a
        # new key), but not more often than this: forged key ids must not flood the registry.
        self._refetch_interval = refetch_interval
        self._keys: dict[str, jwt.PyJWK] = {}
        # Tokens already verified, with their expiry: a plugin sends the same token on every call until
        # its next lease renewal, and an EdDSA check costs more than the rest of a cache call.
        self._verified: dict[str, tuple[Caller, float]] = {}
        self._fetched_at: float | None = None
        self._fetching = asyncio.Lock()

    @classmethod
    def from_registry(
        cls, stub: registry_pb2_grpc.RegistryAsyncStub, *, call_timeout: float = 5.0, **options: Any
    ) -> CallerVerifier:
        async def fetch() -> pb.GetIdentityKeysResponse:
            reply: pb.GetIdentityKeysResponse = await stub.GetIdentityKeys(
                pb.GetIdentityKeysRequest(), timeout=call_timeout
            )
            return reply

        return cls(fetch, **options)

    async def caller(self, context: _Context) -> Caller:
        """The verified caller of this call; ends the call with UNAUTHENTICATED or UNAVAILABLE otherwise."""
        token = next(
            (str(value) for key, value in context.invocation_metadata() or () if key == CALLER_TOKEN_METADATA), ""
        )
        try:
            return await self.verify(token)
        except InvalidCallerToken as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"caller identity: {exc}")
        except IdentityUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"caller identity: {exc}")
        raise AssertionError("context.abort returned")  # pragma: no cover: abort always raises

    async def namespace_of(self, context: _Context) -> str:
        """The caller's plugin id: the namespace an infrastructure plugin keeps its data in."""
        return (await self.caller(context)).plugin_id

    async def verify(self, token: str) -> Caller:
        known = self._verified.get(token)
        if known is not None and known[1] + self._leeway >= self._clock():
            return known[0]
        caller, exp = await self._verify(token)
        if len(self._verified) >= _VERIFIED_MAX:
            self._verified.clear()  # many callers, or many renewals: start over rather than grow
        self._verified[token] = caller, exp
        return caller

    async def _verify(self, token: str) -> tuple[Caller, float]:
        if not token:
            raise InvalidCallerToken(
                f"no {CALLER_TOKEN_METADATA} metadata; plugins send the identity token the registry gave them"
            )
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise InvalidCallerToken("the token is not a JWT") from None
        if not isinstance(kid, str) or not kid:
            raise InvalidCallerToken("the token names no key (kid)")
        key = await self._key(kid)
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=["EdDSA"],
                audience=_AUDIENCE,
                issuer=_ISSUER,
                # Expiry is checked below against the injected clock.
                options={"verify_exp": False, "verify_iat": False, "require": ["exp", "sub", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidCallerToken(f"the token was refused: {exc}") from None
        exp = claims["exp"]
        if not isinstance(exp, int | float) or exp + self._leeway < self._clock():
            raise InvalidCallerToken("the token has expired; the caller's lease renewals bring new ones")
        plugin_id, instance_id = claims["sub"], claims.get("iid", "")
        if not isinstance(plugin_id, str) or not plugin_id or not isinstance(instance_id, str):
            raise InvalidCallerToken("the token names no plugin")
        return Caller(plugin_id, instance_id), float(exp)

    async def _key(self, kid: str) -> jwt.PyJWK:
        key = self._keys.get(kid)
        if key is not None:
            return key
        async with self._fetching:
            key = self._keys.get(kid)
            recent = self._fetched_at is not None and self._clock() - self._fetched_at < self._refetch_interval
            if key is None and not recent:
                await self._refresh()
                key = self._keys.get(kid)
        if key is None:
            raise InvalidCallerToken(f'the token is signed with key "{kid}", which the registry does not use')
        return key

    async def _refresh(self) -> None:
        try:
            reply = await self._fetch_keys()
        except grpc.aio.AioRpcError as exc:
            raise IdentityUnavailable(
                f"the registry's keys cannot be fetched ({exc.code().name}: {exc.details()})"
            ) from None
        keys: dict[str, jwt.PyJWK] = {}
        for jwk in json.loads(reply.jwks_json).get("keys", []):
            if isinstance(jwk, dict) and isinstance(jwk.get("kid"), str):
                keys[jwk["kid"]] = jwt.PyJWK(jwk)
        self._keys = keys
        self._fetched_at = self._clock()


class RegistryCallers:
    """`namespace_of` for an infrastructure plugin: the verified caller's plugin id, checked with the keys
    of the registry at `target`. The channel is made on first use (a grpc.aio channel belongs to the
    event loop that serves the calls); `close()` when the plugin stops."""

    def __init__(self, target: str, **options: Any) -> None:
        self._target = target
        self._options = options
        self._channel: grpc.aio.Channel | None = None
        self._verifier: CallerVerifier | None = None

    async def __call__(self, context: _Context) -> str:
        if self._verifier is None:
            self._channel = grpc.aio.insecure_channel(self._target)
            self._verifier = CallerVerifier.from_registry(
                registry_pb2_grpc.RegistryStub(self._channel), **self._options
            )
        return await self._verifier.namespace_of(context)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = self._verifier = None


# --- the caller's side ----------------------------------------------------------------------------


def caller_token_hook(token: Callable[[], str]) -> MetadataHook:
    """A common.rpc.Channel metadata hook that sends `token()` (read at each call: it changes on renewal)."""
    return lambda: ((CALLER_TOKEN_METADATA, token()),)


_Details: TypeAlias = grpc.aio.ClientCallDetails


def _with_token(details: _Details, token: str) -> _Details:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    metadata[CALLER_TOKEN_METADATA] = token
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


if TYPE_CHECKING:  # generic in the stubs only
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _StreamStream = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor
    _StreamStream = grpc.aio.StreamStreamClientInterceptor


class _TokenInterceptor:
    def __init__(self, token: Callable[[], str]) -> None:
        self._token = token

    async def intercept_unary_unary(self, continuation: Any, client_call_details: _Details, request: Any) -> Any:
        return await continuation(_with_token(client_call_details, self._token()), request)

    async def intercept_unary_stream(self, continuation: Any, client_call_details: _Details, request: Any) -> Any:
        return await continuation(_with_token(client_call_details, self._token()), request)

    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: _Details, request_iterator: AsyncIterable[Any] | Iterable[Any]
    ) -> Any:
        return await continuation(_with_token(client_call_details, self._token()), request_iterator)

    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: _Details, request_iterator: AsyncIterable[Any] | Iterable[Any]
    ) -> Any:
        return await continuation(_with_token(client_call_details, self._token()), request_iterator)


# grpc.aio files each interceptor under the first of the four kinds it is an instance of (an elif chain),
# so one object of all four kinds would only ever see unary-unary calls: one object per kind.
class _UnaryUnaryToken(_TokenInterceptor, _UnaryUnary):
    pass


class _UnaryStreamToken(_TokenInterceptor, _UnaryStream):
    pass


class _StreamUnaryToken(_TokenInterceptor, _StreamUnary):
    pass


class _StreamStreamToken(_TokenInterceptor, _StreamStream):
    pass


def caller_token_interceptors(token: Callable[[], str]) -> list[grpc.aio.ClientInterceptor]:
    """caller_token_hook for a grpc.aio channel: interceptors that send `token()` on every call, whatever
    its kind (unary or streaming)."""
    # The stubs type the list's items as "cast or ignore": grpc.aio.ClientInterceptor is a Union there.
    kinds = (_UnaryUnaryToken, _UnaryStreamToken, _StreamUnaryToken, _StreamStreamToken)
    return [cast(grpc.aio.ClientInterceptor, kind(token)) for kind in kinds]
