"""The text side of SMPP without sockets: alphabets, splitting a text into short messages,
concatenation info (UDH and SAR), reassembly of the parts, and delivery receipts.

Outgoing, `fragments(text, ...)` chooses the alphabet (GSM 03.38 when every character is in
it, extension table included, else UCS-2), encodes, and splits the result into short
messages that never cut a character: not a GSM escape pair (0x1B + code), not a UTF-16
surrogate pair. smpplib's own splitter cuts both, which is why this module does not use it.

    one SMS = 140 octets = 160 septets, a UDH included when there is one
    frag_method "udh": IE 0x08 (16-bit reference) - 7 octets of UDH; 152 septets, 133 octets left
                       (132 for UCS-2: 66 code units)
    frag_method "sar": no UDH, the sar_* TLVs instead - 160 septets / 140 octets per part
    frag_method None:  one short message, however long (the original sent it so)

Unpacked GSM (the SMPP norm) carries one septet per octet; packed (`pack_7bit`) puts the
body on the septet boundary after the UDH (fill bits), as GSM 03.40 does.

Incoming, `parse_udh` and `concatenation` say which message a part belongs to, `Reassembly`
holds the parts until the last one comes, and `join_parts` decodes them joined as bytes, so a
character another sender split across parts still comes out whole. `decode_text` never
raises on what an SMSC sends: what it cannot read becomes U+FFFD, or None for binary data.

Choices where GSM 03.38 (3GPP TS 23.038) leaves room:
- an escape followed by a code missing from the extension table shows the basic table's
  character for that code (23.038 6.2.1.1); escape-escape shows a space; a lone escape at
  the end is dropped; an octet above 0x7F (not a septet) is U+FFFD.
- packed, 7 spare bits at the end are filled with a CR so a receiver does not read an '@'
  there, and a CR ending exactly on an octet boundary is dropped as that padding (23.038
  6.1.2.3.1). So a part never ends with a real CR there: a middle part ends one character
  earlier, and a last part gets a second CR - the receiver shows CR CR, as 23.038 says.
"""

from __future__ import annotations

import bisect
import re
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, Literal, TypeVar

__all__ = [
    "DATA_CODING_BINARY",
    "DATA_CODING_BINARY2",
    "DATA_CODING_GSM",
    "DATA_CODING_IA5",
    "DATA_CODING_LATIN1",
    "DATA_CODING_UCS2",
    "Concatenation",
    "Fragment",
    "Reassembly",
    "Receipt",
    "TextError",
    "concatenation",
    "decode_text",
    "encode_text",
    "fragments",
    "gsm_decode",
    "gsm_encode",
    "gsm_length",
    "is_gsm",
    "join_parts",
    "pack_7bit",
    "parse_receipt",
    "parse_udh",
    "udh_fill_bits",
    "unpack_7bit",
]

DATA_CODING_GSM, DATA_CODING_IA5, DATA_CODING_BINARY, DATA_CODING_LATIN1, DATA_CODING_BINARY2, DATA_CODING_UCS2 = (
    0x00, 0x01, 0x02, 0x03, 0x04, 0x08)

SMS_OCTETS = 140  # one short message's user data, the UDH included
SMS_SEPTETS = SMS_OCTETS * 8 // 7  # 160
MAX_PARTS = 255  # the concatenation IEs and sar_total_segments count in one octet
IE_CONCAT_8BIT, IE_CONCAT_16BIT = 0x00, 0x08
ESM_UDHI = 0x40  # esm_class bit: the short message starts with a UDH


class TextError(ValueError):
    """A text that cannot be encoded as asked, or a message too long (over 255 parts)."""


# --- GSM 03.38 ---------------------------------------------------------------------------------

_ESC, _CR = 0x1B, 0x0D

# The default alphabet by code; 0x1B is the escape to the extension table, not a character.
_GSM_BASIC = (
    "@\u00a3$\u00a5\u00e8\u00e9\u00f9\u00ec\u00f2\u00c7\n\u00d8\u00f8\r\u00c5\u00e5"
    "\u0394_\u03a6\u0393\u039b\u03a9\u03a0\u03a8\u03a3\u0398\u039e\x1b\u00c6\u00e6\u00df\u00c9"
    " !\"#\u00a4%&'()*+,-./"
    "0123456789:;<=>?"
    "\u00a1ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZ\u00c4\u00d6\u00d1\u00dc\u00a7"
    "\u00bfabcdefghijklmno"
    "pqrstuvwxyz\u00e4\u00f6\u00f1\u00fc\u00e0"
)
_GSM_EXTENSION = {0x0A: "\f", 0x14: "^", 0x28: "{", 0x29: "}", 0x2F: "\\", 0x3C: "[", 0x3D: "~", 0x3E: "]",
                  0x40: "|", 0x65: "\u20ac"}
_GSM_ENCODE: dict[str, bytes] = {
    **{char: bytes((code,)) for code, char in enumerate(_GSM_BASIC) if code != _ESC},
    **{char: bytes((_ESC, code)) for code, char in _GSM_EXTENSION.items()},
}


def _char(char: str) -> str:
    return f"{char!r} (U+{ord(char):04X})"  # the code point shows what repr alone may not (look-alikes)


def gsm_encode(text: str) -> bytes:
    """The text in the GSM 03.38 default alphabet and its extension table, one septet an octet."""
    try:
        return b"".join([_GSM_ENCODE[char] for char in text])
    except KeyError:
        position = next(i for i, char in enumerate(text) if char not in _GSM_ENCODE)
        raise TextError(f"{_char(text[position])} at position {position} is not in the GSM 03.38 alphabet "
                        f"(basic or extension table)") from None


def gsm_decode(septets: bytes) -> str:
    """The text of unpacked septets (see the module's doc for what is not a known character)."""
    chars: list[str] = []
    i, count = 0, len(septets)
    while i < count:
        code = septets[i]
        if code != _ESC:
            chars.append(_GSM_BASIC[code] if code < 0x80 else "\ufffd")
            i += 1
            continue
        if i + 1 == count:
            break  # a lone escape at the end escapes nothing
        code = septets[i + 1]
        if code == _ESC:
            chars.append(" ")  # reserved for a further extension table: 23.038 says show a space
        elif code in _GSM_EXTENSION:
            chars.append(_GSM_EXTENSION[code])
        else:
            chars.append(_GSM_BASIC[code] if code < 0x80 else "\ufffd")
        i += 2
    return "".join(chars)


def is_gsm(text: str) -> bool:
    return all(char in _GSM_ENCODE for char in text)


def gsm_length(text: str) -> int:
    """Septets the text takes in GSM 03.38 (an extension character takes two)."""
    return len(gsm_encode(text))


def _check_fill(fill_bits: int) -> None:
    if not 0 <= fill_bits <= 6:
        raise ValueError(f"fill_bits must be 0 to 6, not {fill_bits}")


def pack_7bit(septets: bytes, fill_bits: int = 0) -> bytes:
    """Septets packed 8 to 7 octets, least significant bit first (GSM 03.40), after `fill_bits`
    zero bits; 7 spare bits at the end get a CR (see the module's doc)."""
    _check_fill(fill_bits)
    if not septets:
        return b""
    out = bytearray()
    bits, have = 0, fill_bits
    for septet in septets:
        if septet > 0x7F:
            raise ValueError(f"0x{septet:02x} is not a septet")
        bits |= septet << have
        have += 7
        while have >= 8:
            out.append(bits & 0xFF)
            bits >>= 8
            have -= 8
    if have == 1:
        bits |= _CR << 1
    if have:
        out.append(bits & 0xFF)
    return bytes(out)


def unpack_7bit(data: bytes, count: int, fill_bits: int = 0) -> bytes:
    """`count` septets packed in `data` after `fill_bits` bits, one an octet."""
    _check_fill(fill_bits)
    if count < 0 or (count and fill_bits + 7 * count > 8 * len(data)):
        raise ValueError(f"{count} septets after {fill_bits} fill bits do not fit in {len(data)} octets")
    out = bytearray()
    bits, have, skip = 0, 0, fill_bits
    for octet in data:
        if len(out) == count:
            break
        bits |= octet << have
        have += 8
        if skip:
            bits >>= skip
            have -= skip
            skip = 0
        while have >= 7 and len(out) < count:
            out.append(bits & 0x7F)
            bits >>= 7
            have -= 7
    return bytes(out)


def _unpack_all(data: bytes, fill_bits: int) -> bytes:
    """Every septet in packed data: SMPP counts octets, so the count is what fits, less a CR padding."""
    count = max(0, (8 * len(data) - fill_bits) // 7)
    septets = unpack_7bit(data, count, fill_bits)
    if septets and septets[-1] == _CR and fill_bits + 7 * count == 8 * len(data):
        septets = septets[:-1]
    return septets


def udh_fill_bits(udh_octets: int) -> int:
    """The zero bits between a UDH of that many octets (its length octet included) and a packed
    GSM body, which starts on a septet boundary."""
    return -(8 * udh_octets) % 7


# --- data_coding -------------------------------------------------------------------------------

_Alphabet = Literal["gsm", "ucs2", "ascii", "latin-1", "iso8859_5", "iso8859_8", "iso2022_jp", "euc_kr"]

_SMPP_ALPHABETS: dict[int, _Alphabet] = {  # SMPP 3.4 5.2.19; the rest of 0x00-0x0F is binary or unknown here
    0x00: "gsm", 0x01: "ascii", 0x03: "latin-1", 0x06: "iso8859_5", 0x07: "iso8859_8", 0x08: "ucs2",
    0x0A: "iso2022_jp", 0x0E: "euc_kr",
}
_TEXT_CODINGS = {DATA_CODING_GSM: "GSM 03.38", DATA_CODING_IA5: "IA5/ASCII", DATA_CODING_LATIN1: "Latin-1",
                 DATA_CODING_UCS2: "UCS-2"}
_CODING_NAMES = {**_TEXT_CODINGS, DATA_CODING_BINARY: "binary", DATA_CODING_BINARY2: "binary"}


def _alphabet(data_coding: int) -> _Alphabet | None:
    """The alphabet of a data_coding: SMPP's own values, then the GSM 03.38 DCS groups that
    SMSCs pass through (flash messages, message waiting); None for binary, compressed, unknown."""
    if 0x00 <= data_coding <= 0x0F:
        return _SMPP_ALPHABETS.get(data_coding)
    if 0x10 <= data_coding <= 0x7F:  # general data coding: bit 5 compressed, bits 3-2 the alphabet
        if data_coding & 0x20:
            return None
        alphabet = (data_coding >> 2) & 0x03
        return "gsm" if alphabet == 0 else "ucs2" if alphabet == 2 else None
    if 0xC0 <= data_coding <= 0xDF:
        return "gsm"
    if 0xE0 <= data_coding <= 0xEF:
        return "ucs2"
    if 0xF0 <= data_coding <= 0xFF:
        return None if data_coding & 0x04 else "gsm"
    return None


def _unencodable(text: str, data_coding: int) -> int | None:
    """The position of the first character the data_coding cannot carry."""
    if data_coding == DATA_CODING_GSM:
        return next((i for i, char in enumerate(text) if char not in _GSM_ENCODE), None)
    codec = "utf-16-be" if data_coding == DATA_CODING_UCS2 else _SMPP_ALPHABETS[data_coding]
    try:
        text.encode(codec)
    except UnicodeEncodeError as e:
        return e.start
    return None


def encode_text(text: str, data_coding: int | None = None) -> tuple[bytes, int]:
    """The text's bytes and the data_coding they are in: with None, GSM 03.38 (unpacked) when every
    character is in it, else UCS-2 (UTF-16-BE, astral characters as surrogate pairs)."""
    chosen = data_coding is None
    if data_coding in (None, DATA_CODING_GSM):
        try:  # the common case first, in one pass: every character in the GSM alphabet
            return b"".join([_GSM_ENCODE[char] for char in text]), DATA_CODING_GSM
        except KeyError:
            pass
    if data_coding is None:
        data_coding = DATA_CODING_UCS2
    name = _CODING_NAMES.get(data_coding, "not a text alphabet here")
    if data_coding not in _TEXT_CODINGS:
        raise TextError(f"data_coding 0x{data_coding:02x} ({name}) is for bytes, not text: give short_message as "
                        f"bytes for it, or give the text without data_coding to have one chosen")
    position = _unencodable(text, data_coding)
    if position is not None:
        hint = "" if chosen else "; leave data_coding out to have it chosen"
        raise TextError(f"the text cannot be encoded with data_coding 0x{data_coding:02x} ({name}): "
                        f"{_char(text[position])} at position {position}{hint}")
    if data_coding == DATA_CODING_GSM:
        return gsm_encode(text), data_coding
    codec = "utf-16-be" if data_coding == DATA_CODING_UCS2 else _SMPP_ALPHABETS[data_coding]
    return text.encode(codec), data_coding


def decode_text(data: bytes, data_coding: int, *, packed: bool = False, fill_bits: int = 0) -> str | None:
    """The text in a message's body by its data_coding; None for binary and unknown data_codings.
    GSM is unpacked unless `packed`; UCS-2 drops an odd last octet and replaces lone surrogates."""
    alphabet = _alphabet(data_coding)
    if alphabet is None:
        return None
    if alphabet == "gsm":
        return gsm_decode(_unpack_all(data, fill_bits) if packed else data)
    if alphabet == "ucs2":
        return data[:len(data) // 2 * 2].decode("utf-16-be", "replace")
    return data.decode(alphabet, "replace")


# --- splitting ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fragment:
    """One short message of a text: what goes in short_message, the esm_class bits it needs,
    and the sar_* TLVs (sar_msg_ref_num, sar_total_segments, sar_segment_seqnum) for "sar"."""

    short_message: bytes
    esm_class_bits: int
    sar: tuple[int, int, int] | None


_Unit = Literal["septet", "code unit", "octet"]


def _payload(text: str | bytes, data_coding: int | None) -> tuple[bytes, int, _Unit]:
    """The bytes to split, their data_coding, and what a part's size is counted in."""
    if isinstance(text, str):
        data, data_coding = encode_text(text, data_coding)
        unit: _Unit = "septet" if data_coding == DATA_CODING_GSM else \
            "code unit" if data_coding == DATA_CODING_UCS2 else "octet"
        return data, data_coding, unit
    if data_coding is None:
        raise TextError("a message given as bytes needs its data_coding (0x04 binary, 0x08 UCS-2, ...); "
                        "or give the text as str to have it chosen")
    if not 0 <= data_coding <= 0xFF:
        raise TextError(f"data_coding must be 0 to 255, not {data_coding}")
    return bytes(text), data_coding, "code unit" if _alphabet(data_coding) == "ucs2" else "octet"


def _ends(payload: bytes, unit: _Unit) -> list[int]:
    """Where a part may end: after any character, never inside an escape or a surrogate pair."""
    if unit == "octet":
        return list(range(1, len(payload) + 1))
    ends, i, size = [], 0, len(payload)
    while i < size:
        if unit == "septet":
            step = 2 if payload[i] == _ESC else 1
        else:
            pair = 0xD8 <= payload[i] <= 0xDB and i + 2 < size and 0xDC <= payload[i + 2] <= 0xDF
            step = 4 if pair else 2
        i = min(i + step, size)
        ends.append(i)
    return ends


def _capacity(unit: _Unit, udh_octets: int) -> int:
    """Septets or octets left for the body of one short message beside a UDH of that length."""
    if unit == "septet":
        return SMS_SEPTETS - -(-8 * udh_octets // 7)
    return SMS_OCTETS - udh_octets


def _cr_at_octet_end(payload: bytes, start: int, end: int, fill: int) -> bool:
    """Whether a packed part ends with a CR exactly on an octet boundary: read as padding there."""
    return end > start and payload[end - 1] == _CR and (fill + 7 * (end - start)) % 8 == 0


def _part_end(payload: bytes, ends: list[int], start: int, capacity: int, fill: int | None, unit: _Unit) -> int:
    """The furthest end of a part from `start` that fits; `fill` is None unless packed."""
    i = bisect.bisect_right(ends, start + capacity) - 1
    while i >= 0 and ends[i] > start:
        end = ends[i]
        if fill is None or not _cr_at_octet_end(payload, start, end, fill):
            return end
        if end == len(payload) and end - start + 1 <= capacity:
            return end  # the last part: a second CR goes after this one (_body)
        i -= 1
    raise TextError(f"a short message has room for {max(capacity, 0)} {'septets' if unit == 'septet' else 'octets'} "
                    f"beside its UDH, too few for the character at {start} in the encoded text; "
                    f"give a shorter udh")


def _body(payload: bytes, start: int, end: int, fill: int | None) -> bytes:
    part = payload[start:end]
    if fill is None:
        return part
    if _cr_at_octet_end(payload, start, end, fill):
        part += bytes((_CR,))  # only the last part comes here (_part_end): 23.038's doubled CR
    return pack_7bit(part, fill)


def _udh(ies: Sequence[tuple[int, bytes]]) -> bytes:
    if not ies:
        return b""
    elements = b"".join(bytes((iei, len(data))) + data for iei, data in ies)
    return bytes((len(elements),)) + elements


def _check_ies(udh: list[tuple[int, bytes]] | None) -> list[tuple[int, bytes]]:
    ies = []
    for iei, data in udh or ():
        if not 0 <= iei <= 0xFF or len(data) > 0xFF:
            raise TextError(f"a UDH information element is an IEI of 0 to 255 and at most 255 octets, "
                            f"not {iei} with {len(data)} octets")
        ies.append((iei, bytes(data)))
    size = 1 + sum(2 + len(data) for _, data in ies)
    if size > SMS_OCTETS:
        raise TextError(f"the udh given takes {size} octets, more than the {SMS_OCTETS} of a short message")
    return ies


def fragments(text: str | bytes, *, data_coding: int | None = None, frag_method: str | None = None,
              pack_7bit: bool = False, reference: int = 0,
              udh: list[tuple[int, bytes]] | None = None) -> tuple[int, list[Fragment]]:
    """The data_coding used and the short messages a message takes (see the module's doc).

    A str is encoded by `encode_text`; bytes are the caller's, sent as they are (never packed),
    and split anywhere but inside a UTF-16 surrogate pair when their data_coding is UCS-2.
    `udh` information elements go first in every part's UDH; `reference` (mod 65536) is the
    concatenation reference for "udh" and "sar" both.
    """
    if frag_method not in (None, "udh", "sar"):
        raise TextError(f"frag_method must be None, 'udh' or 'sar', not {frag_method!r}")
    payload, data_coding, unit = _payload(text, data_coding)
    packed = pack_7bit and unit == "septet"
    extra = _check_ies(udh)
    header = _udh(extra)
    fill = udh_fill_bits(len(header)) if packed else None
    if fill is None and (frag_method is None or len(payload) <= _capacity(unit, len(header))):
        # one part, unpacked (the common case): no need to know where characters end
        return data_coding, [Fragment(header + payload, ESM_UDHI if header else 0, None)]
    ends = _ends(payload, unit)
    if frag_method is None or not payload or \
            _part_end(payload, ends, 0, _capacity(unit, len(header)), fill, unit) == len(payload):
        return data_coding, [Fragment(header + _body(payload, 0, len(payload), fill), ESM_UDHI if header else 0,
                                      None)]
    if frag_method == "udh" and any(iei in (IE_CONCAT_8BIT, IE_CONCAT_16BIT) for iei, _ in extra):
        raise TextError("the udh given has a concatenation element already: leave frag_method out "
                        "to concatenate yourself")
    # every part's UDH is as long as the first's: the same elements, the concatenation one of fixed size
    udh_octets = len(_udh([*extra, (IE_CONCAT_16BIT, bytes(4))])) if frag_method == "udh" else len(header)
    fill = udh_fill_bits(udh_octets) if packed else None
    spans = _split(payload, ends, unit, _capacity(unit, udh_octets), fill)
    reference %= 0x10000
    parts = []
    for sequence, (start, end) in enumerate(spans, 1):
        concat = [(IE_CONCAT_16BIT, reference.to_bytes(2, "big") + bytes((len(spans), sequence)))]
        head = _udh([*extra, *concat]) if frag_method == "udh" else header
        sar = (reference, len(spans), sequence) if frag_method == "sar" else None
        parts.append(Fragment(head + _body(payload, start, end, fill), ESM_UDHI if head else 0, sar))
    return data_coding, parts


def _split(payload: bytes, ends: list[int], unit: _Unit, capacity: int, fill: int | None) -> list[tuple[int, int]]:
    """(start, end) of each part, each as full as it can be."""
    spans: list[tuple[int, int]] = []
    start = 0
    while start < len(payload):
        if len(spans) == MAX_PARTS:
            raise TextError(f"the message needs more than {MAX_PARTS} short messages, the most a concatenated "
                            f"message can have; send it shorter")
        end = _part_end(payload, ends, start, capacity, fill, unit)
        spans.append((start, end))
        start = end
    return spans


# --- concatenated messages coming in -----------------------------------------------------------

def parse_udh(short_message: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The information elements of a short message's UDH (esm_class 0x40), and its body."""
    if not short_message:
        raise ValueError("the UDH indicator is set but the short message is empty")
    length = short_message[0]
    end = 1 + length
    if end > len(short_message):
        raise ValueError(f"the UDH length says {length} octets, the short message has {len(short_message) - 1} "
                         f"after it")
    ies, i = [], 1
    while i < end:
        if i + 2 > end:
            raise ValueError(f"the UDH ends in the middle of an information element's header (octet {i} of {end})")
        iei, size = short_message[i], short_message[i + 1]
        if i + 2 + size > end:
            raise ValueError(f"UDH information element 0x{iei:02x} at octet {i} says {size} octets, past the end "
                             f"of the {length}-octet UDH")
        ies.append((iei, bytes(short_message[i + 2:i + 2 + size])))
        i += 2 + size
    return ies, bytes(short_message[end:])


@dataclass(frozen=True)
class Concatenation:
    """Which message a part belongs to, how many parts it has, and which this is (from 1)."""

    reference: int
    total: int
    sequence: int


def _consistent(reference: int, total: int, sequence: int) -> Concatenation | None:
    if not (0 <= reference <= 0xFFFF and 2 <= total <= MAX_PARTS and 1 <= sequence <= total):
        return None  # one part (total 1) or nonsense: the message is taken as a whole one
    return Concatenation(reference, total, sequence)


def concatenation(ies: list[tuple[int, bytes]] | None = None,
                  sar: tuple[int | None, int | None, int | None] | None = None) -> Concatenation | None:
    """A part's place in its message, from UDH IE 0x00 (8-bit reference) or 0x08 (16-bit), else
    from the sar_* TLVs; None for a whole message, and when the values make no sense."""
    for iei, data in ies or ():
        if iei == IE_CONCAT_8BIT and len(data) == 3:
            found = _consistent(data[0], data[1], data[2])
        elif iei == IE_CONCAT_16BIT and len(data) == 4:
            found = _consistent(int.from_bytes(data[:2], "big"), data[2], data[3])
        else:
            continue
        if found is not None:
            return found
    if sar is not None:
        reference, total, sequence = sar
        if reference is not None and total is not None and sequence is not None:
            return _consistent(reference, total, sequence)
    return None


K = TypeVar("K", bound=Hashable)  # who sent a part to whom
T = TypeVar("T")  # what is kept of a part


@dataclass
class _Group(Generic[T]):
    started: float
    parts: dict[int, T] = field(default_factory=dict)


class Reassembly(Generic[K, T]):
    """Parts of concatenated messages waiting for the rest, bounded.

    A part is whatever the caller keeps of it (its body, or more). A group is (key,
    reference, total): key says who sent it to whom, e.g. (source_addr, destination_addr,
    data_coding). Not locked: a caller on several threads holds its own lock around every call.
    """

    def __init__(self, timeout: float, *, max_messages: int = 1000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if timeout <= 0 or max_messages < 1:
            raise ValueError(f"Reassembly needs a timeout > 0 and max_messages >= 1, not {timeout}, {max_messages}")
        self.timeout, self.max_messages, self._clock = timeout, max_messages, clock
        self._groups: dict[tuple[K, int, int], _Group[T]] = {}  # in the order their first parts came
        self._dropped: deque[tuple[K, int, int, int]] = deque(maxlen=max_messages)

    def add(self, key: K, concat: Concatenation, body: T) -> list[T] | None:
        """Keep a part; every part in order once all are here (the group stays until `complete`),
        else None. A part that comes again replaces the earlier copy."""
        if not 1 <= concat.sequence <= concat.total:
            raise ValueError(f"part {concat.sequence} of {concat.total} cannot be")
        group_key = (key, concat.reference, concat.total)
        group = self._groups.get(group_key)
        if group is None:
            if len(self._groups) >= self.max_messages:  # the oldest makes room: it is the likeliest never to end
                (old_key, old_reference, old_total), old = next(iter(self._groups.items()))
                del self._groups[(old_key, old_reference, old_total)]
                self._dropped.append((old_key, old_reference, old_total, len(old.parts)))
            group = self._groups[group_key] = _Group(self._clock())
        group.parts[concat.sequence] = body
        if len(group.parts) < concat.total:
            return None
        return [group.parts[sequence] for sequence in range(1, concat.total + 1)]

    def complete(self, key: K, concat: Concatenation) -> None:
        """Forget a group: its message was handled."""
        self._groups.pop((key, concat.reference, concat.total), None)

    def discard_part(self, key: K, concat: Concatenation) -> None:
        """Forget one part: its PDU was not accepted, the SMSC sends it again."""
        group_key = (key, concat.reference, concat.total)
        group = self._groups.get(group_key)
        if group is not None:
            group.parts.pop(concat.sequence, None)
            if not group.parts:
                del self._groups[group_key]

    def expired(self) -> list[tuple[K, int, int, int]]:
        """Drop the groups whose first part came more than `timeout` ago, and say which, as
        (key, reference, total, parts present); with them the groups dropped to make room."""
        now = self._clock()
        old = [group_key for group_key, group in self._groups.items() if now - group.started > self.timeout]
        dropped = list(self._dropped)
        self._dropped.clear()
        for group_key in old:
            dropped.append((*group_key, len(self._groups.pop(group_key).parts)))
        return dropped

    def __len__(self) -> int:
        return len(self._groups)

    def __repr__(self) -> str:
        return f"<Reassembly pending={len(self._groups)}/{self.max_messages} timeout={self.timeout:g}>"


def join_parts(bodies: list[bytes], data_coding: int, *, packed: bool = False,
               fill_bits: int | Sequence[int] = 0) -> str | None:
    """The text of a reassembled message: the bodies joined as bytes, then decoded, so a
    character split across parts comes out whole. Packed GSM parts are unpacked one by one
    first, each after its fill bits (one number for all, or one a part: `udh_fill_bits` of
    each part's UDH length)."""
    if not (packed and _alphabet(data_coding) == "gsm"):
        return decode_text(b"".join(bodies), data_coding)
    fills = [fill_bits] * len(bodies) if isinstance(fill_bits, int) else list(fill_bits)
    if len(fills) != len(bodies):
        raise ValueError(f"{len(fills)} fill_bits for {len(bodies)} parts")
    return gsm_decode(b"".join(_unpack_all(body, fill) for body, fill in zip(bodies, fills, strict=True)))


# --- delivery receipts -------------------------------------------------------------------------

@dataclass(frozen=True)
class Receipt:
    """A delivery receipt's fields (SMPP 3.4 Appendix B); what it lacks is None."""

    id: str
    sub: str | None
    dlvrd: str | None
    submit_date: datetime | None
    done_date: datetime | None
    stat: str | None
    err: str | None
    text: str | None


# A key starts the text or follows a space; "submit date" is also seen as submit_date, submitdate.
_RECEIPT_KEY = re.compile(r"(?:^|(?<=\s))(id|sub|dlvrd|submit[\s_]*date|done[\s_]*date|stat|err|text)\s*:",
                          re.IGNORECASE)
_RECEIPT_DATE = re.compile(r"\d{10}|\d{12}|\d{14}")


def _receipt_date(value: str | None) -> datetime | None:
    """YYMMDDhhmm[ss] (YY in 20YY), or YYYYMMDDhhmmss as some SMSCs send; None if it is not one."""
    if value is None or not _RECEIPT_DATE.fullmatch(value):
        return None
    year, rest = (int(value[:4]), value[4:]) if len(value) == 14 else (2000 + int(value[:2]), value[2:])
    month, day, hour, minute, second = (int(rest[i:i + 2] or 0) for i in range(0, 10, 2))
    try:
        return datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None


def _receipt_fields(text: str) -> dict[str, str]:
    """Each key's value, up to the next key; text's to the end (it may hold anything)."""
    matches = list(_RECEIPT_KEY.finditer(text))
    fields: dict[str, str] = {}
    for i, match in enumerate(matches):
        key = re.sub(r"[\s_]", "", match.group(1).lower())
        last = key == "text" or i + 1 == len(matches)
        value = text[match.end():len(text) if last else matches[i + 1].start()].strip()
        fields.setdefault(key, value)
        if key == "text":
            break
    return fields


def parse_receipt(text: str) -> Receipt | None:
    """The fields of a delivery receipt's text ("id:... sub:... dlvrd:... submit date:... done
    date:... stat:... err:... text:..."); None when it is not one (no id, or one mentioned in
    passing: the id must come first, or a stat with it)."""
    fields = _receipt_fields(text)
    first = _RECEIPT_KEY.match(text.lstrip())
    if not fields.get("id") or not ((first and first.group(1).lower() == "id") or "stat" in fields):
        return None
    return Receipt(id=fields["id"], sub=fields.get("sub"), dlvrd=fields.get("dlvrd"),
                   submit_date=_receipt_date(fields.get("submitdate")), done_date=_receipt_date(fields.get("donedate")),
                   stat=fields.get("stat"), err=fields.get("err"), text=fields.get("text"))
