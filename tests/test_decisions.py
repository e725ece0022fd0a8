"""The two-phase commit decision log: durable decisions, group commit, what recovery reads."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from pmnc.decisions import DecisionLog
from pmnc.errors import StateError


def test_decisions_survive_a_reopen_until_forgotten(tmp_path: Path) -> None:
    log = DecisionLog(str(tmp_path / "state" / "transactions.sqlite"))
    assert log.decisions() == {} and log.resources() == []  # nothing made before the first use
    assert not (tmp_path / "state").exists()
    log.remember_resource("db1")
    log.remember_resource("db1")
    log.decide_commit("XA-1", [("db1", "pmnc:c:XA-1:0"), ("db2", "pmnc:c:XA-1:1")])
    log.close()
    again = DecisionLog(log.path)
    assert again.resources() == ["db1"]
    assert again.decisions() == {"XA-1": [("db1", "pmnc:c:XA-1:0"), ("db2", "pmnc:c:XA-1:1")]}
    again.forget("XA-1")
    assert again.decisions() == {}
    with sqlite3.connect(log.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_concurrent_decisions_are_all_written_in_few_fsyncs(tmp_path: Path) -> None:
    log = DecisionLog(str(tmp_path / "transactions.sqlite"))
    log.decide_commit("warm-up", [])
    groups: list[int] = []
    store = log._store
    write = store._write

    def counting(batch: list[Any]) -> None:
        groups.append(len(batch))
        write(batch)

    store._write = counting  # type: ignore[method-assign]
    barrier = threading.Barrier(32)

    def decide(i: int) -> None:
        barrier.wait()
        log.decide_commit(f"XA-{i}", [("db", f"b{i}")])

    threads = [threading.Thread(target=decide, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(log.decisions()) == 33
    assert sum(groups) == 32 and len(groups) < 32, "some decisions shared a write"


def test_a_failed_decision_fails_alone(tmp_path: Path) -> None:
    log = DecisionLog(str(tmp_path / "transactions.sqlite"))
    log.decide_commit("XA-1", [])
    with pytest.raises(StateError, match="UNIQUE"):  # the same xid twice: the write fails, and says so
        log.decide_commit("XA-1", [])
    log.decide_commit("XA-2", [])  # and the log goes on
    assert set(log.decisions()) == {"XA-1", "XA-2"}
