"""RPC frames and the msgpack codec: exact round trips, framing, and hostile input."""

from __future__ import annotations

import collections
import datetime
import decimal
import enum
import math
import pickle
import struct
import uuid
from typing import Any, NamedTuple

import msgpack
import pytest
from conftest import mutate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pmnc.errors import ProtocolError
from pmnc.rpc.codec import (
    DEFAULT_LIMIT,
    HEADER_SIZE,
    DecodeError,
    EncodeError,
    FrameDecoder,
    decode_body,
    encode,
    parse_header,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MANY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def same(a: Any, b: Any) -> bool:
    """Equal value and identical type, all the way down; NaN equals NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, decimal.Decimal):
        return bool(a.as_tuple() == b.as_tuple())
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True))
    if isinstance(a, set | frozenset):
        counterparts = {y: y for y in b}
        return len(a) == len(b) and all(x in counterparts and same(x, counterparts[x]) for x in a)
    if isinstance(a, datetime.datetime | datetime.time):
        return bool(a == b and a.utcoffset() == b.utcoffset() and a.fold == b.fold)
    return bool(a == b)


def roundtrip(value: Any) -> Any:
    values = FrameDecoder().feed(encode(value))
    assert len(values) == 1
    return values[0]


# --- values ------------------------------------------------------------------

offsets = st.timedeltas(min_value=datetime.timedelta(hours=-23, minutes=-59, seconds=-59),
                        max_value=datetime.timedelta(hours=23, minutes=59, seconds=59))
timezones = st.none() | st.just(datetime.UTC) | st.builds(datetime.timezone, offsets)

hashable_scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False) | st.text(max_size=8) | st.binary(max_size=8)
    | st.datetimes(timezones=timezones) | st.dates() | st.times(timezones=timezones) | st.timedeltas()
    | st.decimals(allow_nan=False) | st.uuids()
)
scalars = hashable_scalars | st.floats() | st.decimals()
hashables = st.recursive(hashable_scalars, lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
                         max_leaves=6)
values = st.recursive(
    scalars,
    lambda inner: (st.lists(inner, max_size=4) | st.lists(inner, max_size=4).map(tuple)
                   | st.dictionaries(hashables, inner, max_size=4)
                   | st.sets(hashables, max_size=4) | st.frozensets(hashables, max_size=4)),
    max_leaves=12,
)


@MANY
@given(values)
def test_values_round_trip_with_their_types(value: Any) -> None:
    assert same(roundtrip(value), value)


@pytest.mark.parametrize("value", [
    None, True, False, 0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**63) - 1, 10**5000, -(10**5000),
    float("nan"), float("inf"), -0.0, "", "ключ", b"", b"\x00\xff",
    (), ((),), [()], (1, [2, (3, {4: (5,)})]), {(1, 2): "tuple key", frozenset({1}): "frozenset key"},
    set(), frozenset(), {(1, (2, 3)), frozenset({(4,)})},
    datetime.datetime(2024, 2, 29, 23, 59, 59, 999999),
    datetime.datetime(1, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=-5, microseconds=1))),
    datetime.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=datetime.UTC),
    datetime.datetime(2024, 11, 3, 1, 30, fold=1),
    datetime.date(1, 1, 1), datetime.time(), datetime.time(23, 59, 59, 999999, datetime.UTC, fold=1),
    datetime.timedelta(days=-999999999), datetime.timedelta(days=999999999, seconds=86399, microseconds=999999),
    decimal.Decimal("NaN"), decimal.Decimal("-sNaN123"), decimal.Decimal("-Infinity"), decimal.Decimal("-0"),
    decimal.Decimal("1.000"), decimal.Decimal("1E+999999"), decimal.Decimal("3.14159265358979323846264338327950288"),
    uuid.UUID(int=0), uuid.uuid4(),
], ids=lambda value: type(value).__name__)
def test_edge_values_round_trip(value: Any) -> None:
    assert same(roundtrip(value), value)


def test_nested_containers_inside_tuples_and_sets() -> None:
    value: Any = ([{"a": ({1, 2}, [frozenset({(3, (4,))})])}], {((), (frozenset(),))})
    assert same(roundtrip(value), value)


def test_utc_arrives_as_the_utc_singleton() -> None:
    received = roundtrip(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
    assert received.tzinfo is datetime.UTC


def test_zoneinfo_arrives_as_its_fixed_offset() -> None:
    zoneinfo = pytest.importorskip("zoneinfo")
    try:
        zone = zoneinfo.ZoneInfo("Europe/Berlin")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no time zone data")
    summer = datetime.datetime(2024, 7, 1, 12, tzinfo=zone)
    received = roundtrip(summer)
    assert received == summer
    assert received.tzinfo == datetime.timezone(datetime.timedelta(hours=2))
    assert type(roundtrip(datetime.time(12, tzinfo=zone))) is datetime.time  # no offset: arrives naive


class Color(enum.IntEnum):
    RED = 1


class Name(str):
    pass


class Point(NamedTuple):
    x: int
    y: int


class Big(int):
    pass


@pytest.mark.parametrize(("sent", "expected"), [
    (Color.RED, 1),
    (Big(2**100), 2**100),
    (Name("n"), "n"),
    (collections.OrderedDict(a=1), {"a": 1}),
    (collections.defaultdict(list, a=[1]), {"a": [1]}),
    (Point(1, 2), (1, 2)),
    (bytearray(b"ab"), b"ab"),
    (memoryview(b"ab"), b"ab"),
    ({Color.RED: [Name("x")]}, {1: ["x"]}),
    (frozenset({Point(1, 2)}), frozenset({(1, 2)})),
])
def test_subclasses_arrive_as_their_base_type(sent: Any, expected: Any) -> None:
    assert same(roundtrip(sent), expected)


def test_unsupported_type_is_named() -> None:
    class Foo:
        pass

    with pytest.raises(EncodeError, match=r"cannot encode a value of type .*Foo"):
        encode({"x": [Foo()]})
    with pytest.raises(EncodeError, match="type object"):
        encode(object())
    with pytest.raises(EncodeError, match="type complex"):
        encode((1j,))


def test_errors_are_protocol_errors() -> None:
    assert issubclass(EncodeError, ProtocolError)
    assert issubclass(DecodeError, ProtocolError)


# --- frames ------------------------------------------------------------------


def test_frame_layout() -> None:
    frame = encode([1, 2])
    assert frame[:1] == b"M"
    assert struct.unpack(">I", frame[1:HEADER_SIZE])[0] == len(frame) - HEADER_SIZE
    assert parse_header(frame[:HEADER_SIZE]) == (b"M", len(frame) - HEADER_SIZE)
    assert decode_body(b"M", frame[HEADER_SIZE:]) == [1, 2]
    assert DEFAULT_LIMIT == 16 * 1024 * 1024


def test_encode_refuses_a_body_above_the_limit() -> None:
    assert len(encode(b"x" * 90, limit=100)) <= 100 + HEADER_SIZE
    with pytest.raises(EncodeError, match=r"of 1002 bytes exceeds the limit of 1000 bytes"):
        encode(b"x" * 999, limit=1000)


@FAST
@given(st.lists(values, min_size=1, max_size=3))
def test_frames_split_anywhere_decode_the_same(sent: list[Any]) -> None:
    stream = b"".join(encode(value) for value in sent)
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder()
        received = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert decoder.pending == 0
        assert len(received) == len(sent)
        assert all(same(a, b) for a, b in zip(received, sent, strict=True))


def test_byte_at_a_time_and_many_frames_in_one_feed() -> None:
    sent = [{"args": ("x",), "kwargs": {}}, [], (1, 2), "end"]
    stream = b"".join(encode(value) for value in sent)
    decoder = FrameDecoder()
    received = [value for byte in stream for value in decoder.feed(bytes([byte]))]
    assert all(same(a, b) for a, b in zip(received, sent, strict=True))
    assert len(received) == len(sent)
    decoder = FrameDecoder()
    assert decoder.feed(stream + stream[:7]) == sent
    assert decoder.pending == 7
    assert repr(decoder) == f"<FrameDecoder pending=7 limit={DEFAULT_LIMIT}>"
    assert decoder.feed(bytearray(stream[7:])) == sent
    assert decoder.pending == 0


def test_oversized_frame_refused_from_its_header() -> None:
    header = b"M" + struct.pack(">I", 0xFFFFFFFF)
    with pytest.raises(DecodeError, match="exceeds the limit"):
        parse_header(header)
    decoder = FrameDecoder(limit=1000)
    assert decoder.feed(header[:4]) == []
    with pytest.raises(DecodeError, match=r"frame of 4294967295 bytes exceeds the limit of 1000 bytes"):
        decoder.feed(header[4:])
    with pytest.raises(DecodeError, match="already failed"):
        decoder.feed(encode(1))
    assert "failed" in repr(decoder)
    with pytest.raises(DecodeError, match="exceeds the limit"):
        FrameDecoder(limit=10).feed(encode(b"x" * 20))


def test_unknown_kind_refused() -> None:
    with pytest.raises(DecodeError, match="unknown frame kind b'J'"):
        parse_header(b"J\x00\x00\x00\x01")
    with pytest.raises(DecodeError, match="unknown frame kind"):
        FrameDecoder().feed(encode(1) + b"J\x00\x00\x00\x01")
    with pytest.raises(DecodeError, match="unknown frame kind"):
        decode_body(b"J", b"\x01")
    with pytest.raises(DecodeError, match="5 bytes"):
        parse_header(b"M\x00")


def test_pickle_frames_only_when_allowed() -> None:
    value = {"when": datetime.datetime(2020, 1, 1), "big": 10**30, "t": (1,)}
    frame = encode(value, use_pickle=True)
    assert frame[:1] == b"P"
    with pytest.raises(DecodeError, match="pickle frames are not accepted"):
        parse_header(frame[:HEADER_SIZE])
    with pytest.raises(DecodeError, match="pickle frames are not accepted"):
        FrameDecoder().feed(frame)
    with pytest.raises(DecodeError, match="pickle frames are not accepted"):
        decode_body(b"P", frame[HEADER_SIZE:])
    assert FrameDecoder(allow_pickle=True).feed(frame + encode(2)) == [value, 2]
    assert decode_body(b"P", frame[HEADER_SIZE:], allow_pickle=True) == value
    with pytest.raises(DecodeError, match="extra bytes"):
        decode_body(b"P", frame[HEADER_SIZE:] + b"\x00", allow_pickle=True)
    with pytest.raises(DecodeError, match="malformed pickle"):
        decode_body(b"P", pickle.dumps(value)[:-3], allow_pickle=True)
    with pytest.raises(EncodeError, match="cannot pickle"):
        encode(lambda: None, use_pickle=True)


# --- hostile input -----------------------------------------------------------


@pytest.mark.parametrize(("body", "message"), [
    (b"", "malformed"),
    (b"\x92\x01", "malformed"),
    (b"\x01\x02", "extra bytes"),
    (b"\xc1", "malformed"),
    (b"\xa2\xff\xfe", "UTF-8"),
    (b"\xdd\xff\xff\xff\xff", "malformed"),  # an array of 4G items announced in 5 bytes
    (b"\x81\x90\x01", "malformed"),  # a list as a dict key
    (b"\xc7\x00\x01", "out of place"),  # a bare tuple tag
    (b"\x92\x01\xc7\x00\x01", "out of place"),
    (b"\x81\xc7\x00\x02\x01", "out of place"),
    (b"\xd4\x01\x00", "with a payload"),
    (b"\xd4\x63\x00", "unknown ext type 99"),
    (b"\xd4\x05\x00", "malformed ext type 5"),
    (b"\xd6\x06\x00\x00\x01\x01", "malformed ext type 6"),  # year 0
    (b"\xc7\x0c\x07" + struct.pack(">iII", 0, 86400, 0), "malformed ext type 7"),
    (b"\xc7\x03\x09abc", "malformed ext type 9"),
    (b"\xd4\x0a\x00", "malformed ext type 10"),
    (b"\x92\xc7\x00\x02\x90", "malformed"),  # a set holding a list
])
def test_bad_bodies(body: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_body(b"M", body)


@MANY
@given(st.binary(max_size=64))
def test_garbage_bodies_raise_only_decode_error(body: bytes) -> None:
    frame = b"M" + struct.pack(">I", len(body)) + body
    try:
        FrameDecoder().feed(frame)
    except DecodeError:
        pass


@MANY
@given(values, st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1000), st.integers(0, 255)), min_size=1,
                        max_size=4))
def test_damaged_bodies_raise_only_decode_error(value: Any, edits: list[tuple[int, int, int]]) -> None:
    body = mutate(encode(value)[HEADER_SIZE:], edits)
    try:
        decode_body(b"M", body)
    except DecodeError:
        pass


def test_deep_nesting_is_refused_not_crashing() -> None:
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(EncodeError, match="recursion limit"):
        encode(deep)
    deep_tuple: Any = ()
    for _ in range(100_000):
        deep_tuple = (deep_tuple,)
    with pytest.raises(EncodeError):
        encode(deep_tuple)
    for opener in (b"\x91", b"\x92\xc7\x00\x01", b"\x81\xc0"):
        with pytest.raises(DecodeError, match="nested too deeply"):
            decode_body(b"M", opener * 100_000 + b"\xc0")


def test_bad_strings_and_msgpack_ext_values() -> None:
    with pytest.raises(EncodeError, match="unicode"):
        encode("\ud800")
    # msgpack's own timestamp ext, which we never write, reads as UTC
    stamp = msgpack.packb(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC), datetime=True)
    assert decode_body(b"M", stamp) == datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    with pytest.raises(DecodeError):
        decode_body(b"M", b"\xd7\xff" + b"\xff" * 8)
