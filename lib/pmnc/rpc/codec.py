"""The wire codec of cage-to-cage RPC: values to length-prefixed frames and back.

A frame is a 5-byte header and a body. Header byte 0 says how the body is
encoded: b"M" msgpack (the default) or b"P" pickle protocol 5 (only between
cages that opt in). Bytes 1..4 are the body length, big-endian unsigned; a
receiver refuses a length above its limit from the header alone, before it
buffers any of the body.

msgpack bodies carry these Python types, each arriving with the same type and
value: None, bool, int (of any size), float, str, bytes, list, tuple, dict
(keys of any supported hashable type), set, frozenset, datetime.datetime,
datetime.date, datetime.time, datetime.timedelta, decimal.Decimal (digits,
exponent, sign and NaN payloads exact) and uuid.UUID. Beyond msgpack's own
types they travel as ext types:

    code  type        payload
    ----  ----------  --------------------------------------------------------
       1  tuple       empty; a tag that heads the msgpack array of the items
       2  set         empty; a tag that heads the msgpack array of the items
       3  frozenset   empty; a tag that heads the msgpack array of the items
       4  int         signed big-endian two's complement, for ints outside
                      msgpack's range [-2**63, 2**64)
       5  datetime    >HBBBBBIB year, month, day, hour, minute, second,
                      microsecond, fold; aware ones add >q UTC offset in us
       6  date        >HBB year, month, day
       7  timedelta   >iII days, seconds, microseconds
       8  time        >BBBIB hour, minute, second, microsecond, fold; aware
                      ones add >q UTC offset in us
       9  Decimal     str() of the value, ASCII
      10  UUID        the 16 bytes

Containers are tagged arrays rather than ext payloads packed separately, so
one msgpack pass encodes and decodes any nesting and msgpack's own depth
limits hold for the whole value.

Lossy on purpose: bytearray and memoryview arrive as bytes; a subclass of a
supported type (IntEnum, OrderedDict, defaultdict, a namedtuple, a str
subclass ...) arrives as its base type. An aware datetime or time keeps only
its UTC offset: a ZoneInfo zone (or a named fixed timezone) arrives as the
plain `timezone` of the offset in effect, and a time whose tzinfo gives no
offset for a bare time (ZoneInfo does that) arrives naive. msgpack's own
timestamp ext (-1), which we never write, is read as an aware UTC datetime.
"""

from __future__ import annotations

import datetime
import decimal
import io
import pickle
import struct
import uuid
from collections.abc import Callable
from typing import Any, Final

import msgpack

from pmnc.errors import ProtocolError

__all__ = [
    "DEFAULT_LIMIT",
    "HEADER_SIZE",
    "DecodeError",
    "EncodeError",
    "FrameDecoder",
    "decode",
    "decode_body",
    "encode",
    "parse_header",
]

HEADER_SIZE: Final = 5
DEFAULT_LIMIT: Final = 16 * 1024 * 1024

MSGPACK: Final = b"M"
PICKLE: Final = b"P"

_HEADER = struct.Struct(">cI")
_MAX_LENGTH = 0xFFFFFFFF

Bytes = bytes | bytearray | memoryview


class EncodeError(ProtocolError):
    """A value could not be turned into a frame: unsupported type or too big."""


class DecodeError(ProtocolError):
    """A frame's header or body broke the rules of the codec."""


# --- encoding ----------------------------------------------------------------


def encode(obj: Any, *, limit: int = DEFAULT_LIMIT, use_pickle: bool = False) -> bytes:
    """The frame (header and body) that carries `obj`."""
    if use_pickle:
        kind, body = PICKLE, _pickle(obj)
    else:
        kind, body = MSGPACK, _pack(obj)
    size = len(body)
    if size > limit or size > _MAX_LENGTH:
        raise EncodeError(f"encoded value of {size} bytes exceeds the limit of {min(limit, _MAX_LENGTH)} bytes")
    return _HEADER.pack(kind, size) + body


def _pack(obj: Any) -> bytes:
    try:
        body: bytes = msgpack.packb(obj, default=_default, use_bin_type=True, strict_types=True)
    except EncodeError:
        raise
    except UnicodeEncodeError as exc:
        raise EncodeError(f"cannot encode a str that is not valid unicode: {exc.reason}") from None
    except (ValueError, TypeError, OverflowError, BufferError, RecursionError) as exc:
        # msgpack says "recursion limit exceeded" for values nested over 511 deep
        raise EncodeError(f"cannot encode the value: {exc}") from None
    return body


def _pickle(obj: Any) -> bytes:
    try:
        return pickle.dumps(obj, protocol=5)
    except (pickle.PicklingError, TypeError, AttributeError, ValueError, RecursionError) as exc:
        raise EncodeError(f"cannot pickle the value: {exc}") from None


_TUPLE: Final = 1
_SET: Final = 2
_FROZENSET: Final = 3
_INT: Final = 4
_DATETIME: Final = 5
_DATE: Final = 6
_TIMEDELTA: Final = 7
_TIME: Final = 8
_DECIMAL: Final = 9
_UUID: Final = 10

_TUPLE_TAG = msgpack.ExtType(_TUPLE, b"")
_SET_TAG = msgpack.ExtType(_SET, b"")
_FROZENSET_TAG = msgpack.ExtType(_FROZENSET, b"")

_INT_MIN = -(2**63)
_INT_END = 2**64

_NAIVE_DATETIME = struct.Struct(">HBBBBBIB")
_AWARE_DATETIME = struct.Struct(">HBBBBBIBq")
_DATE_FIELDS = struct.Struct(">HBB")
_TIMEDELTA_FIELDS = struct.Struct(">iII")
_NAIVE_TIME = struct.Struct(">BBBIB")
_AWARE_TIME = struct.Struct(">BBBIBq")
_MICROSECOND = datetime.timedelta(microseconds=1)


def _default(obj: Any) -> Any:
    """What msgpack packs instead of `obj`, a value it cannot pack as it is."""
    cls = type(obj)
    encoder = _ENCODERS.get(cls)
    if encoder is None:
        encoder = _subclass_encoder(cls)
    return encoder(obj)


def _subclass_encoder(cls: type) -> Callable[[Any], Any]:
    for base in cls.__mro__[1:]:
        encoder = _ENCODERS.get(base)
        if encoder is not None:
            return encoder
    raise EncodeError(f"cannot encode a value of type {cls.__qualname__}")


def _encode_int(value: int) -> Any:
    value = int.__int__(value)  # an exact int, also from an IntEnum
    if _INT_MIN <= value < _INT_END:
        return value
    return msgpack.ExtType(_INT, value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True))


def _encode_datetime(value: datetime.datetime) -> msgpack.ExtType:
    fields = (value.year, value.month, value.day, value.hour, value.minute, value.second,
              value.microsecond, value.fold)
    offset = value.utcoffset()
    if offset is None:
        return msgpack.ExtType(_DATETIME, _NAIVE_DATETIME.pack(*fields))
    return msgpack.ExtType(_DATETIME, _AWARE_DATETIME.pack(*fields, offset // _MICROSECOND))


def _encode_time(value: datetime.time) -> msgpack.ExtType:
    fields = (value.hour, value.minute, value.second, value.microsecond, value.fold)
    offset = value.utcoffset()
    if offset is None:
        return msgpack.ExtType(_TIME, _NAIVE_TIME.pack(*fields))
    return msgpack.ExtType(_TIME, _AWARE_TIME.pack(*fields, offset // _MICROSECOND))


def _encode_date(value: datetime.date) -> msgpack.ExtType:
    return msgpack.ExtType(_DATE, _DATE_FIELDS.pack(value.year, value.month, value.day))


def _encode_timedelta(value: datetime.timedelta) -> msgpack.ExtType:
    return msgpack.ExtType(_TIMEDELTA, _TIMEDELTA_FIELDS.pack(value.days, value.seconds, value.microseconds))


def _encode_decimal(value: decimal.Decimal) -> msgpack.ExtType:
    return msgpack.ExtType(_DECIMAL, decimal.Decimal.__str__(value).encode("ascii"))


def _encode_uuid(value: uuid.UUID) -> msgpack.ExtType:
    return msgpack.ExtType(_UUID, value.bytes)


# Keyed by exact type; a subclass uses the entry of its nearest base. Entries
# for types msgpack packs itself only ever see subclasses (and big ints), and
# turn them into the exact base type.
_ENCODERS: dict[type, Callable[[Any], Any]] = {
    tuple: lambda value: [_TUPLE_TAG, *value],
    set: lambda value: [_SET_TAG, *value],
    frozenset: lambda value: [_FROZENSET_TAG, *value],
    int: _encode_int,
    float: float.__float__,
    str: str.__str__,
    bytes: bytes,
    bytearray: bytes,
    list: list,
    dict: dict,
    datetime.datetime: _encode_datetime,
    datetime.date: _encode_date,
    datetime.time: _encode_time,
    datetime.timedelta: _encode_timedelta,
    decimal.Decimal: _encode_decimal,
    uuid.UUID: _encode_uuid,
}


# --- decoding ----------------------------------------------------------------


def parse_header(header: Bytes, *, limit: int = DEFAULT_LIMIT, allow_pickle: bool = False) -> tuple[bytes, int]:
    """The (kind, body length) a frame header announces, refused if out of bounds."""
    if len(header) != HEADER_SIZE:
        raise DecodeError(f"a frame header is {HEADER_SIZE} bytes, not {len(header)}")
    return _read_header(header, 0, limit, allow_pickle)


def _read_header(buffer: Bytes, offset: int, limit: int, allow_pickle: bool) -> tuple[bytes, int]:
    kind, length = _HEADER.unpack_from(buffer, offset)
    if kind != MSGPACK:
        if kind != PICKLE:
            raise DecodeError(f"unknown frame kind {kind!r}")
        if not allow_pickle:
            raise DecodeError("pickle frames are not accepted")
    if length > limit:
        raise DecodeError(f"frame of {length} bytes exceeds the limit of {limit} bytes")
    return kind, length


def decode(frame: Bytes, *, limit: int = DEFAULT_LIMIT, allow_pickle: bool = False) -> Any:
    """The value of one whole frame (a message of its own, as over NATS): nothing before or after."""
    if len(frame) < HEADER_SIZE:
        raise DecodeError(f"a frame of {len(frame)} bytes is shorter than its header")
    kind, length = _read_header(frame, 0, limit, allow_pickle)
    if length != len(frame) - HEADER_SIZE:
        raise DecodeError(f"a frame announces {length} bytes and carries {len(frame) - HEADER_SIZE}")
    return decode_body(kind, memoryview(frame)[HEADER_SIZE:], allow_pickle=allow_pickle)


def decode_body(kind: bytes, body: Bytes, *, allow_pickle: bool = False) -> Any:
    """The value a frame body of the given kind carries."""
    if kind == MSGPACK:
        return _unpack(body)
    if kind == PICKLE:
        if not allow_pickle:
            raise DecodeError("pickle frames are not accepted")
        return _unpickle(body)
    raise DecodeError(f"unknown frame kind {kind!r}")


def _unpack(body: Bytes) -> Any:
    hooks = _Hooks()
    try:
        # max_{str,bin,array,ext}_len default to len(body), max_map_len to half
        # of it: a header announcing a huge array cannot make msgpack allocate
        # more than the body (at most the frame limit) could fill.
        value = msgpack.unpackb(body, ext_hook=hooks.ext, list_hook=hooks.list, strict_map_key=False,
                                raw=False, use_list=True, timestamp=3)
    except DecodeError:
        raise
    except msgpack.ExtraData:
        raise DecodeError("extra bytes after the value in a frame body") from None
    except msgpack.StackError:
        raise DecodeError("value in a frame body nested too deeply") from None
    except msgpack.FormatError:
        raise DecodeError("malformed frame body") from None
    except UnicodeDecodeError:
        raise DecodeError("invalid UTF-8 in a frame body") from None
    except TypeError as exc:  # an unhashable dict key or set item
        raise DecodeError(f"malformed frame body: {exc}") from None
    except (ValueError, OverflowError, RecursionError, msgpack.UnpackException) as exc:
        raise DecodeError(f"malformed frame body: {exc}") from None
    if hooks.tags:
        raise DecodeError("container tag out of place in a frame body")
    return value


def _unpickle(body: Bytes) -> Any:
    stream = io.BytesIO(body)
    try:
        value = pickle.Unpickler(stream).load()
    except Exception as exc:  # unpickling can run any code, and so fail any way
        raise DecodeError(f"malformed pickle frame body: {type(exc).__name__}: {exc}") from None
    if stream.tell() != len(body):
        raise DecodeError("extra bytes after the value in a frame body")
    return value


class _Tag:
    """What a container tag decodes to until the array it heads is complete."""

    __slots__ = ("build",)

    def __init__(self, build: Callable[[list[Any]], Any]) -> None:
        self.build = build


_TAGS = {_TUPLE: _Tag(tuple), _SET: _Tag(set), _FROZENSET: _Tag(frozenset)}


class _Hooks:
    """msgpack's hooks for one body; counts tags not yet consumed by an array."""

    __slots__ = ("tags",)

    def __init__(self) -> None:
        self.tags = 0

    def ext(self, code: int, data: bytes) -> Any:
        tag = _TAGS.get(code)
        if tag is not None:
            if data:
                raise DecodeError(f"ext type {code} with a payload")
            self.tags += 1
            return tag
        decoder = _DECODERS.get(code)
        if decoder is None:
            raise DecodeError(f"unknown ext type {code}")
        try:
            return decoder(data)
        except (ValueError, TypeError, OverflowError, ArithmeticError, struct.error):
            raise DecodeError(f"malformed ext type {code}") from None

    def list(self, items: list[Any]) -> Any:
        if items:
            head = items[0]
            if head.__class__ is _Tag:
                self.tags -= 1
                del items[0]
                return head.build(items)
        return items


def _decode_int(data: bytes) -> int:
    return int.from_bytes(data, "big", signed=True)


def _timezone(offset: int) -> datetime.timezone:
    return datetime.timezone(datetime.timedelta(microseconds=offset))


def _decode_datetime(data: bytes) -> datetime.datetime:
    if len(data) == _NAIVE_DATETIME.size:
        year, month, day, hour, minute, second, microsecond, fold = _NAIVE_DATETIME.unpack(data)
        tzinfo = None
    else:
        year, month, day, hour, minute, second, microsecond, fold, offset = _AWARE_DATETIME.unpack(data)
        tzinfo = _timezone(offset)
    return datetime.datetime(year, month, day, hour, minute, second, microsecond, tzinfo, fold=fold)


def _decode_time(data: bytes) -> datetime.time:
    if len(data) == _NAIVE_TIME.size:
        hour, minute, second, microsecond, fold = _NAIVE_TIME.unpack(data)
        tzinfo = None
    else:
        hour, minute, second, microsecond, fold, offset = _AWARE_TIME.unpack(data)
        tzinfo = _timezone(offset)
    return datetime.time(hour, minute, second, microsecond, tzinfo, fold=fold)


def _decode_date(data: bytes) -> datetime.date:
    return datetime.date(*_DATE_FIELDS.unpack(data))


def _decode_timedelta(data: bytes) -> datetime.timedelta:
    days, seconds, microseconds = _TIMEDELTA_FIELDS.unpack(data)
    if seconds >= 86400 or microseconds >= 1000000:  # timedelta would carry them over
        raise ValueError("timedelta fields out of range")
    return datetime.timedelta(days, seconds, microseconds)


# Decimal() takes the context only to signal a bad string, never to round.
_DECIMAL_CONTEXT = decimal.Context(traps=[decimal.InvalidOperation])


def _decode_decimal(data: bytes) -> decimal.Decimal:
    return decimal.Decimal(data.decode("ascii"), _DECIMAL_CONTEXT)


def _decode_uuid(data: bytes) -> uuid.UUID:
    return uuid.UUID(bytes=data)


_DECODERS: dict[int, Callable[[bytes], Any]] = {
    _INT: _decode_int,
    _DATETIME: _decode_datetime,
    _DATE: _decode_date,
    _TIMEDELTA: _decode_timedelta,
    _TIME: _decode_time,
    _DECIMAL: _decode_decimal,
    _UUID: _decode_uuid,
}


# --- frames from a byte stream -----------------------------------------------


class FrameDecoder:
    """Bytes from a stream in, decoded values out; no socket inside.

    A header is checked as soon as its 5 bytes are in, so an oversized or
    unacceptable frame is refused before its body is buffered. After a
    DecodeError the stream has lost its framing: the decoder refuses to go on.
    """

    __slots__ = ("_allow_pickle", "_buffer", "_failed", "_limit")

    def __init__(self, limit: int = DEFAULT_LIMIT, allow_pickle: bool = False) -> None:
        self._limit = limit
        self._allow_pickle = allow_pickle
        self._buffer = bytearray()
        self._failed: str | None = None

    @property
    def pending(self) -> int:
        """Bytes received but not yet decoded: the start of the next frame."""
        return len(self._buffer)

    def __repr__(self) -> str:
        state = f" failed: {self._failed}" if self._failed is not None else ""
        return f"<FrameDecoder pending={len(self._buffer)} limit={self._limit}{state}>"

    def feed(self, data: Bytes) -> list[Any]:
        """Every value completed by `data`, in order; a partial frame is kept."""
        if self._failed is not None:
            raise DecodeError(f"the stream already failed: {self._failed}")
        try:
            return self._feed(data)
        except DecodeError as exc:
            self._failed = str(exc)
            raise

    def _feed(self, data: Bytes) -> list[Any]:
        buffer = self._buffer
        source: Bytes
        if buffer:
            buffer += data
            source = buffer
        else:
            size = len(data)
            if size >= HEADER_SIZE:  # fast path: the whole of one frame
                kind, length = _read_header(data, 0, self._limit, self._allow_pickle)
                if size == HEADER_SIZE + length:
                    with memoryview(data)[HEADER_SIZE:] as body:  # released even if a traceback keeps it
                        return [decode_body(kind, body, allow_pickle=self._allow_pickle)]
            source = data
        values: list[Any] = []
        # Bodies are decoded from slices of the view, never copied; the view
        # must be gone before the buffer can shrink.
        with memoryview(source) as view:
            offset, end = 0, len(view)
            while end - offset >= HEADER_SIZE:
                kind, length = _read_header(view, offset, self._limit, self._allow_pickle)
                stop = offset + HEADER_SIZE + length
                if stop > end:
                    break
                with view[offset + HEADER_SIZE:stop] as body:
                    values.append(decode_body(kind, body, allow_pickle=self._allow_pickle))
                offset = stop
            if source is not buffer:
                buffer += view[offset:]
        if source is buffer:
            del buffer[:offset]
        return values
