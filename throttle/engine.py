"""decide(message) -> Decision. Knows neither ASGI nor Redis: only the policy and a Store."""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, Literal, NamedTuple

from throttle.audit import AuditEntry, pack_entry, pack_tail
from throttle.consent import gpc_forbids
from throttle.errors import DecisionRefused, StoreUnavailable
from throttle.fallback import EVERYONE, k_anonymous, lineage
from throttle.faults import LogLimiter, StoreGuard
from throttle.message import Marker
from throttle.periods import PERIODS, LocalClock, LocalTime
from throttle.policy import Cap, Policy, milli
from throttle.scoring import ContentScore, Factor, Scorer
from throttle.store.base import (
    LEVEL_CODES,
    AuditLimits,
    BudgetCheck,
    CapCheck,
    Choice,
    Counter,
    Delivery,
    Erasure,
    Limits,
    RepetitionCheck,
    Store,
    Verdict,
)
from throttle.store.base import Outcome as StoreOutcome

# Shadow mode delivers what the limits would refuse, never what a person refused, nor to
# nobody in particular, nor what cannot be read.
_ALWAYS_ENFORCED = frozenset(
    {
        "consent", "preference", "special-category", "automated-decision", "anonymous",
        "invalid-marker", "internal-error",
    }
)  # fmt: skip
# A person's GPC opt-out is written to their state at most this often per process.
_OPT_OUT_REWRITE_SECONDS = 60.0
# When the store fails, `on_error = "personalize"` fails open only for people this process saw
# without restricting choices (level off or minimal, a GPC opt-out) this recently.
_KNOWN_OPEN_SECONDS = 600.0
# A person's choices are renewed by the store with each decision it makes; those refused
# before it is asked renew them at most this often.
_TOUCH_SECONDS = 3600.0
_KNOWN_OPEN_SIZE = 65_536
_LEVEL_RULES = ("level.off", "level.minimal")
# Audience sizes only grow slowly; asking Redis again this often keeps k-anonymity current.
_AUDIENCE_REFRESH_SECONDS = 30.0
_LIMITS_CACHE_SIZE = 4096
_SHA256_BLOCK = 64


class Reason(StrEnum):
    """Why a decision came out the way it did; the value is what the decision header says."""

    ALLOWED = "allowed"
    TRANSACTIONAL = "transactional"
    FREQUENCY_CAP = "frequency-cap"
    CREEPINESS = "creepiness"
    BUDGET = "budget"
    QUIET_HOURS = "quiet-hours"
    CONSENT = "consent"
    PREFERENCE = "preference"
    SPECIAL_CATEGORY = "special-category"
    AUTOMATED_DECISION = "automated-decision"
    CALCULUS = "calculus"
    ANONYMOUS = "anonymous"
    STORE_UNAVAILABLE = "store-unavailable"
    INVALID_MARKER = "invalid-marker"
    INTERNAL_ERROR = "internal-error"


Outcome = Literal["personalized", "category", "segment"]


class Decision(NamedTuple):
    """What throttle decided for one marked response, and why.

    - `outcome`: `"personalized"`, `"category"` (content about the message's category, for
      scores in the policy's middle band) or `"segment"`.
    - `reason`, `rule`: why, and the rule that fired (a cap's name, `creepiness.budget`, ...).
    - `score`, `factors`: the creepiness score and each factor's contribution to it.
    - `segment`: for segment outcomes, the k-anonymous segment whose content stands in.
    - `shadow`: the policy, or the cap that refused, is in shadow mode, so the personalized
      content is delivered anyway (never for `consent`, `preference`, `special-category`,
      `automated-decision`, `anonymous`, `invalid-marker` or `internal-error`).
    - `category`: the marker's category, for `category` outcomes.
    - `unknown_signals`: signals the policy has no weight for (scored at its default).

    The middleware puts it in the ASGI scope under `"throttle.decision"`. Immutable (a named
    tuple: cheap to make on every request).
    """

    outcome: Outcome
    reason: Reason
    rule: str | None
    score: float | None
    factors: tuple[Factor, ...]
    campaign: str | None
    channel: str | None
    segment: str | None
    shadow: bool
    policy: str
    policy_version: str
    unknown_signals: tuple[str, ...] = ()
    category: str = ""

    @property
    def delivers_personalized(self) -> bool:
        """Whether the person receives the personalized content."""
        return self.outcome == "personalized" or self.shadow


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
    ) -> None:
        self.store = store
        self._audit_wanted = audit
        self._logs = LogLimiter()
        self._opted_out: dict[str, float] = {}
        # Pseudonym -> (when seen, their level): seen lately with no restricting choice.
        self._known_open: dict[str, tuple[float, int]] = {}
        # Pseudonym -> when this process last restricted them (level off or minimal, GPC): a
        # decision sent before that cannot mark them open again.
        self._restricted_at: dict[str, float] = {}
        self._touched: dict[str, float] = {}
        self._audit_tails: dict[tuple[int, Decision], tuple[Marker | None, bytes]] = {}
        key = hashlib.sha256(secret).digest() if len(secret) > _SHA256_BLOCK else secret
        key = key.ljust(_SHA256_BLOCK, b"\0")
        self._hmac_inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in key))
        self._hmac_outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in key))
        self._clock = clock
        self._monotonic = monotonic
        self._audience_tag = self.pseudonym("\0audiences")[:8]
        self._audiences: dict[str, tuple[int, float]] = {}
        self._limits: dict[tuple[str, str, tuple[str, ...]], Limits] = {}
        self.policy = policy
        self.guard = StoreGuard(retry_after=policy.store.retry_after, clock=monotonic)

    @property
    def policy(self) -> Policy:
        return self._policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        # Everything a decision would otherwise recompute from the policy is prepared here.
        self._policy = policy
        self._scorer = Scorer(policy.creepiness)
        self._threshold = milli(policy.creepiness.threshold)
        levels = policy.levels
        self._default_level = LEVEL_CODES[levels.default]
        self._given = frozenset(levels.given)
        self._tcf = policy.consent.tcf
        # A signal may reveal several categories; each needs its own consent.
        special_signals: dict[str, list[str]] = {}
        for name, category in policy.special.items():
            for signal in category.signals:
                special_signals.setdefault(signal, []).append(name)
        self._special_signals = {s: tuple(names) for s, names in special_signals.items()}
        self._gpc_sensitive = frozenset(special_signals)
        self._facts: dict[int, tuple[Marker, _Facts]] = {}
        # Thresholds by level code; `off` personalizes nothing, so its entry is never read.
        self._level_thresholds = (
            0,
            milli(levels.minimal_threshold),
            self._threshold,
            milli(levels.full_threshold),
        )
        # Above the highest no level personalizes, so the store need not be asked.
        self._highest_threshold = max(self._level_thresholds)
        self._anonymous_threshold = self._level_thresholds[self._default_level]
        band = policy.creepiness.category_band
        self._band = (milli(band.low), milli(band.high)) if band else None
        calculus = policy.calculus
        self._lambda = (milli(calculus.minimal), milli(calculus.standard), milli(calculus.full))
        self._trust = (milli(calculus.signed_in), milli(calculus.declared))
        self._audit_limits = (
            AuditLimits(
                policy.audit.max_entries,
                math.ceil(policy.audit.max_age * 1000),
                policy.audit.per_person,
                # A person's recent decisions are kept as long as the trail keeps them.
                math.ceil(policy.audit.max_age * 1000),
            )
            if policy.audit.enabled and self._audit_wanted
            else None
        )
        self._audience_window_ms = math.ceil(policy.fallback.audience_window * 1000)
        self._shadow = policy.policy.mode == "shadow"
        self._anonymous_get_segment = policy.consent.anonymous == "segment"
        self._quiet_hours = policy.quiet_hours
        self._calendar = any(cap.calendar for cap in policy.caps)
        self._tagged = any(cap.except_tags or cap.reserve for cap in policy.caps)
        self._local = (
            LocalClock(policy.time.zone, week_starts=policy.time.week_starts)
            if self._calendar or self._quiet_hours
            else None
        )
        budget = policy.creepiness.budget
        self._budget = (
            BudgetCheck(milli(budget.limit), math.ceil(budget.window * 1000), budget.entries)
            if budget
            else None
        )
        self._limits.clear()
        self._policy_name, self._policy_version = policy.name, policy.version
        if hasattr(self, "guard"):
            self.guard.retry_after = policy.store.retry_after

    @property
    def uses_time_zones(self) -> bool:
        """Whether the policy counts time in people's zones (calendar caps, quiet hours)."""
        return self._local is not None

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
    ) -> Decision:
        """Decide one message for one person (`None`: not signed in).

        - `gpc`: the request carries `Sec-GPC: 1`.
        - `zone`: the person's IANA time zone, for calendar caps and quiet hours; unknown or
          `None` means the policy's zone.
        - `purposes`: the TCF purposes the person consented to, from their consent string;
          `None` when the request carries none.

        Every decision is appended to the audit trail, the person named by their pseudonym.
        """
        pseudonym = self.pseudonym(person) if person is not None else None
        decision, asked = await self._decide(marker, pseudonym, gpc, zone, purposes)
        if pseudonym is not None and not asked:
            self._touch(pseudonym)
        if self._audit_limits is not None:
            self._record(decision, marker, pseudonym)
        return decision

    async def _decide(
        self,
        marker: Marker,
        pseudonym: str | None,
        gpc: bool,
        zone: str | None,
        purposes: frozenset[int] | None,
    ) -> tuple[Decision, bool]:
        """The decision, and whether the store was asked (it renews the person's choices)."""
        # One policy for the whole decision, even if a reload swaps it meanwhile.
        policy, scorer = self._policy, self._scorer
        content = scorer.score(marker)
        if marker.decides:
            # GDPR Art. 22: prices, credit and eligibility are not set by profiling.
            return await self._segment(
                marker, Reason.AUTOMATED_DECISION, f"decides.{marker.decides}", content
            ), False
        facts = self._facts_of(marker)
        forbidden_by_gpc, special = facts.forbidden_by_gpc, facts.special
        if gpc and pseudonym is not None:
            self._keep_opt_out(pseudonym)
        if gpc and forbidden_by_gpc:
            return await self._segment(marker, Reason.CONSENT, "consent.gpc", content), False
        tcf = self._tcf
        if purposes is not None or tcf.required:
            needed = tcf.advertising if marker.advertising else tcf.content
            if purposes is None or not purposes.issuperset(needed):
                return await self._segment(marker, Reason.CONSENT, "consent.tcf", content), False
        if pseudonym is None:
            if self._anonymous_get_segment:
                return await self._segment(
                    marker, Reason.ANONYMOUS, "consent.anonymous", content
                ), False
            level = self._default_level
            if level == 0 or (level == 1 and not facts.minimal_ok):
                return await self._segment(
                    marker, Reason.PREFERENCE, _LEVEL_RULES[level], content
                ), False
            if special:  # nobody in particular can have consented
                return await self._segment(
                    marker, Reason.SPECIAL_CATEGORY, f"special.{special[0]}", content
                ), False
        now_ms = math.floor(self._clock() * 1000)
        local = self._local.at(now_ms, zone) if self._local is not None else None
        quiet = self._quiet_hours
        if (
            quiet is not None
            and local is not None
            and not marker.transactional
            and (not quiet.channels or marker.channel in quiet.channels)
            and quiet.covers(local.minute_of_day)
        ):
            return await self._segment(marker, Reason.QUIET_HOURS, "quiet_hours", content), False
        if content.milli > (
            self._highest_threshold if pseudonym is not None else self._anonymous_threshold
        ):
            return await self._segment(
                marker, Reason.CREEPINESS, "creepiness.threshold", content
            ), False
        if pseudonym is None:
            if marker.transactional:
                return self._personalized(marker, Reason.TRANSACTIONAL, content), False
            if marker.relevance is not None and not self._outweighs(
                marker.relevance, content.milli, self._default_level, trust=0
            ):
                return await self._segment(marker, Reason.CALCULUS, "calculus", content), False
            return await self._allowed(marker, content, self._default_level), False

        return await self._ask_store(
            policy, scorer, marker, pseudonym, content, now_ms, local, facts
        ), True

    async def _ask_store(
        self,
        policy: Policy,
        scorer: Scorer,
        marker: Marker,
        pseudonym: str,
        content: ContentScore,
        now_ms: int,
        local: LocalTime | None,
        facts: _Facts,
    ) -> Decision:
        # The person's own level lives with their state: even a transactional message asks.
        wanted = self._audiences_of(marker.segment)
        delivery = self._delivery(
            pseudonym,
            now_ms,
            marker,
            content,
            wanted,
            self._stale(wanted),
            local.period_starts if local is not None and self._calendar else (),
            facts,
        )
        special = facts.special
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
            # What needs the person's state to allow is refused without it, whatever on_error.
            if special:
                return await self._segment(
                    marker, Reason.SPECIAL_CATEGORY, f"special.{special[0]}", content
                )
            # Failing open (on_error, or shadow mode) only for someone seen lately without
            # choices that restrict them: an objection or an opt-out is never guessed away.
            known_level = self._known_open_level(pseudonym)
            may_open = known_level is not None
            if policy.store.on_error == "personalize" and known_level is not None:
                return await self._failed_open(marker, content, known_level)
            return self._decision(
                "segment",
                Reason.STORE_UNAVAILABLE,
                "store.on_error",
                marker,
                content,
                content.factors,
                self._resolve(wanted),
                enforce=not may_open,
            )
        self._remember_open(pseudonym, outcome, sent_at)
        if outcome.segment_sizes:
            self._remember(outcome.segment_sizes)
        scored = scorer.total(content, outcome.repetitions)
        if outcome.verdict is Verdict.DELIVERED:
            if marker.transactional:
                return self._personalized(marker, Reason.TRANSACTIONAL, scored)
            return await self._allowed(marker, scored, outcome.level)
        shadow = False
        if outcome.verdict is Verdict.FREQUENCY_CAP:
            # A shadow cap's refusal: reported, and the message was delivered and counted.
            cap = policy.caps[outcome.cap_index]
            reason, rule, shadow = Reason.FREQUENCY_CAP, cap.name, cap.shadow
            if shadow and self._in_band(scored, outcome.level):
                # Watching a cap never loosens the rest: the band's content still stands in.
                return await self._allowed(marker, scored, outcome.level)
        elif outcome.verdict is Verdict.BUDGET:
            reason, rule = Reason.BUDGET, "creepiness.budget"
        elif outcome.verdict is Verdict.PREFERENCE:
            reason, rule = Reason.PREFERENCE, _LEVEL_RULES[outcome.cap_index]
        elif outcome.verdict is Verdict.SPECIAL:
            reason, rule = Reason.SPECIAL_CATEGORY, f"special.{special[outcome.cap_index]}"
        elif outcome.verdict is Verdict.GPC:
            reason, rule = Reason.CONSENT, "consent.gpc"
        elif outcome.verdict is Verdict.CALCULUS:
            reason, rule = Reason.CALCULUS, "calculus"
        else:
            reason, rule = Reason.CREEPINESS, "creepiness.threshold"
        return self._decision(
            "segment",
            reason,
            rule,
            marker,
            scored,
            scored.factors,
            self._resolve(wanted),
            shadow=shadow,
        )

    def invalid_marker(self, person: str | None = None) -> Decision:
        """The decision for a response whose marker cannot be read: segment content for everyone."""
        decision = self._decision(
            "segment", Reason.INVALID_MARKER, "marker", None, None, (), EVERYONE
        )
        if self._audit_limits is not None:
            self._record(decision, None, self.pseudonym(person) if person is not None else None)
        return decision

    def internal_error(self) -> Decision:
        """The decision when deciding itself failed: the privacy-safe side, segment content."""
        decision = self._decision("segment", Reason.INTERNAL_ERROR, None, None, None, (), EVERYONE)
        if self._audit_limits is not None:
            self._record(decision, None, None)
        return decision

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
        """Delete everything held about a person: state, choices, recent decisions, audit."""
        pseudonym = self.pseudonym(person)
        self._opted_out.pop(pseudonym, None)
        self._known_open.pop(pseudonym, None)
        return await self.store.erase(pseudonym)

    async def consent(self, person: str, category: str, *, given: bool) -> None:
        """Record a person's explicit consent to a special category, or its withdrawal."""
        if category not in self._policy.special:
            raise ValueError(f"{category!r} is not a special category of the policy")
        await self._choose(
            self.pseudonym(person), Choice("consent" if given else "withdraw", category)
        )

    async def opt_in(self, person: str) -> None:
        """Clear a person's sticky GPC opt-out: only they may, and only on their own page."""
        pseudonym = self.pseudonym(person)
        self._opted_out.pop(pseudonym, None)
        await self._choose(pseudonym, Choice("opt-in"))

    async def level_of(self, person: str) -> tuple[str, bool]:
        """A person's level, and whether they chose it (False: the policy's default)."""
        return self.level_in(await self.choices_of(person))

    def level_in(self, choices: dict[str, Any]) -> tuple[str, bool]:
        """The level a person's choices (from `choices_of`) give, and whether they chose it."""
        if "l" in choices:
            return _LEVEL_NAMES[choices["l"]], True
        return self._policy.levels.default, False

    async def choices_of(self, person: str) -> dict[str, Any]:
        """What the person's state holds of their choices: `l` level and `u` when, `g` when
        they first sent a GPC opt-out, `s` consents to special categories with when."""
        state = await self.store.state(self.pseudonym(person))
        choices = (state or {}).get("p")
        return dict(choices) if isinstance(choices, dict) else {}

    async def _choose(self, pseudonym: str, choice: Choice) -> None:
        await self.store.choose(
            pseudonym,
            choice,
            now_ms=math.floor(self._clock() * 1000),
            keep_ms=math.ceil(self._policy.levels.keep * 1000),
        )

    def _keep_opt_out(self, pseudonym: str) -> None:
        """Write the person's GPC opt-out to their choices, so it holds on requests without
        the header (11 CCR 7025)."""
        if self._note(pseudonym, Choice("opt-out"), self._opted_out, _OPT_OUT_REWRITE_SECONDS):
            self._restrict(pseudonym)

    def _touch(self, pseudonym: str) -> None:
        """Renew the person's choices, if they have any, when a decision was refused before the
        store was asked (quiet hours, TCF, too creepy for anyone): the store renews them with
        each decision it makes; this covers the rest."""
        self._note(pseudonym, Choice("touch"), self._touched, _TOUCH_SECONDS)

    def _note(
        self, pseudonym: str, choice: Choice, written: dict[str, float], every: float
    ) -> bool:
        """Have the store write `choice` without waiting, at most `every` seconds per person
        (`written` remembers when); True when it was queued."""
        now = self._monotonic()
        if now - written.get(pseudonym, -every) < every:
            return False
        if len(written) >= _KNOWN_OPEN_SIZE:
            written.clear()
        written[pseudonym] = now
        try:
            self.store.note(
                pseudonym,
                choice,
                now_ms=math.floor(self._clock() * 1000),
                keep_ms=math.ceil(self._policy.levels.keep * 1000),
            )
        except Exception:  # the request itself is honoured; the next one tries again
            written.pop(pseudonym, None)
            self._logs.warning(choice.kind, "throttle: writing a choice failed", exc_info=True)
            return False
        return True

    async def aclose(self) -> None:
        """Close the store (it writes what it holds back first)."""
        await self.store.aclose()

    def _facts_of(self, marker: Marker) -> _Facts:
        """What the policy says of the data a message uses; markers repeat, so per marker."""
        known = self._facts.get(id(marker))
        if known is not None and known[0] is marker:
            return known[1]
        names = self._special_signals
        facts = _Facts(
            minimal_ok=not marker.inferred
            and not marker.third_party
            and self._given.issuperset(marker.signals),
            special=tuple(
                dict.fromkeys(name for s in marker.signals if s in names for name in names[s])
            ),
            forbidden_by_gpc=gpc_forbids(
                marker, self._policy.consent, self._scorer, self._gpc_sensitive
            ),
        )
        if len(self._facts) >= _LIMITS_CACHE_SIZE:
            self._facts.clear()
        self._facts[id(marker)] = (marker, facts)
        return facts

    def _outweighs(self, relevance: float, score_milli: int, level: int, *, trust: int) -> bool:
        """The privacy calculus: relevance x (1 + trust) > lambda x creepiness."""
        lam = self._lambda[max(level, 1) - 1]
        return milli(relevance) * (1000 + trust) > lam * score_milli

    def _in_band(self, content: ContentScore, level: int) -> bool:
        """Whether the score falls in the middle band, which moves with the person's threshold
        (a person at `full` has it just below their higher threshold)."""
        band = self._band
        if band is None:
            return False
        shift = self._level_thresholds[level] - self._threshold
        return band[0] + shift < content.milli <= band[1] + shift

    def _known_open_level(self, pseudonym: str) -> int | None:
        """The level of someone seen lately without restricting choices, else None."""
        if self._default_level < 2:
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
        if len(self._known_open) >= _KNOWN_OPEN_SIZE:
            self._known_open.clear()
        self._known_open[pseudonym] = (self._monotonic(), outcome.level)

    def _restrict(self, pseudonym: str) -> None:
        self._known_open.pop(pseudonym, None)
        if len(self._restricted_at) >= _KNOWN_OPEN_SIZE:
            self._restricted_at.clear()
        self._restricted_at[pseudonym] = self._monotonic()

    async def _failed_open(self, marker: Marker, content: ContentScore, level: int) -> Decision:
        """The store failed; the policy fails open for this person, known to be unrestricted:
        everything that needs no stored state still applies (their threshold, the calculus,
        the category band)."""
        if content.milli > self._level_thresholds[level]:
            return await self._segment(marker, Reason.CREEPINESS, "creepiness.threshold", content)
        if marker.relevance is not None and not self._outweighs(
            marker.relevance, content.milli, level, trust=self._trust[0]
        ):
            return await self._segment(marker, Reason.CALCULUS, "calculus", content)
        if not marker.transactional and self._in_band(content, level):
            return await self._allowed(marker, content, level)
        return self._personalized(marker, Reason.STORE_UNAVAILABLE, content)

    async def _allowed(self, marker: Marker, content: ContentScore, level: int) -> Decision:
        """A message within every limit: personalized, or content about its category when its
        score falls in the policy's middle band."""
        if self._in_band(content, level):
            wanted = self._audiences_of(marker.segment)
            return self._decision(
                "category",
                Reason.CREEPINESS,
                "creepiness.category_band",
                marker,
                content,
                content.factors,
                self._resolve(wanted),
            )
        return self._personalized(marker, Reason.ALLOWED, content)

    def _record(self, decision: Decision, marker: Marker | None, pseudonym: str | None) -> None:
        limits = self._audit_limits
        if limits is None:
            return
        try:
            # Decisions repeat: the same marker, outcome and factors for many people. What they
            # share is packed once; only the time and the person are packed per decision.
            key = (id(marker), decision)
            known = self._audit_tails.get(key)
            if known is not None and known[0] is marker:
                tail = known[1]
            else:
                tail = pack_tail(self._audit_entry(decision, marker, 0, "").tail())
                if len(self._audit_tails) >= _LIMITS_CACHE_SIZE:
                    self._audit_tails.clear()
                self._audit_tails[key] = (marker, tail)
            now_ms = math.floor(self._clock() * 1000)
            self.store.record(pseudonym or "", pack_entry(now_ms, pseudonym or "", tail), limits)
        except Exception:  # the trail must never cost a decision
            self._logs.warning(
                "audit", "throttle: appending to the audit trail failed", exc_info=True
            )

    def _audit_entry(
        self, decision: Decision, marker: Marker | None, time_ms: int, person: str
    ) -> AuditEntry:
        return AuditEntry(
            time_ms=time_ms,
            person=person,
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

    def _delivery(
        self,
        pseudonym: str,
        now_ms: int,
        marker: Marker,
        content: ContentScore,
        audiences: tuple[str, ...],
        count_segments: tuple[str, ...],
        period_starts: tuple[int, ...],
        facts: _Facts,
    ) -> Delivery:
        key = (marker.channel, marker.campaign, marker.tags if self._tagged else ())
        limits = self._limits.get(key)
        if limits is None:
            if len(self._limits) >= _LIMITS_CACHE_SIZE:
                self._limits.clear()
            limits = self._limits[key] = self._build_limits(*key)
        return Delivery(
            pseudonym,
            now_ms,
            content.milli,
            limits,
            audiences,
            count_segments,
            period_starts,
            facts.minimal_ok,
            marker.transactional,
            facts.special,
            facts.forbidden_by_gpc,
            milli(marker.relevance) if marker.relevance is not None else -1,
        )

    def _build_limits(self, channel: str, campaign: str, tags: tuple[str, ...]) -> Limits:
        policy, scorer = self._policy, self._scorer
        repetition_window = policy.creepiness.repetition.window
        # One log per scope and set of exempt tags: a cap that exempts `service` campaigns
        # must not count them, while its neighbour without exemptions does. Shadow caps keep
        # logs of their own, counted as if they were enforced.
        groups: dict[tuple[str, tuple[str, ...], bool], list[tuple[int, Cap]]] = {}
        if scorer.repetition_saturation:
            # The campaign's log also feeds the repetition factor.
            groups["campaign", (), False] = []
        for index, cap in enumerate(policy.caps):
            exempt = tuple(sorted(set(cap.except_tags)))
            if not set(exempt).isdisjoint(tags):
                continue  # this campaign is neither capped nor counted by the cap
            groups.setdefault((cap.per, exempt, cap.shadow), []).append((index, cap))
        scope_names = {"user": "u", "channel": f"c:{channel}", "campaign": f"k:{campaign}"}
        counters = []
        for (scope, exempt, shadow), caps in groups.items():
            name = ("s:" if shadow else "") + scope_names[scope]
            name += "!" + ",".join(exempt) if exempt else ""
            keep = max((cap.limit for _, cap in caps), default=0)
            window = max((cap.span for _, cap in caps), default=0.0)
            if scope == "campaign" and not exempt and not shadow and scorer.repetition_saturation:
                keep = max(keep, scorer.repetition_saturation)
                window = max(window, repetition_window)
            checks = tuple(
                CapCheck(
                    index,
                    _limit_for(cap, tags),
                    math.ceil(cap.span * 1000),
                    PERIODS[cap.calendar] if cap.calendar else 0,
                )
                for index, cap in caps
            )
            counters.append(Counter(name, keep, math.ceil(window * 1000), checks, shadow))
        repetition = (
            RepetitionCheck(
                f"k:{campaign}",
                scorer.repetition_milli,
                math.ceil(repetition_window * 1000),
                scorer.repetition_saturation,
            )
            if scorer.repetition_saturation
            else None
        )
        return Limits(
            ttl_ms=math.ceil(policy.longest_window * 1000),
            threshold_milli=self._threshold,
            counters=tuple(counters),
            budget=self._budget,
            repetition=repetition,
            audience_window_ms=self._audience_window_ms,
            timeout_ms=math.ceil(policy.store.timeout * 1000),
            shadow_caps=any(cap.shadow for cap in policy.caps),
            minimal_threshold_milli=milli(policy.levels.minimal_threshold),
            full_threshold_milli=milli(policy.levels.full_threshold),
            default_level=self._default_level,
            keep_choice_ms=math.ceil(policy.levels.keep * 1000),
            trust_signed_in_milli=self._trust[0],
            trust_declared_milli=self._trust[1],
            lambda_milli=self._lambda,
        )

    def _stale(self, segments: tuple[str, ...]) -> tuple[str, ...]:
        """The segments whose audience sizes are unknown or older than the refresh period."""
        if not segments:
            return ()
        oldest = self._monotonic() - _AUDIENCE_REFRESH_SECONDS
        audiences = self._audiences
        stale = [s for s in segments if (known := audiences.get(s)) is None or known[1] < oldest]
        return tuple(stale) if stale else ()

    def _remember(self, sizes: Mapping[str, int]) -> None:
        if sizes:
            now = self._monotonic()
            for segment, size in sizes.items():
                self._audiences[segment] = (size, now)

    def _audiences_of(self, segment: str) -> tuple[str, ...]:
        """The segment and its ancestors as audience names, tagged with this secret's mark.

        People are counted as pseudonyms, which change with the secret: counting under a tag
        of the secret starts a new secret's counts at zero instead of adding everyone twice.
        """
        return lineage(f"{self._audience_tag}:{segment}") if segment else ()

    def _resolve(self, audiences: tuple[str, ...]) -> str:
        """The k-anonymous segment among these audiences, as the app named it ("" is everyone)."""
        sizes = {s: known[0] for s in audiences if (known := self._audiences.get(s)) is not None}
        chosen = k_anonymous(
            audiences[0] if audiences else EVERYONE, sizes, self._policy.fallback.k
        )
        return chosen.partition(":")[2]

    async def _segment(
        self, marker: Marker, reason: Reason, rule: str, content: ContentScore
    ) -> Decision:
        wanted = self._audiences_of(marker.segment)
        stale = self._stale(wanted)
        # Unknown sizes resolve to broader segments: the privacy-safe side of a failure.
        with contextlib.suppress(StoreUnavailable):
            if stale:
                self._remember(
                    await self.guard.run(
                        self.store.segment_sizes,
                        stale,
                        window_ms=self._audience_window_ms,
                        timeout=self._policy.store.timeout,
                    )
                )
        return self._decision(
            "segment", reason, rule, marker, content, content.factors, self._resolve(wanted)
        )

    def _personalized(self, marker: Marker, reason: Reason, content: ContentScore) -> Decision:
        return self._decision("personalized", reason, None, marker, content, content.factors, None)

    def _decision(
        self,
        outcome: Outcome,
        reason: Reason,
        rule: str | None,
        marker: Marker | None,
        content: ContentScore | None,
        factors: tuple[Factor, ...],
        segment: str | None,
        *,
        shadow: bool = False,
        enforce: bool = False,
    ) -> Decision:
        return Decision(
            outcome=outcome,
            reason=reason,
            rule=rule,
            score=content.milli / 1000 if content is not None else None,
            factors=factors,
            campaign=marker.campaign if marker else None,
            channel=marker.channel if marker else None,
            segment=segment,
            shadow=shadow or (self._shadow and reason not in _ALWAYS_ENFORCED and not enforce),
            policy=self._policy_name,
            policy_version=self._policy_version,
            unknown_signals=content.unknown_signals if content is not None else (),
            category=marker.category if marker is not None else "",
        )


_LEVEL_NAMES = {code: name for name, code in LEVEL_CODES.items()}


class _Facts(NamedTuple):
    """What a policy says of the data one message uses."""

    minimal_ok: bool  # only data people give themselves: a minimal level allows it
    special: tuple[str, ...]  # the special categories it reveals, each needing consent
    forbidden_by_gpc: bool  # a GPC opt-out rules it out


def _limit_for(cap: Cap, tags: tuple[str, ...]) -> int:
    """The cap's limit for a campaign with these tags: its reserve is kept for the favoured."""
    reserve = cap.reserve
    if reserve is None or not set(reserve.tags).isdisjoint(tags):
        return cap.limit
    return cap.limit - reserve.slots
