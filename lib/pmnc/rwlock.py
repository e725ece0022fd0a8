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


class SharedLock:
    def __init__(self) -> None:
        # Every module call takes and releases the lock shared: those paths hold the mutex
        # itself (a C context manager), not the Condition's Python-level wrapper around it.
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._readers: dict[int, int] = {}  # thread id → re-entry depth
        self._writer: int | None = None
        self._writers_waiting = 0

    def acquire_shared(self, timeout: float | None) -> bool:
        me = threading.get_ident()
        with self._mutex:
            depth = self._readers.get(me)
            if depth is not None:
                self._readers[me] = depth + 1
                return True
            if self._writer == me or (self._writer is None and not self._writers_waiting):
                self._readers[me] = 1
                return True
            if not self._wait(lambda: self._writer is None and not self._writers_waiting, timeout):
                return False
            self._readers[me] = 1
            return True

    def release_shared(self) -> None:
        me = threading.get_ident()
        with self._mutex:
            depth = self._readers[me]
            if depth > 1:
                self._readers[me] = depth - 1
                return
            del self._readers[me]
            if not self._readers and self._writers_waiting:
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
