"""`upf auth add-user`: create or update a user of the custom provider's store, from the command line.

The password is read from standard input (one line), or asked for on a terminal without echo; it
never appears in arguments, where `ps` and shell history would show it.
"""

from __future__ import annotations

import asyncio
import getpass
import sys

from common.auth.revocations import MemoryRevocations
from plugins.auth.custom import CustomProvider
from plugins.auth.settings import AuthSettings

__all__ = ["add_user", "read_password"]


def read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if first != getpass.getpass("again: "):
            raise ValueError("the passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


async def _add_user(
    settings: AuthSettings, username: str, password: str, email: str, roles: list[str], name: str
) -> str:
    # The store's own revocations are not touched here: a new or changed user revokes nothing.
    provider = CustomProvider(settings, MemoryRevocations())
    await provider.start(maintenance=False)
    try:
        return await provider.ensure_user(username, password, email, roles, name=name)
    finally:
        await provider.close()


def add_user(settings: AuthSettings, username: str, email: str, roles: list[str], name: str) -> str:
    """The user's id; ValueError for a bad password or a provider other than custom."""
    if settings.provider != "custom":
        raise ValueError(f"users live in the identity provider with provider {settings.provider}, not here")
    password = read_password()
    if len(password) < 8:
        raise ValueError("the password must be at least 8 characters")
    return asyncio.run(_add_user(settings, username, password, email, roles, name))
