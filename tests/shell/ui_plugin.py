"""A UI-only plugin for the shell's browser tests: serves a built remote over HTTP and registers, on the
plugin SDK with the real registry, a manifest whose ui.baseUrl points there.

    python -m tests.shell.ui_plugin --registry HOST:PORT --id test-ui --title Lab --dist DIR --http-port P
    prints "PORT <http port>" once it serves its files and has started registering
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from plugins.sdk import Plugin, Timings


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def manifest(args: argparse.Namespace) -> dict[str, Any]:
    state = {"name": args.own_key}
    if args.writers:
        state["writers"] = args.writers.split(",")
    navigation: list[dict[str, Any]] = [
        {"path": args.path, "title": args.title, "icon": args.icon, "module": "./Page", "order": args.order}
    ]
    if args.more_navigation:
        # Nested under the first entry; and one hidden from users without the permission.
        navigation.append({"path": f"{args.path}/notes", "title": "Notes", "module": "./Page"})
        navigation.append({"path": f"{args.path}/admin", "title": "Admin", "requiredPermission": "lab:admin"})
    return {
        "id": args.id,
        "version": "1.0.0",
        "name": args.title,
        "description": f"{args.title}: a test plugin UI for the shell's browser tests.",
        "type": "business",
        # An optional interface nobody provides: the registry reports the plugin DEGRADED.
        "requires": [{"interface": "INothing", "version": "^1", "optional": True}] if args.degraded else [],
        "ui": {
            "baseUrl": f"http://127.0.0.1:{args.http_port}/",
            "remoteEntry": "/remoteEntry.js",
            "remoteName": args.id.replace("-", "_"),
            "exposedModules": [{"name": "./Page", "type": "page"}, {"name": "./Widget", "type": "widget"}],
            "navigation": navigation,
            "sharedState": [state],
            "events": [{"name": args.event}],
        },
    }


async def main(args: argparse.Namespace) -> None:
    handler = functools.partial(_Quiet, directory=args.dist)
    server = ThreadingHTTPServer(("127.0.0.1", args.http_port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "manifest.yaml"
        path.write_text(yaml.safe_dump(manifest(args)))
        plugin = Plugin(path, [], registry=args.registry, timings=Timings(drain_grace=0.5, stop_notice=0.2))
        task = asyncio.create_task(plugin.run())
        await plugin.started.wait()
        print(f"PORT {server.server_address[1]}", flush=True)
        try:
            await task
        finally:
            server.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--title", required=True)
    parser.add_argument("--dist", required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--path", default="/lab")
    parser.add_argument("--icon", default="flask")
    parser.add_argument("--order", type=int, default=10)
    parser.add_argument("--own-key", default="lab.counter")
    parser.add_argument("--event", default="lab.clicked")
    parser.add_argument("--writers", default="")
    parser.add_argument("--more-navigation", action="store_true")
    parser.add_argument("--degraded", action="store_true")
    asyncio.run(main(parser.parse_args()))
