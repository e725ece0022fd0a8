"""The original's framework modules that cage code called through `pmnc`, answered by pmnc:

    pmnc.startup.exit()                         stop this cage (the supervisor ends too)
    pmnc.interfaces.get_interface(name)         a running interface object, or None
    pmnc.shared_queues.get(name)                a queue between requests (pmnc.interlocked)
    pmnc.shared_locks.get(name)                 a reader/writer lock, taken with pmnc.request.acquire[_shared]
    pmnc.shared_pools.get_private_thread_pool(name=None, size=None)
                                                threads of this module's own: enqueue(request, f, args, kwargs)
    pmnc.protocol_retry.exit()                  in a retried call: try again later (= pmnc.retry.exit())
    pmnc.notify.info/warning/error/alert(msg[, source])   a notification: logged, kept, sent to health_monitor
    pmnc.notify.extract()                       the kept notifications, oldest first
    pmnc.performance.event(key)                 a request or transaction counted, as an interface's own
    pmnc.performance.sample(key, ms)            a reading in milliseconds
    with pmnc.performance.timing(key): ...      the block's milliseconds, as key.success or key.failure
    pmnc.performance.extract()                  the statistics (the snapshot of monitor/stats.py)
    with pmnc.performance.request_processing(): ...   kept for the original's code: records nothing

In the original these were files of cages/.shared; here they are views of the running
cage (`Shared` holds what they share), so a cage module cannot take these names.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

from pmnc import log
from pmnc import request as _request
from pmnc.errors import DeadlineError
from pmnc.interlocked import InterlockedQueue, SharedLock
from pmnc.monitor.notify import Notifications
from pmnc.monitor.stats import Statistics
from pmnc.request import Request
from pmnc.retry import RetryContext
from pmnc.workers import WorkerPool, WorkUnit


class Cage(Protocol):
    """What these modules need of the running cage: the runtime provides it."""

    @property
    def shared(self) -> Shared: ...

    @property
    def statistics(self) -> Statistics: ...

    @property
    def notifications(self) -> Notifications: ...

    def exit(self) -> None: ...

    def interface(self, name: str) -> Any: ...

    def thread_count(self) -> int: ...


class Shared:
    """The queues, locks and private thread pools of one cage, made on first use by name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.queues: dict[str, InterlockedQueue] = {}
        self.locks: dict[str, SharedLock] = {}
        self.pools: dict[str, ThreadPool] = {}

    def queue(self, name: str) -> InterlockedQueue:
        with self._lock:
            return self.queues.setdefault(name, InterlockedQueue())

    def shared_lock(self, name: str) -> SharedLock:
        with self._lock:
            found = self.locks.get(name)
            if found is None:
                found = self.locks[name] = SharedLock(name)
            return found

    def pool(self, name: str, size: Callable[[], int]) -> ThreadPool:
        with self._lock:
            found = self.pools.get(name)
            if found is None:
                found = self.pools[name] = ThreadPool(name, size())
            return found

    def stop(self) -> None:
        with self._lock:
            pools, self.pools = list(self.pools.values()), {}
        for pool in pools:
            pool.stop()


class ThreadPool:
    """The original's thread pool face over a pmnc worker pool: earliest deadline first."""

    def __init__(self, name: str, size: int) -> None:
        self.name, self.size = name, size
        self._workers = WorkerPool(name, size)

    @property
    def free(self) -> int:
        return max(self.size - self._workers.busy, 0)

    def enqueue(self, request: Request, function: Callable[..., Any], args: tuple[Any, ...] = (),
                kwargs: dict[str, Any] | None = None) -> WorkItem:
        """Run `function(*args, **kwargs)` on a thread of the pool, as `request`."""
        call = functools.partial(function, *args, **(kwargs or {}))
        return WorkItem(self._workers.submit(request, call), request)

    def stop(self) -> None:
        self._workers.stop()


class WorkItem:
    """A queued call: `wait()` gives its result, raises its error, or fails at the deadline
    (the call still runs when it is reached, as in the original)."""

    def __init__(self, unit: WorkUnit, request: Request) -> None:
        self._unit, self._request = unit, request

    def wait(self) -> Any:
        request = self._request
        try:
            return self._unit.result(None if request.infinite else request.remain)
        except TimeoutError as e:
            if isinstance(e, DeadlineError):
                raise
            raise DeadlineError("request deadline waiting for a work unit") from None


class _Module:
    def __init__(self, cage: Cage, source: str) -> None:
        self._cage, self._source = cage, source


class Startup(_Module):
    def exit(self) -> None:
        """Stop this cage as its supervisor would: requests in flight finish, then the cage
        and its supervisor end (the original's stopped cage lingered until its primary died)."""
        self._cage.exit()


class Interfaces(_Module):
    def get_interface(self, name: str) -> Any:
        """The running interface `name` (also one started by a self-test's active_interface),
        or None."""
        return self._cage.interface(name)


class SharedQueues(_Module):
    def get(self, name: str) -> InterlockedQueue:
        """The cage's queue `name`: push(item) here, `pmnc.request.pop(queue)` there."""
        return self._cage.shared.queue(name)


class SharedLocks(_Module):
    def get(self, name: str) -> SharedLock:
        """The cage's lock `name`, to take with `pmnc.request.acquire(lock)` or `acquire_shared(lock)`."""
        return self._cage.shared.shared_lock(name)


class SharedPools(_Module):
    def get_private_thread_pool(self, pool_name: str | None = None, pool_size: int | None = None) -> ThreadPool:
        """Threads of the calling module's own (`module/pool_name`), `thread_count` of them
        unless told; made once, its size fixed then."""
        name = self._source if pool_name is None else f"{self._source}/{pool_name}"
        cage = self._cage
        return cage.shared.pool(name, lambda: pool_size or cage.thread_count())


class ProtocolRetry(_Module):
    def exit(self) -> None:
        RetryContext().exit()


class Notify(_Module):
    """pmnc.notify (monitor/notify.py): rate-limited and de-duplicated, unlike the original's.
    `source="node.cage"` tells another cage's notification (health_monitor re-emits them)."""

    def info(self, message: str, source: str | None = None) -> None:
        self._cage.notifications.add("INFO", message, source)

    def warning(self, message: str, source: str | None = None) -> None:
        self._cage.notifications.add("WARNING", message, source)

    def error(self, message: str, source: str | None = None) -> None:
        self._cage.notifications.add("ERROR", message, source)

    def alert(self, message: str, source: str | None = None) -> None:
        self._cage.notifications.add("ALERT", message, source)

    def extract(self) -> list[dict[str, Any]]:
        """The kept notifications, oldest first: {"timestamp": int, "level", "message", "count"}."""
        return self._cage.notifications.extract()


# what timing() may be given: a time key without its outcome, which the block's end adds
TIME_KEY = re.compile(r"(interface|resource)\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+_time")


class Performance(_Module):
    """pmnc.performance: the original's module, over the cage's statistics (monitor/stats.py).
    Keys are "interface.<name>.<reading>" or "resource.<name>.<reading>"."""

    def event(self, key: str) -> None:
        """A "..._rate[.success|.failure]" event, e.g. "interface.foo.request_rate"."""
        self._cage.statistics.event(key)

    def sample(self, key: str, value: float) -> None:
        """A "..._time[.success|.failure]" reading in milliseconds."""
        self._cage.statistics.sample(key, value)

    def timing(self, key: str) -> Timing:
        """`with pmnc.performance.timing("resource.db.processing_time"):` samples the block's
        milliseconds as key.success, or key.failure if it raises."""
        if not TIME_KEY.fullmatch(key):
            raise ValueError(f"performance key {key!r} is not interface|resource.<name>.<reading>_time")
        return Timing(self._cage.statistics, key)

    def extract(self) -> dict[str, Any]:
        """The statistics now: {"interfaces": {name: series}, "resources": {name: series}}, each
        series with its successes, failures, percentiles and per-10-s and per-minute points
        (Statistics.snapshot; the original returned its own chart data instead)."""
        return self._cage.statistics.snapshot()

    def request_processing(self) -> RequestProcessing:
        """The original's wrapper round a request's processing, which sampled its pending and
        processing time: here the lifecycle measures every request once already, so this only
        logs the begin and end at NOISE level and counts nothing."""
        return RequestProcessing()


class _Stopwatch:
    """A block's time so far, in milliseconds."""

    def __init__(self) -> None:
        self._start = time.monotonic()

    @property
    def elapsed_ms(self) -> float:
        return (time.monotonic() - self._start) * 1000.0

    def __enter__(self) -> Any:
        self._start = time.monotonic()
        return self


class Timing(_Stopwatch):
    """The block's time in milliseconds, sampled when it ends; `elapsed_ms` meanwhile."""

    def __init__(self, statistics: Statistics, key: str) -> None:
        super().__init__()
        self._statistics, self._key = statistics, key

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        outcome = "success" if kind is None else "failure"
        self._statistics.sample(f"{self._key}.{outcome}", self.elapsed_ms)


class RequestProcessing(_Stopwatch):
    """See Performance.request_processing."""

    def __enter__(self) -> RequestProcessing:
        super().__enter__()
        if log.enabled(log.NOISE):
            log.noise(f"request processing begins, {_request.current().elapsed * 1000.0:.0f} ms after the request")
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if log.enabled(log.NOISE):
            outcome = "success" if kind is None else "failure"
            log.noise(f"request processing ends with {outcome} in {self.elapsed_ms:.0f} ms")


# name → the view made for each module's `pmnc`
MODULES: dict[str, type[_Module]] = {
    "startup": Startup, "interfaces": Interfaces, "shared_queues": SharedQueues, "shared_locks": SharedLocks,
    "shared_pools": SharedPools, "protocol_retry": ProtocolRetry, "notify": Notify, "performance": Performance,
}
