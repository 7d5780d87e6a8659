"""The Plugin Registry: upf.registry.v1.Registry (`upf registry`); see registry/server.py."""

from __future__ import annotations
