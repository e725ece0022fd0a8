"""The locator on its own: the local registry, failed instances, static locations, adverts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import wait_until
from pmnc.errors import ConfigError
from pmnc.rpc.locator import ADVERT, DISCOVER, FAIL_HOLD, REPLAY_WINDOW, Locator, Packet, decode_packet, encode_packet


def make_locator(base: Path, cage: str = "runner", **kwargs: object) -> Locator:
    return Locator(cages_dir=str(base), flock="F", cage=cage, node="n", hmac_key=b"k" * 32, **kwargs)  # type: ignore[arg-type]


def test_a_published_cage_is_found_and_leaves_when_unpublished(tmp_path: Path) -> None:
    worker, runner = make_locator(tmp_path, "worker"), make_locator(tmp_path)
    worker.publish("127.0.0.1", 4242)
    [location] = runner.find("worker", 1.0)
    assert (location.host, location.port, location.source) == ("127.0.0.1", 4242, "local")
    worker.unpublish()
    runner._local.clear()
    assert runner.locations("worker") == []


def test_an_entry_of_a_dead_process_is_ignored_and_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    folder = tmp_path / ".registry" / "F" / "worker"
    folder.mkdir(parents=True)
    entry = folder / "deadbeef.json"
    entry.write_text(json.dumps({"node": "n", "pid": int(dead.stdout), "started": None,
                                 "netns": os.readlink("/proc/self/ns/net"), "host": "127.0.0.1", "port": 1}))
    assert make_locator(tmp_path).locations("worker") == []
    assert not entry.exists()


def test_an_entry_of_another_network_namespace_is_another_host(tmp_path: Path) -> None:
    worker = make_locator(tmp_path, "worker")
    worker._netns = "net:[1]"
    worker.publish("127.0.0.1", 4242)
    assert make_locator(tmp_path).locations("worker") == []


def test_a_failed_instance_is_skipped_while_another_is_left(tmp_path: Path) -> None:
    one, two = make_locator(tmp_path, "worker"), make_locator(tmp_path, "worker")
    one.publish("127.0.0.1", 1001)
    two.publish("127.0.0.1", 1002)
    runner = make_locator(tmp_path)
    assert {loc.port for loc in runner.locations("worker")} == {1001, 1002}
    runner.failed(next(loc for loc in runner.locations("worker") if loc.port == 1001))
    assert [loc.port for loc in runner.locations("worker")] == [1002]
    runner.failed(runner.locations("worker")[0])
    assert {loc.port for loc in runner.locations("worker")} == {1001, 1002}, "better a failed one than none"
    assert FAIL_HOLD <= 30.0


def test_find_waits_for_an_instance_that_starts_meanwhile(tmp_path: Path) -> None:
    runner, worker = make_locator(tmp_path), make_locator(tmp_path, "worker")
    started = time.monotonic()
    assert runner.find("worker", 0.3) == []
    assert 0.3 <= time.monotonic() - started < 1.0
    worker.publish("127.0.0.1", 4242)
    assert runner.find("worker", 1.0)


def test_static_locations(tmp_path: Path) -> None:
    runner = make_locator(tmp_path, exact_locations={"worker": ("ssl://10.0.0.7:7000/", "10.0.0.8:7000"),
                                                     "db": "10.0.0.9:1"})
    assert sorted((loc.host, loc.port) for loc in runner.locations("worker")) == [("10.0.0.7", 7000),
                                                                                   ("10.0.0.8", 7000)]
    assert [loc.source for loc in runner.locations("db")] == ["static"]
    with pytest.raises(ConfigError, match="not host:port"):
        make_locator(tmp_path, exact_locations={"worker": ("nowhere",)})
    with pytest.raises(ConfigError, match="broadcast_address"):
        make_locator(tmp_path, broadcast_address="255.255.255.255")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_adverts_over_udp_are_found_and_goodbyes_remove_them(tmp_path: Path) -> None:
    port = free_udp_port()
    address = ("127.0.0.1/127.255.255.255", port)  # loopback's broadcast reaches every receiver
    runner = make_locator(tmp_path, broadcast_address=address, advertise_period=0.2)
    worker = make_locator(tmp_path, "worker", broadcast_address=address, advertise_period=0.2)
    worker._netns = "net:[other]"  # not in the local registry: only UDP can find it
    runner.start()
    worker.start()
    try:
        worker.publish("0.0.0.0", 4242)
        [location] = runner.find("worker", 2.0)
        assert (location.source, location.port) == ("lan", 4242)
        worker.unpublish()
        wait_until(lambda: runner.locations("worker") == [], 2.0, message="the goodbye")
    finally:
        worker.stop()
        runner.stop()


KEY = b"k" * 32


def test_a_packet_is_believed_only_from_the_address_it_names_and_its_addresses_are_signed() -> None:
    now = time.time()
    advert = Packet(ADVERT, "F", "i1", "worker", "n", "10.0.0.7", 4242, 5.0, "10.0.0.7", now)
    data = encode_packet(KEY, advert)
    assert decode_packet(KEY, data, "10.0.0.7", now) == advert
    assert decode_packet(KEY, data, "10.0.0.66", now) is None, "a captured advert replayed from elsewhere"
    assert decode_packet(b"x" * 32, data, "10.0.0.7", now) is None
    assert decode_packet(KEY, data, "10.0.0.7", now + REPLAY_WINDOW + 1.0) is None
    for edited in (data.replace(b"10.0.0.7", b"10.0.0.6", 1), data.replace(b"10.0.0.7", b"10.0.0.6")):
        for source in ("10.0.0.7", "10.0.0.6"):
            assert decode_packet(KEY, edited, source, now) is None, "an address changed under the MAC"
    # a listener on one address advertises that one, whichever the advert leaves from
    elsewhere = Packet(ADVERT, "F", "i1", "worker", "n", "10.0.1.7", 4242, 5.0, "10.0.0.7", now)
    decoded = decode_packet(KEY, encode_packet(KEY, elsewhere), "10.0.0.7", now)
    assert decoded is not None and (decoded.host, decoded.port) == ("10.0.1.7", 4242)
    nowhere = Packet(ADVERT, "F", "i1", "worker", "n", "", 4242, 5.0, "10.0.0.7", now)
    assert decode_packet(KEY, encode_packet(KEY, nowhere), "10.0.0.7", now) is None, "an advert names its host"
    discover = Packet(DISCOVER, "F", "i2", "worker", "n", "", 0, 0.0, "10.0.0.9", now)
    assert decode_packet(KEY, encode_packet(KEY, discover), "10.0.0.9", now) == discover


def send_from(address: str, packet: bytes, target: tuple[str, int]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.bind((address, 0))
        s.sendto(packet, target)


def test_a_captured_advert_replayed_from_another_address_redirects_nobody(tmp_path: Path) -> None:
    port = free_udp_port()
    address = ("127.0.0.1/127.255.255.255", port)
    sniffer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sniffer.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sniffer.bind(("127.255.255.255", port))
    sniffer.settimeout(5.0)
    worker = make_locator(tmp_path, "worker", broadcast_address=address, advertise_period=3600.0)
    worker._netns = "net:[other]"  # not in the local registry: only UDP can find it
    worker.start()
    runner = make_locator(tmp_path, broadcast_address=address)
    try:
        worker.publish("0.0.0.0", 4242)  # on every address: the advert names the one it is sent from
        captured = sniffer.recv(2048)
        runner.start()  # a caller starting now has not seen the genuine advert
        send_from("127.0.0.2", captured, ("127.255.255.255", port))
        wait_until(lambda: runner._refused_from == "127.0.0.2", 5.0, message="the replay refused")
        assert runner.locations("worker") == []
        send_from("127.0.0.1", captured, ("127.255.255.255", port))  # from where it was sent: believed
        [location] = runner.find("worker", 5.0)
        assert (location.host, location.port, location.source) == ("127.0.0.1", 4242, "lan")
    finally:
        sniffer.close()
        worker.stop()
        runner.stop()


def test_the_receiver_listens_on_the_configured_broadcast_address_only(tmp_path: Path) -> None:
    port = free_udp_port()
    runner = make_locator(tmp_path, broadcast_address=("127.0.0.1/127.255.255.255", port))
    runner.start()
    try:
        assert runner._receiver is not None and runner._receiver.getsockname() == ("127.255.255.255", port)
        now = time.time()
        for cage, target in (("unicast", "127.0.0.1"), ("broadcast", "127.255.255.255")):  # in this order
            advert = Packet(ADVERT, "F", cage, cage, "n", "127.0.0.1", 4242, 5.0, "127.0.0.1", now)
            send_from("127.0.0.1", encode_packet(KEY, advert), (target, port))
        assert runner.find("broadcast", 5.0)
        assert runner.locations("unicast") == [], "a packet sent to another address was heard"
    finally:
        runner.stop()
