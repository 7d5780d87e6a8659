"""The embedded store: everything in this process, gone when it stops. The default for `upf run`.

Each store is a history of its own (a new epoch): a restarted registry counts revisions from 1 again.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque

from registry.model import Change, Check, InstanceRecord, InstanceView, Phase, Snapshot

__all__ = ["MemoryPluginStore"]


class MemoryPluginStore:
    def __init__(self, *, history: int = 1000) -> None:
        self._records: dict[str, InstanceRecord] = {}
        self._leases: dict[str, str] = {}
        self._views: dict[str, InstanceView] = {}
        self._changes: deque[Change] = deque(maxlen=history)
        self._epoch = uuid.uuid4().hex
        self._revision = 0
        self._changed = asyncio.Event()  # replaced on every change, so each waiter sees one wake-up
        self._signing_key: bytes | None = None

    async def put(self, record: InstanceRecord) -> None:
        old = self._records.get(record.instance_id)
        if old is not None:
            self._leases.pop(old.lease_id, None)
        self._records[record.instance_id] = record
        self._leases[record.lease_id] = record.instance_id

    async def get(self, instance_id: str) -> InstanceRecord | None:
        return self._records.get(instance_id)

    async def all(self) -> list[InstanceRecord]:
        return [self._records[key] for key in sorted(self._records)]

    async def instance_for_lease(self, lease_id: str) -> str | None:
        return self._leases.get(lease_id)

    async def set_lease(self, instance_id: str, expires_at: float) -> bool:
        return self._update(instance_id, lease_expires_at=expires_at)

    async def set_phase(self, instance_id: str, phase: Phase) -> bool:
        return self._update(instance_id, phase=phase)

    async def set_check(self, instance_id: str, check: Check) -> bool:
        return self._update(instance_id, check=check)

    def _update(self, instance_id: str, **changes: object) -> bool:
        record = self._records.get(instance_id)
        if record is None:
            return False
        self._records[instance_id] = record.with_(**changes)
        return True

    async def remove(self, instance_id: str) -> bool:
        record = self._records.pop(instance_id, None)
        if record is None:
            return False
        self._leases.pop(record.lease_id, None)
        return True

    async def publish(self, instance_id: str, view: InstanceView | None) -> int | None:
        old = self._views.get(instance_id)
        if view is None:
            if old is None:
                return None
            del self._views[instance_id]
            change = Change(self._revision + 1, "removed", old)
        else:
            if old == view:
                return None
            self._views[instance_id] = view
            change = Change(self._revision + 1, "updated", view)
        self._revision = change.revision
        self._changes.append(change)
        self._changed.set()
        self._changed = asyncio.Event()
        return self._revision

    async def epoch(self) -> str:
        return self._epoch

    async def snapshot(self) -> Snapshot:
        return Snapshot(self._epoch, self._revision, [self._views[key] for key in sorted(self._views)])

    async def changes_since(self, epoch: str, revision: int) -> list[Change] | None:
        if epoch != self._epoch or revision > self._revision:
            return None  # a revision of another history (before a restart): the watcher must start over
        if revision == self._revision:
            return []
        if not self._changes or self._changes[0].revision > revision + 1:
            return None
        return [change for change in self._changes if change.revision > revision]

    async def wait(self, epoch: str, revision: int, timeout: float) -> None:
        if epoch != self._epoch or self._revision > revision:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    async def signing_key(self, fresh: bytes) -> bytes:
        if self._signing_key is None:
            self._signing_key = fresh
        return self._signing_key

    async def close(self) -> None:
        pass
