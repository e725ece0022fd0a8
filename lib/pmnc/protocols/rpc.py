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
from the cluster CA and names a cage of this flock, reads frames (codec.py)
and runs each call as a request - the caller's id, log levels and
parameters, a deadline of the caller's time left less a margin - on the
worker pool: `pmnc.<module>.<method>(*args, **kwargs)` for any name in the
module's `__all__`, unless `deny_modules` matches the module. An answer
that the deadline beats is an error frame sent at the deadline; queued work
is then never started.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import random
import select
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any

from pmnc import interfaces, log, resource
from pmnc import request as _request
from pmnc.errors import (
    ConfigError,
    DeadlineError,
    IntakeClosedError,
    InvalidMethodAccessError,
    ProtocolError,
    ResourceError,
    ResourceInputParameterError,
    RPCDeadlineError,
    RPCError,
    exc_string,
)
from pmnc.loader import MODULE_NAME
from pmnc.rpc import cluster as _cluster
from pmnc.rpc import codec, wire
from pmnc.rpc.identity import Identity, peer_identity
from pmnc.rpc.locator import Location
from pmnc.workers import WorkUnit

if TYPE_CHECKING:
    from pmnc.cage import Cage

HANDSHAKE_TIMEOUT = 10.0


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
        self.deny_modules = tuple(str(p) for p in take("deny_modules", ()))
        self.idle_timeout = float(take("idle_timeout", 600.0))
        self.connections: set[Connection] = set()
        self.ceasing = False
        self._server: asyncio.base_events.Server | None = None

    def start(self) -> None:
        assert self.cage.loop is not None
        self.cluster = _cluster.get()
        self.context = self.cluster.keys.server_context()
        self.context.num_tickets = 0  # connections live long; no session resumption to offer
        self.limit, self.use_pickle = self.cluster.max_frame_size, self.cluster.use_pickle
        self.cage_loop = self.cage.loop
        self.loop = self.cage.loop.loop
        self._server = self.cage.loop.run(self.loop.create_server(
            lambda: Connection(self), self.host, self.port, backlog=256, reuse_address=True), timeout=3.0)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = (host, port)
        self.cluster.locator.publish(host, port)
        log.message(f"interface {self.name} listens on ssl://{host}:{port}/")

    def cease(self) -> None:
        self.ceasing = True
        self.cluster.locator.unpublish()
        self._on_loop(self._close_server())

    async def _close_server(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            if connection.current is None:
                connection.close()

    def stop(self) -> None:
        self._on_loop(self._stop())

    async def _stop(self) -> None:
        for connection in list(self.connections):
            connection.close()

    def _on_loop(self, coro: Any) -> None:
        assert self.cage.loop is not None
        self.cage.loop.run(coro, timeout=3.0)

    # --- one call, on a worker thread ----------------------------------------------------------

    def run_call(self, envelope: dict[str, Any], caller: Identity) -> bytes:
        """Run the call and return the answer's frame, whatever happens."""
        reply = run_call(self.cage, self.deny_modules, envelope, caller)
        return answer_frame(reply, self.limit, self.use_pickle, caller.cage)

    def dispatch(self, envelope: dict[str, Any], caller: Identity) -> Any:
        return dispatch(self.cage, self.deny_modules, envelope, caller)


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
    if any(fnmatch.fnmatchcase(module, pattern) for pattern in deny_modules):
        raise InvalidMethodAccessError(f"module {module} is not callable from other cages")
    log.debug(f"call {module}.{method} from cage {caller.cage}")
    return cage.loader.call(module, method, tuple(args), kwargs)


def answer_frame(reply_or_error: Any, limit: int, use_pickle: bool, caller: str) -> bytes:
    """The frame of an answer; one that cannot be encoded becomes the error saying why."""
    try:
        return codec.encode(reply_or_error, limit=limit, use_pickle=use_pickle)
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


class Connection(asyncio.Protocol):
    """One caller's connection: TLS first (refused and logged if the peer is not a cage of
    this cluster), then calls, one at a time, answered in order."""

    def __init__(self, iface: Interface) -> None:
        self.iface = iface
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.caller: Identity | None = None
        self.decoder = codec.FrameDecoder(iface.limit, iface.use_pickle)
        self.queue: list[Any] = []
        self.current: _InFlight | _Busy | None = None
        self.closed = False
        self.idle_timer: asyncio.TimerHandle | None = None
        self.early: list[bytes] = []  # bytes that came before the identity was checked

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        if len(self.iface.connections) >= self.iface.max_connections or self.iface.ceasing:
            log.warning(f"interface {self.iface.name}: connection from {self.peer} refused, "
                        f"{len(self.iface.connections)} open")
            transport.abort()
            return
        self.iface.connections.add(self)
        transport.pause_reading()  # start_tls takes over the reading
        self.iface.loop.create_task(self._secure(transport))

    async def _secure(self, transport: asyncio.Transport) -> None:
        try:
            secured = await self.iface.loop.start_tls(transport, self, self.iface.context, server_side=True,
                                                      ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as e:
            self._refuse(f"TLS handshake failed: {e}")
            transport.abort()
            return
        if secured is None or self.closed:
            return
        self.transport = secured
        identity = peer_identity(secured.get_extra_info("peercert"))
        if identity is None or identity.flock != self.iface.cluster.flock:
            self._refuse(f"its certificate names no cage of flock {self.iface.cluster.flock}")
            self.close()
            return
        self.caller = identity
        self._arm_idle()
        early, self.early = self.early, []
        for data in early:
            self.data_received(data)

    def _refuse(self, why: str) -> None:
        log.warning(f"interface {self.iface.name}: connection from {self.peer} refused: {why}")
        self.iface.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self.caller is None:  # the handshake is done but its identity not yet checked
            self.early.append(data)
            return
        try:
            self.queue.extend(self.decoder.feed(data))
        except ProtocolError as e:
            log.warning(f"interface {self.iface.name}: cage {self.caller.cage} at {self.peer} "
                        f"sent a bad frame, disconnected: {e}")
            self.close()
            return
        self._next()

    def _next(self) -> None:
        if self.current is not None or not self.queue or self.closed:
            return
        envelope = self.queue.pop(0)
        if not isinstance(envelope, dict):
            log.warning(f"interface {self.iface.name}: cage at {self.peer} sent a frame that is not a call")
            self.close()
            return
        self._cancel_idle()
        kind = envelope.get("kind")
        if kind == "call":
            self._call(envelope)
        elif kind == "poll":
            self.iface.loop.create_task(self._poll(envelope))
        elif kind == "post":
            self._post(envelope)
        else:
            self.answer(codec.encode({"error": wire.error_dict(ProtocolError(f"unknown kind {kind!r}"))}))

    def _call(self, envelope: dict[str, Any]) -> None:
        assert self.caller is not None
        iface, arrived = self.iface, time.monotonic()
        try:
            request = callee_request(iface, envelope, self.caller, arrived)
        except IntakeClosedError as e:
            self.answer(codec.encode({"error": wire.error_dict(e)}))
            return
        except (KeyError, TypeError, ValueError) as e:
            self.answer(codec.encode({"error": wire.error_dict(ProtocolError(f"malformed call: {e}"))}))
            return
        self.current = _InFlight(self, request, envelope)

    async def _poll(self, envelope: dict[str, Any]) -> None:
        """A reverse-call poll from the cage that connected: its queued calls, or [] in time."""
        assert self.caller is not None
        self.current = _Busy()
        remain = _remain(envelope)
        calls = await self.iface.cluster.reverse.poll(self.caller.cage, remain - 3.0, time.monotonic)
        now = time.monotonic()
        result = []
        for pending in calls:
            call = dict(pending.envelope)
            call["request"] = dict(call["request"], remain=max(pending.deadline - now, 0.0))
            call["call_id"] = pending.call_id
            result.append(call)
        self.current = None
        self.answer(codec.encode({"result": result}, limit=self.iface.limit))

    def _post(self, envelope: dict[str, Any]) -> None:
        assert self.caller is not None
        accepted = self.iface.cluster.reverse.post(self.caller.cage, str(envelope.get("call_id")),
                                                   envelope.get("reply"))
        self.answer(codec.encode({"result": accepted}))

    def answer(self, frame: bytes) -> None:
        self.current = None
        if self.closed or self.transport is None:
            return
        self.transport.write(frame)
        if self.queue:
            self._next()
        elif self.iface.ceasing:
            self.close()
        else:
            self._arm_idle()

    def _arm_idle(self) -> None:
        self._cancel_idle()
        self.idle_timer = self.iface.loop.call_later(self.iface.idle_timeout, self.close)

    def _cancel_idle(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._cancel_idle()
            if self.transport is not None:
                self.transport.close()
        self.iface.connections.discard(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_idle()
        self.iface.connections.discard(self)
        if isinstance(self.current, _InFlight):
            self.current.abandon()


class _Busy:
    """A poll in progress: the connection waits for it before the next frame."""


class _InFlight:
    """One call between the loop and a worker; the worker's answer and the deadline race."""

    def __init__(self, connection: Connection, request: _request.Request, envelope: dict[str, Any]) -> None:
        self.connection, self.request = connection, request
        self.answered = False
        iface = connection.iface
        assert iface.cage.pool is not None and request.deadline is not None and connection.caller is not None
        self.unit = iface.cage.pool.submit(request, iface.run_call, envelope, connection.caller,
                                           when_done=functools.partial(iface.cage_loop.post, self._done))
        self.timer = iface.loop.call_at(_loop_time(iface.loop, request.deadline), self._expire)

    def _done(self, unit: WorkUnit) -> None:
        if self.answered:
            return
        self._end()
        try:
            frame = unit.result()
        except Exception as e:  # expired in the queue, or the pool stopped
            frame = codec.encode({"error": wire.error_dict(e)})
        self.connection.answer(frame)

    def _expire(self) -> None:
        if self.answered:
            return
        self._end()
        self.unit.cancel()  # never started if still queued
        log.warning(f"request {self.request.unique_id} from cage {self.request.parameters['auth_tokens']['peer_cage']}"
                    f" has not been answered in time, the caller gets a deadline error")
        error = DeadlineError(f"request deadline has expired in cage {self.connection.iface.cage.name}")
        self.connection.answer(codec.encode({"error": wire.error_dict(error)}))

    def abandon(self) -> None:
        if not self.answered:
            self._end()
            self.unit.cancel()

    def _end(self) -> None:
        self.answered = True
        self.timer.cancel()
        self.connection.iface.cage.intake.end(self.request)


def callee_request(iface: interfaces.Interface, envelope: dict[str, Any], caller: Identity,
                   arrived: float) -> _request.Request:
    """The caller's request continued here: its id, log levels and parameters, with the
    time it had left less the margin for the way back, and no more than our own timeout."""
    wanted: dict[str, Any] = envelope["request"]
    timeout = min(wire.callee_timeout(_remain(envelope)), iface.request_timeout)
    parameters = dict(wanted.get("parameters") or {})
    tokens = dict(parameters.get("auth_tokens") or {})
    tokens.setdefault("source_cage", caller.cage)  # the first cage of a chain of calls
    tokens["peer_cage"] = caller.cage  # who connected (for a reverse call, who queued it)
    parameters["auth_tokens"] = tokens
    return iface.cage.intake.begin(
        timeout=timeout, interface=iface.name, protocol=iface.protocol, parameters=parameters,
        description=wanted.get("description"), log_levels=[int(x) for x in wanted.get("log_levels") or ()],
        unique_id=str(wanted["id"]), start=arrived)


def _remain(envelope: dict[str, Any]) -> float:
    remain = float(envelope["request"]["remain"])
    if not remain >= 0.0:  # NaN included
        raise ValueError("remain must be a number of seconds")
    return remain


def _loop_time(loop: asyncio.AbstractEventLoop, deadline: float) -> float:
    return loop.time() + (deadline - _request.monotonic())


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
        return self.exchange({"kind": "call", "module": module, "method": method, "args": args,
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
            raise _remote_error(reply["error"], f"cage {channel.location}")
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

    def expire(self) -> None:
        super().expire()


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

    def __init__(self, sock: ssl.SSLSocket, location: Location) -> None:
        self.sock, self.location = sock, location

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
        return cls(sock, location)

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
            header = self._read(codec.HEADER_SIZE, request)
            kind, length = codec.parse_header(header, limit=cluster.max_frame_size,
                                              allow_pickle=cluster.use_pickle)
            return codec.decode_body(kind, self._read(length, request), allow_pickle=cluster.use_pickle)
        except TimeoutError:
            self.close()
            raise RPCDeadlineError(f"request deadline waiting for a response from cage {self.location}") from None
        except (OSError, EOFError) as e:
            self.close()
            cluster.locator.failed(self.location)
            raise ResourceError(f"connection to cage {self.location} lost during the call: "
                                f"{e or 'closed by the other side'}", recoverable=False, terminal=False) from None
        except ProtocolError as e:
            self.close()
            raise ResourceError(f"cage {self.location} answered with a bad frame: {e}", recoverable=False,
                                terminal=False) from None

    def _read(self, size: int, request: _request.Request) -> bytes:
        chunks, left = [], size
        while left:
            self.sock.settimeout(max(request.remain, 0.001))
            chunk = self.sock.recv(min(left, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _remote_error(error: Any, where: str) -> ResourceError:
    remote = wire.rebuild(error, where)
    if isinstance(remote, DeadlineError):
        deadline = RPCDeadlineError(f"request deadline has expired in {where}")
        deadline.__cause__ = remote
        return deadline
    return RPCError(f"{where}: {type(remote).__name__}: {remote}", remote)
