"""Creepiness: how intrusive a message feels, in [0, 1], as a sum of named contributions.

    sensitivity   signals combined as 1 - prod(1 - weight): each category adds to the
                  feeling of exposure, none can push it past 1
    inferred      sensitivity x (inferred - 1): guessed data feels worse than given data
    third-party   sensitivity x (third_party - 1): data from elsewhere feels worse still
    recency       weight x (1 - age / window): "you just looked at this"
    explained     -(explained_discount x all of the above): saying why lowers reactance
    repetition    weight per earlier delivery of the campaign; counted by the store, which
                  alone knows the person's exposure, and added after the discount
    ceiling       whatever takes the sum above 1 back to 1

Every decision carries these contributions, so any score can be explained term by term.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from throttle.message import Marker
from throttle.policy import Creepiness, milli

_CACHE_SIZE = 4096
# Enough earlier deliveries to saturate any repetition weight the policy allows in practice.
MAX_REPETITIONS = 32


@dataclass(frozen=True, slots=True)
class Factor:
    """One term of a creepiness score: `name` and how much it added (negative: took away)."""

    name: str
    contribution: float


@dataclass(frozen=True, slots=True)
class ContentScore:
    """The part of the score that depends on the message alone, in thousandths."""

    milli: int
    factors: tuple[Factor, ...]
    unknown_signals: tuple[str, ...]


class Scorer:
    """Scores messages by one policy's weights; remembers recent markers' scores."""

    def __init__(self, creepiness: Creepiness) -> None:
        self._policy = creepiness
        self._cache: dict[Marker, ContentScore] = {}
        self._by_identity: dict[int, tuple[Marker, ContentScore]] = {}
        self._totals: dict[tuple[int, int], tuple[ContentScore, ContentScore]] = {}
        repetition = creepiness.repetition
        self.repetition_milli = milli(repetition.weight)
        # Repeats past 1 / weight cannot add more (the score stops at 1), so none are counted.
        self.repetition_saturation = (
            0
            if self.repetition_milli == 0
            else min(math.ceil(1000 / self.repetition_milli), MAX_REPETITIONS)
        )

    def weight(self, signal: str) -> float:
        return self._policy.signals.get(signal, self._policy.default_signal)

    def score(self, marker: Marker) -> ContentScore:
        # Parsed markers are shared objects (parse_marker caches them), so identity finds most;
        # hashing a marker's nine fields is the slower path for markers built per request.
        known = self._by_identity.get(id(marker))
        if known is not None and known[0] is marker:
            return known[1]
        cached = self._cache.get(marker)
        if cached is None:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
                self._by_identity.clear()
            cached = self._cache[marker] = self._score(marker)
        if len(self._by_identity) >= _CACHE_SIZE:
            self._by_identity.clear()
        self._by_identity[id(marker)] = (marker, cached)
        return cached

    def _score(self, marker: Marker) -> ContentScore:
        policy = self._policy
        factors: list[Factor] = []
        unknown = tuple(s for s in dict.fromkeys(marker.signals) if s not in policy.signals)
        # Largest weight first, so each signal's share reads as its marginal contribution.
        remaining = 1.0
        for signal in sorted(set(marker.signals), key=lambda s: (-self.weight(s), s)):
            share = remaining * self.weight(signal)
            remaining -= share
            factors.append(Factor(f"signal:{signal}", share))
        sensitivity = 1.0 - remaining
        if marker.inferred and sensitivity > 0:
            factors.append(Factor("inferred", sensitivity * (policy.inferred - 1.0)))
        if marker.third_party and sensitivity > 0:
            factors.append(Factor("third-party", sensitivity * (policy.third_party - 1.0)))
        recency = policy.recency
        if marker.event_age is not None and marker.event_age < recency.window:
            factors.append(
                Factor("recency", recency.weight * (1 - marker.event_age / recency.window))
            )
        subtotal = sum(f.contribution for f in factors)
        if marker.explained and subtotal > 0:
            discount = -policy.explained_discount * subtotal
            factors.append(Factor("explained", discount))
            subtotal += discount
        if subtotal > 1.0:
            factors.append(Factor("ceiling", 1.0 - subtotal))
            subtotal = 1.0
        factors = [f for f in factors if f.contribution != 0]
        return ContentScore(milli(subtotal), tuple(factors), unknown)

    def total(self, content: ContentScore, repetitions: int) -> ContentScore:
        """The full score once the store has counted earlier deliveries of the campaign.

        Must agree with the Lua script and the memory store, which compute the same sum.
        """
        counted = min(repetitions, self.repetition_saturation)
        if counted == 0 or self.repetition_milli == 0 or content.milli >= 1000:
            return content
        key = (id(content), counted)
        known = self._totals.get(key)
        if known is not None and known[0] is content:
            return known[1]
        score = min(1000, content.milli + self.repetition_milli * counted)
        factors = (*content.factors, Factor("repetition", (score - content.milli) / 1000))
        total = ContentScore(score, factors, content.unknown_signals)
        if len(self._totals) >= _CACHE_SIZE:
            self._totals.clear()
        self._totals[key] = (content, total)
        return total
