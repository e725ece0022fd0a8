"""The schedule interface: firings counted with a clock the test drives (cron and the original's
format/match, across minute, hour and day boundaries), overlapping runs, catch-up across a
restart, config errors; and a real cage running `* * * * *` for 65 s (the one slow test)."""

from __future__ import annotations

import datetime
import functools
import re
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import InProcessCage, module_source, wait_until
from pmnc.errors import ConfigError
from pmnc.protocols.schedule import CATCH_UP_MAX, Clock, Interface

T = datetime.datetime


class FakeClock(Clock):
    """Wall time the test sets. `advance` moves it on and returns once the scheduler has looked
    at the new time and is waiting again (its firings submitted)."""

    def __init__(self, start: T) -> None:
        self.t = start
        self.cond = threading.Condition()
        self.waits = 0  # times the scheduler has come to wait
        self.generation = 0  # times the time moved

    def now(self) -> T:
        with self.cond:
            return self.t

    def wait(self, seconds: float, stop: threading.Event) -> bool:
        with self.cond:
            self.waits += 1
            self.cond.notify_all()
            generation = self.generation
            while self.generation == generation and not stop.is_set():
                self.cond.wait(0.05)
        return stop.is_set()

    def waiting(self, count: int = 1) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.waits >= count, 10.0), "the scheduler never came to wait"

    def advance(self, seconds: float) -> None:
        with self.cond:
            waits = self.waits
            self.t += datetime.timedelta(seconds=seconds)
            self.generation += 1
            self.cond.notify_all()
            assert self.cond.wait_for(lambda: self.waits > waits, 10.0), "the scheduler did not come back"

    def run_to(self, end: T, step: float = 60.0, idle: Any = None) -> None:
        """Move on `step` seconds at a time to `end`; after each, wait for `idle()` (the runs over)."""
        while self.now() < end:
            self.advance(min(step, (end - self.now()).total_seconds()))
            if idle is not None:
                wait_until(idle, interval=0.0005, message="runs finished")


def handler(cage_dir: Path) -> str:
    """Writes each invocation_time to fired.txt; runs until the file `release` exists (or its deadline)."""
    return module_source(f"""
        import os, time
        def process_request(request, response):
            with open({str(cage_dir / "fired.txt")!r}, "a") as f:
                f.write(request["invocation_time"].isoformat() + "\\n")
            while not os.path.exists({str(cage_dir / "release")!r}) and pmnc.request.remain > 0.5:
                time.sleep(0.01)
    """, ["process_request"])


class Scheduled:
    """An in-process cage and schedule interfaces on it, each with a fake clock."""

    def __init__(self, cage: InProcessCage) -> None:
        self.cage = cage
        self.runtime = cage.cage.runtime
        self.fired_file = cage.cage_dir / "fired.txt"
        self.release_file = cage.cage_dir / "release"
        self.release_file.touch()
        self.started: list[Interface] = []

    def start(self, start: T, name: str = "sched", **config: Any) -> tuple[Interface, FakeClock]:
        clock = FakeClock(start)
        interface = Interface(name, self.runtime, {"request_timeout": 10.0, **config}, clock=clock)
        interface.start()
        self.started.append(interface)
        clock.waiting()
        clock.run_to = functools.partial(clock.run_to, idle=lambda: self.runtime.intake.active == 0)  # type: ignore[method-assign]
        return interface, clock

    def stop(self, interface: Interface) -> None:
        interface.cease()
        interface.stop()
        self.started.remove(interface)

    def fired(self) -> list[T]:
        """The invocation times handled, once no run is in flight."""
        wait_until(lambda: self.runtime.intake.active == 0, message="runs finished")
        if not self.fired_file.exists():
            return []
        return [T.fromisoformat(line) for line in self.fired_file.read_text().split()]

    def log(self) -> str:
        return self.cage.log_text()


@pytest.fixture
def scheduled(in_process_cage: Any, tmp_path: Path) -> Iterator[Scheduled]:
    cage_dir = tmp_path / "c0" / "tree" / "cages" / "sample"
    running = Scheduled(in_process_cage(files={"interface_sched.py": handler(cage_dir)}))
    assert running.cage.cage_dir == cage_dir
    yield running
    running.release_file.touch()
    for interface in list(running.started):
        running.stop(interface)


def minutes(first: T, count: int) -> list[T]:
    return [first + datetime.timedelta(minutes=n) for n in range(count)]


# --- firings counted with a driven clock ----------------------------------------------------


def test_every_minute_across_hour_and_day(scheduled: Scheduled) -> None:
    _, clock = scheduled.start(T(2026, 1, 14, 22, 58, 30), cron="* * * * *")
    clock.run_to(T(2026, 1, 15, 0, 28, 30))
    assert scheduled.fired() == minutes(T(2026, 1, 14, 22, 59), 90)  # 23:00 and midnight included, once each


def test_cron_daily_fires_once_a_day(scheduled: Scheduled) -> None:
    _, clock = scheduled.start(T(2026, 1, 14, 12, 0), cron="30 12 * * *")
    clock.run_to(T(2026, 1, 16, 12, 45))
    assert scheduled.fired() == [T(2026, 1, 14, 12, 30), T(2026, 1, 15, 12, 30), T(2026, 1, 16, 12, 30)]


def test_original_sample_fires_once_a_day_not_60_times(scheduled: Scheduled) -> None:
    """The original's config_interface_schedule_1.py sample: format "%H:%M", match "12:30"."""
    _, clock = scheduled.start(T(2026, 1, 14, 12, 29, 50), format="%H:%M", match="12:30")
    clock.run_to(T(2026, 1, 14, 12, 31, 10), step=1.0)  # the clock looked at every second of 12:30
    clock.run_to(T(2026, 1, 15, 12, 35))
    assert scheduled.fired() == [T(2026, 1, 14, 12, 30), T(2026, 1, 15, 12, 30)]


def test_format_match_with_seconds_and_day_change(scheduled: Scheduled) -> None:
    scheduled.start(T(2026, 1, 31, 23, 59, 0), name="seconds", format="%S", match="00|30")
    _, days = scheduled.start(T(2026, 1, 31, 23, 59, 0), format="%Y-%m-%d", match=r"\d{4}-\d\d-01")
    days.run_to(T(2026, 2, 2, 0, 30))
    assert scheduled.fired() == [T(2026, 2, 1, 0, 0, 0)]  # the month's first day, once, at its start
    assert "interface seconds: " not in scheduled.log()  # its clock did not move: nothing fired, no error


def test_format_match_every_30_seconds(scheduled: Scheduled) -> None:
    _, clock = scheduled.start(T(2026, 1, 14, 23, 59, 10), format="%S", match="00|30")
    clock.run_to(T(2026, 1, 15, 0, 1, 5), step=7.0)  # looks that do not fall on the firing seconds
    assert scheduled.fired() == [T(2026, 1, 14, 23, 59, 30), T(2026, 1, 15, 0, 0, 0), T(2026, 1, 15, 0, 0, 30),
                                 T(2026, 1, 15, 0, 1, 0)]


def test_clock_set_back_fires_nothing_twice(scheduled: Scheduled) -> None:
    _, clock = scheduled.start(T(2026, 1, 14, 1, 58), cron="* * * * *")
    clock.run_to(T(2026, 1, 14, 2, 1))
    clock.advance(-3600)  # as at the end of summer time: 01:01 comes again
    clock.run_to(T(2026, 1, 14, 2, 3))
    assert scheduled.fired() == minutes(T(2026, 1, 14, 1, 59), 5)  # 01:59 to 02:03, each once


def test_clock_jump_ahead_runs_no_burst(scheduled: Scheduled) -> None:
    _, clock = scheduled.start(T(2026, 1, 14, 10, 0, 30), cron="* * * * *")
    clock.run_to(T(2026, 1, 14, 10, 1, 30))
    clock.run_to(T(2026, 1, 14, 15, 1, 30), step=5 * 3600)  # the machine slept
    clock.run_to(T(2026, 1, 14, 15, 2, 30))
    assert scheduled.fired() == [T(2026, 1, 14, 10, 1), T(2026, 1, 14, 15, 2)]
    assert re.search(r"interface sched: 300 firing\(s\) missed while the clock jumped from 2026-01-14 10:01:30 "
                     r"are not run \(set catch_up to run them\)", scheduled.log())


def test_hour_skipped_by_dst_fires_at_once(scheduled: Scheduled) -> None:
    _, clock = scheduled.start(T(2026, 1, 14, 1, 58), cron="30 2 * * *")
    clock.run_to(T(2026, 1, 14, 1, 59))
    clock.run_to(T(2026, 1, 14, 3, 0), step=3660)  # naive local time goes 01:59 → 03:00 in one minute
    assert scheduled.fired() == [T(2026, 1, 14, 2, 30)]


# --- overlapping runs --------------------------------------------------------------------------


def test_overlapping_firing_is_skipped_with_a_warning(scheduled: Scheduled) -> None:
    scheduled.release_file.unlink()
    _, clock = scheduled.start(T(2026, 1, 14, 10, 0, 30), cron="* * * * *")
    clock.advance(60)  # 10:01: runs, and holds
    wait_until(lambda: scheduled.fired_file.exists(), message="the first run started")
    clock.advance(60)  # 10:02: the 10:01 run still going
    scheduled.release_file.touch()
    wait_until(lambda: scheduled.runtime.intake.active == 0, message="the first run over")
    clock.advance(60)  # 10:03
    assert scheduled.fired() == [T(2026, 1, 14, 10, 1), T(2026, 1, 14, 10, 3)]
    assert "interface sched: the firing at 2026-01-14 10:02:00 is skipped, the previous run is still going " \
           "(set allow_overlap to run them at once)" in scheduled.log()


def test_allow_overlap_runs_them_at_once(scheduled: Scheduled) -> None:
    scheduled.release_file.unlink()
    _, clock = scheduled.start(T(2026, 1, 14, 10, 0, 30), cron="* * * * *", allow_overlap=True)
    clock.advance(60)
    clock.advance(60)
    wait_until(lambda: len(scheduled.fired_file.read_text().split()) == 2 if scheduled.fired_file.exists() else 0,
               message="both runs going at once")
    scheduled.release_file.touch()
    assert sorted(scheduled.fired()) == [T(2026, 1, 14, 10, 1), T(2026, 1, 14, 10, 2)]  # in either order
    assert "is skipped" not in scheduled.log()


# --- catching up across a restart --------------------------------------------------------------


def test_missed_firings_are_not_run_without_catch_up(scheduled: Scheduled) -> None:
    interface, clock = scheduled.start(T(2026, 1, 14, 10, 0, 30), cron="0 * * * *")
    clock.run_to(T(2026, 1, 14, 11, 0, 30))
    scheduled.stop(interface)
    _, clock = scheduled.start(T(2026, 1, 14, 15, 20), cron="0 * * * *")  # down from 11:00:30 to 15:20
    clock.run_to(T(2026, 1, 14, 16, 0, 30))
    assert scheduled.fired() == [T(2026, 1, 14, 11), T(2026, 1, 14, 16)]


def test_catch_up_runs_the_missed_firings_at_start_in_order(scheduled: Scheduled) -> None:
    config = {"cron": "0 * * * *", "catch_up": True}
    interface, clock = scheduled.start(T(2026, 1, 14, 10, 0, 30), **config)
    clock.run_to(T(2026, 1, 14, 11, 0, 30))
    scheduled.stop(interface)
    _, clock = scheduled.start(T(2026, 1, 14, 15, 20), **config)  # a new interface: what it knows is in the state
    clock.run_to(T(2026, 1, 14, 16, 0, 30))
    assert scheduled.fired() == [T(2026, 1, 14, hour) for hour in (11, 12, 13, 14, 15, 16)]
    assert "interface sched: 4 firing(s) missed while the cage was down, running the latest 4 " \
           "(from 2026-01-14 12:00:00)" in scheduled.log()


def test_catch_up_is_bounded(scheduled: Scheduled) -> None:
    config = {"cron": "* * * * *", "catch_up": True}
    interface, clock = scheduled.start(T(2026, 1, 14, 10, 0, 30), **config)
    clock.advance(60)
    scheduled.stop(interface)
    scheduled.start(T(2026, 1, 14, 13, 1, 30), **config)  # 180 minutes missed
    assert scheduled.fired() == [T(2026, 1, 14, 10, 1), *minutes(T(2026, 1, 14, 11, 22), CATCH_UP_MAX)]
    assert f"180 firing(s) missed while the cage was down, running the latest {CATCH_UP_MAX} " \
           f"(from 2026-01-14 11:22:00), the 80 before them are skipped" in scheduled.log()


def test_catch_up_runs_what_a_clock_jump_missed(scheduled: Scheduled) -> None:
    _, clock = scheduled.start(T(2026, 1, 14, 10, 0, 30), cron="0 * * * *", catch_up=True)
    clock.run_to(T(2026, 1, 14, 10, 1, 30))
    clock.run_to(T(2026, 1, 14, 13, 1, 30), step=3 * 3600)  # the machine slept three hours
    assert scheduled.fired() == [T(2026, 1, 14, 11), T(2026, 1, 14, 12), T(2026, 1, 14, 13)]
    assert "3 firing(s) missed while the clock jumped from 2026-01-14 10:01:30, running the latest 3" in scheduled.log()


# --- the config --------------------------------------------------------------------------------


RUNTIME = types.SimpleNamespace(request_timeout=10.0)


@pytest.mark.parametrize(("config", "error"), [
    ({"cron": "61 * * * *"}, r"config_interface_nightly\.py: cron must be a standard 5-field cron expression "
                             r"\(minute hour day month weekday, such as \"30 2 \* \* \*\"\), not '61 \* \* \* \*'"),
    ({"cron": "0 0 * * * *"}, r"config_interface_nightly\.py: cron must be a standard 5-field"),
    ({"cron": "every night"}, r"config_interface_nightly\.py: cron must be a standard 5-field"),
    ({"cron": "* * * * *", "format": "%H:%M", "match": "12:30"},
     r"config_interface_nightly\.py: give either cron .* or both format and match .*, not cron and format and match"),
    ({"format": "%H:%M"}, r"config_interface_nightly\.py: give either cron .*, not format$"),
    ({}, r"config_interface_nightly\.py: give either cron .*, not neither"),
    ({"format": "%H:%M", "match": "12:(30"}, r"config_interface_nightly\.py: match must be a regular expression"),
    ({"cron": "* * * * *", "crom": 1}, r"config_interface_nightly\.py: unknown config key: crom"),
])
def test_config_errors_name_the_file(config: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        Interface("nightly", RUNTIME, config)  # type: ignore[arg-type]


def test_the_template_config_is_valid() -> None:
    namespace: dict[str, Any] = {}
    exec((Path(__file__).parent.parent / "cages" / ".shared" / "config_interface_schedule_1.py").read_text(), namespace)
    config = dict(namespace["config"])
    assert config.pop("protocol") == "schedule"
    interface = Interface("schedule_1", RUNTIME, config)  # type: ignore[arg-type]
    assert interface.handler == "interface_schedule_1"
    assert interface.config["cron"] == "30 2 * * *" and not interface.config["catch_up"]


# --- real time, a real cage process (65 s) --------------------------------------------------------

MINUTE_HANDLER = module_source("""
    def process_request(request, response):
        pmnc.log.message(f"{pmnc.request.interface} fired for {request['invocation_time']:%H:%M:%S}")
""", ["process_request"])


def test_a_real_cage_fires_every_minute_once_or_twice_in_65_seconds(cage_process: Any) -> None:
    """`* * * * *` and the original's keys with a format that changes every minute, for 65 s
    of real time: each fires once or twice (the original's format/match: 65 times)."""
    cage = cage_process(interfaces={"cron": {"protocol": "schedule", "cron": "* * * * *"},
                                    "minute": {"protocol": "schedule", "format": "%H:%M", "match": ".*"}},
                        files={"interface_cron.py": MINUTE_HANDLER, "interface_minute.py": MINUTE_HANDLER})
    cage.wait_for_log(r"interface minute fires at format '%H:%M' matching '\.\*'")
    time.sleep(65.0)  # the time under test, not a wait for readiness
    text = cage.log_text()
    for name in ("cron", "minute"):
        times = re.findall(rf"{name} fired for (\d\d:\d\d:\d\d)", text)
        assert 1 <= len(times) <= 2, (name, times)
        assert all(t.endswith(":00") for t in times), times  # on the minute
        assert len(set(times)) == len(times), times
    assert cage.stop() == 0
