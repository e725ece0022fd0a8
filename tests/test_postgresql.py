"""The PostgreSQL resource against a real PostgreSQL 15: SQL, types, errors, deadlines, pools.

Calls go through a cage running in this process, `pmnc.transaction.db.execute(...)`
with a finite request attached to the test thread, as a cage module makes them.
"""

from __future__ import annotations

import datetime
import decimal
import os
import resource
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import InProcessCage, config_source, wait_until
from pg_peer import PgServer
from pmnc.errors import (
    ResourceDeadlineError,
    ResourceError,
    ResourceInputParameterError,
    SQLResourceError,
    TransactionExecutionError,
)
from pmnc.protocols.sql import Row
from pmnc.request import Request


@pytest.fixture
def table(pg: PgServer) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg.query(f"CREATE TABLE {name} (id int PRIMARY KEY, name text, amount numeric(12, 2))")
    yield name
    pg.query(f"DROP TABLE {name}")


def start(in_process_cage: Callable[..., InProcessCage], pg: PgServer, **resource: Any) -> Any:
    """A cage with resource `db` on the test server; returns its `pmnc.transaction`."""
    config = dict(pg.config(), **{"pool__size": 4, **resource})
    cage = in_process_cage(files={"config_resource_db.py": config_source(config),
                                  "config_resource_db2.py": config_source(dict(pg.config("db2"), pool__size=4))})
    return cage.cage.runtime.root.transaction


def test_statements_of_one_call_run_in_one_transaction_and_return_rows(
        in_process_cage: Callable[..., InProcessCage], pg: PgServer, table: str,
        attach: Callable[[float], Request]) -> None:
    transaction = start(in_process_cage, pg)
    attach(5.0)
    inserted, selected = transaction.db.execute(
        f"INSERT INTO {table} (id, name, amount) VALUES ({{id}}, {{name}}, {{amount}})",
        f"SELECT id, name AS \"Name\", amount FROM {table} WHERE id = {{id}}",
        id=1, name="x", amount=decimal.Decimal("10.50"))
    assert inserted == []
    assert selected == [{"id": 1, "Name": "x", "amount": decimal.Decimal("10.50")}]
    row = selected[0]
    assert isinstance(row, Row) and row["NAME"] == "x" and row["name"] == "x" and "nAmE" in row

    with pytest.raises(SQLResourceError) as info:  # the second statement fails: the first is rolled back
        transaction.db.execute(f"INSERT INTO {table} (id, name) VALUES (2, 'two')",
                               f"INSERT INTO {table} (id, name) VALUES (1, 'duplicate')")
    assert info.value.state == "23505" and info.value.recoverable and not info.value.terminal
    assert pg.query(f"SELECT id FROM {table} ORDER BY id") == [(1,)]


def test_a_transaction_of_one_statement_is_one_round_trip_at_the_default_session(
        in_process_cage: Callable[..., InProcessCage], pg: PgServer, attach: Callable[[float], Request]) -> None:
    """The only participant's call of one statement runs autocommitted: it is its own
    transaction, with no BEGIN before it (now() is the statement's own start), at READ
    COMMITTED and read-write whatever the database's defaults; a call of several
    statements, or at another isolation level, is a transaction begun before them."""
    database = f"d_{uuid.uuid4().hex[:12]}"
    pg.admin(f"CREATE DATABASE {database}")
    try:
        pg.admin(f"ALTER DATABASE {database} SET default_transaction_isolation = 'serializable'")
        pg.admin(f"ALTER DATABASE {database} SET default_transaction_read_only = on")
        transaction = start(in_process_cage, pg, database=database, pool__size=1)  # one connection for all
        attach(5.0)
        alone = "SELECT now() = statement_timestamp() AS alone, current_setting('transaction_isolation') AS level, " \
                "current_setting('transaction_read_only') AS ro"
        assert transaction.db.execute(alone) == ([{"alone": True, "level": "read committed", "ro": "off"}],)
        transaction.db.execute("CREATE TABLE t (id int PRIMARY KEY)")
        transaction.db.execute("INSERT INTO t VALUES (1)")
        _, rows = transaction.db.execute("INSERT INTO t VALUES (2)", alone)
        assert rows == [{"alone": False, "level": "read committed", "ro": "off"}]
        [[row]] = transaction.db(isolation_level="REPEATABLE READ").execute(alone)
        assert dict(row) == {"alone": False, "level": "repeatable read", "ro": "off"}
        with pytest.raises(SQLResourceError) as info:  # the second fails: the first is rolled back
            transaction.db.execute("INSERT INTO t VALUES (3)", "INSERT INTO t VALUES (1)")
        assert info.value.state == "23505" and info.value.recoverable
        with pytest.raises(SQLResourceError) as info:  # fails alone: nothing was done
            transaction.db.execute("INSERT INTO t VALUES (1)")
        assert info.value.state == "23505" and info.value.recoverable and not info.value.terminal
        assert transaction.db.execute("SELECT id FROM t ORDER BY id") == ([{"id": 1}, {"id": 2}],)
        transaction.db.execute("BEGIN")  # a block begun alone is committed as its transaction: not left open
        transaction.db.execute("INSERT INTO t VALUES (5)")
        assert pg.query("SELECT id FROM t WHERE id = 5", database) == [(5,)]
        transaction.db.execute("DELETE FROM t WHERE id = 5")
        with pytest.raises(SQLResourceError) as info:  # needs a block: alone it is refused, with another it runs
            transaction.db.execute("LOCK TABLE t")
        assert info.value.state == "25P01" and info.value.recoverable
        assert transaction.db.execute("LOCK TABLE t", "SELECT count(*) AS n FROM t") == ([], [{"n": 2}])
        xa = transaction.create()  # with a participant of another resource, nothing commits before the decision
        xa.db.execute("INSERT INTO t VALUES (4)")
        xa.db2.execute("SELEKT 1")
        with pytest.raises(SQLResourceError):
            xa.execute()
        assert transaction.db.execute("SELECT id FROM t ORDER BY id") == ([{"id": 1}, {"id": 2}],)
    finally:
        pg.admin(f"DROP DATABASE {database} WITH (FORCE)")


def test_an_autocommitted_statement_whose_connection_fails_under_it_is_not_recoverable(
        in_process_cage: Callable[..., InProcessCage], pg: PgServer, attach: Callable[[float], Request]) -> None:
    """It may have committed before the server went: retrying it could do it twice. In a
    transaction begun before it, the same failure left nothing done."""
    transaction = start(in_process_cage, pg)
    attach(5.0)
    suicide = "SELECT pg_terminate_backend(pg_backend_pid())"
    with pytest.raises(SQLResourceError) as info:
        transaction.db.execute(suicide)
    assert info.value.state == "57P01" and not info.value.recoverable and info.value.terminal
    with pytest.raises(SQLResourceError) as info:
        transaction.db.execute("SELECT 1", suicide)
    assert info.value.state == "57P01" and info.value.recoverable and info.value.terminal
    assert transaction.db.execute("SELECT 1 AS one") == ([{"one": 1}],)


def test_a_statement_alone_runs_on_a_connection_whose_descriptor_is_above_1024(
        in_process_cage: Callable[..., InProcessCage], pg: PgServer, attach: Callable[[float], Request]) -> None:
    """A busy cage has descriptors beyond select()'s 1024 (the supervisor raises the limit):
    the look at a reused connection before an autocommitted statement must not use select."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the open-files limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200) if hard == resource.RLIM_INFINITY
                                                else min(max(soft, 1200), hard), hard))
    fillers = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        transaction = start(in_process_cage, pg, pool__size=1)
        attach(5.0)
        assert min(fillers) < 1024 < max(fillers)  # the lowest free descriptors are all above 1024 now
        assert transaction.db.execute("SELECT 1 AS one") == ([{"one": 1}],)  # connects above 1024
        assert transaction.db.execute("SELECT 2 AS two") == ([{"two": 2}],)  # reuses it, looked at first
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_values_round_trip_with_their_types(in_process_cage: Callable[..., InProcessCage], pg: PgServer,
                                             attach: Callable[[float], Request]) -> None:
    transaction = start(in_process_cage, pg)
    attach(5.0)
    values = {
        "none": None, "yes": True, "big": 2 ** 63 - 1, "small": -2 ** 63, "dec": decimal.Decimal("-1234.5678"),
        "flt": 1.5, "txt": "héllo 'quoted' \\ %s {x}", "raw": b"\x00\xff",
        "day": datetime.date(2024, 2, 29), "moment": datetime.datetime(2024, 2, 29, 12, 30, 1, 123456),
        "span": datetime.timedelta(days=1, seconds=3), "ints": [1, 2, 3], "texts": ["a", None],
    }
    casts = {"none": "text", "yes": "boolean", "big": "bigint", "small": "bigint", "dec": "numeric",
             "flt": "float8", "txt": "text", "raw": "bytea", "day": "date", "moment": "timestamp",
             "span": "interval", "ints": "int[]", "texts": "text[]"}
    select = "SELECT " + ", ".join(f"{{{name}}}::{cast} AS {name}" for name, cast in casts.items())
    [[row]] = transaction.db.execute(select, **values)
    assert dict(row) == values
    assert {k: type(v) for k, v in row.items()} == {k: type(v) for k, v in values.items()}


@pytest.mark.parametrize("value, message", [
    (2 ** 63, "64-bit"),
    (decimal.Decimal("1.123456789"), "decimal_precision"),
    (decimal.Decimal("1e30"), "decimal_precision"),
    (decimal.Decimal("NaN"), "finite"),
    (object(), "not supported"),
    ({"a": 1}, "not supported"),
])
def test_bad_parameters_are_refused_before_anything_runs(
        in_process_cage: Callable[..., InProcessCage], pg: PgServer, table: str, value: Any, message: str,
        attach: Callable[[float], Request]) -> None:
    transaction = start(in_process_cage, pg)
    attach(5.0)
    with pytest.raises(ResourceInputParameterError, match=message) as info:
        transaction.db.execute(f"INSERT INTO {table} (id) VALUES (99)", "SELECT {v}", v=value)
    assert info.value.recoverable
    assert pg.query(f"SELECT count(*) FROM {table}") == [(0,)]


@pytest.mark.parametrize("sql, message", [
    ("SELECT {missing}", "no value"),
    ("SELECT {}", "is not a {name}"),
    ("SELECT {0}", "is not a {name}"),
    ("SELECT {v:>10}", "is not a {name}"),
    ("SELECT {v!r}", "is not a {name}"),
    ("SELECT '{'", "unbalanced"),
])
def test_malformed_placeholders_are_refused(in_process_cage: Callable[..., InProcessCage], pg: PgServer,
                                            sql: str, message: str, attach: Callable[[float], Request]) -> None:
    transaction = start(in_process_cage, pg)
    attach(5.0)
    with pytest.raises(ResourceInputParameterError, match=message):
        transaction.db.execute(sql, v=1)


def test_braces_and_percent_signs_stay_sql(in_process_cage: Callable[..., InProcessCage], pg: PgServer,
                                           attach: Callable[[float], Request]) -> None:
    transaction = start(in_process_cage, pg)
    attach(5.0)
    [[row]] = transaction.db.execute("SELECT '{{a}}' AS braces, '100%' AS pct, {v} AS v", v="%s")
    assert dict(row) == {"braces": "{a}", "pct": "100%", "v": "%s"}
    [[row]] = transaction.db.execute("SELECT '100%' AS pct")
    assert row["pct"] == "100%"


@pytest.mark.parametrize("attack", [
    "x'); DROP TABLE {table}; --",
    "1 OR 1=1",
    "'; SELECT pg_sleep(10); --",
    "\\'; DELETE FROM {table}; --",
])
def test_sql_injection_through_parameters_stays_data(in_process_cage: Callable[..., InProcessCage], pg: PgServer,
                                                     table: str, attack: str,
                                                     attach: Callable[[float], Request]) -> None:
    transaction = start(in_process_cage, pg)
    attach(5.0)
    text = attack.format(table=table)
    transaction.db.execute(f"INSERT INTO {table} (id, name) VALUES (1, {{name}})", name=text)
    [rows] = transaction.db.execute(f"SELECT name FROM {table} WHERE name = {{name}}", name=text)
    assert rows == [{"name": text}]
    assert pg.query(f"SELECT count(*) FROM {table}") == [(1,)]


def test_sql_errors_carry_the_sqlstate_and_keep_sound_connections(
        in_process_cage: Callable[..., InProcessCage], pg: PgServer, attach: Callable[[float], Request]) -> None:
    transaction = start(in_process_cage, pg)
    attach(5.0)
    [[before]] = transaction.db.execute("SELECT pg_backend_pid() AS pid")
    with pytest.raises(SQLResourceError) as info:
        transaction.db.execute("SELEKT 1")
    assert info.value.state == "42601" and not info.value.terminal
    assert "[42601]" in str(info.value)
    [[after]] = transaction.db.execute("SELECT pg_backend_pid() AS pid")
    assert after == before, "a syntax error leaves the connection in use"
    with pytest.raises(SQLResourceError) as info:
        transaction.db(read_only=True).execute("CREATE TEMP TABLE nope (x int)")
    assert info.value.state == "25006" and info.value.terminal


def test_isolation_level_and_read_only(in_process_cage: Callable[..., InProcessCage], pg: PgServer,
                                       attach: Callable[[float], Request]) -> None:
    transaction = start(in_process_cage, pg)
    attach(5.0)
    [[row]] = transaction.db(isolation_level="serializable", read_only=True).execute(
        "SELECT current_setting('transaction_isolation') AS level, "
        "current_setting('transaction_read_only') AS ro")
    assert dict(row) == {"level": "serializable", "ro": "on"}
    [[row]] = transaction.db.execute("SELECT current_setting('transaction_isolation') AS level")
    assert row["level"] == "read committed"
    with pytest.raises(ResourceInputParameterError, match="isolation_level"):
        transaction.db(isolation_level="chaos").execute("SELECT 1")


def test_a_slow_statement_ends_at_the_deadline(in_process_cage: Callable[..., InProcessCage], pg: PgServer,
                                               attach: Callable[[float], Request]) -> None:
    transaction = start(in_process_cage, pg, pool__max_time=0.5)
    attach(5.0)
    began = time.monotonic()
    with pytest.raises(ResourceDeadlineError):
        transaction.db.execute("SELECT pg_sleep(5)")
    assert time.monotonic() - began < 1.5
    wait_until(lambda: not pg.query("SELECT 1 FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(5)' "
                                    "AND state = 'active'"), 3.0, message="the statement ended in the server")
    assert transaction.db.execute("SELECT 1 AS one") == ([{"one": 1}],)


def test_two_participants_commit_together_or_not_at_all(in_process_cage: Callable[..., InProcessCage],
                                                        pg: PgServer, table: str,
                                                        attach: Callable[[float], Request]) -> None:
    transaction = start(in_process_cage, pg)
    attach(5.0)
    pg.query(f"CREATE TABLE {table} (id int PRIMARY KEY)", "db2")
    try:
        xa = transaction.create()
        xa.db.execute(f"INSERT INTO {table} (id) VALUES (1)")
        xa.db2.execute(f"INSERT INTO {table} (id) VALUES (1)")
        assert xa.execute() == (([],), ([],))  # each participant's result: one list per statement
        xa = transaction.create()
        xa.db.execute(f"INSERT INTO {table} (id) VALUES (2)")
        xa.db2.execute(f"INSERT INTO {table} (id) VALUES (1)")  # a duplicate: this one fails
        with pytest.raises(SQLResourceError) as info:
            xa.execute()
        assert info.value.participant_index == 1
        assert pg.query(f"SELECT id FROM {table}") == [(1,)]
        assert pg.query(f"SELECT id FROM {table}", "db2") == [(1,)]
    finally:
        pg.query(f"DROP TABLE {table}", "db2")


def test_a_dead_database_fails_calls_clearly_and_the_pool_heals(
        in_process_cage: Callable[..., InProcessCage], pg_server: PgServer,
        attach: Callable[[float], Request]) -> None:
    transaction = start(in_process_cage, pg_server)
    attach(5.0)
    assert transaction.db.execute("SELECT 1 AS one") == ([{"one": 1}],)
    pg_server.kill()
    began = time.monotonic()
    with pytest.raises(ResourceError) as info:
        transaction.db.execute("SELECT 1 AS one")
    assert info.value.recoverable and info.value.terminal
    assert time.monotonic() - began < 3.0
    with pytest.raises(ResourceError) as info:  # still dead: connecting fails at once
        transaction.db.execute("SELECT 1 AS one")
    assert "cannot connect" in str(info.value) and info.value.recoverable
    pg_server.start()
    assert transaction.db.execute("SELECT 1 AS one") == ([{"one": 1}],)


def test_a_terminated_backend_is_replaced_before_it_is_used(
        in_process_cage: Callable[..., InProcessCage], pg: PgServer, attach: Callable[[float], Request],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pmnc.protocols import postgresql
    monkeypatch.setattr(postgresql, "PROBE_AFTER", 0.0)
    transaction = start(in_process_cage, pg)
    attach(5.0)
    [[first]] = transaction.db.execute("SELECT pg_backend_pid() AS pid")
    pg.admin(f"SELECT pg_terminate_backend({first['pid']})")
    [[second]] = transaction.db.execute("SELECT pg_backend_pid() AS pid")
    assert second["pid"] != first["pid"]


def test_concurrent_participants_use_their_own_connections(
        in_process_cage: Callable[..., InProcessCage], pg: PgServer, attach: Callable[[float], Request]) -> None:
    transaction = start(in_process_cage, pg)
    attach(5.0)
    xa = transaction.create()
    for _ in range(3):
        xa.db.execute("SELECT pg_backend_pid() AS pid, pg_sleep(0.2)")
    began = time.monotonic()
    results = xa.execute()
    assert time.monotonic() - began < 0.55, "the three ran at once"
    assert len({rows[0]["pid"] for (rows,) in results}) == 3
    xa = transaction.create()
    for _ in range(5):  # more than pool__size: refused at once rather than starve
        xa.db.execute("SELECT 1")
    with pytest.raises(TransactionExecutionError, match="more participants"):
        xa.execute()
