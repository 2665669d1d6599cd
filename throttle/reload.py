"""Hot reload: a running middleware picks up an edited policy file, and survives a bad edit."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from throttle.errors import PolicyError
from throttle.policy import Policy, layered_policy, version_of

logger = logging.getLogger(__name__)


class PolicyWatcher:
    """Looks at policy files at most every `interval` seconds and loads them when one changed.

    `paths` is one file, or a base and its overrides in layer order. An edit that does not
    validate leaves the policy in force and is logged once; so is a file that disappears. The
    caller swaps in whatever `poll()` returns. `on_refused(source, kept_version, why)`, when
    set, hears of each refused edit once, as the log does (alerts use it).
    """

    def __init__(
        self,
        paths: str | Path | Sequence[str | Path],
        current: Policy,
        *,
        interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.paths = (
            (Path(paths),) if isinstance(paths, str | Path) else tuple(Path(p) for p in paths)
        )
        self.interval = interval
        self._clock = clock
        self._next_look = clock() + interval
        self._signature = self._stat()
        self._version = current.version
        self._refused: str | None = None
        self.on_refused: Callable[[str, str, str], None] | None = None
        # For metrics: told "applied" or "refused" for each edit looked at.
        self.on_result: Callable[[str], None] | None = None

    def poll(self) -> Policy | None:
        """A newly loaded policy when a file changed and the result is valid; otherwise None."""
        now = self._clock()
        if now < self._next_look:
            return None
        self._next_look = now + self.interval
        signature = self._stat()
        if signature == self._signature:
            return None
        self._signature = signature
        texts = []
        for path in self.paths:
            try:
                texts.append(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError) as error:
                self._refuse(f"{path} is unreadable: {error}", f"unreadable:{signature}")
                return None
        version = version_of(texts)
        if version == self._version:
            return None
        try:
            policy = layered_policy(
                [(str(path), text) for path, text in zip(self.paths, texts, strict=True)]
            )
        except PolicyError as error:
            self._refuse(str(error), version)
            return None
        logger.warning(
            "throttle: policy %s reloaded: %s@%s (was @%s)",
            policy.source,
            policy.name,
            policy.version,
            self._version,
            extra={
                "source": policy.source,
                "policy": policy.name,
                "version": policy.version,
                "previous_version": self._version,
            },
        )
        self._version = version
        self._refused = None
        if self.on_result is not None:
            self.on_result("applied")
        return policy

    def _refuse(self, why: str, version: str) -> None:
        if self.on_result is not None:
            self.on_result("refused")
        if version != self._refused:
            self._refused = version
            logger.error(
                "throttle: kept policy @%s; the edited file is not used: %s",
                self._version,
                why,
                extra={"version": self._version, "why": why},
            )
            if self.on_refused is not None:
                source = " + ".join(str(path) for path in self.paths)
                self.on_refused(source, self._version, why)

    def _stat(self) -> tuple[tuple[int, int, int] | None, ...]:
        return tuple(_stat(path) for path in self.paths)


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)
