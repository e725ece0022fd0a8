"""A shared/exclusive lock that favours writers, with deadline-bounded waits.

Module calls hold it shared; a reload holds it exclusive to swap versions
once calls in flight have finished. A waiting writer stops new readers, so a
busy module still reloads; a thread already reading re-enters at once, so
recursion and circular calls cannot deadlock against a waiting writer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

_get_ident = threading.get_ident


class SharedLock:
    """Readers go without the mutex while no writer is about: every module call takes and
    releases the lock shared, so that path is a few dictionary operations. It relies on each
    of them being atomic (the GIL) and on this order: a reader announces itself in `_readers`
    and then looks for a writer; a writer, under the mutex, announces itself in
    `_writers_waiting` and then looks at `_readers`. So at least one of them sees the other;
    a reader that sees a writer withdraws, wakes the writer, and waits under the mutex."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._readers: dict[int, int] = {}  # thread id → re-entry depth; only that thread changes its entry
        self._writer: int | None = None
        self._writers_waiting = 0

    def acquire_shared(self, timeout: float | None) -> bool:
        me = _get_ident()
        readers = self._readers
        depth = readers.get(me)
        if depth is not None:  # re-entry goes on at once, writer or not: no deadlock against one waiting
            readers[me] = depth + 1
            return True
        readers[me] = 1  # announced first, then the look for a writer (see the class)
        writer = self._writer
        if (writer is None and not self._writers_waiting) or writer == me:
            return True
        del readers[me]
        with self._mutex:
            self._cond.notify_all()  # a writer waiting for the readers to go may have seen this one
            if not self._wait(lambda: self._writer is None and not self._writers_waiting, timeout):
                return False
            readers[me] = 1
            return True

    def release_shared(self) -> None:
        me = _get_ident()
        readers = self._readers
        depth = readers[me]
        if depth > 1:
            readers[me] = depth - 1
            return
        del readers[me]
        if self._writers_waiting and not readers:
            with self._mutex:
                self._cond.notify_all()

    def acquire_exclusive(self, timeout: float | None) -> bool:
        me = threading.get_ident()
        with self._cond:
            if me in self._readers:
                return False  # upgrading would wait for ourselves
            self._writers_waiting += 1
            try:
                return self._wait(lambda: self._writer is None and not self._readers, timeout, writer=me)
            finally:
                self._writers_waiting -= 1
                if self._writer != me:
                    self._cond.notify_all()  # readers held back by us may go on

    def release_exclusive(self) -> None:
        with self._cond:
            self._writer = None
            self._cond.notify_all()

    def _wait(self, ready: Callable[[], bool], timeout: float | None, writer: int | None = None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        while not ready():
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._cond.wait(left)
        if writer is not None:
            self._writer = writer
        return True

    @property
    def readers(self) -> int:
        return len(self._readers)

    def __repr__(self) -> str:
        return (f"<SharedLock readers={len(self._readers)} writer={self._writer is not None} "
                f"waiting={self._writers_waiting}>")
