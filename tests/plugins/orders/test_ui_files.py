"""The orders plugin serves its own UI (plugins/sdk/ui.py): the built remote over HTTP from the plugin's
process, and a registered manifest whose ui.baseUrl says where. Real HTTP on loopback."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
import yaml

from plugins.orders.plugin import MANIFEST, UI_DIST
from plugins.sdk import load_manifest_text
from plugins.sdk.ui import UiServer
from tests.plugins.orders.harness import UPF
from tests.support.processes import Process, _died, free_port, wait_until
from tests.support.registry_process import credential_for


def built(folder: Path) -> Path:
    (folder / "static" / "js").mkdir(parents=True)
    (folder / "remoteEntry.js").write_text("var orders_plugin;")
    (folder / "static" / "js" / "page.0123abcd.js").write_text("export default 1;")
    return folder


def test_files_are_served_with_cache_headers_a_build_suits(tmp_path: Path) -> None:
    with UiServer(built(tmp_path / "dist")) as ui:
        entry = httpx.get(f"{ui.base_url}remoteEntry.js")
        assert entry.status_code == 200
        assert entry.text == "var orders_plugin;"
        # Its name stays the same across builds: checked before reuse. Hashed chunks never change.
        assert entry.headers["cache-control"] == "no-cache"
        chunk = httpx.get(f"{ui.base_url}static/js/page.0123abcd.js")
        assert chunk.headers["cache-control"] == "public, max-age=31536000, immutable"
        # Files only: no directory listings, nothing outside the folder.
        assert httpx.get(f"{ui.base_url}static/js/").status_code == 404
        assert httpx.get(f"{ui.base_url}%2e%2e/%2e%2e/%2e%2e/etc/passwd").status_code == 404


def test_a_missing_build_answers_404_with_how_to_build_it(tmp_path: Path) -> None:
    with UiServer(tmp_path / "nowhere", build_hint="run `make orders-ui`") as ui:
        assert not ui.built
        answer = httpx.get(f"{ui.base_url}remoteEntry.js")
        assert answer.status_code == 404
        assert "make orders-ui" in answer.text


def test_the_manifest_registered_declares_the_ui_where_it_is_served(tmp_path: Path) -> None:
    with UiServer(built(tmp_path / "dist")) as ui:
        filled = ui.manifest(MANIFEST, tmp_path)
        _, manifest = load_manifest_text(filled)
        assert manifest.ui is not None
        assert manifest.ui.enabled
        assert manifest.ui.base_url == ui.base_url
        assert [m.name for m in manifest.ui.exposed_modules] == ["./OrderDashboard", "./OrderWidget"]
        assert [(n.path, n.icon, n.required_permission) for n in manifest.ui.navigation] == [
            ("/orders", "shopping-cart", "orders:read")
        ]
        assert [s.name for s in manifest.ui.shared_state] == ["orders"]
        assert [e.name for e in manifest.ui.events] == ["order.created"]
    # As written, the manifest declares the same UI without an address (filled in at start).
    written = yaml.safe_load(MANIFEST.read_text())
    assert "baseUrl" not in written["ui"]


def test_upf_plugin_orders_serves_its_ui_on_the_port_asked_for(tmp_path: Path) -> None:
    if not (UI_DIST / "remoteEntry.js").exists():
        pytest.fail(f"{UI_DIST} is not built: run `make orders-ui` (make test does)")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("UPF_")}
    env["UPF_REGISTRATION_CREDENTIAL"] = credential_for("orders-plugin")
    # No registry answers there: the plugin serves anyway and keeps trying to register.
    args = [UPF, "plugin", "orders", "--registry", f"127.0.0.1:{free_port()}", "--ui-port", str(port)]
    process = Process([*args, "--drain-grace", "0.2"], env=env, log=tmp_path / "orders.log")
    try:
        wait_until(
            lambda: "listening on" in process.output() or (not process.alive() and _died(process)),
            what="the orders plugin to listen",
        )
        entry = httpx.get(f"http://127.0.0.1:{port}/remoteEntry.js", timeout=5)
        assert entry.status_code == 200
        assert "orders_plugin" in entry.text
    finally:
        process.stop()
