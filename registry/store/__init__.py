"""Where the registry keeps registrations, published views and the change history."""

from __future__ import annotations

from registry.store.base import PluginStore
from registry.store.memory import MemoryPluginStore
from registry.store.redis import RedisPluginStore

__all__ = ["MemoryPluginStore", "PluginStore", "RedisPluginStore"]
