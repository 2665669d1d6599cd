"""What the engine tells its observers after each decision: metrics, the dashboard, alerts.

An observer is a plain callable run in the decision's task, after the decision is made and
before the response goes out: it must be quick and must not raise (the engine logs and drops
an observer's error rather than let it touch the person's response).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from throttle.decision import Decision


class Observation(NamedTuple):
    """One decision as observers see it; never a raw id or a pseudonym.

    - `decision`: what was decided (outcome, reason, rule, campaign, channel, policy version).
    - `segment`: the message's own segment (the audience it was written for), `""` for
      everyone or when the marker could not be read; `decision.segment` is the one that stood
      in, for segment outcomes.
    - `seconds`: how long deciding took, store round trip included.
    - `signed_in`: whether the message was for a signed-in person.
    """

    decision: Decision
    segment: str
    seconds: float
    signed_in: bool


Observer = Callable[[Observation], None]
