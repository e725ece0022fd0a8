"""The NATS client protocol without I/O: what a server sends, parsed; what a client sends, rendered.

The call path (bus.py's Link) speaks it over a blocking socket; JetStream goes through nats-py.
Only what a client needs: INFO, MSG and HMSG (of headers, only the status a server puts in
them: 503 is "no responders"), PING/PONG, +OK and -ERR in; CONNECT, PUB, SUB, UNSUB, PING
and PONG out. Every size a server announces is checked against the limits given.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pmnc.errors import ConfigError, ProtocolError

MAX_CONTROL_LINE = 4096  # bytes of one protocol line (nats-server's own limit)
CRLF = b"\r\n"
NO_RESPONDERS = 503


@dataclass(slots=True)
class Message:
    """A MSG or HMSG: `status` is the header's status code (0 without one)."""

    subject: str
    sid: int
    reply: str
    data: bytes
    status: int = 0


class Parser:
    """Bytes from the server in, operations out: Message, ("INFO", dict), "PING", "PONG", "+OK",
    ("-ERR", text). A payload larger than `max_payload` (plus headers) is a ProtocolError."""

    __slots__ = ("_buffer", "max_payload")

    def __init__(self, max_payload: int) -> None:
        self._buffer = bytearray()
        self.max_payload = max_payload

    def feed(self, data: bytes) -> list[Any]:
        # Whole messages are parsed out of `data` itself (slices of bytes are bytes: no copies
        # through a bytearray); only what is left of a message not all come is kept.
        source = bytes(self._buffer + data) if self._buffer else data
        ops: list[Any] = []
        start, size = 0, len(source)
        while start < size:
            end = source.find(CRLF, start)
            if end < 0:
                if size - start > MAX_CONTROL_LINE:
                    raise ProtocolError("a NATS protocol line longer than it may be")
                break
            line = source[start:end]
            if line.startswith((b"MSG ", b"HMSG ")):
                parsed = self._message(source, line, end + 2)
                if parsed is None:
                    break  # the payload has not all come yet
                message, start = parsed
                ops.append(message)
            else:
                start = end + 2
                ops.append(_control(line))
        self._buffer = bytearray(source[start:]) if start < size else bytearray()
        return ops

    def _message(self, source: bytes, line: bytes, body: int) -> tuple[Message, int] | None:
        parts = line.split()
        try:
            if parts[0] == b"MSG":  # MSG <subject> <sid> [reply] <size>
                header_size, size = 0, int(parts[-1])
                reply = parts[3] if len(parts) == 5 else b""
            else:  # HMSG <subject> <sid> [reply] <header size> <total size>
                header_size, size = int(parts[-2]), int(parts[-1])
                reply = parts[3] if len(parts) == 6 else b""
            subject, sid = parts[1].decode(), int(parts[2])
        except (IndexError, ValueError, UnicodeDecodeError):
            raise ProtocolError(f"a malformed NATS message line: {line[:100]!r}") from None
        if not 0 <= header_size <= size <= self.max_payload + MAX_CONTROL_LINE:
            raise ProtocolError(f"a NATS message of {size} bytes, more than max_payload")
        end = body + size
        if len(source) < end + 2:
            return None
        status = _status(source[body:body + header_size]) if header_size else 0
        return Message(subject, sid, reply.decode(), source[body + header_size:end], status), end + 2


def _control(line: bytes) -> Any:
    op, _, rest = line.partition(b" ")
    op = op.upper()
    if op == b"PING":
        return "PING"
    if op == b"PONG":
        return "PONG"
    if op == b"+OK":
        return "+OK"
    if op == b"-ERR":
        return ("-ERR", rest.decode(errors="replace").strip().strip("'"))
    if op == b"INFO":
        try:
            info = json.loads(rest)
        except ValueError:
            raise ProtocolError("a NATS INFO that is not JSON") from None
        if not isinstance(info, dict):
            raise ProtocolError("a NATS INFO that is not an object")
        return ("INFO", info)
    raise ProtocolError(f"an unknown NATS operation {op[:20]!r}")


def _status(headers: bytes) -> int:
    """The status code of a header block ("NATS/1.0 503\\r\\n..."), 0 without one."""
    first = headers.split(CRLF, 1)[0].split()
    if len(first) >= 2 and first[1].isdigit():
        return int(first[1])
    return 0


# --- what a client sends -------------------------------------------------------------------------------

def pub(subject: str, reply: str, payload: bytes) -> bytes:
    if reply:
        return b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), reply.encode(), len(payload), payload)
    return b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(payload), payload)


def sub(subject: str, queue: str, sid: int) -> bytes:
    if queue:
        return b"SUB %s %s %d\r\n" % (subject.encode(), queue.encode(), sid)
    return b"SUB %s %d\r\n" % (subject.encode(), sid)


def unsub(sid: int) -> bytes:
    return b"UNSUB %d\r\n" % sid


PING, PONG = b"PING\r\n", b"PONG\r\n"


def connect(info: dict[str, Any], *, name: str, user: str | None, password: str | None, token: str | None,
            creds: Credentials | None) -> bytes:
    """The CONNECT line answering the server's `info` (its nonce signed with `creds`, if any)."""
    options: dict[str, Any] = {"verbose": False, "pedantic": False, "lang": "python3/pmnc", "version": "1",
                               "protocol": 1, "headers": True, "no_responders": True, "name": name}
    if user is not None:
        options.update(user=user, **{"pass": password or ""})
    if token is not None:
        options["auth_token"] = token
    if creds is not None:
        options.update(creds.sign(str(info.get("nonce", ""))))
    return b"CONNECT " + json.dumps(options, separators=(",", ":")).encode() + CRLF


# --- credentials: a .creds file (a user JWT and its NKey seed), or an NKey seed alone -----------------------

_JWT = re.compile(r"-----BEGIN NATS USER JWT-----\s*(\S+)\s*------END NATS USER JWT------")
_SEED = re.compile(r"(SU[A-Z2-7]{56})")
_USER_PREFIX = 20 << 3  # the NKey prefix byte of a user's public key ("U")


class Credentials:
    """The NATS NKey a cage signs the server's nonce with, and the user JWT that names it (a
    .creds file), or the NKey's public key where there is no JWT (a seed file of an NKey user)."""

    def __init__(self, path: str) -> None:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"config_cluster.py: nats_creds {path}: {e.strerror or e}") from None
        jwt, seed = _JWT.search(text), _SEED.search(text)
        if seed is None:
            raise ConfigError(f"config_cluster.py: nats_creds {path} holds no user NKey seed (SU...)")
        self.jwt = jwt.group(1) if jwt else None
        self.key = Ed25519PrivateKey.from_private_bytes(_seed_bytes(seed.group(1)))

    def signature(self, nonce: str) -> str:
        """The server's nonce signed, as CONNECT carries it (base64url, unpadded)."""
        return base64.urlsafe_b64encode(self.key.sign(nonce.encode())).rstrip(b"=").decode()

    @property
    def public_key(self) -> str:
        """The NKey's public key ("U..."), which names the user where there is no JWT."""
        return _encode_key(_USER_PREFIX, self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    def sign(self, nonce: str) -> dict[str, str]:
        """What CONNECT carries for these credentials."""
        if self.jwt is not None:
            return {"jwt": self.jwt, "sig": self.signature(nonce)}
        return {"nkey": self.public_key, "sig": self.signature(nonce)}


def _seed_bytes(seed: str) -> bytes:
    """The 32 bytes of an NKey seed: base32 of two prefix bytes, the seed and a CRC-16."""
    try:
        raw = base64.b32decode(seed + "=" * (-len(seed) % 8))
    except binascii.Error:
        raise ConfigError("config_cluster.py: nats_creds holds a malformed NKey seed") from None
    if len(raw) != 36 or _crc16(raw[:-2]) != int.from_bytes(raw[-2:], "little"):
        raise ConfigError("config_cluster.py: nats_creds holds a damaged NKey seed (its checksum does not match)")
    return raw[2:34]


def _encode_key(prefix: int, key: bytes) -> str:
    raw = bytes([prefix]) + key
    raw += _crc16(raw).to_bytes(2, "little")
    return base64.b32encode(raw).rstrip(b"=").decode()


def _crc16(data: bytes) -> int:
    """CRC-16/XMODEM, the NKey checksum."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc
