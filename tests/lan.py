"""A simulated LAN for tests: hosts in Linux network namespaces joined by a bridge.

The root namespace's interfaces and routes are never touched: the bridge `br0` lives in
its own switch namespace `<prefix>-sw`, and host i is the namespace `<prefix>-h<i>` with
`eth0` at 10.a.b.(i+1)/24, a veth whose other end (`h<i>`) is a port of the bridge.
Register the `lan` fixture with `pytest_plugins = ["lan"]` (tests/ is on sys.path); test
modules import this module too, before pytest could rewrite it, and it has no asserts of
its own: PYTEST_DONT_REWRITE.
"""

from __future__ import annotations

import atexit
import itertools
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

COMMAND_TIMEOUT = 10.0
READY_TIMEOUT = 5.0

# <prefix> is pmnc<pid>-<n>: the pid tells a crashed run's leftovers from a live run's.
_OURS = re.compile(r"^pmnc(\d+)-\d+-(?:sw|h\d+)$")
_counter = itertools.count()
_open: set[Lan] = set()


class LanError(RuntimeError):
    """An `ip` or host command failed; the message carries its stderr."""


class LanUnavailable(LanError):
    """Network namespaces cannot be created here (not root, no iproute2, not permitted)."""


def _ip(*args: str) -> str:
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LanError(f"ip {' '.join(args)}: {e}") from e
    if done.returncode != 0:
        raise LanError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def netns_names() -> list[str]:
    """The names in `ip netns list` (all of them, not only ours)."""
    return [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _remove_stale() -> None:
    """Delete namespaces left by runs that died without closing their Lan."""
    for name in netns_names():
        match = _OURS.match(name)
        if match and not _alive(int(match.group(1))):
            try:
                _ip("netns", "delete", name)
            except LanError:
                pass  # another run got there first


class Host:
    """One namespace on the LAN; run commands in it with `run`/`check` or `prefix + argv`."""

    def __init__(self, lan: Lan, index: int, name: str, ip: str) -> None:
        self.name, self.ip = name, ip
        self.prefix = ["ip", "netns", "exec", name]
        self._lan, self._port = lan, f"h{index}"

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.ip}>"

    def run(self, argv: list[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` in this host; `Lan.close` kills it if it is still running."""
        return self._lan._track(subprocess.Popen([*self.prefix, *argv], **popen_kwargs))

    def check(self, argv: list[str], timeout: float = COMMAND_TIMEOUT) -> str:
        """Run `argv` in this host to completion and return its stdout."""
        try:
            done = subprocess.run([*self.prefix, *argv], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise LanError(f"{argv!r} in {self.name}: no exit within {timeout}s") from e
        if done.returncode != 0:
            raise LanError(f"{argv!r} in {self.name} exited {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def link_down(self) -> None:
        """Unplug this host: it can reach nobody and nobody can reach it."""
        _ip("-n", self.name, "link", "set", "eth0", "down")

    def link_up(self) -> None:
        """Plug this host back in; returns once the switch forwards to it again."""
        _ip("-n", self.name, "link", "set", "eth0", "up")
        self._lan._wait_forwarding([self._port])


class Lan:
    """A switch namespace with a bridge and `hosts` host namespaces plugged into it."""

    def __init__(self, hosts: int = 3) -> None:
        if not 1 <= hosts <= 250:
            raise ValueError(f"hosts must be 1..250, not {hosts}")
        if os.geteuid() != 0:
            raise LanUnavailable("not running as root")
        if shutil.which("ip") is None:
            raise LanUnavailable("the ip command is missing (Debian: apt-get install iproute2)")
        pid, n = os.getpid(), next(_counter)
        self.prefix = f"pmnc{pid}-{n}"
        # The namespaces isolate each Lan anyway; distinct subnets keep logs unambiguous.
        index = (pid * 16 + n) % (51 * 256)
        net = f"10.{200 + index // 256}.{index % 256}"
        self.subnet, self.broadcast = f"{net}.0/24", f"{net}.255"
        self.switch = f"{self.prefix}-sw"
        self.hosts: list[Host] = []
        self._namespaces: list[str] = []
        self._started: list[subprocess.Popen[Any]] = []
        self._closed = False
        _remove_stale()
        _open.add(self)
        try:
            self._build(hosts, net)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"hosts={len(self.hosts)}"
        return f"<Lan {self.prefix} {self.subnet} {state}>"

    def __enter__(self) -> Lan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_namespace(self, name: str) -> None:
        try:
            _ip("netns", "add", name)
        except LanError as e:
            raise LanUnavailable(str(e)) from e
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _build(self, hosts: int, net: str) -> None:
        sw = self.switch
        self._add_namespace(sw)
        _ip("-n", sw, "link", "add", "br0", "type", "bridge")
        _ip("-n", sw, "link", "set", "br0", "up")
        for i in range(hosts):
            name, port = f"{self.prefix}-h{i}", f"h{i}"
            self._add_namespace(name)
            # Both ends are created inside namespaces, so nothing appears in the root one.
            _ip("-n", sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", name)
            _ip("-n", sw, "link", "set", port, "master", "br0", "up")
            host = Host(self, i, name, f"{net}.{i + 1}")
            _ip("-n", name, "addr", "add", f"{host.ip}/24", "broadcast", self.broadcast, "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
            self.hosts.append(host)
        self._wait_forwarding([f"h{i}" for i in range(hosts)])

    def _wait_forwarding(self, ports: list[str]) -> None:
        """Carrier and bridge port state follow `link up` asynchronously; wait for both."""
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            out = _ip("-n", self.switch, "-d", "-o", "link", "show", "master", "br0")
            ready = {m.group(1) for m in re.finditer(r"^\d+: (h\d+)@\S+ <[^>]*LOWER_UP[^>]*>.*state forwarding",
                                                     out, re.MULTILINE)}
            if ready.issuperset(ports):
                return
            if time.monotonic() >= deadline:
                raise LanError(f"bridge ports {sorted(set(ports) - ready)} not forwarding within {READY_TIMEOUT}s")
            time.sleep(0.01)

    def _track(self, proc: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
        if self._closed:
            proc.kill()
            proc.wait()
            raise LanError(f"{self!r} is closed")
        self._started.append(proc)
        return proc

    def close(self) -> None:
        """Kill the processes started by `Host.run`, then delete our namespaces. Idempotent."""
        if self._closed:
            return
        self._closed = True
        _open.discard(self)
        for proc in self._started:
            if proc.poll() is None:
                proc.kill()
        for proc in self._started:
            try:
                proc.wait(COMMAND_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        errors = []
        for name in reversed(self._namespaces):
            try:
                _ip("netns", "delete", name)
            except LanError as e:
                errors.append(str(e))
        if errors:
            raise LanError("; ".join(errors))


@atexit.register
def _close_all() -> None:
    for lan in list(_open):
        try:
            lan.close()
        except LanError:
            pass


@pytest.fixture
def lan() -> Iterator[Callable[..., Lan]]:
    """`lan(hosts=3)` builds a Lan, or skips the test where namespaces are unavailable."""
    made: list[Lan] = []

    def make(hosts: int = 3) -> Lan:
        try:
            net = Lan(hosts)
        except LanUnavailable as e:
            pytest.skip(f"network namespaces cannot be created here: {e}")
        made.append(net)
        return net

    yield make
    for net in made:
        net.close()
