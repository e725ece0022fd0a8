"""Request and resource statistics: taken once per request at the intake's end (lifecycle.py)
and once per resource call (transaction.py), kept in 10-second slots for the last ten minutes
and one-minute slots for the last hour, with percentiles.

    stats = Statistics(clock=time.time)       # wall-clock seconds: slots align to the epoch
    stats.enabled = False                     # config_interfaces.py statistics=False: nothing taken

    stats.request(interface, pending, processing, response, ok)   # seconds; processing None: never ran
    stats.resource(resource, pending, processing, ok)             # seconds

    stats.event(key); stats.sample(key, ms)   # the original's pmnc.performance keys (below)
    stats.snapshot()                          # every series, its windows and percentiles (the pages)
    stats.totals()                            # cumulative since start, in buckets (/metrics)

snapshot() is {"interfaces": {name: Series}, "resources": {name: Series}}, where

    Series = {"success": int, "failure": int,           # since start
              "readings": {"pending": Dist, "processing": Dist, "response": Dist},   # since start;
                                    # resources have no response; extra sample() readings by name
              "events": {reading: int},                 # event() readings not counted as requests
              "last_minute": Point,                     # the 6 most recent 10-s slots, the current one included
              "minutes": [Point] * 60,                  # 10-s slots, oldest first, the current (partial) one last
              "hour": [Point] * 60}                     # one-minute slots, the same
    Point = {"t": epoch seconds (the slot's start), "seconds": what the rate is over (the slot, or
             its part since the statistics began or until now, at least 1), "rate": per second,
             "success": int, "failure": int, "pending", "processing", "response": Dist | None}
    Dist = {"count": int, "sum": s, "max": s, "p50": s, "p95": s, "p99": s}   # None: no values

The hot path is cheap: a record is appended, without a lock, to a deque of records (its
appends are atomic). Once FOLD_AT records wait, the `statistics` thread is started if it is
not running: every FOLD_PERIOD it folds what waits into the slots under the one lock, a
column at a time, FOLD_CHUNK records at once, letting the GIL go between chunks; a reader
(snapshot, totals) folds what waits first. Folding on the requests' own threads cost 6.4 %
of a hello cage's requests/s (a thread holding the GIL for a batch stalls the others); on a
thread of its own, twice a second, in chunks, 2.8 % and p99 +2 ms (bench/monitoring.py;
bench/README.md has the runs). Past WAITING_LIMIT records a caller folds itself, so memory
stays bounded if that thread cannot keep up. Each record carries its own time, so it lands in
its own slot however late it is folded; records of requests and resource calls that span
several slots are folded in the order they came, together. A slot past keeps its percentiles
once computed.

Percentiles are by nearest rank over the values in the window, each value first rounded half
up to three significant digits in microseconds, and at least to whole microseconds (1234567 µs
→ 1230000 µs, 12.6 µs → 13 µs): a slot keeps a sparse histogram of those, bounded in size
whatever the load. Known data of at most three significant digits in microseconds gives
exact percentiles. Counts, sums and maxima are exact.

A slot is completed when time moves past it: it is then folded into its minute and into the
totals since start, and the current slot is added to them when read. A clock that jumps
(forward, or back by more than ten minutes) starts the windows afresh; what was taken
stays in the totals.

The original's keys (pmnc.performance.event/sample): "interface.<name>.<reading>" or
"resource.<name>.<reading>", the reading ending in `_rate` (event) or `_time` (sample), with
an optional ".success" or ".failure". pending_time, processing_time and response_time are
this module's readings (ms); request_rate, response_rate and transaction_rate with an outcome
count as a request (or resource call) of that outcome; any other reading, or a rate without
an outcome (the original's request_rate counted requests accepted, whose outcome comes later),
is kept since start as an extra reading of its series ("readings" for times, "events" for
rates). A malformed key raises ValueError, whether statistics are on or off.
"""

from __future__ import annotations

import heapq
import math
import operator
import re
import threading
import time
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable, Sequence
from itertools import accumulate, islice
from typing import Any

SLOT = 10  # seconds of a short slot
SLOTS = 60  # short slots kept: the last ten minutes
SLOTS_PER_MINUTE = 60 // SLOT
MINUTES = 60  # one-minute slots kept: the last hour
LAST_MINUTE = SLOTS_PER_MINUTE  # short slots in "last_minute", the current one included
FOLD_AT = 256  # records waiting before the statistics thread is started (if it is not running)
FOLD_PERIOD = 0.5  # seconds between the statistics thread's folds (see bench/README.md, monitoring.py)
FOLD_CHUNK = 1024  # records of each kind folded under the lock at once (~1 ms): then the GIL is let go
FOLDER_IDLE = 10.0  # seconds without records after which the statistics thread ends (started again when needed)
WAITING_LIMIT = 100_000  # past this, a caller waits for the lock to fold: memory stays bounded
LONGEST = 1e6  # seconds: a longer (or not a number) reading is a bug upstream, taken as this

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, math.inf)
_BUCKET_US = [b * 1e6 for b in BUCKETS]
PERCENTILES = (50, 95, 99)
READINGS = ("pending", "processing", "response")

_KEY = re.compile(r"(interface|resource)\.([A-Za-z0-9_-]{1,128})\.([A-Za-z0-9_-]{1,64}_(?:rate|time))"
                  r"(?:\.(success|failure))?")
_KINDS = {"interface": "interfaces", "resource": "resources"}
_TIME_READINGS = {"pending_time": "pending", "processing_time": "processing", "response_time": "response"}
_RATE_READINGS = frozenset({"request_rate", "response_rate", "transaction_rate"})
_PARSED_LIMIT = 10_000  # parsed keys remembered; user code could make up any number of them

Record = tuple[str, float, float | None, float | None, bool, float]


def _key(x: float) -> float:
    """A value in seconds (>= 0) as a histogram key: microseconds rounded half up to three
    significant digits, and at least to whole microseconds (a whole number, as a float)."""
    if x < 0.000_999_5:
        return (x * 1e6 + 0.5) // 1
    scale, digits = 10.0, 1e5  # value * digits: the three significant digits
    while x >= 999.5 / digits:
        scale, digits = scale * 10, digits / 10
    return (x * digits + 0.5) // 1 * scale


def _keys(xs: Sequence[float]) -> list[float]:
    """_key of each value, the common magnitudes inline (up to 100 ms): this runs once per
    value taken, the cost of the statistics."""
    return [(x * 1e6 + 0.5) // 1 if x < 0.000_999_5 else (x * 1e5 + 0.5) // 1 * 10 if x < 0.009_995
            else (x * 1e4 + 0.5) // 1 * 100 if x < 0.099_95 else _key(x) for x in xs]


class _Dist:
    """The values of one reading in one slot: count, sum, max and a sparse histogram."""

    __slots__ = ("count", "hist", "max", "sum", "summarised")

    def __init__(self) -> None:
        self.count, self.sum, self.max = 0, 0.0, 0.0
        self.hist: Counter[float] = Counter()  # _key(value) → how many
        self.summarised: dict[str, Any] | None = None  # summary() until a value comes: slots past keep theirs

    def add(self, x: float) -> None:
        self.add_many((x,))

    def add_many(self, xs: Sequence[float]) -> None:
        if not xs:
            return
        total, top = sum(xs), max(xs)
        if not (min(xs) >= 0.0 and top < LONGEST and total == total):  # total is NaN if a value is
            xs = [x if 0.0 <= x < LONGEST else LONGEST if x >= LONGEST else 0.0 for x in xs]
            total, top = sum(xs), max(xs)  # below 0: a clock step inside one measurement
        self.count += len(xs)
        self.sum += total
        if top > self.max:
            self.max = top
        self.hist.update(_keys(xs))
        self.summarised = None

    def merge(self, other: _Dist) -> None:
        if not other.count:
            return
        self.count += other.count
        self.sum += other.sum
        if other.max > self.max:
            self.max = other.max
        self.hist.update(other.hist)
        self.summarised = None

    def summary(self) -> dict[str, Any] | None:
        """Dist of the contract (seconds), None without values."""
        if not self.count:
            return None
        if self.summarised is None:
            self.summarised = {"count": self.count, "sum": self.sum, "max": self.max}
            self.summarised.update(zip(("p50", "p95", "p99"), self.percentiles(PERCENTILES), strict=True))
        return dict(self.summarised)

    def percentiles(self, ps: tuple[int, ...]) -> list[float]:
        """Nearest rank: the smallest value with at least ceil(p% of count) values at or below it."""
        keys = sorted(self.hist)
        below = list(accumulate(map(self.hist.__getitem__, keys)))  # values at or below each key
        return [keys[bisect_left(below, max(1, -(-p * self.count // 100)))] / 1e6 for p in ps]

    def buckets(self) -> list[tuple[float, int]]:
        """(le seconds, cumulative count) at BUCKETS, the last one (inf, count)."""
        counts = [0] * len(BUCKETS)
        for u, n in self.hist.items():
            counts[bisect_left(_BUCKET_US, u)] += n
        total, cumulative = 0, []
        for le, n in zip(BUCKETS, counts, strict=True):
            total += n
            cumulative.append((le, total))
        return cumulative


class _Slot:
    """Requests (or resource calls) in one slot of time: outcomes and the three readings."""

    __slots__ = ("failure", "pending", "processing", "response", "success")

    def __init__(self) -> None:
        self.success = self.failure = 0
        self.pending, self.processing, self.response = _Dist(), _Dist(), _Dist()

    def add_many(self, pendings: Sequence[float], processings: Sequence[float | None],
                 responses: Sequence[float | None], oks: Sequence[bool]) -> None:
        """Records, as columns (processing None: never ran; response None: a resource call)."""
        success = sum(oks)
        self.success += success
        self.failure += len(oks) - success
        self.pending.add_many(pendings)
        self.processing.add_many(_given(processings))
        self.response.add_many(_given(responses))

    def merge(self, other: _Slot) -> None:
        self.success += other.success
        self.failure += other.failure
        self.pending.merge(other.pending)
        self.processing.merge(other.processing)
        self.response.merge(other.response)

    def copy(self) -> _Slot:
        twin = _Slot()
        twin.merge(self)
        return twin

    def reading(self, name: str) -> _Dist:
        dist: _Dist = getattr(self, name)
        return dist


class _Series:
    """One interface or resource: its short slots, its minutes and its totals."""

    __slots__ = ("events", "extras", "minutes", "tens", "total")

    def __init__(self) -> None:
        self.tens: dict[int, _Slot] = {}  # short slot number (epoch seconds // SLOT) → slot
        self.minutes: dict[int, _Slot] = {}  # minute number → its completed short slots
        self.total = _Slot()  # every completed short slot since start
        self.extras: dict[str, _Dist] = {}  # sample() readings not of this module's three
        self.events: dict[str, int] = {}  # event() readings not counted as requests

    def complete(self, n: int) -> None:
        """Short slot `n` is over: into its minute and the totals."""
        slot = self.tens.get(n)
        if slot is not None:
            self.minutes.setdefault(n // SLOTS_PER_MINUTE, _Slot()).merge(slot)
            self.total.merge(slot)

    def prune(self, n: int) -> None:
        """Forget the slots and minutes out of the windows that end with short slot `n`."""
        m = n // SLOTS_PER_MINUTE
        for k in [k for k in self.tens if not n - SLOTS < k <= n]:
            del self.tens[k]
        for k in [k for k in self.minutes if not m - MINUTES < k <= m]:
            del self.minutes[k]

    def late(self, n: int, current: int) -> list[_Slot]:
        """Where a record of completed short slot `n` goes: its slot and minute while they are
        kept, and the totals."""
        targets = [self.total]
        if n > current - SLOTS:
            targets.append(self.tens.setdefault(n, _Slot()))
        m = n // SLOTS_PER_MINUTE
        if m > current // SLOTS_PER_MINUTE - MINUTES:
            targets.append(self.minutes.setdefault(m, _Slot()))
        return targets

    def since_start(self, current: int) -> _Slot:
        everything = self.total.copy()
        slot = self.tens.get(current)
        if slot is not None:
            everything.merge(slot)
        return everything

    def minute(self, m: int, current: int) -> _Slot | None:
        """Minute `m`: its completed short slots, and the current one if it is of `m`."""
        done = self.minutes.get(m)
        slot = self.tens.get(current) if current // SLOTS_PER_MINUTE == m else None
        if slot is None:
            return done
        if done is None:
            return slot
        both = done.copy()
        both.merge(slot)
        return both


class Statistics:
    """The cage's statistics (runtime.statistics): see the module's docstring. Thread-safe."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.enabled = True
        self._born = clock()
        self._lock = threading.Lock()
        self._waiting: dict[str, deque[Record]] = {"interfaces": deque(), "resources": deque()}
        self._requests = self._waiting["interfaces"]
        self._resources = self._waiting["resources"]
        self._series: dict[str, dict[str, _Series]] = {"interfaces": {}, "resources": {}}
        # the current short slot of each series (and its number): where nearly every record goes
        self._current_slots: dict[str, dict[str, _Slot]] = {"interfaces": {}, "resources": {}}
        self._current = int(self._born // SLOT)
        self._parsed: dict[str, tuple[str, str, str, str | None]] = {}
        # records are folded by a thread of their own, off the requests' threads (_fold_soon)
        self._stop = threading.Event()  # never set: the thread's wait between folds
        self._folder: threading.Thread | None = None
        self._folder_lock = threading.Lock()

    # --- the hot path --------------------------------------------------------------------

    def request(self, interface: str, pending: float, processing: float | None, response: float, ok: bool) -> None:
        """One request, at the intake's end (seconds; processing None: it never ran)."""
        if self.enabled:
            records = self._requests
            records.append((interface, pending, processing, response, ok, self.clock()))
            if len(records) >= FOLD_AT and (self._folder is None or len(records) >= WAITING_LIMIT):
                self._fold_soon(len(records))

    def resource(self, resource: str, pending: float, processing: float, ok: bool) -> None:
        """One resource call (seconds): waiting for its pool, then begin_transaction and the call."""
        if self.enabled:
            records = self._resources
            records.append((resource, pending, processing, None, ok, self.clock()))
            if len(records) >= FOLD_AT and (self._folder is None or len(records) >= WAITING_LIMIT):
                self._fold_soon(len(records))

    def _fold_soon(self, waiting: int) -> None:
        """Records wait: have the statistics thread fold them every FOLD_PERIOD, starting it if
        it is not running; fold here, waiting for the lock, only when very many records wait
        (the thread cannot keep up): memory stays bounded."""
        if waiting >= WAITING_LIMIT:
            with self._lock:
                self._fold()
        elif self._folder is None:
            with self._folder_lock:
                if self._folder is None:
                    self._folder = threading.Thread(target=self._folding, name="statistics", daemon=True)
                    self._folder.start()

    def _folding(self) -> None:
        """The statistics thread: folds what waits every FOLD_PERIOD (one batch a period, not
        one every FOLD_AT records: the fewer times it takes the GIL, the less the requests'
        threads are held up); ends once nothing came for FOLDER_IDLE seconds."""
        idle = 0.0
        while idle < FOLDER_IDLE:
            self._stop.wait(FOLD_PERIOD)
            came = any(self._waiting.values())
            while any(self._waiting.values()):
                with self._lock:
                    self._fold(FOLD_CHUNK)
                time.sleep(0)  # the GIL to the requests' threads between chunks: their p99
            idle = 0.0 if came else idle + FOLD_PERIOD
        with self._folder_lock:
            self._folder = None

    # --- folding (under the lock) ----------------------------------------------------------

    def _fold(self, limit: int | None = None) -> None:
        """Fold what waits (at most `limit` records of each kind)."""
        batches = [(kind, _take(records, limit)) for kind, records in self._waiting.items() if records]
        if not batches:
            return
        first = int(min(min(map(_when, batch)) for _, batch in batches) // SLOT)  # C per record
        last = int(max(max(map(_when, batch)) for _, batch in batches) // SLOT)
        if first == last:  # the common case: all in one short slot, the kinds in any order
            for kind, batch in batches:
                self._fold_batch(kind, first, batch)
            return
        # Across slots, requests and resource calls go in the order they came, together: folded
        # one kind after the other, the first would move time on and the other's records of
        # earlier slots would look like a clock set back (a quiet cage's records wait long).
        groups: dict[tuple[int, str, str], list[Record]] = {}
        merged = heapq.merge(*[[(r[5], kind, r) for r in batch] for kind, batch in batches], key=lambda t: t[0])
        for _, kind, record in merged:
            groups.setdefault((int(record[5] // SLOT), kind, record[0]), []).append(record)
        for (n, kind, name), records_of in groups.items():  # in the order they came: a clock set back is seen so
            self._fold_group(kind, name, n, list(zip(*records_of, strict=True)))

    def _fold_batch(self, kind: str, n: int, batch: list[Record]) -> None:
        """Records of one kind, all in short slot `n`."""
        columns = list(zip(*batch, strict=True))
        names = columns[0]
        if names.count(names[0]) == len(names):
            self._fold_group(kind, names[0], n, columns)  # the common case: one series
            return
        by_name: dict[str, list[Record]] = {}
        for record in batch:
            by_name.setdefault(record[0], []).append(record)
        for name, records_of in by_name.items():
            self._fold_group(kind, name, n, list(zip(*records_of, strict=True)))

    def _fold_group(self, kind: str, name: str, n: int, columns: list[tuple[Any, ...]]) -> None:
        """Records of one series in one short slot, as columns."""
        _, pendings, processings, responses, oks, _ = columns
        if n == self._current:
            slot = self._current_slots[kind].get(name) or self._open(kind, name)
            slot.add_many(pendings, processings, responses, oks)
            return
        targets = self._targets(kind, name, n)
        if len(targets) == 1:
            targets[0].add_many(pendings, processings, responses, oks)
            return
        group = _Slot()
        group.add_many(pendings, processings, responses, oks)
        for target in targets:
            target.merge(group)

    def _open(self, kind: str, name: str) -> _Slot:
        """The current short slot of a series, the series made on its first record."""
        series = self._series[kind].get(name)
        if series is None:
            series = self._series[kind][name] = _Series()
        slot = series.tens.get(self._current)
        if slot is None:
            slot = series.tens[self._current] = _Slot()
        self._current_slots[kind][name] = slot
        return slot

    def _targets(self, kind: str, name: str, n: int) -> list[_Slot]:
        """The slots a record of short slot `n` goes to; time moves on to `n` if it is later
        than the current slot (or much earlier: the clock was set back)."""
        if n > self._current or n <= self._current - SLOTS:
            self._move_to(n)
        if n == self._current:
            slot = self._current_slots[kind].get(name)
            return [slot if slot is not None else self._open(kind, name)]
        series = self._series[kind].get(name)
        if series is None:
            series = self._series[kind][name] = _Series()
        return series.late(n, self._current)

    def _move_to(self, n: int) -> None:
        """Complete the current short slot and make `n` the current one."""
        for by_name in self._series.values():
            for series in by_name.values():
                series.complete(self._current)
                series.prune(n)
        self._current = n
        for slots in self._current_slots.values():
            slots.clear()

    def _now(self) -> float:
        """Fold what is waiting and move on to the clock's slot; the clock's time."""
        self._fold()
        now = self.clock()
        n = int(now // SLOT)
        if n > self._current or n <= self._current - SLOTS:
            self._move_to(n)
        return now

    # --- the original's pmnc.performance ---------------------------------------------------

    def event(self, key: str) -> None:
        """`interface|resource.<name>.<reading>_rate[.success|.failure]`: one event."""
        kind, name, reading, outcome = self._parse(key, "_rate")
        if not self.enabled:
            return
        with self._lock:
            now = self._now()
            if reading in _RATE_READINGS and outcome is not None:
                for slot in self._targets(kind, name, int(now // SLOT)):
                    if outcome == "success":
                        slot.success += 1
                    else:
                        slot.failure += 1
            else:
                series = self._series_of(kind, name)
                label = reading if outcome is None else f"{reading}.{outcome}"
                series.events[label] = series.events.get(label, 0) + 1

    def sample(self, key: str, ms: float) -> None:
        """`interface|resource.<name>.<reading>_time[.success|.failure]`: one reading, in ms."""
        kind, name, reading, outcome = self._parse(key, "_time")
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not 0 <= ms < math.inf:
            raise ValueError(f"a performance sample is a number of milliseconds >= 0, not {ms!r}")
        if not self.enabled:
            return
        seconds = ms / 1000.0
        with self._lock:
            now = self._now()
            ours = _TIME_READINGS.get(reading)
            if ours is not None:
                for slot in self._targets(kind, name, int(now // SLOT)):
                    slot.reading(ours).add(seconds)
            else:
                series = self._series_of(kind, name)
                label = reading if outcome is None else f"{reading}.{outcome}"
                series.extras.setdefault(label, _Dist()).add(seconds)

    def _parse(self, key: str, ending: str) -> tuple[str, str, str, str | None]:
        parsed = self._parsed.get(key) if isinstance(key, str) else None
        if parsed is None:
            match = _KEY.fullmatch(key) if isinstance(key, str) else None
            if match is None or not match[3].endswith(ending):
                raise ValueError(f"{key!r} is not a performance key of the form interface.<name>.<reading>"
                                 f"{ending} or resource.<name>.<reading>{ending}, optionally followed by "
                                 f".success or .failure")
            parsed = (_KINDS[match[1]], match[2], match[3], match[4])
            if len(self._parsed) >= _PARSED_LIMIT:
                self._parsed.clear()
            self._parsed[key] = parsed
        return parsed

    def _series_of(self, kind: str, name: str) -> _Series:
        series = self._series[kind].get(name)
        if series is None:
            series = self._series[kind][name] = _Series()
        return series

    # --- reading -----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """{"interfaces": {name: Series}, "resources": {name: Series}} as of now (the module's
        docstring has Series, Point and Dist)."""
        with self._lock:
            now = self._now()
            return {kind: {name: self._describe(kind, series, now) for name, series in sorted(by_name.items())}
                    for kind, by_name in self._series.items()}

    def _describe(self, kind: str, series: _Series, now: float) -> dict[str, Any]:
        current = self._current
        everything = series.since_start(current)
        readings: dict[str, Any] = {}
        for name in READINGS:
            dist = everything.reading(name)
            if name != "response" or kind == "interfaces" or dist.count:
                readings[name] = dist.summary() or _empty_dist()
        for label, dist in sorted(series.extras.items()):
            readings[label] = dist.summary()
        last = _Slot()
        for n in range(current - LAST_MINUTE + 1, current + 1):
            slot = series.tens.get(n)
            if slot is not None:
                last.merge(slot)
        m = current // SLOTS_PER_MINUTE
        return {
            "success": everything.success, "failure": everything.failure,
            "readings": readings,
            "events": dict(series.events),
            "last_minute": self._point(last, (current - LAST_MINUTE + 1) * SLOT, LAST_MINUTE * SLOT, now),
            "minutes": [self._point(series.tens.get(n), n * SLOT, SLOT, now)
                        for n in range(current - SLOTS + 1, current + 1)],
            "hour": [self._point(series.minute(k, current), k * 60, 60, now)
                     for k in range(m - MINUTES + 1, m + 1)],
        }

    def _point(self, slot: _Slot | None, t: int, length: int, now: float) -> dict[str, Any]:
        """Point of the contract: a slot of `length` seconds from `t`; the rate is over the part
        of it that has passed since the statistics began."""
        seconds = max(1.0, min(t + length, now) - max(t, self._born))
        if slot is None:
            slot = _EMPTY
        count = slot.success + slot.failure
        return {"t": t, "seconds": seconds, "rate": count / seconds, "success": slot.success,
                "failure": slot.failure, "pending": slot.pending.summary(),
                "processing": slot.processing.summary(), "response": slot.response.summary()}

    def totals(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Since start, for /metrics: {(kind, name): {"success", "failure", "buckets": {reading:
        [(le, cumulative), ..., (inf, count)]}, "sum": {reading: seconds}}}, kind "interface" or
        "resource"."""
        with self._lock:
            self._now()
            result: dict[tuple[str, str], dict[str, Any]] = {}
            for kind, by_name in self._series.items():
                names = READINGS if kind == "interfaces" else READINGS[:2]
                for name, series in sorted(by_name.items()):
                    everything = series.since_start(self._current)
                    result[(kind[:-1], name)] = {
                        "success": everything.success, "failure": everything.failure,
                        "buckets": {r: everything.reading(r).buckets() for r in names},
                        "sum": {r: everything.reading(r).sum for r in names},
                    }
            return result

    def __repr__(self) -> str:
        state = "on" if self.enabled else "off"
        return (f"<Statistics {state} interfaces={len(self._series['interfaces'])} "
                f"resources={len(self._series['resources'])}>")


_EMPTY = _Slot()


def _given(values: Sequence[float | None]) -> Sequence[float]:
    """The values that are there (a request that never ran has no processing time)."""
    if None in values:
        return [v for v in values if v is not None]
    return values  # type: ignore[return-value]  # no None in it


def _empty_dist() -> dict[str, Any]:
    return {"count": 0, "sum": 0.0, "max": 0.0, "p50": 0.0, "p95": 0.0, "p99": 0.0}


_NEVER = object()  # no record is it: iter(popleft, _NEVER) pops until islice has enough
_when = operator.itemgetter(5)  # a record's time


def _take(records: deque[Record], limit: int | None = None) -> list[Record]:
    """What is waiting in `records` (at most `limit`), taken out (only the holder of the lock
    takes: others append)."""
    count = len(records) if limit is None else min(len(records), limit)
    return list(islice(iter(records.popleft, _NEVER), count))  # popleft `count` times, in C: once per record
