"""A plugin ships its UI with itself: it serves the built remote (a Module Federation 2.0 build, e.g.
from shell-web/scripts/build-remote.mjs) over HTTP from its own process, and registers a manifest
whose `ui.baseUrl` says where. The gateway fetches the files from there and serves them to the shell
as /plugins/<id>/ui/... (gateway/shell.py), so the browser never talks to the plugin directly.

    with UiServer(Path("plugins/orders/ui/dist"), build_hint="make orders-ui") as ui:
        manifest = ui.manifest(MANIFEST, workdir)   # a copy with ui.enabled and ui.baseUrl filled in
        plugin = Plugin(manifest, servicers, ...)
        await plugin.run()

A missing build is not fatal: the plugin still serves its gRPC services and still declares its UI, the
server answers 404 with how to build it, and the shell shows the plugin's fallback in its place.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

__all__ = ["UiServer", "with_ui_base_url"]

logger = logging.getLogger(__name__)

# Names a build gives the same path on every build: the browser must check them before reuse.
_UNHASHED = ("remoteEntry.js", "mf-manifest.json", "mf-stats.json")


def with_ui_base_url(manifest_text: str, base_url: str) -> str | None:
    """The manifest (YAML or JSON text) with its UI enabled and served from `base_url`; None when it
    declares no UI (a `ui` section), which serving files cannot make up for."""
    document = yaml.safe_load(manifest_text)
    if not isinstance(document, dict) or not isinstance(document.get("ui"), dict):
        return None
    document["ui"] = {**document["ui"], "enabled": True, "baseUrl": base_url}
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


class _Handler(SimpleHTTPRequestHandler):
    """Files only (no directory listings), with cache headers that suit a hashed build."""

    build_hint = ""

    def end_headers(self) -> None:
        name = self.path.split("?", 1)[0].rsplit("/", 1)[-1]
        # Everything but the entry and its manifests carries a content hash in its name.
        immutable = name not in _UNHASHED and "/static/" in self.path
        self.send_header("cache-control", "public, max-age=31536000, immutable" if immutable else "no-cache")
        super().end_headers()

    def list_directory(self, path: str | os.PathLike[str]) -> None:
        self.send_error(HTTPStatus.NOT_FOUND, "no file here")
        return None

    def send_head(self) -> Any:
        if not Path(self.directory).is_dir():
            self.send_error(HTTPStatus.NOT_FOUND, f"this plugin's UI is not built: {self.build_hint}")
            return None
        return super().send_head()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("ui %s: " + format, self.address_string(), *args)


class UiServer:
    """The files under `folder` over HTTP on host:port (0: any free port), in a thread of its own: file
    serving never waits on the plugin's event loop, nor the loop on it."""

    def __init__(self, folder: Path, *, host: str = "127.0.0.1", port: int = 0, build_hint: str = "") -> None:
        self.folder = folder
        self.build_hint = build_hint or f"build it into {folder}"
        hint = self.build_hint

        class Handler(_Handler):
            build_hint = hint

            def __init__(self, *args: Any) -> None:
                super().__init__(*args, directory=str(folder))

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        # A wildcard address is not somewhere the gateway can connect to: this machine's name is.
        name = socket.gethostname() if str(host) in ("0.0.0.0", "::") else str(host)
        return f"http://{name}:{port}/"

    @property
    def built(self) -> bool:
        return (self.folder / "remoteEntry.js").is_file()

    def start(self) -> None:
        if not self.built:
            logger.warning(
                "the UI in %s is not built (no remoteEntry.js): gRPC is served, the shell shows a fallback "
                "for this plugin's pages; %s",
                self.folder,
                self.build_hint,
            )
        self._thread = threading.Thread(target=self._server.serve_forever, name="ui-files", daemon=True)
        self._thread.start()
        logger.info("UI files from %s at %s", self.folder, self.base_url)

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def manifest(self, manifest_path: Path, workdir: Path) -> Path:
        """A copy of the manifest in `workdir` whose ui.baseUrl is this server (the plugin reads it once,
        when it is built: `workdir` may go as soon as the Plugin exists)."""
        text = with_ui_base_url(Path(manifest_path).read_text(encoding="utf-8-sig"), self.base_url)
        if text is None:
            logger.warning(
                "%s has no ui section: its UI files are served, but no shell will look for them", manifest_path
            )
            return Path(manifest_path)
        filled = workdir / Path(manifest_path).with_suffix(".yaml").name
        filled.write_text(text, encoding="utf-8")
        return filled

    def __enter__(self) -> UiServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
