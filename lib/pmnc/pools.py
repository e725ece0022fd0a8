"""Resource pools: the connections of each resource, and the threads that use them.

`config_resource_<name>.py` names a `protocol`; its `pool__*` keys size the
pool (schema.POOL_KEYS; defaults as the original's, an unknown pool__ key refused):

    pool__size          threads, and connections up to size + 2  (thread_count)
    pool__standby       connections kept connected while idle      (0)
    pool__idle_timeout  an unused connection is closed after this  (30.0)
    pool__max_age       any connection is closed after this        (300.0)
    pool__min_time      a call with less time left is declined     (0.0)
    pool__max_time      a call may take at most this               (None)

and, when `pool__cache_size` is set, a cache of call results (ResultCache
below; the original's resource_pool_cache semantics):

    pool__cache_size            entries kept (more until the next eviction)
    pool__cache_policy          lru | lfu | weight | useless | old | random   (lru)
    pool__cache_default_ttl     seconds an entry lives, None: for ever        (None)
    pool__cache_evict_period    seconds between evictions                     (10.0)
    pool__cache_group_interval  seconds of hits a pool__cache_group's worth is counted over (None: no groups)

A call steers it with its own pool__cache_* kwargs (transaction.py, CALL_KEYS).
Connections are reused most-recently-released first. A resource named
`a__b` uses `config_resource_a.py` and its own pool. `state` and `pmnc`
are built in (state.py, retry.py; the runtime hands their factories over). Decisions are taken
under the pool's lock; connecting and disconnecting happen outside it.
"""

from __future__ import annotations

import copy
import itertools
import os
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pmnc import log
from pmnc import request as _request
from pmnc.config import Config
from pmnc.decisions import DecisionLog
from pmnc.errors import ConfigError, ResourceError, exc_string
from pmnc.loader import protocol_class
from pmnc.request import Request, attached
from pmnc.resource import Resource
from pmnc.schema import POOL_KEYS, resource_file
from pmnc.workers import WorkerPool

if TYPE_CHECKING:
    from pmnc.loader import Loader
    from pmnc.rpc.cluster import ClusterHandle

SWEEP_TIMEOUT = 30.0  # how long one sweep (warming up standby connections) may take
BUILT_IN_SIZE = 64  # participants of one of them a transaction may have at least


class ResourcePoolEmpty(ResourceError):
    """Every connection the pool may have exists and is in use (the original's name)."""

    def __init__(self, description: str) -> None:
        super().__init__(description, recoverable=True, terminal=False)


class ResourcePoolStopped(ResourceError):
    """The pool, or the cage, is shutting down (the original's name)."""

    def __init__(self, description: str) -> None:
        super().__init__(description, recoverable=True, terminal=False)


class ResourcePool:
    def __init__(self, name: str, factory: Callable[[str], Resource], *, size: int, standby: int = 0,
                 idle_timeout: float | None = None, max_age: float | None = None, min_time: float = 0.0,
                 max_time: float | None = None, transactional: bool = True, inline: bool = False,
                 preparable: bool = False, cache: ResultCache | None = None) -> None:
        """`idle_timeout` / `max_age` None: each connection keeps its class's own."""
        self.name, self.factory = name, factory
        self.cache = cache  # results of calls, where pool__cache_size is set
        self.transactional, self.inline = transactional, inline
        self.preparable = preparable  # its connections can be branches of a two-phase commit
        self.size, self.standby = size, standby
        self.idle_timeout, self.max_age = idle_timeout, max_age
        self.min_time, self.max_time = min_time, max_time
        self.workers = WorkerPool(name, size)
        self._cap = size + 2  # room for the sweeper's warm-up beside the busy calls
        self._free: list[Resource] = []  # most recently released last
        self._count = 0  # connections that exist: free, busy, or being connected
        self._serial = 0
        self._lock = threading.Lock()
        self._busy = 0  # slots taken: calls at once, on pool threads or inline (at most size)
        self._waiting = 0  # calls waiting for a slot
        self._slot_freed = threading.Condition(self._lock)
        self._stopped = False
        self.swept_at = time.monotonic()

    def connection(self) -> _Lease:
        """`with pool.connection() as resource:` - one of `pool__size` slots, waited for
        within the request's deadline, and a connected resource, given back after."""
        return _Lease(self)

    def _lease(self) -> Resource:
        stale: list[Resource] = []
        resource = None
        with self._lock:
            if self._busy >= self.size and not self._wait_for_slot():
                raise ResourceError(f"resource pool {self.name} is busy: all {self.size} connections in use "
                                    f"until the deadline", recoverable=True, terminal=False)
            if self._stopped:
                raise ResourcePoolStopped(f"resource pool {self.name} has been stopped")
            while self._free and resource is None:
                candidate = self._free.pop()
                if candidate.expired:
                    stale.append(candidate)
                    self._count -= 1
                else:
                    resource = candidate
            if resource is None:
                if self._count >= self._cap:
                    raise ResourcePoolEmpty(f"resource pool {self.name} is empty")
                self._count += 1
                self._serial += 1
                serial = self._serial
            self._busy += 1
        _disconnect(stale)
        if resource is None:
            try:
                resource = self._connect(serial)
            except BaseException:
                self._free_slot()
                raise
        return resource

    def _wait_for_slot(self) -> bool:
        """With the lock held: wait until a slot is free, up to the request's deadline."""
        request = _request.current()
        self._waiting += 1
        try:
            while self._busy >= self.size:
                timeout = None if request.deadline is None else request.remain
                if timeout == 0.0:
                    return False
                self._slot_freed.wait(timeout)
            return True
        finally:
            self._waiting -= 1

    def _give_back(self, resource: Resource) -> None:
        self.release(resource, slot=True)

    def _free_slot(self) -> None:
        with self._lock:
            self._busy -= 1
            if self._waiting:
                self._slot_freed.notify()

    def _connect(self, serial: int) -> Resource:
        try:
            resource = self.factory(f"{self.name}/{serial}")
            if self.idle_timeout is not None:
                resource.idle_timeout = self.idle_timeout
            if self.max_age is not None:
                resource.max_age = self.max_age
            resource.connect()
        except BaseException as e:
            with self._lock:
                self._count -= 1
            if isinstance(e, ResourceError):
                raise
            raise ResourceError(f"resource {self.name} cannot connect: {exc_string(e, stack=False)}",
                                recoverable=True, terminal=True) from e
        log.debug(f"resource {resource.name} has connected")
        return resource

    def release(self, resource: Resource, *, slot: bool = False) -> None:
        """A connection back to the free ones (or closed, if expired); `slot`: and the
        slot of the call that used it."""
        with self._lock:
            if slot:
                self._busy -= 1
                if self._waiting:
                    self._slot_freed.notify()
            keep = not self._stopped and not resource.expired
            if keep:
                self._free.append(resource)
            else:
                self._count -= 1
        if not keep:
            _disconnect([resource])

    def sweep(self) -> None:
        """Close expired free connections, then connect up to `standby` free ones."""
        self.swept_at = time.monotonic()
        with self._lock:
            stale = [r for r in self._free if r.expired]
            self._free = [r for r in self._free if not r.expired]
            self._count -= len(stale)
        _disconnect(stale)
        with attached(Request(timeout=SWEEP_TIMEOUT, interface="__pool__", protocol="__pool__")):
            while self._warm_up_one():
                pass
        if self.cache is not None:
            self.cache.purge()

    def _warm_up_one(self) -> bool:
        with self._lock:
            if self._stopped or len(self._free) >= self.standby or self._count >= self._cap:
                return False
            self._count += 1
            self._serial += 1
            serial = self._serial
        try:
            resource = self._connect(serial)
        except ResourceError as e:
            log.warning(f"resource pool {self.name} cannot warm up: {e}")
            return False
        self.release(resource)
        return True

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            free, self._free = self._free, []
            self._count -= len(free)
        _disconnect(free)
        self.workers.stop()

    @property
    def free(self) -> int:
        return len(self._free)

    def __repr__(self) -> str:
        return f"<ResourcePool {self.name} connections={self._count}/{self._cap} free={len(self._free)}>"


class _Lease:
    """What `ResourcePool.connection()` returns: a slot and a connection, for a `with`."""

    __slots__ = ("pool", "resource")

    def __init__(self, pool: ResourcePool) -> None:
        self.pool = pool

    def __enter__(self) -> Resource:
        self.resource = self.pool._lease()
        return self.resource

    def __exit__(self, *exc: object) -> None:
        self.pool._give_back(self.resource)


def _disconnect(resources: list[Resource]) -> None:
    for resource in resources:
        try:
            resource.disconnect()
        except Exception as e:
            log.warning(f"resource {resource.name} failed to disconnect: {exc_string(e, stack=False)}")
        else:
            log.debug(f"resource {resource.name} has disconnected")


class ResourcePools:
    """The cage's pools, made on first use from config_resource_<name>.py."""

    def __init__(self, loader: Loader, thread_count: int, sweep_period: float, *, cluster: ClusterHandle,
                 built_in: Mapping[str, Callable[[str], Resource]]) -> None:
        self.loader, self.cluster = loader, cluster
        # resources every cage has, with no config file (xa.state, xa.pmnc(...)): name → connection factory
        self.built_in = built_in
        self.thread_count, self.sweep_period = thread_count, sweep_period
        # per instance: two instances of a cage on one machine (a.worker, b.worker) share its folder
        self.decisions = DecisionLog(os.path.join(loader.cage_dir, "state", f"{loader.node}.transactions.sqlite"))
        self._pools: dict[str, ResourcePool] = {}
        self._lock = threading.Lock()
        self._stopped = False

    def get(self, name: str) -> ResourcePool:
        pool = self._pools.get(name)
        if pool is not None:
            return pool
        with self._lock:
            if self._stopped:
                raise ResourcePoolStopped("the cage is shutting down, resources are stopped")
            pool = self._pools.get(name)
            if pool is None:
                try:
                    pool = self._pools[name] = self._create(name)
                except ConfigError as e:  # the pool does not start: every call says why, the log too
                    log.error(f"resource {name} cannot be used: {e}")
                    raise
                log.message(f"resource pool {name} has been created: {pool!r}")
        return pool

    def _create(self, name: str) -> ResourcePool:
        if name in self.built_in:
            return self._create_built_in(name)
        config = self._config(name)
        cls = protocol_class(self.loader, config.pop("protocol", None), "Resource", Resource,
                             f"resource {name}")
        given = {k: v for k, v in config.items() if k.startswith("pool__")}
        pool = POOL_KEYS.read(given, resource_file(name))
        size = self.thread_count if pool["pool__size"] is None else pool["pool__size"]
        return ResourcePool(
            name, lambda instance: self._connect(cls, instance, name, size),
            size=size,
            standby=pool["pool__standby"],
            # not given: the class's own (an original-style resource's _default_idle_timeout)
            idle_timeout=pool["pool__idle_timeout"] if "pool__idle_timeout" in given else None,
            max_age=pool["pool__max_age"] if "pool__max_age" in given else None,
            min_time=pool["pool__min_time"], max_time=pool["pool__max_time"],
            transactional=cls.transactional, inline=cls.inline, preparable=cls.preparable,
            cache=_cache(name, pool))

    def _create_built_in(self, name: str) -> ResourcePool:
        """`xa.state` and `xa.pmnc(...)`: participants writing to the cage's state file. They
        only keep writes in memory until the decision, so many may share a transaction."""
        return ResourcePool(name, self.built_in[name], size=max(self.thread_count, BUILT_IN_SIZE), idle_timeout=300.0,
                            max_age=3600.0, transactional=True, inline=True, preparable=True)

    def _connect(self, cls: type[Resource], instance: str, name: str, size: int) -> Resource:
        """A new connection, made as its class says (Resource._construct)."""
        return cls._construct(instance, self._resource_config(name), cluster=self.cluster, pool_size=size)

    def _config(self, name: str) -> dict[str, Any]:
        return Config(self.loader, "resource_" + name.partition("__")[0]).copy()

    def _resource_config(self, name: str) -> dict[str, Any]:
        """What a new connection is built with, read afresh so that it sees edits:
        the protocol's keys, and for `a__b` the `resource_name` "b"."""
        config = {k: v for k, v in self._config(name).items() if not k.startswith("pool__") and k != "protocol"}
        suffix = name.partition("__")[2]
        if suffix:
            config["resource_name"] = suffix
        return config

    def maintain(self) -> None:
        """Sweep each pool once per sweep_period, on one of its own threads."""
        now = time.monotonic()
        for pool in list(self._pools.values()):
            if now - pool.swept_at >= self.sweep_period:
                pool.swept_at = now
                try:
                    pool.workers.submit(Request(timeout=SWEEP_TIMEOUT, interface="__pool__", protocol="__pool__"),
                                        pool.sweep)
                except RuntimeError:
                    pass  # stopping

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.stop()
        self.decisions.close()


# --- the result cache ------------------------------------------------------------------------
#
# One per pool whose config sets pool__cache_size. Identical calls (by default the same
# attrs, args and kwargs) are answered from it; of identical calls in flight only the first
# runs, the others wait for its result. A call may declare the keys it reads
# (pool__cache_read_keys) or writes (pool__cache_write_keys): a write is never cached, and
# drops the cached results of reads sharing a key, and keeps those in flight from being
# cached. None is never cached; values are deep-copied in and out.

CACHE_POLICIES = ("lru", "lfu", "weight", "useless", "old", "random")
DEFAULT_EVICT_PERIOD = 10.0
WAIT_EXPIRED = object()  # what get() returns when the deadline came while an identical call ran
_tickets = itertools.count(1)  # one per call that uses a cache: matches its get() to its put()


def cache_ticket() -> int:
    return next(_tickets)


def _cache(name: str, pool: dict[str, Any]) -> ResultCache | None:
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
