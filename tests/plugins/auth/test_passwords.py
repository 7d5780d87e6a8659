"""Passwords are argon2id hashes; a change of parameters rehashes at the next login."""

from __future__ import annotations

import os
import threading

import grpc
import pytest
from argon2 import PasswordHasher

from plugins.auth.passwords import Passwords, _lower_priority
from plugins.auth.settings import PasswordHashSettings
from tests.plugins.auth.harness import FAST_HASH, make_settings, serve_auth

FAST = PasswordHashSettings.model_validate(FAST_HASH)


async def test_hashes_are_argon2id_with_the_configured_parameters() -> None:
    passwords = Passwords(FAST)
    stored = await passwords.hash("correct horse")
    assert stored.startswith("$argon2id$v=19$m=1024,t=1,p=1$")
    assert await passwords.verify(stored, "correct horse")
    assert not await passwords.verify(stored, "wrong horse")
    assert not await passwords.verify("not a hash", "correct horse")
    assert not await passwords.verify(None, "correct horse")  # an unknown user
    assert await passwords.hash("correct horse") != stored  # salted
    assert not passwords.needs_rehash(stored)
    assert Passwords(PasswordHashSettings(time_cost=2, memory_cost=1024, parallelism=1)).needs_rehash(stored)


async def test_a_login_rehashes_a_password_stored_with_other_parameters() -> None:
    async with serve_auth(make_settings()) as auth:
        alice = await auth.provider.store.user_by_name("alice")
        assert alice is not None
        old = PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1).hash("alice-secret")
        await auth.provider.store.update_user(alice.id, password_hash=old)
        await auth.login()
        rehashed = await auth.provider.store.user_by_name("alice")
        assert rehashed is not None
        assert rehashed.password_hash.startswith("$argon2id$v=19$m=1024,t=1,p=1$")
        await auth.login()  # the new hash verifies
        # A failed login changes nothing.
        await auth.provider.store.update_user(alice.id, password_hash=old)
        with pytest.raises(grpc.aio.AioRpcError):
            await auth.login("alice", "wrong")
        assert (await auth.provider.store.user_by_name("alice")).password_hash == old  # type: ignore[union-attr]


def test_hashing_threads_yield_to_everything_else() -> None:
    # What the hashing pool's threads set for themselves (and argon2's lane threads inherit): the
    # lowest nice value and SCHED_IDLE, so a thread serving calls preempts a hash at once.
    seen: list[tuple[int, int]] = []

    def on_a_new_thread() -> None:
        _lower_priority()
        seen.append((os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), os.sched_getscheduler(0)))

    thread = threading.Thread(target=on_a_new_thread)
    thread.start()
    thread.join()
    assert seen == [(19, os.SCHED_IDLE)]
    # The thread that asked is unchanged: only the pool's threads are lowered.
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
