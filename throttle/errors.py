"""Errors a user of throttle can act on.

```
ThrottleError
├── ConfigurationError   bad arguments to the middleware or a store (URI, secret)
├── PolicyError          a policy file that cannot be used; lists every problem
├── MarkerError          a Personalization header that cannot be read or built
└── StoreUnavailable     the store did not answer in time, or not at all
    └── DecisionRefused  the store answered one decision with an error (e.g. a corrupt key);
                         it says nothing about the store's health
```
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class ThrottleError(Exception):
    """Base class of every error throttle raises on purpose."""


class ConfigurationError(ThrottleError):
    """The middleware or a store was given arguments it cannot work with."""


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """One thing wrong in a policy file: where (`key`, e.g. `caps[2].window`, the `line` to
    edit when the file shows one, and the file's `source` when several files are layered) and
    what."""

    key: str
    message: str
    line: int | None = None
    source: str | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        if self.source is not None:
            where = f"{self.source}: {where}"
        return f"{where}{self.key}: {self.message}" if self.key else f"{where}{self.message}"


class PolicyError(ThrottleError):
    """A policy file cannot be used. `problems` lists every key that is wrong."""

    def __init__(self, source: str, problems: Sequence[PolicyProblem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        lines = "\n".join(f"  {problem}" for problem in self.problems)
        super().__init__(f"policy {source} cannot be used:\n{lines}")


class MarkerError(ThrottleError):
    """A `Personalization` header that is not a valid marker."""


class StoreUnavailable(ThrottleError):
    """The store failed to answer a decision in time; the engine falls back to segment content."""


class DecisionRefused(StoreUnavailable):
    """The store answered one decision with an error; other decisions are unaffected."""
