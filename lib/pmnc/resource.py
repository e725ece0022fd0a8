"""Resources: the base class of every outgoing connection a transaction uses.

A protocol's `Resource` subclass is one connection. Its life, driven by the
pool and the transaction coordinator:

    connect → (begin_transaction → <method>(...) → commit | rollback)* → disconnect

Every step runs on a worker thread of the resource's pool with the current
request attached, and must bound its I/O by `pmnc.request.remain`. Errors
leave a resource as `ResourceError`; a terminal one discards the connection.
The methods a transaction calls (`xa.<resource>.<method>(...)`) are the
subclass's public methods other than the lifecycle ones below.
"""

from __future__ import annotations

import time
from typing import Any

# Names a transaction may not call on a resource: they belong to the lifecycle.
LIFECYCLE = frozenset({"connect", "disconnect", "begin_transaction", "commit", "rollback", "expire",
                       "expired", "discarded", "ttl", "config", "name", "mark_used", "transactional", "inline",
                       "preparable", "needs_cluster", "prepare", "in_doubt", "finish_prepared"})


class Resource:
    # False: commit and rollback do nothing (the call itself is the effect),
    # so a participant does not wait for the decision.
    transactional = True
    # True: every wait of every call is bounded by the request's deadline, so a
    # transaction of one such call may run it on the caller's own thread.
    inline = False
    # True: a branch of a two-phase commit - begin_transaction gets its id as
    # transaction_options["branch"], then prepare(), then commit() or rollback();
    # in_doubt(prefix) and finish_prepared(branch, commit) serve recovery.
    preparable = False
    # True: the connection talks to other cages, and is made as cls(name, config, cluster=...)
    # with the cage's rpc.cluster.ClusterHandle.
    needs_cluster = False
    # True: the connection goes through one of the cage's interfaces (an SMPP resource sends
    # through its interface's bound session), and is made as cls(name, config, interfaces=...)
    # with a function giving the running interface of a name, or None.
    needs_interfaces = False

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        """`name` is `<resource>/<n>`; `config` the protocol's keys of its config file.
        Subclasses take their keys out of `config` and refuse unknown required ones."""
        self.name = name
        self.config = config
        self.created = time.monotonic()
        self.used = self.created
        self.idle_timeout = 30.0  # the pool sets its pool__idle_timeout / pool__max_age where given
        self.max_age = 300.0
        self.discarded = False  # expire() was called: never reuse, whatever the timers say
        # Set by the transaction while this connection's call is the whole transaction and
        # commit() follows as soon as it returns (the only participant, run inline): the
        # call may then be its own commit (PostgreSQL: one statement in autocommit).
        self.commit_follows = False

    @classmethod
    def _construct(cls, name: str, config: dict[str, Any], *, cluster: Any = None, interfaces: Any = None,
                   pool_size: int = 0) -> Resource:
        """How a pool makes a connection: the one place that knows how a protocol's class is
        constructed (pmnc.resource_pool's original-style bases take `(name, **config)`).
        `cluster` is the cage's rpc.cluster.ClusterHandle, for a class that `needs_cluster`;
        `interfaces` the cage's lookup of running interfaces, for a class that `needs_interfaces`;
        `pool_size` the threads of the pool. Private, so that no transaction can call it:
        pools.py is its only caller."""
        if cls.needs_cluster:
            return cls(name, config, cluster=cluster)  # type: ignore[call-arg]
        if cls.needs_interfaces:
            return cls(name, config, interfaces=interfaces)  # type: ignore[call-arg]
        return cls(name, config)

    # --- lifecycle, overridden by protocols ---------------------------------------

    def connect(self) -> None:
        """Open the connection within `pmnc.request.remain`."""

    def disconnect(self) -> None:
        """Close it; never raises for a connection already broken."""

    def begin_transaction(self, xid: str, *, source_module_name: str, transaction_options: dict[str, Any],
                          resource_args: tuple[Any, ...], resource_kwargs: dict[str, Any]) -> None:
        """Start a local transaction for one participant."""

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass

    # --- two-phase commit, where `preparable` -----------------------------------------

    def prepare(self) -> None:
        raise NotImplementedError(f"resource {self.name} cannot prepare")

    def in_doubt(self, prefix: str) -> list[str]:
        """Branches left prepared whose ids begin with `prefix`."""
        raise NotImplementedError(f"resource {self.name} cannot prepare")

    def finish_prepared(self, branch: str, commit: bool) -> None:
        raise NotImplementedError(f"resource {self.name} cannot prepare")

    # --- expiry, managed by the pool -------------------------------------------------

    def expire(self) -> None:
        """Never reuse this connection."""
        self.discarded = True

    def mark_used(self) -> None:
        self.used = time.monotonic()

    @property
    def expired(self) -> bool:
        now = time.monotonic()
        return self.discarded or now - self.used >= self.idle_timeout or now - self.created >= self.max_age

    @property
    def ttl(self) -> float:
        now = time.monotonic()
        return max(min(self.used + self.idle_timeout, self.created + self.max_age) - now, 0.0)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} ttl={self.ttl:.1f}s>"
