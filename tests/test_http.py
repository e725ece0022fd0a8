"""The HTTP(S) interface over real sockets, against a cage running in this process."""

from __future__ import annotations

import collections
import http.client
import json
import select
import socket
import ssl
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httptools
import pytest
from conftest import InProcessCage, Pki, http_config, http_request, module_source, wait_until

HANDLER = module_source("""
    import json
    import os
    import time

    def process_request(request, response):
        path, _, query = request["url"].partition("?")
        if path == "/echo":
            seen = {"method": request["method"], "url": request["url"], "headers": request["headers"],
                    "content": request["content"].decode("latin-1"),
                    "content_type": type(request["content"]).__name__,
                    "auth_tokens": pmnc.request.parameters["auth_tokens"]}
            response["content"] = json.dumps(seen).encode()
            response["headers"]["content-type"] = "application/json"
        elif path == "/gate":  # busy until the test creates the file (ignoring the deadline, as slow code does)
            end = time.monotonic() + 10.0
            while not os.path.exists(query) and time.monotonic() < end:
                time.sleep(0.01)
            response["content"] = b"released"
        elif path == "/boom":
            raise ValueError("boom")
        elif path == "/bad-response":
            response["content"] = "str needs a text content-type"
        elif path == "/header-value":  # a header value with the character whose code is the query
            response["headers"]["x-value"] = "a" + chr(int(query)) + "b"
        elif path == "/rpc-deadline":  # as a call to another cage whose own deadline came first
            from pmnc.errors import RPCDeadlineError
            raise RPCDeadlineError("request deadline has expired in cage other at 127.0.0.1:1234")
        elif path == "/expired-transaction":  # as a transaction that ran out of time
            from pmnc.errors import TransactionExecutionError
            pmnc.request.remain = 0.0
            raise TransactionExecutionError("request deadline waiting for participant 0 (db 127.0.0.1:5432)", 0)
        else:
            response["content"] = "Hello, world !"
            response["headers"]["content-type"] = "text/plain"
""", ["process_request"])

BOOM_LINE = next(n for n, line in enumerate(HANDLER.splitlines(), 1) if 'raise ValueError("boom")' in line)


# --- helpers ----------------------------------------------------------------------------


class Client:
    """A raw connection that reads responses with a real HTTP parser, pipelined ones included."""

    def __init__(self, address: tuple[str, int], timeout: float = 5.0, sock: socket.socket | None = None) -> None:
        self.sock = sock or socket.create_connection(address, timeout=timeout)
        self.sock.settimeout(timeout)
        self.parser = httptools.HttpResponseParser(self)
        self.responses: collections.deque[tuple[int, dict[str, str], bytes]] = collections.deque()
        self._headers: dict[str, str] = {}
        self._body = bytearray()

    def on_message_begin(self) -> None:
        self._headers, self._body = {}, bytearray()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.responses.append((self.parser.get_status_code(), self._headers, bytes(self._body)))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while not self.responses:
            data = self.sock.recv(65536)
            assert data, "the connection was closed before a complete response"
            self.parser.feed_data(data)
        return self.responses.popleft()

    def at_eof(self) -> bool:
        """The server closes the connection (within the socket timeout) and sends nothing more."""
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        assert data == b"", f"unexpected bytes from the server: {data[:200]!r}"
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def clients() -> Iterator[Callable[..., Client]]:
    opened: list[Client] = []

    def connect(address: tuple[str, int], timeout: float = 5.0) -> Client:
        client = Client(address, timeout)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        client.close()


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Path]:
    """A file whose existence releases handlers busy in /gate; always released at the end."""
    path = tmp_path / "gate"
    yield path
    path.touch()


def start(in_process_cage: Callable[..., InProcessCage], **config: Any) -> InProcessCage:
    tree: dict[str, Any] = {key: config.pop(key) for key in ("request_timeout", "thread_count") if key in config}
    return in_process_cage(interfaces={"http": http_config(**config)}, files={"interface_http.py": HANDLER}, **tree)


def interface(cage: InProcessCage) -> Any:
    return cage.cage.interfaces.live["http"][0]


def echo(port: int, **kwargs: Any) -> tuple[int, dict[str, str], dict[str, Any]]:
    status, headers, body = http_request(port, **kwargs)
    assert status == 200, body
    return status, headers, json.loads(body)


# --- serving ------------------------------------------------------------------------------


def test_hello(in_process_cage: Callable[..., InProcessCage]) -> None:
    cage = in_process_cage(interfaces={"http": http_config()})
    status, headers, body = http_request(cage.address()[1], "/")
    assert (status, body) == (200, b"Hello, world !")
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["content-length"] == "14"
    assert headers["cache-control"] == "no-cache"
    assert headers["pragma"] == "no-cache"
    assert headers["connection"] == "keep-alive"


def test_the_request_the_handler_sees(in_process_cage: Callable[..., InProcessCage]) -> None:
    cage = start(in_process_cage)
    _, headers, seen = echo(cage.address()[1], path="/echo?a=1&b=%20x",
                            headers={"X-Custom-Header": "Value", "ACCEPT": "text/html"})
    assert headers["content-type"] == "application/json"
    assert seen["method"] == "GET"
    assert seen["url"] == "/echo?a=1&b=%20x"
    assert seen["content"] == ""
    assert seen["content_type"] == "bytes"
    assert seen["headers"]["x-custom-header"] == "Value"
    assert seen["headers"]["accept"] == "text/html"
    assert seen["headers"]["content-length"] == "0"
    assert seen["headers"]["connection"] == "keep-alive"
    assert all(name == name.lower() for name in seen["headers"])
    assert seen["auth_tokens"] == {"peer_ip": "127.0.0.1", "encrypted": False}


def test_post_with_a_body(in_process_cage: Callable[..., InProcessCage]) -> None:
    cage = start(in_process_cage)
    body = bytes(range(256)) * 10
    _, _, seen = echo(cage.address()[1], path="/echo", method="POST", body=body,
                      headers={"Content-Type": "application/octet-stream"})
    assert seen["method"] == "POST"
    assert seen["content"].encode("latin-1") == body
    assert seen["headers"]["content-length"] == "2560"


def test_chunked_request_body(in_process_cage: Callable[..., InProcessCage], clients: Callable[..., Client]) -> None:
    cage = start(in_process_cage)
    client = clients(cage.address())
    client.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n")
    status, _, body = client.response()
    assert status == 200
    seen = json.loads(body)
    assert seen["content"] == "hello world"
    assert seen["headers"]["content-length"] == "11"
    assert "transfer-encoding" not in seen["headers"]


def test_expect_100_continue(in_process_cage: Callable[..., InProcessCage], clients: Callable[..., Client]) -> None:
    cage = start(in_process_cage)
    client = clients(cage.address())
    client.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    assert client.response()[0] == 100
    client.send(b"data")
    status, _, body = client.response()
    assert status == 200
    assert json.loads(body)["content"] == "data"


def test_http11_keeps_alive_by_default(in_process_cage: Callable[..., InProcessCage]) -> None:
    cage = start(in_process_cage)
    connection = http.client.HTTPConnection(*cage.address(), timeout=5.0)
    try:
        connection.request("GET", "/echo")
        first = connection.getresponse()
        assert first.getheader("connection") == "keep-alive"
        assert json.loads(first.read())["headers"]["connection"] == "keep-alive"
        sock = connection.sock
        assert sock is not None
        connection.request("GET", "/hello")
        second = connection.getresponse()
        assert (second.status, second.read()) == (200, b"Hello, world !")
        assert connection.sock is sock  # the same socket served both
    finally:
        connection.close()


def test_http10_closes(in_process_cage: Callable[..., InProcessCage], clients: Callable[..., Client]) -> None:
    cage = start(in_process_cage)
    client = clients(cage.address())
    client.send(b"GET /echo HTTP/1.0\r\n\r\n")
    status, headers, body = client.response()
    assert status == 200
    assert headers["connection"] == "close"
    assert json.loads(body)["headers"]["connection"] == "close"
    assert client.at_eof()


def test_http10_keeps_alive_when_asked(in_process_cage: Callable[..., InProcessCage],
                                       clients: Callable[..., Client]) -> None:
    cage = start(in_process_cage)
    client = clients(cage.address())
    for _ in range(2):
        client.send(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, body = client.response()
        assert (status, headers["connection"]) == (200, "keep-alive")
        assert json.loads(body)["headers"]["connection"] == "keep-alive"


def test_http11_client_asking_to_close(in_process_cage: Callable[..., InProcessCage],
                                       clients: Callable[..., Client]) -> None:
    cage = start(in_process_cage)
    client = clients(cage.address())
    client.send(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    status, headers, _ = client.response()
    assert (status, headers["connection"]) == (200, "close")
    assert client.at_eof()


def test_keep_alive_max_requests(in_process_cage: Callable[..., InProcessCage], clients: Callable[..., Client]) -> None:
    cage = start(in_process_cage, keep_alive_max_requests=3)
    client = clients(cage.address())
    decisions = []
    for _ in range(3):
        client.send(b"GET /echo HTTP/1.1\r\n\r\n")
        status, headers, body = client.response()
        assert status == 200
        decisions.append((headers["connection"], json.loads(body)["headers"]["connection"]))
    assert decisions == [("keep-alive", "keep-alive"), ("keep-alive", "keep-alive"), ("close", "close")]
    assert client.at_eof()


def test_keep_alive_support_off(in_process_cage: Callable[..., InProcessCage], clients: Callable[..., Client]) -> None:
    cage = start(in_process_cage, keep_alive_support=False)
    client = clients(cage.address())
    client.send(b"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n")
    assert client.response()[1]["connection"] == "close"
    assert client.at_eof()


def test_pipelined_requests_answered_in_order(in_process_cage: Callable[..., InProcessCage],
                                              clients: Callable[..., Client]) -> None:
    cage = start(in_process_cage)
    client = clients(cage.address())
    client.send(b"GET /echo?first HTTP/1.1\r\n\r\n"
                b"POST /echo?second HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
                b"GET /echo?third HTTP/1.1\r\nConnection: close\r\n\r\n")
    answers = [client.response() for _ in range(3)]
    assert [json.loads(body)["url"] for _, _, body in answers] == ["/echo?first", "/echo?second", "/echo?third"]
    assert json.loads(answers[1][2])["content"] == "abc"
    assert [headers["connection"] for _, headers, _ in answers] == ["keep-alive", "keep-alive", "close"]
    assert client.at_eof()


def test_good_request_before_a_bad_one_is_answered_first(in_process_cage: Callable[..., InProcessCage],
                                                         clients: Callable[..., Client]) -> None:
    cage = start(in_process_cage)
    client = clients(cage.address())
    client.send(b"GET /echo?good HTTP/1.1\r\n\r\nPUT /echo?bad HTTP/1.1\r\n\r\n")
    status, _, body = client.response()
    assert (status, json.loads(body)["url"]) == (200, "/echo?good")
    assert client.response()[0] == 405
    assert client.at_eof()


def test_handler_may_close_the_connection(in_process_cage: Callable[..., InProcessCage],
                                          clients: Callable[..., Client]) -> None:
    handler = module_source("""
        def process_request(request, response):
            response["headers"]["connection"] = "close"
            response["content"] = b"bye"
    """, ["process_request"])
    cage = in_process_cage(interfaces={"http": http_config()}, files={"interface_http.py": handler})
    client = clients(cage.address())
    client.send(b"GET / HTTP/1.1\r\n\r\n")
    status, headers, body = client.response()
    assert (status, headers["connection"], body) == (200, "close", b"bye")
    assert client.at_eof()


# --- failures in the handler ------------------------------------------------------------------


def test_handler_exception_is_500_without_traceback(in_process_cage: Callable[..., InProcessCage],
                                                    clients: Callable[..., Client]) -> None:
    cage = start(in_process_cage)
    client = clients(cage.address())
    client.send(b"GET /boom HTTP/1.1\r\n\r\n")
    status, headers, body = client.response()
    assert status == 500
    assert body == b'ValueError("boom")'
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["connection"] == "close"
    assert client.at_eof()
    # the server is still there
    assert http_request(cage.address()[1], "/")[0] == 200


def test_handler_exception_with_tracebacks(in_process_cage: Callable[..., InProcessCage]) -> None:
    cage = start(in_process_cage, error_tracebacks=True)
    status, _, body = http_request(cage.address()[1], "/boom")
    assert status == 500
    text = body.decode()
    assert "\n" not in text
    assert text.startswith(f'ValueError("boom") in process_request() (interface_http.py:{BOOM_LINE}) <- ')


def test_handler_breaking_a_response_rule_is_500(in_process_cage: Callable[..., InProcessCage]) -> None:
    cage = start(in_process_cage)
    status, headers, body = http_request(cage.address()[1], "/bad-response")
    assert status == 500
    assert body.startswith(b"ResponseError(")
    assert b"text/*" in body
    assert headers["connection"] == "close"


@pytest.mark.parametrize("path", ["/rpc-deadline", "/expired-transaction"])
def test_deadline_error_from_the_handler_is_504(in_process_cage: Callable[..., InProcessCage],
                                                clients: Callable[..., Client], path: str) -> None:
    """A deadline met anywhere (another cage, a transaction) is the request's deadline: 504 with
    the usual short text, not 500 with the error's, which may name internal addresses."""
    cage = start(in_process_cage)
    client = clients(cage.address())
    client.send(f"GET {path} HTTP/1.1\r\n\r\n".encode())
    status, headers, body = client.response()
    assert (status, body) == (504, b"request deadline has expired")
    assert headers["connection"] == "close"
    assert client.at_eof()
    assert f"request GET {path} has run out of time, the client gets 504" in cage.log_text()
    assert http_request(cage.address()[1], "/")[0] == 200


@pytest.mark.parametrize("code", [0x00, 0x0B, 0x0C, 0x0D, 0x7F, 0x85])
def test_response_header_with_a_control_character_is_500(in_process_cage: Callable[..., InProcessCage],
                                                         clients: Callable[..., Client], code: int) -> None:
    """NUL, VT, FF, CR, DEL, NEL in a header value never reach the wire: the client gets 500."""
    cage = start(in_process_cage)
    client = clients(cage.address())
    client.send(f"GET /header-value?{code} HTTP/1.1\r\n\r\n".encode())
    status, headers, body = client.response()
    assert status == 500
    assert "x-value" not in headers
    assert body.startswith(b"ResponseError(") and b"x-value" in body
    assert client.at_eof()
    assert f"request GET /header-value?{code} failed: ResponseError(" in cage.log_text()


def test_upgrade_request_gets_one_answer(in_process_cage: Callable[..., InProcessCage],
                                        clients: Callable[..., Client]) -> None:
    """Upgrade is ignored (RFC 9110 7.8): the request is answered once, as plain HTTP/1.1, and the
    connection goes on; no unrequested 400 follows."""
    cage = start(in_process_cage)
    client = clients(cage.address(), timeout=2.0)
    client.send(b"GET /echo HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    status, _, body = client.response()
    assert status == 200
    assert json.loads(body)["headers"]["upgrade"] == "websocket"
    client.send(b"GET / HTTP/1.1\r\n\r\n")
    assert client.response()[::2] == (200, b"Hello, world !")
    assert not client.responses
    assert not client.at_eof()  # nothing more came, and the connection stays open


def test_two_transfer_encoding_lines_get_501(in_process_cage: Callable[..., InProcessCage],
                                            clients: Callable[..., Client]) -> None:
    cage = start(in_process_cage)
    client = clients(cage.address())
    client.send(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"4\r\n\x1f\x8b\x08\x00\r\n0\r\n\r\n")
    status, headers, _ = client.response()
    assert (status, headers["connection"]) == (501, "close")
    assert client.at_eof()


def test_endless_chunk_trailer_gets_431(in_process_cage: Callable[..., InProcessCage],
                                       clients: Callable[..., Client]) -> None:
    cage = start(in_process_cage, max_header_size=400)
    client = clients(cage.address())
    client.send(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Trailer: ")
    for _ in range(100):  # 10 kB of one trailer value, a read apart
        try:
            client.send(b"t" * 100)
        except (BrokenPipeError, ConnectionResetError):
            break
        readable, _, _ = select.select([client.sock], [], [], 0.01)
        if readable:
            break
    status, headers, _ = client.response()
    assert (status, headers["connection"]) == (431, "close")


def test_handler_past_the_deadline_gets_504(in_process_cage: Callable[..., InProcessCage],
                                           clients: Callable[..., Client], gate: Path) -> None:
    cage = start(in_process_cage, request_timeout=1.0)
    client = clients(cage.address())
    began = time.monotonic()
    client.send(f"GET /gate?{gate} HTTP/1.1\r\n\r\n".encode())
    status, headers, body = client.response()
    elapsed = time.monotonic() - began
    assert status == 504
    assert 0.8 <= elapsed <= 1.8, elapsed
    assert headers["connection"] == "close"
    assert headers["content-type"].startswith("text/plain")
    assert 0 < len(body) < 200
    assert b"\n" not in body
    assert client.at_eof()


# --- refusals over the wire -----------------------------------------------------------------------


LIMITS = {"max_url_size": 200, "max_header_size": 400, "max_body_size": 100}


@pytest.mark.parametrize(("data", "status"), [
    (b"PUT / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"GET /\r\n\r\n", 505),
    (b"POST / HTTP/1.1\r\nContent-Encoding: gzip\r\nContent-Length: 0\r\n\r\n", 415),
    (b"GET /" + b"u" * 300 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nX-Big: " + b"h" * 500 + b"\r\n\r\n", 431),
    (b"POST / HTTP/1.1\r\nContent-Length: 1000\r\n\r\n", 413),
    (b"garbage\r\n\r\n", 400),
])
def test_refusals(in_process_cage: Callable[..., InProcessCage], clients: Callable[..., Client],
                  data: bytes, status: int) -> None:
    cage = start(in_process_cage, **LIMITS)
    client = clients(cage.address())
    client.send(data)
    got, headers, body = client.response()
    assert got == status
    assert headers["connection"] == "close"
    assert body
    assert client.at_eof()


def test_chunked_body_over_the_limit_is_413(in_process_cage: Callable[..., InProcessCage],
                                            clients: Callable[..., Client]) -> None:
    cage = start(in_process_cage, **LIMITS)
    client = clients(cage.address())
    client.send(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"40\r\n" + b"c" * 64 + b"\r\n")
    client.send(b"40\r\n" + b"c" * 64 + b"\r\n")
    assert client.response()[0] == 413
    assert client.at_eof()


def test_garbage_does_not_harm_another_client(in_process_cage: Callable[..., InProcessCage],
                                              clients: Callable[..., Client]) -> None:
    cage = start(in_process_cage)
    good = http.client.HTTPConnection(*cage.address(), timeout=5.0)
    try:
        good.request("GET", "/")
        assert good.getresponse().read() == b"Hello, world !"
        bad = clients(cage.address())
        bad.send(b"\x16\x03\x01\x00\xa5garbage that is no request\r\n\r\n")
        assert bad.response()[0] == 400
        assert bad.at_eof()
        sock = good.sock
        good.request("GET", "/")
        assert good.getresponse().read() == b"Hello, world !"
        assert good.sock is sock
    finally:
        good.close()


# --- deadlines while reading ----------------------------------------------------------------------


def test_slow_client_gets_408_while_others_are_served(in_process_cage: Callable[..., InProcessCage],
                                                      clients: Callable[..., Client]) -> None:
    cage = start(in_process_cage, request_timeout=1.0)
    slow = clients(cage.address())
    began = time.monotonic()
    slow.send(b"GET / HTTP/1.1\r\nX-Slow: ")
    served_meanwhile = False
    while time.monotonic() - began < 3.0:
        readable, _, _ = select.select([slow.sock], [], [], 0.05)
        if readable:
            break
        try:
            slow.send(b"z")
        except (BrokenPipeError, ConnectionResetError):
            break
        if not served_meanwhile and time.monotonic() - began > 0.4:
            quick = time.monotonic()
            assert http_request(cage.address()[1], "/", timeout=2.0)[0] == 200
            assert time.monotonic() - quick < 0.5
            served_meanwhile = True
    ended = time.monotonic() - began
    assert served_meanwhile
    assert 0.8 <= ended <= 1.8, ended
    try:
        status, headers, _ = slow.response()
    except ConnectionResetError:  # a byte sent just as it closed may cost the answer
        return
    assert status == 408
    assert headers["connection"] == "close"
    assert slow.at_eof()


def test_silent_connection_is_closed_at_the_deadline(in_process_cage: Callable[..., InProcessCage],
                                                     clients: Callable[..., Client]) -> None:
    cage = start(in_process_cage, request_timeout=1.0)
    began = time.monotonic()
    silent = clients(cage.address())
    readable, _, _ = select.select([silent.sock], [], [], 3.0)
    assert readable
    assert 0.8 <= time.monotonic() - began <= 1.8
    data = silent.sock.recv(65536)
    if data:  # a 408 may be said before closing
        assert data.startswith(b"HTTP/1.1 408 ")
        assert silent.at_eof()


def test_idle_keep_alive_connection_is_closed_after_idle_timeout(in_process_cage: Callable[..., InProcessCage],
                                                                 clients: Callable[..., Client]) -> None:
    cage = start(in_process_cage, keep_alive_idle_timeout=0.5)
    client = clients(cage.address())
    client.send(b"GET / HTTP/1.1\r\n\r\n")
    assert client.response()[1]["connection"] == "keep-alive"
    began = time.monotonic()
    assert client.at_eof()
    assert 0.3 <= time.monotonic() - began <= 1.5


def test_keep_alive_connection_that_sends_only_a_blank_line_is_closed(
        in_process_cage: Callable[..., InProcessCage], clients: Callable[..., Client]) -> None:
    """A blank line starts no request; the connection must still not outlive its deadline."""
    cage = start(in_process_cage, request_timeout=1.0, keep_alive_idle_timeout=60.0)
    client = clients(cage.address(), timeout=4.0)
    client.send(b"GET / HTTP/1.1\r\n\r\n")
    assert client.response()[0] == 200
    client.send(b"\r\n")
    assert client.at_eof(), "the connection was left open with no deadline"


# --- connection limits -----------------------------------------------------------------------------


def test_max_connections_refuses_with_503(in_process_cage: Callable[..., InProcessCage],
                                          clients: Callable[..., Client], gate: Path) -> None:
    cage = start(in_process_cage, max_connections=2, max_connections_per_ip=2)
    busy = [clients(cage.address()) for _ in range(2)]
    for client in busy:
        client.send(f"GET /gate?{gate} HTTP/1.1\r\nConnection: close\r\n\r\n".encode())
    wait_until(lambda: cage.cage.runtime.intake.active == 2, 5.0, message="two requests in flight")
    third = clients(cage.address())  # let in to send its head: only a whole head takes a slot
    third.send(b"GET / HTTP/1.1\r\n\r\n")
    status, headers, body = third.response()
    assert (status, headers["connection"]) == (503, "close")
    assert body.startswith(b"too many connections"), body
    assert third.at_eof()
    gate.touch()
    for client in busy:
        assert client.response()[:2] == (200, {"connection": "close", "content-type": "application/octet-stream",
                                              "cache-control": "no-cache", "pragma": "no-cache",
                                              "content-length": "8"})
        assert client.at_eof()
    # with the busy ones gone, a new client gets in
    assert http_request(cage.address()[1], "/")[0] == 200


def test_idle_keep_alive_connection_is_evicted_for_a_new_client(in_process_cage: Callable[..., InProcessCage],
                                                                clients: Callable[..., Client]) -> None:
    cage = start(in_process_cage, max_connections=2, max_connections_per_ip=2)
    idle = [clients(cage.address()) for _ in range(2)]
    for client in idle:
        client.send(b"GET / HTTP/1.1\r\n\r\n")
        assert client.response()[1]["connection"] == "keep-alive"
    wait_until(lambda: len(interface(cage).idle) == 2, 5.0, message="two idle connections")
    status, _, body = http_request(cage.address()[1], "/", timeout=3.0)
    assert (status, body) == (200, b"Hello, world !")
    assert idle[0].at_eof()  # the oldest idle one made room


def test_newcomer_with_no_place_among_the_heads_has_one_read(in_process_cage: Callable[..., InProcessCage],
                                                             clients: Callable[..., Client]) -> None:
    """With its address's share of heads taken by one younger than the grace, a newcomer is kept
    until its first read: a whole head is served, part of one or silence through the grace gets
    503; with max_pending_heads newcomers so kept already, the next gets 503 at once."""
    cage = start(in_process_cage, max_pending_heads=1, header_timeout=4.0, request_timeout=5.0)  # grace 1 s
    iface = interface(cage)
    clients(cage.address())  # silent, and younger than the grace throughout
    wait_until(lambda: len(iface.heads) == 1, 5.0, message="the one place among the heads taken")
    whole = clients(cage.address())
    whole.send(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert whole.response()[0] == 200
    partial = clients(cage.address())
    partial.send(b"GET / HTTP/1.1\r\n")
    status, _, body = partial.response()
    assert (status, body) == (503, b"too many connections from your address")
    assert partial.at_eof()
    silent = clients(cage.address())
    wait_until(lambda: len(iface.probation) == 1, 5.0, message="the silent newcomer kept")
    assert clients(cage.address()).response()[0] == 503  # no more kept
    assert silent.response()[0] == 503
    assert len(iface.heads) == 1  # never dropped for a newcomer


# --- client address behind a proxy ----------------------------------------------------------------


def test_original_ip_header_replaces_peer_ip(in_process_cage: Callable[..., InProcessCage]) -> None:
    cage = start(in_process_cage, original_ip_header_fields=("X-Forwarded-For", "X-Real-IP"))
    port = cage.address()[1]
    assert echo(port, path="/echo")[2]["auth_tokens"]["peer_ip"] == "127.0.0.1"
    assert echo(port, path="/echo", headers={"X-Real-IP": "10.9.8.7"})[2]["auth_tokens"]["peer_ip"] == "10.9.8.7"
    tokens = echo(port, path="/echo", headers={"X-Forwarded-For": "10.1.2.3", "X-Real-IP": "10.9.8.7"})[2]
    assert tokens["auth_tokens"]["peer_ip"] == "10.1.2.3"


# --- HTTPS ----------------------------------------------------------------------------------------------


def start_https(in_process_cage: Callable[..., InProcessCage], pki: Pki) -> InProcessCage:
    return start(in_process_cage, ssl_key_cert_file=str(pki.server_file), ssl_ca_cert_file=str(pki.ca_file),
                 request_timeout=3.0)


def https_echo(address: tuple[str, int], context: ssl.SSLContext) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPSConnection(*address, timeout=5.0, context=context)
    try:
        connection.request("POST", "/echo", body=b"secret")
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_https(in_process_cage: Callable[..., InProcessCage], pki: Pki) -> None:
    cage = start_https(in_process_cage, pki)
    assert "listens on https://" in cage.log_text()
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    status, seen = https_echo(cage.address(), context)
    assert status == 200
    assert seen["content"] == "secret"
    assert seen["auth_tokens"]["encrypted"] is True
    assert seen["auth_tokens"]["peer_ip"] == "127.0.0.1"
    assert "peer_cn" not in seen["auth_tokens"]


def test_https_client_certificate_gives_peer_cn(in_process_cage: Callable[..., InProcessCage], pki: Pki) -> None:
    cage = start_https(in_process_cage, pki)
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.load_cert_chain(str(pki.client_file))
    status, seen = https_echo(cage.address(), context)
    assert status == 200
    assert seen["auth_tokens"]["encrypted"] is True
    assert seen["auth_tokens"]["peer_cn"] == "test-client"


def test_plain_http_to_https_port_is_not_served(in_process_cage: Callable[..., InProcessCage], pki: Pki) -> None:
    cage = start_https(in_process_cage, pki)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        http_request(cage.address()[1], "/", timeout=5.0)


def _legacy_client(maximum: ssl.TLSVersion) -> ssl.SSLContext:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client really offer TLS 1.1
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = maximum
    return context


def test_tls11_client_is_refused(in_process_cage: Callable[..., InProcessCage], pki: Pki) -> None:
    cage = start_https(in_process_cage, pki)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tls11 = ssl.TLSVersion.TLSv1_1
    # the same client allowed TLS 1.2 gets in: the refusal below is the server's
    with socket.create_connection(cage.address(), timeout=5.0) as raw, \
            _legacy_client(ssl.TLSVersion.TLSv1_2).wrap_socket(raw) as tls:
        assert tls.version() == "TLSv1.2"
    with socket.create_connection(cage.address(), timeout=5.0) as raw, \
            pytest.raises((ssl.SSLError, ConnectionResetError)) as info:
        _legacy_client(tls11).wrap_socket(raw)
    # the client did offer TLS 1.1 (it did not give up by itself); the server would not have it
    assert getattr(info.value, "reason", None) != "NO_PROTOCOLS_AVAILABLE", info.value
