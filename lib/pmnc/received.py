"""What a message interface has received: which messages its handler has succeeded with, and
how often it failed with the others, kept in the cage's state so that a restart remembers.

A broker (or a mailbox) delivers at least once: a message whose handler succeeded may come
again when the acknowledgement was lost (the connection dropped in between, the cage was
killed). An interface asks `lookup(id)` before running the handler and records
`mark_handled(ids)` after it succeeded (several at once, to write less often); a copy that
comes again is then acknowledged without running the handler. `failed(id, error)` counts a message's failures, so that a
poison message is set aside after a bounded number of attempts, across restarts too.

Entries are kept for `window` seconds after their last change (`forget_old` drops older
ones). Writes are not fsynced (`durable=False`): they survive the cage's process being
killed, which is what redelivers; a machine crash may cost a repeat, no more. A caller that
must not repeat even then asks `mark_handled(ids, durable=True)` (POP3 does, once per poll,
before QUIT commits the deletions).
"""

from __future__ import annotations

import sqlite3
import time
from typing import NamedTuple

from pmnc.state import StateStore

LOOKUP_CHUNK = 500  # ids per query (SQLite bounds the parameters of one statement)


class Entry(NamedTuple):
    handled: bool  # its handler has succeeded
    failures: int  # handler runs that failed
    last_error: str


class Received:
    """The received messages of one interface (`source` is `<protocol>:<interface>`)."""

    def __init__(self, store: StateStore, source: str, window: float) -> None:
        self.store, self.source, self.window = store, source, window

    def lookup(self, message_id: str) -> Entry | None:
        """What is known of the message within the window, if anything."""
        with self.store.reading() as db:
            row = db.execute("SELECT handled, failures, last_error FROM received WHERE source = ? AND message_id = ?",
                             (self.source, message_id)).fetchone()
        return None if row is None else Entry(row[0] is not None, int(row[1]), row[2] or "")

    def lookup_many(self, message_ids: list[str]) -> dict[str, Entry]:
        """What is known of each of these messages within the window (those known only): one
        read for a whole mailbox listing rather than one per message."""
        known: dict[str, Entry] = {}
        with self.store.reading() as db:
            for i in range(0, len(message_ids), LOOKUP_CHUNK):
                chunk = message_ids[i:i + LOOKUP_CHUNK]
                rows = db.execute(f"SELECT message_id, handled, failures, last_error FROM received WHERE source = ? "
                                  f"AND message_id IN ({', '.join('?' * len(chunk))})", (self.source, *chunk))
                for message_id, handled, failures, last_error in rows:
                    known[message_id] = Entry(handled is not None, int(failures), last_error or "")
        return known

    def mark_handled(self, message_ids: list[str], *, durable: bool = False) -> None:
        """Record that the handler has succeeded with these messages (one write for all);
        `durable`: fsynced, so that a machine crash keeps it too (and every write before it)."""
        now = time.time()
        rows = [(self.source, message_id, now, now) for message_id in message_ids]

        def mark(db: sqlite3.Connection) -> None:
            db.executemany("INSERT INTO received (source, message_id, handled, failures, changed) "
                           "VALUES (?, ?, ?, 0, ?) ON CONFLICT (source, message_id) DO UPDATE SET "
                           "handled = excluded.handled, changed = excluded.changed", rows)

        self.store.transact(mark, durable=durable)

    def failed(self, message_id: str, error: str) -> int:
        """Count one more failure of the message's handler; the count so far."""
        now = time.time()

        def count(db: sqlite3.Connection) -> int:
            db.execute("INSERT INTO received (source, message_id, handled, failures, last_error, changed) "
                       "VALUES (?, ?, NULL, 1, ?, ?) ON CONFLICT (source, message_id) DO UPDATE SET "
                       "failures = failures + 1, last_error = excluded.last_error, changed = excluded.changed",
                       (self.source, message_id, error, now))
            row = db.execute("SELECT failures FROM received WHERE source = ? AND message_id = ?",
                             (self.source, message_id)).fetchone()
            return int(row[0])

        return int(self.store.transact(count, durable=False))

    def forget(self, message_id: str) -> None:
        """Drop what is known of a message (set aside: it will not come again)."""
        self.store.transact(lambda db: db.execute("DELETE FROM received WHERE source = ? AND message_id = ?",
                                                  (self.source, message_id)), durable=False)

    def forget_old(self) -> int:
        """Drop entries older than the window; how many were dropped."""
        horizon = time.time() - self.window

        def drop(db: sqlite3.Connection) -> int:
            return db.execute("DELETE FROM received WHERE source = ? AND changed < ?",
                              (self.source, horizon)).rowcount

        return int(self.store.transact(drop, durable=False))
