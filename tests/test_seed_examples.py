"""The seed's own configuration examples load as written (tests/seed/), `${VAR}` placeholders included."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common.config import ConfigError
from gateway.settings import load_settings
from plugins.auth.settings import load_auth_settings

SEED = Path(__file__).parent / "seed"


def test_the_seeds_auth_configuration_loads_with_its_secret_from_the_environment() -> None:
    settings = load_auth_settings(SEED / "auth.yaml", {"KEYCLOAK_SECRET": "s3cret: #not a comment"})
    assert settings.provider == "keycloak"
    assert settings.keycloak.server_url == "https://keycloak.example.com"
    assert settings.keycloak.client_secret == "s3cret: #not a comment"  # filled after parsing, never read as YAML
    assert settings.jwt.issuer == "https://auth.example.com"
    assert settings.jwt.public_key_url == "https://auth.example.com/.well-known/jwks.json"
    assert (settings.session.access_token_ttl, settings.session.refresh_token_ttl) == (3600, 604800)


def test_an_unset_variable_is_named_with_its_key() -> None:
    with pytest.raises(ConfigError) as caught:
        load_auth_settings(SEED / "auth.yaml", {})
    assert str(caught.value) == (
        f"config file {SEED / 'auth.yaml'}: auth.keycloak.clientSecret: environment variable KEYCLOAK_SECRET "
        "is not set (write ${KEYCLOAK_SECRET:-value} for a default)"
    )


def test_inside_the_auth_section_keys_are_checked_and_named_as_written(tmp_path: Path) -> None:
    config = tmp_path / "auth.yaml"
    config.write_text("auth:\n  jwt: {publicKeyUrl: ftp://x}\n")
    with pytest.raises(ConfigError, match=r"config file .*: auth\.jwt\.publicKeyUrl: 'ftp://x' is not an http"):
        load_auth_settings(config, {})
    config.write_text("auth: {provider: custom}\nport: 1\n")
    with pytest.raises(ConfigError, match=r"port: unknown key \(with a top-level auth: section"):
        load_auth_settings(config, {})
    # UPF_* overrides name the plugin's own keys, with or without the section in the file.
    environ = {"KEYCLOAK_SECRET": "x", "UPF_KEYCLOAK__REALM": "r"}
    assert load_auth_settings(SEED / "auth.yaml", environ).keycloak.realm == "r"


def test_the_seeds_gateway_configuration_loads_with_a_placeholder_default() -> None:
    settings = load_settings(SEED / "gateway.yaml", {})
    assert (settings.grpc_port, settings.http_port) == (50051, 8080)
    assert settings.auth_plugin_url == "127.0.0.1:50060"
    assert settings.rate_limiting.enabled
    assert settings.rate_limiting.key_extractor == "ip"
    assert settings.circuit_breaker.reset_timeout == 30
    assert settings.registry_url == "127.0.0.1:50052"
    assert load_settings(SEED / "gateway.yaml", {"REGISTRY_URL": "10.0.0.5:50052"}).registry_url == "10.0.0.5:50052"


def test_literal_dollar_braces_are_written_doubled(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("registryUrl: $${NOT_A_VARIABLE}\n")
    assert load_settings(config, {}).registry_url == "${NOT_A_VARIABLE}"


def test_upf_names_the_unset_variable_and_stops(tmp_path: Path) -> None:
    # What an operator sees: the command refuses to start, naming the variable and the key.
    upf = shutil.which("upf", path=str(Path(sys.executable).parent))
    assert upf is not None
    config = tmp_path / "gateway.yaml"
    config.write_text("registryUrl: ${SEED_TEST_UNSET_REGISTRY}\n")
    result = subprocess.run(
        [upf, "gateway", "--config", str(config)], capture_output=True, text=True, timeout=60, env={"PATH": ""}
    )
    assert result.returncode == 2
    assert "registryUrl: environment variable SEED_TEST_UNSET_REGISTRY is not set" in result.stderr
