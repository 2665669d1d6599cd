"""The store contract: one atomic call per decision that checks every limit and records.

A store knows nothing of HTTP or policies. The engine hands it a `Delivery`: the person's
pseudonym, the counters that apply and their limits, the score; the store answers with an
`Outcome`. Both stores (memory, Redis) implement the same arithmetic, and one behaviour suite
runs against both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple, Protocol


class Verdict(IntEnum):
    DELIVERED = 0
    FREQUENCY_CAP = 1
    BUDGET = 2
    CREEPINESS = 3
    # The person's own level refuses it (`cap_index`: 0 off, 1 minimal).
    PREFERENCE = 4
    # It uses a special category the person gave no explicit consent for (`cap_index`: which,
    # in `Delivery.special`).
    SPECIAL = 5
    # The person's Global Privacy Control opt-out, sent now or before, rules it out.
    GPC = 6
    # Its relevance does not outweigh its creepiness for this person.
    CALCULUS = 7


# Personalization levels as the store keeps them.
LEVEL_CODES = {"off": 0, "minimal": 1, "standard": 2, "full": 3}


@dataclass(frozen=True, slots=True)
class CapCheck:
    """At most `limit` entries younger than `window_ms`, or, for a calendar cap (`period` 1
    day, 2 week, 3 month), since the period's start in the delivery's `period_starts`.

    `index` names the cap in the policy.
    """

    index: int
    limit: int
    window_ms: int
    period: int = 0


@dataclass(frozen=True, slots=True)
class Counter:
    """One log of delivery times in a person's state, e.g. `c:email` for the email channel.

    `keep` and `window_ms` bound the log: entries older than the window go, and only the
    newest `keep` stay, which is all the caps on it need to be exact.

    A `shadow` counter serves caps in shadow mode: they are checked after every enforced
    limit, and a refusal by one of them is reported but the message is delivered and counted
    in the enforced counters all the same (only the shadow counters skip it, as if enforced).
    So watching a cap never changes what the enforced ones do.
    """

    name: str
    keep: int
    window_ms: int
    caps: tuple[CapCheck, ...]
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class BudgetCheck:
    limit_milli: int
    window_ms: int
    entries: int


@dataclass(frozen=True, slots=True)
class RepetitionCheck:
    """Count the entries of `counter` younger than `window_ms`, at most `saturation` of them."""

    counter: str
    weight_milli: int
    window_ms: int
    saturation: int


@dataclass(frozen=True, slots=True, eq=False)
class Limits:
    """Everything that applies to one channel and campaign under one policy.

    The engine prepares one per (channel, campaign) and reuses it, so a store may cache what it
    derives from one (compares and hashes by identity).
    """

    ttl_ms: int
    # The creepiness threshold at the standard level; a person's level may move it.
    threshold_milli: int
    counters: tuple[Counter, ...]
    budget: BudgetCheck | None = None
    repetition: RepetitionCheck | None = None
    audience_window_ms: int = 0
    # A store that can be slow answers within this or raises (the memory store never waits).
    timeout_ms: int = 50
    # Whether any counter is a shadow counter.
    shadow_caps: bool = False
    # Thresholds at the minimal and full levels, the level of people who chose none, and how
    # long a person's choice is kept after their last decision.
    minimal_threshold_milli: int = 400
    full_threshold_milli: int = 850
    default_level: int = 2
    keep_choice_ms: int = 365 * 86_400_000
    # The privacy calculus, thousandths: trust for a signed-in person and for one who chose
    # their level, and lambda at the minimal, standard and full levels.
    trust_signed_in_milli: int = 200
    trust_declared_milli: int = 300
    lambda_milli: tuple[int, int, int] = (2000, 1000, 600)


class Delivery(NamedTuple):
    """What one decision asks of the store; scores are in thousandths, times in ms."""

    person: str
    now_ms: int
    score_milli: int
    limits: Limits
    # Count the person into these segments' audiences (their k-anonymity counts): the
    # message's segment and each of its ancestors.
    audiences: tuple[str, ...] = ()
    # Report the audience sizes of these segments in the outcome.
    count_segments: tuple[str, ...] = ()
    # Starts of the person's calendar day, week and month (ms), when a calendar cap applies.
    period_starts: tuple[int, ...] = ()
    # The message uses only data people give themselves: a person at `minimal` may get it.
    minimal_ok: bool = True
    # A message the person asked for: only their level applies, no cap counts it.
    transactional: bool = False
    # The special categories the message uses: each needs the person's explicit consent.
    special: tuple[str, ...] = ()
    # The message is one a GPC opt-out rules out: refused when the person's state holds one.
    gpc_forbids: bool = False
    # The message's relevance, thousandths; -1 when it states none (no calculus).
    relevance_milli: int = -1


class Choice(NamedTuple):
    """A change to what a person allows: `kind` is `level` (`value` a level code), `consent` or
    `withdraw` (`value` a special category), `opt-out` (a GPC signal was seen; kept from its
    first time), `opt-in` (the person clears that themselves) or `touch` (the person came
    back: choices they have are kept longer)."""

    kind: str
    value: int | str = 0


@dataclass(frozen=True, slots=True)
class AuditLimits:
    """How much of the audit trail a store keeps: the stream's length and age, and the recent
    decisions kept with each person (for "why am I seeing this") and for how long."""

    max_entries: int
    max_age_ms: int
    per_person: int
    keep_ms: int


class Erasure(NamedTuple):
    """What erasing a person deleted: their state, their recent decisions, their audit entries."""

    state: bool
    decisions: int
    audit_entries: int


class Outcome(NamedTuple):
    verdict: Verdict
    # Index of the cap that refused, in policy order; -1 when no cap did.
    cap_index: int
    score_milli: int
    repetitions: int
    segment_sizes: Mapping[str, int]
    # The person's choices restrict them (level off or minimal, a GPC opt-out).
    restricted: bool = False
    # The person's level (a `LEVEL_CODES` value), theirs or the policy's default.
    level: int = 2


class Store(Protocol):
    """Where per-person state lives. `memory://` for one process, `redis://` to share it."""

    # Whether other processes see the state: then pseudonyms need a configured secret.
    shared: bool

    async def deliver(self, delivery: Delivery) -> Outcome:
        """Check every counter and the budget for one message, and record it if all pass."""
        ...

    async def segment_sizes(self, segments: tuple[str, ...], *, window_ms: int) -> dict[str, int]:
        """How many distinct people each segment has seen in the last `window_ms`."""
        ...

    async def state(self, person: str) -> dict[str, Any] | None:
        """One person's decoded state (counters `c`, budget `b`, their choices `p`, which are
        kept apart and live longer), or None."""
        ...

    async def choose(self, person: str, choice: Choice, *, now_ms: int, keep_ms: int) -> None:
        """Record a person's choice in their state, kept at least `keep_ms`."""
        ...

    def note(self, person: str, choice: Choice, *, now_ms: int, keep_ms: int) -> None:
        """Record a choice without waiting (a store may write it with its next write)."""
        ...

    def record(self, person: str, entry: bytes, limits: AuditLimits) -> None:
        """Append a packed `AuditEntry` to the trail, and to the person's recent decisions
        (`person` is a pseudonym, `""` for nobody). Never waits; a store may write later."""
        ...

    async def recent(self, person: str) -> list[bytes]:
        """One person's recent decisions, newest first, as packed audit entries."""
        ...

    async def audit_entries(self, person: str) -> list[bytes]:
        """Every audit entry of one person still in the trail, oldest first."""
        ...

    async def erase(self, person: str) -> Erasure:
        """Delete everything held about one person: state, recent decisions, audit entries."""
        ...

    async def aclose(self) -> None: ...
