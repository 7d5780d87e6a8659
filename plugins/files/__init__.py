"""IFiles: one servicer (service.py) over three backends: files-local, files-s3, files-gcs (kinds.py)."""

from __future__ import annotations
