"""Schedule: an interface that makes a request at the times its config names, a job every night.

`config_interface_<n>.py` names the times in one of two ways:

    cron = "30 2 * * *"                  a standard 5-field cron expression (croniter)
    format = "%H:%M", match = "12:30"    the original's: the wall clock formatted with strftime,
                                         fired when the text changes into one `match` (a regular
                                         expression) matches whole

The original fired once for every second whose text matched, so its own sample fired 60 times
at 12:30; here a firing is a change of the text into a matching one: once a day for the sample.
The text at start counts as seen: a cage started at 12:30:20 first fires the next day.

Each firing is a fire-and-forget request: `interface_<n>.process_request(request, response)`
gets `{"invocation_time": <datetime>}`, the scheduled time (naive local time, as the
original's), under the cage's deadline. A run still going when the next firing comes makes
that firing skipped with a warning, unless `allow_overlap`. Firings missed while the cage was
down, or while the wall clock jumped ahead by more than an hour (the machine slept), are not
run, logged, unless `catch_up`: then the last firing is kept in the cage's state and the missed
ones (the latest CATCH_UP_MAX of them) run one after another, at start or after the jump,
logged. The hour a DST change skips fires its firings at once, as cron does. A wall clock set
back fires nothing until it passes the last look again: no time fires twice, not even in the
hour a DST change repeats.

Wall time and waiting come from a `Clock` (the real one unless the interface is given another),
so that tests drive time without sleeping.
"""

from __future__ import annotations

import collections
import datetime
import re
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from croniter import croniter

from pmnc import interfaces, log
from pmnc.errors import ConfigError, IntakeClosedError, RequestExpiredError, exc_string
from pmnc.lifecycle import Outcome
from pmnc.schema import Key, interface_file
from pmnc.state import set_op

if TYPE_CHECKING:
    from pmnc.runtime import Runtime

__all__ = ["Clock", "Interface"]

CATCH_UP_MAX = 100  # missed firings run at most at start (the latest ones); the rest are logged as skipped
MAX_SCAN = 7 * 86400  # seconds back a format/match schedule looks for missed firings at most
MAX_WAIT = 60.0  # seconds between looks at the clock at most (a clock set by hand is noticed)
JUMP = 3660.0  # seconds past its planned wake-up: the clock jumped (not a DST change) or the machine slept
SECOND = datetime.timedelta(seconds=1)


class Clock:
    """The wall clock (naive local time) and a way to wait on it; tests pass their own."""

    def now(self) -> datetime.datetime:
        return datetime.datetime.now()

    def wait(self, seconds: float, stop: threading.Event) -> bool:
        """Wait `seconds`, or until `stop` is set: whether it is."""
        return stop.wait(seconds)


# --- when to fire (no clock here) -----------------------------------------------------------


class Cron:
    """A standard 5-field cron expression."""

    def __init__(self, expression: str, file: str) -> None:
        if len(expression.split()) != 5 or not croniter.is_valid(expression):
            raise ConfigError(f"{file}: cron must be a standard 5-field cron expression "
                              f"(minute hour day month weekday, such as \"30 2 * * *\"), not {expression!r}")
        self.expression = expression

    def between(self, after: datetime.datetime, upto: datetime.datetime) -> Iterator[datetime.datetime]:
        """The firing times in (after, upto], in order."""
        times = croniter(self.expression, after)
        while (t := times.get_next(datetime.datetime)) <= upto:
            yield t

    def wait(self, now: datetime.datetime) -> float:
        following: datetime.datetime = croniter(self.expression, now).get_next(datetime.datetime)
        return min(max((following - now).total_seconds(), 0.0) + 0.001, MAX_WAIT)  # just past it


class Match:
    """The original's strftime `format` and `match`: fires when the text changes into a match."""

    def __init__(self, format: str, match: str, file: str) -> None:
        try:
            self.match = re.compile(match)
        except re.error as e:
            raise ConfigError(f"{file}: match must be a regular expression, {match!r} is not: {e}") from None
        self.format = format

    def between(self, after: datetime.datetime, upto: datetime.datetime) -> Iterator[datetime.datetime]:
        """The whole seconds in (after, upto] whose text matches and differs from the second before's."""
        second = max(after, upto - datetime.timedelta(seconds=MAX_SCAN)).replace(microsecond=0)
        previous = second.strftime(self.format)
        while (second := second + SECOND) <= upto:
            text = second.strftime(self.format)
            if text != previous and self.match.fullmatch(text):
                yield second
            previous = text

    def wait(self, now: datetime.datetime) -> float:
        return 1.0 - now.microsecond / 1e6 + 0.001  # just past the next whole second


def schedule_of(config: dict[str, Any], file: str) -> Cron | Match:
    cron, format, match = config["cron"], config["format"], config["match"]
    if cron is not None and format is None and match is None:
        return Cron(cron, file)
    if cron is None and format is not None and match is not None:
        return Match(format, match, file)
    raise ConfigError(f"{file}: give either cron (such as \"30 2 * * *\") or both format and match "
                      f"(such as \"%H:%M\" and \"02:30\"), not {_given(config)}")


def _given(config: dict[str, Any]) -> str:
    given = [key for key in ("cron", "format", "match") if config[key] is not None]
    return " and ".join(given) if given else "neither"


# --- the interface ---------------------------------------------------------------------------


class Interface(interfaces.Interface):
    protocol = "schedule"
    keys = interfaces.Interface.keys.extend(
        cron=Key(None, str),  # a 5-field cron expression, or:
        format=Key(None, str),  # the original's strftime pattern ...
        match=Key(None, str),  # ... and the regular expression its text must match whole
        catch_up=Key(False, bool),  # run the firings missed while the cage was down
        allow_overlap=Key(False, bool),  # fire even while the previous run is still going
    )

    def __init__(self, name: str, runtime: Runtime, config: dict[str, Any], *, clock: Clock | None = None) -> None:
        super().__init__(name, runtime, config)
        self.schedule = schedule_of(self.config, interface_file(name))
        self.clock = clock or Clock()
        self.state_module = f"schedule:{name}"  # the cage's state: the last firing, with catch_up
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._running = 0  # runs of the handler not yet finished
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        now = self.clock.now()
        last = self._remembered(now) if self.config["catch_up"] else None
        self._thread = threading.Thread(target=self._loop, args=(now, last), name=f"{self.name}:sch", daemon=True)
        self._thread.start()
        log.message(f"interface {self.name} fires at {self._describe()}")

    def cease(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(MAX_WAIT)

    def _describe(self) -> str:
        if isinstance(self.schedule, Cron):
            return f"cron {self.schedule.expression!r}"
        return f"format {self.schedule.format!r} matching {self.schedule.match.pattern!r}"

    def _remembered(self, now: datetime.datetime) -> datetime.datetime | None:
        last = self.runtime.state.get(self.state_module, "last_firing")
        return last if isinstance(last, datetime.datetime) else None

    # --- the scheduler thread ----------------------------------------------------------------

    def _loop(self, now: datetime.datetime, last: datetime.datetime | None) -> None:
        if last is not None and last < now:
            self._missed(last, now, "while the cage was down")
        last = max(last or now, now)  # a clock set back while the cage was down: no time fires twice
        while True:
            wait = self.schedule.wait(now)
            if self.clock.wait(wait, self._stop):
                return
            planned, now = now + datetime.timedelta(seconds=wait), self.clock.now()
            if now <= last:
                continue  # the clock was set back: nothing fires until it passes the last look again
            try:
                if now > planned + datetime.timedelta(seconds=JUMP):
                    self._missed(last, now, f"while the clock jumped from {last:%Y-%m-%d %H:%M:%S}")
                else:
                    for t in self.schedule.between(last, now):
                        self._fire(t)
            except Exception as e:  # never let the schedule die of one bad moment
                log.error(f"interface {self.name}: {exc_string(e)}")
            last = now

    def _missed(self, after: datetime.datetime, upto: datetime.datetime, why: str) -> None:
        """Firings in (after, upto] the cage could not run on time: the latest few with catch_up, else none."""
        latest: collections.deque[datetime.datetime] = collections.deque(maxlen=CATCH_UP_MAX)
        count = 0
        for t in self.schedule.between(after, upto):
            latest.append(t)
            count += 1
        if not count:
            return
        if not self.config["catch_up"]:
            log.warning(f"interface {self.name}: {count} firing(s) missed {why} are not run "
                        f"(set catch_up to run them)")
            return
        skipped = f", the {count - len(latest)} before them are skipped" if count > len(latest) else ""
        log.message(f"interface {self.name}: {count} firing(s) missed {why}, running the latest "
                    f"{len(latest)} (from {latest[0]:%Y-%m-%d %H:%M:%S}){skipped}")
        for t in latest:
            if self._stop.is_set():
                return
            self._fire(t, wait=not self.config["allow_overlap"])

    def _fire(self, t: datetime.datetime, *, wait: bool = False) -> None:
        """A request for firing time `t`; `wait`: run it to its end on this thread (catching up)."""
        with self._lock:
            if self._running and not self.config["allow_overlap"]:
                log.warning(f"interface {self.name}: the firing at {t:%Y-%m-%d %H:%M:%S} is skipped, "
                            f"the previous run is still going (set allow_overlap to run them at once)")
                return
            self._running += 1
        if self._run(t, wait) and self.config["catch_up"]:
            self.runtime.state.apply([set_op(self.state_module, "last_firing", t)])

    def _run(self, t: datetime.datetime, wait: bool) -> bool:
        """Begin the request and run or submit it, its end counted (`_done`) whatever happens;
        whether it began (not: the cage is stopping)."""
        lifecycle = self.runtime.lifecycle
        description = f"at {t:%Y-%m-%d %H:%M:%S}"
        args: tuple[dict[str, Any], dict[str, Any]] = ({"invocation_time": t}, {})
        try:
            request = lifecycle.begin(interface=self.name, protocol=self.protocol, timeout=self.request_timeout,
                                      parameters={"auth_tokens": {}}, description=description)
        except BaseException:
            self._done()
            return False
        if wait:
            try:
                lifecycle.call(request, lifecycle.handle, self.handler, "process_request", args)
            except Exception as e:
                self._failed(description, e)
            finally:
                self._done()
        else:
            lifecycle.submit(request, lifecycle.handle, self.handler, "process_request", args,
                             when_done=lambda outcome: self._ended(description, outcome))
        return True

    def _ended(self, description: str, outcome: Outcome) -> None:
        """On the worker: the run is over (the handler's result is of no use to anyone)."""
        try:
            outcome.value()
        except Exception as e:
            self._failed(description, e)
        finally:
            self._done()

    def _failed(self, description: str, e: Exception) -> None:
        if isinstance(e, (RequestExpiredError, IntakeClosedError)):
            log.warning(f"interface {self.name}: the run {description} did not finish: {exc_string(e, stack=False)}")
        else:
            log.error(f"interface {self.name}: the run {description} failed: {exc_string(e)}")

    def _done(self) -> None:
        with self._lock:
            self._running -= 1

    def __repr__(self) -> str:
        return f"<schedule.Interface {self.name} running={self._running}>"

# EOF
