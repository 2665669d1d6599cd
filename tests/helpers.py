from __future__ import annotations

from throttle import Engine, Marker, Policy
from throttle.store import Store

SECRET = b"test-secret-0123456789abcdef"


def policy(body: str = "", *, name: str = "test", mode: str = "enforce") -> Policy:
    """A policy from TOML text; unset sections take their defaults (no caps, no budget).

    The store timeout is generous unless the test sets one: a busy test machine must not turn
    a behaviour test into a timeout test.
    """
    if "[store]" not in body:
        body += '\n[store]\ntimeout = "5s"\n'
    return Policy.from_toml(f'[policy]\nname = "{name}"\nmode = "{mode}"\n{body}', source="<test>")


def engine(body: str, store: Store, clock: object, *, mode: str = "enforce") -> Engine:
    return Engine(policy(body, mode=mode), store, secret=SECRET, clock=clock)  # type: ignore[arg-type]


def marker(campaign: str = "spring-sale", **fields: object) -> Marker:
    return Marker(campaign=campaign, **fields)  # type: ignore[arg-type]


NO_REPETITION = "[creepiness]\nrepetition = { weight = 0.0, window = '1h' }\n"
