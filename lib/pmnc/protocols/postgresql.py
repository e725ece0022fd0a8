"""The PostgreSQL resource (psycopg 3): `xa.db.execute("... {name} ...", name=value)`.

Config (`config_resource_postgresql_1.py`): `server_address=(host, port)`,
`database`, `username`, `password`, `connect_timeout`, `decimal_precision`,
or a `dsn` (libpq conninfo or URI) instead of the first four. The
application name the server sees is `<node>.<cage>`. The original's protocol
names `postgresql_psycopg` and `postgresql_pg8000` name this one (loader.py),
and their config files work as they are (pg8000's `server_encoding = None` too).

- Each participant is one local transaction on its own connection; the
  resource kwargs `isolation_level` ("READ COMMITTED", "REPEATABLE READ",
  "SERIALIZABLE") and `read_only` set it up: `xa.db(read_only=True).execute(...)`.
- `{name}` placeholders are bound server-side (see sql.py); every wait on the
  server - connect, each statement, commit - is bounded by the request's
  deadline (a statement still running then is cancelled and the connection
  dropped).
- Errors are SQLResourceError with the SQLSTATE: recoverable (the local
  transaction rolls back), and the connection is kept only for SQLSTATE
  classes that leave it sound (data, integrity, syntax errors and the like).
- A transaction of one call of one statement at the default session (the only
  participant, which commits as soon as its call returns) is one round trip,
  not three: the statement runs in autocommit, where it is its own transaction
  (BEGIN and COMMIT spared). What differs: an error at its commit (a deferred
  constraint) comes from the statement, and an error that may have come after
  the commit (the connection lost) is not recoverable.
- Two-phase commit: in a `create(two_phase=True)` transaction the branch is
  begun with its global id, prepared (`PREPARE TRANSACTION`), then committed
  or rolled back by that id - from any connection, also after a restart.
"""

from __future__ import annotations

import select
import time
from collections.abc import Generator
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import dict_row

from pmnc import log
from pmnc import request as _request
from pmnc.errors import ConfigError, ResourceDeadlineError, ResourceInputParameterError, SQLResourceError
from pmnc.protocols.sql import SQL_KEYS, Row, SQLResource, Statement
from pmnc.schema import Key, address, resource_file

# SQLSTATE classes after which the connection is still good (as the original's):
# warnings, no data, cardinality, data, integrity, syntax/access, check option, PL/pgSQL.
SAFE_CLASSES = frozenset({"00", "01", "02", "21", "22", "23", "42", "44", "P0"})
ISOLATION_LEVELS = {
    "READ COMMITTED": psycopg.IsolationLevel.READ_COMMITTED,
    "REPEATABLE READ": psycopg.IsolationLevel.REPEATABLE_READ,
    "SERIALIZABLE": psycopg.IsolationLevel.SERIALIZABLE,
}
PROBE_AFTER = 5.0  # seconds idle after which a connection is checked before a transaction uses it
DEFAULT_SESSION = (psycopg.IsolationLevel.READ_COMMITTED, False)  # (isolation level, read only) of a plain call
# What an autocommitted statement runs at (the server's and role's defaults may differ): the
# default session, as a BEGIN of a plain call states it.
SESSION_CHARACTERISTICS = b"SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED, READ WRITE"
# SQLSTATE classes of errors that may come after the server has committed an autocommitted
# statement (connection, operator intervention, system and internal errors); with no SQLSTATE
# the connection failed. Any other error means the statement, and so its commit, failed.
UNCERTAIN_CLASSES = frozenset({"08", "57", "58", "XX"})


class _Connection(psycopg.Connection[dict[str, Any]]):
    """A connection whose every wait on the server ends at the request's deadline."""

    def wait(self, gen: Generator[Any, Any, Any], interval: float = 0.1,
             timeout: float | None = None) -> Any:
        request = _request.current()
        if request.deadline is not None:
            timeout = request.remain if timeout is None else min(timeout, request.remain)
        try:
            return super().wait(gen, interval, timeout)
        except psycopg.errors._WaitTimeout:  # psycopg's own signal for it
            raise DeadlineReached from None


class DeadlineReached(Exception):
    """The request's deadline came while the server had not answered."""


# The keys of config_resource_<name>.py (a module constant: resource attributes are the user's calls).
KEYS = SQL_KEYS.extend(
    dsn=Key(None),  # a libpq conninfo or URI, instead of the next four
    server_address=Key(("127.0.0.1", 5432), address), database=Key("postgres"), username=Key("postgres"),
    password=Key(None),
    connect_timeout=Key(3.0, float),
    # statements run this many times on a connection become server-side prepared ones
    # (None: never, for poolers such as pgbouncer in transaction mode)
    prepare_threshold=Key(5),
    application_name=Key("pmnc", str),
    # the original's (protocol postgresql_pg8000): None, its "ask the server", is what psycopg
    # always does; a name is refused, see Resource.__init__
    server_encoding=Key(None),
)


class Resource(SQLResource):
    arrays = True
    preparable = True  # can be a branch of a two-phase commit
    inline = True  # every wait on the server ends at the deadline (_Connection.wait)

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name, config, KEYS)
        s = self.config
        if s["server_encoding"] is not None:
            raise ConfigError(f"{resource_file(name)}: server_encoding is not needed any more, remove it: the "
                              f"driver learns the server's encoding when it connects and converts every text")
        self.params: dict[str, Any] = {}
        if s["dsn"] is None:  # with a dsn, database, username and password are ignored
            host, port = s["server_address"]
            self.params.update(host=host, port=port, dbname=s["database"], user=s["username"])
            if s["password"] is not None:
                self.params["password"] = str(s["password"])
        self.dsn = "" if s["dsn"] is None else str(s["dsn"])
        self.connect_timeout: float = s["connect_timeout"]
        threshold = s["prepare_threshold"]
        self.prepare_threshold = None if threshold is None else int(threshold)
        self.params["application_name"] = s["application_name"][:63]
        self.conn: _Connection | None = None
        self.cursor: psycopg.Cursor[dict[str, Any]] | None = None
        self.session: tuple[psycopg.IsolationLevel, bool] | None = None  # as last set, on session_of
        self.session_of: _Connection | None = None
        self.branch: str | None = None  # the two-phase commit branch in progress
        self.at_once = False  # this transaction may be one autocommitted statement (begin_transaction)
        self.autocommitted = False  # ... and it was: there is nothing left to commit
        self.characteristics_of: _Connection | None = None  # the connection SESSION_CHARACTERISTICS was set on

    # --- lifecycle ------------------------------------------------------------------------

    def connect(self) -> None:
        request = _request.current()
        timeout = self.connect_timeout if request.deadline is None else min(self.connect_timeout, request.remain)
        try:
            self.conn = _Connection.connect(self.dsn, autocommit=False, row_factory=dict_row,
                                            connect_timeout=max(int(timeout + 0.999), 2),
                                            prepare_threshold=self.prepare_threshold, **self.params)
        except psycopg.Error as e:
            raise SQLResourceError(f"cannot connect: {_message(e)}", state=e.sqlstate, recoverable=True,
                                   terminal=True) from None

    def disconnect(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception as e:
                log.debug(f"{self.name}: close failed: {e}")
            self.conn = self.cursor = self.session_of = None

    def begin_transaction(self, xid: str, *, source_module_name: str, transaction_options: dict[str, Any],
                          resource_args: tuple[Any, ...], resource_kwargs: dict[str, Any]) -> None:
        level = str(resource_kwargs.get("isolation_level", "READ COMMITTED")).upper()
        if level not in ISOLATION_LEVELS:
            raise ResourceInputParameterError(f"isolation_level {level!r} is not one of "
                                              f"{', '.join(ISOLATION_LEVELS)}")
        if time.monotonic() - self.used > PROBE_AFTER:
            self._probe()
        conn = self._connection()
        session = (ISOLATION_LEVELS[level], bool(resource_kwargs.get("read_only", False)))
        self.branch = transaction_options.get("branch")
        self.at_once = self.commit_follows and self.branch is None and session == DEFAULT_SESSION
        self.autocommitted = False
        if not self.at_once:  # else execute() decides, by the number of statements
            self._begin(conn, session)

    def _begin(self, conn: _Connection, session: tuple[psycopg.IsolationLevel, bool]) -> None:
        """A transaction psycopg begins with the first statement (BEGIN as `session` says)."""
        self._explicit(conn)
        if session != self.session or conn is not self.session_of:  # psycopg sends it with the next BEGIN
            conn.isolation_level, conn.read_only = session
            self.session, self.session_of = session, conn
        if self.branch is not None:
            self._guarded(conn.tpc_begin, self.branch)

    def execute(self, *statements: str, **params: Any) -> tuple[list[Row], ...]:
        if self.at_once:
            conn = self._in_transaction()
            if len(statements) == 1:
                self._autocommit(self._sound(conn))
                self.autocommitted = True
            else:
                self._begin(conn, DEFAULT_SESSION)
        return super().execute(*statements, **params)

    def _sound(self, conn: _Connection) -> _Connection:
        """The connection, replaced first if the server has closed it since its last use (its
        socket reads the end): then an autocommitted statement that fails is one that reached
        the server, whose commit may have happened, and only that failure is not recoverable."""
        if _readable(conn.pgconn.socket):  # the end, or a notice: look
            self._probe()
        return self._in_transaction()

    def _autocommit(self, conn: _Connection) -> None:
        """The connection in autocommit, at the default session."""
        if not conn.autocommit:
            self._guarded(setattr, conn, "autocommit", True)
        if self.characteristics_of is not conn:
            self._guarded(conn.execute, SESSION_CHARACTERISTICS)
            self.characteristics_of = conn

    def _explicit(self, conn: _Connection) -> None:
        """The connection out of autocommit: its statements are in a transaction psycopg begins."""
        if conn.autocommit:
            self._guarded(setattr, conn, "autocommit", False)

    def _probe(self) -> None:
        """A connection idle for a while may have been closed by the server (a restart,
        pg_terminate_backend): find out before the transaction relies on it, and
        reconnect - nothing has been sent for this transaction yet."""
        try:
            self._connection().execute("SELECT 1")
            self._connection().rollback()
        except Exception:
            log.info(f"{self.name}: the connection was found broken, reconnecting")
            self.disconnect()
            self.connect()

    def _run(self, statement: Statement, params: dict[str, Any]) -> list[dict[str, Any]]:
        # positional %s in the order the names occur: cheaper for psycopg than %(name)s
        sql = statement.render_as("format", _format, escape_percent=bool(params))
        cursor = self._cursor()
        self._guarded(cursor.execute, sql, [params[name] for name in statement.occurrences] or None)
        if cursor.description is None:
            return []
        return self._guarded(cursor.fetchall)  # type: ignore[no-any-return]

    def _cursor(self) -> psycopg.Cursor[dict[str, Any]]:
        """One cursor per connection, reused by every statement (never closed but with it)."""
        conn = self._in_transaction()
        cursor = self.cursor
        if cursor is None or cursor.connection is not conn:
            cursor = self.cursor = conn.cursor()
        return cursor

    def commit(self) -> None:
        """One-phase commit, or phase 2 of a prepared branch on its own connection."""
        conn = self._in_transaction()
        if self.autocommitted:  # the statement was its own transaction ...
            self.autocommitted = False
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                return  # ... unless it was a BEGIN, whose block is committed as the transaction would be
        self._guarded(conn.tpc_commit if self.branch is not None else conn.commit)
        self.branch = None

    def rollback(self) -> None:
        self.autocommitted = False
        conn, branch, self.branch = self.conn, self.branch, None
        if conn is None or conn.closed:
            return
        self._guarded(conn.tpc_rollback if branch is not None else conn.rollback)

    # --- two-phase commit -----------------------------------------------------------------

    def prepare(self) -> None:
        """Phase 1: from now on the branch survives anything until it is decided."""
        self._guarded(self._in_transaction().tpc_prepare)

    def finish_prepared(self, branch: str, commit: bool) -> None:
        """Recovery: commit or roll back a prepared branch by its id, from any connection."""
        conn = self._connection()
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
        self._guarded(conn.tpc_commit if commit else conn.tpc_rollback, branch)

    def in_doubt(self, prefix: str) -> list[str]:
        """The prepared branches whose ids start with `prefix`."""
        rows = self._guarded(self._connection().execute,
                             "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE %s AND database = current_database()",
                             (prefix.replace("%", r"\%").replace("_", r"\_") + "%",)).fetchall()
        self._connection().rollback()
        return [row["gid"] for row in rows]

    # --- inside ---------------------------------------------------------------------------

    def _cancel(self) -> None:
        """Stop what the server is still doing for us: the connection goes, its work must too."""
        if self.conn is not None and not self.conn.closed:
            try:
                self.conn.cancel_safe(timeout=CANCEL_TIMEOUT)
            except Exception as e:
                log.warning(f"{self.name}: the statement cannot be cancelled: {e}")

    def _connection(self) -> _Connection:
        if self.conn is None or self.conn.closed:
            self.connect()
        assert self.conn is not None
        return self.conn

    def _in_transaction(self) -> _Connection:
        """The connection the transaction began on. Never a new one: a connection lost since
        fails the statement or the commit (psycopg: "the connection is closed"), where a new
        one would carry on without what was done before, and at the default isolation level."""
        conn = self.conn
        return conn if conn is not None else self._connection()

    def _guarded(self, fn: Any, *args: Any) -> Any:
        """`fn(*args)` with psycopg's errors turned into ours."""
        try:
            return fn(*args)
        except DeadlineReached:
            self.expire()
            self._cancel()
            raise ResourceDeadlineError(f"request deadline waiting for {self.name}") from None
        except psycopg.Error as e:
            raise _sql_error(e, self.autocommitted) from None


def _readable(fd: int) -> bool:
    """Whether `fd` has something to read now (poll, not select: a busy cage's descriptor
    numbers may be above select's 1024)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _format(name: str) -> str:
    return "%s"


CANCEL_TIMEOUT = 0.5  # seconds a cancel request may take past the deadline


def _sql_error(e: psycopg.Error, autocommitted: bool = False) -> SQLResourceError:
    """Ours for psycopg's. Recoverable (nothing was done) unless the statement was autocommitted
    and the error may have come after its commit."""
    state = e.sqlstate
    safe = state is not None and state[:2] in SAFE_CLASSES and not isinstance(e, pg_errors.ReadOnlySqlTransaction)
    uncertain = autocommitted and (state is None or state[:2] in UNCERTAIN_CLASSES)
    return SQLResourceError(_message(e), state=state, recoverable=not uncertain, terminal=not safe)


def _message(e: psycopg.Error) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
