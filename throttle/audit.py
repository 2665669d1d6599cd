"""The audit trail: one entry per decision, pseudonymized, so a brand can show what it did.

Entries are msgpack arrays. They name a person only by the keyed hash the store uses (never a
raw id; `""` for someone not signed in), and carry what a person or an auditor needs to
understand the decision: the message's campaign, channel and segment, the data it used, the
outcome, the reason and rule, and each factor of the score.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack

# The fields, in the order they are packed. A new field goes at the end, so older entries
# still read (missing fields take their defaults).
_FIELDS = (
    "time_ms", "person", "campaign", "channel", "segment", "fallback_segment", "outcome",
    "reason", "rule", "score_milli", "factors", "signals", "inferred", "third_party",
    "explained", "event_age", "shadow", "policy",
)  # fmt: skip


ARRAY_HEADER = b"\xdc" + len(_FIELDS).to_bytes(2, "big")  # msgpack array 16


def pack_tail(values: tuple[Any, ...]) -> bytes:
    """The packed fields after `time_ms` and `person`, to reuse across decisions alike."""
    return b"".join(msgpack.packb(value) for value in values)


def pack_entry(time_ms: int, person: str, tail: bytes) -> bytes:
    """An entry's bytes from its time, its person and a packed tail: a msgpack array."""
    # One per decision: a time in ms since 1970 is a msgpack uint 64, a short person a fixstr;
    # written by hand, byte for byte what msgpack would write.
    if 1 << 32 <= time_ms < 1 << 64 and person.isascii() and len(person) < 32:
        return b"%s\xcf%s%c%s%s" % (
            ARRAY_HEADER,
            time_ms.to_bytes(8, "big"),
            0xA0 + len(person),
            person.encode(),
            tail,
        )
    packed: bytes = ARRAY_HEADER + msgpack.packb(time_ms) + msgpack.packb(person) + tail
    return packed


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One decision as the audit trail keeps it.

    - `time_ms`: when it was made, ms since the Unix epoch.
    - `person`: the person's pseudonym (the store's keyed hash), `""` when not signed in.
    - `campaign`, `channel`, `segment`: from the marker (`None` when it could not be read);
      `segment` is the one the message asked for, `fallback_segment` the k-anonymous one
      whose content stood in (segment outcomes only; `""` is everyone).
    - `outcome`: `"personalized"` or `"segment"`; `reason` and `rule` as in the decision.
    - `score_milli`, `factors`: the creepiness score and each factor's contribution, in
      thousandths; `signals`, `inferred`, `third_party`, `explained`, `event_age`: the data
      the message used, from its marker.
    - `shadow`: delivered personalized although a shadow rule refused it.
    - `policy`: `name@version` of the policy in force.
    """

    time_ms: int
    person: str
    campaign: str | None
    channel: str | None
    segment: str | None
    fallback_segment: str | None
    outcome: str
    reason: str
    rule: str | None
    score_milli: int | None
    factors: tuple[tuple[str, int], ...] = ()
    signals: tuple[str, ...] = ()
    inferred: bool = False
    third_party: bool = False
    explained: bool = False
    event_age: int | None = None
    shadow: bool = False
    policy: str = ""

    def pack(self) -> bytes:
        return pack_entry(self.time_ms, self.person, pack_tail(self.tail()))

    def tail(self) -> tuple[Any, ...]:
        """The fields after `time_ms` and `person`: what many decisions share."""
        return tuple(getattr(self, name) for name in _FIELDS[2:])

    @classmethod
    def unpack(cls, data: bytes) -> AuditEntry:
        """An entry from `pack()`'s bytes; raises `ValueError` for bytes that are not one."""
        try:
            values: Any = msgpack.unpackb(data, raw=False, use_list=True)
        except Exception as error:  # msgpack raises several types for broken input
            raise ValueError(f"not an audit entry: {error}") from None
        return cls._from_values(values)

    @classmethod
    def unpack_all(cls, data: bytes) -> Iterator[AuditEntry | None]:
        """The entries of one append to the trail (packed entries, one after another). What
        cannot be read ends the append: one None stands for it (an empty append is one too)."""
        if not data:
            yield None
            return
        unpacker = msgpack.Unpacker(raw=False, use_list=True)
        unpacker.feed(data)
        try:
            for values in unpacker:
                yield cls._from_values(values)
        except Exception:  # msgpack raises several types for broken input; ValueError ours
            yield None

    @classmethod
    def _from_values(cls, values: Any) -> AuditEntry:
        if not isinstance(values, list) or len(values) < 10:
            raise ValueError("not an audit entry: expected a list of at least 10 fields")
        fields = dict(zip(_FIELDS, values, strict=False))
        fields["factors"] = tuple((str(n), int(c)) for n, c in fields.get("factors") or ())
        fields["signals"] = tuple(str(s) for s in fields.get("signals") or ())
        try:
            return cls(**fields)
        except TypeError as error:
            raise ValueError(f"not an audit entry: {error}") from None

    def as_dict(self) -> dict[str, Any]:
        """The entry as JSON-ready data, with scores in [0, 1]."""
        return {
            "time_ms": self.time_ms,
            "person": self.person,
            "campaign": self.campaign,
            "channel": self.channel,
            "segment": self.segment,
            "fallback_segment": self.fallback_segment,
            "outcome": self.outcome,
            "reason": self.reason,
            "rule": self.rule,
            "score": None if self.score_milli is None else self.score_milli / 1000,
            "factors": {name: milli / 1000 for name, milli in self.factors},
            "signals": list(self.signals),
            "inferred": self.inferred,
            "third_party": self.third_party,
            "explained": self.explained,
            "event_age": self.event_age,
            "shadow": self.shadow,
            "policy": self.policy,
        }
