"""Cage-to-cage calls over mutual TLS: the `rpc` interface (callee) and resource (caller).

Caller: `pmnc("worker").m.f(x)` is a one-participant transaction on the pool
`rpc__worker` (config_resource_rpc.py; it is the per-target bulkhead). A
connection of that pool picks an instance of `worker` per call, at random
among the live ones the locator knows (discovering them if none), and keeps
one TLS socket per instance it has used - for calls made alone. A call made
while others of this cage to the same target are under way is tagged and
goes on the one connection per instance they share (_SharedChannel: one
write for every call waiting, a reader thread handing each answer to its
call) - unless the cage's threads are kept on one CPU (cpu_affinity "auto",
the default): then every call has a connection of its own, which measured
faster there (placement.on_one_cpu). Every wait is bounded by the request's deadline. A connect that fails
moves on to the next instance within the same budget (nothing has been
sent); a connection lost during a call fails that call at once (it may have
run) and the instance is skipped. An instance that is stopping says so - a
refusal (wire.REFUSED) instead of an answer, or unasked, as a goodbye - and
nothing it refused has run: the call goes to another instance within the
same deadline, and fails (recoverable) only if there is none.

Callee: the interface accepts TLS connections whose client certificate is
from the cluster CA and names a cage of this flock. Each connection has a
thread of its own that reads a frame (codec.py), runs the call as a request
- the caller's id, log levels and parameters, a deadline of the caller's
time left less a margin - and writes the answer: `pmnc.<module>.<method>(
*args, **kwargs)` for any name in the module's `__all__`, unless
`deny_modules` matches the module (rpc/callee.py, shared with revrpc), through
the one request lifecycle (lifecycle.py, `call`). The call runs on the connection's own
thread when one of the worker pool's `thread_count` slots is free and
nothing waits (no hand-off between threads: less than half the CPU per call
of serving it on the event loop and running it on a worker, measured with
bench/rpc_calls.py), and is queued earliest deadline first otherwise. A
tagged call (wire.py) is handed to the worker pool at once, and the worker
that ran it writes its answer, tagged, while the connection's thread reads
on: on a shared connection a slow call holds up no other.
Queued work whose deadline passes is never started, and an answer later
than the deadline is replaced by a deadline error.

The health monitor (monitor/health.py) calls exactly one instance, not any of a cage:
`Interface.exact(location)` is a connection of its own to that address (ExactLink), and
`performance.headline()` there is answered by the callee itself (rpc/callee.py).

The listener outlives whatever fails: out of descriptors, memory or threads,
accepting is logged once, tried again after a short pause, and logged when
it works again. Connections still in their TLS handshake are counted apart
(`max_handshakes`, the oldest dropped for a new one) and have
`handshake_timeout` for all of it. When the interface ceases, idle
connections get the goodbye at once, busy ones after their answer; calls
that crossed it are refused for a short grace, then the connections close.

The original's config keys: `random_port` (the interface's port, negative for
a block such as -63000 = 63000..63999) and the resource's `discovery_timeout`
are honoured; `marshaling_methods` is accepted, with one log line if it asks
for pickle (pmnc sends and accepts msgpack unless config_cluster.py says
use_pickle); the rest (`broadcast_address`, `flock_id`, `exact_locations`,
`max_packet_size`, `ssl_*`, ...) are refused with where they live now.
"""

from __future__ import annotations

import collections
import errno
import functools
import itertools
import os
import random
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pmnc import interfaces, log, resource, retry
from pmnc import request as _request
from pmnc.busywait import BusyWait
from pmnc.busywait import ready as _ready
from pmnc.errors import (
    ConfigError,
    DeadlineError,
    IntakeClosedError,
    InvalidMethodAccessError,
    ProtocolError,
    RequestExpiredError,
    ResourceError,
    ResourceInputParameterError,
    RPCDeadlineError,
    exc_string,
)
from pmnc.lifecycle import Outcome
from pmnc.monitor.health import headline
from pmnc.placement import on_one_cpu
from pmnc.rpc import codec, natsrpc, wire
from pmnc.rpc.callee import Callee, remain
from pmnc.rpc.calls import OPS
from pmnc.rpc.cluster import Cluster, ClusterHandle
from pmnc.rpc.identity import Identity, peer_identity
from pmnc.rpc.locator import Location
from pmnc.schema import RESOURCE_KEYS, Key, address, interface_file, names, resource_file

if TYPE_CHECKING:
    from pmnc.runtime import Runtime

HANDSHAKE_TIMEOUT = 3.0  # seconds a connection has for its whole TLS handshake (config handshake_timeout)
RECV_SIZE = 262144  # bytes asked for by one read
LATE_AFTER = 0.25  # seconds on the way after which the callee checks that the caller is still there
GOODBYE_GRACE = 1.0  # seconds a stopping cage refuses calls that crossed its goodbye before it closes
ACCEPT_BACKOFF = (0.05, 1.0)  # seconds between attempts while accept fails (first, at most)
_WOKEN = object()  # what a read returns when the interface has been told to cease
_OPS = {name: f"_{op}" for op, name in OPS.items()}  # rpc/calls.py's names of the operations -> methods


# --- keys of the original's config_interface_rpc.py / config_resource_rpc.py ---------------------------

# Where pmnc keeps what these files held in the original (schema.py refuses them, saying so).
MOVED_FROM_BOTH = {
    "broadcast_address": "config_cluster.py",
    "flock_id": "config_cluster.py",
    "max_packet_size": "config_cluster.py, as max_frame_size",
}
_SSL_MOVED = ("config_cluster.py, as ssl_keys_dir: the folder of the flock's own CA and keys, made by pmnc "
              "(cages/.shared/ssl_keys by default)")
MOVED_FROM_INTERFACE = {
    **MOVED_FROM_BOTH,
    "disable_broadcast": "config_cluster.py: cages broadcast only where broadcast_address is set there",
    "separate_thread_pool": "config_interfaces.py, as thread_count: calls from other cages share the cage's "
                            "workers, earliest deadline first",
    **{key: _SSL_MOVED for key in ("ssl_key_cert_file", "ssl_ca_cert_file", "ssl_ciphers", "ssl_protocol")},
}
EXACT_LOCATIONS_MOVED = 'config_cluster.py, as exact_locations = {"cage": ("host:port", ...)}'
MULTIPLE_ALLOWANCE_MOVED = ("the first instances found are called at once and others are learnt from their "
                            "adverts; config_cluster.py's discovery_timeout bounds the search")
MARSHALING_METHODS = ("msgpack", "pickle")


def _marshaling(value: Any) -> tuple[str, ...]:
    methods = names(value)
    if not methods or any(m not in MARSHALING_METHODS for m in methods):
        raise ValueError(value)
    return methods


_marshaling.expected = "a list of msgpack and pickle"  # type: ignore[attr-defined]


def _marshaling_note(methods: tuple[str, ...] | None) -> str | None:
    if methods is None or "pickle" not in methods:
        return None
    return ("pmnc refuses pickle from other cages (a peer could run code here) and sends msgpack; to use "
            "pickle, set use_pickle=True in config_cluster.py, only where every cage is trusted")


MARSHALING = Key(None, _marshaling, _marshaling_note)


def port_choices(random_port: int) -> list[int]:
    """The original's `random_port`: a port (0: any free one), or, negative, a port of the block
    its trailing zeros span (-63000: 63000..63999), in random order."""
    if random_port >= 0:
        return [random_port]
    base = -random_port
    span = 1
    while base % (span * 10) == 0 and span < base:
        span *= 10
    ports = [p for p in range(base, base + span) if p <= 65535]
    random.shuffle(ports)
    return ports


def _random_port(value: Any) -> int:
    port = int(value)
    if not -65535 <= port <= 65535:
        raise ValueError(value)
    return port


_random_port.expected = "a port, or a negative block of ports such as -63000"  # type: ignore[attr-defined]


# --- the callee ------------------------------------------------------------------------------


class Interface(interfaces.Interface):
    protocol = "rpc"
    handler_module = False  # no interface_<name>.py: calls go to the modules they name

    keys = interfaces.Interface.keys.extend(
        listener_address=Key(("127.0.0.1", 0), address),  # (host, port); port 0: any free one, advertised to the flock
        max_connections=Key(200, int),  # authenticated connections at once
        max_handshakes=Key(32, int),  # connections still in their TLS handshake; the oldest goes for a new one
        handshake_timeout=Key(HANDSHAKE_TIMEOUT, float),  # seconds for the whole TLS handshake
        deny_modules=Key((), names),  # fnmatch patterns of modules other cages may not call
        idle_timeout=Key(600.0, float),  # seconds an idle connection is kept
        random_port=Key(None, _random_port),  # the original's: the port of listener_address, -63000 any of 63000..63999
        marshaling_methods=MARSHALING,  # the original's; msgpack is what pmnc accepts
        moved=MOVED_FROM_INTERFACE,
    )

    def __init__(self, name: str, runtime: Runtime, config: dict[str, Any]) -> None:
        super().__init__(name, runtime, config)
        config = self.config
        self.host, self.port = config["listener_address"]
        self.ports = [self.port]
        if config["random_port"] is not None:
            if self.port:
                raise ConfigError(f"{interface_file(name)}: give the port in listener_address or random_port, "
                                  f"not both")
            self.ports = port_choices(config["random_port"])
        self.max_connections: int = config["max_connections"]
        self.max_handshakes: int = config["max_handshakes"]
        self.handshake_timeout: float = config["handshake_timeout"]
        self.deny_modules: tuple[str, ...] = config["deny_modules"]
        self.idle_timeout: float = config["idle_timeout"]
        self.connections: set[Connection] = set()  # authenticated
        self.handshaking: dict[Connection, None] = {}  # not yet, oldest first
        self.lock = threading.Lock()
        self.closed = threading.Condition(self.lock)  # a connection has closed
        self.ceasing = False
        self.ceased = threading.Event()
        self.listener: socket.socket | None = None
        self.acceptor: threading.Thread | None = None
        self.wake_r = self.wake_w = -1  # a pipe made readable at cease: it wakes every connection's wait
        self.nats: natsrpc.NatsCallee | None = None  # transport "nats": the subscription instead

    @property
    def listener_address(self) -> tuple[str, int]:
        """The address bound, by the original's name."""
        return self.address

    def start(self) -> None:
        self.lifecycle = self.runtime.lifecycle
        self.callee = Callee(self.lifecycle, cage=self.runtime.name, interface=self.name, protocol=self.protocol,
                             request_timeout=self.request_timeout, deny_modules=self.deny_modules,
                             headline=functools.partial(headline, self.runtime))
        self.cluster = self.runtime.cluster.get()
        self.limit, self.use_pickle = self.cluster.max_frame_size, self.cluster.use_pickle
        if self.cluster.transport == "nats":
            self._start_nats()
            return
        self.context = self.cluster.keys.server_context()
        self.context.num_tickets = 0  # connections live long; no session resumption to offer
        self.refused = codec.encode(wire.REFUSED, limit=self.limit)  # see _goodbye
        listener = self._listen()
        self.listener = listener
        self.wake_r, self.wake_w = os.pipe()
        host, port = listener.getsockname()[:2]
        self.address = (host, port)
        self.acceptor = threading.Thread(target=self._accept_loop, name=f"{self.name}:accept", daemon=True)
        self.acceptor.start()
        self.cluster.locator.publish(host, port)
        log.message(f"interface {self.name} listens on ssl://{host}:{port}/")

    def _start_nats(self) -> None:
        """Transport "nats": calls come on the cage's NATS subject (rpc/natsrpc.py), no listener."""
        self.nats = natsrpc.NatsCallee(self.cluster, self.callee, run_call=self.run_call,
                                       accept_retried=self.accept_retried, limit=self.limit,
                                       use_pickle=self.use_pickle, poll_limit=self.request_timeout)
        self.nats.start()
        log.message(f"interface {self.name} serves calls on NATS subject {self.nats.subject}")

    def _listen(self) -> socket.socket:
        """The listening socket, on the first free port of those configured."""
        for port in self.ports[:-1]:
            try:
                return socket.create_server((self.host, port), backlog=256, reuse_port=False)
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
        return socket.create_server((self.host, self.ports[-1]), backlog=256, reuse_port=False)

    def cease(self) -> None:
        """No new connections or calls. Callers are told (a goodbye on each connection: idle
        ones at once, busy ones after their answer), so that they go to another instance;
        calls that cross the goodbye are refused, not run (see Connection._goodbye)."""
        if self.ceasing:
            return
        self.ceasing = True
        self.ceased.set()
        if self.nats is not None:
            self.nats.cease()
        self.cluster.locator.unpublish()  # first: no caller should pick this instance any more
        if self.listener is not None:
            _shut(self.listener)  # wakes the acceptor; a connect is now refused, and fails over
        if self.wake_w >= 0:
            os.write(self.wake_w, b"!")  # never read: it stays readable

    def stop(self) -> None:
        """After the drain: connections still saying goodbye get the rest of their grace
        (they close by themselves), then every connection is closed. Over NATS: the answers
        still on their way are sent."""
        self.cease()
        if self.nats is not None:
            self.nats.stop(GOODBYE_GRACE)
        with self.lock:
            self.closed.wait_for(lambda: not (self.connections or self.handshaking), GOODBYE_GRACE)
            every = list(self.connections) + list(self.handshaking)
        for connection in every:
            connection.shut()
        if self.acceptor is not None:
            self.acceptor.join(3.0)
        for fd in (self.wake_r, self.wake_w):
            if fd >= 0:
                os.close(fd)
        self.wake_r = self.wake_w = -1

    def _accept_loop(self) -> None:
        """Accepts until the interface ceases, whatever fails meanwhile: out of descriptors,
        memory or threads, it is logged once (and when it ends) and tried again shortly."""
        assert self.listener is not None
        outage = _Outage(self.name)
        while not self.ceasing:
            try:
                sock, peer = self.listener.accept()
            except OSError as e:
                if self.ceasing:
                    break
                if e.errno not in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):  # one peer's trouble
                    self.ceased.wait(outage.failed(exc_string(e, stack=False)))
                continue
            try:
                self._admit(sock, f"{peer[0]}:{peer[1]}")
            except Exception as e:  # "can't start new thread" among others: that one connection is lost
                self.ceased.wait(outage.failed(exc_string(e, stack=False)))
                continue
            outage.ended()
        self.listener.close()

    def _admit(self, sock: socket.socket, peer: str) -> None:
        """A thread for the new connection. Connections still in their TLS handshake are
        limited apart, the oldest dropped first, so that strangers opening sockets cannot
        lock cages out (a real cage finishes its handshake in milliseconds)."""
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # No I/O here: the handshake is the connection's thread's, on a socket that
            # shut() can reach meanwhile (wrapping detaches the plain one).
            tls = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError) as e:
            sock.close()
            log.warning(f"interface {self.name}: connection from {peer} refused: {e}")
            return
        connection = Connection(self, tls, peer)
        with self.lock:
            oldest = next(iter(self.handshaking)) if len(self.handshaking) >= self.max_handshakes else None
            if oldest is not None:  # out of the count now, not when its thread gets to close it
                del self.handshaking[oldest]
            full = len(self.connections) >= self.max_connections
            if not full:
                self.handshaking[connection] = None
        if oldest is not None:
            oldest.shut()
        if full:
            log.warning(f"interface {self.name}: connection from {peer} refused, "
                        f"{self.max_connections} cages connected")
            connection.close()
            return
        try:
            threading.Thread(target=connection.serve, name=f"{self.name}:{peer}", daemon=True).start()
        except BaseException:
            connection.close()
            raise

    def exact(self, location: Location) -> ExactLink:
        """Calls to exactly the instance at `location` and no other (the health monitor's
        probes): a connection of its own, closed at the end of the `with`."""
        return ExactLink(self.runtime.cluster.get(), location)

    # --- one call ----------------------------------------------------------------------------

    def run_call(self, envelope: dict[str, Any], caller: Identity) -> dict[str, Any]:
        return self.callee.run(envelope, caller.cage)

    def accept_retried(self, envelope: dict[str, Any], caller: Identity) -> dict[str, Any]:
        """A retried call handed over by another cage: into our state file (retry.py)."""
        message = envelope.get("message")
        module = message.get("module") if isinstance(message, dict) else None
        try:
            if isinstance(module, str) and self.callee.denied(module):
                raise InvalidMethodAccessError(f"module {module} is not callable from other cages")
            return {"result": retry.accept(self.runtime.state, self.runtime.loader, message, caller.cage)}
        except Exception as e:
            log.warning(f"a retried call from cage {caller.cage} is refused: {exc_string(e, stack=False)}")
            return {"error": wire.error_dict(e)}


class _Outage:
    """Accepting connections fails: said once when it begins and once when it ends, with
    a growing pause between attempts meanwhile."""

    def __init__(self, interface: str) -> None:
        self.interface = interface
        self.since: float | None = None
        self.failures = 0
        self.pause = ACCEPT_BACKOFF[0]

    def failed(self, error: str) -> float:
        """Seconds to wait before the next attempt."""
        if self.since is None:
            self.since, self.failures, self.pause = time.monotonic(), 0, ACCEPT_BACKOFF[0]
            log.warning(f"interface {self.interface}: accepting connections fails: {error}; "
                        f"trying again until it works")
        else:
            self.pause = min(self.pause * 2, ACCEPT_BACKOFF[1])
        self.failures += 1
        return self.pause

    def ended(self) -> None:
        if self.since is not None:
            log.message(f"interface {self.interface}: accepting connections works again, after "
                        f"{self.failures} failure(s) in {time.monotonic() - self.since:.1f}s")
            self.since = None


class Connection:
    """One caller's connection, served by its own thread: the TLS handshake (a peer that
    is not a cage of this cluster is refused and logged), then its calls. An untagged call
    runs on this thread, answered before the next frame is read; a tagged one (wire.py:
    calls a caller makes at the same time share a connection) is handed to the worker pool
    and answered, tagged, by the worker that ran it, while this thread reads on. Every TLS
    call on the socket is made under `tls`: OpenSSL forbids two threads in one connection
    at once (and CPython's ssl does not stop them)."""

    def __init__(self, iface: Interface, sock: ssl.SSLSocket, peer: str) -> None:
        self.iface, self.sock, self.peer = iface, sock, peer
        self.caller: Identity | None = None
        self.decoder = codec.FrameDecoder(iface.limit, iface.use_pickle)
        self.received: collections.deque[Any] = collections.deque()  # frames read, not yet answered
        self.tls = threading.Lock()
        self.out = _Outbox()  # answers that workers finish while another is being written go with the next
        self.tagged = 0  # tagged calls handed to the workers and not yet answered
        self.answered = threading.Condition()  # a tagged call has been answered
        self.closing = False  # the goodbye waits for the tagged calls' answers: tell it of each
        self.next_frame = BusyWait(iface.cluster.busy_wait)  # a caller calling again at once is not slept on

    def serve(self) -> None:
        try:
            if self._secure():
                self._serve_calls()
        except Exception as e:
            log.error(f"interface {self.iface.name}: connection from {self.peer} broke: {exc_string(e)}")
        finally:
            self.close()

    def _secure(self) -> bool:
        iface = self.iface
        try:
            self._handshake(time.monotonic() + iface.handshake_timeout)
        except (OSError, ssl.SSLError, ValueError) as e:
            self._refuse(f"TLS handshake failed: {e}")
            return False
        identity = peer_identity(self.sock.getpeercert())
        if identity is None or identity.flock != iface.cluster.flock:
            self._refuse(f"its certificate names no cage of flock {iface.cluster.flock}")
            return False
        self.caller = identity
        with iface.lock:
            iface.handshaking.pop(self, None)
            iface.connections.add(self)
        self.sock.settimeout(iface.request_timeout)  # for sends, and a TLS record begun
        return True

    def _handshake(self, deadline: float) -> None:
        """The TLS handshake, all of it within `deadline`: a peer that drips bytes cannot
        hold a slot longer than one that sends nothing."""
        self.sock.setblocking(False)
        while True:
            try:
                self.sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                events = select.POLLIN
            except ssl.SSLWantWriteError:
                events = select.POLLOUT
            left = deadline - time.monotonic()
            if left <= 0 or not _ready([self.sock.fileno()], left, events):
                raise TimeoutError(f"not done within {self.iface.handshake_timeout:.1f}s")

    def _refuse(self, why: str) -> None:
        log.warning(f"interface {self.iface.name}: connection from {self.peer} refused: {why}")

    def _serve_calls(self) -> None:
        assert self.caller is not None
        iface = self.iface
        while True:
            try:
                envelope = self._read_frame(wake=True)
            except ProtocolError as e:
                log.warning(f"interface {iface.name}: cage {self.caller.cage} at {self.peer} sent a bad frame, "
                            f"disconnected: {e}")
                return
            if envelope is None:
                return
            if iface.ceasing:  # what was read now (if anything) is refused with the rest
                self._goodbye(envelope)
                return
            answer = self._answer(envelope, time.monotonic())
            if answer is not None and not self._send(answer):
                return

    def _goodbye(self, envelope: Any) -> None:
        """The cage is stopping: a refusal tells the caller to go elsewhere. Calls that
        crossed it are refused too, until the caller closes or the grace ends - not
        closing at once keeps them from resetting the connection before the caller has
        read why. Tagged calls already with the workers are answered before it closes."""
        until = time.monotonic() + GOODBYE_GRACE
        if _tag(envelope) is not None and not self._send(self._refusal(envelope)):
            return
        if not self._send(self.iface.refused):  # the goodbye, and the answer to an untagged call just read
            return
        while True:
            try:
                envelope = self._read_frame(wake=False, until=until)
            except ProtocolError:
                break
            if envelope is None or not self._send(self._refusal(envelope)):
                break
        with self.answered:  # every call handed to the workers ends by its deadline
            self.closing = True
            self.answered.wait_for(lambda: not self.tagged, self.iface.request_timeout)

    def _refusal(self, envelope: Any) -> bytes:
        tag = _tag(envelope)
        return self.iface.refused if tag is None else codec.encode({**wire.REFUSED, "tag": tag})

    def _send(self, frame: bytes) -> bool:
        """Write `frame` (or leave it to the worker writing); False if the connection is broken."""
        return self.out.write(frame, self._write) is None

    def _write(self, data: bytes) -> str | None:
        self.tls.acquire()
        try:
            self.sock.sendall(data)
        except (OSError, ValueError) as e:  # ValueError: closed meanwhile
            return str(e) or type(e).__name__
        finally:
            self.tls.release()
        return None

    def _read_frame(self, *, wake: bool, until: float | None = None) -> Any:
        """The next frame's object; None when the caller goes (or stays idle too long, or
        `until` comes); with `wake`, _WOKEN when the interface ceases meanwhile. One read
        takes whatever has arrived, usually one whole frame."""
        iface = self.iface
        while not self.received:
            # A frame begun must come whole within request_timeout; between frames
            # the caller may be silent up to idle_timeout.
            timeout = iface.request_timeout if self.decoder.pending else iface.idle_timeout
            if until is not None:
                timeout = until - time.monotonic()
            # No look at what TLS holds decrypted (`pending`, one more let-go of the GIL a
            # call): a read asks for more than a TLS record holds, so it takes every record whole.
            fd = self.sock.fileno()
            ready = self.next_frame.ready([fd, iface.wake_r] if wake else [fd], timeout)
            if not ready:
                return None
            if fd not in ready:
                return _WOKEN
            self.tls.acquire()
            try:
                data = self.sock.recv(RECV_SIZE)
            except (OSError, ssl.SSLError):
                return None
            finally:
                self.tls.release()
            if not data:
                return None
            self.received.extend(self.decoder.feed(data))
        return self.received.popleft()

    def _answer(self, envelope: Any, arrived: float) -> bytes | None:
        """The frame that answers one frame: a call's result or error, a poll's calls,
        a post's acceptance; a malformed one gets an error saying so (and is logged).
        None for a tagged call: a worker answers it (`_hand_over`)."""
        assert self.caller is not None
        iface = self.iface
        try:
            if not isinstance(envelope, dict):
                raise ProtocolError("a frame that is not a call")
            kind = envelope.get("kind")
            if kind == "call":
                if "tag" in envelope:
                    return self._hand_over(envelope, _checked_tag(envelope), arrived)
                return self._call(envelope, arrived, iface.run_call)
            if kind == "retry":
                return self._call(envelope, arrived, iface.accept_retried)
            if kind == "poll":
                return codec.encode({"result": self._poll(remain(envelope))}, limit=iface.limit)
            if kind == "post":
                accepted = iface.cluster.reverse.post(self.caller.cage, str(envelope.get("call_id")),
                                                      envelope.get("reply"))
                return codec.encode({"result": accepted})
            raise ProtocolError(f"unknown kind of frame {kind!r}")
        except (ProtocolError, KeyError, TypeError, ValueError) as e:
            log.warning(f"interface {iface.name}: cage {self.caller.cage} at {self.peer}: "
                        f"{exc_string(e, stack=False)}")
            error = e if isinstance(e, ProtocolError) else ProtocolError(f"malformed call: {e}")
            answer = {"error": wire.error_dict(error)}
            tag = _tag(envelope)
            return codec.encode(answer if tag is None else {**answer, "tag": tag})

    def _hand_over(self, envelope: dict[str, Any], tag: int, arrived: float) -> bytes | None:
        """A tagged call, to the worker pool: the worker that runs it sends its answer, tagged,
        while this thread reads the calls that follow. The rest is as `_call`."""
        assert self.caller is not None
        iface, caller = self.iface, self.caller
        if _late(envelope) and self._caller_gone():
            raise ProtocolError("a call that arrived after its caller had gone (the network held it up)")
        try:
            request = iface.callee.request(envelope, caller.cage, arrived)
        except IntakeClosedError:  # stopping: not run, go elsewhere
            return self._refusal(envelope)

        def answer(outcome: Outcome) -> None:
            error = outcome.error
            reply: dict[str, Any]
            if isinstance(error, IntakeClosedError):  # the cage stopped with it still queued: it never ran
                reply = {**wire.REFUSED}
            elif request.expired or isinstance(error, RequestExpiredError):  # late answers are never sent
                reply = self._deadline_reply(request)
            elif error is not None:
                reply = {"error": wire.error_dict(error)}
            else:
                reply = outcome.result
            reply["tag"] = tag
            self._send(wire.answer_frame(reply, iface.limit, iface.use_pickle, caller.cage))
            self.answered.acquire()  # the Condition's lock itself: no `with`, once a call
            self.tagged -= 1
            if self.closing:
                self.answered.notify_all()
            self.answered.release()

        self.answered.acquire()
        self.tagged += 1
        self.answered.release()
        iface.lifecycle.submit(request, iface.run_call, envelope, caller, when_done=answer)
        return None

    def _deadline_reply(self, request: _request.Request) -> dict[str, Any]:
        assert self.caller is not None
        log.warning(f"request {request.unique_id} from cage {self.caller.cage} has not been answered in "
                    f"time, the caller gets a deadline error")
        return {"error": wire.error_dict(DeadlineError(f"request deadline has expired in cage "
                                                       f"{self.iface.runtime.name}"))}

    def _call(self, envelope: dict[str, Any], arrived: float,
              run: Callable[[dict[str, Any], Identity], dict[str, Any]]) -> bytes:
        assert self.caller is not None
        iface = self.iface
        if _late(envelope) and self._caller_gone():
            raise ProtocolError("a call that arrived after its caller had gone (the network held it up)")
        try:
            request = iface.callee.request(envelope, self.caller.cage, arrived)
        except IntakeClosedError:  # stopping, and the goodbye not yet said: not run, go elsewhere
            return iface.refused
        try:
            reply = iface.lifecycle.call(request, run, envelope, self.caller)
        except RequestExpiredError:  # in the queue, or a late answer, which is never sent
            reply = self._deadline_reply(request)
        except RuntimeError as e:  # the worker pool has stopped
            reply = {"error": wire.error_dict(e)}
        return wire.answer_frame(reply, iface.limit, iface.use_pickle, self.caller.cage)

    def _caller_gone(self) -> bool:
        """Whether the caller has closed the connection behind the frame just read."""
        self.tls.acquire()  # workers' answers wait while the socket does not block
        try:
            if not self.sock.pending() and not _ready([self.sock.fileno()], 0):
                return False
            self.sock.setblocking(False)
            data = self.sock.recv(RECV_SIZE)
        except ssl.SSLWantReadError:
            return False
        except OSError:
            return True
        finally:
            self.sock.settimeout(self.iface.request_timeout)
            self.tls.release()
        if not data:
            return True
        self.received.extend(self.decoder.feed(data))  # more calls: the caller is there
        return False

    def _poll(self, remain: float) -> list[dict[str, Any]]:
        """A reverse-call poll from the cage that connected: the calls queued for it, or
        none by POLL_MARGIN before the poller's own deadline - which counts for no more
        than this interface's request_timeout, whatever the poller asks."""
        assert self.caller is not None
        return self.iface.cluster.reverse.calls_for(self.caller.cage, remain, self.iface.request_timeout)

    def shut(self) -> None:
        """From another thread: make the serving thread's wait end (also in the handshake)."""
        _shut(self.sock)

    def close(self) -> None:
        iface = self.iface
        with iface.lock:
            iface.handshaking.pop(self, None)
            iface.connections.discard(self)
            iface.closed.notify_all()
        with self.tls:  # no worker in the middle of an answer
            try:
                self.sock.close()
            except OSError:
                pass


def _tag(envelope: Any) -> Any:
    """The tag of a tagged call (wire.py), None if it is not one."""
    return envelope.get("tag") if isinstance(envelope, dict) else None


def _checked_tag(envelope: dict[str, Any]) -> int:
    tag = envelope["tag"]
    if type(tag) is not int:
        raise ProtocolError("a call's tag must be an integer")
    return tag


def _shut(sock: socket.socket) -> None:
    """Wake whoever waits on `sock`. The plain socket's shutdown: SSLSocket's own would
    also drop the TLS state under a thread that is using it."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def _late(envelope: dict[str, Any]) -> bool:
    """Whether the call seems to have spent long on its way (by the wall clocks, so only
    a hint): a network that held it up may have made its caller give up."""
    wanted = envelope["request"]
    try:
        sent = float(wanted["deadline"]) - float(wanted["remain"])
    except (KeyError, TypeError, ValueError):
        return True
    return time.time() - sent > LATE_AFTER


# --- the caller ---------------------------------------------------------------------------


class Resource(resource.Resource):
    """A connection of pool `rpc__<cage>`: TLS sockets to that cage's instances."""

    transactional = False  # the call is the effect
    inline = True  # every wait is bounded by the deadline
    needs_cluster = True

    keys = RESOURCE_KEYS.extend(
        discovery_timeout=Key(None, float),  # seconds to find and connect to an instance (None: config_cluster.py's)
        marshaling_methods=MARSHALING,  # the original's; msgpack is what pmnc sends
        moved=dict(MOVED_FROM_BOTH, exact_locations=EXACT_LOCATIONS_MOVED,
                   multiple_timeout_allowance=MULTIPLE_ALLOWANCE_MOVED),
    )

    # Every attribute of its own is private (or the base class's lifecycle): `xa.rpc__<cage>.<name>`
    # is the module <name> of that cage, whatever the name. The framework's operations are
    # reached by names no module can have (rpc/calls.py's OPS).
    def __init__(self, name: str, config: dict[str, Any], *, cluster: ClusterHandle) -> None:
        super().__init__(name, self.keys.read(config, resource_file(name)))
        self._cluster = cluster
        self._target: str = self.config["resource_name"] or ""
        self._discovery_timeout: float | None = self.config["discovery_timeout"]
        self._channels: dict[str, _Channel] = {}

    def disconnect(self) -> None:
        for channel in list(self._channels.values()):
            channel.close()
        self._channels.clear()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        op = _OPS.get(name)
        if op is not None:
            return getattr(self, op)
        return _ModuleOfCage(self, name)

    def _route(self, attrs: tuple[str, ...]) -> Callable[..., Any] | None:
        """`xa.rpc__X.module.method`: the other cage's module, whatever its name; or one of
        the framework's operations (rpc/calls.py OPS)."""
        if len(attrs) == 1 and attrs[0] in _OPS:
            return getattr(self, _OPS[attrs[0]])  # type: ignore[no-any-return]
        if len(attrs) != 2:
            return None
        module, method = attrs
        return lambda *args, **kwargs: self._call(module, method, args, kwargs)

    def _call(self, module: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """`pmnc.<module>.<method>(*args, **kwargs)` in an instance of the target cage."""
        request = _request.current()
        # args travel as a list (msgpack's own array; the callee makes it a tuple again)
        return self._exchange({"kind": "call", "module": module, "method": method, "args": list(args),
                               "kwargs": kwargs, "request": wire.wire_request(request)}, request)

    def _exchange(self, envelope: dict[str, Any], request: _request.Request) -> Any:
        """The answer to `envelope` from an instance of the target. A call made while other
        calls of this cage to the same target are under way is tagged and goes on the
        connection they share (_SharedChannel: their frames and answers travel together);
        one alone goes on this pool connection's own, and runs there on the connection's
        thread (no hand-off: the least latency). A frame too large to share goes alone."""
        if not self._target:
            raise ResourceInputParameterError("resource rpc needs a target: use pmnc(\"cage\") or rpc__<cage>")
        cluster = self._cluster.get()
        envelope["source"], envelope["target"] = [cluster.node, cluster.cage], self._target
        if cluster.transport == "nats":
            reply = natsrpc.call_until_answered(cluster, self._target, self._encode(envelope, cluster), request)
            return _result(reply, self._target, self._target, lambda: None)
        calls = _calls_to(cluster, self._target)
        # Kept on one CPU, calls that overlap go each on its own connection: no reader thread to
        # wake for each answer, and the threads' turns on the one CPU are cheap (placement.py).
        tag = next(_TAGS) if calls.begin() and envelope["kind"] == "call" and not on_one_cpu() else None
        try:
            if tag is not None:
                envelope["tag"] = tag
            frame = self._encode(envelope, cluster)
            if tag is not None and len(frame) > SHARED_FRAME_MAX:
                tag = None
                del envelope["tag"]
                frame = self._encode(envelope, cluster)
            shared = calls if tag is not None else None
            stopping: set[str] = set()  # instances that refused the call: it did not run there
            while True:
                channel = self._channel(cluster, request, stopping, calls, shared)
                reply = channel.exchange(frame, request, cluster, tag)
                if channel.gone:  # it said goodbye, after its answer or instead of one
                    self._forget(channel, cluster, shared)
                if reply is _UNSENT:  # a shared connection that closed meanwhile: another one
                    continue
                if not wire.is_refusal(reply):
                    break
                stopping.add(channel.location.instance)
                log.debug(f"cage {channel.location} is stopping, the call goes to another instance")
        finally:
            calls.end()
        return _result(reply, self._target, channel.location.name, channel.close)

    def _encode(self, envelope: dict[str, Any], cluster: Cluster) -> bytes:
        try:
            return codec.encode(envelope, limit=cluster.max_frame_size, use_pickle=cluster.use_pickle)
        except ProtocolError as e:
            raise ResourceInputParameterError(f"the call cannot be sent to cage {self._target}: {e}") from None

    def _forget(self, channel: _Channel | _SharedChannel, cluster: Cluster, shared: _Calls | None) -> None:
        """An instance that is stopping: no more calls on its connection, the instance skipped."""
        channel.retire()
        if shared is not None:
            shared.drop(channel)
        elif self._channels.get(channel.location.instance) is channel:
            del self._channels[channel.location.instance]
        cluster.locator.failed(channel.location)

    def _channel(self, cluster: Cluster, request: _request.Request, stopping: set[str], calls: _Calls,
                 shared: _Calls | None) -> _Channel | _SharedChannel:
        """A connection to one live instance, picked at random: an open one if there is one
        (this pool connection's own, or, for a `shared` call, the one the target's calls
        share), else a new one; failing ones, and those `stopping` (more are found on the
        way: then the instances are looked up again), are skipped within the budget.

        At most MAX_CONNECTING connections to the target are opened at once (`calls.connects`):
        a burst of calls must not become a burst of TLS handshakes, of which the callee keeps
        `max_handshakes` waiting and drops the oldest. A shared call that waited its turn takes
        the shared connection another opened meanwhile."""
        channels: dict[str, Any] = self._channels if shared is None else shared.channels
        while True:
            failures = []
            for location in self._locations(cluster, request, stopping):
                channel = channels.get(location.instance)
                if channel is not None:
                    if channel.usable():
                        return channel  # type: ignore[no-any-return]
                    if channel.gone:
                        self._forget(channel, cluster, shared)
                        stopping.add(location.instance)
                        break  # look the instances up again: a new one may have come meanwhile
                    channel.retire()
                budget = self._budget(cluster, request)
                if not calls.connects.acquire(timeout=budget):
                    failures.append(f"no turn to open a connection in {budget:.1f}s ({MAX_CONNECTING} at a time)")
                    break
                try:
                    channel = channels.get(location.instance)
                    if shared is not None and channel is not None and channel.usable():
                        return channel  # type: ignore[no-any-return]
                    new = _Channel.connect(location, cluster, self._budget(cluster, request))
                except ResourceError as e:
                    cluster.locator.failed(location)
                    failures.append(str(e))
                    if request.expired:
                        break
                    continue
                finally:
                    calls.connects.release()
                if shared is not None:
                    return shared.share(new, cluster)
                self._channels[location.instance] = new
                return new
            if failures or request.expired:
                raise ResourceError(f"cage {self._target} cannot be reached: {'; '.join(failures) or 'no time left'}",
                                    recoverable=True, terminal=False)

    def _locations(self, cluster: Cluster, request: _request.Request, stopping: set[str]) -> list[Location]:
        """The live instances of the target but those `stopping`, in random order;
        discovered if none is known."""
        locations = [loc for loc in cluster.locator.locations(self._target) if loc.instance not in stopping]
        if not locations:
            budget = self._budget(cluster, request)
            locations = [loc for loc in cluster.locator.find(self._target, budget) if loc.instance not in stopping]
            if not locations and stopping:
                raise ResourceError(f"cage {self._target} is stopping, and no other instance of it has been "
                                    f"found in {budget:.1f}s (the call has not run)", recoverable=True, terminal=False)
            if not locations:
                raise ResourceError(f"no instance of cage {self._target} has been found in {budget:.1f}s",
                                    recoverable=True, terminal=False)
        if len(locations) > 1:  # shuffle is Python, even for one
            random.shuffle(locations)
        return locations

    def _budget(self, cluster: Cluster, request: _request.Request) -> float:
        """Seconds to find and connect to an instance: the pool's discovery_timeout, else the cluster's."""
        timeout = cluster.discovery_timeout if self._discovery_timeout is None else self._discovery_timeout
        return min(timeout, request.remain)

    def _hand_over(self, message: dict[str, Any]) -> bool:
        """A retried call into the target cage's state file (retry.py): True once it is
        there, False if it was there already."""
        request = _request.current()
        return bool(self._exchange({"kind": "retry", "message": message, "request": wire.wire_request(request)},
                                  request))

    def _poll(self, wait: float) -> list[dict[str, Any]]:
        """Reverse calls: those the target cage has queued for this one."""
        request = _request.current()
        wire_request = wire.wire_request(request)
        wire_request["remain"] = wait
        result = self._exchange({"kind": "poll", "request": wire_request}, request)
        return result if isinstance(result, list) else []

    def _post(self, call_id: str, reply: dict[str, Any]) -> bool:
        request = _request.current()
        return bool(self._exchange({"kind": "post", "call_id": call_id, "reply": reply,
                                   "request": wire.wire_request(request)}, request))


class _ModuleOfCage:
    """`xa.rpc__worker.<module>`: its attributes are that module's functions there."""

    def __init__(self, resource: Resource, module: str) -> None:
        self._resource, self._module = resource, module

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args, **kwargs: self._resource._call(self._module, method, args, kwargs)


class _Channel:
    """One TLS socket to one instance; one call at a time."""

    def __init__(self, sock: ssl.SSLSocket, location: Location, cluster: Cluster) -> None:
        self.sock, self.location = sock, location
        self.decoder = codec.FrameDecoder(cluster.max_frame_size, cluster.use_pickle)
        self.gone = False  # the instance has said it is stopping
        self.answer = BusyWait(cluster.busy_wait)  # a quick callee's answer is not slept on

    @classmethod
    def connect(cls, location: Location, cluster: Cluster, timeout: float) -> _Channel:
        try:
            raw = socket.create_connection((location.host, location.port), timeout=max(timeout, 0.001))
        except OSError as e:
            raise _failure(location, str(e), recoverable=True) from None
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = cluster.client_context.wrap_socket(raw, server_side=False)
        except (OSError, ssl.SSLError) as e:
            raw.close()
            raise _failure(location, f"TLS handshake failed: {e}", recoverable=True) from None
        identity = peer_identity(sock.getpeercert())
        if identity != Identity(cluster.flock, location.cage):
            sock.close()
            raise _failure(location, f"the server there is not cage {location.cage} of flock {cluster.flock} "
                                    f"(it is {identity})", recoverable=True)
        sock.setblocking(False)
        return cls(sock, location, cluster)

    def retire(self) -> None:
        self.close()

    def usable(self) -> bool:
        """Not closed by the other side meanwhile (an instance that died or restarted), nor
        told that it is stopping (`gone`): a reused connection must be good before a call
        goes out on it, so that a call is never sent into a dead socket and lost. The socket
        is non-blocking, and every answer is read whole, so TLS holds nothing back: anything
        that has come since shows on the socket itself."""
        try:
            if not _ready([self.sock.fileno()], 0):
                return True
            data = self.sock.recv(RECV_SIZE)
        except ssl.SSLWantReadError:
            return True  # only TLS housekeeping was there
        except (OSError, ValueError):
            return False
        try:
            self.gone = any(wire.is_refusal(frame) for frame in self.decoder.feed(data)) if data else False
        except ProtocolError:
            pass
        return False  # the end of the stream, or bytes nobody asked for

    def exchange(self, frame: bytes, request: _request.Request, cluster: Cluster, tag: int | None = None) -> Any:
        """The answer to `frame` (this connection carries one call at a time: its `tag`, if
        it has one, needs no matching); a refusal if the instance is stopping and has not
        run it (then `gone` is set, as it is when a goodbye follows the answer).

        The socket is non-blocking and the waits are polls bounded by the deadline: each
        system call lets the GIL go, and with calls on several threads every such let-go
        wakes another thread, so a call makes as few as it can - a write, a poll for the
        answer, a read (a socket timeout would add an ioctl per call, and a read that
        finds nothing yet)."""
        try:
            self._send(frame, request)
            while True:
                if not self.answer.ready([self.sock.fileno()], request.remain):
                    raise TimeoutError
                try:
                    data = self.sock.recv(RECV_SIZE)
                except ssl.SSLWantReadError:
                    continue  # a TLS record that holds no data (a session ticket)
                if not data:
                    raise EOFError
                answers = self.decoder.feed(data)
                if answers:
                    break
        except TimeoutError:
            self.close()
            raise RPCDeadlineError(f"request deadline waiting for a response from cage {self.location.name}") from None
        except (OSError, EOFError) as e:
            self.close()
            cluster.locator.failed(self.location)
            raise _failure(self.location, f"connection lost during the call: {str(e) or 'closed by the other side'}",
                           recoverable=False, terminal=False) from None
        except ProtocolError as e:
            self.close()
            raise _failure(self.location, f"answered with a bad frame: {e}", recoverable=False,
                           terminal=False) from None
        self.gone = any(wire.is_refusal(answer) for answer in answers)
        if len(answers) > 1 and not all(wire.is_refusal(answer) for answer in answers[1:]):
            self.close()
            raise _failure(self.location, "answered more than it was asked", recoverable=False, terminal=False)
        return answers[0]

    def _send(self, frame: bytes, request: _request.Request) -> None:
        view = memoryview(frame)
        while view:
            try:
                view = view[self.sock.send(view):]
            except ssl.SSLWantWriteError:
                if not _ready([self.sock.fileno()], request.remain, select.POLLOUT):
                    raise TimeoutError from None
            except ssl.SSLWantReadError:
                if not _ready([self.sock.fileno()], request.remain):
                    raise TimeoutError from None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# --- calls made at the same time share a connection -------------------------------------------------

SHARED_FRAME_MAX = 65536  # bytes: a larger call goes on a connection of its own (its write is long)
MAX_CONNECTING = 4  # connections to one target cage being opened at once (TLS handshakes: _channel)
SHARED_IDLE = 60.0  # seconds a shared connection with no call is kept
_TAGS = itertools.count(1)  # tags of this cage's shared calls: next() is atomic
_UNSENT = object()  # what a shared connection that could not take the call answers: not sent, try another


class _Calls:
    """This cage's calls to one target cage: how many are under way, and the connections
    those made at the same time share, by instance. In `Cluster.links`, closed with it."""

    __slots__ = ("channels", "connects", "in_flight", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.connects = threading.BoundedSemaphore(MAX_CONNECTING)  # turns to open a connection
        self.in_flight = 0
        self.channels: dict[str, _SharedChannel] = {}

    def begin(self) -> bool:
        """One more call under way: True if others are (it shares their connection)."""
        self.lock.acquire()  # not `with`: twice a call
        others = self.in_flight
        self.in_flight = others + 1
        self.lock.release()
        return others > 0

    def end(self) -> None:
        self.lock.acquire()
        self.in_flight -= 1
        self.lock.release()

    def share(self, new: _Channel, cluster: Cluster) -> _SharedChannel:
        """The shared connection to `new`'s instance: `new` becomes it, unless another thread's
        call made a usable one meanwhile (then `new` is closed)."""
        with self.lock:
            current = self.channels.get(new.location.instance)
            if current is None or not current.usable():
                current = self.channels[new.location.instance] = _SharedChannel(new, cluster)
                current.start()
                return current
        new.close()
        return current

    def drop(self, channel: _Channel | _SharedChannel) -> None:
        with self.lock:
            if self.channels.get(channel.location.instance) is channel:
                del self.channels[channel.location.instance]

    def close(self) -> None:
        with self.lock:
            channels, self.channels = list(self.channels.values()), {}
        for channel in channels:
            channel.close()


def _calls_to(cluster: Cluster, target: str) -> _Calls:
    calls = cluster.links.get(target)
    if calls is None:
        calls = cluster.links.setdefault(target, _Calls())  # atomic: two first calls get the same one
    return calls  # type: ignore[no-any-return]


class _Outbox:
    """Frames from several threads onto one connection: whoever finds nobody writing writes, with
    every frame that comes meanwhile - all of those in one write. `send(data)` gives None once
    `data` is out, else why not; what still waits is then dropped (the connection is broken)."""

    __slots__ = ("frames", "lock", "writing")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.frames: list[bytes] = []
        self.writing = False

    def write(self, frame: bytes, send: Callable[[bytes], str | None]) -> str | None:
        """None once `frame` is written or left to the thread writing; else why writing failed."""
        lock = self.lock
        lock.acquire()  # not `with`: once a call
        if self.writing:
            self.frames.append(frame)
            lock.release()
            return None
        self.writing = True
        try:
            while True:
                lock.release()
                try:
                    failure = send(frame)
                finally:
                    lock.acquire()
                if failure is not None:
                    self.frames.clear()
                    return failure
                if not self.frames:
                    return None
                frame = b"".join(self.frames)
                self.frames.clear()
        finally:
            self.writing = False
            lock.release()


class _Waiter:
    """A shared call waiting for its answer: `arrived` is released when `answer` is in."""

    __slots__ = ("answer", "arrived")

    def __init__(self) -> None:
        self.arrived = threading.Lock()
        self.arrived.acquire()
        self.answer: Any = None


class _SharedChannel:
    """One TLS connection to one instance, shared by the calls made at the same time: each
    frame tagged (wire.py), written by whoever finds nobody writing - every frame waiting in
    one write - and read by a thread of its own that hands each answer to the call waiting
    for its tag. Waits are bounded by each call's deadline; a call that gives up leaves the
    connection to the others (its answer, if it comes, is dropped). Every TLS call is made
    under `tls`, the socket never blocks: OpenSSL forbids two threads in one connection at
    once. A connection lost fails every call on it (they may have run); a goodbye (the
    instance stopping) takes no more calls, and those under way get their answers."""

    def __init__(self, channel: _Channel, cluster: Cluster) -> None:
        self.channel, self.sock, self.location = channel, channel.sock, channel.location
        self.fd = channel.sock.fileno()
        self.decoder = codec.FrameDecoder(cluster.max_frame_size, cluster.use_pickle)
        self.lock = threading.Lock()  # the waiters and the state below
        self.tls = threading.Lock()
        self.waiting: dict[int, _Waiter] = {}
        self.out = _Outbox()
        self.lost: str | None = None  # why no more calls go on it (and those under way failed)
        self.gone = False  # the instance has said it is stopping
        self.locator = cluster.locator

    def start(self) -> None:
        threading.Thread(target=self._read, name=f"rpc:{self.location.name}", daemon=True).start()

    def usable(self) -> bool:
        """Neither lost nor gone, nor closed by the other side (the reader may not have seen it yet)."""
        if self.lost is not None or self.gone:
            return False
        return not _ready([self.fd], 0, select.POLLRDHUP)

    def exchange(self, frame: bytes, request: _request.Request, cluster: Cluster, tag: int | None) -> Any:
        """The answer to `frame`, tagged `tag`; _UNSENT if this connection could not take it."""
        assert tag is not None
        waiter = _Waiter()
        self.lock.acquire()
        if self.lost is not None or self.gone:
            self.lock.release()
            return _UNSENT
        self.waiting[tag] = waiter
        self.lock.release()
        self._write(frame, request)
        if not waiter.arrived.acquire(timeout=max(request.remain, 0.0)):
            with self.lock:
                self.waiting.pop(tag, None)
            raise RPCDeadlineError(f"request deadline waiting for a response from cage {self.location.name}")
        if isinstance(waiter.answer, ResourceError):
            raise waiter.answer
        return waiter.answer

    def _write(self, frame: bytes, request: _request.Request) -> None:
        if self.lost is not None:  # every call waiting on it has been failed
            return
        failure = self.out.write(frame, lambda data: self._send(data, request))
        if failure is not None:
            self._lose(failure)

    def _send(self, data: bytes, request: _request.Request) -> str | None:
        """None once `data` is written; else why not (the connection is then lost: part of a frame may be out)."""
        view = memoryview(data)
        while view:
            self.tls.acquire()
            try:
                view = view[self.sock.send(view):]
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                pass
            except (OSError, ValueError) as e:
                return str(e) or type(e).__name__
            finally:
                self.tls.release()
            if view and not _ready([self.fd], request.remain, select.POLLOUT):
                return "the other side took nothing within the deadline of a call writing"
        return None

    def _read(self) -> None:
        """The reader's thread: answers to their calls, until the connection ends."""
        why = "closed by the other side"
        try:
            while self._next_read():
                self.tls.acquire()
                try:
                    data = self.sock.recv(RECV_SIZE)
                except ssl.SSLWantReadError:
                    continue
                finally:
                    self.tls.release()
                if not data:
                    break
                for answer in self.decoder.feed(data):
                    self._deliver(answer)
        except ProtocolError as e:
            why = f"answered with a bad frame: {e}"
        except (OSError, ValueError) as e:
            why = str(e) or type(e).__name__
        self._lose(why)

    def _next_read(self) -> bool:
        """Wait for data; False when the connection is to close: lost, gone with every call
        answered, or idle for SHARED_IDLE."""
        while True:
            if self.lost is not None or (self.gone and not self.waiting):
                return False
            if _ready([self.fd], SHARED_IDLE):
                return True
            with self.lock:
                if not self.waiting and not self.out.writing:
                    self.lost = "idle"
                    return False

    def _deliver(self, answer: Any) -> None:
        tag = answer.pop("tag", None) if isinstance(answer, dict) else None
        if tag is None:
            if not wire.is_refusal(answer):
                raise ProtocolError("an answer without a tag on a shared connection")
            self.gone = True  # the goodbye
            return
        if wire.is_refusal(answer):
            self.gone = True
        with self.lock:
            waiter = self.waiting.pop(tag, None)
        if waiter is not None:  # else the call gave up at its deadline
            waiter.answer = answer
            waiter.arrived.release()

    def _lose(self, why: str) -> None:
        """No more calls on it; those under way fail (they may have run)."""
        with self.lock:
            if self.lost is None:
                self.lost = why
            why, waiting, self.waiting = self.lost, self.waiting, {}
        if waiting:
            self.locator.failed(self.location)
        for waiter in waiting.values():
            waiter.answer = _failure(self.location, f"connection lost during the call: {why}",
                                     recoverable=False, terminal=False)
            waiter.arrived.release()
        self.close()

    def retire(self) -> None:
        """No more calls; those under way get their answers, then it closes."""
        self.gone = True
        if not self.waiting:
            self.close()

    def close(self) -> None:
        """Wakes the reader (which fails the calls still waiting); the socket is closed once
        nobody is in the middle of a TLS call on it."""
        if self.lost is None:
            self.lost = "closed by this cage"
        _shut(self.sock)
        if self.tls.acquire(timeout=1.0):
            try:
                self.channel.close()
            finally:
                self.tls.release()


class ExactLink:
    """Calls to one instance (`Interface.exact`): connected on the first call within
    min(discovery_timeout, the request's time left), each call bounded by the current
    request; never another instance, and a stopping one is a failure, not a hand-over.
    An instance found on NATS is called on its own subject instead."""

    def __init__(self, cluster: Cluster, location: Location) -> None:
        self.cluster, self.location = cluster, location
        self.channel: _Channel | None = None

    def __enter__(self) -> ExactLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, module: str, method: str, *args: Any, **kwargs: Any) -> Any:
        request, cluster, location = _request.current(), self.cluster, self.location
        if request.infinite:
            raise ResourceInputParameterError("a call to an exact instance needs a request with a deadline")
        envelope = {"kind": "call", "module": module, "method": method, "args": list(args), "kwargs": kwargs,
                    "request": wire.wire_request(request), "source": [cluster.node, cluster.cage],
                    "target": location.cage}
        try:
            frame = codec.encode(envelope, limit=cluster.max_frame_size, use_pickle=cluster.use_pickle)
        except ProtocolError as e:
            raise ResourceInputParameterError(f"the call cannot be sent to cage {location.cage}: {e}") from None
        if location.source == natsrpc.OVER_NATS:  # found on NATS: the instance's own subject
            subject = natsrpc.instance_subject(cluster.flock, location.instance)
            reply = natsrpc.exchange(cluster, location.cage, frame, request, subject)
        else:
            if self.channel is None:
                self.channel = _Channel.connect(location, cluster, min(cluster.discovery_timeout, request.remain))
            reply = self.channel.exchange(frame, request, cluster)
        if wire.is_refusal(reply):
            self.close()
            raise ResourceError(f"cage {location.name} is stopping", recoverable=True, terminal=False)
        return _result(reply, location.name, location.name, self.close)

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None


def _failure(location: Location, text: str, **kwargs: Any) -> ResourceError:
    """A caller's error naming the instance but not its address, which goes to this
    cage's log only: errors may reach clients (an HTTP 500 body)."""
    log.warning(f"cage {location}: {text}")
    return ResourceError(f"cage {location.name}: {text}", **kwargs)


def _result(reply: Any, target: str, instance: str, close: Callable[[], None]) -> Any:
    """A call's result from `reply`, or the error it carries (raised); a malformed reply closes
    the connection (`close`) and is an unrecoverable error."""
    if not isinstance(reply, dict) or not ("result" in reply or "error" in reply):
        close()
        raise ResourceError(f"cage {target} answered with a malformed reply", recoverable=False)
    if "error" in reply:
        raise wire.remote_error(reply["error"], f"cage {instance}")
    return reply["result"]
