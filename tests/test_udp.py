"""The udp interface and resource: datagrams from another process become requests, each handled
once or counted as dropped; the resource sends datagrams, to one address or broadcast.

Each test runs a cage in this process whose interface udp_1 listens on loopback; its handler
(HANDLER) appends one line per datagram to the cage's `seen.txt`.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from conftest import InProcessCage, config_source, module_source, wait_until, write_file
from pmnc.errors import ConfigError, ResourceError, ResourceInputParameterError
from pmnc.protocols import udp
from pmnc.request import fake_request

HANDLER = module_source("""
    import os, time
    SEEN = os.path.join(os.path.dirname(__file__), "seen.txt")
    SLOW = {slow}  # seconds each request works

    def process_request(request, response):
        time.sleep(SLOW)
        tokens = pmnc.request.parameters["auth_tokens"]
        fields = (request["packet"].decode(), request["peer_ip"], request["peer_port"], tokens["peer_ip"])
        line = " ".join(str(f) for f in fields) + "\\n"
        fd = os.open(SEEN, os.O_WRONLY | os.O_APPEND | os.O_CREAT)  # one write of a short line: whole
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
""", ["process_request"])

# Another process: `count` datagrams "0" .. "count-1" to the port, `burst` at a time with a pause
# between bursts (0: no pause at all); prints the port it sent from.
SENDER = """
import socket, sys, time
port, count, burst, size = (int(a) for a in sys.argv[1:5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
for i in range(count):
    s.sendto(str(i).encode().ljust(size), ("127.0.0.1", port))
    if burst and i % burst == burst - 1:
        time.sleep(0.002)
print(s.getsockname()[1])
"""


def send_from_another_process(port: int, count: int, *, burst: int = 0, size: int = 0) -> int:
    """The sender's port, once it has sent them all."""
    result = subprocess.run([sys.executable, "-c", SENDER, str(port), str(count), str(burst), str(size)],
                            capture_output=True, text=True, timeout=60, check=True)
    return int(result.stdout)


def seen(cage: InProcessCage) -> list[list[str]]:
    path = cage.cage_dir / "seen.txt"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def start(in_process_cage: Callable[..., InProcessCage], *, slow: float = 0.0, thread_count: int = 10,
          files: dict[str, str] | None = None, **interface: Any) -> tuple[InProcessCage, udp.Interface]:
    config = {"protocol": "udp", "listener_address": ("127.0.0.1", 0), **interface}
    cage = in_process_cage(interfaces={"udp_1": config}, thread_count=thread_count,
                           files={"interface_udp_1.py": HANDLER.format(slow=slow), **(files or {})})
    live = cage.cage.interfaces.live["udp_1"][0]
    assert isinstance(live, udp.Interface)
    return cage, live


def settled(live: udp.Interface, sent: int) -> bool:
    """Every datagram sent is accounted for: handled, failed or counted as dropped."""
    c = live.counts
    return c.handled + c.failed + c.dropped == sent


# --- the interface ------------------------------------------------------------------------------


def test_1000_datagrams_from_another_process_are_each_handled_once(
        in_process_cage: Callable[..., InProcessCage]) -> None:
    cage, live = start(in_process_cage)
    port = live.address[1]
    assert f"interface udp_1 listens on udp://127.0.0.1:{port}/" in cage.log_text()
    sender_port = send_from_another_process(port, 1000, burst=5)  # 1000 in about 0.5 s
    wait_until(lambda: settled(live, 1000), message="1000 datagrams accounted for")
    lines = seen(cage)
    # at this rate on loopback nothing is lost (the next test shows what happens beyond it)
    assert live.counts.dropped == 0, live.counts
    assert sorted(int(line[0]) for line in lines) == list(range(1000))  # each once
    assert live.counts.received == live.counts.handled == 1000 and live.counts.failed == 0
    assert {tuple(line[1:]) for line in lines} == {("127.0.0.1", str(sender_port), "127.0.0.1")}
    assert "dropped" not in cage.log_text()
    assert "received=1000 pending=0 handled=1000 failed=0 dropped=0" in repr(live)


def test_at_full_speed_every_datagram_is_handled_or_counted_as_dropped(
        in_process_cage: Callable[..., InProcessCage]) -> None:
    """A burst as fast as another process can send: the handlers (about 6000 a second here, all
    on one interpreter) fall behind, the socket's receive buffer fills and the kernel drops the
    rest; none goes missing without being counted."""
    cage, live = start(in_process_cage)
    send_from_another_process(live.address[1], 5000, size=100)
    wait_until(lambda: settled(live, 5000), message="5000 datagrams accounted for")
    c = live.counts
    assert c.handled == c.received == len({line[0] for line in seen(cage)}) == len(seen(cage))
    assert c.handled + c.kernel + c.overflowed == 5000 and c.failed == c.too_large == 0
    if c.dropped:
        wait_until(lambda: "datagram(s) dropped" in cage.log_text(), message="the drops logged")


def test_when_the_handlers_cannot_keep_up_datagrams_are_dropped_and_counted(
        in_process_cage: Callable[..., InProcessCage]) -> None:
    cage, live = start(in_process_cage, slow=0.05, thread_count=2, max_pending=4)
    send_from_another_process(live.address[1], 200)
    wait_until(lambda: settled(live, 200), message="200 datagrams accounted for")
    c = live.counts
    assert c.overflowed > 0 and c.handled == len(seen(cage)) and c.failed == 0
    assert c.handled + c.overflowed + c.kernel == 200  # each datagram handled, or dropped and counted
    wait_until(lambda: "datagram(s) dropped" in cage.log_text(), message="the drops logged")
    assert "the handlers could not keep up (max_pending 4 waiting)" in cage.log_text()


def test_a_datagram_bigger_than_max_packet_size_is_dropped_and_counted(
        in_process_cage: Callable[..., InProcessCage]) -> None:
    cage, live = start(in_process_cage, max_packet_size=100)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"1".ljust(101), live.address)
        sock.sendto(b"2".ljust(100), live.address)
    wait_until(lambda: settled(live, 2), message="2 datagrams accounted for")
    assert [line[0] for line in seen(cage)] == ["2"]
    assert live.counts.too_large == 1
    wait_until(lambda: "1 bigger than max_packet_size (100)" in cage.log_text(), message="the drop logged")


def test_a_failing_handler_is_logged_and_the_next_datagram_handled(
        in_process_cage: Callable[..., InProcessCage]) -> None:
    failing = module_source("""
        def process_request(request, response):
            if request["packet"] == b"fail":
                raise ValueError("asked to fail")
    """, ["process_request"])
    cage, live = start(in_process_cage, files={"interface_udp_1.py": failing})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"fail", live.address)
        sock.sendto(b"fine", live.address)
    wait_until(lambda: settled(live, 2), message="2 datagrams accounted for")
    assert (live.counts.handled, live.counts.failed) == (1, 1)
    assert 'processing failed: ValueError("asked to fail")' in cage.log_text()


def test_a_config_change_restarts_the_interface_on_the_same_port(
        in_process_cage: Callable[..., InProcessCage]) -> None:
    cage, live = start(in_process_cage)
    config = {"protocol": "udp", "listener_address": live.address, "max_packet_size": 10}
    write_file(cage.cage_dir / "config_interface_udp_1.py", config_source(config))
    # between the old one stopping and the new one starting, no udp_1 is live
    wait_until(lambda: cage.cage.interfaces.live.get("udp_1", [live])[0] is not live, message="interface restarted")
    assert "udp_1" not in cage.cage.interfaces.failures  # the old one had freed the port
    restarted = cage.cage.interfaces.live["udp_1"][0]
    assert isinstance(restarted, udp.Interface) and restarted.address == live.address
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"longer than ten", live.address)
        sock.sendto(b"short", live.address)
    wait_until(lambda: settled(restarted, 2), message="2 datagrams accounted for")
    assert [line[0] for line in seen(cage)] == ["short"] and restarted.counts.too_large == 1


def test_the_kernel_count_of_drops_is_read_exactly() -> None:
    """What counts.kernel is taken from: the socket's own drop counter, for datagrams nobody read."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        receiver.bind(("127.0.0.1", 0))
        for _ in range(100):
            sender.sendto(b"x" * 1000, receiver.getsockname())
        receiver.setblocking(False)
        received = 0
        while True:
            try:
                receiver.recv(2000)
            except BlockingIOError:
                break
            received += 1
        assert received < 100
        assert udp._kernel_drops(receiver) == 100 - received


def test_listener_address_is_required_and_a_port_taken_is_refused(
        in_process_cage: Callable[..., InProcessCage]) -> None:
    cage, live = start(in_process_cage)
    with pytest.raises(ConfigError, match="listener_address must be"):
        cage.cage.interfaces.create("udp_2", {"protocol": "udp"})
    second = cage.cage.interfaces.create("udp_2", {"protocol": "udp", "listener_address": live.address})
    with pytest.raises(Exception, match=f"cannot listen on udp://127.0.0.1:{live.address[1]}"):
        second.start()  # without reuse_port, a second socket cannot take the port (nor its datagrams)


# --- the resource -------------------------------------------------------------------------------


def test_the_resource_sends_a_datagram_to_a_socket(in_process_cage: Callable[..., InProcessCage]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as target:
        target.bind(("127.0.0.1", 0))
        target.settimeout(5.0)
        resource = config_source({"protocol": "udp", "server_address": target.getsockname()})
        cage, _ = start(in_process_cage, files={"config_resource_out.py": resource})
        fake_request(5.0)
        pmnc = cage.cage.runtime.pmnc("test")
        assert pmnc.transaction.out.send(b"hello") is None
        assert target.recvfrom(100)[0] == b"hello"
        xa = pmnc.transaction.create()
        xa.out.send(b"x" * 57344)
        assert xa.execute() == (None,)
        assert target.recvfrom(65536)[0] == b"x" * 57344
        with pytest.raises(ResourceInputParameterError, match="must be bytes, not str"):
            pmnc.transaction.out.send("text")
        with pytest.raises(ResourceError, match="Message too long"):
            pmnc.transaction.out.send(b"x" * 70000)
        assert pmnc.transaction.out.send(b"again") is None  # a failed send does not spoil the next
        assert target.recvfrom(100)[0] == b"again"


def test_broadcast_needs_the_broadcast_flag(in_process_cage: Callable[..., InProcessCage]) -> None:
    """127.255.255.255 is loopback's broadcast address: the interface bound to it receives
    what the resource broadcasts there, and nothing leaves this machine."""
    address = ("127.255.255.255", 0)
    cage, live = start(in_process_cage, listener_address=address)
    target = ("127.255.255.255", live.address[1])
    write_file(cage.cage_dir / "config_resource_bc.py", config_source(
        {"protocol": "udp", "broadcast": True, "server_address": target}))
    write_file(cage.cage_dir / "config_resource_nobc.py", config_source(
        {"protocol": "udp", "server_address": target}))
    fake_request(5.0)
    pmnc = cage.cage.runtime.pmnc("test")
    with pytest.raises(ResourceError, match="Permission denied"):
        pmnc.transaction.nobc.send(b"not without broadcast=True")
    pmnc.transaction.bc.send(b"broadcast")
    wait_until(lambda: settled(live, 1), message="the broadcast handled")
    assert seen(cage)[0][:2] == ["broadcast", "127.0.0.1"]


def test_the_resource_requires_server_address() -> None:
    with pytest.raises(ConfigError, match="server_address must be"):
        udp.Resource("out/1", {})
    with pytest.raises(ConfigError, match="unknown config key: brodcast"):
        udp.Resource("out/1", {"server_address": ("127.0.0.1", 1), "brodcast": True})
