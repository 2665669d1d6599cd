"""One person's data as throttle holds it: read, changed and erased, as JSON-ready data.

The self-service privacy routes (`privacy.py`), the support staff's admin routes and
`throttle person` (`support.py`) all answer with these, so a person and the staff acting on
their request see and change the same things the same way. Nothing here knows HTTP.

`market` names the market whose policy gives the default level and the special categories
(`None`: the default policy); a person's state is the same in every market.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from throttle.audit import AuditEntry
from throttle.engine import Engine
from throttle.explain import explain
from throttle.policy import LEVELS

LEVEL_WORDS = {
    "off": "No personalized messages at all: you object to direct marketing and profiling "
    "(GDPR Art. 21). Everything you see is written for a large group of people.",
    "minimal": "Only what you gave us yourself, such as your cart and your purchases, and "
    "only where it is not intrusive; nothing inferred about you, nothing from other companies.",
    "standard": "Personalization within our policy's limits on how often and how "
    "intrusively we use your data.",
    "full": "The most tailored experience our policy allows, including messages that use "
    "more of your data.",
}


class UnknownCategory(LookupError):
    """A special category the policy does not name."""

    def __init__(self, category: str) -> None:
        self.category = category
        super().__init__(f"{category!r} is not a special category of this site's policy")


class UnknownLevel(ValueError):
    """A personalization level other than off, minimal, standard and full."""

    def __init__(self, level: object) -> None:
        super().__init__(f"level must be one of {', '.join(LEVELS)}, not {level!r}")


async def level(
    engine: Engine, person: str, *, gpc_now: bool = False, market: str | None = None
) -> dict[str, Any]:
    """Their level, whether they chose it, what each level means, and their GPC opt-out."""
    choices = await engine.choices_of(person)
    chosen_level, chosen = engine.level_in(choices, market)
    return {
        "level": chosen_level,
        "chosen": chosen,
        "levels": LEVEL_WORDS,
        "opt_out": opt_out(choices, gpc_now=gpc_now),
    }


def check_level(value: object) -> str:
    """`value` as a level, or `UnknownLevel`."""
    if not isinstance(value, str) or value not in LEVELS:
        raise UnknownLevel(value)
    return value


def check_category(engine: Engine, category: str, market: str | None = None) -> str:
    """`category` when the policy names it as a special category, or `UnknownCategory`."""
    if category not in engine.policy_for(market).special:
        raise UnknownCategory(category)
    return category


async def set_level(engine: Engine, person: str, value: object) -> dict[str, Any]:
    """Change their level (`UnknownLevel` for anything but a level's name)."""
    chosen = check_level(value)
    await engine.set_level(person, chosen)
    return {"level": chosen, "chosen": True, "meaning": LEVEL_WORDS[chosen]}


async def consents(engine: Engine, person: str, *, market: str | None = None) -> dict[str, Any]:
    """Each special category, its legal source, and whether they gave explicit consent."""
    given = (await engine.choices_of(person)).get("s") or {}
    return {"categories": _categories(engine, given, market)}


async def give_consent(
    engine: Engine, person: str, category: str, *, market: str | None = None
) -> dict[str, Any]:
    """Record explicit consent to one special category, with its time."""
    checked = check_category(engine, category, market)
    await engine.consent(person, checked, given=True, market=market)
    given = (await engine.choices_of(person)).get("s") or {}
    since = given.get(category)  # gone again if erased or withdrawn meanwhile
    return {
        "category": category,
        "consented": since is not None,
        "since": _time(since) if since is not None else None,
    }


async def withdraw_consent(
    engine: Engine, person: str, category: str, *, market: str | None = None
) -> dict[str, Any]:
    """Withdraw consent to one special category: as easy as giving it (Art. 7(3))."""
    checked = check_category(engine, category, market)
    await engine.consent(person, checked, given=False, market=market)
    return {"category": category, "consented": False}


async def lift_opt_out(engine: Engine, person: str, *, gpc_now: bool) -> dict[str, Any]:
    """Lift their sticky GPC opt-out; a request that still sends Sec-GPC: 1 opts out again."""
    await engine.opt_in(person)
    return {"opt_out": opt_out({}, gpc_now=gpc_now)}


async def why(engine: Engine, person: str, *, zone: str | None) -> dict[str, Any]:
    """Their recent decisions, newest first, each in plain words."""
    entries = _readable(await engine.recent(person))
    return {"decisions": [explain(entry, zone=zone) for entry in entries]}


async def export(
    engine: Engine,
    person: str,
    *,
    zone: str | None,
    gpc_now: bool = False,
    market: str | None = None,
) -> dict[str, Any]:
    """Everything held about them (GDPR Art. 15)."""
    pseudonym = engine.pseudonym(person)
    state = await engine.state_of(person) or {}
    recent = _readable(await engine.recent(person))
    choices = state.get("p") or {}
    chosen_level, chosen = engine.level_in(choices, market)
    given = choices.get("s") or {}
    return {
        "about": "Everything throttle holds about you. You are known to it only by a keyed "
        "hash of your account id (your pseudonym), never by the id itself.",
        "pseudonym": pseudonym,
        "level": {
            "level": chosen_level,
            "chosen": chosen,
            "chosen_at": _time(choices["u"]) if "u" in choices else None,
        },
        "opt_out": opt_out(choices, gpc_now=gpc_now),
        "special_category_consents": {name: _time(since) for name, since in sorted(given.items())},
        "deliveries": {
            _counter_words(name): [_time(t) for t in log]
            for name, log in (state.get("c") or {}).items()
        },
        "creepiness_budget": [
            {"since": _time(t), "score": score / 1000} for t, score in state.get("b") or []
        ],
        "recent_decisions": [explain(entry, zone=zone) for entry in recent],
        "audit_trail": {
            "about": "Each decision is also kept in our audit trail, which shows what we did "
            "with personal data. There you are named only by a random token kept with your "
            "data; erasing your data deletes the token, after which nothing links those "
            "entries to you. Your entries, newest first:",
            "entries": [
                {k: v for k, v in entry.as_dict().items() if k != "person"} for entry in recent
            ],
        },
    }


async def erase(engine: Engine, person: str, *, market: str | None = None) -> dict[str, Any]:
    """Erase everything held about them (GDPR Art. 17), in one write."""
    erased = await engine.erase(person)
    default = engine.policy_for(market).levels.default
    return {
        "deleted": {
            "state": erased.state,
            "recent_decisions": erased.decisions,
        },
        "note": "Your counters, your choice of level, your consents, your opt-out and your "
        "recent decisions are deleted, and so is the token that named you in our audit "
        "trail: nothing links its entries to you any more. Your level is back to the "
        f"default, {default}; choose it again if you wish.",
    }


def opt_out(choices: dict[str, Any], *, gpc_now: bool) -> dict[str, Any]:
    """Their Global Privacy Control opt-out: kept from the first request that sent it."""
    since = choices.get("g")
    if since is None and not gpc_now:
        return {"honored": False, "message": "No opt-out preference signal received"}
    return {
        "honored": True,
        "since": _time(since) if since is not None else None,
        "message": "Opt-out preference signal honored",
    }


def _categories(engine: Engine, given: dict[str, int], market: str | None) -> dict[str, Any]:
    return {
        name: {
            "source": category.source,
            "signals": list(category.signals),
            "consented": name in given,
            "since": _time(given[name]) if name in given else None,
        }
        for name, category in engine.policy_for(market).special.items()
    }


def _readable(entries: list[bytes]) -> list[AuditEntry]:
    readable = []
    for packed in entries:
        try:
            readable.append(AuditEntry.unpack(packed))
        except ValueError:
            continue  # an entry that cannot be read is skipped, not shown broken
    return readable


def _time(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")


def _counter_words(name: str) -> str:
    """`c:email` -> "email channel"; `k:spring-sale` -> "campaign spring-sale"; `u` -> "all"."""
    shadow = name.startswith("s:")
    base, _, exempt = name.removeprefix("s:").partition("!")
    kind, _, value = base.partition(":")
    words = {"u": "all messages", "c": f"{value} channel", "k": f"campaign {value}"}.get(kind, base)
    if exempt:
        words += f" (except {exempt.replace(',', ', ')})"
    return words + (" (a rule on trial)" if shadow else "")
