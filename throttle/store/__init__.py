"""Stores of per-person state, chosen by URI: `memory://` (embedded), `redis://` or
`redis+sentinel://` (shared), or `redis+cluster://` (shared, sharded)."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from throttle.errors import ConfigurationError
from throttle.store.base import Store
from throttle.store.cluster import ClusterStore
from throttle.store.memory import MemoryStore
from throttle.store.redis import RedisStore
from throttle.store.url import redacted_url


def _memory(uri: str) -> Store:
    return MemoryStore()


def _redis(uri: str) -> Store:
    return RedisStore(uri)


def _cluster(uri: str) -> Store:
    return ClusterStore(uri)


_FACTORIES: dict[str, Callable[[str], Store]] = {
    "memory": _memory,
    "redis": _redis,
    "rediss": _redis,
    "unix": _redis,
    "redis+cluster": _cluster,
    "rediss+cluster": _cluster,
    "redis+sentinel": _redis,
    "rediss+sentinel": _redis,
}


def open_store(uri: str) -> Store:
    """The store a URI names: `memory://`, `redis://host:port/db`, `rediss://…`, `unix://…`,
    `redis+sentinel://host:port[,host:port…]/service_name` (`rediss+sentinel://` with TLS) or a
    Redis Cluster, `redis+cluster://host:port,host:port` (`rediss+cluster://…` with TLS)."""
    scheme = urlsplit(uri).scheme
    factory = _FACTORIES.get(scheme)
    if factory is None:
        known = ", ".join(f"{s}://" for s in _FACTORIES)
        raise ConfigurationError(
            f"store {redacted_url(uri)!r}: unknown scheme {scheme!r}; use one of {known}"
        )
    try:
        return factory(uri)
    except ValueError as error:  # e.g. a port that is not a number
        raise ConfigurationError(f"store {redacted_url(uri)!r}: {error}") from None


__all__ = ["ClusterStore", "MemoryStore", "RedisStore", "Store", "open_store"]
