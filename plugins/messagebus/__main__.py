"""`python -m plugins.messagebus BACKEND [options]`: the same as `upf plugin message-bus-BACKEND [options]`."""

from __future__ import annotations

import sys

from cli.main import main

if __name__ == "__main__":
    backend, *rest = sys.argv[1:] or ["--help"]
    main(["plugin", f"message-bus-{backend}", *rest] if not backend.startswith("-") else ["plugin", "--help"])
