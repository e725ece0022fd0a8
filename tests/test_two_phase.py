"""Two-phase commit across two PostgreSQL databases: the decision log, recovery, crashes.

In-process cages for the protocol itself; real `startup.py` processes killed
with SIGKILL between the phases for recovery: afterwards both databases must
agree, and no branch may stay prepared.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import Cluster, InProcessCage, config_source, http_config, http_request, module_source, wait_until
from pg_peer import PgServer
from pmnc.decisions import DecisionLog
from pmnc.errors import SQLResourceError, TransactionCommitError, TransactionExecutionError
from pmnc.request import Request
from pmnc.transaction import branch_prefix, recover_in_doubt

# A resource that cannot prepare, to be the last resource: it appends its calls to
# a file at commit and fails on demand (config fail_commit=True).
LAST_RESOURCE = module_source("""
    from pmnc.resource import Resource as _Base

    class Resource(_Base):
        def __init__(self, name, config):
            super().__init__(name, config)
            self.path, self.fail = config.pop("path"), config.pop("fail_commit", False)
            config.pop("resource_name", None)
            self.pending = []

        def note(self, text):
            self.pending.append(text)

        def commit(self):
            if self.fail:
                raise RuntimeError("the last resource cannot commit")
            with open(self.path, "a") as f:
                f.writelines(line + "\\n" for line in self.pending)
            self.pending = []

        def rollback(self):
            self.pending = []
""", ["Resource"])


@pytest.fixture
def tables(pg: PgServer) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    for database in ("db1", "db2"):
        pg.query(f"CREATE TABLE {name} (id int PRIMARY KEY)", database)
    yield name
    for database in ("db1", "db2"):
        pg.query(f"DROP TABLE {name}", database)


def rows(pg: PgServer, table: str) -> tuple[list[Any], list[Any]]:
    return ([r[0] for r in pg.query(f"SELECT id FROM {table} ORDER BY id", "db1")],
            [r[0] for r in pg.query(f"SELECT id FROM {table} ORDER BY id", "db2")])


def prepared(pg: PgServer) -> list[str]:
    return [r[0] for r in pg.query("SELECT gid FROM pg_prepared_xacts", "postgres")]


def start(in_process_cage: Callable[..., InProcessCage], pg: PgServer, tmp_path: Path,
          **last: Any) -> InProcessCage:
    return in_process_cage(files={
        "config_resource_db1.py": config_source(dict(pg.config("db1"), pool__size=4)),
        "config_resource_db2.py": config_source(dict(pg.config("db2"), pool__size=4)),
        "protocol_lastres.py": LAST_RESOURCE,
        "config_resource_last.py": config_source({"protocol": "lastres", "path": str(tmp_path / "last.txt"),
                                                  **last}),
    })


def test_both_databases_commit_and_nothing_stays_prepared(
        in_process_cage: Callable[..., InProcessCage], pg: PgServer, tables: str,
        attach: Callable[[float], Request]) -> None:
    cage = start(in_process_cage, pg, Path("/nonexistent"))
    transaction = cage.cage.runtime.root.transaction
    attach(5.0)
    xa = transaction.create(two_phase=True)
    xa.db1.execute(f"INSERT INTO {tables} (id) VALUES (1)")
    xa.db2.execute(f"INSERT INTO {tables} (id) VALUES (1)")
    assert xa.execute() == (([],), ([],))
    assert rows(pg, tables) == ([1], [1])
    assert prepared(pg) == []
    decisions = cage.cage.runtime.resources.decisions
    assert decisions.decisions() == {} and decisions.resources() == ["db1", "db2"]


def test_a_failing_participant_rolls_every_branch_back(
        in_process_cage: Callable[..., InProcessCage], pg: PgServer, tables: str, tmp_path: Path,
        attach: Callable[[float], Request]) -> None:
    transaction = start(in_process_cage, pg, tmp_path).cage.runtime.root.transaction
    attach(5.0)
    pg.query(f"INSERT INTO {tables} (id) VALUES (7)", "db2")
    xa = transaction.create(two_phase=True)
    xa.db1.execute(f"INSERT INTO {tables} (id) VALUES (7)")
    xa.db2.execute(f"INSERT INTO {tables} (id) VALUES (7)")  # a duplicate there
    with pytest.raises(SQLResourceError) as info:
        xa.execute()
    assert info.value.participant_index == 1
    assert rows(pg, tables) == ([], [7]) and prepared(pg) == []


def test_a_branch_that_cannot_prepare_rolls_the_prepared_ones_back(
        in_process_cage: Callable[..., InProcessCage], pg: PgServer, tables: str, tmp_path: Path,
        attach: Callable[[float], Request]) -> None:
    transaction = start(in_process_cage, pg, tmp_path).cage.runtime.root.transaction
    attach(5.0)
    xa = transaction.create(two_phase=True)
    xa.db1.execute(f"INSERT INTO {tables} (id) VALUES (1)")
    # PostgreSQL cannot prepare a transaction that has used a temporary table
    xa.db2.execute("CREATE TEMP TABLE scratch (x int)", f"INSERT INTO {tables} (id) VALUES (1)")
    with pytest.raises(TransactionExecutionError, match="failed to prepare") as info:
        xa.execute()
    assert info.value.participant_index == 1
    wait_until(lambda: prepared(pg) == [], 5.0, message="no branch left prepared")
    assert rows(pg, tables) == ([], [])


def test_one_participant_that_cannot_prepare_commits_last(
        in_process_cage: Callable[..., InProcessCage], pg: PgServer, tables: str, tmp_path: Path,
        attach: Callable[[float], Request]) -> None:
    transaction = start(in_process_cage, pg, tmp_path).cage.runtime.root.transaction
    attach(5.0)
    xa = transaction.create(two_phase=True)
    xa.db1.execute(f"INSERT INTO {tables} (id) VALUES (1)")
    xa.last.note("one")
    xa.db2.execute(f"INSERT INTO {tables} (id) VALUES (1)")
    xa.execute()
    assert rows(pg, tables) == ([1], [1])
    assert (tmp_path / "last.txt").read_text() == "one\n"
    xa = transaction.create(two_phase=True)  # two that cannot prepare: refused at once
    xa.last.note("a")
    xa.last.note("b")
    with pytest.raises(TransactionExecutionError, match="one participant that cannot prepare"):
        xa.execute()


def test_a_failing_last_resource_rolls_the_branches_back(
        in_process_cage: Callable[..., InProcessCage], pg: PgServer, tables: str, tmp_path: Path,
        attach: Callable[[float], Request]) -> None:
    transaction = start(in_process_cage, pg, tmp_path, fail_commit=True).cage.runtime.root.transaction
    attach(5.0)
    xa = transaction.create(two_phase=True)
    xa.db1.execute(f"INSERT INTO {tables} (id) VALUES (1)")
    xa.db2.execute(f"INSERT INTO {tables} (id) VALUES (1)")
    xa.last.note("never")
    with pytest.raises(TransactionCommitError, match="last resource"):
        xa.execute()
    wait_until(lambda: prepared(pg) == [], 5.0, message="no branch left prepared")
    assert rows(pg, tables) == ([], []) and not (tmp_path / "last.txt").exists()


# --- crashes between the phases, with real cage processes --------------------------------------------

# The handler runs one two-phase transaction; ?crash=before-decision kills the cage
# (SIGKILL, no cleanup) after both branches prepared but before the decision is
# logged, ?crash=after-decision right after it is logged, before phase 2.
CRASHING_HANDLER = module_source("""
    import os
    import signal
    from urllib.parse import parse_qs, urlsplit

    from pmnc.decisions import DecisionLog

    def process_request(request, response):
        query = parse_qs(urlsplit(request["url"]).query)
        crash, table, key = query.get("crash", [""])[0], query["table"][0], int(query["id"][0])
        original = DecisionLog.decide_commit

        def decide_commit(self, xid, branches):
            if crash == "before-decision":
                os.kill(os.getpid(), signal.SIGKILL)
            original(self, xid, branches)
            if crash == "after-decision":
                os.kill(os.getpid(), signal.SIGKILL)

        DecisionLog.decide_commit = decide_commit
        try:
            xa = pmnc.transaction.create(two_phase=True)
            xa.db1.execute(f"INSERT INTO {table} (id) VALUES ({{id}})", id=key)
            xa.db2.execute(f"INSERT INTO {table} (id) VALUES ({{id}})", id=key)
            xa.execute()
        finally:
            DecisionLog.decide_commit = original
        response["content"] = "committed"
        response["headers"]["content-type"] = "text/plain"
""", ["process_request"])


@pytest.mark.parametrize("crash, committed", [("before-decision", False), ("after-decision", True)])
def test_a_cage_killed_between_the_phases_leaves_both_databases_consistent(
        cluster: Cluster, pg: PgServer, tables: str, crash: str, committed: bool) -> None:
    cluster.cage("bank", {
        "config_resource_db1.py": config_source(pg.config("db1")),
        "config_resource_db2.py": config_source(pg.config("db2")),
        "config_interface_http.py": config_source(http_config()),
        "interface_http.py": CRASHING_HANDLER,
    }, interfaces=("http",))
    bank = cluster.start("bank")
    port = bank.port("http")
    assert http_request(port, f"/?table={tables}&id=1")[0] == 200  # a normal one first
    with pytest.raises(Exception):  # noqa: B017 - the connection dies with the cage
        http_request(port, f"/?table={tables}&id=2&crash={crash}")
    assert len(prepared(pg)) == 2, "both branches were prepared when the cage died"
    # the supervisor restarts the cage; recovery at its start finishes the branches
    bank.wait_for_log("the cage is ready", count=2, timeout=30.0)
    assert prepared(pg) == []
    expected = [1, 2] if committed else [1]
    assert rows(pg, tables) == (expected, expected)
    bank.wait_for_log(rf"recovery: branch pmnc:\S+\.bank:XA-\S+ of resource db1 has been "
                      rf"{'committed' if committed else 'rolled back'}")
    assert list((bank.cage_dir / "state").glob("*.transactions.sqlite"))


def test_a_branch_whose_connection_is_killed_before_prepare_rolls_all_back(
        in_process_cage: Callable[..., InProcessCage], pg: PgServer, tables: str, tmp_path: Path,
        attach: Callable[[float], Request]) -> None:
    transaction = start(in_process_cage, pg, tmp_path).cage.runtime.root.transaction
    attach(10.0)
    xa = transaction.create(two_phase=True)
    xa.db1.execute(f"INSERT INTO {tables} (id) VALUES (1)")
    xa.db2.execute(f"INSERT INTO {tables} (id) VALUES (1)", "SELECT pg_sleep(1)")
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(_raises(xa.execute)))
    worker.start()
    idle = ("SELECT pid FROM pg_stat_activity WHERE datname = 'db1' AND state = 'idle in transaction'")
    [[pid]] = wait_until(lambda: pg.query(idle, "postgres"), 5.0, message="db1's branch waiting for the decision")
    pg.admin(f"SELECT pg_terminate_backend({pid})")
    worker.join(15.0)
    assert isinstance(outcome[0], TransactionExecutionError) and "failed to prepare" in str(outcome[0])
    wait_until(lambda: prepared(pg) == [], 5.0, message="no branch left prepared")
    assert rows(pg, tables) == ([], [])


def test_a_database_that_dies_in_phase_two_is_committed_by_recovery(
        in_process_cage: Callable[..., InProcessCage], pg: PgServer, pg_server: PgServer, tables: str,
        tmp_path: Path, attach: Callable[[float], Request], monkeypatch: pytest.MonkeyPatch) -> None:
    pg_server.query(f"CREATE TABLE {tables} (id int PRIMARY KEY)", "db2")
    cage = in_process_cage(files={
        "config_resource_db1.py": config_source(pg.config("db1")),
        "config_resource_db2.py": config_source(pg_server.config("db2")),
    })
    transaction = cage.cage.runtime.root.transaction
    original = DecisionLog.decide_commit

    def decide_then_crash_db2(self: DecisionLog, xid: str, branches: list[tuple[str, str]]) -> None:
        original(self, xid, branches)
        pg_server.kill()  # after the decision, before phase 2

    monkeypatch.setattr(DecisionLog, "decide_commit", decide_then_crash_db2)
    attach(10.0)
    xa = transaction.create(two_phase=True)
    xa.db1.execute(f"INSERT INTO {tables} (id) VALUES (5)")
    xa.db2.execute(f"INSERT INTO {tables} (id) VALUES (5)")
    assert xa.execute() == (([],), ([],))  # decided: the caller is told it committed
    assert rows(pg, tables)[0] == [5]
    decisions = cage.cage.runtime.resources.decisions
    wait_until(lambda: len(decisions.decisions()) == 1, 5.0, message="the decision kept for recovery")
    assert not recover_in_doubt(cage.cage.runtime.resources)  # db2 is down: not yet
    pg_server.start()
    assert recover_in_doubt(cage.cage.runtime.resources)
    assert [r[0] for r in pg_server.query(f"SELECT id FROM {tables}", "db2")] == [5]
    assert pg_server.query("SELECT gid FROM pg_prepared_xacts", "postgres") == []
    assert decisions.decisions() == {}


def _raises(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as e:
        return e


def test_a_branch_that_cannot_be_rolled_back_is_rolled_back_by_recovery(
        in_process_cage: Callable[..., InProcessCage], pg: PgServer, pg_server: PgServer, tables: str,
        attach: Callable[[float], Request], monkeypatch: pytest.MonkeyPatch) -> None:
    pg_server.query(f"CREATE TABLE {tables} (id int PRIMARY KEY)", "db2")
    cage = in_process_cage(files={
        "config_resource_db1.py": config_source(pg.config("db1")),
        "config_resource_db2.py": config_source(pg_server.config("db2")),
    })

    def crash_db2_and_fail(self: DecisionLog, xid: str, branches: list[tuple[str, str]]) -> None:
        pg_server.kill()  # both prepared; db2 gone before the decision, which then fails
        raise OSError("disk full")

    monkeypatch.setattr(DecisionLog, "decide_commit", crash_db2_and_fail)
    attach(10.0)
    xa = cage.cage.runtime.root.transaction.create(two_phase=True)
    xa.db1.execute(f"INSERT INTO {tables} (id) VALUES (9)")
    xa.db2.execute(f"INSERT INTO {tables} (id) VALUES (9)")
    with pytest.raises(TransactionExecutionError, match="cannot be logged"):
        xa.execute()
    wait_until(lambda: prepared(pg) == [], 5.0, message="db1's branch rolled back")
    pg_server.start()
    assert len(pg_server.query("SELECT gid FROM pg_prepared_xacts", "postgres")) == 1  # db2's survived
    assert recover_in_doubt(cage.cage.runtime.resources)
    assert pg_server.query("SELECT gid FROM pg_prepared_xacts", "postgres") == []
    assert pg_server.query(f"SELECT id FROM {tables}", "db2") == [] and rows(pg, tables)[0] == []


def test_recovery_touches_only_the_branches_of_its_own_instance(
        in_process_cage: Callable[..., InProcessCage], pg: PgServer, tables: str, tmp_path: Path,
        attach: Callable[[float], Request]) -> None:
    cage = start(in_process_cage, pg, tmp_path).cage
    resources = cage.runtime.resources
    resources.decisions.remember_resource("db1")
    ours = f"{branch_prefix(cage.node, cage.name)}XA-20260101000000-000000000001:0"
    other_instance = f"{branch_prefix('elsewhere', cage.name)}XA-20260101000000-000000000002:0"
    try:
        for gid, key in ((ours, 1), (other_instance, 2)):
            conn = psycopg.connect(pg.dsn("db1"))
            conn.tpc_begin(gid)
            conn.execute(f"INSERT INTO {tables} (id) VALUES ({key})")
            conn.tpc_prepare()
            conn.close()  # the branch stays prepared, as after a crash
        assert recover_in_doubt(resources)
        assert prepared(pg) == [other_instance], "ours rolled back (no decision), the other left alone"
    finally:
        with psycopg.connect(pg.dsn("db1"), autocommit=True) as conn:
            for gid in prepared(pg):
                conn.execute(f"ROLLBACK PREPARED '{gid}'")
    assert rows(pg, tables) == ([], [])
