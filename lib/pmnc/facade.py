"""The `pmnc` object a cage module calls through: other modules, its log, request,
config, transactions, state, retried calls and other cages.

    pmnc.orders.ship(42)                    another module of this cage, its current version
    pmnc.log("..."), pmnc.request           this module's logger, the current request
    pmnc.config.get("key")                  config_<this module>.py
    pmnc.transaction.db.execute("...")      resources (transaction.py)
    pmnc.state.get("key")                   this module's durable namespace (state.py)
    pmnc.retry.exit()                       in a retried call (retry.py)
    pmnc("worker").m.f(x)                   another cage (rpc/calls.py, retry.py)
    pmnc.startup.exit(), pmnc.shared_queues.get("q"), ...   the original's framework modules (framework.py)
    pmnc.config_interfaces.get("key")       a config file read from anywhere, as the original could

It sits above everything it exposes; what it needs of the running cage it asks of
`Services` (the runtime), so the loader below knows nothing of it: the runtime hands
the loader a factory of these objects, one per module.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

from pmnc import framework, log
from pmnc import request as _request
from pmnc.config import Config
from pmnc.errors import InvalidModuleNameError
from pmnc.loader import MODULE_NAME, Loader, version_attr
from pmnc.monitor.notify import Notifications
from pmnc.monitor.stats import Statistics
from pmnc.pools import ResourcePools
from pmnc.retry import RetriedCall, RetryContext, Target
from pmnc.rpc.calls import CageCall, parse_target
from pmnc.rpc.cluster import ClusterHandle
from pmnc.state import ModuleState, StateStore
from pmnc.transaction import TransactionFactory

MAX_KEPT = 1000  # module refs and pmnc("cage") objects one `pmnc` keeps for speed; more are made anew

# Names the `pmnc` object answers itself; modules by these names are unreachable.
RESERVED = frozenset({"log", "request", "config", "transaction", "state", "retry", *framework.MODULES})


class Services(Protocol):
    """What the `pmnc` object needs of the cage: the runtime provides it. `resources` and
    `state` raise a clear error until the cage has started."""

    @property
    def loader(self) -> Loader: ...

    @property
    def resources(self) -> ResourcePools: ...

    @property
    def state(self) -> StateStore: ...

    @property
    def cluster(self) -> ClusterHandle: ...

    @property
    def shared(self) -> framework.Shared: ...

    @property
    def statistics(self) -> Statistics: ...

    @property
    def notifications(self) -> Notifications: ...

    @property
    def request_timeout(self) -> float: ...  # config_interfaces.py's, re-read every second

    def exit(self) -> None: ...

    def interface(self, name: str) -> Any: ...

    def thread_count(self) -> int: ...


class Pmnc:
    """The `pmnc` global of a cage module, bound to that module's name."""

    def __init__(self, services: Services, source: str) -> None:
        self._services = services
        self._loader = services.loader
        self._source = source
        self.log = log.ModuleLog(source)
        self._cages: dict[str, CageCall | RetriedCall] = {}  # pmnc("cage") objects, kept: they hold no state

    @property
    def request(self) -> _request.Request:
        return _request.current()

    # made on first use and kept in the instance's __dict__ (as module refs are, see __getattr__)

    @functools.cached_property
    def config(self) -> Config:
        return Config(self._loader, self._source)

    @functools.cached_property
    def transaction(self) -> TransactionFactory:
        services = self._services
        return TransactionFactory(lambda: services.resources, self._source)

    @functools.cached_property
    def state(self) -> ModuleState:
        """`pmnc.state.get/set/delete`: this module's durable key-value namespace."""
        services = self._services
        return ModuleState(lambda: services.state, self._source)

    @property
    def retry(self) -> RetryContext:
        """`pmnc.retry.exit()` in a retried call: try again later, quietly."""
        return RetryContext()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name.startswith("_") or not MODULE_NAME.fullmatch(name):
            raise InvalidModuleNameError(f"module name {name!r} is invalid")
        built_in = framework.MODULES.get(name)
        ref = built_in(self._services, self._source) if built_in is not None else \
            ModuleRef(self._loader, name, self._source)
        if len(self.__dict__) < MAX_KEPT:  # refs resolve at each call, so they can be kept - not without end
            self.__dict__[name] = ref
        return ref

    def __call__(self, target: str = "", *, queue: str | None = None, **options: Any) -> CageCall | RetriedCall:
        """`pmnc("cage").module.func(...)`: a call to another cage (rpc/calls.py), or with
        queue=... a retried call (retry.py)."""
        if queue is None and not options:
            cached = self._cages.get(target)
            if cached is not None:
                return cached
        call = self._cage_call(target, queue=queue, **options)
        if queue is None and not options and len(self._cages) < MAX_KEPT:
            self._cages[target] = call
        return call

    def _cage_call(self, target: str, *, queue: str | None, **options: Any) -> CageCall | RetriedCall:
        cage, queue, reverse, options = parse_target(target, queue=queue, **options)
        if queue is not None:
            if reverse:
                raise InvalidModuleNameError("a call is either reverse or retried, not both")
            services = self._services
            return RetriedCall(self._loader.cage, lambda: services.state, services.cluster,
                               Target.parse(cage or self._loader.cage, queue, **options))
        if cage is None:
            raise InvalidModuleNameError("pmnc(\"\") needs a cage name, or queue= for a retried call to this cage")
        services = self._services
        return CageCall(self.transaction, lambda: services.request_timeout, services.cluster, cage, reverse=reverse)

    def __repr__(self) -> str:
        return f"<pmnc of {self._source} in cage {self._loader.cage}>"


class ModuleRef:
    """`pmnc.name`: a late-bound reference to a module, whatever its version, called from
    module `source`."""

    def __init__(self, loader: Loader, name: str, source: str) -> None:
        self._loader, self._name, self._source = loader, name, source

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        version = self._loader.current(self._name)
        if attr in _CONFIG_READERS and attr not in version.attrs and self._name.startswith("config_"):
            # pmnc.config_x.get(...) on a config file that exports nothing (pmnc's own form)
            return getattr(Config(self._loader, self._name[len("config_"):]), attr)
        value = version_attr(version, attr, self._source)
        if isinstance(value, type):
            return value
        call = BoundCall(self._loader, self._name, attr, self._source)
        if version.dynamic is None:  # __get_module_attr__ may answer differently next time
            self.__dict__[attr] = call
        return call

    def __repr__(self) -> str:
        return f"<module {self._name}>"


_CONFIG_READERS = ("get", "copy")


class BoundCall:
    """`pmnc.name.func`: calls whatever version of `func` is current then; `pmnc.name.func.a.b`
    passes ["a", "b"] to a func that declares `__call_attributes` (a _ChainedCall)."""

    __slots__ = ("_attr", "_loader", "_name", "_source")

    def __init__(self, loader: Loader, name: str, attr: str, source: str) -> None:
        self._loader, self._name, self._attr, self._source = loader, name, attr, source

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._loader.call(self._name, self._attr, args, kwargs, self._source)

    def __getattr__(self, attr: str) -> _ChainedCall:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _ChainedCall(self._loader, self._name, self._attr, self._source, (attr,))

    def __repr__(self) -> str:
        return f"<function {self._name}.{self._attr}>"


class _ChainedCall:
    """`pmnc.name.func.a.b`: the call with its attributes."""

    __slots__ = ("_attr", "_attributes", "_loader", "_name", "_source")

    def __init__(self, loader: Loader, name: str, attr: str, source: str, attributes: tuple[str, ...]) -> None:
        self._loader, self._name, self._attr, self._source = loader, name, attr, source
        self._attributes = attributes

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._loader.call(self._name, self._attr, args, kwargs, self._source, self._attributes)

    def __getattr__(self, attr: str) -> _ChainedCall:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _ChainedCall(self._loader, self._name, self._attr, self._source, (*self._attributes, attr))

    def __repr__(self) -> str:
        return f"<function {self._name}.{'.'.join((self._attr, *self._attributes))}>"
