"""The durable state: `pmnc.state` and `xa.state` as a cage author and an operator notice them.

Odd keys and big values round-trip; many threads write at once and every
write lands; a write that waits past its caller's deadline is dropped and
says so; a damaged file stops the cage instead of being served or replaced;
a full disk or a read-only folder is a clear StateError to the caller and
leaves the file intact for when space (or write access) returns.

The disk-full and read-only tests mount a small tmpfs and a read-only bind
mount: they need root (CI runs as root) and are skipped without it.
"""

from __future__ import annotations

import errno
import os
import pickle
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CageProcess, InProcessCage, http_config, make_tree, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pmnc import request as _request
from pmnc.errors import StateCorruptError, StateError
from pmnc.request import Request
from pmnc.state import ModuleState, StateStore, set_op
from test_rpc import RUNNER_HANDLER, Runner

MB = 1024 * 1024


def new_store(tmp_path: Path, **options: Any) -> StateStore:
    return StateStore(str(tmp_path / "state" / "state.sqlite"), **options)


def file_rows(path: str, module: str) -> dict[bytes, Any]:
    """What is committed in the file, read with sqlite3 directly (not through the store)."""
    db = sqlite3.connect(path)
    try:
        return {k: pickle.loads(v) for k, v in db.execute("SELECT key, value FROM kv WHERE module = ?", (module,))}
    finally:
        db.close()


def integrity(path: str) -> str:
    db = sqlite3.connect(path)
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


def run_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """`target` on a new thread; the dict gets its "result" or "error" when it ends."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = target()
        except BaseException as e:
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def hold_writer(store: StateStore) -> tuple[threading.Event, threading.Thread, dict[str, Any]]:
    """A thread inside the store's writer until the returned event is set."""
    entered, release = threading.Event(), threading.Event()

    def slow(db: sqlite3.Connection) -> str:
        entered.set()
        release.wait(30)
        return "held"

    thread, outcome = run_thread(lambda: store.transact(slow))
    wait_until(entered.is_set, 5.0, message="the writer is held")
    return release, thread, outcome


# --- 1. the user's API ----------------------------------------------------------------------------


def test_get_set_delete_round_trip_and_a_stored_none(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    state = ModuleState(lambda: store, "mod")
    assert state.get("missing") is None
    assert state.get("missing", "default") == "default"
    state.set("k", {"n": 1, "items": [1, 2.5, "three", b"four", None]})
    assert state.get("k") == {"n": 1, "items": [1, 2.5, "three", b"four", None]}
    state.set("k", 2)  # replaced
    assert state.get("k", "default") == 2
    state.set("none", None)
    assert state.get("none", "default") is None  # a stored None is a value, not a missing key
    state.delete("k")
    assert state.get("k", "default") == "default"
    state.delete("k")  # deleting what is not there is no error
    state.delete("never was")
    assert state.get("none", "default") is None


def test_modules_have_their_own_namespaces(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    one, two = ModuleState(lambda: store, "one"), ModuleState(lambda: store, "two")
    one.set("k", "of one")
    assert two.get("k", "absent") == "absent"
    two.set("k", "of two")
    assert (one.get("k"), two.get("k")) == ("of one", "of two")
    one.delete("k")
    assert (one.get("k", "absent"), two.get("k")) == ("absent", "of two")


def test_values_survive_closing_and_reopening(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    state = ModuleState(lambda: store, "mod")
    state.set("a", [1, 2, 3])
    state.set("b", "bee")
    state.set("gone", 1)
    state.delete("gone")
    store.close()
    again = new_store(tmp_path)
    state = ModuleState(lambda: again, "mod")
    assert (state.get("a"), state.get("b"), state.get("gone", "absent")) == ([1, 2, 3], "bee", "absent")
    again.close()
    # and it is really on disk: another reader of the file sees it
    assert file_rows(store.path, "mod") == {b"a": [1, 2, 3], b"b": "bee"}


@pytest.mark.parametrize("key", [b"bytes", 1, None, ("a", "tuple"), 1.5])
def test_a_key_that_is_not_a_str_is_a_state_error(tmp_path: Path, key: Any) -> None:
    store = new_store(tmp_path)
    state = ModuleState(lambda: store, "mod")
    with pytest.raises(StateError, match="must be a str"):
        state.set(key, 1)
    with pytest.raises(StateError, match="must be a str"):
        state.get(key)
    with pytest.raises(StateError, match="must be a str"):
        state.delete(key)
    assert file_rows(store.path, "mod") == {}


@pytest.mark.parametrize("value", [lambda: 0, threading.Lock(), (x for x in ()), {"nested": [threading.Lock()]}],
                         ids=["lambda", "lock", "generator", "nested-lock"])
def test_an_unpicklable_value_is_a_state_error_and_nothing_is_written(tmp_path: Path, value: Any) -> None:
    store = new_store(tmp_path)
    state = ModuleState(lambda: store, "mod")
    state.set("k", "before")
    with pytest.raises(StateError, match="cannot be pickled"):
        state.set("k", value)
    with pytest.raises(StateError, match="cannot be pickled"):
        state.set("new", value)
    assert state.get("k") == "before"
    assert state.get("new", "absent") == "absent"
    assert file_rows(store.path, "mod") == {b"k": "before"}


# --- 2. odd keys ---------------------------------------------------------------------------------

ODD_KEYS = [
    "", " ", "\x00", "a\x00b", "a\x00c", "\x00\x00", "\ud800", "\udfff", "a\ud800b", "\ud83d\ude00", "😀",
    "ключ", "鍵", "\u200b", "e\u0301", "\u00e9", "'; DROP TABLE kv; --", "\" OR 1=1 --", "%", "_", "*", "?",
    "key", "Key", "KEY", "kEy", "k" * 10_000, "k" * 10_001, "\n", "\r\n", "\t", "\\", "/", "..", "\uffff",
    "\U0010ffff",
]


def test_odd_keys_round_trip_distinctly(tmp_path: Path) -> None:
    assert len(set(ODD_KEYS)) == len(ODD_KEYS)
    store = new_store(tmp_path)
    state = ModuleState(lambda: store, "mod")
    for i, key in enumerate(ODD_KEYS):
        state.set(key, i)
    for i, key in enumerate(ODD_KEYS):
        assert state.get(key) == i, f"key {key[:20]!r}"
    assert len(file_rows(store.path, "mod")) == len(ODD_KEYS)  # the SQL-looking key has dropped nothing
    store.close()
    again = new_store(tmp_path)
    state = ModuleState(lambda: again, "mod")
    for i, key in enumerate(ODD_KEYS):
        assert state.get(key) == i, f"key {key[:20]!r} after a reopen"
    for key in ODD_KEYS[::2]:
        state.delete(key)
    for i, key in enumerate(ODD_KEYS):
        assert state.get(key, "absent") == ("absent" if i % 2 == 0 else i), f"key {key[:20]!r}"


ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)  # surrogates included
VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT
                      | st.binary(max_size=64),
                      lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
                      max_leaves=8)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=st.lists(st.tuples(ANY_TEXT, VALUES), min_size=1, max_size=4))
def test_any_text_key_and_value_round_trip(tmp_path: Path, writes: list[tuple[str, Any]]) -> None:
    store = new_store(tmp_path)
    state = ModuleState(lambda: store, f"m{time.monotonic_ns()}")  # a namespace of its own for each example
    model: dict[str, Any] = {}
    for key, value in writes:
        state.set(key, value)
        model[key] = value
    for key, value in model.items():
        assert state.get(key, "absent") == value
    first = writes[0][0]
    state.delete(first)
    assert state.get(first, "absent") == "absent"
    for key, value in model.items():
        if key != first:
            assert state.get(key) == value
    store.close()


# --- 3. big values ---------------------------------------------------------------------------------


def test_one_megabyte_values_round_trip(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    state = ModuleState(lambda: store, "mod")
    blob = os.urandom(MB)
    document = {"a": "x" * MB, "b": ["é" * (MB // 2), "\x00" * 1000], "n": 7}
    state.set("blob", blob)
    state.set("document", document)
    assert state.get("blob") == blob
    assert state.get("document") == document
    state.set("blob", blob[::-1])  # replaced by another of the same size
    assert state.get("blob") == blob[::-1]
    store.close()
    again = new_store(tmp_path)
    state = ModuleState(lambda: again, "mod")
    assert state.get("blob") == blob[::-1] and state.get("document") == document


def test_several_megabyte_values_at_once(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    blobs = {f"blob{i}": os.urandom(MB) for i in range(8)}

    def write(key: str) -> None:
        ModuleState(lambda: store, "mod").set(key, blobs[key])

    threads = [run_thread(lambda key=key: write(key)) for key in blobs]  # type: ignore[misc]
    for thread, outcome in threads:
        thread.join(30)
        assert "error" not in outcome, outcome
    # and in one write: several big values in one operation list
    store.apply([set_op("mod", f"more{i}", bytes([i]) * MB) for i in range(4)])
    store.close()
    again = new_store(tmp_path)
    state = ModuleState(lambda: again, "mod")
    for key, blob in blobs.items():
        assert state.get(key) == blob
    for i in range(4):
        assert state.get(f"more{i}") == bytes([i]) * MB


# --- 4. many writers ---------------------------------------------------------------------------------


def test_many_threads_writing_at_once_all_land(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    groups: list[int] = []
    write = store._write

    def counting(batch: list[Any]) -> None:
        groups.append(len(batch))
        write(batch)

    store._write = counting  # type: ignore[method-assign]
    state = ModuleState(lambda: store, "mod")
    state.set("warm-up", 0)
    threads_count, writes = 16, 150
    barrier = threading.Barrier(threads_count + 2)
    expected: dict[str, Any] = {}
    problems: list[str] = []
    stop_reading = threading.Event()

    def writer(t: int) -> None:
        mine: dict[str, Any] = {}
        request = Request(timeout=60.0, interface="t", protocol="t") if t % 2 else None  # finite and infinite
        previous = _request.attach(request)
        try:
            barrier.wait()
            for i in range(writes):
                key = f"t{t}/k{i % 25}"
                if i % 7 == 6:
                    state.delete(key)
                    mine.pop(key, None)
                    if state.get(key, "absent") != "absent":
                        problems.append(f"{key} still there right after its delete")
                else:
                    value = (key, i, "v" * (i % 50))
                    state.set(key, value)
                    mine[key] = value
                    if state.get(key) != value:  # on disk when set() returns: read back at once
                        problems.append(f"{key}: not read back right after set()")
        except Exception as e:
            problems.append(f"thread {t}: {e!r}")
        finally:
            _request.attach(previous)
        expected.update(mine)

    def reader() -> None:
        barrier.wait()
        while not stop_reading.is_set():
            for t in range(0, threads_count, 3):
                key = f"t{t}/k{t % 25}"
                value = state.get(key)
                if value is not None and value[0] != key:
                    problems.append(f"{key} read as {value!r}")

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(threads_count)]
    readers = [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads + readers:
        thread.start()
    for thread in threads:
        thread.join(60)
    stop_reading.set()
    for thread in readers:
        thread.join(10)
    assert problems == []
    assert not any(thread.is_alive() for thread in threads + readers)
    total = threads_count * writes + 1
    assert sum(groups) == total, "every write went through the writer once"
    assert len(groups) < total, "some writes shared a commit (group commit)"
    store.close()
    on_disk = file_rows(store.path, "mod")
    assert on_disk == {key.encode(): value for key, value in expected.items()} | {b"warm-up": 0}


def test_two_stores_on_one_file_both_write(tmp_path: Path) -> None:
    """Two instances of a cage on one machine share the file: neither loses the other's writes."""
    first, second = new_store(tmp_path), new_store(tmp_path)
    states = [ModuleState(lambda: first, "mod"), ModuleState(lambda: second, "mod")]
    states[0].set("made", True)  # the file exists (its creation racing is the next test's)
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(40):
                states[n % 2].set(f"w{n}/{i}", (n, i))
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    for state in states:
        assert all(state.get(f"w{n}/{i}") == (n, i) for n in range(8) for i in range(40))


def test_a_new_file_another_instance_is_setting_up_is_waited_for(tmp_path: Path) -> None:
    """Two instances of a cage start on a fresh install: the first use of one meets the other
    still creating the file. It waits (within its deadline) rather than fail at once with
    "being written by another process for too long". (Left to chance, two stores making a new
    file at the same moment fail so about once in 200 tries.)"""
    path = tmp_path / "state" / "state.sqlite"
    path.parent.mkdir()
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # the other instance, writing the new file (not yet in WAL mode)
    other.execute("CREATE TABLE being_made (x)")
    done = threading.Timer(0.5, lambda: other.execute("COMMIT"))
    done.start()
    try:
        store = StateStore(str(path))
        with _request.attached(Request(timeout=10.0, interface="t", protocol="t")):
            ModuleState(lambda: store, "mod").set("k", "first")
            assert ModuleState(lambda: store, "mod").get("k") == "first"
    finally:
        done.join(5)
        other.close()


def test_a_failing_write_fails_only_its_caller(tmp_path: Path) -> None:
    """A write whose own work is refused (bad data) is undone alone; the others of its group commit."""
    store = new_store(tmp_path)
    state = ModuleState(lambda: store, "mod")
    release, holder, held = hold_writer(store)

    def bad(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO kv (module, key, value) VALUES ('mod', ?, ?)", (b"bad", pickle.dumps("half")))
        raise ValueError("refused")

    good1 = run_thread(lambda: state.set("good1", 1))
    failing = run_thread(lambda: store.transact(bad))
    good2 = run_thread(lambda: state.set("good2", 2))
    try:
        wait_until(lambda: len(store._waiting) == 3, 5.0, message="three writes waiting")  # then one group
    finally:
        release.set()
    for thread in (holder, good1[0], failing[0], good2[0]):
        thread.join(10)
    assert held == {"result": "held"}
    assert "error" not in good1[1] and "error" not in good2[1]
    assert isinstance(failing[1].get("error"), StateError)
    assert (state.get("good1"), state.get("good2"), state.get("bad", "absent")) == (1, 2, "absent")


def test_an_unexpected_error_in_a_group_is_not_reported_as_success(tmp_path: Path) -> None:
    """Whatever one job of a group raises, no caller may be told "written" of a write that is not there."""
    store = new_store(tmp_path)
    state = ModuleState(lambda: store, "mod")
    release, holder, _ = hold_writer(store)

    def broken(db: sqlite3.Connection) -> None:
        raise RuntimeError("a bug in the caller's function")

    good1 = run_thread(lambda: state.set("good1", 1))
    failing = run_thread(lambda: store.transact(broken))
    good2 = run_thread(lambda: state.set("good2", 2))
    try:
        wait_until(lambda: len(store._waiting) == 3, 5.0, message="three writes waiting")
    finally:
        release.set()
    for thread in (holder, good1[0], failing[0], good2[0]):
        thread.join(10)
    assert "error" in failing[1], "the failing caller hears of its failure"
    for key, (_, outcome) in (("good1", good1), ("good2", good2)):
        if "error" not in outcome:  # told it was written: then it must be there
            assert state.get(key, "absent") != "absent", f"{key}: set() returned, the value was not written"


# --- 5. deadlines ------------------------------------------------------------------------------------


def test_a_write_waiting_past_its_deadline_is_dropped(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    state = ModuleState(lambda: store, "mod")
    state.set("k", "before")
    release, holder, held = hold_writer(store)
    try:
        with _request.attached(Request(timeout=0.2, interface="t", protocol="t")):
            started = time.monotonic()
            with pytest.raises(StateError, match="deadline") as info:
                state.set("k", "late")
            elapsed = time.monotonic() - started
        assert not isinstance(info.value, StateCorruptError)
        assert 0.15 <= elapsed < 3.0, elapsed
        assert state.get("k") == "before"  # reads are not blocked by the writer meanwhile
    finally:
        release.set()
        holder.join(10)
    assert held == {"result": "held"}
    state.set("other", 1)  # a later group does not pick the dropped write up
    assert state.get("k") == "before"
    store.close()
    assert file_rows(store.path, "mod") == {b"k": "before", b"other": 1}


def test_another_process_holding_the_file_is_a_state_error_within_the_deadline(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    state = ModuleState(lambda: store, "mod")
    state.set("k", "before")
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process writing, for long
        with _request.attached(Request(timeout=0.5, interface="t", protocol="t")):
            started = time.monotonic()
            with pytest.raises(StateError, match="another process") as info:
                state.set("k", "blocked")
            assert time.monotonic() - started < 5.0
        assert not isinstance(info.value, StateCorruptError)
        assert state.get("k") == "before"
    finally:
        other.execute("ROLLBACK")
        other.close()
    state.set("k", "after")  # and once it lets go, writes go on
    assert state.get("k") == "after"


# --- 6. a damaged file -----------------------------------------------------------------------------


def test_a_file_of_garbage_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "state" / "state.sqlite"
    path.parent.mkdir()
    garbage = os.urandom(64 * 1024)
    path.write_bytes(garbage)
    with pytest.raises(StateCorruptError, match="damaged") as info:
        StateStore(str(path)).check()
    assert str(path) in str(info.value)
    assert path.read_bytes() == garbage  # not replaced by a new, empty state


def make_rows(path: Path, count: int = 3000) -> None:
    store = StateStore(str(path))
    store.apply([set_op("mod", f"key{i:05}", os.urandom(300)) for i in range(count)])
    store.close()
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0  # all in the main file


@pytest.mark.parametrize("damage", ["header", "page-header", "zeroed-page", "truncated"])
def test_a_damaged_file_is_refused_at_start(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "state" / "state.sqlite"
    make_rows(path)
    data = bytearray(path.read_bytes())
    middle = len(data) // 4096 // 2 * 4096  # a page of the kv b-tree
    if damage == "header":
        data[:100] = b"\xa5" * 100
    elif damage == "page-header":
        data[middle:middle + 12] = b"\xff" * 12
    elif damage == "zeroed-page":
        data[middle:middle + 4096] = bytes(4096)
    else:
        del data[middle:]
    path.write_bytes(bytes(data))
    store = StateStore(str(path))
    with pytest.raises(StateCorruptError) as info:
        store.check()
    assert str(path) in str(info.value) and "damaged" in str(info.value)
    assert path.read_bytes() == bytes(data)
    # used anyway (not through a cage), it never answers from the damaged file as if all were well
    state = ModuleState(lambda: store, "mod")
    with pytest.raises(StateError):
        state.get("key00000")
    with pytest.raises(StateError):
        state.set("new", 1)
    assert path.read_bytes() == bytes(data)


def test_an_undamaged_file_passes_the_check(tmp_path: Path) -> None:
    path = tmp_path / "state" / "state.sqlite"
    make_rows(path, 500)
    store = StateStore(str(path))
    store.check()
    assert ModuleState(lambda: store, "mod").get("key00499") is not None
    StateStore(str(tmp_path / "none" / "state.sqlite")).check()  # no file yet: nothing to check


def test_a_cage_with_a_damaged_state_file_refuses_to_start(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    path = root / "cages" / "sample" / "state" / "state.sqlite"
    path.parent.mkdir()
    garbage = b"this is not a database " * 1000
    path.write_bytes(garbage)
    process = CageProcess(root)
    try:
        supervisor = process.start(ready=False).process
        assert supervisor is not None
        wait_until(lambda: supervisor.poll() is not None, 20.0, message="the supervisor exits")
        assert supervisor.returncode == 1
        text = process.log_text()
        assert "the cage refuses to start" in text and str(path) in text
        assert "is not restarted" in text
        assert len(process.child_pids()) == 1  # not restarted over and over
        assert "the cage is ready" not in text
    finally:
        process.kill()
    assert path.read_bytes() == garbage  # left as it was: no data silently replaced
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.sqlite"]


# --- 7. a full disk ----------------------------------------------------------------------------------


def unmount(where: Path) -> None:
    if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def mount(args: list[str], what: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root")
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"{what} is not permitted here: {result.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs, unmounted afterwards."""
    where = tmp_path / "small"
    where.mkdir()
    mount(["-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], "mounting a tmpfs")
    try:
        yield where
    finally:
        unmount(where)


def fill(path: Path) -> None:
    """Write `path` until the disk is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (65536, 4096, 512, 1):
            chunk = b"\xee" * size
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
    finally:
        os.close(fd)


def test_a_full_disk_is_a_clear_error_and_nothing_is_damaged(small_disk: Path) -> None:
    path = small_disk / "state" / "state.sqlite"
    store = StateStore(str(path), minimum_free_space=0)  # so that SQLite itself meets the full disk
    state = ModuleState(lambda: store, "mod")
    committed = {f"small{i}": ("value", i) for i in range(5)}
    for key, value in committed.items():
        state.set(key, value)
    filler = small_disk / "filler"
    fill(filler)
    with pytest.raises(StateError, match="disk is full") as info:
        state.set("big", b"\x01" * (512 * 1024))
    assert not isinstance(info.value, StateCorruptError)
    assert "nothing of this write" in str(info.value)
    for key, value in committed.items():  # what was committed still reads back, the disk still full
        assert state.get(key) == value
    assert state.get("big", "absent") == "absent"
    with pytest.raises(StateError, match="disk is full"):  # and it goes on saying so while it is full
        state.set("big", b"\x02" * (512 * 1024))
    filler.unlink()
    state.set("after", "space is back")  # the same store recovers by itself
    assert state.get("after") == "space is back"
    assert integrity(str(path)) == "ok"
    store.close()
    again = StateStore(str(path), minimum_free_space=0)
    again.check()
    state = ModuleState(lambda: again, "mod")
    for key, value in committed.items():
        assert state.get(key) == value
    assert (state.get("after"), state.get("big", "absent")) == ("space is back", "absent")
    again.close()
    assert integrity(str(path)) == "ok"


def test_a_full_disk_in_a_group_fails_every_write_of_it(small_disk: Path) -> None:
    path = small_disk / "state" / "state.sqlite"
    store = StateStore(str(path), minimum_free_space=0)
    state = ModuleState(lambda: store, "mod")
    state.set("before", 0)
    release, holder, _ = hold_writer(store)
    writers = [run_thread(lambda i=i: state.set(f"w{i}", b"\x03" * (256 * 1024))) for i in range(4)]  # type: ignore[misc]
    try:
        wait_until(lambda: len(store._waiting) == 4, 5.0, message="four writes waiting")
        fill(small_disk / "filler")
    finally:
        release.set()
    for thread in [holder, *(thread for thread, _ in writers)]:
        thread.join(10)
    for i, (_, outcome) in enumerate(writers):
        # each either failed and says so, or is really there: none is reported written and lost
        if "error" in outcome:
            assert isinstance(outcome["error"], StateError) and "disk is full" in str(outcome["error"])
            assert state.get(f"w{i}", "absent") == "absent"
        else:
            assert state.get(f"w{i}") == b"\x03" * (256 * 1024)
    assert any("error" in outcome for _, outcome in writers), "1 MB does not fit in what was left"
    (small_disk / "filler").unlink()
    store.close()
    assert integrity(str(path)) == "ok"
    assert file_rows(str(path), "mod")[b"before"] == 0


def test_too_little_free_space_refuses_writes_but_not_reads(small_disk: Path) -> None:
    path = small_disk / "state" / "state.sqlite"
    first = StateStore(str(path), minimum_free_space=0)
    ModuleState(lambda: first, "mod").set("k", "kept")
    first.close()
    store = StateStore(str(path), minimum_free_space=4 * MB)  # more than the whole 2 MB disk
    store.check()
    state = ModuleState(lambda: store, "mod")
    with pytest.raises(StateError, match="minimum_free_space"):
        state.set("k", "refused")
    with pytest.raises(StateError, match="minimum_free_space"):
        state.delete("k")
    assert state.get("k") == "kept"
    store.minimum_free_space = 0
    state.set("k", "written")
    assert state.get("k") == "written"


# --- 8. a read-only state folder ---------------------------------------------------------------------


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Callable[[Path], None]]:
    """`read_only(folder)` makes `folder` a read-only bind mount of itself (root ignores chmod);
    every mount made is undone at the end, whatever happened (undoing one twice is harmless)."""
    mounted: list[Path] = []

    def make(folder: Path) -> None:
        mount(["--bind", str(folder), str(folder)], "a bind mount")
        mounted.append(folder)
        result = subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"a read-only remount is not permitted here: {result.stderr.strip()}")

    yield make
    for folder in reversed(mounted):
        unmount(folder)


def test_a_read_only_state_folder_is_a_clear_error(tmp_path: Path,
                                                   read_only: Callable[[Path], None]) -> None:
    folder = tmp_path / "cage" / "state"
    path = folder / "state.sqlite"
    first = StateStore(str(path))
    ModuleState(lambda: first, "mod").set("k", "kept")
    first.close()
    before = path.read_bytes()
    read_only(folder)
    with pytest.raises(OSError):
        (folder / "probe").write_text("x")  # really read-only, even for root
    store = StateStore(str(path))
    store.check()  # a cage still starts: each use says what is wrong
    state = ModuleState(lambda: store, "mod")
    with pytest.raises(StateError) as info:
        state.set("k", "refused")
    assert type(info.value) is StateError
    assert "read-only" in str(info.value) or "cannot be opened" in str(info.value), str(info.value)
    assert str(path) in str(info.value)
    try:
        assert state.get("k") == "kept"  # it may still be read...
    except StateError as e:  # ...or say clearly why it cannot be
        assert type(e) is StateError and str(path) in str(e)
    unmount(folder)
    assert path.read_bytes() == before
    state.set("new", "written")  # the same store works once the folder is writable again
    assert (state.get("k"), state.get("new")) == ("kept", "written")
    store.close()
    assert integrity(str(path)) == "ok"


# --- 9. xa.state in transactions, pmnc.state across a restart -----------------------------------------


def test_xa_state_commits_with_its_transaction(in_process_cage: Callable[..., InProcessCage],
                                               attach: Callable[[float], Request]) -> None:
    cage = in_process_cage()
    pmnc = cage.cage.runtime.pmnc("orders")
    attach(10.0)
    xa = pmnc.transaction.create()
    xa.state.set("a", 1)
    xa.state.set("b", {"two": 2})
    xa.execute()
    assert (pmnc.state.get("a"), pmnc.state.get("b")) == (1, {"two": 2})
    assert cage.cage.runtime.pmnc("other").state.get("a", "absent") == "absent"  # the module's own namespace
    xa = pmnc.transaction.create()
    xa.state.delete("a")
    xa.state.set("b", "bee")
    xa.execute()
    assert (pmnc.state.get("a", "absent"), pmnc.state.get("b")) == ("absent", "bee")


def test_a_failing_participant_rolls_the_state_writes_back(in_process_cage: Callable[..., InProcessCage],
                                                           attach: Callable[[float], Request]) -> None:
    cage = in_process_cage()
    pmnc = cage.cage.runtime.pmnc("orders")
    attach(10.0)
    pmnc.state.set("b", "kept")
    for two_phase in (False, True):
        xa = pmnc.transaction.create(two_phase=two_phase)
        xa.state.set("a", 1)
        xa.state.delete("b")
        xa.state.set("c", lambda: 0)  # cannot be pickled: this participant fails
        with pytest.raises(StateError, match="cannot be pickled") as info:
            xa.execute()
        assert info.value.participant_index == 2
        assert (pmnc.state.get("a", "absent"), pmnc.state.get("b"), pmnc.state.get("c", "absent")) == \
            ("absent", "kept", "absent"), f"two_phase={two_phase}"
    assert cage.cage.runtime.state.in_doubt("") == []  # no branch left prepared


def test_a_two_phase_transaction_of_state_writes(in_process_cage: Callable[..., InProcessCage],
                                                 attach: Callable[[float], Request]) -> None:
    cage = in_process_cage()
    pmnc = cage.cage.runtime.pmnc("orders")
    attach(10.0)
    xa = pmnc.transaction.create(two_phase=True)
    xa.state.set("x", 1)
    xa.state.set("y", 2)
    xa.execute()
    assert (pmnc.state.get("x"), pmnc.state.get("y")) == (1, 2)
    assert cage.cage.runtime.state.in_doubt("") == []


def test_more_state_participants_than_threads(in_process_cage: Callable[..., InProcessCage],
                                              attach: Callable[[float], Request]) -> None:
    cage = in_process_cage(thread_count=10)
    pmnc = cage.cage.runtime.pmnc("orders")
    attach(20.0)
    xa = pmnc.transaction.create()
    for i in range(30):
        xa.state.set(f"k{i}", i)
    assert len(xa.execute()) == 30
    assert [pmnc.state.get(f"k{i}") for i in range(30)] == list(range(30))


def test_pmnc_state_survives_a_cage_restart(cage_process: Callable[..., CageProcess]) -> None:
    process = cage_process(interfaces={"http": http_config()}, files={"interface_http.py": RUNNER_HANDLER})
    runner = Runner(process)
    runner.result("""
        import hashlib
        pmnc.state.set("counter", 41)
        pmnc.state.set("\\ud800 odd\\x00key", hashlib.sha256(b"seed").digest() * 32768)  # 1 MB
        pmnc.state.set("none", None)
        xa = pmnc.transaction.create()
        xa.state.set("by xa", "yes")
        xa.execute()
    """)
    assert process.stop() == 0
    assert (process.cage_dir / "state" / "state.sqlite").is_file()
    process.start()
    runner = Runner(process)
    assert runner.result("""
        import hashlib
        big = pmnc.state.get("\\ud800 odd\\x00key")
        result = (pmnc.state.get("counter"), len(big), big == hashlib.sha256(b"seed").digest() * 32768,
                  pmnc.state.get("none", "absent"), pmnc.state.get("by xa"), pmnc.state.get("missing", "absent"))
    """) == (41, MB, True, None, "yes", "absent")
