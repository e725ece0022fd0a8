"""The writer-priority shared lock: lib/pmnc/rwlock.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import wait_until
from pmnc.rwlock import SharedLock


class Holder:
    """A thread that takes the lock (shared or exclusive), holds it until told, then lets go."""

    def __init__(self, lock: SharedLock, exclusive: bool = False, timeout: float | None = 10.0) -> None:
        self.lock, self.exclusive, self.timeout = lock, exclusive, timeout
        self.acquired = threading.Event()
        self.finished = threading.Event()
        self.release = threading.Event()
        self.result: bool | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        acquire = self.lock.acquire_exclusive if self.exclusive else self.lock.acquire_shared
        self.result = acquire(self.timeout)
        if self.result:
            self.acquired.set()
            self.release.wait(10.0)
            (self.lock.release_exclusive if self.exclusive else self.lock.release_shared)()
        self.finished.set()

    def start(self) -> Holder:
        self.thread.start()
        return self

    def join(self) -> None:
        self.release.set()
        self.thread.join(10.0)


@pytest.fixture
def holders() -> Iterator[Callable[..., Holder]]:
    started: list[Holder] = []

    def start(lock: SharedLock, **kwargs: Any) -> Holder:
        holder = Holder(lock, **kwargs).start()
        started.append(holder)
        return holder

    yield start
    for holder in started:
        holder.join()


def writer_waiting(lock: SharedLock) -> bool:
    return "waiting=1" in repr(lock)


def test_shared_is_reentrant_per_thread() -> None:
    lock = SharedLock()
    assert lock.acquire_shared(None)
    assert lock.acquire_shared(None)
    assert lock.readers == 1
    lock.release_shared()
    assert lock.readers == 1
    lock.release_shared()
    assert lock.readers == 0
    assert lock.acquire_exclusive(0.0)  # fully released: a writer gets in at once
    lock.release_exclusive()


def test_many_readers_at_once(holders: Callable[..., Holder]) -> None:
    lock = SharedLock()
    first = holders(lock)
    assert first.acquired.wait(5.0)
    second = holders(lock)
    assert second.acquired.wait(5.0)
    assert lock.readers == 2


def test_writer_waits_for_readers(holders: Callable[..., Holder]) -> None:
    lock = SharedLock()
    assert lock.acquire_shared(None)
    writer = holders(lock, exclusive=True)
    wait_until(lambda: writer_waiting(lock), message="writer waiting")
    assert not writer.acquired.is_set()
    lock.release_shared()
    assert writer.acquired.wait(5.0)
    assert "writer=True" in repr(lock)


def test_writer_waits_for_the_last_reentered_release(holders: Callable[..., Holder]) -> None:
    lock = SharedLock()
    lock.acquire_shared(None)
    lock.acquire_shared(None)
    writer = holders(lock, exclusive=True)
    wait_until(lambda: writer_waiting(lock), message="writer waiting")
    lock.release_shared()
    assert not writer.acquired.wait(0.05)  # still one level held
    lock.release_shared()
    assert writer.acquired.wait(5.0)


def test_waiting_writer_blocks_new_readers(holders: Callable[..., Holder]) -> None:
    lock = SharedLock()
    reader = holders(lock)
    assert reader.acquired.wait(5.0)
    writer = holders(lock, exclusive=True)
    wait_until(lambda: writer_waiting(lock), message="writer waiting")
    assert lock.acquire_shared(0.05) is False  # a new reader would starve the writer
    late_reader = holders(lock)
    reader.release.set()
    assert writer.acquired.wait(5.0)
    assert not late_reader.acquired.is_set()  # still kept out while the writer holds it
    writer.release.set()
    assert late_reader.acquired.wait(5.0)  # and let in once the writer is done


def test_reader_reenters_while_a_writer_waits(holders: Callable[..., Holder]) -> None:
    lock = SharedLock()
    assert lock.acquire_shared(None)
    writer = holders(lock, exclusive=True)
    wait_until(lambda: writer_waiting(lock), message="writer waiting")
    started = time.monotonic()
    assert lock.acquire_shared(5.0)  # recursion must not deadlock against the writer
    assert time.monotonic() - started < 1.0
    lock.release_shared()
    lock.release_shared()
    assert writer.acquired.wait(5.0)


def test_exclusive_refused_to_a_thread_holding_shared() -> None:
    lock = SharedLock()
    lock.acquire_shared(None)
    started = time.monotonic()
    assert lock.acquire_exclusive(5.0) is False
    assert time.monotonic() - started < 1.0  # refused at once rather than waiting for itself
    assert "waiting=0" in repr(lock)
    lock.release_shared()
    assert lock.acquire_exclusive(0.0)
    lock.release_exclusive()


def test_exclusive_times_out_while_readers_hold(holders: Callable[..., Holder]) -> None:
    lock = SharedLock()
    reader = holders(lock)
    assert reader.acquired.wait(5.0)
    started = time.monotonic()
    assert lock.acquire_exclusive(0.05) is False
    assert time.monotonic() - started >= 0.04
    assert "waiting=0" in repr(lock)
    # the writer that gave up no longer holds readers back
    assert lock.acquire_shared(0.0)
    lock.release_shared()


def test_readers_held_back_by_a_writer_that_gives_up_proceed(holders: Callable[..., Holder]) -> None:
    lock = SharedLock()
    reader = holders(lock)
    assert reader.acquired.wait(5.0)
    writer = holders(lock, exclusive=True, timeout=0.3)
    wait_until(lambda: writer_waiting(lock), message="writer waiting")
    blocked_reader = holders(lock)
    assert writer.finished.wait(5.0)
    assert writer.result is False
    assert blocked_reader.acquired.wait(5.0)


def test_shared_times_out_while_writer_holds(holders: Callable[..., Holder]) -> None:
    lock = SharedLock()
    writer = holders(lock, exclusive=True)
    assert writer.acquired.wait(5.0)
    started = time.monotonic()
    assert lock.acquire_shared(0.05) is False
    assert time.monotonic() - started >= 0.04
    assert lock.acquire_exclusive(0.05) is False
    assert lock.readers == 0


def test_zero_timeout_does_not_wait(holders: Callable[..., Holder]) -> None:
    lock = SharedLock()
    writer = holders(lock, exclusive=True)
    assert writer.acquired.wait(5.0)
    started = time.monotonic()
    assert lock.acquire_shared(0.0) is False
    assert time.monotonic() - started < 1.0


def test_writer_may_read_its_own_data() -> None:
    lock = SharedLock()
    assert lock.acquire_exclusive(None)
    assert lock.acquire_shared(0.0)
    lock.release_shared()
    lock.release_exclusive()
    assert lock.acquire_shared(0.0)
    lock.release_shared()


def test_writers_take_turns(holders: Callable[..., Holder]) -> None:
    lock = SharedLock()
    first = holders(lock, exclusive=True)
    assert first.acquired.wait(5.0)
    second = holders(lock, exclusive=True)
    wait_until(lambda: writer_waiting(lock), message="second writer waiting")
    assert not second.acquired.is_set()
    first.release.set()
    assert second.acquired.wait(5.0)


def test_readers_blocked_by_writer_all_proceed_after_it(holders: Callable[..., Holder]) -> None:
    lock = SharedLock()
    writer = holders(lock, exclusive=True)
    assert writer.acquired.wait(5.0)
    readers = [holders(lock) for _ in range(5)]
    writer.release.set()
    for reader in readers:
        assert reader.acquired.wait(5.0)
    assert lock.readers == 5
