"""The signing keys of one token issuer (its JWKS), fetched asynchronously and kept in memory.

Why not pyjwt's PyJWKClient: it is synchronous (urllib in the event loop), a failed fetch does not start
its unknown-kid cooldown, and its cache expires during an outage (research/gateways.md 2.3). Here:

- `get(kid)` is a dict lookup: the per-request fast path never waits and never fetches.
- `resolve(kid)` may refetch for a kid not in the cache, but at most once per `unknown_kid_cooldown` for
  the whole issuer (random kids must not drive fetches) whether that fetch succeeds or not, and
  concurrent callers share one fetch.
- A background task refreshes `refresh_ahead` seconds before `max_age`, and every `error_retry`
  seconds while the issuer fails. A failed fetch never wipes the cache (stale-if-error): the previous
  keys stay, with no deadline, and `status` tells /readyz how old they are.
- Only keys that can verify a pinned asymmetric algorithm are kept: no symmetric keys (HS/RS
  confusion), no `use` other than "sig", no alg outside the issuer's pins, no private key material.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "MAX_DOCUMENT_BYTES",
    "FetchError",
    "JwksCache",
    "http_fetcher",
]

log = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 1024 * 1024  # a JWKS or discovery document larger than this is refused
MIN_RSA_BITS = 2048
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES256K", "ES384", "ES512", "EdDSA"}
)
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_MAX_LOGGED = 1024

Fetch = Callable[[], Awaitable[bytes]]


class FetchError(Exception):
    """A document could not be fetched or is not what was expected; the message says why."""


def require_http_url(url: str, what: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be an http:// or https:// URL with a host, not {url!r}")


async def fetch_json_object(client: httpx.AsyncClient, url: str, timeout: float) -> tuple[bytes, dict[str, Any]]:
    """GET `url`: a 2xx answer holding a JSON object of at most MAX_DOCUMENT_BYTES, else FetchError."""
    body = bytearray()
    try:
        # asyncio.timeout bounds the whole exchange; httpx's own timeout is per read, and a server
        # that drips one byte at a time would never trip it.
        async with (
            asyncio.timeout(timeout),
            client.stream("GET", url, headers={"Accept": "application/json"}, timeout=timeout) as response,
        ):
            if not 200 <= response.status_code < 300:
                raise FetchError(f"{url} answered HTTP {response.status_code}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_DOCUMENT_BYTES:
                raise FetchError(f"{url} sent {declared} bytes, more than the {MAX_DOCUMENT_BYTES} bytes allowed")
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise FetchError(f"{url} sent more than the {MAX_DOCUMENT_BYTES} bytes allowed")
    except TimeoutError:
        raise FetchError(f"{url} did not answer within {timeout:g} s") from None
    except httpx.HTTPError as exc:
        raise FetchError(f"{url} could not be fetched: {type(exc).__name__} {exc}".rstrip()) from None
    try:
        document = json.loads(body)
    except ValueError:
        raise FetchError(f"{url} did not answer JSON") from None
    if not isinstance(document, dict):
        raise FetchError(f"{url} did not answer a JSON object")
    return bytes(body), document


def http_fetcher(client: httpx.AsyncClient, url: str, timeout: float = 5.0) -> Fetch:
    """A JwksCache `fetch` that GETs `url` with `client`: non-2xx, bad JSON or over 1 MiB is a FetchError."""
    require_http_url(url, "The JWKS URL")

    async def fetch() -> bytes:
        body, _document = await fetch_json_object(client, url, timeout)
        return body

    return fetch


class JwksCache:
    def __init__(
        self,
        fetch: Fetch,
        *,
        issuer: str,
        algorithms: Collection[str],
        clock: Callable[[], float] = time.monotonic,
        max_age: float = 300.0,
        refresh_ahead: float = 30.0,
        unknown_kid_cooldown: float = 30.0,
        error_retry: float = 5.0,
        max_keys: int = 32,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        pinned = tuple(dict.fromkeys(algorithms))
        if not pinned:
            raise ValueError(f"no algorithm pinned for the issuer {issuer}")
        refused = [alg for alg in pinned if alg not in ASYMMETRIC_ALGORITHMS]
        if refused:
            raise ValueError(
                f"algorithms {refused} cannot be pinned for {issuer}: only asymmetric ones verify with a JWKS "
                f"({', '.join(sorted(ASYMMETRIC_ALGORITHMS))})"
            )
        if not 0 <= refresh_ahead < max_age:
            raise ValueError("refresh_ahead must be at least 0 and less than max_age")
        if unknown_kid_cooldown < 0 or error_retry <= 0 or max_keys < 1:
            raise ValueError("unknown_kid_cooldown must be >= 0, error_retry > 0 and max_keys >= 1")
        self.issuer = issuer
        self.algorithms = pinned
        self._fetch = fetch
        self._clock = clock
        self._sleep = sleep
        self._refresh_after = max_age - refresh_ahead
        self._cooldown = unknown_kid_cooldown
        self._error_retry = error_retry
        self._max_keys = max_keys
        self._keys: dict[str, jwt.PyJWK] = {}
        self._published: list[dict[str, Any]] = []  # the kept keys as the issuer published them
        self._inflight: asyncio.Task[bool] | None = None
        self._background: asyncio.Task[None] | None = None
        self._last_kid_fetch: float | None = None
        self._last_success: float | None = None
        self._last_error: str | None = None
        self._logged: set[str] = set()

    # -- reading -----------------------------------------------------------------------------------

    def get(self, kid: str) -> jwt.PyJWK | None:
        """The key for `kid` if cached; never fetches."""
        return self._keys.get(kid)

    async def resolve(self, kid: str) -> jwt.PyJWK | None:
        """The key for `kid`, refetching the JWKS if it is unknown and the issuer's cooldown allows."""
        key = self._keys.get(kid)
        if key is not None:
            return key
        if self._inflight is None:
            now = self._clock()
            if self._last_kid_fetch is not None and now - self._last_kid_fetch < self._cooldown:
                return None
            # The cooldown starts with the attempt, so a failing issuer is not hammered either.
            self._last_kid_fetch = now
        await self.refresh()
        return self._keys.get(kid)

    def jwks_json(self) -> str:
        """The kept keys as a JWKS document (each with the algorithm it is pinned to)."""
        return json.dumps({"keys": self._published}, separators=(",", ":"))

    @property
    def status(self) -> dict[str, Any]:
        """For readiness probes: how many keys, how old the last good fetch is, the last error."""
        return {
            "issuer": self.issuer,
            "keys": len(self._keys),
            "last_success_age": None if self._last_success is None else self._clock() - self._last_success,
            "last_error": self._last_error,
        }

    # -- fetching ----------------------------------------------------------------------------------

    async def refresh(self) -> bool:
        """Fetch now, or join the fetch under way; True when that fetch succeeded. Bypasses the cooldown:
        for the owner's schedule, never for anything a client controls."""
        task = self._inflight
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch_and_load(), name=f"jwks {self.issuer}")
            self._inflight = task
            task.add_done_callback(self._fetch_done)
        # shield: a caller that gives up (its request was cancelled) must not cancel the shared fetch.
        return await asyncio.shield(task)

    def _fetch_done(self, task: asyncio.Task[bool]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _fetch_and_load(self) -> bool:
        try:
            body = await self._fetch()
            self._load(body)
        except Exception as exc:
            self._last_error = str(exc) or type(exc).__name__
            log.warning("JWKS of %s: %s (keeping %d cached keys)", self.issuer, self._last_error, len(self._keys))
            return False
        self._last_success = self._clock()
        self._last_error = None
        return True

    def _load(self, body: bytes) -> None:
        try:
            document = json.loads(body)
        except ValueError:
            raise FetchError("the JWKS is not JSON") from None
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise FetchError('the JWKS is not a JSON object with a "keys" list')
        keys: dict[str, jwt.PyJWK] = {}
        published: list[dict[str, Any]] = []
        over_limit = 0
        for entry in entries:
            kid, key, reason = self._parse(entry)
            if key is None or kid is None:
                self._log_once(f"{kid}:{reason}", "JWKS of %s: key %r dropped: %s", self.issuer, kid, reason)
                continue
            if kid in keys:
                self._log_once(f"{kid}:dup", "JWKS of %s: key %r dropped: duplicate kid", self.issuer, kid)
                continue
            if len(keys) >= self._max_keys:
                over_limit += 1
                continue
            keys[kid] = key
            published.append({**entry, "alg": key.algorithm_name})
        if over_limit:
            self._log_once(
                f"over:{over_limit}",
                "JWKS of %s: %d keys over the limit of %d dropped",
                self.issuer,
                over_limit,
                len(keys),
            )
        if not keys:
            raise FetchError(f"the JWKS has no usable key ({len(entries)} published)")
        # One assignment each: readers on this event loop see the old set or the new one, never a mix.
        self._keys = keys
        self._published = published

    def _parse(self, entry: Any) -> tuple[str | None, jwt.PyJWK | None, str]:
        if not isinstance(entry, dict):
            return None, None, "not a JSON object"
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            return None, None, "no kid"
        if entry.get("kty") == "oct":
            return kid, None, "symmetric key (kty oct)"
        if _PRIVATE_MEMBERS & entry.keys():
            return kid, None, "private key material published"
        use = entry.get("use")
        if use is not None and use != "sig":
            return kid, None, f"use {use!r}, not 'sig'"
        ops = entry.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            return kid, None, "key_ops without 'verify'"
        alg = entry.get("alg")
        if alg is None:
            if len(self.algorithms) != 1:
                return kid, None, f"no alg, and several algorithms are pinned ({', '.join(self.algorithms)})"
            alg = self.algorithms[0]
        elif alg not in self.algorithms:
            return kid, None, f"alg {alg!r} not pinned ({', '.join(self.algorithms)})"
        try:
            key = jwt.PyJWK(entry, algorithm=alg)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            return kid, None, f"unusable: {exc}"
        size = getattr(key.key, "key_size", None)
        if entry.get("kty") == "RSA" and isinstance(size, int) and size < MIN_RSA_BITS:
            return kid, None, f"RSA key of {size} bits (at least {MIN_RSA_BITS} required)"
        return kid, key, ""

    def _log_once(self, what: str, message: str, *args: Any) -> None:
        # A bad key is republished on every refresh; one line per key and reason is enough.
        if what in self._logged:
            return
        if len(self._logged) >= _MAX_LOGGED:
            self._logged.clear()
        self._logged.add(what)
        log.warning(message, *args)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """The first fetch (a failure is logged, not raised), then the background refresh."""
        await self.refresh()
        if self._background is None:
            self._background = asyncio.get_running_loop().create_task(
                self._refresh_forever(), name=f"jwks refresh {self.issuer}"
            )

    async def _refresh_forever(self) -> None:
        while True:
            if self._last_error is None and self._last_success is not None:
                delay = max(0.0, self._last_success + self._refresh_after - self._clock())
            else:
                delay = self._error_retry
            await self._sleep(delay)
            await self.refresh()

    async def close(self) -> None:
        for task in (self._background, self._inflight):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._background = None
        self._inflight = None
