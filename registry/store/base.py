"""The PluginStore protocol: one contract (tests/registry/test_store_contract.py) for every backend.

Records are written field by field (`set_lease`, `set_phase`, `set_check` change one field of an
existing record and do nothing to a removed one), so that a lease renewal on one registry replica and
a health verdict on another never overwrite each other.

`publish` is a compare-and-set: it records a change, with the next revision, only when the view differs
from the published one. Several replicas publishing the same state therefore add one change, not one
each. The last `history` changes are kept so that a watcher can resume after a reconnect.

Revisions count the changes of one history, named by its epoch: a store that loses its changes
(a memory store that restarts, Redis data that is flushed) starts a new history with a new epoch,
and revisions from 1 again. A revision is only compared with revisions of the same epoch, so a
watcher holding revision N of an old history is never answered with changes of a new one.
"""

from __future__ import annotations

from typing import Protocol

from registry.model import Change, Check, InstanceRecord, InstanceView, Phase, Snapshot

__all__ = ["PluginStore"]


class PluginStore(Protocol):
    async def put(self, record: InstanceRecord) -> None:
        """Add the record, or replace the one with the same instance id (and forget its old lease)."""

    async def get(self, instance_id: str) -> InstanceRecord | None: ...

    async def all(self) -> list[InstanceRecord]:
        """Every record, ordered by instance id."""

    async def instance_for_lease(self, lease_id: str) -> str | None: ...

    async def set_lease(self, instance_id: str, expires_at: float) -> bool:
        """False when the instance is gone (the same for the other setters)."""

    async def set_phase(self, instance_id: str, phase: Phase) -> bool: ...

    async def set_check(self, instance_id: str, check: Check) -> bool: ...

    async def remove(self, instance_id: str) -> bool:
        """Remove the record and its lease; False when it was already gone."""

    async def publish(self, instance_id: str, view: InstanceView | None) -> int | None:
        """Publish a view (None: the instance is removed). Returns the new revision, None if unchanged."""

    async def epoch(self) -> str:
        """The id of the store's current revision history."""

    async def snapshot(self) -> Snapshot:
        """Every published view with the epoch and revision they correspond to, read atomically."""

    async def changes_since(self, epoch: str, revision: int) -> list[Change] | None:
        """Changes after `revision` of the history `epoch`, oldest first; None when `epoch` is not the
        store's current one or some of the changes are no longer retained (the caller needs a snapshot)."""

    async def wait(self, epoch: str, revision: int, timeout: float) -> None:
        """Return once the store is past `revision` of `epoch` (a later revision, or another epoch),
        or after `timeout` seconds."""

    async def signing_key(self, fresh: bytes) -> bytes:
        """The identity signing key every registry of this store uses: the stored one, or `fresh`,
        stored now, when there is none yet."""

    async def close(self) -> None: ...
