"""`upf manifest validate FILE...`: check manifests and say what to fix, one line per problem.

The command's arguments are parsed in cli/main.py; this module does the work, so that `upf` starts
without importing it for other commands.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from manifests.load import ManifestError, load_manifest

__all__ = ["validate_files"]


def validate_files(paths: Sequence[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Validate each file; print "FILE: ok" to `out` or its problems to `err`. Returns the exit status:
    0 when all are valid, 1 when one is invalid, 2 when one cannot be read."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    status = 0
    for path in paths:
        try:
            load_manifest(path)
        except OSError as exc:
            print(f"{path}: cannot be read: {exc.strerror or exc}", file=err)
            status = 2
        except ManifestError as exc:
            print(exc, file=err)
            status = max(status, 1)
        else:
            print(f"{path}: ok", file=out)
    return status
