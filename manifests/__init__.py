"""Plugin manifests: the model, its JSON Schema, validation with errors that point at the line, and
npm-style semver ranges for the interfaces plugins require.

    from manifests import load_manifest, satisfies
    manifest = load_manifest("plugins/demo/manifest.yaml")   # raises ManifestError, listing each problem
    satisfies("1.4.0", "^1.2")                               # True
"""

from __future__ import annotations

from manifests.load import ManifestError, Problem, load_manifest, manifest_from_data, parse_manifest
from manifests.model import (
    ExposedModule,
    MethodPolicy,
    NavigationEntry,
    PluginManifest,
    ProvidedInterface,
    RateLimit,
    RequiredInterface,
    SharedState,
    UiConfig,
    is_exposed,
)
from manifests.semver import Range, SemverError, Version, max_satisfying, parse_range, parse_version, satisfies

__all__ = [
    "ExposedModule",
    "ManifestError",
    "MethodPolicy",
    "NavigationEntry",
    "PluginManifest",
    "Problem",
    "ProvidedInterface",
    "Range",
    "RateLimit",
    "RequiredInterface",
    "SemverError",
    "SharedState",
    "UiConfig",
    "Version",
    "is_exposed",
    "load_manifest",
    "manifest_from_data",
    "max_satisfying",
    "parse_manifest",
    "parse_range",
    "parse_version",
    "satisfies",
]
