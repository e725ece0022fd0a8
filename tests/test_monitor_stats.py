"""The statistics of the monitor (monitor/stats.py): percentiles on known data, windows rolling
over with a controllable clock, the original's event/sample keys, threads, and the hooks that
feed it in a real cage (the intake's end, each resource call)."""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import InProcessCage, config_source, http_config, http_request, module_source, wait_until
from pmnc.monitor import stats as stats_module
from pmnc.monitor.stats import BUCKETS, FOLD_AT, Statistics

T0 = 60 * 28_333_334  # epoch seconds at the start of a minute (so of a 10-second slot too)
MS = 0.001


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def fresh(t: float = T0) -> tuple[Statistics, Clock]:
    clock = Clock(t)
    return Statistics(clock=clock), clock


def interface(stats: Statistics, name: str = "http") -> dict[str, Any]:
    series: dict[str, Any] = stats.snapshot()["interfaces"][name]
    return series


def nearest_rank(values: list[float], p: int) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p * len(ordered) / 100)) - 1]


# --- percentiles -----------------------------------------------------------------------------


def test_percentiles_of_1_to_100_ms() -> None:
    stats, _ = fresh()
    values = [i * MS for i in range(1, 101)]
    random.Random(1).shuffle(values)
    for v in values:
        stats.request("http", 0.0, v, v, True)
    processing = interface(stats)["readings"]["processing"]
    assert processing["count"] == 100
    assert (processing["p50"], processing["p95"], processing["p99"]) == (0.05, 0.095, 0.099)
    assert processing["max"] == 0.1
    assert processing["sum"] == pytest.approx(5.05)
    current = interface(stats)["minutes"][-1]["processing"]
    assert current == processing  # one slot: the same data


def test_percentiles_of_a_skewed_set() -> None:
    stats, _ = fresh()
    values = [2 * MS] * 950 + [30 * MS] * 40 + [1.5] * 9 + [7.25]
    random.Random(2).shuffle(values)
    for v in values:
        stats.request("http", v, v, v, v < 1)
    series = interface(stats)
    response = series["readings"]["response"]
    assert (response["p50"], response["p95"], response["p99"], response["max"]) == (0.002, 0.002, 0.03, 7.25)
    assert (series["success"], series["failure"]) == (990, 10)
    for p in (50, 95, 99):
        assert response[f"p{p}"] == nearest_rank(values, p)


def test_percentiles_match_nearest_rank_on_three_digit_data() -> None:
    stats, _ = fresh()
    rng = random.Random(3)
    values = [rng.randint(100, 999) * 10 ** rng.randint(-6, -2) for _ in range(5000)]
    for v in values:
        stats.resource("db", v, v, True)
    pending = stats.snapshot()["resources"]["db"]["readings"]["pending"]
    for p in (50, 95, 99):
        assert pending[f"p{p}"] == pytest.approx(nearest_rank(values, p), rel=1e-12)


def test_values_are_rounded_to_three_significant_digits_in_microseconds() -> None:
    stats, _ = fresh()
    for v in (0.0012345, 1.23456, 0.0000004, 0.0000126, -0.5):
        stats.resource(f"r{v}", v, v, True)
    seen = {name: s["readings"]["processing"]["p50"] for name, s in stats.snapshot()["resources"].items()}
    assert seen == {"r0.0012345": 0.00123, "r1.23456": 1.23, "r4e-07": 0.0, "r1.26e-05": 0.000013, "r-0.5": 0.0}
    # the maximum and the sum are exact
    assert stats.snapshot()["resources"]["r1.23456"]["readings"]["processing"]["max"] == 1.23456


def test_readings_that_are_no_durations_do_not_break_the_statistics() -> None:
    stats, _ = fresh()
    for v in (math.nan, math.inf, 1e300, -1.0, 0.002):
        stats.request("http", v, v, v, True)
    response = interface(stats)["readings"]["response"]
    assert response["count"] == 5
    assert (response["p50"], response["max"]) == (0.002, 1e6)
    assert math.isfinite(response["sum"])


def test_a_request_that_never_ran_has_no_processing_time() -> None:
    stats, _ = fresh()
    stats.request("http", 0.5, None, 0.5, False)
    stats.request("http", 0.1, 0.2, 0.3, True)
    series = interface(stats)
    assert series["readings"]["processing"]["count"] == 1
    assert series["readings"]["pending"]["count"] == 2
    assert series["minutes"][-1]["processing"]["count"] == 1


def test_totals_in_buckets() -> None:
    stats, _ = fresh()
    for v in (0.001, 0.002, 0.003, 0.05, 0.7, 20.0):
        stats.request("http", 0.0, v, v, v < 1)
    stats.resource("db", 0.004, 0.004, False)
    totals = stats.totals()
    http = totals[("interface", "http")]
    assert (http["success"], http["failure"]) == (5, 1)
    buckets = dict(http["buckets"]["processing"])
    assert list(buckets) == list(BUCKETS)
    edges = (0.001, 0.0025, 0.005, 0.05, 1, 10)
    assert [buckets[le] for le in edges] == [1, 2, 3, 4, 5, 5]
    assert buckets[math.inf] == 6
    assert http["sum"]["processing"] == pytest.approx(20.756)
    assert set(totals[("resource", "db")]["buckets"]) == {"pending", "processing"}


# --- windows ---------------------------------------------------------------------------------


def test_slots_minutes_and_the_last_minute() -> None:
    stats, clock = fresh()
    clock.t = T0 + 5
    for _ in range(2):
        stats.request("http", 0.0, 0.01, 0.01, True)
    clock.t = T0 + 15
    for _ in range(3):
        stats.request("http", 0.0, 0.02, 0.02, False)
    clock.t = T0 + 65
    stats.request("http", 0.0, 0.03, 0.03, True)
    series = interface(stats)
    minutes, hour = series["minutes"], series["hour"]
    assert len(minutes) == len(hour) == 60
    assert [p["t"] for p in minutes[-8:]] == [T0 - 10 + 10 * i for i in range(8)]
    assert [(p["success"], p["failure"]) for p in minutes[-8:]] == [(0, 0), (2, 0), (0, 3), (0, 0), (0, 0),
                                                                      (0, 0), (0, 0), (1, 0)]
    assert minutes[-7]["processing"]["p50"] == 0.01 and minutes[-6]["processing"]["p50"] == 0.02
    assert minutes[-8]["processing"] is None and minutes[-8]["rate"] == 0.0
    assert (minutes[-7]["seconds"], minutes[-7]["rate"]) == (10, 0.2)
    assert (minutes[-1]["seconds"], minutes[-1]["rate"]) == (5, 0.2)  # the current slot: 5 s so far
    assert [p["t"] for p in hour[-2:]] == [T0, T0 + 60]
    assert [(p["success"], p["failure"]) for p in hour[-2:]] == [(2, 3), (1, 0)]
    assert hour[-2]["processing"]["count"] == 5 and hour[-2]["seconds"] == 60
    assert hour[-1]["seconds"] == 5
    last = series["last_minute"]  # the slots from T0+10 to the current one
    assert (last["t"], last["success"], last["failure"], last["seconds"]) == (T0 + 10, 1, 3, 55)
    assert (series["success"], series["failure"]) == (3, 3)


def test_the_rate_counts_only_time_since_the_statistics_began() -> None:
    stats, clock = fresh(T0 + 7)
    for _ in range(6):
        stats.request("http", 0.0, 0.01, 0.01, True)
    clock.t = T0 + 9
    assert interface(stats)["minutes"][-1]["rate"] == 3.0  # 6 requests in 2 s


def test_windows_roll_over_while_the_totals_stay() -> None:
    stats, clock = fresh()
    clock.t = T0 + 1
    stats.request("http", 0.0, 0.01, 0.01, True)
    clock.t = T0 + 9 * 60 + 55  # the first slot is still the oldest of ten minutes
    assert interface(stats)["minutes"][0]["success"] == 1
    clock.t = T0 + 10 * 60
    series = interface(stats)
    assert sum(p["success"] for p in series["minutes"]) == 0
    assert series["hour"][-11]["t"] == T0 and series["hour"][-11]["success"] == 1
    clock.t = T0 + 59 * 60 + 30
    assert interface(stats)["hour"][0]["success"] == 1
    clock.t = T0 + 60 * 60
    series = interface(stats)
    assert sum(p["success"] for p in series["hour"]) == 0
    assert series["success"] == 1 and series["readings"]["processing"]["count"] == 1


def test_a_gap_leaves_empty_slots() -> None:
    stats, clock = fresh()
    stats.request("http", 0.0, 0.01, 0.01, True)
    clock.t = T0 + 5 * 60 + 3
    stats.request("http", 0.0, 0.02, 0.02, True)
    series = interface(stats)
    assert [p["success"] for p in series["minutes"][-31:]] == [1] + [0] * 29 + [1]
    assert all(p["response"] is None for p in series["minutes"][-30:-1])
    assert [p["success"] for p in series["hour"][-6:]] == [1, 0, 0, 0, 0, 1]
    assert series["success"] == 2


def test_a_clock_moved_on_by_an_hour_clears_the_windows() -> None:
    stats, clock = fresh()
    for i in range(30):
        clock.t = T0 + 60 * i
        stats.request("http", 0.0, 0.01, 0.01, True)
    clock.t = T0 + 29 * 60 + 3600
    stats.request("http", 0.0, 0.2, 0.2, False)
    series = interface(stats)
    assert sum(p["success"] + p["failure"] for p in series["minutes"]) == 1
    assert sum(p["success"] + p["failure"] for p in series["hour"]) == 1
    assert series["hour"][-1]["failure"] == 1
    assert (series["success"], series["failure"]) == (30, 1)


def test_a_clock_set_back_starts_the_windows_afresh() -> None:
    stats, clock = fresh()
    stats.request("http", 0.0, 0.01, 0.01, True)
    clock.t = T0 - 3600
    stats.request("http", 0.0, 0.01, 0.01, False)
    series = interface(stats)
    assert [(p["t"], p["success"], p["failure"]) for p in series["minutes"][-1:]] == [(T0 - 3600, 0, 1)]
    assert sum(p["success"] for p in series["hour"]) == 0
    assert (series["success"], series["failure"]) == (1, 1)


def test_a_record_folded_after_its_slot_is_over_lands_in_its_slot() -> None:
    stats, clock = fresh()
    clock.t = T0 + 2
    stats.request("http", 0.0, 0.01, 0.01, True)
    clock.t = T0 + 25
    stats.request("http", 0.0, 0.01, 0.01, True)
    assert interface(stats)["minutes"][-3]["processing"]["p50"] == 0.01  # folded and read: T0+20 is current
    times = iter([T0 + 3] * 3)  # a worker took its time just before the slot's end, appended later
    stats.clock = lambda: next(times, T0 + 25)
    for _ in range(3):
        stats.request("http", 0.0, 0.04, 0.04, False)
    stats.clock = clock
    series = interface(stats)
    assert [(p["t"], p["success"], p["failure"]) for p in series["minutes"][-3:]] == \
        [(T0, 1, 3), (T0 + 10, 0, 0), (T0 + 20, 1, 0)]
    assert series["minutes"][-3]["processing"]["p50"] == 0.04  # what was read before is not kept
    assert (series["hour"][-1]["success"], series["hour"][-1]["failure"]) == (2, 3)
    assert (series["success"], series["failure"]) == (2, 3)
    assert series["readings"]["processing"]["p50"] == 0.04


def test_many_records_are_folded_as_they_come_by_a_thread_of_their_own() -> None:
    stats, clock = fresh()
    for i in range(10 * FOLD_AT + 7):
        clock.t = T0 + i * 0.01
        stats.request("a" if i % 3 else "b", 0.001, 0.002, 0.003, i % 5 != 0)
    wait_until(lambda: len(stats._requests) < FOLD_AT, message="the statistics thread folding what waits")
    assert any(t.name == "statistics" for t in threading.enumerate())
    snapshot = stats.snapshot()["interfaces"]
    assert sum(s["success"] + s["failure"] for s in snapshot.values()) == 10 * FOLD_AT + 7
    assert sum(s["failure"] for s in snapshot.values()) == len(range(0, 10 * FOLD_AT + 7, 5))


def test_past_the_waiting_limit_a_caller_folds_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """Should the statistics thread not keep up, what waits stays bounded all the same."""
    monkeypatch.setattr(stats_module, "WAITING_LIMIT", 3 * FOLD_AT)
    stats, _ = fresh()
    stats._folder = threading.current_thread()  # as if the statistics thread ran and never folded
    for _ in range(3 * FOLD_AT):
        stats.request("http", 0.0, 0.01, 0.01, True)
    assert len(stats._requests) == 0
    assert interface(stats)["success"] == 3 * FOLD_AT


def test_a_quiet_cages_requests_and_resource_calls_folded_together_keep_their_slots() -> None:
    """Records that waited long (a quiet cage, nobody reading) span many slots; requests and
    resource calls are folded in the order they came, so neither looks like a clock set back."""
    stats, clock = fresh()
    for i in range(30):  # one request and one call a minute, for half an hour
        clock.t = T0 + i * 60.0
        stats.request("http", 0.001, 0.02, 0.021, True)
        stats.resource("db", 0.0005, 0.004, True)
    snapshot = stats.snapshot()
    for kind, name in (("interfaces", "http"), ("resources", "db")):
        series = snapshot[kind][name]
        assert series["success"] == 30
        assert sum(p["success"] for p in series["hour"] if p) == 30
        assert sum(p["success"] for p in series["minutes"] if p) == 10  # one a minute, the last 10 minutes


# --- the original's pmnc.performance keys -------------------------------------------------------


def test_events_and_samples_of_the_original() -> None:
    stats, _ = fresh()
    stats.event("interface.foo.response_rate.success")
    stats.event("interface.foo.response_rate.success")
    stats.event("interface.foo.response_rate.failure")
    stats.event("interface.foo.request_rate")  # accepted: its outcome is another event
    stats.event("resource.db-1.transaction_rate.failure")
    stats.event("resource.db-1.odd_rate.success")
    stats.sample("interface.foo.pending_time", 12)
    stats.sample("interface.foo.processing_time.success", 5)
    stats.sample("interface.foo.response_time.failure", 250.5)
    stats.sample("resource.db-1.queue_time", 7)
    snapshot = stats.snapshot()
    foo, db = snapshot["interfaces"]["foo"], snapshot["resources"]["db-1"]
    assert (foo["success"], foo["failure"], foo["events"]) == (2, 1, {"request_rate": 1})
    assert foo["minutes"][-1]["success"] == 2
    readings = foo["readings"]
    assert (readings["pending"]["p50"], readings["processing"]["p50"], readings["response"]["p50"]) == \
        (0.012, 0.005, 0.251)  # 250.5 ms: three significant digits, half up
    assert readings["response"]["max"] == 0.2505
    assert (db["success"], db["failure"], db["events"]) == (0, 1, {"odd_rate.success": 1})
    assert db["readings"]["queue_time"]["p50"] == 0.007


@pytest.mark.parametrize("key", [
    "foo", "interface.foo", "interface.foo.bar", "interface..x_rate", "interfaces.foo.x_rate",
    "interface.foo.x_rate.ok", "interface.foo.x_time", "interface.f o.x_rate", "interface.foo.x_rate.success.x",
    "resource.a.b.c_rate", "interface.foo._rate", "interface." + "n" * 200 + ".x_rate", "",
])
def test_a_malformed_event_key_is_refused(key: str) -> None:
    stats, _ = fresh()
    with pytest.raises(ValueError, match="not a performance key"):
        stats.event(key)
    assert stats.snapshot() == {"interfaces": {}, "resources": {}}


@pytest.mark.parametrize(("key", "ms"), [
    ("interface.foo.x_rate", 1), ("interface.foo.pending", 1), (None, 1),
    ("interface.foo.pending_time", -1), ("interface.foo.pending_time", math.nan),
    ("interface.foo.pending_time", math.inf), ("interface.foo.pending_time", "5"),
    ("interface.foo.pending_time", True),
])
def test_a_malformed_sample_is_refused(key: Any, ms: Any) -> None:
    stats, _ = fresh()
    with pytest.raises(ValueError):
        stats.sample(key, ms)


# --- switched off, and threads -------------------------------------------------------------------


def test_disabled_statistics_take_nothing() -> None:
    stats, _ = fresh()
    stats.enabled = False
    for _ in range(2 * FOLD_AT):
        stats.request("http", 0.0, 0.01, 0.01, True)
        stats.resource("db", 0.0, 0.01, True)
    stats.event("interface.http.response_rate.success")
    stats.sample("interface.http.pending_time", 3)
    assert stats.snapshot() == {"interfaces": {}, "resources": {}}
    assert stats.totals() == {}
    with pytest.raises(ValueError):  # a wrong key is the caller's bug whether counted or not
        stats.event("nonsense")


def test_many_threads_count_exactly() -> None:
    stats = Statistics()
    threads_, each = 8, 5000
    barrier = threading.Barrier(threads_ + 1)
    stop = threading.Event()

    def record(k: int) -> None:
        barrier.wait()
        for i in range(each):
            if i % 2:
                stats.request(f"i{k % 2}", 0.001, 0.002, 0.003, i % 4 != 1)
            else:
                stats.resource("db", 0.001, 0.002, i % 4 != 0)

    def read() -> None:
        barrier.wait()
        while not stop.is_set():
            stats.snapshot()
            stats.totals()

    workers = [threading.Thread(target=record, args=(k,)) for k in range(threads_)]
    reader = threading.Thread(target=read)
    for thread in [*workers, reader]:
        thread.start()
    for thread in workers:
        thread.join()
    stop.set()
    reader.join()
    snapshot = stats.snapshot()
    for name in ("i0", "i1"):
        series = snapshot["interfaces"][name]
        assert (series["success"], series["failure"]) == (threads_ // 2 * each // 4, threads_ // 2 * each // 4)
        assert series["readings"]["response"]["count"] == threads_ // 2 * each // 2
    db = snapshot["resources"]["db"]
    assert (db["success"], db["failure"]) == (threads_ * each // 4, threads_ * each // 4)
    assert stats.totals()[("resource", "db")]["buckets"]["processing"][-1][1] == threads_ * each // 2


# --- the hooks, in a real cage ------------------------------------------------------------------

HANDLER = module_source("""
    import os
    import time

    def process_request(request, response):
        path, _, query = request["url"].partition("?")
        if path == "/boom":
            raise ValueError("boom")
        if path == "/gate":  # busy until the test creates the file, ignoring the deadline
            end = time.monotonic() + 10.0
            while not os.path.exists(query) and time.monotonic() < end:
                time.sleep(0.01)
        elif path == "/void":
            pmnc.transaction.void.execute(time.sleep, float(query))
        elif path == "/void-failure":
            pmnc.transaction.void.failure()
        elif path == "/state":
            pmnc.transaction.state.set("key", query)
        elif path == "/broken":
            pmnc.transaction.broken.execute()
        response["content"] = "ok"
        response["headers"]["content-type"] = "text/plain"
""", ["process_request"])

BROKEN = """config = dict(protocol="callable", connect=lambda: 1 / 0, execute=lambda resource: None, pool__size=2)
# EOF
"""


def start(in_process_cage: Callable[..., InProcessCage], **kwargs: Any) -> InProcessCage:
    files = {"interface_http.py": HANDLER, "config_resource_broken.py": BROKEN, **kwargs.pop("files", {})}
    return in_process_cage(interfaces={"http": http_config()}, files=files, **kwargs)


def http_series(cage: InProcessCage) -> dict[str, Any]:
    series: dict[str, Any] = cage.cage.runtime.statistics.snapshot()["interfaces"]["http"]
    return series


def test_requests_through_http_are_counted_exactly(in_process_cage: Callable[..., InProcessCage]) -> None:
    cage = start(in_process_cage)
    port = cage.address()[1]
    for path, status in [("/", 200)] * 5 + [("/boom", 500)] * 3:
        assert http_request(port, path)[0] == status
    series = wait_until(lambda: (s := http_series(cage))["success"] + s["failure"] == 8 and s)
    assert (series["success"], series["failure"]) == (5, 3)
    assert (series["last_minute"]["success"], series["last_minute"]["failure"]) == (5, 3)
    readings = series["readings"]
    assert readings["pending"]["count"] == readings["processing"]["count"] == readings["response"]["count"] == 8
    assert 0 < readings["processing"]["max"] <= readings["response"]["max"] < 1.0
    assert cage.cage.runtime.statistics.snapshot()["resources"] == {}


def test_a_request_expired_in_the_queue_is_a_failure_that_never_ran(
        in_process_cage: Callable[..., InProcessCage], tmp_path: Path) -> None:
    cage = start(in_process_cage, thread_count=1, request_timeout=1.0)
    port, gate = cage.address()[1], tmp_path / "gate"
    workers = cage.cage.runtime.workers
    answers: list[int] = []
    first = threading.Thread(target=lambda: answers.append(http_request(port, f"/gate?{gate}")[0]))
    first.start()
    wait_until(lambda: workers.busy == 1, message="the first request running")
    assert http_request(port, "/")[0] == 504  # queued behind it until its deadline
    first.join(5.0)
    gate.touch()
    wait_until(lambda: workers.busy == 0, message="the first request's handler done")
    assert answers == [504]
    series = http_series(cage)
    assert (series["success"], series["failure"]) == (0, 2)
    readings = series["readings"]
    assert readings["processing"]["count"] == 1  # the one that ran: until its deadline
    assert 0.7 <= readings["processing"]["max"] <= 1.5
    assert readings["pending"]["count"] == readings["response"]["count"] == 2
    assert 0.9 <= readings["pending"]["max"] <= 1.5  # the one that never ran waited until its deadline


def test_resource_calls_are_counted_with_their_time(in_process_cage: Callable[..., InProcessCage]) -> None:
    cage = start(in_process_cage)
    port = cage.address()[1]
    for path, status in [("/void?0.05", 200)] * 3 + [("/void-failure", 500), ("/state?1", 200), ("/broken", 500)]:
        assert http_request(port, path)[0] == status
    resources = cage.cage.runtime.statistics.snapshot()["resources"]
    void = resources["void"]
    assert (void["success"], void["failure"]) == (3, 1)
    processing = void["readings"]["processing"]
    assert processing["count"] == 4
    # the sleeps, begin_transaction included; p50 is kept to three significant digits, rounded
    # half up, so it may be above the exact max by that rounding (50.18 ms is 50.2 ms)
    assert 0.05 <= processing["p50"] <= processing["max"] * 1.005 and processing["max"] < 0.5
    assert 0 <= void["readings"]["pending"]["max"] < 0.5
    assert (resources["state"]["success"], resources["state"]["failure"]) == (1, 0)  # run inline
    broken = resources["broken"]  # never connected: a failure that took no processing
    assert (broken["success"], broken["failure"], broken["readings"]["processing"]["max"]) == (0, 1, 0.0)
    http = http_series(cage)
    assert (http["success"], http["failure"]) == (4, 2)
    assert http["readings"]["processing"]["max"] >= 0.05


def test_statistics_switched_off_in_config_interfaces(in_process_cage: Callable[..., InProcessCage]) -> None:
    settings = config_source({"interfaces": ("http",), "request_timeout": 10.0, "thread_count": 10,
                              "statistics": False})
    cage = start(in_process_cage, files={"config_interfaces.py": settings})
    port = cage.address()[1]
    assert http_request(port, "/")[0] == 200
    assert http_request(port, "/void?0")[0] == 200
    assert cage.cage.runtime.statistics.snapshot() == {"interfaces": {}, "resources": {}}
