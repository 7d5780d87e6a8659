"""Password hashing: argon2id (argon2-cffi), off the event loop, with the same cost for unknown users.

An unknown username is checked against a dummy hash made with the same parameters, so that a login
takes about as long whether the user exists or not, and the answer cannot tell them apart.
"""

from __future__ import annotations

import asyncio
import os
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from plugins.auth.settings import PasswordHashSettings

__all__ = ["Passwords"]


class Passwords:
    def __init__(self, settings: PasswordHashSettings, *, max_concurrent: int | None = None) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.time_cost, memory_cost=settings.memory_cost, parallelism=settings.parallelism
        )
        # Each hash holds memory_cost KiB while it runs: a flood of logins must not run hundreds at once.
        self._slots = asyncio.Semaphore(max_concurrent or os.cpu_count() or 2)
        self._dummy: str | None = None

    async def prepare(self) -> None:
        """Make the dummy hash now, so that not even the first unknown user's login takes longer."""
        if self._dummy is None:
            self._dummy = await self.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        """Whether `password` matches `stored`; None (an unknown user) costs the same and is False."""
        if stored is None:
            await self.prepare()
            assert self._dummy is not None
            await self._check(self._dummy, password)
            return False
        return await self._check(stored, password)

    def needs_rehash(self, stored: str) -> bool:
        """True when `stored` was made with other parameters than the configured ones."""
        try:
            return self._hasher.check_needs_rehash(stored)
        except InvalidHashError:
            return True

    async def _check(self, stored: str, password: str) -> bool:
        async with self._slots:
            try:
                return await asyncio.to_thread(self._hasher.verify, stored, password)
            except (VerificationError, InvalidHashError):
                return False
