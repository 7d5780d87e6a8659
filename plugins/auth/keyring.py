"""The custom provider's signing keys at run time: which key signs, which verify, rotation, the JWKS.

The store holds the keys; this keeps them loaded. A key signs for `keyRotationInterval` seconds.
Its successor is created ahead, `keyPublishAhead` seconds at least before it signs, and is in the
JWKS from then on: a gateway that refetches the JWKS every jwksMaxAge seconds has it before it meets
a token signed with it, and never needs an unknown-kid refetch (which an attacker's random kids may
have used up). The switch is in the store (the successor's signs_from, its predecessor's retired_at),
so every replica, and a restarted one, switches at the same moment without writing anything then.
Replicas sharing the store schedule under the store's lock: one of them creates the successor and
the others adopt it. When it is due is decided by store.base.KeySchedule; it is checked before each
signature and by the provider's housekeeping.
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
from plugins.auth.store.base import AuthStore, KeySchedule, StoreUnavailable

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
        publish_ahead: float = 0.0,
        check_every: float = 0.0,
        clock: Callable[[], float] = time.time,
        unknown_kid_cooldown: float = 1.0,
        passphrase: bytes | None = None,
    ) -> None:
        self._store = store
        self._passphrase = passphrase  # encrypts the private keys this ring stores (custom.keyPassphrase)
        self._alg = algorithm
        # check_every: how often the housekeeping looks, so that a successor is stored early enough
        # to start exactly at the end of its predecessor's interval.
        self._schedule = KeySchedule(algorithm, rotation_interval, publish_ahead, check_every)
        self._retention = retention  # seconds a retired key keeps verifying: accessTokenTTL + leeway
        self._clock = clock
        self._cooldown = unknown_kid_cooldown  # an unknown kid reloads from the store at most this often
        self._keys: dict[str, LoadedKey] = {}
        self._last: LoadedKey | None = None  # the key that signs last in the schedule: the only one not retired
        self._last_reload = float("-inf")
        self._rotating = asyncio.Lock()

    async def load(self) -> None:
        """Read every key from the store (other replicas may have rotated)."""
        keys: dict[str, LoadedKey] = {}
        stored_keys = await self._store.signing_keys()
        unreadable = []
        for stored in stored_keys:
            try:
                keys[stored.kid] = load_key(stored, self._passphrase)
            except ValueError as exc:
                logger.error("auth: skipping signing key %s: %s", stored.kid, exc)
                unreadable.append(str(exc))
        if stored_keys and not keys:
            # Not one key readable (a missing or wrong passphrase): signing with a fresh key would
            # hide it and orphan every token in circulation. Stop instead, saying why.
            raise StoreUnavailable(f"no stored signing key can be used: {unreadable[0]}")
        self._keys = keys
        self._last_reload = self._clock()
        self._last = max((k for k in keys.values() if k.retired_at is None), key=lambda k: k.signs_from, default=None)

    def _signing_at(self, now: float) -> LoadedKey | None:
        signing = (
            k for k in self._keys.values() if k.signs_from <= now and (k.retired_at is None or now < k.retired_at)
        )
        return max(signing, key=lambda k: k.signs_from, default=None)

    def _due(self) -> bool:
        return self._schedule.successor_signs_from(self._last, self._clock()) is not None

    async def signing_key(self) -> LoadedKey:
        """The key to sign with now; its successor is scheduled first when that is due."""
        key = self._signing_at(self._clock())
        if key is None or self._due():
            await self.rotate_if_due()
            key = self._signing_at(self._clock())
        if key is None:  # only if the stored schedule has a gap, e.g. replicas' clocks far apart
            raise StoreUnavailable("no stored signing key is in effect now")
        return key

    async def rotate_if_due(self) -> None:
        """Give the last key of the schedule its successor when due (KeySchedule), in the store."""
        async with self._rotating:  # one rotation at a time in this process
            if not self._due():
                return
            now = self._clock()
            candidate = await asyncio.to_thread(generate_key, self._alg, now, self._passphrase)
            chosen = await self._store.schedule_signing_key(candidate, self._schedule, now=now)
            if chosen.kid == candidate.kid:
                logger.info(
                    "auth: new %s signing key %s, published now, signing in %.0f s",
                    self._alg,
                    chosen.kid,
                    chosen.signs_from - now,
                )
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
        # The signing key first, then the next one, then the retired ones, most recently retired first.
        now = self._clock()
        signing = self._signing_at(now)

        def order(key: LoadedKey) -> tuple[int, float]:
            if key is signing:
                return 0, 0.0
            if key.retired_at is None or key.retired_at > now:  # scheduled: signs later
                return 1, key.signs_from
            return 2, -(key.retired_at or 0.0)

        keys = sorted((k for k in self._keys.values() if self._visible(k)), key=order)
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
