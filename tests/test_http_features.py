"""HTTP interface features: gzip responses and HTTP Basic credentials, on the wire and over real sockets."""

from __future__ import annotations

import base64
import gzip
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from conftest import InProcessCage, http_config, http_request, module_source
from pmnc.protocols.httpwire import (
    GZIP_MIN_SIZE,
    HttpError,
    Limits,
    RequestParser,
    accepts_gzip,
    basic_credentials,
    finish_response,
)

TEXT = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 40  # compresses well
JSON = json.dumps([{"id": n, "name": f"item {n}"} for n in range(100)])

HANDLER = module_source("""
    import json

    TEXT = TEXT_VALUE
    JSON = JSON_VALUE

    def process_request(request, response):
        path = request["url"]
        if path == "/text":
            response["content"] = TEXT
            response["headers"]["content-type"] = "text/plain"
        elif path == "/json":
            response["content"] = JSON.encode()
            response["headers"]["content-type"] = "Application/JSON; charset=utf-8"
        elif path == "/binary":
            response["content"] = TEXT.encode()
        elif path == "/tiny":
            response["content"] = "tiny"
            response["headers"]["content-type"] = "text/plain"
        elif path == "/empty":
            response["headers"]["content-type"] = "text/plain"
        elif path == "/vary":
            response["content"] = TEXT
            response["headers"]["content-type"] = "text/plain"
            response["headers"]["vary"] = "Cookie"
        elif path == "/tokens":
            response["content"] = json.dumps({"tokens": pmnc.request.parameters["auth_tokens"],
                                              "authorization": request["headers"].get("authorization")}).encode()
            response["headers"]["content-type"] = "application/json"
""".replace("TEXT_VALUE", repr(TEXT)).replace("JSON_VALUE", repr(JSON)), ["process_request"])


@pytest.fixture
def port(in_process_cage: Callable[..., InProcessCage]) -> int:
    cage = in_process_cage(interfaces={"http": http_config(gzip_content_types=("text/.+", "application/json"))},
                           files={"interface_http.py": HANDLER})
    return cage.address()[1]


def get(port: int, path: str, accept_encoding: str | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = dict(headers or {})
    if accept_encoding is not None:
        headers["Accept-Encoding"] = accept_encoding
    return http_request(port, path, headers=headers)


# --- gzip over a socket ----------------------------------------------------------------------------


@pytest.mark.parametrize("path, original", [("/text", TEXT.encode()), ("/json", JSON.encode())])
def test_gzip_when_allowed_and_matching(port: int, path: str, original: bytes) -> None:
    status, headers, body = get(port, path, "gzip, deflate, br")
    assert status == 200
    assert headers["content-encoding"] == "gzip"
    assert headers["vary"] == "Accept-Encoding"
    assert int(headers["content-length"]) == len(body) < len(original) // 4
    assert gzip.decompress(body) == original
    assert headers["connection"] == "keep-alive"


@pytest.mark.parametrize("accept_encoding", [None, "identity", "deflate, br", "gzip;q=0", "gzip;q=0, *",
                                             "*;q=0", ""])
def test_no_gzip_when_the_client_does_not_allow_it(port: int, accept_encoding: str | None) -> None:
    status, headers, body = get(port, "/text", accept_encoding)
    assert status == 200
    assert "content-encoding" not in headers
    assert headers["vary"] == "Accept-Encoding"  # the answer depended on it all the same
    assert body == TEXT.encode()


@pytest.mark.parametrize("accept_encoding", ["*", "GZIP;Q=0.5", "br;q=1.0, gzip;q=0.001", "x-gzip"])
def test_gzip_allowed_in_other_words(port: int, accept_encoding: str) -> None:
    _, headers, body = get(port, "/text", accept_encoding)
    assert headers["content-encoding"] == "gzip"
    assert gzip.decompress(body) == TEXT.encode()


@pytest.mark.parametrize("path, body", [("/binary", TEXT.encode()), ("/tiny", b"tiny"), ("/empty", b"")],
                         ids=["non-matching-type", "tiny-body", "empty-body"])
def test_no_gzip_for_other_types_and_small_bodies(port: int, path: str, body: bytes) -> None:
    status, headers, received = get(port, path, "gzip")
    assert status == 200
    assert "content-encoding" not in headers and "vary" not in headers
    assert received == body


def test_gzip_keeps_the_handlers_vary(port: int) -> None:
    _, headers, body = get(port, "/vary", "gzip")
    assert headers["vary"] == "Cookie, Accept-Encoding"
    assert gzip.decompress(body) == TEXT.encode()


def test_gzip_is_off_by_default(in_process_cage: Callable[..., InProcessCage]) -> None:
    cage = in_process_cage(interfaces={"http": http_config()}, files={"interface_http.py": HANDLER})
    _, headers, body = get(cage.address()[1], "/text", "gzip")
    assert "content-encoding" not in headers and "vary" not in headers
    assert body == TEXT.encode()


def test_bad_gzip_pattern_is_a_config_error(in_process_cage: Callable[..., InProcessCage]) -> None:
    cage = in_process_cage(interfaces={"http": http_config(gzip_content_types=("text/(",))})
    assert "gzip_content_types" in cage.log_text()
    assert "listens on" not in cage.log_text()


# --- gzip without sockets ---------------------------------------------------------------------------


@pytest.mark.parametrize("value, allowed", [
    ("", False), ("identity", False), ("gzip", True), ("GZip", True), ("x-gzip", True), ("*", True),
    ("gzip;q=0", False), ("gzip; q=0.0", False), ("gzip;q=0.000", False), ("gzip;q=0.001", True),
    ("gzip;q=1", True), ("*;q=0", False), ("*, gzip;q=0", False), ("gzip;q=0, *", False),
    ("deflate, *;q=0.1", True), ("br , gzip ; q=0.8", True), ("gzip;q=nonsense", False), ("gzip;q=2", False),
    ("gzip;q=nan", False), ("gzip;level=1", True), (",,", False), ("gzipped", False),
])
def test_accepts_gzip(value: str, allowed: bool) -> None:
    assert accepts_gzip(value) is allowed


def finish(content: Any, content_type: str, accept_encoding: str = "gzip", status: int = 200,
           **headers: str) -> tuple[dict[str, str], bytes]:
    response = {"status_code": status, "content": content,
                "headers": {"content-type": content_type, "connection": "keep-alive", **headers}}
    data, _ = finish_response(response, True, "utf-8", (re.compile("text/.+"),), accept_encoding)
    head, _, body = data.partition(b"\r\n\r\n")
    fields = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:])
    return {name.lower(): value for name, value in fields.items()}, body


def test_finish_response_gzips_at_the_threshold() -> None:
    headers, body = finish("x" * GZIP_MIN_SIZE, "text/plain")
    assert headers["content-encoding"] == "gzip" and gzip.decompress(body) == b"x" * GZIP_MIN_SIZE
    assert headers["content-length"] == str(len(body))
    headers, body = finish("x" * (GZIP_MIN_SIZE - 1), "text/plain")
    assert "content-encoding" not in headers and body == b"x" * (GZIP_MIN_SIZE - 1)


def test_finish_response_gzip_is_deterministic() -> None:
    assert finish(TEXT, "text/plain")[1] == finish(TEXT, "text/plain")[1]  # no timestamp in the gzip header


def test_finish_response_does_not_gzip_twice_nor_parts() -> None:
    encoded = gzip.compress(TEXT.encode())
    headers, body = finish(encoded, "text/plain", **{"content-encoding": "gzip"})
    assert body == encoded and "vary" not in headers
    headers, body = finish(TEXT, "text/plain", status=206, **{"content-range": f"bytes 0-{len(TEXT) - 1}/9999"})
    assert "content-encoding" not in headers and body == TEXT.encode()


def test_finish_response_checks_the_handlers_content_length_before_gzip() -> None:
    headers, body = finish(TEXT, "text/plain", **{"content-length": str(len(TEXT))})
    assert headers["content-encoding"] == "gzip" and headers["content-length"] == str(len(body))


def test_finish_response_without_patterns_never_gzips() -> None:
    response = {"status_code": 200, "content": TEXT, "headers": {"content-type": "text/plain"}}
    data, _ = finish_response(response, False, "utf-8", (), "gzip")
    assert b"Content-Encoding" not in data and data.endswith(TEXT.encode())


# --- HTTP Basic ----------------------------------------------------------------------------------------


def basic(credentials: bytes) -> str:
    return "Basic " + base64.b64encode(credentials).decode("ascii")


def tokens(port: int, authorization: str | None) -> tuple[dict[str, Any], str | None]:
    status, _, body = get(port, "/tokens", headers={"Authorization": authorization} if authorization else {})
    assert status == 200, body
    seen = json.loads(body)
    return seen["tokens"], seen["authorization"]


def test_basic_credentials_reach_the_handler(port: int) -> None:
    seen, header = tokens(port, basic(b"alice:s3cret:with:colons"))
    assert (seen["username"], seen["password"]) == ("alice", "s3cret:with:colons")
    assert seen["peer_ip"] == "127.0.0.1" and seen["encrypted"] is False
    assert header == basic(b"alice:s3cret:with:colons")  # the header itself is passed on as well
    seen, _ = tokens(port, basic("jörg:pässwörd".encode()))
    assert (seen["username"], seen["password"]) == ("jörg", "pässwörd")
    seen, _ = tokens(port, basic(b"\xffbob:"))  # not UTF-8: replaced, not refused
    assert (seen["username"], seen["password"]) == ("\ufffdbob", "")
    seen, _ = tokens(port, "bAsIc " + base64.b64encode(b":").decode())
    assert (seen["username"], seen["password"]) == ("", "")


def test_no_credentials_without_basic(port: int) -> None:
    seen, header = tokens(port, None)
    assert "username" not in seen and "password" not in seen and header is None
    seen, header = tokens(port, "Bearer abc.def.ghi")  # another scheme is the handler's business
    assert "username" not in seen and header == "Bearer abc.def.ghi"


@pytest.mark.parametrize("authorization", [
    "Basic !!not-base64!!", "Basic " + base64.b64encode(b"no colon").decode(), "Basic",
    "Basic YWxpY2U6c2VjcmU",  # alice:secre without its padding
], ids=["not-base64", "no-colon", "empty", "unpadded"])
def test_malformed_basic_is_400(port: int, authorization: str) -> None:
    status, headers, body = get(port, "/tokens", headers={"Authorization": authorization})
    assert status == 400
    assert headers["connection"] == "close"
    assert b"malformed Basic authorization" in body


def test_parser_gives_the_credentials() -> None:
    parser = RequestParser(Limits())
    auth = basic(b"alice:secret")
    (request,) = parser.feed(f"GET / HTTP/1.1\r\nAuthorization: {auth}\r\n\r\n".encode(), 0.0)
    assert request.credentials == ("alice", "secret")
    (request,) = parser.feed(b"GET / HTTP/1.1\r\nAuthorization: Digest x\r\n\r\n", 0.0)
    assert request.credentials is None
    with pytest.raises(HttpError) as info:
        parser.feed(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nAuthorization: Basic ***\r\n\r\n", 0.0)
    assert info.value.status == 400
    assert len(info.value.parsed) == 1  # the good request before it is still answered


@pytest.mark.parametrize("value, expected", [
    ("Basic " + base64.b64encode(b"u:p").decode(), ("u", "p")),
    ("  basic   " + base64.b64encode(b"u:p").decode() + "  ", ("u", "p")),
    ("Negotiate abc", None), ("Bearer", None),
])
def test_basic_credentials(value: str, expected: tuple[str, str] | None) -> None:
    assert basic_credentials(value) == expected


@pytest.mark.parametrize("value", ["Basic ünïcode", "Basic a", "Basic " + base64.b64encode(b"user").decode()])
def test_basic_credentials_malformed(value: str) -> None:
    with pytest.raises(HttpError) as info:
        basic_credentials(value)
    assert info.value.status == 400
