"""Durable state: the cage's SQLite file, `pmnc.state`, and the writer every durable change goes through.

One file per cage, `cages/<cage>/state/state.sqlite` (WAL; a commit that must
be durable is fsynced, `synchronous=FULL`), shared by the instances of the
cage on one machine:

    kv         (module, key) → pickled value: `pmnc.state.get/set/delete`, one
               namespace per module; keys are any str, values anything picklable
    prepared   state writes prepared as branches of two-phase commits, not yet
               committed or rolled back (see StateResource)
    retry      the messages of retried calls and, once done, their ids for
               de-duplication (retry.py)
    received   what message interfaces (jms, ...) have handled or failed to, by
               message id: their duplicate and poison windows (received.py)

Every write, from any thread, goes through one writer (`StateStore.transact`):
the first thread to come writes whatever is waiting in one transaction and one
fsync (group commit), the others wait for that write within their deadlines.
A write still waiting at its caller's deadline is dropped and the caller gets
an error: nothing of it is kept. A failed write (disk full, read-only folder)
is rolled back whole and reaches every caller whose work was in it as
StateError; nothing half-written remains. A file that SQLite finds damaged at
start stops the cage (StateCorruptError) rather than serve from it.

Values may hold passwords: the `state/` folder is made 0700 and its files
0600 (SQLite gives -wal and -shm the mode of the file), and existing ones
are put right when they are opened.
"""

from __future__ import annotations

import os
import pickle
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from pmnc import log
from pmnc import request as _request
from pmnc.errors import NotAvailableError, StateCorruptError, StateError, exc_string
from pmnc.resource import Resource
from pmnc.schema import Key, Schema

T = TypeVar("T")

FILE_NAME = "state.sqlite"
KEYS = Schema(  # of config_state.py
    minimum_free_space=Key(50.0, float),  # megabytes: with less free on the state's disk, writes are refused
)
MINIMUM_FREE_SPACE = int(KEYS["minimum_free_space"].default * 1024 * 1024)  # bytes
BUSY_TIMEOUT = 30.0  # seconds a write waits for another process's (no request deadline to go by)
FOLDER_MODE, FILE_MODE = 0o700, 0o600  # for the owner only

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    module TEXT NOT NULL,
    key BLOB NOT NULL,              -- the str key as UTF-8 (surrogates passed through)
    value BLOB NOT NULL,            -- pickled
    PRIMARY KEY (module, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS prepared (
    branch TEXT PRIMARY KEY,        -- pmnc:<node>.<cage>:<xid>:<n>
    ops BLOB NOT NULL,              -- pickled list of operations (see apply_op)
    prepared REAL NOT NULL);
CREATE TABLE IF NOT EXISTS retry (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- the order of enqueueing: FIFO with keep_order
    queue TEXT NOT NULL,
    filtered_id TEXT NOT NULL,      -- what de-duplicates: the caller's id, or the RT id
    rt_id TEXT NOT NULL,            -- RT-<ts>-<hex>, as returned to the caller
    target TEXT NOT NULL,           -- the cage that runs the call
    module TEXT NOT NULL,
    method TEXT NOT NULL,
    payload BLOB,                   -- pickled (args, kwargs, request); NULL once finished
    start REAL NOT NULL,            -- epoch: when first enqueued, anywhere
    expires REAL,                   -- epoch: no attempt after this
    attempt INTEGER NOT NULL,
    status TEXT NOT NULL,           -- pending | done | expired
    visible_at REAL NOT NULL,       -- epoch: may be claimed from then (a claim moves it: the lease)
    lease TEXT,                     -- the token of the claim in force, if any
    finished REAL,                  -- epoch: when done or expired
    last_error TEXT,
    UNIQUE (queue, filtered_id));
CREATE INDEX IF NOT EXISTS retry_ready ON retry (status, queue, visible_at);
CREATE INDEX IF NOT EXISTS retry_finished ON retry (status, finished);
CREATE TABLE IF NOT EXISTS received (
    source TEXT NOT NULL,           -- <protocol>:<interface>
    message_id TEXT NOT NULL,
    handled REAL,                   -- epoch: when its handler succeeded; NULL while it has only failed
    failures INTEGER NOT NULL,      -- handler runs that failed
    last_error TEXT,
    changed REAL NOT NULL,          -- epoch: kept until changed + the interface's window
    PRIMARY KEY (source, message_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS received_changed ON received (source, changed);
"""


# --- operations: what a write does, as data (so a prepared branch can keep it) ------------------


def key_bytes(key: str) -> bytes:
    if not isinstance(key, str):
        raise StateError(f"a state key must be a str, not {type(key).__name__}", recoverable=True)
    return key.encode("utf-8", "surrogatepass")


def set_op(module: str, key: str, value: Any) -> tuple[Any, ...]:
    try:
        blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:
        raise StateError(f"the value of state key {key!r} cannot be pickled: {e}") from None
    return ("set", module, key_bytes(key), blob)


def delete_op(module: str, key: str) -> tuple[Any, ...]:
    return ("delete", module, key_bytes(key))


# enqueue: ("enqueue", {column: value} of a retry row); its result is True, or False for a duplicate
ENQUEUE_COLUMNS = ("queue", "filtered_id", "rt_id", "target", "module", "method", "payload", "start",
                   "expires", "attempt", "status", "visible_at")
_INSERT = (f"INSERT OR IGNORE INTO retry ({', '.join(ENQUEUE_COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(ENQUEUE_COLUMNS))})")


def apply_op(db: sqlite3.Connection, op: tuple[Any, ...]) -> Any:
    kind = op[0]
    if kind == "set":
        db.execute("INSERT OR REPLACE INTO kv (module, key, value) VALUES (?, ?, ?)", op[1:])
        return None
    if kind == "delete":
        db.execute("DELETE FROM kv WHERE module = ? AND key = ?", op[1:])
        return None
    if kind == "enqueue":
        row = op[1]
        return db.execute(_INSERT, [row[c] for c in ENQUEUE_COLUMNS]).rowcount == 1
    raise ValueError(f"unknown state operation {kind!r}")


def apply_ops(ops: list[tuple[Any, ...]]) -> Callable[[sqlite3.Connection], list[Any]]:
    return lambda db: [apply_op(db, op) for op in ops]


# --- the store -------------------------------------------------------------------------------------


class _Job:
    __slots__ = ("deadline", "durable", "error", "fn", "result", "taken", "written")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], durable: bool, deadline: float | None) -> None:
        self.fn, self.durable, self.deadline = fn, durable, deadline
        self.result: Any = None
        self.error: BaseException | None = None
        self.taken = False  # in a group being written
        self.written = False


class StateStore:
    """The cage's state file: reads on pooled connections, writes through the group writer."""

    def __init__(self, path: str, *, minimum_free_space: int = MINIMUM_FREE_SPACE, schema: str = SCHEMA) -> None:
        self.path, self.schema = path, schema
        self.minimum_free_space = minimum_free_space
        self._lock = threading.Lock()  # opening, the reader list
        self._writer: sqlite3.Connection | None = None
        self._readers: list[sqlite3.Connection] = []
        self._cond = threading.Condition(threading.Lock())  # the group writer
        self._waiting: list[_Job] = []
        self._writing = False
        self.listeners: list[Callable[[], None]] = []  # called after a write that enqueued retried calls

    # --- opening -------------------------------------------------------------------------------

    def check(self) -> None:
        """At cage start: open an existing file and check it, so that a damaged one stops
        the cage (StateCorruptError). A file that cannot be opened (a read-only folder)
        is left for each use to report."""
        if os.path.exists(self.path):
            try:
                self._open_writer()
            except StateCorruptError:
                raise
            except StateError:
                pass

    @property
    def exists(self) -> bool:
        return self._writer is not None or os.path.exists(self.path)

    def _open_writer(self) -> sqlite3.Connection:
        with self._lock:
            if self._writer is None:
                self._writer = self._connect(check=True)
            return self._writer

    def _connect(self, *, check: bool = False) -> sqlite3.Connection:
        try:
            existed = os.path.exists(self.path)
            _make_private(self.path)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT)
            try:
                _enter_wal(db)
                db.execute("PRAGMA synchronous=FULL")
                if check and existed:
                    verdict = db.execute("PRAGMA quick_check").fetchone()[0]
                    if verdict != "ok":
                        raise StateCorruptError(f"state file {self.path} is damaged ({verdict}); the cage will "
                                                f"not use it: restore it from a backup or move it away")
                if check:
                    db.executescript(self.schema)
            except BaseException:
                db.close()
                raise
        except sqlite3.Error as e:
            raise storage_error(e, self.path) from None
        except OSError as e:
            raise StateError(f"state file {self.path} cannot be opened: {e}") from None
        return db

    # --- reading ---------------------------------------------------------------------------------

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A connection to read with (committed data; never blocked by the writer)."""
        self._open_writer()  # the schema exists, the file is checked
        with self._lock:
            db = self._readers.pop() if self._readers else None
        if db is None:
            db = self._connect()
        try:
            yield db
        except sqlite3.Error as e:
            db.close()
            db = None
            raise storage_error(e, self.path) from None
        finally:
            if db is not None:
                with self._lock:
                    self._readers.append(db)

    def get(self, module: str, key: str, default: Any = None) -> Any:
        with self.reading() as db:
            row = db.execute("SELECT value FROM kv WHERE module = ? AND key = ?",
                             (module, key_bytes(key))).fetchone()
        return default if row is None else pickle.loads(row[0])

    # --- writing ---------------------------------------------------------------------------------

    def apply(self, ops: list[tuple[Any, ...]]) -> list[Any]:
        """Apply operations atomically and durably; their results, in order."""
        results: list[Any] = self.transact(apply_ops(ops))
        self._enqueued(ops, results)
        return results

    def _enqueued(self, ops: list[tuple[Any, ...]], results: list[Any]) -> None:
        """After a write: the engine is woken for retried calls queued, duplicates are told."""
        queued = False
        for op, result in zip(ops, results, strict=True):
            if op[0] != "enqueue":
                continue
            queued = True
            if not result:
                row = op[1]
                log.warning(f"retried call {row['module']}.{row['method']} with id {row['filtered_id']} is a "
                            f"duplicate of one queued in {row['queue']} before, dropped")
        if queued:
            self.notify()

    def notify(self) -> None:
        for listener in list(self.listeners):
            listener()

    def transact(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        """`fn(db)` inside a write transaction, committed (and fsynced, if `durable`) when
        this returns. Bounded by the current request's deadline while it waits its turn."""
        request = _request.current()
        job = _Job(fn, durable, request.deadline)
        with self._cond:
            self._waiting.append(job)
            while not job.written and self._writing:
                timeout = None
                if not job.taken and job.deadline is not None:  # once taken, its write is under way
                    timeout = job.deadline - _request.monotonic()
                    if timeout <= 0:
                        self._waiting.remove(job)
                        raise StateError("request deadline waiting to write the state; nothing has been written")
                self._cond.wait(timeout)
            if not job.written:  # nobody is writing: this thread writes all that waits
                self._writing, batch, self._waiting = True, self._waiting, []
                for taken in batch:
                    taken.taken = True
        if not job.written:
            try:
                self._write(batch)
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[no-any-return]

    def _write(self, batch: list[_Job]) -> None:
        durable = any(job.durable for job in batch)
        try:
            if durable:
                self._check_space()
            db = self._open_writer()
            deadlines = [job.deadline for job in batch if job.deadline is not None]
            wait = BUSY_TIMEOUT if not deadlines else max(min(deadlines) - _request.monotonic(), 0.05)
            db.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
            db.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            db.execute("BEGIN IMMEDIATE")
            try:
                for job in batch:
                    self._run_job(db, job)
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
        except Exception as e:
            if isinstance(e, StateError):
                error = e
            else:
                self._reset_writer()
                error = storage_error(e, self.path) if isinstance(e, sqlite3.Error) else \
                    StateError(f"state {self.path} cannot be written: {exc_string(e, stack=False)}")
            for job in batch:
                job.error, job.result = error, None
        finally:
            with self._cond:
                for job in batch:
                    job.written = True

    @staticmethod
    def _run_job(db: sqlite3.Connection, job: _Job) -> None:
        """One job in a savepoint: its own failure (bad data) undoes only its work;
        the storage's (disk full, I/O) undoes the whole group."""
        db.execute("SAVEPOINT job")
        try:
            job.result = job.fn(db)
        except sqlite3.OperationalError:
            raise
        except (sqlite3.Error, ValueError, TypeError, StateError) as e:
            db.execute("ROLLBACK TO job")
            job.error = e if isinstance(e, StateError) else StateError(f"state write refused: {e}")
        db.execute("RELEASE job")

    def _check_space(self) -> None:
        try:
            free = shutil.disk_usage(os.path.dirname(self.path)).free
        except OSError:
            return  # the folder itself is missing or unreadable: opening says so
        if free < self.minimum_free_space:
            raise StateError(f"state {self.path}: only {free // 1024} KB free on its disk, less than "
                             f"minimum_free_space ({self.minimum_free_space // 1024} KB); state writes are "
                             f"refused until there is room")

    def _reset_writer(self) -> None:
        """After a storage failure the connection may be in any state: open anew next time."""
        with self._lock:
            writer, self._writer = self._writer, None
            readers, self._readers = self._readers, []
        for db in [writer, *readers]:
            if db is not None:
                try:
                    db.close()
                except sqlite3.Error:
                    pass

    # --- two-phase branches --------------------------------------------------------------------

    def prepare(self, branch: str, ops: list[tuple[Any, ...]]) -> None:
        blob = pickle.dumps(ops, protocol=pickle.HIGHEST_PROTOCOL)
        self.transact(lambda db: db.execute("INSERT INTO prepared (branch, ops, prepared) VALUES (?, ?, ?)",
                                            (branch, blob, time.time())))

    def finish_prepared(self, branch: str, commit: bool) -> None:
        def finish(db: sqlite3.Connection) -> tuple[list[tuple[Any, ...]], list[Any]]:
            row = db.execute("SELECT ops FROM prepared WHERE branch = ?", (branch,)).fetchone()
            if row is None:
                return [], []
            db.execute("DELETE FROM prepared WHERE branch = ?", (branch,))
            if not commit:
                return [], []
            ops = pickle.loads(row[0])
            return ops, [apply_op(db, op) for op in ops]

        self._enqueued(*self.transact(finish))

    def in_doubt(self, prefix: str) -> list[str]:
        if not self.exists:
            return []
        with self.reading() as db:
            rows = db.execute("SELECT branch FROM prepared WHERE substr(branch, 1, ?) = ?",
                              (len(prefix), prefix)).fetchall()
        return [row[0] for row in rows]

    def close(self) -> None:
        self._reset_writer()


def _make_private(path: str) -> None:
    """The state folder and file for the owner only: made so, or put right if they exist."""
    folder = os.path.dirname(path)
    os.makedirs(folder, FOLDER_MODE, exist_ok=True)
    _chmod(folder, FOLDER_MODE)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        pass
    for file in (path, path + "-wal", path + "-shm"):
        _chmod(file, FILE_MODE)


def _chmod(path: str, mode: int) -> None:
    """Take away what `mode` does not allow; never add."""
    try:
        current = os.stat(path).st_mode & 0o777
        if current & ~mode:
            os.chmod(path, current & mode)
    except OSError:  # missing, or another user's: not a reason to refuse the file
        pass


def _enter_wal(db: sqlite3.Connection) -> None:
    """Switch a new file to WAL. SQLite answers "busy" at once, without waiting, while
    another connection (another instance of the cage) is creating the file: so wait
    here, within the request's deadline."""
    request = _request.current()
    give_up = _request.monotonic() + (BUSY_TIMEOUT if request.deadline is None else request.remain)
    pause = 0.001
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if getattr(e, "sqlite_errorname", "") != "SQLITE_BUSY" or _request.monotonic() + pause > give_up:
                raise
        time.sleep(pause)  # a backoff on a lock held by another process: no event to wait for
        pause = min(pause * 2, 0.05)


def _rollback(db: sqlite3.Connection) -> None:
    try:
        db.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def storage_error(e: sqlite3.Error, path: str) -> StateError:
    """What the caller is told when SQLite fails: the cause in the words an operator acts on."""
    name = getattr(e, "sqlite_errorname", "")
    if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or "malformed" in str(e) or "not a database" in str(e):
        return StateCorruptError(f"state file {path} is damaged ({e}); restore it from a backup or move it away")
    if name == "SQLITE_FULL" or "full" in str(e):
        return StateError(f"state {path} cannot be written: the disk is full ({e}); nothing of this write "
                          f"has been kept")
    if name.startswith("SQLITE_READONLY") or name == "SQLITE_CANTOPEN" or "readonly" in str(e):
        return StateError(f"state {path} cannot be used: the file or its folder is read-only or cannot "
                          f"be opened ({e})")
    if name == "SQLITE_BUSY" or "locked" in str(e):
        return StateError(f"state {path} is being written by another process for too long ({e})")
    return StateError(f"state {path} cannot be used: {e}")


# --- what cage modules see ------------------------------------------------------------------------


class ModuleState:
    """`pmnc.state` of one module: its own namespace; each call is its own durable transaction."""

    def __init__(self, store: Callable[[], StateStore], module: str) -> None:
        self._store, self._module = store, module

    def get(self, key: str, default: Any = None) -> Any:
        """The value stored under `key`, or `default` if there is none (a stored None is None)."""
        return self._store().get(self._module, key, default)

    def set(self, key: str, value: Any) -> None:
        """Store `value` under `key`: on disk when this returns."""
        self._store().apply([set_op(self._module, key, value)])

    def delete(self, key: str) -> None:
        self._store().apply([delete_op(self._module, key)])

    # the original's raw BerkeleyDB API, which pmnc does not have: one log line says what to do
    def get_database(self, *args: Any, **kwargs: Any) -> Any:
        raise _no_raw_state("get_database")

    def get_queue(self, *args: Any, **kwargs: Any) -> Any:
        raise _no_raw_state("get_queue")

    def implicit_transaction(self, *args: Any, **kwargs: Any) -> Any:
        raise _no_raw_state("implicit_transaction")

    def explicit_transaction(self, *args: Any, **kwargs: Any) -> Any:
        raise _no_raw_state("explicit_transaction")

    def start_transaction(self, *args: Any, **kwargs: Any) -> Any:
        raise _no_raw_state("start_transaction")

    def __repr__(self) -> str:
        return f"<state of module {self._module}>"


_RAW_STATE_ADVICE = ("pmnc keeps the state in SQLite, not BerkeleyDB: use pmnc.state.get/set/delete "
                     "(one durable write each), xa.state.get/set/delete inside pmnc.transaction for "
                     "several at once, and pmnc.shared_queues or retried calls (pmnc(queue=...)) "
                     "where a BerkeleyDB queue was used")
_told: set[str] = set()


def _no_raw_state(name: str) -> NotAvailableError:
    """The error for the original's raw state API, logged once per name in a process."""
    text = f"pmnc.state.{name}() is the original's raw BerkeleyDB API, which pmnc does not have: {_RAW_STATE_ADVICE}"
    if name not in _told:
        _told.add(name)
        log.error(text)
    return NotAvailableError(text)


class BufferedResource(Resource):
    """A participant whose writes wait in memory for the decision: one short durable write
    at commit (or, in a two-phase commit, a prepared branch kept in the file) - the state
    file is never held open for writing while other participants work."""

    transactional = True
    inline = True  # every wait is bounded by the deadline: a one-call transaction runs on the caller's thread
    preparable = True

    def __init__(self, name: str, config: dict[str, Any], store: StateStore) -> None:
        super().__init__(name, config)
        self.store = store
        self.module = ""
        self.ops: list[tuple[Any, ...]] = []
        self.branch: str | None = None
        self.prepared = False

    def begin_transaction(self, xid: str, *, source_module_name: str, transaction_options: dict[str, Any],
                          resource_args: tuple[Any, ...], resource_kwargs: dict[str, Any]) -> None:
        self.module, self.ops = source_module_name, []
        self.branch, self.prepared = transaction_options.get("branch"), False

    def commit(self) -> None:
        ops, self.ops = self.ops, []
        if self.prepared:
            assert self.branch is not None
            self.store.finish_prepared(self.branch, True)
        elif ops:
            self.store.apply(ops)

    def rollback(self) -> None:
        self.ops = []
        if self.prepared:
            assert self.branch is not None
            self.store.finish_prepared(self.branch, False)

    def prepare(self) -> None:
        assert self.branch is not None
        self.store.prepare(self.branch, self.ops)
        self.prepared = True

    def in_doubt(self, prefix: str) -> list[str]:
        return self.store.in_doubt(prefix)

    def finish_prepared(self, branch: str, commit: bool) -> None:
        self.store.finish_prepared(branch, commit)


class StateResource(BufferedResource):
    """`xa.state.set(key, value)`, `xa.state.delete(key)`, `xa.state.get(key)` (what is
    committed; the transaction's own writes are not seen before it commits)."""

    def get(self, key: str, default: Any = None) -> Any:
        return self.store.get(self.module, key, default)

    def set(self, key: str, value: Any) -> None:
        self.ops.append(set_op(self.module, key, value))

    def delete(self, key: str) -> None:
        self.ops.append(delete_op(self.module, key))


def store_path(cage_dir: str) -> str:
    return os.path.join(cage_dir, "state", FILE_NAME)
