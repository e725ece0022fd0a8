"""The Oracle resource (python-oracledb, thin mode): `xa.db.execute("... {name} ...", name=value)`.

Config (`config_resource_oracle_1.py`): `server_address=(host, port)`,
`database` (the service name), `username`, `password`, `connect_timeout`,
`decimal_precision`, or a `dsn` (an Easy Connect string such as
"host:1521/service" or "user/password@host:1521/service", or a connect
descriptor) instead of the first two. The program name the server sees
(V$SESSION.PROGRAM) is `application_name`.

- Placeholders: `{name}` is bound as `:name` (see sql.py); names must be
  Oracle bind names (an ASCII letter, then letters, digits, `_`).
- Types: NUMBER comes back as Decimal (checked against `decimal_precision`),
  CLOB, NCLOB and BLOB are read in full (str, str, bytes), DATE and TIMESTAMP
  as datetime, INTERVAL DAY TO SECOND as timedelta. A datetime is bound as
  TIMESTAMP (fractions of a second kept; compared with a DATE column the
  column is converted, which can cost its index) and a timedelta as INTERVAL
  DAY TO SECOND. Refused before anything is sent: bool (no BOOLEAN before
  23ai, and the original refused it), lists, datetime.time (Oracle has no
  TIME type) and time-zone-aware datetimes (the driver drops the zone).
- `EXECUTE proc({a}, {b})` calls a stored procedure whose OUT SYS_REFCURSOR
  parameter is named `result` and returns that cursor's rows, as the
  original: the block sent is `BEGIN proc(a => :a, b => :b, result => :result); END;`.
  An argument is `{name}` (passed to the parameter of that name) or
  `param => {name}`; `EXECUTE proc` alone passes only `result`.
- Each participant is one local transaction; resource kwargs
  `isolation_level` ("READ COMMITTED", "SERIALIZABLE") and `read_only` set it
  up with SET TRANSACTION: `xa.db(read_only=True).execute(...)`.
- Deadlines: every round trip gets the driver's call timeout from
  `pmnc.request.remain` (on expiry the driver sends a break and waits for the
  server to acknowledge it - at worst as long again - before it gives up on
  the socket); connecting is bounded by `connect_timeout` and the deadline,
  the handshake included (thin mode bounds only the TCP connect, so connect
  runs on a thread of its own that is abandoned when time is up).
- Errors are SQLResourceError with `code` "ORA-nnnnn" (the server's number,
  also where the driver wraps it) or "DPY-nnnn" (the driver's own), all
  recoverable (the local transaction rolls back). The connection is dropped
  (terminal), as in the original, except after the statement-level errors
  of SAFE_ORA_CODES / SAFE_DPY_CODES below. A call timeout (DPY-4024,
  ORA-03156, ORA-01013) is a ResourceDeadlineError.
- Two-phase commit: in a `create(two_phase=True)` transaction the branch is
  begun with `tpc_begin` under an Xid made from its id (see `branch_xid`),
  prepared with `tpc_prepare`, then committed or rolled back - or, by its id,
  from any connection (`finish_prepared`); `in_doubt` lists the prepared
  ones (`tpc_recover`, which reads DBA_PENDING_TRANSACTIONS).
"""

from __future__ import annotations

import datetime
import decimal
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import oracledb

from pmnc import log
from pmnc import request as _request
from pmnc.errors import ConfigError, ResourceDeadlineError, ResourceInputParameterError, SQLResourceError
from pmnc.protocols.sql import SQL_KEYS, Row, SQLResource, Statement
from pmnc.schema import Key, address

# Errors that end one statement and leave the session sound, so the connection is kept:
# unique/foreign/check constraints and NOT NULL (1, 1400, 2290-2292), no data / too many
# rows (1403, 1422), values (1438, 1476, 1722, 6502, 12899), binds (1008, 1036, 1745),
# parse and name errors (900-999: syntax, ORA-00904 invalid identifier, ORA-00942 no such
# table...), PL/SQL compilation (6550) and raise_application_error (20000-20999).
SAFE_ORA_CODES = frozenset({1, 1008, 1036, 1400, 1403, 1422, 1438, 1476, 1722, 1745, 2290, 2291, 2292, 6502,
                            6550, 12899, *range(900, 1000), *range(20000, 21000)})
# The driver's own refusals before anything is sent: a bind name not in the statement, a missing value.
SAFE_DPY_CODES = frozenset({"DPY-4008", "DPY-4010"})
# The call timeout ran out: the driver's (thin), the client library's (thick), the cancelled call.
DEADLINE_CODES = frozenset({"DPY-4024", "ORA-03156", "ORA-01013"})
CONNECTION_CLOSED = "DPY-4011"

ISOLATION_LEVELS = ("READ COMMITTED", "SERIALIZABLE")
PROBE_AFTER = 5.0  # seconds idle after which a connection is pinged before a transaction uses it
CONNECT_BACKSTOP = 0.25  # seconds the driver's TCP connect timeout exceeds our wait for the connection
CLOSE_TIMEOUT = 1.0  # seconds closing a connection may take (it rolls back and logs off)
MAX_CALL_TIMEOUT = 2 ** 31 - 1  # milliseconds, the driver's limit

# Two-phase commit branch ids map to Oracle Xids: format "pmnc", the id's UTF-8 bytes as the
# global transaction id (at most 64 bytes), and a constant branch qualifier.
FORMAT_ID = 0x706D6E63
BRANCH_QUALIFIER = b"1"
MAX_GTRID = 64

BIND_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
REF_CURSOR = "result"  # the OUT SYS_REFCURSOR parameter of a procedure called with EXECUTE


# The keys of config_resource_<name>.py (a module constant: resource attributes are the user's calls).
KEYS = SQL_KEYS.extend(
    dsn=Key(None),  # an Easy Connect string or a connect descriptor, instead of server_address and database
    server_address=Key(("127.0.0.1", 1521), address), database=Key(None),  # database: the service name
    username=Key(None), password=Key(None),
    connect_timeout=Key(3.0, float),
    application_name=Key("pmnc", str),  # V$SESSION.PROGRAM
)


class Resource(SQLResource):
    arrays = False
    has_time = False
    preparable = True  # can be a branch of a two-phase commit

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name, config, KEYS)
        s = self.config
        dsn, database = s["dsn"], s["database"]
        self.params: dict[str, Any] = {}
        if dsn is None:
            host, port = s["server_address"]
            self.params.update(host=host, port=port)
            if not database:
                raise ConfigError(f"resource {name}: database (the service name) is required without a dsn")
            self.params["service_name"] = str(database)
        elif not isinstance(dsn, str) or not dsn.strip():
            raise ConfigError(f"resource {name}: dsn must be an Easy Connect string or a connect descriptor")
        self.dsn: str | None = dsn
        for key, param in (("username", "user"), ("password", "password")):
            if s[key] is not None:
                self.params[param] = str(s[key])
        if dsn is None and "user" not in self.params:
            raise ConfigError(f"resource {name}: username is required without a dsn")
        self.connect_timeout: float = s["connect_timeout"]
        if not self.connect_timeout > 0:
            raise ConfigError(f"resource {name}: connect_timeout must be a positive number of seconds")
        self.params["program"] = s["application_name"][:48]
        self.conn: oracledb.Connection | None = None
        self.branch: str | None = None  # the two-phase commit branch in progress
        self.prepared: bool | None = None  # after prepare(): whether the branch has anything to commit

    # --- lifecycle ------------------------------------------------------------------------

    def connect(self) -> None:
        request = _request.current()
        by_deadline = request.deadline is not None and request.remain < self.connect_timeout
        timeout = request.remain if by_deadline else self.connect_timeout
        if timeout <= 0:
            raise ResourceDeadlineError(f"request deadline connecting to {self.name}")
        # The driver's own TCP connect timeout is a backstop a little later: the wait below decides.
        params = dict(self.params, tcp_connect_timeout=timeout + CONNECT_BACKSTOP, retry_count=0)
        attempt = _Attempt(lambda: oracledb.connect(dsn=self.dsn, **params), f"{self.name} connect")
        try:
            conn = attempt.wait(timeout)
        except oracledb.Error as e:
            error = sql_error(e)
            what = error.description if error.description.startswith("cannot connect") else \
                f"cannot connect: {error.description}"
            raise SQLResourceError(what, code=error.code, recoverable=True, terminal=True) from None
        if conn is None:
            if by_deadline:
                raise ResourceDeadlineError(f"request deadline connecting to {self.name}")
            raise SQLResourceError(f"cannot connect: no answer within connect_timeout={self.connect_timeout}s",
                                   recoverable=True, terminal=True)
        conn.outputtypehandler = output_type
        self.conn = conn

    def disconnect(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:  # closing rolls back and logs off: two round trips, bounded too
            request = _request.current()
            remain = CLOSE_TIMEOUT if request.deadline is None else min(request.remain, CLOSE_TIMEOUT)
            conn.call_timeout = max(math.ceil(remain * 1000), 100)
            conn.close()
        except Exception as e:
            log.debug(f"{self.name}: close failed: {e}")

    def begin_transaction(self, xid: str, *, source_module_name: str, transaction_options: dict[str, Any],
                          resource_args: tuple[Any, ...], resource_kwargs: dict[str, Any]) -> None:
        setup = _set_transaction(resource_kwargs)  # refused before anything is sent
        branch = transaction_options.get("branch")
        target = None if branch is None else branch_xid(branch)
        if target is not None and setup is not None:
            raise SQLResourceError("isolation_level and read_only cannot be set in a two-phase branch",
                                   recoverable=True, terminal=False)
        conn = self._connection()
        if not conn.is_healthy() or time.monotonic() - self.used > PROBE_AFTER:
            conn = self._probe()
        if conn.transaction_in_progress:  # left over by a failed rollback
            self._guarded(conn.rollback)
        self.branch, self.prepared = branch, None
        if target is not None:
            self._guarded(conn.tpc_begin, target)
        elif setup is not None:
            with conn.cursor() as cursor:
                self._guarded(cursor.execute, setup)

    def _probe(self) -> oracledb.Connection:
        """A connection idle for a while may have been closed by the server (a restart, a
        killed session): find out before the transaction relies on it, and reconnect -
        nothing has been sent for this transaction yet."""
        conn = self._connection()
        try:
            if conn.is_healthy():
                self._guarded(conn.ping)
                return conn
        except SQLResourceError:
            pass
        log.info(f"{self.name}: the connection was found broken, reconnecting")
        self.disconnect()
        return self._connection()

    def execute(self, *statements: str, **params: Any) -> tuple[list[Row], ...]:
        for sql in statements:  # every statement is checked before the first one is sent
            oracle_sql(Statement(sql))
        return super().execute(*statements, **params)

    def _run(self, statement: Statement, params: dict[str, Any]) -> list[dict[str, Any]]:
        sql = oracle_sql(statement)
        conn = self._connection()
        with conn.cursor() as cursor:
            sizes = input_sizes(params)
            if sizes:
                cursor.setinputsizes(**sizes)
            if not statement_is_call(statement):
                self._guarded(cursor.execute, sql, params)
                return self._rows(cursor)
            log.debug(f"{self.name}: {sql}")
            with conn.cursor() as result:
                self._guarded(cursor.execute, sql, dict(params, **{REF_CURSOR: result}))
                return self._rows(result)

    def check_value(self, name: str, value: Any) -> Any:
        if isinstance(value, bool):
            raise ResourceInputParameterError(f"parameter {name}: type bool is not supported by Oracle, "
                                              f"pass 1 or 0")
        if isinstance(value, datetime.datetime) and value.utcoffset() is not None:
            raise ResourceInputParameterError(f"parameter {name}: a datetime with a time zone is not supported "
                                              f"(the driver would drop the zone), pass it naive, in UTC say")
        return super().check_value(name, value)

    def _rows(self, cursor: oracledb.Cursor) -> list[dict[str, Any]]:
        if cursor.description is None:
            return []
        names = [column.name for column in cursor.description]
        numbers = [column.type_code == oracledb.DB_TYPE_NUMBER for column in cursor.description]
        rows = self._guarded(cursor.fetchall)
        return [dict(zip(names, (self._value(value, number) for value, number in zip(row, numbers, strict=True)),
                         strict=True)) for row in rows]

    def _value(self, value: Any, number: bool) -> Any:
        """The output type handler's work, where it was not done: a LOB (in a nested
        cursor, a BFILE) is read in full, a NUMBER becomes a Decimal."""
        if isinstance(value, oracledb.LOB):
            return self._guarded(value.read)
        if number and isinstance(value, int | float) and not isinstance(value, bool):
            return decimal.Decimal(str(value))
        return value

    def commit(self) -> None:
        """One-phase commit, or phase 2 of a prepared branch on its own connection."""
        conn = self._connection()
        branch, prepared = self.branch, self.prepared
        try:
            if branch is None:
                self._guarded(conn.commit)
            elif prepared is not False:  # False: a read-only branch, over at prepare
                self._guarded(conn.tpc_commit)
        finally:
            self.branch = self.prepared = None

    def rollback(self) -> None:
        conn, branch, prepared = self.conn, self.branch, self.prepared
        self.branch = self.prepared = None
        if conn is None or not conn.is_healthy():
            return
        if branch is None:
            self._guarded(conn.rollback)
        elif prepared is not False:
            self._guarded(conn.tpc_rollback)

    # --- two-phase commit -----------------------------------------------------------------

    def prepare(self) -> None:
        """Phase 1: from now on the branch survives anything until it is decided."""
        self.prepared = bool(self._guarded(self._connection().tpc_prepare))
        if not self.prepared:
            log.debug(f"{self.name}: branch {self.branch} changed nothing, there is nothing to commit")

    def finish_prepared(self, branch: str, commit: bool) -> None:
        """Recovery: commit or roll back a prepared branch by its id, from any connection."""
        target = branch_xid(branch)
        conn = self._connection()
        if conn.transaction_in_progress:
            self._guarded(conn.rollback)
        if commit:
            self._guarded(conn.tpc_commit, target, False)
        else:
            self._guarded(conn.tpc_rollback, target)

    def in_doubt(self, prefix: str) -> list[str]:
        """The prepared branches whose ids start with `prefix`."""
        return branches_in_doubt(self._guarded(self._connection().tpc_recover), prefix)

    # --- inside ---------------------------------------------------------------------------

    def _connection(self) -> oracledb.Connection:
        if self.conn is None:
            self.connect()
        assert self.conn is not None
        return self.conn

    def _guarded(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)`, one or more round trips, within the request's deadline and with
        the driver's errors turned into ours."""
        request = _request.current()
        timeout = call_timeout(request)
        if timeout is None:
            raise ResourceDeadlineError(f"request deadline before calling {self.name}")
        try:
            if self.conn is not None:
                self.conn.call_timeout = timeout
            return fn(*args)
        except oracledb.Error as e:
            error = sql_error(e)
            # A second timeout, waiting for the server to acknowledge the break, closes the socket.
            if error.code in DEADLINE_CODES or (driver_code(e) == CONNECTION_CLOSED and request.expired):
                self.expire()
                raise ResourceDeadlineError(f"request deadline waiting for {self.name}") from None
            raise error from None


class SidResource(Resource):
    """Protocol `oracle_cx` (the original's name, loader.PROTOCOL_ALIASES): its `database` was
    the instance's SID, as cx_Oracle's makedsn(host, port, database) took it, not a service
    name. Everything else is this protocol's."""

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name, config)
        if "service_name" in self.params:
            self.params["sid"] = self.params.pop("service_name")


def call_timeout(request: _request.Request) -> int | None:
    """The driver's call timeout (ms, 0: none) for a round trip starting now; None
    once the deadline has passed (the driver's 0 would mean no timeout at all)."""
    if request.deadline is None:
        return 0
    remain = request.remain
    return None if remain <= 0 else min(max(math.ceil(remain * 1000), 1), MAX_CALL_TIMEOUT)


class _Attempt:
    """One connect on a thread of its own, so that waiting for it can end in time: a
    listener that accepts and then says nothing holds connect() until it closes. A
    connection made after the wait was given up is closed."""

    def __init__(self, connect: Callable[[], oracledb.Connection], name: str) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._conn: oracledb.Connection | None = None
        self._error: BaseException | None = None
        self._abandoned = False
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        late = None
        try:
            conn = self._connect()
        except BaseException as e:
            with self._lock:
                self._error = e
        else:
            with self._lock:
                if self._abandoned:
                    late = conn
                else:
                    self._conn = conn
        finally:
            self._done.set()
        if late is not None:
            try:
                late.close()
            except Exception as e:
                log.debug(f"a connection made too late cannot be closed: {e}")

    def wait(self, timeout: float) -> oracledb.Connection | None:
        """The connection, None if it did not come in time; raises what connecting raised."""
        self._done.wait(timeout)
        with self._lock:
            if self._conn is None and self._error is None:
                self._abandoned = True
                return None
        if self._error is not None:
            raise self._error
        return self._conn


# --- SQL ----------------------------------------------------------------------------------

_MARK = "\x00"  # where a placeholder stood, in an EXECUTE statement being parsed
_EXECUTE = re.compile(r"\s*EXECUTE\b(?P<rest>.*)", re.IGNORECASE | re.DOTALL)
_CALL = re.compile(r"\s+(?P<proc>[A-Za-z][\w$#]*(?:\.[A-Za-z][\w$#]*)*(?:@[\w$#.]+)?)"
                   r"\s*(?:\((?P<args>[^()]*)\))?\s*;?\s*", re.ASCII | re.DOTALL)
_ARG = re.compile(r"\s*(?:(?P<formal>[A-Za-z][\w$#]*)\s*=>\s*)?" + _MARK + r"\s*", re.ASCII)


def statement_is_call(statement: Statement) -> bool:
    return _EXECUTE.fullmatch(statement.parts[0][0] if statement.parts else "") is not None


def oracle_sql(statement: Statement) -> str:
    """What is sent for `statement`: `{name}` as `:name`, or the block calling the
    procedure of an EXECUTE statement. Refuses what Oracle could not bind."""
    names = statement.names
    for name in names:
        if not BIND_NAME.fullmatch(name):
            raise ResourceInputParameterError(f"parameter {name}: an Oracle bind name is an ASCII letter "
                                              f"followed by letters, digits and _")
    if len({name.upper() for name in names}) < len(names):
        raise ResourceInputParameterError(f"parameters {', '.join(names)}: Oracle bind names ignore case, "
                                          f"these clash")
    if statement_is_call(statement):
        return _procedure_call(statement)
    return statement.render(lambda name: f":{name}")


def _procedure_call(statement: Statement) -> str:
    text = "".join(literal + (_MARK if name is not None else "") for literal, name in statement.parts)
    head = _EXECUTE.fullmatch(text)
    call = None if head is None else _CALL.fullmatch(head["rest"])
    names = [name for _, name in statement.parts if name is not None]
    if call is None or text.count(_MARK) != len(names):
        raise ResourceInputParameterError("EXECUTE takes a procedure name and optionally its arguments: "
                                          "EXECUTE proc({a}, param => {b})")
    args = call["args"]
    pieces = args.split(",") if args is not None and args.strip() else []
    if len(pieces) != len(names):
        raise ResourceInputParameterError("EXECUTE passes only {name} placeholders, each argument one: "
                                          "EXECUTE proc({a}, param => {b})")
    actuals = []
    for piece, name in zip(pieces, names, strict=True):
        arg = _ARG.fullmatch(piece)
        if arg is None:
            raise ResourceInputParameterError(f"EXECUTE argument {piece.strip()!r} is not {{name}} "
                                              f"or param => {{name}}")
        formal = arg["formal"] or name
        if formal.lower() == REF_CURSOR:
            raise ResourceInputParameterError(f"EXECUTE: {REF_CURSOR} is the procedure's OUT SYS_REFCURSOR, "
                                              f"not an argument")
        actuals.append(f"{formal} => :{name}")
    if any(name.lower() == REF_CURSOR for name in names):
        raise ResourceInputParameterError(f"EXECUTE: :{REF_CURSOR} is the ref cursor's bind, name the "
                                          f"parameter otherwise")
    actuals.append(f"{REF_CURSOR} => :{REF_CURSOR}")
    return f"BEGIN {call['proc']}({', '.join(actuals)}); END;"


# --- values -------------------------------------------------------------------------------

# Column types fetched as something else: NUMBER as Decimal (not float), LOBs as their
# whole value (not a locator to read in more round trips).
FETCH_AS: dict[Any, Any] = {
    oracledb.DB_TYPE_NUMBER: decimal.Decimal,
    oracledb.DB_TYPE_CLOB: oracledb.DB_TYPE_LONG,
    oracledb.DB_TYPE_NCLOB: oracledb.DB_TYPE_LONG_NVARCHAR,
    oracledb.DB_TYPE_BLOB: oracledb.DB_TYPE_LONG_RAW,
}


def output_type(cursor: Any, metadata: Any) -> Any:
    """The connection's output type handler (it applies to ref cursors too): a
    variable for the column types of FETCH_AS, None (the default) for others."""
    fetch_as = FETCH_AS.get(metadata.type_code)
    return None if fetch_as is None else cursor.var(fetch_as, arraysize=cursor.arraysize)


def input_sizes(params: dict[str, Any]) -> dict[str, Any]:
    """Explicit bind types where the default loses something: a datetime would be
    bound as DATE (whole seconds)."""
    sizes = {}
    for name, value in params.items():
        if isinstance(value, datetime.datetime):
            sizes[name] = oracledb.DB_TYPE_TIMESTAMP
        elif isinstance(value, datetime.timedelta):
            sizes[name] = oracledb.DB_TYPE_INTERVAL_DS
    return sizes


def _set_transaction(kwargs: dict[str, Any]) -> str | None:
    level = str(kwargs.get("isolation_level", "READ COMMITTED")).upper()
    if level not in ISOLATION_LEVELS:
        raise SQLResourceError(f"isolation_level {level!r} is not one of {', '.join(ISOLATION_LEVELS)}",
                               recoverable=True, terminal=False)
    if kwargs.get("read_only", False):
        return "SET TRANSACTION READ ONLY"  # reads as of its start: serializable for a reader
    return "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE" if level == "SERIALIZABLE" else None


# --- two-phase commit ids -----------------------------------------------------------------


def branch_xid(branch: str) -> oracledb.Xid:
    """The Oracle Xid of a branch id: (FORMAT_ID, the id's UTF-8, BRANCH_QUALIFIER)."""
    gtrid = branch.encode("utf-8") if isinstance(branch, str) else b""
    if not 0 < len(gtrid) <= MAX_GTRID:
        raise ResourceInputParameterError(f"branch id {branch!r} must be 1 to {MAX_GTRID} bytes of UTF-8 "
                                          f"for an Oracle Xid")
    return oracledb.Xid(FORMAT_ID, gtrid, BRANCH_QUALIFIER)


def xid_branch(xid: Iterable[Any]) -> str | None:
    """The branch id of an Xid made by `branch_xid`, None for anyone else's."""
    format_id, gtrid, bqual = xid
    gtrid, bqual = (x.encode("utf-8") if isinstance(x, str) else x for x in (gtrid, bqual))
    if format_id != FORMAT_ID or bqual != BRANCH_QUALIFIER or not isinstance(gtrid, bytes):
        return None
    try:
        return gtrid.decode("utf-8")
    except UnicodeDecodeError:
        return None


def branches_in_doubt(xids: Iterable[Iterable[Any]], prefix: str) -> list[str]:
    """Our branch ids among the Xids `tpc_recover` found, those starting with `prefix`."""
    branches = (xid_branch(xid) for xid in xids)
    return [branch for branch in branches if branch is not None and branch.startswith(prefix)]


# --- errors -------------------------------------------------------------------------------


def driver_code(e: oracledb.Error) -> str:
    """The code the driver gives the error: "ORA-00942", or its own "DPY-4011" where it
    wraps a server error that means the connection is gone."""
    return str(getattr(e.args[0] if e.args else None, "full_code", "") or "")


def sql_error(e: oracledb.Error) -> SQLResourceError:
    """Ours for any of the driver's: code ORA-nnnnn (the server's number, where there
    is one) or DPY-nnnn, recoverable, terminal unless the error is statement-level."""
    info = e.args[0] if e.args else None
    number = getattr(info, "code", 0) or 0
    full_code = driver_code(e)
    code = f"ORA-{number:05d}" if number else (full_code or None)
    lines = [line for line in str(getattr(info, "message", None) or e).splitlines()
             if line.strip() and not line.startswith("Help: ")]
    if code and lines and lines[0].startswith(f"{code}: "):
        lines[0] = lines[0][len(code) + 2:]
    description = "; ".join(line.rstrip(".") for line in lines[:-1]) + "; " * (len(lines) > 1) + \
        (lines[-1] if lines else type(e).__name__)
    safe = not getattr(info, "is_session_dead", False) and (number in SAFE_ORA_CODES if number
                                                             else full_code in SAFE_DPY_CODES)
    return SQLResourceError(description, code=code, recoverable=True, terminal=not safe)
