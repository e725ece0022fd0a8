"""The guarded floor: http_floor's hand-off server with each guarantee the cage gives a GET, the leanest way found.

    .venv/bin/python bench/http_floor.py   # serves it as "guarded", beside handoff, inline and uvicorn

Issue 20 asks whether the sample cage can reach 0.8 x uvicorn without giving
up a guarantee. http_floor's `handoff` server answers how fast a server with
user code on worker threads can be; this one adds back, in a few hundred
lines, what a GET through the sample cage gets beyond that, so that the
distance between it and the cage is the cost of the cage's own code and not
of its guarantees:

- limits while parsing (URL, header block, body, method, version), header
  names lower-cased, the headers the cage looks at checked only when present;
- a request object per request (id made when asked for, deadline, sequence),
  counted in and out at an intake under a mutex, and attached to the worker's
  thread while the handler runs;
- the worker pool earliest deadline first (a heap under a mutex, one idle
  thread woken per queued unit through a SimpleQueue token, as the cage's);
- the deadline: one timer per connection, moved only earlier, a 504 when it
  comes first; the answer and the deadline settle the request once, under a
  lock; an expired unit never starts;
- the handler called through a module's current version under a reader
  count (hot reload's lock), with a type check of its two parameters;
- the response checked (status, headers, content type, charset) once per
  kind of answer, then rendered from the remembered head;
- keep-alive up to 1000 requests a connection, an idle timeout, a statistics
  record per request.

Left out, because a GET of this benchmark never exercises them: admission
limits and evictions, pipelining and slices, 100-continue, chunked bodies,
TLS, gzip. It is a measuring stick, not a server: see bench/README.md.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import httptools

HOST = "127.0.0.1"
TIMEOUT, IDLE_TIMEOUT, HEAD_TIMEOUT = 10.0, 120.0, 5.0
MAX_URL, MAX_HEAD, MAX_BODY, MAX_REQUESTS = 8192, 65536, 1048576, 1000
ALLOWED = frozenset({"GET", "POST"})
LOOKED_AT = frozenset({"content-encoding", "transfer-encoding", "content-length", "authorization", "expect"})
JOINED = frozenset({"transfer-encoding", "content-encoding"})
REASONS = {200: "OK", 400: "Bad Request", 405: "Method Not Allowed", 413: "Content Too Large",
           414: "URI Too Long", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported"}
monotonic = time.monotonic


class Refused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


# --- the request, the intake, the statistics --------------------------------------------------------

_ids = random.Random()
_sequence = itertools.count()


class Request:
    __slots__ = ("_id", "deadline", "failed", "interface", "parameters", "sequence", "start", "started")

    def __init__(self, interface: str, parameters: dict[str, Any], start: float, timeout: float) -> None:
        self._id: str | None = None
        self.interface, self.parameters, self.start = interface, parameters, start
        self.started: float | None = None
        self.failed = False
        self.deadline = start + timeout
        self.sequence = next(_sequence)

    @property
    def unique_id(self) -> str:
        if self._id is None:
            self._id = f"RQ-{time.strftime('%Y%m%d%H%M%S')}-{_ids.getrandbits(48):012X}"
        return self._id


_current = threading.local()


class Intake:
    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.active: dict[str, int] = {}
        self.open = True
        self.records: collections.deque[tuple[Any, ...]] = collections.deque(maxlen=100_000)

    def begin(self, interface: str, parameters: dict[str, Any], start: float) -> Request:
        self.mutex.acquire()
        try:
            if not self.open:
                raise Refused(503)
            self.active[interface] = self.active.get(interface, 0) + 1
        finally:
            self.mutex.release()
        return Request(interface, parameters, start, TIMEOUT)

    def end(self, request: Request, ok: bool) -> None:
        self.mutex.acquire()
        self.active[request.interface] -= 1
        self.mutex.release()
        now, started = monotonic(), request.started
        self.records.append((request.interface, (started or now) - request.start, now - (started or now),
                             now - request.start, ok and not request.failed, time.time()))


# --- the handler: a module's current version, its reader count, the type check ------------------------


class Module:
    def __init__(self, attrs: dict[str, Callable[..., Any]]) -> None:
        self.attrs = attrs
        self.mutex = threading.Lock()
        self.readers = 0
        self.reloading = False

    def call(self, attr: str, args: tuple[Any, ...]) -> Any:
        self.mutex.acquire()
        if self.reloading:
            self.mutex.release()
            raise RuntimeError("reloading")
        self.readers += 1
        self.mutex.release()
        try:
            return self.attrs[attr](*args)
        finally:
            self.mutex.acquire()
            self.readers -= 1
            self.mutex.release()


def process_request(request: dict[str, Any], response: dict[str, Any]) -> None:
    """The sample cage's handler."""
    response["content"] = "Hello, world !"
    response["headers"]["content-type"] = "text/plain"


def typechecked(func: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    def checked(request: Any, response: Any) -> None:
        if not isinstance(request, dict) or not isinstance(response, dict):
            raise TypeError("process_request takes two dicts")
        func(request, response)
    return checked


MODULE = Module({"process_request": typechecked(process_request)})

# --- the response -------------------------------------------------------------------------------------

_HEADS: dict[tuple[Any, ...], tuple[bytes, bool]] = {}


def finish(response: dict[str, Any], keep_alive: bool) -> tuple[bytes, bool]:
    status, headers, content = response["status_code"], response["headers"], response["content"]
    if type(status) is not int or status not in REASONS or type(headers) is not dict:
        raise ValueError("a bad response")
    key = (status, tuple(headers.items()), type(content), keep_alive)
    known = _HEADS.get(key)
    if known is None:
        known = _HEADS[key] = _head(status, headers, content, keep_alive)
    head, keep_alive = known
    body = content.encode("utf-8") if type(content) is str else bytes(content)
    return b"".join((head, str(len(body)).encode(), b"\r\nConnection: keep-alive\r\n\r\n" if keep_alive
                     else b"\r\nConnection: close\r\n\r\n", body)), keep_alive


def _head(status: int, headers: dict[str, str], content: Any, keep_alive: bool) -> tuple[bytes, bool]:
    headers = {name.lower(): value for name, value in headers.items()}
    if type(content) is str:
        if not headers.get("content-type", "").startswith("text/"):
            raise ValueError("str content needs a text/ content type")
        if "charset=" not in headers["content-type"]:
            headers["content-type"] += "; charset=utf-8"
    elif type(content) is not bytes:
        raise ValueError("content must be str or bytes")
    wanted = headers.pop("connection", "keep-alive")
    headers.setdefault("cache-control", "no-cache")
    headers.setdefault("pragma", "no-cache")
    lines = [f"HTTP/1.1 {status} {REASONS[status]}", *(f"{k.title()}: {v}" for k, v in headers.items())]
    return "\r\n".join([*lines, "Content-Length: "]).encode("latin-1"), keep_alive and wanted == "keep-alive"


def error(status: int) -> bytes:
    body = REASONS[status].encode()
    return b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (
        status, body, len(body), body)


# --- the worker pool, earliest deadline first ---------------------------------------------------------


class Pool:
    def __init__(self, size: int) -> None:
        self.size, self.mutex = size, threading.Lock()
        self.heap: list[tuple[float, int, Flight]] = []
        self.tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
        self.idle = self.coming = self.busy = self.threads = 0

    def submit(self, flight: Flight) -> None:
        request = flight.request
        self.mutex.acquire()
        heapq.heappush(self.heap, (request.deadline, request.sequence, flight))
        self._wake()
        self.mutex.release()

    def _wake(self) -> None:
        if self.heap and not self.coming and self.busy < self.size:
            if self.idle:
                self.idle -= 1
                self.coming += 1
                self.tokens.put(None)
            elif self.threads < self.size:
                self.coming += 1
                self.threads += 1
                threading.Thread(target=self.work, daemon=True).start()

    def work(self) -> None:
        mutex = self.mutex
        mutex.acquire()
        self.coming -= 1
        while True:
            if self.heap and self.busy < self.size:
                self.busy += 1
                flight = heapq.heappop(self.heap)[2]
                if self.heap:
                    self._wake()
                mutex.release()
                try:
                    flight.run()
                finally:
                    mutex.acquire()
                    self.busy -= 1
                continue
            self.idle += 1
            mutex.release()
            self.tokens.get()
            mutex.acquire()
            self.coming -= 1


# --- one request between the loop and a worker, settled once ------------------------------------------

settling = threading.Lock()


class Flight:
    __slots__ = ("body", "conn", "headers", "keep_alive", "method", "request", "settled", "url")

    def __init__(self, conn: Connection, request: Request, method: str, url: str, headers: dict[str, str],
                 body: bytes, keep_alive: bool) -> None:
        self.conn, self.request, self.method, self.url = conn, request, method, url
        self.headers, self.body, self.keep_alive = headers, body, keep_alive
        self.settled = False

    def run(self) -> None:
        """On a worker: the handler, unless the deadline has come (or the client gone)."""
        if self.settled:
            return
        request = self.request
        now = monotonic()
        if now >= request.deadline:
            self.done(None, False)
            return
        request.started = now
        previous = getattr(_current, "request", None)
        _current.request = request
        try:
            keep_alive = self.keep_alive
            self.headers["connection"] = "keep-alive" if keep_alive else "close"
            call = {"method": self.method, "url": self.url, "headers": self.headers, "content": self.body}
            response = {"status_code": 200, "content": b"", "headers": {
                "content-type": "application/octet-stream", "connection": "keep-alive" if keep_alive else "close"}}
            try:
                MODULE.call("process_request", (call, response))
                answer: tuple[bytes, bool] | None = finish(response, keep_alive)
            except Exception:
                request.failed = True
                answer = (error(500), False)
        finally:
            _current.request = previous
        self.done(answer, True)

    def done(self, answer: tuple[bytes, bool] | None, ok: bool) -> None:
        settling.acquire()
        settled, self.settled = self.settled, True
        settling.release()
        if not settled:
            INTAKE.end(self.request, ok)
            post(self.conn.answered, (self, answer))


# --- posting to the loop: one wake-up for what comes between two iterations -------------------------------

_posted: collections.deque[tuple[Callable[[Any], None], Any]] = collections.deque()
_pending = [False]
LOOP: asyncio.AbstractEventLoop


def post(callback: Callable[[Any], None], arg: Any) -> None:
    _posted.append((callback, arg))
    if not _pending[0]:
        _pending[0] = True
        LOOP.call_soon_threadsafe(_run_posted)


def _run_posted() -> None:
    _pending[0] = False
    while _posted:
        callback, arg = _posted.popleft()
        callback(arg)


# --- the connection -----------------------------------------------------------------------------------

HEAD, SEATED, IN_FLIGHT, IDLE, CLOSED = range(5)
INTAKE = Intake()
POOL: Pool


class Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self.current: Flight | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = self.deadline = self.now = 0.0
        self.served = 0
        self.phase = HEAD
        self.refusal: int | None = None
        self.url, self.head, self.headers, self.body, self.method, self.started = b"", 0, {}, b"", "", 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.tokens = {"peer_ip": transport.get_extra_info("peername")[0], "encrypted": False}
        self.first_byte = monotonic()
        self.arm(self.first_byte + HEAD_TIMEOUT)

    def data_received(self, data: bytes) -> None:
        if self.phase == CLOSED or self.refusal is not None:
            return
        if self.phase == IDLE:
            self.phase = SEATED
        self.now = monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            self.refusal = e.__context__.status if isinstance(e.__context__, Refused) else 400
        except httptools.HttpParserError:
            self.refusal = 400
        if self.phase == HEAD and self.queue:
            self.phase = SEATED
        if self.current is None:
            self.next()

    # the parser's callbacks

    def on_message_begin(self) -> None:
        self.started, self.url, self.head, self.headers, self.body = self.now, b"", 0, {}, b""

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > MAX_URL:
            raise Refused(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head += len(name) + len(value) + 4
        if self.head > MAX_HEAD:
            raise Refused(431)
        key, headers = name.decode("latin-1").lower(), self.headers
        if key in JOINED and key in headers:
            headers[key] += ", " + value.decode("latin-1")
        else:
            headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.method = method = self.parser.get_method().decode("ascii", "replace").upper()
        if method not in ALLOWED:
            raise Refused(405)
        if self.parser.get_http_version() not in ("1.0", "1.1"):
            raise Refused(505)
        if not LOOKED_AT.isdisjoint(self.headers):
            pass  # (what the cage checks of encodings, lengths, credentials, 100-continue: not in a GET)

    def on_body(self, body: bytes) -> None:
        self.body += body
        if len(self.body) > MAX_BODY:
            raise Refused(413)

    def on_message_complete(self) -> None:
        self.headers["content-length"] = str(len(self.body))
        self.queue.append((self.method, self.url.decode("latin-1"), self.headers, self.body,
                           self.parser.should_keep_alive(), self.started))

    # the requests, one at a time

    def next(self) -> None:
        if not self.queue:
            if self.refusal is not None:
                self.write(error(self.refusal))
                self.close()
            return
        method, url, headers, body, keep_alive, started = self.queue.popleft()
        try:
            request = INTAKE.begin("http", {"auth_tokens": dict(self.tokens)},
                                   self.first_byte if self.served == 0 else started)
        except Refused:
            self.write(error(503))
            self.close()
            return
        self.phase = IN_FLIGHT
        self.current = flight = Flight(self, request, method, url, headers, body,
                                       keep_alive and self.served + 1 < MAX_REQUESTS)
        self.arm(request.deadline)
        POOL.submit(flight)

    def answered(self, item: tuple[Flight, tuple[bytes, bool] | None]) -> None:
        flight, answer = item
        if self.current is flight:
            self.finished(*(answer or (error(504), False)))

    def finished(self, data: bytes, keep_alive: bool) -> None:
        self.current = None
        self.served += 1
        self.write(data)
        if not keep_alive:
            self.close()
        elif self.queue or self.refusal is not None:
            self.phase = SEATED
            self.next()
        else:
            self.phase = IDLE
            self.arm(monotonic() + IDLE_TIMEOUT)

    # the one timer, moved only earlier

    def arm(self, deadline: float) -> None:
        self.deadline = deadline
        if self.timer is None or self.timer_at > deadline:
            if self.timer is not None:
                self.timer.cancel()
            self.timer, self.timer_at = LOOP.call_at(deadline, self.on_timer), deadline

    def on_timer(self) -> None:
        self.timer = None
        if self.phase != CLOSED and LOOP.time() < self.deadline:
            self.timer, self.timer_at = LOOP.call_at(self.deadline, self.on_timer), self.deadline
        elif self.phase == IN_FLIGHT and self.current is not None:
            flight = self.current
            settling.acquire()
            settled, flight.settled = flight.settled, True
            settling.release()
            if not settled:
                INTAKE.end(flight.request, False)
                self.finished(error(504), False)
        elif self.phase != CLOSED:
            self.close()

    def write(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        self.phase = CLOSED
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.phase != CLOSED:
            self.close()
        if self.current is not None:
            self.current.done(None, False)  # settles it if the worker has not: its answer is dropped
            self.current = None


async def serve(port: int, threads: int) -> None:
    global LOOP, POOL
    LOOP = asyncio.get_running_loop()
    POOL = Pool(threads)
    server = await LOOP.create_server(Connection, HOST, port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"http_floor: guarded on http://{HOST}:{bound}/, {threads} worker threads", flush=True)
    await server.serve_forever()
