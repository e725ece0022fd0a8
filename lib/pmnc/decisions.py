"""The two-phase commit decision log: a commit decision is on disk before phase 2 begins.

One SQLite file per cage, `cages/<cage>/state/transactions.sqlite` (WAL,
`synchronous=FULL`), opened on first use:

    resources   the resources ever used as branches of a two-phase commit:
                where recovery looks for branches left prepared
    decisions   one row per transaction decided to commit whose branches are
                not all committed yet: xid and its branches (resource, id)

Recovery (`transaction.recover_in_doubt`) commits a prepared branch whose
transaction has a row here, and rolls back any other (presumed abort: no
row means no commit was ever decided).
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
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._known: set[str] = set()  # resources already recorded

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("CREATE TABLE IF NOT EXISTS resources (name TEXT PRIMARY KEY)")
            db.execute("CREATE TABLE IF NOT EXISTS decisions (xid TEXT PRIMARY KEY, branches TEXT NOT NULL, "
                       "decided REAL NOT NULL)")
            self._known = {row[0] for row in db.execute("SELECT name FROM resources")}
            self._db = db
        return self._db

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
        with self._lock:
            self._open().execute("INSERT INTO decisions (xid, branches, decided) VALUES (?, ?, ?)",
                                 (xid, json.dumps(branches), time.time()))

    def forget(self, xid: str) -> None:
        """Every branch has committed: nothing is left to recover."""
        with self._lock:
            self._open().execute("DELETE FROM decisions WHERE xid = ?", (xid,))

    def decisions(self) -> dict[str, list[Branch]]:
        if not os.path.exists(self.path):
            return {}
        with self._lock:
            rows = self._open().execute("SELECT xid, branches FROM decisions").fetchall()
        return {xid: [(str(r), str(b)) for r, b in json.loads(branches)] for xid, branches in rows}

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
