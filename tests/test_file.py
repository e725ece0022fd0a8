"""The file protocol: the interface as a spool fed by another process (name order, once each,
a poison file set aside, a file still being written left until it is complete, a file that
cannot be deleted not handled twice, the folder's outage logged once), and the resource in
transactions with PostgreSQL (commit and rollback, two-phase, a crash after prepare), names
that leave its folder refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    Cluster,
    InProcessCage,
    config_source,
    http_config,
    http_request,
    make_tree,
    module_source,
    wait_until,
)
from pg_peer import PgServer
from pmnc.errors import ConfigError, ResourceError, ResourceInputParameterError, SQLResourceError
from pmnc.protocols.file import Resource
from pmnc.request import Request

# Every run of the handler is a line of runs.jsonl in the cage folder: the file's name and
# what it held. A file whose content begins with POISON fails.
HANDLER = module_source("""
    import json, os
    def process_request(request, response):
        path = request["file_name"]
        with open(path, "rb") as f:
            data = f.read()
        line = json.dumps({"name": os.path.basename(path), "size": len(data), "absolute": os.path.isabs(path),
                           "last": data[-4:].decode("latin-1")})
        with open(os.path.join(os.path.dirname(__file__), "runs.jsonl"), "a") as f:
            f.write(line + "\\n")
        if data.startswith(b"POISON"):
            raise RuntimeError("poison on purpose")
""", ["process_request"])

# The other process: 198 ordinary files, a poison one, and one written in pieces over 1.5 s.
WRITER = textwrap.dedent("""
    import os, sys, threading, time
    spool = sys.argv[1]
    def slow():
        with open(os.path.join(spool, "m_slow.msg"), "wb") as f:
            for i in range(10):
                f.write(b"x" * 1000)
                f.flush()
                time.sleep(0.15)
            f.write(b"DONE")
    writer = threading.Thread(target=slow)
    writer.start()
    for i in range(198):
        with open(os.path.join(spool, f"m_{i:04d}.msg"), "wb") as f:
            f.write(b"hello %d END." % i)
        if i == 100:
            with open(os.path.join(spool, "m_poison.msg"), "wb") as f:
                f.write(b"POISON")
        time.sleep(0.002)
    writer.join()
""")


def runs(cage: InProcessCage) -> list[dict[str, Any]]:
    path = cage.cage_dir / "runs.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def file_cage(in_process_cage: Callable[..., InProcessCage], spool: Path, **config: Any) -> InProcessCage:
    interface = {"protocol": "file", "source_directory": str(spool), "filename_regex": r"m_\w+\.msg",
                 "interval": 0.2, "settle_time": 0.5, **config}
    return in_process_cage(interfaces={"spool": interface}, files={"interface_spool.py": HANDLER})


def test_a_spool_fed_by_another_process(in_process_cage: Callable[..., InProcessCage], tmp_path: Path) -> None:
    spool, failed = tmp_path / "spool", tmp_path / "failed"
    spool.mkdir()
    (spool / "other.txt").write_text("not matching: left alone")
    cage = file_cage(in_process_cage, spool, failed_directory=str(failed), max_failures=3)
    writer = subprocess.run([sys.executable, "-c", WRITER, str(spool)], timeout=60)
    assert writer.returncode == 0
    wait_until(lambda: sorted(p.name for p in spool.iterdir()) == ["other.txt"], 30.0, message="spool emptied")
    done = runs(cage)
    ordinary = [r for r in done if r["name"] not in ("m_poison.msg",)]
    names = [r["name"] for r in ordinary]
    assert sorted(names) == sorted({f"m_{i:04d}.msg" for i in range(198)} | {"m_slow.msg"})  # once each
    slow = [r for r in done if r["name"] == "m_slow.msg"]
    assert slow == [{"name": "m_slow.msg", "size": 10004, "absolute": True, "last": "DONE"}]  # only complete
    assert all(r["last"] == "END." for r in ordinary if r["name"] != "m_slow.msg")
    assert [r["name"] for r in done].count("m_poison.msg") == 3
    assert [p.name for p in failed.iterdir()] == ["m_poison.msg"]
    assert (failed / "m_poison.msg").read_bytes() == b"POISON"
    assert cage.log_text().count("file m_poison.msg set aside after 3 failures") == 1


def test_files_present_at_start_are_taken_in_name_order(in_process_cage: Callable[..., InProcessCage],
                                                        tmp_path: Path) -> None:
    spool, done_dir = tmp_path / "spool", tmp_path / "done"
    spool.mkdir()
    names = [f"m_{i:03d}.msg" for i in range(50)]
    for name in reversed(names):
        (spool / name).write_bytes(b"content END.")
        os.utime(spool / name, (1_000_000_000, 1_000_000_000))  # long settled
    cage = file_cage(in_process_cage, spool, done_directory=str(done_dir))
    wait_until(lambda: len(runs(cage)) == 50 and not list(spool.iterdir()), 15.0)
    assert [r["name"] for r in runs(cage)] == names
    assert sorted(p.name for p in done_dir.iterdir()) == names  # moved, not deleted


def test_concurrency_handles_each_file_once(in_process_cage: Callable[..., InProcessCage], tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    for i in range(100):
        (spool / f"m_{i:03d}.msg").write_bytes(b"x END.")
    cage = file_cage(in_process_cage, spool, settle_time=0.0, concurrency=4)
    wait_until(lambda: not list(spool.iterdir()), 15.0)
    assert sorted(r["name"] for r in runs(cage)) == [f"m_{i:03d}.msg" for i in range(100)]


def test_a_file_handled_but_not_movable_is_not_handled_again(in_process_cage: Callable[..., InProcessCage],
                                                             tmp_path: Path) -> None:
    spool, blocker = tmp_path / "spool", tmp_path / "blocker"
    spool.mkdir()
    blocker.write_text("a file where done_directory's parent folder should be")
    (spool / "m_one.msg").write_bytes(b"one END.")
    cage = file_cage(in_process_cage, spool, settle_time=0.0, done_directory=str(blocker / "done"))
    wait_until(lambda: "file m_one.msg was handled but cannot be moved" in cage.log_text(), 10.0)
    (spool / "m_two.msg").write_bytes(b"two END.")  # its pass sees m_one first: not run again
    wait_until(lambda: "file m_two.msg was handled but cannot be moved" in cage.log_text(), 10.0)
    blocker.unlink()
    blocker.mkdir()
    wait_until(lambda: sorted(p.name for p in (blocker / "done").glob("*")) == ["m_one.msg", "m_two.msg"], 10.0)
    assert [r["name"] for r in runs(cage)] == ["m_one.msg", "m_two.msg"]
    assert not list(spool.iterdir())
    assert cage.log_text().count("was handled but cannot be moved") == 2  # once each


def test_the_folders_outage_is_logged_once(in_process_cage: Callable[..., InProcessCage], tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    cage = file_cage(in_process_cage, spool, interval=0.05, settle_time=0.0)
    wait_until(lambda: f"the folder {spool} cannot be listed" in cage.log_text(), 10.0)
    spool.mkdir()
    (spool / "m_a.msg").write_bytes(b"a END.")
    wait_until(lambda: len(runs(cage)) == 1, 10.0)
    log_text = cage.log_text()
    assert log_text.count("cannot be listed") == 1
    assert log_text.count("can be listed again") == 1


def test_failure_counts_survive_a_restart(tmp_path: Path) -> None:
    spool, failed = tmp_path / "spool", tmp_path / "failed"
    spool.mkdir()
    (spool / "m_poison.msg").write_bytes(b"POISON")
    interface = {"protocol": "file", "source_directory": str(spool), "filename_regex": r"m_\w+\.msg",
                 "interval": 60.0, "settle_time": 0.0, "max_failures": 3, "failed_directory": str(failed)}
    root = make_tree(tmp_path, interfaces={"spool": interface}, files={"interface_spool.py": HANDLER})
    for attempt in (1, 2, 3):  # one failure per cage run: the next pass would be a minute later
        cage = InProcessCage(root).start()
        try:
            wait_until(lambda cage=cage, n=attempt: len(runs(cage)) == n, 10.0)
            if attempt == 3:
                wait_until(lambda: (failed / "m_poison.msg").exists(), 10.0)
            else:
                assert (spool / "m_poison.msg").exists()
        finally:
            cage.stop()
    assert cage.log_text().count("file m_poison.msg set aside after 3 failures") == 1


# --- the resource ---------------------------------------------------------------------------------


@pytest.fixture
def table(pg: PgServer) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg.query(f"CREATE TABLE {name} (id int PRIMARY KEY)")
    yield name
    pg.query(f"DROP TABLE {name}")


def resource_cage(in_process_cage: Callable[..., InProcessCage], pg: PgServer, out: Path) -> Any:
    cage = in_process_cage(files={
        "config_resource_db1.py": config_source(pg.config("db1")),
        "config_resource_out.py": config_source({"protocol": "file", "target_directory": str(out),
                                                 "temp_directory": str(out / ".temp"),
                                                 "file_permissions": "rw-r-----"}),
    })
    return cage.cage.runtime.root.transaction


@pytest.mark.parametrize("two_phase", [False, True])
def test_a_file_commits_and_rolls_back_with_postgresql(
        in_process_cage: Callable[..., InProcessCage], pg: PgServer, table: str, tmp_path: Path,
        attach: Callable[[float], Request], two_phase: bool) -> None:
    out = tmp_path / "out"
    transaction = resource_cage(in_process_cage, pg, out)
    attach(10.0)
    xa = transaction.create(two_phase=two_phase)
    xa.db1.execute(f"INSERT INTO {table} (id) VALUES (1)")
    xa.out.write("sub/a.msg", b"committed")
    assert xa.execute() == (([],), str(out / "sub" / "a.msg"))
    assert (out / "sub" / "a.msg").read_bytes() == b"committed"
    assert (out / "sub" / "a.msg").stat().st_mode & 0o777 == 0o640
    xa = transaction.create(two_phase=two_phase)
    xa.db1.execute(f"INSERT INTO {table} (id) VALUES (1)")  # a duplicate: the transaction fails
    xa.out.write("b.msg", b"never")
    with pytest.raises(SQLResourceError):
        xa.execute()
    assert not (out / "b.msg").exists()
    assert [r[0] for r in pg.query(f"SELECT id FROM {table}")] == [1]
    wait_until(lambda: list((out / ".temp").iterdir()) == [], 5.0, message="temp files removed")
    xa = transaction.create(two_phase=two_phase)
    xa.db1.execute(f"INSERT INTO {table} (id) VALUES (2)")
    xa.out.read("sub/a.msg", remove=True)
    assert xa.execute() == (([],), b"committed")
    assert not (out / "sub" / "a.msg").exists()


def test_read_and_remove_is_undone_by_a_rollback(in_process_cage: Callable[..., InProcessCage], pg: PgServer,
                                                 table: str, tmp_path: Path,
                                                 attach: Callable[[float], Request]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.msg").write_bytes(b"kept")
    transaction = resource_cage(in_process_cage, pg, out)
    attach(10.0)
    xa = transaction.create()
    xa.out.read("keep.msg", remove=True)
    xa.db1.execute("SELECT * FROM no_such_table")
    with pytest.raises(SQLResourceError):
        xa.execute()
    assert (out / "keep.msg").read_bytes() == b"kept"


def test_overwrite_false_refuses_an_existing_file(in_process_cage: Callable[..., InProcessCage], pg: PgServer,
                                                  tmp_path: Path, attach: Callable[[float], Request]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "there.msg").write_bytes(b"old")
    transaction = resource_cage(in_process_cage, pg, out)
    attach(10.0)
    with pytest.raises(ResourceError, match="already exists"):
        transaction.out.write("there.msg", b"new", overwrite=False)
    assert (out / "there.msg").read_bytes() == b"old"
    transaction.out.write("there.msg", b"new")
    assert (out / "there.msg").read_bytes() == b"new"
    assert transaction.out.write("fresh.msg", b"1", overwrite=False) == str(out / "fresh.msg")


def make_resource(out: Path, **config: Any) -> Resource:
    return Resource("out/1", {"target_directory": str(out), **config})


def begin(resource: Resource, branch: str | None = None) -> None:
    resource.begin_transaction("xid", source_module_name="test", transaction_options={"branch": branch},
                               resource_args=(), resource_kwargs={})


@pytest.mark.parametrize("name", ["../escape.msg", "a/../../escape.msg", "/etc/passwd", "", ".",
                                  "link/escape.msg", "outlink"])
def test_names_that_leave_the_folder_are_refused(tmp_path: Path, attach: Callable[[float], Request],
                                                 name: str) -> None:
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("secret")
    (out / "link").symlink_to(outside)
    (out / "outlink").symlink_to(outside / "secret")
    attach(5.0)
    resource = make_resource(out)
    begin(resource)
    with pytest.raises(ResourceInputParameterError):
        resource.write(name, b"x")
    with pytest.raises(ResourceInputParameterError):
        resource.read(name)
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


def test_bad_permissions_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file_permissions"):
        make_resource(tmp_path, file_permissions="rw-rw-rw")


@pytest.mark.parametrize("commit", [True, False])
def test_a_crash_after_prepare_is_finished_by_recovery(tmp_path: Path, attach: Callable[[float], Request],
                                                       commit: bool) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "gone.msg").write_bytes(b"to be removed")
    attach(5.0)
    prefix = "pmnc:node.cage:"
    branch = prefix + "XID1:0"
    first = make_resource(out, temp_directory=str(tmp_path / "temp"))
    begin(first, branch)
    first.write("new.msg", b"prepared")
    first.read("gone.msg", remove=True)
    first.prepare()
    del first  # the cage dies here: neither commit nor rollback
    assert not (out / "new.msg").exists()
    second = make_resource(out, temp_directory=str(tmp_path / "temp"))
    assert second.in_doubt(prefix) == [branch]
    assert second.in_doubt("pmnc:other.cage:") == []
    second.finish_prepared(branch, commit)
    assert second.in_doubt(prefix) == []
    assert list((tmp_path / "temp").iterdir()) == []
    if commit:
        assert (out / "new.msg").read_bytes() == b"prepared" and not (out / "gone.msg").exists()
    else:
        assert not (out / "new.msg").exists() and (out / "gone.msg").exists()
    second.finish_prepared(branch, commit)  # again (recovery interrupted): nothing happens


# A real cage runs one two-phase transaction (a row in PostgreSQL, a file); ?crash=before-decision
# kills it (SIGKILL) after both branches prepared but before the decision is logged,
# ?crash=after-decision right after it is logged, before phase 2.
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
            xa.out.write(f"{key}.msg", b"file %d" % key)
            xa.execute()
        finally:
            DecisionLog.decide_commit = original
        response["content"] = "committed"
        response["headers"]["content-type"] = "text/plain"
""", ["process_request"])


@pytest.mark.parametrize("crash, committed", [("before-decision", False), ("after-decision", True)])
def test_a_cage_killed_between_the_phases_is_finished_by_recovery(
        cluster: Cluster, pg: PgServer, table: str, tmp_path: Path, crash: str, committed: bool) -> None:
    out, temp = tmp_path / "out", tmp_path / "temp"
    cluster.cage("writer", {
        "config_resource_db1.py": config_source(pg.config("db1")),
        "config_resource_out.py": config_source({"protocol": "file", "target_directory": str(out),
                                                 "temp_directory": str(temp)}),
        "config_interface_http.py": config_source(http_config()),
        "interface_http.py": CRASHING_HANDLER,
    }, interfaces=("http",))
    writer = cluster.start("writer")
    port = writer.port("http")
    assert http_request(port, f"/?table={table}&id=1")[0] == 200  # a normal one first
    with pytest.raises(Exception):  # noqa: B017 - the connection dies with the cage
        http_request(port, f"/?table={table}&id=2&crash={crash}")
    assert not (out / "2.msg").exists()
    assert len([p for p in temp.iterdir() if p.name.endswith(".json")]) == 1, "the file branch was prepared"
    writer.wait_for_log("the cage is ready", count=2, timeout=30.0)  # restarted; recovery done at its start
    writer.wait_for_log(rf"recovery: branch pmnc:\S+\.writer:XA-\S+ of resource out has been "
                        rf"{'committed' if committed else 'rolled back'}")
    expected = [1, 2] if committed else [1]
    assert [r[0] for r in pg.query(f"SELECT id FROM {table} ORDER BY id")] == expected
    assert sorted(p.name for p in out.iterdir()) == [f"{k}.msg" for k in expected]
    assert list(temp.iterdir()) == []  # no temp file, no record left
