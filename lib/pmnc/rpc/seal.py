"""Who is calling over NATS: every call and its answer carry a MAC only the two cages can make.

Why: with transport "nats" a call travels cage -> NATS server -> cage, so the TLS peer a cage
sees is a NATS server, never the calling cage; the caller's identity must travel in the
message. Signing every message (ECDSA P-256) would prove it, but costs some 30-40 µs to
sign and 80 µs to verify here (Ed25519 is no faster), on the call and again on the answer:
~240 µs of CPU per call. Instead each pair of cages derives a shared key once, from the
certificates they already have (cages/<cage>.pem, signed by the cluster CA, SAN URI
pmnc://<flock>/<cage>):

    K = HKDF-SHA256(ECDH(own P-256 key, peer certificate's public key), 32 bytes,
                    salt b"pmnc-nats-1", info = flock + both (cage, fingerprint) pairs, sorted)

and seals each message with HMAC-SHA256 under K: about a microsecond. Only the holders of
the two private keys can compute K, so a good MAC proves the caller is the cage its
certificate names (every instance of a cage shares its certificate, so K is per pair of
cages, not per process). A certificate counts only if the cluster CA issued it, it is in
its validity period and its pmnc:// URI names this flock; verified certificates and their
keys are cached (bounded), so the public-key work is done once per peer.

Wire (msgpack arrays, the version first; fingerprint = sha256(certificate DER)[:16]):

    call    [1, "call", caller, caller_fp, target_fp|None, instance, counter, expires, mac|None, body, cert|None]
    answer  [1, "ok", mac, body] | [1, "certificate", cert] | [1, "who"] | [1, "refused", reason]

A caller that does not know the target's certificate yet sends an empty call with no MAC
(and its own certificate); the callee answers "certificate". A callee that does not know
the caller's fingerprint answers "who"; the caller then adds its certificate to the call.
Neither runs the call: `open_reply` returns Retry and the caller seals the call again.

The call's MAC covers b"call", flock, caller, target, both fingerprints, instance, counter,
expires and body, each after its length as 4 bytes big-endian (strings UTF-8, the counter
8 bytes big-endian, expires an 8-byte big-endian IEEE double); the answer's covers b"answer", the call's MAC and
the body, so an answer fits one call only and a call cannot be reflected as an answer or
as a call the other way. Replays: each caller process has a random `instance` and a
counter; a callee keeps per caller instance a window of the last WINDOW counters and
refuses repeats and older ones, and refuses calls past `expires` + MAX_SKEW. The window is
per callee process: a call captured on NATS could be replayed once to each other instance
of the target cage until it expires - that, and reading the bodies, needs access to NATS
(use its TLS and accounts; see docs/nats/).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from typing import Any

import msgpack
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pmnc.errors import KeysError, ProtocolError
from pmnc.keys import CAGE_NAME
from pmnc.rpc.identity import ClusterKeys

VERSION = 1
SALT = b"pmnc-nats-1"
MAX_SKEW = 30.0  # seconds a callee's clock may be ahead of a caller's
WINDOW = 1024  # counters of one caller instance remembered
MAX_CERT = 8192  # bytes of a certificate (DER)
MAX_PEERS = 1024  # certificates (and their keys) cached
MAX_INSTANCES = 4096  # caller instances whose windows are kept
MAX_REASON = 200  # characters of a refusal's reason
MAX_REMAIN = 10_000_000.0  # seconds: more is a bug, not a deadline
DEFAULT_MAX_BODY = 16 * 1024 * 1024  # as codec.DEFAULT_LIMIT: give Sealer the cluster's max_frame_size
FINGERPRINT = 16  # bytes
_OVERHEAD = 512  # bytes of a call's fields other than body and certificate, generously

_URI = re.compile(rf"pmnc://({CAGE_NAME.pattern})/({CAGE_NAME.pattern})")
_INSTANCE = re.compile(r"[0-9a-f]{16}")
_LEN = struct.Struct(">I")
# instance, counter, expires, body length: the per-call fields of a call's MAC, each length-prefixed
_DYNAMIC = struct.Struct(">I16sIQIdI")
_MASK = (1 << WINDOW) - 1
_COUNTERS = 1 << 64


def _field(value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return _LEN.pack(len(data)) + data


def _pack(message: list[Any]) -> bytes:
    return msgpack.packb(message)  # type: ignore[no-any-return]


_ANSWER = _field(b"answer") + _LEN.pack(32)  # then the call's 32-byte MAC, the body's length, the body
_WHO = _pack([VERSION, "who"])


class SealError(ProtocolError):
    """A sealed call or answer refused: the message says why (never a key)."""


class _Hmac:
    """HMAC-SHA256 (RFC 2104) under one key, optionally after a fixed first part of the message.

    The hashes of the padded key blocks are made once and copied per message: hmac.digest
    redoes them each time (3 µs for a small message here, this 1.3 µs); tests check the two agree.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes, inner: Any = None, outer: Any = None) -> None:
        if inner is None:
            block = key.ljust(64, b"\0")  # keys here are 32 bytes: shorter than SHA-256's 64-byte block
            inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
            outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        self._inner, self._outer = inner, outer

    def after(self, start: bytes) -> _Hmac:
        """The MAC of messages that begin with `start`."""
        inner = self._inner.copy()
        inner.update(start)
        return _Hmac(b"", inner, self._outer)

    def digest(self, head: bytes, body: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(head)
        inner.update(body)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()  # type: ignore[no-any-return]


@dataclass(slots=True, eq=False)
class _Peer:
    """A verified certificate of another cage (or this one) and the pair key made with it."""

    cage: str
    fingerprint: bytes
    certificate: bytes
    not_after: float
    call_out: _Hmac  # the MAC of calls this cage makes to the peer
    call_in: _Hmac  # of calls the peer makes to this cage
    answer: _Hmac  # of answers, both ways
    send_cert: bool = True  # add this cage's certificate to calls until the peer has shown it knows it


@dataclass(slots=True)
class Pending:
    """What the caller keeps of a sealed call to check its answer."""

    target: str
    peer: _Peer | None  # None: the call asked for the target's certificate
    mac: bytes | None
    sent_cert: bool


@dataclass(slots=True)
class Ticket:
    """What the callee keeps of an opened call to seal its answer."""

    answer: _Hmac
    mac: bytes


@dataclass(slots=True)
class Opened:
    """A good call: who made it and what it says."""

    caller: str
    body: bytes
    ticket: Ticket


@dataclass(slots=True)
class Retry:
    """The callee did not run the call ("certificate" or "who"): seal it again."""

    reason: str


@dataclass(slots=True)
class _Window:
    top: int  # the highest counter seen
    seen: int  # bit n: counter top - n was seen


class Sealer:
    """The seals of one cage's calls and answers; thread-safe."""

    def __init__(self, keys: ClusterKeys, flock: str, cage: str, *, max_body: int = DEFAULT_MAX_BODY,
                 clock: Callable[[], float] = time.time) -> None:
        if not CAGE_NAME.fullmatch(flock) or not CAGE_NAME.fullmatch(cage):
            raise KeysError(f"invalid cage {cage!r} or flock {flock!r}: 1 to 32 of A-Z a-z 0-9 _ -")
        self.flock, self.cage, self.max_body = flock, cage, max_body
        self._clock = clock
        self._max_message = max_body + MAX_CERT + _OVERHEAD
        self._ca, self._key, own = _load(keys)
        self.certificate: bytes = own.public_bytes(serialization.Encoding.DER)
        self.fingerprint: bytes = _fingerprint(self.certificate)
        self.instance: str = secrets.token_hex(8)
        self._instance = self.instance.encode()
        self._counter = count(1)  # next() on it is atomic: counters are unique across threads
        self._lock = threading.Lock()
        self._peers: dict[bytes, _Peer] = {}  # fingerprint -> verified peer
        self._targets: dict[str, _Peer] = {}  # cage -> the certificate this cage seals its calls to it for
        self._windows: OrderedDict[tuple[str, str], _Window] = OrderedDict()
        self._certificate_answer: bytes = _pack([VERSION, "certificate", self.certificate])
        try:
            self._verified(self.certificate)
        except SealError as e:
            raise KeysError(f"{keys.cert_file} cannot be used for calls over NATS: {e}") from None
        if self._peers[self.fingerprint].cage != cage:
            raise KeysError(f"{keys.cert_file} is not the certificate of cage {cage}")

    def __repr__(self) -> str:
        return (f"<Sealer {self.flock}/{self.cage} instance={self.instance} peers={len(self._peers)} "
                f"windows={len(self._windows)}>")

    # --- the caller's side -------------------------------------------------------------

    def seal_call(self, target: str, body: bytes, remain: float) -> tuple[bytes, Pending]:
        """The message calling `target` with `body`, and what open_reply needs of it."""
        if not remain <= MAX_REMAIN:  # NaN too
            raise SealError(f"invalid time left {remain!r}")
        if len(body) > self.max_body:
            raise SealError(f"call of {len(body)} bytes exceeds the limit of {self.max_body} bytes")
        now = self._clock()
        expires = now + (remain if remain > 0.0 else 0.0)
        counter = next(self._counter)
        peer = self._targets.get(target)
        if peer is None or peer.not_after < now:
            if not CAGE_NAME.fullmatch(target):
                raise SealError(f"invalid cage name {target!r}")
            message = [VERSION, "call", self.cage, self.fingerprint, None, self.instance, counter, expires,
                       None, b"", self.certificate]
            return _pack(message), Pending(target, None, None, True)
        mac = peer.call_out.digest(_DYNAMIC.pack(16, self._instance, 8, counter, 8, expires, len(body)), body)
        cert = self.certificate if peer.send_cert else None
        message = [VERSION, "call", self.cage, self.fingerprint, peer.fingerprint, self.instance, counter, expires,
                   mac, body, cert]
        return _pack(message), Pending(target, peer, mac, cert is not None)

    def open_reply(self, pending: Pending, data: bytes) -> bytes | Retry:
        """The answer's body; Retry when the callee asked for a certificate; SealError for the rest."""
        answer = self._unpack(data, pending.target)
        kind = answer[1]
        if kind == "ok" and len(answer) == 4:
            return self._answer_body(pending, answer[2], answer[3])
        if kind == "certificate" and len(answer) == 3:
            return self._learn(pending, answer[2])
        if kind == "who" and len(answer) == 2:
            if pending.peer is None or pending.sent_cert:
                raise SealError(f"cage {pending.target} asked for the certificate it was sent")
            pending.peer.send_cert = True
            return Retry("who")
        if kind == "refused" and len(answer) == 3 and isinstance(answer[2], str):
            raise SealError(f"cage {pending.target} refused the call: {_printable(answer[2])}")
        raise SealError(f"malformed answer from cage {pending.target}")

    def _unpack(self, data: bytes, target: str) -> list[Any]:
        if len(data) > self._max_message:
            raise SealError(f"answer of {len(data)} bytes from cage {target} exceeds the limit of "
                            f"{self._max_message} bytes")
        try:
            answer = msgpack.unpackb(data, max_array_len=4, max_map_len=0, max_ext_len=0)
        except Exception:  # a C parser fed by whoever answered: whatever it raises, the answer is malformed
            answer = None
        if type(answer) is not list or len(answer) < 2 or answer[0] != VERSION:
            raise SealError(f"malformed answer from cage {target}")
        return answer

    def _answer_body(self, pending: Pending, mac: Any, body: Any) -> bytes:
        peer = pending.peer
        if peer is None or pending.mac is None:
            raise SealError(f"cage {pending.target} answered a request for its certificate with a result")
        if type(mac) is not bytes or type(body) is not bytes:
            raise SealError(f"malformed answer from cage {pending.target}")
        expected = peer.answer.digest(pending.mac + _LEN.pack(len(body)), body)
        if not hmac.compare_digest(mac, expected):
            raise SealError(f"the answer from cage {pending.target} failed its MAC check")
        if pending.sent_cert:
            peer.send_cert = False  # that instance knows this cage now
        return body

    def _learn(self, pending: Pending, cert: Any) -> Retry:
        if type(cert) is not bytes:
            raise SealError(f"malformed answer from cage {pending.target}")
        try:
            peer = self._verified(cert)
        except SealError as e:
            raise SealError(f"cage {pending.target} answered with a certificate that is refused: {e}") from None
        if peer.cage != pending.target:
            raise SealError(f"cage {pending.target} answered with the certificate of cage {peer.cage}")
        if pending.peer is peer:  # would go round forever
            raise SealError(f"cage {pending.target} refused its own certificate")
        if pending.sent_cert:
            peer.send_cert = False  # the callee read this cage's certificate before answering
        with self._lock:
            self._targets.pop(pending.target, None)
            _bounded(self._targets, pending.target, peer)
        return Retry("certificate")

    # --- the callee's side -------------------------------------------------------------

    def open_call(self, data: bytes) -> Opened | bytes:
        """The call, checked; or the answer refusing it (the call must not run). Never raises."""
        if len(data) > self._max_message:
            return _refusal(f"call of {len(data)} bytes exceeds the limit of {self._max_message} bytes")
        try:
            message = msgpack.unpackb(data, max_array_len=11, max_map_len=0, max_ext_len=0)
        except Exception:  # a C parser fed by anyone on NATS: whatever it raises, the call is malformed
            return _refusal("malformed call")
        if type(message) is not list or len(message) != 11 or message[0] != VERSION or message[1] != "call":
            return _refusal("malformed call")
        try:
            return self._open(message)
        except SealError as e:
            return _refusal(str(e))

    def _open(self, message: list[Any]) -> Opened | bytes:
        _, _, caller, caller_fp, target_fp, instance, counter, expires, mac, body, cert = message
        if type(cert) is bytes:
            shown = self._verified(cert)
            if shown.fingerprint != caller_fp:
                raise SealError("the certificate is not the one of the caller's fingerprint")
            if shown.cage != caller:
                raise SealError(f"the certificate is of cage {shown.cage}, not of {_printable(caller)}")
            if shown.cage not in self._targets:  # to call it back without asking
                with self._lock:
                    _bounded(self._targets, shown.cage, shown)
        elif cert is not None:
            raise SealError("malformed call")
        if target_fp != self.fingerprint:
            return self._certificate_answer
        if type(mac) is not bytes or type(body) is not bytes or type(counter) is not int or \
                type(expires) is not float or type(instance) is not str or not _INSTANCE.fullmatch(instance) or \
                not 0 <= counter < _COUNTERS:
            raise SealError("malformed call")
        if len(body) > self.max_body:
            raise SealError(f"call of {len(body)} bytes exceeds the limit of {self.max_body} bytes")
        peer = self._peers.get(caller_fp) if type(caller_fp) is bytes else None
        if peer is None:
            return _WHO
        now = self._clock()
        if peer.cage != caller:
            raise SealError(f"the certificate is of cage {peer.cage}, not of {_printable(caller)}")
        if peer.not_after < now:
            raise SealError(f"the certificate of cage {peer.cage} has expired")
        expected = peer.call_in.digest(_DYNAMIC.pack(16, instance.encode(), 8, counter, 8, expires, len(body)), body)
        if not hmac.compare_digest(mac, expected):
            raise SealError("the call failed its MAC check")
        if not now <= expires + MAX_SKEW:  # NaN too
            raise SealError(f"the call expired {now - expires:.1f} seconds ago")
        self._check_fresh(caller, instance, counter)
        return Opened(caller, body, Ticket(peer.answer, mac))

    def seal_reply(self, ticket: Ticket, body: bytes) -> bytes:
        """The answer to an opened call."""
        if len(body) > self.max_body:
            raise SealError(f"answer of {len(body)} bytes exceeds the limit of {self.max_body} bytes")
        mac = ticket.answer.digest(ticket.mac + _LEN.pack(len(body)), body)
        return _pack([VERSION, "ok", mac, body])

    def _check_fresh(self, caller: str, instance: str, counter: int) -> None:
        """Refuse a counter this caller instance used before, or one older than the window."""
        key = (caller, instance)
        with self._lock:
            window = self._windows.get(key)
            if window is None:
                self._windows[key] = _Window(counter, 1)
                if len(self._windows) > MAX_INSTANCES:
                    self._windows.popitem(last=False)  # the longest unheard: its calls expire anyway
                return
            self._windows.move_to_end(key)
            if counter > window.top:
                shift = counter - window.top
                window.seen = ((window.seen << shift) | 1) & _MASK if shift < WINDOW else 1
                window.top = counter
                return
            age = window.top - counter
            if age >= WINDOW:
                raise SealError(f"the call is older than the last {WINDOW} of its caller")
            if window.seen >> age & 1:
                raise SealError("the call was replayed")
            window.seen |= 1 << age

    # --- certificates ------------------------------------------------------------------

    def _verified(self, cert: bytes) -> _Peer:
        """The peer of a certificate the cluster CA issued to a cage of this flock; SealError if not."""
        if len(cert) > MAX_CERT:
            raise SealError(f"certificate of {len(cert)} bytes exceeds the limit of {MAX_CERT} bytes")
        fingerprint = _fingerprint(cert)
        peer = self._peers.get(fingerprint)
        if peer is None:
            peer = self._new_peer(cert, fingerprint)
            with self._lock:
                peer = self._peers.setdefault(fingerprint, peer)
                while len(self._peers) > MAX_PEERS:
                    self._peers.pop(next(iter(self._peers)))
        if peer.not_after < self._clock():
            raise SealError(f"the certificate of cage {peer.cage} has expired")
        return peer

    def _new_peer(self, der: bytes, fingerprint: bytes) -> _Peer:
        try:  # cryptography parses parts of a certificate when they are first asked for
            cert = x509.load_der_x509_certificate(der)
            cage = self._check_certificate(cert)
            public = cert.public_key()
        except SealError:
            raise
        except Exception:  # whatever a parser fed by anyone on NATS raises (InvalidVersion is no ValueError)
            raise SealError("the certificate cannot be read") from None
        if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(public.curve, ec.SECP256R1):
            raise SealError(f"the certificate of cage {cage} has no EC P-256 key")
        pairs = sorted([(self.cage, self.fingerprint), (cage, fingerprint)])
        info = _field(self.flock) + b"".join(_field(name) + _field(fp) for name, fp in pairs)
        key = HKDF(hashes.SHA256(), 32, SALT, info).derive(self._key.exchange(ec.ECDH(), public))
        mac = _Hmac(key)
        return _Peer(cage, fingerprint, der, cert.not_valid_after_utc.timestamp(),
                     call_out=mac.after(self._mac_start(self.cage, self.fingerprint, cage, fingerprint)),
                     call_in=mac.after(self._mac_start(cage, fingerprint, self.cage, self.fingerprint)),
                     answer=mac.after(_ANSWER))

    def _check_certificate(self, cert: x509.Certificate) -> str:
        """The cage the certificate names, once it is seen to be this cluster's and this flock's."""
        if cert.issuer != self._ca.subject:
            raise SealError("the certificate is not issued by this cluster's CA")
        try:
            cert.verify_directly_issued_by(self._ca)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            raise SealError("the certificate is not issued by this cluster's CA") from None
        now = self._clock()
        if not cert.not_valid_before_utc.timestamp() <= now <= cert.not_valid_after_utc.timestamp():
            raise SealError("the certificate is outside its validity period")
        try:
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (x509.ExtensionNotFound, ValueError):
            names = None
        uris = [match for uri in (names.get_values_for_type(x509.UniformResourceIdentifier) if names else ())
                if (match := _URI.fullmatch(uri))]
        if len(uris) != 1:
            raise SealError("the certificate names no cage (one SAN URI pmnc://<flock>/<cage>)")
        flock, cage = uris[0].group(1), uris[0].group(2)
        if flock != self.flock:
            raise SealError(f"the certificate of cage {cage} is of flock {flock}, not {self.flock}")
        return cage

    def _mac_start(self, caller: str, caller_fp: bytes, target: str, target_fp: bytes) -> bytes:
        return b"".join(_field(value) for value in (b"call", self.flock, caller, target, caller_fp, target_fp))


def describe(answer: bytes) -> str:
    """An answer in a few words, for a log line: "ok", "who", "certificate" or "refused: why"."""
    try:
        message = msgpack.unpackb(answer, max_array_len=4, max_map_len=0, max_ext_len=0)
        kind = message[1]
        if kind == "refused":
            return f"refused: {_printable(message[2])}"
        return kind if kind in ("ok", "who", "certificate") else "malformed"
    except Exception:  # for a log line only
        return "malformed"


# --- inside ---------------------------------------------------------------------------


def _load(keys: ClusterKeys) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The cluster CA, this cage's key and its certificate, from the cluster's files."""
    try:
        pem = keys.cert_file.read_bytes()
        ca = x509.load_pem_x509_certificate(keys.ca_file.read_bytes())
    except (OSError, ValueError) as e:
        raise KeysError(f"the cluster keys in {keys.folder} cannot be read: {e}") from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
        own = x509.load_pem_x509_certificates(pem)[0]
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeysError(f"{keys.cert_file} must hold an unencrypted private key and its certificate (PEM)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise KeysError(f"{keys.cert_file} holds a {type(key).__name__.lstrip('_')}: calls over NATS need an "
                        f"EC P-256 key (make one with: python3 startup.py --keys cage {keys.folder} "
                        f"{keys.cage} --flock {keys.flock} --force)")
    if key.public_key() != own.public_key():
        raise KeysError(f"the key in {keys.cert_file} is not the key of its certificate")
    return ca, key, own


def _fingerprint(der: bytes) -> bytes:
    return hashlib.sha256(der).digest()[:FINGERPRINT]


def _bounded(cache: dict[str, _Peer], name: str, peer: _Peer) -> None:
    cache[name] = peer
    while len(cache) > MAX_PEERS:
        cache.pop(next(iter(cache)))


def _refusal(reason: str) -> bytes:
    return _pack([VERSION, "refused", reason])


def _printable(text: Any) -> str:
    """A peer's text made safe for a message: printable, bounded."""
    text = str(text)[:MAX_REASON]
    return "".join(c if c.isprintable() else "?" for c in text)
