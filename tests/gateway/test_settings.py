from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import ConfigError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "upf.yaml"
    path.write_text(text)
    return path


def test_defaults_follow_the_seed() -> None:
    settings = load_settings(None, {})
    assert (settings.http_port, settings.grpc_port) == (8080, 50051)
    assert settings.rate_limiting.key_extractor == "ip"
    assert settings.circuit_breaker.failure_threshold == 5
    assert settings.max_message_bytes == 4 * 1024 * 1024


def test_file_with_seed_keys_and_static_upstreams(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
httpPort: 9000
grpcPort: 0
publicPaths: [/healthz, /api/manifests]
rateLimiting: {enabled: true, requestsPerSecond: 50, burstSize: 100, keyExtractor: token}
circuitBreaker: {enabled: true, failureThreshold: 3, resetTimeout: 10}
registryUrl: 127.0.0.1:50052
routeRefreshInterval: 15
authPluginUrl: 127.0.0.1:50060
upstreams:
  accept.v1.Probe: ["127.0.0.1:50071", "[::1]:50072"]
""",
    )
    settings = load_settings(path, {})
    assert settings.http_port == 9000
    assert settings.grpc_port == 0
    assert settings.rate_limiting.requests_per_second == 50
    assert settings.circuit_breaker.reset_timeout == 10
    assert settings.upstreams == {"accept.v1.Probe": ["127.0.0.1:50071", "[::1]:50072"]}


def test_config_file_from_upf_config_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "httpPort: 9100\n")
    assert load_settings(None, {"UPF_CONFIG": str(path)}).http_port == 9100


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "httpPort: 9000\nrateLimiting: {burstSize: 10}\n")
    settings = load_settings(
        path,
        {
            "UPF_HTTP_PORT": "9001",
            "UPF_RATE_LIMITING__BURST_SIZE": "20",
            "UPF_CORS__ALLOW_ORIGINS": '["https://app.example"]',
            "UNRELATED": "x",
        },
    )
    assert settings.http_port == 9001
    assert settings.rate_limiting.burst_size == 20
    assert settings.cors.allow_origins == ["https://app.example"]


def test_unknown_key_names_the_key_and_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "rateLimiting:\n  burstSizee: 3\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    assert f"config file {path}: rateLimiting.burstSizee: unknown key" in str(caught.value)


def test_invalid_value_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "httpPort: eighty\n")
    with pytest.raises(ConfigError, match=r"config file .*upf.yaml: httpPort: Input should be a valid integer"):
        load_settings(path, {})


def test_invalid_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"environment variable UPF_GRPC_PORT: grpcPort: .*less than or equal"):
        load_settings(None, {"UPF_GRPC_PORT": "70000"})


def test_unknown_environment_variable_is_refused() -> None:
    with pytest.raises(ConfigError, match="environment variable UPF_HTTP_PROT: httpProt: unknown key"):
        load_settings(None, {"UPF_HTTP_PROT": "1"})


@pytest.mark.parametrize(
    ("upstreams", "message"),
    [
        ('{"Probe": ["127.0.0.1:1"]}', "'Probe' is not a fully qualified gRPC service"),
        ('{"a.v1.B": []}', "a.v1.B has no endpoint"),
        ('{"a.v1.B": ["localhost"]}', "'localhost' is not host:port"),
        ('{"a.v1.B": ["127.0.0.1:0"]}', "'127.0.0.1:0' is not host:port"),
    ],
)
def test_bad_upstreams_are_explained(upstreams: str, message: str) -> None:
    with pytest.raises(ConfigError, match="environment variable UPF_UPSTREAMS: upstreams") as caught:
        load_settings(None, {"UPF_UPSTREAMS": upstreams})
    assert message in str(caught.value)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings(tmp_path / "missing.yaml", {})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "httpPort: [\n"), {})
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_settings(write(tmp_path, "- 1\n"), {})
