"""HTTP/1.x on the wire without sockets: byte strings in, events out; response dicts in, bytes out."""

from __future__ import annotations

import itertools
from typing import Any

import httptools
import pytest
from conftest import mutate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pmnc.protocols.httpwire import (
    Continue,
    HttpError,
    HttpRequest,
    Limits,
    RequestParser,
    ResponseError,
    error_response,
    finish_response,
    new_response,
)

DEFAULT = Limits()
SMALL = Limits(max_url_size=64, max_header_size=256, max_body_size=100)


def parse(data: bytes, limits: Limits = DEFAULT, now: float = 1.0) -> list[HttpRequest | Continue]:
    return RequestParser(limits).feed(data, now)


def parse_split(pieces: list[bytes], limits: Limits = DEFAULT, now: float = 1.0) -> list[HttpRequest | Continue]:
    parser = RequestParser(limits)
    events: list[HttpRequest | Continue] = []
    for piece in pieces:
        events += parser.feed(piece, now)
    return events


def bytewise(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


def refusal(pieces: list[bytes], limits: Limits = DEFAULT) -> int:
    """The status of the HttpError the parser raises on `pieces`, fed one after another."""
    parser = RequestParser(limits)
    with pytest.raises(HttpError) as info:
        for piece in pieces:
            parser.feed(piece, 1.0)
    return info.value.status


def only_request(events: list[HttpRequest | Continue]) -> HttpRequest:
    assert len(events) == 1
    assert isinstance(events[0], HttpRequest)
    return events[0]


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


# --- requests ------------------------------------------------------------------------


def test_simple_get() -> None:
    request = only_request(parse(b"GET /path?x=1&y=%20 HTTP/1.1\r\nHost: example.com\r\n\r\n", now=12.5))
    assert request == HttpRequest(method="GET", url="/path?x=1&y=%20", version="1.1",
                                  headers={"host": "example.com", "content-length": "0"},
                                  content=b"", keep_alive=True, started=12.5)


def test_header_names_lower_cased_and_the_last_duplicate_wins() -> None:
    request = only_request(parse(b"GET / HTTP/1.1\r\nX-Custom-Thing: first\r\nACCEPT: */*\r\n"
                                 b"x-custom-thing: second\r\nX-CUSTOM-THING: third\r\n\r\n"))
    assert request.headers == {"x-custom-thing": "third", "accept": "*/*", "content-length": "0"}


def test_header_values_keep_their_bytes_as_latin1() -> None:
    request = only_request(parse(b"GET / HTTP/1.1\r\nX-Name: caf\xe9\r\n\r\n"))
    assert request.headers["x-name"] == "caf\xe9"


def test_method_is_upper_case() -> None:
    assert only_request(parse(b"POST / HTTP/1.1\r\n\r\n")).method == "POST"
    assert only_request(parse(b"GET / HTTP/1.0\r\n\r\n")).method == "GET"


def test_post_body_by_content_length() -> None:
    request = only_request(parse(b"POST /submit HTTP/1.1\r\nContent-Type: text/plain\r\n"
                                 b"Content-Length: 11\r\n\r\nhello world"))
    assert (request.method, request.url, request.content) == ("POST", "/submit", b"hello world")
    assert request.headers["content-length"] == "11"


def test_content_length_always_set() -> None:
    assert only_request(parse(b"GET / HTTP/1.1\r\n\r\n")).headers["content-length"] == "0"
    assert only_request(parse(b"GET / HTTP/1.0\r\n\r\n")).headers["content-length"] == "0"


def test_body_bytes_are_kept_as_they_are() -> None:
    body = bytes(range(256)) * 3
    request = only_request(parse(b"POST / HTTP/1.1\r\nContent-Length: 768\r\n\r\n" + body))
    assert request.content == body


def test_chunked_body_is_dechunked() -> None:
    data = (b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunked(b"hello", b", ", b"chunked world"))
    request = only_request(parse(data))
    assert request.content == b"hello, chunked world"
    assert request.headers["content-length"] == "20"
    assert "transfer-encoding" not in request.headers
    assert only_request(parse_split(bytewise(data))) == request


def test_chunked_body_with_extension() -> None:
    data = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;name=value\r\nabc\r\n0\r\n\r\n"
    assert only_request(parse(data)).content == b"abc"


def test_pipelined_requests_come_out_in_order() -> None:
    data = (b"GET /first HTTP/1.1\r\n\r\n"
            b"POST /second HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
            b"POST /third HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"xy", b"z")
            + b"GET /fourth HTTP/1.1\r\nConnection: close\r\n\r\n")
    events = parse(data)
    assert [(e.method, e.url, e.content, e.keep_alive) for e in events if isinstance(e, HttpRequest)] == [
        ("GET", "/first", b"", True), ("POST", "/second", b"abc", True),
        ("POST", "/third", b"xyz", True), ("GET", "/fourth", b"", False)]
    assert len(events) == 4


def test_byte_by_byte_gives_the_same_requests() -> None:
    data = (b"POST /a?b=c HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 5\r\n\r\n12345"
            b"GET /next HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    whole = parse(data)
    assert len(whole) == 2
    assert parse_split(bytewise(data)) == whole


def test_started_is_when_the_first_byte_arrived() -> None:
    parser = RequestParser(Limits())
    assert not parser.receiving
    assert parser.feed(b"GE", 5.0) == []
    assert parser.receiving
    events = parser.feed(b"T / HTTP/1.1\r\n\r\nPOST /2 HTTP/1.1\r\nContent-", 6.0)
    assert [(e.url, e.started) for e in events if isinstance(e, HttpRequest)] == [("/", 5.0)]
    assert parser.receiving
    events = parser.feed(b"Length: 1\r\n\r\nx", 7.0)
    assert [(e.url, e.started) for e in events if isinstance(e, HttpRequest)] == [("/2", 6.0)]
    assert not parser.receiving


@pytest.mark.parametrize(("head", "keep_alive"), [
    (b"GET / HTTP/1.1\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
])
def test_keep_alive_follows_http_defaults(head: bytes, keep_alive: bool) -> None:
    assert only_request(parse(head)).keep_alive is keep_alive


def test_expect_100_continue_yields_continue_before_the_body() -> None:
    parser = RequestParser(Limits())
    events = parser.feed(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n", 1.0)
    assert events == [Continue()]
    assert events[0].data == b"HTTP/1.1 100 Continue\r\n\r\n"
    request = only_request(parser.feed(b"abc", 1.0))
    assert request.content == b"abc"


def test_no_continue_without_expect() -> None:
    events = parse(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n")
    assert events == []


def test_other_allowed_methods_can_be_configured() -> None:
    limits = Limits(allowed_methods=frozenset({"PUT", "DELETE"}))
    assert only_request(parse(b"PUT /x HTTP/1.1\r\nContent-Length: 1\r\n\r\nz", limits)).method == "PUT"
    assert refusal([b"GET / HTTP/1.1\r\n\r\n"], limits) == 405


def test_identity_content_encoding_is_accepted() -> None:
    request = only_request(parse(b"POST / HTTP/1.1\r\nContent-Encoding: identity\r\nContent-Length: 1\r\n\r\nx"))
    assert request.content == b"x"


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "status"), [
    (b"PUT / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
    (b"DELETE /x HTTP/1.1\r\n\r\n", 405),
    (b"HEAD / HTTP/1.1\r\n\r\n", 405),
    (b"OPTIONS * HTTP/1.1\r\n\r\n", 405),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"GET / HTTP/0.9\r\n\r\n", 505),
    (b"GET /\r\n\r\n", 505),
    (b"POST / HTTP/1.1\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\nxx", 415),
    (b"POST / HTTP/1.1\r\nContent-Encoding: deflate\r\nContent-Length: 0\r\n\r\n", 415),
    (b"garbage\r\n\r\n", 400),
    (b"\x00\x01\x02\x03 junk\r\n\r\n", 400),
    (b"GET / FTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nBad Header Name: x\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400),
])
def test_refusals(data: bytes, status: int) -> None:
    assert refusal([data]) == status
    assert refusal(bytewise(data)) == status


def test_refusal_carries_a_message() -> None:
    with pytest.raises(HttpError) as info:
        parse(b"PUT / HTTP/1.1\r\n\r\n")
    assert str(info.value) == "Method Not Allowed"


def test_414_url_too_long() -> None:
    url = b"/" + b"a" * 64
    assert refusal([b"GET " + url + b" HTTP/1.1\r\n\r\n"], SMALL) == 414
    assert refusal(bytewise(b"GET " + url + b" HTTP/1.1\r\n\r\n"), SMALL) == 414
    # the limit itself is fine
    assert only_request(parse(b"GET " + url[:64] + b" HTTP/1.1\r\n\r\n", SMALL)).url == url[:64].decode()


def test_414_before_the_request_line_ends() -> None:
    """A URL that keeps coming is refused while it grows, not when (if ever) it ends."""
    assert refusal([b"GET /", b"b" * 100], SMALL) == 414


def test_431_one_big_header_in_one_feed() -> None:
    assert refusal([b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 300 + b"\r\n\r\n"], SMALL) == 431


def test_431_many_small_headers() -> None:
    headers = b"".join(b"X-H%d: value\r\n" % i for i in range(40))
    assert refusal([b"GET / HTTP/1.1\r\n" + headers + b"\r\n"], SMALL) == 431


def test_431_header_trickled_without_end() -> None:
    """A header line that never ends is refused once it outgrows the limits, byte by byte."""
    assert refusal([b"GET / HTTP/1.1\r\nX-Big: "] + [b"v"] * 1000, SMALL) == 431


def test_431_headers_trickled_line_by_line() -> None:
    lines = [b"X-H%d: value\r\n" % i for i in range(40)]
    assert refusal([b"GET / HTTP/1.1\r\n", *lines, b"\r\n"], SMALL) == 431


def test_headers_within_the_limit_pass() -> None:
    request = only_request(parse(b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 200 + b"\r\n\r\n", SMALL))
    assert request.headers["x-big"] == "v" * 200


def test_413_declared_content_length_over_limit() -> None:
    """Refused on the header alone: the client need not send the body."""
    assert refusal([b"POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n"], SMALL) == 413


def test_body_at_the_limit_passes() -> None:
    data = b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n" + b"x" * 100
    assert only_request(parse(data, SMALL)).content == b"x" * 100


def test_413_chunked_body_growing_past_the_limit() -> None:
    head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"".join(b"20\r\n" + b"c" * 32 + b"\r\n" for _ in range(4))  # 128 bytes, no end
    assert refusal([head + body], SMALL) == 413
    assert refusal([head, *bytewise(body)], SMALL) == 413
    within = head + b"".join(b"20\r\n" + b"c" * 32 + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
    assert only_request(parse(within, SMALL)).content == b"c" * 96


def test_unknown_transfer_coding_is_refused() -> None:
    """`Transfer-Encoding: gzip, chunked` must not hand the handler still-gzipped bytes as the content."""
    data = (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            + chunked(b"\x1f\x8b\x08\x00compressed"))
    assert refusal([data]) in (400, 415, 501)


@pytest.mark.parametrize("lines", [
    b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip\r\nX-Between: 1\r\ntransfer-encoding: chunked\r\n",
])
def test_transfer_coding_split_over_two_lines_is_refused(lines: bytes) -> None:
    """A second Transfer-Encoding line must not hide the first from the 501 rule."""
    data = b"POST / HTTP/1.1\r\n" + lines + b"\r\n" + chunked(b"\x1f\x8b\x08\x00compressed")
    assert refusal([data]) == 501
    assert refusal(bytewise(data)) == 501


def test_content_coding_split_over_two_lines_is_refused() -> None:
    data = (b"POST / HTTP/1.1\r\nContent-Encoding: gzip\r\nContent-Encoding: identity\r\n"
            b"Content-Length: 4\r\n\r\n\x1f\x8b\x08\x00")
    assert refusal([data]) == 415


def test_upgrade_request_is_served_as_http11() -> None:
    """RFC 9110 7.8: the server may ignore Upgrade. One request comes out (so one answer goes
    back), and what follows it is read as HTTP/1.1, not refused."""
    data = (b"GET /chat HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            b"GET /next HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: h2c\r\n\r\n"
            b"GET /last HTTP/1.1\r\n\r\n")
    for events in (parse(data), parse_split(bytewise(data))):
        assert [(e.url, e.headers.get("upgrade"), e.keep_alive) for e in events if isinstance(e, HttpRequest)] == [
            ("/chat", "websocket", True), ("/next", "h2c", True), ("/last", None, True)]
        assert len(events) == 3


@pytest.mark.parametrize("framing", [b"Content-Length: 3\r\n\r\nabc", b"Transfer-Encoding: chunked\r\n\r\n"
                                                                      b"3\r\nabc\r\n0\r\n\r\n"])
def test_upgrade_request_with_a_body_is_refused(framing: bytes) -> None:
    """httptools would hand it over without its body and read the body as the next request."""
    data = b"POST /up HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n" + framing
    parser = RequestParser(DEFAULT)
    with pytest.raises(HttpError) as info:
        parser.feed(data, 1.0)
    assert (info.value.status, info.value.parsed) == (400, [])


CHUNKED_HEAD = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_431_many_trailer_fields() -> None:
    trailer = b"".join(b"X-T%d: %s\r\n" % (i, b"v" * 20) for i in range(20))  # some 600 bytes
    data = CHUNKED_HEAD + b"3\r\nabc\r\n0\r\n" + trailer + b"\r\n"
    assert refusal([data], SMALL) == 431
    assert refusal(bytewise(data), SMALL) == 431


def test_431_trailer_field_trickled_without_end() -> None:
    """httptools keeps an unfinished trailer value across feeds: it must not grow without bound."""
    start = CHUNKED_HEAD + b"3\r\nabc\r\n0\r\nX-Endless: "
    assert refusal([start, *[b"v" * 50] * 10], SMALL) == 431


def test_431_chunk_extension_trickled_without_end() -> None:
    start = CHUNKED_HEAD + b"3;name="
    assert refusal([start, *[b"v" * 50] * 10], SMALL) == 431


def test_431_long_chunk_extensions_over_many_chunks() -> None:
    chunk = b"1;" + b"e" * 40 + b"\r\nx\r\n"
    assert refusal([CHUNKED_HEAD, *[chunk] * 10], SMALL) == 431
    assert refusal([CHUNKED_HEAD, *bytewise(chunk * 10)], SMALL) == 431


def test_small_chunks_in_any_pieces_are_not_431() -> None:
    """A chunk's own framing is free, however the bytes are cut."""
    body = b"".join(b"%x\r\n%s\r\n" % (n, b"c" * n) for n in (1, 7, 16, 3) * 250) + b"0\r\n\r\n"
    limits = Limits(max_header_size=256, max_body_size=100_000)
    for size in (1, 2, 3, 5, 7, 13, 64):
        pieces = [CHUNKED_HEAD] + [body[i:i + size] for i in range(0, len(body), size)]
        assert len(only_request(parse_split(pieces, limits)).content) == 27 * 250


def test_short_trailer_and_extension_pass() -> None:
    data = CHUNKED_HEAD + b"3;a=b\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n"
    assert only_request(parse_split(bytewise(data), SMALL)).content == b"abc"


def test_pipelined_request_after_a_large_body_is_not_431() -> None:
    """The header-size bound must count the next request's head only, not the previous body read with it."""
    limits = Limits(max_url_size=100, max_header_size=100, max_body_size=1000)
    data = b"POST / HTTP/1.1\r\nContent-Length: 500\r\n\r\n" + b"a" * 500 + b"GET /next HTTP/1.1\r\n"
    parser = RequestParser(limits)
    request = only_request(parser.feed(data, 1.0))
    assert request.content == b"a" * 500
    assert parser.receiving
    assert only_request(parser.feed(b"\r\n", 1.0)).url == "/next"


def test_chunked_trailer_does_not_rewrite_the_headers() -> None:
    data = (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\nContent-Encoding: gzip\r\nHost: evil\r\n\r\n")
    request = only_request(parse(data))
    assert request.content == b"abc"
    assert request.headers["host"] == "x"
    assert "content-encoding" not in request.headers


def test_requests_before_a_bad_one_are_kept_with_the_refusal() -> None:
    parser = RequestParser(DEFAULT)
    with pytest.raises(HttpError) as info:
        parser.feed(b"GET /good HTTP/1.1\r\nHost: x\r\n\r\nPUT /bad HTTP/1.1\r\nHost: x\r\n\r\n", 1.0)
    assert info.value.status == 405
    assert [r.url for r in info.value.parsed if isinstance(r, HttpRequest)] == ["/good"]


# --- responses -------------------------------------------------------------------------


def read_response(wire: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """Parse `wire` as exactly one HTTP response, the way a client would."""

    class Sink:
        headers: list[tuple[str, str]] = []
        body = b""
        complete = 0

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            self.complete += 1

    sink = Sink()
    sink.headers = []
    parser = httptools.HttpResponseParser(sink)
    parser.feed_data(wire)
    assert sink.complete == 1
    return parser.get_status_code(), sink.headers, sink.body


def finish(keep_alive: bool = True, encoding: str = "utf-8", **changes: Any) -> tuple[bytes, bool]:
    response = new_response(keep_alive)
    headers = changes.pop("headers", {})
    response.update(changes)
    response["headers"].update(headers)
    return finish_response(response, keep_alive, encoding)


def header(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for n, v in headers if n.lower() == name.lower()]


def test_new_response_is_the_originals() -> None:
    assert new_response(True) == {"status_code": 200, "content": b"",
                                  "headers": {"content-type": "application/octet-stream",
                                              "connection": "keep-alive"}}
    assert new_response(False)["headers"]["connection"] == "close"


def test_plain_response_on_the_wire() -> None:
    wire, keep_alive = finish(content=b"\x00binary\xff")
    assert keep_alive
    assert wire.startswith(b"HTTP/1.1 200 OK\r\n")
    assert wire.endswith(b"\r\n\r\n\x00binary\xff")
    status, headers, body = read_response(wire)
    assert (status, body) == (200, b"\x00binary\xff")
    assert headers == [("Content-Type", "application/octet-stream"), ("Cache-Control", "no-cache"),
                       ("Pragma", "no-cache"), ("Content-Length", "8"), ("Connection", "keep-alive")]


def test_header_names_are_title_case_on_the_wire() -> None:
    wire, _ = finish(headers={"x-my-custom-header": "v1", "ETAG": "abc", "www-authenticate": "Basic"})
    assert b"\r\nX-My-Custom-Header: v1\r\n" in wire
    assert b"\r\nEtag: abc\r\n" in wire
    assert b"\r\nWww-Authenticate: Basic\r\n" in wire


def test_the_same_headers_again_are_checked_against_the_new_content() -> None:
    """A header set is checked and rendered once and remembered: what depends on the content
    (its length, its type's charset) and on the connection is still decided every time."""
    headers = {"content-type": "text/plain", "content-length": "5", "x-a": "1"}
    first, _ = finish(content="hello", headers=dict(headers))
    again, _ = finish(content="hello", headers=dict(headers))
    assert first == again
    assert read_response(first)[1] == [("Content-Type", "text/plain; charset=utf-8"), ("X-A", "1"),
                                       ("Cache-Control", "no-cache"), ("Pragma", "no-cache"),
                                       ("Content-Length", "5"), ("Connection", "keep-alive")]
    with pytest.raises(ResponseError, match="content-length 5"):
        finish(content="hello!", headers=dict(headers))
    closing, keep_alive = finish(keep_alive=False, content="hello", headers=dict(headers, connection="close"))
    assert not keep_alive and closing.split(b"\r\n\r\n")[0].endswith(b"Connection: close")
    with pytest.raises(ResponseError, match="x-a"):
        finish(content="hello", headers=dict(headers, **{"x-a": "1\r\nInjected: yes"}))


@pytest.mark.parametrize("status", [0, 99, 100, 101, 299, 600, 1000, -200, "200", 200.0, True, None])
def test_unknown_status_is_refused(status: Any) -> None:
    with pytest.raises(ResponseError):
        finish(status_code=status)


@pytest.mark.parametrize("status", [201, 302, 404, 418, 503])
def test_known_status_is_rendered_with_its_reason(status: int) -> None:
    wire, _ = finish(status_code=status, content=b"x")
    assert read_response(wire)[0] == status
    assert wire.split(b"\r\n")[0] == {201: b"HTTP/1.1 201 Created", 302: b"HTTP/1.1 302 Found",
                                      404: b"HTTP/1.1 404 Not Found", 418: b"HTTP/1.1 418 I'm a Teapot",
                                      503: b"HTTP/1.1 503 Service Unavailable"}[status]


@pytest.mark.parametrize("name", ["x header", "x:y", "", "x\r\ny", "caf\xe9", "a/b", 1, b"x-bytes"])
def test_bad_header_name_is_refused(name: Any) -> None:
    with pytest.raises(ResponseError):
        finish(headers={name: "v"})


@pytest.mark.parametrize("value", [1, b"bytes", None, ["a"], "one\r\nInjected: yes", "one\ntwo",
                                   "nul\x00", "vt\x0b", "ff\x0c", "del\x7f", "nel\x85", "esc\x1b[2J", "c1\x9b"])
def test_header_value_must_be_a_one_line_str(value: Any) -> None:
    """Control characters too: NUL ends a C string, and VT, FF, NEL (0x85) end lines for some parsers."""
    with pytest.raises(ResponseError, match="x-value"):
        finish(headers={"x-value": value})


def test_header_value_may_have_tabs_and_latin1_text() -> None:
    status, headers, _ = read_response(finish(headers={"x-value": "a\tcaf\xe9 \xa0~"})[0])
    assert status == 200
    assert header(headers, "x-value") == ["a\tcaf\xe9 \xa0~"]


def test_headers_must_be_a_dict() -> None:
    response = new_response(True)
    response["headers"] = [("content-type", "text/plain")]
    with pytest.raises(ResponseError):
        finish_response(response, True, "utf-8")


@pytest.mark.parametrize("content_type", ["application/octet-stream", "application/json", "image/png", ""])
def test_str_content_needs_a_text_content_type(content_type: str) -> None:
    with pytest.raises(ResponseError):
        finish(content="hello", headers={"content-type": content_type})


def test_str_content_without_a_content_type_is_refused() -> None:
    response = new_response(True)
    response["content"] = "hello"
    del response["headers"]["content-type"]
    with pytest.raises(ResponseError):
        finish_response(response, True, "utf-8")


@pytest.mark.parametrize("content", [123, None, {"a": 1}, ["x"], 1.5])
def test_content_must_be_bytes_or_str(content: Any) -> None:
    with pytest.raises(ResponseError):
        finish(content=content)


def test_bytearray_and_memoryview_content_are_bytes() -> None:
    assert read_response(finish(content=bytearray(b"abc"))[0])[2] == b"abc"
    assert read_response(finish(content=memoryview(b"def"))[0])[2] == b"def"


def test_str_content_gets_a_charset_and_is_encoded() -> None:
    wire, _ = finish(content="h\u00e9llo \u043c\u0438\u0440", headers={"content-type": "text/plain"})
    _, headers, body = read_response(wire)
    assert header(headers, "content-type") == ["text/plain; charset=utf-8"]
    assert body == "h\u00e9llo \u043c\u0438\u0440".encode()
    assert header(headers, "content-length") == [str(len(body))]


def test_str_content_uses_the_response_encoding_with_replacement() -> None:
    wire, _ = finish(encoding="windows-1251", content="\u043c\u0438\u0440 \u20ac \u4e16",
                     headers={"content-type": "text/html"})
    _, headers, body = read_response(wire)
    assert header(headers, "content-type") == ["text/html; charset=windows-1251"]
    assert body == "\u043c\u0438\u0440 \u20ac ?".encode("windows-1251")


def test_str_content_keeps_a_charset_the_handler_gave() -> None:
    wire, _ = finish(content="abc", headers={"content-type": "text/xml; charset=ascii"})
    assert header(read_response(wire)[1], "content-type") == ["text/xml; charset=ascii"]


def test_content_length_from_the_handler_must_match() -> None:
    with pytest.raises(ResponseError):
        finish(content=b"abc", headers={"content-length": "4"})
    with pytest.raises(ResponseError):
        finish(content=b"abc", headers={"Content-Length": "three"})


def test_matching_content_length_from_the_handler_is_sent_once() -> None:
    wire, _ = finish(content=b"abc", headers={"Content-Length": "3"})
    _, headers, body = read_response(wire)
    assert body == b"abc"
    assert header(headers, "content-length") == ["3"]


def test_empty_body_drops_the_content_type() -> None:
    wire, _ = finish(content=b"", headers={"content-type": "text/plain"})
    _, headers, _ = read_response(wire)
    assert header(headers, "content-type") == []
    assert header(headers, "content-length") == ["0"]
    wire, _ = finish(content="", headers={"content-type": "text/plain"})
    assert header(read_response(wire)[1], "content-type") == []


def test_handler_may_downgrade_keep_alive() -> None:
    wire, keep_alive = finish(keep_alive=True, content=b"x", headers={"connection": "close"})
    assert not keep_alive
    assert header(read_response(wire)[1], "connection") == ["close"]
    wire, keep_alive = finish(keep_alive=True, content=b"x", headers={"Connection": "Close"})
    assert not keep_alive


def test_handler_keeps_the_servers_decision_by_default() -> None:
    assert finish(keep_alive=True)[1] is True
    wire, keep_alive = finish(keep_alive=False)
    assert keep_alive is False
    assert header(read_response(wire)[1], "connection") == ["close"]


def test_handler_cannot_upgrade_to_keep_alive() -> None:
    with pytest.raises(ResponseError):
        finish(keep_alive=False, headers={"connection": "keep-alive"})


def test_connection_header_is_not_sent_twice() -> None:
    wire, _ = finish(keep_alive=True, headers={"Connection": "keep-alive"})
    assert header(read_response(wire)[1], "connection") == ["keep-alive"]


@pytest.mark.parametrize("status", [400, 404, 500, 503])
def test_status_400_and_above_closes(status: int) -> None:
    wire, keep_alive = finish(keep_alive=True, status_code=status, content=b"no")
    assert not keep_alive
    assert header(read_response(wire)[1], "connection") == ["close"]


def test_cache_control_defaults_to_no_cache_with_pragma() -> None:
    _, headers, _ = read_response(finish()[0])
    assert header(headers, "cache-control") == ["no-cache"]
    assert header(headers, "pragma") == ["no-cache"]


def test_handler_cache_control_wins_and_drops_the_pragma() -> None:
    _, headers, _ = read_response(finish(headers={"Cache-Control": "max-age=60"})[0])
    assert header(headers, "cache-control") == ["max-age=60"]
    assert header(headers, "pragma") == []


def test_handler_pragma_is_kept() -> None:
    _, headers, _ = read_response(finish(headers={"pragma": "x-custom"})[0])
    assert header(headers, "pragma") == ["x-custom"]
    assert header(headers, "cache-control") == ["no-cache"]


def test_handler_transfer_encoding_does_not_corrupt_the_response() -> None:
    """A body framed by Content-Length must not also be announced as chunked."""
    try:
        wire, _ = finish(content=b"plain body", headers={"transfer-encoding": "chunked"})
    except ResponseError:
        return
    assert b"\r\ntransfer-encoding:" not in wire.lower()


def test_error_response() -> None:
    wire = error_response(404)
    status, headers, body = read_response(wire)
    assert (status, body) == (404, b"Not Found")
    assert headers == [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-cache"),
                       ("Content-Length", "9"), ("Connection", "close")]


def test_error_response_with_text() -> None:
    status, headers, body = read_response(error_response(504, "request deadline has expired \u2014 sorry"))
    assert status == 504
    assert body == "request deadline has expired \u2014 sorry".encode()
    assert header(headers, "content-length") == [str(len(body))]
    assert header(headers, "connection") == ["close"]


# --- properties --------------------------------------------------------------------------

_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
_value = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20)


@st.composite
def valid_requests(draw: st.DrawFn) -> tuple[bytes, tuple[str, str, bytes]]:
    """One well-formed request and what its parse must give: (method, url, content)."""
    method = draw(st.sampled_from(["GET", "POST"]))
    url = "/" + "/".join(draw(st.lists(_token, max_size=3)))
    if draw(st.booleans()):
        url += "?" + draw(_token) + "=" + draw(_token)
    names = draw(st.lists(_token.map(lambda t: "x-" + t), max_size=4))
    head = "".join(f"{name}: {draw(_value)}\r\n" for name in names)
    version = draw(st.sampled_from(["1.0", "1.1"]))
    if version == "1.0":  # without it, bytes after the request are refused
        head += "Connection: keep-alive\r\n"
    body = draw(st.binary(max_size=40)) if method == "POST" else b""
    if method == "POST" and version == "1.1" and draw(st.booleans()):
        pieces = draw(st.lists(st.binary(min_size=1, max_size=15), max_size=4))
        body = b"".join(pieces)
        framed = b"Transfer-Encoding: chunked\r\n\r\n" + chunked(*pieces)
    else:
        framed = b"Content-Length: %d\r\n\r\n" % len(body) + body
    data = f"{method} {url} HTTP/{version}\r\n{head}".encode() + framed
    return data, (method, url, body)


@st.composite
def split_points(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(valid_requests(), min_size=1, max_size=4), st.data())
def test_any_chunking_parses_like_the_whole(requests: list[tuple[bytes, tuple[str, str, bytes]]],
                                            data: st.DataObject) -> None:
    stream = b"".join(r[0] for r in requests)
    whole = parse(stream)
    assert [(e.method, e.url, e.content) for e in whole if isinstance(e, HttpRequest)] == [r[1] for r in requests]
    pieces = data.draw(split_points(stream))
    assert parse_split(pieces) == whole


def _feed_all(pieces: list[bytes], limits: Limits) -> None:
    parser = RequestParser(limits)
    for piece in pieces:
        try:
            events = parser.feed(piece, 1.0)
        except HttpError as e:
            assert 400 <= e.status <= 505
            return
        for event in events:
            assert isinstance(event, (HttpRequest, Continue))
            if isinstance(event, HttpRequest):
                assert event.method in limits.allowed_methods
                assert event.headers["content-length"] == str(len(event.content))
                assert len(event.content) <= limits.max_body_size


_edits = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(valid_requests(), min_size=1, max_size=3), _edits, st.data(), st.sampled_from([DEFAULT, SMALL]))
def test_mutated_streams_raise_only_http_errors(requests: list[tuple[bytes, tuple[str, str, bytes]]],
                                                edits: list[tuple[int, int, int]], data: st.DataObject,
                                                limits: Limits) -> None:
    stream = mutate(b"".join(r[0] for r in requests), edits)
    _feed_all(data.draw(split_points(stream)), limits)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=6), st.sampled_from([DEFAULT, SMALL]))
def test_random_bytes_raise_only_http_errors(pieces: list[bytes], limits: Limits) -> None:
    _feed_all(pieces, limits)


@pytest.mark.parametrize("status", [204, 304])
def test_no_content_statuses_refuse_content(status: int) -> None:
    with pytest.raises(ResponseError):
        finish(status_code=status, content=b"body")
    assert finish(status_code=status)[0].startswith(b"HTTP/1.1 %d " % status)
