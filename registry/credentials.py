"""Who may register a plugin id: a credential per id, derived from one registration secret.

    credential(id) = "upfreg1." + hex(HMAC-SHA256(secret, "upf-registration:" + id))

The registry keeps only the secret; the operator hands each plugin the credential of its own id
(`upf registry --credential-for ID`), so a plugin that holds one cannot register under another id, and
replicas of one id share it. Without this anyone who reaches the registry could list an existing
service (say upf.auth.v1.Auth) under an id of its own and receive a share of its calls.

The secret comes from `registration.secret`, else from `registration.secretFile`, which the registry
creates (mode 0600) with a random secret when it is missing: processes started from one folder (the
Procfile) share it with no set-up, as the SDK reads the same file to derive its credential.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from registry.errors import PermissionDenied, Unauthenticated

__all__ = ["PREFIX", "RegistrationCredentials", "derive", "secret_from_file"]

logger = logging.getLogger(__name__)

PREFIX = "upfreg1."


def derive(secret: bytes, plugin_id: str) -> str:
    return PREFIX + hmac.new(secret, f"upf-registration:{plugin_id}".encode(), hashlib.sha256).hexdigest()


def secret_from_file(path: Path) -> bytes:
    """The secret in `path`, created with a fresh random one (readable by this user only) if missing."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = secrets.token_hex(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another registry created it meanwhile: use theirs
            return secret_from_file(path)
        with os.fdopen(fd, "w") as file:
            file.write(text + "\n")
        logger.info("created the registration secret %s; plugins started from here read it", path)
    if not text:
        raise ValueError(f"registration.secretFile {path} is empty; delete it to have a new secret made")
    return text.encode()


class RegistrationCredentials:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def for_plugin(self, plugin_id: str) -> str:
        return derive(self._secret, plugin_id)

    def check(self, plugin_id: str, credential: str) -> None:
        if not credential:
            raise Unauthenticated(
                f"registering {plugin_id} needs its registration credential (RegisterRequest.credential); "
                f"the operator prints it with `upf registry --credential-for {plugin_id}`"
            )
        if not hmac.compare_digest(credential.encode(), self.for_plugin(plugin_id).encode()):
            raise PermissionDenied(
                f"the registration credential is not the one for plugin id {plugin_id}; "
                "each plugin id has its own (`upf registry --credential-for ID`)"
            )
