"""Config documented once: the README's tables and each command's --help come from the field descriptions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

from cli.docs import README, configuration_tables, with_tables
from common.config_docs import keys
from gateway.settings import GatewaySettings
from plugins.auth.settings import AuthSettings
from registry.settings import RegistrySettings

UPF = str(Path(sys.executable).parent / "upf")
MODELS: dict[str, type[BaseModel]] = {"gateway": GatewaySettings, "registry": RegistrySettings, "plugin": AuthSettings}


def test_the_readmes_configuration_tables_are_current() -> None:
    readme = README.read_text(encoding="utf-8")
    assert readme == with_tables(readme), "README.md's configuration tables are stale: run `make docs`"
    # The drift that made this test: the README said round robin while the default is p2c.
    assert "| `loadBalancing` | `p2c` |" in configuration_tables()


def test_every_key_has_a_description() -> None:
    described = {(name, key.path): key.description for name, model in MODELS.items() for key in keys(model)}
    assert [where for where, description in described.items() if not description] == []


def test_each_commands_help_lists_every_key_with_its_default_and_description() -> None:
    for command, model in MODELS.items():
        shown = " ".join(
            subprocess.run(
                [UPF, command, "--help"], capture_output=True, text=True, timeout=60, check=True
            ).stdout.split()
        )
        for key in keys(model):
            assert f"{key.path}: {key.default}" in shown, (command, key.path)
            assert " ".join(key.description.split()) in shown, (command, key.path)
