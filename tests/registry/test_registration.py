"""Who may register: a credential per plugin id, and a gRPC service owned by one plugin id."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest
from upf.registry.v1 import registry_pb2 as pb, registry_pb2_grpc

from plugins.sdk.credentials import derive_credential, registration_credential
from registry.credentials import RegistrationCredentials, secret_from_file
from tests.support.processes import Process, _died, free_port, wait_until
from tests.support.registry_process import REGISTRATION_SECRET, RunningRegistry, run_registry

UPF = str(Path(sys.executable).parent / "upf")
ENDPOINT = "127.0.0.1:1"  # never called: these tests only register


def manifest(plugin_id: str, service: str) -> str:
    provides = [{"name": "IThing", "version": "1.0.0", "protoFile": "t.proto", "grpcServices": [service]}]
    return json.dumps(
        {"id": plugin_id, "version": "1.0.0", "name": plugin_id, "type": "business", "provides": provides}
    )


def refused(registry: RunningRegistry, request: pb.RegisterRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        registry.stub.Register(request, timeout=5)
    return caught.value


@pytest.fixture(scope="module")
def registry(work_dir: Path) -> Iterator[RunningRegistry]:
    with run_registry({}, work_dir) as running:
        yield running


def test_a_registration_needs_the_credential_of_its_own_plugin_id(registry: RunningRegistry) -> None:
    text = manifest("cred-plugin", "t.cred.v1.S")
    missing = refused(registry, pb.RegisterRequest(manifest=text, endpoint=ENDPOINT))
    assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "upf registry --credential-for cred-plugin" in (missing.details() or "")

    other = registry.credential("someone-else")
    wrong = refused(registry, pb.RegisterRequest(manifest=text, endpoint=ENDPOINT, credential=other))
    assert wrong.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not the one for plugin id cred-plugin" in (wrong.details() or "")

    # Replicas of one id share its credential.
    leases = [
        registry.stub.Register(registry.register_request(text, instance_id=f"cred-{n}", endpoint=ENDPOINT)).lease_id
        for n in range(2)
    ]
    listed = registry.stub.ListPlugins(pb.ListPluginsRequest())
    [plugin] = [p for p in listed.plugins if p.plugin_id == "cred-plugin"]
    assert sorted(i.instance_id for i in plugin.instances) == ["cred-0", "cred-1"]
    for lease in leases:
        registry.stub.Unregister(pb.UnregisterRequest(lease_id=lease))


def test_a_service_belongs_to_one_plugin_id_while_it_is_registered(registry: RunningRegistry) -> None:
    owner = registry.stub.Register(
        registry.register_request(manifest("owner-plugin", "t.owned.v1.S"), endpoint=ENDPOINT)
    )
    intruder = registry.register_request(manifest("intruder-plugin", "t.owned.v1.S"), endpoint=ENDPOINT)
    taken = refused(registry, intruder)
    assert taken.code() == grpc.StatusCode.ALREADY_EXISTS
    assert (taken.details() or "").startswith("t.owned.v1.S is served by plugin owner-plugin")
    # Once the owner is gone, the service is free for another id.
    registry.stub.Unregister(pb.UnregisterRequest(lease_id=owner.lease_id))
    lease = registry.stub.Register(intruder).lease_id
    registry.stub.Unregister(pb.UnregisterRequest(lease_id=lease))


def test_an_open_registry_asks_for_no_credential_but_keeps_services_owned(work_dir: Path) -> None:
    with run_registry({"registration": {"open": True}}, work_dir) as registry:
        registry.stub.Register(pb.RegisterRequest(manifest=manifest("a-plugin", "t.a.v1.S"), endpoint=ENDPOINT))
        taken = refused(registry, pb.RegisterRequest(manifest=manifest("b-plugin", "t.a.v1.S"), endpoint=ENDPOINT))
        assert taken.code() == grpc.StatusCode.ALREADY_EXISTS


def test_the_cli_the_sdk_and_the_registry_derive_the_same_credential(tmp_path: Path) -> None:
    config = tmp_path / "registry.yaml"
    config.write_text(f"registration: {{secret: {REGISTRATION_SECRET}}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPF_")}
    printed = subprocess.run(
        [UPF, "registry", "--config", str(config), "--credential-for", "orders-plugin"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env=env,
    ).stdout.strip()
    expected = RegistrationCredentials(REGISTRATION_SECRET.encode()).for_plugin("orders-plugin")
    assert printed == expected == derive_credential(REGISTRATION_SECRET.encode(), "orders-plugin")
    assert printed.startswith("upfreg1.")
    assert printed != derive_credential(b"other", "orders-plugin")


def test_the_secret_file_is_made_private_once_and_plugins_beside_it_derive_from_it(tmp_path: Path) -> None:
    path = tmp_path / ".upf" / "registration.secret"
    assert registration_credential("demo-plugin", environ={}, secret_file=path) == ""  # no file yet
    secret = secret_from_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secret_from_file(path) == secret  # kept, not made again
    derived = registration_credential("demo-plugin", environ={}, secret_file=path)
    assert derived == RegistrationCredentials(secret).for_plugin("demo-plugin")
    given = {"UPF_REGISTRATION_CREDENTIAL": "upfreg1.given"}
    assert registration_credential("demo-plugin", environ=given, secret_file=path) == "upfreg1.given"


def test_processes_started_from_one_folder_need_no_set_up(tmp_path: Path) -> None:
    """The Procfile's way: the registry makes .upf/registration.secret, the plugin beside it reads it."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPF_")}
    with ExitStack() as stack:
        registry = Process([UPF, "registry", "--port", str(port)], env=env, log=tmp_path / "registry.log", cwd=tmp_path)
        stack.callback(registry.stop)
        args = [UPF, "plugin", "demo", "--registry", f"127.0.0.1:{port}", "--drain-grace", "1"]
        demo = Process(args, env=env, log=tmp_path / "demo.log", cwd=tmp_path)
        stack.callback(demo.stop)
        channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{port}"))
        stub = registry_pb2_grpc.RegistryStub(channel)

        def registered() -> bool:
            try:
                listed = stub.ListPlugins(pb.ListPluginsRequest(), timeout=1)
            except grpc.RpcError:
                return False
            return any(p.plugin_id == "demo-plugin" for p in listed.plugins)

        wait_until(lambda: registered() or (not demo.alive() and _died(demo)), what="the demo plugin to register")
        assert stat.S_IMODE((tmp_path / ".upf" / "registration.secret").stat().st_mode) == 0o600
