"""Thread-level helpers with the original's face: queues with timed pops and a
reader/writer lock with its API - what `pmnc.shared_queues` / `pmnc.shared_locks` hand out
and the original's `interlocked_queue` / `shared_lock` import paths re-export.

The queues wait with the standard library's `queue`: `pop(timeout)` returns None when
nothing came in time, which `pmnc.request.pop(queue)` and `Timeout.pop(queue)` rely on.
The lock is pmnc.rwlock.SharedLock (writers first, shared re-entry, bounded waits) with
what the original's API promised on top: `acquire()` re-entered by its owner, a shared
holder upgrading to exclusive (it gives its shared hold up while it waits, and gets it
back either way), a release by a thread that holds nothing failing with AssertionError.
`timeout=None` waits for ever; 0.0 just tries.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from pmnc import rwlock


class InterlockedQueue:
    """First in, first out."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Any] = self._make()

    @staticmethod
    def _make() -> queue.Queue[Any]:
        return queue.Queue()

    def push(self, item: Any) -> None:
        self._queue.put(item)

    def pop(self, timeout: float | None = None) -> Any:
        """The next item; None after `timeout` seconds (None waits for ever, 0.0 just looks)."""
        try:
            return self._queue.get(timeout=None if timeout is None else max(timeout, 0.0))
        except queue.Empty:
            return None

    def __len__(self) -> int:
        return self._queue.qsize()


class InterlockedPriorityQueue(InterlockedQueue):
    """The smallest item first."""

    @staticmethod
    def _make() -> queue.Queue[Any]:
        return queue.PriorityQueue()



class SharedLock:
    def __init__(self, name: str | None = None, log: Callable[[str], object] | None = None,
                 debug: bool = False) -> None:
        """`log`, if given, is called with a line for every change of hands; `debug` (the
        original's invariant checks) has nothing to switch on here."""
        self._name = name or f"SharedLock_{id(self) % 65521:04X}"
        self._log = log
        self._lock = rwlock.SharedLock()
        self._owner: int | None = None  # the exclusive holder and its depth
        self._depth = 0
        self._shared: dict[int, int] = {}  # thread id -> its shared depth, as rwlock counts it
        self._books = threading.Lock()  # guards _shared only; _owner is written by its owner alone

    @property
    def name(self) -> str:
        return self._name

    def acquire(self, timeout: float | None = None) -> bool:
        """Exclusive access within `timeout` (None or negative: for ever, as threading's
        locks take it); True once held."""
        if timeout is not None and timeout < 0:
            timeout = None
        me = threading.get_ident()
        if self._owner == me:
            self._depth += 1
            return True
        with self._books:
            held = self._shared.pop(me, 0)
        for _ in range(held):  # upgrading: give the shared hold up, or the exclusive wait is for ourselves
            self._lock.release_shared()
        got = self._lock.acquire_exclusive(timeout)
        if got:
            self._owner, self._depth = me, 1
        self._reacquire_shared(me, held)
        self._trace("acquired exclusive" if got else "timed out waiting for exclusive")
        return got

    def _reacquire_shared(self, me: int, held: int) -> None:
        # without a deadline, as the original: the thread had it and expects to still have it
        for _ in range(held):
            self._lock.acquire_shared(None)
        if held:
            with self._books:
                self._shared[me] = held

    def release(self) -> None:
        if self._owner != threading.get_ident():
            raise AssertionError(f"thread {threading.current_thread().name} has not acquired the lock")
        self._depth -= 1
        if self._depth == 0:
            self._owner = None
            self._lock.release_exclusive()
            self._trace("released exclusive")

    def acquire_shared(self, timeout: float | None = None) -> bool:
        """Shared access within `timeout`; True once held. What `pmnc.request.acquire_shared` calls."""
        if not self._lock.acquire_shared(timeout):
            self._trace("timed out waiting for shared")
            return False
        me = threading.get_ident()
        with self._books:
            self._shared[me] = self._shared.get(me, 0) + 1
        self._trace("acquired shared")
        return True

    def release_shared(self) -> None:
        me = threading.get_ident()
        with self._books:
            depth = self._shared.get(me)
            if depth is None:
                raise AssertionError(f"thread {threading.current_thread().name} has not acquired the lock")
            if depth > 1:
                self._shared[me] = depth - 1
            else:
                del self._shared[me]
        self._lock.release_shared()
        self._trace("released shared")

    def _trace(self, event: str) -> None:
        if self._log is not None:
            self._log(f"{event} {self._name} by {threading.current_thread().name}")

    def __repr__(self) -> str:
        return f"<SharedLock {self._name} {self._lock!r}>"


class SharedLockWriterPriority(SharedLock):
    """The original's writer-first variant; pmnc's lock always lets a waiting writer go first."""
