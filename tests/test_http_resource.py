"""The HTTP(S) resource (protocol "http") against real servers on loopback.

Well-behaved peers are http.server's ThreadingHTTPServer, plain or TLS;
misbehaving ones are raw sockets served by threads. Every server counts the
connections it accepts and sees closed, so reuse and reconnects are checked
from the server's side. Calls go through a cage running in this process:
`pmnc.transaction.web.get(...)` with a finite request attached to the test
thread, as a cage module would make them.

Where a peer makes the call wait out its whole deadline (stalls, silence,
trickling), the pool caps the call with `pool__max_time` below the caller's
deadline, so that the resource's own ResourceError reaches the caller; at
the caller's deadline itself the coordinator answers first with
TransactionExecutionError (see test_at_the_callers_own_deadline_...).
"""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import InProcessCage, Pki, config_source, http_config, http_request, module_source, wait_until
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pmnc.errors import ParticipantError, ResourceError, ResourceInputParameterError, TransactionExecutionError
from pmnc.request import Request, attached

HOST = "127.0.0.1"
MARGIN = 0.5  # what a failure may take past its deadline (thread hand-offs, a loaded CI machine)


# --- a well-behaved server: http.server, plain or TLS --------------------------------------------


class Handler(BaseHTTPRequestHandler):
    """Answers by path; every response says which connection carried it (X-Conn)."""

    protocol_version = "HTTP/1.1"
    server: EchoServer

    def setup(self) -> None:
        if self.server.tls is not None:
            self.request.settimeout(5.0)
            self.request = self.server.tls.wrap_socket(self.request, server_side=True)
            cert = self.request.getpeercert()
            if cert:
                self.server.peer_names.append(dict(x[0] for x in cert["subject"])["commonName"])
        self.conn_id = self.server.opened(self.request)
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.closed(self.conn_id)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.answer(b"")

    def do_POST(self) -> None:
        self.answer(self.rfile.read(int(self.headers.get("content-length", "0"))))

    def answer(self, body: bytes) -> None:
        server, path = self.server, self.path.partition("?")[0]
        server.requests.append((self.command, self.path, self.conn_id))
        with server.lock:
            server.active += 1
            server.max_active = max(server.max_active, server.active)
        try:
            if path == "/echo":
                seen = {"method": self.command, "path": self.path, "version": self.request_version,
                        "headers": self.headers.items(),
                        "body": body.decode("latin-1")}
                self.reply(200, json.dumps(seen).encode(), {"Content-Type": "application/json"})
            elif path.startswith("/status/"):
                status = int(path.rpartition("/")[2])
                self.reply(status, f"status {status}".encode())
            elif path == "/redirect":
                self.reply(302, b"", {"Location": "/echo"})
            elif path == "/close":
                self.close_connection = True
                self.reply(200, b"closing", {"Connection": "close"})
            elif path == "/chunked":
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("X-Conn", str(self.conn_id))
                self.end_headers()
                for chunk in (b"Hello, ", b"chunked ", b"world !"):
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            elif path == "/slow":  # long enough for concurrent callers to overlap
                time.sleep(0.02)
                self.reply(200, b"slow")
            else:
                self.reply(200, b"Hello, world !", {"Content-Type": "text/plain"})
        finally:
            with server.lock:
                server.active -= 1

    def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), "X-Conn": str(self.conn_id),
                            "X-Mixed-Case": "Value", **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class EchoServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__((HOST, 0), Handler)
        self.tls = tls
        self.lock = threading.Lock()
        self.accepted = 0
        self.closed_ids: set[int] = set()
        self.sockets: list[socket.socket] = []
        self.requests: list[tuple[str, str, int]] = []
        self.peer_names: list[str] = []
        self.sni_names: list[str | None] = []
        self.errors: list[BaseException] = []
        self.active = self.max_active = 0
        if tls is not None:
            tls.sni_callback = lambda _sock, name, _context: self.sni_names.append(name)  # type: ignore[assignment]
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), name="echo-server", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return HOST, self.server_address[1]

    def opened(self, sock: socket.socket) -> int:
        with self.lock:
            self.accepted += 1
            self.sockets.append(sock)
            return self.accepted

    def closed(self, conn_id: int) -> None:
        with self.lock:
            self.closed_ids.add(conn_id)

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.errors.append(sys.exc_info()[1])  # type: ignore[arg-type]

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        with self.lock:
            sockets = list(self.sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(5.0)


@pytest.fixture
def servers() -> Iterator[Callable[..., EchoServer]]:
    """`servers(tls=None)`: a started EchoServer; all are stopped afterwards."""
    started: list[EchoServer] = []

    def start(tls: ssl.SSLContext | None = None) -> EchoServer:
        server = EchoServer(tls)
        started.append(server)
        server.thread.start()
        return server

    yield start
    for server in started:
        server.stop()


# --- a misbehaving server: raw sockets ----------------------------------------------------------


def head(status: str = "200 OK", **headers: object) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class RawServer:
    """Reads each request's head and body and lets the method named after the
    path (`/stall-body` → `stall_body`) answer; it returns whether to keep the
    connection. Waits are on `stopping`, so stopping the server ends them."""

    BIG = 20 * 1024 * 1024

    def __init__(self, listener: socket.socket | None = None, read: bool = True) -> None:
        self.listener = listener or socket.create_server((HOST, 0), backlog=16)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.read = read  # False: accept and never read a byte
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.accepted = 0
        self.closed_ids: set[int] = set()
        self.paths: dict[int, list[str]] = {}
        self.sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = []

    def start(self) -> RawServer:
        self.listener.listen(16)
        self.listener.settimeout(0.05)
        self._spawn(self._accept)
        return self

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name="raw-server", daemon=True)
        self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                conn_id = self.accepted
                self.sockets.append(conn)
                self.paths[conn_id] = []
            self._spawn(self._serve, conn, conn_id)

    def _serve(self, conn: socket.socket, conn_id: int) -> None:
        conn.settimeout(10.0)
        buffer = b""
        try:
            if not self.read:
                self.stopping.wait(10.0)
                return
            while not self.stopping.is_set():
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                request_head, _, buffer = buffer.partition(b"\r\n\r\n")
                lines = request_head.decode("latin-1").split("\r\n")
                length = next((int(line.split(":", 1)[1]) for line in lines[1:]
                               if line.lower().startswith("content-length:")), 0)
                while len(buffer) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                buffer = buffer[length:]
                path = lines[0].split(" ")[1]
                self.paths[conn_id].append(path)
                if not getattr(self, path.strip("/").replace("-", "_"))(conn, conn_id):
                    return
        except OSError:
            pass  # the client gave up: what the misbehaving paths expect
        finally:
            conn.close()
            with self.lock:
                self.closed_ids.add(conn_id)

    # --- the paths ---------------------------------------------------------------------------

    def ok(self, conn: socket.socket, conn_id: int) -> bool:
        conn.sendall(head(Content_Length=2, X_Conn=conn_id) + b"ok")
        return True

    def close_after(self, conn: socket.socket, conn_id: int) -> bool:
        """A keep-alive answer, then the server closes the connection (as at its idle timeout)."""
        conn.sendall(head(Content_Length=2, X_Conn=conn_id) + b"ok")
        return False

    def no_length(self, conn: socket.socket, conn_id: int) -> bool:
        conn.sendall(head(Content_Type="text/plain", X_Conn=conn_id) + b"read me to the end")
        return False

    def continue_first(self, conn: socket.socket, conn_id: int) -> bool:
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n" + head(Content_Length=5, X_Conn=conn_id) + b"final")
        return True

    def no_content(self, conn: socket.socket, conn_id: int) -> bool:
        conn.sendall(head("204 No Content", X_Conn=conn_id))
        return True

    def unasked(self, conn: socket.socket, conn_id: int) -> bool:
        """A response, then a second one nobody asked for."""
        conn.sendall(head(Content_Length=2, X_Conn=conn_id) + b"ok" + head(Content_Length=5) + b"extra")
        self.stopping.wait(10.0)
        return False

    def stall_body(self, conn: socket.socket, conn_id: int) -> bool:
        conn.sendall(head(Content_Length=100) + b"x" * 10)
        self.stopping.wait(10.0)
        return False

    def early_close(self, conn: socket.socket, conn_id: int) -> bool:
        conn.sendall(head(Content_Length=100) + b"x" * 10)
        return False

    def wrong_length(self, conn: socket.socket, conn_id: int) -> bool:
        conn.sendall(head(Content_Length=1000) + b"all there is")
        return False

    def huge(self, conn: socket.socket, conn_id: int) -> bool:
        conn.sendall(head(Content_Length=self.BIG))
        self._stream(conn)
        return False

    def huge_no_length(self, conn: socket.socket, conn_id: int) -> bool:
        conn.sendall(head(Content_Type="application/octet-stream"))
        self._stream(conn)
        return False

    def _stream(self, conn: socket.socket) -> None:
        block = b"x" * 65536
        for _ in range(self.BIG // len(block)):
            if self.stopping.is_set():
                return
            conn.sendall(block)

    def big(self, conn: socket.socket, conn_id: int) -> bool:
        conn.sendall(head(Content_Length=2000, X_Conn=conn_id) + b"y" * 2000)
        return True

    def silent(self, conn: socket.socket, conn_id: int) -> bool:
        self.stopping.wait(10.0)
        return False

    def trickle(self, conn: socket.socket, conn_id: int) -> bool:
        """A valid response one byte every 100 ms: some 7 s in all."""
        for byte in head(Content_Length=30) + b"t" * 30:
            conn.sendall(bytes([byte]))
            if self.stopping.wait(0.1):
                break
        return False

    def garbage(self, conn: socket.socket, conn_id: int) -> bool:
        conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n\x00\xff\xfe garbage")
        self.stopping.wait(10.0)
        return False

    def stop(self) -> None:
        self.stopping.set()
        self.listener.close()
        with self.lock:
            sockets = list(self.sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self.threads:
            thread.join(5.0)


@pytest.fixture
def raw_servers() -> Iterator[Callable[..., RawServer]]:
    started: list[RawServer] = []

    def start(listener: socket.socket | None = None, read: bool = True) -> RawServer:
        server = RawServer(listener, read)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


# --- the cage and its resource ---------------------------------------------------------------------


def start_cage(in_process_cage: Callable[..., InProcessCage], address: tuple[str, int],
               **resource: Any) -> InProcessCage:
    """A cage with `config_resource_web.py` pointing at `address`."""
    config = {"protocol": "http", "server_address": address, "pool__size": 2, **resource}
    return in_process_cage(files={"config_resource_web.py": config_source(config)})


def web(cage: InProcessCage) -> Any:
    return cage.cage.runtime.root.transaction.web


def fails(call: Callable[[], Any], kind: type[BaseException] = ResourceError) -> tuple[Any, float]:
    """The error `call()` raises and how long it took to."""
    began = time.monotonic()
    with pytest.raises(kind) as info:
        call()
    return info.value, time.monotonic() - began


def recovers(cage: InProcessCage, server: RawServer, attach: Callable[[float], Request]) -> None:
    """A healthy call right after a failed one succeeds, on a new connection."""
    attach(5.0)
    broken = server.accepted
    status, headers, body = web(cage).get("/ok")
    assert (status, body) == (200, b"ok")
    assert int(headers["x-conn"]) > broken, "the broken connection was discarded, not reused"


# --- round trips ---------------------------------------------------------------------------------------


def test_get_and_post_round_trips(in_process_cage: Callable[..., InProcessCage], servers: Callable[..., EchoServer],
                                  attach: Callable[[float], Request]) -> None:
    server = servers()
    cage = start_cage(in_process_cage, server.address)
    attach(5.0)
    status, headers, body = web(cage).get("/echo?a=1")
    seen = json.loads(body)
    assert (status, seen["method"], seen["path"], seen["body"]) == (200, "GET", "/echo?a=1", "")
    assert headers["content-type"] == "application/json"

    status, headers, body = web(cage).post("/echo", b"\x00binary\xff body", {"Content-Type": "application/x-test"})
    seen = json.loads(body)
    assert (status, seen["method"], seen["body"]) == (200, "POST", "\x00binary\xff body")
    sent = dict(seen["headers"])
    assert sent["Content-Length"] == "13" and sent["Content-Type"] == "application/x-test"


def test_headers_sent_host_and_overrides(in_process_cage: Callable[..., InProcessCage],
                                         servers: Callable[..., EchoServer],
                                         attach: Callable[[float], Request]) -> None:
    server = servers()
    cage = start_cage(in_process_cage, server.address,
                      extra_headers={"X-Extra": "from config", "X-Both": "from config", "User-Agent": "pmnc-test"})
    attach(5.0)
    _, _, body = web(cage).get("/echo", {"x-both": "from the call", "X-Call": "yes"})
    sent = json.loads(body)["headers"]
    names = [name.lower() for name, _ in sent]
    assert len(names) == len(set(names)), f"no header sent twice: {sent}"
    sent = {name.lower(): value for name, value in sent}
    assert sent["host"] == f"{HOST}:{server.address[1]}", "Host with the port, as it is not 80/443"
    assert sent["x-extra"] == "from config" and sent["user-agent"] == "pmnc-test"
    assert sent["x-both"] == "from the call", "a call's header overrides extra_headers"
    assert sent["x-call"] == "yes"
    assert sent["connection"] == "keep-alive"


def test_http_version_10(in_process_cage: Callable[..., InProcessCage], servers: Callable[..., EchoServer],
                         attach: Callable[[float], Request]) -> None:
    server = servers()
    cage = start_cage(in_process_cage, server.address, http_version="HTTP/1.0")
    attach(5.0)
    assert json.loads(web(cage).get("/echo")[2])["version"] == "HTTP/1.0"
    assert web(cage).get("/")[1]["x-conn"] == "1", "kept alive: the request asked for it"


def test_bad_call_arguments_send_nothing_and_keep_the_connection(
        in_process_cage: Callable[..., InProcessCage], servers: Callable[..., EchoServer],
        attach: Callable[[float], Request]) -> None:
    server = servers()
    cage = start_cage(in_process_cage, server.address)
    attach(5.0)
    assert web(cage).get("/")[0] == 200
    for call in (lambda: web(cage).get("http://elsewhere/"), lambda: web(cage).get("/a b"),
                 lambda: web(cage).get("/", {"x-injected": "a\r\nX-Evil: 1"}),
                 lambda: web(cage).post("/", "text, not bytes")):
        error, _ = fails(call, ResourceInputParameterError)
        assert error.recoverable
    assert web(cage).get("/")[1]["x-conn"] == "1"
    assert len(server.requests) == 2


def test_interim_and_bodiless_responses(in_process_cage: Callable[..., InProcessCage],
                                        raw_servers: Callable[..., RawServer],
                                        attach: Callable[[float], Request]) -> None:
    server = raw_servers()
    cage = start_cage(in_process_cage, server.address)
    attach(2.0)
    assert web(cage).get("/continue-first")[::2] == (200, b"final"), "a 100 Continue is skipped"
    assert web(cage).get("/no-content")[::2] == (204, b""), "a 204 has no body, with no length given"
    assert web(cage).get("/ok")[1]["x-conn"] == "1"


def test_bytes_after_the_response_end_the_connection(in_process_cage: Callable[..., InProcessCage],
                                                     raw_servers: Callable[..., RawServer],
                                                     attach: Callable[[float], Request]) -> None:
    server = raw_servers()
    cage = start_cage(in_process_cage, server.address)
    attach(2.0)
    assert web(cage).get("/unasked")[::2] == (200, b"ok")
    assert web(cage).get("/ok")[1]["x-conn"] == "2", "a connection out of step is not reused"


def test_response_headers_are_lower_cased(in_process_cage: Callable[..., InProcessCage],
                                          servers: Callable[..., EchoServer],
                                          attach: Callable[[float], Request]) -> None:
    server = servers()
    cage = start_cage(in_process_cage, server.address)
    attach(5.0)
    status, headers, body = web(cage).get("/")
    assert (status, body) == (200, b"Hello, world !")
    assert headers["x-mixed-case"] == "Value"
    assert all(name == name.lower() for name in headers), headers


def test_statuses_never_raise_and_redirects_are_not_followed(
        in_process_cage: Callable[..., InProcessCage], servers: Callable[..., EchoServer],
        attach: Callable[[float], Request]) -> None:
    server = servers()
    cage = start_cage(in_process_cage, server.address)
    attach(5.0)
    assert web(cage).get("/status/404")[::2] == (404, b"status 404")
    assert web(cage).post("/status/500", b"x")[::2] == (500, b"status 500")
    status, headers, body = web(cage).get("/redirect")
    assert (status, headers["location"], body) == (302, "/echo", b"")
    assert [path for _, path, _ in server.requests] == ["/status/404", "/status/500", "/redirect"], \
        "the redirect was returned as it is, not followed"
    assert server.accepted == 1, "error statuses keep the connection"


# --- keep-alive ------------------------------------------------------------------------------------------


def test_calls_reuse_one_keep_alive_connection(in_process_cage: Callable[..., InProcessCage],
                                               servers: Callable[..., EchoServer],
                                               attach: Callable[[float], Request]) -> None:
    server = servers()
    cage = start_cage(in_process_cage, server.address)
    attach(5.0)
    connections = {web(cage).get("/")[1]["x-conn"] for _ in range(5)}
    connections |= {web(cage).post("/echo", b"body")[1]["x-conn"] for _ in range(5)}
    assert connections == {"1"} and server.accepted == 1


def test_connection_closed_by_the_server_while_idle_is_replaced(
        in_process_cage: Callable[..., InProcessCage], raw_servers: Callable[..., RawServer],
        attach: Callable[[float], Request]) -> None:
    server = raw_servers()
    cage = start_cage(in_process_cage, server.address)
    attach(5.0)
    assert web(cage).get("/close-after")[::2] == (200, b"ok")
    wait_until(lambda: 1 in server.closed_ids, 5.0, message="the server closed the idle connection")
    status, headers, body = web(cage).get("/ok")
    assert (status, body, headers["x-conn"]) == (200, b"ok", "2")


def test_connection_close_response_is_not_reused(in_process_cage: Callable[..., InProcessCage],
                                                 servers: Callable[..., EchoServer],
                                                 attach: Callable[[float], Request]) -> None:
    server = servers()
    cage = start_cage(in_process_cage, server.address)
    attach(5.0)
    status, headers, body = web(cage).get("/close")
    assert (status, headers["connection"], body) == (200, "close", b"closing")
    assert web(cage).get("/")[1]["x-conn"] == "2"
    assert server.accepted == 2


def test_response_without_length_is_read_to_eof(in_process_cage: Callable[..., InProcessCage],
                                                raw_servers: Callable[..., RawServer],
                                                attach: Callable[[float], Request]) -> None:
    server = raw_servers()
    cage = start_cage(in_process_cage, server.address)
    attach(5.0)
    status, headers, body = web(cage).get("/no-length")
    assert (status, headers["content-type"], body) == (200, "text/plain", b"read me to the end")
    assert web(cage).get("/ok")[1]["x-conn"] == "2", "a connection read to its end is not reused"


def test_chunked_response_is_decoded(in_process_cage: Callable[..., InProcessCage],
                                     servers: Callable[..., EchoServer],
                                     attach: Callable[[float], Request]) -> None:
    server = servers()
    cage = start_cage(in_process_cage, server.address)
    attach(5.0)
    status, headers, body = web(cage).get("/chunked")
    assert (status, headers["transfer-encoding"], body) == (200, "chunked", b"Hello, chunked world !")
    assert web(cage).get("/")[1]["x-conn"] == "1", "the connection is still usable after a chunked body"


# --- hostile and broken peers ------------------------------------------------------------------------------
# A stall costs the call its time and no more: capped at 0.8 s by pool__max_time here, under the
# caller's 2 s deadline, so that the caller gets the resource's own error (see the module docstring).

CAP = 0.8


def start_capped(in_process_cage: Callable[..., InProcessCage], address: tuple[str, int],
                 **resource: Any) -> InProcessCage:
    return start_cage(in_process_cage, address, pool__max_time=CAP, **resource)


def test_server_stalling_mid_body(in_process_cage: Callable[..., InProcessCage],
                                  raw_servers: Callable[..., RawServer], attach: Callable[[float], Request]) -> None:
    server = raw_servers()
    cage = start_capped(in_process_cage, server.address)
    attach(2.0)
    error, elapsed = fails(lambda: web(cage).get("/stall-body"))
    assert "deadline" in str(error) and f"{HOST}:{server.address[1]}" in str(error)
    assert CAP - 0.1 < elapsed < CAP + MARGIN
    recovers(cage, server, attach)


def test_server_never_answering(in_process_cage: Callable[..., InProcessCage],
                                raw_servers: Callable[..., RawServer], attach: Callable[[float], Request]) -> None:
    server = raw_servers()
    cage = start_capped(in_process_cage, server.address)
    attach(2.0)
    error, elapsed = fails(lambda: web(cage).post("/silent", b"anyone there?"))
    assert "deadline" in str(error)
    assert CAP - 0.1 < elapsed < CAP + MARGIN
    recovers(cage, server, attach)


def test_server_trickling_past_the_deadline(in_process_cage: Callable[..., InProcessCage],
                                            raw_servers: Callable[..., RawServer],
                                            attach: Callable[[float], Request]) -> None:
    server = raw_servers()
    cage = start_capped(in_process_cage, server.address)
    attach(2.0)
    error, elapsed = fails(lambda: web(cage).get("/trickle"))
    assert "deadline" in str(error)
    assert CAP - 0.1 < elapsed < CAP + MARGIN, "each byte arriving in time does not extend the deadline"
    recovers(cage, server, attach)


def test_at_the_callers_own_deadline_the_caller_gets_a_participant_error(
        in_process_cage: Callable[..., InProcessCage], raw_servers: Callable[..., RawServer],
        attach: Callable[[float], Request]) -> None:
    """Without a cap the resource and the coordinator give up at the same instant; whichever
    speaks first, the caller has a ParticipantError at its deadline, and the pool recovers."""
    server = raw_servers()
    cage = start_cage(in_process_cage, server.address)
    attach(1.0)
    error, elapsed = fails(lambda: web(cage).get("/silent"), ParticipantError)
    assert isinstance(error, (ResourceError, TransactionExecutionError)) and "deadline" in str(error)
    assert elapsed < 1.0 + MARGIN
    recovers(cage, server, attach)


@pytest.mark.parametrize(("path", "words"), [
    ("/early-close", "closed the connection after 10 bytes"),
    ("/wrong-length", "closed the connection after 12 bytes"),
    ("/garbage", "invalid HTTP response"),
])
def test_broken_responses_fail_at_once(in_process_cage: Callable[..., InProcessCage],
                                       raw_servers: Callable[..., RawServer], attach: Callable[[float], Request],
                                       path: str, words: str) -> None:
    server = raw_servers()
    cage = start_cage(in_process_cage, server.address)
    attach(1.0)
    error, elapsed = fails(lambda: web(cage).get(path))
    assert words in str(error)
    assert not error.recoverable, "the request may have been acted upon"
    assert elapsed < 0.5, "a broken response fails when it is seen to be, not at the deadline"
    recovers(cage, server, attach)


@pytest.mark.parametrize("path", ["/huge", "/huge-no-length"])
def test_response_over_the_default_limit(in_process_cage: Callable[..., InProcessCage],
                                         raw_servers: Callable[..., RawServer], attach: Callable[[float], Request],
                                         path: str) -> None:
    server = raw_servers()
    cage = start_cage(in_process_cage, server.address)
    attach(5.0)
    error, elapsed = fails(lambda: web(cage).get(path))
    assert "exceeds the limit of 16777216" in str(error)
    assert elapsed < 5.0
    recovers(cage, server, attach)


def test_configured_max_response_size(in_process_cage: Callable[..., InProcessCage],
                                      raw_servers: Callable[..., RawServer],
                                      attach: Callable[[float], Request]) -> None:
    server = raw_servers()
    cage = start_cage(in_process_cage, server.address, max_response_size=1000)
    attach(5.0)
    assert web(cage).get("/ok")[2] == b"ok"
    error, _ = fails(lambda: web(cage).get("/big"))
    assert "exceeds the limit of 1000" in str(error)
    recovers(cage, server, attach)


def test_connection_refused_is_recoverable_and_quick(in_process_cage: Callable[..., InProcessCage],
                                                     raw_servers: Callable[..., RawServer],
                                                     attach: Callable[[float], Request]) -> None:
    bound = socket.socket()  # bound but not listening: connections to it are refused
    bound.bind((HOST, 0))
    cage = start_cage(in_process_cage, bound.getsockname())
    attach(1.0)
    error, elapsed = fails(lambda: web(cage).get("/ok"))
    assert error.recoverable and "cannot connect" in str(error) and "refused" in str(error)
    assert elapsed < 0.5
    server = raw_servers(bound)  # now it listens
    recovers(cage, server, attach)


# --- every wait bounded ------------------------------------------------------------------------------------


def test_send_to_a_server_that_never_reads_is_bounded(in_process_cage: Callable[..., InProcessCage],
                                                      raw_servers: Callable[..., RawServer],
                                                      attach: Callable[[float], Request]) -> None:
    server = raw_servers(read=False)
    cage = start_capped(in_process_cage, server.address)
    attach(2.0)
    body = b"z" * (64 * 1024 * 1024)  # far more than the socket buffers on both sides hold
    error, elapsed = fails(lambda: web(cage).post("/", body))
    assert "deadline" in str(error)
    assert CAP - 0.1 < elapsed < CAP + MARGIN


def test_connect_is_bounded_by_the_deadline_not_connect_timeout(
        in_process_cage: Callable[..., InProcessCage], attach: Callable[[float], Request]) -> None:
    """A listener whose accept queue is full drops SYNs (Linux): connect hangs as to a blackhole."""
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(0)
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
            fillers.append(filler)
        try:
            socket.create_connection(listener.getsockname(), 0.2).close()
            pytest.skip("connecting to a full accept queue does not hang here")
        except TimeoutError:
            pass
        cage = start_cage(in_process_cage, listener.getsockname(), connect_timeout=30.0)
        attach(0.7)
        error, elapsed = fails(lambda: web(cage).get("/"), ParticipantError)
        assert isinstance(error, (ResourceError, TransactionExecutionError))
        assert elapsed < 0.7 + MARGIN, "the deadline bounds a connect when connect_timeout is further"

        cage = start_cage(in_process_cage, listener.getsockname(), connect_timeout=0.5)
        attach(5.0)
        error, elapsed = fails(lambda: web(cage).get("/"))
        assert "cannot connect" in str(error) and "timed out" in str(error) and error.recoverable
        assert 0.4 < elapsed < 0.5 + MARGIN, "connect_timeout bounds a connect when the deadline is further"
    finally:
        for sock in [*fillers, listener]:
            sock.close()


# --- TLS --------------------------------------------------------------------------------------------------


def issue_server(pki: Pki, path: Path, dns_name: str) -> Path:
    """A server certificate from the test CA for `dns_name` only (not 127.0.0.1)."""
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)]))
            .issuer_name(pki.ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
            .sign(pki.ca_key, hashes.SHA256()))
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM))
    return path


def server_tls(key_cert: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(key_cert))
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(str(client_ca))
    return context


def test_https_verified_with_the_ca(in_process_cage: Callable[..., InProcessCage],
                                    servers: Callable[..., EchoServer], attach: Callable[[float], Request],
                                    pki: Pki) -> None:
    server = servers(server_tls(pki.server_file))
    cage = start_cage(in_process_cage, server.address, ssl_ca_cert_file=str(pki.ca_file))
    attach(5.0)
    assert web(cage).get("/")[::2] == (200, b"Hello, world !")
    status, _, body = web(cage).post("/echo", b"over TLS")
    assert (status, json.loads(body)["body"]) == (200, "over TLS")
    assert server.accepted == 1, "TLS connections are kept alive too"
    assert server.sni_names == [None], "no SNI for an IP address (RFC 6066)"


def test_https_hostname_check(in_process_cage: Callable[..., InProcessCage], servers: Callable[..., EchoServer],
                              attach: Callable[[float], Request], pki: Pki, tmp_path: Path) -> None:
    server = servers(server_tls(issue_server(pki, tmp_path / "other.pem", "other.example")))
    ca = str(pki.ca_file)
    attach(5.0)
    cage = start_cage(in_process_cage, server.address, ssl_ca_cert_file=ca)
    error, _ = fails(lambda: web(cage).get("/"))
    assert "failed verification" in str(error) and "127.0.0.1" in str(error), str(error)
    assert error.recoverable

    named = start_cage(in_process_cage, server.address, ssl_ca_cert_file=ca, ssl_server_hostname="other.example")
    assert web(named).get("/")[::2] == (200, b"Hello, world !")
    assert server.sni_names[-1] == "other.example", "ssl_server_hostname is also the SNI sent"

    ignoring = start_cage(in_process_cage, server.address, ssl_ca_cert_file=ca, ssl_ignore_hostname=True)
    assert web(ignoring).get("/")[::2] == (200, b"Hello, world !")

    wrong = start_cage(in_process_cage, server.address, ssl_ca_cert_file=ca, ssl_server_hostname="third.example")
    error, _ = fails(lambda: web(wrong).get("/"))
    assert "failed verification" in str(error) and "third.example" in str(error), str(error)


def test_https_certificate_from_another_ca(in_process_cage: Callable[..., InProcessCage],
                                           servers: Callable[..., EchoServer], attach: Callable[[float], Request],
                                           pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "other-ca").mkdir()
    stranger = Pki(tmp_path / "other-ca")
    server = servers(server_tls(stranger.server_file))
    cage = start_cage(in_process_cage, server.address, ssl_ca_cert_file=str(pki.ca_file))
    attach(5.0)
    error, elapsed = fails(lambda: web(cage).get("/"))
    assert "failed verification" in str(error) and "issuer" in str(error), str(error)
    assert elapsed < 1.0


def test_https_client_certificate(in_process_cage: Callable[..., InProcessCage],
                                  servers: Callable[..., EchoServer], attach: Callable[[float], Request],
                                  pki: Pki) -> None:
    server = servers(server_tls(pki.server_file, client_ca=pki.ca_file))
    attach(5.0)
    cage = start_cage(in_process_cage, server.address, ssl_ca_cert_file=str(pki.ca_file),
                      ssl_key_cert_file=str(pki.client_file))
    assert web(cage).get("/")[::2] == (200, b"Hello, world !")
    assert server.peer_names == ["test-client"]

    # TLS 1.3: the client's handshake completes before the server checks its certificate, so
    # the refusal shows on the first read as the server's alert, or as its EOF if that comes first.
    anonymous = start_cage(in_process_cage, server.address, ssl_ca_cert_file=str(pki.ca_file))
    error, elapsed = fails(lambda: web(anonymous).get("/"))
    assert f"connection to {HOST}:{server.address[1]} failed" in str(error)
    assert elapsed < 1.0


def test_https_client_certificate_required_by_a_tls12_server(
        in_process_cage: Callable[..., InProcessCage], servers: Callable[..., EchoServer],
        attach: Callable[[float], Request], pki: Pki) -> None:
    """TLS 1.2 checks the client's certificate within the handshake: a clear, recoverable error."""
    tls12 = server_tls(pki.server_file, client_ca=pki.ca_file)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    server = servers(tls12)
    attach(5.0)
    anonymous = start_cage(in_process_cage, server.address, ssl_ca_cert_file=str(pki.ca_file))
    error, elapsed = fails(lambda: web(anonymous).get("/"))
    assert f"TLS with {HOST}:{server.address[1]} failed" in str(error) and error.recoverable, str(error)
    assert elapsed < 1.0
    cage = start_cage(in_process_cage, server.address, ssl_ca_cert_file=str(pki.ca_file),
                      ssl_key_cert_file=str(pki.client_file))
    assert web(cage).get("/")[::2] == (200, b"Hello, world !")


def test_tls_handshake_stalled_by_the_server(in_process_cage: Callable[..., InProcessCage],
                                             raw_servers: Callable[..., RawServer],
                                             attach: Callable[[float], Request], pki: Pki) -> None:
    """A server that accepts and never answers the ClientHello: the handshake is bounded too."""
    server = raw_servers(read=False)
    cage = start_cage(in_process_cage, server.address, ssl_ca_cert_file=str(pki.ca_file), connect_timeout=0.8)
    attach(2.0)
    error, elapsed = fails(lambda: web(cage).get("/"))
    assert "TLS" in str(error) and error.recoverable
    assert 0.7 < elapsed < 0.8 + MARGIN


def test_connect_and_handshake_together_are_bounded_by_connect_timeout(
        in_process_cage: Callable[..., InProcessCage], attach: Callable[[float], Request], pki: Pki) -> None:
    """The TCP connect takes about a second (the SYN dropped by a full accept queue, then
    retransmitted once the queue drains), then the server never answers the ClientHello:
    connect and handshake together must still end at connect_timeout (§2.2 of the original)."""
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(0)
    filler = socket.socket()
    filler.setblocking(False)
    filler.connect_ex(listener.getsockname())
    stopping, held = threading.Event(), []

    def drain_later() -> None:  # after the first SYN is dropped, before it is sent again
        if stopping.wait(0.5):
            return
        listener.settimeout(0.05)
        while not stopping.is_set():
            try:
                held.append(listener.accept()[0])  # accepted, never answered
            except TimeoutError:
                continue
            except OSError:
                return

    drainer = threading.Thread(target=drain_later, daemon=True)
    try:
        try:
            socket.create_connection(listener.getsockname(), 0.2).close()
            pytest.skip("connecting to a full accept queue does not hang here")
        except TimeoutError:
            pass
        cage = start_cage(in_process_cage, listener.getsockname(), ssl_ca_cert_file=str(pki.ca_file),
                          connect_timeout=1.5)
        attach(5.0)
        drainer.start()
        error, elapsed = fails(lambda: web(cage).get("/"))
        assert error.recoverable
        assert elapsed < 1.5 + MARGIN, f"connect + handshake took {elapsed:.2f}s: {error}"
    finally:
        stopping.set()
        if drainer.is_alive():
            drainer.join(5.0)
        for sock in [*held, filler, listener]:
            sock.close()


def test_standby_tls_connection_is_used_as_it_is(in_process_cage: Callable[..., InProcessCage],
                                                servers: Callable[..., EchoServer],
                                                attach: Callable[[float], Request], pki: Pki) -> None:
    """TLS 1.3 session tickets wait unread on a connection never used: not a sign it was closed."""
    server = servers(server_tls(pki.server_file))
    cage = start_cage(in_process_cage, server.address, ssl_ca_cert_file=str(pki.ca_file), pool__standby=1)
    pool = cage.cage.runtime.resources.get("web")
    pool.sweep()
    wait_until(lambda: server.accepted == 1, 5.0, message="the standby connection accepted")
    attach(5.0)
    assert web(cage).get("/")[::2] == (200, b"Hello, world !")
    assert web(cage).get("/")[1]["x-conn"] == "1" and server.accepted == 1


# --- the pool ------------------------------------------------------------------------------------------------


def test_pool_size_bounds_concurrent_connections(in_process_cage: Callable[..., InProcessCage],
                                                 servers: Callable[..., EchoServer]) -> None:
    server = servers()
    cage = start_cage(in_process_cage, server.address, pool__size=2)
    client, errors, statuses = web(cage), [], []

    def calls() -> None:
        with attached(Request(timeout=10.0, interface="test", protocol="test")):
            for _ in range(4):
                try:
                    statuses.append(client.get("/slow")[0])
                except BaseException as e:
                    errors.append(e)

    threads = [threading.Thread(target=calls) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15.0)
    assert errors == [] and statuses == [200] * 32
    assert server.max_active <= 2, "two calls at a time: the pool's threads"
    assert server.accepted <= 2 + 2


def test_idle_connections_are_closed_when_swept(in_process_cage: Callable[..., InProcessCage],
                                                servers: Callable[..., EchoServer],
                                                attach: Callable[[float], Request]) -> None:
    server = servers()
    cage = start_cage(in_process_cage, server.address, pool__idle_timeout=0.3)
    attach(5.0)
    assert web(cage).get("/")[0] == 200
    pool = cage.cage.runtime.resources.get("web")
    began = time.monotonic()

    def swept() -> bool:
        pool.sweep()  # what the cage's maintenance does every sweep_period
        return 1 in server.closed_ids
    wait_until(swept, 5.0, message="the idle connection closed by the pool")
    assert time.monotonic() - began > 0.2, "not before its idle timeout"
    assert pool.free == 0
    assert web(cage).get("/")[1]["x-conn"] == "2"


def test_connections_are_replaced_at_max_age(in_process_cage: Callable[..., InProcessCage],
                                             servers: Callable[..., EchoServer],
                                             attach: Callable[[float], Request]) -> None:
    server = servers()
    cage = start_cage(in_process_cage, server.address, pool__max_age=0.3)
    attach(10.0)
    began = time.monotonic()
    assert web(cage).get("/")[1]["x-conn"] == "1"
    wait_until(lambda: web(cage).get("/")[1]["x-conn"] == "2", 5.0, 0.02,
               message="a busy connection replaced at its max age")
    assert time.monotonic() - began > 0.2
    wait_until(lambda: 1 in server.closed_ids, 5.0, message="the old connection closed")


def test_standby_connection_closed_by_the_server_is_replaced(
        in_process_cage: Callable[..., InProcessCage], raw_servers: Callable[..., RawServer],
        attach: Callable[[float], Request]) -> None:
    """A standby connection (connected by the sweep, never used) that the server has
    closed meanwhile must not fail the first call that takes it."""
    server = raw_servers(read=True)
    cage = start_cage(in_process_cage, server.address, pool__standby=1)
    pool = cage.cage.runtime.resources.get("web")
    pool.sweep()
    assert pool.free == 1
    wait_until(lambda: server.accepted == 1, 5.0, message="the standby connection accepted")
    with server.lock:
        standby = server.sockets[0]
    standby.shutdown(socket.SHUT_RDWR)  # the server drops it, as at its idle timeout
    wait_until(lambda: 1 in server.closed_ids, 5.0, message="the server closed the standby connection")
    attach(5.0)
    status, headers, body = web(cage).get("/ok")
    assert (status, body, headers["x-conn"]) == (200, b"ok", "2")


# --- from inside a cage ------------------------------------------------------------------------------------

CALLING_HANDLER = module_source("""
    def process_request(request, response):
        status, headers, body = pmnc.transaction.web.get("/echo", {"x-via": "cage"})
        response["content"] = f"{status} {headers['x-conn']} ".encode() + body
""", ["process_request"])


def test_cage_module_calls_the_resource(in_process_cage: Callable[..., InProcessCage],
                                        servers: Callable[..., EchoServer]) -> None:
    server = servers()
    config = {"protocol": "http", "server_address": server.address, "pool__size": 2}
    cage = in_process_cage(interfaces={"http": http_config()},
                           files={"interface_http.py": CALLING_HANDLER,
                                  "config_resource_web.py": config_source(config)})
    port = cage.address("http")[1]
    for _ in range(3):
        status, _, body = http_request(port, "/anything")
        assert status == 200
        code, conn, echoed = body.split(b" ", 2)
        assert (code, conn) == (b"200", b"1"), "one pooled connection serves every request"
        assert dict(json.loads(echoed)["headers"])["X-Via"] == "cage"
    assert server.accepted == 1
