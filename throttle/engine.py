"""decide(message) -> Decision. Knows neither ASGI nor Redis: only the policy and a Store.

The policy arrives compiled (`snapshot.Snapshot`): a decision reads one snapshot from start to
end, even if a reload swaps in another meanwhile. Hard gates come first and are reported as
such: Art. 22, consent (GPC, TCF), the person's level and special categories are never
reported as a score. The store makes every decision about a signed-in person that the person's
state could change (their level, consents, GPC opt-out, caps, budget) in one call, and writes
it into the person's recent decisions itself; what is decided without it is remembered on the
side.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from throttle.audit import AuditEntry, pack_tail
from throttle.decision import Decision, Reason
from throttle.errors import DecisionRefused, StoreUnavailable
from throttle.fallback import EVERYONE, k_anonymous, lineage
from throttle.faults import LogLimiter, StoreGuard
from throttle.message import Marker
from throttle.observe import Observation, Observer
from throttle.periods import LocalTime
from throttle.policy import Policy, milli
from throttle.scoring import ContentScore
from throttle.snapshot import LEVEL_RULES, Plan, Snapshot, Words
from throttle.store.base import (
    LEVEL_CODES,
    Choice,
    Delivery,
    Erasure,
    Hold,
    Store,
    outcome_key,
)
from throttle.store.base import Outcome as StoreOutcome

__all__ = ["Decision", "Engine", "Reason"]

logger = logging.getLogger(__name__)

# When the store fails, `on_error = "personalize"` fails open only for people this process saw
# without restricting choices (level off or minimal, a GPC opt-out) this recently.
_KNOWN_OPEN_SECONDS = 600.0
# Without an audit trail, a person's choices are renewed by decisions refused before the store
# is asked at most this often (the store renews them with each decision it makes).
_TOUCH_SECONDS = 3600.0
# Per-person memories of this process are bounded: past this many, they start again.
_PEOPLE_REMEMBERED = 65_536
# Audience sizes only grow slowly; asking Redis again this often keeps k-anonymity current.
_AUDIENCE_REFRESH_SECONDS = 30.0
_AUDIENCES_REMEMBERED = 65_536
_TAILS_REMEMBERED = 4096
_SHA256_BLOCK = 64
_LEVEL_NAMES = {code: name for name, code in LEVEL_CODES.items()}
K = TypeVar("K")
V = TypeVar("V")


class Engine:
    """Decides, for each personalized message, whether the person may receive it.

    ```python
    engine = Engine(load_policy("policies/default.toml"), MemoryStore(), secret=b"...")
    decision = await engine.decide(marker, person="user-42", gpc=False)
    ```
    """

    def __init__(
        self,
        policy: Policy,
        store: Store,
        *,
        secret: bytes,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        audit: bool = True,
        markets: Mapping[str, Policy] | None = None,
    ) -> None:
        self.store = store
        self._audit_wanted = audit
        self._logs = LogLimiter(log=logger)
        # Pseudonym -> (when seen, their level): seen lately with no restricting choice.
        self._known_open: dict[str, tuple[float, int]] = {}
        # Pseudonym -> when this process last restricted them (level off or minimal, GPC): a
        # decision sent before that cannot mark them open again.
        self._restricted_at: dict[str, float] = {}
        self._touched: dict[str, float] = {}
        self._audit_tails: dict[tuple[object, ...], tuple[Marker | None, bytes]] = {}
        key = hashlib.sha256(secret).digest() if len(secret) > _SHA256_BLOCK else secret
        key = key.ljust(_SHA256_BLOCK, b"\0")
        self._hmac_inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in key))
        self._hmac_outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in key))
        self._clock = clock
        self._monotonic = monotonic
        self._observers: tuple[Observer, ...] = ()
        self._audience_tag = self.pseudonym("\0audiences")[:8]
        self._audiences: dict[str, tuple[int, float]] = {}
        self._snapshot = Snapshot(policy, audit=audit)
        # Policies per market, by name; `policy` decides for no market or an unknown one.
        self._markets = {name: Snapshot(p, audit=audit) for name, p in (markets or {}).items()}
        self._in_force = self._policies_in_force()
        self.guard = StoreGuard(retry_after=policy.store.retry_after, clock=monotonic)
        # A store that writes on the side reports what it meets there to the same guard.
        attach = getattr(store, "attach", None)
        if callable(attach):
            attach(self.guard)

    @property
    def policy(self) -> Policy:
        return self._snapshot.policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        # Everything a decision would otherwise recompute from the policy is compiled here,
        # and swapped in at once.
        self._snapshot = Snapshot(policy, audit=self._audit_wanted)
        self._in_force = self._policies_in_force()
        self.guard.retry_after = policy.store.retry_after

    @property
    def policies(self) -> tuple[Policy, ...]:
        """Every policy in force: the default, then each market's. A new tuple only when one
        of them is swapped, so `is` tells observers whether anything changed."""
        return self._in_force

    def _policies_in_force(self) -> tuple[Policy, ...]:
        return (self._snapshot.policy, *(s.policy for s in self._markets.values()))

    @property
    def markets(self) -> tuple[str, ...]:
        """The names of the markets with a policy of their own."""
        return tuple(self._markets)

    def policy_for(self, market: str | None) -> Policy:
        """The policy that decides for `market`: its own, else (None, unknown) the default."""
        snapshot = self._markets.get(market) if market is not None else None
        return (snapshot or self._snapshot).policy

    def set_market(self, market: str, policy: Policy) -> None:
        """Swap in a market's policy (a reload); a decision under way keeps the one it read."""
        if market not in self._markets:
            raise KeyError(f"no market {market!r}; the markets are {', '.join(self._markets)}")
        self._markets = {**self._markets, market: Snapshot(policy, audit=self._audit_wanted)}
        self._in_force = self._policies_in_force()

    def _snapshot_for(self, market: str | None) -> Snapshot:
        if market is None:
            return self._snapshot
        snapshot = self._markets.get(market)
        if snapshot is None:
            # An app's market function may meet a market nobody configured (a new country):
            # the default policy decides, and the logs say so once a minute.
            self._logs.warning(
                "market",
                "throttle: no policy for market %r; the default policy %s decides",
                market[:64],
                self._snapshot.name,
                extra={"market": market[:64], "policy": self._snapshot.name},
            )
            return self._snapshot
        return snapshot

    def observe(self, observer: Observer) -> None:
        """Call `observer` with an `Observation` after every decision this engine makes."""
        self._observers = (*self._observers, observer)

    def _observed(self, decision: Decision, segment: str, started: float, signed_in: bool) -> None:
        seconds = self._monotonic() - started
        observation = Observation(decision, segment, seconds, signed_in)
        for observer in self._observers:
            try:
                observer(observation)
            except Exception:  # an observer's fault must never reach the person's response
                self._logs.warning("observer", "an observer of decisions failed", exc_info=True)

    @property
    def clock(self) -> Callable[[], float]:
        """Seconds since the epoch, as the decisions count time."""
        return self._clock

    @property
    def uses_time_zones(self) -> bool:
        """Whether a policy counts time in people's zones (calendar caps, quiet hours)."""
        return self._snapshot.local is not None or any(
            snapshot.local is not None for snapshot in self._markets.values()
        )

    def pseudonym(self, person: str) -> str:
        """The keyed hash that stands for a person in the store; the raw id never leaves.

        HMAC-SHA256(secret, id), its first 128 bits in hex. Computed from the key's inner and
        outer pads hashed once (RFC 2104), which halves the cost of each call.
        """
        inner = self._hmac_inner.copy()
        inner.update(person.encode("utf-8", "surrogatepass"))
        outer = self._hmac_outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:16].hex()

    async def decide(
        self,
        marker: Marker,
        *,
        person: str | None,
        gpc: bool = False,
        zone: str | None = None,
        purposes: frozenset[int] | None = None,
        market: str | None = None,
    ) -> Decision:
        """Decide one message for one person (`None`: not signed in).

        - `gpc`: the request carries `Sec-GPC: 1`.
        - `zone`: the person's IANA time zone, for calendar caps and quiet hours; unknown or
          `None` means the policy's zone.
        - `purposes`: the TCF purposes the person consented to, from their consent string;
          `None` when the request carries none.
        - `market`: whose policy decides (see `markets`); `None`, or a market without a
          policy (logged), the default policy. A person's state is the same in every market.

        Every decision is appended to the audit trail, the person named by a random token.
        """
        decision, _ = await self.ask(
            marker, person=person, gpc=gpc, zone=zone, purposes=purposes, market=market
        )
        return decision

    async def ask(
        self,
        marker: Marker,
        *,
        person: str | None,
        gpc: bool = False,
        zone: str | None = None,
        purposes: frozenset[int] | None = None,
        market: str | None = None,
        dry_run: bool = False,
        hold: Hold | None = None,
    ) -> tuple[Decision, bool]:
        """`decide`, as a preflight or a reservation (what `ThrottleClient` builds on); with
        whether the store counted the message as the reservation `hold`.

        - `dry_run`: decide as for real and change nothing: no counter, budget, choice,
          audience, recent decision, trail entry or observation.
        - `hold`: count the message as this reservation, which `Store.settle` commits or
          releases.

        Without the store, neither fails open: the answer is segment content.
        """
        started = self._monotonic() if self._observers else 0.0
        snapshot = self._snapshot if market is None else self._snapshot_for(market)
        plan = snapshot.plan(marker)
        pseudonym = self.pseudonym(person) if person is not None else None
        if pseudonym is None:
            decision = await self._decide_for_nobody(snapshot, plan, gpc, zone, purposes)
            if dry_run:
                return decision, False
            if snapshot.audit is not None:
                self._record(snapshot, decision, marker, "")
            if self._observers:
                self._observed(decision, marker.segment, started, False)
            return decision, False
        if gpc and not dry_run:
            self._restrict(pseudonym)
        decision, outcome = await self._decide_for(
            snapshot, plan, pseudonym, gpc, zone, purposes, dry_run, hold
        )
        if dry_run:
            return decision, False
        if outcome is not None:  # the store decided, and wrote it into the person's record
            if snapshot.audit is not None:
                self._record(snapshot, decision, marker, outcome.token)
        else:
            if gpc:
                await self._keep_opt_out(pseudonym)
            self._remember(snapshot, decision, marker, pseudonym)
        if self._observers:
            self._observed(decision, marker.segment, started, True)
        return decision, outcome is not None and outcome.reserved

    async def _decide_for_nobody(
        self,
        snapshot: Snapshot,
        plan: Plan,
        gpc: bool,
        zone: str | None,
        purposes: frozenset[int] | None,
    ) -> Decision:
        marker, content = plan.marker, plan.content
        refusal = self._gate(snapshot, plan, purposes)
        if refusal is None and gpc and plan.forbidden_by_gpc:
            refusal = Reason.CONSENT, "consent.gpc"
        if refusal is None and snapshot.anonymous_get_segment:
            refusal = Reason.ANONYMOUS, "consent.anonymous"
        level = snapshot.default_level
        if refusal is None and (level == 0 or (level == 1 and not plan.minimal_ok)):
            refusal = Reason.PREFERENCE, LEVEL_RULES[level]
        if refusal is None and plan.special:  # nobody in particular can have consented
            refusal = Reason.SPECIAL_CATEGORY, f"special.{plan.special[0]}"
        if refusal is None:
            refusal = self._quiet(snapshot, marker, zone, self._now_ms())[1]
        if refusal is None and content.milli > snapshot.anonymous_threshold:
            refusal = Reason.CREEPINESS, "creepiness.threshold"
        if refusal is not None:
            return await self._segment(snapshot, plan, snapshot.words(*refusal), content)
        if marker.transactional:
            return self._personalized(snapshot, plan, Reason.TRANSACTIONAL, content)
        if marker.relevance is not None and not snapshot.outweighs(
            marker.relevance, content.milli, level, trust=0
        ):
            return await self._segment(
                snapshot, plan, snapshot.words(Reason.CALCULUS, "calculus"), content
            )
        return await self._allowed(snapshot, plan, content, level)

    async def _decide_for(
        self,
        snapshot: Snapshot,
        plan: Plan,
        pseudonym: str,
        gpc: bool,
        zone: str | None,
        purposes: frozenset[int] | None,
        dry_run: bool = False,
        hold: Hold | None = None,
    ) -> tuple[Decision, StoreOutcome | None]:
        """The decision, and the store's outcome when the store made it (None if not)."""
        refusal = self._gate(snapshot, plan, purposes)
        if refusal is not None:
            words = snapshot.words(*refusal)
            return await self._segment(snapshot, plan, words, plan.content), None
        now_ms = self._now_ms()
        # Quiet hours are the store's to refuse, after the person's own choices: in shadow mode
        # a limit is reported and delivered, a person's no never is.
        local, quiet = self._quiet(snapshot, plan.marker, zone, now_ms)
        return await self._ask_store(
            snapshot, plan, pseudonym, now_ms, local, gpc, quiet is not None, dry_run, hold
        )

    def _gate(
        self, snapshot: Snapshot, plan: Plan, purposes: frozenset[int] | None
    ) -> tuple[Reason, str] | None:
        """The gates that need no stored state: Art. 22, then TCF consent."""
        marker = plan.marker
        if marker.decides:
            # GDPR Art. 22: prices, credit and eligibility are not set by profiling.
            return Reason.AUTOMATED_DECISION, f"decides.{marker.decides}"
        tcf = snapshot.tcf
        if purposes is not None or tcf.required:
            needed = tcf.advertising if marker.advertising else tcf.content
            if purposes is None or not purposes.issuperset(needed):
                return Reason.CONSENT, "consent.tcf"
        return None

    def _quiet(
        self, snapshot: Snapshot, marker: Marker, zone: str | None, now_ms: int
    ) -> tuple[LocalTime | None, tuple[Reason, str] | None]:
        """The person's local time, and the quiet-hours refusal if it is theirs now."""
        local = snapshot.local.at(now_ms, zone) if snapshot.local is not None else None
        quiet = snapshot.quiet_hours
        if (
            quiet is not None
            and local is not None
            and not marker.transactional
            and (not quiet.channels or marker.channel in quiet.channels)
            and quiet.covers(local.minute_of_day)
        ):
            return local, (Reason.QUIET_HOURS, "quiet_hours")
        return local, None

    async def _ask_store(
        self,
        snapshot: Snapshot,
        plan: Plan,
        pseudonym: str,
        now_ms: int,
        local: LocalTime | None,
        gpc: bool,
        quiet: bool,
        dry_run: bool = False,
        hold: Hold | None = None,
    ) -> tuple[Decision, StoreOutcome | None]:
        marker, content = plan.marker, plan.content
        wanted = self._audiences_of(marker.segment)
        delivery = Delivery(
            pseudonym,
            now_ms,
            content.milli,
            plan.limits,
            () if dry_run else wanted,
            self._stale(wanted),
            local.period_starts if local is not None and snapshot.calendar else (),
            plan.minimal_ok,
            marker.transactional,
            plan.special,
            plan.forbidden_by_gpc,
            milli(marker.relevance) if marker.relevance is not None else -1,
            gpc and not dry_run,
            quiet,
            None if dry_run else plan.recent,
            dry_run,
            hold,
        )
        guard = self.guard
        outcome = None
        sent_at = self._monotonic()
        if guard.available():
            try:
                outcome = await self.store.deliver(delivery)
            except DecisionRefused:
                pass  # one person's state is broken; the store is fine for everyone else
            except Exception as error:  # whatever the store failed with, the decision stands
                guard.failed(error)
            else:
                guard.succeeded()
        if outcome is None:
            if quiet:  # no store needed to say it is their quiet hours; never failing open
                words = snapshot.words(Reason.QUIET_HOURS, "quiet_hours")._replace(shadow=False)
                return await self._segment(snapshot, plan, words, content), None
            if dry_run or hold is not None:
                # Nothing could be checked or counted: a preflight or a reservation never
                # fails open, whatever on_error.
                words = snapshot.words(Reason.STORE_UNAVAILABLE, "store.on_error")
                words = words._replace(shadow=False)
                return self._decision(
                    snapshot, plan, words, content, self._resolve(snapshot, wanted)
                ), None
            return await self._store_failed(snapshot, plan, pseudonym, wanted, gpc), None
        self._remember_open(pseudonym, outcome, sent_at)
        if outcome.segment_sizes:
            self._remember_sizes(outcome.segment_sizes)
        scored = snapshot.scorer.total(content, outcome.repetitions)
        key = outcome_key(
            outcome.verdict,
            outcome.cap_index,
            outcome.level,
            scored.milli,
            marker.transactional,
            snapshot.band_by_level,
            snapshot.shadow_caps,
        )
        words = plan.words[key]
        segment = None if words.outcome == "personalized" else self._resolve(snapshot, wanted)
        return self._decision(snapshot, plan, words, scored, segment), outcome

    async def _store_failed(
        self, snapshot: Snapshot, plan: Plan, pseudonym: str, wanted: tuple[str, ...], gpc: bool
    ) -> Decision:
        content = plan.content
        # What needs the person's state to allow is refused without it, whatever on_error.
        if plan.special:
            words = snapshot.words(Reason.SPECIAL_CATEGORY, f"special.{plan.special[0]}")
            return await self._segment(snapshot, plan, words, content)
        if gpc and plan.forbidden_by_gpc:
            return await self._segment(
                snapshot, plan, snapshot.words(Reason.CONSENT, "consent.gpc"), content
            )
        # Failing open (on_error, or shadow mode) only for someone seen lately without
        # choices that restrict them: an objection or an opt-out is never guessed away.
        known_level = self._known_open_level(snapshot, pseudonym)
        if snapshot.policy.store.on_error == "personalize" and known_level is not None:
            return await self._failed_open(snapshot, plan, known_level)
        words = snapshot.words(Reason.STORE_UNAVAILABLE, "store.on_error")
        if known_level is None:
            words = words._replace(shadow=False)
        return self._decision(snapshot, plan, words, content, self._resolve(snapshot, wanted))

    async def _failed_open(self, snapshot: Snapshot, plan: Plan, level: int) -> Decision:
        """The store failed; the policy fails open for this person, known to be unrestricted:
        everything that needs no stored state still applies (their threshold, the calculus,
        the category band)."""
        marker, content = plan.marker, plan.content
        if content.milli > snapshot.level_thresholds[level]:
            words = snapshot.words(Reason.CREEPINESS, "creepiness.threshold")
            return await self._segment(snapshot, plan, words, content)
        if marker.relevance is not None and not snapshot.outweighs(
            marker.relevance, content.milli, level, trust=snapshot.trust[0]
        ):
            return await self._segment(
                snapshot, plan, snapshot.words(Reason.CALCULUS, "calculus"), content
            )
        if not marker.transactional and snapshot.in_band(content.milli, level):
            return await self._allowed(snapshot, plan, content, level)
        return self._personalized(snapshot, plan, Reason.STORE_UNAVAILABLE, content)

    async def _allowed(
        self, snapshot: Snapshot, plan: Plan, content: ContentScore, level: int
    ) -> Decision:
        """A message within every limit: personalized, or content about its category when its
        score falls in the policy's middle band."""
        if snapshot.in_band(content.milli, level):
            wanted = self._audiences_of(plan.marker.segment)
            return self._decision(
                snapshot, plan, plan.words["g"], content, self._resolve(snapshot, wanted)
            )
        return self._personalized(snapshot, plan, Reason.ALLOWED, content)

    def invalid_marker(self, person: str | None = None, market: str | None = None) -> Decision:
        """The decision for a response whose marker cannot be read: segment content for everyone."""
        snapshot = self._snapshot if market is None else self._snapshot_for(market)
        decision = _blank(snapshot, Reason.INVALID_MARKER, "marker")
        self._record_unplanned(snapshot, decision, person)
        if self._observers:
            self._observed(decision, "", self._monotonic(), person is not None)
        return decision

    def internal_error(self, market: str | None = None) -> Decision:
        """The decision when deciding itself failed: the privacy-safe side, segment content."""
        snapshot = self._snapshot if market is None else self._snapshot_for(market)
        decision = _blank(snapshot, Reason.INTERNAL_ERROR, None)
        self._record_unplanned(snapshot, decision, None)
        if self._observers:
            self._observed(decision, "", self._monotonic(), False)
        return decision

    def _record_unplanned(self, snapshot: Snapshot, decision: Decision, person: str | None) -> None:
        if person is not None:
            self._remember(snapshot, decision, None, self.pseudonym(person))
        elif snapshot.audit is not None:
            self._record(snapshot, decision, None, "")

    async def set_level(self, person: str, level: str) -> None:
        """Record a person's personalization level (`off`, `minimal`, `standard`, `full`)."""
        pseudonym = self.pseudonym(person)
        restricting = LEVEL_CODES[level] < 2
        if restricting:
            self._restrict(pseudonym)
        else:
            self._known_open.pop(pseudonym, None)
        await self._choose(pseudonym, Choice("level", LEVEL_CODES[level]))
        if restricting:  # a decision answered while the choice was being written
            self._restrict(pseudonym)

    async def erase(self, person: str) -> Erasure:
        """Delete everything held about a person (one write); their audit entries are unlinked."""
        pseudonym = self.pseudonym(person)
        self._known_open.pop(pseudonym, None)
        return await self.store.erase(pseudonym)

    async def consent(
        self, person: str, category: str, *, given: bool, market: str | None = None
    ) -> None:
        """Record a person's explicit consent to a special category (of `market`'s policy), or
        its withdrawal."""
        if category not in self.policy_for(market).special:
            raise ValueError(f"{category!r} is not a special category of the policy")
        await self._choose(
            self.pseudonym(person), Choice("consent" if given else "withdraw", category)
        )

    async def opt_in(self, person: str) -> None:
        """Clear a person's sticky GPC opt-out: only they may, and only on their own page."""
        pseudonym = self.pseudonym(person)
        self._restricted_at.pop(pseudonym, None)
        await self._choose(pseudonym, Choice("opt-in"))

    async def level_of(self, person: str, market: str | None = None) -> tuple[str, bool]:
        """A person's level, and whether they chose it (False: the policy's default)."""
        return self.level_in(await self.choices_of(person), market)

    def level_in(self, choices: dict[str, Any], market: str | None = None) -> tuple[str, bool]:
        """The level a person's choices (from `choices_of`) give, and whether they chose it;
        when they chose none, the default of `market`'s policy."""
        if "l" in choices:
            return _LEVEL_NAMES[choices["l"]], True
        return self.policy_for(market).levels.default, False

    async def choices_of(self, person: str) -> dict[str, Any]:
        """What the person's state holds of their choices: `l` level and `u` when, `g` when
        they first sent a GPC opt-out, `s` consents to special categories with when."""
        state = await self.store.state(self.pseudonym(person))
        choices = (state or {}).get("p")
        return dict(choices) if isinstance(choices, dict) else {}

    async def recent(self, person: str) -> list[bytes]:
        """A person's recent decisions, newest first, as packed audit entries."""
        return await self.store.recent(self.pseudonym(person))

    async def state_of(self, person: str) -> dict[str, Any] | None:
        """Everything the store holds of a person's state (counters, budget, choices)."""
        return await self.store.state(self.pseudonym(person))

    async def _choose(self, pseudonym: str, choice: Choice) -> None:
        await self.store.choose(
            pseudonym, choice, now_ms=self._now_ms(), keep_ms=self._snapshot.keep_choice_ms
        )

    async def _keep_opt_out(self, pseudonym: str) -> None:
        """Write a GPC opt-out that a decision made without the store could not keep, before
        the answer leaves (11 CCR 7025); a store failure leaves it to the next request."""
        with contextlib.suppress(StoreUnavailable):
            if self.guard.available():
                await self.guard.run(
                    self._choose,
                    pseudonym,
                    Choice("opt-out"),
                    timeout=self.policy.store.timeout,
                )

    def _remember(
        self, snapshot: Snapshot, decision: Decision, marker: Marker | None, pseudonym: str
    ) -> None:
        """A signed-in person's decision made without the store: into their recent decisions
        and the trail; without a trail, their choices are renewed now and then."""
        audit = snapshot.audit
        if audit is None:
            now = self._monotonic()
            if now - self._touched.get(pseudonym, -_TOUCH_SECONDS) < _TOUCH_SECONDS:
                return
            _bounded(self._touched, _PEOPLE_REMEMBERED)[pseudonym] = now
            tail = None
        else:
            tail = self._tail(snapshot, decision, marker)
        try:
            self.store.remember(
                pseudonym, self._now_ms(), tail, audit, keep_ms=snapshot.keep_choice_ms
            )
        except Exception:  # the trail must never cost a decision
            self._touched.pop(pseudonym, None)
            self._logs.warning("remember", "throttle: remembering a decision failed", exc_info=True)

    def _record(
        self, snapshot: Snapshot, decision: Decision, marker: Marker | None, token: str
    ) -> None:
        audit = snapshot.audit
        if audit is None:
            return
        try:
            self.store.record(self._now_ms(), token, self._tail(snapshot, decision, marker), audit)
        except Exception:  # the trail must never cost a decision
            self._logs.warning(
                "audit", "throttle: appending to the audit trail failed", exc_info=True
            )

    def _tail(self, snapshot: Snapshot, decision: Decision, marker: Marker | None) -> bytes:
        # Decisions repeat: the same marker, outcome and factors for many people. What they
        # share is packed once; only the time and the person are packed per decision. (The
        # factors follow from the marker and the score under one policy version.)
        key = (
            id(marker), decision.outcome, decision.reason, decision.rule, decision.score,
            decision.segment, decision.shadow, decision.policy_version,
        )  # fmt: skip
        known = self._audit_tails.get(key)
        if known is not None and known[0] is marker:
            return known[1]
        tail = pack_tail(_audit_entry(decision, marker).tail())
        _bounded(self._audit_tails, _TAILS_REMEMBERED)[key] = (marker, tail)
        return tail

    def _known_open_level(self, snapshot: Snapshot, pseudonym: str) -> int | None:
        """The level of someone seen lately without restricting choices, else None."""
        if snapshot.default_level < 2:
            return None
        seen = self._known_open.get(pseudonym)
        if seen is None or self._monotonic() - seen[0] >= _KNOWN_OPEN_SECONDS:
            return None
        return seen[1]

    def _remember_open(self, pseudonym: str, outcome: StoreOutcome, sent_at: float) -> None:
        restricted_at = self._restricted_at.get(pseudonym)
        if outcome.restricted or (restricted_at is not None and restricted_at >= sent_at):
            # Restricted, or restricted here since the decision was sent: never open.
            self._known_open.pop(pseudonym, None)
            return
        _bounded(self._known_open, _PEOPLE_REMEMBERED)[pseudonym] = (
            self._monotonic(),
            outcome.level,
        )

    def _restrict(self, pseudonym: str) -> None:
        self._known_open.pop(pseudonym, None)
        _bounded(self._restricted_at, _PEOPLE_REMEMBERED)[pseudonym] = self._monotonic()

    def cache_sizes(self) -> dict[str, tuple[int, int]]:
        """Entries and bound of each per-process memory, by name: the engine's, the compiled
        policy's (the fullest of the default's and the markets') and the store's (for metrics:
        a memory at its bound starts again)."""
        sizes = {
            "people_open": (len(self._known_open), _PEOPLE_REMEMBERED),
            "people_restricted": (len(self._restricted_at), _PEOPLE_REMEMBERED),
            "people_touched": (len(self._touched), _PEOPLE_REMEMBERED),
            "audiences": (len(self._audiences), _AUDIENCES_REMEMBERED),
            "audit_tails": (len(self._audit_tails), _TAILS_REMEMBERED),
        }
        for snapshot in (self._snapshot, *self._markets.values()):
            for name, size in snapshot.cache_sizes().items():
                sizes[name] = max(sizes.get(name, size), size)
        store_sizes = getattr(self.store, "cache_sizes", None)
        if callable(store_sizes):
            sizes.update(store_sizes())
        return sizes

    async def aclose(self) -> None:
        """Close the store (it writes what it holds back first)."""
        await self.store.aclose()

    def _now_ms(self) -> int:
        return math.floor(self._clock() * 1000)

    def _stale(self, segments: tuple[str, ...]) -> tuple[str, ...]:
        """The segments whose audience sizes are unknown or older than the refresh period."""
        if not segments:
            return ()
        oldest = self._monotonic() - _AUDIENCE_REFRESH_SECONDS
        audiences = self._audiences
        stale = [s for s in segments if (known := audiences.get(s)) is None or known[1] < oldest]
        return tuple(stale) if stale else ()

    def _remember_sizes(self, sizes: Mapping[str, int]) -> None:
        if sizes:
            now = self._monotonic()
            audiences = _bounded(self._audiences, _AUDIENCES_REMEMBERED)
            for segment, size in sizes.items():
                audiences[segment] = (size, now)

    def _audiences_of(self, segment: str) -> tuple[str, ...]:
        """The segment and its ancestors as audience names, tagged with this secret's mark.

        People are counted as pseudonyms, which change with the secret: counting under a tag
        of the secret starts a new secret's counts at zero instead of adding everyone twice.
        """
        return lineage(f"{self._audience_tag}:{segment}") if segment else ()

    def _resolve(self, snapshot: Snapshot, audiences: tuple[str, ...]) -> str:
        """The k-anonymous segment among these audiences, as the app named it ("" is everyone)."""
        sizes = {s: known[0] for s in audiences if (known := self._audiences.get(s)) is not None}
        chosen = k_anonymous(
            audiences[0] if audiences else EVERYONE, sizes, snapshot.policy.fallback.k
        )
        return chosen.partition(":")[2]

    async def _segment(
        self, snapshot: Snapshot, plan: Plan, words: Words, content: ContentScore
    ) -> Decision:
        wanted = self._audiences_of(plan.marker.segment)
        stale = self._stale(wanted)
        # Unknown sizes resolve to broader segments: the privacy-safe side of a failure.
        with contextlib.suppress(StoreUnavailable):
            if stale:
                self._remember_sizes(
                    await self.guard.run(
                        self.store.segment_sizes,
                        stale,
                        window_ms=snapshot.audience_window_ms,
                        timeout=snapshot.policy.store.timeout,
                    )
                )
        return self._decision(snapshot, plan, words, content, self._resolve(snapshot, wanted))

    def _personalized(
        self,
        snapshot: Snapshot,
        plan: Plan,
        reason: Reason,
        content: ContentScore,
    ) -> Decision:
        return self._decision(
            snapshot, plan, snapshot.words(reason, None, "personalized"), content, None
        )

    def _decision(
        self,
        snapshot: Snapshot,
        plan: Plan,
        words: Words,
        content: ContentScore,
        segment: str | None,
    ) -> Decision:
        marker = plan.marker
        return Decision(
            outcome=words.outcome,
            reason=words.reason,
            rule=words.rule,
            score=content.milli / 1000,
            factors=content.factors,
            campaign=marker.campaign,
            channel=marker.channel,
            segment=segment,
            shadow=words.shadow,
            policy=snapshot.name,
            policy_version=snapshot.version,
            unknown_signals=content.unknown_signals,
            category=marker.category,
        )


def _blank(snapshot: Snapshot, reason: Reason, rule: str | None) -> Decision:
    """A decision about no readable message: segment content for everyone."""
    return Decision(
        outcome="segment",
        reason=reason,
        rule=rule,
        score=None,
        factors=(),
        campaign=None,
        channel=None,
        segment=EVERYONE,
        shadow=False,
        policy=snapshot.name,
        policy_version=snapshot.version,
    )


def _audit_entry(decision: Decision, marker: Marker | None) -> AuditEntry:
    return AuditEntry(
        time_ms=0,
        person="",
        campaign=decision.campaign,
        channel=decision.channel,
        segment=marker.segment if marker is not None else None,
        fallback_segment=decision.segment,
        outcome=decision.outcome,
        reason=decision.reason.value,
        rule=decision.rule,
        score_milli=milli(decision.score) if decision.score is not None else None,
        factors=tuple((f.name, milli(f.contribution)) for f in decision.factors),
        signals=marker.signals if marker is not None else (),
        inferred=marker.inferred if marker is not None else False,
        third_party=marker.third_party if marker is not None else False,
        explained=marker.explained if marker is not None else False,
        event_age=marker.event_age if marker is not None else None,
        shadow=decision.shadow and decision.outcome == "segment",
        policy=f"{decision.policy}@{decision.policy_version}",
    )


def _bounded(memory: dict[K, V], size: int) -> dict[K, V]:
    """`memory`, emptied first when it holds `size` entries: per-process memories stay bounded."""
    if len(memory) >= size:
        memory.clear()
    return memory
