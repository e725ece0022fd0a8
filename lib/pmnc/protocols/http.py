"""The HTTP(S) interface: an asyncio listener, an adapter over the one request lifecycle.

Path of one request: bytes arrive on the cage's event loop → `RequestParser`
→ a `Request` whose clock started at the connection's accept (or at the
first byte of a later keep-alive request), begun at the intake → the worker
pool, earliest deadline first (`lifecycle.submit`) →
`interface_<name>.process_request(request, response)` → the response is
checked and rendered on the worker → back on the loop and written. If the
deadline comes first, the client gets 504 at once and the worker's late
result is dropped. One request per connection is processed at
a time, so answers never cross between requests.

Against slow and greedy clients, admission has two stages, because the one
thing that tells a real client from a trickler is that it sends a whole head
at once. A connection waiting for a request head (its first, or a keep-alive
connection's next) is a "head": it holds no slot, it gets 408 at
`header_timeout`, and heads are bounded on their own, `max_pending_heads` in
all and a client address's share of them. At a heads limit a newcomer takes
the place of the oldest head (its address's, at the share) only if that head
has waited longer than a short grace: connections accepted in one batch,
which asyncio makes before reading any of them, never evict each other, and
tricklers that reconnect at once turn over at most `max_pending_heads` / grace
heads a second. A newcomer that finds no place is not refused at once but
kept "on probation" (at most `max_pending_heads` of them, beyond that 503):
if its first read, within the grace, holds a whole head it goes on as below,
else it gets 503. So tricklers that fill their address's share of the heads
cost a normal client from that address one read, not its request. Once its
head is in, a connection takes one of `max_connections` slots (at most
`max_connections_per_ip` for one address) and keeps it while its request runs,
its body arrives and it idles between keep-alive requests; with no slot free,
the oldest idle keep-alive connection (its address's, at the share) goes, or
the request is answered 503. A handler that fails with a deadline error gets
the same 504 as one the deadline beats.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import re
import ssl
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from pmnc import interfaces, log
from pmnc.errors import ConfigError, DeadlineError, IntakeClosedError, exc_string
from pmnc.lifecycle import InFlight, Outcome
from pmnc.protocols.httpclient import Resource as Resource  # the resource side of protocol "http"
from pmnc.protocols.httpwire import (
    Continue,
    HttpError,
    HttpRequest,
    Limits,
    RequestParser,
    error_response,
    finish_response,
    new_response,
)
from pmnc.request import Request
from pmnc.request import current as current_request
from pmnc.schema import Key, address, ssl_protocol_ignored

if TYPE_CHECKING:
    from pmnc.runtime import Runtime

MAX_PIPELINED = 16  # parsed requests a connection may hold before we stop reading
SLICE, MAX_SLICE = 512, 262144  # bytes parsed at a time: see Connection._parse


class Interface(interfaces.Interface):
    protocol = "http"
    keys = interfaces.Interface.keys.extend(
        listener_address=Key(None, address),  # (host, port)
        max_connections=Key(100, int),
        # one address may not take every slot (behind a proxy, raise it to max_connections)
        max_connections_per_ip=Key(None, int),  # None: half of max_connections
        # connections still waiting for a head hold no slot, but each is a descriptor: a bound of their own
        max_pending_heads=Key(1000, int),
        # a head comes in one or two packets: seconds are plenty, and a trickler is let go soon
        header_timeout=Key(5.0, float),
        ssl_key_cert_file=Key(None), ssl_ca_cert_file=Key(None), ssl_ciphers=Key(None),
        ssl_client_cert_required=Key(False, bool),
        ssl_protocol=Key(None, note=ssl_protocol_ignored),  # the original's: TLS 1.2 or later, whatever it says
        gzip_content_types=Key(()),  # regexes, each matching a whole content type, e.g. "text/.+"
        response_encoding=Key("utf-8", str),
        original_ip_header_fields=Key((), tuple),
        keep_alive_support=Key(True, bool),
        keep_alive_idle_timeout=Key(120.0, float),
        keep_alive_max_requests=Key(1000, int),
        error_tracebacks=Key(False, bool),
        max_url_size=Key(8192, int), max_header_size=Key(65536, int), max_body_size=Key(1048576, int),
        allowed_methods=Key(("GET", "POST")),
    )

    def __init__(self, name: str, runtime: Runtime, config: dict[str, Any]) -> None:
        super().__init__(name, runtime, config)
        s = self.config
        if s["listener_address"] is None:
            raise ConfigError(f"config_interface_{name}.py: listener_address must be (host, port)")
        self.host, self.port = s["listener_address"]
        self.max_connections: int = s["max_connections"]
        per_ip = s["max_connections_per_ip"]
        self.max_connections_per_ip: int = max(1, self.max_connections // 2) if per_ip is None else per_ip
        self.max_pending_heads: int = s["max_pending_heads"]
        self.header_timeout = min(s["header_timeout"], self.request_timeout)
        if min(self.max_connections, self.max_connections_per_ip, self.max_pending_heads) < 1 \
                or self.header_timeout <= 0.0:
            raise ConfigError(f"config_interface_{name}.py: max_connections, max_connections_per_ip, "
                              f"max_pending_heads and header_timeout must be positive")
        # one address's share of the heads is its share of the slots
        share = min(self.max_connections_per_ip, self.max_connections) / self.max_connections
        self.max_pending_heads_per_ip = max(1, int(self.max_pending_heads * share))
        # a head younger than this is never evicted: time for its client's head to be read
        self.head_grace = min(1.0, self.header_timeout / 2)
        self.ssl_key_cert_file: str | None = s["ssl_key_cert_file"]
        self.ssl_ca_cert_file: str | None = s["ssl_ca_cert_file"]
        self.ssl_ciphers: str | None = s["ssl_ciphers"]
        self.ssl_client_cert_required: bool = s["ssl_client_cert_required"]
        if self.ssl_client_cert_required and not (self.ssl_key_cert_file and self.ssl_ca_cert_file):
            raise ConfigError(f"config_interface_{name}.py: ssl_client_cert_required needs HTTPS "
                              f"(ssl_key_cert_file and ssl_ca_cert_file)")
        self.gzip_content_types = _gzip_patterns(name, s["gzip_content_types"])
        self.response_encoding: str = s["response_encoding"]
        self.original_ip_header_fields: tuple[str, ...] = s["original_ip_header_fields"]
        self.keep_alive_support: bool = s["keep_alive_support"]
        self.keep_alive_idle_timeout: float = s["keep_alive_idle_timeout"]
        self.keep_alive_max_requests: int = s["keep_alive_max_requests"]
        self.error_tracebacks: bool = s["error_tracebacks"]
        self.limits = Limits(
            max_url_size=s["max_url_size"], max_header_size=s["max_header_size"], max_body_size=s["max_body_size"],
            allowed_methods=frozenset(m.upper() for m in s["allowed_methods"]),
        )
        self.connections: set[Connection] = set()  # all of them: heads, on probation and slot holders
        self.heads = _Waiting()  # connections waiting for a request head: silent, trickling it, or a whole one unread
        self.probation: set[Connection] = set()  # newcomers refused a head's place: their first read decides
        self.slots = _Waiting()  # connections whose head is in: a request in flight, a body on its way, or idle
        self.idle = _Idle(self.slots)  # idle keep-alive connections (holding slots)
        self.ceasing = False
        self._server: asyncio.base_events.Server | None = None

    # --- lifecycle (called from the cage thread) --------------------------------

    def start(self) -> None:
        self.lifecycle = self.runtime.lifecycle
        self.loop_thread = self.runtime.loop  # answers come back to the loop through it
        self.loop = self.loop_thread.loop
        self._server = self.runtime.loop.run(self._listen(), timeout=3.0)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = (host, port)
        scheme = "https" if self._server_ssl else "http"
        log.message(f"interface {self.name} listens on {scheme}://{host}:{port}/")

    @property
    def listener_address(self) -> tuple[str, int]:
        """The address bound, by the original's name (its self-tests connect to it)."""
        return self.address

    async def _listen(self) -> asyncio.base_events.Server:
        self._server_ssl = self._ssl_context()
        return await self.loop.create_server(
            lambda: Connection(self), self.host, self.port, backlog=256, reuse_address=True,
            ssl=self._server_ssl, ssl_handshake_timeout=self.request_timeout if self._server_ssl else None)

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not (self.ssl_key_cert_file and self.ssl_ca_cert_file):
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.ssl_key_cert_file)
        context.load_verify_locations(self.ssl_ca_cert_file)
        context.verify_mode = ssl.CERT_REQUIRED if self.ssl_client_cert_required else ssl.CERT_OPTIONAL
        if self.ssl_ciphers:
            context.set_ciphers(self.ssl_ciphers)
        return context

    def cease(self) -> None:
        self._on_loop(self._cease())

    async def _cease(self) -> None:
        self.ceasing = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.idle):
            connection.close()

    def stop(self) -> None:
        self._on_loop(self._stop())

    async def _stop(self) -> None:
        for connection in list(self.connections):
            connection.close()

    def _on_loop(self, coro: Any) -> None:
        self.runtime.loop.run(coro, timeout=3.0)

    # --- bookkeeping (on the loop) -----------------------------------------------

    def admit(self, connection: Connection) -> str | None:
        """Room among the heads for a new connection, or a keep-alive one whose next
        head has begun and not ended (it gives up its slot); or why there is none.

        At the per-address share of max_pending_heads, that address's oldest head
        goes; at the limit, anybody's; but only a head older than head_grace. A
        real client's whole head is read within milliseconds, so its connection
        is soon out of the heads; one accepted in the same batch as a newcomer
        has had no chance to be read, and is kept.
        """
        self.slots.discard(connection)
        self.heads.discard(connection)
        refusal = self._room(connection.peer_ip, self.heads, self.max_pending_heads, self.max_pending_heads_per_ip,
                             self.heads, time.monotonic() - self.head_grace)
        if refusal is None:
            self.connections.add(connection)
            self.heads.add(connection)
        return refusal

    def on_probation(self, connection: Connection) -> bool:
        """Keep a newcomer refused among the heads until its first read, if there are fewer
        than max_pending_heads such: each is a descriptor."""
        if len(self.probation) >= self.max_pending_heads:
            return False
        self.connections.add(connection)
        self.probation.add(connection)
        return True

    def seat(self, connection: Connection) -> str | None:
        """A slot for a connection whose head is in, or why there is none: at the
        per-address share, that address's oldest idle keep-alive connection goes;
        at the limit, anybody's."""
        refusal = self._room(connection.peer_ip, self.slots, self.max_connections, self.max_connections_per_ip,
                             self.idle, float("inf"))
        if refusal is None:
            self.slots.add(connection)
        return refusal

    def _room(self, ip: str, held: _Waiting, limit: int, share: int, waiting: _Waiting | _Idle,
              cutoff: float) -> str | None:
        if held.count(ip) >= share and not self._evict(waiting, ip, cutoff):
            return "too many connections from your address"
        if len(held) >= limit and not self._evict(waiting, None, cutoff):
            return "too many connections"
        return None

    @staticmethod
    def _evict(waiting: _Waiting | _Idle, ip: str | None, cutoff: float) -> bool:
        """Close the oldest of `waiting` (of address `ip`, if given) if it has waited since before
        `cutoff`; False if none has."""
        oldest = waiting.oldest(ip, cutoff)
        if oldest is None:
            return False
        oldest.close()  # its place is free at once
        return True

    def forget(self, connection: Connection) -> None:
        """The connection has closed: its place is free."""
        self.connections.discard(connection)
        self.heads.discard(connection)
        self.probation.discard(connection)
        self.slots.discard(connection)

    # --- the request, on a worker thread ---------------------------------------------

    def handle(self, http: HttpRequest, keep_alive: bool) -> tuple[bytes, bool]:
        """Run the handler and render its response (or a 500) to bytes."""
        headers = http.headers
        request = {"method": http.method, "url": http.url, "headers": headers, "content": http.content}
        headers["connection"] = "keep-alive" if keep_alive else "close"
        response = new_response(keep_alive)
        accept_encoding = headers.get("accept-encoding", "") if self.gzip_content_types else ""  # before the handler
        try:
            self.lifecycle.handle(self.handler, "process_request", (request, response))
            if self.ceasing:  # the connection closes after this answer: say so
                keep_alive = False
                response["headers"]["connection"] = "close"
            return finish_response(response, keep_alive, self.response_encoding,
                                   self.gzip_content_types, accept_encoding)
        except Exception as e:
            if self.out_of_time(e, f"request {http.method} {http.url[:200]}"):
                return self.deadline_response()[0], False
            log.error(f"request {http.method} {http.url[:200]} failed: {exc_string(e, stack=False)}")
            log.debug(f"request failed: {exc_string(e)}")
            return error_response(500, exc_string(e, stack=self.error_tracebacks)), False

    def deadline_response(self) -> tuple[bytes, str]:
        """The answer to a request whose deadline came first (it closes the connection),
        and what the log calls it; a protocol on top of HTTP may answer its own way."""
        return error_response(504, "request deadline has expired"), "504"

    def out_of_time(self, e: Exception, what: str) -> bool:
        """Whether the handler's exception is its deadline (then it is logged here): a
        DeadlineError raised anywhere, another cage's included, or any error once the
        request has expired (a transaction that ran out of time says so in its own type).
        The client gets deadline_response(), never the text, which may name peers."""
        if not (isinstance(e, DeadlineError) or current_request().expired):
            return False
        log.warning(f"{what} has run out of time, the client gets {self.deadline_response()[1]}: "
                    f"{exc_string(e, stack=False)}")
        return True


def _gzip_patterns(name: str, patterns: Any) -> tuple[re.Pattern[str], ...]:
    """gzip_content_types: regexes each matching a whole content type, e.g. "text/.+"."""
    if isinstance(patterns, str):
        patterns = (patterns,)
    try:
        return tuple(re.compile(pattern, re.IGNORECASE) for pattern in patterns)
    except (re.error, TypeError) as e:
        raise ConfigError(f"config_interface_{name}.py: gzip_content_types: {e}") from None


class _Waiting:
    """Connections that wait for their clients, oldest first, also by client address,
    each with when it began to wait here."""

    def __init__(self) -> None:
        self.all: dict[Connection, float] = {}
        self.by_ip: dict[str, dict[Connection, float]] = {}

    def __len__(self) -> int:
        return len(self.all)

    def __contains__(self, connection: object) -> bool:
        return connection in self.all

    def __iter__(self) -> Iterator[Connection]:
        return iter(self.all)

    def count(self, ip: str) -> int:
        return len(self.by_ip.get(ip, ()))

    def add(self, connection: Connection) -> None:
        """One already here keeps its place: its wait goes on."""
        if connection not in self.all:
            since = self.all[connection] = time.monotonic()
            self.by_ip.setdefault(connection.peer_ip, {})[connection] = since

    def discard(self, connection: Connection) -> bool:
        """Whether it was here."""
        if connection not in self.all:
            return False
        del self.all[connection]
        same = self.by_ip[connection.peer_ip]
        del same[connection]
        if not same:
            del self.by_ip[connection.peer_ip]
        return True

    def oldest(self, ip: str | None = None, before: float = float("inf")) -> Connection | None:
        """The one waiting longest (of address `ip`, if given), if it began before `before`."""
        waiting = self.all if ip is None else self.by_ip.get(ip, {})
        for connection, since in waiting.items():
            return connection if since < before else None
        return None


class _Idle:
    """The idle keep-alive connections, oldest idle first: the slots' connections in phase IDLE.
    Not a registry of its own: going idle and waking up, at every keep-alive request, only sets
    a connection's phase and `idle_since`; the rare eviction looks through the slots."""

    def __init__(self, slots: _Waiting) -> None:
        self.slots = slots

    def _of(self, ip: str | None) -> list[Connection]:
        held = self.slots.all if ip is None else self.slots.by_ip.get(ip, {})
        return sorted((c for c in held if c.phase is IDLE), key=lambda c: c.idle_since)

    def __len__(self) -> int:
        return len(self._of(None))

    def __contains__(self, connection: object) -> bool:
        return connection in self.slots and getattr(connection, "phase", None) is IDLE

    def __iter__(self) -> Iterator[Connection]:
        return iter(self._of(None))

    def oldest(self, ip: str | None = None, before: float = float("inf")) -> Connection | None:
        """The one idle longest (of address `ip`, if given), if it became idle before `before`."""
        for connection in self._of(ip):
            return connection if connection.idle_since < before else None
        return None


class Phase(enum.Enum):
    """Where a connection is in its life: what it waits for, and so what its one timer does.

    Phase          waits for                                 held in      at its deadline
    ON_PROBATION   its first read to hold a whole head       probation    503 (the refusal it had)
    HEAD_AWAITED   a request head, first or next             heads        408, or a quiet close *
    SEATED         the body, or the client to take answers   slots        408, or a quiet close *
    IN_FLIGHT      the worker, for the request's answer      slots        504 (`_InFlight.time_out`)
    IDLE           a keep-alive client's next request        slots, idle  a quiet close
    CLOSED         nothing: closed, or closing                -            nothing

    * a quiet close if nothing of a request has begun on a connection that has served one
    (a keep-alive client that sent only blank lines, say); 408 otherwise.

    Moves (`Connection._enter`, `_NEXT`): accept → HEAD_AWAITED, or ON_PROBATION with no
    place among the heads (or CLOSED at once, with no place on probation either); a whole
    head (or a bad request) → SEATED once it has a slot; SEATED → IN_FLIGHT as its request
    starts; IN_FLIGHT → IDLE, HEAD_AWAITED (the next head has begun) or SEATED (its body, or
    more requests, are coming); IDLE → SEATED when its next read holds a whole request (or a bad
    one), else HEAD_AWAITED. Any phase → CLOSED, which is final. Whether a connection reads
    (`paused`) or may answer (`write_paused`) is backpressure, and goes across phases: flags,
    not phases.
    """

    ON_PROBATION = "on probation"
    HEAD_AWAITED = "head awaited"
    SEATED = "seated"
    IN_FLIGHT = "in flight"
    IDLE = "idle"
    CLOSED = "closed"

    # Members are singletons: hashing by identity (C) rather than Enum's by name (Python) saves
    # a Python call per lookup, and a request makes eight (the moves' table, the timers' table).
    __hash__ = object.__hash__


# The phases as module globals, for the code: `Phase.IDLE` is looked up through the enum's
# metaclass at every use (~60 ns; a global, ~6), and a request's path names phases a dozen times.
ON_PROBATION, HEAD_AWAITED, SEATED = Phase.ON_PROBATION, Phase.HEAD_AWAITED, Phase.SEATED
IN_FLIGHT, IDLE, CLOSED = Phase.IN_FLIGHT, Phase.IDLE, Phase.CLOSED


_NEXT: dict[Phase, frozenset[Phase]] = {  # the moves `Connection._enter` allows; see Phase
    ON_PROBATION: frozenset({SEATED, CLOSED}),
    HEAD_AWAITED: frozenset({SEATED, CLOSED}),
    SEATED: frozenset({IN_FLIGHT, CLOSED}),
    IN_FLIGHT: frozenset({SEATED, HEAD_AWAITED, IDLE, CLOSED}),
    IDLE: frozenset({HEAD_AWAITED, SEATED, CLOSED}),
    CLOSED: frozenset(),
}


class Connection(asyncio.Protocol):
    """One client connection; lives on the event loop only."""

    def __init__(self, interface: Interface) -> None:
        self.iface = interface
        self.peer_ip = ""
        self.loop = interface.loop
        self.transport: asyncio.Transport | None = None
        self.parser = RequestParser(interface.limits)
        self.queue: collections.deque[HttpRequest | Continue] = collections.deque()
        self.phase = HEAD_AWAITED  # connection_made decides
        self.current: _InFlight | None = None  # in IN_FLIGHT
        self.served = 0
        self.paused = False
        self.refusal: tuple[int, str] | None = None  # the error that ends this connection
        self.probation = ""  # in ON_PROBATION: the 503's text unless its first read holds a head
        self.deadline = 0.0  # of whatever the connection waits for now, on the loop's clock
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.idle_since = 0.0  # in IDLE: since when (the oldest idle one goes first for a newcomer)
        self.auth_tokens: dict[str, Any] = {}
        self.unparsed = bytearray()  # read but not parsed yet: requests are waiting
        self.slice = SLICE
        self.eof = False
        self.write_paused = False

    @property
    def closing(self) -> bool:
        return self.phase is CLOSED

    def __repr__(self) -> str:
        return f"<Connection {self.peer_ip} {self.phase.value} served={self.served}>"

    # --- asyncio callbacks ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.auth_tokens = self._auth_tokens(transport)
        self.peer_ip = self.auth_tokens["peer_ip"] or ""
        refusal = self.iface.admit(self)
        if refusal is not None and not self.iface.on_probation(self):
            transport.write(error_response(503, refusal))
            transport.close()
            self.phase = CLOSED
            return
        self.first_byte = time.monotonic()  # the first request's clock starts at accept
        if refusal is None:
            self.phase = HEAD_AWAITED
        else:
            self.phase, self.probation = ON_PROBATION, refusal
        self._arm(self.first_byte + (self.iface.header_timeout if refusal is None else self.iface.head_grace))

    def data_received(self, data: bytes) -> None:
        if self.phase is CLOSED or self.refusal is not None:
            return
        now = time.monotonic()
        idle = self.phase is IDLE  # a keep-alive connection's next request begins
        if not self.unparsed and len(data) <= self.slice and len(self.queue) < MAX_PIPELINED:
            self._feed(data, now)  # the usual case: one read, one slice
            if self.refusal is not None:
                self._pace()
        else:
            self.unparsed += data
            self._parse(now)
        if idle:
            self._wake_up(now)
        if self.phase is HEAD_AWAITED or self.phase is ON_PROBATION:
            self._track()
        self._next()

    def _wake_up(self, now: float) -> None:
        """An idle keep-alive connection has read: with a whole request (or a bad one) it goes
        on in its slot; else its head is waited for (_track decides about the slot)."""
        if self.queue or self.refusal is not None:
            self.phase = SEATED  # from IDLE (the caller's test), as _NEXT allows: a move per request, inline
            return
        self._enter(HEAD_AWAITED)
        self.iface.heads.add(self)
        self._arm(now + self.iface.header_timeout)

    def _parse(self, now: float) -> None:
        """Parse what was read, a slice at a time, while fewer than MAX_PIPELINED
        requests wait: a parsed request costs many times its bytes, so one read
        full of tiny pipelined requests must not all become objects at once.
        The slice shrinks while slices hold several requests and doubles while
        they hold none (a large body)."""
        while self.unparsed and self.refusal is None and len(self.queue) < MAX_PIPELINED:
            piece = bytes(self.unparsed[:self.slice])
            del self.unparsed[:self.slice]
            self._feed(piece, now)
        self._pace()

    def _feed(self, piece: bytes, now: float) -> None:
        try:
            events = self.parser.feed(piece, now)
        except HttpError as e:
            log.info(f"interface {self.iface.name}: bad request from {self.auth_tokens.get('peer_ip')}: "
                     f"{e.status} {e}")
            self.refusal = (e.status, str(e))  # answered once the good requests before it are
            self.unparsed.clear()
            events = e.parsed
        requests = len(events)  # Continues too: a rough count serves the heuristic
        if requests > 1:
            self.slice = SLICE
        elif requests == 0 and len(piece) == self.slice:
            self.slice = min(self.slice * 2, MAX_SLICE)
        self.queue.extend(events)

    def _pace(self) -> None:
        """Read only while there is room to parse and the client takes its answers."""
        want = not (self.unparsed or self.refusal is not None or self.write_paused or self.eof)
        if want == self.paused and not self.closing:
            self.paused = not want
            if want:
                self._transport().resume_reading()
            else:
                self._transport().pause_reading()

    def pause_writing(self) -> None:
        """The client is not taking its answers: start no more until it does."""
        self.write_paused = True
        self._pace()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._pace()
        self._track()
        self._next()

    def eof_received(self) -> bool:
        """The client has sent all it will (a half-close): answer what it asked, then close."""
        self.eof = True
        self.paused = True  # nothing more to read
        return bool(self.current is not None or self.queue or self.unparsed)

    def connection_lost(self, exc: Exception | None) -> None:
        self._enter(CLOSED)
        self._cancel_timer()
        self.iface.forget(self)
        self.queue.clear()
        self.unparsed.clear()
        if self.current is not None:
            self.current.abandon()
            self.current = None

    # --- requests ----------------------------------------------------------------------

    def _next(self) -> None:
        """Start the next parsed request if none is in flight."""
        if self.current is not None or self.phase is CLOSED or self.write_paused:
            return
        queue = self.queue
        while queue and type(interim := queue[0]) is Continue:
            queue.popleft()
            self._write(interim.data)  # only now: after the answers before it
        if not queue:
            if self.refusal is not None:
                self._refuse(*self.refusal)
            elif self.eof:
                self.close()
            return
        http = queue.popleft()
        assert type(http) is HttpRequest
        if self.unparsed:
            self._parse(time.monotonic())
        iface = self.iface
        tokens = (dict(self.auth_tokens) if http.credentials is None and not iface.original_ip_header_fields
                  else self._request_tokens(http))
        try:
            request = iface.lifecycle.begin(
                interface=iface.name, protocol=iface.protocol, timeout=iface.request_timeout,
                parameters={"auth_tokens": tokens}, start=self.first_byte if self.served == 0 else http.started)
        except IntakeClosedError:
            self._refuse(503, "the cage is shutting down")
            return
        keep_alive = (http.keep_alive and iface.keep_alive_support and not iface.ceasing
                      and self.served + 1 < iface.keep_alive_max_requests)
        assert self.phase is SEATED, f"a request starts on a connection {self.phase.name}"
        self.phase = IN_FLIGHT  # as _NEXT allows; inline: once a request
        self.current = flight = _InFlight(self, request, http, keep_alive)
        assert request.deadline is not None
        self._arm(request.deadline)
        iface.lifecycle.enqueue(flight, wake=False)  # the loop wakes a worker before it next waits

    def finished(self, data: bytes, keep_alive: bool) -> None:
        """The answer to the current request is ready (on the loop)."""
        self.current = None
        self.served += 1
        self._write(data)
        if not keep_alive or self.iface.ceasing:
            self.close()
        elif self.queue or self.refusal is not None or self.eof:
            self._enter(SEATED)
            self._next()
        elif self.parser.in_head:  # the next request has begun: its head is waited for from now
            self._enter(HEAD_AWAITED)
            self.iface.heads.add(self)
            self._arm(time.monotonic() + self.iface.header_timeout)
            self._track()
        elif self.parser.receiving:
            self._enter(SEATED)
            self._arm(time.monotonic() + self.iface.request_timeout)
        else:
            if self.phase is IN_FLIGHT:  # else CLOSED, and it stays so (see _enter; inline: once a request)
                self.phase = IDLE
            self.idle_since = now = time.monotonic()
            self._arm(now + self.iface.keep_alive_idle_timeout)

    def _track(self) -> None:
        """Once its head is in, a connection leaves the heads and takes a slot (or gets 503):
        it is no longer dropped for a newcomer, and the rest of its request, the body, has the
        request's deadline, counted from when the request began. A keep-alive connection whose
        next head has begun and not ended gives up its slot and waits among the heads like a
        newcomer (or gets 503). One on probation had its one read: a whole head, or 503."""
        iface = self.iface
        if self.phase is not HEAD_AWAITED and self.phase is not ON_PROBATION:
            return
        if self.current is None and not self.queue and self.refusal is None:
            if self.parser.in_head or not self.parser.receiving:
                # the head is still awaited (not a byte of it, or only blank lines, yet)
                if self.phase is ON_PROBATION:
                    self._refuse(503, self.probation)
                elif self in iface.slots:
                    self._refuse_for(iface.admit(self))
                return
            began = self.first_byte if self.served == 0 else self.parser.started
            assert began is not None
            self._arm(began + iface.request_timeout)
        iface.heads.discard(self)
        iface.probation.discard(self)
        self._enter(SEATED)
        if self not in iface.slots:
            self._refuse_for(iface.seat(self))

    def _refuse_for(self, refusal: str | None) -> None:
        """503 and close if there was no room."""
        if refusal is not None:
            self._refuse(503, refusal)

    def _enter(self, phase: Phase) -> None:
        """Move to `phase`; from CLOSED, nowhere (a late answer may still come to a closed connection)."""
        if self.phase is not CLOSED:
            assert phase in _NEXT[self.phase], f"a connection moves from {self.phase.name} to {phase.name}"
            self.phase = phase

    # --- the one timer ------------------------------------------------------------------

    def _arm(self, deadline: float) -> None:
        """Set the deadline of what the connection waits for now.

        One timer per connection, only ever moved earlier; when it fires before
        the deadline then in force it is re-armed. So a keep-alive connection
        serving quick requests schedules about one timer per request_timeout,
        not several per request.
        """
        self.deadline = deadline
        if self.timer is None or self.timer_at > deadline:
            self._cancel_timer()
            self.timer, self.timer_at = self.loop.call_at(deadline, self._on_timer), deadline

    def _on_timer(self) -> None:
        self.timer = None
        if not self.closing and self.loop.time() < self.deadline:
            self.timer, self.timer_at = self.loop.call_at(self.deadline, self._on_timer), self.deadline
        else:
            _AT_DEADLINE[self.phase](self)

    def _probation_over(self) -> None:
        self._refuse(503, self.probation)  # silent through its grace

    def _expire(self) -> None:
        assert self.current is not None
        self.current.time_out()

    def _late(self) -> None:
        if self.parser.receiving or self.served == 0:
            self._refuse(408, "request was not received in time")
        else:
            self.close()  # bytes that never became a request

    def _closed(self) -> None:
        """Nothing to do: a late answer to a closed connection may have armed the timer."""

    # --- plumbing ----------------------------------------------------------------------

    def _refuse(self, status: int, text: str) -> None:
        self._write(error_response(status, text))
        self.close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        self._enter(CLOSED)
        self._cancel_timer()
        self.iface.forget(self)  # its slot is free now, not when the socket is gone
        if self.transport is not None:
            self.transport.close()

    def _transport(self) -> asyncio.Transport:
        assert self.transport is not None
        return self.transport

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _request_tokens(self, http: HttpRequest) -> dict[str, Any]:
        """The connection's tokens; behind a proxy, the client IP from its header."""
        tokens = dict(self.auth_tokens)
        for field in self.iface.original_ip_header_fields:
            value = http.headers.get(field.lower(), "").strip()
            if value:
                tokens["peer_ip"] = value
                break
        if http.credentials is not None:
            tokens["username"], tokens["password"] = http.credentials
        return tokens

    def _auth_tokens(self, transport: asyncio.Transport) -> dict[str, Any]:
        peer = transport.get_extra_info("peername")
        tokens: dict[str, Any] = {"peer_ip": peer[0] if peer else None,
                                  "encrypted": transport.get_extra_info("sslcontext") is not None}
        cert = transport.get_extra_info("peercert")
        if cert:
            for rdn in cert.get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        tokens["peer_cn"] = value
        return tokens


_AT_DEADLINE: dict[Phase, Callable[[Connection], None]] = {  # what the timer does; see Phase
    ON_PROBATION: Connection._probation_over,
    HEAD_AWAITED: Connection._late,
    SEATED: Connection._late,
    IN_FLIGHT: Connection._expire,
    IDLE: Connection.close,  # idle for keep_alive_idle_timeout
    CLOSED: Connection._closed,
}


class _InFlight(InFlight):
    """One request between the loop and a worker: the lifecycle's unit of work, settled once by
    whoever comes first (see lifecycle.InFlight): the worker's outcome, posted to the loop, or
    the connection's timer (`time_out`); `abandon` is the client going away."""

    __slots__ = ("connection",)

    def __init__(self, connection: Connection, request: Request, http: HttpRequest, keep_alive: bool) -> None:
        iface = connection.iface
        InFlight.__init__(self, iface.lifecycle.intake, request, iface.handle, (http, keep_alive), None)
        self.connection = connection

    def deliver(self, outcome: Outcome) -> None:
        """On the worker: the answer goes to the loop."""
        self.connection.iface.loop_thread.post(self._answer, outcome)

    def _answer(self, outcome: Outcome) -> None:
        """On the loop: the worker's answer, or why there is none."""
        connection = self.connection
        if connection.current is not self:
            return  # the client has gone
        try:
            data, keep_alive = outcome.value()
        except Exception as e:  # expired in the queue, or the cage is stopping
            if self.request.expired:
                data = connection.iface.deadline_response()[0]
            else:
                data = error_response(503, exc_string(e, stack=False))
            keep_alive = False
        connection.finished(data, keep_alive)

    def time_out(self) -> None:
        """The deadline came first: the client gets 504 (or its protocol's equivalent) now -
        unless the answer is already on its way to the loop."""
        if not self.expire():
            return
        iface = self.connection.iface
        data, what = iface.deadline_response()
        log.warning(f"request {self.request.unique_id} has not been answered in "
                    f"{iface.request_timeout:.1f}s, the client gets {what}")
        self.connection.finished(data, False)
