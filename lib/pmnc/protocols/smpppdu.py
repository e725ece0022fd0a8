"""The original's SMPP 3.4 PDU classes (`smpp34.smpp_pdus`) as a thin layer over smpplib's commands.

A handler of an smpp interface gets `request["pdu"]`, an instance of the classes below,
and answers with `response["pdu"] = req.create_response(message_id=b"")`, as it did in
Pythomnic3k. Each parameter is a value object with `.value` (bytes for strings, int for
integers); absent optional parameters are absent attributes.

pmnc does not encode SMPP itself: smpplib 2.2.4 builds and parses the bytes. Where
smpplib gets the wire wrong, its command classes are subclassed here with the fault
corrected (`_Fixes` says which), and `make_command` / `parse_command` are drop-in
replacements for `smpplib.smpp.make_pdu` / `parse_pdu` that use them.

    from_smpplib(command) -> PDU      a command smpplib parsed (or built) as a PDU
    to_smpplib(pdu, client) -> command
    parse(raw) -> PDU                 bytes from the wire (SMPPPDUReadError if broken)
    pdu.serialize() -> bytes
    wire_fields(command, fields)      checked smpplib keyword arguments (make_command / make_pdu)
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self

import smpplib.command
import smpplib.command_codes
import smpplib.consts
import smpplib.exceptions
import smpplib.ptypes

from pmnc.errors import PmncError, ProtocolError, ResourceError, ResourceInputParameterError
from pmnc.protocols.smpptext import parse_udh

__all__ = [
    "PDU", "AlertNotificationPDU", "BindReceiverPDU", "BindReceiverRespPDU", "BindTransceiverPDU",
    "BindTransceiverRespPDU", "BindTransmitterPDU", "BindTransmitterRespPDU", "CancelSmPDU",
    "CancelSmRespPDU", "DataSmPDU", "DataSmRespPDU", "DeliverSmPDU", "DeliverSmRespPDU",
    "EnquireLinkPDU", "EnquireLinkRespPDU", "ErrorCodes", "GenericNackPDU", "OutbindPDU", "QuerySmPDU",
    "QuerySmRespPDU", "ReplaceSmPDU", "ReplaceSmRespPDU", "RequestPDU", "ResponsePDU",
    "SMPPCOctetString", "SMPPConnectionError", "SMPPError", "SMPPInteger", "SMPPInteger1",
    "SMPPInteger2", "SMPPInteger4", "SMPPOctetString", "SMPPPDUCreateError", "SMPPPDUReadError",
    "SMPPParameterError", "SMPPResponseError", "SMPPType", "SMPPTypeReadError", "SubmitMultiPDU",
    "SubmitMultiRespPDU", "SubmitSmPDU", "SubmitSmRespPDU", "UnbindPDU", "UnbindRespPDU", "error_codes",
    "from_smpplib", "make_command", "next_sequence_number", "parse", "parse_command", "status_text",
    "submit_sm_bytes", "to_smpplib", "wire_fields",
]

MAX_SEQUENCE_NUMBER = 0x7FFFFFFF  # SMPP 3.4 §5.1.4: 1 ... 0x7FFFFFFF
UDHI = 0x40  # esm_class: short_message begins with a user data header


# --- errors: the original's names, in pmnc's families ------------------------------------------


class SMPPError(PmncError):
    """Something about SMPP PDUs went wrong."""


class SMPPParameterError(SMPPError, ValueError):
    """A value that does not fit its SMPP type."""


class SMPPPDUCreateError(SMPPError, ResourceInputParameterError):
    """A PDU cannot be built from what was given: nothing was sent."""


class SMPPPDUReadError(SMPPError, ProtocolError):
    """Bytes from the peer are not a PDU this side can read."""


class SMPPTypeReadError(SMPPPDUReadError):
    pass


class SMPPConnectionError(SMPPError, ResourceError):
    """The session to the SMSC failed (the original's name)."""


class SMPPResponseError(SMPPError, ResourceError):
    """A response PDU said no; `status` is its command_status. Nothing was done, so it is
    recoverable, and the session is fine."""

    def __init__(self, description: str, status: int) -> None:
        ResourceError.__init__(self, description, recoverable=True, terminal=False)
        self.status = status

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.description, self.status)


# --- command statuses (SMPP 3.4 §5.1.3) --------------------------------------------------------


class ErrorCodes(Mapping[int, dict[str, str]]):
    """The original's `error_codes`: `error_codes.ESME_RTHROTTLED == 0x58`, `code in error_codes`,
    `error_codes[code] == {"name": "ESME_RTHROTTLED", "description": "Throttling error ..."}`."""

    def __init__(self, table: Mapping[int, tuple[str, str]]) -> None:
        self._table = dict(table)
        self._codes = {name: code for code, (name, _) in self._table.items()}

    def __getitem__(self, code: int) -> dict[str, str]:
        name, description = self._table[code]
        return {"name": name, "description": description}

    def __iter__(self) -> Iterator[int]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def __getattr__(self, name: str) -> int:
        if name.startswith("_"):  # never look private names up in the table (copy, pickle)
            raise AttributeError(name)
        try:
            return self._codes[name]
        except KeyError:
            raise AttributeError(f"{name} is not an SMPP 3.4 command status") from None

    def __dir__(self) -> list[str]:
        return [*super().__dir__(), *self._codes]

    def __repr__(self) -> str:
        return f"<ErrorCodes {len(self)} SMPP 3.4 statuses>"


def _error_table() -> dict[int, tuple[str, str]]:
    fixes = {smpplib.consts.SMPP_ESME_RINVREGDLVFLG: "Invalid Registered Delivery Flag"}  # smpplib: "<Desc Not Set>"
    codes = {code: name for name, code in vars(smpplib.consts).items() if name.startswith("SMPP_ESME_")}
    return {code: (codes[code][len("SMPP_"):], fixes.get(code, smpplib.consts.DESCRIPTIONS[code]))
            for code in sorted(codes)}


error_codes = ErrorCodes(_error_table())
ESME_ROK = error_codes.ESME_ROK


def status_text(code: int) -> str:
    """`ESME_RINVPASWD (Invalid Password)`, or `0x00000123 (unknown status)`."""
    if code in error_codes:
        entry = error_codes[code]
        return f"{entry['name']} ({entry['description']})"
    return f"0x{code:08x} (unknown status)"


# --- parameter values ----------------------------------------------------------------------------


def _quote(data: bytes) -> str:
    """The original's quote_bytes: printable ASCII as is, `"` escaped, anything else as \\xNN."""
    return '"' + "".join('\\"' if c == 0x22 else chr(c) if 0x20 <= c < 0x7F else f"\\x{c:02x}"
                         for c in data) + '"'


class SMPPType:
    """One parameter's value: `.value`, equal to another of the same type and value."""

    __slots__ = ("_value",)

    def __init__(self, value: Any) -> None:
        self._value = value

    @property
    def value(self) -> Any:
        return self._value

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and isinstance(other, SMPPType) and self._value == other._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return f"<{self}>"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


class SMPPInteger(SMPPType):
    """An unsigned big-endian integer of `size` octets."""

    __slots__ = ()
    size: ClassVar[int] = 4
    _value: int

    def __init__(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SMPPParameterError(f"{type(self).__name__} takes an int, not {type(value).__name__}")
        if not 0 <= value < 1 << 8 * self.size:
            raise SMPPParameterError(f"{type(self).__name__} holds 0 to 0x{(1 << 8 * self.size) - 1:x}, not {value}")
        self._value = value

    @property
    def value(self) -> int:
        return self._value

    def __str__(self) -> str:
        return f"{type(self).__name__}(0x{self._value:0{2 * self.size}x})"


class SMPPInteger1(SMPPInteger):
    __slots__ = ()
    size = 1


class SMPPInteger2(SMPPInteger):
    __slots__ = ()
    size = 2


class SMPPInteger4(SMPPInteger):
    __slots__ = ()
    size = 4


class _SMPPString(SMPPType):
    __slots__ = ()
    _value: bytes

    def __init__(self, value: bytes) -> None:
        if not isinstance(value, bytes):
            raise SMPPParameterError(f"{type(self).__name__} takes bytes, not {type(value).__name__}")
        self._value = value

    @property
    def value(self) -> bytes:
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __str__(self) -> str:
        return f"{type(self).__name__}({_quote(self._value)})"


class SMPPCOctetString(_SMPPString):
    """Text ending with a NUL on the wire; the value is without it."""

    __slots__ = ()

    def __init__(self, value: bytes) -> None:
        super().__init__(value)
        if b"\0" in value:
            raise SMPPParameterError(f"{_quote(value)} has a NUL byte, which a C-octet string cannot carry")


class SMPPOctetString(_SMPPString):
    """Raw octets; their count is given elsewhere (sm_length, a TLV's length)."""

    __slots__ = ()


# --- how each parameter is typed -----------------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    type: type[SMPPType]  # SMPPInteger1/2/4, SMPPCOctetString or SMPPOctetString
    most: int = 0  # strings: the most octets (a C string's NUL not counted)
    least: int = 0


# Where smpplib's Param tables differ from SMPP 3.4 (§5.2, §5.3.2) on the wire; the rest is
# taken from smpplib. smpplib's own types are kept where the bytes come out the same
# (its_session_info and ussd_service_op are integers there, two and one octets).
_SPEC_KINDS = {
    "source_addr_subunit": _Kind(SMPPInteger1),  # smpplib's submit_sm: two octets
    "delivery_failure_reason": _Kind(SMPPInteger1),  # smpplib's data_sm_resp: a C string
    "network_error_code": _Kind(SMPPOctetString, 3),  # smpplib's data_sm_resp: a C string
    "callback_num_atag": _Kind(SMPPOctetString, 65),  # smpplib: a C string (adds a NUL)
    "source_subaddress": _Kind(SMPPOctetString, 23, 2),  # ditto
    "dest_subaddress": _Kind(SMPPOctetString, 23, 2),  # ditto
    "alert_on_message_delivery": _Kind(SMPPOctetString, 0),  # smpplib: a "flag" it never writes
    "message_payload": _Kind(SMPPOctetString, 0xFFFF),  # smpplib says 260 (and does not check)
    "esme_addr": _Kind(SMPPCOctetString, 64),  # smpplib says 20
    "set_dpf": _Kind(SMPPInteger1),  # no smpplib command lists it
}
_INTEGERS: dict[int, type[SMPPInteger]] = {1: SMPPInteger1, 2: SMPPInteger2, 4: SMPPInteger4}
_ALIASES = {"alert_on_msg_delivery": "alert_on_message_delivery"}  # the original's spelling


def _kind_of(param: Any) -> _Kind:
    if param.type is int:
        return _Kind(_INTEGERS[param.size])
    if param.type is str:
        return _Kind(SMPPCOctetString, param.max - 1)  # smpplib's max counts the NUL
    return _Kind(SMPPOctetString, getattr(param, "max", getattr(param, "size", 0)), getattr(param, "min", 0))


def _smpplib_classes() -> dict[str, type[Any]]:
    """smpplib's command class for each command it supports."""
    classes = {}
    for name in smpplib.command_codes.commands:
        try:
            classes[name] = type(smpplib.command.factory(name, sequence=0))
        except smpplib.exceptions.UnknownCommandError:
            pass  # replace_sm, cancel_sm, submit_multi, outbind (and their responses)
    return classes


def _kinds() -> dict[str, _Kind]:
    """Every parameter's type: SMPP 3.4's where smpplib's is wrong, else smpplib's."""
    kinds: dict[str, _Kind] = {}
    for cls in _SMPPLIB.values():
        for name, param in cls.params.items():
            kinds.setdefault(name, _kind_of(param))
    return kinds | _SPEC_KINDS


_SMPPLIB = _smpplib_classes()
_KINDS = _kinds()
_TLV_NAMES = {code: name for name, code in smpplib.consts.OPTIONAL_PARAMS.items()}
assert set(smpplib.consts.OPTIONAL_PARAMS) <= set(_KINDS), "a TLV of smpplib's without a type here"


def _parameters(cls: type[Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A command's mandatory and optional parameter names, in smpplib's order. (query_sm_resp's
    message_state, also a TLV name, is mandatory through smpplib's `mandatory_fields`, a string
    it tests with `in`: right for that one name.)"""
    probe = cls(cls.__name__, sequence=0)
    mandatory = tuple(name for name in cls.params_order if not probe.field_is_optional(name))
    return mandatory, tuple(name for name in cls.params_order if name not in mandatory)


# Commands smpplib does not support (SMPP 3.4 §4): the classes exist, for isinstance and the
# names, but cannot be built; their parameters are listed for the record.
_UNSUPPORTED_PARAMETERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "outbind": (("system_id", "password"), ()),
    "cancel_sm": (("service_type", "message_id", "source_addr_ton", "source_addr_npi", "source_addr",
                   "dest_addr_ton", "dest_addr_npi", "destination_addr"), ()),
    "cancel_sm_resp": ((), ()),
    "replace_sm": (("message_id", "source_addr_ton", "source_addr_npi", "source_addr", "schedule_delivery_time",
                    "validity_period", "registered_delivery", "sm_default_msg_id", "sm_length", "short_message"), ()),
    "replace_sm_resp": ((), ()),
    "submit_multi": (("service_type", "source_addr_ton", "source_addr_npi", "source_addr", "number_of_dests",
                      "dest_addresses", "esm_class", "protocol_id", "priority_flag", "schedule_delivery_time",
                      "validity_period", "registered_delivery", "replace_if_present_flag", "data_coding",
                      "sm_default_msg_id", "sm_length", "short_message"), ()),
    "submit_multi_resp": (("message_id", "no_unsuccess", "unsuccess_smes"), ()),
}


# --- smpplib's commands, corrected ---------------------------------------------------------------


def _latin1(value: str | bytes) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else bytes(value)


def _short(field: str, data: bytes, pos: int, size: int) -> None:
    if len(data) - pos < size:
        raise ValueError(f"{field} needs {size} byte(s), {len(data) - pos} left")


class _Fixes(smpplib.command.Command):  # type: ignore[misc]
    """What smpplib 2.2.4's commands get wrong, put right (one method each):

    - a C-octet string TLV is encoded UTF-8 with its length in characters, and dropped
      when empty; an octet string TLV is dropped when empty (alert_on_message_delivery
      is nothing but its presence);
    - reading, a TLV its command does not list raises KeyError, an integer TLV is read
      with the size smpplib expects rather than the length it has, a C string TLV
      without its NUL loses its last byte, and a field past the end (or a C string
      without NUL) reads as garbage instead of failing;
    - an error response the caller gave no fields is sent with a body of empty fields,
      where SMPP 3.4 (§4) sends none.
    (The sequence number given to the constructor is ignored too: make_command sets it.)
    """

    _bodyless = False

    def generate_params(self) -> bytes:
        return b"" if self._bodyless else bytes(super().generate_params())

    def _generate_string_tlv(self, field: str) -> bytes | None:
        value = getattr(self, field, None)
        if value is None:
            return None
        data = _latin1(value) + b"\0"
        return struct.pack(">HH", smpplib.consts.OPTIONAL_PARAMS[field], len(data)) + data

    def _generate_ostring_tlv(self, field: str) -> bytes | None:
        value = getattr(self, field, None)
        if value is None:
            return None
        data = _latin1(value)
        return struct.pack(">HH", smpplib.consts.OPTIONAL_PARAMS[field], len(data)) + data

    def _parse_int(self, field: str, data: bytes, pos: int) -> tuple[bytes, int]:
        _short(field, data, pos, self.params[field].size)
        return super()._parse_int(field, data, pos)  # type: ignore[no-any-return]

    def _parse_string(self, field: str, data: bytes, pos: int, length: int | None = None) -> tuple[bytes, int]:
        end = data.find(b"\0", pos)
        if end < 0:
            raise ValueError(f"{field} has no NUL at its end")
        setattr(self, field, data[pos:end])
        return data, end + 1

    def _parse_ostring(self, field: str, data: bytes, pos: int, length: int | None = None) -> tuple[bytes, int]:
        if length is None:
            length = int(getattr(self, self.params[field].len_field))
        _short(field, data, pos, length)
        setattr(self, field, data[pos:pos + length])
        return data, pos + length

    def parse_optional_params(self, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            _short("a TLV header", data, pos, 4)
            tag, length = struct.unpack_from(">HH", data, pos)
            _short(f"TLV 0x{tag:04x}", data, pos + 4, length)
            value, pos = data[pos + 4:pos + 4 + length], pos + 4 + length
            name = _TLV_NAMES.get(tag)
            if name is not None:  # an unknown tag is skipped, as SMPP 3.4 §3.2.5 asks
                setattr(self, name, _tlv_value(name, value))


def _tlv_value(name: str, data: bytes) -> int | bytes:
    kind = _KINDS[name]
    if issubclass(kind.type, SMPPInteger):
        if not 1 <= len(data) <= 4:
            raise ValueError(f"{name} has {len(data)} byte(s), an integer 1 to 4")
        return int.from_bytes(data, "big")  # whatever length it came with, not the size expected
    if kind.type is SMPPCOctetString:
        return data.split(b"\0", 1)[0]  # with or without its NUL
    return data


def _smpplib_param(name: str, original: Any) -> Any:
    """The Param smpplib needs to write `name` right."""
    if original is not None and hasattr(original, "len_field"):
        return original  # short_message: smpplib writes it after its length
    kind, param = _KINDS[name], smpplib.command.Param
    if issubclass(kind.type, SMPPInteger):
        return param(type=int, size=kind.type.size)
    if kind.type is SMPPCOctetString:
        return param(type=str, max=kind.most + 1)
    return param(type=smpplib.ptypes.ostr, max=kind.most)


def _fixed(cls: type[Any]) -> type[Any]:
    """smpplib's command class with `_Fixes`, knowing every TLV (so any of them can be read)."""
    names = [*cls.params, *(name for name in smpplib.consts.OPTIONAL_PARAMS if name not in cls.params)]
    params = {name: _smpplib_param(name, cls.params.get(name)) for name in names}
    return type(f"Pmnc{cls.__name__}", (_Fixes, cls), {"params": params})


_FIXED = {name: _fixed(cls) for name, cls in _SMPPLIB.items()}
_COMMAND_ARGUMENTS = {"client", "sequence", "status", "need_sequence", "allow_unknown_opt_params"}


def make_command(command_name: str, **kwargs: Any) -> Any:
    """`smpplib.smpp.make_pdu(command_name, **kwargs)` with the corrections of `_Fixes`:
    `client`, `sequence`, `status` and fields (as `wire_fields` gives them). A `sequence`
    given is used (smpplib ignores it); an error `status` with no fields has no body."""
    command_cls = _FIXED.get(command_name)
    if command_cls is None:
        raise smpplib.exceptions.UnknownCommandError(f"Command {command_name!r} is not supported by smpplib")
    fields = {name: value for name, value in kwargs.items() if name not in _COMMAND_ARGUMENTS}
    arguments = dict(kwargs)
    if arguments.get("sequence") is None and arguments.get("client") is None:
        arguments["sequence"] = next_sequence_number()  # smpplib's default client has no counter
    command = command_cls(command_name, **arguments)
    if arguments.get("sequence") is not None:
        command.sequence = arguments["sequence"]
    for name, value in fields.items():  # smpplib's constructor keeps its own defaults over some
        setattr(command, name, value)
    command._bodyless = bool(kwargs.get("status")) and not fields
    return command


def parse_command(raw: bytes, **kwargs: Any) -> Any:
    """`smpplib.smpp.parse_pdu(raw, **kwargs)` with the corrections of `_Fixes`: every TLV
    SMPP 3.4 knows is read, unknown ones skipped. smpplib's UnknownCommandError for a
    command id it does not support; SMPPPDUReadError for bytes that are not a PDU."""
    if len(raw) < 16:
        raise SMPPPDUReadError(f"a PDU has at least 16 bytes, this one {len(raw)}")
    length, command_id, _, sequence = struct.unpack_from(">LLLL", raw)
    if length != len(raw):
        raise SMPPPDUReadError(f"command_length says {length} bytes, the PDU has {len(raw)}")
    name = next((n for n, code in smpplib.command_codes.commands.items() if code == command_id), None)
    if name not in _FIXED:
        what = f"{name} (0x{command_id:08x})" if name else f"command id 0x{command_id:08x}"
        raise smpplib.exceptions.UnknownCommandError(f"{what} is not supported by smpplib")
    command = _FIXED[name](name, **{"sequence": 0, **kwargs})
    try:
        command.parse(raw)
    except Exception as e:
        raise SMPPPDUReadError(f"failed to read {name} #{sequence}: {e}") from e
    return command


# --- field values in, field values out ------------------------------------------------------------


def _value(name: str, value: object) -> SMPPType:
    """`value` (int; bytes or latin-1 str; or a value object) checked against `name`'s SMPP type."""
    kind = _KINDS[name]
    if isinstance(value, SMPPType):
        value = value.value
    if issubclass(kind.type, SMPPInteger):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SMPPParameterError(f"{name} must be an int, not {type(value).__name__}")
        if not 0 <= value < 1 << 8 * kind.type.size:
            raise SMPPParameterError(f"{name} is {value}, SMPP allows 0 to {(1 << 8 * kind.type.size) - 1}")
        return kind.type(value)
    if isinstance(value, str):
        try:
            value = value.encode("latin-1")
        except UnicodeEncodeError:
            raise SMPPParameterError(f"{name} has characters outside latin-1: give it as bytes") from None
    if not isinstance(value, bytes | bytearray | memoryview):
        raise SMPPParameterError(f"{name} must be bytes or str, not {type(value).__name__}")
    data = bytes(value)
    if kind.type is SMPPCOctetString and b"\0" in data:
        raise SMPPParameterError(f"{name} has a NUL byte, which a C-octet string cannot carry")
    if len(data) > kind.most:
        raise SMPPParameterError(f"{name} is {len(data)} bytes, SMPP allows at most {kind.most}")
    if len(data) < kind.least:
        raise SMPPParameterError(f"{name} is {len(data)} bytes, SMPP needs at least {kind.least}")
    return kind.type(data)


def _read_value(name: str, raw: object) -> SMPPType:
    """What smpplib holds for `name` (int, bytes, or str for what it built itself) as a value object."""
    kind = _KINDS[name]
    if issubclass(kind.type, SMPPInteger):
        return kind.type(raw if isinstance(raw, int) else _tlv_value(name, _latin1(raw)))  # type: ignore[arg-type]
    data = _latin1(raw)  # type: ignore[arg-type]
    return kind.type(data.split(b"\0", 1)[0] if kind.type is SMPPCOctetString else data)


def _udh_bytes(udh: object) -> bytes:
    """[(iei, bytes), ...] as a user data header (its length octet first)."""
    if not isinstance(udh, list | tuple):
        raise SMPPParameterError(f"udh must be a list of (iei, bytes), not {type(udh).__name__}")
    body = b""
    for element in udh:
        if not (isinstance(element, tuple | list) and len(element) == 2 and isinstance(element[0], int)
                and 0 <= element[0] <= 0xFF and isinstance(element[1], bytes) and len(element[1]) <= 0xFF):
            raise SMPPParameterError(f"udh element {element!r} is not (iei 0-255, bytes of at most 255)")
        body += bytes((element[0], len(element[1]))) + element[1]
    if len(body) > 0xFF:
        raise SMPPParameterError(f"udh is {len(body)} bytes, at most 255 fit")
    return bytes((len(body),)) + body


def _udh_of(values: Mapping[str, SMPPType]) -> list[tuple[int, bytes]] | None:
    """The UDH the message carries (esm_class 0x40), None without one or when it cannot be read."""
    esm_class = values.get("esm_class")
    if esm_class is None or not esm_class.value & UDHI:
        return None
    short_message, payload = values.get("short_message"), values.get("message_payload")
    data = short_message.value if short_message is not None and short_message.value else \
        payload.value if payload is not None else b""
    try:
        return parse_udh(data)[0]
    except ValueError:
        return None  # the data is still there, in short_message


# --- PDUs ------------------------------------------------------------------------------------------

_sequence = itertools.count()  # next() is atomic under the GIL
_BY_COMMAND: dict[str, type[PDU]] = {}
_BY_ID: dict[int, type[PDU]] = {}


def next_sequence_number() -> int:
    """1, 2, ... 0x7FFFFFFF, 1, ...: shared by every PDU created without one."""
    return next(_sequence) % MAX_SEQUENCE_NUMBER + 1


def _check_dword(what: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
        raise SMPPParameterError(f"{what} must be an int 0 to 0xffffffff, not {value!r}")
    return value


class PDU:
    """One SMPP PDU: `command_status`, `sequence_number` and each parameter present as an
    attribute holding a value object; `udh` too on those that carry a short_message.
    The class knows its `command` (smpplib's name), `command_id`, `mandatory_parameters`
    and `optional_parameters`."""

    command: ClassVar[str] = ""
    command_id: ClassVar[SMPPInteger4]
    mandatory_parameters: ClassVar[tuple[str, ...]] = ()
    optional_parameters: ClassVar[tuple[str, ...]] = ()
    supported: ClassVar[bool] = True  # False: smpplib cannot build it

    command_status: SMPPInteger4
    sequence_number: SMPPInteger4
    udh: list[tuple[int, bytes]] | None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("command")
        if not name:
            return
        cls.command_id = SMPPInteger4(smpplib.command_codes.commands[name])
        cls.supported = name in _SMPPLIB
        parameters = _parameters(_SMPPLIB[name]) if cls.supported else _UNSUPPORTED_PARAMETERS[name]
        cls.mandatory_parameters, cls.optional_parameters = parameters
        _BY_COMMAND[name] = _BY_ID[cls.command_id.value] = cls

    def __init__(self, command_status: int, sequence_number: int) -> None:
        self.command_status = SMPPInteger4(command_status)
        self.sequence_number = SMPPInteger4(sequence_number)
        self._values: dict[str, SMPPType] = {}

    if TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any: ...  # the parameters, set per instance

    @classmethod
    def _carries_short_message(cls) -> bool:
        return "short_message" in cls.mandatory_parameters

    def _set_values(self, values: dict[str, SMPPType]) -> None:
        self._values = values
        for name, value in values.items():
            setattr(self, name, value)
        if self._carries_short_message():
            self.udh = _udh_of(values)

    @property
    def fields(self) -> dict[str, int | bytes]:
        """The parameters present, as plain values: mandatory ones in order, then TLVs."""
        return {name: value.value for name, value in self._values.items()}

    # --- building ----------------------------------------------------------------------------

    @classmethod
    def _unsupported(cls) -> SMPPPDUCreateError:
        return SMPPPDUCreateError(f"{cls.__name__} cannot be built: smpplib, which writes pmnc's PDUs, "
                                  f"does not support {cls.command}")

    @classmethod
    def create(cls, command_status: int | None = None, sequence_number: int | None = None, **fields: Any) -> Self:
        """A new PDU: every mandatory parameter must be given (sm_length follows short_message),
        optional ones may be; `udh=[(iei, bytes), ...]` goes before short_message and sets
        esm_class 0x40. An error response may be created with no parameters (no body)."""
        if not cls.supported:
            raise cls._unsupported()
        try:
            status = ESME_ROK if command_status is None else _check_dword("command_status", command_status)
            if issubclass(cls, RequestPDU) and status != ESME_ROK:
                raise SMPPParameterError(f"a request's command_status is ESME_ROK, not {status_text(status)}")
            sequence = next_sequence_number() if sequence_number is None else \
                _check_dword("sequence_number", sequence_number)
            pdu = cls(status, sequence)
            pdu._set_values({} if status != ESME_ROK and not fields else cls._convert(fields, complete=True))
        except (SMPPParameterError, ValueError, TypeError) as e:
            raise SMPPPDUCreateError(f"failed to create {cls.__name__}: {e}") from None
        return pdu

    @classmethod
    def _convert(cls, given: Mapping[str, Any], *, complete: bool) -> dict[str, SMPPType]:
        """`given` as value objects in the class's order, each checked; `complete`: every
        mandatory parameter is there (and sm_length is added)."""
        fields = {_ALIASES.get(name, name): value for name, value in given.items()}
        udh = fields.pop("udh", None) if cls._carries_short_message() else None
        if "sm_length" in fields:
            raise SMPPParameterError("sm_length follows short_message: do not give it")
        unknown = [name for name in fields if name not in cls.mandatory_parameters + cls.optional_parameters]
        if unknown:
            raise SMPPParameterError(f"unexpected parameter(s) {', '.join(unknown)} "
                                     f"(not one of {cls.__name__}'s)")
        if udh is not None:
            fields["short_message"] = _udh_bytes(udh) + _value("short_message", fields.get("short_message", b"")).value
            if "esm_class" in fields:
                fields["esm_class"] = _value("esm_class", fields["esm_class"]).value | UDHI
        missing = [name for name in cls.mandatory_parameters if name != "sm_length" and name not in fields]
        if complete and missing:
            raise SMPPParameterError(f"value for {', '.join(missing)} is not specified")
        order = cls.mandatory_parameters + cls.optional_parameters
        values = {name: _value(name, fields[name]) for name in order if name in fields}
        short_message = values.get("short_message")
        if short_message is not None and short_message.value and "message_payload" in values:
            raise SMPPParameterError("short_message and message_payload cannot both carry the message")
        if complete and short_message is not None and "sm_length" in order:
            values["sm_length"] = SMPPInteger1(len(short_message.value))
        return {name: values[name] for name in order if name in values}

    # --- reading --------------------------------------------------------------------------------

    @classmethod
    def _read(cls, status: int, sequence: int, command: Any) -> Self:
        pdu = cls(status, sequence)
        values = {}
        for name in cls.mandatory_parameters:
            raw = getattr(command, name, None)
            if raw is None and name == "short_message" and getattr(command, "sm_length", None) == 0:
                raw = b""  # smpplib stops at the body's end, before a short_message of no bytes
            if raw is not None:
                values[name] = _read_value(name, raw)
        missing = [name for name in cls.mandatory_parameters if name not in values]
        # an error response may have no body; a response short of a field is taken as it is
        if missing and issubclass(cls, RequestPDU | AlertNotificationPDU):
            raise SMPPParameterError(f"the body ends before {missing[0]}")
        tlvs = cls.optional_parameters + tuple(name for name in smpplib.consts.OPTIONAL_PARAMS
                                               if name not in cls.optional_parameters)
        for name in tlvs:
            if name not in values and getattr(command, name, None) is not None:
                values[name] = _read_value(name, getattr(command, name))
        pdu._set_values(values)
        return pdu

    # --- writing --------------------------------------------------------------------------------

    def serialize(self) -> bytes:
        try:
            return bytes(to_smpplib(self).generate())
        except SMPPPDUCreateError:
            raise
        except Exception as e:
            raise SMPPPDUCreateError(f"failed to serialize {type(self).__name__}: {e}") from e

    # --- looks ----------------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and isinstance(other, PDU) and \
            (self.command_status, self.sequence_number, self._values) == \
            (other.command_status, other.sequence_number, other._values)

    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        status = self.command_status.value
        parts = [f"command_status = {error_codes[status]['name'] if status in error_codes else self.command_status}"] \
            if status != ESME_ROK else []
        parts.append(f"sequence_number = {self.sequence_number}")
        parts += [f"{name} = {value}" for name, value in self._values.items()]
        return f"{type(self).__name__}({', '.join(parts)})"

    def __repr__(self) -> str:
        return f"<{self}>"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


class ResponsePDU(PDU):
    def throw_if_error(self) -> None:
        """SMPPResponseError when command_status is not ESME_ROK."""
        status = self.command_status.value
        if status != ESME_ROK:
            raise SMPPResponseError(f"SMPP error {status_text(status)}", status)


class RequestPDU(PDU):
    def create_response(self, command_status: int | None = ESME_ROK, **fields: Any) -> ResponsePDU:
        """This request's response, with its sequence number."""
        response_cls = _BY_ID[self.command_id.value | 0x80000000]
        return response_cls.create(command_status, self.sequence_number.value, **fields)  # type: ignore[return-value]

    def create_nack(self, command_status: int) -> GenericNackPDU:
        """A generic_nack with this request's sequence number; the status is not ESME_ROK."""
        if command_status == ESME_ROK:
            raise SMPPPDUCreateError("failed to create GenericNackPDU: a generic_nack's command_status is "
                                     "not ESME_ROK")
        return GenericNackPDU.create(command_status, self.sequence_number.value)


# --- to and from smpplib ------------------------------------------------------------------------


def _wire_value(command_name: str, name: str, value: SMPPType) -> Any:
    """How smpplib takes a value: str (latin-1) where its Param says str, else bytes or int."""
    if isinstance(value, SMPPInteger):
        return value.value
    original = _SMPPLIB[command_name].params.get(name)
    if isinstance(value, SMPPCOctetString) or (original is not None and original.type is str):
        return value.value.decode("latin-1")
    return value.value


def wire_fields(command_name: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """`fields` (of `command_name`, smpplib's name) checked as create() checks them, and
    converted to smpplib's keyword arguments: C strings as latin-1 str (smpplib writes
    them with six.b), octet strings as bytes, integers as int. A mandatory field not
    given is not required here (smpplib writes it 0 or empty); sm_length is left to
    smpplib. SMPPPDUCreateError names the field: unknown, too long, the wrong type.
    The result is meant for `make_command`; smpplib's own make_pdu takes it too, but
    mis-writes the TLVs `_Fixes` lists."""
    cls = _BY_COMMAND.get(command_name)
    if cls is None or not cls.supported:
        raise (cls._unsupported() if cls else SMPPPDUCreateError(f"{command_name!r} is not an SMPP command"))
    try:
        values = cls._convert(fields, complete=False)
    except (SMPPParameterError, ValueError, TypeError) as e:
        raise SMPPPDUCreateError(f"failed to create {cls.__name__}: {e}") from None
    return {name: _wire_value(command_name, name, value) for name, value in values.items() if name != "sm_length"}


def submit_sm_bytes(sequence: int, fields: Mapping[str, Any]) -> bytes:
    """The submit_sm of `fields` (as `wire_fields` takes them, `udh` aside: give it in
    short_message), checked as `wire_fields` checks them: the same bytes as
    `make_command("submit_sm", sequence=..., **wire_fields("submit_sm", fields)).generate()`
    (tests/test_smpp_pdu.py compares the two), in one pass with no objects between. This is
    the resource's hot path: through smpplib's command objects a submit costs three times
    its SMPP; a field in doubt goes through `_value`, so the errors are create()'s."""
    names = SubmitSmPDU.mandatory_parameters + SubmitSmPDU.optional_parameters
    if not _SUBMIT_SM_NAMES.issuperset(fields):
        fields = {_ALIASES.get(name, name): value for name, value in fields.items()}
    unknown = [name for name in fields if name not in _SUBMIT_SM_NAMES]
    if unknown:
        raise SMPPPDUCreateError(f"failed to create SubmitSmPDU: unexpected parameter(s) {', '.join(unknown)} "
                                 f"(not one of SubmitSmPDU's)")
    if fields.get("short_message") and "message_payload" in fields:
        raise SMPPPDUCreateError("failed to create SubmitSmPDU: short_message and message_payload cannot both "
                                 "carry the message")
    body = bytearray()
    try:
        for name in names[:_SUBMIT_SM_MANDATORY]:
            if name == "sm_length":
                continue
            kind = _KINDS[name]
            if kind.type is SMPPCOctetString:
                body += _fast_bytes(name, kind, fields.get(name, b"")) + b"\0"
            elif kind.type is SMPPOctetString:  # short_message, after its length
                data = _fast_bytes(name, kind, fields.get(name, b""))
                body.append(len(data))
                body += data
            else:
                body.append(_fast_int(name, kind, fields.get(name, 0)))
        for name in names[_SUBMIT_SM_MANDATORY:]:
            if name in fields and fields[name] is not None:
                body += _fast_tlv(name, fields[name])
    except (SMPPParameterError, ValueError, TypeError) as e:
        raise SMPPPDUCreateError(f"failed to create SubmitSmPDU: {e}") from None
    return struct.pack(">LLLL", 16 + len(body), _SUBMIT_SM_ID, 0, sequence) + body


def _fast_bytes(name: str, kind: _Kind, value: object) -> bytes:
    data = value if type(value) is bytes else value.encode("latin-1") if type(value) is str else None
    if data is None or not kind.least <= len(data) <= kind.most or (kind.type is SMPPCOctetString and b"\0" in data):
        data = _value(name, value).value  # raises what is wrong, or takes a value object
    return data


def _fast_int(name: str, kind: _Kind, value: object) -> int:
    if type(value) is int and 0 <= value < 1 << 8 * kind.type.size:  # type: ignore[attr-defined]
        return value
    return int(_value(name, value).value)


def _fast_tlv(name: str, value: object) -> bytes:
    kind, tag = _KINDS[name], smpplib.consts.OPTIONAL_PARAMS[name]
    if issubclass(kind.type, SMPPInteger):
        size = kind.type.size
        return struct.pack(">HH", tag, size) + _fast_int(name, kind, value).to_bytes(size, "big")
    data = _fast_bytes(name, kind, value)
    if kind.type is SMPPCOctetString:
        data += b"\0"
    return struct.pack(">HH", tag, len(data)) + data


def to_smpplib(pdu: PDU, client: Any = None) -> Any:
    """The smpplib command (corrected, see `_Fixes`) that writes `pdu`: same sequence
    number, status and fields; `client` is smpplib's, or None."""
    if not pdu.supported:
        raise pdu._unsupported()
    fields = {name: _wire_value(pdu.command, name, value) for name, value in pdu._values.items()
              if name != "sm_length"}
    return make_command(pdu.command, client=client, sequence=pdu.sequence_number.value,
                        status=pdu.command_status.value, **fields)


def from_smpplib(command: Any) -> PDU:
    """The PDU for a command smpplib parsed (`parse_command`'s, or smpplib's own parse_pdu's)
    or built; SMPPPDUReadError if it is not one this module can take."""
    cls = _BY_COMMAND.get(command.command)
    if cls is None:
        raise SMPPPDUReadError(f"{command.command!r} is not an SMPP command")
    try:
        return cls._read(int(command.status or 0), int(command.sequence or 0), command)
    except (SMPPParameterError, ValueError, TypeError) as e:
        raise SMPPPDUReadError(f"failed to read {cls.__name__}: {e}") from None


def parse(raw: bytes) -> PDU:
    """The PDU in `raw` (one whole PDU, its length first); SMPPPDUReadError if it is not one."""
    try:
        command = parse_command(raw)
    except smpplib.exceptions.UnknownCommandError as e:
        raise SMPPPDUReadError(str(e)) from None
    return from_smpplib(command)


# --- the original's classes (SMPP 3.4 §4) ----------------------------------------------------------


class GenericNackPDU(ResponsePDU):
    command = "generic_nack"


class BindTransmitterPDU(RequestPDU):
    command = "bind_transmitter"


class BindTransmitterRespPDU(ResponsePDU):
    command = "bind_transmitter_resp"


class BindReceiverPDU(RequestPDU):
    command = "bind_receiver"


class BindReceiverRespPDU(ResponsePDU):
    command = "bind_receiver_resp"


class BindTransceiverPDU(RequestPDU):
    command = "bind_transceiver"


class BindTransceiverRespPDU(ResponsePDU):
    command = "bind_transceiver_resp"


class OutbindPDU(PDU):
    command = "outbind"


class UnbindPDU(RequestPDU):
    command = "unbind"


class UnbindRespPDU(ResponsePDU):
    command = "unbind_resp"


class SubmitSmPDU(RequestPDU):
    command = "submit_sm"


class SubmitSmRespPDU(ResponsePDU):
    command = "submit_sm_resp"


class SubmitMultiPDU(RequestPDU):
    command = "submit_multi"


class SubmitMultiRespPDU(ResponsePDU):
    command = "submit_multi_resp"


class DeliverSmPDU(RequestPDU):
    command = "deliver_sm"


class DeliverSmRespPDU(ResponsePDU):
    command = "deliver_sm_resp"


class DataSmPDU(RequestPDU):
    command = "data_sm"


class DataSmRespPDU(ResponsePDU):
    command = "data_sm_resp"


class QuerySmPDU(RequestPDU):
    command = "query_sm"


class QuerySmRespPDU(ResponsePDU):
    command = "query_sm_resp"


class CancelSmPDU(RequestPDU):
    command = "cancel_sm"


class CancelSmRespPDU(ResponsePDU):
    command = "cancel_sm_resp"


class ReplaceSmPDU(RequestPDU):
    command = "replace_sm"


class ReplaceSmRespPDU(ResponsePDU):
    command = "replace_sm_resp"


class EnquireLinkPDU(RequestPDU):
    command = "enquire_link"


class EnquireLinkRespPDU(ResponsePDU):
    command = "enquire_link_resp"


class AlertNotificationPDU(PDU):
    command = "alert_notification"


_SUBMIT_SM_NAMES = frozenset(SubmitSmPDU.mandatory_parameters + SubmitSmPDU.optional_parameters) - {"sm_length"}
_SUBMIT_SM_MANDATORY = len(SubmitSmPDU.mandatory_parameters)
_SUBMIT_SM_ID = smpplib.command_codes.commands["submit_sm"]
