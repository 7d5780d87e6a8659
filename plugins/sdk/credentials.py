"""The registration credential a plugin sends with Register (registry.proto, RegisterRequest.credential).

In order: $UPF_REGISTRATION_CREDENTIAL (the credential the operator gave this plugin; a plugin with a
configuration file may take it as the key `registrationCredential` instead), else one derived from the
registry's secret file when it is readable from here (`.upf/registration.secret`: the Procfile's
processes share it with no set-up). Read again at every registration attempt, so a plugin that starts
before the registry made the file registers once it exists.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = ["DEFAULT_SECRET_FILE", "Credential", "derive_credential", "registration_credential"]

DEFAULT_SECRET_FILE = Path(".upf/registration.secret")

#: A plugin's registration credential, or a function of its plugin id that gives it.
Credential = str | Callable[[str], str]


def derive_credential(secret: bytes, plugin_id: str) -> str:
    # The formula is part of the registry's protocol (registry.proto), so a plugin in any language can
    # derive it; tests check that this and the registry's own derivation agree.
    return "upfreg1." + hmac.new(secret, f"upf-registration:{plugin_id}".encode(), hashlib.sha256).hexdigest()


def registration_credential(
    plugin_id: str, environ: Mapping[str, str] = os.environ, secret_file: Path = DEFAULT_SECRET_FILE
) -> str:
    """This plugin id's credential, or "" when none can be found (the registry then says how to get one)."""
    if credential := environ.get("UPF_REGISTRATION_CREDENTIAL", ""):
        return credential
    try:
        text = secret_file.read_text().strip()
    except OSError:
        return ""
    return derive_credential(text.encode(), plugin_id) if text else ""
