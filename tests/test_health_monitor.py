"""The health monitor (monitor/health.py): real cage processes watched by a cage named
health_monitor - up, one lost probe that is not a down, a kill reported down within two probe
periods with cage_down called once, a restart, the headline figures each cage answers over
rpc (no cage module can shadow them), the status and the cluster page."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from conftest import (
    ROOT,
    CageProcess,
    Cluster,
    InProcessCage,
    config_source,
    http_request,
    make_tree,
    module_source,
    wait_until,
    write_file,
)
from peers import free_port
from pmnc.monitor.health import _checked_headline, cluster_page, start_health_monitor
from pmnc.request import Request, attached
from pmnc.rpc.locator import Locator

PERIOD = 1.0  # the monitor's probe_period in these tests
HAVE_PAGES = (ROOT / "lib" / "pmnc" / "protocols" / "performance.py").exists()

# The monitor's own hooks: every call recorded, one JSON line each.
RECORDING_HOOKS = module_source("""
    import json
    import os
    import time

    def _record(*what):
        with open(os.path.join(__cage_dir__, "events.jsonl"), "a") as f:
            f.write(json.dumps([time.time(), *what]) + "\\n")

    def probe() -> dict:
        return {}

    def notify(timestamp, node, cage, level, message):
        _record("notify", node, cage, message)

    def cage_up(node: str, cage: str, probe_result: dict):
        _record("up", node, cage, probe_result)

    def cage_down(node: str, cage: str):
        _record("down", node, cage)
""", ["probe", "notify", "cage_up", "cage_down"])

# A watched cage's probe: fails once when told to (a lost probe), and answers with a version
# a test can change; it counts the probes it has seen.
COUNTING_PROBE = module_source("""
    import os

    def _path(name):
        return os.path.join(__cage_dir__, name)

    def probe() -> dict:
        count = int(open(_path("probes")).read()) if os.path.exists(_path("probes")) else 0
        with open(_path("probes"), "w") as f:
            f.write(str(count + 1))
        if os.path.exists(_path("fail_once")):
            os.remove(_path("fail_once"))
            raise RuntimeError("this probe is lost")
        version = open(_path("version")).read() if os.path.exists(_path("version")) else "1"
        return {"version": version}
""", ["probe"])

# A cage module by the framework's name: it must not answer performance.headline().
SHADOW = module_source("""
    def headline():
        return {"requests_per_second": 12345, "shadow": True}
""", ["headline"])


def monitor_files(probe_period: float = PERIOD) -> dict[str, str]:
    return {"health_monitor_event.py": RECORDING_HOOKS,
            "config_health_monitor.py": config_source({"probe_period": probe_period, "down_after": 2})}


def events(folder: Path) -> list[list[Any]]:
    path = folder / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def of(folder: Path, kind: str, cage: str) -> list[list[Any]]:
    return [e for e in events(folder) if e[1] == kind and e[3] == cage]


def probes(folder: Path) -> int:
    path = folder / "probes"
    return int(path.read_text() or 0) if path.exists() else 0


def kill_cage_process(process: Any) -> int:
    """SIGKILL to the cage process (its supervisor restarts it): its pid."""
    pid = process.child_pids()[-1]
    os.kill(pid, signal.SIGKILL)
    return pid


def test_a_real_monitor_reports_up_down_and_restarted_with_hysteresis(cluster: Cluster) -> None:
    interfaces = ("rpc", "performance") if HAVE_PAGES else ("rpc",)
    monitor = cluster.cage("health_monitor", monitor_files(), interfaces=interfaces)
    cluster.cage("alpha")
    beta = cluster.cage("beta", {"health_monitor_event.py": COUNTING_PROBE})
    cluster.cage("gamma")
    processes = {name: cluster.start(name) for name in ("alpha", "beta", "gamma")}
    watcher = cluster.start("health_monitor")

    # all three are reported up, each once, and the monitor does not probe itself
    wait_until(lambda: all(of(monitor, "up", c) for c in ("alpha", "beta", "gamma")), 10, message="all up")
    assert of(monitor, "up", "beta")[0][4] == {"version": "1"}  # what probe() returned
    assert not of(monitor, "up", "health_monitor")

    # one lost probe is not a down: two more probes after it, and no cage_down
    (beta / "fail_once").write_text("")
    wait_until(lambda: not (beta / "fail_once").exists(), 5, message="the lost probe")
    seen = probes(beta)
    wait_until(lambda: probes(beta) >= seen + 2, 5, message="two probes after the lost one")
    assert not of(monitor, "down", "beta")
    assert "probe of" in watcher.log_text() and "(1 of 2)" in watcher.log_text()

    # a probe that answers differently is a cage_up of its own
    (beta / "version").write_text("2")
    wait_until(lambda: [e for e in of(monitor, "up", "beta") if e[4] == {"version": "2"}], 5,
               message="cage_up with the new probe result")

    # killed (supervisor and cage) → down within two probe periods, after two failed probes,
    # and cage_down exactly once
    processes["gamma"].kill()
    killed = time.monotonic()
    wait_until(lambda: of(monitor, "down", "gamma"), 6, message="gamma down")
    took = time.monotonic() - killed
    assert took <= 2 * PERIOD + 1.0, f"gamma reported down {took:.1f}s after the kill"
    assert "is down after 2 failed probe(s)" in watcher.log_text()
    seen = len(events(monitor))
    wait_until(lambda: time.monotonic() - killed > 4 * PERIOD, 6)  # more passes: no second cage_down
    assert len(of(monitor, "down", "gamma")) == 1
    assert len(events(monitor)) >= seen

    # the cage process killed and restarted by its supervisor before it could be found down
    # (the monitor's config, read again each pass, now wants many failed probes): the new
    # instance at the same node.cage is "restarted" - cage_down then cage_up at once - and the
    # old one is not reported again
    write_file(monitor / "config_health_monitor.py", config_source({"probe_period": PERIOD, "down_after": 20}))
    watcher.wait_for_log("module config_health_monitor has been reloaded")
    ups = len(of(monitor, "up", "alpha"))
    kill_cage_process(processes["alpha"])
    processes["alpha"].wait_for_log("the cage is ready", count=2)
    wait_until(lambda: len(of(monitor, "up", "alpha")) > ups, 8, message="alpha up again")
    assert len(of(monitor, "down", "alpha")) == 1
    down, up = of(monitor, "down", "alpha")[0], of(monitor, "up", "alpha")[-1]
    assert 0 <= up[0] - down[0] < 0.5  # both for the one probe that found the new instance
    assert "alpha at 127.0.0.1" in watcher.log_text() and "is restarted" in watcher.log_text()
    assert not [line for line in watcher.log_text().splitlines() if "alpha" in line and "is down after" in line]
    time_after = time.monotonic()
    wait_until(lambda: time.monotonic() - time_after > 3 * PERIOD, 5)
    assert len(of(monitor, "down", "alpha")) == 1  # the old instance is not reported down a second time

    if HAVE_PAGES:  # the monitor's own page shows the cluster
        port = int(watcher.wait_for_log(r"interface performance \D+ https?://[\d.]+:(\d+)/").group(1))
        status, _, body = http_request(port, "/status.json")
        assert status == 200
        states = {(row["cage"], row["state"]) for row in json.loads(body)["cluster"]["cages"]}
        assert {("alpha", "restarted"), ("beta", "up"), ("gamma", "down")} <= states
        status, _, body = http_request(port, "/cluster")
        assert status == 200 and b"gamma" in body and b"restarted" in body


def test_status_page_and_headlines_of_an_in_process_monitor(cluster: Cluster, tmp_path: Path) -> None:
    cluster.cage("alpha", {"performance.py": SHADOW}, interfaces=("rpc", "performance") if HAVE_PAGES else ("rpc",))
    cluster.cage("beta")
    alpha = cluster.start("alpha")
    beta = cluster.start("beta")
    # known only by static locations: a cage of another install tree (its local registry is
    # not this one's) sharing the cluster's keys, and an address where nothing listens
    far_port, dead_port = free_port(), free_port()
    far = make_tree(tmp_path / "far", cage="epsilon",
                    interfaces={"rpc": {"protocol": "rpc", "listener_address": ("127.0.0.1", far_port)}})
    keys = str(cluster.root / "cages" / ".shared" / "ssl_keys")
    (far / "cages" / "epsilon" / "config_cluster.py").write_text(config_source({"ssl_keys_dir": keys}))
    epsilon = CageProcess(far, "epsilon")
    cluster.processes.append(epsilon)
    epsilon.start()
    folder = cluster.cage("health_monitor", {
        **monitor_files(), "config_cluster.py": config_source({"exact_locations": {
            "epsilon": (f"127.0.0.1:{far_port}",), "delta": (f"tcp://127.0.0.1:{dead_port}/",)}})},
        interfaces=("rpc",))
    monitor = InProcessCage(cluster.root, "health_monitor").start()
    try:
        health = monitor.cage.runtime.health
        assert health is not None

        def rows() -> dict[str, dict[str, Any]]:
            return {row["cage"]: row for row in health.status()["cages"]}

        wait_until(lambda: {"alpha", "beta"} <= {c for c, r in rows().items() if r["state"] == "up"
                                                 and r["headline"]}, 8, message="both up with headlines")
        row = rows()["alpha"]
        assert row["node"] and row["source"] == "local" and row["location"].startswith("127.0.0.1:")
        assert row["since"] <= row["last_probe"] <= time.time()
        brief = row["headline"]
        # answered by the callee itself over rpc: the cage's module `performance` is not called
        assert "shadow" not in brief and brief["requests_per_second"] != 12345
        assert brief["cage"] == "alpha" and brief["pid"] == alpha.child_pids()[-1]
        assert brief["rss_bytes"] > 1_000_000 and brief["in_flight"] == 0
        assert brief["requests_per_second"] > 0  # the probes themselves, counted as rpc requests there
        if HAVE_PAGES:  # the link to its own page
            url = alpha.wait_for_log(r"interface performance \D+ (https?://[\d.]+:\d+/)").group(1)
            assert row["page"] == brief["page"] == url
        assert rows()["beta"]["page"] is None  # no performance interface there
        assert "health_monitor" not in rows()

        page = health.page()
        assert page.startswith("<!DOCTYPE html>") and "alpha" in page and "beta" in page
        assert '<span class="state state-up">up</span>' in page

        beta.kill()
        wait_until(lambda: rows()["beta"]["state"] == "down", 6, message="beta down")
        down = rows()["beta"]
        assert down["failures"] >= 2 and "beta" in down["error"]
        assert '<span class="state state-down">down</span>' in health.page()
        assert rows()["alpha"]["state"] == "up"

        # static locations are probed and reported too: the live one with the node it names
        # in its headline, the dead one down (cage_down, though it was never seen up)
        wait_until(lambda: rows().get("epsilon", {}).get("state") == "up", 6, message="epsilon up")
        static = rows()["epsilon"]
        assert static["source"] == "static" and static["location"] == f"127.0.0.1:{far_port}"
        assert static["node"] == static["headline"]["node"] == rows()["alpha"]["node"]
        wait_until(lambda: rows().get("delta", {}).get("state") == "down", 6, message="delta down")
        assert rows()["delta"]["node"] == "127.0.0.1"
        wait_until(lambda: of(folder, "down", "delta"), 3, message="cage_down of delta")  # hooks run after

        # the process at a static location restarted (another instance id in its headline)
        kill_cage_process(epsilon)
        epsilon.wait_for_log("the cage is ready", count=2)
        wait_until(lambda: rows()["epsilon"]["state"] == "restarted", 8, message="epsilon restarted")
        wait_until(lambda: len(of(folder, "up", "epsilon")) == 2, 3, message="cage_up of the new epsilon")
        assert len(of(folder, "down", "epsilon")) == 1
    finally:
        monitor.stop()
    assert "the cage has been properly shut down" in monitor.log_text()


def test_the_default_hooks_notify(cluster: Cluster) -> None:
    cluster.cage("alpha")
    cluster.cage("health_monitor", {"config_health_monitor.py": config_source({"probe_period": PERIOD})})
    cluster.start("alpha")
    monitor = InProcessCage(cluster.root, "health_monitor").start()
    try:
        runtime = monitor.cage.runtime

        def alerts() -> list[str]:
            return [n["message"] for n in runtime.notifications.recent() if n["level"] == "ALERT"]

        wait_until(lambda: [m for m in alerts() if m.endswith(".alpha is up")], 6, message="the alert")
        # another cage's notification, re-emitted with its origin, and its time when that is off
        with attached(Request(timeout=5.0, interface="test", protocol="test")):
            runtime.loader.call("health_monitor_event", "notify", (int(time.time()), "n1", "c1", "WARNING", "now"), {})
            runtime.loader.call("health_monitor_event", "notify", (int(time.time()) - 60, "n1", "c1", "ERROR", "old"),
                                {})
        kept = {n["message"]: n for n in runtime.notifications.recent()}
        assert kept["n1.c1: now"]["level"] == "WARNING" and kept["n1.c1: now"]["source"] == "n1.c1"
        [old] = [m for m in kept if m.startswith("n1.c1 (") and m.endswith("): old")]
        assert kept[old]["level"] == "ERROR"
    finally:
        monitor.stop()


def test_only_a_cage_named_health_monitor_with_rpc_runs_one(tmp_path: Path) -> None:
    root = make_tree(tmp_path, cage="health_monitor")
    cage = InProcessCage(root, "health_monitor").start()
    try:
        assert cage.cage.runtime.health is None
        assert "the health monitor needs the rpc interface" in cage.log_text()
    finally:
        cage.stop()
    other = make_tree(tmp_path / "other", cage="sample")
    sample = InProcessCage(other, "sample").start()
    try:
        assert start_health_monitor(sample.cage.runtime) is None
    finally:
        sample.stop()


def test_what_a_probed_cage_sends_is_checked_and_the_page_escapes_everything() -> None:
    brief = _checked_headline({"requests_per_second": 2.5, "rss_bytes": True, "node": "<b>", "cage": "x" * 500,
                               "page": "javascript:alert(1)", "extra": "dropped"})
    assert brief is not None
    assert brief["requests_per_second"] == 2.5 and brief["rss_bytes"] is None
    assert brief["node"] is None and brief["cage"] is None and brief["page"] is None and "extra" not in brief
    assert _checked_headline(["not", "a", "dict"]) is None
    now = time.time()
    row = {"cage": "<b>evil</b>", "node": "n&1", "location": "127.0.0.1:1", "source": "static", "instance": "i",
           "state": "down", "last_probe": now, "since": now, "failures": 2, "error": "<img src=x>",
           "headline": None, "page": 'http://h/"><i>x'}
    page = cluster_page("health_monitor", "node", {"cages": [row], "probe_period": 1.0, "down_after": 2, "now": now})
    assert "<b>evil" not in page and "<img" not in page and '"><i>' not in page
    assert "&lt;b&gt;evil" in page and "n&amp;1" in page and "&lt;img src=x&gt;" in page
    assert '<span class="state state-down">down</span>' in page


def test_the_locator_lists_every_cage_and_instance_for_the_monitor(tmp_path: Path) -> None:
    def locator(cage: str) -> Locator:
        return Locator(cages_dir=str(tmp_path), flock="F", cage=cage, node="n", hmac_key=b"k" * 32,
                       exact_locations={"far": ("10.0.0.1:5000",)})

    worker, runner = locator("worker"), locator("runner")
    worker.publish("127.0.0.1", 4242)
    assert runner.cages() == ["far", "worker"]
    [local] = runner.listing("worker")
    assert (local.port, local.source) == (4242, "local")
    [static] = runner.listing("far")
    runner.failed(static)  # callers skip it for a while; the monitor still sees it
    assert runner.listing("far") == [static]
    worker.unpublish()
    runner._local.clear()
    assert runner.listing("worker") == []


def test_with_transport_nats_the_monitor_finds_and_probes_instances_on_nats(cluster: Cluster,
                                                                              nats_server: Any) -> None:
    """No local registry, no LAN: the instances answer a discovery on NATS (adverts MACed with
    the cluster key) and each is probed on its own subject."""
    cluster.shared("config_cluster.py", config_source({"transport": "nats", "nats_servers": (nats_server.url,)}))
    monitor = cluster.cage("health_monitor", monitor_files())
    cluster.cage("alpha", {"health_monitor_event.py": COUNTING_PROBE})
    first = cluster.start("alpha", node="n1")
    cluster.start("alpha", node="n2")
    watcher = cluster.start("health_monitor")

    def up_nodes() -> set[str]:
        return {e[2] for e in of(monitor, "up", "alpha")}

    wait_until(lambda: up_nodes() == {"n1", "n2"}, 10, message="both instances of alpha up")
    assert not (cluster.root / "cages" / ".registry" / "alpha").exists() or \
        not list((cluster.root / "cages" / ".registry" / "alpha").iterdir())  # found on NATS only

    first.kill()
    wait_until(lambda: [e for e in of(monitor, "down", "alpha") if e[2] == "n1"], 8, message="n1.alpha down")
    assert not [e for e in of(monitor, "down", "alpha") if e[2] == "n2"]
    assert "n1.alpha on NATS" in watcher.log_text()  # what the monitor's log calls it
