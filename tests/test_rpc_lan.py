"""Cage-to-cage calls between hosts of a simulated LAN (tests/lan.py): discovery by signed
UDP broadcast, spreading calls over instances, a partition, a crash, a graceful stop,
static locations and flock scoping.

Every host shares the file system, so one install tree (the `cluster` fixture) serves
them all: a cage started in host i's namespace is `h<i>.<cage>`. The worker cages answer
`probe.whoami()` with their node; the runner cage (host 0) makes the calls when the test
asks its HTTP interface, which listens on 127.0.0.1 of host 0 and is reached with a small
client run in that host. Each call of a batch gets its own short deadline, so that a call
lost in a partition costs one call's budget, not the batch's.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CageProcess, Cluster, config_source, module_source, wait_until
from lan import Host, Lan
from pmnc.rpc.locator import EXPIRY_PERIODS, FAIL_HOLD

UDP_PORT = 12480  # every host is a fresh namespace, so a fixed port cannot clash
STATIC_PORT = 47100
ADVERTISE_PERIOD = 1.0  # seconds between adverts
EXPIRY = EXPIRY_PERIODS * ADVERTISE_PERIOD  # an instance whose adverts stop is gone after this
DISCOVERY_TIMEOUT = 1.0  # seconds a call may spend finding and connecting to an instance
CALL_TIMEOUT = 2.0  # the deadline of each call the runner makes

PROBE = module_source("""
    import os

    def whoami():
        caller = pmnc.request.parameters["auth_tokens"]["peer_cage"]
        pmnc.log.message(f"probe from cage {caller}")
        return {"node": __node__, "pid": os.getpid()}
""", ["whoami"])

# GET /calls?cage=worker&n=10 makes n calls one after another, each with its own deadline,
# and lists what each did; GET /where?cage=worker lists the instances the runner knows.
RUNNER = module_source("""
    import json
    import time
    import urllib.parse

    from pmnc.request import Request, attached

    def process_request(request, response):
        url = urllib.parse.urlsplit(request["url"])
        query = dict(urllib.parse.parse_qsl(url.query))
        cage = query.get("cage", "worker")
        if url.path == "/calls":
            result = [call(cage, float(query["timeout"])) for _ in range(int(query.get("n", "1")))]
        else:
            result = [{"node": loc.node, "host": loc.host, "port": loc.port, "source": loc.source}
                      for loc in pmnc._services.cluster.get().locator.locations(cage)]
        response["content"] = json.dumps(result).encode()
        response["headers"]["content-type"] = "application/json"

    def call(cage, timeout):
        start = time.monotonic()
        with attached(Request(timeout=timeout, interface="probe", protocol="probe")):
            try:
                node = pmnc(cage).probe.whoami()["node"]
            except Exception as e:
                return {"error": f"{type(e).__name__}: {e}", "took": time.monotonic() - start}
        return {"node": node, "took": time.monotonic() - start}
""", ["process_request"])

FETCH = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=60).read().decode())"

# Prints "<flock> <cage> valid|forged" of the first discovery packet about cage argv[2]
# heard on UDP port argv[1], checking its MAC with the cluster key in file argv[3].
SNIFF = """
import hashlib, hmac, socket, sys, msgpack
key = open(sys.argv[3], "rb").read()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", int(sys.argv[1])))
while True:
    packet = s.recv(2048)
    magic, mac, body = packet[:5], packet[5:21], packet[21:]
    kind, flock, instance, cage, *_ = msgpack.unpackb(body)
    if cage == sys.argv[2]:
        valid = hmac.compare_digest(mac, hmac.new(key, magic + body, hashlib.sha256).digest()[:16])
        print(flock, cage, "valid" if valid else "forged")
        break
"""


def cluster_config(**overrides: Any) -> str:
    config: dict[str, Any] = {
        "flock_id": "DEFAULT", "ssl_keys_dir": None, "advertise_period": ADVERTISE_PERIOD,
        "discovery_timeout": DISCOVERY_TIMEOUT, "exact_locations": {}}
    config.update(overrides)
    return config_source(config)


class Net:
    """The LAN, the tree and its cages: workers on hosts 1 and 2, the runner on host 0."""

    def __init__(self, lan: Lan, cluster: Cluster) -> None:
        self.lan, self.cluster = lan, cluster
        self.hosts = lan.hosts
        self.broadcast = (f"0.0.0.0/{lan.broadcast}", UDP_PORT)
        cluster.shared("config_cluster.py", cluster_config(broadcast_address=self.broadcast))
        cluster.shared("config_interface_rpc.py", config_source({
            "protocol": "rpc", "listener_address": ("0.0.0.0", 0), "max_connections": 200,
            "idle_timeout": 600.0, "deny_modules": ("config_*", "protocol_*", "interface_*")}))
        cluster.shared("probe.py", PROBE)
        cluster.cage("worker")
        cluster.cage("runner", {"interface_http.py": RUNNER, "config_interface_http.py": config_source({
            "protocol": "http", "listener_address": ("127.0.0.1", 0), "max_connections": 10})},
            interfaces=("http",), request_timeout=60.0)
        self.runner: CageProcess | None = None
        self.http_port = 0

    def start(self, cage: str, host: int) -> CageProcess:
        return self.cluster.start(cage, node=f"h{host}", prefix=self.hosts[host].prefix)

    def start_runner(self) -> CageProcess:
        self.runner = self.start("runner", 0)
        self.http_port = self.runner.port("http")
        return self.runner

    def get(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        return json.loads(self.hosts[0].check([sys.executable, "-c", FETCH, url], timeout=60.0))

    def calls(self, n: int, cage: str = "worker", timeout: float = CALL_TIMEOUT) -> list[dict[str, Any]]:
        """n calls from the runner, one after another: {"node": ..} or {"error": ..}, and "took"."""
        return self.get(f"/calls?cage={cage}&n={n}&timeout={timeout}")  # type: ignore[no-any-return]

    def where(self, cage: str = "worker") -> list[dict[str, Any]]:
        """The instances of `cage` the runner knows now."""
        return self.get(f"/where?cage={cage}")  # type: ignore[no-any-return]

    def known_nodes(self, cage: str = "worker") -> set[str]:
        return {loc["node"] for loc in self.where(cage)}


@pytest.fixture
def net(lan: Any, cluster: Cluster) -> Iterator[Net]:
    # `lan` is set up before `cluster`, so the cages are killed before the namespaces go.
    yield Net(lan(3), cluster)


def nodes(results: list[dict[str, Any]]) -> Counter[str]:
    return Counter(r.get("node", "error") for r in results)


def errors(results: list[dict[str, Any]]) -> list[str]:
    return [r["error"] for r in results if "error" in r]


# --- discovery ------------------------------------------------------------------------------


def test_a_worker_on_another_host_is_found_by_broadcast(net: Net) -> None:
    _, h1, _ = net.hosts
    worker = net.start("worker", 1)
    runner = net.start_runner()

    # The runner knows nobody at its first call: it broadcasts a discover, which the
    # worker answers with an advert, within the discovery timeout.
    [first] = net.calls(1)
    assert first["node"] == "h1", first
    assert first["took"] < DISCOVERY_TIMEOUT, first
    assert worker.wait_for_log(r"probe from cage (\w+)").group(1) == "runner"
    assert f"discovery: flock DEFAULT on UDP {net.lan.broadcast}:{UDP_PORT}" in runner.log_text()

    # The worker's entry in the shared local registry is there, but it belongs to another
    # network namespace: the runner knows the worker from the LAN, at host 1's address.
    registry = net.cluster.root / "cages" / ".registry" / "DEFAULT" / "worker"
    assert len(list(registry.glob("*.json"))) == 1
    port = int(worker.wait_for_log(r"interface rpc listens on ssl://0\.0\.0\.0:(\d+)/").group(1))
    assert net.where() == [{"node": "h1", "host": h1.ip, "port": port, "source": "lan"}]


def test_calls_spread_over_instances_on_two_hosts(net: Net) -> None:
    net.start("worker", 1)
    net.start("worker", 2)
    net.start_runner()
    net.calls(1)
    wait_until(lambda: net.known_nodes() == {"h1", "h2"}, EXPIRY, message="both workers known")

    spread = nodes(net.calls(30))
    assert set(spread) == {"h1", "h2"}, spread
    assert min(spread.values()) >= 3, spread  # a fair coin: fewer than 3 of 30 is a 1e-6 chance


# --- failures -------------------------------------------------------------------------------


def test_a_partitioned_host_is_skipped_and_takes_load_again_after_link_up(net: Net) -> None:
    _, h1, h2 = net.hosts
    net.start("worker", 1)
    net.start("worker", 2)
    net.start_runner()
    net.calls(1)
    wait_until(lambda: net.known_nodes() == {"h1", "h2"}, EXPIRY, message="both workers known")
    assert set(nodes(net.calls(20))) == {"h1", "h2"}  # the runner now holds a connection to each

    h2.link_down()
    # Calls go on. One sent to host 2 on the open connection is lost: it fails at its own
    # deadline, naming where it went (the runner cannot tell a lost call from a slow one);
    # a new connection to host 2 fails within the discovery timeout and the call moves on to
    # host 1. Host 2 leaves the table at once (a failed connect) or when its adverts stop
    # (3 periods).
    during: list[dict[str, Any]] = []

    def h2_forgotten() -> bool:
        during.extend(net.calls(5))
        return "h2" not in net.known_nodes()

    wait_until(h2_forgotten, EXPIRY + 2 * CALL_TIMEOUT, interval=0, message="h2 forgotten")
    assert set(nodes(during)) == {"h1", "error"}, during
    for result in during:
        assert result["took"] < CALL_TIMEOUT + 0.5, result
    for error in errors(during):
        assert "cage h2.worker" in error and h2.ip not in error, during  # the address only in the log
    window = net.calls(20)
    assert nodes(window) == {"h1": 20}, window
    assert all(r["took"] < 0.5 for r in window), window

    h2.link_up()
    # Host 2's adverts bring it back; an instance a call could not connect to is skipped
    # for FAIL_HOLD seconds after that failure, adverts or not, so allow for that.
    wait_until(lambda: nodes(net.calls(10))["h2"], FAIL_HOLD + EXPIRY,
               message="host 2 answering again")
    assert set(nodes(net.calls(30))) == {"h1", "h2"}
    assert {loc["host"] for loc in net.where()} == {h1.ip, h2.ip}


def _dead(pid: int) -> bool:
    """Gone, or a zombie nobody reaps (its sockets are closed either way)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def refused_connections(host: Host) -> int:
    """TCP resets `host` has sent: one for each connection attempt to a port nobody listens on."""
    rows = [line.split() for line in host.check(["cat", "/proc/net/snmp"]).splitlines() if line.startswith("Tcp:")]
    names, values = rows
    return int(values[names.index("OutRsts")])


def test_a_crashed_instance_is_dropped_and_never_tried_again(net: Net) -> None:
    _, h1, _ = net.hosts
    crashing = net.start("worker", 1)
    net.start("worker", 2)
    net.start_runner()
    net.calls(1)
    wait_until(lambda: net.known_nodes() == {"h1", "h2"}, EXPIRY, message="both workers known")
    assert set(nodes(net.calls(20))) == {"h1", "h2"}

    # kill -9 with no goodbye: the supervisor is frozen first, so that it neither restarts
    # the cage nor lets it see its stdin close and stop gracefully; then both are killed.
    assert crashing.process is not None
    cage_pid = crashing.child_pids()[-1]
    os.kill(crashing.process.pid, signal.SIGSTOP)
    os.kill(cage_pid, signal.SIGKILL)
    crashing.process.kill()
    crashing.process.wait(10)
    wait_until(lambda: _dead(cage_pid), 5.0, message="the cage process dead")
    assert "shutting down" not in crashing.log_text()

    # Calls go on at once: the connection to the dead instance is found closed before a
    # call goes out on it, a new one is refused, the next instance takes the call, and the
    # dead one is skipped from then on.
    refused = refused_connections(h1)
    after = net.calls(20)
    assert set(nodes(after)) <= {"h2", "error"}, after
    assert all(r["took"] < 0.5 for r in after), after
    assert all("h1.worker" in e for e in errors(after)), after
    assert refused_connections(h1) > refused  # it was tried, once
    assert net.known_nodes() == {"h2"}

    # No call tries it again, and once its adverts are overdue it is gone for good.
    refused = refused_connections(h1)
    deadline = time.monotonic() + EXPIRY
    while time.monotonic() < deadline:
        window = net.calls(10)
        assert nodes(window) == {"h2": 10}, window
        assert all(r["took"] < 0.5 for r in window), window
    assert refused_connections(h1) == refused
    assert net.known_nodes() == {"h2"}


def test_a_stopped_instance_says_goodbye(net: Net) -> None:
    stopping = net.start("worker", 1)
    net.start("worker", 2)
    net.start_runner()
    net.calls(1)
    wait_until(lambda: net.known_nodes() == {"h1", "h2"}, EXPIRY, message="both workers known")

    assert stopping.stop() == 0
    # Its goodbye removes it at once, long before its entry would expire.
    wait_until(lambda: net.known_nodes() == {"h2"}, ADVERTISE_PERIOD, message="h1 gone")
    assert nodes(net.calls(10)) == {"h2": 10}


# --- configuration --------------------------------------------------------------------------


def test_static_locations_need_no_broadcast(net: Net) -> None:
    _, h1, _ = net.hosts
    net.cluster.shared("config_cluster.py", cluster_config(
        broadcast_address=None, exact_locations={"worker": (f"{h1.ip}:{STATIC_PORT}",)}))
    net.cluster.cage("worker", {"config_interface_rpc.py": config_source({
        "protocol": "rpc", "listener_address": ("0.0.0.0", STATIC_PORT)})})
    worker = net.start("worker", 1)
    runner = net.start_runner()

    assert nodes(net.calls(5)) == {"h1": 5}
    assert worker.wait_for_log(r"probe from cage (\w+)").group(1) == "runner"
    assert net.where() == [{"node": h1.ip, "host": h1.ip, "port": STATIC_PORT, "source": "static"}]
    assert "discovery:" not in runner.log_text() + worker.log_text()


def test_a_cage_of_another_flock_is_not_found(net: Net) -> None:
    h0, _, _ = net.hosts
    net.cluster.cage("stranger", {"config_cluster.py": cluster_config(flock_id="OTHER",
                                                                      broadcast_address=net.broadcast)})
    stranger = net.start("stranger", 1)
    net.start("worker", 2)
    net.start_runner()
    assert nodes(net.calls(1)) == {"h2": 1}  # the runner hears the LAN

    # The stranger's adverts do reach host 0, MACed with the cluster key all these cages
    # share, but they name flock OTHER.
    key = net.cluster.root / "cages" / ".shared" / "ssl_keys" / "cluster.key"
    heard = h0.check([sys.executable, "-c", SNIFF, str(UDP_PORT), "stranger", str(key)],
                     timeout=EXPIRY)
    assert heard.split() == ["OTHER", "stranger", "valid"]

    [result] = net.calls(1, cage="stranger")
    assert f"no instance of cage stranger has been found in {DISCOVERY_TIMEOUT:.1f}s" in result["error"], result
    assert net.where("stranger") == []
    assert "probe from cage" not in stranger.log_text()
