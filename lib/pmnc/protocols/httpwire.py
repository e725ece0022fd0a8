"""HTTP/1.x on the wire, without sockets: bytes in → requests out, response dicts → bytes.

`RequestParser` wraps httptools and enforces our limits and the original's
rules; it knows no socket, clock or config (the caller passes `now` and
`Limits`). Rules, as the original's unless noted:
- header names lower-cased, the last duplicate wins (but duplicate
  Transfer-Encoding and Content-Encoding lines are joined, so a second line
  cannot hide the first from the rules below); the method upper-case
- 405 for a method not allowed, 505 for a version other than 1.0/1.1,
  415 for a Content-Encoding other than identity
- limits: URL (414), header block (431), body (413); anything unparsable 400
- chunked request bodies are accepted (the original refused them); their
  trailer, and their framing beyond CHUNK_FRAMING bytes a chunk (chunk
  extensions), count toward the header limit (431)
- a request asking for a protocol upgrade is served as plain HTTP/1.1 (RFC
  9110 7.8 lets a server ignore Upgrade); one with a body is refused (400),
  as httptools would not read that body
- keep-alive follows HTTP/1.1 defaults (the original wanted it explicit)
- lines must end in CRLF (the original took bare LF too); a chunked body's
  trailer never rewrites the headers
- `Authorization: Basic` gives the request its `credentials` (400 when
  malformed); other schemes pass through (the original answered 501)
Every error response closes the connection.

`finish_response` gzips a response body when its type matches the interface's
patterns and the request's Accept-Encoding allows it.
"""

from __future__ import annotations

import base64
import gzip
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import httptools

from pmnc.errors import ProtocolError

_HEADER_NAME = re.compile(r"[A-Za-z0-9_-]+")
_REASONS = {s.value: s.phrase for s in HTTPStatus}
# Smaller bodies are sent as they are: gzip adds an 18-byte frame, so a body of a
# few dozen bytes shrinks little or even grows, and is not worth the CPU either way.
GZIP_MIN_SIZE = 256
GZIP_LEVEL = 6  # zlib's default: nearly the ratio of level 9 (gzip.compress's default) at a fraction of its time
# A chunk's size line and the CRLF after its data take at most some 12 bytes; what is beyond
# (extensions, padding) counts toward max_header_size, lest a request be endless framing.
CHUNK_FRAMING = 16
# Headers whose every line matters: with "last wins", `gzip` then `chunked` would pass as `chunked`.
_JOINED = frozenset({"transfer-encoding", "content-encoding"})
# What on_headers_complete looks at beyond the method and the version: most requests have none of it.
_LOOKED_AT = frozenset({"content-encoding", "transfer-encoding", "content-length", "authorization", "expect"})
# A response field value (RFC 9110 5.5): tab, visible ASCII and obs-text; no control character
# (C0, DEL, C1 - U+0085 NEL among them - which parsers may take for line ends or string ends).
_FIELD_VALUE = re.compile("[\t\x20-\x7e\xa0-\U0010ffff]*")


class HttpError(ProtocolError):
    """A request that must be refused with `status` and the connection closed."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message or _REASONS.get(status, ""))
        self.status = status
        self.parsed: list[HttpRequest | Continue] = []  # complete requests read before the bad one


class ResponseError(ProtocolError):
    """The handler's response breaks a rule; the client gets a 500."""


@dataclass(frozen=True)
class Limits:
    max_url_size: int = 8192
    max_header_size: int = 65536
    max_body_size: int = 1048576
    allowed_methods: frozenset[str] = frozenset({"GET", "POST"})


@dataclass(slots=True)
class HttpRequest:
    method: str
    url: str
    version: str
    headers: dict[str, str]
    content: bytes
    keep_alive: bool
    started: float  # when its first byte arrived, in the caller's clock
    credentials: tuple[str, str] | None = None  # (username, password) of Authorization: Basic


@dataclass
class Continue:
    """The client awaits `100 Continue` before it sends the body."""

    data: bytes = b"HTTP/1.1 100 Continue\r\n\r\n"


class RequestParser:
    """Feed it bytes with `feed(data, now)`; it returns complete requests. The request being
    received is kept in the parser's own fields (`_url`, `_headers`, ...): no object per request
    until it is complete."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._max_url, self._max_head = limits.max_url_size, limits.max_header_size
        self._max_body = limits.max_body_size
        self._parser = httptools.HttpRequestParser(self)
        self.receiving = False  # a request has begun and is not yet complete
        self.in_head = False  # a request has begun and its head (request line and headers) is not yet complete
        self._messages = 0  # requests begun: tells whether a feed ended inside the chunked body it began in
        self._started = 0.0
        self._method = ""
        self._version = ""
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: bytes | bytearray = b""  # the one piece of most bodies; a bytearray if more came
        self._credentials: tuple[str, str] | None = None
        self._head_size = 0  # of the headers and the trailer
        self._framing = 0  # chunk framing beyond CHUNK_FRAMING a chunk (feeds inside the body only)
        self._unfinished_head = 0  # bytes fed while a header block stays incomplete
        self._begun = False
        self._chunked = False  # the message being read has a chunked body
        self._fed_body = self._fed_chunks = self._fed_trailer = 0  # of the current feed
        self._events: list[HttpRequest | Continue] = []
        self._now = 0.0

    @property
    def started(self) -> float | None:
        """When the request being received began (its `now`), None between requests."""
        return self._started if self.receiving else None

    def feed(self, data: bytes, now: float) -> list[HttpRequest | Continue]:
        """Complete requests in the order they came; HttpError for a bad one,
        carrying in `.parsed` those that came before it."""
        self._now = now
        head_was_open = self.in_head
        in_body = self._messages if self._chunked else None
        self._begun = False
        if in_body is not None:
            self._fed_body = self._fed_chunks = self._fed_trailer = 0
        try:
            try:
                self._parser.feed_data(data)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:
                self._parse_on(data, e)
            if self.in_head and head_was_open and not self._begun:
                # httptools buffers an unfinished header line: bound what it may hold
                self._unfinished_head += len(data)
                if self._unfinished_head > self._max_head + self._max_url:
                    raise HttpError(431)
            if in_body is not None and self.receiving and self._messages == in_body:
                # all of this feed was inside one chunked body: what is not data is framing
                # (a feed where the body begins or ends is bounded by its own length)
                self._count_head(framing=len(data) - self._fed_body - self._fed_trailer
                                 - CHUNK_FRAMING * self._fed_chunks)
        except HttpError as e:
            e.parsed, self._events = self._events, []
            raise
        events, self._events = self._events, []
        return events

    def _parse_on(self, data: bytes, stop: Exception) -> None:
        """httptools stopped with `stop` in `data`: a refusal, or after a request asking for a
        protocol upgrade (it is ready for more), which is served as HTTP/1.1, and what follows it
        is read as HTTP/1.1."""
        while True:
            if isinstance(stop, httptools.HttpParserCallbackError):
                if isinstance(stop.__context__, HttpError):
                    raise stop.__context__ from None
                raise HttpError(400) from None
            if not isinstance(stop, httptools.HttpParserUpgrade):
                raise HttpError(400, str(stop)) from None
            data = data[stop.args[0]:]
            if not data:
                return
            try:
                self._parser.feed_data(data)
                return
            except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:
                stop = e

    def _count_head(self, size: int = 0, framing: int = 0) -> None:
        """Headers, trailer and chunk framing beyond CHUNK_FRAMING a chunk share max_header_size.
        A chunk line split between feeds leaves a few bytes in one and a whole allowance in the
        next: the framing count may carry one chunk's allowance, no more."""
        self._head_size += size
        self._framing = max(self._framing + framing, -CHUNK_FRAMING)
        if self._head_size + max(self._framing, 0) > self._max_head:
            raise HttpError(431)

    # --- httptools callbacks ---------------------------------------------------

    def on_message_begin(self) -> None:
        self.receiving = self.in_head = True
        self._messages += 1
        self._started = self._now
        self._url = b""
        self._headers = {}
        self._body = b""
        self._credentials = None
        self._head_size = self._framing = 0
        self._begun = True  # a header block that began in this feed is not counted as unfinished
        self._unfinished_head = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._max_url:
            raise HttpError(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + 4
        if not self.in_head:
            self._count_head(size)
            self._fed_trailer += size
            return  # a chunked body's trailer: it must not rewrite the headers
        self._head_size += size  # no chunk framing yet: the head's bytes alone count
        if self._head_size > self._max_head:
            raise HttpError(431)
        headers = self._headers
        key = name.decode("latin-1").lower()
        if key in _JOINED and key in headers:
            headers[key] = f"{headers[key]}, {value.decode('latin-1')}"  # as RFC 9110 5.3 combines field lines
        else:
            headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.in_head = False
        method = self._method = self._parser.get_method().decode("ascii", "replace").upper()
        if method not in self.limits.allowed_methods:
            raise HttpError(405)
        if "connection" not in self._headers and self._parser.should_keep_alive():
            self._version = "1.1"  # the only version llhttp takes whose default is keep-alive (and no call to
            # get_http_version, which formats a string: ~160 ns, against ~20 for should_keep_alive)
        elif (version := self._parser.get_http_version()) in ("1.0", "1.1"):
            self._version = version
        else:
            raise HttpError(505)
        if not _LOOKED_AT.isdisjoint(self._headers):
            self._look_at_headers()

    def _look_at_headers(self) -> None:
        """The headers that may refuse a request or change how its body is read."""
        headers = self._headers
        if headers.get("content-encoding", "identity").strip().lower() != "identity":
            raise HttpError(415, "request content encodings are not supported")
        coding = headers.get("transfer-encoding")
        if coding is not None and coding.strip().lower() != "chunked":
            raise HttpError(501, "transfer codings other than chunked are not supported")
        length = headers.get("content-length", "0")
        if not length.isdigit():
            raise HttpError(400, "invalid content-length")
        if self._parser.should_upgrade() and (coding is not None or int(length)):
            raise HttpError(400, "a request asking for a protocol upgrade cannot have a body here")
        self._chunked = coding is not None
        if int(length) > self._max_body:
            raise HttpError(413)
        if "authorization" in headers:
            self._credentials = basic_credentials(headers["authorization"])
        if headers.get("expect", "").lower() == "100-continue":
            self._events.append(Continue())

    def on_body(self, body: bytes) -> None:
        if not self._body:
            self._body = body
        else:  # appended in place: a body that trickles in is not copied whole at every piece
            if type(self._body) is bytes:
                self._body = bytearray(self._body)
            self._body += body
        self._fed_body += len(body)
        if len(self._body) > self._max_body:
            raise HttpError(413)

    def on_chunk_header(self) -> None:
        self._fed_chunks += 1

    def on_message_complete(self) -> None:
        self.receiving = False
        headers = self._headers
        if self._chunked:
            self._chunked = False
            headers.pop("transfer-encoding", None)
        body = self._body if type(self._body) is bytes else bytes(self._body)
        headers["content-length"] = str(len(body))
        parser = self._parser
        self._events.append(HttpRequest(self._method, self._url.decode("latin-1"), self._version,
                                        headers, body, parser.should_keep_alive(), self._started, self._credentials))


def basic_credentials(authorization: str) -> tuple[str, str] | None:
    """(username, password) of an Authorization value of the Basic scheme (RFC 7617),
    None for another scheme; HttpError 400 when it is malformed."""
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8", "replace")
    except ValueError:  # not base64, or not ASCII at all
        raise HttpError(400, "malformed Basic authorization: not base64") from None
    username, colon, password = decoded.partition(":")
    if not colon:
        raise HttpError(400, "malformed Basic authorization: no colon between username and password")
    return username, password


# --- responses -------------------------------------------------------------------


def new_response(keep_alive: bool) -> dict[str, Any]:
    """The response dict a handler starts with, as the original's."""
    return {"status_code": 200, "content": b"",
            "headers": {"content-type": "application/octet-stream",
                        "connection": "keep-alive" if keep_alive else "close"}}


def finish_response(response: dict[str, Any], keep_alive: bool, encoding: str,
                    gzip_types: Sequence[re.Pattern[str]] = (), accept_encoding: str = "") -> tuple[bytes, bool]:
    """Check the handler's response against the rules; return (wire bytes, keep-alive).

    The body is gzipped when its content type fully matches one of `gzip_types`
    and `accept_encoding` (the request's Accept-Encoding) allows it.
    """
    status: Any = response.get("status_code")
    headers: Any = response.get("headers")
    content: Any = response.get("content")
    if type(status) is int and type(headers) is dict and not gzip_types:
        # A handler answers with the same few heads again and again: each is checked once.
        try:
            known = _FINISHED.get((status, tuple(headers.items()), type(content), not content, keep_alive, encoding))
        except TypeError:  # an unhashable name or value: checked below, and refused
            known = None
        if known is not None:
            head, keep_alive = known
            body = content.encode(encoding, "replace") if type(content) is str else bytes(content)
            return b"".join((head, str(len(body)).encode(), _KEEP_ALIVE if keep_alive else _CLOSE, body)), keep_alive
    checked, body, keep = _checked_response(response, keep_alive, encoding, gzip_types, accept_encoding)
    head = _head(status, tuple(checked.items()))
    if (type(status) is int and type(headers) is dict and not gzip_types and len(_FINISHED) < _REMEMBERED
            and all(type(n) is str and type(v) is str and n.lower() != "content-length" for n, v in headers.items())):
        _FINISHED[(status, tuple(headers.items()), type(content), not content, keep_alive, encoding)] = (head, keep)
    return b"".join((head, str(len(body)).encode(), _KEEP_ALIVE if keep else _CLOSE, body)), keep


def _checked_response(response: dict[str, Any], keep_alive: bool, encoding: str, gzip_types: Sequence[re.Pattern[str]],
                      accept_encoding: str) -> tuple[dict[str, str], bytes, bool]:
    """The response's headers as they go out, its body, and whether the connection is kept alive;
    ResponseError if it breaks a rule."""
    status = response.get("status_code")
    if not isinstance(status, int) or isinstance(status, bool) or status not in _REASONS or status < 200:
        raise ResponseError(f"response status code {status!r} is not a final HTTP status")
    headers = _checked_headers(response.get("headers"))
    if "transfer-encoding" in headers:
        raise ResponseError("response transfer-encoding is the server's business, not the handler's")
    body = _encoded_content(response.get("content"), headers, encoding)
    if body and status in (204, 304):
        raise ResponseError(f"response with status {status} cannot have content")
    length = headers.pop("content-length", None)
    if length is not None and length != str(len(body)):
        raise ResponseError(f"response content-length {length} does not match the content of {len(body)} bytes")
    if not body:
        headers.pop("content-type", None)
    elif gzip_types:
        body = _gzipped(status, headers, body, gzip_types, accept_encoding)
    wanted = headers.pop("connection", "keep-alive" if keep_alive else "close").lower()
    if wanted == "keep-alive" and not keep_alive:
        raise ResponseError("response cannot keep alive a connection the server is closing")
    keep_alive = wanted == "keep-alive" and status < 400
    headers.setdefault("cache-control", "no-cache")
    if headers["cache-control"] == "no-cache":
        headers.setdefault("pragma", "no-cache")
    return headers, body, keep_alive


def _gzipped(status: int, headers: dict[str, str], body: bytes, gzip_types: Sequence[re.Pattern[str]],
             accept_encoding: str) -> bytes:
    """The body to send, gzipped if it may be; headers updated to match."""
    if (len(body) < GZIP_MIN_SIZE or status == 206 or "content-range" in headers
            or "content-encoding" in headers):  # a part of a body, or one the handler has encoded already
        return body
    content_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    if not any(pattern.fullmatch(content_type) for pattern in gzip_types):
        return body
    # the body sent now depends on Accept-Encoding, compressed or not: caches must know
    vary = headers.get("vary", "")
    if not {token.strip().lower() for token in vary.split(",")} & {"*", "accept-encoding"}:
        headers["vary"] = f"{vary}, Accept-Encoding" if vary.strip() else "Accept-Encoding"
    if not accepts_gzip(accept_encoding):
        return body
    headers["content-encoding"] = "gzip"
    return gzip.compress(body, GZIP_LEVEL, mtime=0)


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding value allows gzip: gzip (or x-gzip) with q > 0,
    or, when gzip is not named, `*` with q > 0. No header, no gzip."""
    gzip_q: float | None = None
    star_q: float | None = None
    for item in accept_encoding.split(","):
        coding, *parameters = (part.strip() for part in item.split(";"))
        q = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:  # nan and nonsense included
                    q = 0.0
        coding = coding.lower()
        if coding in ("gzip", "x-gzip"):
            gzip_q = max(q, gzip_q or 0.0)
        elif coding == "*":
            star_q = max(q, star_q or 0.0)
    if gzip_q is not None:
        return gzip_q > 0.0
    return star_q is not None and star_q > 0.0


def _checked_headers(headers: Any) -> dict[str, str]:
    """The handler's headers checked, their names lower-cased: a new dict, the caller's to change."""
    if not isinstance(headers, dict):
        raise ResponseError("response headers must be a dict")
    items = tuple(headers.items())
    try:
        known = _CHECKED.get(items)
    except TypeError:  # an unhashable name or value: checked below, and refused
        known = None
    if known is not None:
        return dict(known)
    checked = {}
    plain = True  # only exact str are remembered: a subclass may hash and compare as it likes
    for name, value in items:
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise ResponseError(f"response header name {name!r} is invalid")
        if not isinstance(value, str) or not _FIELD_VALUE.fullmatch(value):
            raise ResponseError(f"response header {name} must be a one-line str without control characters")
        plain = plain and type(name) is str and type(value) is str
        checked[name.lower()] = value
    if plain and len(_CHECKED) < _REMEMBERED:
        _CHECKED[items] = dict(checked)
    return checked


# A handler sends the same few header sets again and again: each is checked, and its head
# rendered, once. Bounded: handlers that vary their headers (cookies, ETags) fill it, and
# then they are checked and rendered every time, as before.
_REMEMBERED = 256
_CHECKED: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
_HEADS: dict[tuple[int, tuple[tuple[str, str], ...]], bytes] = {}
# (status, the handler's header items, the content's type, no content, keep-alive, encoding)
# → (the head up to Content-Length's value, keep-alive): what finish_response decided for them.
_FINISHED: dict[tuple[Any, ...], tuple[bytes, bool]] = {}


def _encoded_content(content: Any, headers: dict[str, str], encoding: str) -> bytes:
    if isinstance(content, str):
        content_type = headers.get("content-type", "")
        if not content_type.lower().startswith("text/"):
            raise ResponseError(f"response content is str, but its content-type {content_type!r} is not text/*")
        if "charset=" not in content_type.lower():
            headers["content-type"] = f"{content_type}; charset={encoding}"
        return content.encode(encoding, "replace")
    if isinstance(content, (bytes, bytearray, memoryview)):
        return bytes(content)
    raise ResponseError(f"response content must be bytes or str, not {type(content).__name__}")


def render(status: int, headers: Iterable[tuple[str, str]], body: bytes, keep_alive: bool) -> bytes:
    head = _head(status, tuple(headers))
    return b"".join((head, str(len(body)).encode(), _KEEP_ALIVE if keep_alive else _CLOSE, body))


def _head(status: int, headers: tuple[tuple[str, str], ...]) -> bytes:
    """The status line and the headers, up to the value of Content-Length; remembered."""
    key = (status, headers)
    head = _HEADS.get(key)
    if head is None:
        head = _render_head(status, headers)
        if len(_HEADS) < _REMEMBERED and all(type(n) is str and type(v) is str for n, v in headers):
            _HEADS[key] = head
    return head


_KEEP_ALIVE, _CLOSE = b"\r\nConnection: keep-alive\r\n\r\n", b"\r\nConnection: close\r\n\r\n"


def _render_head(status: int, headers: tuple[tuple[str, str], ...]) -> bytes:
    """The status line and the headers, up to the value of Content-Length."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}"]
    for name, value in headers:  # a loop, not a generator: one response has several headers
        lines.append(f"{_title(name)}: {value}")
    lines.append("Content-Length: ")
    return "\r\n".join(lines).encode("latin-1", "replace")


def error_response(status: int, text: str = "") -> bytes:
    """A short text/plain answer that closes the connection."""
    body = (text or _REASONS.get(status, "")).encode("utf-8", "replace")
    headers = [("content-type", "text/plain; charset=utf-8"), ("cache-control", "no-cache")]
    return render(status, headers, body, keep_alive=False)


_TITLES: dict[str, str] = {}  # header names recur: title-case each once


def _title(name: str) -> str:
    title = _TITLES.get(name)
    if title is None:
        title = "-".join(part.capitalize() for part in name.split("-"))
        if len(_TITLES) < 1024:
            _TITLES[name] = title
    return title
