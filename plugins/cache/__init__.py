"""ICache (upf.cache.v1.Cache): one service over three backends, each a plugin of its own.

service.py     CacheService: argument checks, namespaces, capabilities, lock waits, error statuses
backend.py     the CacheBackend protocol, capabilities, limits
backends/      memory (embedded default), redis, memcached
plugin.py      `upf plugin cache-memory | cache-redis | cache-memcached`
"""
