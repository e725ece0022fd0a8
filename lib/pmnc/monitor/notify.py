"""pmnc.notify: notifications logged, kept in a bounded list and forwarded to the health_monitor cage.

    notifications.add("WARNING", "the disk is 90 % full")   # pmnc.notify.warning(...) (framework.py)
    notifications.recent(20)                                 # newest first, for the pages
    notifications.extract()                                  # the original's: oldest first

Each notification is logged at MESSAGE level as `[LEVEL] message`, kept (the last
`messages_to_keep` of config_notify.py) and, unless this cage is health_monitor itself
and provided its `rpc` interface and its retry queue's interface are running, queued
as a persistent retried call `health_monitor_event.notify(timestamp, node, cage, level,
message)` to cage health_monitor, as the original did: durable, at least once.

Unlike the original, a loop cannot flood anything with them:

- the same level and message again within `dedupe_seconds` of the first is folded into
  the kept entry (its count and time go up; it becomes the newest) - not logged, kept
  or forwarded again;
- each level has a token bucket (`rate_per_minute`, `burst`): a notification that finds
  it empty is only counted, and once a token is back one "N notifications suppressed"
  notification of that level is logged, kept and forwarded instead (a timer sees to it
  if nothing else is notified meanwhile).

A notification may name the cage it comes from (`source="node.cage"`; this cage's by
default): health_monitor re-emits other cages' notifications so, and there each source
has buckets and repeats of its own - one noisy cage does not silence the others (past
MAX_BUCKETS sources at once, newcomers share one bucket per level, source "*"). Only
this cage's own notifications are forwarded.

This module knows nothing of the runtime (runtime.py imports it): what it needs of the
running cage - its loader, its own `pmnc`, its interfaces - it is given by `attach`.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pmnc import log
from pmnc.config import read_settings
from pmnc.errors import exc_string
from pmnc.loader import Loader
from pmnc.schema import Key, Schema

LEVELS = ("INFO", "WARNING", "ERROR", "ALERT")
MONITOR = "health_monitor"  # the cage notifications are forwarded to
MAX_MESSAGE = 4096  # characters of a message kept and forwarded; the rest is cut
SETTINGS_PERIOD = 1.0  # seconds config_notify.py is read at most once in
TIMER_SLACK = 0.05  # seconds the summary timer waits beyond the token's due time
MAX_SOURCE = 100  # characters of a source's name
MAX_BUCKETS = 1000  # (source, level) buckets kept; beyond, new sources share one per level
OVERFLOW = "*"  # the source of that shared bucket

Notification = dict[str, Any]  # {"time", "first", "level", "message", "count", "source"}


class _AtLeast:
    """A config conversion: a number no less than `minimum`."""

    def __init__(self, kind: type[int] | type[float], minimum: float, expected: str) -> None:
        self.kind, self.minimum, self.expected = kind, minimum, expected

    def __call__(self, value: Any) -> Any:
        if isinstance(value, bool):
            raise TypeError(self.expected)
        number = self.kind(value)
        if number < self.minimum:
            raise ValueError(self.expected)
        return number


KEYS = Schema(
    messages_to_keep=Key(100, _AtLeast(int, 1, "a whole number of 1 or more")),
    retry_queue=Key("retry", str),
    rate_per_minute=Key(10.0, _AtLeast(float, 0.001, "a positive number")),
    burst=Key(20, _AtLeast(int, 1, "a whole number of 1 or more")),
    dedupe_seconds=Key(60.0, _AtLeast(float, 0.0, "a number of 0 or more")),
)


@dataclass(frozen=True)
class Settings:
    """The keys of config_notify.py."""

    messages_to_keep: int = 100
    retry_queue: str = "retry"
    rate_per_minute: float = 10.0
    burst: int = 20
    dedupe_seconds: float = 60.0


class CageServices(Protocol):
    """What forwarding needs of the running cage: the runtime provides it."""

    @property
    def loader(self) -> Loader: ...

    @property
    def root(self) -> Callable[..., Any]: ...  # the framework's own `pmnc`: root("cage", queue=...)

    def interface(self, name: str) -> Any: ...


Schedule = Callable[[float, Callable[[], None]], Callable[[], None]]  # (delay, action) -> cancel


def timer(delay: float, action: Callable[[], None]) -> Callable[[], None]:
    """Run `action` in `delay` seconds on a daemon thread; returns what cancels it."""
    thread = threading.Timer(delay, action)
    thread.name, thread.daemon = "notify", True
    thread.start()
    return thread.cancel


@dataclass
class _Entry:
    first: float
    time: float
    source: str
    level: str
    message: str
    count: int = 1


Source = tuple[str, str]  # (source, level): what has a bucket and a count of suppressed


class _Bucket:
    """A token bucket: `burst` tokens, refilled at `rate_per_minute`."""

    def __init__(self, now: float, burst: int) -> None:
        self.tokens, self.updated = float(burst), now

    def take(self, now: float, settings: Settings) -> bool:
        self._refill(now, settings)
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def due_in(self, now: float, settings: Settings) -> float:
        """Seconds until a token is there."""
        self._refill(now, settings)
        return max(0.0, (1.0 - self.tokens) * 60.0 / settings.rate_per_minute)

    def _refill(self, now: float, settings: Settings) -> None:
        elapsed = max(0.0, now - self.updated)  # a clock set back refills nothing
        self.tokens = min(float(settings.burst), self.tokens + elapsed * settings.rate_per_minute / 60.0)
        self.updated = now


class Notifications:
    """The cage's notifications; thread-safe. Log lines and forwarded calls are made
    outside the lock, so a slow state file holds up no other notifier."""

    def __init__(self, cage: str, node: str, *, clock: Callable[[], float] = time.time,
                 schedule: Schedule | None = timer) -> None:
        self.cage, self.node, self.clock = cage, node, clock
        self.source = f"{node}.{cage}"
        self._schedule = schedule
        self._services: CageServices | None = None
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # oldest first
        self._live: dict[tuple[str, str, str], int] = {}  # (source, level, message) → its entry, for folding
        self._seq = itertools.count()
        self._buckets: dict[Source, _Bucket] = {}
        self._suppressed: dict[Source, int] = {}  # only those with some
        self._cancel: Callable[[], None] | None = None  # the pending summary timer's
        self._closed = False
        self._settings = Settings()
        self._settings_read = -SETTINGS_PERIOD
        self._settings_error = ""

    def attach(self, services: CageServices) -> None:
        """The running cage: config_notify.py is read from now on, and notifications forwarded."""
        self._services = services
        self._settings_read = -SETTINGS_PERIOD

    # --- adding ------------------------------------------------------------------------------

    def add(self, level: str, message: Any, source: str | None = None) -> None:
        """Log, keep and forward a notification - or fold it into its repeat, or count it
        as suppressed. `source`: the "node.cage" it comes from, if not this cage. Raises
        only for a level that is not one of LEVELS."""
        if level not in LEVELS:
            raise ValueError(f"notification level {level!r} is not one of {', '.join(LEVELS)}")
        text = _text(message)
        origin = self.source if source is None else _text(source)[:MAX_SOURCE]
        settings = self.settings()
        with self._lock:
            now = self.clock()
            published = self._summaries(now, settings)
            entry = self._admit(origin, level, text, now, settings)
            if entry is not None:
                published.append(entry)
            self._arm(now, settings)
        self._publish(published, settings)

    def flush(self) -> None:
        """The "N notifications suppressed" of every level whose bucket has a token again
        (the timer calls it; tests with their own clock do)."""
        settings = self.settings()
        with self._lock:
            self._cancel = None
            if self._closed:
                return
            now = self.clock()
            published = self._summaries(now, settings)
            self._arm(now, settings)
        self._publish(published, settings)

    def close(self) -> None:
        """No more summaries by the timer (the cage is stopping)."""
        with self._lock:
            self._closed = True
            cancel, self._cancel = self._cancel, None
        if cancel is not None:
            cancel()

    def _admit(self, source: str, level: str, message: str, now: float, settings: Settings) -> _Entry | None:
        """The new entry to publish, or None: folded into a repeat, or suppressed."""
        key = (source, level, message)
        seq = self._live.get(key)
        if seq is not None:
            entry = self._entries[seq]
            if now - entry.first < settings.dedupe_seconds:
                entry.count += 1
                entry.time = max(entry.time, now)
                self._entries.move_to_end(seq)  # the newest, and the last to be dropped
                return None
            del self._live[key]  # its window is over: a new entry
        bucket_key = self._bucket_key((source, level), now, settings)
        if not self._bucket(bucket_key, now, settings).take(now, settings):
            self._suppressed[bucket_key] = self._suppressed.get(bucket_key, 0) + 1
            return None
        return self._keep(source, level, message, now, settings)

    def _summaries(self, now: float, settings: Settings) -> list[_Entry]:
        """One "N suppressed" entry for each source and level with some suppressed and a token back."""
        made: list[_Entry] = []
        for key, count in list(self._suppressed.items()):
            if self._bucket(key, now, settings).take(now, settings):
                del self._suppressed[key]
                plural = "notification" if count == 1 else "notifications"
                text = f"{count} {plural} suppressed (more than {settings.rate_per_minute:g} a minute)"
                made.append(self._keep(*key, text, now, settings))
        return made

    def _keep(self, source: str, level: str, message: str, now: float, settings: Settings) -> _Entry:
        entry = _Entry(now, now, source, level, message)
        seq = next(self._seq)
        self._entries[seq] = entry
        self._live[(source, level, message)] = seq
        while len(self._entries) > settings.messages_to_keep:
            old_seq, old = self._entries.popitem(last=False)
            old_key = (old.source, old.level, old.message)
            if self._live.get(old_key) == old_seq:
                del self._live[old_key]
        return entry

    def _bucket_key(self, key: Source, now: float, settings: Settings) -> Source:
        """`key`, or the shared one of its level when MAX_BUCKETS sources are busy at once."""
        if key in self._buckets or len(self._buckets) < MAX_BUCKETS:
            return key
        for old, bucket in list(self._buckets.items()):  # a full bucket is as good as a new one
            if old not in self._suppressed and bucket.due_in(now, settings) == 0.0 and \
                    bucket.tokens >= settings.burst:
                del self._buckets[old]
        return key if len(self._buckets) < MAX_BUCKETS else (OVERFLOW, key[1])

    def _bucket(self, key: Source, now: float, settings: Settings) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(now, settings.burst)
        return bucket

    def _arm(self, now: float, settings: Settings) -> None:
        """Have the timer come back when the first bucket holding suppressed ones has a token."""
        if self._cancel is not None or self._closed or self._schedule is None:
            return
        waits = [self._bucket(key, now, settings).due_in(now, settings) for key in self._suppressed]
        if waits:
            self._cancel = self._schedule(min(waits) + TIMER_SLACK, self.flush)

    # --- out of the lock: the log and the health monitor --------------------------------------

    def _publish(self, entries: list[_Entry], settings: Settings) -> None:
        for entry in entries:
            log.message(f"[{entry.level}] {entry.message}")
            self._forward(entry, settings)

    def _forward(self, entry: _Entry, settings: Settings) -> None:
        """Queue the retried call to health_monitor; a failure is logged, never raised: the
        notifier's request goes on."""
        services = self._services
        if services is None or self.cage == MONITOR or entry.source != self.source:
            return
        try:
            if services.interface("rpc") is None or services.interface(settings.retry_queue) is None:
                return
            monitor = services.root(MONITOR, queue=settings.retry_queue)
            monitor.health_monitor_event.notify(int(entry.first), self.node, self.cage, entry.level, entry.message)
        except Exception as e:
            log.error(f"notification not forwarded to cage {MONITOR}: {exc_string(e)}")

    # --- reading ------------------------------------------------------------------------------

    def recent(self, n: int = 100) -> list[Notification]:
        """The last `n` notifications, newest first."""
        with self._lock:
            entries = list(itertools.islice(reversed(self._entries.values()), max(n, 0)))
        return [{"time": e.time, "first": e.first, "level": e.level, "message": e.message, "count": e.count,
                 "source": e.source} for e in entries]

    def extract(self) -> list[dict[str, Any]]:
        """The original's pmnc.notify.extract(): every kept notification, oldest first, as
        {"timestamp": int, "level", "message"} (and "count", the repeats folded in)."""
        with self._lock:
            entries = list(self._entries.values())
        return [{"timestamp": int(e.time), "level": e.level, "message": e.message, "count": e.count}
                for e in entries]

    @property
    def suppressed(self) -> dict[str, int]:
        """Notifications suppressed per level (of every source) and not yet summarised."""
        with self._lock:
            totals = dict.fromkeys(LEVELS, 0)
            for (_, level), count in self._suppressed.items():
                totals[level] += count
            return totals

    def settings(self) -> Settings:
        """config_notify.py, read at most once a second; its defaults until the cage is attached
        or when the file is missing, the last good settings when it is broken."""
        services = self._services
        if services is None:
            return self._settings
        now = time.monotonic()
        if now - self._settings_read < SETTINGS_PERIOD:
            return self._settings
        self._settings_read = now
        try:
            self._settings = Settings(**read_settings(services.loader, "notify", KEYS))
            self._settings_error = ""
        except Exception as e:
            error = exc_string(e, stack=False)
            if error != self._settings_error:  # said once, not every second
                self._settings_error = error
                log.error(f"config_notify.py cannot be used, notifications keep their settings: {error}")
        return self._settings

    def __repr__(self) -> str:
        return f"<Notifications of {self.source} kept={len(self._entries)} suppressed={sum(self._suppressed.values())}>"


def _text(message: Any) -> str:
    """The message as text, cut at MAX_MESSAGE characters."""
    try:
        text = message if isinstance(message, str) else str(message)
    except Exception:
        text = f"<unprintable {type(message).__name__}>"
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 3] + "..."
