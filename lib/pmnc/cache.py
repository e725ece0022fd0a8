"""The result cache of a resource pool, when its config sets `pool__cache_size` (the
original's resource_pool_cache semantics):

    pool__cache_size            entries kept (more until the next eviction)
    pool__cache_policy          lru | lfu | weight | useless | old | random   (lru)
    pool__cache_default_ttl     seconds an entry lives, None: for ever        (None)
    pool__cache_evict_period    seconds between evictions                     (10.0)
    pool__cache_group_interval  seconds of hits a pool__cache_group's worth is counted over (None: no groups)

A call steers it with its own pool__cache_* kwargs (transaction.py, CALL_KEYS).

One per pool whose config sets pool__cache_size. Identical calls (by default the same
attrs, args and kwargs) are answered from it; of identical calls in flight only the first
runs, the others wait for its result. A call may declare the keys it reads
(pool__cache_read_keys) or writes (pool__cache_write_keys): a write is never cached, and
drops the cached results of reads sharing a key, and keeps those in flight from being
cached. None is never cached; values are deep-copied in and out.
"""

from __future__ import annotations

import copy
import itertools
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pmnc.errors import ConfigError
from pmnc.schema import resource_file

CACHE_POLICIES = ("lru", "lfu", "weight", "useless", "old", "random")
DEFAULT_EVICT_PERIOD = 10.0
WAIT_EXPIRED = object()  # what get() returns when the deadline came while an identical call ran
_tickets = itertools.count(1)  # one per call that uses a cache: matches its get() to its put()


def cache_ticket() -> int:
    return next(_tickets)


def cache_for(name: str, pool: dict[str, Any]) -> ResultCache | None:
    """The cache of pool `name`, from its pool__ settings; None when it has none."""
    size = pool["pool__cache_size"]
    if not size:  # as the original: no size (or 0), no cache
        return None
    return ResultCache(name, size=size, policy=pool["pool__cache_policy"], default_ttl=pool["pool__cache_default_ttl"],
                       evict_period=pool["pool__cache_evict_period"],
                       group_interval=pool["pool__cache_group_interval"])


class _Group:
    """The hits on the entries of one pool__cache_group over the last `interval` seconds:
    the weight they saved per entry hit is the group's worth, which protects all its
    entries from eviction."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._hits: deque[tuple[float, int, float]] = deque()  # (counts until, entry id, weight)
        self._entries: Counter[int] = Counter()  # hits in the window per entry
        self._sum = 0.0

    def hit(self, entry: _Entry, now: float) -> None:
        weight = entry.weight or 0.0
        self._hits.append((now + self.interval, entry.id, weight))
        self._entries[entry.id] += 1
        self._sum += weight

    def worth(self, now: float) -> float:
        self.trim(now)
        return self._sum / (len(self._entries) or 1)

    def trim(self, now: float) -> bool:
        """Forget hits older than the window; True when none is left."""
        while self._hits and self._hits[0][0] <= now:
            _, entry, weight = self._hits.popleft()
            self._entries[entry] -= 1
            if not self._entries[entry]:
                del self._entries[entry]
            self._sum -= weight
        return not self._hits


@dataclass(eq=False)
class _Entry:
    value: Any
    expires: float | None  # None: never
    weight: float | None  # what the call cost (its seconds, unless pool__cache_weight said)
    group: _Group | None
    last_used: float
    id: int = field(default_factory=lambda: next(_tickets))
    hits: int = 0


class ResultCache:
    """The cache of one pool. get() and put() take the original's keyword names, which a
    call's own pool__cache_get / pool__cache_put callables are given too."""

    def __init__(self, name: str, *, size: int, policy: str | None = None, default_ttl: float | None = None,
                 evict_period: float | None = None, group_interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        file = resource_file(name)
        if size < 0:
            raise ConfigError(f"{file}: pool__cache_size must not be negative, not {size}")
        policy = policy or "lru"
        if policy not in CACHE_POLICIES:
            raise ConfigError(f"{file}: pool__cache_policy must be one of {', '.join(CACHE_POLICIES)}, not {policy!r}")
        for key, value in (("pool__cache_default_ttl", default_ttl), ("pool__cache_evict_period", evict_period),
                           ("pool__cache_group_interval", group_interval)):
            if value is not None and value < 0:
                raise ConfigError(f"{file}: {key} must not be negative, not {value}")
        self.name, self.size, self.policy = name, size, policy
        self.default_ttl = default_ttl or None  # 0 or None: entries live until evicted
        self.evict_period = evict_period or DEFAULT_EVICT_PERIOD
        self.group_interval = group_interval or None
        self._order: Callable[[_Entry, float, float], float] = getattr(self, f"_evict_{policy}")
        self._clock = clock
        self._evict_at = clock() + self.evict_period
        self._entries: dict[Hashable, _Entry] = {}
        self._groups: dict[Any, _Group] = {}
        self._running: dict[Hashable, int] = {}  # key -> the ticket of the call that computes it
        self._reads: dict[int, frozenset[str]] = {}  # reads in flight whose result may still be cached
        self._writes: dict[int, frozenset[str]] = {}  # writes in flight
        self._readers: dict[str, set[Hashable]] = {}  # read key -> cache keys of results that read it
        self._cond = threading.Condition(threading.Lock())

    # --- the calls' side --------------------------------------------------------------------

    def get(self, key: Hashable, *, pool__cache_timeout: float | None, pool__cache_transaction_id: int,
            pool__cache_read_keys: frozenset[str] | None = None, pool__cache_write_keys: frozenset[str] | None = None,
            **_: Any) -> Any:
        """The cached value, or None: the caller runs the call (and then put()s); or
        WAIT_EXPIRED: an identical call was running and did not finish in time."""
        ticket, reads, writes = pool__cache_transaction_id, pool__cache_read_keys, pool__cache_write_keys
        end = None if pool__cache_timeout is None else self._clock() + pool__cache_timeout
        with self._cond:
            if writes is not None:  # a write: never cached, but what it may change must not be either
                self._writes[ticket] = writes
                self._drop_reads(writes)
                return None
            if reads is not None and not any(w & reads for w in self._writes.values()):
                self._reads[ticket] = reads
            while True:
                value = self._lookup(key)
                if value is not None:
                    return value
                if key not in self._running:
                    self._running[key] = ticket
                    return None
                remain = None if end is None else end - self._clock()
                if remain is not None and remain <= 0.0:
                    return WAIT_EXPIRED
                self._cond.wait(remain)

    def put(self, key: Hashable, value: Any, *, pool__cache_transaction_id: int,
            pool__cache_ttl: Any = ..., pool__cache_weight: float | None = None, pool__cache_group: Any = None,
            pool__cache_read_keys: frozenset[str] | None = None, pool__cache_write_keys: frozenset[str] | None = None,
            **_: Any) -> None:
        """After the call: its result (None if it failed), cached if it was the one that ran
        and nothing it read was written meanwhile; identical calls waiting are woken."""
        ticket, reads, writes = pool__cache_transaction_id, pool__cache_read_keys, pool__cache_write_keys
        with self._cond:
            if writes is not None:
                self._writes.pop(ticket, None)
                self._invalidate(writes)
                return
            undisturbed = reads is None or self._reads.pop(ticket, None) is not None
            if self._running.get(key) == ticket:
                del self._running[key]
                if value is not None and undisturbed:
                    ttl = self.default_ttl if pool__cache_ttl is ... else pool__cache_ttl
                    self._store(key, value, ttl, pool__cache_weight, pool__cache_group)
                self._cond.notify_all()
            for read in reads or ():
                self._readers.setdefault(read, set()).add(key)

    def purge(self) -> None:
        """On the pool's sweep: expired entries out, eviction if due, idle groups forgotten."""
        with self._cond:
            now = self._clock()
            for key in [k for k, e in self._entries.items() if e.expires is not None and e.expires <= now]:
                del self._entries[key]
            self._evict(now)
            self._groups = {name: g for name, g in self._groups.items() if not g.trim(now)}
            for read in list(self._readers):
                self._readers[read] &= self._entries.keys()
                if not self._readers[read]:
                    del self._readers[read]

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<ResultCache {self.name} {len(self._entries)}/{self.size} {self.policy}>"

    # --- inside, with the lock held -----------------------------------------------------------

    def _lookup(self, key: Hashable) -> Any:
        now = self._clock()
        self._evict(now)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires is not None and entry.expires <= now:
            del self._entries[key]
            return None
        entry.last_used, entry.hits = now, entry.hits + 1
        if entry.group is not None:
            entry.group.hit(entry, now)
        return copy.deepcopy(entry.value)

    def _store(self, key: Hashable, value: Any, ttl: float | None, weight: float | None, group: Any) -> None:
        now = self._clock()
        self._evict(now)
        counter = None
        if self.group_interval is not None:
            counter = self._groups.get(group)
            if counter is None:
                counter = self._groups[group] = _Group(self.group_interval)
        self._entries[key] = _Entry(copy.deepcopy(value), now + ttl if ttl else None, weight, counter, now)

    def _evict(self, now: float) -> None:
        """At most once per evict_period: down to `size`, the policy's least worthy first."""
        if now < self._evict_at:
            return
        self._evict_at = now + self.evict_period
        excess = len(self._entries) - self.size
        if excess <= 0:
            return
        worth = {id(g): g.worth(now) for g in self._groups.values()}
        total = sum(worth.values()) or 1.0

        def rank(item: tuple[Hashable, _Entry]) -> float:
            entry = item[1]
            share = 1.0 if entry.group is None else worth[id(entry.group)] / total
            return self._order(entry, now, share)

        for key, _entry in sorted(self._entries.items(), key=rank)[:excess]:
            del self._entries[key]

    def _drop_reads(self, writes: frozenset[str]) -> None:
        self._reads = {t: reads for t, reads in self._reads.items() if not reads & writes}

    def _invalidate(self, writes: Iterable[str]) -> None:
        for write in writes:
            for key in self._readers.pop(write, ()):
                self._entries.pop(key, None)

    # the eviction orders: smaller goes first; `share` is the entry's group's part of all groups' worth

    def _evict_lru(self, entry: _Entry, now: float, share: float) -> float:
        return (entry.last_used - now) * share

    def _evict_lfu(self, entry: _Entry, now: float, share: float) -> float:
        return entry.hits * share

    def _evict_weight(self, entry: _Entry, now: float, share: float) -> float:
        return (entry.weight or 0.0) * share

    def _evict_useless(self, entry: _Entry, now: float, share: float) -> float:
        return (entry.weight or 0.0) * entry.hits * share

    def _evict_old(self, entry: _Entry, now: float, share: float) -> float:
        return float("inf") if entry.expires is None else (entry.expires - now) * share

    def _evict_random(self, entry: _Entry, now: float, share: float) -> float:
        return random.random() * share
