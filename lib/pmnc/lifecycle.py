"""The life of a request, one for every interface: `Lifecycle`, and the `Intake` where
requests begin and end.

The intake counts the requests in flight per interface; once closed (the cage
stopping), no request can begin, and the cage waits for those in flight to end.
Where a request ends, its statistics are taken, once (monitor/stats.py).
How a protocol plugs in: docs/protocols.md.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from pmnc import log
from pmnc import request as _request
from pmnc.errors import IntakeClosedError, RequestExpiredError
from pmnc.loader import Loader
from pmnc.monitor.stats import Statistics
from pmnc.request import Request
from pmnc.workers import CANCELLED, DONE, QUEUED, WorkerPool, WorkUnit, unit_states


class Intake:
    """Counts requests in flight, per interface; once closed, no request can begin. Each
    request that ends is counted in `statistics` (None: nowhere)."""

    def __init__(self, statistics: Statistics | None = None) -> None:
        self.statistics = statistics
        self._mutex = threading.Lock()  # begin and end hold it directly: they run once per request
        self._cond = threading.Condition(self._mutex)  # for drain() to wait on
        self._active: dict[str, int] = {}  # interface → requests in flight
        self._open = False
        self._draining = 0  # threads waiting in drain(): only then does end() notify

    def open(self) -> None:
        with self._cond:
            self._open = True

    def begin(self, *, interface: str, protocol: str, timeout: float, parameters: dict[str, Any] | None = None,
              start: float | None = None, **kwargs: Any) -> Request:
        self._mutex.acquire()  # not `with`: its enter and exit calls cost as much again, once a request
        try:
            if not self._open:
                raise IntakeClosedError("request cannot begin, request factory has been shut down")
            self._active[interface] = self._active.get(interface, 0) + 1
        finally:
            self._mutex.release()
        if kwargs or timeout is None:
            return Request(interface=interface, protocol=protocol, timeout=timeout, parameters=parameters,
                           start=start, **kwargs)
        return Request.begun(interface, protocol, timeout, parameters, start)

    def end(self, request: Request, ok: bool) -> None:
        """The request is over: `ok` if its work returned in time (an exception, the deadline,
        never having run, or a handler that raised, though the interface answered, is a failure)."""
        interface = request.interface
        assert interface is not None
        self._mutex.acquire()  # not `with`, as in begin
        try:
            self._active[interface] -= 1
            if self._draining:
                self._cond.notify_all()
        finally:
            self._mutex.release()
        statistics = self.statistics
        if statistics is not None and statistics.enabled:
            now, started, start = _request.monotonic(), request.started, request.start
            if started is None:  # never ran: expired in the queue, or the cage stopping
                statistics.request(interface, now - start, None, now - start, False)
            else:
                statistics.request(interface, started - start, now - started, now - start, ok and not request.failed)

    def close(self) -> int:
        with self._cond:
            self._open = False
            return self.active

    def drain(self, timeout: float, interface: str | None = None) -> int:
        """Wait up to `timeout` for requests in flight (of one interface, or all);
        returns how many remain."""
        def left() -> int:
            return self._active.get(interface, 0) if interface is not None else self.active

        with self._cond:
            self._draining += 1
            try:
                self._cond.wait_for(lambda: not left(), timeout)
            finally:
                self._draining -= 1
            return left()

    @property
    def active(self) -> int:
        return sum(self._active.values())

    def in_flight(self) -> dict[str, int]:
        """Requests in flight per interface, those with any (read without the lock: a page's
        figures may be a moment old, a request never waits for a page)."""
        return {name: count for name, count in list(self._active.items()) if count}


class Outcome:
    """What became of a submitted request's work: its result, or the error it raised (or why
    it never ran: expired in the queue, the cage stopping). One per request: kept light."""

    __slots__ = ("error", "result")

    def __init__(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error

    def value(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class InFlight(WorkUnit):
    """A submitted request: the work unit the worker pool runs, settled once. Whoever comes first
    settles it and ends it at the intake: the work's outcome (handed to `deliver`), the interface's
    deadline (`expire`) or its client leaving (`abandon`). What comes later is dropped: a result
    that comes after the deadline is logged and never answered with. One object and one lock
    (the units' own) per request: this runs for every request of every interface."""

    __slots__ = ("_intake", "_settled", "_when_done")

    def __init__(self, intake: Intake, request: Request, fn: Callable[..., Any], args: tuple[Any, ...],
                 when_done: Callable[[Outcome], None] | None) -> None:
        WorkUnit.__init__(self, request, fn, args, None)  # no callback: InFlight delivers its outcome itself
        self._intake, self._when_done = intake, when_done
        self._settled = False

    def deliver(self, outcome: Outcome) -> None:
        """The outcome, once, on the worker's thread (or the thread that stopped the pool):
        `when_done(outcome)`. An interface may override it instead of passing when_done."""
        assert self._when_done is not None
        self._when_done(outcome)

    def expire(self) -> bool:
        """The deadline came first: True if this settles the request (work still queued never
        starts; the interface answers with its deadline error now), False if the outcome is
        already on its way to `deliver`."""
        with unit_states:
            if self._settled:
                return False
            self._settled = True
            if self._state == QUEUED:
                self._state = CANCELLED
        self._intake.end(self.request, False)
        return True

    def abandon(self) -> None:
        """Nobody waits for the answer any more: work still queued never starts."""
        self.expire()

    def cancel(self) -> bool:
        """The pool stopping with this still queued: it never runs, and says why."""
        with unit_states:
            if self._state != QUEUED:
                return self._state == CANCELLED
            self._state = CANCELLED
            settled, self._settled = self._settled, True
        if not settled:
            self._intake.end(self.request, False)
            request = self.request
            self.deliver(Outcome(error=RequestExpiredError("request has expired and will not be processed")
                              if request.expired else IntakeClosedError("the cage is shutting down")))
        return True

    def _finish(self, result: Any, error: BaseException | None) -> None:
        """On the worker's thread: the work is done (or expired in the queue)."""
        self._result, self._error = result, error
        unit_states.acquire()  # not `with`, as in Intake.begin
        self._state = DONE
        settled, self._settled = self._settled, True
        unit_states.release()
        if settled:
            request = self.request
            if request.expired:
                log.warning(f"request {request.unique_id} finished {request.expired_for:.1f}s "
                            f"after its deadline, the result is discarded")
            return
        self._intake.end(self.request, error is None)
        self.deliver(Outcome(result, error))

    def _refused(self, error: BaseException) -> None:
        """The pool had stopped: it never ran."""
        with unit_states:
            settled, self._settled = self._settled, True
            self._state = CANCELLED
        if not settled:
            self._intake.end(self.request, False)
            self.deliver(Outcome(error=error))


class Lifecycle:
    """One request's life, for every interface:

        begin at the intake → run inline or queued earliest deadline first (workers.py)
        → the handler through the loader → end at the intake, once → a late answer dropped

    An interface is a thin adapter: it turns what arrives into a `begin`, runs `call` (a
    thread of its own waits) or `submit` (an event loop or a poller does not), and turns the
    result into its wire's answer."""

    def __init__(self, intake: Intake, workers: WorkerPool, loader: Loader) -> None:
        self.intake, self.workers, self.loader = intake, workers, loader
        # begin(interface=..., protocol=..., timeout=..., **request_options): a new request,
        # counted at the intake; IntakeClosedError once the cage is stopping. The intake's own
        # method, not a wrapper: it runs once per request on the event loop.
        self.begin = intake.begin

    def handle(self, module: str, method: str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        """`pmnc.<module>.<method>(*args, **kwargs)`: the handler, its current version. One that
        raises makes its request a failure in the statistics, though the interface may turn
        the exception into an answer (an HTTP 500)."""
        try:
            return self.loader.call(module, method, args, kwargs or {})
        except BaseException:
            _request.current().failed = True
            raise

    def call(self, request: Request, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` for `request` now: on this thread if a worker slot is free and nothing
        waits, else queued and waited for. The request ends here. Past the deadline - in the
        queue, or with an answer that came late - RequestExpiredError: a late answer is dropped."""
        ok = False
        try:
            result = self.workers.call(request, fn, *args)
            ok = not request.expired
        except RequestExpiredError:
            raise
        except Exception:
            if request.expired:
                raise RequestExpiredError("request deadline has expired while it was being processed") from None
            raise
        finally:
            self.intake.end(request, ok)
        if not ok:  # the answer came after the deadline
            raise RequestExpiredError("request deadline has expired while it was being processed")
        return result

    def submit(self, request: Request, fn: Callable[..., Any], *args: Any,
               when_done: Callable[[Outcome], None]) -> InFlight:
        """Queue `fn(*args)` for `request`; `when_done(outcome)` is called once, on the worker's
        thread (at once, here, if the cage is stopping), unless the interface settled the request
        first (InFlight.expire/abandon)."""
        return self.enqueue(InFlight(self.intake, request, fn, args, when_done))

    def enqueue(self, flight: InFlight, wake: bool = True) -> InFlight:
        """`submit` for an interface's own kind of InFlight (one that overrides `deliver`);
        `wake=False` from the event loop only (see WorkerPool.enqueue)."""
        try:
            self.workers.enqueue(flight, wake)
        except RuntimeError:  # the worker pool has stopped
            flight._refused(IntakeClosedError("the cage is shutting down"))
        return flight
