"""The SMTP resource: `xa.<name>.send(...)` hands a message to a mail server, delivered
only when the transaction commits.

    xa = pmnc.transaction.create()
    xa.smtp_1.send("Sender <from@example.com>", "to@example.com, other@example.com",
                   "subject", "text", {"X-Header": "value"},
                   (("report.pdf", "application/pdf", b"%PDF..."),),            # attachments
                   (("text/html", '<img src="cid:{logo.png}">',                 # alternatives,
                     (("logo.png", "image/png", b"\\x89PNG..."),)),),           # each with related files
                   cc="Copy <cc@example.com>", bcc=["hidden@example.com"])
    message_id, = xa.execute()

The call is the original's (an original cage's mail code runs unchanged); cc, bcc,
several recipients and the returned Message-ID are pmnc's. The MIME layout is the
original's: a multipart/mixed holding the text (text/plain, inline) and the attachments;
with alternatives, the text and the alternatives in a multipart/alternative (the whole
message when there are no attachments); an alternative with related files is a
multipart/related of it and them, its `cid:{file name}` references pointing at their
Content-IDs. Every part is base64, so content comes back byte for byte; headers and
file names are RFC 2047/2231 in UTF-8 (email.message.EmailMessage).

Transactional as the original, one connection per pooled instance:

    idle --send: MAIL FROM, RCPT TO (every recipient), DATA, the body--> data
    data --commit: the final "."--> idle          (the server delivers)
    data --rollback: the connection is dropped--> closed   (the server discards the message)
    envelope (MAIL/RCPT accepted, DATA not yet) --rollback: RSET--> idle

smtplib speaks the dialogue (connect, EHLO/HELO, STARTTLS, AUTH, MAIL, RCPT, DATA); the
body is written on its socket here, dot-stuffed, because smtplib sends the final "." with
the body. Every wait - connect, TLS, each reply line, each piece of the body - is bounded
by the request's deadline. A connection is reused by later transactions while the server
keeps it; one the server has closed is found before use and made again.
"""

from __future__ import annotations

import base64
import codecs
import email.utils
import re
import select
import smtplib
import socket
import ssl
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from email import headerregistry
from email import policy as _policy
from email.message import EmailMessage, MIMEPart
from typing import Any

from pmnc import log, resource
from pmnc import request as _request
from pmnc.errors import ConfigError, ResourceDeadlineError, ResourceError, ResourceInputParameterError, exc_string
from pmnc.schema import RESOURCE_KEYS, Key, address, resource_file, ssl_protocol_ignored
from pmnc.tls import client_context


class _HeaderClasses(headerregistry.HeaderRegistry):
    """The email package's header registry makes a new class (`type(...)`) for every header of
    every message, some 12 µs each; these are made once per header name (the same classes, so
    the same bytes): composing a message takes 470 µs instead of 750 (bench/mail.py)."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        key = name.lower()
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = super().__getitem__(name)
        return made


# Lines of 78 characters, CRLF; 7-bit clean (every part is base64), so no server needs 8BITMIME.
POLICY = _policy.SMTP.clone(cte_type="7bit", header_factory=_HeaderClasses())
_WRITE = 65536  # bytes of the body per send, each bounded by what the deadline leaves
_DEADLINE_SLACK = 0.01  # seconds: a timeout this close to the deadline is the deadline's
_QUIT_TIMEOUT = 0.5  # seconds to hand QUIT to the socket when closing; its answer is not awaited
# Header names the call's own arguments set (or the MIME layout does): refused in `headers`.
_RESERVED = frozenset({"from", "to", "cc", "bcc", "subject", "mime-version", "content-type",
                       "content-transfer-encoding", "content-disposition", "content-id"})
_MIME_TYPE = re.compile(r"^[A-Za-z0-9~`!#$%^&*+|{}'._-]+/[A-Za-z0-9~`!#$%^&*+|{}'._-]+$")  # the original's
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # printable ASCII but ":"


def _charset(value: Any) -> str:
    """A conversion: the name of a codec Python knows, as given (it is the charset the parts name)."""
    try:
        codecs.lookup(str(value))
        return str(value)
    except LookupError:
        raise ValueError(f"unknown encoding {value!r}") from None


_charset.expected = "an encoding Python knows (utf-8, windows-1251, ...)"  # type: ignore[attr-defined]


def _auth_method(value: Any) -> str:
    method = str(value).upper()
    if method not in ("PLAIN", "LOGIN"):
        raise ValueError(method)
    return method


_auth_method.expected = '"PLAIN" or "LOGIN"'  # type: ignore[attr-defined]

# The keys of config_resource_<name>.py.
KEYS = RESOURCE_KEYS.extend(
    server_address=Key(None, address),  # (host, port)
    connect_timeout=Key(3.0, float),  # connect and TLS handshake, never more than the request has left
    encoding=Key("utf-8", _charset),  # of text given as str (UTF-8 where it does not fit)
    helo=Key(None, str),  # the name this side gives in EHLO/HELO (None: the host's name)
    auth_method=Key(None, _auth_method),  # "PLAIN" (None) or "LOGIN"; used when username and password are set
    username=Key(None, str), password=Key(None, str),
    starttls=Key(False, bool),  # plain connection upgraded by STARTTLS (else TLS from the start if a CA is given)
    ssl_ca_cert_file=Key(None), ssl_key_cert_file=Key(None), ssl_ciphers=Key(None),
    ssl_server_hostname=Key(None), ssl_ignore_hostname=Key(False, bool),
    ssl_protocol=Key(None, note=ssl_protocol_ignored),  # the original's: TLS 1.2 or later, whatever it says
)


# --- the message (no sockets here) ------------------------------------------------------------

File = tuple[str, str, str | bytes]  # (name, mime_type, content)
Variant = tuple[str, str | bytes, list[File]]  # an alternative: (mime_type, content, related files)


@dataclass
class Mail:
    """What send() puts on the wire: the envelope and the DATA body, dot-stuffed."""

    sender: str
    recipients: list[str]
    data: bytes  # CRLF lines, dot-stuffed, ending with CRLF; the final "." is not in it
    message_id: str
    description: str  # for the log: subject and recipients


def compose(from_addr: Any, to_addr: Any, subject: Any, text: Any, headers: Any = None,
            attached_files: Any = None, alternatives: Any = None, *, cc: Any = None, bcc: Any = None,
            encoding: str = "utf-8") -> Mail:
    """The message of a send() call; ResourceInputParameterError for anything malformed."""
    sender = _address_header("From", from_addr, "from_addr")
    if sender is None or len(sender.addresses) != 1:
        raise ResourceInputParameterError(f"from_addr must be one address, not {from_addr!r}")
    to, copy = _address_header("To", to_addr, "to_addr"), _address_header("Cc", cc, "cc")
    hidden = _address_header("Bcc", bcc, "bcc")
    recipients = list(dict.fromkeys(a.addr_spec for h in (to, copy, hidden) if h is not None for a in h.addresses))
    if not recipients:
        raise ResourceInputParameterError("no recipient: to_addr, cc and bcc are all empty")
    for name, value in (("subject", subject), ("text", text)):
        if not isinstance(value, str):
            raise ResourceInputParameterError(f"{name} must be str, not {type(value).__name__}")
    files = _files(attached_files, "attached_files")
    variants = _alternatives(alternatives)
    domain = sender.addresses[0].domain
    message_id = email.utils.make_msgid(domain=domain)
    message = EmailMessage(policy=POLICY)
    _set_headers(message, [("From", sender), ("To", to), ("Cc", copy)], subject, message_id, _headers(headers))
    _layout(message, _part("text/plain", text, encoding, disposition="inline" if not variants else None),
            [_alternative(v, encoding, domain) for v in variants],
            [_part(m, c, encoding, disposition="attachment", filename=n) for n, m, c in files])
    try:
        data = message.as_bytes(policy=POLICY)
    except Exception as e:  # a header the email package took but cannot write
        raise ResourceInputParameterError(f"the message cannot be written: {exc_string(e, stack=False)}") from None
    return Mail(sender.addresses[0].addr_spec, recipients, dot_stuffed(data), str(message["Message-ID"]),
                f'"{subject}" for {", ".join(recipients)}')


def dot_stuffed(data: bytes) -> bytes:
    """A message as DATA carries it (RFC 5321 4.5.2): CRLF line ends, a "." doubled at the
    start of a line, ending with CRLF - so that the final "." line can only be ours."""
    data = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    data = re.sub(rb"(?m)^\.", b"..", data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def _address_header(name: str, value: Any, what: str) -> Any:
    """None, or the header of `value`: a str of comma-separated addresses, or a list of such
    strs. Parsed once: the header object is what the message stores (parsing is most of the
    cost of a small message)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ResourceInputParameterError(f"{what} must be a str or a list of str, not {value!r}")
    text = ", ".join(v for v in value if v.strip())
    if not text:
        return None
    try:
        header = POLICY.header_factory(name, text)
        addresses, defects = header.addresses, header.defects
    except Exception:  # the parser raises all sorts on garbage
        addresses, defects = (), ("unparseable",)
    if defects or not addresses or not all(a.username and a.domain for a in addresses):
        raise ResourceInputParameterError(f"{what}: malformed address {text!r}")
    for a in addresses:
        if not a.addr_spec.isascii():
            raise ResourceInputParameterError(f"{what}: {a.addr_spec!r} is not ASCII (write the domain as "
                                              f"xn--...; SMTPUTF8 is not spoken)")
    return header


def _files(value: Any, what: str) -> list[File]:
    """((name, mime_type, str | bytes), ...)"""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ResourceInputParameterError(f"{what} must be a tuple of (name, mime_type, content)")
    for entry in value:
        if not (isinstance(entry, (list, tuple)) and len(entry) == 3 and isinstance(entry[0], str) and entry[0]
                and isinstance(entry[2], (str, bytes, bytearray))):
            raise ResourceInputParameterError(f"{what}: {_short(entry)} is not (name, mime_type, str or bytes)")
        _mime_type(entry[1], what)
    return [(n, m, bytes(c) if isinstance(c, bytearray) else c) for n, m, c in value]


def _alternatives(value: Any) -> list[Variant]:
    """((mime_type, str | bytes, related_files), ...)"""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ResourceInputParameterError("alternatives must be a tuple of (mime_type, content, related_files)")
    result = []
    for entry in value:
        if not (isinstance(entry, (list, tuple)) and len(entry) == 3 and isinstance(entry[1], (str, bytes, bytearray))):
            raise ResourceInputParameterError(f"alternatives: {_short(entry)} is not "
                                              f"(mime_type, str or bytes, related_files)")
        _mime_type(entry[0], "alternatives")
        result.append((entry[0], bytes(entry[1]) if isinstance(entry[1], bytearray) else entry[1],
                       _files(entry[2], "related_files")))
    return result


def _mime_type(value: Any, what: str) -> None:
    if not isinstance(value, str) or not _MIME_TYPE.match(value):
        raise ResourceInputParameterError(f"{what}: {value!r} is not a MIME type")
    if value.split("/")[0].lower() in ("multipart", "message"):
        raise ResourceInputParameterError(f"{what}: {value} cannot be given, the resource lays parts out itself "
                                          f"(attach a message as application/octet-stream)")


def _headers(value: Any) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise ResourceInputParameterError(f"headers must be a dict of str to str, not {type(value).__name__}")
    for name, text in value.items():
        if not (isinstance(name, str) and isinstance(text, str) and _HEADER_NAME.match(name)):
            raise ResourceInputParameterError(f"headers: {name!r}: {_short(text)} is not a header of str")
        if name.lower() in _RESERVED:
            raise ResourceInputParameterError(f"headers: {name} is set by send() itself")
    return list(value.items())


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _part(mime_type: str, content: str | bytes, encoding: str, *, disposition: str | None = None,
          filename: str | None = None, cid: str | None = None) -> MIMEPart:
    """One leaf: base64 as the original's, text given as str in `encoding` (or UTF-8 where
    it does not fit) with its charset named; bytes as they are. Its headers are written
    here rather than by set_content(), which parses each several times over."""
    content_type = mime_type.lower()
    if isinstance(content, str):
        if not content_type.startswith("text/"):
            raise ResourceInputParameterError(f"content of type {mime_type} must be bytes")
        charset = encoding if _fits(content, encoding) else "utf-8"
        content = content.encode(charset)
        content_type += f'; charset="{charset}"'
    part = MIMEPart(policy=POLICY)
    part["Content-Type"] = content_type
    part["Content-Transfer-Encoding"] = "base64"
    if disposition is not None:
        part["Content-Disposition"] = disposition + (f"; {_param('filename', filename)}" if filename else "")
    if cid is not None:
        part["Content-ID"] = cid
    part.set_payload(base64.encodebytes(content).decode("ascii"))
    return part


def _param(name: str, value: str) -> str:
    """A MIME parameter: quoted, or RFC 2231 where it is not ASCII."""
    if value.isascii():
        return f'{name}="{email.utils.quote(value)}"'
    return f"{name}*={email.utils.encode_rfc2231(value, 'utf-8')}"


def _fits(text: str, encoding: str) -> bool:
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


def _alternative(variant: Variant, encoding: str, domain: str) -> MIMEPart:
    """An alternative, with its related files a multipart/related whose `cid:{name}` are resolved."""
    mime_type, content, related = variant
    if not related:
        return _part(mime_type, content, encoding)
    cids = {name: email.utils.make_msgid(domain=domain)[1:-1] for name, _, _ in related}
    for name, cid in cids.items():
        if isinstance(content, str):
            content = content.replace(f"cid:{{{name}}}", f"cid:{cid}")
        else:
            for charset in {"utf-8", encoding}:
                content = bytes(content).replace(f"cid:{{{name}}}".encode(charset, "replace"), f"cid:{cid}".encode())
    parts = [_part(mime_type, content, encoding)]
    parts += [_part(m, c, encoding, disposition="inline", filename=n, cid=f"<{cids[n]}>") for n, m, c in related]
    related_part = _multipart(MIMEPart(policy=POLICY), "related", parts)
    related_part.set_param("type", mime_type.lower())  # RFC 2387: the type of its root part
    return related_part


def _layout(message: EmailMessage, text: MIMEPart, alternatives: list[MIMEPart],
            attachments: list[MIMEPart]) -> None:
    """The original's layout (see the module)."""
    if alternatives and not attachments:
        message["Content-Disposition"] = "inline"
        _multipart(message, "alternative", [text, *alternatives])
        return
    first = text
    if alternatives:
        first = _multipart(MIMEPart(policy=POLICY), "alternative", [text, *alternatives])
        first["Content-Disposition"] = "inline"
    _multipart(message, "mixed", [first, *attachments])


def _multipart(container: MIMEPart, subtype: str, parts: list[MIMEPart]) -> MIMEPart:
    # a boundary of ours: "-" is not in base64, so no line of a part can be it (the generator
    # would otherwise search the whole text for a free one, and compile a regex to do it)
    container["Content-Type"] = f'multipart/{subtype}; boundary="=_{uuid.uuid4().hex}"'
    for part in parts:
        container.attach(part)
    return container


def _set_headers(message: EmailMessage, addresses: list[tuple[str, Any]], subject: str, message_id: str,
                 extra: list[tuple[str, str]]) -> None:
    """From, To, Cc (those given, as parsed), Subject, Date, Message-ID, the call's own
    headers (a Date, Message-ID or Reply-To of its own replaces ours), MIME-Version. Bcc is
    never written."""
    ours = [(k, v) for k, v in addresses if v is not None]
    ours += [("Subject", subject), ("Date", email.utils.localtime()), ("Message-ID", message_id)]
    given = {name.lower() for name, _ in extra}
    for name, value in [*[(k, v) for k, v in ours if k.lower() not in given], *extra, ("MIME-Version", "1.0")]:
        try:
            message[name] = value
        except Exception as e:  # a line break in a value, an address header that is not one
            raise ResourceInputParameterError(f"header {name}: {exc_string(e, stack=False)}") from None


# --- the connection ------------------------------------------------------------------------


def _remain() -> float:
    request = _request.current()
    return 3600.0 if request.deadline is None else request.remain


def _timeout(doing: str) -> float:
    """What the deadline leaves for the next wait; TimeoutError if nothing."""
    remain = _remain()
    if remain <= 0.0:
        raise TimeoutError(f"no time left {doing}")
    return remain


class _Reader:
    """smtplib's reply reader: each recv waits at most what the deadline leaves, so a
    server trickling its reply costs the caller its deadline and no more."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def readline(self, limit: int) -> bytes:
        while True:
            end = self.buffer.find(b"\n", 0, limit)
            if end >= 0 or len(self.buffer) >= limit:
                size = end + 1 if end >= 0 else limit
                line = bytes(self.buffer[:size])
                del self.buffer[:size]
                return line
            self.sock.settimeout(_timeout("waiting for the server's reply"))
            chunk = self.sock.recv(4096)
            if not chunk:
                line = bytes(self.buffer)
                self.buffer.clear()
                return line
            self.buffer += chunk

    def close(self) -> None:
        pass  # the socket is smtplib's to close


class _Smtp(smtplib.SMTP):
    """smtplib.SMTP reading replies through _Reader, with TLS from the start if asked."""

    def __init__(self, helo: str, server_hostname: str, implicit_tls: ssl.SSLContext | None) -> None:
        super().__init__(local_hostname=helo)  # given, so smtplib does not look up this host's FQDN
        self._host = server_hostname  # the name smtplib's starttls() checks the certificate for
        self.implicit_tls = implicit_tls

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        until = time.monotonic() + timeout
        sock = socket.create_connection((host, port), timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # the final "." must not wait for an ACK
        if self.implicit_tls is not None:
            sock.settimeout(max(until - time.monotonic(), 0.001))  # connect and handshake share the timeout
            try:
                return self.implicit_tls.wrap_socket(sock, server_hostname=self._host)
            except BaseException:
                sock.close()
                raise
        return sock

    def getreply(self) -> tuple[int, bytes]:
        if self.file is None and self.sock is not None:  # smtplib drops its reader on connect and STARTTLS
            self.file = _Reader(self.sock)
        return super().getreply()

    def buffered(self) -> bool:
        return isinstance(self.file, _Reader) and bool(self.file.buffer)


IDLE, ENVELOPE, DATA = "idle", "envelope", "data"  # see the module's table


class Resource(resource.Resource):
    """One SMTP connection; `send` hands a message over, the final "." is the commit."""

    transactional = True
    inline = True  # connect, TLS, every reply and every piece of the body are bounded by the deadline

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        file = resource_file(name)
        super().__init__(name, KEYS.read(config, file))
        c = self.config
        if c["server_address"] is None:
            raise ConfigError(f"{file}: server_address must be (host, port) of the SMTP server")
        if (c["username"] is None) != (c["password"] is None):
            raise ConfigError(f"{file}: give both username and password, or neither")
        self.host, self.port = c["server_address"]
        self.where = f"{self.host}:{self.port}"
        self.helo: str = c["helo"] or socket.gethostname()
        try:
            self._tls = _ssl_context(c)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"{file}: the TLS keys cannot be used: {exc_string(e, stack=False)}") from None
        self._smtp: _Smtp | None = None
        self._stage = IDLE

    @property
    def expired(self) -> bool:
        return super().expired or self._smtp is None

    # --- lifecycle ---------------------------------------------------------------------

    def connect(self) -> None:
        timeout = min(self.config["connect_timeout"], _remain())
        if timeout <= 0:
            raise ResourceError(f"no time left to connect to {self.where}", recoverable=True)
        starttls = self.config["starttls"]
        smtp = self._smtp = _Smtp(self.helo, self.config["ssl_server_hostname"] or self.host,
                                  None if starttls else self._tls)
        smtp.timeout = timeout  # connect and the TLS handshake
        self._stage = IDLE
        try:
            self._expect(self._call("connecting", smtp.connect, self.host, self.port), (220,), "greeting")
            self._call("saying EHLO", smtp.ehlo_or_helo_if_needed)
            if starttls:
                self._call("starting TLS", smtp.starttls, context=self._tls)
                self._call("saying EHLO over TLS", smtp.ehlo_or_helo_if_needed)
            if self.config["username"] is not None:
                self._authenticate(smtp)
        except BaseException:
            self._drop()  # the pool forgets a connection that failed to connect without closing it
            raise

    def _authenticate(self, smtp: _Smtp) -> None:
        smtp.user, smtp.password = self.config["username"], self.config["password"]
        method = self.config["auth_method"] or "PLAIN"
        plain = method == "PLAIN"
        self._call(f"authenticating ({method})", smtp.auth, method, smtp.auth_plain if plain else smtp.auth_login,
                   initial_response_ok=plain)  # AUTH LOGIN as the original: user and password each asked for

    def disconnect(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None or smtp.sock is None:
            return
        if self._stage == IDLE:  # QUIT, its answer not awaited (never while a message is open: it would go)
            try:
                smtp.sock.settimeout(_QUIT_TIMEOUT)
                smtp.putcmd("quit")
            except (OSError, smtplib.SMTPException):
                pass
        smtp.close()

    def begin_transaction(self, xid: str, *, source_module_name: str, transaction_options: dict[str, Any],
                          resource_args: tuple[Any, ...], resource_kwargs: dict[str, Any]) -> None:
        if self._stage != IDLE:  # never expected: a connection is given back only when idle
            self._drop()

    # --- the call ----------------------------------------------------------------------

    def send(self, from_addr: str, to_addr: str | Sequence[str], subject: str, text: str,
             headers: dict[str, str] | None = None, attached_files: Sequence[Any] | None = None,
             alternatives: Sequence[Any] | None = None, *, cc: str | Sequence[str] | None = None,
             bcc: str | Sequence[str] | None = None) -> str:
        """Send up to the final "." (see the module); the message's Message-ID."""
        mail = compose(from_addr, to_addr, subject, text, headers, attached_files, alternatives, cc=cc, bcc=bcc,
                       encoding=self.config["encoding"])
        smtp = self._live()
        log.info(f"sending e-mail message {mail.description}, {len(mail.data)} byte(s)")
        size = [f"SIZE={len(mail.data)}"] if smtp.has_extn("size") else []  # a server refuses a big one at once
        self._stage = ENVELOPE
        self._expect(self._call("sending MAIL FROM", smtp.mail, mail.sender, size), (250,),
                     f"MAIL FROM:<{mail.sender}> refused")
        for recipient in mail.recipients:
            self._expect(self._call("sending RCPT TO", smtp.rcpt, recipient), (250, 251),
                         f"recipient {recipient} refused")
        self._expect(self._call("sending DATA", smtp.docmd, "DATA"), (354,), "DATA refused")
        self._stage = DATA
        self._write(smtp, mail.data)
        return mail.message_id

    def commit(self) -> None:
        if self._stage != DATA:
            return
        smtp = self._smtp
        if smtp is None or smtp.sock is None:
            raise ResourceError(f"the connection to {self.where} has been lost before the message was complete",
                                recoverable=True)
        try:
            smtp.sock.settimeout(_timeout("to end the message"))
            smtp.send(b".\r\n")
        except (OSError, smtplib.SMTPException) as e:
            raise self._failure(e, "ending the message") from None
        self._stage = IDLE  # from here on the server may have the message: nothing is recoverable
        try:
            code, text = smtp.getreply()
        except (OSError, smtplib.SMTPException) as e:
            failure = self._failure(e, "waiting for the server to take the message (it may have been sent)")
            failure.recoverable = False
            raise failure from None
        if code != 250:  # refused after all: the server has not taken it
            raise ResourceError(f"{self.where} refused the message: {_text(text)}", code=code, recoverable=True,
                                terminal=False)
        log.info("e-mail message has been sent")

    def rollback(self) -> None:
        if self._stage == DATA:  # no other way to take a message back than to hang up before the "."
            self._drop()
            log.info("e-mail message has been aborted")
        elif self._stage == ENVELOPE and self._smtp is not None:
            if _remain() <= 0.0:
                self._drop()  # no time for RSET: hanging up ends the envelope too
                return
            self._stage = IDLE
            self._expect(self._call("sending RSET", self._smtp.rset), (250,), "RSET refused")

    # --- steps ---------------------------------------------------------------------------

    def _live(self) -> _Smtp:
        """The connection, made again if the server has closed it meanwhile (nothing is open on it)."""
        if self._smtp is None or self._dropped(self._smtp):
            self._hang_up()  # this object stays usable: only its connection is made again
            self.connect()
        assert self._smtp is not None
        return self._smtp

    @staticmethod
    def _dropped(smtp: _Smtp) -> bool:
        """An idle connection with something to read: the server closed it (or said 421)."""
        sock = smtp.sock
        if sock is None or smtp.buffered():
            return True
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        if not readable:
            return False
        if not isinstance(sock, ssl.SSLSocket):
            return True
        sock.setblocking(False)  # a TLS 1.3 session ticket makes a live connection readable too
        try:
            sock.recv(1)
        except ssl.SSLWantReadError:
            return False
        except OSError:
            return True
        return True

    def _call(self, doing: str, step: Any, *args: Any, **kwargs: Any) -> Any:
        """One step of smtplib's dialogue within the deadline; its failures as ResourceErrors."""
        smtp = self._smtp
        try:
            if smtp is not None and smtp.sock is not None:
                smtp.sock.settimeout(_timeout(doing))  # for what smtplib sends; replies bound themselves
            return step(*args, **kwargs)
        except smtplib.SMTPResponseException as e:
            raise self._refused(e.smtp_code, e.smtp_error, doing) from None
        except smtplib.SMTPNotSupportedError as e:
            self._drop()
            raise ResourceError(f"{self.where} {doing}: {e}", recoverable=True) from None
        except (OSError, smtplib.SMTPException, ValueError) as e:  # ValueError: a line break in a command
            raise self._failure(e, doing) from None

    def _expect(self, reply: tuple[int, bytes], codes: tuple[int, ...], what: str) -> None:
        code, text = reply
        if code not in codes:
            raise self._refused(code, text, what)

    def _refused(self, code: int, text: bytes | str, what: str) -> ResourceError:
        """An SMTP reply other than the one expected: nothing is delivered, so recoverable; the
        connection is kept (rollback sends RSET) unless the server is closing it (421) or broke."""
        terminal = code == 421 or code < 200 or self._stage == DATA
        if terminal:
            self._drop()
        return ResourceError(f"{self.where}: {what}: {_text(text)}", code=code, recoverable=True, terminal=terminal)

    def _failure(self, e: BaseException, doing: str) -> ResourceError:
        self._drop()
        if _remain() <= _DEADLINE_SLACK:  # a socket timeout set to what was left may fire a hair early
            error = ResourceDeadlineError(f"request deadline {doing} ({self.where})")
            error.recoverable = True  # until the final "." the server delivers nothing
            return error
        if isinstance(e, ssl.SSLCertVerificationError):
            return ResourceError(f"server {self.where} failed verification: {e.verify_message}", recoverable=True)
        return ResourceError(f"connection to {self.where} failed {doing}: {exc_string(e, stack=False)}",
                             recoverable=True)

    def _write(self, smtp: _Smtp, data: bytes) -> None:
        """The body, a piece at a time, each send bounded by what the deadline leaves."""
        sock = smtp.sock
        assert sock is not None
        view, sent = memoryview(data), 0
        try:
            while sent < len(view):
                sock.settimeout(_timeout("writing the message"))
                sent += sock.send(view[sent:sent + _WRITE])
        except OSError as e:
            raise self._failure(e, f"writing the message, {sent} of {len(data)} bytes sent") from None

    def _drop(self) -> None:
        """Hang up at once, and never be reused by the pool."""
        self._hang_up()
        self.expire()

    def _hang_up(self) -> None:
        """Close without QUIT, so a message still open is discarded by the server."""
        smtp, self._smtp = self._smtp, None
        self._stage = IDLE
        if smtp is not None:
            smtp.close()


def _text(text: bytes | str) -> str:
    return (text.decode("utf-8", "replace") if isinstance(text, bytes) else text).replace("\n", " ")


def _ssl_context(c: dict[str, Any]) -> ssl.SSLContext | None:
    """TLS when a CA is given (from the start, or by STARTTLS) or STARTTLS is asked for
    (then the system's CAs verify the server unless a CA is given); None: plain."""
    if not c["ssl_ca_cert_file"] and not c["starttls"]:
        return None
    return client_context(c)
