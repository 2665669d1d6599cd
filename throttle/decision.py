"""What throttle decided for one message, and the one vocabulary of its reasons.

Every reason is a `Reason` member carrying its words and its kind; the decision header,
`/privacy/why`, `throttle audit`, `throttle simulate` and the demo all read them from here.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, NamedTuple

from throttle.scoring import Factor

Outcome = Literal["personalized", "category", "segment"]


class Reason(StrEnum):
    """Why a decision came out the way it did; the value is what the decision header says.

    `label` is a few words for tables and reports; `kind` says whose doing it is: `limit`
    (what the policy decides), `granted` (what it let through), `choice` (the person's own),
    `law` (what the law rules out for everyone alike) or `fault` (nobody decided).
    """

    label: str
    kind: str

    def __new__(cls, value: str, label: str, kind: str) -> Reason:
        member = str.__new__(cls, value)
        member._value_ = value
        member.label = label
        member.kind = kind
        return member

    ALLOWED = "allowed", "within every limit", "granted"
    TRANSACTIONAL = "transactional", "transactional, never limited", "granted"
    FREQUENCY_CAP = "frequency-cap", "a frequency cap", "limit"
    CREEPINESS = "creepiness", "too creepy", "limit"
    BUDGET = "budget", "the creepiness budget", "limit"
    QUIET_HOURS = "quiet-hours", "quiet hours", "limit"
    CONSENT = "consent", "no consent (the person's choice)", "choice"
    PREFERENCE = "preference", "the person's preference", "choice"
    SPECIAL_CATEGORY = (
        "special-category",
        "special category without explicit consent",
        "choice",
    )
    AUTOMATED_DECISION = "automated-decision", "sets a price, credit or eligibility", "law"
    CALCULUS = "calculus", "relevance too low for its creepiness", "limit"
    ANONYMOUS = "anonymous", "not signed in", "choice"
    STORE_UNAVAILABLE = "store-unavailable", "store unavailable", "limit"
    INVALID_MARKER = "invalid-marker", "unreadable marker", "fault"
    INTERNAL_ERROR = "internal-error", "internal error", "fault"


# Shadow mode delivers what the limits would refuse, never what a person refused, nor what
# the law rules out, nor to nobody in particular, nor what cannot be read.
ALWAYS_ENFORCED = frozenset(r for r in Reason if r.kind in ("choice", "law", "fault"))


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
