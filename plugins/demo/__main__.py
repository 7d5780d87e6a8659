"""`python -m plugins.demo [--registry ADDR] [--host H] [--port P]`: the same as `upf plugin demo`."""

from __future__ import annotations

import sys

from cli.main import main

if __name__ == "__main__":
    main(["plugin", "demo", *sys.argv[1:]])
