from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.support import probe
from tests.support.processes import Gateway, free_port, probe_backend, run_gateway

ALLOWED_ORIGIN = "http://allowed.example"


@pytest.fixture(scope="session")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("upf")


@pytest.fixture(scope="session")
def probe_gen(work_dir: Path) -> Path:
    """The accept.v1.Probe code and descriptor set, generated for this test session."""
    return probe.generate(work_dir / "probe-gen")


@pytest.fixture(scope="session")
def pb(probe_gen: Path) -> Any:
    return probe.load(probe_gen)[0]


@pytest.fixture(scope="session")
def pb_grpc(probe_gen: Path) -> Any:
    return probe.load(probe_gen)[1]


@pytest.fixture(scope="session")
def probe_address(probe_gen: Path, work_dir: Path) -> Iterator[str]:
    with probe_backend(probe_gen, work_dir) as (address, _process):
        yield address


@pytest.fixture(scope="session")
def gateway(probe_address: str, work_dir: Path) -> Iterator[Gateway]:
    """One gateway for the session: the probe service, a service whose backend is down, CORS for one origin."""
    config = {
        "upstreams": {
            "accept.v1.Probe": [probe_address],
            "gone.v1.Nothing": [f"127.0.0.1:{free_port()}"],
        },
        "cors": {"allowOrigins": [ALLOWED_ORIGIN]},
        "maxMessageBytes": 1024 * 1024,
        "maxTimeout": 60,
        # Many tests call the dead service on purpose; its breaker opening would change their answers.
        # Breakers are tested on their own (test_breaker.py).
        "circuitBreaker": {"failureThreshold": 1000},
    }
    with run_gateway(config, work_dir) as running:
        yield running


@pytest.fixture(scope="session")
def probe_stub(probe_address: str, pb_grpc: Any) -> Iterator[Any]:
    """A direct (not through the gateway) stub for the probe's Observe and Release."""
    with grpc.insecure_channel(probe_address) as channel:
        yield pb_grpc.ProbeStub(channel)


@pytest.fixture(scope="session")
def compressing_gateway(probe_gen: Path, work_dir: Path) -> Iterator[Gateway]:
    """A gateway in front of a probe started with --compress (it gzips every response message)."""
    with (
        probe_backend(probe_gen, work_dir, compress=True) as (address, _process),
        run_gateway({"upstreams": {"accept.v1.Probe": [address]}}, work_dir) as running,
    ):
        yield running
