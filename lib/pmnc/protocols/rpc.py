"""Cage-to-cage calls over mutual TLS: the `rpc` interface (callee) and resource (caller).

Caller: `pmnc("worker").m.f(x)` is a one-participant transaction on the pool
`rpc__worker` (config_resource_rpc.py; it is the per-target bulkhead). A
connection of that pool picks an instance of `worker` per call, at random
among the live ones the locator knows (discovering them if none), and keeps
one TLS socket per instance it has used. Every wait is bounded by the
request's deadline. A connect that fails moves on to the next instance
within the same budget (nothing has been sent); a connection lost during a
call fails that call at once (it may have run) and the instance is skipped.

Callee: the interface accepts TLS connections whose client certificate is
from the cluster CA and names a cage of this flock. Each connection has a
thread of its own that reads a frame (codec.py), runs the call as a request
- the caller's id, log levels and parameters, a deadline of the caller's
time left less a margin - and writes the answer: `pmnc.<module>.<method>(
*args, **kwargs)` for any name in the module's `__all__`, unless
`deny_modules` matches the module. The call runs on the connection's own
thread when one of the worker pool's `thread_count` slots is free and
nothing waits (no hand-off between threads: less than half the CPU per call
of serving it on the event loop and running it on a worker, measured with
bench/rpc_calls.py), and is queued earliest deadline first otherwise.
Queued work whose deadline passes is never started, and an answer later
than the deadline is replaced by a deadline error.
"""

from __future__ import annotations

import collections
import fnmatch
import functools
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
from pmnc.loader import MODULE_NAME
from pmnc.rpc import cluster as _cluster
from pmnc.rpc import codec, wire
from pmnc.rpc.identity import Identity, peer_identity
from pmnc.rpc.locator import Location
from pmnc.rpc.reverse import POLL_MARGIN

if TYPE_CHECKING:
    from pmnc.cage import Cage

HANDSHAKE_TIMEOUT = 5.0
RECV_SIZE = 262144  # bytes asked for by one read
LATE_AFTER = 0.25  # seconds on the way after which the callee checks that the caller is still there


# --- the callee ------------------------------------------------------------------------------


class Interface(interfaces.Interface):
    protocol = "rpc"

    def __init__(self, name: str, cage: Cage, config: dict[str, Any]) -> None:
        super().__init__(name, cage, config)
        take = config.pop
        address = take("listener_address", ("127.0.0.1", 0))
        if not (isinstance(address, (tuple, list)) and len(address) == 2):
            raise ConfigError(f"config_interface_{name}.py: listener_address must be (host, port)")
        self.host, self.port = str(address[0]), int(address[1])
        self.max_connections = int(take("max_connections", 200))
        self.max_handshakes = int(take("max_handshakes", 32))
        self.deny_modules = tuple(str(p) for p in take("deny_modules", ()))
        self.idle_timeout = float(take("idle_timeout", 600.0))
        self.connections: set[Connection] = set()  # authenticated
        self.handshaking: dict[Connection, None] = {}  # not yet, oldest first
        self.lock = threading.Lock()
        self.ceasing = False
        self.listener: socket.socket | None = None
        self.acceptor: threading.Thread | None = None

    def start(self) -> None:
        assert self.cage.pool is not None
        self.pool = self.cage.pool
        self.cluster = _cluster.get()
        self.context = self.cluster.keys.server_context()
        self.context.num_tickets = 0  # connections live long; no session resumption to offer
        self.limit, self.use_pickle = self.cluster.max_frame_size, self.cluster.use_pickle
        listener = socket.create_server((self.host, self.port), backlog=256, reuse_port=False)
        self.listener = listener
        host, port = listener.getsockname()[:2]
        self.address = (host, port)
        self.acceptor = threading.Thread(target=self._accept_loop, name=f"{self.name}:accept", daemon=True)
        self.acceptor.start()
        self.cluster.locator.publish(host, port)
        log.message(f"interface {self.name} listens on ssl://{host}:{port}/")

    def cease(self) -> None:
        """No new connections or calls; idle connections close, busy ones after their answer."""
        self.ceasing = True
        self.cluster.locator.unpublish()
        if self.listener is not None:
            _shut(self.listener)  # wakes the acceptor
        with self.lock:
            idle = [c for c in self.connections if c.idle] + list(self.handshaking)
        for connection in idle:
            connection.shut()

    def stop(self) -> None:
        self.ceasing = True
        with self.lock:
            every = list(self.connections) + list(self.handshaking)
        for connection in every:
            connection.shut()
        if self.acceptor is not None:
            self.acceptor.join(3.0)

    def _accept_loop(self) -> None:
        assert self.listener is not None
        while not self.ceasing:
            try:
                sock, peer = self.listener.accept()
            except OSError:
                break
            self._admit(Connection(self, sock, f"{peer[0]}:{peer[1]}"))
        self.listener.close()

    def _admit(self, connection: Connection) -> None:
        """A thread for the new connection. Connections still in their TLS handshake are
        limited apart, the oldest dropped first, so that strangers opening sockets cannot
        lock cages out (a real cage finishes its handshake in milliseconds)."""
        with self.lock:
            oldest = next(iter(self.handshaking)) if len(self.handshaking) >= self.max_handshakes else None
            full = len(self.connections) >= self.max_connections
            if not full:
                self.handshaking[connection] = None
        if oldest is not None:
            oldest.shut()
        if full:
            log.warning(f"interface {self.name}: connection from {connection.peer} refused, "
                        f"{self.max_connections} cages connected")
            _shut(connection.raw)
            connection.raw.close()
            return
        threading.Thread(target=connection.serve, name=f"{self.name}:{connection.peer}", daemon=True).start()

    # --- one call ----------------------------------------------------------------------------

    def run_call(self, envelope: dict[str, Any], caller: Identity) -> dict[str, Any]:
        return run_call(self.cage, self.deny_modules, envelope, caller)

    def accept_retried(self, envelope: dict[str, Any], caller: Identity) -> dict[str, Any]:
        """A retried call handed over by another cage: into our state file (retry.py)."""
        message = envelope.get("message")
        module = message.get("module") if isinstance(message, dict) else None
        try:
            if isinstance(module, str) and _denied(module, self.deny_modules):
                raise InvalidMethodAccessError(f"module {module} is not callable from other cages")
            return {"result": retry.accept(self.cage.loader, message, caller.cage)}
        except Exception as e:
            log.warning(f"a retried call from cage {caller.cage} is refused: {exc_string(e, stack=False)}")
            return {"error": wire.error_dict(e)}


class Connection:
    """One caller's connection, served by its own thread: the TLS handshake (a peer that
    is not a cage of this cluster is refused and logged), then calls one at a time,
    each answered before the next frame is read."""

    def __init__(self, iface: Interface, raw: socket.socket, peer: str) -> None:
        self.iface, self.raw, self.peer = iface, raw, peer
        self.sock: ssl.SSLSocket | None = None
        self.caller: Identity | None = None
        self.idle = False
        self.decoder = codec.FrameDecoder(iface.limit, iface.use_pickle)
        self.received: collections.deque[Any] = collections.deque()  # frames read, not yet answered

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
            self.raw.settimeout(HANDSHAKE_TIMEOUT)
            self.raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = iface.context.wrap_socket(self.raw, server_side=True)
        except (OSError, ssl.SSLError) as e:
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
        return not iface.ceasing

    def _refuse(self, why: str) -> None:
        log.warning(f"interface {self.iface.name}: connection from {self.peer} refused: {why}")

    def _serve_calls(self) -> None:
        assert self.sock is not None and self.caller is not None
        iface = self.iface
        while not iface.ceasing:
            self.idle = True
            try:
                envelope = self._read_frame()
            except ProtocolError as e:
                log.warning(f"interface {iface.name}: cage {self.caller.cage} at {self.peer} sent a bad frame, "
                            f"disconnected: {e}")
                return
            if envelope is None:
                return
            self.idle = False
            frame = self._answer(envelope, time.monotonic())
            try:
                self.sock.settimeout(iface.request_timeout)
                self.sock.sendall(frame)
            except OSError:
                return

    def _read_frame(self) -> Any:
        """The next frame's object; None when the caller goes (or stays idle too long).
        One read takes whatever has arrived, usually one whole frame."""
        assert self.sock is not None
        iface = self.iface
        while not self.received:
            # A frame begun must come whole within request_timeout; between frames
            # the caller may be silent up to idle_timeout.
            self.sock.settimeout(iface.request_timeout if self.decoder.pending else iface.idle_timeout)
            try:
                data = self.sock.recv(RECV_SIZE)
            except (OSError, ssl.SSLError):
                return None
            if not data:
                return None
            self.received.extend(self.decoder.feed(data))
        return self.received.popleft()

    def _answer(self, envelope: Any, arrived: float) -> bytes:
        """The frame that answers one frame: a call's result or error, a poll's calls,
        a post's acceptance; a malformed one gets an error saying so (and is logged)."""
        assert self.caller is not None
        iface = self.iface
        try:
            if not isinstance(envelope, dict):
                raise ProtocolError("a frame that is not a call")
            kind = envelope.get("kind")
            if kind == "call":
                return self._call(envelope, arrived, iface.run_call)
            if kind == "retry":
                return self._call(envelope, arrived, iface.accept_retried)
            if kind == "poll":
                return codec.encode({"result": self._poll(_remain(envelope))}, limit=iface.limit)
            if kind == "post":
                accepted = iface.cluster.reverse.post(self.caller.cage, str(envelope.get("call_id")),
                                                      envelope.get("reply"))
                return codec.encode({"result": accepted})
            raise ProtocolError(f"unknown kind of frame {kind!r}")
        except (ProtocolError, IntakeClosedError, KeyError, TypeError, ValueError) as e:
            log.warning(f"interface {iface.name}: cage {self.caller.cage} at {self.peer}: "
                        f"{exc_string(e, stack=False)}")
            error = e if isinstance(e, (ProtocolError, IntakeClosedError)) else ProtocolError(f"malformed call: {e}")
            return codec.encode({"error": wire.error_dict(error)})

    def _call(self, envelope: dict[str, Any], arrived: float,
              run: Callable[[dict[str, Any], Identity], dict[str, Any]]) -> bytes:
        assert self.caller is not None
        iface = self.iface
        if _late(envelope) and self._caller_gone():
            raise ProtocolError("a call that arrived after its caller had gone (the network held it up)")
        request = callee_request(iface, envelope, self.caller, arrived)
        try:
            reply = iface.pool.call(request, run, envelope, self.caller)
        except (RequestExpiredError, RuntimeError) as e:
            reply = {"error": wire.error_dict(e)}
        finally:
            iface.cage.intake.end(request)
        if request.expired:  # a late answer is never sent: the caller is told it is late
            log.warning(f"request {request.unique_id} from cage {self.caller.cage} has not been answered in "
                        f"time, the caller gets a deadline error")
            reply = {"error": wire.error_dict(DeadlineError(f"request deadline has expired in cage "
                                                            f"{iface.cage.name}"))}
        return answer_frame(reply, iface.limit, iface.use_pickle, self.caller.cage)

    def _caller_gone(self) -> bool:
        """Whether the caller has closed the connection behind the frame just read."""
        assert self.sock is not None
        if not select.select([self.sock], [], [], 0)[0]:
            return False
        self.sock.setblocking(False)
        try:
            data = self.sock.recv(RECV_SIZE)
        except ssl.SSLWantReadError:
            return False
        except OSError:
            return True
        finally:
            self.sock.setblocking(True)
        if not data:
            return True
        self.received.extend(self.decoder.feed(data))  # more calls: the caller is there
        return False

    def _poll(self, remain: float) -> list[dict[str, Any]]:
        """A reverse-call poll from the cage that connected: the calls queued for it, or
        none by POLL_MARGIN before the poller's own deadline."""
        assert self.caller is not None
        calls = self.iface.cluster.reverse.poll(self.caller.cage, remain - POLL_MARGIN)
        now = time.monotonic()
        result = []
        for pending in calls:
            call = dict(pending.envelope)
            call["request"] = dict(call["request"], remain=max(pending.deadline - now, 0.0))
            call["call_id"] = pending.call_id
            result.append(call)
        return result

    def shut(self) -> None:
        """From another thread: make the serving thread's wait end."""
        _shut(self.sock or self.raw)

    def close(self) -> None:
        iface = self.iface
        with iface.lock:
            iface.handshaking.pop(self, None)
            iface.connections.discard(self)
        for sock in (self.sock, self.raw):
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def dispatch(cage: Cage, deny_modules: tuple[str, ...], envelope: dict[str, Any], caller: Identity) -> Any:
    """`pmnc.<module>.<method>(*args, **kwargs)` for a call from `caller`, if it may be made."""
    module, method = envelope.get("module"), envelope.get("method")
    args, kwargs = envelope.get("args", ()), envelope.get("kwargs", {})
    if not (isinstance(module, str) and isinstance(method, str) and MODULE_NAME.fullmatch(module)
            and not module.startswith("_") and not method.startswith("_")
            and isinstance(args, (list, tuple)) and isinstance(kwargs, dict)
            and all(isinstance(k, str) for k in kwargs)):
        raise InvalidMethodAccessError(f"a malformed call from cage {caller.cage}")
    if envelope.get("target") != cage.name:
        raise InvalidMethodAccessError(f"a call for cage {envelope.get('target')!r} has reached cage {cage.name}")
    if _denied(module, deny_modules):
        raise InvalidMethodAccessError(f"module {module} is not callable from other cages")
    log.debug(f"call {module}.{method} from cage {caller.cage}")
    return cage.loader.call(module, method, tuple(args), kwargs)


@functools.lru_cache(maxsize=4096)
def _denied(module: str, deny_modules: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(module, pattern) for pattern in deny_modules)


def answer_frame(reply: dict[str, Any], limit: int, use_pickle: bool, caller: str) -> bytes:
    """The frame of an answer; one that cannot be encoded becomes the error saying why."""
    try:
        return codec.encode(reply, limit=limit, use_pickle=use_pickle)
    except ProtocolError as e:
        log.warning(f"the answer to cage {caller} cannot be sent: {e}")
        return codec.encode({"error": wire.error_dict(e)}, limit=limit)


def run_call(cage: Cage, deny_modules: tuple[str, ...], envelope: dict[str, Any], caller: Identity) -> dict[str, Any]:
    """The answer to a call: its result, or the error it raised (logged)."""
    try:
        return {"result": dispatch(cage, deny_modules, envelope, caller)}
    except Exception as e:
        log.warning(f"call {envelope.get('module')}.{envelope.get('method')} from cage {caller.cage} "
                    f"failed: {exc_string(e, stack=False)}")
        log.debug(f"call failed: {exc_string(e)}")
        return {"error": wire.error_dict(e)}


def callee_request(iface: interfaces.Interface, envelope: dict[str, Any], caller: Identity,
                   arrived: float) -> _request.Request:
    """The caller's request continued here: its id, log levels and parameters, with the
    time it had left less the margin for the way back, and no more than our own timeout.
    Log levels quieter than this cage's own are dropped: a caller may ask for more detail
    in our log, never for less."""
    wanted: dict[str, Any] = envelope["request"]
    timeout = min(wire.callee_timeout(_remain(envelope)), iface.request_timeout)
    parameters = dict(wanted.get("parameters") or {})
    tokens = dict(parameters.get("auth_tokens") or {})
    tokens.setdefault("source_cage", caller.cage)  # the first cage of a chain of calls
    tokens["peer_cage"] = caller.cage  # who connected (for a reverse call, who queued it)
    parameters["auth_tokens"] = tokens
    floor = log.get_level()
    levels = [int(x) for x in wanted.get("log_levels") or () if isinstance(x, int) and floor <= x <= log.NOISE]
    description = wanted.get("description")
    return iface.cage.intake.begin(
        timeout=timeout, interface=iface.name, protocol=iface.protocol, parameters=parameters,
        description=description if isinstance(description, str) else None, log_levels=levels,
        unique_id=str(wanted["id"]), start=arrived)


def _late(envelope: dict[str, Any]) -> bool:
    """Whether the call seems to have spent long on its way (by the wall clocks, so only
    a hint): a network that held it up may have made its caller give up."""
    wanted = envelope["request"]
    try:
        sent = float(wanted["deadline"]) - float(wanted["remain"])
    except (KeyError, TypeError, ValueError):
        return True
    return time.time() - sent > LATE_AFTER


def _remain(envelope: dict[str, Any]) -> float:
    remain = float(envelope["request"]["remain"])
    if not 0.0 <= remain < 1e9:  # NaN and infinity included
        raise ValueError("remain must be a number of seconds")
    return remain


# --- the caller ---------------------------------------------------------------------------


class Resource(resource.Resource):
    """A connection of pool `rpc__<cage>`: TLS sockets to that cage's instances."""

    transactional = False  # the call is the effect
    inline = True  # every wait is bounded by the deadline

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name, config)
        self.target = str(config.pop("resource_name", ""))
        self.channels: dict[str, _Channel] = {}

    def disconnect(self) -> None:
        for channel in list(self.channels.values()):
            channel.close()
        self.channels.clear()

    def __getattr__(self, module: str) -> _ModuleOfCage:
        if module.startswith("_"):
            raise AttributeError(module)
        return _ModuleOfCage(self, module)

    def call(self, module: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """`pmnc.<module>.<method>(*args, **kwargs)` in an instance of the target cage."""
        request = _request.current()
        # args travel as a list (msgpack's own array; the callee makes it a tuple again)
        return self.exchange({"kind": "call", "module": module, "method": method, "args": list(args),
                              "kwargs": kwargs, "request": wire.wire_request(request)}, request)

    def exchange(self, envelope: dict[str, Any], request: _request.Request) -> Any:
        if not self.target:
            raise ResourceInputParameterError("resource rpc needs a target: use pmnc(\"cage\") or rpc__<cage>")
        cluster = _cluster.get()
        envelope["source"], envelope["target"] = [cluster.node, cluster.cage], self.target
        try:
            frame = codec.encode(envelope, limit=cluster.max_frame_size, use_pickle=cluster.use_pickle)
        except ProtocolError as e:
            raise ResourceInputParameterError(f"the call cannot be sent to cage {self.target}: {e}") from None
        channel = self._channel(cluster, request)
        reply = channel.exchange(frame, request, cluster)
        if not isinstance(reply, dict) or not ("result" in reply or "error" in reply):
            channel.close()
            raise ResourceError(f"cage {self.target} answered with a malformed reply", recoverable=False)
        if "error" in reply:
            raise wire.remote_error(reply["error"], f"cage {channel.location}")
        return reply["result"]

    def _channel(self, cluster: _cluster.Cluster, request: _request.Request) -> _Channel:
        """A connection to one live instance, picked at random: an open one if this
        connection has it, else a new one; failing ones are skipped within the budget."""
        locations = cluster.locator.locations(self.target)
        if not locations:
            budget = min(cluster.discovery_timeout, request.remain)
            locations = cluster.locator.find(self.target, budget)
            if not locations:
                raise ResourceError(f"no instance of cage {self.target} has been found in {budget:.1f}s",
                                    recoverable=True, terminal=False)
        if len(locations) > 1:
            random.shuffle(locations)
        failures = []
        for location in locations:
            channel = self.channels.get(location.instance)
            if channel is not None and channel.usable():
                return channel
            if channel is not None:
                channel.close()
            try:
                channel = _Channel.connect(location, cluster, min(cluster.discovery_timeout, request.remain))
            except ResourceError as e:
                cluster.locator.failed(location)
                failures.append(str(e))
                if request.expired:
                    break
                continue
            self.channels[location.instance] = channel
            return channel
        raise ResourceError(f"cage {self.target} cannot be reached: {'; '.join(failures)}",
                            recoverable=True, terminal=False)

    def hand_over(self, message: dict[str, Any]) -> bool:
        """A retried call into the target cage's state file (retry.py): True once it is
        there, False if it was there already."""
        request = _request.current()
        return bool(self.exchange({"kind": "retry", "message": message, "request": wire.wire_request(request)},
                                  request))

    def poll(self, wait: float) -> list[dict[str, Any]]:
        """Reverse calls: those the target cage has queued for this one."""
        request = _request.current()
        wire_request = wire.wire_request(request)
        wire_request["remain"] = wait
        result = self.exchange({"kind": "poll", "request": wire_request}, request)
        return result if isinstance(result, list) else []

    def post(self, call_id: str, reply: dict[str, Any]) -> bool:
        request = _request.current()
        return bool(self.exchange({"kind": "post", "call_id": call_id, "reply": reply,
                                   "request": wire.wire_request(request)}, request))


class _ModuleOfCage:
    """`xa.rpc__worker.<module>`: its attributes are that module's functions there."""

    def __init__(self, resource: Resource, module: str) -> None:
        self._resource, self._module = resource, module

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args, **kwargs: self._resource.call(self._module, method, args, kwargs)


class _Channel:
    """One TLS socket to one instance; one call at a time."""

    def __init__(self, sock: ssl.SSLSocket, location: Location, cluster: _cluster.Cluster) -> None:
        self.sock, self.location = sock, location
        self.decoder = codec.FrameDecoder(cluster.max_frame_size, cluster.use_pickle)

    @classmethod
    def connect(cls, location: Location, cluster: _cluster.Cluster, timeout: float) -> _Channel:
        try:
            raw = socket.create_connection((location.host, location.port), timeout=max(timeout, 0.001))
        except OSError as e:
            raise ResourceError(f"{location}: {e}", recoverable=True) from None
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = cluster.client_context.wrap_socket(raw, server_side=False)
        except (OSError, ssl.SSLError) as e:
            raw.close()
            raise ResourceError(f"{location}: TLS handshake failed: {e}", recoverable=True) from None
        identity = peer_identity(sock.getpeercert())
        if identity != Identity(cluster.flock, location.cage):
            sock.close()
            raise ResourceError(f"{location}: the server there is not cage {location.cage} of flock "
                                f"{cluster.flock} (it is {identity})", recoverable=True)
        return cls(sock, location, cluster)

    def usable(self) -> bool:
        """Not closed by the other side meanwhile (an instance that died or restarted): a
        reused connection must be good before a call goes out on it, so that a call is
        never sent into a dead socket and lost."""
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return False
        if not readable:
            return True
        self.sock.setblocking(False)
        try:
            self.sock.recv(1)
        except ssl.SSLWantReadError:
            return True  # only TLS housekeeping was there
        except OSError:
            return False
        finally:
            try:
                self.sock.setblocking(True)
            except OSError:
                return False
        return False  # the end of the stream, or bytes nobody asked for

    def exchange(self, frame: bytes, request: _request.Request, cluster: _cluster.Cluster) -> Any:
        try:
            self.sock.settimeout(max(request.remain, 0.001))
            self.sock.sendall(frame)
            while True:
                data = self.sock.recv(RECV_SIZE)
                if not data:
                    raise EOFError
                answers = self.decoder.feed(data)
                if answers:
                    break
                self.sock.settimeout(max(request.remain, 0.001))
        except TimeoutError:
            self.close()
            raise RPCDeadlineError(f"request deadline waiting for a response from cage {self.location}") from None
        except (OSError, EOFError) as e:
            self.close()
            cluster.locator.failed(self.location)
            raise ResourceError(f"connection to cage {self.location} lost during the call: "
                                f"{str(e) or 'closed by the other side'}", recoverable=False,
                                terminal=False) from None
        except ProtocolError as e:
            self.close()
            raise ResourceError(f"cage {self.location} answered with a bad frame: {e}", recoverable=False,
                                terminal=False) from None
        if len(answers) > 1:
            self.close()
            raise ResourceError(f"cage {self.location} answered more than it was asked", recoverable=False,
                                terminal=False)
        return answers[0]

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
