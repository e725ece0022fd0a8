"""The two-phase commit decision log: a commit decision is on disk before phase 2 begins.

One SQLite file per cage instance, `cages/<cage>/state/<node>.transactions.sqlite`,
written through the state's group-committing writer (state.StateStore: WAL,
fsynced, decisions made at the same time share one write; mode 0600 in the
0700 state/ folder), made on first use:

    resources   the resources ever used as branches of a two-phase commit:
                where recovery looks for branches left prepared
    decisions   one row per transaction decided to commit whose branches are
                not all committed yet: xid and its branches (resource, id)

Recovery (`transaction.recover_in_doubt`) commits a prepared branch whose
transaction has a row here, and rolls back any other (presumed abort: no
row means no commit was ever decided). Forgetting a decision need not be
durable - a row that outlives a crash only makes recovery find nothing to
do - so it is not synced.
"""

from __future__ import annotations

import json
import os
import time

from pmnc.state import StateStore

Branch = tuple[str, str]  # (resource, branch id)

SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS decisions (xid TEXT PRIMARY KEY, branches TEXT NOT NULL, decided REAL NOT NULL);
"""


class DecisionLog:
    def __init__(self, path: str) -> None:
        self.path = path
        # the decision must be written even with the disk nearly full: it is what lets
        # prepared branches commit rather than hang
        self._store = StateStore(path, minimum_free_space=0, schema=SCHEMA)
        self._known: set[str] = set()  # resources already recorded

    def remember_resource(self, name: str) -> None:
        if name in self._known:
            return
        self._store.transact(lambda db: db.execute("INSERT OR IGNORE INTO resources (name) VALUES (?)", (name,)))
        self._known.add(name)

    def resources(self) -> list[str]:
        if not os.path.exists(self.path):
            return []
        with self._store.reading() as db:
            return sorted(row[0] for row in db.execute("SELECT name FROM resources"))

    def decide_commit(self, xid: str, branches: list[Branch]) -> None:
        """Durable when it returns: phase 2 may begin."""
        row = (xid, json.dumps(branches), time.time())
        self._store.transact(lambda db: db.execute("INSERT INTO decisions (xid, branches, decided) "
                                                   "VALUES (?, ?, ?)", row))

    def forget(self, xid: str) -> None:
        """Every branch has committed: nothing is left to recover."""
        self._store.transact(lambda db: db.execute("DELETE FROM decisions WHERE xid = ?", (xid,)), durable=False)

    def decisions(self) -> dict[str, list[Branch]]:
        if not os.path.exists(self.path):
            return {}
        with self._store.reading() as db:
            rows = db.execute("SELECT xid, branches FROM decisions").fetchall()
        return {xid: [(str(r), str(b)) for r, b in json.loads(branches)] for xid, branches in rows}

    def close(self) -> None:
        self._store.close()
