"""The callable resource (a library made a participant through hooks) and the void resource,
in transactions with a real PostgreSQL participant.

The callable participant is SQLite driven by hooks in its config file; every hook also writes
to a trace (a module the config file imports), so the tests see what ran, when, how often.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import InProcessCage, config_source, wait_until
from pg_peer import PgServer
from pmnc.errors import ResourceError, SQLResourceError, TransactionCommitError
from pmnc.request import Request

TRACE = "callable_trace"  # the module the hooks' config files import


class Trace:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []  # (connection name "sq/1", hook)
        self.lock = threading.Lock()

    def record(self, resource: Any, event: str) -> None:
        with self.lock:
            self.events.append((resource.name, event))

    def count(self, event: str, pool: str = "sq") -> int:
        with self.lock:
            return sum(1 for name, e in self.events if e == event and name.partition("/")[0] == pool)

    def of(self, pool: str) -> list[tuple[str, str]]:
        with self.lock:
            return [(name, e) for name, e in self.events if name.partition("/")[0] == pool]


@pytest.fixture
def trace() -> Iterator[Trace]:
    module = types.ModuleType(TRACE)
    module.trace = Trace()  # type: ignore[attr-defined]
    sys.modules[TRACE] = module
    yield module.trace  # type: ignore[attr-defined]
    del sys.modules[TRACE]


# SQLite made a participant: hooks in the config file, as a user writes them.
HOOKS = '''
import sqlite3
from callable_trace import trace

def connect(resource):
    trace.record(resource, "connect")
    return sqlite3.connect(resource.config["database"], check_same_thread=False, timeout=2.0)

def disconnect(resource):
    trace.record(resource, "disconnect")
    resource.connection.close()

def begin_transaction(resource, xid, **details):
    trace.record(resource, "begin_transaction")

def execute(resource, sql, *params):
    trace.record(resource, "execute")
    if sql == "FAIL":
        raise ValueError("no such statement")
    return resource.connection.execute(sql, params).fetchall()

def commit(resource):
    trace.record(resource, "commit")
    resource.connection.commit()

def rollback(resource):
    trace.record(resource, "rollback")
    resource.connection.rollback()

config = dict(protocol="callable", database={database!r}, connect=connect, disconnect=disconnect,
              begin_transaction=begin_transaction, execute=execute, commit=commit, rollback=rollback,
              {pool})
# EOF
'''


def hooks_file(database: Path, **pool: Any) -> str:
    return HOOKS.format(database=str(database), pool=", ".join(f"{k}={v!r}" for k, v in pool.items()))


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Path:
    path = tmp_path / "participant.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    return path


def sqlite_ids(path: Path) -> list[int]:
    with sqlite3.connect(path, timeout=2.0) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM t ORDER BY id")]


@pytest.fixture
def table(pg: PgServer) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg.query(f"CREATE TABLE {name} (id int PRIMARY KEY)")
    yield name
    pg.query(f"DROP TABLE {name}")


def start(in_process_cage: Callable[..., InProcessCage], pg: PgServer, sqlite_db: Path,
          **files: str) -> InProcessCage:
    """A cage with `db` (PostgreSQL), `sq` (SQLite through callable hooks) and the given files."""
    return in_process_cage(files={
        "config_resource_db.py": config_source(dict(pg.config(), pool__size=4)),
        "config_resource_sq.py": hooks_file(sqlite_db, pool__size=4),
        **files})


def transaction_of(cage: InProcessCage) -> Any:
    return cage.cage.runtime.root.transaction


# --- callable: the decision reaches the hooks ------------------------------------------------


def test_a_commit_calls_the_commit_hook_once_beside_postgresql(
        in_process_cage: Callable[..., InProcessCage], pg: PgServer, table: str, sqlite_db: Path,
        trace: Trace, attach: Callable[[float], Request]) -> None:
    transaction = transaction_of(start(in_process_cage, pg, sqlite_db))
    attach(5.0)
    xa = transaction.create()
    xa.sq.execute("INSERT INTO t (id) VALUES (?)", 1)
    xa.db.execute(f"INSERT INTO {table} (id) VALUES (1)")
    assert xa.execute() == ([], ([],))
    assert [e for _, e in trace.of("sq")] == ["connect", "begin_transaction", "execute", "commit"]
    assert sqlite_ids(sqlite_db) == [1]
    assert pg.query(f"SELECT id FROM {table}") == [(1,)]


def test_a_failure_elsewhere_calls_the_rollback_hook(
        in_process_cage: Callable[..., InProcessCage], pg: PgServer, table: str, sqlite_db: Path,
        trace: Trace, attach: Callable[[float], Request]) -> None:
    transaction = transaction_of(start(in_process_cage, pg, sqlite_db))
    pg.query(f"INSERT INTO {table} (id) VALUES (1)")
    attach(5.0)
    xa = transaction.create()
    xa.sq.execute("INSERT INTO t (id) VALUES (?)", 1)
    xa.db.execute(f"INSERT INTO {table} (id) VALUES (1)")  # a duplicate
    with pytest.raises(SQLResourceError) as info:
        xa.execute()
    assert info.value.participant_index == 1
    wait_until(lambda: trace.count("rollback"), 5.0, message="the rollback hook")
    assert trace.count("commit") == 0 and trace.count("rollback") == 1
    assert sqlite_ids(sqlite_db) == []
    # the connection is sound after a rollback: kept, and the next transaction commits on it
    attach(5.0)
    assert transaction.sq.execute("INSERT INTO t (id) VALUES (?)", 2) == []
    assert sqlite_ids(sqlite_db) == [2] and trace.count("connect") == 1


# --- callable: one connect per pooled connection ----------------------------------------------


def test_connect_runs_once_per_pooled_connection_and_disconnect_when_the_pool_drops_it(
        in_process_cage: Callable[..., InProcessCage], pg: PgServer, sqlite_db: Path, trace: Trace,
        attach: Callable[[float], Request]) -> None:
    cage = start(in_process_cage, pg, sqlite_db,
                 **{"config_resource_aged.py": hooks_file(sqlite_db, pool__size=1, pool__max_age=0.3)})
    transaction = transaction_of(cage)
    attach(10.0)
    for i in range(20):
        assert transaction.sq.execute("SELECT ?", i) == [(i,)]
    assert trace.count("connect") == 1 and trace.count("execute") == 20 and trace.count("commit") == 20

    # past pool__max_age the connection is disconnected and the next call connects anew
    transaction.aged.execute("SELECT 1")
    wait_until(lambda: transaction.aged.execute("SELECT 1") and trace.count("connect", "aged") == 2, 5.0,
               interval=0.05, message="a second connection")
    assert [e for e in trace.of("aged") if e[1] in ("connect", "disconnect")] == \
        [("aged/1", "connect"), ("aged/1", "disconnect"), ("aged/2", "connect")]

    assert trace.count("disconnect") == 0
    cage.stop()  # stopping the cage stops the pools: their free connections are disconnected
    assert trace.count("disconnect") == 1 and trace.count("disconnect", "aged") == 2


# --- callable: hooks' errors ------------------------------------------------------------------


def test_an_execute_hook_error_is_an_unrecoverable_resource_error_that_drops_the_connection(
        in_process_cage: Callable[..., InProcessCage], pg: PgServer, sqlite_db: Path, trace: Trace,
        attach: Callable[[float], Request]) -> None:
    transaction = transaction_of(start(in_process_cage, pg, sqlite_db))
    attach(5.0)
    with pytest.raises(ResourceError) as info:
        transaction.sq.execute("FAIL")
    message = str(info.value)
    assert message.startswith('resource sq: its execute hook failed: ValueError("no such statement") in execute() ')
    assert "config_resource_sq.py" in message  # where in the user's hook
    assert not info.value.recoverable and info.value.terminal
    wait_until(lambda: trace.count("disconnect"), 5.0, message="the broken connection dropped")
    assert [e for _, e in trace.of("sq")] == ["connect", "begin_transaction", "execute", "rollback", "disconnect"]
    assert transaction.sq.execute("SELECT 1") == [(1,)]
    assert trace.of("sq")[-4:] == [("sq/2", "connect"), ("sq/2", "begin_transaction"), ("sq/2", "execute"),
                                   ("sq/2", "commit")]


def test_errors_before_the_call_are_recoverable_and_a_commit_error_fails_the_commit(
        in_process_cage: Callable[..., InProcessCage], pg: PgServer, sqlite_db: Path, trace: Trace,
        attach: Callable[[float], Request]) -> None:
    refused = """
def connect():
    raise ConnectionRefusedError("nobody listens")

config = dict(protocol="callable", connect=connect)
# EOF
"""
    transaction = transaction_of(start(in_process_cage, pg, sqlite_db, **{"config_resource_down.py": refused}))
    attach(5.0)
    with pytest.raises(ResourceError, match=r'its connect hook failed: ConnectionRefusedError\("nobody listens"\)') \
            as info:
        transaction.down.execute()
    assert info.value.recoverable

    def begin_fails(resource: Any, xid: str, **details: Any) -> None:
        raise KeyError("session")

    with pytest.raises(ResourceError, match="resource sq: its begin_transaction hook failed: KeyError") as info:
        transaction.sq(begin_transaction=begin_fails).execute("SELECT 1")
    assert info.value.recoverable and trace.count("execute") == 0

    def commit_fails(resource: Any) -> None:
        raise OSError("disk full")

    with pytest.raises(TransactionCommitError,
                       match=r'failed to commit: resource sq: its commit hook failed: OSError\("disk full"\)'):
        transaction.sq(commit=commit_fails).execute("INSERT INTO t (id) VALUES (?)", 7)

    def execute_declines(resource: Any, *args: Any) -> None:
        raise ResourceError("busy, try later", recoverable=True, terminal=False)

    transaction.sq.execute("SELECT 1")  # a sound connection, then one that declines a call on it
    connects = trace.count("connect")
    with pytest.raises(ResourceError) as info:  # the hook's own ResourceError, as it is
        transaction.sq(execute=execute_declines).execute()
    assert str(info.value) == "busy, try later" and info.value.recoverable and not info.value.terminal
    transaction.sq.execute("SELECT 1")
    assert trace.count("connect") == connects  # not terminal: the connection was kept


def test_hooks_are_checked_and_a_misspelt_hook_is_refused(
        in_process_cage: Callable[..., InProcessCage], pg: PgServer, sqlite_db: Path, trace: Trace,
        attach: Callable[[float], Request]) -> None:
    typo = "config = dict(protocol='callable', comit=lambda resource: None, server='x')\n# EOF\n"
    not_a_hook = "config = dict(protocol='callable', execute='SELECT 1')\n# EOF\n"
    transaction = transaction_of(start(in_process_cage, pg, sqlite_db, **{
        "config_resource_typo.py": typo, "config_resource_bad.py": not_a_hook}))
    attach(5.0)
    with pytest.raises(ResourceError, match=r"config_resource_typo.py: unknown config key: comit \(did you mean "
                                            r"commit\?\)"):
        transaction.typo.execute()
    with pytest.raises(ResourceError, match=r"config_resource_bad\.py: execute must be a function"):
        transaction.bad.execute()
    with pytest.raises(ResourceError, match="the commit hook given with the call must be a function, not 1"):
        transaction.sq(commit=1).execute("SELECT 1")


def test_a_library_with_no_hooks_but_connect_is_called_through_its_own_methods(
        in_process_cage: Callable[..., InProcessCage], pg: PgServer, sqlite_db: Path,
        attach: Callable[[float], Request]) -> None:
    raw = ("import sqlite3\n"
           "config = dict(protocol='callable', connect=lambda: sqlite3.connect(':memory:', check_same_thread=False))\n"
           "# EOF\n")
    transaction = transaction_of(start(in_process_cage, pg, sqlite_db, **{"config_resource_raw.py": raw}))
    attach(5.0)
    assert transaction.raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) > 0  # the connection's method
    assert transaction.raw.execute("SELECT 41 + 1").fetchall() == [(42,)]  # no execute hook: the connection's
    with pytest.raises(ResourceError, match="resource raw/1 has no method commit"):
        transaction.raw.commit()  # the transaction's to call, not the user's
    with pytest.raises(ResourceError, match="has no method no_such_thing"):
        transaction.raw.no_such_thing()


# --- callable: the original's form -------------------------------------------------------------


def test_the_originals_per_call_hooks_work_unchanged(
        in_process_cage: Callable[..., InProcessCage], pg: PgServer, sqlite_db: Path,
        attach: Callable[[float], Request]) -> None:
    transaction = transaction_of(start(in_process_cage, pg, sqlite_db))  # config_resource_callable_1.py: the template
    calls: list[tuple[Any, ...]] = []

    def begin_transaction(resource: Any, *args: Any, **kwargs: Any) -> None:
        resource._count = getattr(resource, "_count", 0) + 1  # hooks keep their state on the resource
        calls.append(("begin_transaction", resource._count, args, kwargs))

    def execute(resource: Any, *args: Any, **kwargs: Any) -> str:
        resource._count += 1
        calls.append(("execute", resource._count, args, kwargs))
        return "ok"

    def commit(resource: Any) -> None:
        resource._count += 1
        calls.append(("commit", resource._count))

    def rollback(resource: Any) -> None:
        resource._count += 1
        calls.append(("rollback", resource._count))

    attach(5.0)
    xa = transaction.create(biz="baz")
    xa.callable_1("abc", begin_transaction=begin_transaction, execute=execute, commit=commit, rollback=rollback,
                  foo="bar").execute(1, 2, eee="fff")
    assert xa.execute() == ("ok",)
    assert calls[0][:3] == ("begin_transaction", 1, (xa.xid,))
    details = calls[0][3]
    assert details == dict(transaction_options={"biz": "baz"}, source_module_name=details["source_module_name"],
                           resource_args=("abc",), resource_kwargs={"foo": "bar"})
    assert calls[1:] == [("execute", 2, (1, 2), {"eee": "fff"}), ("commit", 3)]

    def fails(resource: Any, *args: Any, **kwargs: Any) -> None:
        raise ZeroDivisionError("division by zero")

    calls.clear()
    xa = transaction.create(biz="baz")
    xa.callable_1("abc", begin_transaction=begin_transaction, execute=fails, commit=commit, rollback=rollback,
                  foo="bar").execute(1, 2, eee="fff")
    with pytest.raises(ResourceError, match="division by zero") as info:
        xa.execute()
    assert not info.value.recoverable and info.value.terminal
    wait_until(lambda: len(calls) == 2, 5.0, message="the rollback hook")
    assert calls[0][:2] == ("begin_transaction", 4) and calls[1] == ("rollback", 5)


def test_the_originals_connect_hook_settings_and_result_cache(
        in_process_cage: Callable[..., InProcessCage], pg: PgServer, sqlite_db: Path,
        attach: Callable[[float], Request]) -> None:
    original = """
def connect(resource):
    resource._connection = {"param1": resource._config["param1"], "calls": 0}

config = dict(protocol="callable", connect=connect, param1="value1", pool__cache_size=10)
# EOF
"""
    transaction = transaction_of(start(in_process_cage, pg, sqlite_db, **{"config_resource_callable_4.py": original}))

    def execute(resource: Any, *args: Any, **kwargs: Any) -> str:
        resource._connection["calls"] += 1
        return f"{resource._connection['param1']}: {', '.join(arg.format(**kwargs) for arg in args)} " \
               f"#{resource._connection['calls']}"

    attach(5.0)
    first = transaction.callable_4(execute=execute).execute("{a}", a="foo", pool__cache_key="key for foo")
    again = transaction.callable_4(execute=execute).execute("{a}", a="foo", pool__cache_key="key for foo")
    other = transaction.callable_4(execute=execute).execute("{a}", a="foo", pool__cache_key="other key")
    assert (first, again, other) == ("value1: foo #1", "value1: foo #1", "value1: foo #2")


# --- void ------------------------------------------------------------------------------------


def test_void_succeeds_fails_and_executes(in_process_cage: Callable[..., InProcessCage], pg: PgServer,
                                          sqlite_db: Path, attach: Callable[[float], Request]) -> None:
    transaction = transaction_of(start(in_process_cage, pg, sqlite_db))  # config_resource_void.py: the template
    attach(5.0)
    assert transaction.void.success("foo", biz="baz") == (("foo",), {"biz": "baz"})
    with pytest.raises(ResourceError) as info:
        transaction.void.failure()
    assert str(info.value) == "failure" and not info.value.recoverable
    assert transaction.void.execute(lambda *args, **kwargs: (args, kwargs), "foo", biz="baz") == \
        (("foo",), {"biz": "baz"})
    assert transaction.void.execute(lambda: threading.current_thread().name) != threading.current_thread().name


def test_void_in_transactions_with_postgresql_one_and_two_phase(
        in_process_cage: Callable[..., InProcessCage], pg: PgServer, table: str, sqlite_db: Path,
        trace: Trace, attach: Callable[[float], Request]) -> None:
    transaction = transaction_of(start(in_process_cage, pg, sqlite_db))
    attach(10.0)
    xa = transaction.create()
    xa.void.success(1)
    xa.db.execute(f"INSERT INTO {table} (id) VALUES (1)")
    assert xa.execute() == (((1,), {}), ([],))

    xa = transaction.create()
    xa.db.execute(f"INSERT INTO {table} (id) VALUES (2)")
    xa.void.failure()
    with pytest.raises(ResourceError, match=r"^failure$") as info:
        xa.execute()
    assert info.value.participant_index == 1

    # two-phase: void and PostgreSQL are branches, the callable one the last resource
    xa = transaction.create(two_phase=True)
    xa.void.success(3)
    xa.db.execute(f"INSERT INTO {table} (id) VALUES (3)")
    xa.sq.execute("INSERT INTO t (id) VALUES (?)", 3)
    assert xa.execute() == (((3,), {}), ([],), [])
    assert trace.count("commit") == 1

    xa = transaction.create(two_phase=True)
    xa.void.execute(lambda: None)
    xa.db.execute(f"INSERT INTO {table} (id) VALUES (4)")
    xa.sq.execute("FAIL")
    with pytest.raises(ResourceError, match="resource sq: its execute hook failed") as info:
        xa.execute()
    assert info.value.participant_index == 2
    wait_until(lambda: trace.count("rollback"), 5.0, message="the rollback hook")
    assert pg.query(f"SELECT id FROM {table} ORDER BY id") == [(1,), (3,)]
    assert sqlite_ids(sqlite_db) == [3]
    assert pg.query("SELECT count(*) FROM pg_prepared_xacts") == [(0,)]
