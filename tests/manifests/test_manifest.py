"""The manifest model: what a valid manifest gives a plugin author, and what the model refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from manifests import ManifestError, PluginManifest, load_manifest, manifest_from_data, parse_manifest
from manifests.load import Problem
from tests.support.processes import ROOT

# The seed's orders-plugin, with what UPF adds: the gRPC services it serves, a policy, a remote entry.
ORDERS = """\
id: orders-plugin
version: 1.2.0
name: Orders Management
description: Order creation, tracking, and fulfillment
type: business
provides:
  - name: IOrderService
    version: 1.0.0
    protoFile: ./proto/orders.proto
    grpcServices: [shop.orders.v1.OrderService]
    methods: [CreateOrder, GetOrder, ListOrders, UpdateOrderStatus]
    policies:
      "*": {timeout: 5, requiredPermission: "orders:read"}
      CreateOrder:
        requiredPermission: "orders:write"
        rateLimit: {requestsPerSecond: 10, burstSize: 20}
      GetOrder: {idempotent: true}
requires:
  - {interface: IStorage, version: ">=1.0.0", optional: false}
  - {interface: ICache, version: ">=1.0.0", optional: true}
  - {interface: IMessageBus, version: ">=1.0.0"}
ui:
  enabled: true
  remoteEntry: /static/remoteEntry.js
  exposedModules:
    - {name: ./OrderDashboard, path: ./src/screens/OrderDashboard, type: page}
    - {name: ./OrderWidget, path: ./src/components/OrderWidget, type: widget}
    - {name: ./useOrders, path: ./src/hooks/useOrders, type: hook}
  navigation:
    - {path: /orders, title: Orders, icon: shopping-cart, module: ./OrderDashboard}
    - {path: "/orders/:id", title: Order Details, module: ./OrderDashboard}
  sharedState:
    - name: orders
      schema:
        type: object
        properties:
          items: {type: array}
          totalCount: {type: number}
      readonly: false
"""


def test_the_demo_plugin_manifest_is_valid() -> None:
    manifest = load_manifest(ROOT / "plugins" / "demo" / "manifest.yaml")
    assert (manifest.id, manifest.type) == ("demo-plugin", "business")
    [echo] = manifest.provides
    assert (echo.name, echo.version, echo.proto_file) == ("IEcho", "1.0.0", "proto/upf/demo/v1/demo.proto")
    assert echo.grpc_services == ["upf.demo.v1.Echo"]
    assert echo.methods == ["Say", "Count"]
    assert (ROOT / echo.proto_file).is_file()
    assert manifest.ui is None or not manifest.ui.enabled


def test_the_seed_example_reads_into_the_model() -> None:
    manifest = parse_manifest(ORDERS, "orders.yaml")
    assert [r.interface for r in manifest.requires if r.optional] == ["ICache"]
    assert manifest.ui is not None
    assert manifest.ui.remote_entry == "/static/remoteEntry.js"
    assert [n.path for n in manifest.ui.navigation] == ["/orders", "/orders/:id"]
    assert manifest.ui.shared_state[0].state_schema["properties"]["totalCount"] == {"type": "number"}


def test_a_method_policy_is_its_own_keys_over_the_interface_defaults() -> None:
    manifest = parse_manifest(ORDERS)
    create = manifest.policy("IOrderService", "CreateOrder")
    assert create is not None
    assert (create.required_permission, create.timeout, create.idempotent) == ("orders:write", 5, False)
    assert create.rate_limit is not None
    assert (create.rate_limit.requests_per_second, create.rate_limit.burst_size) == (10, 20)
    listing = manifest.policy("IOrderService", "ListOrders")
    assert listing is not None
    assert (listing.required_permission, listing.timeout) == ("orders:read", 5)
    assert manifest.policy("INothing", "Get") is None


def test_json_and_yaml_give_the_same_manifest(tmp_path: Path) -> None:
    manifest = parse_manifest(ORDERS)
    data = manifest.model_dump(by_alias=True, exclude_defaults=True)
    # Editors find the schema through "$schema"; UPF accepts the key and ignores it.
    as_json = json.dumps({"$schema": "../../manifests/schema.json", **data}, indent="\t")
    path = tmp_path / "manifest.json"
    path.write_text(as_json)
    assert load_manifest(path).model_copy(update={"schema_uri": None}) == manifest


def test_positions_come_from_json_too_even_with_tabs(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text('{\n\t"id": "demo",\n\t"version": "1",\n\t"name": "Demo",\n\t"type": "business"\n}\n')
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert str(caught.value) == (
        f'{path}:3:2: version: "1" is not a semantic version: write it as MAJOR.MINOR.PATCH, e.g. 1.0.0'
    )


def test_problems_are_structured_for_programs() -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest("id: demo\nversion: 1.0.0\nname: Demo\ntype: business\nrequires:\n  - {interface: IStorage}\n")
    assert caught.value.source == "<manifest>"
    assert caught.value.problems == (Problem("requires[0].version", "required key is missing", 6, 5),)


def test_data_without_a_file_is_reported_without_positions() -> None:
    with pytest.raises(ManifestError) as caught:
        manifest_from_data({"id": "demo", "version": "1.0.0", "name": "Demo", "type": "plugin"}, "registry")
    assert str(caught.value) == 'registry: type: expected "business" or "infrastructure", got "plugin"'


def test_the_model_itself_refuses_inconsistent_manifests() -> None:
    # Code that builds a manifest without the loader (the registry, tests) gets the same checks.
    data = {
        "id": "demo",
        "version": "1.0.0",
        "name": "Demo",
        "type": "business",
        "requires": [{"interface": "IStorage", "version": "^1"}, {"interface": "IStorage", "version": "^2"}],
    }
    with pytest.raises(ValidationError) as caught:
        PluginManifest.model_validate(data)
    assert 'requires[1].interface: interface "IStorage" is listed twice (first at requires[0].interface)' in str(
        caught.value
    )


@pytest.mark.parametrize(
    ("ui", "enabled", "remote_entry", "navigation"),
    [
        ("{enabled: false}", False, None, []),
        (
            "{enabled: true, remoteEntry: 'https://cdn.example.com/orders/remoteEntry.js'}",
            True,
            "https://cdn.example.com/orders/remoteEntry.js",
            [],
        ),
        ("{}", True, "/static/remoteEntry.js", []),
        ("{enabled: true, remoteEntry: /x.js, navigation: [{path: /, title: Home}]}", True, "/x.js", [("/", "Home")]),
    ],
)
def test_a_ui_remote_entry_may_be_a_gateway_path_or_an_http_url(
    ui: str, enabled: bool, remote_entry: str | None, navigation: list[tuple[str, str]]
) -> None:
    manifest = parse_manifest(f"id: demo\nversion: 1.0.0\nname: Demo\ntype: business\nui: {ui}\n")
    assert manifest.ui is not None
    assert (manifest.ui.enabled, manifest.ui.remote_entry) == (enabled, remote_entry)
    assert [(entry.path, entry.title) for entry in manifest.ui.navigation] == navigation


def test_a_ui_remote_entry_of_another_scheme_is_refused() -> None:
    text = "id: demo\nversion: 1.0.0\nname: Demo\ntype: business\nui: {enabled: true, remoteEntry: 'ftp://x/remoteEntry.js'}\n"
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text)
    assert str(caught.value) == (
        '<manifest>:5:21: ui.remoteEntry: "ftp://x/remoteEntry.js" is not a remote entry URL: '
        "use a path on the gateway such as /static/remoteEntry.js or an http(s) URL"
    )


@pytest.mark.parametrize(
    ("ui", "remote_entry"),
    [("{}", "/static/remoteEntry.js"), ("{enabled: false}", None), ("{remoteEntry: /ui/entry.js}", "/ui/entry.js")],
)
def test_an_enabled_ui_without_remote_entry_uses_the_seeds_place(ui: str, remote_entry: str | None) -> None:
    manifest = parse_manifest(f"id: demo\nversion: 1.0.0\nname: Demo\ntype: business\nui: {ui}\n")
    assert manifest.ui is not None
    assert manifest.ui.remote_entry == remote_entry


def test_policies_may_only_name_declared_methods() -> None:
    text = ORDERS.replace("GetOrder: {idempotent: true}", "GetOrders: {idempotent: true}")
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text, "orders.yaml")
    assert str(caught.value) == (
        'orders.yaml:17:7: provides[0].policies.GetOrders: "GetOrders" is not one of this interface\'s methods '
        '(CreateOrder, GetOrder, ListOrders, UpdateOrderStatus); add it to methods, or use "*" for all of them'
    )
