"""The HTTP(S) resource: `pmnc.transaction.<name>.get(url)` / `.post(url, body)`.

Each connection of the pool is one keep-alive socket to `server_address`.
Every wait (connect, TLS handshake, send, each read) is bounded by
`pmnc.request.remain`, so a peer that stalls, trickles or never answers
costs the caller its deadline and no more. `ResponseParser` turns bytes
into a response without touching the socket. Not transactional: the
request is sent when the participant runs; commit and rollback do nothing.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import httptools

from pmnc import request as _request
from pmnc import resource
from pmnc.errors import ConfigError, ResourceError, ResourceInputParameterError, exc_string
from pmnc.schema import RESOURCE_KEYS, Key, address, resource_file, ssl_protocol_ignored
from pmnc.tls import client_context

MAX_RESPONSE_SIZE = 16 * 1024 * 1024  # the original's limit
_READ = 65536


@dataclass
class Response:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    complete: bool = False
    keep_alive: bool = True
    until_eof: bool = False  # no length given: the body ends when the server closes


class ResponseParser:
    """Feed it a response's bytes, then `eof()` if the server closes; raises
    ResourceError for a broken or oversized response."""

    def __init__(self, limit: int = MAX_RESPONSE_SIZE) -> None:
        self.limit = limit
        self.response = Response()
        self._parser = httptools.HttpResponseParser(self)
        self._header_bytes = 0

    def feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, ResourceError):
                raise e.__context__ from None
            if not self.response.complete:
                raise _broken(f"invalid HTTP response: {e.__context__}") from None
            self.response.keep_alive = False  # bytes after the response: the connection is not reusable
        except httptools.HttpParserError as e:
            if not self.response.complete:
                raise _broken(f"invalid HTTP response: {e}") from None
            self.response.keep_alive = False

    def eof(self) -> None:
        if self.response.complete:
            return
        if self.response.until_eof:
            self.response.complete, self.response.keep_alive = True, False
            return
        raise _broken(f"the server closed the connection after {len(self.response.body)} bytes "
                      f"of an incomplete response")

    # --- httptools callbacks ---------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.response.complete:
            raise _Unasked()  # the server says more than it was asked: stop reading here
        self.response = Response()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > 65536:
            raise _broken("response headers exceed 64 KiB")
        self.response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        response, headers = self.response, self.response.headers
        response.status = self._parser.get_status_code()
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            raise _broken(f"response of {length} bytes exceeds the limit of {self.limit}")
        response.until_eof = (length is None and "chunked" not in headers.get("transfer-encoding", "")
                              and response.status not in (204, 304) and response.status >= 200)
        response.keep_alive = self._parser.should_keep_alive() and not response.until_eof

    def on_body(self, body: bytes) -> None:
        self.response.body += body
        if len(self.response.body) > self.limit:
            raise _broken(f"response exceeds the limit of {self.limit} bytes")

    def on_message_complete(self) -> None:
        if 100 <= self.response.status < 200:
            self.response = Response()  # an interim answer: the real one follows
            return
        self.response.complete = True


class _Unasked(Exception):
    pass


def _broken(description: str) -> ResourceError:
    return ResourceError(description, recoverable=False, terminal=True)


# The keys of config_resource_<name>.py (a module constant, not a class attribute: any name
# of the xmlrpc resource built on this one is a remote method).
KEYS = RESOURCE_KEYS.extend(
    server_address=Key(None, address),  # (host, port)
    connect_timeout=Key(3.0, float),
    extra_headers=Key({}),  # sent with every request; a call's own headers win
    http_version=Key("HTTP/1.1", str),
    max_response_size=Key(MAX_RESPONSE_SIZE, int),
    ssl_ca_cert_file=Key(None), ssl_key_cert_file=Key(None), ssl_ciphers=Key(None),  # TLS if a CA is given
    ssl_server_hostname=Key(None), ssl_ignore_hostname=Key(False, bool),
    ssl_protocol=Key(None, note=ssl_protocol_ignored),  # the original's: TLS 1.2 or later, whatever it says
)


class Resource(resource.Resource):
    """One keep-alive connection to an HTTP(S) server."""

    transactional = False  # a request is sent when the participant runs
    inline = True  # connect, handshake, send and every read are bounded by the deadline

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name, config)
        s = self.config = KEYS.read(config, resource_file(name))
        if s["server_address"] is None:
            raise ConfigError(f"{resource_file(name)}: server_address must be (host, port)")
        self.host, self.port = s["server_address"]
        self.connect_timeout: float = s["connect_timeout"]
        self.extra_headers = {str(k).lower(): str(v) for k, v in dict(s["extra_headers"] or {}).items()}
        self.http_version: str = s["http_version"]
        if self.http_version not in ("HTTP/1.0", "HTTP/1.1"):
            raise ConfigError(f"resource {name}: http_version must be HTTP/1.0 or HTTP/1.1")
        self.max_response_size: int = s["max_response_size"]
        self._tls = self._ssl_context(s)
        self.server_hostname: str = s["ssl_server_hostname"] or self.host
        self.sock: socket.socket | None = None

    @staticmethod
    def _ssl_context(s: dict[str, Any]) -> ssl.SSLContext | None:
        return client_context(s) if s["ssl_ca_cert_file"] else None  # TLS if a CA is given

    # --- lifecycle ---------------------------------------------------------------------

    def connect(self) -> None:
        timeout = min(self.connect_timeout, _remain())
        if timeout <= 0:
            raise ResourceError(f"no time left to connect to {self.host}:{self.port}", recoverable=True)
        until = time.monotonic() + timeout
        try:
            sock = socket.create_connection((self.host, self.port), timeout)
        except OSError as e:
            raise ResourceError(f"cannot connect to {self.host}:{self.port}: {exc_string(e, stack=False)}",
                                recoverable=True) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None:
            sock.settimeout(max(until - time.monotonic(), 0.001))  # connect and handshake share the timeout
            sock = self._handshake(sock)
        self.sock = sock

    def _handshake(self, sock: socket.socket) -> socket.socket:
        try:
            return self._tls.wrap_socket(sock, server_hostname=self.server_hostname)  # type: ignore[union-attr]
        except ssl.SSLCertVerificationError as e:
            sock.close()
            raise ResourceError(f"server {self.host}:{self.port} failed verification: {e.verify_message}",
                                recoverable=True) from None
        except (OSError, ssl.SSLError) as e:
            sock.close()
            raise ResourceError(f"TLS with {self.host}:{self.port} failed: {exc_string(e, stack=False)}",
                                recoverable=True) from None

    def disconnect(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    # --- calls ---------------------------------------------------------------------------

    def get(self, url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", url, None, headers)

    def post(self, url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        if not isinstance(body, (bytes, bytearray)):
            raise ResourceInputParameterError(f"resource {self.name}: post body must be bytes")
        return self.request("POST", url, bytes(body), headers)

    def request(self, method: str, url: str, body: bytes | None,
                headers: dict[str, str] | None) -> tuple[int, dict[str, str], bytes]:
        """One exchange: (status, lower-cased headers, body). Statuses never raise."""
        data = self._render(method, url, body, headers or {})
        if self._dropped():
            self.disconnect()  # the server closed the idle keep-alive connection: start afresh
            self.connect()
        response = self._exchange(data)
        if not response.keep_alive:
            self.expire()
        return response.status, response.headers, bytes(response.body)

    def _render(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> bytes:
        if not isinstance(url, str) or not url.startswith("/") or any(c in url for c in " \r\n"):
            raise ResourceInputParameterError(f"resource {self.name}: url must be a path like /x?y, got {url!r}")
        merged = {"host": self.host if self.port in (80, 443) else f"{self.host}:{self.port}",
                  "connection": "keep-alive", "cache-control": "no-cache", **self.extra_headers}
        for name, value in headers.items():
            if not isinstance(name, str) or not isinstance(value, str) or "\n" in name + value:
                raise ResourceInputParameterError(f"resource {self.name}: header {name!r} must be one-line str")
            merged[name.lower()] = value
        if body is not None:
            merged["content-length"] = str(len(body))
        lines = [f"{method} {url} {self.http_version}"]
        lines += [f"{'-'.join(p.capitalize() for p in n.split('-'))}: {v}" for n, v in merged.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + (body or b"")

    def _dropped(self) -> bool:
        """An idle connection that has something to read was closed by the server."""
        if self.sock is None:
            return True
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        if not readable:
            return False
        if not isinstance(self.sock, ssl.SSLSocket):
            return True  # EOF, or bytes nobody asked for
        # TLS 1.3 session tickets arrive after the handshake and make an unused connection readable
        self.sock.setblocking(False)
        try:
            self.sock.recv(1)
        except ssl.SSLWantReadError:
            return False
        except OSError:
            return True
        return True

    def _exchange(self, data: bytes) -> Response:
        sock = self.sock
        if sock is None:
            raise ResourceError(f"resource {self.name} is not connected", recoverable=True)
        parser = ResponseParser(self.max_response_size)
        try:
            sock.settimeout(_remain_or_fail(self.name, "to send the request"))
            sock.sendall(data)
            while not parser.response.complete:
                sock.settimeout(_remain_or_fail(self.name, "waiting for the response"))
                chunk = sock.recv(_READ)
                if chunk:
                    parser.feed(chunk)
                else:
                    parser.eof()
        except ResourceError:
            self.expire()
            raise
        except TimeoutError:
            self.expire()
            raise ResourceError(f"request deadline waiting for {self.host}:{self.port}") from None
        except OSError as e:
            self.expire()
            raise ResourceError(f"connection to {self.host}:{self.port} failed: {exc_string(e, stack=False)}") \
                from None
        return parser.response


def _remain() -> float:
    request = _request.current()
    return 3600.0 if request.deadline is None else request.remain


def _remain_or_fail(name: str, doing: str) -> float:
    remain = _remain()
    if remain <= 0:
        raise TimeoutError(f"{name}: no time left {doing}")
    return remain
