"""POP3: the interface polls a mailbox and makes each message a request; a message is deleted
only after its handler succeeded, and one that keeps failing is set aside, never blocking the rest.

What the user sees is the original's email interface: `config_interface_<n>.py` names
`server_address`, `username`, `password`, `interval` and the TLS keys, and
`interface_<n>.process_request(request, response)` gets `message_id` (the UIDL) and `message`
(an `email.message.Message`, as the original parsed it), and beyond them the message taken
apart: `subject`, `from`, `to`, `cc`, `date`, `text`, `html`, `inline`, `attachments`,
`defects`, `message_bytes` (see `parse` and the template interface_pop3_1.py).

Each poll, on a thread of the interface (the original took one message per poll, and a poison
message at the head blocked the mailbox):

    connect (implicit TLS, or STLS) → USER/PASS → LIST and UIDL of every message
    for each message, in mailbox order:
        handled before (received.py, the cage's state) → DELE, the handler not run
        a handler run of it still going (past its deadline) → left for a later poll
        bigger than max_message_size → saved under failed_directory as it comes, DELE
        RETR → parsed → the handler, under the cage's deadline (lifecycle.call)
            → success: marked handled in the state, then DELE
            → failure: counted (received.failed); at max_failures the message is saved
              under failed_directory, DELE, logged once at ERROR with the last error
    the marks of the poll fsynced → QUIT, which commits the deletions

With a server that says PIPELINING (RFC 2449), a DELE goes out with the next command and
the next message's RETR before this one's handler runs (`Session`): a message costs one
round trip to the server, not three. A connection lost before QUIT undeletes everything: the
marks make the next poll delete the messages handled without running their handlers again.
After a poll that took messages and had no failure the next one starts at once; otherwise
after `interval`. A server that cannot be reached or refuses the login is logged once when the
outage begins and once when it ends; polls go on meanwhile with back-off.
"""

from __future__ import annotations

import binascii
import codecs
import collections
import concurrent.futures
import datetime
import os
import poplib
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from email import policy
from email.message import Message
from email.parser import BytesParser
from email.utils import getaddresses, parsedate_to_datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pmnc import interfaces, log
from pmnc.errors import ConfigError, exc_string
from pmnc.received import Entry, Received
from pmnc.schema import Key, address, interface_file, ssl_protocol_ignored
from pmnc.tls import client_context

if TYPE_CHECKING:
    from pmnc.runtime import Runtime

__all__ = ["Interface", "parse"]

MAX_MESSAGE_SIZE = 32 * 1024 * 1024  # bytes of a message as the server counts them (LIST)
MAX_ERROR_TEXT = 2000  # characters of a handler's error kept in the state
BACKOFF_MAX = 60.0  # seconds between polls at most while the server is out of reach (or interval, if longer)
SWEEP_PERIOD = 600.0  # seconds between sweeps of the duplicate window
CRLF = b"\r\n"
STREAM_PIECE = 65536  # bytes read at most at once while a message is saved as it comes
T = TypeVar("T")


# --- the message taken apart (no sockets here) -----------------------------------------------------

Address = tuple[str, str]  # (display name, address), as email.utils.parseaddr gives them

ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")  # RFC 2047
FOLD = re.compile(rb"\r?\n(?=[ \t])")
TOP_HEADERS = frozenset({"subject", "from", "to", "cc", "date"})
CHARSET = re.compile(r';\s*charset\s*=\s*"?([^";\s]+)"?', re.IGNORECASE)  # without RFC 2231's charset*=


def _bytes_text(data: bytes, defects: list[str], where: str) -> str:
    """8-bit text where no charset is said: UTF-8 (RFC 6532), else windows-1252 as mail
    clients read it, else Latin-1 (every byte a character)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    defects.append(f"{where}: 8-bit characters that are not UTF-8, read as windows-1252")
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _decode(data: bytes, charset: str, defects: list[str], where: str) -> str:
    """`data` in `charset`; an unknown charset or bytes that do not fit it: best effort, noted."""
    try:
        codecs.lookup(charset)
    except (LookupError, ValueError):
        defects.append(f"{where}: unknown charset {charset!r}")
        return _bytes_text(data, defects, where)
    try:
        return data.decode(charset)
    except UnicodeDecodeError:
        defects.append(f"{where}: bytes that are not {charset}, replaced")
        return data.decode(charset, "replace")


def _encoded_word(match: re.Match[str], defects: list[str], where: str) -> str:
    charset, kind, payload = match.group(1).partition("*")[0], match.group(2).upper(), match.group(3)
    try:
        if kind == "B":
            data = binascii.a2b_base64(payload + "=" * (-len(payload) % 4))
        else:
            data = binascii.a2b_qp(payload.encode("ascii"), header=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        defects.append(f"{where}: an encoded word that cannot be decoded, kept as it is")
        return match.group(0)
    return _decode(data, charset, defects, where)


def decode_words(text: str, defects: list[str], where: str) -> str:
    """RFC 2047 encoded words (`=?utf-8?b?...?=`) decoded; the white space between two
    adjacent ones dropped, as the RFC says."""
    if "=?" not in text:
        return text
    out: list[str] = []
    position, after_word = 0, False
    for match in ENCODED_WORD.finditer(text):
        between = text[position:match.start()]
        if not (after_word and not between.strip()):
            out.append(between)
        out.append(_encoded_word(match, defects, where))
        position, after_word = match.end(), True
    out.append(text[position:])
    return "".join(out)


def _raw_headers(message: Message) -> dict[str, list[bytes]]:
    """The values of the headers taken apart (`TOP_HEADERS`) as they came, unfolded, by
    lower-case name: the parser keeps 8-bit bytes as surrogates, which give the bytes back."""
    headers: dict[str, list[bytes]] = {}
    for name, value in message.raw_items():
        key = name.lower()
        if key in TOP_HEADERS:
            raw = str(value).encode("utf-8", "surrogateescape")
            headers.setdefault(key, []).append(FOLD.sub(b"", raw).strip())
    return headers


def _header(headers: dict[str, list[bytes]], name: str, defects: list[str]) -> str:
    values = headers.get(name.lower())
    if not values:
        return ""
    return decode_words(_bytes_text(values[0], defects, name), defects, name).strip()


# One address, alone or after a plain display name: most headers are one of these, and
# reading them here is five times quicker than the standard library's general parser.
BARE_ADDRESS = re.compile(r"\s*([^\s\"(),:;<>@\[\]\\]+@[^\s\"(),:;<>@\[\]\\]+)\s*")
NAMED_ADDRESS = re.compile(r"\s*([^\"(),:;<>@\[\]\\]*?)\s*<([^\s\"(),:;<>@\[\]\\]+@[^\s\"(),:;<>@\[\]\\]+)>\s*")


def _addresses(headers: dict[str, list[bytes]], name: str, defects: list[str]) -> list[Address]:
    texts = [_bytes_text(value, defects, name) for value in headers.get(name.lower(), [])]
    if not texts:
        return []
    if len(texts) == 1:
        match = BARE_ADDRESS.fullmatch(texts[0])
        if match:
            return [("", match.group(1))]
        match = NAMED_ADDRESS.fullmatch(texts[0])
        if match:
            return [(decode_words(" ".join(match.group(1).split()), defects, name).strip(), match.group(2))]
    try:
        pairs = getaddresses(texts)
    except Exception as e:  # the standard library's address parser has raised on odd input before
        defects.append(f"{name}: cannot be read as addresses ({exc_string(e, stack=False)})")
        return []
    return [(decode_words(n, defects, name).strip(), a.strip()) for n, a in pairs if n or a]


def _date(headers: dict[str, list[bytes]], defects: list[str]) -> datetime.datetime | None:
    text = _header(headers, "Date", defects)
    if not text:
        return None
    try:
        return parsedate_to_datetime(text)
    except Exception:
        defects.append(f"Date: {text[:100]!r} is not a date")
        return None


def _part_headers(part: Message) -> dict[str, str]:
    """A part's headers by lower-case name, the first of each (Message.get scans them all each time)."""
    headers: dict[str, str] = {}
    for name, value in part.raw_items():
        headers.setdefault(name.lower(), str(value))
    return headers


def _mime_type(part: Message, headers: dict[str, str]) -> str:
    """As Message.get_content_type: the type/subtype lower-cased; text/plain if unusable."""
    value = headers.get("content-type")
    if value is None:
        return part.get_default_type()
    mime_type = value.partition(";")[0].strip().lower()
    return mime_type if mime_type.count("/") == 1 else "text/plain"


class _Collector:
    """Walks a message's MIME tree: the first text/plain and text/html bodies, the parts a
    Content-ID names (images an HTML body shows with cid:), and the attachments."""

    def __init__(self, defects: list[str]) -> None:
        self.defects = defects
        self.text: str | None = None
        self.html: str | None = None
        self.inline: dict[str, tuple[str, str, bytes]] = {}
        self.attachments: list[tuple[str, str, bytes]] = []

    def walk(self, part: Message, depth: int = 0, related: bool = False) -> None:
        headers = _part_headers(part)
        mime_type = _mime_type(part, headers)
        if mime_type == "message/rfc822" or (depth > 0 and mime_type.startswith("message/")):
            self.attachments.append((self._name(part, headers) or "message.eml", mime_type, self._inner_bytes(part)))
        elif part.is_multipart() and depth < 50:
            subparts = [sub for sub in part.get_payload() if isinstance(sub, Message)]
            for i, sub in enumerate(subparts):  # in a multipart/related, the parts after the first are its resources
                self.walk(sub, depth + 1, related=mime_type == "multipart/related" and i > 0)
        else:
            self._leaf(part, headers, mime_type, related)
        for defect in getattr(part, "defects", []):
            self.defects.append(f"{mime_type}: {type(defect).__name__}")

    def _leaf(self, part: Message, headers: dict[str, str], mime_type: str, related: bool) -> None:
        disposition = self._disposition(part) if "content-disposition" in headers else None
        name = self._name(part, headers)
        content = self._content(part, mime_type)
        content_id = headers.get("content-id", "").strip().strip("<>").strip()
        if not related and disposition != "attachment" and not name and mime_type in ("text/plain", "text/html"):
            body = self._text(part, headers, content, mime_type)
            if mime_type == "text/plain" and self.text is None:
                self.text = body
                return
            if mime_type == "text/html" and self.html is None:
                self.html = body
                return
        if content_id and (related or disposition != "attachment"):
            self.inline[content_id] = (name, mime_type, content)
        else:
            self.attachments.append((name, mime_type, content))

    def _disposition(self, part: Message) -> str | None:
        try:
            return part.get_content_disposition()
        except Exception:
            return None

    def _name(self, part: Message, headers: dict[str, str]) -> str:
        if "content-disposition" not in headers and "name" not in headers.get("content-type", "").lower():
            return ""  # most parts: no need to parse the parameters
        try:
            name = part.get_filename() or part.get_param("name") or ""
        except Exception:
            name = ""
        if isinstance(name, tuple):  # an RFC 2231 value get_param left undecoded
            name = name[2]
        name = str(name)
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:  # 8-bit bytes in the header, kept as surrogates
            name = _bytes_text(name.encode("utf-8", "surrogateescape"), self.defects, "a file name")
        return decode_words(name, self.defects, "a file name").strip()

    def _content(self, part: Message, mime_type: str) -> bytes:
        try:
            content = part.get_payload(decode=True)
        except Exception as e:
            self.defects.append(f"{mime_type}: the content cannot be decoded ({exc_string(e, stack=False)})")
            content = None
        if isinstance(content, bytes):
            return content
        payload = part.get_payload()
        return payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""

    def _inner_bytes(self, part: Message) -> bytes:
        payload = part.get_payload()
        try:
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0].as_bytes()
            return self._content(part, "message/rfc822")
        except Exception as e:
            self.defects.append(f"message/rfc822: cannot be written back ({exc_string(e, stack=False)})")
            return b""

    def _text(self, part: Message, headers: dict[str, str], content: bytes, mime_type: str) -> str:
        charset, content_type = None, headers.get("content-type", "")
        match = CHARSET.search(content_type)
        if match:
            charset = match.group(1).lower()
        elif "charset" in content_type.lower():
            try:
                charset = part.get_content_charset()
            except Exception:
                pass
        text = _decode(content, charset, self.defects, mime_type) if charset else \
            _bytes_text(content, self.defects, mime_type)
        return text.replace("\r\n", "\n")


def parse(raw: bytes) -> tuple[Message, dict[str, Any]]:
    """A message as received (RFC 5322 bytes) → the original's `email.message.Message`
    (compat32, as its FeedParser made) and the parts a handler wants, best effort: what
    could not be read well is said in `defects`, never raised."""
    message = BytesParser(policy=policy.compat32).parsebytes(raw)
    defects: list[str] = []
    headers = _raw_headers(message)
    collector = _Collector(defects)
    collector.walk(message)
    fields = {
        "subject": _header(headers, "Subject", defects),
        "from": (_addresses(headers, "From", defects) or [("", "")])[0],
        "to": _addresses(headers, "To", defects),
        "cc": _addresses(headers, "Cc", defects),
        "date": _date(headers, defects),
        "text": collector.text,
        "html": collector.html,
        "inline": collector.inline,
        "attachments": collector.attachments,
        "defects": list(dict.fromkeys(defects)),
        "message_bytes": raw,
    }
    return message, fields


# --- one POP3 connection --------------------------------------------------------------------------


class ServerError(Exception):
    """The server cannot be reached or does not let this cage in (`answered`: it said no - a
    wrong password, say - something for a person to fix rather than to wait out)."""

    def __init__(self, text: str, *, answered: bool = False) -> None:
        super().__init__(text)
        self.answered = answered


class Session(poplib.POP3):
    """A POP3 connection: poplib's commands, each answer awaited within the bound last set
    (`bound`), lines as long as a message may be, TLS with the interface's own context.

    With PIPELINING (RFC 2449) commands need not wait for the answers before them: a DELE
    is held back and sent with the next command, and the next message's RETR is sent
    (`prefetch`) before the handler of this one runs, so the server sends it meanwhile. Over
    a distant link a message then costs one round trip rather than three. Answers come in
    the order the commands went; those nobody waits for are read before the one awaited."""

    def __init__(self, host: str, port: int, *, timeout: float, retrieve_timeout: float, tls: ssl.SSLContext | None,
                 implicit: bool, server_hostname: str, max_line: int) -> None:
        self._tls, self._implicit, self._server_hostname = tls, implicit, server_hostname
        self.short_timeout = timeout  # seconds for a short command's answer (DELE, QUIT)
        self.retrieve_timeout = retrieve_timeout  # seconds for a message's RETR
        self._max_line = max_line
        self._until = time.monotonic() + timeout
        self._held: list[str] = []  # DELE commands not sent yet (pipelined with the next command)
        self._sent: collections.deque[str] = collections.deque()  # commands whose answers are not read yet
        self.pipelining = False  # the server said PIPELINING
        self.refused: list[str] = []  # the DELEs the server refused, with its answers
        super().__init__(host, port, timeout)  # connects and reads the greeting

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout)
        if self._implicit and self._tls is not None:
            try:
                return self._tls.wrap_socket(sock, server_hostname=self._server_hostname)
            except BaseException:
                sock.close()
                raise
        return sock

    def bound(self, seconds: float) -> None:
        """The next answers must come within `seconds` from now, all of them together."""
        self._until = time.monotonic() + seconds
        if self.sock is not None:
            self.sock.settimeout(max(seconds, 0.001))

    def _getline(self) -> tuple[bytes, int]:
        if time.monotonic() > self._until:
            raise TimeoutError("the server did not answer in time")
        line: bytes = self.file.readline(self._max_line + 1)
        if len(line) > self._max_line:
            raise poplib.error_proto(f"a line longer than {self._max_line} bytes")
        if not line:
            raise poplib.error_proto("-ERR EOF")
        octets = len(line)
        if line[-2:] == CRLF:
            return line[:-2], octets
        if line[:1] == b"\r":
            return line[1:-1], octets
        return line[:-1], octets

    def command(self, line: str) -> bytes:
        """Send one command (after the DELEs held back, in the same write) unless it went
        already (`prefetch`); its first answer line (poplib.error_proto if it is not +OK)."""
        if line not in self._sent:
            self._send(line)
        while self._sent:
            sent = self._sent.popleft()
            answer, _ = self._getline()
            if sent == line:
                if not answer.startswith(b"+"):
                    raise poplib.error_proto(answer)
                return answer
            self._settle(sent, answer)
        raise AssertionError(f"{line} was not sent")

    def _send(self, line: str) -> None:
        held, self._held = self._held, []
        self.sock.sendall("".join(f"{c}\r\n" for c in (*held, line)).encode(self.encoding))
        self._sent.extend((*held, line))

    def _settle(self, sent: str, answer: bytes) -> None:
        """The answer to a command nobody waits for: a DELE's (a refusal noted), or a
        prefetched RETR's (the cage is stopping: the message is read and dropped)."""
        if not answer.startswith(b"+"):
            if sent.startswith("DELE"):
                self.refused.append(f"{sent}: {answer.decode('utf-8', 'replace')}")
            return
        if sent.startswith("RETR"):
            while self._getline()[0] != b".":
                pass

    def prefetch(self, number: int) -> None:
        """With PIPELINING, send RETR now (with the DELEs held back): the server sends the
        message while this cage handles the one before; `retrieve` reads it then."""
        if self.pipelining:
            self._send(f"RETR {number}")

    def delete(self, number: int) -> None:
        """DELE: with PIPELINING (RFC 2449) held back and sent with the next command, its
        answer read then (one round trip less per message); a refusal goes to `refused`."""
        if self.pipelining:
            self._held.append(f"DELE {number}")
            return
        self.bound(self.short_timeout)
        try:
            self.command(f"DELE {number}")
        except poplib.error_proto as e:
            if not _refused(e):
                raise
            self.refused.append(f"DELE {number}: {_answer(e)}")

    def finish(self) -> None:
        """QUIT (after the DELEs held back): the server deletes what was marked, and closes."""
        prefetched = any(sent.startswith("RETR") for sent in self._sent)  # read first, and dropped
        self.bound(self.short_timeout + (self.retrieve_timeout if prefetched else 0.0))
        self.command("QUIT")
        self.close()

    def close(self) -> None:
        """Close without QUIT (the server then deletes nothing); never raises: after a failed
        TLS handshake the socket is already gone."""
        try:
            super().close()
        except OSError:
            pass

    def start_tls(self) -> None:
        """STLS (RFC 2595), the server verified against the interface's CA and host name."""
        assert self._tls is not None
        self.command("STLS")
        self.sock = self._tls.wrap_socket(self.sock, server_hostname=self._server_hostname)
        self.file = self.sock.makefile("rb")
        self._tls_established = True

    def retrieve(self, number: int) -> bytes:
        """RETR: the message as it was sent (CRLF line ends, dots unstuffed)."""
        self.command(f"RETR {number}")
        lines: list[bytes] = []
        while True:
            line, _ = self._getline()
            if line == b".":
                lines.append(b"")
                return CRLF.join(lines)
            lines.append(line[1:] if line.startswith(b"..") else line)

    def retrieve_to(self, number: int, put: Callable[[bytes], Any]) -> None:
        """RETR, handed to `put` piece by piece as it comes, bytes as on the wire but for the
        stuffed dots: a message too big to hold whole, its lines as long as they may be."""
        self.command(f"RETR {number}")
        line_start = True
        while True:
            if time.monotonic() > self._until:
                raise TimeoutError("the server did not send the message in time")
            piece: bytes = self.file.readline(STREAM_PIECE)
            if not piece:
                raise poplib.error_proto("-ERR EOF")
            if line_start:
                if piece in (b".\r\n", b".\n"):
                    return
                if piece.startswith(b".."):
                    piece = piece[1:]
            put(piece)
            line_start = piece.endswith(b"\n")

    def listing(self) -> list[tuple[int, str, int]]:
        """(number, UIDL, size) of every message, in mailbox order."""
        sizes: dict[int, int] = {}
        for line in self.list()[1]:
            number, _, size = line.decode("ascii", "replace").partition(" ")
            sizes[int(number)] = int(size.split()[0]) if size.split() else 0
        messages = []
        for line in self.uidl()[1]:
            number, _, uidl = line.decode("ascii", "replace").partition(" ")
            messages.append((int(number), uidl.strip(), sizes.get(int(number), 0)))
        return messages


def _why(e: BaseException) -> str:
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"the server's certificate failed verification: {e.verify_message}"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "no answer in time"
    if isinstance(e, poplib.error_proto):
        return _answer(e)
    text = exc_string(e, stack=False)
    return text if str(e) else f"{text} (refused or unreachable)"


def _refused(e: poplib.error_proto) -> bool:
    """The server answered -ERR (rather than the connection failing)."""
    return bool(e.args) and isinstance(e.args[0], bytes) and e.args[0].startswith(b"-ERR")


def _answer(e: poplib.error_proto) -> str:
    arg = e.args[0] if e.args else ""
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)


# One poll at a time per mailbox in this process: an interface restarted for a new config
# polls only once its predecessor has sent QUIT (else both would run the same messages).
_MAILBOX_LOCKS: dict[tuple[str, int, str], threading.Lock] = {}
_MAILBOX_LOCKS_LOCK = threading.Lock()


def _mailbox_lock(host: str, port: int, username: str) -> threading.Lock:
    with _MAILBOX_LOCKS_LOCK:
        return _MAILBOX_LOCKS.setdefault((host, port, username), threading.Lock())


# --- the interface ----------------------------------------------------------------------------


class _Poll:
    """What one poll did: messages deleted, handler failures, messages left for later."""

    __slots__ = ("aside", "deleted", "failed", "handled", "left")

    def __init__(self) -> None:
        self.deleted = self.failed = self.left = 0
        self.handled: list[str] = []  # UIDLs whose handlers succeeded in this poll
        self.aside: list[str] = []  # UIDLs of the messages set aside in this poll


class _Run:
    """One handler run, in flight on a worker or a thread of `concurrency`."""

    __slots__ = ("number", "raw", "started", "uidl")

    def __init__(self, number: int, uidl: str, raw: bytes) -> None:
        self.number, self.uidl, self.raw = number, uidl, raw
        self.started = False


class Interface(interfaces.Interface):
    """A mailbox polled over POP3, each message a request; see the module."""

    protocol = "pop3"

    keys = interfaces.Interface.keys.extend(
        server_address=Key(None, address),  # (host, port): 110 for POP3 (and STLS), 995 for POP3S
        connect_timeout=Key(5.0, float),  # seconds to connect, log in, and for each short command's answer
        username=Key(None, str), password=Key(None, str),
        interval=Key(60.0, float),  # seconds between polls (a poll that took messages is followed at once)
        stls=Key(False, bool),  # STLS on a plain connection (RFC 2595); else TLS at once if ssl_ca_cert_file
        ssl_ca_cert_file=Key(None), ssl_key_cert_file=Key(None), ssl_ciphers=Key(None),
        ssl_server_hostname=Key(None), ssl_ignore_hostname=Key(False, bool),
        ssl_protocol=Key(None, note=ssl_protocol_ignored),
        max_failures=Key(5, int),  # handler runs that fail before the message is set aside
        failed_directory=Key(None),  # where messages set aside are saved (None: <cage>/pop3_failed/<name>)
        max_message_size=Key(MAX_MESSAGE_SIZE, int),  # bytes; a bigger message is set aside unread
        duplicate_window=Key(86400.0, float),  # seconds a handled message's UIDL keeps it from running again
        concurrency=Key(1, int),  # messages of one poll handled at once (1: one by one, in mailbox order)
    )

    def __init__(self, name: str, runtime: Runtime, config: dict[str, Any]) -> None:
        super().__init__(name, runtime, config)
        c, file = self.config, interface_file(name)
        if c["server_address"] is None:
            raise ConfigError(f"{file}: server_address must be (host, port) of the POP3 server")
        if not c["username"] or c["password"] is None:
            raise ConfigError(f"{file}: username and password must be given (the mailbox's login)")
        if c["interval"] <= 0 or c["connect_timeout"] <= 0 or c["duplicate_window"] <= 0:
            raise ConfigError(f"{file}: interval, connect_timeout and duplicate_window must be positive")
        if c["max_failures"] < 1 or c["max_message_size"] < 1:
            raise ConfigError(f"{file}: max_failures and max_message_size must be at least 1")
        limit = runtime.thread_count()
        if not 1 <= c["concurrency"] <= limit:
            raise ConfigError(f"{file}: concurrency must be 1 to {limit} (the cage's thread_count)")
        self.host, self.port = c["server_address"]
        self._retrieve_timeout = max(self.request_timeout, c["connect_timeout"])  # seconds for a message's RETR
        self.where = f"{'pop3s' if c['ssl_ca_cert_file'] and not c['stls'] else 'pop3'}://{self.host}:{self.port}"
        try:
            self._tls = client_context(c) if c["stls"] or c["ssl_ca_cert_file"] else None
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"{file}: the TLS keys cannot be used: {exc_string(e, stack=False)}") from None
        cage_dir = runtime.loader.cage_dir
        self.failed_directory = os.path.join(cage_dir, str(c["failed_directory"])) if c["failed_directory"] \
            else os.path.join(cage_dir, "pop3_failed", name)
        self._stopping = threading.Event()
        self._poller: threading.Thread | None = None
        self._session: Session | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._running: set[str] = set()  # UIDLs whose handler runs (it may go on past its deadline)
        self._running_lock = threading.Lock()
        self._outage = interfaces.Outage(name)
        self._aside_failed: set[str] = set()  # UIDLs that could not be set aside: said once
        self._unreadable: set[str] = set()  # UIDLs the server refused to RETR: said once

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.received = Received(self.runtime.state, f"pop3:{self.name}", self.config["duplicate_window"])
        if self.config["concurrency"] > 1:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.config["concurrency"],
                                                               thread_name_prefix=f"pop3:{self.name}")
        self._poller = threading.Thread(target=self._poll_loop, name=f"pop3:{self.name}", daemon=True)
        self._poller.start()
        log.message(f"interface {self.name} polls {self.where} as {self.config['username']} "
                    f"every {self.config['interval']:g}s")

    def cease(self) -> None:
        """No new messages: the poll under way finishes the handler runs it began, deletes
        what they succeeded with and sends QUIT."""
        self._stopping.set()

    def stop(self) -> None:
        self._stopping.set()
        if self._poller is not None:
            self._poller.join(self.config["connect_timeout"] * 2 + 1.0)
            if self._poller.is_alive():  # stuck on the network: its deletions are not committed
                session = self._session
                if session is not None:
                    session.close()
                self._poller.join(1.0)
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    # --- polling -----------------------------------------------------------------------------

    def _poll_loop(self) -> None:
        failures, swept = 0, time.monotonic()
        while not self._stopping.is_set():
            try:
                poll = self._poll()
            except ServerError as e:
                if self._stopping.is_set():
                    return  # the interface stopped it
                self._outage.begins(str(e), answered=e.answered, meanwhile="polling again with back-off")
                failures += 1
                cap = max(self.config["interval"], BACKOFF_MAX)
                self._stopping.wait(min(self.config["interval"] * 2 ** (failures - 1), cap))
                continue
            except Exception as e:  # a bug of ours: logged, and the next poll as usual
                log.error(f"interface {self.name}: the poll failed: {exc_string(e)}")
                poll = _Poll()
                poll.failed = 1
            else:
                failures = 0
                self._outage.ends(f"the mailbox at {self.where} can be reached again, messages are taken")
            if time.monotonic() - swept >= SWEEP_PERIOD:
                swept = time.monotonic()
                self._sweep()
            if poll.deleted and not poll.failed and not poll.left:
                continue  # more may have come meanwhile
            self._stopping.wait(self.config["interval"])

    def _poll(self) -> _Poll:
        lock = _mailbox_lock(self.host, self.port, self.config["username"])
        while not lock.acquire(timeout=0.1):
            if self._stopping.is_set():
                return _Poll()
        try:
            session = self._connect()
            try:
                poll = self._take_all(session)
                self._commit(session, poll)
                return poll
            except (OSError, poplib.error_proto, ssl.SSLError) as e:
                raise ServerError(f"the connection to {self.where} failed during the poll: {_why(e)}; "
                                  f"messages handled in it are deleted by the next one") from None
            finally:
                self._session = None
                session.close()
        finally:
            lock.release()

    def _connect(self) -> Session:
        c = self.config
        try:
            session = Session(self.host, self.port, timeout=c["connect_timeout"], tls=self._tls,
                              retrieve_timeout=self._retrieve_timeout,
                              implicit=self._tls is not None and not c["stls"],
                              server_hostname=c["ssl_server_hostname"] or self.host, max_line=c["max_message_size"])
        except (OSError, poplib.error_proto, ssl.SSLError) as e:
            raise ServerError(f"cannot connect to {self.where}: {_why(e)}") from None
        self._session = session
        try:
            session.bound(c["connect_timeout"])
            if c["stls"]:
                self._stls(session)
            self._login(session)
            session.pipelining = self._pipelining(session)
            session.bound(c["connect_timeout"])
            return session
        except BaseException as e:
            self._session = None
            session.close()
            if isinstance(e, (OSError, poplib.error_proto, ssl.SSLError)):  # not an answer: the link failed
                raise ServerError(f"the connection to {self.where} failed while logging in: {_why(e)}") from None
            raise

    def _stls(self, session: Session) -> None:
        try:
            session.start_tls()
        except poplib.error_proto as e:
            if not _refused(e):
                raise
            raise ServerError(f"{self.where} does not offer STLS: {_answer(e)}", answered=True) from None
        except (OSError, ssl.SSLError) as e:
            raise ServerError(f"STLS with {self.where} failed: {_why(e)}") from None

    @staticmethod
    def _pipelining(session: Session) -> bool:
        try:
            return "PIPELINING" in session.capa()
        except poplib.error_proto as e:
            if _refused(e):  # no CAPA (RFC 1939 only): no pipelining either
                return False
            raise

    def _login(self, session: Session) -> None:
        try:
            session.user(self.config["username"])
            session.pass_(self.config["password"])
        except poplib.error_proto as e:
            if not _refused(e):
                raise
            raise ServerError(f"{self.where} refused the login of {self.config['username']}: {_answer(e)}",
                              answered=True) from None

    def _take_all(self, session: Session) -> _Poll:
        """Every message waiting, in mailbox order (see the module)."""
        poll = _Poll()
        to_run = self._sort_out(session, poll)
        in_flight: dict[concurrent.futures.Future[str | None], _Run] = {}
        for i, (number, uidl, size, entry) in enumerate(to_run):
            if self._stopping.is_set():
                poll.left += len(to_run) - i
                break
            if size > self.config["max_message_size"]:
                self._set_aside_unread(session, number, uidl, size, poll)
                continue
            raw = self._retrieve(session, number, uidl)
            if raw is None:
                poll.left += 1
                continue
            run = _Run(number, uidl, raw)
            if entry is not None and entry.failures >= self.config["max_failures"]:
                self._set_aside(session, run, entry.last_error, entry.failures, poll)  # it was not, last time
                continue
            if self._pool is None:
                after = to_run[i + 1] if i + 1 < len(to_run) else None
                if after is not None and after[2] <= self.config["max_message_size"]:
                    session.prefetch(after[0])
                self._finish(session, run, self._run(run), poll)
                continue
            in_flight[self._pool.submit(self._run, run)] = run
            while len(in_flight) >= self.config["concurrency"]:
                self._finish_some(session, in_flight, poll)
        while in_flight:
            self._finish_some(session, in_flight, poll)
        return poll

    def _sort_out(self, session: Session, poll: _Poll) -> list[tuple[int, str, int, Entry | None]]:
        """The mailbox listed: messages handled before deleted, those whose handler still
        runs left; the others, (number, UIDL, size, what is known) in mailbox order, to be run."""
        messages = session.listing()
        known = self._lookup([uidl for _, uidl, _ in messages])
        with self._running_lock:
            running = set(self._running)
        to_run = []
        for number, uidl, size in messages:
            entry = known.get(uidl)
            if entry is not None and entry.handled:
                log.info(f"e-mail message {uidl} was handled before, deleted without running the handler again")
                self._delete(session, number, poll)
            elif uidl in running:
                poll.left += 1  # its handler still runs, past its deadline: not run twice at once
            else:
                to_run.append((number, uidl, size, entry))
        return to_run

    def _retrieve(self, session: Session, number: int, uidl: str) -> bytes | None:
        """RETR within the request's time; None if the server refused this one message (it
        stays, said once; the others are taken)."""
        session.bound(self._retrieve_timeout)
        try:
            raw = session.retrieve(number)
        except poplib.error_proto as e:
            if not _refused(e):
                raise
            if uidl not in self._unreadable:
                self._unreadable.add(uidl)
                log.warning(f"interface {self.name}: the server refuses to give e-mail message {uidl}: "
                            f"{_answer(e)}; it stays in the mailbox, the others are taken")
            return None
        self._unreadable.discard(uidl)
        return raw

    def _finish_some(self, session: Session, in_flight: dict[concurrent.futures.Future[str | None], _Run],
                     poll: _Poll) -> None:
        done, _ = concurrent.futures.wait(in_flight, return_when=concurrent.futures.FIRST_COMPLETED)
        for future in done:
            self._finish(session, in_flight.pop(future), future.result(), poll)

    def _commit(self, session: Session, poll: _Poll) -> None:
        """The marks of this poll fsynced, then QUIT: the server deletes what was marked DELE."""
        if poll.handled:
            try:
                self.received.mark_handled(poll.handled, durable=True)
            except Exception as e:
                log.error(f"interface {self.name}: the handled messages could not be recorded durably "
                          f"({exc_string(e, stack=False)})")
        session.finish()
        for uidl in poll.aside:  # deleted for good now: their failure counts are not needed
            self._forget(uidl)
        if session.refused:  # the messages stay; the next poll deletes them again, not run
            poll.deleted -= len(session.refused)
            log.warning(f"interface {self.name}: the server refused {len(session.refused)} deletion(s): "
                        f"{'; '.join(session.refused[:3])}")
        if poll.deleted:
            log.info(f"interface {self.name}: {poll.deleted} message(s) deleted from the mailbox")

    # --- one message -----------------------------------------------------------------------

    def _run(self, run: _Run) -> str | None:
        """The handler for one message: None if it succeeded, else why not; "" if that was not
        the message's fault (the cage is stopping, the deadline came while it was queued)."""
        try:
            message, fields = parse(run.raw)
        except Exception as e:  # the parser is lenient; should it raise, the message cannot be handled
            return f"the message cannot be parsed: {exc_string(e, stack=False)}"
        subject = fields["subject"] or "(no subject)"
        sender = fields["from"][1] or "<>"
        description = f"e-mail \"{subject[:100]}\" from {sender}"
        request_fields = {"message_id": run.uidl, "message": message, **fields}
        return interfaces.run_message(self, description, run, self._handle, run, request_fields,
                                      again="by a later poll")

    def _handle(self, run: _Run, fields: dict[str, Any]) -> None:
        """On the worker: the handler, its UIDL kept in `_running` while it runs (a later poll
        leaves the message alone meanwhile)."""
        with self._running_lock:
            self._running.add(run.uidl)
        run.started = True
        try:
            self.runtime.lifecycle.handle(self.handler, "process_request", (fields, {}))
        finally:
            with self._running_lock:
                self._running.discard(run.uidl)

    def _finish(self, session: Session, run: _Run, error: str | None, poll: _Poll) -> None:
        """After the handler: marked and deleted, or its failure counted (and at the limit, set aside)."""
        if error is None:
            try:
                self.received.mark_handled([run.uidl])
            except Exception as e:  # deleted all the same: a repeat needs the cage to die before QUIT
                log.error(f"interface {self.name}: e-mail message {run.uidl} handled but not recorded "
                          f"({exc_string(e, stack=False)})")
            poll.handled.append(run.uidl)
            self._delete(session, run.number, poll)
            return
        if error == "":
            poll.left += 1
            return
        poll.failed += 1
        failures = self._count_failure(run.uidl, error)
        if failures >= self.config["max_failures"]:
            self._set_aside(session, run, error, failures, poll)

    def _delete(self, session: Session, number: int, poll: _Poll) -> None:
        session.delete(number)
        poll.deleted += 1

    def _lookup(self, uidls: list[str]) -> dict[str, Entry]:
        try:
            return self.received.lookup_many(uidls)
        except Exception as e:  # the state cannot be read: the handlers run, as without the window
            log.error(f"interface {self.name}: cannot tell which messages were handled before: "
                      f"{exc_string(e, stack=False)}")
            return {}

    def _count_failure(self, uidl: str, error: str) -> int:
        try:
            return self.received.failed(uidl, error[:MAX_ERROR_TEXT])
        except Exception as e:
            log.error(f"interface {self.name}: the failure of e-mail message {uidl} could not be counted: "
                      f"{exc_string(e, stack=False)}")
            return 0

    # --- setting messages aside ------------------------------------------------------------

    def _set_aside(self, session: Session, run: _Run, error: str, failures: int, poll: _Poll) -> None:
        """Save the message under failed_directory (fsynced), delete it, say so once."""
        path = self._save(run.uidl, lambda put: put(run.raw))
        if path is None:
            return
        self._delete(session, run.number, poll)
        log.error(f"interface {self.name}: e-mail message {run.uidl} set aside after {failures} failures, "
                  f"saved as {path} and deleted from the mailbox; the last error: {error}")
        poll.aside.append(run.uidl)

    def _set_aside_unread(self, session: Session, number: int, uidl: str, size: int, poll: _Poll) -> None:
        """A message bigger than max_message_size: saved as it comes, never held whole."""
        def write(put: Callable[[bytes], Any]) -> None:
            session.bound(self._retrieve_timeout)
            session.retrieve_to(number, put)

        path = self._save(uidl, write)
        if path is None:
            return
        self._delete(session, number, poll)
        log.error(f"interface {self.name}: e-mail message {uidl} of {size} bytes is bigger than "
                  f"max_message_size ({self.config['max_message_size']}): saved as {path} and deleted "
                  f"from the mailbox, the handler not run")

    def _save(self, uidl: str, write: Callable[[Callable[[bytes], Any]], Any]) -> str | None:
        """<failed_directory>/<uidl>.eml, its bytes given by `write(put)`, fsynced (file and
        folder); None if the disk would not (the message then stays in the mailbox, said once).
        An error of the connection while `write` reads the message goes up: the poll fails."""
        folder = self.failed_directory
        name = re.sub(r"[^A-Za-z0-9._-]", "_", uidl)[:200] or "message"
        temp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
        try:
            _disk(os.makedirs, folder, exist_ok=True)
            file = _disk(open, temp, "wb")
            with file:
                write(lambda data: _disk(file.write, data))
                _disk(file.flush)
                _disk(os.fsync, file.fileno())
            path = _free_name(folder, name)
            _disk(os.rename, temp, path)
            _disk(_fsync_folder, folder)
        except _DiskError as e:
            _remove(temp)
            if uidl not in self._aside_failed:
                self._aside_failed.add(uidl)
                log.error(f"interface {self.name}: e-mail message {uidl} cannot be saved under {folder} "
                          f"({exc_string(e.__cause__ or e, stack=False)}), it stays in the mailbox")
            return None
        except BaseException:
            _remove(temp)
            raise
        self._aside_failed.discard(uidl)
        return path

    def _forget(self, uidl: str) -> None:
        try:
            self.received.forget(uidl)
        except Exception:
            pass  # it ages out of the window

    def _sweep(self) -> None:
        try:
            self.received.forget_old()
        except Exception as e:
            log.warning(f"interface {self.name}: old message ids could not be dropped: {exc_string(e, stack=False)}")


def _free_name(folder: str, name: str) -> str:
    """<name>.eml, or <name>-2.eml ... if a message with the same UIDL was set aside before."""
    path = os.path.join(folder, f"{name}.eml")
    n = 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(folder, f"{name}-{n}.eml")
    return path


class _DiskError(Exception):
    """Saving a message failed on the disk (not on the connection)."""


def _disk(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    try:
        return fn(*args, **kwargs)
    except OSError as e:
        raise _DiskError(str(e)) from e


def _fsync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
