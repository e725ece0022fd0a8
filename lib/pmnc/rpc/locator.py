"""Where the instances of a cage are: the local registry, signed UDP adverts on a LAN, static locations.

Three sources, merged per call (one instance may appear in several; it is
counted once, the local entry preferred):

- **Local registry** (zero configuration, one machine): each cage serving
  `rpc` keeps a file `cages/.registry/<flock>/<cage>/<instance>.json` with
  its port, pid and network namespace. A reader skips entries of another
  network namespace (another "host") and entries whose process is gone,
  so an instance killed with `kill -9` leaves the table at once.
- **LAN** (when `broadcast_address` is configured): every `advertise_period`
  seconds each cage broadcasts an advert; entries expire after three
  missed ones, and a graceful stop says goodbye. A caller that knows no
  instance broadcasts a discover, which instances answer with an advert at
  once. Packets are MACed with the cluster key and carry a wall-clock time
  (within REPLAY_WINDOW, and newer than the last one of that instance), so
  a stranger can neither inject a location nor replay an old one. The MAC
  also covers the address a packet is sent from (one from any other is
  refused, so a captured advert replayed elsewhere redirects nobody) and
  the address to call: the rpc listener's, or the sending address when it
  listens on all of them. The receiver listens on the broadcast address
  configured, not on all of the host's.
- **Static** `exact_locations` (networks without broadcast): always listed.

An instance a call failed to reach is skipped for FAIL_HOLD seconds (unless
no other is left, or it advertises again); a restarted process is a new
instance and is not.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from pmnc import log
from pmnc.errors import ConfigError, exc_string

MAGIC = b"PMNC1"
MAC_SIZE = 16
MAX_PACKET = 1024
REPLAY_WINDOW = 30.0  # seconds a packet's wall-clock time may differ from ours
FAIL_HOLD = 10.0  # seconds an instance that failed a call is skipped
LOCAL_RESCAN = 1.0  # seconds the local registry's listing of a cage is reused
EXPIRY_PERIODS = 3  # a LAN entry lives this many advertise periods
MIN_PERIOD, MAX_PERIOD = 0.1, 3600.0  # the advertise periods an advert may claim
ADVERT, DISCOVER, BYE = "A", "D", "B"
_ANY_ADDRESS = ("0.0.0.0", "", "::")


@dataclass
class Location:
    cage: str
    node: str
    instance: str  # random per process start; "static:<host>:<port>" for exact_locations
    host: str
    port: int
    source: str  # "local", "lan", "static", or "nats" (found on NATS, rpc/natsrpc.py: no address)
    expires: float = float("inf")  # monotonic

    def __str__(self) -> str:
        if self.source == "nats":
            return f"{self.node}.{self.cage} on NATS"
        return f"{self.node}.{self.cage} at {self.host}:{self.port}"

    @property
    def name(self) -> str:
        """The instance without its address: what errors say, since they may reach clients."""
        return f"{self.cage} (a static location)" if self.source == "static" else f"{self.node}.{self.cage}"


@dataclass(frozen=True)
class Packet:
    """One discovery packet: its fields, all covered by the MAC."""

    kind: str  # ADVERT, DISCOVER or BYE
    flock: str
    instance: str
    cage: str
    node: str
    host: str  # an advert's address to call; "" in the others
    port: int
    period: float  # an advert's advertise period
    sender: str  # the address the packet is sent from
    ts: float  # wall-clock time of sending


def encode_packet(key: bytes, packet: Packet) -> bytes:
    body: bytes = msgpack.packb([packet.kind, packet.flock, packet.instance, packet.cage, packet.node, packet.host,
                                 packet.port, packet.period, packet.sender, packet.ts])
    return MAGIC + _mac(key, body) + body


def decode_packet(key: bytes, data: bytes, source: str, now: float) -> Packet | None:
    """The packet in `data` received from address `source` at wall-clock time `now`, if it is
    MACed with `key`, well formed, fresh, and sent from the address it names; else None."""
    if len(data) > MAX_PACKET or not data.startswith(MAGIC):
        return None
    mac, body = data[len(MAGIC):len(MAGIC) + MAC_SIZE], data[len(MAGIC) + MAC_SIZE:]
    if not hmac.compare_digest(mac, _mac(key, body)):
        return None
    try:
        packet = Packet(*msgpack.unpackb(body, raw=False))  # at most MAX_PACKET bytes
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    if not (packet.kind in (ADVERT, DISCOVER, BYE) and isinstance(packet.port, int) and 0 <= packet.port < 65536
            and isinstance(packet.ts, float) and abs(packet.ts - now) <= REPLAY_WINDOW
            and all(isinstance(x, str) for x in (packet.flock, packet.instance, packet.cage, packet.node,
                                                 packet.host, packet.sender))
            and isinstance(packet.period, float)
            and (packet.kind != ADVERT or (MIN_PERIOD <= packet.period <= MAX_PERIOD and packet.host != ""))
            and packet.sender == source):
        return None
    return packet


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, MAGIC + body, hashlib.sha256).digest()[:MAC_SIZE]


class Locator:
    def __init__(self, *, cages_dir: str, flock: str, cage: str, node: str, hmac_key: bytes,
                 broadcast_address: Any = None, advertise_period: float = 5.0,
                 exact_locations: dict[str, Any] | None = None) -> None:
        self.flock, self.cage, self.node = flock, cage, node
        self.instance = secrets.token_hex(8)
        self.advertise_period = float(advertise_period)
        self._key = hmac_key
        self._registry = Path(cages_dir) / ".registry" / flock
        self._netns = _netns_id()
        self._static = _static_locations(exact_locations or {})
        self._broadcast = _broadcast_address(broadcast_address)
        self._lan: dict[str, dict[str, Location]] = {}  # cage → instance → location
        self._local: dict[str, tuple[float, list[Location]]] = {}  # cage → (scanned at, locations)
        self._failed: dict[str, float] = {}  # instance → skipped until (monotonic)
        self._last_ts: dict[str, float] = {}  # instance → newest packet time accepted
        self._cond = threading.Condition()
        self._published: tuple[str, int] | None = None
        self._entry: Path | None = None
        self._stopping = threading.Event()
        self._sender: socket.socket | None = None
        self._receiver: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._refused = 0
        self._refused_from = ""
        self._refused_logged = float("-inf")
        self._send_failing = False
        self._advertised_at = 0.0

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self._broadcast is None:
            return
        bind_ip, broadcast_ip, port = self._broadcast
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            receiver.bind((broadcast_ip, port))  # what is sent there, not whatever reaches the port
        except OSError:  # a unicast address of another host: take what reaches our bind ip
            receiver.bind((bind_ip, port))
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sender.bind((bind_ip, 0))
        self._receiver, self._sender = receiver, sender
        for target, name in ((self._receive_loop, "discovery"), (self._advertise_loop, "advertiser")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.message(f"discovery: flock {self.flock} on UDP {self._broadcast[1]}:{port} from {bind_ip}")

    def stop(self) -> None:
        self.unpublish()
        self._stopping.set()
        for sock in (self._receiver, self._sender):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
        for thread in self._threads:
            thread.join(2.0)

    def publish(self, host: str, port: int) -> None:
        """This cage serves calls at `host:port` (the rpc interface has started)."""
        self._published = (host, port)
        folder = self._registry / self.cage
        folder.mkdir(parents=True, exist_ok=True)
        entry = folder / f"{self.instance}.json"
        local_host = "127.0.0.1" if host in _ANY_ADDRESS else host
        data = {"node": self.node, "pid": os.getpid(), "started": _process_start(os.getpid()),
                "netns": self._netns, "host": local_host, "port": port}
        temp = entry.with_suffix(".tmp")
        temp.write_text(json.dumps(data))
        os.replace(temp, entry)
        self._entry = entry
        self._advertise()

    def unpublish(self) -> None:
        if self._published is None:
            return
        self._send(BYE, self.cage)
        self._published = None
        if self._entry is not None:
            self._entry.unlink(missing_ok=True)
            self._entry = None

    # --- lookups, from callers' threads -------------------------------------------------

    def locations(self, cage: str) -> list[Location]:
        """The live instances of `cage` known now; ones that failed a call are left out
        unless nothing else is left. A fresh list each time: the caller may reorder it."""
        if not self._static and not self._lan and not self._failed:  # one machine, all well: the usual case
            return list(self._scan_local(cage, time.monotonic()))
        now = time.monotonic()
        found = self._known(cage, now)
        for instance, until in list(self._failed.items()):
            if until <= now:
                self._failed.pop(instance, None)
        healthy = [loc for loc in found.values() if loc.instance not in self._failed]
        return healthy or list(found.values())

    def cages(self) -> list[str]:
        """Every cage known now from any source (the local registry, the LAN, static
        locations), this one included; read only: what the health monitor probes."""
        try:
            local = {entry.name for entry in self._registry.iterdir() if entry.is_dir()}
        except OSError:
            local = set()
        with self._cond:
            lan = {cage for cage, instances in self._lan.items() if instances}
        return sorted(local | lan | set(self._static))

    def listing(self, cage: str) -> list[Location]:
        """Every instance of `cage` listed now, those that failed a call included (a monitor
        wants to see them); read only."""
        return list(self._known(cage, time.monotonic()).values())

    def _known(self, cage: str, now: float) -> dict[str, Location]:
        """instance → location of every live entry of `cage`, the local one preferred."""
        found: dict[str, Location] = {}
        for location in self._static.get(cage, ()):
            found[location.instance] = location
        with self._cond:
            for instance, location in list(self._lan.get(cage, {}).items()):
                if location.expires <= now:
                    del self._lan[cage][instance]
                else:
                    found[instance] = location
        for location in self._scan_local(cage, now):
            found[location.instance] = location
        return found

    def find(self, cage: str, timeout: float) -> list[Location]:
        """`locations(cage)`, waiting up to `timeout` for one to appear: a discover is
        broadcast every half second and the local registry read afresh meanwhile."""
        found = self.locations(cage)
        deadline = time.monotonic() + timeout
        next_discover = 0.0
        while not found:
            now = time.monotonic()
            if now >= deadline:
                return []
            if now >= next_discover:
                self._send(DISCOVER, cage)
                next_discover = now + 0.5
            with self._cond:
                self._cond.wait(min(0.1, deadline - now))
            self._local.pop(cage, None)
            found = self.locations(cage)
        return found

    def failed(self, location: Location) -> None:
        """A call could not reach `location`: skip it for a while, and forget it on the LAN
        (a live instance is back with its next advert)."""
        self._failed[location.instance] = time.monotonic() + FAIL_HOLD
        self._local.pop(location.cage, None)
        with self._cond:
            self._lan.get(location.cage, {}).pop(location.instance, None)

    # --- the local registry ----------------------------------------------------------------

    def _scan_local(self, cage: str, now: float) -> list[Location]:
        cached = self._local.get(cage)
        if cached is not None and now - cached[0] < LOCAL_RESCAN:
            return cached[1]
        found = []
        try:
            entries = list((self._registry / cage).glob("*.json"))
        except OSError:
            entries = []
        for entry in entries:
            location = self._read_entry(cage, entry)
            if location is not None:
                found.append(location)
        self._local[cage] = (now, found)
        return found

    def _read_entry(self, cage: str, entry: Path) -> Location | None:
        try:
            data = json.loads(entry.read_text())
            pid, netns = int(data["pid"]), data["netns"]
            location = Location(cage, str(data["node"]), entry.stem, str(data["host"]), int(data["port"]), "local")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None  # being written, or not ours
        if netns != self._netns:
            return None  # another "host" sharing this file system
        if not _alive(pid, data.get("started")):
            entry.unlink(missing_ok=True)  # its process died without removing it
            return None
        return location

    # --- the LAN --------------------------------------------------------------------------

    def _advertise(self) -> None:
        if self._published is None:
            return
        self._advertised_at = time.monotonic()
        self._send(ADVERT, self.cage, *self._published)

    def _advertise_loop(self) -> None:
        while not self._stopping.wait(self.advertise_period):
            self._advertise()
            self._tidy()

    def _tidy(self) -> None:
        """Forget what can no longer matter, and report refusals not yet reported."""
        now, wall = time.monotonic(), time.time()
        for instance, until in list(self._failed.items()):
            if until <= now:
                self._failed.pop(instance, None)
        for instance, ts in list(self._last_ts.items()):
            if ts < wall - 2 * REPLAY_WINDOW:  # an older packet fails the window check anyway
                self._last_ts.pop(instance, None)
        if self._refused:
            self._report_refused("")

    def _send(self, kind: str, cage: str, host: str = "", port: int = 0) -> None:
        if self._sender is None or self._broadcast is None:
            return
        try:
            sender = self._sending_address()
            if host in _ANY_ADDRESS and kind == ADVERT:
                host = sender  # listening on every address: call the one the advert comes from
            packet = Packet(kind, self.flock, self.instance, cage, self.node, host, port,
                            self.advertise_period if kind == ADVERT else 0.0, sender, time.time())
            self._sender.sendto(encode_packet(self._key, packet), (self._broadcast[1], self._broadcast[2]))
        except OSError as e:
            if not self._send_failing:  # once per outage, not once per advert
                log.warning(f"discovery: packets cannot be sent: {e}")
            self._send_failing = True
        else:
            if self._send_failing:
                log.message("discovery: packets can be sent again")
            self._send_failing = False

    def _sending_address(self) -> str:
        """The address our packets leave from: the bind ip, or else the one the routing table
        picks for the broadcast address (asked afresh: an address may change)."""
        assert self._broadcast is not None
        bind_ip, broadcast_ip, port = self._broadcast
        if bind_ip not in _ANY_ADDRESS:
            return bind_ip
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            probe.connect((broadcast_ip, port))  # UDP: nothing is sent
            return str(probe.getsockname()[0])

    def _receive_loop(self) -> None:
        assert self._receiver is not None
        while not self._stopping.is_set():
            try:
                packet, sender = self._receiver.recvfrom(MAX_PACKET + 1)
            except OSError as e:
                if not self._stopping.is_set():
                    log.error(f"discovery: the receiver has failed, no more adverts are heard: {e}")
                return
            if not sender:  # shut down
                return
            source = sender[0]
            try:
                self._receive(packet, source)
            except Exception as e:
                log.error(f"discovery: a packet from {source} broke the receiver: {exc_string(e)}")

    def _receive(self, data: bytes, source: str) -> None:
        packet = decode_packet(self._key, data, source, time.time())
        if packet is None:
            self._refuse(source)
            return
        kind, instance, cage = packet.kind, packet.instance, packet.cage
        if packet.flock != self.flock or instance == self.instance:
            return
        if packet.ts <= self._last_ts.get(instance, 0.0):
            self._refuse(source)  # a replay of a packet already seen
            return
        self._last_ts[instance] = packet.ts
        if kind == ADVERT:
            location = Location(cage, packet.node, instance, packet.host, packet.port, "lan",
                                time.monotonic() + EXPIRY_PERIODS * packet.period)
            self._failed.pop(instance, None)  # it speaks again: worth another try
            with self._cond:
                self._lan.setdefault(cage, {})[instance] = location
                self._cond.notify_all()
        elif kind == BYE:
            with self._cond:
                self._lan.get(cage, {}).pop(instance, None)
        elif kind == DISCOVER and cage == self.cage and time.monotonic() - self._advertised_at > 0.1:
            self._advertise()

    def _refuse(self, source: str) -> None:
        """Refused packets are logged at most once in 10 s, with a count, so a flood cannot
        fill the log (the advertiser reports what is left)."""
        self._refused += 1
        self._refused_from = source
        if time.monotonic() - self._refused_logged >= 10.0:
            self._report_refused(source)

    def _report_refused(self, source: str) -> None:
        log.warning(f"discovery: {self._refused} packet(s) refused (bad MAC, stale or replayed), "
                    f"the last from {source or self._refused_from}")
        self._refused, self._refused_logged = 0, time.monotonic()


# --- helpers ------------------------------------------------------------------------------


def _netns_id() -> str:
    """Which network namespace this process is in: cages on one machine but in different
    namespaces are different hosts to each other."""
    try:
        return os.readlink("/proc/self/ns/net")
    except OSError:
        return ""


def _process_start(pid: int) -> str | None:
    """The process's start time (Linux), so that a recycled pid is not taken for it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return started is None or _process_start(pid) in (None, started)


def _static_locations(exact: dict[str, Any]) -> dict[str, list[Location]]:
    """exact_locations = {"cage": ("host:port", ...)} (a single string is allowed too)."""
    result: dict[str, list[Location]] = {}
    for cage, addresses in exact.items():
        for address in (addresses,) if isinstance(addresses, str) else addresses:
            host, _, port = str(address).rpartition("://")[2].rstrip("/").rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"config_cluster.py: exact_locations[{cage!r}]: {address!r} is not host:port")
            result.setdefault(cage, []).append(
                Location(cage, host, f"static:{host}:{port}", host, int(port), "static"))
    return result


def _broadcast_address(value: Any) -> tuple[str, str, int] | None:
    """("<bind ip>/<broadcast ip>", port) as the original's, or None for no LAN discovery."""
    if value is None:
        return None
    try:
        addresses, port = value
        bind_ip, _, broadcast_ip = str(addresses).partition("/")
        return bind_ip or "0.0.0.0", broadcast_ip or "255.255.255.255", int(port)
    except (TypeError, ValueError):
        raise ConfigError(f"config_cluster.py: broadcast_address {value!r} is not "
                          f"(\"<bind ip>/<broadcast ip>\", port)") from None
