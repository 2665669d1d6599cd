"""A policy compiled for the hot path: what it implies, computed once per policy version.

`Snapshot(policy)` holds everything a decision reads from the policy, in the units the store
counts in, and plans each message once: its score, the facts the gates need, the limits of
its channel and campaign, and how its decision is worded in the person's recent decisions,
pre-packed. A reload builds a new snapshot and swaps it in with one assignment, so a decision
reads one policy from start to end.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import msgpack

from throttle.audit import ARRAY_HEADER
from throttle.consent import gpc_forbids
from throttle.decision import ALWAYS_ENFORCED, Outcome, Reason
from throttle.message import Marker
from throttle.periods import PERIODS, LocalClock
from throttle.policy import Cap, Policy, milli
from throttle.scoring import ContentScore, Scorer
from throttle.store.base import (
    LEVEL_CODES,
    AuditLimits,
    BudgetCheck,
    CapCheck,
    Counter,
    Limits,
    RecentTemplate,
    RepetitionCheck,
)

# Plans and limits are kept for this many distinct markers and campaigns, then made again.
_CACHE_SIZE = 4096
LEVEL_RULES = ("level.off", "level.minimal")


class Words(NamedTuple):
    """How a store's verdict reads as a decision (see `store.base.outcome_key`)."""

    outcome: Outcome
    reason: Reason
    rule: str | None
    shadow: bool


class Plan(NamedTuple):
    """What the snapshot's policy says of one message, computed once."""

    marker: Marker
    content: ContentScore
    minimal_ok: bool  # only data people give themselves: a minimal level allows it
    special: tuple[str, ...]  # the special categories it reveals, each needing consent
    forbidden_by_gpc: bool  # a GPC opt-out rules it out
    limits: Limits
    words: Mapping[str, Words]
    recent: RecentTemplate | None


class Snapshot:
    """One policy, compiled. Immutable but for its caches of plans and limits."""

    def __init__(self, policy: Policy, *, audit: bool = True) -> None:
        self.policy = policy
        self.name, self.version = policy.name, policy.version
        self.scorer = scorer = Scorer(policy.creepiness)
        self.threshold = milli(policy.creepiness.threshold)
        levels = policy.levels
        self.default_level = LEVEL_CODES[levels.default]
        self._given = frozenset(levels.given)
        self.tcf = policy.consent.tcf
        # A signal may reveal several categories; each needs its own consent.
        special_signals: dict[str, list[str]] = {}
        for name, category in policy.special.items():
            for signal in category.signals:
                special_signals.setdefault(signal, []).append(name)
        self._special_signals = {s: tuple(names) for s, names in special_signals.items()}
        self._gpc_sensitive = frozenset(special_signals)
        # Thresholds by level code; `off` personalizes nothing, so its entry is never read.
        self.level_thresholds = (
            0,
            milli(levels.minimal_threshold),
            self.threshold,
            milli(levels.full_threshold),
        )
        self.anonymous_threshold = self.level_thresholds[self.default_level]
        band = policy.creepiness.category_band
        self.band = (milli(band.low), milli(band.high)) if band else None
        # The band's (low, high] at levels 1 to 3, flattened, as the stores read it.
        self.band_by_level = (
            tuple(
                edge + self.level_thresholds[level] - self.threshold
                for level in (1, 2, 3)
                for edge in self.band
            )
            if self.band
            else ()
        )
        self.shadow_caps = frozenset(i for i, cap in enumerate(policy.caps) if cap.shadow)
        calculus = policy.calculus
        self.lambdas = (milli(calculus.minimal), milli(calculus.standard), milli(calculus.full))
        self.trust = (milli(calculus.signed_in), milli(calculus.declared))
        self.keep_choice_ms = math.ceil(levels.keep * 1000)
        self.audit = (
            AuditLimits(
                policy.audit.max_entries,
                math.ceil(policy.audit.max_age * 1000),
                policy.audit.per_person,
                # A person's recent decisions are kept as long as the trail keeps them.
                math.ceil(policy.audit.max_age * 1000),
            )
            if policy.audit.enabled and audit
            else None
        )
        self.audience_window_ms = math.ceil(policy.fallback.audience_window * 1000)
        self.shadow = policy.policy.mode == "shadow"
        self.anonymous_get_segment = policy.consent.anonymous == "segment"
        self.quiet_hours = policy.quiet_hours
        self.calendar = any(cap.calendar for cap in policy.caps)
        self._tagged = any(cap.except_tags or cap.reserve for cap in policy.caps)
        self.local = (
            LocalClock(policy.time.zone, week_starts=policy.time.week_starts)
            if self.calendar or self.quiet_hours
            else None
        )
        budget = policy.creepiness.budget
        self._budget = (
            BudgetCheck(milli(budget.limit), math.ceil(budget.window * 1000), budget.entries)
            if budget
            else None
        )
        self._policy_label = msgpack.packb(f"{policy.name}@{policy.version}")
        self._plans: dict[int, Plan] = {}
        # The same plans by the marker's value, for an equal marker made anew (an app or a
        # worker that builds a Marker per message): hashed only when the identity misses.
        self._plans_by_value: dict[Marker, Plan] = {}
        self._limits: dict[tuple[str, str, tuple[str, ...]], Limits] = {}
        self.repetition_saturation = scorer.repetition_saturation

    def plan(self, marker: Marker) -> Plan:
        """The message's plan; markers repeat (parse_marker shares them), so per marker, and
        per marker value for equal markers made anew."""
        known = self._plans.get(id(marker))
        if known is not None and known.marker is marker:
            return known
        # A marker is hashed by value once it is planned anyway (the scorer's cache).
        equal = self._plans_by_value.get(marker)
        if equal is not None:
            return equal
        if len(self._plans) >= _CACHE_SIZE or len(self._plans_by_value) >= _CACHE_SIZE:
            self._plans.clear()
            self._plans_by_value.clear()
        plan = self._plans[id(marker)] = self._plans_by_value[marker] = self._plan(marker)
        return plan

    def cache_sizes(self) -> dict[str, tuple[int, int]]:
        """Entries and bound of the plans and limits cached (for metrics)."""
        return {
            "plans": (len(self._plans), _CACHE_SIZE),
            "limits": (len(self._limits), _CACHE_SIZE),
        }

    def in_band(self, score_milli: int, level: int) -> bool:
        """Whether a score falls in the middle band, which moves with the person's threshold
        (a person at `full` has it just below their higher threshold)."""
        band = self.band
        if band is None:
            return False
        shift = self.level_thresholds[level] - self.threshold
        return band[0] + shift < score_milli <= band[1] + shift

    def outweighs(self, relevance: float, score_milli: int, level: int, *, trust: int) -> bool:
        """The privacy calculus: relevance x (1 + trust) > lambda x creepiness."""
        lam = self.lambdas[max(level, 1) - 1]
        return milli(relevance) * (1000 + trust) > lam * score_milli

    def words(
        self,
        reason: Reason,
        rule: str | None,
        outcome: Outcome = "segment",
        *,
        shadow: bool = False,
    ) -> Words:
        """A decision's words, with the policy's shadow mode applied."""
        return Words(
            outcome, reason, rule, shadow or (self.shadow and reason not in ALWAYS_ENFORCED)
        )

    def _plan(self, marker: Marker) -> Plan:
        names = self._special_signals
        special = tuple(
            dict.fromkeys(name for s in marker.signals if s in names for name in names[s])
        )
        content = self.scorer.score(marker)
        key = (marker.channel, marker.campaign, marker.tags if self._tagged else ())
        limits = self._limits.get(key)
        if limits is None:
            if len(self._limits) >= _CACHE_SIZE:
                self._limits.clear()
            limits = self._limits[key] = self._build_limits(*key)
        words = self._words_of(special)
        return Plan(
            marker=marker,
            content=content,
            minimal_ok=not marker.inferred
            and not marker.third_party
            and self._given.issuperset(marker.signals),
            special=special,
            forbidden_by_gpc=gpc_forbids(
                marker, self.policy.consent, self.scorer, self._gpc_sensitive
            ),
            limits=limits,
            words=words,
            recent=self._recent_template(marker, content, words),
        )

    def _words_of(self, special: tuple[str, ...]) -> dict[str, Words]:
        """Every way a store's verdict can come out for a message, keyed as `outcome_key`."""
        words = {
            "a": self.words(Reason.ALLOWED, None, "personalized"),
            "t": self.words(Reason.TRANSACTIONAL, None, "personalized"),
            "g": self.words(Reason.CREEPINESS, "creepiness.category_band", "category"),
            "b": self.words(Reason.BUDGET, "creepiness.budget"),
            "s": self.words(Reason.CREEPINESS, "creepiness.threshold"),
            "o": self.words(Reason.CONSENT, "consent.gpc"),
            "k": self.words(Reason.CALCULUS, "calculus"),
            "q": self.words(Reason.QUIET_HOURS, "quiet_hours"),
        }
        for level, rule in enumerate(LEVEL_RULES):
            words[f"p{level}"] = self.words(Reason.PREFERENCE, rule)
        for index, cap in enumerate(self.policy.caps):
            # A shadow cap's refusal is reported, and the message delivered and counted.
            words[f"c{index}"] = self.words(Reason.FREQUENCY_CAP, cap.name, shadow=cap.shadow)
        for index, category in enumerate(special):
            words[f"x{index}"] = self.words(Reason.SPECIAL_CATEGORY, f"special.{category}")
        return words

    def _recent_template(
        self, marker: Marker, content: ContentScore, words: Mapping[str, Words]
    ) -> RecentTemplate | None:
        audit = self.audit
        if audit is None or audit.per_person <= 0:
            return None
        pack = msgpack.packb
        return RecentTemplate(
            head=ARRAY_HEADER,
            # person (none: the entry sits in the person's own record), campaign, channel,
            # segment, and the fallback segment, which only the engine resolves
            before=b"".join(pack(v) for v in ("", marker.campaign, marker.channel, marker.segment))
            + pack(None),
            outcomes={
                key: pack(w.outcome) + pack(w.reason.value) + pack(w.rule)
                for key, w in words.items()
            },
            shadowed=frozenset(
                key for key, w in words.items() if w.shadow and w.outcome == "segment"
            ),
            factors=b"".join(pack((f.name, milli(f.contribution))) for f in content.factors),
            factor_count=len(content.factors),
            after=b"".join(
                pack(value)
                for value in (
                    marker.signals,
                    marker.inferred,
                    marker.third_party,
                    marker.explained,
                    marker.event_age,
                )
            ),
            policy=self._policy_label,
            content_milli=content.milli,
        )

    def _build_limits(self, channel: str, campaign: str, tags: tuple[str, ...]) -> Limits:
        policy, scorer = self.policy, self.scorer
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
            threshold_milli=self.threshold,
            counters=tuple(counters),
            budget=self._budget,
            repetition=repetition,
            audience_window_ms=self.audience_window_ms,
            timeout_ms=math.ceil(policy.store.timeout * 1000),
            retry_after_ms=math.ceil(policy.store.retry_after * 1000),
            replicas=policy.store.replicas,
            shadow_caps=any(cap.shadow for cap in policy.caps),
            band=self.band_by_level,
            recent_per_person=self.audit.per_person if self.audit is not None else 0,
            recent_keep_ms=self.audit.keep_ms if self.audit is not None else 0,
            minimal_threshold_milli=self.level_thresholds[1],
            full_threshold_milli=self.level_thresholds[3],
            default_level=self.default_level,
            keep_choice_ms=self.keep_choice_ms,
            trust_signed_in_milli=self.trust[0],
            trust_declared_milli=self.trust[1],
            lambda_milli=self.lambdas,
        )


def _limit_for(cap: Cap, tags: tuple[str, ...]) -> int:
    """The cap's limit for a campaign with these tags: its reserve is kept for the favoured."""
    reserve = cap.reserve
    if reserve is None or not set(reserve.tags).isdisjoint(tags):
        return cap.limit
    return cap.limit - reserve.slots
