"""`python -m plugins.files files-local|files-s3|files-gcs [options]`: the same as `upf plugin files-...`."""

from __future__ import annotations

import sys

from cli.main import main

if __name__ == "__main__":
    main(["plugin", *sys.argv[1:]])
