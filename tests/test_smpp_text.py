"""SMPP text without sockets: GSM 03.38, encodings, splitting without cutting a character,
UDH/SAR concatenation, reassembly, delivery receipts."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pmnc.protocols.smpptext import (
    DATA_CODING_BINARY,
    DATA_CODING_GSM,
    DATA_CODING_IA5,
    DATA_CODING_LATIN1,
    DATA_CODING_UCS2,
    Concatenation,
    Fragment,
    Reassembly,
    Receipt,
    TextError,
    concatenation,
    decode_text,
    encode_text,
    fragments,
    gsm_decode,
    gsm_encode,
    gsm_length,
    is_gsm,
    join_parts,
    pack_7bit,
    parse_receipt,
    parse_udh,
    udh_fill_bits,
    unpack_7bit,
)

# 3GPP TS 23.038 6.2.1, written out again here so a slip in the module's table shows.
GSM_NON_ASCII = {
    0x01: "£", 0x03: "¥", 0x04: "è", 0x05: "é", 0x06: "ù", 0x07: "ì", 0x08: "ò", 0x09: "Ç", 0x0B: "Ø", 0x0C: "ø",
    0x0E: "Å", 0x0F: "å", 0x10: "Δ", 0x12: "Φ", 0x13: "Γ", 0x14: "Λ", 0x15: "Ω", 0x16: "Π", 0x17: "Ψ",
    0x18: "Σ", 0x19: "Θ", 0x1A: "Ξ", 0x1C: "Æ", 0x1D: "æ", 0x1E: "ß", 0x1F: "É", 0x24: "¤", 0x40: "¡",
    0x5B: "Ä", 0x5C: "Ö", 0x5D: "Ñ", 0x5E: "Ü", 0x5F: "§", 0x60: "¿", 0x7B: "ä", 0x7C: "ö", 0x7D: "ñ",
    0x7E: "ü", 0x7F: "à",
}
GSM_EXTENSION = {"\f": 0x0A, "^": 0x14, "{": 0x28, "}": 0x29, "\\": 0x2F, "[": 0x3C, "~": 0x3D, "]": 0x3E,
                 "|": 0x40, "€": 0x65}
GSM_BASIC = {**{0x00: "@", 0x02: "$", 0x0A: "\n", 0x0D: "\r", 0x11: "_"},
             **{code: chr(code) for code in range(0x20, 0x80)
                if chr(code).isalnum() or chr(code) in " !\"#%&'()*+,-./:;<=>?"},
             **GSM_NON_ASCII}
GSM_CHARS = sorted(set(GSM_BASIC.values()) | set(GSM_EXTENSION))
ASTRAL = "\U0001f600"  # 😀: a surrogate pair in UTF-16


# --- GSM 03.38 ----------------------------------------------------------------------------------

def test_the_gsm_alphabet_is_23038s() -> None:
    assert len(GSM_BASIC) == 127  # 128 codes, 0x1B is the escape
    for code, char in GSM_BASIC.items():
        assert gsm_encode(char) == bytes((code,)), char
        assert gsm_decode(bytes((code,))) == char
    for char, code in GSM_EXTENSION.items():
        assert gsm_encode(char) == bytes((0x1B, code)), char
        assert gsm_decode(bytes((0x1B, code))) == char
    # nothing else in the BMP is taken for GSM (a look-alike such as ç or the ohm sign is not)
    assert [char for char in map(chr, range(0x3000)) if is_gsm(char)] == sorted(GSM_CHARS, key=ord)
    assert not is_gsm("ç") and not is_gsm("\u2126") and not is_gsm("\x1b")


def test_gsm_encode_names_what_it_cannot_encode() -> None:
    with pytest.raises(TextError, match=r"'Ж' \(U\+0416\) at position 3 is not in the GSM 03.38 alphabet"):
        gsm_encode("abcЖ")
    assert gsm_length("a€{") == 5
    with pytest.raises(TextError, match="position 1"):
        gsm_length("aЖ")


def test_gsm_decode_of_what_is_not_a_character() -> None:
    assert gsm_decode(b"\x1bA") == "A"  # unknown in the extension table: the basic character (23.038 6.2.1.1)
    assert gsm_decode(b"\x1b\x1ba") == " a"  # reserved escape-escape shows a space
    assert gsm_decode(b"ab\x1b") == "ab"  # a lone escape at the end is dropped
    assert gsm_decode(b"a\x80b\x1b\xff") == "a\ufffdb\ufffd"  # not septets


def test_pack_7bit_known_vectors() -> None:
    assert pack_7bit(gsm_encode("hellohello")).hex() == "e8329bfd4697d9ec37"  # 23.038's example
    assert unpack_7bit(bytes.fromhex("e8329bfd4697d9ec37"), 10) == b"hellohello"
    assert pack_7bit(b"") == b""
    assert pack_7bit(b"A", fill_bits=1) == bytes((0x41 << 1,))
    with pytest.raises(ValueError, match="septet"):
        pack_7bit(b"\x80")
    with pytest.raises(ValueError, match="do not fit"):
        unpack_7bit(b"\x00", 2)
    with pytest.raises(ValueError, match="fill_bits"):
        pack_7bit(b"a", fill_bits=7)


def test_fill_bits_put_a_packed_body_on_a_septet_boundary() -> None:
    assert [udh_fill_bits(octets) for octets in (0, 6, 7, 10, 140)] == [0, 1, 0, 4, 0]
    _, parts = fragments("a" * 300, pack_7bit=True, frag_method="udh", udh=[(0x24, b"\x01")])  # 10-octet UDH
    assert parts[0].short_message[10] == (0x61 << 4) & 0xFF  # 4 fill bits, then the first 'a'


def test_seven_spare_bits_are_a_cr_not_an_at() -> None:
    packed = pack_7bit(gsm_encode("1234567"))  # 49 bits: 7 octets, 7 bits spare
    assert len(packed) == 7 and packed[-1] >> 1 == 0x0D
    assert decode_text(packed, DATA_CODING_GSM, packed=True) == "1234567"
    assert decode_text(pack_7bit(gsm_encode("12345678")), DATA_CODING_GSM, packed=True) == "12345678"
    assert decode_text(pack_7bit(gsm_encode("1234567@")), DATA_CODING_GSM, packed=True) == "1234567@"


@given(st.binary(max_size=200).map(lambda b: bytes(x & 0x7F for x in b)), st.integers(0, 6))
def test_pack_unpack_round_trip(septets: bytes, fill: int) -> None:
    packed = pack_7bit(septets, fill)
    assert len(packed) == (-(-(fill + 7 * len(septets)) // 8) if septets else 0)  # fill bits alone take no octet
    assert unpack_7bit(packed, len(septets), fill) == septets


# --- encodings ----------------------------------------------------------------------------------

def test_encode_text_chooses_gsm_else_ucs2() -> None:
    assert encode_text("Price: 5€ {ok}") == (b"Price: 5\x1b\x65 \x1b\x28ok\x1b\x29", DATA_CODING_GSM)
    assert encode_text("garçon") == ("garçon".encode("utf-16-be"), DATA_CODING_UCS2)
    assert encode_text(ASTRAL) == (b"\xd8\x3d\xde\x00", DATA_CODING_UCS2)
    assert encode_text("") == (b"", DATA_CODING_GSM)


def test_encode_text_with_an_explicit_data_coding() -> None:
    assert encode_text("é", DATA_CODING_LATIN1) == (b"\xe9", DATA_CODING_LATIN1)
    assert encode_text("hi", DATA_CODING_IA5) == (b"hi", DATA_CODING_IA5)
    assert encode_text("hi", DATA_CODING_UCS2) == (b"\x00h\x00i", DATA_CODING_UCS2)
    assert encode_text("Ω", DATA_CODING_GSM) == (b"\x15", DATA_CODING_GSM)
    with pytest.raises(TextError) as info:
        encode_text("hello Ω", DATA_CODING_LATIN1)
    assert str(info.value) == ("the text cannot be encoded with data_coding 0x03 (Latin-1): 'Ω' (U+03A9) at "
                               "position 6; leave data_coding out to have it chosen")
    with pytest.raises(TextError, match=r"0x00 \(GSM 03.38\): 'Ж'"):
        encode_text("Жук", DATA_CODING_GSM)
    with pytest.raises(TextError, match=r"0x01 \(IA5/ASCII\): 'é' \(U\+00E9\) at position 2"):
        encode_text("caé", DATA_CODING_IA5)
    with pytest.raises(TextError, match=r"0x02 \(binary\) is for bytes"):
        encode_text("hi", DATA_CODING_BINARY)
    with pytest.raises(TextError, match=r"0x04 \(binary\) is for bytes"):
        encode_text("hi", 0x04)
    with pytest.raises(TextError, match=r"0xf0 .* is for bytes"):
        encode_text("hi", 0xF0)
    with pytest.raises(TextError, match="position 1"):
        encode_text("a\ud800")  # a lone surrogate has no UTF-16


@pytest.mark.parametrize(("data", "data_coding", "text"), [
    (b"\x00\x1b\x65", DATA_CODING_GSM, "@€"),
    (b"@", DATA_CODING_GSM, "¡"),
    (b"Hi\xff", DATA_CODING_IA5, "Hi\ufffd"),
    (b"caf\xe9", DATA_CODING_LATIN1, "café"),
    (b"\x04\x16\x00", DATA_CODING_UCS2, "Ж"),  # an odd last octet is dropped
    (b"\xd8\x3d\x00a", DATA_CODING_UCS2, "\ufffda"),  # a lone surrogate is replaced
    (b"\xd8\x3d\xde\x00", DATA_CODING_UCS2, ASTRAL),
    (b"A\x1b\x65", 0xF0, "A€"),  # GSM DCS group, 7-bit
    (b"A", 0xF4, None),  # GSM DCS group, 8-bit data
    (b"\x04\x16", 0x18, "Ж"),  # general group, UCS-2, class 0 (a flash message)
    (b"A", 0x10, "A"),
    (b"\x00\x01", DATA_CODING_BINARY, None),
    (b"\x00\x01", 0x02, None),
    (b"A", 0x05, None),  # JIS: not read here
    (b"A", 0x30, None),  # compressed
])
def test_decode_text(data: bytes, data_coding: int, text: str | None) -> None:
    assert decode_text(data, data_coding) == text


def test_decode_packed_gsm_with_fill_bits() -> None:
    assert decode_text(bytes.fromhex("e8329bfd4697d9ec37"), DATA_CODING_GSM, packed=True) == "hellohello"
    assert decode_text(pack_7bit(b"hi", 1), DATA_CODING_GSM, packed=True, fill_bits=1) == "hi"


@given(st.binary(max_size=300), st.integers(0, 255), st.booleans(), st.integers(0, 6))
def test_decode_text_never_raises(data: bytes, data_coding: int, packed: bool, fill: int) -> None:
    text = decode_text(data, data_coding, packed=packed, fill_bits=fill)
    assert text is None or isinstance(text, str)


# --- splitting: exact boundaries ----------------------------------------------------------------

def bodies(parts: list[Fragment]) -> list[bytes]:
    return [parse_udh(part.short_message)[1] if part.esm_class_bits & 0x40 else part.short_message for part in parts]


def test_160_gsm_characters_are_one_message_161_are_two() -> None:
    assert fragments("a" * 160, frag_method="udh") == (0, [Fragment(b"a" * 160, 0, None)])
    coding, parts = fragments("a" * 161, frag_method="udh", reference=0x1234)
    assert coding == DATA_CODING_GSM
    assert [part.short_message[:7] for part in parts] == [b"\x06\x08\x04\x12\x34\x02\x01",
                                                          b"\x06\x08\x04\x12\x34\x02\x02"]
    assert [part.esm_class_bits for part in parts] == [0x40, 0x40]
    assert bodies(parts) == [b"a" * 152, b"a" * 9]
    _, parts = fragments("a" * 161, frag_method="sar", reference=7)
    assert [(part.short_message, part.esm_class_bits, part.sar) for part in parts] == [
        (b"a" * 160, 0, (7, 2, 1)), (b"a", 0, (7, 2, 2))]


def test_152_gsm_characters_a_part_with_a_udh() -> None:
    _, parts = fragments("a" * 304, frag_method="udh")
    assert [len(body) for body in bodies(parts)] == [152, 152]
    _, parts = fragments("a" * 305, frag_method="udh")
    assert [len(body) for body in bodies(parts)] == [152, 152, 1]


def test_an_escape_pair_is_never_split() -> None:
    _, parts = fragments("a" * 151 + "€" + "b" * 10, frag_method="udh")
    assert bodies(parts) == [b"a" * 151, b"\x1b\x65" + b"b" * 10]
    _, parts = fragments("a" * 150 + "€" + "b" * 10, frag_method="udh")
    assert bodies(parts) == [b"a" * 150 + b"\x1b\x65", b"b" * 10]
    assert len(fragments("€" * 80, frag_method="sar")[1]) == 1  # 160 septets exactly
    _, parts = fragments("€" * 81, frag_method="sar")
    assert bodies(parts) == [b"\x1b\x65" * 80, b"\x1b\x65"]


def test_70_ucs2_characters_are_one_message_71_are_two() -> None:
    coding, parts = fragments("Ж" * 70, frag_method="udh")
    assert coding == DATA_CODING_UCS2 and len(parts) == 1 and len(parts[0].short_message) == 140
    _, parts = fragments("Ж" * 71, frag_method="udh")
    assert [len(body) for body in bodies(parts)] == [132, 10]  # 66 characters beside a 7-octet UDH
    assert all(len(part.short_message) <= 140 for part in parts)
    _, parts = fragments("Ж" * 71, frag_method="sar")
    assert [len(body) for body in bodies(parts)] == [140, 2]


def test_a_surrogate_pair_is_never_split() -> None:
    _, parts = fragments("Ж" * 65 + ASTRAL + "Ж" * 5, frag_method="udh")
    assert [len(body) for body in bodies(parts)] == [130, 14]
    assert bodies(parts)[1][:4] == b"\xd8\x3d\xde\x00"
    # bytes given as UCS-2 are split by the same rule
    data = ("Ж" * 69 + ASTRAL).encode("utf-16-be")
    _, parts = fragments(data, data_coding=DATA_CODING_UCS2, frag_method="sar")
    assert [len(part.short_message) for part in parts] == [138, 4]


def test_packed_gsm_capacity() -> None:
    _, parts = fragments("a" * 160, pack_7bit=True, frag_method="udh")
    assert len(parts) == 1 and len(parts[0].short_message) == 140
    _, parts = fragments("a" * 161, pack_7bit=True, frag_method="udh")
    assert [len(part.short_message) for part in parts] == [140, 7 + 8]
    assert decode_text(bodies(parts)[0], DATA_CODING_GSM, packed=True) == "a" * 152


def test_a_packed_part_never_ends_with_a_cr_taken_for_padding() -> None:
    text = "a" * 151 + "\r" + "b" * 20  # the CR would end the first part on an octet boundary
    _, parts = fragments(text, pack_7bit=True, frag_method="udh")
    assert [decode_text(body, DATA_CODING_GSM, packed=True) for body in bodies(parts)] == ["a" * 151, "\r" + "b" * 20]
    # a last part ending so gets the second CR 23.038 prescribes: a receiver shows CR CR
    _, parts = fragments("1234567\r", pack_7bit=True)
    assert decode_text(parts[0].short_message, DATA_CODING_GSM, packed=True) == "1234567\r\r"


def test_frag_method_none_sends_one_oversized_message() -> None:
    assert fragments("a" * 400) == (0, [Fragment(b"a" * 400, 0, None)])
    assert fragments("Ж" * 100)[1] == [Fragment(("Ж" * 100).encode("utf-16-be"), 0, None)]


def test_one_part_gets_no_concatenation() -> None:
    for method in ("udh", "sar"):
        assert fragments("short", frag_method=method) == (0, [Fragment(b"short", 0, None)])
    assert fragments("", frag_method="udh") == (0, [Fragment(b"", 0, None)])


def test_the_callers_udh_goes_first_in_every_part() -> None:
    assert fragments("hi", udh=[(0x24, b"\x01")]) == (0, [Fragment(b"\x03\x24\x01\x01hi", 0x40, None)])
    _, parts = fragments("a" * 300, frag_method="udh", udh=[(0x24, b"\x01")], reference=1)
    assert [part.short_message[:10] for part in parts] == [
        b"\x09\x24\x01\x01\x08\x04\x00\x01\x03\x01", b"\x09\x24\x01\x01\x08\x04\x00\x01\x03\x02",
        b"\x09\x24\x01\x01\x08\x04\x00\x01\x03\x03"]
    assert [len(body) for body in bodies(parts)] == [148, 148, 4]  # a 10-octet UDH takes 12 septets
    _, parts = fragments("a" * 300, frag_method="sar", udh=[(0x24, b"\x01")])
    assert [len(body) for body in bodies(parts)] == [155, 145]  # a 4-octet UDH: 5 septets
    with pytest.raises(TextError, match="concatenation element already"):
        fragments("a" * 300, frag_method="udh", udh=[(0x00, b"\x01\x02\x01")])
    with pytest.raises(TextError, match="room for 1 septets beside its UDH, too few"):
        fragments("€" * 10, frag_method="udh", udh=[(0x70, bytes(130))])  # 139 octets of UDH with the concatenation
    with pytest.raises(TextError, match="room for 1 octets"):
        fragments("Ж", frag_method="sar", udh=[(0x70, bytes(136))])
    with pytest.raises(TextError, match="the udh given takes 141 octets"):
        fragments("hi", udh=[(0x70, bytes(100)), (0x71, bytes(36))])


def test_reference_is_16_bits() -> None:
    _, parts = fragments("a" * 200, frag_method="udh", reference=0x10005)
    assert parts[0].short_message[3:5] == b"\x00\x05"
    _, parts = fragments("a" * 200, frag_method="sar", reference=-1)
    assert parts[0].sar == (0xFFFF, 2, 1)


def test_at_most_255_parts() -> None:
    assert len(fragments("a" * 152 * 255, frag_method="udh")[1]) == 255
    with pytest.raises(TextError, match="more than 255 short messages"):
        fragments("a" * (152 * 255 + 1), frag_method="udh")
    assert len(fragments("Ж" * 70 * 255, frag_method="sar")[1]) == 255
    with pytest.raises(TextError, match="255"):
        fragments("Ж" * (70 * 255 + 1), frag_method="sar")


def test_bytes_need_a_data_coding_and_are_split_as_octets() -> None:
    with pytest.raises(TextError, match="needs its data_coding"):
        fragments(b"\x01\x02")
    coding, parts = fragments(bytes(range(200)), data_coding=DATA_CODING_BINARY, frag_method="udh")
    assert coding == DATA_CODING_BINARY
    assert bodies(parts) == [bytes(range(133)), bytes(range(133, 200))]
    with pytest.raises(TextError, match="frag_method"):
        fragments("hi", frag_method="split")


# --- splitting: properties ----------------------------------------------------------------------

def septets_of(body: bytes, fill: int) -> bytes:
    """A packed body's septets as a receiver reads them (the CR padding dropped)."""
    count = max(0, (8 * len(body) - fill) // 7)
    septets = unpack_7bit(body, count, fill)
    if septets[-1:] == b"\r" and fill + 7 * count == 8 * len(body):
        septets = septets[:-1]
    return septets


def ends_inside_an_escape(septets: bytes) -> bool:
    i = 0
    while i < len(septets):
        i += 2 if septets[i] == 0x1B else 1
    return i > len(septets)


def check_parts(parts: list[Fragment], coding: int, packed: bool) -> None:
    """Every part fits one SMS, never ends inside a character, and (but the last) is full."""
    for i, part in enumerate(parts):
        udh = len(part.short_message) - len(bodies([part])[0])
        body = part.short_message[udh:]
        if coding == DATA_CODING_GSM:
            septets = septets_of(body, udh_fill_bits(udh)) if packed else body
            assert not ends_inside_an_escape(septets)
            capacity = 160 - -(-8 * udh // 7)
            assert len(septets) <= capacity
            assert i == len(parts) - 1 or len(septets) >= capacity - 2
            if packed:
                assert len(part.short_message) <= 140
                # GSM 03.40: the UDH and the body are one septet stream, the body from the septet after the UDH
                stream = unpack_7bit(part.short_message, len(part.short_message) * 8 // 7)
                assert stream[-(-8 * udh // 7):][:len(septets)] == septets
        else:
            assert len(part.short_message) <= 140
            assert len(body) % 2 == 0 and not (body and 0xD8 <= body[-2] <= 0xDB)
            assert i == len(parts) - 1 or len(body) >= (140 - udh) // 2 * 2 - 2


def receive(parts: list[Fragment], coding: int, packed: bool) -> str | None:
    """What a receiver makes of the parts, taken in reverse order: UDH or SAR, reassembly, join."""
    assembly: Reassembly[tuple[str, str, int], tuple[bytes, int]] = Reassembly(60.0, clock=lambda: 0.0)
    whole = None
    for part in reversed(parts):
        ies, body = parse_udh(part.short_message) if part.esm_class_bits & 0x40 else (None, part.short_message)
        fill = udh_fill_bits(len(part.short_message) - len(body))
        concat = concatenation(ies, part.sar)
        if concat is None:
            assert len(parts) == 1
            return join_parts([body], coding, packed=packed, fill_bits=fill)
        assert concat.total == len(parts)
        whole = assembly.add(("from", "to", coding), concat, (body, fill))
    assert whole is not None
    return join_parts([body for body, _ in whole], coding, packed=packed, fill_bits=[fill for _, fill in whole])


def texts(alphabet: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Short texts, and long ones (several parts) with what is hard to split anywhere in them."""
    pieces = st.lists(st.text(alphabet, min_size=1, max_size=12), min_size=1, max_size=8)
    repeated = st.builds(lambda some, times: ("".join(some) * times)[:1500], pieces, st.integers(1, 200))
    return st.one_of(st.text(alphabet, max_size=200), st.text(alphabet, min_size=150, max_size=700), repeated)


GSM_TEXT = texts(st.one_of(st.sampled_from(GSM_CHARS), st.sampled_from(["€", "\r", "{", "a"])))
ANY_TEXT = texts(st.one_of(st.characters(codec="utf-8"), st.sampled_from([ASTRAL, "Ж", "€", "a"])))
EXTRA_UDH = st.sampled_from([None, [(0x24, b"\x01")], [(0x70, b"xyz")]])


@settings(max_examples=300)
@given(GSM_TEXT, st.sampled_from(["udh", "sar"]), st.booleans(), EXTRA_UDH, st.integers(0, 0xFFFF))
def test_any_gsm_text_comes_back(text: str, method: str, packed: bool, udh: list[tuple[int, bytes]] | None,
                                 reference: int) -> None:
    coding, parts = fragments(text, frag_method=method, pack_7bit=packed, udh=udh, reference=reference)
    assert coding == DATA_CODING_GSM
    check_parts(parts, coding, packed)
    back = receive(parts, coding, packed)
    if packed and back != text:  # a last CR on an octet boundary comes doubled (23.038 6.1.2.3.1)
        assert text.endswith("\r") and back == text + "\r"
    else:
        assert back == text


@settings(max_examples=300)
@given(ANY_TEXT, st.sampled_from(["udh", "sar"]), EXTRA_UDH)
def test_any_text_comes_back(text: str, method: str, udh: list[tuple[int, bytes]] | None) -> None:
    coding, parts = fragments(text, frag_method=method, udh=udh)
    assert coding == (DATA_CODING_GSM if is_gsm(text) else DATA_CODING_UCS2)
    check_parts(parts, coding, False)
    assert receive(parts, coding, False) == text


def test_a_character_another_sender_split_still_joins() -> None:
    assert join_parts([b"a\x1b", b"\x65b"], DATA_CODING_GSM) == "a€b"
    assert join_parts([b"\xd8\x3d\xde", b"\x00\x00a"], DATA_CODING_UCS2) == ASTRAL + "a"
    assert join_parts([b"\x01"], DATA_CODING_BINARY) is None
    with pytest.raises(ValueError, match="fill_bits"):
        join_parts([b"a", b"b"], DATA_CODING_GSM, packed=True, fill_bits=[0])


# --- UDH and concatenation ----------------------------------------------------------------------

def test_parse_udh() -> None:
    assert parse_udh(b"\x05\x00\x03\x2a\x02\x01hello") == ([(0x00, b"\x2a\x02\x01")], b"hello")
    assert parse_udh(b"\x00body") == ([], b"body")
    assert parse_udh(b"\x09\x24\x01\x01\x08\x04\x12\x34\x03\x02") == (
        [(0x24, b"\x01"), (0x08, b"\x12\x34\x03\x02")], b"")


@pytest.mark.parametrize(("short_message", "error"), [
    (b"", "empty"),
    (b"\x05\x00\x03\x2a", "UDH length says 5 octets, the short message has 3"),
    (b"\x03\x00\x03\x01body", "element 0x00 at octet 1 says 3 octets, past the end"),
    (b"\x01\x00body", "middle of an information element's header"),
])
def test_parse_udh_malformed(short_message: bytes, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_udh(short_message)


def test_concatenation_from_udh_and_sar() -> None:
    assert concatenation([(0x00, b"\x2a\x03\x02")]) == Concatenation(0x2A, 3, 2)
    assert concatenation([(0x24, b"\x01"), (0x08, b"\x12\x34\x03\x03")]) == Concatenation(0x1234, 3, 3)
    assert concatenation(None, (500, 2, 1)) == Concatenation(500, 2, 1)
    assert concatenation([(0x08, b"\x00\x01\x02\x01")], (9, 3, 3)) == Concatenation(1, 2, 1)  # the UDH first
    assert concatenation([(0x08, b"\x00\x01\x00\x01")], (9, 3, 3)) == Concatenation(9, 3, 3)  # unless broken


@pytest.mark.parametrize(("ies", "sar"), [
    (None, None),
    ([(0x24, b"\x01")], None),
    ([(0x00, b"\x2a\x01\x01")], None),  # one part: a whole message
    ([(0x00, b"\x2a\x03\x00")], None),  # sequence 0
    ([(0x00, b"\x2a\x03\x04")], None),  # sequence past the total
    ([(0x00, b"\x2a\x00\x00")], None),  # total 0
    ([(0x00, b"\x2a\x03")], None),  # too short for the IE
    ([(0x08, b"\x2a\x03\x01")], None),
    (None, (1, None, 1)),
    (None, (1, 300, 1)),
    (None, (70000, 2, 1)),
])
def test_no_concatenation(ies: list[tuple[int, bytes]] | None, sar: tuple[int | None, int | None, int | None]) -> None:
    assert concatenation(ies, sar) is None


# --- reassembly ---------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


KEY = ("123", "456", 0)


def test_parts_out_of_order_complete_in_order() -> None:
    parts: Reassembly[tuple[str, str, int], bytes] = Reassembly(60.0, clock=Clock())
    assert parts.add(KEY, Concatenation(7, 3, 3), b"c") is None
    assert parts.add(KEY, Concatenation(7, 3, 1), b"a") is None
    assert parts.add(("other", "456", 0), Concatenation(7, 3, 2), b"X") is None  # another sender's
    assert parts.add(KEY, Concatenation(7, 4, 2), b"Y") is None  # another message (total differs)
    assert parts.add(KEY, Concatenation(7, 3, 2), b"b") == [b"a", b"b", b"c"]
    assert len(parts) == 3  # still there until handled
    parts.complete(KEY, Concatenation(7, 3, 2))
    assert len(parts) == 2
    assert repr(parts) == "<Reassembly pending=2/1000 timeout=60>"


def test_a_repeated_part_replaces_the_earlier() -> None:
    parts: Reassembly[tuple[str, str, int], bytes] = Reassembly(60.0, clock=Clock())
    parts.add(KEY, Concatenation(1, 2, 1), b"old")
    parts.add(KEY, Concatenation(1, 2, 1), b"new")
    assert parts.add(KEY, Concatenation(1, 2, 2), b"2") == [b"new", b"2"]


def test_a_part_not_accepted_is_forgotten_and_completes_again() -> None:
    parts: Reassembly[tuple[str, str, int], bytes] = Reassembly(60.0, clock=Clock())
    parts.add(KEY, Concatenation(1, 2, 1), b"1")
    assert parts.add(KEY, Concatenation(1, 2, 2), b"2") == [b"1", b"2"]
    parts.discard_part(KEY, Concatenation(1, 2, 2))  # the handler failed: the SMSC sends part 2 again
    assert len(parts) == 1
    assert parts.add(KEY, Concatenation(1, 2, 2), b"2") == [b"1", b"2"]
    parts.discard_part(KEY, Concatenation(1, 2, 2))
    parts.discard_part(KEY, Concatenation(1, 2, 1))
    assert len(parts) == 0  # nothing left of it
    parts.discard_part(KEY, Concatenation(1, 2, 1))  # unknown: nothing happens
    with pytest.raises(ValueError, match="part 3 of 2"):
        parts.add(KEY, Concatenation(1, 2, 3), b"")


def test_parts_that_never_complete_expire() -> None:
    clock = Clock()
    parts: Reassembly[tuple[str, str, int], bytes] = Reassembly(10.0, clock=clock)
    parts.add(KEY, Concatenation(5, 3, 1), b"1")
    clock.now = 4.0
    parts.add(KEY, Concatenation(5, 3, 2), b"2")
    parts.add(KEY, Concatenation(6, 2, 1), b"1")
    clock.now = 10.0
    assert parts.expired() == []  # not older than the timeout yet
    clock.now = 10.5  # counted from the first part
    assert parts.expired() == [(KEY, 5, 3, 2)]
    assert len(parts) == 1 and parts.expired() == []
    clock.now = 14.5
    assert parts.expired() == [(KEY, 6, 2, 1)]
    assert len(parts) == 0


def test_at_most_max_messages_wait() -> None:
    parts: Reassembly[tuple[str, str, int], bytes] = Reassembly(60.0, max_messages=2, clock=Clock())
    parts.add(KEY, Concatenation(1, 2, 1), b"1")
    parts.add(KEY, Concatenation(1, 2, 2), b"2")
    parts.complete(KEY, Concatenation(1, 2, 2))
    parts.add(KEY, Concatenation(2, 3, 1), b"1")
    parts.add(KEY, Concatenation(2, 3, 2), b"2")
    parts.add(KEY, Concatenation(3, 2, 1), b"1")
    parts.add(KEY, Concatenation(3, 2, 1), b"1")  # a part of a waiting group takes no room
    parts.add(KEY, Concatenation(4, 2, 2), b"2")  # the oldest (reference 2) makes room
    assert len(parts) == 2
    assert parts.expired() == [(KEY, 2, 3, 2)]
    assert parts.expired() == []
    assert parts.add(KEY, Concatenation(3, 2, 2), b"2") == [b"1", b"2"]
    with pytest.raises(ValueError, match="timeout"):
        Reassembly(0.0)


# --- delivery receipts --------------------------------------------------------------------------

def test_a_receipt_as_smpp_34_appendix_b() -> None:
    text = ("id:0123456789 sub:001 dlvrd:001 submit date:2305011200 done date:2305011201 stat:DELIVRD err:000 "
            "text:Hello id:5 stat:x")
    assert parse_receipt(text) == Receipt(
        id="0123456789", sub="001", dlvrd="001", submit_date=datetime(2023, 5, 1, 12, 0),
        done_date=datetime(2023, 5, 1, 12, 1), stat="DELIVRD", err="000", text="Hello id:5 stat:x")


def test_receipt_variants_seen_in_the_wild() -> None:
    upper = parse_receipt("ID:A1B2 SUB:001 DLVRD:000 SUBMIT DATE:230501120005 DONE DATE:230501120107 "
                          "STAT:UNDELIV ERR:034 Text:Hi")
    assert upper is not None and (upper.id, upper.stat, upper.err, upper.text) == ("A1B2", "UNDELIV", "034", "Hi")
    assert upper.submit_date == datetime(2023, 5, 1, 12, 0, 5) and upper.done_date == datetime(2023, 5, 1, 12, 1, 7)
    no_text = parse_receipt("id:77 sub:001 dlvrd:001 submit date:2305011200 done date:2305011201 stat:DELIVRD err:0")
    assert no_text is not None and no_text.text is None and no_text.err == "0"
    spaced = parse_receipt("  id:  42   submit_date:2313011200  stat:  EXPIRED  ")
    assert spaced == Receipt(id="42", sub=None, dlvrd=None, submit_date=None, done_date=None, stat="EXPIRED",
                             err=None, text=None)  # month 13: no date, no error
    assert parse_receipt("stat:DELIVRD id:9").id == "9"  # type: ignore[union-attr]


@pytest.mark.parametrize("text", [
    "", "hello", "stat:DELIVRD err:000", "id: stat:DELIVRD", "Your order id:55 has shipped", "id", "xid:1 stat:x",
])
def test_not_a_receipt(text: str) -> None:
    assert parse_receipt(text) is None
