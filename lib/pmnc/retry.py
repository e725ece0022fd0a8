"""Retried calls: queued durably by the caller, run at least once by the cage's retry interfaces.

    rt_id = pmnc("worker", queue="retry", id="order-42", expires_in=3600.0).orders.ship(42)
    pmnc(queue="local").m.f(x)           # this cage
    pmnc("worker:retry").m.f(x)          # the original's form: queue "retry"
    xa.pmnc("worker", queue="retry").m.f(x)   # queued only if transaction xa commits (an outbox)

Enqueue: the call becomes a row of the `retry` table in the caller's state
file (state.py), on disk before its `RT-…` id is returned. A call whose
queue already holds its id - the caller's `id` (inside a retried call,
`<parent RT id>:<id>`), else the RT id - is dropped with a warning, for as
long as the first is pending and `retention_time` after it finished.

The engine (`Engine`, one per interface of protocol "retry", protocols/retry.py)
runs the queue named like its interface; the one of the interface named
`retry` also runs every queue that no other engine of the cage runs (`Queues`).
It claims ready rows in a short write that moves their `visible_at` past the
lease (a claim is a lease: a worker that dies lets it lapse and the row
comes back), runs each on the cage's worker pool as the request that
queued it (same id and parameters, plus `parameters["retry"]` = id,
attempt, start, deadline), and marks it done, or failed - `attempt` + 1,
visible again after `retry_interval` (doubling each time with `backoff`,
up to `max_retry_interval`). At most `queue_count` calls of a queue run at
once; with `keep_order` one, in order, and a failing call holds the queue.
A call whose `expires_in` has passed is dropped (status expired) instead.

Between cages: a call for another cage is run here as its hand-off - an
RPC (kind "retry") that the other cage answers once the call is in its own
state file, with `<source cage>/<RT id>` as its de-duplication id, the same
deadline and attempts counted from 1 - and done here when that answer
comes. Either cage may crash at any moment: a call may run twice, never
zero times. The other cage refuses a call for a module it has no file of,
and calls beyond `max_pending_per_source` of one source pending there: a
refused hand-off is a failed attempt, so the call stays here and is tried
again (a module added there later gets it). A call without `expires_in`
never expires, handed over or not.

With config_cluster.py's retry_store = "jetstream" (rpc/jetstream.py) the call is
instead published to the flock's JetStream stream on the subject of its target cage
and queue, its RT id returned once JetStream has it (an error if it does not answer
within the request's deadline: the call is not queued); xa.pmnc(...) publishes at
commit. Nothing is handed over: the target's retry interfaces run their queues from
durable consumers (`JetStreamEngine`), which every instance of the cage shares. The
caller's id de-duplicates twice: JetStream drops a call published again within
jetstream_duplicate_window, and a call delivered again (a crash between its run and
its ack, or published again later) whose id is among those that have run - kept
retention_time - is acknowledged without running ("has already run, not run again").

Of the caller's auth_tokens no password is stored, for any cage; a call
for (or from) another cage keeps only the tokens that travel (rpc/wire.py).
"""

from __future__ import annotations

import enum
import functools
import os
import pickle
import re
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pmnc import log
from pmnc import request as _request
from pmnc.config import Config
from pmnc.errors import (
    IntakeClosedError,
    InvalidMethodAccessError,
    InvalidModuleNameError,
    ModuleError,
    ModuleNotFoundError,
    ProtocolError,
    ResourceError,
    ResourceInputParameterError,
    RetryExitError,
    RPCError,
    exc_string,
)
from pmnc.lifecycle import Lifecycle, Outcome
from pmnc.loader import MODULE_NAME
from pmnc.rpc import codec, jetstream, wire
from pmnc.rpc.calls import CageLink, parse_target
from pmnc.rpc.cluster import Cluster, ClusterHandle
from pmnc.state import BufferedResource, StateStore, store_path
from pmnc.transaction import TransactionFactory

if TYPE_CHECKING:
    from pmnc.loader import Loader

QUEUE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_ID_LENGTH = 256
POLL_PERIOD = 1.0  # seconds between looks at the table when nothing wakes the engine
STATS_PERIOD = 10.0  # seconds between the queue counts in the log (when they change) and purges
LEASE_MARGIN = 5.0  # seconds a claim outlives the request that runs it
PUBLISH_TIMEOUT = 30.0  # seconds JetStream may take to keep a call (less if the request has less left)
MAX_PENDING_PER_SOURCE = 100000  # calls another cage may have handed over and pending here (the default)
RECOUNT = 2.0  # seconds between counts of a source's pending calls while it is at its limit
SECRET_TOKENS = ("password",)  # auth_tokens never written to a state file


# The life of a row of the retry table. Its `status` is stored (state files hold these words);
# a claim is a lease on a pending row, named by `lease` and lapsing at `visible_at`:
#
#   enqueue -> pending --CLAIM--> pending, leased --DONE---> done     } deleted retention_time
#                 ^                     |         --EXPIRE-> expired  } after `finished`
#                 +----FAIL, RELEASE----+
#
# FAIL: the attempt failed (or asked to be tried later): attempt + 1, due after the interval.
# RELEASE: the claim is given back unused (the call never started): due again at once.
# A move from a claim names its lease: one that has lapsed, and whose row another claim
# holds, changes nothing (that claim's outcome counts). The operator's purge deletes a
# queue's pending and expired rows, claimed or not.


class Status(enum.StrEnum):
    """A row's `status`, as stored."""

    PENDING = "pending"  # waiting for its turn, or claimed and running
    DONE = "done"  # kept retention_time: a call with the same id is dropped meanwhile
    EXPIRED = "expired"  # its expires_in passed before it ran; kept as a done one is


class Move(enum.Enum):
    """The changes of a row after its enqueue: `sql`, with the SET clause's parameters
    first, then the row's seq and, from a claim, its lease."""

    # (before, after, from a claim - so under its lease -, the SET clause but for status)
    CLAIM = (Status.PENDING, Status.PENDING, False, "visible_at = ?, lease = ?")
    DONE = (Status.PENDING, Status.DONE, True, "finished = ?, payload = NULL, lease = NULL, last_error = NULL")
    EXPIRE = (Status.PENDING, Status.EXPIRED, True, "finished = ?, payload = NULL, lease = NULL")
    FAIL = (Status.PENDING, Status.PENDING, True, "attempt = attempt + 1, visible_at = ?, lease = NULL, last_error = ?")
    RELEASE = (Status.PENDING, Status.PENDING, True, "visible_at = ?, lease = NULL")

    def __init__(self, before: Status, after: Status, claimed: bool, sets: str) -> None:
        self.before, self.after = before, after
        status = "" if after is before else f"status = '{after}', "
        self.sql = f"UPDATE retry SET {status}{sets} WHERE seq = ?{' AND lease = ?' if claimed else ''}"


@dataclass
class Settings:
    """The keys of config_interface_retry.py."""

    queue_count: int = 4
    keep_order: bool = False
    retry_interval: float = 120.0
    backoff: bool = False
    max_retry_interval: float = 3600.0
    retention_time: float = 3 * 86400.0
    request_timeout: float = 10.0
    max_pending_per_source: int = MAX_PENDING_PER_SOURCE

    @property
    def lease(self) -> float:
        return self.request_timeout + LEASE_MARGIN

    def interval(self, attempt: int) -> float:
        """Seconds to wait after attempt number `attempt` has failed."""
        if not self.backoff:
            return self.retry_interval
        return min(self.retry_interval * 2.0 ** min(attempt - 1, 60), self.max_retry_interval)


# --- the caller's side --------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What `pmnc("cage", queue=..., id=..., expires_in=...)` names."""

    cage: str
    queue: str
    id: str | None
    expires_in: float | None

    @classmethod
    def parse(cls, cage: str, queue: Any, id: Any = None, expires_in: Any = None, **unknown: Any) -> Target:
        if unknown:
            raise TypeError(f"a retried call got unknown option(s): {', '.join(sorted(unknown))}")
        if not isinstance(queue, str) or not QUEUE_NAME.fullmatch(queue):
            raise InvalidModuleNameError(f"queue name {queue!r} is invalid: 1 to 64 of A-Z a-z 0-9 _ . -")
        if id is not None and not (isinstance(id, str) and 0 < len(id) <= MAX_ID_LENGTH):
            raise ResourceInputParameterError(f"id of a retried call must be a str of 1 to {MAX_ID_LENGTH} "
                                              f"characters, not {id!r}")
        if expires_in is not None and (isinstance(expires_in, bool) or not isinstance(expires_in, (int, float))
                                       or not 0.0 < expires_in < 1e10):
            raise ResourceInputParameterError(f"expires_in of a retried call must be a positive number of "
                                              f"seconds, not {expires_in!r}")
        return cls(cage, queue, id, None if expires_in is None else float(expires_in))


@dataclass
class NewCall:
    """One retried call as it is made, before it is kept anywhere."""

    rt_id: str
    filtered: str  # what de-duplicates it in its queue: the caller's id, or the RT id
    target: Target
    module: str
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    caller: dict[str, Any]  # what of the caller's request it runs as (_queued_request)
    start: float
    expires: float | None


def _new_call(cage: str, target: Target, module: str, method: str, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> NewCall:
    if not MODULE_NAME.fullmatch(module) or module.startswith("_") or method.startswith("_") or \
            not MODULE_NAME.fullmatch(method):
        raise InvalidMethodAccessError(f"{module}.{method} cannot be called")
    request = _request.current()
    rt_id = _request.new_unique_id("RT")
    parent = request.parameters.get("retry")
    if target.id is None:
        filtered = rt_id
    elif isinstance(parent, dict) and isinstance(parent.get("id"), str):
        filtered = f"{parent['id']}:{target.id}"  # a named step runs once per parent call
    else:
        filtered = target.id
    caller = _queued_request(request, remote=target.cage != cage)
    now = time.time()
    return NewCall(rt_id, filtered, target, module, method, tuple(args), dict(kwargs), caller, now,
                   None if target.expires_in is None else now + target.expires_in)


def new_message(cage: str, cluster: ClusterHandle, target: Target, module: str, method: str,
                args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
    """The RT id and the enqueue operation (state.apply_op) of one retried call made in `cage`."""
    call = _new_call(cage, target, module, method, args, kwargs)
    if target.cage != cage:
        _check_transmittable(cluster.get(), target.cage, module, method, args, kwargs, call.caller)
    try:
        payload = pickle.dumps((call.args, call.kwargs, call.caller), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:
        raise ResourceInputParameterError(f"the arguments of retried call {module}.{method} cannot be "
                                          f"stored: {e}") from None
    row = {"queue": target.queue, "filtered_id": call.filtered, "rt_id": call.rt_id, "target": target.cage,
           "module": module, "method": method, "payload": payload, "start": call.start, "expires": call.expires,
           "attempt": 1, "status": Status.PENDING.value, "visible_at": call.start}
    return call.rt_id, ("enqueue", row)


@dataclass
class Publication:
    """One retried call sealed for JetStream (retry_store "jetstream"), not yet published."""

    call: NewCall
    subject: str
    data: bytes
    dedupe: str


def new_publication(cage: str, cluster: Cluster, target: Target, module: str, method: str,
                    args: tuple[Any, ...], kwargs: dict[str, Any]) -> Publication:
    """The message of one retried call made in `cage`, for the flock's stream (rpc/jetstream.py)."""
    call = _new_call(cage, target, module, method, args, kwargs)
    dedupe = jetstream.dedupe_id(cage, target.queue, call.filtered)
    queued = jetstream.Queued(cage, target.queue, call.rt_id, dedupe, module, method, list(call.args),
                              call.kwargs, call.caller, call.start, call.expires)
    subject, data = jetstream.of(cluster).encode(target.cage, queued)
    return Publication(call, subject, data, dedupe)


def publish(cluster: Cluster, publication: Publication) -> None:
    """Kept in JetStream within the request's deadline, or an error: the call is not queued."""
    request = _request.current()
    timeout = PUBLISH_TIMEOUT if request.infinite else min(max(request.remain, 0.05), PUBLISH_TIMEOUT)
    call = publication.call
    try:
        kept = jetstream.of(cluster).publish(publication.subject, publication.data, publication.dedupe, timeout)
    except jetstream.JetStreamError as e:
        raise jetstream.JetStreamError(f"retried call {call.module}.{call.method} is not queued: {e}") from None
    if not kept:
        log.warning(f"retried call {call.module}.{call.method} with id {call.filtered} is a duplicate of one "
                    f"queued in {call.target.queue} before, dropped")


def _queued_request(request: _request.Request, *, remote: bool) -> dict[str, Any]:
    """What of the caller's request the call runs as: id, parameters (not the retry context
    of a retried call that queues another; auth_tokens as `kept_tokens` says), log levels,
    description - not its deadline."""
    parameters = {k: v for k, v in request.parameters.items()
                  if isinstance(k, str) and not k.startswith("_") and k != "retry"}
    tokens = parameters.get("auth_tokens")
    if isinstance(tokens, dict):
        parameters["auth_tokens"] = kept_tokens(tokens, remote=remote)
    if request.infinite:
        return {"id": _request.new_unique_id(), "description": None, "parameters": parameters, "log_levels": []}
    return {"id": request.unique_id, "description": request.to_dict()["description"], "parameters": parameters,
            "log_levels": list(request.log_levels)}


def kept_tokens(tokens: dict[Any, Any], *, remote: bool) -> dict[Any, Any]:
    """The auth_tokens a queued call keeps in a state file: never a password (on disk it
    would outlive the request by days); for or from another cage only those that travel."""
    if remote:
        return {k: v for k, v in tokens.items() if k in wire.TRAVELLING_TOKENS}
    return {k: v for k, v in tokens.items() if k not in SECRET_TOKENS}


def _check_transmittable(cluster: Cluster, cage: str, module: str, method: str, args: tuple[Any, ...],
                         kwargs: dict[str, Any], caller: dict[str, Any]) -> None:
    """A call for another cage must be sendable there: told now, not at every attempt."""
    try:
        codec.encode({"module": module, "method": method, "args": list(args), "kwargs": kwargs,
                      "request": caller}, limit=cluster.max_frame_size, use_pickle=cluster.use_pickle)
    except ProtocolError as e:
        raise ResourceInputParameterError(f"retried call {module}.{method} cannot be sent to cage {cage}: "
                                          f"{e}") from None


class RetriedCall:
    """`pmnc("cage", queue=...)`: `.module.method(...)` queues the call and returns its RT id."""

    def __init__(self, cage: str, store: Callable[[], StateStore], cluster: ClusterHandle, target: Target) -> None:
        self._cage, self._store, self._cluster, self._target = cage, store, cluster, target

    def __getattr__(self, module: str) -> _Methods:
        if module.startswith("_") or not MODULE_NAME.fullmatch(module):
            raise InvalidModuleNameError(f"module name {module!r} is invalid")
        return _Methods(functools.partial(self._enqueue, module))

    def _enqueue(self, module: str, method: str, *args: Any, **kwargs: Any) -> str:
        if jetstream.is_jetstream(self._cluster):
            cluster = self._cluster.get()
            publication = new_publication(self._cage, cluster, self._target, module, method, args, kwargs)
            publish(cluster, publication)
            return publication.call.rt_id
        store = self._store()
        rt_id, op = new_message(self._cage, self._cluster, self._target, module, method, args, kwargs)
        store.apply([op])
        return rt_id

    def __repr__(self) -> str:
        return f"<retried calls to {self._target.cage}, queue {self._target.queue}>"


class _Methods:
    def __init__(self, call: functools.partial[Any]) -> None:
        self._call = call

    def __getattr__(self, method: str) -> Any:
        if method.startswith("__"):
            raise AttributeError(method)
        if method.startswith("_"):
            raise InvalidMethodAccessError(f"{method} is private and cannot be called")
        return functools.partial(self._call, method)


class OutboxResource(BufferedResource):
    """Pool `pmnc`: `xa.pmnc("cage", queue=...).m.f(...)` - the call is queued when the
    transaction commits (in a two-phase commit, prepared with the other branches)."""

    def __init__(self, name: str, config: dict[str, Any], store: StateStore, cage: str,
                 cluster: ClusterHandle) -> None:
        super().__init__(name, config, store)
        self._cage, self._cluster = cage, cluster
        self._target: Target | None = None
        self._publications: list[Publication] = []  # retry_store "jetstream": published at commit

    def begin_transaction(self, xid: str, *, source_module_name: str, transaction_options: dict[str, Any],
                          resource_args: tuple[Any, ...], resource_kwargs: dict[str, Any]) -> None:
        super().begin_transaction(xid, source_module_name=source_module_name,
                                  transaction_options=transaction_options, resource_args=resource_args,
                                  resource_kwargs=resource_kwargs)
        self._target = _outbox_target(self._cage, resource_args, resource_kwargs)
        self._publications = []

    def _route(self, attrs: tuple[str, ...]) -> Callable[..., Any] | None:
        """`xa.pmnc(...).module.method`: any module name, even one like an attribute here."""
        if len(attrs) != 2:
            return None
        return functools.partial(self._enqueue, *attrs)

    def _enqueue(self, module: str, method: str, *args: Any, **kwargs: Any) -> str:
        assert self._target is not None
        if jetstream.is_jetstream(self._cluster):
            publication = new_publication(self._cage, self._cluster.get(), self._target, module, method, args,
                                          kwargs)
            self._publications.append(publication)
            return publication.call.rt_id
        rt_id, op = new_message(self._cage, self._cluster, self._target, module, method, args, kwargs)
        self.ops.append(op)
        return rt_id

    # With JetStream the calls are published at commit: an error there is the commit failing (those
    # published before it stay queued). A two-phase commit's prepare only checks that the stream answers.

    def prepare(self) -> None:
        if self._publications:
            jetstream.of(self._cluster.get()).ensure()
        super().prepare()

    def commit(self) -> None:
        publications, self._publications = self._publications, []
        super().commit()
        if publications:
            cluster = self._cluster.get()
            for publication in publications:
                publish(cluster, publication)

    def rollback(self) -> None:
        self._publications = []
        super().rollback()


def _outbox_target(cage: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Target:
    target, queue, reverse, options = parse_target(*args, **kwargs)  # the one reading of pmnc("cage", ...)
    if queue is None or reverse:
        raise ResourceInputParameterError("xa.pmnc(...) takes part in a transaction as a retried call: give "
                                          "queue=...; a synchronous call is xa.rpc__<cage>.module.method(...)")
    return Target.parse(target or cage, queue, **options)


# --- the other cage's side of a hand-off ---------------------------------------------------------------


def accept(store: StateStore, loader: Loader, message: Any, caller: str) -> bool:
    """A call handed over by cage `caller`, into this cage's state file: True once it is
    there, False if it was there already (a hand-off repeated after a crash). Refused - and
    so kept by its sender, which tries again later - for a module this cage has no file
    of, or beyond max_pending_per_source calls of `caller` pending here."""
    row = _accepted_row(loader, message, caller)
    if loader.locate(row["module"]) is None:
        raise ModuleNotFoundError(f"retried call {row['rt_id']} from cage {caller}: file {row['module']}.py "
                                  f"was not found in cage {loader.cage}, the call stays with cage {caller}")
    counter = _handed_over.setdefault(store, HandedOver(loader.cage))
    counter.admit(store, caller, _max_pending_per_source(loader))
    queued = False
    try:
        [queued] = store.apply([("enqueue", row)])
    finally:
        if not queued:  # there already, or not written: it takes no place
            counter.release(caller)
    return bool(queued)


def _max_pending_per_source(loader: Loader) -> int:
    try:
        return int(Config(loader, "interface_retry").get("max_pending_per_source", MAX_PENDING_PER_SOURCE))
    except ModuleError:  # no config_interface_retry.py: the default
        return MAX_PENDING_PER_SOURCE


class HandedOver:
    """How many calls each cage has handed over that are pending here: counted in the state
    file when first needed and when the limit is reached (at most every RECOUNT seconds), and
    counted up in between - never down, so between counts the figure errs on the safe side."""

    def __init__(self, cage: str) -> None:
        self.cage = cage
        self._lock = threading.Lock()  # held while counting too: hand-overs of one moment wait for it
        self._counts: dict[str, tuple[float, int]] = {}  # source cage → (counted at, pending since)

    def admit(self, store: StateStore, source: str, limit: int) -> None:
        """A place for one more call of `source` (give it back with `release` if it is not
        queued after all); raises if `source` has `limit` calls pending here."""
        with self._lock:
            now = time.monotonic()
            counted, pending = self._counts.get(source, (None, 0))
            if counted is None or (pending >= limit and now - counted >= RECOUNT):
                counted, pending = now, self._count(store, source)
            if pending >= limit:
                self._counts[source] = (counted, pending)
                raise ResourceError(f"cage {self.cage} holds {pending} pending retried calls from cage {source}, "
                                    f"max_pending_per_source is {limit}: the call stays with cage {source}",
                                    recoverable=True, terminal=False)
            self._counts[source] = (counted, pending + 1)

    def release(self, source: str) -> None:
        with self._lock:
            counted, pending = self._counts[source]
            self._counts[source] = (counted, max(pending - 1, 0))

    def _count(self, store: StateStore, source: str) -> int:
        prefix = handed_id(source, "")
        with store.reading() as db:
            [(count,)] = db.execute(f"SELECT COUNT(*) FROM retry WHERE status = '{Status.PENDING}' AND target = ? "
                                    "AND substr(filtered_id, 1, ?) = ?", (self.cage, len(prefix), prefix))
        return int(count)


_handed_over: weakref.WeakKeyDictionary[StateStore, HandedOver] = weakref.WeakKeyDictionary()


def handed_id(source: str, rt_id: str) -> str:
    """The de-duplication id of a call handed over: its RT id, within its source cage's
    (a peer cannot take another's ids; the source's pending calls can be counted)."""
    return f"{source}/{rt_id}"


def _accepted_row(loader: Loader, message: Any, caller: str) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise ProtocolError("a retried call that is not a dict")
    queue, rt_id = message.get("queue"), message.get("rt_id")
    module, method = message.get("module"), message.get("method")
    args, kwargs, request = message.get("args"), message.get("kwargs"), message.get("request")
    start, expires = message.get("start"), message.get("expires")
    if not (isinstance(queue, str) and QUEUE_NAME.fullmatch(queue) and isinstance(rt_id, str)
            and 0 < len(rt_id) <= MAX_ID_LENGTH and isinstance(module, str) and isinstance(method, str)
            and MODULE_NAME.fullmatch(module) and MODULE_NAME.fullmatch(method)
            and not module.startswith("_") and not method.startswith("_")
            and isinstance(args, (list, tuple)) and isinstance(kwargs, dict)
            and all(isinstance(k, str) for k in kwargs) and isinstance(request, dict)
            and isinstance(start, (int, float)) and (expires is None or isinstance(expires, (int, float)))):
        raise ProtocolError(f"a malformed retried call from cage {caller}")
    parameters = wire.received_parameters(request.get("parameters"), caller)  # as a synchronous call's
    levels = [x for x in request.get("log_levels") or () if isinstance(x, int)]
    queued = {"id": str(request.get("id") or rt_id), "parameters": parameters, "log_levels": levels,
              "description": request.get("description") if isinstance(request.get("description"), str) else None}
    payload = pickle.dumps((tuple(args), kwargs, queued), protocol=pickle.HIGHEST_PROTOCOL)
    return {"queue": queue, "filtered_id": handed_id(caller, rt_id), "rt_id": rt_id, "target": loader.cage,
            "module": module, "method": method, "payload": payload, "start": float(start),
            "expires": None if expires is None else float(expires), "attempt": 1, "status": Status.PENDING.value,
            "visible_at": time.time()}


# --- the engine ---------------------------------------------------------------------------------------


@dataclass
class Claimed:
    """One claimed row, as the engine runs it."""

    seq: int
    queue: str
    rt_id: str
    target: str
    module: str
    method: str
    payload: bytes
    start: float
    expires: float | None
    attempt: int
    lease: str
    ran: bool = False


_CLAIMED = "seq, queue, rt_id, target, module, method, payload, start, expires, attempt, lease"


CATCH_ALL = "retry"  # the interface whose engine also runs the queues no other engine runs


class Queues:
    """Which engine runs which queue of one state file: the engine of interface Q runs queue
    Q; that of interface `retry` runs queue retry and every queue without an engine of its own.
    So no queue has two engines (interface names are unique), and a queue moves when an
    engine comes or goes - its claims then in force are leases, which the new engine's
    claims respect: a call being run is neither run again nor lost, and a new engine with
    keep_order waits for the head that is running. (Only queue_count is not shared: for
    that moment the calls the old engine runs are not counted by the new one.)"""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: dict[str, Engine] = {}  # queue named like the interface → its engine

    def join(self, engine: Engine) -> None:
        """`engine` runs its queue from now on (taking over from the engine of an interface
        being restarted, which claims nothing more by then)."""
        with self._lock:
            self._engines[engine.queue] = engine
        self._wake_all()

    def leave(self, engine: Engine) -> None:
        with self._lock:
            if self._engines.get(engine.queue) is engine:
                del self._engines[engine.queue]
        self._wake_all()  # the catch-all takes the queue over at once

    def runs(self, engine: Engine, queue: str) -> bool:
        with self._lock:
            return (self._engines.get(queue) or self._engines.get(CATCH_ALL)) is engine

    def _wake_all(self) -> None:
        with self._lock:
            engines = list(self._engines.values())
        for engine in engines:
            engine.wake()


_queues: weakref.WeakKeyDictionary[StateStore, Queues] = weakref.WeakKeyDictionary()


class _Rounds:
    """What both engines share: a thread of rounds (`_round` says how long to wait for the next,
    a `wake` cuts the wait short), a failing round said once and its end said once, and the
    request a retried call runs as."""

    interface: str
    lifecycle: Lifecycle
    settings: Settings

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._woken = False
        self._ceasing = self._stopping = False
        self._thread: threading.Thread | None = None
        self._failing = False  # the last round failed: said once, not every second

    def _start_rounds(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"{self.interface}:engine", daemon=True)
        self._thread.start()

    def _stop_rounds(self, wait: float) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(wait)

    def cease(self) -> None:
        """No new calls taken; calls running go on."""
        self._ceasing = True
        self.wake()

    def wake(self) -> None:
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def _round(self) -> float:
        raise NotImplementedError

    def _round_failed(self) -> None:
        """After a round that raised, before the pause."""

    def _loop(self) -> None:
        while not self._stopping:
            try:
                delay = self._round()
                if self._failing:
                    log.message(f"interface {self.interface}: retried calls can be run again")
                    self._failing = False
            except Exception as e:
                if not self._failing:
                    log.error(f"interface {self.interface}: retried calls cannot be run: "
                              f"{exc_string(e, stack=False)}")
                    self._failing = True
                self._round_failed()
                delay = POLL_PERIOD
            with self._cond:
                if delay > 0 and not self._woken and not self._stopping:
                    self._cond.wait(delay)
                self._woken = False

    def _begin(self, queued: dict[str, Any], rt_id: str, attempt: int, start: float,
               expires: float | None) -> _request.Request:
        """The request of one attempt: the one that queued the call (id, parameters, log levels,
        description), with `parameters["retry"]`; IntakeClosedError while the cage stops."""
        parameters = dict(queued.get("parameters") or {})
        parameters["retry"] = {"id": rt_id, "attempt": attempt, "start": start, "deadline": expires}
        return self.lifecycle.begin(
            interface=self.interface, protocol="retry", timeout=self.settings.request_timeout,
            parameters=parameters, description=queued.get("description"),
            log_levels=list(queued.get("log_levels") or ()), unique_id=str(queued["id"]))


class Engine(_Rounds):
    """Runs the retried calls of the queues `Queues` gives it in one cage's state file (see
    the module's doc): the queue named `interface` and, for the interface `retry`, the queues
    without an engine of their own. Each engine counts, reports and purges its own queues,
    so that nothing is done twice (hand-overs from other cages are not the engines' work:
    the rpc interface takes them, `accept`)."""

    def __init__(self, lifecycle: Lifecycle, store: StateStore, transactions: TransactionFactory, *, cage: str,
                 node: str, settings: Settings, interface: str = CATCH_ALL) -> None:
        self.lifecycle, self.store, self.transactions = lifecycle, store, transactions
        self.cage, self.settings, self.interface = cage, settings, interface
        self.queue = interface  # the queue named like the interface
        self.queues = _queues.setdefault(store, Queues())
        self._adopted: set[str] = set()  # queues without an engine of their own this one runs (the catch-all)
        self.running: dict[str, int] = {}  # queue → calls claimed and not finished
        super().__init__()
        self._tokens = 0
        self._instance = f"{node}.{cage}.{os.getpid()}"
        self._stats_due = 0.0
        self._last_counts: dict[str, dict[str, int]] = {}

    def start(self) -> None:
        self.store.listeners.append(self.wake)
        self.queues.join(self)
        self._start_rounds()

    def stop(self) -> None:
        """After cease and the drain of the calls running: the queue goes to the catch-all
        (not at cease, so that no other engine runs it while this one's calls finish)."""
        if self.wake in self.store.listeners:
            self.store.listeners.remove(self.wake)
        self.queues.leave(self)
        self._stop_rounds(5.0)

    def _round(self) -> float:
        """Claim and dispatch what is due; seconds until something may be due next."""
        if self._ceasing or not self.store.exists:
            return POLL_PERIOD
        now = time.time()
        if now >= self._stats_due:
            self._stats_due = now + STATS_PERIOD
            self._report_and_purge(now)
        with self.store.reading() as db:
            queues = db.execute(f"SELECT queue, MIN(visible_at) FROM retry WHERE status = '{Status.PENDING}' "
                                "GROUP BY queue").fetchall()
        delay = POLL_PERIOD
        for queue, due in self._own(queues):
            free = self._limit() - self.running.get(queue, 0)
            if free <= 0:
                continue
            if due > now and not self.settings.keep_order:
                delay = min(delay, due - now)
                continue
            claimed, next_due = self.store.transact(functools.partial(self._claim, queue, free, now),
                                                    durable=False)
            if next_due is not None:
                delay = min(delay, max(next_due - now, 0.0))
            for message in claimed:
                self._dispatch(message)
        return max(delay, 0.005)

    def _own(self, rows: list[Any]) -> list[Any]:
        """The rows (queue first) of the queues this engine runs now; the catch-all says
        once each time it takes up a queue that has no engine of its own."""
        own = [row for row in rows if self.queues.runs(self, row[0])]
        kept = {queue for queue in self._adopted if self.queues.runs(self, queue)}  # empty for a while, still ours
        adopted = {row[0] for row in own if row[0] != self.queue}
        for queue in sorted(adopted - kept):
            log.message(f"interface {self.interface} runs the retried calls of queue {queue}, which has no "
                        f"retry interface of its own")
        self._adopted = kept | adopted
        return own

    def _limit(self) -> int:
        return 1 if self.settings.keep_order else max(self.settings.queue_count, 1)

    def _claim(self, queue: str, count: int, now: float, db: sqlite3.Connection) -> tuple[list[Claimed], float | None]:
        if self.settings.keep_order:  # only the head, when it is due
            head = db.execute(f"SELECT seq, visible_at FROM retry WHERE status = '{Status.PENDING}' AND queue = ? "
                              "ORDER BY seq LIMIT 1", (queue,)).fetchone()
            if head is None or head[1] > now:
                return [], None if head is None else head[1]
            seqs = [head[0]]
        else:
            seqs = [row[0] for row in db.execute(
                f"SELECT seq FROM retry WHERE status = '{Status.PENDING}' AND queue = ? AND visible_at <= ? "
                "ORDER BY seq LIMIT ?", (queue, now, count))]
        if not seqs:
            return [], None
        self._tokens += 1
        lease = f"{self._instance}.{self._tokens}"
        db.executemany(Move.CLAIM.sql, [(now + self.settings.lease, lease, seq) for seq in seqs])
        rows = db.execute(f"SELECT {_CLAIMED} FROM retry WHERE seq IN ({', '.join('?' * len(seqs))}) "
                          f"ORDER BY seq", seqs).fetchall()
        return [Claimed(*row) for row in rows], None

    # --- running one call ---------------------------------------------------------------------------

    def _dispatch(self, message: Claimed) -> None:
        try:
            args, kwargs, queued = pickle.loads(message.payload)
            request = self._begin(queued, message.rt_id, message.attempt, message.start, message.expires)
        except IntakeClosedError:
            self._finish(message, Move.RELEASE, time.time())
            return
        except Exception as e:  # a payload that cannot be read will never run: say why, keep it
            log.error(f"retried call {message.rt_id} cannot be read: {exc_string(e, stack=False)}")
            self._fail(message, f"cannot be read: {e}")
            return
        with self._cond:
            self.running[message.queue] = self.running.get(message.queue, 0) + 1
        self.lifecycle.submit(request, self._execute, message, args, kwargs, queued,
                              when_done=functools.partial(self._done, message))

    def _execute(self, message: Claimed, args: tuple[Any, ...], kwargs: dict[str, Any],
                 queued: dict[str, Any]) -> None:
        message.ran = True
        what = f"retried call {message.rt_id} ({message.module}.{message.method}, attempt {message.attempt})"
        if message.expires is not None and time.time() >= message.expires:
            log.warning(f"{what} has expired, dropped")
            self._finish(message, Move.EXPIRE, time.time())
            return
        try:
            if message.target == self.cage:
                self.lifecycle.handle(message.module, message.method, tuple(args), kwargs)
            else:
                self._hand_over(message, args, kwargs, queued)
        except RetryExitError as e:
            log.info(f"{what} asks to be tried again later{': ' + str(e) if str(e) else ''}")
            self._fail(message, "exit()")
        except Exception as e:
            delay = self.settings.interval(message.attempt)
            log.warning(f"{what} has failed, next attempt in {delay:.0f}s: {exc_string(e, stack=False)}")
            self._fail(message, exc_string(e, stack=False))
        else:
            log.info(f"{what} is done")
            self._finish(message, Move.DONE, time.time())

    def _hand_over(self, message: Claimed, args: tuple[Any, ...], kwargs: dict[str, Any],
                   queued: dict[str, Any]) -> None:
        """The call into the other cage's state file, by RPC; done when it answers."""
        handed = {"queue": message.queue, "rt_id": message.rt_id, "module": message.module,
                  "method": message.method, "args": list(args), "kwargs": kwargs, "request": queued,
                  "start": message.start, "expires": message.expires}
        try:
            CageLink(self.transactions, message.target).hand_over(handed)
        except RPCError as e:
            raise e.remote from None

    def _fail(self, message: Claimed, error: str) -> None:
        self._finish(message, Move.FAIL, time.time() + self.settings.interval(message.attempt), error[:2000])

    def _finish(self, message: Claimed, move: Move, *values: Any) -> None:
        """Record the outcome, unless the lease has lapsed and another claim holds the row
        (then that claim's outcome counts). Not synced: a crash may forget it, and the
        call runs again - at least once, never lost."""
        sql, params = move.sql, (*values, message.seq, message.lease)
        try:
            self.store.transact(lambda db: db.execute(sql, params), durable=False)
        except Exception as e:
            log.error(f"the outcome of retried call {message.rt_id} cannot be recorded, it will run again "
                      f"after its lease: {exc_string(e, stack=False)}")

    def _done(self, message: Claimed, outcome: Outcome) -> None:
        if not message.ran:  # expired in the queue, or the cage is stopping: not an attempt
            self._finish(message, Move.RELEASE, time.time())
        with self._cond:
            self.running[message.queue] -= 1
            self._woken = True
            self._cond.notify_all()

    # --- what operators see ----------------------------------------------------------------------

    def _report_and_purge(self, now: float) -> None:
        """Of this engine's queues: finished ids older than its retention_time deleted, and
        the counts that changed logged."""
        with self.store.reading() as db:
            queues = [q for (q,) in db.execute("SELECT DISTINCT queue FROM retry") if self.queues.runs(self, q)]
        if queues:
            before = now - self.settings.retention_time
            self.store.transact(lambda db: db.executemany(
                f"DELETE FROM retry WHERE status IN ('{Status.DONE}', '{Status.EXPIRED}') AND queue = ? "
                "AND finished < ?", [(queue, before) for queue in queues]), durable=False)
        counts = {q: n for q, n in queue_counts(self.store, now).items() if self.queues.runs(self, q)}
        for queue, numbers in sorted(counts.items()):
            if self._last_counts.get(queue) != numbers:
                log.log(f"retry queue {queue}: {describe_counts(numbers)}")
        self._last_counts = counts


# --- the engine of retried calls kept in JetStream (retry_store "jetstream") -------------------------

FETCH_WAIT = 1.0  # seconds a fetch waits for a call: how soon a ceasing engine notices
UNLIMITED_PENDING = -1  # max_ack_pending without keep_order: calls waiting to be retried hold no place
# Attempts run here, remembered per call (the newest this many): a call's attempt is the more of that
# and JetStream's delivery count, which nats-server 2.9 was seen to give as 1 again for a call given
# back (nak) and delivered anew (tests/test_nats_retry.py, in four runs of five on one machine).
ATTEMPTS_REMEMBERED = 10000

_jetstream_queues: dict[str, set[str]] = {}  # cage → queues with a JetStream engine of their own in this process
_jetstream_lock = threading.Lock()


@dataclass
class Delivered:
    """One message of the stream, as the JetStream engine runs it."""

    msg: Any  # nats.aio.msg.Msg
    call: jetstream.Queued
    attempt: int
    ran: bool = False


class JetStreamEngine(_Rounds):
    """Runs the retried calls of one queue kept in the flock's JetStream stream (rpc/jetstream.py),
    as `Engine` runs those of the state file: the same requests, `parameters["retry"]`, outcome
    for outcome - done: acknowledged (and its id recorded, so that a delivery again does not run it);
    failed: given back to be delivered after the retry interval; expired: dropped. One durable
    consumer per (cage, queue) is shared by every instance of the cage: queue_count calls of the
    queue run at once in each instance, keep_order makes it one in the whole cage
    (max_ack_pending 1). The consumer of interface `retry` sees all of the cage's queues and
    passes over (acknowledges unrun) those another retry interface of this cage runs."""

    def __init__(self, lifecycle: Lifecycle, cluster: Cluster, *, cage: str, settings: Settings,
                 interface: str = CATCH_ALL) -> None:
        self.lifecycle, self.cage, self.settings, self.interface = lifecycle, cage, settings, interface
        self.queue = interface
        self.consumer = jetstream.Consumer(
            jetstream.of(cluster), self.queue, ack_wait=settings.lease, retention_time=settings.retention_time,
            max_ack_pending=1 if settings.keep_order else UNLIMITED_PENDING)
        self.running = 0
        self.repeats = 0  # calls delivered again after they had run: not run again
        self._attempts: dict[str, int] = {}  # rt_id → the last attempt run here, oldest first (ATTEMPTS_REMEMBERED)
        super().__init__()
        self._open = False
        self._stats_due = 0.0
        self._last_counts: tuple[int, int] | None = None

    def start(self) -> None:
        if self.queue != CATCH_ALL:
            with _jetstream_lock:
                _jetstream_queues.setdefault(self.cage, set()).add(self.queue)
        self._start_rounds()

    def stop(self) -> None:
        self._stop_rounds(FETCH_WAIT + jetstream.API_TIMEOUT)
        with _jetstream_lock:
            _jetstream_queues.get(self.cage, set()).discard(self.queue)
        self.consumer.close()

    def _round_failed(self) -> None:
        if self._open:  # opened again next round: the consumer may have been deleted, or moved
            self._open = False
            self.consumer.close()

    def _round(self) -> float:
        """Fetch what there is room for and dispatch it; seconds to wait before the next round."""
        if not self._open:
            self.consumer.open()
            self._open = True
        if self._ceasing:
            return POLL_PERIOD
        now = time.time()
        if now >= self._stats_due:
            self._stats_due = now + STATS_PERIOD
            self._report()
        with self._cond:
            free = (1 if self.settings.keep_order else max(self.settings.queue_count, 1)) - self.running
        if free <= 0:
            return POLL_PERIOD  # a call finishing wakes the engine
        for msg in self.consumer.fetch(free, FETCH_WAIT):
            self._receive(msg)
        return 0.0

    def _receive(self, msg: Any) -> None:
        try:
            call = self.consumer.decode(msg)
        except ProtocolError as e:
            log.error(f"interface {self.interface}: a message on {msg.subject} is not a retried call, "
                      f"dropped: {e}")
            self.consumer.term(msg)
            return
        if call.queue != self.queue and self._runs_elsewhere(call.queue):
            self.consumer.ack(msg, forget=False)  # its own interface's consumer runs (and deletes) it
            return
        with self._cond:
            attempt = max(int(msg.metadata.num_delivered or 1), self._attempts.get(call.rt_id, 0) + 1)
        self._dispatch(Delivered(msg, call, attempt))

    def _attempted(self, call: jetstream.Queued, attempt: int | None) -> None:
        """Remember the attempt run here (None: the call is settled for good, forget it)."""
        with self._cond:
            self._attempts.pop(call.rt_id, None)
            if attempt is not None:
                self._attempts[call.rt_id] = attempt
                if len(self._attempts) > ATTEMPTS_REMEMBERED:
                    del self._attempts[next(iter(self._attempts))]

    def _runs_elsewhere(self, queue: str) -> bool:
        """Whether a retry interface of this cage other than the catch-all runs `queue`: one that
        runs here, or one config_interfaces.py lists (it may be about to start: at the cage's start
        the catch-all starts first, and must not take that queue's calls meanwhile)."""
        with _jetstream_lock:
            if queue in _jetstream_queues.get(self.cage, ()):
                return True
        loader = self.lifecycle.loader
        try:
            if queue not in (Config(loader, "interfaces").get("interfaces") or ()):
                return False
            return bool(Config(loader, f"interface_{queue}").get("protocol") == "retry")
        except ModuleError:
            return False

    def _dispatch(self, delivered: Delivered) -> None:
        call = delivered.call
        try:
            request = self._begin(call.request, call.rt_id, delivered.attempt, call.start, call.expires)
        except IntakeClosedError:
            self._settle(delivered, self.consumer.nak, 0.0)
            return
        with self._cond:
            self.running += 1
        self.lifecycle.submit(request, self._execute, delivered, when_done=functools.partial(self._done, delivered))

    def _execute(self, delivered: Delivered) -> None:
        delivered.ran = True
        call, consumer = delivered.call, self.consumer
        what = f"retried call {call.rt_id} ({call.module}.{call.method}, attempt {delivered.attempt})"
        if call.expires is not None and time.time() >= call.expires:
            log.warning(f"{what} has expired, dropped")
            self._attempted(call, None)
            self._settle(delivered, consumer.term)
            return
        self._attempted(call, delivered.attempt)
        try:
            ran_before = consumer.has_run(call.dedupe)
        except Exception as e:  # not known whether it has run: not run now, tried again later
            log.warning(f"{what} is put off, next attempt in {self.settings.retry_interval:.0f}s: "
                        f"{exc_string(e, stack=False)}")
            self._settle(delivered, consumer.nak, self.settings.retry_interval)
            return
        if ran_before:
            with self._cond:
                self.repeats += 1
            log.warning(f"retried call {call.rt_id} has already run, not run again")
            self._attempted(call, None)
            self._settle(delivered, consumer.ack)
            return
        try:
            self.lifecycle.handle(call.module, call.method, tuple(call.args), call.kwargs)
        except RetryExitError as e:
            log.info(f"{what} asks to be tried again later{': ' + str(e) if str(e) else ''}")
            self._settle(delivered, consumer.nak, self.settings.interval(delivered.attempt))
        except Exception as e:
            delay = self.settings.interval(delivered.attempt)
            log.warning(f"{what} has failed, next attempt in {delay:.0f}s: {exc_string(e, stack=False)}")
            self._settle(delivered, consumer.nak, delay)
        else:
            log.info(f"{what} is done")
            self._attempted(call, None)
            try:
                consumer.mark_run(call.dedupe, call.rt_id)
            except Exception as e:  # acknowledged all the same: a repeat becomes possible, not certain
                log.warning(f"{what} cannot be recorded as run: {exc_string(e, stack=False)}")
            self._settle(delivered, consumer.ack)

    def _settle(self, delivered: Delivered, how: Callable[..., None], *args: Any) -> None:
        """Not settled: JetStream delivers it again after ack_wait - at least once, never lost."""
        try:
            how(delivered.msg, *args)
        except Exception as e:
            log.error(f"the outcome of retried call {delivered.call.rt_id} cannot be recorded, it will run "
                      f"again after {self.settings.lease:.0f}s: {exc_string(e, stack=False)}")

    def _done(self, delivered: Delivered, outcome: Outcome) -> None:
        if not delivered.ran:  # expired in the worker queue, or the cage is stopping: not an attempt
            self._settle(delivered, self.consumer.nak, 0.0)
        with self._cond:
            self.running -= 1
            self._woken = True
            self._cond.notify_all()

    def _report(self) -> None:
        """The consumer's counts in the log when they change."""
        try:
            counts = self.consumer.counts()
        except Exception as e:
            log.debug(f"interface {self.interface}: no counts of JetStream: {e!r}")
            return
        if counts != self._last_counts:
            self._last_counts = counts
            log.log(f"retry queue {self.queue} (JetStream): {counts[0]} waiting, {counts[1]} being run or "
                    f"waiting to be retried, {self.repeats} repeat(s) not run again")

    def __repr__(self) -> str:
        return f"<JetStreamEngine {self.interface} running={self.running} repeats={self.repeats}>"


def queue_counts(store: StateStore, now: float | None = None) -> dict[str, dict[str, int]]:
    """Per queue: pending (of which retrying: failed before; running: claimed now), done, expired."""
    now = time.time() if now is None else now
    counts: dict[str, dict[str, int]] = {}
    with store.reading() as db:
        rows = db.execute("SELECT queue, status, attempt > 1, lease IS NOT NULL AND visible_at > ?, COUNT(*) "
                          "FROM retry GROUP BY 1, 2, 3, 4", (now,)).fetchall()
    for queue, status, retrying, running, count in rows:
        numbers = counts.setdefault(queue, {"pending": 0, "retrying": 0, "running": 0, "done": 0, "expired": 0})
        numbers[status] = numbers.get(status, 0) + count
        if status == Status.PENDING:
            numbers["retrying"] += count if retrying else 0
            numbers["running"] += count if running else 0
    return counts


def describe_counts(numbers: dict[str, int]) -> str:
    return (f"{numbers['pending']} pending ({numbers['retrying']} retrying, {numbers['running']} running), "
            f"{numbers['done']} done, {numbers['expired']} expired")


class RetryContext:
    """`pmnc.retry` in a cage module: `exit()` ends this attempt of a retried call
    quietly; it is tried again after retry_interval."""

    def exit(self, reason: str = "") -> None:
        raise RetryExitError(reason)

    @property
    def current(self) -> dict[str, Any] | None:
        """id, attempt, start, deadline of the retried call being run, if it is one."""
        context = _request.current().parameters.get("retry")
        return context if isinstance(context, dict) else None


# --- the operator's command: python3 startup.py --retry <cage> list [queue] | purge <queue> -------------

RETRY_USAGE = "python3 startup.py --retry cage list [queue] | --retry cage purge queue"


def main(cages_dir: str, argv: list[str]) -> int:
    """List a cage's retried calls, or purge the pending and expired ones of a queue. Works
    on a running cage too: a purged call being run finishes, and is not run again."""
    listing = len(argv) in (2, 3) and argv[1] == "list"
    if not (listing or (len(argv) == 3 and argv[1] == "purge")):
        print(f"startup.py: usage: {RETRY_USAGE}", file=sys.stderr)
        return 2
    cage, command, queue = argv[0], argv[1], argv[2] if len(argv) == 3 else None
    if _tell_jetstream(cages_dir, cage, command, queue) and command == "purge":
        return 1
    path = store_path(os.path.join(cages_dir, cage))
    if not os.path.exists(path):
        print(f"cage {cage} has no state file ({path}): no retried calls")
        return 0 if command == "list" else 1
    store = StateStore(path, minimum_free_space=0)
    try:
        if command == "purge":
            assert queue is not None
            purged = store.transact(lambda db: db.execute(
                f"DELETE FROM retry WHERE queue = ? AND status IN ('{Status.PENDING}', '{Status.EXPIRED}')",
                (queue,)).rowcount)
            print(f"queue {queue} of cage {cage}: {purged} pending or expired call(s) purged")
            return 0
        _print_queues(store, queue)
        return 0
    finally:
        store.close()


def _tell_jetstream(cages_dir: str, cage: str, command: str, queue: str | None) -> bool:
    """With retry_store "jetstream" the calls are in the flock's stream: the nats tool shows and
    purges them (said here; True). What the state file still holds is listed after."""
    from pmnc.config import read_settings
    from pmnc.loader import Loader
    from pmnc.rpc.cluster import KEYS

    settings = read_settings(Loader(cages_dir, cage, "retry"), "cluster", KEYS)
    if settings["retry_store"] != "jetstream":
        return False
    flock, stream = settings["flock_id"], jetstream.stream_name(settings["flock_id"])
    subject = jetstream.subject(flock, cage, queue or "*")
    print(f"cage {cage} keeps its retried calls in JetStream, stream {stream}, subjects {subject}")
    if command == "purge":
        print(f"  purge them with: nats stream purge {stream} --subject {subject}")
    else:
        print(f"  see them with: nats consumer report {stream}; nats stream subjects {stream}")
    return True


def _print_queues(store: StateStore, only: str | None) -> None:
    counts = queue_counts(store)
    if not counts:
        print("no retried calls")
    for queue, numbers in sorted(counts.items()):
        if only is not None and queue != only:
            continue
        print(f"queue {queue}: {describe_counts(numbers)}")
        with store.reading() as db:
            rows = db.execute("SELECT rt_id, filtered_id, target, module, method, attempt, visible_at, expires, "
                              f"last_error FROM retry WHERE queue = ? AND status = '{Status.PENDING}' ORDER BY seq",
                              (queue,)).fetchall()
        for rt_id, filtered, target, module, method, attempt, visible_at, expires, error in rows:
            source = filtered[:-len(rt_id) - 1] if filtered.endswith("/" + rt_id) else None
            named = "" if filtered == rt_id else f" from cage {source}" if source else f" id {filtered}"
            line = (f"  {rt_id}{named} → {target}: {module}.{method}, attempt {attempt}, "
                    f"next {_when(visible_at)}, expires {_when(expires) if expires else 'never'}")
            print(line + (f", last error: {error}" if error else ""))


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
