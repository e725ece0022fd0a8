"""The Oracle resource against the real python-oracledb driver (thin mode) - and a real server if given.

Oracle Database cannot run here (no package ships a server, no image can be
pulled), so most of these tests run the real driver against what loopback
offers: a closed port (the driver's real DPY-6005), a listener that accepts
and never answers (the handshake thin mode does not bound), a listener whose
full accept queue drops SYNs (a black hole). What is built rather than
received, and why:

- Server errors (ORA-nnnnn) are built the way the thin driver builds them from
  the server's error message - `oracledb.errors._Error(message, code=...)`,
  raised as `error.exc_type(error)` - and the call timeout (DPY-4024) with the
  driver's own `errors._create_exception`: no server can send them here.
- The output type handler is called with stand-ins for a cursor and a column's
  metadata (it only reads `type_code` and `arraysize` and calls `var`): a real
  cursor needs a connection.

Everything else uses the real package. The integration tests at the end run
against a real Oracle Database when PMNC_ORACLE_DSN is set
(user/password@host:port/service); they need CREATE TABLE and CREATE PROCEDURE,
and for two-phase commit SELECT on DBA_PENDING_TRANSACTIONS and FORCE TRANSACTION.
"""

from __future__ import annotations

import datetime
import decimal
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import oracledb
import pytest
from conftest import InProcessCage, config_source, wait_until
from oracledb import errors as oracledb_errors
from pmnc.errors import (
    ConfigError,
    ResourceDeadlineError,
    ResourceError,
    ResourceInputParameterError,
    SQLResourceError,
)
from pmnc.protocols import oracle
from pmnc.protocols.oracle import Resource, branch_xid, branches_in_doubt, oracle_sql, sql_error, xid_branch
from pmnc.protocols.sql import Row, Statement
from pmnc.request import Request, attached

# --- peers on loopback --------------------------------------------------------------------


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class SilentListener:
    """Accepts connections and never says a word: an Oracle listener that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.05)
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="silent listener", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                self.accepted.append(self.sock.accept()[0])
            except TimeoutError:
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        for sock in [*self.accepted, self.sock]:
            sock.close()


@pytest.fixture
def silent() -> Iterator[SilentListener]:
    listener = SilentListener()
    yield listener
    listener.close()
    # connects given up on end once the peer has gone: no thread is left behind
    wait_until(lambda: not [t for t in threading.enumerate() if t.name.endswith(" connect")], 5.0,
               message="abandoned connects ended")


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A loopback port whose listener's accept queue is full: Linux drops the SYNs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = int(server.getsockname()[1])
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(filler)
    with socket.socket() as probe:
        probe.settimeout(0.2)
        with pytest.raises(TimeoutError):
            probe.connect(("127.0.0.1", port))
    yield port
    for sock in [*fillers, server]:
        sock.close()


def resource(port: int, **config: Any) -> Resource:
    base = dict(server_address=("127.0.0.1", port), database="FREEPDB1", username="pmnc", password="secret")
    return Resource("db/1", {**base, **config})


def server_error(code: int, text: str) -> oracledb.Error:
    """An ORA error as the thin driver raises one it received from the server."""
    error = oracledb_errors._Error(f"ORA-{code:05d}: {text}", code=code)
    exception: oracledb.Error = error.exc_type(error)
    return exception


# --- SQL ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sql, sent", [
    ("SELECT {a} AS a FROM dual", "SELECT :a AS a FROM dual"),
    ("SELECT {a}, {b} FROM t WHERE c = {a}", "SELECT :a, :b FROM t WHERE c = :a"),
    ("SELECT '{{x}}', '100%' FROM dual WHERE y = {y}", "SELECT '{x}', '100%' FROM dual WHERE y = :y"),
    ("SELECT ':a' FROM dual", "SELECT ':a' FROM dual"),
    ("DELETE FROM t", "DELETE FROM t"),
])
def test_placeholders_become_oracle_binds(sql: str, sent: str) -> None:
    assert oracle_sql(Statement(sql)) == sent


@pytest.mark.parametrize("sql, sent", [
    ("EXECUTE proc({a}, {b})", "BEGIN proc(a => :a, b => :b, result => :result); END;"),
    ("execute Owner.Pkg.proc_1$({a})", "BEGIN Owner.Pkg.proc_1$(a => :a, result => :result); END;"),
    ("EXECUTE proc", "BEGIN proc(result => :result); END;"),
    ("  EXECUTE proc ( ) ;  ", "BEGIN proc(result => :result); END;"),
    ("EXECUTE proc(p_id => {id}, {name})", "BEGIN proc(p_id => :id, name => :name, result => :result); END;"),
    ("EXECUTE proc@remote_db({a})", "BEGIN proc@remote_db(a => :a, result => :result); END;"),
])
def test_execute_calls_the_procedure_with_named_binds_and_a_ref_cursor(sql: str, sent: str) -> None:
    assert oracle_sql(Statement(sql)) == sent


@pytest.mark.parametrize("sql, message", [
    ("EXECUTE proc({a}, 5)", "only {name} placeholders"),
    ("EXECUTE proc({a} {b})", "only {name} placeholders"),
    ("EXECUTE proc('x')", "only {name} placeholders"),
    ("EXECUTE proc(p => 'x' || {a})", "is not {name} or param => {name}"),
    ("EXECUTE proc({result})", "OUT SYS_REFCURSOR"),
    ("EXECUTE proc(result => {a})", "OUT SYS_REFCURSOR"),
    ("EXECUTE {a}", "procedure name"),
    ("EXECUTE", "procedure name"),
    ("EXECUTE proc({a}", "procedure name"),
    ("EXECUTE IMMEDIATE 'DROP TABLE t'", "procedure name"),
    ("SELECT {_a} FROM dual", "Oracle bind name"),
    ("SELECT {ä} FROM dual", "Oracle bind name"),
    ("SELECT {a}, {A} FROM dual", "ignore case"),
])
def test_statements_oracle_could_not_bind_are_refused(sql: str, message: str) -> None:
    with pytest.raises(ResourceInputParameterError, match=message):
        oracle_sql(Statement(sql))


# --- values -----------------------------------------------------------------------------------


BAD_VALUES = [
    (True, "bool"),
    ([1, 2], "lists"),
    (datetime.time(12, 30), "not supported"),
    (datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC), "time zone"),
    (2 ** 63, "64-bit"),
    (decimal.Decimal("1.123456789"), "decimal_precision"),
    (decimal.Decimal("Infinity"), "finite"),
    (object(), "not supported"),
]


@pytest.mark.parametrize("value, message", BAD_VALUES)
def test_bad_parameters_are_refused_before_anything_is_sent(closed_port: int, value: Any, message: str,
                                                            attach: Callable[[float], Request]) -> None:
    """Pointed at a closed port: a bad parameter is the input error, never the connection's."""
    attach(5.0)
    db = resource(closed_port)
    with pytest.raises(ResourceInputParameterError, match=message) as info:
        db.execute("SELECT 1 FROM dual", "SELECT {v} FROM dual", v=value)
    assert info.value.recoverable and not info.value.terminal
    with pytest.raises(SQLResourceError, match="cannot connect") as failed:  # a good one goes on to connect
        db.execute("SELECT 1 FROM dual", "SELECT {v} FROM dual", v=1)
    assert failed.value.code == "DPY-6005"


def test_a_bad_later_statement_stops_the_call_before_the_first_is_sent(
        silent: SilentListener, attach: Callable[[float], Request]) -> None:
    attach(0.5)
    db = resource(silent.port)
    with pytest.raises(ResourceInputParameterError):
        db.execute("INSERT INTO t (id) VALUES ({id})", "EXECUTE proc({id}, 5)", id=1)
    with pytest.raises(ResourceInputParameterError):
        db.execute("INSERT INTO t (id) VALUES ({id})", "SELECT {v} FROM dual", id=1, v=True)
    with pytest.raises(ResourceDeadlineError):  # a good call does reach the listener...
        db.execute("INSERT INTO t (id) VALUES ({id})", id=1)
    assert len(silent.accepted) == 1  # ...and only it did: the bad ones never connected


def test_values_that_would_lose_precision_get_explicit_bind_types() -> None:
    sizes = oracle.input_sizes({"moment": datetime.datetime(2024, 2, 29, 12, 30, 1, 123456),
                                "span": datetime.timedelta(days=1, microseconds=5),
                                "day": datetime.date(2024, 2, 29), "text": "x", "number": 1, "none": None})
    assert sizes == {"moment": oracledb.DB_TYPE_TIMESTAMP, "span": oracledb.DB_TYPE_INTERVAL_DS}


class FakeCursor:
    """Stands in for a cursor: the handler only calls `var` and reads `arraysize`."""

    arraysize = 77

    def __init__(self) -> None:
        self.vars: list[tuple[Any, int]] = []

    def var(self, kind: Any, arraysize: int) -> tuple[str, Any]:
        self.vars.append((kind, arraysize))
        return ("var", kind)


class FakeMetadata:
    """Stands in for a column's FetchInfo: the handler only reads `type_code`."""

    def __init__(self, type_code: Any) -> None:
        self.type_code = type_code


@pytest.mark.parametrize("column, fetched_as", [
    (oracledb.DB_TYPE_NUMBER, decimal.Decimal),
    (oracledb.DB_TYPE_CLOB, oracledb.DB_TYPE_LONG),
    (oracledb.DB_TYPE_NCLOB, oracledb.DB_TYPE_LONG_NVARCHAR),
    (oracledb.DB_TYPE_BLOB, oracledb.DB_TYPE_LONG_RAW),
    (oracledb.DB_TYPE_VARCHAR, None),
    (oracledb.DB_TYPE_DATE, None),
    (oracledb.DB_TYPE_TIMESTAMP, None),
    (oracledb.DB_TYPE_BINARY_DOUBLE, None),
    (oracledb.DB_TYPE_RAW, None),
])
def test_numbers_are_fetched_as_decimals_and_lobs_in_full(column: Any, fetched_as: Any) -> None:
    cursor = FakeCursor()
    variable = oracle.output_type(cursor, FakeMetadata(column))
    if fetched_as is None:
        assert variable is None and cursor.vars == []
    else:
        assert variable == ("var", fetched_as) and cursor.vars == [(fetched_as, 77)]


class FakeColumn:
    """Stands in for a FetchInfo of `cursor.description`: a name and a type."""

    def __init__(self, name: str, type_code: Any) -> None:
        self.name, self.type_code = name, type_code


class FakeResultCursor:
    """Stands in for an executed cursor: its description and rows, fetched in one go."""

    def __init__(self, description: list[FakeColumn] | None, rows: list[tuple[Any, ...]]) -> None:
        self.description, self._rows = description, rows

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._rows


def test_rows_are_dicts_by_column_name_with_numbers_as_decimals_whatever_the_fetch(
        closed_port: int, attach: Callable[[float], Request]) -> None:
    """A NUMBER the output type handler did not see (the driver fetched an int or a
    float) is still a Decimal; BINARY_DOUBLE stays a float."""
    attach(5.0)
    db = resource(closed_port)
    cursor = FakeResultCursor([FakeColumn("N", oracledb.DB_TYPE_NUMBER),
                               FakeColumn("F", oracledb.DB_TYPE_BINARY_DOUBLE),
                               FakeColumn("S", oracledb.DB_TYPE_VARCHAR)],
                              [(1, 0.5, "a"), (0.1, 1.5, None), (decimal.Decimal("2.50"), 2.5, "b"), (None, None, "")])
    rows = db._rows(cursor)  # type: ignore[arg-type]
    assert rows == [{"N": 1, "F": 0.5, "S": "a"}, {"N": decimal.Decimal("0.1"), "F": 1.5, "S": None},
                    {"N": decimal.Decimal("2.50"), "F": 2.5, "S": "b"}, {"N": None, "F": None, "S": ""}]
    assert [type(row["N"]) for row in rows[:3]] == [decimal.Decimal] * 3 and type(rows[0]["F"]) is float
    assert db._rows(FakeResultCursor(None, [])) == []  # type: ignore[arg-type]  # not a query


# --- errors -----------------------------------------------------------------------------------


def test_a_real_connection_failure_maps_to_a_recoverable_terminal_dpy_error(closed_port: int) -> None:
    with pytest.raises(oracledb.OperationalError) as raised:
        oracledb.connect(user="pmnc", password="secret", dsn=f"127.0.0.1:{closed_port}/FREEPDB1")
    error = sql_error(raised.value)
    assert error.code == "DPY-6005" and error.recoverable and error.terminal and error.state is None
    assert error.description.startswith("cannot connect to database") and "Connection refused" in error.description
    assert "\n" not in error.description and "Help:" not in error.description
    assert str(error).startswith("DPY-6005: cannot connect to database")


@pytest.mark.parametrize("code, text, kept", [
    (1, 'unique constraint (PMNC.T_PK) violated on table PMNC.T columns (ID)', True),
    (942, 'table or view "PMNC"."NOPE" does not exist', True),
    (904, '"NOPE": invalid identifier', True),
    (900, "invalid SQL statement", True),
    (933, "SQL command not properly ended", True),
    (1403, "no data found", True),
    (1722, "invalid number", True),
    (12899, 'value too large for column "PMNC"."T"."NAME" (actual: 11, maximum: 10)', True),
    (20001, "the application says no\nORA-06512: at line 1", True),
    (1017, "invalid credential or not authorized; logon denied", False),
    (60, "deadlock detected while waiting for resource", False),
    (1555, "snapshot too old", False),
    (24756, "transaction does not exist", False),
    (28, "your session has been killed", False),
    (3113, "end-of-file on communication channel", False),
])
def test_every_server_error_carries_its_ora_code(code: int, text: str, kept: bool) -> None:
    e = server_error(code, text)
    error = sql_error(e)
    assert error.code == f"ORA-{code:05d}" and error.recoverable
    assert error.terminal is not kept
    assert "Help:" not in error.description and "\n" not in error.description
    if e.args[0].full_code.startswith("ORA-"):
        assert str(error) == f"ORA-{code:05d}: " + text.replace("\n", "; ")
    else:  # the driver wraps errors that mean the session is gone in its DPY-4011
        assert e.args[0].full_code == "DPY-4011" and error.description.startswith("DPY-4011: ")
        assert f"ORA-{code:05d}: {text}" in error.description


def test_statement_level_driver_errors_keep_the_connection() -> None:
    missing = oracledb_errors._create_exception(oracledb_errors.ERR_MISSING_BIND_VALUE, name="x", num=1)
    closed = oracledb_errors._create_exception(oracledb_errors.ERR_CONNECTION_CLOSED)
    assert sql_error(missing).code == "DPY-4010" and not sql_error(missing).terminal
    assert sql_error(closed).code == "DPY-4011" and sql_error(closed).terminal


def test_call_timeouts_are_deadline_errors(closed_port: int, attach: Callable[[float], Request]) -> None:
    attach(5.0)
    db = resource(closed_port)

    def raising(e: Exception) -> Callable[[], None]:
        def call() -> None:
            raise e
        return call

    timeout = oracledb_errors._create_exception(oracledb_errors.ERR_CALL_TIMEOUT_EXCEEDED, timeout=250)
    for e in (timeout, server_error(1013, "user requested cancel of current operation"),
              server_error(3156, "OCI call timed out")):
        db.discarded = False
        with pytest.raises(ResourceDeadlineError) as info:
            db._guarded(raising(e))
        assert info.value.terminal and not info.value.recoverable and db.discarded
    closed = oracledb_errors._create_exception(oracledb_errors.ERR_CONNECTION_CLOSED)
    with pytest.raises(SQLResourceError) as failed:  # the connection closed, with time left: not the deadline
        db._guarded(raising(closed))
    assert failed.value.code == "DPY-4011" and failed.value.terminal
    attach(0.0)
    calls: list[int] = []
    with pytest.raises(ResourceDeadlineError):  # no time left: nothing is sent
        db._guarded(lambda: calls.append(1))
    assert calls == []


def test_the_call_timeout_follows_the_request() -> None:
    assert oracle.call_timeout(Request(timeout=None)) == 0
    assert 2400 <= (oracle.call_timeout(Request(timeout=2.5, interface="t", protocol="t")) or 0) <= 2500
    assert oracle.call_timeout(Request(timeout=0.0001, interface="t", protocol="t")) in (1, None)
    assert oracle.call_timeout(Request(timeout=0.0, interface="t", protocol="t")) is None
    assert oracle.call_timeout(Request(timeout=1e12, interface="t", protocol="t")) == 2 ** 31 - 1


# --- connecting -------------------------------------------------------------------------------


def test_a_closed_port_fails_at_once(closed_port: int, attach: Callable[[float], Request]) -> None:
    attach(5.0)
    began = time.monotonic()
    with pytest.raises(SQLResourceError, match="cannot connect") as info:
        resource(closed_port).connect()
    assert time.monotonic() - began < 1.0
    assert info.value.code == "DPY-6005" and info.value.recoverable and info.value.terminal


def test_a_listener_that_never_answers_is_given_up_at_the_deadline(
        silent: SilentListener, attach: Callable[[float], Request]) -> None:
    attach(0.5)
    began = time.monotonic()
    with pytest.raises(ResourceDeadlineError):
        resource(silent.port, connect_timeout=10.0).connect()
    assert 0.4 < time.monotonic() - began < 1.0
    assert len(silent.accepted) == 1, "the TCP connect succeeded, the handshake is what hung"


def test_a_listener_that_never_answers_is_given_up_at_connect_timeout(
        silent: SilentListener, attach: Callable[[float], Request]) -> None:
    attach(5.0)
    began = time.monotonic()
    with pytest.raises(SQLResourceError, match="no answer within connect_timeout") as info:
        resource(silent.port, connect_timeout=0.3).connect()
    assert 0.25 < time.monotonic() - began < 0.8
    assert info.value.recoverable and info.value.terminal


def test_unanswered_syns_are_given_up_in_time(black_hole: int, attach: Callable[[float], Request]) -> None:
    attach(0.4)
    began = time.monotonic()
    with pytest.raises(ResourceDeadlineError):
        resource(black_hole, connect_timeout=10.0).connect()
    assert time.monotonic() - began < 0.8
    attach(5.0)
    began = time.monotonic()
    with pytest.raises(SQLResourceError, match="cannot connect"):
        resource(black_hole, connect_timeout=0.3).connect()
    assert time.monotonic() - began < 0.8


def test_a_dsn_is_used_instead_of_address_and_database(closed_port: int, attach: Callable[[float], Request]) -> None:
    attach(5.0)
    db = Resource("db/1", {"dsn": f"pmnc/secret@127.0.0.1:{closed_port}/FREEPDB1"})
    assert db.dsn == f"pmnc/secret@127.0.0.1:{closed_port}/FREEPDB1" and "host" not in db.params
    with pytest.raises(SQLResourceError, match="cannot connect") as info:
        db.connect()
    assert info.value.code == "DPY-6005"
    descriptor = (f"(DESCRIPTION=(ADDRESS=(PROTOCOL=TCP)(HOST=127.0.0.1)(PORT={closed_port}))"
                  f"(CONNECT_DATA=(SERVICE_NAME=FREEPDB1)))")
    with pytest.raises(SQLResourceError, match="cannot connect"):
        Resource("db/1", {"dsn": descriptor, "username": "pmnc", "password": "secret"}).connect()


@pytest.mark.parametrize("config, message", [
    ({"server_address": "db:1521"}, "server_address"),
    ({"server_address": None}, "server_address"),
    ({"server_address": ("db", "port")}, "server_address"),
    ({"database": None}, "database"),
    ({"username": None}, "username"),
    ({"connect_timeout": 0}, "connect_timeout"),
    ({"decimal_precision": (5, 6)}, "decimal_precision"),
    ({"dsn": ""}, "dsn"),
    ({"isolation": "serializable"}, "unknown config key"),
])
def test_bad_config_is_refused(config: dict[str, Any], message: str) -> None:
    base: dict[str, Any] = dict(server_address=("127.0.0.1", 1521), database="FREEPDB1", username="pmnc")
    with pytest.raises(ConfigError, match=message):
        Resource("db/1", {**base, **config})


def test_config_becomes_connect_parameters() -> None:
    db = Resource("db/1", dict(server_address=("db.example.com", "1522"), database="orders", username="app",
                               password="pw", application_name="node1.sample", resource_name="x"))
    assert db.dsn is None and db.connect_timeout == 3.0 and db.decimal_precision == (28, 8)
    assert db.preparable and db.transactional and not db.arrays and not db.has_time
    assert db.params == {"host": "db.example.com", "port": 1522, "service_name": "orders", "user": "app",
                         "password": "pw", "program": "node1.sample"}


def test_the_shipped_config_template_builds_a_resource() -> None:
    namespace: dict[str, Any] = {}
    path = os.path.join(os.path.dirname(__file__), "..", "cages", ".shared", "config_resource_oracle_1.py")
    with open(path) as f:
        exec(f.read(), namespace)
    config = {k: v for k, v in namespace["config"].items() if k != "protocol" and not k.startswith("pool__")}
    assert namespace["config"]["protocol"] == "oracle"
    assert Resource("oracle_1/1", config).params["service_name"] == "FREEPDB1"


def test_transaction_options_are_checked_before_connecting(closed_port: int,
                                                           attach: Callable[[float], Request]) -> None:
    attach(5.0)
    db = resource(closed_port)

    def begin(options: dict[str, Any], **kwargs: Any) -> None:
        db.begin_transaction("XA-1", source_module_name="m", transaction_options=options, resource_args=(),
                             resource_kwargs=kwargs)

    with pytest.raises(SQLResourceError, match="isolation_level") as info:
        begin({}, isolation_level="chaos")
    assert not info.value.terminal
    with pytest.raises(SQLResourceError, match="two-phase branch"):
        begin({"branch": "pmnc:sample:XA-1:0"}, read_only=True)
    with pytest.raises(ResourceInputParameterError, match="64 bytes"):
        begin({"branch": "pmnc:" + "x" * 60})
    with pytest.raises(SQLResourceError, match="cannot connect"):  # all well: on to connect
        begin({"branch": "pmnc:sample:XA-1:0"})


def test_the_protocol_is_found_by_name_and_fails_clearly_in_a_cage(
        in_process_cage: Callable[..., InProcessCage], closed_port: int,
        attach: Callable[[float], Request]) -> None:
    config = dict(protocol="oracle", server_address=("127.0.0.1", closed_port), database="FREEPDB1",
                  username="pmnc", password="secret", pool__size=2)
    cage = in_process_cage(files={"config_resource_db.py": config_source(config)})
    transaction = cage.cage.runtime.root.transaction
    attach(5.0)
    with pytest.raises(SQLResourceError) as info:
        transaction.db.execute("SELECT 1 FROM dual")
    assert info.value.code == "DPY-6005" and info.value.recoverable and info.value.participant_index == 0


# --- two-phase commit ids ---------------------------------------------------------------------


@pytest.mark.parametrize("branch", ["pmnc:sample:XA-20261127223810-0123456789AB:0", "p", "pmnc:κλουβί:XA-1:12",
                                    "x" * 64])
def test_branch_ids_and_xids_map_both_ways(branch: str) -> None:
    xid = branch_xid(branch)
    assert isinstance(xid, oracledb.Xid)
    assert xid == (0x706D6E63, branch.encode(), b"1")
    assert xid_branch(xid) == branch
    assert xid_branch((xid.format_id, branch, "1")) == branch  # str parts, as an Xid may hold them
    assert xid_branch((decimal.Decimal(xid.format_id), xid.global_transaction_id, b"1")) == branch


@pytest.mark.parametrize("branch", ["", "x" * 65, "ü" * 33])
def test_branch_ids_an_xid_cannot_hold_are_refused(branch: str) -> None:
    with pytest.raises(ResourceInputParameterError):
        branch_xid(branch)


def test_in_doubt_lists_only_our_branches_with_the_prefix() -> None:
    recovered = [
        branch_xid("pmnc:sample:XA-1:0"),
        branch_xid("pmnc:sample:XA-1:1"),
        branch_xid("pmnc:other:XA-2:0"),  # another cage's
        oracledb.Xid(0x706D6E63, b"pmnc:sample:XA-3:0", b"2"),  # not our branch qualifier
        oracledb.Xid(42, b"pmnc:sample:XA-4:0", b"1"),  # another transaction manager's
        oracledb.Xid(0x706D6E63, b"pmnc:sample:\xff", b"1"),  # not UTF-8
    ]
    assert branches_in_doubt(recovered, "pmnc:sample:") == ["pmnc:sample:XA-1:0", "pmnc:sample:XA-1:1"]
    assert branches_in_doubt([], "pmnc:sample:") == []


# --- against a real Oracle Database -----------------------------------------------------------

DSN = os.environ.get("PMNC_ORACLE_DSN")
real_oracle = pytest.mark.skipif(not DSN, reason="Oracle Database cannot run here: set "
                                 "PMNC_ORACLE_DSN=user/password@host:port/service to run against a real one")


def start(in_process_cage: Callable[..., InProcessCage], **resource: Any) -> Any:
    """A cage with resources `db` and `db2` on the server of PMNC_ORACLE_DSN."""
    config = dict(protocol="oracle", dsn=DSN, pool__size=4)
    cage = in_process_cage(files={"config_resource_db.py": config_source({**config, **resource}),
                                  "config_resource_db2.py": config_source(config)})
    return cage.cage.runtime.root.transaction


def admin(*statements: str) -> list[Any]:
    """Statements run and committed on a connection of their own, outside any cage."""
    db = Resource("admin/1", {"dsn": DSN})
    with attached(Request(timeout=30.0, interface="test", protocol="test")):
        try:
            db.begin_transaction("XA-admin", source_module_name="test", transaction_options={}, resource_args=(),
                                 resource_kwargs={})
            results = db.execute(*statements)
            db.commit()
            return list(results)
        finally:
            db.disconnect()


@pytest.fixture
def table() -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin(f"CREATE TABLE {name} (id NUMBER(9) PRIMARY KEY, name VARCHAR2(100), amount NUMBER(12, 2), "
          f"moment TIMESTAMP(6), span INTERVAL DAY TO SECOND(6), raw_data RAW(100), text CLOB, data BLOB)")
    yield name
    admin(f"DROP TABLE {name} PURGE")


@real_oracle
def test_real_rows_round_trip_with_their_types(in_process_cage: Callable[..., InProcessCage], table: str,
                                               attach: Callable[[float], Request]) -> None:
    transaction = start(in_process_cage)
    attach(10.0)
    values = dict(id=1, name="héllo 'quoted' {x} :y", amount=decimal.Decimal("-1234.56"),
                  moment=datetime.datetime(2024, 2, 29, 12, 30, 1, 123456), span=datetime.timedelta(days=1, seconds=3),
                  raw_data=b"\x00\xff", text="x" * 10000, data=b"\x01" * 10000)
    inserted, selected = transaction.db.execute(
        f"INSERT INTO {table} (id, name, amount, moment, span, raw_data, text, data) "
        f"VALUES ({{id}}, {{name}}, {{amount}}, {{moment}}, {{span}}, {{raw_data}}, {{text}}, {{data}})",
        f"SELECT * FROM {table} WHERE id = {{id}}", **values)
    assert inserted == []
    [row] = selected
    assert isinstance(row, Row) and row["NAME"] == row["name"] == values["name"]
    assert dict(row) == {key.upper(): value for key, value in values.items()}
    assert type(row["id"]) is decimal.Decimal and type(row["text"]) is str and type(row["data"]) is bytes
    transaction.db.execute(f"UPDATE {table} SET name = {{name}} WHERE id = {{id}}", id=1, name=None)
    assert transaction.db.execute(f"SELECT name FROM {table}") == ([{"NAME": None}],)
    transaction.db.execute(f"DELETE FROM {table} WHERE id = {{id}}", id=1)
    assert transaction.db.execute(f"SELECT COUNT(*) AS n FROM {table}") == ([{"N": decimal.Decimal(0)}],)


@real_oracle
def test_real_numbers_are_decimals_checked_against_the_precision(
        in_process_cage: Callable[..., InProcessCage], attach: Callable[[float], Request]) -> None:
    transaction = start(in_process_cage, decimal_precision=(10, 4))
    attach(10.0)
    [[row]] = transaction.db.execute("SELECT 1 AS one, 0.1 AS tenth, -99.0001 AS neg, "
                                     "TO_CLOB(RPAD('x', 4000, 'x')) || TO_CLOB(RPAD('y', 4000, 'y')) AS c FROM dual")
    assert row == {"ONE": 1, "TENTH": decimal.Decimal("0.1"), "NEG": decimal.Decimal("-99.0001"),
                   "C": "x" * 4000 + "y" * 4000}
    assert {type(row[k]) for k in ("one", "tenth", "neg")} == {decimal.Decimal}
    with pytest.raises(ResourceError, match="decimal_precision") as info:
        transaction.db.execute("SELECT 0.00001 AS x FROM dual")
    assert not info.value.recoverable and info.value.terminal


@real_oracle
def test_real_execute_returns_the_ref_cursor_rows(in_process_cage: Callable[..., InProcessCage],
                                                  attach: Callable[[float], Request]) -> None:
    transaction = start(in_process_cage)
    attach(10.0)
    proc = f"p_{uuid.uuid4().hex[:12]}"
    transaction.db.execute(f"CREATE OR REPLACE PROCEDURE {proc} (result OUT SYS_REFCURSOR, param INT, "
                           f"label VARCHAR2) IS BEGIN OPEN result FOR SELECT param * param AS square, label AS "
                           f"label, TO_CLOB('long') AS c FROM dual; END {proc};")
    try:
        [first], called = transaction.db.execute("SELECT 1 AS x FROM dual", f"EXECUTE {proc}({{param}}, "
                                                 f"label => {{text}})", param=10, text="ten", unused=20)
        assert first == {"X": 1}
        assert called == [{"SQUARE": 100, "LABEL": "ten", "C": "long"}]
        assert type(called[0]["square"]) is decimal.Decimal
    finally:
        transaction.db.execute(f"DROP PROCEDURE {proc}")


@real_oracle
def test_real_errors_carry_their_ora_code_and_keep_sound_connections(
        in_process_cage: Callable[..., InProcessCage], table: str, attach: Callable[[float], Request]) -> None:
    transaction = start(in_process_cage)
    attach(10.0)
    session = "SELECT SYS_CONTEXT('USERENV', 'SID') AS sid FROM dual"
    [[before]] = transaction.db.execute(session)
    with pytest.raises(SQLResourceError) as info:
        transaction.db.execute("SELECT * FROM no_such_table_pmnc")
    assert info.value.code == "ORA-00942" and info.value.recoverable and not info.value.terminal
    assert str(info.value).startswith("ORA-00942: ")
    with pytest.raises(SQLResourceError) as info:  # the second statement fails: the first is rolled back
        transaction.db.execute(f"INSERT INTO {table} (id) VALUES (1)", f"INSERT INTO {table} (id) VALUES (1)")
    assert info.value.code == "ORA-00001"
    assert transaction.db.execute(f"SELECT COUNT(*) AS n FROM {table}") == ([{"N": 0}],)
    [[after]] = transaction.db.execute(session)
    assert after == before, "statement-level errors leave the connection in use"


@real_oracle
def test_real_slow_call_ends_at_the_deadline(in_process_cage: Callable[..., InProcessCage],
                                             attach: Callable[[float], Request]) -> None:
    transaction = start(in_process_cage, pool__max_time=0.5)
    attach(10.0)
    began = time.monotonic()
    with pytest.raises(ResourceDeadlineError):
        transaction.db.execute("BEGIN DBMS_SESSION.SLEEP(5); END;")
    assert time.monotonic() - began < 2.0
    assert transaction.db.execute("SELECT 1 AS one FROM dual") == ([{"ONE": 1}],)


@real_oracle
def test_real_isolation_and_read_only(in_process_cage: Callable[..., InProcessCage], table: str,
                                      attach: Callable[[float], Request]) -> None:
    transaction = start(in_process_cage)
    attach(10.0)
    with pytest.raises(SQLResourceError) as info:
        transaction.db(read_only=True).execute(f"INSERT INTO {table} (id) VALUES (1)")
    assert info.value.code == "ORA-01456"  # may not perform insert/delete/update operation inside a READ ONLY
    assert transaction.db(isolation_level="serializable").execute(f"SELECT COUNT(*) AS n FROM {table}") == \
        ([{"N": 0}],)


@real_oracle
def test_real_branch_prepares_and_is_finished_from_another_connection(
        table: str, attach: Callable[[float], Request]) -> None:
    attach(20.0)
    prefix = f"pmnc:test{uuid.uuid4().hex[:8]}:"

    def begin(db: Resource, branch: str | None) -> None:
        db.begin_transaction("XA-1", source_module_name="test", resource_args=(), resource_kwargs={},
                             transaction_options={} if branch is None else {"branch": branch})

    first, second, third = (Resource(f"db/{i}", {"dsn": DSN}) for i in range(3))
    try:
        for db in (first, second, third):
            db.connect()
        begin(first, f"{prefix}XA-1:0")  # prepared, then committed on its own connection
        first.execute(f"INSERT INTO {table} (id) VALUES (1)")
        first.prepare()
        first.commit()
        begin(first, f"{prefix}XA-2:0")  # prepared, left in doubt, committed by recovery
        first.execute(f"INSERT INTO {table} (id) VALUES (2)")
        first.prepare()
        begin(second, f"{prefix}XA-3:0")  # prepared, left in doubt, rolled back by recovery
        second.execute(f"INSERT INTO {table} (id) VALUES (3)")
        second.prepare()
        begin(third, f"{prefix}XA-4:0")  # read-only: nothing to commit after prepare
        third.execute(f"SELECT COUNT(*) AS n FROM {table}")
        third.prepare()
        third.commit()
        assert sorted(third.in_doubt(prefix)) == [f"{prefix}XA-2:0", f"{prefix}XA-3:0"]
        third.finish_prepared(f"{prefix}XA-2:0", True)
        third.finish_prepared(f"{prefix}XA-3:0", False)
        assert third.in_doubt(prefix) == []
        begin(third, None)
        assert third.execute(f"SELECT id FROM {table} ORDER BY id") == ([{"ID": 1}, {"ID": 2}],)
        third.rollback()
    finally:
        for db in (first, second, third):
            db.disconnect()


@real_oracle
def test_real_two_phase_transaction_commits_both_resources(
        in_process_cage: Callable[..., InProcessCage], table: str, attach: Callable[[float], Request]) -> None:
    transaction = start(in_process_cage)
    attach(20.0)
    xa = transaction.create(two_phase=True)
    xa.db.execute(f"INSERT INTO {table} (id) VALUES (1)")
    xa.db2.execute(f"INSERT INTO {table} (id) VALUES (2)")
    assert xa.execute() == (([],), ([],))
    xa = transaction.create(two_phase=True)
    xa.db.execute(f"INSERT INTO {table} (id) VALUES (3)")
    xa.db2.execute(f"INSERT INTO {table} (id) VALUES (1)")  # a duplicate: both roll back
    with pytest.raises(SQLResourceError) as info:
        xa.execute()
    assert info.value.code == "ORA-00001" and info.value.participant_index == 1
    assert transaction.db.execute(f"SELECT id FROM {table} ORDER BY id") == ([{"ID": 1}, {"ID": 2}],)
