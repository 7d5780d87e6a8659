"""Recovery with real processes: a registry with the memory store that restarts empty, and a plugin
that crashes and comes back on the same address. Plugins are registered by the test on their behalf
(as the SDK would), and their leases renewed by a thread while the test says so."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from contextlib import ExitStack, suppress
from pathlib import Path

import grpc
import httpx
from upf.registry.v1 import registry_pb2 as pb

from tests.gateway.test_registry_routing import NO_INSTANCE, OK, Load, Plugin, gateway_config, register, say
from tests.support.processes import free_port, run_gateway, wait_until
from tests.support.registry_process import RunningRegistry, run_registry

LEASE_TTL = 4.0
FAST = {"health": {"interval": 0.2, "timeout": 0.5, "failuresBeforeUnhealthy": 2, "successesBeforeHealthy": 1}}


class Renewer:
    """RenewLease every 0.5 s for the leases it holds, as a plugin's SDK does; errors are ignored."""

    def __init__(self) -> None:
        self.leases: dict[str, tuple[RunningRegistry, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for registry, lease in list(self.leases.values()):
                with suppress(grpc.RpcError):
                    registry.stub.RenewLease(pb.RenewLeaseRequest(lease_id=lease), timeout=1)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def test_a_restarted_memory_registry_leaves_no_gap_and_the_instances_it_never_hears_of_go_after_the_ttl(
    work_dir: Path,
) -> None:
    registry_port = free_port()
    config = {**FAST, "leaseTtl": LEASE_TTL}
    one, two = Plugin(work_dir), Plugin(work_dir)
    tag_one, tag_two = f"hi @{one.port}", f"hi @{two.port}"
    with ExitStack() as stack, httpx.Client(timeout=5) as client:
        renewer = Renewer()
        stack.callback(renewer.close)
        first = stack.enter_context(run_registry(config, work_dir, port=registry_port))
        for plugin, instance_id in ((one, "echo-1"), (two, "echo-2")):
            plugin.start()
            stack.callback(plugin.stop)
            renewer.leases[instance_id] = first, register(first, plugin, instance_id)
        gateway = stack.enter_context(run_gateway(gateway_config(first), work_dir))
        url = gateway.url
        wait_until(lambda: {say(client, url)[1] for _ in range(6)} == {tag_one, tag_two}, what="both replicas")
        load = stack.enter_context(Load(url))

        # The registry dies and comes back empty: a new history, which has heard of no instance yet.
        old_epoch = client.get(f"{url}/readyz").json()["registry"]["epoch"]
        renewer.leases.clear()
        first.process.stop(signal.SIGKILL)
        restarting = time.monotonic()  # before the gateway can list the new registry
        second = stack.enter_context(run_registry(config, work_dir, port=registry_port))
        stack.callback(renewer.close)  # before the registries' channels close
        assert second.stub.ListPlugins(pb.ListPluginsRequest(), timeout=5).plugins == []
        wait_until(
            lambda: client.get(f"{url}/readyz").json()["registry"]["epoch"] not in ("", old_epoch),
            what="the gateway to list the new registry",
        )
        # The last known instances keep serving: both replicas still answer.
        mark = load.mark()
        wait_until(lambda: set(load.since(mark)) == {tag_one, tag_two}, what="both replicas after the restart")

        # Replica one registers again (its SDK found its lease unknown); replica two never does.
        renewer.leases["echo-1"] = second, register(second, one, "echo-1")
        wait_until(
            lambda: (end := load.mark()) >= mark + 12 and set(load.since(end - 12)) == {tag_one},
            timeout=LEASE_TTL + 10,
            what="replica two to leave once the lease TTL has passed",
        )
        # Not before: the gateway held it for the registry's lease TTL after it first saw the new history.
        assert time.monotonic() - restarting >= LEASE_TTL
        load.__exit__()
        statuses = Counter(status for status, _text in load.results)
        assert statuses == {OK: len(load.results)}, [r for r in load.results if r[0] != OK][:5]
        assert len(load.results) > 100


def test_a_crashed_instance_back_on_its_address_is_checked_at_once_on_registering_again(work_dir: Path) -> None:
    interval = 60.0  # between health checks: three times as long as the test waits
    slow = {"health": {"interval": interval, "timeout": 2, "failuresBeforeUnhealthy": 1, "successesBeforeHealthy": 1}}
    plugin = Plugin(work_dir)
    with ExitStack() as stack, httpx.Client(timeout=5) as client:
        registry = stack.enter_context(run_registry(slow, work_dir))
        plugin.start()
        stack.callback(plugin.stop)
        register(registry, plugin, "echo-1")  # checked at once: a new instance does not wait an interval
        gateway = stack.enter_context(run_gateway(gateway_config(registry), work_dir))
        url = gateway.url
        wait_until(lambda: say(client, url) == (OK, f"hi @{plugin.port}"), what="the plugin to be routed")

        # It crashes; a registration of another instance wakes the checks, which find it down.
        plugin.stop(signal.SIGKILL)
        register(registry, Plugin(work_dir), "echo-elsewhere")
        wait_until(lambda: say(client, url) == NO_INSTANCE, what="the crashed instance to leave the table")

        # Back on the same address, it registers again: checked now, not an interval later.
        plugin.start()
        register(registry, plugin, "echo-1")
        wait_until(lambda: say(client, url) == (OK, f"hi @{plugin.port}"), timeout=interval / 3, what="routed again")
