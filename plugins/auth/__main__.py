"""`python -m plugins.auth [--config FILE] ...`: the same as `upf plugin auth`."""

from __future__ import annotations

import sys

from cli.main import main

if __name__ == "__main__":
    main(["plugin", "auth", *sys.argv[1:]])
