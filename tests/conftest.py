from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.support import probe
from tests.support.processes import Gateway, free_port, probe_backend, run_gateway

ALLOWED_ORIGIN = "http://allowed.example"

# Tiers, marked here from what a test uses, so that no test has to remember its own marker:
#   js       runs Node (third-party JavaScript clients, the shell in Chromium): needs `make test`'s npm installs
#   process  starts processes (a gateway, a registry, a plugin, a server binary) or talks to the local servers
#   neither  in-process only: `pytest -m "not process and not js"` runs that tier alone, in seconds
_JS_MODULES = ("tests.support.node", "tests.shell")
_PROCESS_MODULES = (
    "tests.support.processes",
    "tests.support.registry_process",
    "tests.support.redis_server",
    "tests.conformance",
    "subprocess",
    "redis",
    "asyncpg",
    "nats",
)
_PROCESS_FIXTURES = {"gateway", "probe_address", "work_dir"}


def _imports(module: Any) -> set[str]:
    names = {module.__name__}
    for value in vars(module).values():
        name = getattr(value, "__module__", None) or getattr(value, "__name__", None)
        if isinstance(name, str):
            names.add(name)
    return names


def _uses(module: Any, prefixes: tuple[str, ...], seen: set[str] | None = None) -> bool:
    """Whether the module, or a test module it takes names from (a harness), uses one of `prefixes`."""
    seen = set() if seen is None else seen
    seen.add(module.__name__)
    for name in _imports(module):
        if any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes):
            return True
        helper = sys.modules.get(name)
        if name.startswith("tests.") and name not in seen and helper is not None and _uses(helper, prefixes, seen):
            return True
    return False


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "js: runs JavaScript in Node or Chromium")
    config.addinivalue_line("markers", "process: starts processes or uses the local servers")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tiers: dict[str, tuple[bool, bool]] = {}

    def tier(module_name: str) -> tuple[bool, bool]:
        if module_name not in tiers:
            module = sys.modules.get(module_name)
            tiers[module_name] = (
                (_uses(module, _JS_MODULES), _uses(module, _PROCESS_MODULES)) if module else (False, False)
            )
        return tiers[module_name]

    for item in items:
        module = getattr(item, "module", None)
        if module is None:
            continue
        # The test's own module, and the modules of the fixtures it uses (a harness that starts servers).
        sources = {module.__name__}
        info = getattr(item, "_fixtureinfo", None)
        for definitions in getattr(info, "name2fixturedefs", {}).values():
            sources.update(getattr(d.func, "__module__", "") or "" for d in definitions)
        found = [tier(name) for name in sources if name]
        js = any(j for j, _ in found)
        if js:
            item.add_marker(pytest.mark.js)
        if js or any(p for _, p in found) or _PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.process)


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
