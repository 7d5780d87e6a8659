"""The backends of the cache service: memory (embedded), Redis, memcached."""
