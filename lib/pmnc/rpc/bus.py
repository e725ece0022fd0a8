"""The cage's connections to a NATS cluster (config_cluster.py transport "nats", retry_store "jetstream").

Calls go over a `Link`: one blocking connection, written to by the threads that call (under
a lock, straight to the socket) and read by a few reader threads, of which what comes wakes
one (EPOLLEXCLUSIVE): it reads, hands out the answers - each wakes the caller waiting for it
- and runs a call it received right there when another reader is free to read on (the
callee's side: no hand-off to a worker thread, as over the direct transport). nats-py's
asyncio client took twice the time per call - a wake-up of its loop to send, another to
answer, tasks in between (bench/rpc_calls.py --transport nats, bench/README.md): calls are
what a cage does most, so they get the short path. JetStream (retried calls, jetstream.py)
goes through nats-py, on an event-loop thread of its own, connected only where it is used.

    request(subject, payload, timeout)   blocking, one NATS request/reply
    publish(subject, payload)            fire and forget (a callee's answers)
    subscribe(subject, queue, handler)   handler(data, reply) runs on a reader thread
    gather(subject, payload, wait)       every answer within `wait` (discovery)
    run(coro, timeout), jetstream()      nats-py, on the bus's loop

The link reconnects for ever, to any server it was given or has been told of (INFO
connect_urls), and subscribes again. A call made while it is disconnected waits for the
reconnection within its deadline. Answers to calls that were on their way when a server died
are lost with it: those calls end at their deadline. A server that stops answering PINGs is
left for another.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import random
import secrets
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar
from urllib.parse import urlsplit

from nats.aio.client import Client
from nats.js import JetStreamContext

from pmnc import log
from pmnc.errors import ConfigError, ProtocolError, ResourceError, exc_string
from pmnc.loop import EventLoopThread
from pmnc.rpc import natswire
from pmnc.rpc.natswire import Credentials, Message

T = TypeVar("T")

DEFAULT_MAX_PAYLOAD = 1048576  # bytes, nats-server's default: assumed until the server says
RECONNECT_WAIT = 0.5  # seconds between rounds of the servers while none can be reached
CONNECT_TIMEOUT = 2.0  # seconds to connect to one server, TLS and CONNECT included
PING_INTERVAL = 10.0  # seconds of silence after which the link asks the server if it is there
MAX_PINGS_OUT = 2  # PINGs unanswered before the server is given up for another
RECV_SIZE = 262144
MAX_GATHERED = 10000  # answers a gather keeps
MAX_SERVERS = 64  # servers a link keeps, given and told of
READERS = 4  # threads that take turns reading a link (Link._read)
WAIT_SLICE = 1.0  # seconds a reader waits for the socket before it looks whether the link has changed
_EXCLUSIVE = getattr(select, "EPOLLEXCLUSIVE", 0)  # Linux 4.5: one waiter woken, not all

Handler = Callable[[bytes, str], None]


class NatsError(ResourceError):
    """NATS cannot take or deliver a call: not connected, nobody serving, no answer in time."""

    def __init__(self, message: str) -> None:
        super().__init__(message, recoverable=True, terminal=False)


class NatsTimeout(NatsError):
    pass


class NatsNoResponders(NatsError):
    pass


class _Waiter:
    """One request's answer, waited for by a thread: a lock released when it comes."""

    __slots__ = ("data", "error", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.data: bytes = b""
        self.error: NatsError | None = None

    def settle(self, data: bytes = b"", error: NatsError | None = None) -> None:
        self.data, self.error = data, error
        self.lock.release()


class _Server:
    __slots__ = ("host", "port", "tls", "url")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            raise ConfigError(f"config_cluster.py: nats_servers: {url!r} is not nats://host:port or tls://host:port")
        self.host, self.port, self.tls = parts.hostname, parts.port or 4222, parts.scheme == "tls"
        self.url = f"{parts.scheme}://{self.host}:{self.port}"


class Link:
    """One blocking connection to the NATS cluster: see the module's doc."""

    def __init__(self, settings: dict[str, Any], *, name: str, label: str, tls: ssl.SSLContext | None) -> None:
        self.label, self.name, self.tls = label, name, tls
        self.servers = [_Server(url) for url in settings["nats_servers"]]
        if not self.servers:
            raise ConfigError("config_cluster.py: nats_servers names no server")
        self.user, self.password, self.token = settings["nats_user"], settings["nats_password"], settings["nats_token"]
        self.creds = Credentials(settings["nats_creds"]) if settings["nats_creds"] else None
        self.max_payload = DEFAULT_MAX_PAYLOAD
        self.url = ""  # the server connected to
        self._sock: socket.socket | None = None
        self._io = threading.Lock()  # one thread at a time on the socket (a TLS socket needs it)
        self._state = threading.Condition(threading.Lock())  # connected or not
        self._subs: dict[int, tuple[str, str, Handler]] = {}  # sid → subject, queue, handler
        self._draining: dict[int, tuple[str, str, Handler]] = {}  # unsubscribed, still handling what comes
        self._sids = itertools.count(2)  # sid 1: the answers to this link's requests
        self._inbox = f"_INBOX.{secrets.token_hex(11)}."
        self._waiting: dict[str, _Waiter] = {}  # reply token → the thread waiting for it
        self._gathering: dict[str, list[bytes]] = {}  # reply token → the answers of a gather so far
        self._tokens = itertools.count()
        self._pongs: collections.deque[_Waiter | None] = collections.deque()  # PINGs out, in order
        self._stopped = False
        self._ever = False
        self._broken = False  # the connection in _sock has failed: the keeper replaces it
        self._parser = natswire.Parser(DEFAULT_MAX_PAYLOAD)
        self._waits = [select.epoll() for _ in range(READERS)]  # each reader's wait for the socket
        self._pings_out, self._heard = 0, 0.0
        self._turn = threading.Lock()  # held by the reader whose turn it is to read
        self._counting = threading.Lock()
        self._idle = READERS  # readers reading or waiting for their turn, not handling what they read
        self._threads = [threading.Thread(target=self._keep, name="nats", daemon=True)] + \
            [threading.Thread(target=self._read, args=(n,), name=f"nats:read:{n}", daemon=True)
             for n in range(READERS)]

    # --- life ------------------------------------------------------------------------------------

    def start(self, timeout: float) -> None:
        """Connect, waiting up to `timeout` seconds; after that the link goes on trying in the
        background, and calls meanwhile wait for it within their deadlines."""
        for thread in self._threads:
            thread.start()
        if not self._wait_connected(timeout):
            log.warning(f"NATS cannot be reached at {', '.join(s.url for s in self.servers)} within "
                        f"{timeout:.0f}s; trying on, calls fail at their deadlines until it can")

    def stop(self) -> None:
        if self.connected:
            self.flush(1.0)  # what was written has reached the server: closing loses nothing
        self._stopped = True
        with self._state:
            sock = self._sock
            self._state.notify_all()
        if sock is not None:
            _shut(sock)
        for thread in self._threads:
            thread.join(3.0)
        for token in list(self._waiting):
            waiter = self._waiting.pop(token, None)
            if waiter is not None:
                waiter.settle(error=NatsError("the cage is stopping"))

    @property
    def connected(self) -> bool:
        return self._sock is not None and not self._broken

    def _wait_connected(self, timeout: float) -> bool:
        with self._state:
            return self._state.wait_for(lambda: (self._sock is not None and not self._broken) or self._stopped,
                                        max(timeout, 0.0)) and self._sock is not None

    def _keep(self) -> None:
        """The keeper: connect to a server, wait while the readers use the connection until it
        breaks, and again."""
        while not self._stopped:
            connection = self._connect_any()
            if connection is None:
                time.sleep(RECONNECT_WAIT)  # a round of every server failed: a pause, not a spin
                continue
            sock, self._parser = connection
            fd = sock.fileno()
            for waiting in self._waits:
                waiting.register(fd, select.EPOLLIN | _EXCLUSIVE)
            self._pings_out, self._heard = 0, time.monotonic()
            with self._state:
                self._sock, self._broken = sock, False
                self._state.notify_all()
            log.message(f"{self.label} {'re' if self._ever else ''}connected to NATS at {self.url}")
            self._ever = True
            with self._state:
                self._state.wait_for(lambda: self._broken or self._stopped)
                self._sock = None
            with self._turn:  # no reader is reading it now; those waiting on it time out and see
                for waiting in self._waits:
                    waiting.unregister(fd)
                _close(sock)
            self._lost_pongs()

    def _break(self, sock: socket.socket, why: str) -> None:
        """The connection `sock` is no good: the keeper makes another."""
        with self._state:
            if self._sock is not sock or self._broken:
                return
            self._broken = True
            self._state.notify_all()
        _shut(sock)  # every reader's wait ends
        if not self._stopped:
            log.warning(f"{self.label}: the connection to NATS at {self.url} is lost: {why}; reconnecting")

    def _connect_any(self) -> tuple[socket.socket, natswire.Parser] | None:
        servers = self.servers[:]
        random.shuffle(servers)
        for server in servers:
            if self._stopped:
                return None
            try:
                return self._connect(server)
            except (OSError, ProtocolError, ValueError) as e:
                log.debug(f"NATS at {server.url}: {exc_string(e, stack=False)}")
        return None

    def _connect(self, server: _Server) -> tuple[socket.socket, natswire.Parser]:
        """A connection to `server`: INFO read, TLS if either side wants it, CONNECT, the
        subscriptions, and a PING answered - so a refusal (authorization) is seen here."""
        sock: socket.socket = socket.create_connection((server.host, server.port), timeout=CONNECT_TIMEOUT)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            parser = natswire.Parser(DEFAULT_MAX_PAYLOAD)
            info = self._info(sock, parser)
            if server.tls or self.tls is not None or info.get("tls_required"):
                context = self.tls or ssl.create_default_context()
                sock = context.wrap_socket(sock, server_hostname=server.host)
            hello = [natswire.connect(info, name=self.name, user=self.user, password=self.password,
                                      token=self.token, creds=self.creds),
                     natswire.sub(self._inbox + "*", "", 1),
                     *(natswire.sub(subject, queue, sid) for sid, (subject, queue, _) in list(self._subs.items())),
                     natswire.PING]
            sock.sendall(b"".join(hello))
            early = self._until_pong(sock, parser)
        except BaseException:
            _close(sock)
            raise
        self.url = server.url
        sock.settimeout(None)
        sock.setblocking(False)
        for op in early:
            self._handle(op)
        return sock, parser

    def _info(self, sock: socket.socket, parser: natswire.Parser) -> dict[str, Any]:
        ops = self._read_ops(sock, parser)
        if not (ops and isinstance(ops[0], tuple) and ops[0][0] == "INFO"):
            raise ProtocolError("the server did not begin with INFO: is it NATS?")
        info: dict[str, Any] = ops[0][1]
        self._learn(info)
        parser.max_payload = self.max_payload
        return info

    def _until_pong(self, sock: socket.socket, parser: natswire.Parser) -> list[Any]:
        early: list[Any] = []
        while True:
            for op in self._read_ops(sock, parser):
                if op == "PONG":
                    return early
                if isinstance(op, tuple) and op[0] == "-ERR":
                    raise ProtocolError(f"refused: {op[1]}")
                early.append(op)

    @staticmethod
    def _read_ops(sock: socket.socket, parser: natswire.Parser) -> list[Any]:
        data = sock.recv(RECV_SIZE)
        if not data:
            raise ConnectionError("closed by the server")
        return parser.feed(data)

    def _learn(self, info: dict[str, Any]) -> None:
        """What an INFO says: the largest payload, and other servers of the cluster."""
        max_payload = info.get("max_payload")
        if isinstance(max_payload, int) and max_payload > 0:
            self.max_payload = max_payload
        known = {(s.host, s.port) for s in self.servers}
        for url in info.get("connect_urls") or ():
            if isinstance(url, str) and len(self.servers) < MAX_SERVERS:
                try:
                    server = _Server(f"{'tls' if any(s.tls for s in self.servers) else 'nats'}://{url}")
                except ConfigError:
                    continue
                if (server.host, server.port) not in known:
                    self.servers.append(server)
                    known.add((server.host, server.port))

    def _read(self, number: int) -> None:
        """A reader. READERS threads wait for the socket, each on an epoll of its own with
        EPOLLEXCLUSIVE, so that what comes wakes one of them, not all. The one woken takes the
        turn, reads what has come and hands out the answers; with a call among it, it gives
        the turn up first and may run the call right here (`may_block`), while another reads
        on. Reader 0 also keeps the connection alive."""
        waiting = self._waits[number]
        while not self._stopped:
            sock = self._sock
            if sock is None or self._broken:
                with self._state:
                    self._state.wait_for(lambda: (self._sock is not None and not self._broken) or self._stopped,
                                         1.0)
                continue
            try:
                ready = waiting.poll(WAIT_SLICE)
            except (OSError, ValueError):
                continue  # the connection changed under the wait
            if not ready:
                if number == 0 and time.monotonic() - self._heard >= PING_INTERVAL:
                    self._keep_alive(sock)
                continue
            with self._turn:
                if sock is not self._sock:
                    continue
                ops = self._read_turn(sock)
                if not _has_calls(ops):
                    for op in ops:  # answers and housekeeping only: quick, so the turn stays
                        self._handle(op, sock)
                    continue
            self._handle_calls(ops, sock)  # the turn is free for the next: a call may run here

    def _handle_calls(self, ops: list[Any], sock: socket.socket | None) -> None:
        with self._counting:
            self._idle -= 1
        try:
            for op in ops:
                self._handle(op, sock)
        finally:
            with self._counting:
                self._idle += 1

    def _read_turn(self, sock: socket.socket) -> list[Any]:
        try:
            return self._receive(sock, self._parser)
        except (OSError, ProtocolError, ValueError) as e:
            self._break(sock, exc_string(e, stack=False))
            return []

    def _keep_alive(self, sock: socket.socket) -> None:
        """Nothing heard for PING_INTERVAL: a PING; a server that answers none of MAX_PINGS_OUT
        is given up for another."""
        if self._pings_out >= MAX_PINGS_OUT:
            self._break(sock, f"no answer to {self._pings_out} PINGs")
            return
        self._pings_out += 1
        self._heard = time.monotonic()  # the next PING after another interval
        self._pongs.append(None)
        try:
            self._write(sock, natswire.PING)
        except OSError as e:
            self._break(sock, exc_string(e, stack=False))

    def may_block(self) -> bool:
        """Whether a handler (on a reader) may run something long: another reader reads on."""
        return self._idle > 0

    def _receive(self, sock: socket.socket, parser: natswire.Parser) -> list[Any]:
        """What has arrived, all of it (a TLS socket may hold more than one read gives)."""
        ops: list[Any] = []
        with self._io:
            while True:
                try:
                    data = sock.recv(RECV_SIZE)
                except (ssl.SSLWantReadError, BlockingIOError):
                    return ops
                if not data:
                    raise ConnectionError("closed by the server")
                self._pings_out, self._heard = 0, time.monotonic()  # the server is there
                ops.extend(parser.feed(data))
                if not (isinstance(sock, ssl.SSLSocket) and sock.pending()) and len(data) < RECV_SIZE:
                    return ops

    def _handle(self, op: Any, sock: socket.socket | None = None) -> None:
        if isinstance(op, Message):
            self._deliver(op)
        elif op == "PING" and sock is not None:
            self._write(sock, natswire.PONG)
        elif op == "PONG":
            self._pings_out = 0
            waiter = self._pongs.popleft() if self._pongs else None
            if waiter is not None:
                waiter.settle()
        elif isinstance(op, tuple) and op[0] == "INFO":
            self._learn(op[1])
        elif isinstance(op, tuple) and op[0] == "-ERR":
            log.warning(f"{self.label}: NATS at {self.url} says: {op[1]}")

    def _deliver(self, message: Message) -> None:
        if message.sid == 1:
            self._answered(message)
            return
        entry = self._subs.get(message.sid) or self._draining.get(message.sid)
        if entry is None:
            return
        try:
            entry[2](message.data, message.reply)
        except Exception as e:  # a handler's bug must not stop the reader
            log.error(f"NATS: a message on {entry[0]} could not be handled: {exc_string(e)}")

    def _answered(self, message: Message) -> None:
        token = message.subject[len(self._inbox):]
        gathered = self._gathering.get(token)
        if gathered is not None:
            if message.data and len(gathered) < MAX_GATHERED:
                gathered.append(message.data)
            return
        waiter = self._waiting.pop(token, None)
        if waiter is None:
            return  # its caller has given up
        if message.status == natswire.NO_RESPONDERS:
            waiter.settle(error=NatsNoResponders("nobody subscribes"))
        else:
            waiter.settle(message.data)

    # --- sending ----------------------------------------------------------------------------------

    def send(self, data: bytes, timeout: float) -> None:
        """`data` to the server, waiting up to `timeout` for a connection if there is none -
        also when the connection breaks under the write: then it goes whole on the next one
        (the server drops what it got of a message on the broken connection)."""
        deadline = time.monotonic() + timeout
        while True:
            sock = self._sock
            if sock is None or self._broken:
                if not self._wait_connected(deadline - time.monotonic()):
                    raise NatsTimeout(f"NATS is not connected ({', '.join(s.url for s in self.servers)})")
                continue
            try:
                self._write(sock, data)
                return
            except OSError as e:
                self._break(sock, exc_string(e, stack=False))
                if time.monotonic() >= deadline:
                    raise NatsError(f"NATS at {self.url}: sending failed: {e}") from None

    def _write(self, sock: socket.socket, data: bytes) -> None:
        """All of `data`, under the lock; a full socket buffer waits to drain (bounded)."""
        view, deadline = memoryview(data), time.monotonic() + CONNECT_TIMEOUT * 5
        with self._io:
            while view:
                try:
                    sent = sock.send(view)
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                    sent = 0
                if sent:
                    view = view[sent:]
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the NATS server takes nothing more")
                poller = select.poll()  # not select(): descriptors may be above 1024
                poller.register(sock, select.POLLOUT)
                poller.poll(min(left, 0.1) * 1000.0)

    def request(self, subject: str, payload: bytes, timeout: float) -> bytes:
        token = str(next(self._tokens))
        waiter = self._waiting[token] = _Waiter()
        started = time.monotonic()
        try:
            self.send(natswire.pub(subject, self._inbox + token, payload), timeout)
        except NatsError:
            self._waiting.pop(token, None)
            raise
        if not waiter.lock.acquire(timeout=max(timeout - (time.monotonic() - started), 0.0)):
            self._waiting.pop(token, None)
            connected = "" if self.connected else " (NATS is not connected)"
            raise NatsTimeout(f"no answer within {timeout:.1f}s{connected}")
        if waiter.error is not None:
            raise waiter.error
        return waiter.data

    def flush(self, timeout: float) -> bool:
        """Whether the server has had everything sent before (a PING answered) within `timeout`."""
        waiter = _Waiter()
        self._pongs.append(waiter)
        try:
            self.send(natswire.PING, timeout)
        except NatsError:
            return False
        return waiter.lock.acquire(timeout=timeout) and waiter.error is None

    def _lost_pongs(self) -> None:
        """The connection is gone: PINGs on it are answered by no one."""
        while self._pongs:
            waiter = self._pongs.popleft()
            if waiter is not None:
                waiter.settle(error=NatsError("the connection to NATS was lost"))

    def gather(self, subject: str, payload: bytes, wait: float) -> list[bytes]:
        token = str(next(self._tokens))
        answers = self._gathering[token] = []
        try:
            self.send(natswire.pub(subject, self._inbox + token, payload), wait)
            threading.Event().wait(wait)  # a window to listen in, not a readiness wait
        except NatsError:
            pass
        finally:
            self._gathering.pop(token, None)
        return answers

    def subscribe(self, subject: str, queue: str, handler: Handler) -> int:
        sid = next(self._sids)
        self._subs[sid] = (subject, queue, handler)
        sock = self._sock
        if sock is not None:  # else the connection makes it
            try:
                self._write(sock, natswire.sub(subject, queue, sid))
            except OSError:
                _shut(sock)
        return sid

    def unsubscribe(self, subject: str, timeout: float) -> None:
        """No more messages on `subject`. Those the server sent before it had the UNSUB still
        reach the handler (a callee refuses them, and the caller goes elsewhere): the handler
        is kept, and the UNSUB confirmed with a PING within `timeout`, so that nothing sent to
        the subscription is left unanswered when the connection closes later."""
        for sid, entry in list(self._subs.items()):
            if entry[0] != subject:
                continue
            self._draining[sid] = self._subs.pop(sid)  # not subscribed again on a reconnection
            sock = self._sock
            if sock is not None:
                try:
                    self._write(sock, natswire.unsub(sid))
                except OSError:
                    _shut(sock)
        self.flush(timeout)


def _has_calls(ops: list[Any]) -> bool:
    """Whether what was read holds a message for a subscription (a call), not answers only."""
    for op in ops:
        if op.__class__ is Message and op.sid != 1:
            return True
    return False


def _shut(sock: socket.socket) -> None:
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


class Bus:
    """The cage's NATS: the call link (`calls`) and nats-py for JetStream (`jetstream`)."""

    def __init__(self, settings: dict[str, Any], *, name: str, label: str, tls: ssl.SSLContext | None,
                 calls: bool = True, jetstream: bool = False) -> None:
        self.label = label
        self.servers: list[str] = list(settings["nats_servers"])
        self.link = Link(settings, name=name, label=label, tls=tls) if calls else None
        self._options: dict[str, Any] = {"name": name, "tls": tls, "user": settings["nats_user"],
                                         "password": settings["nats_password"], "token": settings["nats_token"]}
        # nats-py signs with these (it would need the nkeys package to read the file itself)
        self._creds = Credentials(settings["nats_creds"]) if jetstream and settings["nats_creds"] else None
        if self._creds is not None:
            creds = self._creds
            self._options["signature_cb"] = lambda nonce: creds.signature(nonce).encode()
            if creds.jwt is not None:
                jwt = creds.jwt.encode()
                self._options["user_jwt_cb"] = lambda: jwt
        self._jetstream = jetstream
        self._thread = EventLoopThread("nats-py")
        self.loop = self._thread.loop
        self.nc = Client()

    @property
    def max_payload(self) -> int:
        """The largest message the server takes, in bytes (its INFO; the default before)."""
        if self.link is not None:
            return self.link.max_payload
        return self.nc.max_payload if self.nc.is_connected else DEFAULT_MAX_PAYLOAD

    @property
    def connected(self) -> bool:
        return self.link.connected if self.link is not None else self.nc.is_connected

    def start(self, timeout: float) -> None:
        if self.link is not None:
            self.link.start(timeout)
        if self._jetstream:
            self._thread.start()
            try:
                self.run(self._connect(), timeout + 1.0)
            except Exception as e:
                log.warning(f"{self.label}: NATS for JetStream cannot be reached within {timeout:.0f}s "
                            f"({exc_string(e, stack=False)}); trying on")

    async def _connect(self) -> None:
        if self._creds is not None and self._creds.jwt is None:  # an NKey user: CONNECT names its key
            self.nc._public_nkey = self._creds.public_key
        # connect() tries the servers for ever (max_reconnect_attempts=-1) in a task of its own
        connecting = asyncio.ensure_future(self.nc.connect(
            servers=self.servers, allow_reconnect=True, max_reconnect_attempts=-1,
            reconnect_time_wait=RECONNECT_WAIT,  # type: ignore[arg-type]  # a float works
            connect_timeout=int(CONNECT_TIMEOUT), error_cb=self._on_error, **self._options))
        await asyncio.wait_for(asyncio.shield(connecting), CONNECT_TIMEOUT * 2)

    async def _on_error(self, e: Exception) -> None:
        log.debug(f"NATS (JetStream): {type(e).__name__}: {e}")

    def stop(self) -> None:
        if self.link is not None:
            self.link.stop()
        if self._jetstream:
            try:
                self.run(self._close(), 5.0)
            except Exception as e:
                log.debug(f"NATS (JetStream): closing: {e}")
            self._thread.stop()

    async def _close(self) -> None:
        if not self.nc.is_closed:
            await self.nc.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run `coro` on the bus's loop (nats-py) and wait for its result, from any other thread."""
        return self._thread.run(coro, timeout)

    def jetstream(self) -> JetStreamContext:
        """The JetStream context of nats-py's connection: use it on the bus's loop only."""
        return self.nc.jetstream()

    # --- calls: the link -----------------------------------------------------------------------------

    def _link(self) -> Link:
        if self.link is None:
            raise NatsError('calls over NATS need transport = "nats" in config_cluster.py')
        return self.link

    def request(self, subject: str, payload: bytes, timeout: float) -> bytes:
        """The answer to `payload` sent on `subject`, waited for up to `timeout` seconds."""
        return self._link().request(subject, payload, timeout)

    def publish(self, subject: str, payload: bytes) -> None:
        """Send `payload` on `subject`, from any thread; nothing is waited for."""
        try:
            self._link().send(natswire.pub(subject, "", payload), CONNECT_TIMEOUT)
        except NatsError as e:
            log.warning(f"NATS: a message to {subject} is lost: {e}")

    def subscribe(self, subject: str, queue: str, handler: Handler) -> None:
        """`handler(data, reply_subject)` for each message on `subject`, one member of queue
        group `queue` ("" for none); it runs on a reader thread and may block only where
        `may_block()` says so.
        Subscribed again on every reconnection. Once connected, it returns when the server has
        the subscription (within a few seconds), so that what follows is served."""
        link = self._link()
        link.subscribe(subject, queue, handler)
        if link.connected:
            link.flush(CONNECT_TIMEOUT)

    def unsubscribe_all(self, subject: str) -> None:
        """No more messages on `subject` (a callee ceasing); returns when the server has it."""
        self._link().unsubscribe(subject, CONNECT_TIMEOUT)

    def may_block(self) -> bool:
        """Whether a subscription's handler, now, may run a call itself (another reader reads on)."""
        return self.link is not None and self.link.may_block()

    def gather(self, subject: str, payload: bytes, wait: float) -> list[bytes]:
        """Every answer (at most MAX_GATHERED) to `payload` on `subject` that comes within
        `wait` seconds: from all its subscribers, not the first only (discovery)."""
        return self._link().gather(subject, payload, wait)
