"""Tests of the Plugin Registry: store contract, domain logic, real processes."""

from __future__ import annotations
