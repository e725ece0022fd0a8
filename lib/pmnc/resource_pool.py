"""The original's `pmnc.resource_pool`: its error names (pmnc's own classes) and the bases of a
resource class written for the original, so that a cage's own `protocol_<p>.py` runs unchanged:

    from pmnc.resource_pool import TransactionalResource, ResourceError

    class Resource(TransactionalResource):
        def __init__(self, name, *, path, **config):
            TransactionalResource.__init__(self, name)
            self._path = path
        def begin_transaction(self, xid, **kwargs):
            TransactionalResource.begin_transaction(self, xid, **kwargs)
            ...
        def put(self, key, value): ...          # xa.<resource>.put(key, value)
        def commit(self): ...

Such a class is made as the original made it, `Resource("<resource>/<n>", **config)` with its
config file's keys (and `pool__resource_name="b"` for a pool named `a__b`), and has the
original's attributes: `name`, `expire()`, `expired` (from `_expired()`), `ttl`,
`set_idle_timeout`, `reset_idle_timeout`, `set_max_age`, `xid`, `source_module_name`,
`transaction_options`, `resource_args`, `resource_kwargs`, `pool_name`, `pool_size`.
A pool's `pool__idle_timeout` / `pool__max_age` win over the class's
`_default_idle_timeout` / `_default_max_age`, as in the original.
"""

from __future__ import annotations

import time
from typing import Any

from pmnc import resource
from pmnc.errors import (
    ParticipantError,
    ResourceError,
    ResourceInputParameterError,
    RPCError,
    SQLResourceError,
    TransactionCommitError,
    TransactionError,
    TransactionExecutionError,
)
from pmnc.pools import ResourcePoolEmpty, ResourcePoolStopped

__all__ = ["ParticipantError", "RPCError", "Resource", "ResourceError", "ResourceInputParameterError",
           "ResourcePoolEmpty", "ResourcePoolStopped", "SQLResourceError", "TransactionCommitError",
           "TransactionError", "TransactionExecutionError", "TransactionalResource"]

# Names the original's module had that pmnc does not offer here, with what to use instead.
_ELSEWHERE = {
    "SQLResource": "a SQL protocol of a cage's own derives from pmnc.protocols.sql.SQLResource "
                   "(it implements _run(statement, params)); the original's _execute_sql does not carry over",
    "SQLRecord": "rows are pmnc.protocols.sql.Row (case-insensitive keys, equal to dicts)",
    "ResourcePool": "pools are made and run by the cage (pmnc.pools), not by cage code",
    "RegisteredResourcePool": "pools are made and run by the cage (pmnc.pools), not by cage code",
}


def __getattr__(name: str) -> Any:
    if name in _ELSEWHERE:
        raise ImportError(f"pmnc.resource_pool has no {name}: {_ELSEWHERE[name]}")
    raise AttributeError(f"module pmnc.resource_pool has no attribute {name}")


class Resource(resource.Resource):
    """The original's minimal resource: a name, connect/disconnect, and expiry by expire()."""

    def __init__(self, name: str, **config: Any) -> None:
        """`config`: the config file's keys the subclass did not take itself."""
        super().__init__(name, config)
        self._name = name
        self.idle_timeout = self.max_age = float("inf")  # only expire() ends it

    @classmethod
    def _construct(cls, name: str, config: dict[str, Any], *, cluster: Any = None, interfaces: Any = None,
                   pool_size: int = 0) -> resource.Resource:
        """As the original's pools made it: `cls(name, **config)`, with `pool__resource_name`
        for the `b` of a pool named `a__b`, then told its pool's name and size."""
        kwargs = dict(config)
        if "resource_name" in kwargs:
            kwargs["pool__resource_name"] = kwargs.pop("resource_name")
        made = cls(name, **kwargs)
        made._pool_info(name.partition("/")[0], pool_size)
        return made

    def _pool_info(self, pool_name: str, pool_size: int) -> None:
        """Where the original's factory called set_pool_info (TransactionalResource has it)."""

    def _expired(self) -> bool:
        """What `expired` says; a subclass may add its own reasons, as in the original."""
        return self.discarded

    @property
    def expired(self) -> bool:
        return self._expired()


class TransactionalResource(Resource):
    """The original's base of every resource a transaction uses: timers, the participant's
    transaction details, and commit / rollback to override."""

    _default_idle_timeout = 30.0
    _default_max_age = 300.0
    _default_min_time = 0.0
    _default_max_time: float | None = None

    def __init__(self, name: str, **config: Any) -> None:
        super().__init__(name, **config)
        self.idle_timeout, self.max_age = self._default_idle_timeout, self._default_max_age
        self.min_time, self.max_time = self._default_min_time, self._default_max_time
        self.pool_name, self.pool_size = name.partition("/")[0], 0
        self.xid: str | None = None
        self.source_module_name: str | None = None
        self.transaction_options: dict[str, Any] = {}
        self.resource_args: tuple[Any, ...] = ()
        self.resource_kwargs: dict[str, Any] = {}

    # --- timers, as the original named them ----------------------------------------------------

    def set_idle_timeout(self, idle_timeout: float) -> None:
        self.idle_timeout, self.used = float(idle_timeout), time.monotonic()

    def reset_idle_timeout(self) -> None:
        self.mark_used()

    def set_max_age(self, max_age: float) -> None:
        self.max_age, self.created = float(max_age), time.monotonic()

    def set_min_time(self, min_time: float) -> None:
        self.min_time = float(min_time)

    def set_max_time(self, max_time: float) -> None:
        self.max_time = float(max_time)

    def set_pool_info(self, pool_name: str, pool_size: int) -> None:
        self.pool_name, self.pool_size = pool_name, pool_size

    def _pool_info(self, pool_name: str, pool_size: int) -> None:
        self.set_pool_info(pool_name, pool_size)

    def _expired(self) -> bool:
        now = time.monotonic()
        return self.discarded or now - self.used >= self.idle_timeout or now - self.created >= self.max_age

    # --- one participant ---------------------------------------------------------------------

    def begin_transaction(self, xid: str, *, source_module_name: str, transaction_options: dict[str, Any],
                          resource_args: tuple[Any, ...], resource_kwargs: dict[str, Any]) -> None:
        """Remembers the details (self.xid, ...); a subclass calls this first, then begins."""
        self.xid, self.source_module_name = xid, source_module_name
        self.transaction_options = transaction_options
        self.resource_args, self.resource_kwargs = resource_args, resource_kwargs
