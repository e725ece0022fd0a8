"""The two-phase commit decision log: a commit decision is on disk before phase 2 begins.

One SQLite file per cage instance, `cages/<cage>/state/<node>.transactions.sqlite`
(WAL, `synchronous=FULL`), opened on first use:

    resources   the resources ever used as branches of a two-phase commit:
                where recovery looks for branches left prepared
    decisions   one row per transaction decided to commit whose branches are
                not all committed yet: xid and its branches (resource, id)

Recovery (`transaction.recover_in_doubt`) commits a prepared branch whose
transaction has a row here, and rolls back any other (presumed abort: no
row means no commit was ever decided).

Decisions made at the same time share one write and one fsync (group
commit): the first to come writes every decision waiting, the others wait
for that write. Forgetting a decision need not be durable - a row that
outlives a crash only makes recovery find nothing to do - so it is not
synced.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time

Branch = tuple[str, str]  # (resource, branch id)


class DecisionLog:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()  # the database connections
        self._db: sqlite3.Connection | None = None  # durable writes
        self._lazy: sqlite3.Connection | None = None  # writes that need not be
        self._known: set[str] = set()  # resources already recorded
        # group commit
        self._group = threading.Condition(threading.Lock())
        self._waiting: list[tuple[str, str, float]] = []  # decisions not yet written
        self._next = 1  # the number of the group the waiting decisions will be written in
        self._written = 0  # the last group written (or failed)
        self._failures: dict[int, Exception] = {}
        self._writing = False

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            db = self._connect("FULL")
            db.execute("CREATE TABLE IF NOT EXISTS resources (name TEXT PRIMARY KEY)")
            db.execute("CREATE TABLE IF NOT EXISTS decisions (xid TEXT PRIMARY KEY, branches TEXT NOT NULL, "
                       "decided REAL NOT NULL)")
            self._known = {row[0] for row in db.execute("SELECT name FROM resources")}
            self._db, self._lazy = db, self._connect("NORMAL")
        return self._db

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        return db

    def remember_resource(self, name: str) -> None:
        if name in self._known:
            return
        with self._lock:
            self._open().execute("INSERT OR IGNORE INTO resources (name) VALUES (?)", (name,))
            self._known.add(name)

    def resources(self) -> list[str]:
        if not os.path.exists(self.path):
            return []
        with self._lock:
            return sorted(row[0] for row in self._open().execute("SELECT name FROM resources"))

    def decide_commit(self, xid: str, branches: list[Branch]) -> None:
        """Durable when it returns: phase 2 may begin."""
        with self._group:
            self._waiting.append((xid, json.dumps(branches), time.time()))
            group = self._next
            while self._written < group and self._writing:
                self._group.wait()
            if self._written < group:  # nobody is writing: this thread writes the group
                self._writing, batch, self._waiting = True, self._waiting, []
                self._next += 1
        if self._written < group:
            self._write_group(group, batch)
        with self._group:
            failure = self._failures.get(group)
        if failure is not None:
            raise failure

    def _write_group(self, group: int, batch: list[tuple[str, str, float]]) -> None:
        failure: Exception | None = None
        try:
            with self._lock:
                db = self._open()
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.executemany("INSERT INTO decisions (xid, branches, decided) VALUES (?, ?, ?)", batch)
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
        except Exception as e:
            failure = e
        with self._group:
            if failure is not None:
                self._failures[group] = failure
                for stale in [g for g in self._failures if g < group - 1000]:
                    del self._failures[stale]
            self._written, self._writing = group, False
            self._group.notify_all()

    def forget(self, xid: str) -> None:
        """Every branch has committed: nothing is left to recover."""
        with self._lock:
            self._open()
            assert self._lazy is not None
            self._lazy.execute("DELETE FROM decisions WHERE xid = ?", (xid,))

    def decisions(self) -> dict[str, list[Branch]]:
        if not os.path.exists(self.path):
            return {}
        with self._lock:
            rows = self._open().execute("SELECT xid, branches FROM decisions").fetchall()
        return {xid: [(str(r), str(b)) for r, b in json.loads(branches)] for xid, branches in rows}

    def close(self) -> None:
        with self._lock:
            for db in (self._db, self._lazy):
                if db is not None:
                    db.close()
            self._db = self._lazy = None
