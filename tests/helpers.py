from __future__ import annotations

from pathlib import Path
from typing import Any

from throttle import Engine, Marker, Policy
from throttle.audit import AuditEntry
from throttle.store import MemoryStore, RedisStore, Store

SECRET = b"test-secret-0123456789abcdef"


def policy(body: str = "", *, name: str = "test", mode: str = "enforce") -> Policy:
    """A policy from TOML text; unset sections take their defaults (no caps, no budget).

    The store timeout is generous unless the test sets one: a busy test machine must not turn
    a behaviour test into a timeout test.
    """
    if "[store]" not in body:
        body += '\n[store]\ntimeout = "5s"\n'
    return Policy.from_toml(f'[policy]\nname = "{name}"\nmode = "{mode}"\n{body}', source="<test>")


def engine(body: str, store: Store, clock: object, *, mode: str = "enforce") -> Engine:
    return Engine(policy(body, mode=mode), store, secret=SECRET, clock=clock)  # type: ignore[arg-type]


def marker(campaign: str = "spring-sale", **fields: object) -> Marker:
    return Marker(campaign=campaign, **fields)  # type: ignore[arg-type]


def patient_copy(shipped: Path, directory: Path) -> Path:
    """A copy of a shipped policy with a store timeout no busy machine reaches: a test that
    reads what was decided must not see the 50 ms timeout turn it into store-unavailable."""
    text = shipped.read_text()
    assert 'timeout = "50ms"' in text
    copy = directory / shipped.name
    copy.write_text(text.replace('timeout = "50ms"', 'timeout = "5s"'))
    return copy


NO_REPETITION = "[creepiness]\nrepetition = { weight = 0.0, window = '1h' }\n"


async def trail(store: Store) -> list[AuditEntry]:
    """Every entry of the store's audit trail, oldest first (what waits to be written first)."""
    if isinstance(store, MemoryStore):
        return [AuditEntry.unpack(entry) for entry in store.trail()]
    assert isinstance(store, RedisStore)
    await store._write_pending_now()
    rows: list[Any] = []
    for key in store.audit_keys:  # one stream, or a cluster store's shards, merged by time
        rows += await store._client.xrange(key)
    rows.sort(key=lambda row: tuple(int(part) for part in row[0].split(b"-")))
    return [
        entry
        for _, fields in rows
        if b"r" not in fields  # a data request by support staff, not a decision
        for entry in AuditEntry.unpack_all(fields[b"d"])
        if entry is not None
    ]
