"""A connection's short busy wait before it sleeps (busywait.py, config_cluster.py busy_wait):
what comes at once is found awake, an idle connection costs one wait's CPU and then none, one
thread of a process busy-waits at a time, and the key takes only sensible values.

CPU is read per thread (time.thread_time) over waits long enough that a scheduler's noise
cannot turn one answer into the other: a busy wait of 0.3 s against one of none."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from pmnc import busywait, placement
from pmnc.busywait import BusyWait
from pmnc.errors import ConfigError
from pmnc.rpc.cluster import BUSY_WAIT, KEYS

LIMIT = 0.3  # seconds: far above what the scheduler's noise could account for
SLEPT = 0.05  # at most this much CPU for a wait that sleeps


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


@pytest.fixture(autouse=True)
def alone_on_a_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """As a cage process kept on a CPU nobody else uses, on a machine of several: a test of
    anything else says so. (This process is not one: placement reads its load only in a cage's.)"""
    monkeypatch.setattr(busywait, "SEVERAL_CPUS", True)
    monkeypatch.setattr(placement, "_alone", True)


def timed_wait(waiter: BusyWait, fd: int, timeout: float) -> tuple[list[int], float]:
    """What the wait found, and the CPU it cost this thread."""
    began = time.thread_time()
    found = waiter.ready([fd], timeout)
    return found, time.thread_time() - began


def test_a_connection_waits_asleep_until_a_wait_of_it_has_been_quick(pair: tuple[socket.socket, socket.socket]) -> None:
    reader, writer = pair
    waiter = BusyWait(LIMIT)
    found, cpu = timed_wait(waiter, reader.fileno(), 0.5)
    assert found == [] and cpu < SLEPT  # a new connection sleeps
    assert not waiter.quick
    writer.send(b"x")
    assert waiter.ready([reader.fileno()], 1.0) == [reader.fileno()]
    assert waiter.quick  # that wait was quick: the next one is awake


def test_what_comes_during_a_busy_wait_is_found_and_the_next_wait_is_awake_too(
        pair: tuple[socket.socket, socket.socket]) -> None:
    reader, writer = pair
    waiter = BusyWait(LIMIT)
    waiter.quick = True
    timer = threading.Timer(0.05, writer.send, (b"x",))
    timer.start()
    found, cpu = timed_wait(waiter, reader.fileno(), 5.0)
    timer.join()
    assert found == [reader.fileno()]
    assert cpu > 0.01  # it was awake, not asleep, while the answer came
    assert waiter.quick


def test_an_idle_connection_costs_one_busy_wait_then_sleeps(pair: tuple[socket.socket, socket.socket]) -> None:
    reader, _ = pair
    waiter = BusyWait(LIMIT)
    waiter.quick = True
    found, cpu = timed_wait(waiter, reader.fileno(), 1.0)
    assert found == []
    assert LIMIT / 4 < cpu < LIMIT * 1.5  # awake for the limit, then asleep for the rest of the second
    assert not waiter.quick
    found, cpu = timed_wait(waiter, reader.fileno(), 0.5)
    assert found == [] and cpu < SLEPT  # a slow wait leaves the next asleep


def test_the_timeout_holds_when_it_is_shorter_than_the_busy_wait(pair: tuple[socket.socket, socket.socket]) -> None:
    reader, _ = pair
    waiter = BusyWait(LIMIT)
    waiter.quick = True
    began = time.monotonic()
    assert waiter.ready([reader.fileno()], 0.05) == []
    assert time.monotonic() - began < LIMIT  # it gave up at the timeout, not at the limit


def test_one_thread_of_a_process_busy_waits_at_a_time() -> None:
    pairs = [socket.socketpair() for _ in range(2)]
    costs: list[float] = []

    def wait(reader: socket.socket, start: threading.Barrier) -> None:
        waiter = BusyWait(LIMIT)
        waiter.quick = True
        start.wait()
        costs.append(timed_wait(waiter, reader.fileno(), 0.6)[1])

    start = threading.Barrier(2)
    threads = [threading.Thread(target=wait, args=(reader, start)) for reader, _ in pairs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for a, b in pairs:
        a.close()
        b.close()
    assert len(costs) == 2
    assert min(costs) < SLEPT  # the second slept the whole time
    assert max(costs) > LIMIT / 4


def test_with_a_limit_of_zero_or_on_one_cpu_a_wait_sleeps(pair: tuple[socket.socket, socket.socket],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    reader, _ = pair
    for several_cpus, limit in ((True, 0.0), (False, LIMIT)):  # on one CPU the answer cannot come meanwhile
        monkeypatch.setattr(busywait, "SEVERAL_CPUS", several_cpus)
        waiter = BusyWait(limit)
        waiter.quick = True
        found, cpu = timed_wait(waiter, reader.fileno(), 0.4)
        assert found == [] and cpu < SLEPT


def test_a_cage_that_is_not_alone_on_its_cpu_sleeps(pair: tuple[socket.socket, socket.socket],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(placement, "_alone", False)  # its CPU shared, or its threads spread
    reader, _ = pair
    waiter = BusyWait(LIMIT)
    waiter.quick = True
    found, cpu = timed_wait(waiter, reader.fileno(), 0.4)
    assert found == [] and cpu < SLEPT


def test_busy_wait_of_config_cluster_takes_seconds_from_zero_to_a_hundredth() -> None:
    assert KEYS.read({}, "config_cluster.py")["busy_wait"] == BUSY_WAIT == 0.0002
    assert KEYS.read({"busy_wait": 0}, "config_cluster.py")["busy_wait"] == 0.0
    assert KEYS.read({"busy_wait": "0.001"}, "config_cluster.py")["busy_wait"] == 0.001
    for wrong in (0.5, -0.001, "soon"):
        with pytest.raises(ConfigError) as info:
            KEYS.read({"busy_wait": wrong}, "config_cluster.py")
        assert str(info.value) == f"config_cluster.py: busy_wait must be seconds from 0 to 0.01, not {wrong!r}"
