"""The custom provider's signing keys at run time: which key signs, which verify, rotation, the JWKS.

The store holds the keys; this keeps them loaded. A key signs for `keyRotationInterval` seconds and
is then retired (checked before each signature and by the provider's housekeeping). Replicas sharing
the store rotate under the store's lock, so one of them creates the next key and the others adopt it.
A retired key stays in the JWKS, and keeps verifying, until every token it signed has expired:
retired_at + accessTokenTTL + leeway. Then it is dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from plugins.auth.keys import LoadedKey, generate_key, load_key
from plugins.auth.store.base import AuthStore, StoreUnavailable

__all__ = ["KeyRing"]

logger = logging.getLogger(__name__)


class KeyRing:
    def __init__(
        self,
        store: AuthStore,
        *,
        algorithm: str,
        rotation_interval: float,
        retention: float,
        clock: Callable[[], float] = time.time,
        unknown_kid_cooldown: float = 1.0,
    ) -> None:
        self._store = store
        self._alg = algorithm
        self._interval = rotation_interval
        self._retention = retention  # seconds a retired key keeps verifying: accessTokenTTL + leeway
        self._clock = clock
        self._cooldown = unknown_kid_cooldown  # an unknown kid reloads from the store at most this often
        self._keys: dict[str, LoadedKey] = {}
        self._current: LoadedKey | None = None
        self._last_reload = float("-inf")
        self._rotating = asyncio.Lock()

    async def load(self) -> None:
        """Read every key from the store (other replicas may have rotated)."""
        keys: dict[str, LoadedKey] = {}
        for stored in await self._store.signing_keys():
            try:
                keys[stored.kid] = load_key(stored)
            except ValueError as exc:
                logger.error("auth: skipping signing key %s: %s", stored.kid, exc)
        self._keys = keys
        self._last_reload = self._clock()
        unretired = sorted((k for k in keys.values() if k.retired_at is None), key=lambda k: k.created_at)
        self._current = unretired[-1] if unretired else None

    def _due(self, key: LoadedKey | None) -> bool:
        return key is None or key.alg != self._alg or key.created_at + self._interval <= self._clock()

    async def signing_key(self) -> LoadedKey:
        """The key to sign with now, rotated first when it is due."""
        current = self._current
        if not self._due(current):
            assert current is not None
            return current
        await self.rotate_if_due()
        assert self._current is not None
        return self._current

    async def rotate_if_due(self) -> None:
        async with self._rotating:  # one rotation at a time in this process
            if not self._due(self._current):
                return
            now = self._clock()
            candidate = await asyncio.to_thread(generate_key, self._alg, now)
            chosen = await self._store.rotate_signing_key(candidate, due_before=now - self._interval, alg=self._alg)
            if chosen.kid == candidate.kid:
                logger.info("auth: new %s signing key %s", self._alg, chosen.kid)
            await self.load()

    def _visible(self, key: LoadedKey) -> bool:
        return key.retired_at is None or key.retired_at + self._retention > self._clock()

    def verification_key(self, kid: str) -> LoadedKey | None:
        key = self._keys.get(kid)
        return key if key is not None and self._visible(key) else None

    async def find(self, kid: str) -> LoadedKey | None:
        """The key `kid` for verifying; reloads once (rate-limited) when it is not known here yet."""
        key = self.verification_key(kid)
        if key is not None or kid in self._keys:
            return key
        if self._clock() - self._last_reload < self._cooldown:
            return None
        try:
            await self.load()
        except StoreUnavailable as exc:
            logger.warning("auth: cannot reload signing keys: %s", exc)
            return None
        return self.verification_key(kid)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        # The signing key first, then the retired ones, most recently retired first.
        keys = sorted(
            (k for k in self._keys.values() if self._visible(k)),
            key=lambda k: (k.retired_at is not None, -(k.retired_at or 0.0), -k.created_at),
        )
        return {"keys": [k.jwk for k in keys]}

    async def jwks_json(self) -> str:
        """The JWKS, fresh from the store (a key another replica just created is in it), or as last loaded."""
        try:
            await self.load()
        except StoreUnavailable as exc:
            logger.warning("auth: serving the signing keys last loaded: %s", exc)
        return json.dumps(self.jwks(), separators=(",", ":"))

    async def prune(self) -> int:
        """Forget keys whose tokens have all expired."""
        removed = await self._store.delete_signing_keys_retired_by(self._clock() - self._retention)
        if removed:
            await self.load()
        return removed
