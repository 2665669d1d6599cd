"""The Lua scripts' arguments and the person's record, laid out once for Python and Lua.

Each script is its `.lua` file behind a prelude generated from the enums below (`local
ARG_NOW = 1`, ...) and `lua/record.lua`, the functions that read and write a person's
record. Python fills the arguments by the same enums, so the two sides cannot drift: a name
the script uses and the prelude lacks is an error the moment Redis loads the script.
"""

from __future__ import annotations

import hashlib
from enum import IntEnum, IntFlag
from importlib import resources


class DeliverArg(IntEnum):
    """ARGV of `deliver.lua`."""

    NOW = 1  # ms since the Unix epoch
    SCORE = 2  # the message's score before repetition, thousandths
    LIMITS = 3  # the `Limit` array, msgpack: the same for every message of a campaign
    PERIODS = 4  # starts of the person's calendar day, week and month, ms, space-separated
    FLAGS = 5  # `Flag` bits
    SPECIAL = 6  # the special categories the message uses, space-separated
    RELEVANCE = 7  # thousandths, or -1 (no privacy calculus)
    RECENT = 8  # the message's recent-decision template's fingerprint (8 bytes), or "": none
    TOKEN = 9  # a fresh random audit token, taken when the person has none ("": none)


class Flag(IntFlag):
    MINIMAL_OK = 1  # only data people give themselves: a minimal level allows it
    TRANSACTIONAL = 2  # only the person's level and threshold apply; nothing is counted
    GPC_FORBIDS = 4  # a GPC opt-out (now or kept) rules the message out
    GPC_NOW = 8  # the request carries a GPC opt-out: keep it in the person's choices


class Limit(IntEnum):
    """The limits array: what applies to every message of one channel and campaign."""

    TTL = 1  # how long counters are kept, ms: the policy's longest window (0: keep nothing)
    THRESHOLD = 2  # the standard level's creepiness threshold, thousandths
    REPETITION_COUNTER = 3  # e.g. "k:spring-sale", or "" when repetition is off
    REPETITION_WEIGHT = 4  # thousandths per earlier delivery
    REPETITION_WINDOW = 5  # ms
    REPETITION_SATURATION = 6  # earlier deliveries counted at most
    BUDGET_LIMIT = 7  # thousandths, or -1 for no budget
    BUDGET_WINDOW = 8  # ms
    BUDGET_ENTRIES = 9  # entries kept; beyond it the two oldest merge
    COUNTERS = 10  # { { name, keep, window ms, { { cap index, limit, window, period } }, shadow } }
    SHADOW_CAPS = 11  # 1 when any counter is a shadow counter
    MINIMAL_THRESHOLD = 12  # thousandths
    FULL_THRESHOLD = 13  # thousandths
    DEFAULT_LEVEL = 14  # the level of people who chose none
    KEEP_CHOICE = 15  # how long choices are kept after the person's last decision, ms
    TRUST_SIGNED_IN = 16  # calculus, thousandths
    TRUST_DECLARED = 17  # calculus, thousandths, for a person who chose their level
    LAMBDA = 18  # calculus: { at minimal, standard, full }, thousandths
    BAND = 19  # the category band's { low, high } at levels 1 to 3, flattened; {} for none
    RECENT_PER_PERSON = 20  # recent decisions kept with each person (0: none)
    RECENT_KEEP = 21  # how long recent decisions are kept, ms


# A recent decision in a person's record (lua/record.lua): when, ms, in 6 bytes; the message's
# template's fingerprint, 8 bytes; how it came out, an outcome key padded with spaces to 6
# bytes; its score, thousandths, in 2 bytes. Integers big-endian.
RECENT_SIZE = 6 + 8 + 6 + 2


_ENUMS: dict[str, type[IntEnum] | type[IntFlag]] = {
    "ARG": DeliverArg,
    "FLAG": Flag,
    "LIMIT": Limit,
}


def _prelude() -> str:
    lines = ["-- Generated from throttle/store/layout.py: the arguments' positions."]
    for prefix, enum in _ENUMS.items():
        for member in enum:
            lines.append(f"local {prefix}_{member.name} = {int(member)}")
    lines.append(f"local RECENT_SIZE = {RECENT_SIZE}")
    return "\n".join(lines) + "\n"


def script(name: str) -> str:
    """The full text of `lua/<name>.lua`: the prelude, the record functions, the script."""
    lua = resources.files("throttle.store").joinpath("lua")
    record = lua.joinpath("record.lua").read_text("utf-8")
    return _prelude() + record + lua.joinpath(f"{name}.lua").read_text("utf-8")


def sha1(text: str) -> bytes:
    return hashlib.sha1(text.encode()).hexdigest().encode()
