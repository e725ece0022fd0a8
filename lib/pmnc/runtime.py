"""The cage's services in one typed object: what `Cage` builds and hands to everything else.

    loader        cage modules (loader.py)               made with the cage
    intake        requests in flight (interfaces.py)     made with the cage
    cluster       other cages (rpc/cluster.py)           made on first use, between start and stop
    transactions  the framework's own pmnc.transaction   made with the cage
    root          the framework's own `pmnc` object      made with the cage
    state         the state file (state.py)              from start to stop
    workers       the EDF worker pool (workers.py)       from start to stop
    lifecycle     a request's life (lifecycle.py)        from start to stop
    resources     the resource pools (pools.py)          from start to stop
    loop          the asyncio loop (loop.py)             from start to stop
    shared        shared queues, locks, private pools    made with the cage (framework.py)
    statistics    requests and resource calls, counted   made with the cage (monitor/stats.py)
    notifications pmnc.notify's kept messages            made with the cage (monitor/notify.py)
    health        the cluster's probes                   in a cage named health_monitor (monitor/health.py)

A service asked for outside its time raises a clear error rather than hand out None.
The loader is given the factory of each module's `pmnc` object (facade.py) here, so
the loader itself knows nothing of what the `pmnc` object exposes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from pmnc import framework
from pmnc.errors import ModuleError
from pmnc.facade import Pmnc
from pmnc.lifecycle import Intake, Lifecycle
from pmnc.loader import Loader
from pmnc.loop import EventLoopThread
from pmnc.monitor.notify import Notifications
from pmnc.monitor.stats import Statistics
from pmnc.pools import ResourcePools
from pmnc.resource import Resource
from pmnc.retry import OutboxResource
from pmnc.rpc.cluster import ClusterHandle
from pmnc.state import StateResource, StateStore
from pmnc.transaction import TransactionFactory
from pmnc.workers import WorkerPool


class Health(Protocol):
    """What the rest of the cage asks of its health monitor (monitor/health.py), if it runs one."""

    def status(self) -> dict[str, Any]: ...

    def page(self) -> str: ...

    def stop(self) -> None: ...


class Runtime:
    def __init__(self, loader: Loader, *, request_timeout: float = 10.0) -> None:
        self.loader = loader
        self.name, self.node = loader.cage, loader.node
        self.request_timeout = request_timeout
        self.statistics = Statistics()
        self.intake = Intake(self.statistics)
        self.cluster = ClusterHandle(loader)
        self.transactions = TransactionFactory(lambda: self.resources, "__framework__")
        self.root = Pmnc(self, "__framework__")
        self.shared = framework.Shared()
        self.notifications = Notifications(self.name, self.node)
        self.notifications.attach(self)  # forwarding needs the loader, `root` and the interfaces
        self.health: Health | None = None
        self.started_at = time.time()
        self.exit_asked = threading.Event()  # pmnc.startup.exit(): the cage is to stop, for good
        self.on_exit: Callable[[], None] | None = None  # what the Cage does when it is asked
        self.interface_lookup: Callable[[str], Any] | None = None  # name → running interface (the Cage's)
        self.interface_names: Callable[[], list[str]] = list  # the running interfaces' names (the Cage's)
        self._thread_count = 10
        self._state: StateStore | None = None
        self._workers: WorkerPool | None = None
        self._lifecycle: Lifecycle | None = None
        self._resources: ResourcePools | None = None
        self._loop: EventLoopThread | None = None
        loader.pmnc_factory = self.pmnc

    def pmnc(self, module: str) -> Pmnc:
        """The `pmnc` global of cage module `module`."""
        return Pmnc(self, module)

    # --- the services of a running cage ------------------------------------------------

    def start(self, state: StateStore, *, thread_count: int, sweep_period: float) -> None:
        """The state file (checked by the caller), worker pool, resource pools and loop."""
        self._state = state
        self._thread_count = thread_count
        self.started_at = time.time()
        self._workers = WorkerPool("worker", thread_count)
        self._lifecycle = Lifecycle(self.intake, self._workers, self.loader)
        built_in = {"state": self._state_resource, "pmnc": self._outbox_resource}
        self._resources = ResourcePools(self.loader, thread_count, sweep_period, cluster=self.cluster,
                                        built_in=built_in, interfaces=self.interface, statistics=self.statistics)
        # the HTTP interfaces queue requests from the loop with the worker's wake put off till it next waits
        self._loop = EventLoopThread(before_waiting=self._workers.pay_owed_wake)
        self._loop.start()
        self.cluster.start()

    def stop(self) -> None:
        """After the interfaces have stopped: other cages, resources, workers, state, loop."""
        self.notifications.close()  # a summary of suppressed notifications still due is not sent
        self.cluster.stop()
        self.shared.stop()
        if self._resources is not None:
            self._resources.stop()
        if self._workers is not None:
            self._workers.stop()
        if self._state is not None:
            self._state.close()
        if self._loop is not None:
            self._loop.stop()

    @property
    def started(self) -> bool:
        return self._resources is not None

    @property
    def state(self) -> StateStore:
        return _running(self._state, "the state is not available")

    @property
    def workers(self) -> WorkerPool:
        return _running(self._workers, "the worker pool is not available")

    @property
    def lifecycle(self) -> Lifecycle:
        return _running(self._lifecycle, "requests cannot be run")

    @property
    def resources(self) -> ResourcePools:
        return _running(self._resources, "resources are not available")

    @property
    def loop(self) -> EventLoopThread:
        return _running(self._loop, "the event loop is not available")

    # --- what the original's framework modules ask (framework.py) -------------------------

    def exit(self) -> None:
        """`pmnc.startup.exit()`: stop this cage as a stop signal to its supervisor would."""
        self.exit_asked.set()
        if self.on_exit is not None:
            self.on_exit()

    def interface(self, name: str) -> Any:
        return self.interface_lookup(name) if self.interface_lookup is not None else None

    def thread_count(self) -> int:
        return self._thread_count

    def _state_resource(self, instance: str) -> Resource:
        return StateResource(instance, {}, self.state)

    def _outbox_resource(self, instance: str) -> Resource:
        return OutboxResource(instance, {}, self.state, self.name, self.cluster)

    def __repr__(self) -> str:
        return f"<Runtime of cage {self.node}.{self.name}>"


T = TypeVar("T")


def _running(service: T | None, unavailable: str) -> T:
    """A service of the running cage, or ModuleError saying it is not there yet (or any more)."""
    if service is None:
        raise ModuleError(f"{unavailable}: the cage has not started")
    return service
