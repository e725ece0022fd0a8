"""The EDF worker pool: lib/pmnc/workers.py."""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any

import pytest
from conftest import wait_until
from pmnc import request as rq
from pmnc.errors import RequestExpiredError
from pmnc.request import Request
from pmnc.workers import WorkerPool, WorkUnit


@pytest.fixture
def make_pool() -> Iterator[Callable[..., WorkerPool]]:
    pools: list[WorkerPool] = []

    def make(size: int = 1, **kwargs: Any) -> WorkerPool:
        pool = WorkerPool(f"pool{uuid.uuid4().hex[:8]}", size, **kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.stop()


def finite(timeout: float) -> Request:
    return Request(timeout=timeout, interface="test", protocol="test")


def infinite() -> Request:
    return Request(timeout=None)


def threads_of(pool: WorkerPool) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(pool.name + "/")]


class Blocker:
    """A unit of work that occupies a worker until released."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> str:
        self.started.set()
        assert self.release.wait(10.0)
        return "unblocked"


# --- results ------------------------------------------------------------------------


def test_result_through_future(make_pool: Callable[..., WorkerPool]) -> None:
    pool = make_pool(2)
    future = pool.submit(finite(5.0), lambda a, b: a + b, 2, 3)
    assert future.result(5.0) == 5


def test_exception_through_future(make_pool: Callable[..., WorkerPool]) -> None:
    pool = make_pool(2)

    def fail() -> None:
        raise KeyError("missing")

    future = pool.submit(finite(5.0), fail)
    error = future.exception(5.0)
    assert isinstance(error, KeyError)
    with pytest.raises(KeyError):
        future.result()


def test_worker_survives_failing_units(make_pool: Callable[..., WorkerPool]) -> None:
    pool = make_pool(1)

    def fail() -> None:
        raise RuntimeError("boom")

    for _ in range(3):
        assert isinstance(pool.submit(finite(5.0), fail).exception(5.0), RuntimeError)
    assert pool.submit(finite(5.0), lambda: "alive").result(5.0) == "alive"
    assert len(threads_of(pool)) == 1


def test_current_request_attached_inside_the_worker(make_pool: Callable[..., WorkerPool]) -> None:
    pool = make_pool(1)
    first, second = finite(5.0), finite(5.0)
    assert pool.submit(first, rq.current).result(5.0) is first
    assert pool.submit(second, rq.current).result(5.0) is second
    # between units the worker is back on its own request
    assert pool.submit(infinite(), lambda: rq.current().infinite).result(5.0) is True


def test_remain_inside_the_worker_is_the_request_deadline(make_pool: Callable[..., WorkerPool]) -> None:
    pool = make_pool(1)
    remain = pool.submit(finite(3.0), lambda: rq.current().remain).result(5.0)
    assert 2.0 < remain <= 3.0


# --- earliest deadline first -----------------------------------------------------------


def test_earliest_deadline_first(make_pool: Callable[..., WorkerPool]) -> None:
    pool = make_pool(1)
    blocker = Blocker()
    blocked = pool.submit(infinite(), blocker)
    assert blocker.started.wait(5.0)
    order: list[str] = []
    futures = [pool.submit(request, order.append, label) for label, request in [
        ("none", infinite()), ("t5", finite(5.0)), ("t1", finite(1.0)), ("t3", finite(3.0)),
        ("t2", finite(2.0)), ("none-2", infinite()),
    ]]
    assert pool.queued == 6
    blocker.release.set()
    for future in [blocked, *futures]:
        future.result(5.0)
    assert order == ["t1", "t2", "t3", "t5", "none", "none-2"]


# --- expired and cancelled work -----------------------------------------------------------


def test_already_expired_request_is_never_started(make_pool: Callable[..., WorkerPool]) -> None:
    pool = make_pool(1)
    ran = threading.Event()
    future = pool.submit(finite(0.0), ran.set)
    with pytest.raises(RequestExpiredError) as info:
        future.result(5.0)
    assert str(info.value) == "request has expired and will not be processed"
    assert not ran.is_set()


def test_request_expiring_while_queued_is_never_started(make_pool: Callable[..., WorkerPool],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(rq, "monotonic", lambda: now[0])
    pool = make_pool(1)
    blocker = Blocker()
    pool.submit(infinite(), blocker)
    assert blocker.started.wait(5.0)
    ran = threading.Event()
    doomed = pool.submit(finite(1.0), ran.set)
    survivor = pool.submit(finite(10.0), lambda: "done")
    now[0] += 5.0  # the first request's deadline passes while it waits in the queue
    blocker.release.set()
    with pytest.raises(RequestExpiredError):
        doomed.result(5.0)
    assert survivor.result(5.0) == "done"
    assert not ran.is_set()


def test_cancelled_future_is_skipped(make_pool: Callable[..., WorkerPool]) -> None:
    pool = make_pool(1)
    blocker = Blocker()
    pool.submit(infinite(), blocker)
    assert blocker.started.wait(5.0)
    ran = threading.Event()
    abandoned = pool.submit(infinite(), ran.set)
    after = pool.submit(infinite(), lambda: "after")  # queued behind the abandoned unit
    assert abandoned.cancel()
    blocker.release.set()
    assert after.result(5.0) == "after"
    assert not ran.is_set()
    assert abandoned.cancelled()


# --- threads ---------------------------------------------------------------------------------


def test_threads_start_lazily_up_to_size(make_pool: Callable[..., WorkerPool]) -> None:
    pool = make_pool(3)
    assert threads_of(pool) == []
    assert pool.submit(infinite(), lambda: 1).result(5.0) == 1
    assert len(threads_of(pool)) == 1
    blockers = [Blocker() for _ in range(5)]
    futures = [pool.submit(infinite(), b) for b in blockers]
    wait_until(lambda: sum(b.started.is_set() for b in blockers) == 3, message="three units running")
    assert len(threads_of(pool)) == 3
    assert pool.busy == 3
    assert pool.queued == 2
    for b in blockers:
        b.release.set()
    assert [f.result(5.0) for f in futures] == ["unblocked"] * 5
    assert len(threads_of(pool)) == 3


def test_a_put_off_wake_is_paid_once_and_wakes_enough_threads_for_every_unit(
        make_pool: Callable[..., WorkerPool]) -> None:
    # the event loop queues a burst of requests without waking anyone, then pays once before it waits
    pool = make_pool(3)
    blockers = [Blocker() for _ in range(3)]
    futures = [pool.enqueue(WorkUnit(infinite(), b, (), None), wake=False) for b in blockers]
    assert threads_of(pool) == [] and pool.queued == 3  # nobody woken yet
    pool.pay_owed_wake()
    wait_until(lambda: all(b.started.is_set() for b in blockers), message="each unit on a thread of its own")
    assert len(threads_of(pool)) == 3
    for b in blockers:
        b.release.set()
    assert [f.result(5.0) for f in futures] == ["unblocked"] * 3


def test_a_thread_finishing_its_unit_takes_one_queued_without_a_wake(make_pool: Callable[..., WorkerPool]) -> None:
    pool = make_pool(1)
    blocker = Blocker()
    pool.submit(infinite(), blocker)
    assert blocker.started.wait(5.0)
    after = pool.enqueue(WorkUnit(infinite(), lambda: "taken", (), None), wake=False)
    blocker.release.set()
    assert after.result(5.0) == "taken"  # no pay_owed_wake: the busy thread looked at the queue again


def test_idle_threads_retire(make_pool: Callable[..., WorkerPool]) -> None:
    pool = make_pool(2, idle_timeout=0.05)
    pool.submit(infinite(), lambda: None).result(5.0)
    wait_until(lambda: not threads_of(pool), message="idle thread retired")
    assert pool.submit(infinite(), lambda: "again").result(5.0) == "again"


def test_pool_needs_a_thread() -> None:
    with pytest.raises(ValueError):
        WorkerPool("empty", 0)


def test_repr_is_a_status_line(make_pool: Callable[..., WorkerPool]) -> None:
    pool = make_pool(2)
    assert repr(pool) == f"<WorkerPool {pool.name} busy=0/2 queued=0>"
    blockers = [Blocker() for _ in range(3)]
    for b in blockers:
        pool.submit(infinite(), b)
    wait_until(lambda: blockers[0].started.is_set() and blockers[1].started.is_set(), message="two running")
    assert repr(pool) == f"<WorkerPool {pool.name} busy=2/2 queued=1>"
    for b in blockers:
        b.release.set()
    wait_until(lambda: pool.processed == 3, message="all processed")
    assert repr(pool) == f"<WorkerPool {pool.name} busy=0/2 queued=0>"


def test_idle_worker_is_woken_even_when_its_wait_timed_out_at_the_same_moment(
        make_pool: Callable[..., WorkerPool]) -> None:
    """A wake-up may coincide with an idle worker's wait timing out: the token sent to it
    arrives just after its wait gave up. The pool must neither lose the token nor count
    the thread twice, or later work sits queued until the idle timeout (60 s by default)
    passes, or a thread retires that was counted on.

    The coincidence is made deterministic here by reporting one wait that got its token
    as timed out, the token still on its way; with the real clock it happens now and then
    under steady traffic."""
    pool = make_pool(1)
    real = pool._wakeups
    racy = [True]

    class RacyWakeups:
        def put(self, item: None) -> None:
            real.put(item)

        def get(self, block: bool = True, timeout: float | None = None) -> None:
            real.get(block, timeout)
            if timeout is not None and racy[0]:
                racy[0] = False
                real.put(None)  # still on its way ...
                raise queue.Empty  # ... when the wait times out

    pool._wakeups = RacyWakeups()  # type: ignore[assignment]
    assert pool.submit(infinite(), lambda: 1).result(5.0) == 1
    wait_until(lambda: pool._idle == 1, message="the worker waits for more")
    try:
        assert pool.submit(infinite(), lambda: 2).result(2.0) == 2
        assert pool.submit(infinite(), lambda: 3).result(2.0) == 3
    except FutureTimeoutError:
        pytest.fail("work stayed queued although the only worker was idle")
    assert not racy[0]
    assert len(threads_of(pool)) == 1


def test_each_idle_thread_that_times_out_retires_once_and_work_still_runs(
        make_pool: Callable[..., WorkerPool]) -> None:
    pool = make_pool(3, idle_timeout=0.02)
    for round_ in range(20):  # submits meet idle waits timing out, now and then at the same moment
        blockers = [Blocker() for _ in range(3)]
        units = [pool.submit(infinite(), b) for b in blockers]
        wait_until(lambda bs=blockers: all(b.started.is_set() for b in bs), message=f"round {round_}: three running")
        for b in blockers:
            b.release.set()
        assert [u.result(5.0) for u in units] == ["unblocked"] * 3
    wait_until(lambda: not threads_of(pool), message="idle threads retired")
    assert pool._threads == 0 and pool._idle == 0 and pool._coming == 0


# --- stop --------------------------------------------------------------------------------------


def test_stop_cancels_queued_work_and_refuses_new(make_pool: Callable[..., WorkerPool]) -> None:
    pool = make_pool(1)
    blocker = Blocker()
    running = pool.submit(infinite(), blocker)
    assert blocker.started.wait(5.0)
    ran = threading.Event()
    queued: list[WorkUnit] = [pool.submit(infinite(), ran.set) for _ in range(3)]
    stopper = threading.Thread(target=pool.stop, args=(5.0,))
    stopper.start()
    for future in queued:
        with pytest.raises(CancelledError):
            future.result(5.0)
    with pytest.raises(RuntimeError):
        pool.submit(infinite(), ran.set)
    blocker.release.set()  # the unit in flight is allowed to finish
    assert running.result(5.0) == "unblocked"
    stopper.join(10.0)
    assert not stopper.is_alive()
    assert not ran.is_set()
    wait_until(lambda: not threads_of(pool), message="threads gone")


def test_stop_lets_idle_threads_go(make_pool: Callable[..., WorkerPool]) -> None:
    pool = make_pool(3)
    blockers = [Blocker() for _ in range(3)]
    for b in blockers:
        pool.submit(infinite(), b)
        b.release.set()
    wait_until(lambda: pool.processed == 3, message="all processed")
    pool.stop(5.0)
    wait_until(lambda: not threads_of(pool), message="threads gone")
