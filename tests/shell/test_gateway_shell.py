"""The gateway's side of the shell (gateway/shell.py): its build at / with cache headers and the SPA
fallback, a clear page when it is not built, plugins' UI files under /plugins/<id>/ui/ fetched from
the plugin, paths that would leave a folder refused, and the API's own answers unchanged."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import GatewaySettings, ShellSettings
from tests.shell.harness import PASSWORD, USER, UiPlugin, plugin_status, ready
from tests.support.processes import Gateway, wait_until

IMMUTABLE = "public, max-age=31536000, immutable"


@pytest.fixture
def build(tmp_path: Path) -> Path:
    """A stand-in shell build, next to a file that must never be served."""
    dist = tmp_path / "dist"
    (dist / "static" / "js").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><title>UPF</title>")
    (dist / "static" / "js" / "index.0123abcd.js").write_text("console.log('shell')")
    (dist / "mf-manifest.json").write_text("{}")
    (dist / ".built").write_text("not for browsers either")
    (tmp_path / "secret.txt").write_text("not for browsers")
    return dist


def client(directory: Path) -> httpx.AsyncClient:
    app = create_app(GatewaySettings(grpc_port=0, shell=ShellSettings(dir=directory)))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")


async def test_index_is_not_cached_hashed_assets_are_immutable_and_client_routes_fall_back(build: Path) -> None:
    async with client(build) as gateway:
        index = await gateway.get("/")
        asset = await gateway.get("/static/js/index.0123abcd.js")
        route = await gateway.get("/orders/42")
        head = await gateway.head("/settings")
        manifest = await gateway.get("/mf-manifest.json")
    assert (index.status_code, index.headers["cache-control"]) == (200, "no-cache")
    assert index.headers["content-type"].startswith("text/html")
    assert (index.headers["x-frame-options"], index.headers["x-content-type-options"]) == ("DENY", "nosniff")
    assert (asset.status_code, asset.headers["cache-control"], asset.text) == (200, IMMUTABLE, "console.log('shell')")
    assert (route.status_code, route.text, route.headers["cache-control"]) == (200, index.text, "no-cache")
    assert (head.status_code, head.content) == (200, b"")
    assert manifest.headers["cache-control"] == "no-cache"  # not hashed: checked before reuse


async def test_missing_assets_and_api_paths_answer_json_404s_not_the_page(build: Path) -> None:
    async with client(build) as gateway:
        answers = {path: await gateway.get(path) for path in ("/static/js/gone.js", "/logo.png", "/api/nothing")}
        post = await gateway.post("/api/nothing/else")
        health = await gateway.get("/healthz")
    for path, answer in answers.items():
        assert answer.status_code == 404, path
        assert answer.json()["code"] == "NOT_FOUND", path
    assert (post.status_code, post.json()["code"]) == (404, "NOT_FOUND")
    assert health.json() == {"status": "ok"}


@pytest.mark.parametrize(
    "raw_path",
    [
        "/%2e%2e/secret.txt",
        "/static/%2e%2e/%2e%2e/secret.txt",
        "/static/..%5c..%5csecret.txt",
        "/static/%00.js",
        "/.built",
    ],
)
async def test_paths_that_would_leave_the_build_are_refused(build: Path, raw_path: str) -> None:
    async with client(build) as gateway:
        answer = await gateway.send(gateway.build_request("GET", httpx.URL(f"http://gateway{raw_path}")))
    assert answer.status_code == 404
    assert "not for browsers" not in answer.text
    assert answer.json()["code"] == "NOT_FOUND"


async def test_without_a_build_the_page_says_how_to_build_it(tmp_path: Path) -> None:
    async with client(tmp_path / "nothing") as gateway:
        page = await gateway.get("/")
        api = await gateway.get("/api/manifests")
    assert page.status_code == 503
    assert "The web shell is not built" in page.text
    assert "npm ci &amp;&amp; npm run build" in page.text
    assert api.status_code == 200  # the API does not need the shell


def test_plugin_ui_files_come_from_the_plugin_through_the_gateway(
    platform: tuple[Gateway, str], tmp_path: Path, work_dir: Path
) -> None:
    gateway, registry = platform
    files = tmp_path / "ui"
    (files / "static").mkdir(parents=True)
    (files / "remoteEntry.js").write_text("var files_ui = {};")
    (files / "static" / "chunk.js").write_text("console.log('chunk')")
    (files / "page.html").write_text("<script>alert(sessionStorage.getItem('upf.session'))</script>")
    (tmp_path / "secret.txt").write_text("not for browsers")
    plugin = UiPlugin(
        "files-ui", "Files", files, registry, work_dir,
        *("--path", "/files", "--own-key", "files.state", "--event", "files.done"),
    )  # fmt: skip
    plugin.start()
    try:
        wait_until(lambda: ready(gateway, "files-ui"), what="files-ui to be ready")

        # /api/manifests: public, with the remote entry on the gateway and the plugin's address hidden.
        document = httpx.get(f"{gateway.url}/api/manifests").json()
        entry = next(p for p in document["plugins"] if p["id"] == "files-ui")
        assert entry["ui"]["remoteEntry"] == "/plugins/files-ui/ui/remoteEntry.js"
        assert entry["ui"]["remoteName"] == "files_ui"
        assert "baseUrl" not in entry["ui"]
        assert entry["ui"]["navigation"][0]["path"] == "/files"
        assert [(state["name"], state["writers"]) for state in entry["ui"]["sharedState"]] == [("files.state", [])]
        assert entry["ui"]["events"][0]["name"] == "files.done"

        # The files: no token needed; the plugin's validators pass through (304 when unchanged).
        remote = httpx.get(f"{gateway.url}/plugins/files-ui/ui/remoteEntry.js")
        assert (remote.status_code, remote.text) == (200, "var files_ui = {};")
        assert remote.headers["content-type"].startswith(("text/javascript", "application/javascript"))
        assert remote.headers["cache-control"] == "no-cache"
        assert remote.headers["x-content-type-options"] == "nosniff"
        again = httpx.get(
            f"{gateway.url}/plugins/files-ui/ui/remoteEntry.js",
            headers={"if-modified-since": remote.headers["last-modified"]},
        )
        assert again.status_code == 304
        chunk = httpx.get(f"{gateway.url}/plugins/files-ui/ui/static/chunk.js")
        assert chunk.text == "console.log('chunk')"
        # The plugin's own HTML cannot script the shell's origin, where the tokens are.
        page = httpx.get(f"{gateway.url}/plugins/files-ui/ui/page.html")
        assert (page.status_code, page.headers["content-security-policy"]) == (200, "sandbox")

        missing = httpx.get(f"{gateway.url}/plugins/files-ui/ui/static/gone.js")
        unknown = httpx.get(f"{gateway.url}/plugins/nobody/ui/remoteEntry.js")
        for answer in (missing, unknown):
            assert (answer.status_code, answer.json()["code"]) == (404, "NOT_FOUND")

        # Raw paths (http.client sends them as written): nothing outside the plugin's folder.
        for raw in ("/plugins/files-ui/ui/../../secret.txt", "/plugins/files-ui/ui/%2e%2e/secret.txt"):
            code, body = raw_get(gateway, raw)
            assert code == 404, raw
            assert b"not for browsers" not in body
    finally:
        plugin.stop()

    # Gone from the registry: still listed, as down, so the shell greys it out instead of dropping it.
    wait_until(
        lambda: (plugin_status(gateway, "files-ui") or {}).get("ready") == 0, what="files-ui to be listed as down"
    )
    status = plugin_status(gateway, "files-ui")
    assert status is not None
    assert status["health"] == "UNHEALTHY"


def test_the_shell_is_public_while_the_api_still_asks_for_a_token(platform: tuple[Gateway, str]) -> None:
    gateway, _ = platform
    page = httpx.get(f"{gateway.url}/orders/7")
    assert (page.status_code, page.headers["cache-control"]) == (200, "no-cache")
    assert '<div id="root">' in page.text
    anonymous = httpx.get(f"{gateway.url}/api/nothing")
    assert (anonymous.status_code, anonymous.json()["code"]) == (401, "UNAUTHENTICATED")
    login = httpx.post(f"{gateway.url}/api/auth/login", json={"username": USER, "password": PASSWORD})
    token = login.json()["accessToken"]
    signed_in = httpx.get(f"{gateway.url}/api/nothing", headers={"authorization": f"Bearer {token}"})
    assert (signed_in.status_code, signed_in.json()["code"]) == (404, "NOT_FOUND")


def raw_get(gateway: Gateway, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", gateway.http_port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        if response.status == 404:
            json.loads(body)  # a JSON error, not the shell's page
        return response.status, body
    finally:
        connection.close()
