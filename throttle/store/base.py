"""The store contract: one atomic call per decision that checks every limit and records.

A store knows nothing of HTTP or policies. The engine hands it a `Delivery`: the person's
pseudonym, the counters that apply and their limits, the score; the store answers with an
`Outcome`. Both stores (memory, Redis) implement the same arithmetic, and one behaviour suite
runs against both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple, Protocol

import msgpack


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
    # It is the person's quiet hours (checked after their own choices, before any limit).
    QUIET_HOURS = 8


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
    # A store that can be slow answers within this or raises (the memory store never waits),
    # and after a failed connection tries again no sooner than `retry_after_ms`.
    timeout_ms: int = 50
    retry_after_ms: int = 1000
    # Replicas a shared store waits for (Redis WAIT) before a decision batch counts: fewer
    # acknowledgements within half of `timeout_ms` fail the batch as late (0: no wait).
    replicas: int = 0
    # Whether any counter is a shadow counter.
    shadow_caps: bool = False
    # The category band's (low, high] by level 1 (minimal), 2, 3 (full), thousandths; () none.
    band: tuple[int, ...] = ()
    # Recent decisions kept with each person (0: none) and for how long.
    recent_per_person: int = 0
    recent_keep_ms: int = 0
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


@dataclass(frozen=True, slots=True, eq=False)
class RecentTemplate:
    """How one message's decisions read in a person's recent decisions.

    The store makes the decision, so the person's record keeps only what differs from one
    decision of the message to the next: the time, how it came out (`key`, see
    `outcome_key`) and the score, with the template's `fingerprint`. The template itself, the
    same for everyone who gets the message, is kept once (a Redis store keeps it beside the
    records, under the fingerprint). A packed audit entry is `head`, the time, `before`,
    `outcomes[key]`, the score, the factors (`factors`, plus the repetition factor when the
    store counted earlier deliveries), `after`, the shadow flag (`key in shadowed`) and
    `policy`. Compares and hashes by identity, so a store may cache what it derives from one.
    """

    head: bytes
    before: bytes
    outcomes: Mapping[str, bytes]
    shadowed: frozenset[str]
    factors: bytes
    factor_count: int
    after: bytes
    policy: bytes
    # The message's score before repetition, thousandths: a higher score counted repetitions.
    content_milli: int

    def packed(self) -> bytes:
        """The template as bytes, for a store to keep once."""
        packed: bytes = msgpack.packb(
            [
                self.head, self.before, dict(self.outcomes), sorted(self.shadowed), self.factors,
                self.factor_count, self.after, self.policy, self.content_milli,
            ],
            use_bin_type=True,
        )  # fmt: skip
        return packed

    @classmethod
    def unpacked(cls, data: bytes) -> RecentTemplate:
        """The template `packed()` made; raises ValueError for bytes that are not one."""
        try:
            fields = msgpack.unpackb(data, raw=False)
            head, before, outcomes, shadowed, factors, count, after, policy, content = fields
            return cls(
                head, before, outcomes, frozenset(shadowed), factors, count, after, policy, content
            )
        except (ValueError, TypeError) as error:
            raise ValueError(f"not a recent-decision template: {error}") from None

    @property
    def fingerprint(self) -> bytes:
        """8 bytes that name the template (of its packed bytes), as a person's record does."""
        return fingerprint_of(self.packed())

    def entry(self, now_ms: int, key: str, score_milli: int) -> bytes:
        """The decision as a packed audit entry (no person: it sits in theirs)."""
        factors, count = self.factors, self.factor_count
        if score_milli > self.content_milli:
            factors += REPETITION_FACTOR + msgpack.packb(score_milli - self.content_milli)
            count += 1
        return b"".join(
            (
                self.head,
                msgpack.packb(now_ms),
                self.before,
                self.outcomes[key],
                msgpack.packb(score_milli),
                array_header(count),
                factors,
                self.after,
                b"\xc3" if key in self.shadowed else b"\xc2",
                self.policy,
            )
        )


def fingerprint_of(data: bytes) -> bytes:
    """8 bytes of SHA-256: what names a piece of a recent decision that many share."""
    return hashlib.sha256(data).digest()[:8]


# The repetition factor's pair, up to its contribution: a msgpack array of two, and its name.
REPETITION_FACTOR = b"\x92" + msgpack.packb("repetition")


def array_header(count: int) -> bytes:
    """A msgpack array header (fixarray or array 16) for `count` items."""
    return bytes((0x90 + count,)) if count < 16 else b"\xdc" + count.to_bytes(2, "big")


def outcome_key(
    verdict: Verdict,
    index: int,
    level: int,
    score_milli: int,
    transactional: bool,
    band: tuple[int, ...],
    shadow_caps: frozenset[int],
) -> str:
    """How a store's verdict comes out, as a key of `RecentTemplate.outcomes`: `a` allowed,
    `t` transactional, `g` the category band, `c<i>` cap i, `b` budget, `s` creepiness,
    `p0`/`p1` level off/minimal, `x<i>` the i-th special category, `o` GPC, `k` calculus,
    `q` quiet hours.

    `band` is the category band's (low, high] by level 1 to 3, `()` for none; `shadow_caps`
    the indexes of caps in shadow mode. `lua/deliver.lua` makes the same choice."""
    if verdict is Verdict.DELIVERED:
        if transactional:
            return "t"
        return "g" if band and band[2 * level - 2] < score_milli <= band[2 * level - 1] else "a"
    if verdict is Verdict.FREQUENCY_CAP:
        in_band = bool(band) and band[2 * level - 2] < score_milli <= band[2 * level - 1]
        return "g" if in_band and index in shadow_caps else f"c{index}"
    if verdict is Verdict.PREFERENCE:
        return f"p{index}"
    if verdict is Verdict.SPECIAL:
        return f"x{index}"
    return _VERDICT_KEYS[verdict]


_VERDICT_KEYS = {
    Verdict.QUIET_HOURS: "q",
    Verdict.BUDGET: "b",
    Verdict.CREEPINESS: "s",
    Verdict.GPC: "o",
    Verdict.CALCULUS: "k",
}


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
    # The request carries a GPC opt-out now: record it in the person's choices (kept from its
    # first time), before the answer, so every worker honours it at once.
    gpc_now: bool = False
    # It is the person's quiet hours: refused after their level, GPC opt-out and consents.
    quiet: bool = False
    # How to write this decision into the person's recent decisions; None: keep none.
    recent: RecentTemplate | None = None
    # A preflight: decide exactly as for real, and write nothing (no counter, budget, choice,
    # audience or recent decision).
    dry_run: bool = False
    # Count a delivery as this reservation (see `Hold`), which `Store.settle` commits or
    # releases; None: a plain delivery.
    hold: Hold | None = None


class Hold(NamedTuple):
    """A reservation: a delivery counted at once against the caps and the budget, under `id`
    (unique to the person), until `Store.settle` commits it (it stays, as any delivery) or
    releases it (exactly its counter entries and budget spend are taken back out). Neither
    within `hold_ms`: it is released by itself."""

    id: str
    hold_ms: int


class Choice(NamedTuple):
    """A change to what a person allows: `kind` is `level` (`value` a level code), `consent` or
    `withdraw` (`value` a special category), `opt-out` (a GPC signal was seen; kept from its
    first time) or `opt-in` (the person clears that themselves)."""

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
    """What erasing a person deleted: their state and choices, and their recent decisions.

    Their entries in the audit trail are unlinked rather than searched for: entries name a
    person by a random token kept in the person's state, so deleting it leaves nothing that
    ties them to the person.
    """

    state: bool
    decisions: int


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
    # The random token that names the person in the audit trail ("" when none is kept).
    token: str = ""
    # The delivery was counted as the reservation it asked for (`Delivery.hold`).
    reserved: bool = False


class Store(Protocol):
    """Where per-person state lives. `memory://` for one process, `redis://` to share it.

    Everything about one person is one record (one Redis key): counters, budget, choices,
    their audit token and recent decisions. It expires by itself when the longest of them
    lapses, and erasing the person deletes it whole.
    """

    # Whether other processes see the state: then pseudonyms need a configured secret.
    shared: bool

    async def deliver(self, delivery: Delivery) -> Outcome:
        """Check every counter and the budget for one message, and record it if all pass;
        write the decision into the person's recent decisions when `delivery.recent` says so."""
        ...

    async def settle(self, person: str, reservation: str, *, commit: bool, now_ms: int) -> bool:
        """Commit a reservation (its entries stay) or release it (exactly its counter entries
        and budget spend go), atomically; whether it was held (False: never made, settled
        already, or released by itself when its hold ran out)."""
        ...

    async def segment_sizes(self, segments: tuple[str, ...], *, window_ms: int) -> dict[str, int]:
        """How many distinct people each segment has seen in the last `window_ms`."""
        ...

    async def state(self, person: str) -> dict[str, Any] | None:
        """One person's decoded state (counters `c`, budget `b`, their choices `p`, their
        reservations not yet settled `v`: id -> [time, expiry, budget spend, counter names]),
        or None."""
        ...

    async def choose(self, person: str, choice: Choice, *, now_ms: int, keep_ms: int) -> None:
        """Record a person's choice in their state, kept at least `keep_ms`."""
        ...

    def remember(
        self,
        person: str,
        time_ms: int,
        tail: bytes | None,
        audit: AuditLimits | None,
        *,
        keep_ms: int,
    ) -> None:
        """A decision made without the store, for a person: append it (a packed entry tail) to
        their recent decisions and, under their token, to the trail; choices they have are
        kept `keep_ms` longer. Never waits; a store may write it with its next write."""
        ...

    def record(self, time_ms: int, token: str, tail: bytes, audit: AuditLimits) -> None:
        """Append a decision to the audit trail, naming its person by `token` ("": nobody).
        Never waits; a store may write later, many entries at once."""
        ...

    async def recent(self, person: str) -> list[bytes]:
        """One person's recent decisions, newest first, as packed audit entries."""
        ...

    async def erase(self, person: str) -> Erasure:
        """Delete everything held about one person, in one write."""
        ...

    async def token_of(self, person: str) -> str:
        """The random token that names the person in the audit trail, "" when none is held."""
        ...

    async def append_request(self, entry: bytes, audit: AuditLimits) -> None:
        """Append a data request made by support staff (a packed entry naming the person by
        their token) to the audit trail now, and return once it is written."""
        ...

    async def aclose(self) -> None: ...
