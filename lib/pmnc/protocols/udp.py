"""UDP: the interface makes each datagram a fire-and-forget request; the resource sends datagrams.

What the user sees is the original's: `config_interface_<n>.py` names `listener_address`, and
`interface_<n>.process_request(request, response)` gets `request["packet"]` (bytes) and, beyond
the original, `request["peer_ip"]` and `request["peer_port"]`; the sender's address is also
`pmnc.request.parameters["auth_tokens"]["peer_ip"]`, where the original put it. Nothing is ever
sent back. `config_resource_<n>.py` names `server_address` and `broadcast`, and
`xa.<n>.send(packet)` sends one datagram at once.

The interface, on a thread of its own that does nothing but take datagrams off the socket:

    recvfrom → bigger than max_packet_size? dropped, counted
             → max_pending datagrams already waiting for (or in) a handler? dropped, counted
             → lifecycle.submit: the handler runs on a worker; the loop never waits for it

Datagrams the kernel drops because the socket's receive buffer is full (the handlers, or this
thread, could not keep up) are counted too, from the socket's own drop counter (SO_MEMINFO).
Drops of every kind are logged at most once per REPORT_PERIOD, as one line with the counts.
`Interface.counts` holds them all: every datagram that reached the socket is handled, failed,
or counted as dropped.
"""

from __future__ import annotations

import dataclasses
import selectors
import socket
import struct
import threading
import time
from typing import TYPE_CHECKING, Any

from pmnc import interfaces, log, resource
from pmnc import request as _request
from pmnc.errors import (
    ConfigError,
    IntakeClosedError,
    InterfaceError,
    RequestExpiredError,
    ResourceDeadlineError,
    ResourceError,
    ResourceInputParameterError,
    exc_string,
)
from pmnc.lifecycle import Outcome
from pmnc.schema import RESOURCE_KEYS, Key, address, interface_file, resource_file

if TYPE_CHECKING:
    from pmnc.runtime import Runtime

__all__ = ["Interface", "Resource"]

MAX_PACKET_SIZE = 57344  # bytes of a datagram handled at most, as the original's
MAX_UDP_PAYLOAD = 65507  # bytes: the largest datagram IPv4 can carry
REPORT_PERIOD = 10.0  # seconds between log lines about dropped datagrams
WAKE_PERIOD = 1.0  # seconds the receiving thread waits at most before it looks at the clock
BATCH = 256  # datagrams taken off the socket at most between two looks at the clock
SO_MEMINFO, SK_MEMINFO_DROPS = 55, 8  # Linux: getsockopt(SOL_SOCKET, SO_MEMINFO) → u32[9], [8] = drops


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _kernel_drops(sock: socket.socket) -> int | None:
    """Datagrams the kernel dropped for this socket (receive buffer full); None where it cannot tell."""
    try:
        return int(struct.unpack("9I", sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 36))[SK_MEMINFO_DROPS])
    except (OSError, struct.error):
        return None


@dataclasses.dataclass
class Counts:
    """What became of the datagrams that reached the interface's socket."""

    received: int = 0  # taken off the socket
    handled: int = 0  # the handler returned
    failed: int = 0  # the handler raised, or the request expired before it ran
    too_large: int = 0  # bigger than max_packet_size: dropped unhandled
    overflowed: int = 0  # max_pending already waiting: dropped unhandled
    kernel: int = 0  # dropped by the kernel (receive buffer full), never received
    closing: int = 0  # arrived as the cage was stopping: dropped unhandled

    @property
    def dropped(self) -> int:
        return self.too_large + self.overflowed + self.kernel + self.closing


# --- the interface -------------------------------------------------------------------------------


class Interface(interfaces.Interface):
    """Each datagram a request `{"packet", "peer_ip", "peer_port"}`; nothing is sent back."""

    protocol = "udp"

    keys = interfaces.Interface.keys.extend(
        listener_address=Key(None, address),  # (host, port): required; ("0.0.0.0", port) for beyond this machine
        max_packet_size=Key(MAX_PACKET_SIZE, int),  # bytes; a bigger datagram is dropped, counted
        max_pending=Key(1000, int),  # datagrams waiting for or in a handler; more are dropped, counted
        receive_buffer_size=Key(None, int),  # SO_RCVBUF in bytes (None: the system's default)
        reuse_port=Key(False, bool),  # True: other sockets may bind the same port (SO_REUSEADDR + SO_REUSEPORT)
    )

    def __init__(self, name: str, runtime: Runtime, config: dict[str, Any]) -> None:
        super().__init__(name, runtime, config)
        c, file = self.config, interface_file(name)
        if c["listener_address"] is None:
            raise ConfigError(f"{file}: listener_address must be (host, port) to receive datagrams on, "
                              f"e.g. (\"127.0.0.1\", 5678), or (\"0.0.0.0\", 5678) for beyond this machine")
        if not 1 <= c["max_packet_size"] <= MAX_UDP_PAYLOAD:
            raise ConfigError(f"{file}: max_packet_size must be 1 to {MAX_UDP_PAYLOAD} bytes")
        if c["max_pending"] < 1:
            raise ConfigError(f"{file}: max_pending must be at least 1")
        self.counts = Counts()
        self.address: tuple[str, int] = c["listener_address"]
        self._pending = 0  # datagrams submitted whose handler has not finished
        self._lock = threading.Lock()  # guards _pending and counts.handled/failed (the workers')
        self._ceased = threading.Event()
        self._sock: socket.socket | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None  # (read, write): wakes the receiving thread
        self._thread: threading.Thread | None = None
        self._reported = Counts()  # the counts at the last report of drops
        self._report_at = 0.0  # monotonic time of the last report (0: none yet)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._sock = self._listen()
        self._wake = socket.socketpair()
        self.address = self._sock.getsockname()[:2]
        self._thread = threading.Thread(target=self._receive, name=f"udp:{self.name}", daemon=True)
        self._thread.start()
        host, port = self.address
        log.message(f"interface {self.name} listens on udp://{host}:{port}/")

    def _listen(self) -> socket.socket:
        host, port = self.config["listener_address"]
        sock = socket.socket(_family(host), socket.SOCK_DGRAM)
        try:
            # Without reuse_port a second socket on this port is refused (a second copy of the
            # cage fails to start); with SO_REUSEADDR on both, Linux would let it bind and take
            # the datagrams meant for this one, silently. The original set both, always.
            if self.config["reuse_port"]:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if hasattr(socket, "SO_REUSEPORT"):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)  # as the original: broadcasts too
            if self.config["receive_buffer_size"] is not None:
                self._receive_buffer(sock, self.config["receive_buffer_size"])
            sock.bind((host, port))
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise InterfaceError(f"cannot listen on udp://{host}:{port}: {exc_string(e, stack=False)}") from None
        return sock

    def _receive_buffer(self, sock: socket.socket, size: int) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2  # Linux reports it doubled
        if granted < size:
            log.warning(f"interface {self.name}: receive_buffer_size {size} is capped by the system at {granted} "
                        f"bytes (raise net.core.rmem_max to allow more)")

    def cease(self) -> None:
        """No more datagrams are taken (the port is free when this returns: an interface
        restarted with a new config binds it again); those already submitted are handled."""
        self._ceased.set()
        if self._wake is not None:
            try:
                self._wake[1].send(b"!")  # the receiving thread ends at once
            except OSError:
                pass  # it has ended
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(WAKE_PERIOD + 1.0)

    def stop(self) -> None:
        self.cease()
        if self._wake is not None:
            self._wake[1].close()

    def __repr__(self) -> str:
        c = self.counts
        return (f"<udp.Interface {self.name} udp://{self.address[0]}:{self.address[1]} received={c.received} "
                f"pending={self._pending} handled={c.handled} failed={c.failed} dropped={c.dropped}>")

    # --- the receiving thread ----------------------------------------------------------------

    def _receive(self) -> None:
        sock, wake = self._sock, self._wake
        assert sock is not None and wake is not None
        size = self.config["max_packet_size"]
        account_at = time.monotonic() + WAKE_PERIOD
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(sock, selectors.EVENT_READ)
                selector.register(wake[0], selectors.EVENT_READ)  # cease() writes to it
                while not self._ceased.is_set():
                    if time.monotonic() >= account_at:  # also under a steady stream, which never idles
                        self._account(sock)
                        account_at = time.monotonic() + WAKE_PERIOD
                    if selector.select(WAKE_PERIOD):
                        self._drain(sock, size)
        finally:
            self._account(sock)
            sock.close()
            wake[0].close()
            self._report(force=True)

    def _drain(self, sock: socket.socket, size: int) -> None:
        """The datagrams waiting in the socket, up to BATCH of them."""
        for _ in range(BATCH):
            try:
                packet, peer = sock.recvfrom(size + 1)  # one byte more: a longer datagram shows
            except BlockingIOError:
                return
            except OSError as e:
                if not self._ceased.is_set():
                    log.error(f"interface {self.name}: receiving failed: {exc_string(e, stack=False)}")
                    self._ceased.wait(WAKE_PERIOD)
                return
            self._arrived(packet, peer, size)

    def _arrived(self, packet: bytes, peer: Any, size: int) -> None:
        counts = self.counts
        counts.received += 1
        if len(packet) > size:
            counts.too_large += 1
            log.info(f"interface {self.name}: a datagram from {peer[0]} is bigger than max_packet_size ({size}), "
                     f"dropped")
            self._account(None)
            return
        with self._lock:
            full = self._pending >= self.config["max_pending"]
            if not full:
                self._pending += 1
        if full:
            counts.overflowed += 1
            self._account(None)
            return
        try:
            self._submit(packet, peer)
        except BaseException:
            with self._lock:
                self._pending -= 1
            raise

    def _submit(self, packet: bytes, peer: Any) -> None:
        lifecycle = self.runtime.lifecycle
        peer_ip, peer_port = peer[0], peer[1]
        description = f"UDP packet from {peer_ip}, {len(packet)} byte(s)"
        try:
            request = lifecycle.begin(interface=self.name, protocol=self.protocol, timeout=self.request_timeout,
                                      parameters={"auth_tokens": {"peer_ip": peer_ip}}, description=description)
        except IntakeClosedError:
            with self._lock:
                self._pending -= 1
            self.counts.closing += 1
            return
        fields = {"packet": packet, "peer_ip": peer_ip, "peer_port": peer_port}
        lifecycle.submit(request, lifecycle.handle, self.handler, "process_request", (fields, {}),
                         when_done=lambda outcome: self._done(outcome, description))

    def _done(self, outcome: Outcome, description: str) -> None:
        """On the worker: the handler has finished (or never ran)."""
        try:
            outcome.value()
            failed = False
        except (RequestExpiredError, IntakeClosedError) as e:
            log.warning(f"{description} was not processed: {exc_string(e, stack=False)}")
            failed = True
        except Exception as e:
            log.error(f"processing failed: {exc_string(e)}")  # the request's description follows
            failed = True
        with self._lock:
            self._pending -= 1
            if failed:
                self.counts.failed += 1
            else:
                self.counts.handled += 1

    # --- dropped datagrams, counted and reported --------------------------------------------

    def _account(self, sock: socket.socket | None) -> None:
        """Take in the kernel's count of drops (when given the socket); report drops if due."""
        if sock is not None:
            drops = _kernel_drops(sock)
            if drops is not None:
                self.counts.kernel = drops
        self._report()

    def _report(self, force: bool = False) -> None:
        now, c, r = time.monotonic(), self.counts, self._reported
        if c.dropped == r.dropped or (not force and self._report_at and now - self._report_at < REPORT_PERIOD):
            return
        parts = [(c.overflowed - r.overflowed, f"the handlers could not keep up (max_pending "
                                               f"{self.config['max_pending']} waiting)"),
                 (c.kernel - r.kernel, "by the kernel, the socket's receive buffer full (raise "
                                       "receive_buffer_size)"),
                 (c.too_large - r.too_large, f"bigger than max_packet_size ({self.config['max_packet_size']})"),
                 (c.closing - r.closing, "the cage was stopping")]
        since = f"in the last {now - self._report_at:.0f}s" if self._report_at else "so far"
        log.warning(f"interface {self.name}: {c.dropped - r.dropped} datagram(s) dropped {since}: "
                    + "; ".join(f"{n} {why}" for n, why in parts if n))
        self._reported, self._report_at = dataclasses.replace(c), now


# --- the resource --------------------------------------------------------------------------------

KEYS = RESOURCE_KEYS.extend(
    server_address=Key(None, address),  # (host, port) the datagrams go to
    broadcast=Key(False, bool),  # True: SO_BROADCAST, server_address may be a broadcast address
)


class Resource(resource.Resource):
    """`xa.<name>.send(packet)`: one datagram, sent at once; not transactional (a datagram
    cannot be taken back), as the original's."""

    transactional = False
    inline = True  # the one wait, the socket's send, is bounded by the deadline

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        file = resource_file(name)
        super().__init__(name, KEYS.read(config, file))
        if self.config["server_address"] is None:
            raise ConfigError(f"{file}: server_address must be (host, port) to send the datagrams to")
        self.server_address: tuple[str, int] = self.config["server_address"]
        self.where = f"udp://{self.server_address[0]}:{self.server_address[1]}"
        self._sock: socket.socket | None = None

    @property
    def expired(self) -> bool:
        return super().expired or self._sock is None

    def connect(self) -> None:
        sock = socket.socket(_family(self.server_address[0]), socket.SOCK_DGRAM)
        try:
            if self.config["broadcast"]:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            else:
                sock.connect(self.server_address)  # a refusal (ICMP) of one datagram then shows on the next
        except OSError as e:
            sock.close()
            raise ResourceError(f"cannot send to {self.where}: {exc_string(e, stack=False)}",
                                recoverable=True) from None
        self._sock = sock

    def disconnect(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def send(self, packet: bytes) -> None:
        """Send `packet` as one datagram now, within the request's deadline; an error if the
        system took less than all of it."""
        if not isinstance(packet, (bytes, bytearray, memoryview)):
            raise ResourceInputParameterError(f"the packet must be bytes, not {type(packet).__name__}")
        sock = self._sock
        if sock is None:
            raise ResourceError(f"the socket to {self.where} is closed", recoverable=True)
        size = len(packet)
        request = _request.current()
        sock.settimeout(3600.0 if request.deadline is None else max(request.remain, 0.001))
        try:
            sent = sock.sendto(packet, self.server_address) if self.config["broadcast"] else sock.send(packet)
        except TimeoutError:
            raise ResourceDeadlineError(f"request deadline sending a datagram to {self.where}") from None
        except OSError as e:
            # nothing was sent: the system refused this datagram (too big, no route, a refusal
            # reported by an earlier one); the socket is dropped, so that the next starts clean
            raise ResourceError(f"sending a datagram of {size} byte(s) to {self.where} failed: "
                                f"{exc_string(e, stack=False)}", recoverable=True) from None
        if sent != size:
            raise ResourceError(f"the datagram to {self.where} was truncated: {sent} of {size} byte(s) sent")
        log.info(f"UDP packet of {size} byte(s) has been sent to {self.where}")

# EOF
