"""The Lua scripts' arguments and the person's record, laid out once for Python and Lua.

Each script is its `.lua` file behind a prelude generated from the enums below (`local
ARG_NOW = 1`, ...) and `lua/record.lua`, the functions that read and write a person's
record. Python fills the arguments by the same enums, so the two sides cannot drift: a name
the script uses and the prelude lacks is an error the moment Redis loads the script.
"""

from __future__ import annotations

import hashlib
import struct
from enum import IntEnum, IntFlag
from importlib import resources


class DeliverArg(IntEnum):
    """ARGV of `deliver.lua`."""

    CALL = 1  # the `Call` numbers, struct-packed: what differs from one decision to the next
    LIMITS = 2  # the `Limit` numbers, then the counters and their caps, struct-packed
    LIMITS_FORMAT = 3  # the struct format of ARGV[ARG_LIMITS] (see `limits_format`)
    REPETITION = 4  # the counter whose deliveries make the repetition factor, "" for none
    SPECIAL = 5  # the special categories the message uses, space-separated
    RECENT = 6  # the message's recent-decision template's fingerprint (8 bytes), or "": none
    TOKEN = 7  # a fresh random audit token, taken when the person has none ("": none)
    RESERVATION = 8  # with FLAG_RESERVE: the reservation's id, unique to the person


class Call(IntEnum):
    """The numbers of one decision (ARGV[ARG_CALL]), each a big-endian signed 8-byte int."""

    NOW = 1  # ms since the Unix epoch
    SCORE = 2  # the message's score before repetition, thousandths
    FLAGS = 3  # `Flag` bits
    RELEVANCE = 4  # thousandths, or -1 (no privacy calculus)
    DAY = 5  # starts of the person's calendar day, week and month, ms (0 without calendar caps)
    WEEK = 6
    MONTH = 7
    HOLD = 8  # with FLAG_RESERVE: how long the reservation holds unless committed, ms


class Flag(IntFlag):
    MINIMAL_OK = 1  # only data people give themselves: a minimal level allows it
    TRANSACTIONAL = 2  # only the person's level and threshold apply; nothing is counted
    GPC_FORBIDS = 4  # a GPC opt-out (now or kept) rules the message out
    GPC_NOW = 8  # the request carries a GPC opt-out: keep it in the person's choices
    QUIET = 16  # the person's quiet hours: refused after their own choices, before any limit
    DRY_RUN = 32  # a preflight: decide, write nothing (no counter, budget, choice or decision)
    RESERVE = 64  # count it as a reservation, which a commit keeps and a release takes back


class Limit(IntEnum):
    """The limits (ARGV[ARG_LIMITS]): what applies to every message of one channel and
    campaign, each a big-endian signed 8-byte int; times in ms, scores in thousandths."""

    TTL = 1  # how long counters are kept: the policy's longest window (0: keep nothing)
    THRESHOLD = 2  # the standard level's creepiness threshold
    REPETITION_WEIGHT = 3  # per earlier delivery
    REPETITION_WINDOW = 4
    REPETITION_SATURATION = 5  # earlier deliveries counted at most
    BUDGET_LIMIT = 6  # -1 for no budget
    BUDGET_WINDOW = 7
    BUDGET_ENTRIES = 8  # entries kept; beyond it the two oldest merge (over-counting)
    SHADOW_CAPS = 9  # 1 when any counter is a shadow counter
    MINIMAL_THRESHOLD = 10
    FULL_THRESHOLD = 11
    DEFAULT_LEVEL = 12  # the level of people who chose none
    KEEP_CHOICE = 13  # how long choices are kept after the person's last decision
    TRUST_SIGNED_IN = 14  # calculus
    TRUST_DECLARED = 15  # calculus, for a person who chose their level
    LAMBDA_MINIMAL = 16  # calculus: lambda at each level
    LAMBDA_STANDARD = 17
    LAMBDA_FULL = 18
    BAND = 19  # 1 when the policy has a category band
    BAND_MINIMAL_LOW = 20  # the band's (low, high] at each level
    BAND_MINIMAL_HIGH = 21
    BAND_STANDARD_LOW = 22
    BAND_STANDARD_HIGH = 23
    BAND_FULL_LOW = 24
    BAND_FULL_HIGH = 25
    RECENT_PER_PERSON = 26  # recent decisions kept with each person (0: none)
    RECENT_KEEP = 27  # how long recent decisions are kept


# After the `Limit` numbers, ARGV[ARG_LIMITS] holds each counter: its name, how many entries it
# keeps, its longest window (ms), 1 for a shadow counter, how many caps count on it; then each
# of those caps: its index in the policy, its limit, its window (ms), its period (0 rolling;
# 1, 2, 3 the calendar day, week, month). Lua reads all of it with one struct.unpack, by a
# format made for the counters' names and caps (`limits_format`).
COUNTER_FIELDS = 5  # name, keep, window, shadow, caps
CAP_FIELDS = 4  # index, limit, window, period


def limits_format(name_lengths: list[int], caps: list[int]) -> tuple[str, str]:
    """The formats of ARGV[ARG_LIMITS] for counters with these names' lengths and numbers of
    caps: Lua's struct library's, and Python's struct module's."""
    lua, python = [">", "i8" * len(Limit)], [">", "q" * len(Limit)]
    for length, count in zip(name_lengths, caps, strict=True):
        lua.append(f"c{length}i8i8i8i8" + "i8i8i8i8" * count)
        python.append(f"{length}sqqqq" + "qqqq" * count)
    return "".join(lua), "".join(python)


def numbers(values: list[int]) -> bytes:
    """Integers as ARGV[ARG_CALL] and ARGV[ARG_LIMITS] carry them (Lua's `>i8...`)."""
    return struct.pack(f">{len(values)}q", *values)


# A recent decision in a person's record (lua/record.lua): when, ms, in 6 bytes; the message's
# template's fingerprint, 8 bytes; how it came out, an outcome key padded with spaces to 6
# bytes; its score, thousandths, in 2 bytes. Integers big-endian.
RECENT_SIZE = 6 + 8 + 6 + 2


_ENUMS: dict[str, type[IntEnum] | type[IntFlag]] = {
    "ARG": DeliverArg,
    "CALL": Call,
    "FLAG": Flag,
    "LIMIT": Limit,
}


def _prelude() -> str:
    lines = ["-- Generated from throttle/store/layout.py: the arguments' positions."]
    for prefix, enum in _ENUMS.items():
        for member in enum:
            lines.append(f"local {prefix}_{member.name} = {int(member)}")
    lines.append(f"local RECENT_SIZE = {RECENT_SIZE}")
    lines.append(f"local CALL_FORMAT = '>{'i8' * len(Call)}'")
    lines.append(f"local LIMIT_COUNT = {len(Limit)}")
    lines.append(f"local COUNTER_FIELDS, CAP_FIELDS = {COUNTER_FIELDS}, {CAP_FIELDS}")
    return "\n".join(lines) + "\n"


def script(name: str) -> str:
    """The full text of `lua/<name>.lua`: the prelude, the record functions, the script."""
    lua = resources.files("throttle.store").joinpath("lua")
    record = lua.joinpath("record.lua").read_text("utf-8")
    return _prelude() + record + lua.joinpath(f"{name}.lua").read_text("utf-8")


def sha1(text: str) -> bytes:
    return hashlib.sha1(text.encode()).hexdigest().encode()
