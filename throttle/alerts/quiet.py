"""Quiet periods: at most one delivery per alert key per period, across every worker.

The store decides who delivers: Redis `SET key NX PX quiet` (the first worker to set the key
delivers, the others stay quiet until it expires); the memory store lives in one process, so
a dictionary of this process does. When the store itself cannot be asked (the alert may well
be that it is down), the workers of one machine agree through a lock file instead: each
machine then delivers at most one per quiet period.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from throttle.faults import LogLimiter

logger = logging.getLogger(__name__)


class QuietPeriods:
    """Claims alert keys for a quiet period.

    - `store`: the engine's store, asked through its `claim(name, ttl_ms)` (Redis: SET NX PX;
      memory: in this process); a store without one, or one that fails, leaves it to the
      machine's lock files.
    - `namespace`: what tells this app's alerts from another's on the same store or machine.
    - `lock_dir`: where the machine's lock files go when the store cannot be asked.
    """

    def __init__(
        self,
        store: object,
        *,
        namespace: str,
        timeout: float = 1.0,
        lock_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        claim: Any = getattr(store, "claim", None)
        self._claim: Callable[[str, int], Awaitable[bool]] | None = (
            claim if callable(claim) else None
        )
        self.namespace = namespace
        self.timeout = timeout
        self.lock_dir = lock_dir or Path(tempfile.gettempdir()) / "throttle-alerts"
        self._clock = clock
        self._logs = LogLimiter(log=logger)

    def name_of(self, key: str) -> str:
        """The key as the store and the lock files name it: a hash, never the subject's text."""
        return hashlib.sha256(f"{self.namespace}\0{key}".encode()).hexdigest()[:32]

    async def claim(self, key: str, seconds: float) -> bool:
        """Whether this process delivers the alert `key` now (and nobody else for `seconds`)."""
        name = self.name_of(key)
        if self._claim is not None:
            try:
                async with asyncio.timeout(self.timeout):
                    return await self._claim(name, max(1, round(seconds * 1000)))
            except Exception as error:  # the store cannot say: this machine decides
                self._logs.warning(
                    "store",
                    "throttle: the store cannot keep alert quiet periods (%s); the workers of "
                    "this machine agree through lock files in %s meanwhile",
                    type(error).__name__,
                    self.lock_dir,
                )
        try:
            return await asyncio.to_thread(self._claim_on_machine, name, seconds)
        except OSError as error:  # better twice than never: this worker delivers
            self._logs.warning(
                "lock",
                "throttle: alert quiet periods cannot be kept in %s (%s); delivering anyway",
                self.lock_dir,
                error,
            )
            return True

    def _claim_on_machine(self, name: str, seconds: float) -> bool:
        """One lock file per key holds when its quiet period ends; `flock` makes reading and
        writing it one step for every process of this machine."""
        self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.lock_dir / name
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            written = os.read(descriptor, 64)
            now = self._clock()
            try:
                until = float(written.decode("ascii")) if written else 0.0
            except ValueError:  # a file someone else wrote: the period is over
                until = 0.0
            if now < until:
                return False
            os.lseek(descriptor, 0, os.SEEK_SET)
            os.ftruncate(descriptor, 0)
            os.write(descriptor, f"{now + seconds:.3f}".encode("ascii"))
            return True
        finally:
            os.close(descriptor)  # releases the lock
