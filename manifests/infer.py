"""What a manifest may leave out because it can be read elsewhere: `grpcServices` from the `protoFile`.

The seed's manifests name a provided interface's `protoFile` but not the gRPC services in it, which the
gateway needs to route. When the manifest is read from a file, `complete()` reads that .proto and fills
in each `service` it declares as `package.Service`. The .proto is looked for relative to the
manifest's folder, then each folder above it (a plugin inside a repository names its proto from the
repository's root, as plugins/demo/manifest.yaml does). What cannot be inferred is said exactly, at
the entry, with how to fix it (`not_inferred`).

Only `grpcServices` is inferred. `methods` stays as written: the seed lists a subset of the service's
rpcs on purpose (the interface's methods), so filling in all of them would change what it declares.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from manifests.model import Location

__all__ = ["complete", "services_of"]

_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)
_PACKAGE = re.compile(r"\bpackage\s+([A-Za-z_][\w.]*)\s*;")
_SERVICE = re.compile(r"\bservice\s+([A-Za-z_]\w*)\s*\{")


def services_of(proto_text: str) -> list[str]:
    """The fully qualified services a .proto declares (package.Service), in file order."""
    text = _COMMENTS.sub(" ", proto_text)
    package = _PACKAGE.search(text)
    prefix = f"{package.group(1)}." if package else ""
    return [f"{prefix}{name}" for name in _SERVICE.findall(text)]


def _find(proto_file: str, base: Path) -> Path | None:
    path = Path(proto_file)
    if path.is_absolute():
        return path if path.is_file() else None
    for folder in (base, *base.parents):
        candidate = folder / path
        if candidate.is_file():
            return candidate
    return None


def complete(data: object, base: Path | None) -> tuple[object, dict[Location, str]]:
    """`data` with grpcServices filled in where its protoFile tells them, and, for each entry where it
    could not be, why (keyed by the location of the missing grpcServices)."""
    if not isinstance(data, dict) or not isinstance(data.get("provides"), list):
        return data, {}
    provides: list[Any] = []
    reasons: dict[Location, str] = {}
    for index, entry in enumerate(data["provides"]):
        if not isinstance(entry, dict) or "grpcServices" in entry or not isinstance(entry.get("protoFile"), str):
            provides.append(entry)
            continue
        services, reason = _infer(entry["protoFile"], base)
        if services:
            entry = {**entry, "grpcServices": services}
        else:
            reasons[("provides", index, "grpcServices")] = reason
        provides.append(entry)
    return {**data, "provides": provides}, reasons


def _infer(proto_file: str, base: Path | None) -> tuple[list[str], str]:
    fix = "list them here, e.g. grpcServices: [orders.v1.OrderService]"
    if base is None:
        return [], (
            f"required key is missing; it is inferred from protoFile only when the manifest is read from a "
            f"file near {proto_file}: {fix}"
        )
    path = _find(proto_file, base)
    if path is None:
        return [], (
            f"required key is missing and cannot be inferred: protoFile {proto_file} is not in {base} "
            f"nor a folder above it; put the .proto there, or {fix}"
        )
    try:
        services = services_of(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return [], f"required key is missing and cannot be inferred: {path} cannot be read ({exc}); {fix}"
    if not services:
        return [], f"required key is missing and cannot be inferred: {path} declares no service; {fix}"
    return services, ""
