"""Resource pools: the connections of each resource, and the threads that use them.

`config_resource_<name>.py` names a `protocol`; its `pool__*` keys size the
pool (schema.POOL_KEYS; defaults as the original's, an unknown pool__ key refused):

    pool__size          threads, and connections up to size + 2  (thread_count)
    pool__standby       connections kept connected while idle      (0)
    pool__idle_timeout  an unused connection is closed after this  (30.0)
    pool__max_age       any connection is closed after this        (300.0)
    pool__min_time      a call with less time left is declined     (0.0)
    pool__max_time      a call may take at most this               (None)

and, when `pool__cache_size` is set, a cache of call results (cache.py).
Each call is counted in the cage's statistics (monitor/stats.py) under the
pool's name, by transaction.py.
Connections are reused most-recently-released first. A resource named
`a__b` uses `config_resource_a.py` and its own pool. `state` and `pmnc`
are built in (state.py, retry.py; the runtime hands their factories over). Decisions are taken
under the pool's lock; connecting and disconnecting happen outside it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pmnc import log
from pmnc import request as _request
from pmnc.cache import ResultCache, cache_for
from pmnc.config import Config
from pmnc.decisions import DecisionLog
from pmnc.errors import ConfigError, ResourceError, exc_string
from pmnc.loader import protocol_class
from pmnc.monitor.stats import Statistics
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
                 preparable: bool = False, cache: ResultCache | None = None,
                 statistics: Statistics | None = None) -> None:
        """`idle_timeout` / `max_age` None: each connection keeps its class's own; `statistics`
        None: its calls are not counted."""
        self.name, self.factory = name, factory
        self.statistics = statistics
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
        if stale:
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
    def busy(self) -> int:
        """Slots taken: calls running now."""
        return self._busy

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot."""
        return self._waiting

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
                 built_in: Mapping[str, Callable[[str], Resource]],
                 interfaces: Callable[[str], Any] = lambda name: None,
                 statistics: Statistics | None = None) -> None:
        self.loader, self.cluster = loader, cluster
        self.statistics = statistics  # where each pool's calls are counted
        self.interfaces = interfaces  # name → the running interface, or None (Resource.needs_interfaces)
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
            cache=cache_for(name, pool), statistics=self.statistics)

    def _create_built_in(self, name: str) -> ResourcePool:
        """`xa.state` and `xa.pmnc(...)`: participants writing to the cage's state file. They
        only keep writes in memory until the decision, so many may share a transaction."""
        return ResourcePool(name, self.built_in[name], size=max(self.thread_count, BUILT_IN_SIZE), idle_timeout=300.0,
                            max_age=3600.0, transactional=True, inline=True, preparable=True,
                            statistics=self.statistics)

    def _connect(self, cls: type[Resource], instance: str, name: str, size: int) -> Resource:
        """A new connection, made as its class says (Resource._construct)."""
        return cls._construct(instance, self._resource_config(name), cluster=self.cluster,
                              interfaces=self.interfaces, pool_size=size)

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

    def all(self) -> list[ResourcePool]:
        """The pools made so far, by name."""
        return sorted(self._pools.values(), key=lambda pool: pool.name)

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
