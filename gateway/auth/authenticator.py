"""The one auth decision, shared by every entry point: the HTTP middleware (REST and gRPC-Web), the
native gRPC ingress and the WebSocket bridges (whose token arrives in their first message).

A request needs a valid bearer token unless its path is public. A gRPC method whose manifest policy
names a `requiredPermission` needs a caller holding it, public path or not. On a public path a valid
token still identifies the caller (rate-limit keys, plugins) and an invalid one is ignored: a page
that always sends its stale token must still be able to log in again.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.auth.identity import Identity
from gateway.auth.verify import TokenVerifier
from gateway.errors import GatewayError, PermissionDenied, Unauthenticated
from gateway.upstream.policies import MethodPolicies, split_call

__all__ = ["ALWAYS_PUBLIC", "Authenticator", "bearer_token"]

# Probes, the keys that verify tokens, and the ways to obtain a token.
ALWAYS_PUBLIC = ("/healthz", "/readyz", "/.well-known/jwks.json", "/api/auth/login", "/api/auth/refresh")
# IAuth methods a caller without a token must reach (gRPC-Web or native gRPC).
_PUBLIC_AUTH_METHODS = ("Login", "RefreshToken", "GetJwks")
_MISSING = Unauthenticated("this call needs a bearer token", headers={"www-authenticate": 'Bearer realm="upf"'})


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive), else None."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip().decode("latin-1")
            return None
    return None


class Authenticator:
    def __init__(
        self,
        verifier: TokenVerifier,
        *,
        public_paths: Iterable[str] = (),
        policies: MethodPolicies | None = None,
        auth_service: str = "upf.auth.v1.Auth",
    ) -> None:
        self.verifier = verifier
        self.policies = policies if policies is not None else MethodPolicies()
        exact: set[str] = set(ALWAYS_PUBLIC)
        prefixes: list[str] = []
        for path in public_paths:
            if path.endswith("*"):
                prefixes.append(path[:-1])
            else:
                exact.add(path)
        for method in _PUBLIC_AUTH_METHODS:
            exact.update((f"/{auth_service}/{method}", f"/api/{auth_service}/{method}"))
        self._exact = frozenset(exact)
        self._prefixes = tuple(prefixes)

    def is_public(self, path: str) -> bool:
        return path in self._exact or (bool(self._prefixes) and path.startswith(self._prefixes))

    async def authenticate(self, path: str, headers: Iterable[tuple[bytes, bytes]]) -> Identity | None:
        """The verified caller (None: anonymous on a public path); Unauthenticated / PermissionDenied else."""
        token = bearer_token(headers)
        target = split_call(path)
        policy = self.policies.get(*target) if target is not None else None
        required = policy.required_permission if policy is not None else None
        public = self.is_public(path)
        identity: Identity | None = None
        if token is not None:
            verifier = self.verifier
            identity = verifier.cached(token)
            if identity is None:
                try:
                    identity = await verifier.verify(token)
                except GatewayError:
                    if not public or required is not None:
                        raise
        elif not public or required is not None:
            raise _MISSING
        if required is not None:
            assert identity is not None
            if not identity.permits(required):
                raise PermissionDenied(
                    f"this call needs the permission {required}",
                    headers={"www-authenticate": f'Bearer realm="upf", error="insufficient_scope", scope="{required}"'},
                )
        return identity
