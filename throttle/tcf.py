"""IAB TCF v2 consent strings: the purposes a person consented to, read from `euconsent-v2`.

The IAB Europe Transparency & Consent Framework (TCF) is how most European sites record what
a person agreed to in a consent banner. The banner (a CMP) writes a TC string into the
`euconsent-v2` cookie: dot-separated segments, each base64url without padding, each a
big-endian bit string. The first segment is the core string; the optional others start
with a 3-bit segment type (1 disclosed vendors, 2 allowed vendors, 3 publisher TC).

Throttle reads the whole core string (so a malformed one is refused, not half-read) and the
publisher TC segment. What it decides on are the purpose consents, above all the purposes
that personalization rests on: 3 "create profiles for personalised advertising",
4 "use profiles to select personalised advertising", 5 "create profiles to personalise
content" and 6 "use profiles to select personalised content". TCF 2.2 allows these four
only on consent, never on legitimate interest. Throttle acts for the site (the first party),
so the publisher TC segment, which records the person's choices for the site's own use,
wins over the core string's purposes when the string carries one.

Publisher restrictions are read past and checked, not kept; custom purposes likewise.

Spec: https://github.com/InteractiveAdvertisingBureau/GDPR-Transparency-and-Consent-Framework/
blob/master/TCFv2/IAB%20Tech%20Lab%20-%20Consent%20string%20and%20vendor%20list%20formats%20v2.md
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from itertools import compress, count

MAX_LENGTH = 10_000
"""Longest consent string decoded, in characters: a real one is a few hundred, and a hostile
cookie must not buy much work."""

_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SELECTORS = bytes.maketrans(b"01", b"\x00\x01")
_PUBLISHER_TC = 3
_SEGMENT_NAMES = {1: "disclosed vendors", 2: "allowed vendors", 3: "publisher TC"}


class ConsentStringError(ValueError):
    """A TCF consent string that cannot be decoded; the message says what is wrong with it."""


@dataclass(frozen=True, slots=True)
class TcfConsent:
    """What a decoded TC string says. Purpose and vendor sets hold the IDs whose bit is set.

    `publisher_purpose_consents` and `publisher_purpose_legitimate_interests` are `None`
    when the string has no publisher TC segment.
    """

    version: int
    created: datetime
    last_updated: datetime
    cmp_id: int
    cmp_version: int
    consent_screen: int
    consent_language: str
    vendor_list_version: int
    policy_version: int
    is_service_specific: bool
    use_non_standard_texts: bool
    special_feature_opt_ins: frozenset[int]
    purpose_consents: frozenset[int]
    purpose_legitimate_interests: frozenset[int]
    purpose_one_treatment: bool
    publisher_country: str
    vendor_consents: frozenset[int]
    vendor_legitimate_interests: frozenset[int]
    publisher_purpose_consents: frozenset[int] | None
    publisher_purpose_legitimate_interests: frozenset[int] | None

    def consents_to(self, purposes: Iterable[int]) -> bool:
        """True when the person consented to every one of `purposes` (e.g. `(3, 4)`).

        The publisher TC segment answers when present, since throttle acts for the site;
        otherwise the core string's purpose consents do.
        """
        granted = self.publisher_purpose_consents
        if granted is None:
            granted = self.purpose_consents
        return granted.issuperset(purposes)


def decode(consent_string: str) -> TcfConsent:
    """Decode a TCF v2 consent string, such as the value of the `euconsent-v2` cookie.

    Raises `ConsentStringError` when the string is not one: too long, not base64url, cut
    short, of another TCF version, or with fields that contradict each other.
    """
    if len(consent_string) > MAX_LENGTH:
        raise ConsentStringError(
            f"consent string is {len(consent_string)} characters long; "
            f"at most {MAX_LENGTH} are decoded"
        )
    if not consent_string:
        raise ConsentStringError("consent string is empty")
    segments = consent_string.split(".")
    # The core first, so that a string of another version says so before anything else.
    consent = _core(_Bits(_unbase64(segments[0], "the core segment"), "core segment"))
    publisher: tuple[frozenset[int], frozenset[int]] | None = None
    for number, text in enumerate(segments[1:], start=2):
        bits = _Bits(_unbase64(text, f"segment {number}"), f"segment {number}")
        kind = bits.uint(3, "segment type")
        if kind in _SEGMENT_NAMES:
            bits.name = f"{_SEGMENT_NAMES[kind]} segment"
        if kind == _PUBLISHER_TC:
            if publisher is not None:
                raise ConsentStringError("consent string has more than one publisher TC segment")
            publisher = _publisher_tc(bits)
        elif kind in (1, 2):
            _skip_vendors(bits, "vendor IDs")
        # Other types are not defined by TCF 2.2; skipping them keeps a newer CMP's strings usable.
    if publisher is None:
        return consent
    return replace(
        consent,
        publisher_purpose_consents=publisher[0],
        publisher_purpose_legitimate_interests=publisher[1],
    )


def _core(bits: _Bits) -> TcfConsent:
    version = bits.uint(6, "version")
    if version != 2:
        raise ConsentStringError(f"TCF version {version} is not supported; only version 2 is")
    consent = TcfConsent(
        version=version,
        created=bits.time("creation time"),
        last_updated=bits.time("last update time"),
        cmp_id=bits.uint(12, "CMP ID"),
        cmp_version=bits.uint(12, "CMP version"),
        consent_screen=bits.uint(6, "consent screen"),
        consent_language=bits.letters("consent language"),
        vendor_list_version=bits.uint(12, "vendor list version"),
        policy_version=bits.uint(6, "policy version"),
        is_service_specific=bits.flag("service-specific flag"),
        use_non_standard_texts=bits.flag("non-standard texts flag"),
        special_feature_opt_ins=bits.bitfield(12, "special feature opt-ins"),
        purpose_consents=bits.bitfield(24, "purpose consents"),
        purpose_legitimate_interests=bits.bitfield(24, "purpose legitimate interests"),
        purpose_one_treatment=bits.flag("purpose one treatment"),
        publisher_country=bits.letters("publisher country"),
        vendor_consents=_vendors(bits, "vendor consents"),
        vendor_legitimate_interests=_vendors(bits, "vendor legitimate interests"),
        publisher_purpose_consents=None,
        publisher_purpose_legitimate_interests=None,
    )
    # Read to the end so that a string cut inside its publisher restrictions is refused too.
    for _ in range(bits.uint(12, "number of publisher restrictions")):
        bits.uint(8, "publisher restriction")  # purpose ID (6 bits), restriction type (2)
        _ranges(bits, None, "publisher restriction vendors")
    return consent


def _publisher_tc(bits: _Bits) -> tuple[frozenset[int], frozenset[int]]:
    consents = bits.bitfield(24, "purpose consents")
    interests = bits.bitfield(24, "purpose legitimate interests")
    custom = bits.uint(6, "number of custom purposes")
    bits.skip(2 * custom, "custom purposes")
    return consents, interests


def _vendors(bits: _Bits, what: str) -> frozenset[int]:
    """A vendor section: MaxVendorId, then a bitfield of that many bits or a list of ranges."""
    max_id = bits.uint(16, f"{what} (highest vendor ID)")
    if not bits.flag(f"{what} (encoding)"):
        return bits.bitfield(max_id, what)
    ranges = sorted(_ranges(bits, max_id, what))
    # Merge before expanding, so overlapping ranges cost no more than one covering them.
    ids: set[int] = set()
    reached = 0
    for start, end in ranges:
        start = max(start, reached + 1)
        if start <= end:
            ids.update(range(start, end + 1))
            reached = end
    return frozenset(ids)


def _skip_vendors(bits: _Bits, what: str) -> None:
    max_id = bits.uint(16, f"{what} (highest vendor ID)")
    if bits.flag(f"{what} (encoding)"):
        _ranges(bits, max_id, what)
    else:
        bits.skip(max_id, what)


def _ranges(bits: _Bits, max_id: int | None, what: str) -> list[tuple[int, int]]:
    """Read NumEntries and its range entries, checking each; return them as (start, end)."""
    ranges = []
    for _ in range(bits.uint(12, f"{what} (number of ranges)")):
        is_range = bits.flag(f"{what} (range)")
        start = bits.uint(16, f"{what} (range start)")
        end = bits.uint(16, f"{what} (range end)") if is_range else start
        if start < 1 or end < start or (max_id is not None and end > max_id):
            limit = "" if max_id is None else f" within 1-{max_id}"
            raise ConsentStringError(
                f"the {bits.name} lists {what} from {start} to {end}, "
                f"which is not an ascending range of vendor IDs{limit}"
            )
        ranges.append((start, end))
    return ranges


def _unbase64(text: str, where: str) -> str:
    """Decode one segment into a string of '0' and '1', one character a bit."""
    # The spec says no padding, but decoders from the IAB (iabtcf-java) accept it.
    stripped = text[:-2] if text.endswith("==") else text[:-1] if text.endswith("=") else text
    if not stripped:
        raise ConsentStringError(f"{where} is empty")
    if not _SEGMENT.fullmatch(stripped):
        raise ConsentStringError(
            f"{where} has characters outside base64url (A-Z, a-z, 0-9, '-' and '_')"
        )
    if len(stripped) % 4 == 1:
        raise ConsentStringError(f"{where} has a length that base64url cannot produce")
    # Checked above, so this cannot fail: only the padding the encoder left off is added.
    data = base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    # A string of digits makes every read a slice: cost follows the field, not the segment.
    return bin(int.from_bytes(data, "big") | 1 << len(data) * 8)[3:]


class _Bits:
    """Reads fields in order from a segment's bits; says which field ran past the end."""

    __slots__ = ("_at", "_bits", "name")

    def __init__(self, bits: str, name: str) -> None:
        self._bits = bits
        self._at = 0
        self.name = name

    def _take(self, width: int, what: str) -> str:
        end = self._at + width
        if end > len(self._bits):
            raise ConsentStringError(f"the {self.name} ends in the middle of its {what}")
        taken = self._bits[self._at : end]
        self._at = end
        return taken

    def uint(self, width: int, what: str) -> int:
        return int(self._take(width, what), 2)

    def flag(self, what: str) -> bool:
        return self._take(1, what) == "1"

    def skip(self, width: int, what: str) -> None:
        self._take(width, what)

    def bitfield(self, size: int, what: str) -> frozenset[int]:
        """IDs 1..size whose bit is set; the first bit is ID 1."""
        # '0'/'1' become bytes 0/1, which `compress` reads as selectors: a loop in C, not Python.
        selectors = self._take(size, what).encode().translate(_SELECTORS)
        return frozenset(compress(count(1), selectors))

    def time(self, what: str) -> datetime:
        return _EPOCH + timedelta(milliseconds=100 * self.uint(36, what))

    def letters(self, what: str) -> str:
        first, second = self.uint(6, what), self.uint(6, what)
        if first > 25 or second > 25:
            raise ConsentStringError(f"the {self.name} has a {what} that is not two letters")
        return chr(ord("A") + first) + chr(ord("A") + second)
