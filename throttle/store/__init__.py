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


def _memory(uri: str, prefix: str) -> Store:
    return MemoryStore()


def _redis(uri: str, prefix: str) -> Store:
    return RedisStore(uri, prefix=prefix)


def _cluster(uri: str, prefix: str) -> Store:
    return ClusterStore(uri, prefix=prefix)


_FACTORIES: dict[str, Callable[[str, str], Store]] = {
    "memory": _memory,
    "redis": _redis,
    "rediss": _redis,
    "unix": _redis,
    "redis+cluster": _cluster,
    "rediss+cluster": _cluster,
    "redis+sentinel": _redis,
    "rediss+sentinel": _redis,
}


# The schemes of stores every worker and host share (memory:// is one process's own).
SHARED_SCHEMES = tuple(scheme for scheme in _FACTORIES if scheme != "memory")


def open_store(uri: str, *, prefix: str = "throttle:") -> Store:
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
        return factory(uri, prefix)
    except ValueError as error:  # e.g. a port that is not a number
        raise ConfigurationError(f"store {redacted_url(uri)!r}: {error}") from None


__all__ = ["SHARED_SCHEMES", "ClusterStore", "MemoryStore", "RedisStore", "Store", "open_store"]
