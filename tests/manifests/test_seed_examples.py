"""The seed's orders manifest examples load as written (tests/manifests/seed/), and what cannot be
inferred from them is said exactly, with how to fix it."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from manifests import ManifestError, load_manifest, parse_manifest
from manifests.cli import validate_files
from manifests.infer import services_of

SEED = Path(__file__).parent / "seed"


def test_both_seed_examples_validate() -> None:
    out, err = io.StringIO(), io.StringIO()
    paths = [str(SEED / "manifest.yaml"), str(SEED / "ui-section.yaml")]
    assert validate_files(paths, out, err) == 0, err.getvalue()
    assert out.getvalue() == "".join(f"{p}: ok\n" for p in paths)


def test_grpc_services_come_from_the_proto_and_the_ui_gets_the_seeds_remote_entry() -> None:
    manifest = load_manifest(SEED / "manifest.yaml")
    assert manifest.provides[0].grpc_services == ["orders.v1.OrderService"]
    assert manifest.provides[0].methods == ["CreateOrder", "GetOrder", "ListOrders", "UpdateOrderStatus"]
    assert manifest.ui is not None
    assert manifest.ui.remote_entry == "/static/remoteEntry.js"
    ui = load_manifest(SEED / "ui-section.yaml").ui
    assert ui is not None
    assert [n.path for n in ui.navigation] == ["/orders", "/orders/:id"]


def test_the_plugins_own_manifest_names_the_proto_from_the_repository_root() -> None:
    # plugins/orders/manifest.yaml says proto/upf/orders/v1/orders.proto: found from a folder above.
    text = (Path(__file__).parents[2] / "plugins/orders/manifest.yaml").read_text()
    manifest_dir = Path(__file__).parents[2] / "plugins/orders"
    without = text.replace("    grpcServices: [upf.orders.v1.Orders]\n", "")
    assert without != text
    manifest = parse_manifest(without, "orders.yaml", base=manifest_dir)
    assert manifest.provides[0].grpc_services == ["upf.orders.v1.Orders"]


def test_a_proto_that_is_not_there_is_named_with_the_fix(tmp_path: Path) -> None:
    shutil.copy(SEED / "manifest.yaml", tmp_path / "manifest.yaml")
    with pytest.raises(ManifestError) as caught:
        load_manifest(tmp_path / "manifest.yaml")
    (problem,) = caught.value.problems
    assert problem.path == "provides[0].grpcServices"
    assert problem.line == 13  # the entry that lacks it
    assert problem.message.startswith(
        "required key is missing and cannot be inferred: protoFile ./proto/orders.proto is not in "
    )
    assert problem.message.endswith(
        "put the .proto there, or list them here, e.g. grpcServices: [orders.v1.OrderService]"
    )


def test_a_proto_without_a_service_and_a_manifest_without_a_file_say_why(tmp_path: Path) -> None:
    shutil.copy(SEED / "manifest.yaml", tmp_path / "manifest.yaml")
    (tmp_path / "proto").mkdir()
    (tmp_path / "proto/orders.proto").write_text('syntax = "proto3";\n// service Commented {\nmessage M {}\n')
    with pytest.raises(ManifestError, match=r"orders\.proto declares no service; list them here"):
        load_manifest(tmp_path / "manifest.yaml")
    with pytest.raises(ManifestError, match="inferred from protoFile only when the manifest is read from a file"):
        parse_manifest((SEED / "manifest.yaml").read_text())


def test_services_of_reads_the_package_and_skips_comments() -> None:
    assert services_of((SEED / "proto/orders.proto").read_text()) == ["orders.v1.OrderService"]
    assert services_of("service A {}\nservice B{ }") == ["A", "B"]
