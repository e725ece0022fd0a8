"""pmnc.notify: notifications logged, kept, folded, rate-limited and forwarded to health_monitor;
pmnc.performance: the original's module over the cage's statistics.

The first tests drive `Notifications` with a clock of their own and a stand-in cage that
records the retried calls it is asked for; the last ones run real cages: a `sender` that
notifies, and a `health_monitor` whose own health_monitor_event.py writes down what it
receives.
"""

from __future__ import annotations

import io
import json
import re
import sqlite3
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import CageTree, Cluster, ServedLoader, config_source, http_config, module_source, wait_until
from pmnc import log
from pmnc.monitor import notify
from pmnc.monitor.notify import MAX_MESSAGE, Notifications
from test_rpc import RUNNER_HANDLER, Runner

# --- a clock, a cage and a log of the test's own ---------------------------------------------------


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Monitor:
    """`root("health_monitor", queue=...)`: records `.health_monitor_event.notify(...)`."""

    def __init__(self, calls: list[tuple[Any, ...]], target: str, queue: str | None) -> None:
        self.health_monitor_event = self
        self._calls, self._target, self._queue = calls, target, queue

    def notify(self, *args: Any) -> str:
        self._calls.append((self._target, self._queue, *args))
        return "RT-1"


class StandIn:
    """What Notifications needs of a running cage: its loader, its `pmnc` and interfaces."""

    def __init__(self, loader: ServedLoader, interfaces: tuple[str, ...] = ("rpc", "retry")) -> None:
        self.loader = loader
        self.running = set(interfaces)
        self.calls: list[tuple[Any, ...]] = []
        self.failure: Exception | None = None

    def root(self, target: str, *, queue: str | None = None) -> Monitor:
        if self.failure is not None:
            raise self.failure
        return Monitor(self.calls, target, queue)

    def interface(self, name: str) -> Any:
        return object() if name in self.running else None


class Timers:
    """A schedule that only remembers what it was asked: the test fires it."""

    def __init__(self) -> None:
        self.asked: list[tuple[float, Callable[[], None]]] = []

    def __call__(self, delay: float, action: Callable[[], None]) -> Callable[[], None]:
        self.asked.append((delay, action))
        return lambda: None


@pytest.fixture
def logged() -> Iterator[io.StringIO]:
    """What the log says at WARNING level and above."""
    text = io.StringIO()
    log.configure(None, echo=text, echo_level=log.WARNING)
    yield text
    log.configure(None, echo=sys.stderr)


def lines(text: io.StringIO, pattern: str) -> list[str]:
    return [line for line in text.getvalue().splitlines() if re.search(pattern, line)]


Made = tuple[Notifications, StandIn, Clock, Timers]


@pytest.fixture
def make(tree: CageTree) -> Callable[..., Made]:
    def make(cage: str = "sender", config: dict[str, Any] | None = None, **kwargs: Any) -> Made:
        if config is not None:
            tree.write(tree.shared, "config_notify", config)
        clock, timers = Clock(), Timers()
        notifications = Notifications(cage, "node1", clock=clock, schedule=timers)
        cage_ = StandIn(ServedLoader(str(tree.cages), "sample", "node1", settle=0.05), **kwargs)
        notifications.attach(cage_)
        return notifications, cage_, clock, timers
    return make


# --- levels, the log, the list ---------------------------------------------------------------------


def test_each_level_is_logged_kept_and_forwarded(make: Callable[..., Made], logged: io.StringIO) -> None:
    notifications, cage, clock, _ = make()
    for level in ("INFO", "WARNING", "ERROR", "ALERT"):
        notifications.add(level, f"{level.lower()} text")
        clock.now += 1.5
    assert lines(logged, r"MSG .* \[(INFO|WARNING|ERROR|ALERT)\]") == [
        line for line in logged.getvalue().splitlines() if "text" in line]
    assert [line.split("] ", 1)[1] for line in lines(logged, "text")] == [
        "[INFO] info text", "[WARNING] warning text", "[ERROR] error text", "[ALERT] alert text"]
    newest = notifications.recent(2)
    assert [(n["level"], n["message"], n["count"], n["source"]) for n in newest] == [
        ("ALERT", "alert text", 1, "node1.sender"), ("ERROR", "error text", 1, "node1.sender")]
    assert newest[0]["time"] == 1_000_004.5
    assert notifications.extract() == [  # the original's shape, oldest first
        {"timestamp": 1_000_000, "level": "INFO", "message": "info text", "count": 1},
        {"timestamp": 1_000_001, "level": "WARNING", "message": "warning text", "count": 1},
        {"timestamp": 1_000_003, "level": "ERROR", "message": "error text", "count": 1},
        {"timestamp": 1_000_004, "level": "ALERT", "message": "alert text", "count": 1}]
    assert cage.calls == [  # pmnc("health_monitor", queue="retry").health_monitor_event.notify(...)
        ("health_monitor", "retry", 1_000_000, "node1", "sender", "INFO", "info text"),
        ("health_monitor", "retry", 1_000_001, "node1", "sender", "WARNING", "warning text"),
        ("health_monitor", "retry", 1_000_003, "node1", "sender", "ERROR", "error text"),
        ("health_monitor", "retry", 1_000_004, "node1", "sender", "ALERT", "alert text")]
    assert all(type(call[2]) is int for call in cage.calls)


def test_an_unknown_level_is_refused_and_a_long_message_cut(make: Callable[..., Made]) -> None:
    notifications, cage, _, _ = make()
    with pytest.raises(ValueError, match=r"DEBUG.*INFO, WARNING, ERROR, ALERT"):
        notifications.add("DEBUG", "x")
    notifications.add("INFO", "y" * (MAX_MESSAGE * 3))
    notifications.add("INFO", 42)
    assert [len(n["message"]) for n in notifications.recent()] == [2, MAX_MESSAGE]
    assert len(cage.calls[0][-1]) == MAX_MESSAGE


def test_the_list_keeps_the_last_messages_to_keep(make: Callable[..., Made]) -> None:
    notifications, _, clock, _ = make(config={"messages_to_keep": 5})
    for i in range(12):
        notifications.add("WARNING", f"message {i}")
        clock.now += 10.0  # within the rate: every one is kept until pushed out
    assert [n["message"] for n in notifications.recent()] == [f"message {i}" for i in range(11, 6, -1)]
    assert [n["message"] for n in notifications.extract()] == [f"message {i}" for i in range(7, 12)]
    assert notifications.recent(2) == notifications.recent()[:2]


# --- repeats ---------------------------------------------------------------------------------------


def test_a_repeat_within_the_window_is_folded_into_its_entry(make: Callable[..., Made], logged: io.StringIO) -> None:
    notifications, cage, clock, _ = make()
    notifications.add("ERROR", "disk full")
    clock.now += 1.0
    notifications.add("ERROR", "queue stuck")
    for _ in range(3):
        clock.now += 5.0
        notifications.add("ERROR", "disk full")
    notifications.add("WARNING", "disk full")  # another level: another notification
    assert [(n["level"], n["message"], n["count"]) for n in notifications.recent()] == [
        ("WARNING", "disk full", 1), ("ERROR", "disk full", 4), ("ERROR", "queue stuck", 1)]
    folded = notifications.recent()[1]
    assert (folded["first"], folded["time"]) == (1_000_000.0, 1_000_016.0)
    assert len(lines(logged, r"\[ERROR\] disk full")) == 1
    assert [call[-2:] for call in cage.calls] == [("ERROR", "disk full"), ("ERROR", "queue stuck"),
                                                  ("WARNING", "disk full")]
    clock.now = 1_000_060.0  # a minute after the first: a new window, a new entry
    notifications.add("ERROR", "disk full")
    assert [(n["message"], n["count"]) for n in notifications.recent(2)] == [("disk full", 1), ("disk full", 1)]
    assert len(lines(logged, r"\[ERROR\] disk full")) == 2 and len(cage.calls) == 4


def test_a_loop_repeating_one_message_leaves_one_entry(make: Callable[..., Made], logged: io.StringIO) -> None:
    notifications, cage, clock, timers = make()
    for _ in range(10_000):
        notifications.add("ALERT", "the same")
        clock.now += 0.001
    assert [(n["message"], n["count"]) for n in notifications.recent()] == [("the same", 10_000)]
    assert len(lines(logged, "the same")) == 1 and len(cage.calls) == 1
    assert notifications.suppressed["ALERT"] == 0 and timers.asked == []


def test_dedupe_seconds_zero_folds_nothing(make: Callable[..., Made]) -> None:
    notifications, _, clock, _ = make(config={"dedupe_seconds": 0})
    for _ in range(3):
        notifications.add("INFO", "again")
        clock.now += 10.0
    assert [n["count"] for n in notifications.recent()] == [1, 1, 1]


# --- the rate limit --------------------------------------------------------------------------------


def test_a_flood_is_cut_to_the_burst_and_summarised_once_the_rate_allows(
        make: Callable[..., Made], logged: io.StringIO) -> None:
    notifications, cage, clock, timers = make()
    for i in range(10_000):
        notifications.add("INFO", f"event {i}")
    assert len(notifications.recent()) == 20  # the burst
    assert len(lines(logged, r"\[INFO\] event")) == 20 and len(cage.calls) == 20
    assert notifications.suppressed["INFO"] == 9_980
    notifications.add("ALERT", "another level has its own bucket")
    assert notifications.recent(1)[0]["message"] == "another level has its own bucket"

    [(delay, fire)] = timers.asked  # one timer, for when a token is back: 10 a minute
    assert delay == pytest.approx(6.0, abs=0.1)
    clock.now += 3.0
    fire()  # too early: nothing yet, the timer is set again
    assert not lines(logged, "suppressed") and len(timers.asked) == 2
    clock.now += 3.0
    timers.asked[-1][1]()
    summary = notifications.recent(1)[0]
    assert (summary["level"], summary["message"]) == ("INFO", "9980 notifications suppressed (more than 10 a minute)")
    assert len(lines(logged, r"MSG .*\[INFO\] 9980 notifications suppressed")) == 1
    assert cage.calls[-1][-2:] == ("INFO", summary["message"])
    assert notifications.suppressed["INFO"] == 0 and len(timers.asked) == 2  # nothing more to wait for


def test_a_sustained_loop_stays_within_the_rate(make: Callable[..., Made], logged: io.StringIO) -> None:
    notifications, cage, clock, timers = make(config={"messages_to_keep": 1000})
    for i in range(10_000):  # 100 notifications a second for 100 seconds
        notifications.add("ERROR", f"failure {i}")
        clock.now += 0.01
    clock.now += 6.0
    for _, fire in list(timers.asked):
        fire()
    published = notifications.extract()
    # the burst, then one a token (10 a minute over 106 s), the summaries among them
    assert 20 + 10 <= len(published) <= 20 + 106 * 10 / 60 + 1
    assert len(lines(logged, r"\[ERROR\]")) == len(published) == len(cage.calls)
    suppressed = sum(int(n["message"].split()[0]) for n in published if "suppressed" in n["message"])
    assert suppressed + sum(1 for n in published if "suppressed" not in n["message"]) == 10_000
    assert notifications.suppressed["ERROR"] == 0


def test_the_timer_brings_the_summary_on_its_own(tree: CageTree) -> None:
    tree.write(tree.shared, "config_notify", {"rate_per_minute": 600.0, "burst": 1})
    notifications = Notifications("sender", "node1")
    notifications.attach(StandIn(ServedLoader(str(tree.cages), "sample", "node1", settle=0.05)))
    try:
        for i in range(3):
            notifications.add("WARNING", f"w{i}")
        assert [n["message"] for n in notifications.recent()] == ["w0"]
        wait_until(lambda: len(notifications.recent()) == 2, 5.0, message="the summary")
        assert notifications.recent(1)[0]["message"] == "2 notifications suppressed (more than 600 a minute)"
    finally:
        notifications.close()


def test_each_source_has_its_own_bucket_at_the_health_monitor(make: Callable[..., Made]) -> None:
    notifications, cage, clock, timers = make(cage="health_monitor")
    for i in range(100):
        notifications.add("ERROR", f"node1.noisy: failure {i}", source="node1.noisy")
    notifications.add("ERROR", "node2.quiet: one failure", source="node2.quiet")
    notifications.add("ERROR", "its own")
    assert [(n["source"], n["message"]) for n in notifications.recent(3)] == [
        ("node1.health_monitor", "its own"), ("node2.quiet", "node2.quiet: one failure"),
        ("node1.noisy", "node1.noisy: failure 19")]
    assert notifications.suppressed["ERROR"] == 80 and cage.calls == []
    clock.now += 6.0
    timers.asked[0][1]()
    assert (notifications.recent(1)[0]["source"], notifications.recent(1)[0]["message"]) == \
        ("node1.noisy", "80 notifications suppressed (more than 10 a minute)")


def test_sources_beyond_max_buckets_share_one(make: Callable[..., Made], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notify, "MAX_BUCKETS", 3)
    notifications, _, clock, _ = make(cage="health_monitor")
    for i in range(1000):  # as many sources as messages: memory stays bounded all the same
        notifications.add("INFO", f"m{i}", source=f"node{i}.c")
    assert len(notifications._buckets) == 3 + 1
    assert len(notifications.recent()) == 3 + 20  # three sources' own, then the burst of the shared bucket
    assert notifications.suppressed["INFO"] == 1000 - 23
    clock.now += 120.0  # the three own buckets are full again: as good as new, they make room
    notifications.add("INFO", "a newcomer", source="node9.new")
    assert [n["source"] for n in notifications.recent(2)] == ["node9.new", "*"]  # and the shared one's summary
    assert notifications.recent(2)[1]["message"] == "977 notifications suppressed (more than 10 a minute)"
    assert len(notifications._buckets) == 2


# --- forwarding --------------------------------------------------------------------------------------


def test_the_health_monitor_does_not_forward_to_itself(make: Callable[..., Made]) -> None:
    notifications, cage, _, _ = make(cage="health_monitor")
    notifications.add("ALERT", "node2.worker is down")
    assert notifications.recent(1)[0]["message"] == "node2.worker is down" and cage.calls == []


@pytest.mark.parametrize("running", [(), ("rpc",), ("retry",), ("rpc", "other")])
def test_nothing_is_forwarded_without_rpc_and_the_retry_queues_interface(
        make: Callable[..., Made], running: tuple[str, ...]) -> None:
    notifications, cage, _, _ = make(interfaces=running)
    notifications.add("ERROR", "kept, not forwarded")
    assert len(notifications.recent()) == 1 and cage.calls == []


def test_the_retry_queue_is_configurable(make: Callable[..., Made]) -> None:
    notifications, cage, _, _ = make(config={"retry_queue": "alerts"}, interfaces=("rpc", "alerts"))
    notifications.add("INFO", "via alerts")
    assert cage.calls[0][:2] == ("health_monitor", "alerts")


def test_a_forwarding_failure_is_logged_not_raised(make: Callable[..., Made], logged: io.StringIO) -> None:
    notifications, cage, _, _ = make()
    cage.failure = OSError("the state file is gone")
    notifications.add("ERROR", "still kept")
    assert notifications.recent(1)[0]["message"] == "still kept"
    [error] = lines(logged, "ERR .*notification not forwarded to cage health_monitor")
    assert "the state file is gone" in error


def test_a_broken_config_is_reported_and_the_defaults_stay(make: Callable[..., Made], logged: io.StringIO) -> None:
    notifications, _, _, _ = make(config={"messages_to_keep": 0, "rate_per_minit": 5})
    notifications.add("INFO", "kept anyway")
    assert notifications.recent(1)[0]["message"] == "kept anyway"
    [error] = lines(logged, "config_notify.py cannot be used")
    assert "rate_per_minit" in error and "rate_per_minute" in error  # the typo, and what was meant


# --- pmnc.notify and pmnc.performance from a cage module ---------------------------------------------


class Recorded:
    """A stand-in for the cage's statistics: what pmnc.performance hands it."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.samples: list[tuple[str, float]] = []

    def event(self, key: str) -> None:
        self.events.append(key)

    def sample(self, key: str, ms: float) -> None:
        self.samples.append((key, ms))

    def snapshot(self) -> dict[str, Any]:
        return {"interfaces": {"foo": {"success": 1}}, "resources": {}}


ORIGINAL_MODULE = """#!/usr/bin/env python3
#-*- coding: iso-8859-1 -*-
################################################################################
# A module written for the original: it reports and notifies through pmnc.
################################################################################

__all__ = [ "process", "fail" ]

import time; from time import sleep

def process(item: str):
    pmnc.notify.info("x")
    pmnc.notify.warning("item {0:s} is late".format(item))
    pmnc.performance.event("interface.foo.request_rate")
    pmnc.performance.sample("interface.foo.pending_time", 12)
    with pmnc.performance.timing("resource.db.processing_time"):
        sleep(0.01)
    with pmnc.performance.request_processing():
        pass
    return pmnc.notify.extract(), pmnc.performance.extract()

def fail():
    with pmnc.performance.timing("resource.db.processing_time"):
        raise RuntimeError("the db is down")

# EOF
"""


def test_an_original_module_notifies_and_reports_unchanged(tree: CageTree, logged: io.StringIO) -> None:
    (tree.cage / "app.py").write_text(ORIGINAL_MODULE)
    loader = ServedLoader(str(tree.cages), "sample", "node1", settle=0.05)
    stats = Recorded()
    loader.runtime.statistics = stats  # type: ignore[assignment]  # a stand-in
    kept, extracted = loader.call("app", "process", ("A-7",), {})
    assert [(n["level"], n["message"], type(n["timestamp"])) for n in kept] == [
        ("INFO", "x", int), ("WARNING", "item A-7 is late", int)]
    assert lines(logged, r"\[INFO\] x$") and lines(logged, r"\[WARNING\] item A-7 is late$")
    assert extracted == {"interfaces": {"foo": {"success": 1}}, "resources": {}}
    assert stats.events == ["interface.foo.request_rate"]
    assert stats.samples[0] == ("interface.foo.pending_time", 12)
    key, ms = stats.samples[1]
    assert key == "resource.db.processing_time.success" and 10.0 <= ms < 1000.0
    assert len(stats.samples) == 2  # request_processing counts nothing: the lifecycle has

    with pytest.raises(RuntimeError, match="the db is down"):
        loader.call("app", "fail", (), {})
    assert stats.samples[-1][0] == "resource.db.processing_time.failure"
    assert [n["message"] for n in loader.runtime.notifications.recent()] == ["item A-7 is late", "x"]


def test_the_views_are_reachable_and_check_their_keys(tree: CageTree) -> None:
    loader = ServedLoader(str(tree.cages), "sample", "node1", settle=0.05)
    pmnc = loader.runtime.pmnc("app")
    pmnc.notify.alert("from the framework view")
    assert pmnc.notify.extract()[-1]["message"] == "from the framework view"
    with pytest.raises(ValueError, match=r"performance key 'interface\.foo\.request_rate' is not"):
        pmnc.performance.timing("interface.foo.request_rate")
    with pytest.raises(ValueError):
        pmnc.performance.timing("interface.foo.processing_time.success")  # the outcome is added at the end
    assert set(pmnc.performance.extract()) >= {"interfaces", "resources"}


def test_a_timing_shows_in_the_extracted_statistics(tree: CageTree) -> None:
    loader = ServedLoader(str(tree.cages), "sample", "node1", settle=0.05)
    pmnc = loader.runtime.pmnc("app")
    with pmnc.performance.timing("resource.db.processing_time") as timing:
        pass
    pmnc.performance.sample("interface.foo.processing_time.failure", 250)
    snapshot = pmnc.performance.extract()
    db = snapshot["resources"]["db"]["readings"]["processing"]
    assert db["count"] == 1 and db["max"] == pytest.approx(timing.elapsed_ms / 1000.0, abs=0.01)
    assert snapshot["interfaces"]["foo"]["readings"]["processing"]["max"] == pytest.approx(0.25)


# --- real cages: forwarded to health_monitor as a retried call -------------------------------------------

RECEIVER = module_source("""
    import json
    import os

    def notify(timestamp, node, cage, level, message):
        record = {"timestamp": timestamp, "node": node, "cage": cage, "level": level, "message": message,
                  "interface": pmnc.request.interface}
        with open(os.path.join(__cage_dir__, "received.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\\n")

    def cage_up(*args, **kwargs):
        pass

    def cage_down(*args, **kwargs):
        pass

    def probe():
        return {}
""", ["notify", "cage_up", "cage_down", "probe"])

FAST_RETRY = {"protocol": "retry", "retry_interval": 0.2, "queue_count": 4, "request_timeout": 1.0}


def runner_cage(cluster: Cluster, name: str, files: dict[str, str] | None = None) -> Runner:
    cluster.cage(name, {"interface_http.py": RUNNER_HANDLER, "config_interface_http.py": config_source(http_config()),
                        **(files or {})}, interfaces=("rpc", "http", "retry"))
    return Runner(cluster.start(name))


def received(cluster: Cluster) -> list[dict[str, Any]]:
    path = cluster.root / "cages" / "health_monitor" / "received.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def queued_to_monitor(cluster: Cluster, cage: str) -> int:
    """Retried calls to health_monitor_event in the cage's state file, pending or done."""
    path = cluster.root / "cages" / cage / "state" / "state.sqlite"
    if not path.exists():  # made at the first write
        return 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        [(count,)] = db.execute("SELECT COUNT(*) FROM retry WHERE module = 'health_monitor_event'")
    return int(count)


def test_a_notification_reaches_a_health_monitor_that_starts_later(cluster: Cluster) -> None:
    cluster.shared("config_interface_retry.py", config_source(FAST_RETRY))
    cluster.cage("health_monitor", {"health_monitor_event.py": RECEIVER}, interfaces=("rpc", "retry"))
    sender = runner_cage(cluster, "sender")
    kept = sender.result("""
        pmnc.notify.error("the disk is full")
        result = pmnc.notify.extract()
    """)
    assert [(n["level"], n["message"]) for n in kept] == [("ERROR", "the disk is full")]
    assert queued_to_monitor(cluster, "sender") == 1  # on disk: it outlives the monitor being down
    sender.process.wait_for_log(r"MSG .*\[ERROR\] the disk is full")
    sender.process.wait_for_log(r"WRN .*has failed, next attempt in", timeout=20.0)  # no monitor yet

    cluster.start("health_monitor")
    [got] = wait_until(lambda: received(cluster), 20.0, message="the notification at health_monitor")
    assert isinstance(got["node"], str) and got["node"]
    assert (got["cage"], got["level"], got["message"], got["interface"]) == \
        ("sender", "ERROR", "the disk is full", "retry")
    assert isinstance(got["timestamp"], int) and got["timestamp"] == kept[0]["timestamp"]

    sender.result('pmnc.notify.info("and this one straight away")')
    wait_until(lambda: len(received(cluster)) >= 2, 20.0, message="the second notification")
    assert [r["message"] for r in received(cluster)] == ["the disk is full", "and this one straight away"]


def test_the_health_monitor_cage_keeps_its_own_notifications(cluster: Cluster) -> None:
    cluster.shared("config_interface_retry.py", config_source(FAST_RETRY))
    monitor = runner_cage(cluster, "health_monitor", {"health_monitor_event.py": RECEIVER})
    kept = monitor.result("""
        pmnc.notify.alert("node2.worker is down")
        result = pmnc.notify.extract()
    """)
    assert [n["message"] for n in kept] == ["node2.worker is down"]
    monitor.process.wait_for_log(r"MSG .*\[ALERT\] node2.worker is down")
    assert queued_to_monitor(cluster, "health_monitor") == 0  # the call would be queued before extract()
