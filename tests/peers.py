"""What the test peers' harnesses share (pg_peer, amq_peer, mail_peer, smpp_peer): free loopback
ports, the servers a killed test run left behind, and a TCP relay to cut connections with."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

LOW_PORT = 10000  # free ports are picked from here up to the system's ephemeral range


def _ephemeral_low() -> int:
    """The lowest port the system gives outgoing connections as their own (32768 if unknown)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port nothing listens on now, below the range the system takes outgoing
    connections' own ports from: a server started seconds later (a JVM) still finds it free,
    where a port of that range may meanwhile be taken by any connection made - the harness's
    own, polling whether the server is up yet."""
    high = _ephemeral_low()
    for _ in range(200) if high > LOW_PORT else ():
        port = random.randrange(LOW_PORT, high)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # no room below the range: the kernel's pick
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, timeout: float = 1.0) -> bool:
    """True if something accepts a TCP connection on 127.0.0.1:port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=timeout).close()
    except OSError:
        return False
    return True


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def remove_orphans(prefix: str, pid_file: str, sig: int = signal.SIGKILL) -> None:
    """Folders `<tempdir>/<prefix>*` of a test run that was killed (its owner.pid is dead): each
    server whose pid is the first word of a file matching `pid_file` there (a glob: "*/nats.pid"
    for several servers) gets `sig`, the folder is removed."""
    for folder in Path(tempfile.gettempdir()).glob(prefix + "*"):
        try:
            owner = int((folder / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if alive(owner):
            continue
        for path in folder.glob(pid_file):
            try:
                os.kill(int(path.read_text().split()[0]), sig)
            except (OSError, ValueError, IndexError):
                pass
        shutil.rmtree(folder, ignore_errors=True)


class Relay:
    """A TCP relay on a free loopback port in front of `target`: the times of the connections
    made through it (`connects`), what the clients send handed to `observe(data)`, and `cut()`
    to drop every connection at once (a lost connection, the server still up)."""

    def __init__(self, target: tuple[str, int], observe: Callable[[bytes], None] | None = None) -> None:
        self.target, self.observe = target, observe
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.port = self.address[1]
        self.connects: list[float] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="relay", daemon=True).start()

    @property
    def accepted(self) -> int:
        return len(self.connects)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connects.append(time.monotonic())
            try:
                server = socket.create_connection(self.target, timeout=5.0)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, self.observe), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, None), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, observe: Callable[[bytes], None] | None) -> None:
        try:
            while data := source.recv(65536):
                if observe is not None:
                    observe(data)
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            _shut(s)

    def cut(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            _shut(s)
            s.close()

    def close(self) -> None:
        _shut(self.listener)
        self.listener.close()
        self.cut()


def _shut(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
