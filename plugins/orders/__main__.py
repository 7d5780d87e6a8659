"""`python -m plugins.orders [--registry ADDR] [--host H] [--port P]`: the same as `upf plugin orders`."""

from __future__ import annotations

import sys

from cli.main import main

if __name__ == "__main__":
    main(["plugin", "orders", *sys.argv[1:]])
