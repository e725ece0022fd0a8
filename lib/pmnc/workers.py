"""The cage's worker pool: `thread_count` threads, earliest deadline first.

The request lifecycle (lifecycle.py, for every interface) and the resource
pools submit (request, function) pairs and get a `WorkUnit`: a small future
whose result is waited for (`result(timeout)`) or handed to a callback
(`when_done`, given at submit). A caller with a thread of its own may instead
`call()`: the function runs on the calling thread when one of the `size`
slots is free and nothing waits, sparing two thread hand-offs, and is queued
like any unit otherwise. A unit whose request has expired by the time a
worker takes it is never started (it fails with RequestExpiredError), and a
cancelled unit (the interface gave up at the deadline) is skipped. When the
work begins is noted in `request.started` (the intake's statistics). Threads
start lazily and retire after being idle.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Any

from pmnc import log
from pmnc import request as _request
from pmnc.errors import RequestExpiredError
from pmnc.request import Request

_QUEUED, _RUNNING, _CANCELLED, _DONE = range(4)
_states = threading.Lock()  # guards every unit's state change; held for a few instructions


class WorkUnit:
    """One submitted call: queued → running → done, or queued → cancelled.

    Lighter than concurrent.futures.Future (no lock or condition of its own),
    which matters at one unit per request.
    """

    __slots__ = ("_callback", "_done", "_error", "_result", "_state", "args", "fn", "request")

    def __init__(self, request: Request, fn: Callable[..., Any], args: tuple[Any, ...],
                 when_done: Callable[[WorkUnit], None] | None) -> None:
        self.request, self.fn, self.args = request, fn, args
        self._state = _QUEUED
        self._result: Any = None
        self._error: BaseException | None = None
        self._callback = when_done
        self._done: threading.Event | None = None

    def cancel(self) -> bool:
        """Prevent a queued unit from running; False once it has started."""
        with _states:
            if self._state == _QUEUED:
                self._state = _CANCELLED
            elif self._state != _CANCELLED:
                return False
            callback, done = self._callback, self._done
        self._notify(callback, done)
        return True

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def done(self) -> bool:
        return self._state in (_CANCELLED, _DONE)

    def result(self, timeout: float | None = None) -> Any:
        error = self.exception(timeout)
        if error is not None:
            raise error
        return self._result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        with _states:
            if self._state not in (_CANCELLED, _DONE) and self._done is None:
                self._done = threading.Event()
            done = self._done
        if done is not None and not done.wait(timeout):
            raise TimeoutError(f"work unit of {self.request.unique_id} not done in {timeout}s")
        if self._state == _CANCELLED:
            raise CancelledError()
        return self._error

    def settled(self) -> tuple[Any, BaseException | None]:
        """(result, error) of a unit that is done - for its when_done callback, which needs
        no wait and no lock."""
        return self._result, self._error

    def _start(self) -> bool:
        with _states:
            if self._state != _QUEUED:
                return False
            self._state = _RUNNING
            return True

    def _finish(self, result: Any, error: BaseException | None) -> None:
        self._result, self._error = result, error
        with _states:
            self._state = _DONE
            callback, done = self._callback, self._done
        self._notify(callback, done)

    def _notify(self, callback: Callable[[WorkUnit], None] | None, done: threading.Event | None) -> None:
        if done is not None:
            done.set()
        if callback is not None:
            callback(self)


_Unit = tuple[float, int, WorkUnit]


# Waking a thread per request makes threads fight over the GIL and starves the
# event loop. So a submit wakes a thread only when none is running or coming;
# otherwise one idle thread, the lookout, polls every LOOKOUT_PERIOD and takes
# work that a busy thread has left waiting (a long call must not hold up the
# queue). The lookout stands down after LOOKOUT_QUIET without activity.
LOOKOUT_PERIOD = 0.002
LOOKOUT_QUIET = 0.1


class WorkerPool:
    def __init__(self, name: str, size: int, *, idle_timeout: float = 60.0) -> None:
        if size < 1:
            raise ValueError("a worker pool needs at least one thread")
        self.name, self.size, self.idle_timeout = name, size, idle_timeout
        self._queue: list[_Unit] = []
        # Hot paths hold the mutex itself (a C context manager); the Condition, over the same
        # mutex, is only for waiting and waking.
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._threads = 0
        self._idle = 0  # threads waiting for work
        self._signalled = 0  # of those, already woken for a unit they have yet to take
        self._busy = 0
        self._inline = 0  # slots taken by call() on callers' own threads
        self._lookout: int | None = None  # the thread id of the lookout, if any
        self._active_at = 0.0  # when the lookout last saw work
        self._stopped = False
        self._serial = 0
        self.processed = 0

    def submit(self, request: Request, fn: Callable[..., Any], *args: Any,
               when_done: Callable[[WorkUnit], None] | None = None) -> WorkUnit:
        """Queue `fn(*args)` to run on a worker thread with `request` attached;
        `when_done(unit)` is called (on the worker's thread) once it is done or
        cancelled. Or wait for it with `unit.result(timeout)`."""
        unit = WorkUnit(request, fn, args, when_done)
        key = request.sort_key()
        with self._mutex:
            if self._stopped:
                raise RuntimeError(f"worker pool {self.name} has been stopped")
            heapq.heappush(self._queue, (key[0], key[1], unit))
            if self._busy + self._signalled == 0 or self._lookout is None:
                self._wake_one()
            depth = len(self._queue)
        if depth > 1 and log.enabled(log.DEBUG):
            log.debug(f"{self!r}: queued {request.unique_id}")
        return unit

    def call(self, request: Request, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` with `request` attached, as one of the pool's `size` calls at once:
        on this thread if a slot is free and nothing is queued, else queued earliest
        deadline first and waited for. At the deadline a unit still queued is
        cancelled (RequestExpiredError); one already running is left to finish."""
        with self._mutex:
            if self._stopped:
                raise RuntimeError(f"worker pool {self.name} has been stopped")
            here = not self._queue and self._busy + self._inline < self.size
            if here:
                self._inline += 1
        if not here:
            return self._call_queued(request, fn, args)
        previous = _request.attach(request)
        try:
            if request.expired:
                raise RequestExpiredError("request has expired and will not be processed")
            request.started = _request.monotonic()
            return fn(*args)
        finally:
            _request.attach(previous)
            with self._mutex:
                self._inline -= 1
                self.processed += 1
                if self._queue:
                    self._wake_one()

    def _call_queued(self, request: Request, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        unit = self.submit(request, fn, *args)
        try:
            return unit.result(None if request.deadline is None else request.remain)
        except TimeoutError:
            if unit.cancel():
                raise RequestExpiredError("request has expired in the queue and will not be processed") from None
            raise RequestExpiredError("request deadline has expired while it was being processed") from None
        except CancelledError:
            raise RequestExpiredError("request has been cancelled") from None

    def _wake_one(self) -> None:
        if self._idle > self._signalled:
            self._signalled += 1
            self._cond.notify()
        elif self._threads < self.size:
            self._start_thread()

    def _start_thread(self) -> None:
        self._threads += 1
        self._serial += 1
        thread = threading.Thread(target=self._work, name=f"{self.name}/{self._serial}", daemon=True)
        thread.start()

    def _take(self) -> WorkUnit | None:
        """The next unit, or None when this thread should retire."""
        me = threading.get_ident()
        with self._mutex:
            while True:
                if self._queue and self._busy + self._inline < self.size:
                    if self._lookout == me:
                        self._lookout = None
                    self._busy += 1
                    self._active_at = time.monotonic()
                    unit = heapq.heappop(self._queue)[2]
                    if self._queue and self._lookout is None:
                        self._wake_one()  # someone must watch what is left
                    return unit
                if self._stopped:
                    self._retire(me)
                    return None
                timeout = self._wait_timeout(me)
                self._idle += 1
                notified = self._cond.wait(timeout)
                self._idle -= 1
                # A notify that meets a timing-out wait is spent on it though wait()
                # says False: count every return, at worst one wake-up is spurious.
                self._signalled = max(self._signalled - 1, 0)
                if not notified and timeout == self.idle_timeout and not self._queue:
                    self._retire(me)
                    return None

    def _wait_timeout(self, me: int) -> float:
        """Become (or stay) the lookout while there is activity; else wait long."""
        if self._lookout not in (None, me):
            return self.idle_timeout
        if self._busy or time.monotonic() - self._active_at < LOOKOUT_QUIET:
            self._lookout = me
            return LOOKOUT_PERIOD
        self._lookout = None
        return self.idle_timeout

    def _retire(self, me: int) -> None:
        if self._lookout == me:
            self._lookout = None
        self._threads -= 1

    def _work(self) -> None:
        while (unit := self._take()) is not None:
            try:
                self._run(unit)
            finally:
                with self._mutex:
                    self._busy -= 1
                    self.processed += 1

    @staticmethod
    def _run(unit: WorkUnit) -> None:
        if not unit._start():
            return  # the interface gave up on it
        request = unit.request
        if request.expired:
            unit._finish(None, RequestExpiredError("request has expired and will not be processed"))
            return
        request.started = _request.monotonic()
        previous = _request.attach(request)
        try:
            result = unit.fn(*unit.args)
        except BaseException as e:
            unit._finish(None, e)
        else:
            unit._finish(result, None)
        finally:
            _request.attach(previous)

    def stop(self, timeout: float = 3.0) -> None:
        """Refuse new work, cancel what is queued, and let the threads go."""
        with self._cond:
            self._stopped = True
            queued, self._queue = self._queue, []
            self._cond.notify_all()
        for _, _, unit in queued:
            unit.cancel()
        end = time.monotonic() + timeout
        while self._threads and time.monotonic() < end:
            with self._cond:
                self._cond.wait(0.05)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> int:
        """Slots taken: work on the pool's threads and calls run on their callers' threads."""
        return self._busy + self._inline

    def __repr__(self) -> str:
        return f"<WorkerPool {self.name} busy={self._busy}/{self.size} queued={len(self._queue)}>"
