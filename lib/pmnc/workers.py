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
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Any

from pmnc import log
from pmnc import request as _request
from pmnc.errors import RequestExpiredError
from pmnc.request import Request

# A unit's states, and the one lock every state change holds (for a few instructions). The request
# lifecycle's InFlight (lifecycle.py) is a WorkUnit that settles itself: it moves them too.
QUEUED, RUNNING, CANCELLED, DONE = range(4)
unit_states = threading.Lock()


class WorkUnit:
    """One submitted call: queued → running → done, or queued → cancelled.

    Lighter than concurrent.futures.Future (no lock or condition of its own),
    which matters at one unit per request.
    """

    __slots__ = ("_callback", "_done", "_error", "_result", "_state", "args", "fn", "request")

    def __init__(self, request: Request, fn: Callable[..., Any], args: tuple[Any, ...],
                 when_done: Callable[[WorkUnit], None] | None) -> None:
        self.request, self.fn, self.args = request, fn, args
        self._state = QUEUED
        self._result: Any = None
        self._error: BaseException | None = None
        self._callback = when_done
        self._done: threading.Event | None = None

    def cancel(self) -> bool:
        """Prevent a queued unit from running; False once it has started."""
        with unit_states:
            if self._state == QUEUED:
                self._state = CANCELLED
            elif self._state != CANCELLED:
                return False
            callback, done = self._callback, self._done
        self._notify(callback, done)
        return True

    def cancelled(self) -> bool:
        return self._state == CANCELLED

    def done(self) -> bool:
        return self._state in (CANCELLED, DONE)

    def result(self, timeout: float | None = None) -> Any:
        error = self.exception(timeout)
        if error is not None:
            raise error
        return self._result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        with unit_states:
            if self._state not in (CANCELLED, DONE) and self._done is None:
                self._done = threading.Event()
            done = self._done
        if done is not None and not done.wait(timeout):
            raise TimeoutError(f"work unit of {self.request.unique_id} not done in {timeout}s")
        if self._state == CANCELLED:
            raise CancelledError()
        return self._error

    def settled(self) -> tuple[Any, BaseException | None]:
        """(result, error) of a unit that is done - for its when_done callback, which needs
        no wait and no lock."""
        return self._result, self._error

    def _finish(self, result: Any, error: BaseException | None) -> None:
        self._result, self._error = result, error
        with unit_states:
            self._state = DONE
            callback, done = self._callback, self._done
        self._notify(callback, done)

    def _notify(self, callback: Callable[[WorkUnit], None] | None, done: threading.Event | None) -> None:
        if done is not None:
            done.set()
        if callback is not None:
            callback(self)


_Unit = tuple[float, int, WorkUnit]
_NEVER = float("inf")  # the deadline of an infinite request, in the queue's order


# How an idle thread is woken, measured (bench/http_floor.py, the sample cage under wrk):
# a token in a C SimpleQueue costs far less than a Condition's notify (a lock allocated
# and a Python wait per wake-up) or a lock of the thread's own released: ~11 us of CPU
# per HTTP request against the Condition with a polling lookout this pool had before,
# ~30 us against the own lock. One thread is woken at a time, and it wakes the next if
# more is queued as it takes its unit: a burst does not set every idle thread fighting
# for the GIL with the event loop that is still reading it.


class WorkerPool:
    def __init__(self, name: str, size: int, *, idle_timeout: float = 60.0) -> None:
        if size < 1:
            raise ValueError("a worker pool needs at least one thread")
        self.name, self.size, self.idle_timeout = name, size, idle_timeout
        self._queue: list[_Unit] = []
        # Hot paths hold the mutex itself (a C context manager). Idle threads wait on
        # _wakeups, outside it: each token wakes one of them for one queued unit.
        self._mutex = threading.Lock()
        self._wakeups: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._threads = 0
        self._idle = 0  # threads waiting for a token, not yet sent one
        self._coming = 0  # threads sent a token or started, for a unit they have yet to look for
        self._busy = 0
        self._inline = 0  # slots taken by call() on callers' own threads
        self._stopped = False
        self._serial = 0
        self._owed = False  # a wake put off by enqueue(wake=False), for pay_owed_wake
        self.processed = 0

    def submit(self, request: Request, fn: Callable[..., Any], *args: Any,
               when_done: Callable[[WorkUnit], None] | None = None) -> WorkUnit:
        """Queue `fn(*args)` to run on a worker thread with `request` attached;
        `when_done(unit)` is called (on the worker's thread) once it is done or
        cancelled. Or wait for it with `unit.result(timeout)`."""
        return self.enqueue(WorkUnit(request, fn, args, when_done))

    def enqueue(self, unit: WorkUnit, wake: bool = True) -> WorkUnit:
        """`submit` of a unit made by the caller (the request lifecycle's own kind).

        `wake=False` puts off waking a thread for it until `pay_owed_wake()`, which
        the caller must call soon (the event loop does, before it next waits);
        meanwhile a thread that finishes its unit takes this one without a wake."""
        request = unit.request
        deadline = request.deadline
        self._mutex.acquire()  # not `with`: its enter and exit calls cost as much again, once a request
        try:
            if self._stopped:
                raise RuntimeError(f"worker pool {self.name} has been stopped")
            # request.sort_key(), inline: earliest deadline first, infinite requests last, then arrival
            heapq.heappush(self._queue, (_NEVER if deadline is None else deadline, request.sequence, unit))
            if wake:
                self._wake()
            else:
                self._owed = True
            depth = len(self._queue)
        finally:
            self._mutex.release()
        if depth > self.size and log.enabled(log.DEBUG):  # more wait than there are threads
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
            here = not self._queue and self._busy + self._inline + self._coming < self.size
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
                self._wake()

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

    def pay_owed_wake(self) -> None:
        """The wake enqueue(wake=False) put off, if the unit is still waiting for a thread."""
        if self._owed:
            self._mutex.acquire()
            try:
                self._owed = False
                self._wake()  # may start a thread, which can fail: the mutex must not stay held
            finally:
                self._mutex.release()

    def _wake(self) -> None:
        """(Under the mutex.) A thread for the queue, unless one is coming already, while a
        slot is free: an idle one woken, or a new one. A busy thread looks at the queue
        again when it is done, so work queued behind full slots needs no wake-up."""
        if self._queue and not self._coming and self._busy + self._inline < self.size:
            if self._idle:
                self._idle -= 1
                self._coming += 1
                self._wakeups.put(None)
            elif self._threads < self.size:
                self._coming += 1
                self._threads += 1
                self._serial += 1
                threading.Thread(target=self._work, name=f"{self.name}/{self._serial}", daemon=True).start()

    def _work(self) -> None:
        mutex = self._mutex
        mutex.acquire()
        self._coming -= 1
        try:
            while (unit := self._take()) is not None:
                mutex.release()
                try:
                    self._run(unit)
                finally:
                    mutex.acquire()
                    self._busy -= 1
                    self.processed += 1
        finally:
            self._threads -= 1
            mutex.release()

    def _take(self) -> WorkUnit | None:
        """(Under the mutex, which it may let go while idle.) The next unit, or None when
        this thread should retire: idle for idle_timeout, or the pool stopped."""
        while True:
            if self._queue and self._busy + self._inline < self.size:
                self._busy += 1
                unit = heapq.heappop(self._queue)[2]
                if self._queue:
                    self._wake()  # the next one, while this one starts
                return unit
            if self._stopped:
                return None
            self._idle += 1
            self._mutex.release()
            try:
                self._wakeups.get(timeout=self.idle_timeout)
                woken = True
            except queue.Empty:
                woken = False
            self._mutex.acquire()
            if not woken:
                if self._idle:  # nobody has sent an idle thread a token since: this one goes
                    self._idle -= 1
                    return None
                # A token is on its way to an idle thread (the timeout met it): take it.
                self._mutex.release()
                self._wakeups.get()
                self._mutex.acquire()
            self._coming -= 1

    @staticmethod
    def _run(unit: WorkUnit) -> None:
        unit_states.acquire()  # queued → running (not `with`, as in enqueue)
        state = unit._state
        if state == QUEUED:
            unit._state = RUNNING
        unit_states.release()
        if state != QUEUED:
            return  # the interface gave up on it
        request = unit.request
        now = _request.monotonic()
        if request.deadline is not None and now >= request.deadline:
            unit._finish(None, RequestExpiredError("request has expired and will not be processed"))
            return
        request.started = now
        attached = _request._current  # the thread's current request (request.attach, inline: once per unit)
        previous = getattr(attached, "request", None)
        attached.request = request
        try:
            result = unit.fn(*unit.args)
        except BaseException as e:
            unit._finish(None, e)
        else:
            unit._finish(result, None)
        finally:
            attached.request = previous

    def stop(self, timeout: float = 3.0) -> None:
        """Refuse new work, cancel what is queued, and let the threads go."""
        with self._mutex:
            self._stopped = True
            queued, self._queue = self._queue, []
            idle, self._idle = self._idle, 0
            self._coming += idle
            for _ in range(idle):
                self._wakeups.put(None)
        for _, _, unit in queued:
            unit.cancel()
        end = time.monotonic() + timeout
        while self._threads and time.monotonic() < end:
            time.sleep(0.01)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> int:
        """Slots taken: work on the pool's threads and calls run on their callers' threads."""
        return self._busy + self._inline

    def __repr__(self) -> str:
        return f"<WorkerPool {self.name} busy={self._busy}/{self.size} queued={len(self._queue)}>"
