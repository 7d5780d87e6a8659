"""Gateway CPU per request for the auth step: the cached verification every call pays, and the first
(uncached) verification of a token, per algorithm.

    python -m bench.auth_cost [--calls 200000] [--tokens 1000]

The step measured is what the pipeline runs per request: AuthMiddleware -> Authenticator.authenticate
(bearer header found among a browser's usual headers, public-path and policy lookups, the verified-
token cache, expiry and revocation checks) -> the scope's identity. The app behind it does nothing.
Uncached: TokenVerifier.verify of fresh tokens (signature, claims), with the keys already fetched.
CPU is this process's user + system time from resource.getrusage.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import uuid
from typing import Any

import jwt
import uvloop
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms
from starlette.types import Receive, Scope, Send

from common.auth.revocations import MemoryRevocations
from gateway.auth.authenticator import Authenticator
from gateway.auth.verify import TokenVerifier, TrustedIssuer
from gateway.middleware.auth import AuthMiddleware

ISSUER = "https://auth.bench.example"
PATH = "/api/upf.demo.v1.Echo/Say"
BROWSER_HEADERS = [
    (b"host", b"127.0.0.1:8080"),
    (b"content-type", b"application/grpc-web+proto"),
    (b"x-grpc-web", b"1"),
    (b"accept", b"application/grpc-web+proto"),
    (b"origin", b"http://127.0.0.1:8080"),
    (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64)"),
    (b"accept-language", b"en-GB,en;q=0.9"),
    (b"referer", b"http://127.0.0.1:8080/"),
]


class StaticKeys:
    def __init__(self, keys: dict[str, jwt.PyJWK]) -> None:
        self.keys = keys

    def get(self, kid: str) -> jwt.PyJWK | None:
        return self.keys.get(kid)

    async def resolve(self, kid: str) -> jwt.PyJWK | None:
        return self.keys.get(kid)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def signing_keys() -> dict[str, Any]:
    return {
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": ec.generate_private_key(ec.SECP256R1()),
    }


def mint(private: Any, alg: str, kid: str, subject: str) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": "upf-api",
        "sub": subject,
        "exp": now + 3600,
        "iat": now,
        "jti": uuid.uuid4().hex,
        "sid": uuid.uuid4().hex,
        "email": f"{subject}@bench.example",
        "roles": ["user"],
        "permissions": ["demo:read", "orders:read"],
    }
    return jwt.encode(claims, private, algorithm=alg, headers={"kid": kid})


async def run(calls: int, tokens: int) -> None:
    private = signing_keys()
    keys = {}
    for alg, key in private.items():
        jwk = json.loads(get_default_algorithms()[alg].to_jwk(key.public_key()))
        keys[alg] = jwt.PyJWK({**jwk, "kid": alg, "alg": alg})
    verifier = TokenVerifier(
        [TrustedIssuer(ISSUER, ("upf-api",), frozenset(private), StaticKeys(keys))],
        revocations=MemoryRevocations(),
        cache_size=max(tokens * 2, 10_000),
    )
    authenticator = Authenticator(verifier, public_paths=["/api/manifests"])

    async def nothing(scope: Scope, receive: Receive, send: Send) -> None:
        return None

    middleware = AuthMiddleware(nothing, authenticator=authenticator, authenticates_in_band=lambda path: False)

    print("| step | per request | |")
    print("| --- | ---: | --- |")
    for alg in ("EdDSA", "ES256", "RS256"):
        fresh = [mint(private[alg], alg, alg, f"user{i}") for i in range(min(tokens, 2000))]
        start = cpu_seconds()
        for token in fresh:
            await verifier.verify(token)
        per = (cpu_seconds() - start) / len(fresh) * 1e6
        print(f"| first verification, {alg} | {per:.1f} us | signature + claims, keys cached |")

    population = [mint(private["EdDSA"], "EdDSA", "EdDSA", f"user{i}") for i in range(tokens)]
    scopes = []
    for token in population:
        await verifier.verify(token)
        headers = [*BROWSER_HEADERS, (b"authorization", f"Bearer {token}".encode())]
        scopes.append({"type": "http", "path": PATH, "headers": headers})

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        return None

    for scope in scopes[:1000]:  # warm-up
        await middleware(dict(scope), receive, send)
    count = len(scopes)
    start = cpu_seconds()
    for i in range(calls):
        await middleware(dict(scopes[i % count]), receive, send)
    per_call = (cpu_seconds() - start) / calls * 1e6
    start = cpu_seconds()
    for i in range(calls):
        dict(scopes[i % count])
    baseline = (cpu_seconds() - start) / calls * 1e6
    print(f"| cached verification (middleware) | {per_call - baseline:.2f} us | {tokens} distinct tokens in turn |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200_000, help="requests through the middleware (cached)")
    parser.add_argument("--tokens", type=int, default=1000, help="distinct tokens the requests carry")
    args = parser.parse_args()
    uvloop.run(run(args.calls, args.tokens))


if __name__ == "__main__":
    main()
