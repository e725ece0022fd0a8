"""Transactions: where resource calls run, and where they commit.

    xa = pmnc.transaction.create()
    xa.db.execute("...")              # each call registers one participant
    xa.web.get("/status")
    r1, r2 = xa.execute()             # results in registration order

    pmnc.transaction.web.get("/")     # shortcut: a one-participant transaction

Commit protocol (best effort, as the original's; `create(two_phase=True)` adds
prepare and a durable decision, see "two-phase commit" below):
1. `execute()` queues each participant on its resource pool's threads with a
   clone of the caller's request (same id and deadline). A transaction with
   more participants on one resource than its pool has threads fails at
   once rather than starve. A transaction of one call on a resource whose
   waits are all bounded by the deadline (`inline`) runs it on the caller's
   thread instead, and commits at once.
2. A participant takes a connection, begins a local transaction, calls the
   method and reports the result, then waits for the decision.
3. The coordinator (the caller's thread) hands the results to `accept(xa,
   results)` as they arrive (pending ones are `xa.NoValue`): None waits for
   more, a value decides commit and is what `execute()` returns, an exception
   decides rollback and reaches the caller. The default accepts when all
   have succeeded and fails as soon as one fails.
4. Every participant commits or rolls back on its own; with `sync_commit`
   (the default) the caller waits for the commits. The deadline bounds
   every wait.

Each call is counted once in the cage's statistics (monitor/stats.py), under its
pool's name: pending from being handed to the pool until it begins (a pool thread,
a connection), processing for begin_transaction and the call, a failure if either
raised. A call that gets no connection is a failure with no processing time; one
answered from the pool's cache is not counted: the resource did nothing.
"""

from __future__ import annotations

import enum
import inspect
import operator
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any

from pmnc import log
from pmnc import request as _request
from pmnc.cache import WAIT_EXPIRED, cache_ticket
from pmnc.errors import (
    ResourceError,
    ResourceInputParameterError,
    TransactionCommitError,
    TransactionExecutionError,
    exc_string,
)
from pmnc.request import new_unique_id
from pmnc.resource import LIFECYCLE, Resource

if TYPE_CHECKING:
    from pmnc.pools import ResourcePool, ResourcePools


class _NoValue:
    def __repr__(self) -> str:
        return "NoValue"


NoValue = _NoValue()

Accept = Callable[["Transaction", list[Any]], Any]


# A participant's state is two fields, each written by one side under Transaction._cond
# and waited for by the other:
#
#   decision (the coordinator's)   NONE -> PREPARE -> COMMIT | ROLLBACK   a branch of a two-phase commit
#                                  NONE -> COMMIT | ROLLBACK              any other participant
#       COMMIT may yet become ROLLBACK: when the last resource's commit fails or is not
#       confirmed in time, every participant is told to roll back, that one too.
#   stage (the participant's)      OPEN -> PREPARED -> COMMITTED | COMMIT_FAILED
#                                  OPEN -> PREPARE_FAILED
#                                  OPEN -> COMMITTED | COMMIT_FAILED
#       A rollback is not reported: nobody waits for one.
#
# Before either, `result` is NoValue until the call returns, then its value or its
# ResourceError: what accept() sees.


class Decision(enum.Enum):
    """What the coordinator has told a participant to do after its call."""

    NONE = "none"  # nothing yet: wait
    PREPARE = "prepare"  # phase 1 of a two-phase commit, then wait again
    COMMIT = "commit"
    ROLLBACK = "rollback"


class Stage(enum.Enum):
    """How far a participant has got after its call."""

    OPEN = "open"  # its call runs, or has run and waits for the decision
    PREPARED = "prepared"
    PREPARE_FAILED = "prepare failed"  # `error` says why
    COMMITTED = "committed"  # or, on a resource that is not transactional, simply done
    COMMIT_FAILED = "commit failed"  # `error` says why


_NEXT_STAGES: dict[Stage, frozenset[Stage]] = {
    Stage.OPEN: frozenset({Stage.PREPARED, Stage.PREPARE_FAILED, Stage.COMMITTED, Stage.COMMIT_FAILED}),
    Stage.PREPARED: frozenset({Stage.COMMITTED, Stage.COMMIT_FAILED}),
    Stage.PREPARE_FAILED: frozenset(),
    Stage.COMMITTED: frozenset(),
    Stage.COMMIT_FAILED: frozenset(),
}
_COMMIT_KNOWN = frozenset({Stage.COMMITTED, Stage.COMMIT_FAILED})
_DECIDED = frozenset({Decision.COMMIT, Decision.ROLLBACK})


class Participant:
    """One registered call: `xa.<resource>(*resource_args).<attrs>(*args, **kwargs)`."""

    def __init__(self, index: int, resource: str, attrs: tuple[str, ...], args: tuple[Any, ...],
                 kwargs: dict[str, Any], resource_args: tuple[Any, ...], resource_kwargs: dict[str, Any]) -> None:
        self.index, self.resource, self.attrs = index, resource, attrs
        self.args, self.kwargs = args, kwargs
        self.resource_args, self.resource_kwargs = resource_args, resource_kwargs
        self.result: Any = NoValue
        self.branch: str | None = None  # its id as a branch of a two-phase commit
        self.decision = Decision.NONE
        self.stage = Stage.OPEN
        self.error: BaseException | None = None  # why PREPARE_FAILED or COMMIT_FAILED
        self.handed = 0.0  # monotonic, when it was handed to its pool (the statistics' pending time)
        self.began: float | None = None  # monotonic, when begin_transaction was called

    @property
    def call(self) -> str:
        return f"{self.resource}.{'.'.join(self.attrs)}()"


class Transaction:
    NoValue = NoValue

    def __init__(self, pools: ResourcePools, source_module: str, *, accept: Accept | None = None,
                 sync_commit: bool = True, two_phase: bool = False, **options: Any) -> None:
        self._pools, self._source = pools, source_module
        self._accept = accept or default_accept
        self._sync_commit = sync_commit
        self._two_phase = two_phase
        self._options = options
        self.xid = new_unique_id("XA")
        self._participants: list[Participant] = []
        self._cond = threading.Condition(threading.Lock())
        self._executed = False
        self._finished = False  # two-phase: every branch is through phase 2

    def __getattr__(self, name: str) -> _Registration:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Registration(self, name)

    def _register(self, *args: Any, **kwargs: Any) -> None:
        self._participants.append(Participant(len(self._participants), *args, **kwargs))

    # --- the coordinator --------------------------------------------------------------

    def execute(self) -> Any:
        if self._executed:
            raise TransactionExecutionError(f"transaction {self.xid} has already been executed")
        self._executed = True
        if not self._participants:
            return ()
        pools = [self._pools.get(p.resource) for p in self._participants]
        if self._two_phase and len(pools) > 1:
            return self._execute_two_phase(pools)
        if len(pools) == 1 and pools[0].inline and self._accept is default_accept:
            return (self._run_inline(self._participants[0], pools[0]),)
        self._check_pool_sizes(pools)
        request = _request.current()
        _hand(self._participants)
        for participant, pool in zip(self._participants, pools, strict=True):
            pool.workers.submit(request.clone(), self._run, participant, pool)
        try:
            outcome = self._decide(request)
        except BaseException:
            self._signal(commit=False)
            raise
        self._signal(commit=True)
        if self._sync_commit:
            self._wait_commits(request)
        return outcome

    def _check_pool_sizes(self, pools: list[ResourcePool]) -> None:
        counts: dict[str, int] = {}
        for participant, pool in zip(self._participants, pools, strict=True):
            counts[pool.name] = counts.get(pool.name, 0) + 1
            if counts[pool.name] > pool.size:
                raise TransactionExecutionError(
                    f"transaction has more participants on resource {pool.name} than its pool has "
                    f"threads ({pool.size})", participant.index)

    def _decide(self, request: _request.Request) -> Any:
        """Feed results to accept() until it decides; bounded by the deadline."""
        with self._cond:
            while True:
                results = [p.result for p in self._participants]
                outcome = self._accept(self, results)
                if outcome is not None:
                    return outcome
                if NoValue not in results:
                    raise TransactionExecutionError("transaction has not been accepted", None)
                timeout = None if request.deadline is None else request.remain
                if timeout == 0.0 or not self._cond.wait(timeout):
                    if NoValue not in [p.result for p in self._participants]:
                        continue
                    waiting = next(p for p in self._participants if p.result is NoValue)
                    raise TransactionExecutionError(
                        f"request deadline waiting for participant {waiting.index} ({waiting.call})", waiting.index)

    def _signal(self, *, commit: bool) -> None:
        decision = Decision.COMMIT if commit else Decision.ROLLBACK
        with self._cond:
            for participant in self._participants:
                participant.decision = decision
            self._cond.notify_all()

    def _wait_commits(self, request: _request.Request) -> None:
        waiting = [p for p in self._participants if not isinstance(p.result, BaseException)]
        with self._cond:
            self._cond.wait_for(lambda: all(p.stage in _COMMIT_KNOWN for p in waiting),
                                None if request.deadline is None else request.remain)
        for participant in waiting:
            stage = participant.stage  # once: it may still move
            if stage not in _COMMIT_KNOWN:
                raise TransactionCommitError(f"participant {participant.index} ({participant.call}) has not "
                                             f"confirmed its commit in time, the outcome is unknown",
                                             participant.index)
            if stage is Stage.COMMIT_FAILED:
                raise TransactionCommitError(f"participant {participant.index} ({participant.call}) failed to "
                                             f"commit: {participant.error}", participant.index)

    # --- a participant, on a thread of its resource's pool ------------------------------------

    def _run(self, participant: Participant, pool: ResourcePool) -> None:
        try:
            # a branch of a two-phase commit must run to be prepared: never from the cache
            cache = _cache_use(participant, pool, cacheable=participant.branch is None)
            if cache is not None and cache.hit is not NoValue:
                self._report(participant, cache.hit)
                self._reach(participant, Stage.COMMITTED)  # nothing ran, nothing to commit
                return
            try:
                with pool.connection() as resource:
                    result = self._invoke(participant, resource, pool, cache)
                    self._report(participant, result)
                    if pool.transactional:
                        self._finish(participant, resource, _request.current())
                    else:
                        self._reach(participant, Stage.COMMITTED)  # nothing to commit: the call was the effect
            finally:
                if cache is not None:
                    cache.finish()
        except ResourceError as e:
            _no_call(participant, pool)
            self._report(participant, e)

    def _invoke(self, participant: Participant, resource: Resource, pool: ResourcePool,
                cache: _CacheUse | None) -> Any:
        options = self._options if participant.branch is None else {**self._options, "branch": participant.branch}
        return _invoke(self.xid, self._source, options, participant, resource, pool, cache)

    def _run_inline(self, participant: Participant, pool: ResourcePool) -> Any:
        return _run_inline(self.xid, self._source, self._options, participant, pool)

    def _finish(self, participant: Participant, resource: Resource, request: _request.Request) -> None:
        with self._cond:
            self._cond.wait_for(lambda: participant.decision is not Decision.NONE,
                                None if request.deadline is None else request.remain)
            decision = participant.decision
        if decision is Decision.PREPARE:
            self._finish_branch(participant, resource)
            return
        if decision is not Decision.COMMIT:
            if decision is Decision.NONE:
                log.warning(f"transaction {self.xid}: no decision for {participant.call} in time, rolling back")
            _quietly(resource, "rollback")
            return
        try:
            resource.commit()
        except Exception as e:
            log.error(f"transaction {self.xid}: {participant.call} failed to commit: {exc_string(e)}")
            resource.expire()
            self._reach(participant, Stage.COMMIT_FAILED, e)
        else:
            self._reach(participant, Stage.COMMITTED)

    # --- two-phase commit --------------------------------------------------------------------
    #
    # 1. Each participant runs as above, in a branch (its id: pmnc:<node>.<cage>:<xid>:<index>).
    # 2. accept() decides; a rollback ends it as in one-phase commit.
    # 3. Phase 1: every branch prepares; one that cannot rolls all back.
    # 4. The one participant that cannot prepare, if any, commits now (the last resource):
    #    its failure rolls the prepared branches back.
    # 5. The commit decision is written to the decision log (durable).
    # 6. Phase 2: every branch commits, whatever the deadline; a branch that cannot is
    #    finished by recovery (recover_in_doubt) from the log.

    def _execute_two_phase(self, pools: list[ResourcePool]) -> Any:
        others = [p.call for p, pool in zip(self._participants, pools, strict=True) if not pool.preparable]
        if len(others) > 1:
            raise TransactionExecutionError(f"a two-phase transaction may have one participant that cannot "
                                            f"prepare, not {len(others)}: {', '.join(others)}")
        self._check_pool_sizes(pools)
        log_, prefix = self._pools.decisions, branch_prefix(self._pools.loader.node, self._pools.loader.cage)
        for participant, pool in zip(self._participants, pools, strict=True):
            if pool.preparable:
                participant.branch = f"{prefix}{self.xid}:{participant.index}"
                log_.remember_resource(pool.name)
        request = _request.current()
        _active.add(self.xid)  # recovery keeps off its branches until they are finished
        _hand(self._participants)
        for participant, pool in zip(self._participants, pools, strict=True):
            pool.workers.submit(request.clone(), self._run, participant, pool)
        try:
            outcome = self._decide(request)
            self._phase_one(request)
            self._commit_last_resource(request)
        except BaseException:
            self._signal(commit=False)
            _active.discard(self.xid)  # decided: roll back; recovery may finish what is left
            raise
        self._log_decision(pools)
        self._signal(commit=True)
        if self._sync_commit:
            self._wait_phase_two(request)
        return outcome

    def _phase_one(self, request: _request.Request) -> None:
        branches = [p for p in self._participants if p.branch is not None]
        with self._cond:
            for participant in branches:
                participant.decision = Decision.PREPARE
            self._cond.notify_all()
            self._cond.wait_for(lambda: all(p.stage is not Stage.OPEN for p in branches),
                                None if request.deadline is None else request.remain)
        for participant in branches:
            stage = participant.stage  # once: it may still move
            if stage is Stage.OPEN:
                raise TransactionExecutionError(f"request deadline waiting for participant {participant.index} "
                                                f"({participant.call}) to prepare", participant.index)
            if stage is Stage.PREPARE_FAILED:
                raise TransactionExecutionError(f"participant {participant.index} ({participant.call}) failed to "
                                                f"prepare: {participant.error}", participant.index)

    def _commit_last_resource(self, request: _request.Request) -> None:
        last = next((p for p in self._participants if p.branch is None), None)
        if last is None:
            return
        with self._cond:
            last.decision = Decision.COMMIT
            self._cond.notify_all()
            self._cond.wait_for(lambda: last.stage in _COMMIT_KNOWN,
                                None if request.deadline is None else request.remain)
        stage = last.stage  # once: it may still move
        if stage is not Stage.COMMITTED:
            what = "has not confirmed its commit in time" if stage is not Stage.COMMIT_FAILED else \
                f"failed to commit: {last.error}"
            raise TransactionCommitError(f"participant {last.index} ({last.call}), the last resource, {what}; "
                                         f"the prepared branches roll back", last.index)

    def _log_decision(self, pools: list[ResourcePool]) -> None:
        branches = [(pool.name, p.branch) for p, pool in zip(self._participants, pools, strict=True)
                    if p.branch is not None]
        try:
            self._pools.decisions.decide_commit(self.xid, branches)
        except Exception as e:
            # Nothing is committed yet unless a last resource is: without it, roll back.
            if any(p.branch is None for p in self._participants):
                log.error(f"transaction {self.xid}: the commit decision cannot be logged ({e}); committing "
                          f"anyway, as the last resource has: a crash now would leave it inconsistent")
                return
            self._signal(commit=False)
            _active.discard(self.xid)
            raise TransactionExecutionError(f"the commit decision cannot be logged: {e}") from e

    def _wait_phase_two(self, request: _request.Request) -> None:
        branches = [p for p in self._participants if p.branch is not None]
        with self._cond:
            self._cond.wait_for(lambda: all(p.stage in _COMMIT_KNOWN for p in branches),
                                None if request.deadline is None else request.remain)
        for participant in branches:
            if participant.stage is not Stage.COMMITTED:
                log.warning(f"transaction {self.xid}: {participant.call} has not committed yet; it is decided "
                            f"and logged, and will be committed")

    def _finish_branch(self, participant: Participant, resource: Resource) -> None:
        """Phase 1 and 2 of one branch, on its pool's thread. Phase 2 runs under a request
        of its own: a decided commit completes whatever the caller's deadline."""
        try:
            resource.prepare()
        except Exception as e:
            log.warning(f"transaction {self.xid}: {participant.call} failed to prepare: {exc_string(e, stack=False)}")
            resource.expire()
            self._reach(participant, Stage.PREPARE_FAILED, e)
            _quietly(resource, "rollback")
            return
        self._reach(participant, Stage.PREPARED)
        with self._cond:
            self._cond.wait_for(lambda: participant.decision in _DECIDED, DECISION_WAIT)
            decision = participant.decision
        if decision not in _DECIDED:  # the coordinator is gone: recovery decides (presumed abort)
            log.error(f"transaction {self.xid}: no decision for the prepared {participant.call}, left to recovery")
            resource.expire()
            _active.discard(self.xid)
            return
        with _request.attached(_request.Request(timeout=PHASE_TWO_TIMEOUT, interface="__transaction__",
                                                protocol="__transaction__")):
            if decision is Decision.ROLLBACK:
                _quietly(resource, "rollback")
                return
            try:
                resource.commit()
            except Exception as e:
                log.error(f"transaction {self.xid}: {participant.call} failed to commit its prepared branch, "
                          f"recovery will: {exc_string(e, stack=False)}")
                resource.expire()
                self._reach(participant, Stage.COMMIT_FAILED, e)
                self._branch_finished()
                return
        self._reach(participant, Stage.COMMITTED)
        self._branch_finished()

    def _branch_finished(self) -> None:
        """After phase 2 of a branch: once all are through, the decision is forgotten if
        all committed (else recovery finishes from it), and recovery may look again."""
        branches = [p for p in self._participants if p.branch is not None]
        with self._cond:
            if self._finished or not all(p.stage in _COMMIT_KNOWN for p in branches):
                return
            self._finished = True
        if all(p.stage is Stage.COMMITTED for p in branches):
            try:
                self._pools.decisions.forget(self.xid)
            except Exception as e:
                log.warning(f"transaction {self.xid}: its decision cannot be forgotten: {e}")
        _active.discard(self.xid)

    def _reach(self, participant: Participant, stage: Stage, error: BaseException | None = None) -> None:
        """Report how far the participant has got, `error` saying why it failed."""
        with self._cond:
            assert stage in _NEXT_STAGES[participant.stage], f"{participant.call}: {participant.stage} -> {stage}"
            participant.stage, participant.error = stage, error
            self._cond.notify_all()

    def _report(self, participant: Participant, result: Any) -> None:
        if isinstance(result, BaseException):
            result.participant_index = participant.index  # type: ignore[attr-defined]
        with self._cond:
            participant.result = result
            self._cond.notify_all()

    def __repr__(self) -> str:
        return f"<Transaction {self.xid} participants={len(self._participants)}>"


DECISION_WAIT = 60.0  # seconds a prepared branch waits for the coordinator's decision
PHASE_TWO_TIMEOUT = 60.0  # seconds phase 2 of a branch may take, whatever the caller's deadline
RECOVERY_TIMEOUT = 30.0  # seconds recovery may spend on one resource
_active: set[str] = set()  # two-phase transactions in progress in this process: not recovery's business


def branch_prefix(node: str, cage: str) -> str:
    """What the branch ids of this cage instance begin with: two instances of a cage (on
    two nodes) may share a database, and each recovers only its own branches."""
    return f"pmnc:{node}.{cage}:"


def recover_in_doubt(pools: ResourcePools) -> bool:
    """Finish the branches of this cage's two-phase transactions left prepared (a crash,
    a database that was down): commit those whose transaction the log says was decided,
    roll back the others. True when every resource could be asked."""
    decisions = pools.decisions
    names = decisions.resources()
    if not names:
        return True
    decided = decisions.decisions()
    prefix = branch_prefix(pools.loader.node, pools.loader.cage)
    complete = True
    for name in names:
        try:
            _recover_resource(pools.get(name), prefix, decided)
        except Exception as e:
            complete = False
            log.warning(f"recovery: resource {name} cannot be checked for prepared branches: "
                        f"{exc_string(e, stack=False)}")
    if complete:
        for xid in decided:
            if xid not in _active:
                decisions.forget(xid)
    return complete


def _recover_resource(pool: ResourcePool, prefix: str, decided: dict[str, Any]) -> None:
    request = _request.Request(timeout=RECOVERY_TIMEOUT, interface="__recovery__", protocol="__recovery__")
    with _request.attached(request), pool.connection() as resource:
        try:
            for branch in resource.in_doubt(prefix):
                xid = branch[len(prefix):].rpartition(":")[0]
                if xid in _active:
                    continue
                commit = xid in decided
                resource.finish_prepared(branch, commit)
                log.warning(f"recovery: branch {branch} of resource {pool.name} has been "
                            f"{'committed' if commit else 'rolled back'}")
        except Exception:
            resource.expire()
            raise


def _invoke(xid: str, source: str, options: dict[str, Any], participant: Participant, resource: Resource,
            pool: ResourcePool, cache: _CacheUse | None) -> Any:
    """Begin and call, within the pool's time limits; a failure rolls back and
    leaves as a ResourceError (a terminal one discards the connection)."""
    request = _request.current()
    deadline = request.deadline
    participant.began = began = _request.monotonic()
    try:
        _cap_time(request, pool)
        resource.begin_transaction(xid, source_module_name=source, transaction_options=options,
                                   resource_args=participant.resource_args,
                                   resource_kwargs=participant.resource_kwargs)
        method = _method(resource, participant.attrs)
        result = (method(*participant.args, **participant.kwargs) if cache is None
                  else cache.call(method, participant.args))
    except Exception as e:
        _count(pool, participant, began, False)  # before the rollback: not the call's time
        error = _resource_error(e)
        _quietly(resource, "rollback")
        if error.terminal:
            resource.expire()
        raise error from None
    finally:
        request.deadline = deadline
    _count(pool, participant, began, True)
    resource.mark_used()
    return result


def _hand(participants: list[Participant]) -> None:
    """The calls are handed to their pools now: their pending time starts."""
    now = _request.monotonic()
    for participant in participants:
        participant.handed = now


def _count(pool: ResourcePool, participant: Participant, began: float, ok: bool, *, ran: bool = True) -> None:
    """One call in the statistics: pending until it began, processing since (if it `ran`)."""
    statistics = pool.statistics
    if statistics is not None and statistics.enabled:
        processing = _request.monotonic() - began if ran else 0.0
        statistics.resource(pool.name, began - participant.handed, processing, ok)


def _no_call(participant: Participant, pool: ResourcePool) -> None:
    """A call that failed before it began (no connection, the cache's wait): a failure."""
    if participant.began is None:
        participant.began = _request.monotonic()
        _count(pool, participant, participant.began, False, ran=False)


def _run_inline(xid: str, source: str, options: dict[str, Any], participant: Participant,
                pool: ResourcePool) -> Any:
    """The only participant, on a resource whose every wait is bounded by the deadline:
    done on the caller's thread, sparing the hand-offs. Its success is the decision, so
    it commits at once (when there is anything to commit)."""
    participant.handed = _request.monotonic()
    try:
        cache = _cache_use(participant, pool, cacheable=True)
        if cache is not None and cache.hit is not NoValue:
            return cache.hit
        try:
            with pool.connection() as resource:
                resource.commit_follows = True
                try:
                    result = _invoke(xid, source, options, participant, resource, pool, cache)
                finally:
                    resource.commit_follows = False
                if pool.transactional:
                    _commit_inline(xid, participant, resource)
                return result
        finally:
            if cache is not None:
                cache.finish()
    except ResourceError as e:
        _no_call(participant, pool)
        e.participant_index = 0
        raise


def _commit_inline(xid: str, participant: Participant, resource: Resource) -> None:
    try:
        resource.commit()
    except Exception as e:
        log.error(f"transaction {xid}: {participant.call} failed to commit: {exc_string(e)}")
        resource.expire()
        raise TransactionCommitError(f"participant 0 ({participant.call}) failed to commit: {e}", 0) from e


def _cap_time(request: _request.Request, pool: ResourcePool) -> None:
    if pool.max_time is not None and (request.deadline is None or request.remain > pool.max_time):
        request.remain = pool.max_time
    if pool.min_time and request.deadline is not None and request.remain < pool.min_time:
        raise ResourceError(f"resource {pool.name} declines a call with {request.remain:.1f}s left, "
                            f"less than its pool__min_time", recoverable=True, terminal=False)


# The pool__cache_* kwargs a call may pass (the original's): they steer its pool's result
# cache (cache.ResultCache) and never reach the resource, whether the pool has a cache or not.
CACHE_CALL_KEYS = ("pool__cache_key", "pool__cache_ttl", "pool__cache_weight", "pool__cache_group",
                   "pool__cache_wrap", "pool__cache_get", "pool__cache_put", "pool__cache_read_keys",
                   "pool__cache_write_keys")
_DEFAULT_KEY = object()


_is_cache_option = operator.methodcaller("startswith", "pool__cache_")


def _cache_use(participant: Participant, pool: ResourcePool, *, cacheable: bool) -> _CacheUse | None:
    """What the call does with its pool's result cache; None if nothing (its pool has none and
    it passes no pool__cache_* kwarg, the commonest case): the call is then made as it is."""
    if pool.cache is None and not any(map(_is_cache_option, participant.kwargs)):
        return None
    return _CacheUse(participant, pool, cacheable=cacheable)


class _CacheUse:
    """What one call does with its pool's result cache: `kwargs` are its own without the
    pool__cache_* ones, `hit` the cached result (NoValue: the call must run, through call()).

    The key is (attrs, args, kwargs), or the call's pool__cache_key: a value, a function of
    (attrs, args, kwargs), or None for no caching. pool__cache_get / pool__cache_put replace
    the cache's own get and put; pool__cache_wrap turns a result into what is cached and
    returned; pool__cache_weight is what the result is worth (else the seconds it took).
    A cache that fails is logged and the call runs uncached, as in the original."""

    def __init__(self, participant: Participant, pool: ResourcePool, *, cacheable: bool) -> None:
        self.kwargs, options = _cache_options(participant)
        self.wrap: Callable[[Any], Any] | None = options.pop("pool__cache_wrap", None)
        self.weight: float | None = options.pop("pool__cache_weight", None)
        self.pool = pool
        self.hit: Any = NoValue
        self._pending = False  # got from the cache, not yet put back: identical calls may be waiting
        key = options.pop("pool__cache_key", _DEFAULT_KEY)
        get, put = options.pop("pool__cache_get", None), options.pop("pool__cache_put", None)
        if pool.cache is None or not cacheable or key is None:
            return
        self._get, self._put = get or pool.cache.get, put or pool.cache.put
        self._options, self._ticket = options, cache_ticket()  # options: ttl, group, read and write keys
        request = _request.current()
        try:
            self._key = self._make_key(key, participant)
            value = self._get(self._key, pool__cache_timeout=None if request.deadline is None else request.remain,
                              pool__cache_transaction_id=self._ticket, **options)
        except Exception as e:
            log.error(f"cache of resource {pool.name}: get failed, the call runs uncached: {exc_string(e)}")
            return
        self._pending = True
        if value is WAIT_EXPIRED:
            self.finish()
            raise ResourceError(f"request deadline waiting for a cached result from resource {pool.name}",
                                recoverable=True, terminal=False)
        if value is not None:
            self.hit = value
            self.finish()

    def _make_key(self, key: Any, participant: Participant) -> Hashable:
        if key is _DEFAULT_KEY:
            key = (participant.attrs, participant.args, frozenset(self.kwargs.items()))
        elif inspect.isfunction(key):
            key = key(participant.attrs, participant.args, self.kwargs)
        hash(key)  # an unhashable one fails here, not inside the cache
        return key  # type: ignore[no-any-return]

    def call(self, method: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """The call itself; its result (None if it failed) goes to the cache at once: an
        identical call waiting for it may be another participant of this transaction."""
        started, outcome = time.monotonic(), None
        try:
            value = method(*args, **self.kwargs)
            if value is not None and self.wrap is not None:
                value = self.wrap(value)
            outcome = value
            return value
        finally:
            self.finish(outcome, self.weight if self.weight is not None else time.monotonic() - started)

    def finish(self, result: Any = None, weight: float | None = None) -> None:
        """Put the result (None: nothing to cache) back, once; waiting calls are woken."""
        if not self._pending:
            return
        self._pending = False
        try:
            self._put(self._key, result, pool__cache_weight=weight, pool__cache_transaction_id=self._ticket,
                      **self._options)
        except Exception as e:
            log.error(f"cache of resource {self.pool.name}: put failed: {exc_string(e)}")


def _cache_options(participant: Participant) -> tuple[dict[str, Any], dict[str, Any]]:
    """The call's kwargs split into its own and its checked pool__cache_* ones."""
    kwargs, options = {}, {}
    for name, value in participant.kwargs.items():
        if not name.startswith("pool__cache_"):
            kwargs[name] = value
        elif name in CACHE_CALL_KEYS:
            options[name] = _cache_option(name, value)
        else:
            raise ResourceInputParameterError(f"{name} is not a cache option of a call to resource "
                                              f"{participant.resource} (these are {', '.join(CACHE_CALL_KEYS)})")
    if options.get("pool__cache_read_keys") is not None and options.get("pool__cache_write_keys") is not None:
        raise ResourceInputParameterError("a call either reads (pool__cache_read_keys) or writes "
                                          "(pool__cache_write_keys), not both")
    return kwargs, options


def _cache_option(name: str, value: Any) -> Any:
    if value is None or name in ("pool__cache_key", "pool__cache_group"):
        return value
    if name in ("pool__cache_ttl", "pool__cache_weight"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (name == "pool__cache_ttl" and value < 0):
            raise ResourceInputParameterError(f"{name} must be a number{' of seconds' * (name == 'pool__cache_ttl')}, "
                                              f"not {value!r}")
        return float(value)
    if name in ("pool__cache_read_keys", "pool__cache_write_keys"):
        try:
            keys = frozenset(value) if isinstance(value, Iterable) and not isinstance(value, (str, bytes)) else None
        except TypeError:  # unhashable items
            keys = None
        if keys is None or not all(isinstance(k, str) for k in keys):
            raise ResourceInputParameterError(f"{name} must be a set (or list) of strings, not {value!r}")
        return keys or None  # none at all: as not given, as the original
    if not callable(value):
        raise ResourceInputParameterError(f"{name} must be callable, not {value!r}")
    return value


def default_accept(xa: Transaction, results: list[Any]) -> Any:
    """All succeeded: commit and return them in order. One failed: roll back at once."""
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return None if NoValue in results else tuple(results)


def _method(resource: Resource, attrs: tuple[str, ...]) -> Callable[..., Any]:
    """Replay `xa.res.a.b` on the connection: `resource.a.b`, public names only - or, for a
    resource whose names are the user's own (another cage's modules), what its `_route` says,
    so a module named `commit` or `name` is never taken for the resource's own attribute."""
    if not attrs or "_" in {a[:1] for a in attrs}:  # no generator: one call of every transaction
        raise ResourceInputParameterError(f"{'.'.join(attrs) or '()'} cannot be called on resource {resource.name}")
    route = getattr(resource, "_route", None)
    if route is not None:
        found = route(attrs)
        if found is None:
            raise ResourceInputParameterError(f"resource {resource.name} has no method {'.'.join(attrs)}")
        return found  # type: ignore[no-any-return]
    if attrs[0] in LIFECYCLE:
        raise ResourceInputParameterError(f"{'.'.join(attrs)} cannot be called on resource {resource.name}")
    target: Any = resource
    try:
        for attr in attrs:
            target = getattr(target, attr)
    except AttributeError:
        raise ResourceInputParameterError(
            f"resource {resource.name} has no method {'.'.join(attrs)}") from None
    if not callable(target):
        raise ResourceInputParameterError(f"{'.'.join(attrs)} of resource {resource.name} is not a method")
    return target  # type: ignore[no-any-return]


def _resource_error(e: Exception) -> ResourceError:
    """Translate at the boundary, once: anything else a resource raised is
    unrecoverable (something may have been done) and drops the connection."""
    if isinstance(e, ResourceError):
        return e
    error = ResourceError(exc_string(e, stack=False), recoverable=False, terminal=True)
    error.__cause__ = e
    return error


def _quietly(resource: Resource, step: str) -> None:
    try:
        getattr(resource, step)()
    except Exception as e:
        log.warning(f"resource {resource.name} failed to {step}: {exc_string(e, stack=False)}")
        resource.expire()


class _Registration:
    """`xa.res`, `xa.res(*resource_args)`, `xa.res.a.b` - and its call registers."""

    def __init__(self, xa: Transaction, resource: str, attrs: tuple[str, ...] = (),
                 resource_args: tuple[Any, ...] = (), resource_kwargs: dict[str, Any] | None = None) -> None:
        self._xa, self._resource, self._attrs = xa, resource, attrs
        self._resource_args, self._resource_kwargs = resource_args, resource_kwargs or {}

    def __getattr__(self, attr: str) -> _Registration:
        if attr.startswith("_"):
            raise AttributeError(attr)
        return _Registration(self._xa, self._resource, (*self._attrs, attr), self._resource_args,
                             self._resource_kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self._attrs:  # xa.db(isolation_level=...): options for the calls that follow
            return _Registration(self._xa, self._resource, (), args, kwargs)
        self._xa._register(self._resource, self._attrs, args, kwargs, self._resource_args, self._resource_kwargs)
        return None


class TransactionFactory:
    """`pmnc.transaction`: `create(...)`, or the shortcut `pmnc.transaction.<res>.<method>(...)`."""

    def __init__(self, pools: Callable[[], ResourcePools], source_module: str) -> None:
        self._pools, self._source = pools, source_module

    def create(self, *, accept: Accept | None = None, sync_commit: bool = True, two_phase: bool = False,
               **options: Any) -> Transaction:
        return Transaction(self._pools(), self._source, accept=accept, sync_commit=sync_commit,
                           two_phase=two_phase, **options)

    def call_one(self, resource: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """`pmnc.transaction.<resource>.<method>(*args, **kwargs)`, for framework code that
        knows the method it calls (rpc/calls.py's CageLink)."""
        return self.run_one(Participant(0, resource, (method,), args, kwargs, (), {}))

    def run_one(self, participant: Participant) -> Any:
        """A transaction of one call: its result."""
        pool = self._pools().get(participant.resource)
        if pool.inline:  # what execute() would do, without a Transaction to build
            return _run_inline(new_unique_id("XA"), self._source, {}, participant, pool)
        xa = self.create()
        xa._participants.append(participant)
        return xa.execute()[0]

    def __getattr__(self, resource: str) -> _Shortcut:
        if resource.startswith("_"):
            raise AttributeError(resource)
        return _Shortcut(self, resource, ())


class _Shortcut:
    """`pmnc.transaction.res[(*resource_args)].a.b(...)`: a transaction of that one call."""

    def __init__(self, factory: TransactionFactory, resource: str, attrs: tuple[str, ...],
                 resource_args: tuple[Any, ...] = (), resource_kwargs: dict[str, Any] | None = None) -> None:
        self._factory, self._resource, self._attrs = factory, resource, attrs
        self._resource_args, self._resource_kwargs = resource_args, resource_kwargs or {}

    def __getattr__(self, attr: str) -> _Shortcut:
        if attr.startswith("_"):
            raise AttributeError(attr)
        return _Shortcut(self._factory, self._resource, (*self._attrs, attr), self._resource_args,
                         self._resource_kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self._attrs:  # pmnc.transaction.db(read_only=True): options for the call that follows
            return _Shortcut(self._factory, self._resource, (), args, kwargs)
        return self._factory.run_one(Participant(0, self._resource, self._attrs, args, kwargs, self._resource_args,
                                                 self._resource_kwargs))
