"""TCF v2 consent strings: the IAB's own examples decode to what their sources say, and every
malformed string is refused with a message a person can read."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from throttle.tcf import MAX_LENGTH, ConsentStringError, TcfConsent, decode

# --- A test-only encoder: each helper returns bits as a string of '0' and '1'. ---


def uint(value: int, width: int) -> str:
    return format(value, f"0{width}b")


def flags(members: Iterable[int], size: int) -> str:
    chosen = set(members)
    return "".join("1" if i in chosen else "0" for i in range(1, size + 1))


def letters(code: str) -> str:
    return uint(ord(code[0]) - ord("A"), 6) + uint(ord(code[1]) - ord("A"), 6)


def deciseconds(moment: datetime) -> int:
    return round(moment.timestamp() * 10)


def bitfield_vendors(members: Iterable[int], max_id: int) -> str:
    return uint(max_id, 16) + "0" + flags(members, max_id)


def range_entries(ranges: Iterable[tuple[int, int]]) -> str:
    entries = list(ranges)
    out = uint(len(entries), 12)
    for start, end in entries:
        out += "0" + uint(start, 16) if start == end else "1" + uint(start, 16) + uint(end, 16)
    return out


def range_vendors(ranges: Iterable[tuple[int, int]], max_id: int) -> str:
    return uint(max_id, 16) + "1" + range_entries(ranges)


NO_VENDORS = bitfield_vendors((), 0)
NO_RESTRICTIONS = uint(0, 12)
CREATED = datetime(2024, 5, 17, 9, 30, 12, 300000, tzinfo=UTC)
UPDATED = datetime(2025, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)


def core(
    *,
    version: int = 2,
    cmp_id: int = 300,
    cmp_version: int = 4,
    consent_screen: int = 1,
    language: str = "EN",
    vendor_list_version: int = 150,
    policy_version: int = 4,
    service_specific: bool = True,
    non_standard_texts: bool = False,
    special_features: Iterable[int] = (),
    purposes: Iterable[int] = (),
    legitimate_interests: Iterable[int] = (),
    purpose_one_treatment: bool = False,
    country: str = "DE",
    vendors: str = NO_VENDORS,
    vendor_interests: str = NO_VENDORS,
    restrictions: str = NO_RESTRICTIONS,
) -> str:
    return (
        uint(version, 6)
        + uint(deciseconds(CREATED), 36)
        + uint(deciseconds(UPDATED), 36)
        + uint(cmp_id, 12)
        + uint(cmp_version, 12)
        + uint(consent_screen, 6)
        + letters(language)
        + uint(vendor_list_version, 12)
        + uint(policy_version, 6)
        + str(int(service_specific))
        + str(int(non_standard_texts))
        + flags(special_features, 12)
        + flags(purposes, 24)
        + flags(legitimate_interests, 24)
        + str(int(purpose_one_treatment))
        + letters(country)
        + vendors
        + vendor_interests
        + restrictions
    )


def publisher_tc(
    consents: Iterable[int] = (), interests: Iterable[int] = (), custom: int = 0
) -> str:
    return "011" + flags(consents, 24) + flags(interests, 24) + uint(custom, 6) + "01" * custom


def b64(bits: str) -> str:
    """Bits to base64url without padding, as a CMP writes a segment (zero bits fill the byte)."""
    bits += "0" * (-len(bits) % 8)
    data = int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def encode(*segments: str) -> str:
    return ".".join(b64(segment) for segment in segments)


def refused(consent_string: str, *words: str) -> str:
    """Decode must fail with a ConsentStringError whose message contains `words`, reads as
    plain words and does not echo the string back."""
    with pytest.raises(ConsentStringError) as caught:
        decode(consent_string)
    message = str(caught.value)
    assert message and "\n" not in message
    for word in words:
        assert word in message
    if len(consent_string) > 4:
        assert consent_string not in message
    for jargon in ("Traceback", "Error", "index", "binascii", "b'", "\\x"):
        assert jargon not in message
    return message


# --- The IAB's own strings. ---

# InteractiveAdvertisingBureau/iabtcf-java, iabtcf-decoder/src/test/java/com/iabtcf/decoder/
# TCStringV2Test.java, testCanConstructTCModelFromBase64String.
IABTCF_JAVA_CORE = "COtybn4PA_zT4KjACBENAPCIAEBAAECAAIAAAAAAAAAA"
# Same file, testConstructConsentsFromBitFields and testCanParseAllParts.
IABTCF_JAVA_BITFIELDS = (
    "COrEAV4OrXx94ACABBENAHCIAD-AAAAAAACAAxAAAAgAIAwgAgAAAAEAgQAAAAAEAYQAQAAAACAAAABAAA"
)
# Same file, testRange: the disclosed vendors segment that follows both strings.
IABTCF_JAVA_DISCLOSED = (
    "IFoEUQQgAIQwgIwQABAEAAAAOIAACAIAAAAQAIAgEAACEAAAAAgAQBAAAAAAAGBAAgAAAAAAAFAAECAAAgAAQARAEQ"
    "AAAAAJAAIAAgAAAYQEAAAQmAgBC3ZAYzUw"
)


def test_iabtcf_java_core_string_metadata() -> None:
    consent = decode(IABTCF_JAVA_CORE)
    assert consent.version == 2
    assert consent.created == datetime(2020, 1, 26, 17, 1, tzinfo=UTC)
    assert consent.last_updated == datetime(2021, 2, 2, 17, 1, tzinfo=UTC)
    assert consent.cmp_id == 675
    assert consent.cmp_version == 2
    assert consent.consent_screen == 1
    assert consent.vendor_list_version == 15
    assert consent.policy_version == 2
    assert consent.consent_language == "EN"
    assert consent.publisher_country == "AA"
    assert consent.is_service_specific is False
    assert consent.purpose_one_treatment is True
    assert consent.use_non_standard_texts is False
    assert consent.special_feature_opt_ins == {1}
    assert consent.purpose_consents == {2, 10}
    assert consent.purpose_legitimate_interests == {2, 9}
    assert consent.publisher_purpose_consents is None
    assert consent.publisher_purpose_legitimate_interests is None


def test_iabtcf_java_bitfield_vendors() -> None:
    consent = decode(IABTCF_JAVA_BITFIELDS)
    assert consent.purpose_consents == {3, 4, 5, 6, 7, 8, 9}
    assert consent.vendor_consents == {23, 37, 47, 48, 53, 65, 98}
    assert consent.vendor_legitimate_interests == {37, 47, 48, 53, 65, 98, 129}


def test_iabtcf_java_all_four_segments_with_a_padded_publisher_tc() -> None:
    # testCanParseAllParts: the publisher TC segment is padded ('='); the IAB's Java decoder
    # takes it, and so do we. Its source asserts one publisher purpose consent.
    consent = decode(
        IABTCF_JAVA_BITFIELDS + ".IBAgAAAgAIAwgAgAAAAEAAAACA.QAagAQAgAIAwgA.cAAAAAAAITg="
    )
    assert consent.publisher_purpose_consents is not None
    assert len(consent.publisher_purpose_consents) == 1
    assert consent.vendor_consents == {23, 37, 47, 48, 53, 65, 98}


def test_iabtcf_java_range_encoded_vendor_legitimate_interests() -> None:
    # testCanParseRangeEncodedVendorLegitimateInterests.
    consent = decode("COv__-wOv__-wC2AAAENAPCgAAAAAAAAAAAAA_wAQA_gEBABAEAAAA")
    assert consent.vendor_legitimate_interests == {128}


@pytest.mark.parametrize(
    ("core_string", "vendors"),
    [
        ("COwBOpCOwBOpCLqAAAENAPCAAAAAAAAAAAAAFfwAYFfAV-BVkAGBVYFWAAA", {702, 703}),
        ("COwBOpCOwBOpCLqAAAENAPCAAAAAAAAAAAAAFfwAQFfgUbABAUaAAA", {703}),
    ],
)
def test_iabtcf_java_range_encoded_vendor_consents(core_string: str, vendors: set[int]) -> None:
    # testRange: each core string is followed by a disclosed vendors segment.
    assert decode(f"{core_string}.{IABTCF_JAVA_DISCLOSED}").vendor_consents == vendors


def test_iabtcf_java_purpose_consents() -> None:
    # testPurposesConsent.
    consent = decode("COwxsONOwxsONKpAAAENAdCAAMAAAAAAAAAAAAAAAAAA")
    assert consent.purpose_consents >= {1, 2}
    assert consent.consents_to([1, 2])


def test_iabtcf_java_two_part_string() -> None:
    # iabtcf-decoder/src/test/java/com/iabtcf/decoder/TCStringDecoderTest.java,
    # testCanCreateModelFromTwoPartsString.
    consent = decode(f"{IABTCF_JAVA_CORE}.{IABTCF_JAVA_DISCLOSED}")
    assert consent.cmp_id == 675
    assert consent.publisher_purpose_consents is None


def test_iabtcf_java_publisher_purposes_reach_purpose_24() -> None:
    # TCStringV2Test.java, testPublisherPurposes: the publisher TC segment is given there as
    # bits; consent to purpose 1, legitimate interest in purpose 24, two custom purposes.
    segment = (
        "011"  # segment type
        "100000000000000000000000"  # PubPurposesConsent
        "000000000000000000000001"  # PubPurposesLITransparency
        "000010"  # number of custom purposes
        "01"  # CustomPurposesConsent
        "11"  # CustomPurposesLITransparency
        "000"  # padding
    )
    consent = decode(f"{IABTCF_JAVA_CORE}.{b64(segment)}")
    assert consent.publisher_purpose_consents == frozenset({1})
    assert consent.publisher_purpose_legitimate_interests == frozenset({24})


def test_iabtcf_java_publisher_restrictions_are_read_past() -> None:
    # TCStringV2Test.java, testPublisherRestrictions: a core string given as bits, ending in
    # three publisher restrictions with no vendors.
    bits = (
        "0000100011101011100"
        "1000000000000001010"
        "0000001110101110010"
        "0000000000000101000"
        "0000110011111000000"
        "0000000000000000100"
        "0011010000000011110"
        "0001000000000000000"
        "0000000000000000000"
        "0000000000000000000"
        "0000000000000000000"
        "0000000000000000000"
        "0000000000000000000"
        "000000000011"
        "000001" "01" "000000000000"
        "000010" "00" "000000000000"
        "000011" "10" "000000000000"
        "0"
    )  # fmt: skip
    assert decode(b64(bits)).version == 2
    # Cut inside the third restriction: refused, so the decoder did reach the restrictions.
    refused(b64(bits[:-13]), "ends in the middle of its publisher restriction vendors")


def test_iabtcf_java_default_segment_type_is_ignored() -> None:
    # TCStringV2Test.java, testDefaultSegmentType: a second segment of type 0.
    consent = decode(f"{IABTCF_JAVA_CORE}.{b64('00000000')}")
    assert consent.publisher_purpose_consents is None


@pytest.mark.parametrize(
    ("consent_string", "version"),
    [
        # TCStringDecoderTest.java, shouldFailIfANonSupportedVersionIsPassed: the byte 13.
        ("DQ", 3),
        # TCStringDecoderTest.java, testReadBeyondBuffer: the bits 0000011.
        ("Bg", 1),
        # InteractiveAdvertisingBureau/iabtcf-es, modules/core/test/ReportedIssues.test.ts,
        # '156 it should auto detect 1 version': a TCF 1.1 string.
        (
            "BOhwdphOxFC7tAHABBFRC--AAAAuhr_7__7-_9_-_f__9uj3Or_v_f__32ccL59v_h_7v-_7fi_20nV4u_1v"
            "ft9yfk1-5ctDztp507iakivXmqdeb9v_nz3_5pxP78k89r7337Ew_v8_v-b7BCON_YxEiA",
            1,
        ),
    ],
)
def test_iab_strings_of_other_versions_are_refused(consent_string: str, version: int) -> None:
    refused(consent_string, f"TCF version {version} is not supported")


def test_iabtcf_es_bitfield_shorter_than_its_max_vendor_id_is_refused() -> None:
    # iabtcf-es, modules/core/test/ReportedIssues.test.ts, '142 it should throw an error if the
    # bitfield length does not match the maxId': the disclosed vendors segment is cut short.
    refused(
        "CLSYjTaOngnCIAOABBENAXCMAGOAABBAAA7IA5n-m7fP6_3fbqVv6E__PoA5Aqff3aJx8tv_1967rfnQEQoAIAAQ"
        "CrwkAEABAcACABIMACAAuApEVABABUSABgBCAVSAtIoACACIArYQAHACgAFgAVwBJgDcAI7AWgMAAgBiKgAgBMg"
        "FfKQAQBRkQAQA4AFiBAAoA-AEVAJlAVgAtYcACAJcAr4eABAK8OgBgFzAOmAqwgABAWyA.IFukWSQh",
        "disclosed vendors segment ends in the middle",
    )


def test_iabtcf_es_restriction_repeated_for_a_vendor_decodes() -> None:
    # iabtcf-es, modules/core/test/ReportedIssues.test.ts, '201 unable to decode valid TCF2
    # String': a purpose restriction encoded for one vendor several times.
    consent = decode(
        "CO4VGswO4VGswAfZCBDEAzCsAP_AAH_AAAigGUNf_X9fb2vj-_599_t0eY1f9_63t-wzjheMs-8NyZ-X_J4Wv2My"
        "vB34JqQKGRgkunLBAQdtHGncTQgBwIlViTLMY02MjzNKJrJEilsbe2dYGH9vn8XT_ZKZ70-_v__7v3___33_5Ayh"
        "r_6_r7e18f3_Pvv9ujzGr_v_W9v2GccLxln3huTPy_5PC1-xmV4O_BNSBQyMEl05YICDto407iaEAOBEqsSZZjGm"
        "xkeZpRNZIkUtjb2zrAw_t8_i6f7JTPen39___d-___--__ICgKAOAAcAA4AFAAjgB6AEYALcGACAW0AtoJAHAAOA"
        "AcACgARwA9ACMAFuFABALaAW0GgDgAHAAOABQAI4AegBGAC3DgAgFtALaEQBwADgAHAAoAEcAPQAjABbiQAQC2gF"
        "tCoA4ABwADgAUACOAHoARgAtxYAIBbQC2hkAcAA4ABwAKABHAD0AIwAW40AEAtoBbQ6AOAAcAA4AFAAjgB6AEYAL"
        "ceACAW0AtohAHAAOAAcACgARwA9ACMAFuRABALaAW0SgDgAHAAOABQAI4AegBGAC3JgAgFtALaKQBwADgAHAAoAE"
        "cAPQAjABblQAQC2gFtA"
    )
    assert consent.version == 2


# InteractiveAdvertisingBureau/GDPR-Transparency-and-Consent-Framework, TCFv2/IAB Tech Lab -
# Consent string and vendor list formats v2.md, "TC String Format" and "Signaling OOB".
SPEC_SERVICE_SPECIFIC = (
    "CLcVDxRMWfGmWAVAHCENAXCkAKDAADnAABRgA5mdfCKZuYJez-NQm0TBMYA4oCAAGQYIAAAAAAEAIAEgAA"
    ".argAC0gAAAAAAAAAAAA"
)
SPEC_OOB_CORE = "COvFyGBOvFyGBAbAAAENAPCAAOAAAAAAAAAAAEEUACCKAAA"


def test_spec_service_specific_string_with_publisher_tc() -> None:
    # The spec names the segments (core, then publisher TC) but not the values; the values
    # are those the CPAN module GDPR::IAB::TCFv2 documents for this string in its synopsis.
    consent = decode(SPEC_SERVICE_SPECIFIC)
    assert consent.is_service_specific is True
    assert consent.publisher_purpose_consents is not None
    assert consent.created == datetime(2008, 12, 7, 10, 4, 17, 700000, tzinfo=UTC)
    assert consent.last_updated == datetime(2012, 1, 10, 17, 10, 13, 400000, tzinfo=UTC)
    assert (consent.cmp_id, consent.cmp_version, consent.consent_screen) == (21, 7, 2)
    assert consent.consent_language == "EN"
    assert consent.vendor_list_version == 23
    assert consent.purpose_consents >= {1, 3, 9, 10}


def test_spec_global_string_with_all_four_segments() -> None:
    consent = decode(
        "COw4XqLOw4XqLAAAAAENAXCAAAAAAAAAAAAAAAAAAAAA.IFukWSQgAIQwgI0QEByFAAAAeIAACAIgSAAQAIAgEQ"
        "ACEABAAAgAQFAEAIAAAGBAAgAAAAQAIFAAMCQAAgAAQiRAEQAAAAANAAIAAggAIYQFAAARmggBC3ZCYzU2yIA.QF"
        "ukWSQgAIQwgI0QEByFAAAAeIAACAIgSAAQAIAgEQACEABAAAgAQFAEAIAAAGBAAgAAAAQAIFAAMCQAAgAAQiRAEQ"
        "AAAAANAAIAAggAIYQFAAARmggBC3ZCYzU2yIA.YAAAAAAAAAAAAAAAAAA"
    )
    assert consent.is_service_specific is False
    # The publisher TC segment is there and grants nothing, so it answers, and answers no.
    assert consent.publisher_purpose_consents == frozenset()
    assert not consent.consents_to([1])


@pytest.mark.parametrize(
    "consent_string",
    [
        SPEC_OOB_CORE,
        f"{SPEC_OOB_CORE}.{IABTCF_JAVA_DISCLOSED}",
        # Example 3's string once the CMP adds the allowed vendors segment.
        "CGL23UdMFJzvuA9ACCENAXCEAC0AAGrAAA5YA5ht7-_d_7_vd-f-nrf4_4A4hM4JCKoK4YhmAqABgAEgAA.IFut_"
        "a83_Ma_t-_SvB3v4-IAeIAACAIgSAAQAIAgEQACEABAAAgAQFAEAIAAAGBAAgAAAAQAIFAAMCQAAgAAQiRAEQAAA"
        "AANAAIAAggAIYQFAAARmggBC3ZCYzU2yIA.QFulWfTw4obx_Z2zUj6XkNIAeIAACAIgSAAQAIAgEQACEABAAAgAQ"
        "FAEAIAAAGBAAgAAAAQAIFAAMCQAAgAAQiRAEQAAAAANAAIAAggAIYQFAAARmggBC3ZCYzU2yIA",
    ],
)
def test_spec_out_of_band_examples_decode(consent_string: str) -> None:
    consent = decode(consent_string)
    assert consent.version == 2
    assert consent.publisher_purpose_consents is None


def test_spec_example_with_a_malformed_third_segment_is_refused() -> None:
    # Example 3 also shows `...zUw.PVAfDObdrA` as core, disclosed and allowed vendors, but the
    # last segment's type bits say 1 (disclosed vendors), not 2, and it claims 3852 range
    # entries in 56 bits. A decoder that checks the segments it skips must refuse it.
    refused(
        f"{SPEC_OOB_CORE}.{IABTCF_JAVA_DISCLOSED}.PVAfDObdrA",
        "disclosed vendors segment ends in the middle of its vendor IDs",
    )


# --- Strings built here, field by field. ---


def test_every_core_field_is_read() -> None:
    consent = decode(
        encode(
            core(
                cmp_id=4095,
                cmp_version=17,
                consent_screen=63,
                language="FR",
                vendor_list_version=4095,
                policy_version=5,
                service_specific=True,
                non_standard_texts=True,
                special_features=(1, 2, 12),
                purposes=(1, 3, 4, 5, 6),
                legitimate_interests=(2, 7, 24),
                purpose_one_treatment=True,
                country="ZZ",
                vendors=bitfield_vendors((1, 8, 9), 9),
                vendor_interests=bitfield_vendors((3,), 3),
            )
        )
    )
    assert consent == TcfConsent(
        version=2,
        created=CREATED,
        last_updated=UPDATED,
        cmp_id=4095,
        cmp_version=17,
        consent_screen=63,
        consent_language="FR",
        vendor_list_version=4095,
        policy_version=5,
        is_service_specific=True,
        use_non_standard_texts=True,
        special_feature_opt_ins=frozenset({1, 2, 12}),
        purpose_consents=frozenset({1, 3, 4, 5, 6}),
        purpose_legitimate_interests=frozenset({2, 7, 24}),
        purpose_one_treatment=True,
        publisher_country="ZZ",
        vendor_consents=frozenset({1, 8, 9}),
        vendor_legitimate_interests=frozenset({3}),
        publisher_purpose_consents=None,
        publisher_purpose_legitimate_interests=None,
    )
    assert consent.created.tzinfo is UTC
    assert consent.created.microsecond == 300000  # deciseconds survive


def test_purpose_24_is_the_last_bit_of_the_field() -> None:
    consent = decode(encode(core(purposes=(24,), legitimate_interests=(1,))))
    assert consent.purpose_consents == {24}
    assert consent.purpose_legitimate_interests == {1}
    assert consent.consents_to([24])
    assert not consent.consents_to([23])


def test_range_encoded_vendors_with_singles_overlaps_and_any_order() -> None:
    ranges = [(40, 40), (10, 12), (11, 15), (3, 3), (14, 14), (20, 22), (1, 2)]
    consent = decode(
        encode(core(vendors=range_vendors(ranges, 40), vendor_interests=range_vendors([], 0)))
    )
    assert consent.vendor_consents == {1, 2, 3, 10, 11, 12, 13, 14, 15, 20, 21, 22, 40}
    assert consent.vendor_legitimate_interests == frozenset()


def test_many_ranges_over_every_vendor_id_expand_once() -> None:
    every = [(1, 65535)] * 200
    consent = decode(encode(core(vendors=range_vendors(every, 65535))))
    assert len(consent.vendor_consents) == 65535


@pytest.mark.parametrize(
    ("ranges", "max_id", "words"),
    [
        ([(0, 4)], 10, "from 0 to 4"),
        ([(7, 5)], 10, "from 7 to 5"),
        ([(5, 11)], 10, "from 5 to 11, which is not an ascending range of vendor IDs within 1-10"),
        ([(11, 11)], 10, "from 11 to 11"),
    ],
)
def test_vendor_ranges_outside_1_to_max_vendor_id_are_refused(
    ranges: list[tuple[int, int]], max_id: int, words: str
) -> None:
    refused(encode(core(vendors=range_vendors(ranges, max_id))), "vendor consents", words)


def test_publisher_restrictions_are_read_past() -> None:
    restrictions = (
        uint(2, 12)
        + uint(3, 6)
        + uint(0, 2)
        + range_entries([(5, 5), (8, 12)])
        + uint(4, 6)
        + uint(1, 2)
        + range_entries([(700, 900)])
    )
    consent = decode(encode(core(purposes=(3, 4), restrictions=restrictions)))
    assert consent.consents_to([3, 4])


def test_publisher_restriction_with_a_backwards_range_is_refused() -> None:
    restrictions = uint(1, 12) + uint(3, 6) + uint(0, 2) + range_entries([(9, 2)])
    message = refused(encode(core(restrictions=restrictions)), "publisher restriction vendors")
    assert "within" not in message


def test_consents_to_uses_the_publisher_tc_segment_when_present() -> None:
    # The person let vendors personalize but told the site itself no: the site's answer wins.
    consent = decode(encode(core(purposes=(1, 3, 4, 5, 6)), publisher_tc(consents=(1,))))
    assert consent.purpose_consents == {1, 3, 4, 5, 6}
    assert consent.publisher_purpose_consents == frozenset({1})
    assert not consent.consents_to([3, 4])
    assert consent.consents_to([1])


def test_consents_to_uses_the_publisher_tc_segment_even_when_it_grants_more() -> None:
    consent = decode(encode(core(purposes=()), publisher_tc(consents=(3, 4), interests=(7,))))
    assert consent.consents_to([3, 4])
    assert consent.publisher_purpose_legitimate_interests == frozenset({7})


def test_consents_to_uses_the_core_string_without_a_publisher_tc_segment() -> None:
    consent = decode(encode(core(purposes=(3, 4, 5, 6))))
    assert consent.publisher_purpose_consents is None
    assert consent.consents_to([3, 4, 5, 6])
    assert consent.consents_to(iter([5, 6]))
    assert not consent.consents_to([1, 3])


def test_consents_to_nothing_is_true() -> None:
    assert decode(encode(core())).consents_to([])


def test_custom_purposes_are_read_past() -> None:
    consent = decode(encode(core(), publisher_tc(consents=(5,), custom=63)))
    assert consent.publisher_purpose_consents == frozenset({5})


def test_publisher_tc_cut_inside_its_custom_purposes_is_refused() -> None:
    segment = "011" + "0" * 48 + uint(40, 6) + "01" * 5
    refused(
        f"{encode(core())}.{b64(segment)}",
        "the publisher TC segment ends in the middle of its custom purposes",
    )


def test_two_publisher_tc_segments_are_refused() -> None:
    refused(encode(core(), publisher_tc((1,)), publisher_tc((3,))), "more than one publisher TC")


@pytest.mark.parametrize(
    "segment",
    [
        "001" + bitfield_vendors((1, 5), 9),
        "001" + range_vendors([(1, 3), (7, 7)], 7),
        "010" + bitfield_vendors((), 0),
        "010" + range_vendors([(2, 900)], 1000),
    ],
)
def test_disclosed_and_allowed_vendor_segments_are_read_and_ignored(segment: str) -> None:
    consent = decode(encode(core(purposes=(3,)), segment))
    assert consent.publisher_purpose_consents is None
    assert consent.consents_to([3])


@pytest.mark.parametrize(
    ("segment", "words"),
    [
        ("001" + uint(40, 16) + "0" + "1" * 20, "disclosed vendors segment ends in the middle"),
        ("010" + range_vendors([(5, 9)], 6), "allowed vendors segment lists vendor IDs from 5"),
    ],
)
def test_malformed_vendor_segments_are_refused(segment: str, words: str) -> None:
    refused(f"{encode(core())}.{b64(segment)}", words)


@pytest.mark.parametrize("kind", [0, 4, 5, 6, 7])
def test_segments_of_other_types_are_ignored(kind: int) -> None:
    consent = decode(encode(core(), uint(kind, 3) + "1" * 21, publisher_tc((2,))))
    assert consent.publisher_purpose_consents == frozenset({2})


@pytest.mark.parametrize("version", [0, 1, 3, 63])
def test_versions_other_than_2_are_refused(version: int) -> None:
    message = refused(encode(core(version=version)), f"TCF version {version} is not supported")
    assert "only version 2" in message


def test_the_version_is_reported_before_a_broken_later_segment() -> None:
    refused(encode(core(version=1)) + ".!!", "TCF version 1 is not supported")


def test_every_truncation_is_refused_in_words() -> None:
    full = encode(
        core(
            purposes=(1, 3),
            vendors=range_vendors([(1, 30), (45, 45)], 50),
            vendor_interests=bitfield_vendors((2, 4), 70),
            restrictions=uint(1, 12) + uint(2, 6) + uint(1, 2) + range_entries([(7, 9)]),
        )
    )
    assert decode(full).vendor_consents == set(range(1, 31)) | {45}
    # Dropping the last character may only drop the bits that filled the last byte.
    for end in range(len(full) - 1):
        refused(full[:end])


@pytest.mark.parametrize(
    ("field", "words"),
    [
        (7, "the core segment ends in the middle of its creation time"),
        (112, "the core segment ends in the middle of its consent language"),
        (216, "the core segment ends in the middle of its vendor consents (highest vendor ID)"),
    ],
)
def test_a_cut_names_the_field_it_fell_in(field: int, words: str) -> None:
    refused(b64(core()[:field]), words)


@pytest.mark.parametrize(
    ("consent_string", "words"),
    [
        ("", "consent string is empty"),
        (".", "the core segment is empty"),
        ("=", "the core segment is empty"),
        (".AAAA", "the core segment is empty"),
        (encode(core()) + ".", "segment 2 is empty"),
        (encode(core()) + "..4AAA", "segment 2 is empty"),
        (encode(core()) + ".4AAA.", "segment 3 is empty"),
    ],
)
def test_empty_strings_and_segments_are_refused(consent_string: str, words: str) -> None:
    refused(consent_string, words)


@pytest.mark.parametrize(
    "bad",
    ["+", "/", " ", "\t", "\n", "\x00", "é", "%3D", "=", "==A", ",", '"', "\u200b"],
)
def test_characters_outside_base64url_are_refused(bad: str) -> None:
    good = encode(core())
    middle = len(good) // 2
    refused(
        good[:middle] + bad + good[middle:], "the core segment has characters outside base64url"
    )
    refused(f"{good}.Y{bad}AAAA", "segment 2 has characters outside base64url")


@pytest.mark.parametrize("padded", [" {}", "{} ", "{}\n", "\t{}", "{}\r\n"])
def test_surrounding_whitespace_is_refused(padded: str) -> None:
    refused(padded.format(encode(core())), "characters outside base64url")


def test_a_length_base64url_cannot_produce_is_refused() -> None:
    good = encode(core())
    cut = good[: len(good) - (len(good) - 1) % 4]
    assert len(cut) % 4 == 1
    refused(cut, "the core segment has a length that base64url cannot produce")
    refused("AAAAA", "has a length that base64url cannot produce")


def test_correct_padding_is_accepted_and_too_much_is_not() -> None:
    good = encode(core(purposes=(4,)))
    padded = good + "=" * (-len(good) % 4)
    assert decode(padded).purpose_consents == {4}
    refused(good + "===", "characters outside base64url")


def test_letters_outside_a_to_z_are_refused() -> None:
    bits = core()
    at = 6 + 36 + 36 + 12 + 12 + 6
    refused(b64(bits[:at] + uint(26, 6) + bits[at + 6 :]), "consent language that is not two")
    at = len(core(vendors="", vendor_interests="", restrictions="")) - 12
    refused(b64(bits[:at] + uint(63, 6) + bits[at + 6 :]), "publisher country that is not two")


def test_over_long_strings_are_refused_before_any_work() -> None:
    message = refused("A" * (MAX_LENGTH + 1), str(MAX_LENGTH + 1), str(MAX_LENGTH))
    assert "characters long" in message


def test_a_string_of_exactly_the_longest_length_decodes() -> None:
    head = encode(core(purposes=(6,))) + "."
    rest = MAX_LENGTH - len(head)
    # '4' is 111000: segments of type 7, which the decoder skips; none may be 4k+1 long.
    filler = "4" + "A" * (rest - 1) if rest % 4 != 1 else "4A.4" + "A" * (rest - 5)
    assert len(head + filler) == MAX_LENGTH
    assert decode(head + filler).consents_to([6])


def test_a_decoded_consent_cannot_be_changed() -> None:
    consent = decode(encode(core()))
    with pytest.raises(FrozenInstanceError):
        consent.cmp_id = 1  # type: ignore[misc]


@given(st.text(max_size=300))
def test_any_text_is_decoded_or_refused_in_words(text: str) -> None:
    try:
        decode(text)
    except ConsentStringError as error:
        assert str(error)


@given(st.binary(max_size=200), st.lists(st.binary(min_size=1, max_size=40), max_size=3))
def test_any_bytes_after_a_version_2_header_are_decoded_or_refused(
    body: bytes, segments: list[bytes]
) -> None:
    # 0b000010 opens every version 2 core string, so the decoder reads on into the bytes.
    parts = [b"\x08" + body, *segments]
    text = ".".join(base64.urlsafe_b64encode(part).decode().rstrip("=") for part in parts)
    try:
        consent = decode(text)
    except ConsentStringError as error:
        assert str(error)
    else:
        assert consent.version == 2
