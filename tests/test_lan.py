"""The simulated LAN: reachability, broadcast, partitions, loopback isolation and cleanup."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

import pytest
from lan import Host, Lan, LanError, netns_names

PORT = 47000  # every host is a fresh namespace, so a fixed port cannot clash

TCP_SERVER = """
import socket, sys
server = socket.create_server((sys.argv[1], 0))
print("ready", server.getsockname()[1], flush=True)
while True:
    conn, peer = server.accept()
    with conn:
        conn.sendall(f"hello {peer[0]}".encode())
"""

# Prints the server's greeting, or the errno name of the failure.
TCP_CLIENT = """
import errno, socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as s:
        print(b"".join(iter(lambda: s.recv(100), b"")).decode())
except OSError as e:
    print("error", errno.errorcode.get(e.errno, type(e).__name__))
"""

UDP_LISTENER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(1500)
    print(data.decode(), peer[0], flush=True)
"""

UDP_BROADCAST = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.bind((sys.argv[1], 0))
s.sendto(sys.argv[4].encode(), (sys.argv[2], int(sys.argv[3])))
"""


class Lines:
    """A process's stdout, read by a thread so that every wait has a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self._lines.put(line.rstrip("\n"))
        except (OSError, ValueError):
            pass  # Lan.close closed the pipe

    def next(self, timeout: float = 5.0) -> str:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output within {timeout}s") from None

    def silent(self, timeout: float) -> bool:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            return True
        raise AssertionError(f"unexpected output {line!r}")


def start(host: Host, script: str, *args: Any) -> tuple[subprocess.Popen[str], Lines, str]:
    """Run a script in `host` and wait for its "ready ..." line; returns the rest of that line too."""
    proc = host.run([sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE, text=True)
    lines = Lines(proc.stdout)  # type: ignore[arg-type]
    ready = lines.next()
    assert ready.startswith("ready"), ready
    return proc, lines, ready.removeprefix("ready").strip()


def tcp_server(host: Host, bind: str) -> int:
    return int(start(host, TCP_SERVER, bind)[2])


def udp_listener(host: Host, bind: str) -> Lines:
    return start(host, UDP_LISTENER, bind, PORT)[1]


def connect(host: Host, ip: str, port: int, timeout: float = 5.0) -> str:
    return host.check([sys.executable, "-c", TCP_CLIENT, ip, str(port), str(timeout)]).strip()


def broadcast(net: Lan, sender: Host, text: str, bind: str = "0.0.0.0") -> None:
    sender.check([sys.executable, "-c", UDP_BROADCAST, bind, net.broadcast, str(PORT), text])


def root_view() -> list[str]:
    """The root namespace's links, addresses and routes, without counters or lifetimes."""
    return [subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout
            for args in (["-br", "link"], ["-br", "addr"], ["route"], ["-6", "route"])]


def test_hosts_get_addresses_in_their_own_namespaces(lan: Any) -> None:
    before = root_view()
    net = lan(3)
    assert [h.ip for h in net.hosts] == [net.subnet.replace(".0/24", f".{i}") for i in (1, 2, 3)]
    assert net.broadcast == net.subnet.replace(".0/24", ".255")
    for host in net.hosts:
        assert f"inet {host.ip}/24 brd {net.broadcast}" in host.check(["ip", "-4", "-o", "addr", "show", "eth0"])
        assert host.prefix == ["ip", "netns", "exec", host.name]
    assert {f"{net.prefix}-{n}" for n in ("sw", "h0", "h1", "h2")} <= set(netns_names())
    assert root_view() == before
    with pytest.raises(LanError, match="boom"):
        net.hosts[0].check([sys.executable, "-c", "import sys; sys.exit('boom')"])


def test_hosts_reach_each_other_over_tcp(lan: Any) -> None:
    h0, h1, h2 = lan(3).hosts
    port = tcp_server(h0, h0.ip)
    assert connect(h1, h0.ip, port) == f"hello {h1.ip}"
    assert connect(h2, h0.ip, port) == f"hello {h2.ip}"


def test_broadcast_reaches_the_other_hosts(lan: Any) -> None:
    net = lan(3)
    h0, h1, h2 = net.hosts
    heard = [udp_listener(h1, "0.0.0.0"), udp_listener(h2, "")]
    broadcast(net, h0, "unbound")
    broadcast(net, h0, "bound", bind=h0.ip)
    for lines in heard:
        assert [lines.next(), lines.next()] == [f"unbound {h0.ip}", f"bound {h0.ip}"]


def test_every_listener_on_a_port_hears_a_broadcast(lan: Any) -> None:
    # Several cages on one host, and the sender itself, all see each announcement.
    net = lan(2)
    h0, h1 = net.hosts
    heard = [udp_listener(h1, "0.0.0.0"), udp_listener(h1, "0.0.0.0"), udp_listener(h0, "0.0.0.0")]
    broadcast(net, h0, "hi")
    assert [lines.next() for lines in heard] == [f"hi {h0.ip}"] * 3


def test_link_down_partitions_a_host_until_link_up(lan: Any) -> None:
    net = lan(3)
    h0, h1, h2 = net.hosts
    l1, l2 = udp_listener(h1, "0.0.0.0"), udp_listener(h2, "0.0.0.0")
    port = tcp_server(h2, "0.0.0.0")
    broadcast(net, h0, "one")
    assert (l1.next(), l2.next()) == (f"one {h0.ip}", f"one {h0.ip}")
    assert connect(h0, h2.ip, port) == f"hello {h0.ip}"

    h2.link_down()
    broadcast(net, h0, "two")
    assert l1.next() == f"two {h0.ip}"
    assert l2.silent(0.3)  # h1 and h2 hang off the same bridge: h1 has it, so h2 would too
    assert connect(h0, h2.ip, port, timeout=0.5) in ("error TimeoutError", "error EHOSTUNREACH")
    assert connect(h2, h1.ip, port, timeout=0.5) == "error ENETUNREACH"

    h2.link_up()
    broadcast(net, h0, "three")
    assert (l1.next(), l2.next()) == (f"three {h0.ip}", f"three {h0.ip}")
    assert connect(h0, h2.ip, port) == f"hello {h0.ip}"


def test_loopback_is_private_to_each_host(lan: Any) -> None:
    h0, h1 = lan(2).hosts
    port = tcp_server(h0, "127.0.0.1")
    assert connect(h0, "127.0.0.1", port) == "hello 127.0.0.1"
    assert connect(h1, "127.0.0.1", port) == "error ECONNREFUSED"
    assert connect(h1, h0.ip, port) == "error ECONNREFUSED"


def test_close_kills_its_processes_and_deletes_its_namespaces(lan: Any) -> None:
    net = lan(2)
    blocked = net.hosts[1].run([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    net.close()
    assert blocked.returncode == -signal.SIGKILL
    assert [n for n in netns_names() if n.startswith(f"{net.prefix}-")] == []
    assert repr(net) == f"<Lan {net.prefix} {net.subnet} closed>"
    net.close()
    with pytest.raises(LanError, match="closed"):
        net.hosts[0].run([sys.executable, "-c", ""])


def test_a_new_lan_removes_namespaces_left_by_dead_runs(lan: Any) -> None:
    alive = lan(1)
    exited = subprocess.Popen([sys.executable, "-c", ""])
    exited.wait()
    stale = [f"pmnc{exited.pid}-0-sw", f"pmnc{exited.pid}-0-h0"]
    for name in stale:
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        lan(1)
        names = set(netns_names())
        assert not names & set(stale)
        assert {f"{alive.prefix}-sw", f"{alive.prefix}-h0"} <= names
    finally:
        for name in set(stale) & set(netns_names()):
            subprocess.run(["ip", "netns", "delete", name], check=True)


def test_the_fixture_skips_where_namespaces_are_unavailable(lan: Any, monkeypatch: Any, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.skip.Exception, match=r"network namespaces cannot be created here: .*iproute2"):
        lan()
