"""Cage-to-cage calls between real cage processes of one install tree.

The test drives calls through a `runner` cage: its HTTP handler runs a Python
snippet (the POSTed, pickled job) with the runner's `pmnc` in scope and sends
back, pickled, what the snippet left in `result` or a description of the
exception it raised - so each test reads as the code a cage author writes.
"""

from __future__ import annotations

import datetime
import decimal
import os
import pickle
import signal
import textwrap
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    CageProcess,
    Cluster,
    config_source,
    http_config,
    http_request,
    module_source,
    wait_until,
    write_file,
)
from pmnc.protocols.rpc import MAX_CONNECTING

RUNNER_HANDLER = module_source("""
    import pickle
    import time

    def describe(e):
        cls = type(e)
        return {"type": f"{cls.__module__}.{cls.__qualname__}",
                "bases": [f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__],
                "message": str(e),
                "remote_type": getattr(e, "remote_type", None),
                "remote_traceback": getattr(e, "remote_traceback", None)}

    def process_request(request, response):
        job = pickle.loads(request["content"])
        if job["remain"] is not None:
            pmnc.request.remain = job["remain"]  # as if the request had come with this timeout
        scope = dict(job["values"], pmnc=pmnc)
        started = time.monotonic()
        try:
            exec(job["code"], scope)
            answer = {"result": scope.get("result")}
        except Exception as e:
            answer = {"error": describe(e)}
        answer["elapsed"] = time.monotonic() - started
        answer["request_id"] = pmnc.request.unique_id
        response["content"] = pickle.dumps(answer)
        response["headers"]["content-type"] = "application/octet-stream"
""", ["process_request"])

WORK = module_source("""
    import os
    import threading
    import time

    class MyError(Exception):
        pass

    def handle(x):
        return x * 2

    def context():
        pmnc.log.debug("context() has been called")
        request = pmnc.request
        return {"id": request.unique_id, "remain": request.remain, "log_levels": list(request.log_levels),
                "parameters": request.parameters, "description": request.description,
                "interface": request.interface}

    def echo(value):
        return value, {key: type(item).__name__ for key, item in value.items()}

    def fail(message):
        raise ValueError(message)

    def fail_mine(message):
        raise MyError(message)

    def sleep(seconds):
        time.sleep(seconds)  # slow code that does not look at its deadline
        return "slept"

    def append(path, text, seconds=0.0):
        with open(path, "a") as f:
            print(text, file=f)
        time.sleep(seconds)
        return text

    def whoami(hold=0.0, folder=None):
        if folder is not None:  # a marker that this instance is in the middle of a call
            marker = os.path.join(folder, f"holding-{os.getpid()}-{threading.get_ident()}")
            open(marker, "w").close()
            time.sleep(hold)
            os.unlink(marker)
        return __node__, os.getpid()

    def hidden():
        return "not exported"

    def _private():
        return "private"
""", ["MyError", "handle", "context", "echo", "fail", "fail_mine", "sleep", "append", "whoami", "_private"])

# A module other cages must not reach even though it exports process_request.
WORKER_INTERFACE = module_source("""
    def process_request(request, response):
        with open(request["path"], "a") as f:
            print("interface_http ran", file=f)
""", ["process_request"])


# --- the runner -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    result: Any
    error: dict[str, Any] | None  # type, bases (the MRO), message, remote_type, remote_traceback
    elapsed: float  # seconds the snippet ran, measured in the runner
    request_id: str


class Runner:
    """Runs snippets in a cage with the HTTP handler above."""

    def __init__(self, process: CageProcess) -> None:
        self.process = process
        self.port = process.port("http", count=max(process.log_text().count("interface http listens"), 1))

    def run(self, code: str, *, remain: float | None = None, **values: Any) -> Outcome:
        """Run `code`; `remain` gives the runner's request that many seconds, `values` are its variables."""
        job = pickle.dumps({"code": textwrap.dedent(code), "remain": remain, "values": values})
        status, _, content = http_request(self.port, "/", "POST", job,
                                          {"content-type": "application/octet-stream"})
        assert status == 200, content
        answer = pickle.loads(content)
        return Outcome(answer.get("result"), answer.get("error"), answer["elapsed"], answer["request_id"])

    def result(self, code: str, **kwargs: Any) -> Any:
        outcome = self.run(code, **kwargs)
        assert outcome.error is None, outcome.error
        return outcome.result

    def error(self, code: str, **kwargs: Any) -> dict[str, Any]:
        outcome = self.run(code, **kwargs)
        assert outcome.error is not None, f"an error was expected, the result is {outcome.result!r}"
        return outcome.error


def start_runner(cluster: Cluster, name: str = "runner", **options: Any) -> Runner:
    cluster.cage(name, {"config_interface_http.py": config_source(http_config()),
                        "interface_http.py": RUNNER_HANDLER}, interfaces=("rpc", "http"), **options)
    return Runner(cluster.start(name))


def start_worker(cluster: Cluster, name: str = "worker", node: str | None = None,
                 files_extra: dict[str, str] | None = None, **options: Any) -> CageProcess:
    cluster.cage(name, {"work.py": WORK, "interface_http.py": WORKER_INTERFACE, **(files_extra or {})}, **options)
    return cluster.start(name, node=node)


# --- 1. a call and the request it continues --------------------------------------------------------


def test_a_call_returns_the_result_and_continues_the_callers_request(cluster: Cluster) -> None:
    worker = start_worker(cluster)
    runner = start_runner(cluster)

    assert runner.result('result = pmnc("worker").work.handle(21)') == 42

    seen = runner.result("""
        pmnc.log.level("DEBUG")
        pmnc.request.parameters["customer"] = "c-17"
        pmnc.request.parameters["_secret"] = "stays here"
        pmnc.request.describe("order 7")
        remain_at_call = pmnc.request.remain
        seen = pmnc("worker").work.context()
        result = dict(seen, caller_id=pmnc.request.unique_id, caller_levels=list(pmnc.request.log_levels),
                      caller_remain=remain_at_call)
    """, remain=5.0)
    assert seen["id"] == seen["caller_id"]
    assert seen["log_levels"] == seen["caller_levels"] and seen["log_levels"]
    assert seen["interface"] == "rpc"
    parameters = seen["parameters"]
    assert parameters["customer"] == "c-17"
    assert "_secret" not in parameters
    assert parameters["auth_tokens"]["source_cage"] == "runner"
    assert parameters["auth_tokens"]["peer_cage"] == "runner"
    # the callee has what the caller had left (5 s, not its own request_timeout of 10 s), less a margin
    assert 0.0 < seen["caller_remain"] - seen["remain"] < 1.0
    # the description is the caller's own words, not the caller's formatted log prefix
    assert seen["description"].startswith(f"RQ-{seen['id'][-4:]} (order 7) via rpc ")
    # the caller's DEBUG level holds in the worker, whose own level is LOG
    worker.wait_for_log(r"DBG .*context\(\) has been called")


# --- 2. exceptions ---------------------------------------------------------------------------------


def test_remote_exceptions_arrive_rebuilt_with_the_remote_traceback(cluster: Cluster) -> None:
    start_worker(cluster)
    runner = start_runner(cluster)

    error = runner.error('pmnc("worker").work.fail("bad value 42")')
    assert error["type"] == "builtins.ValueError"
    assert error["message"] == "bad value 42"
    assert 'work.py", line' in error["remote_traceback"] and "in fail" in error["remote_traceback"]

    error = runner.error('pmnc("worker").work.fail_mine("it is mine")')
    assert error["type"] == "pmnc.errors.RemoteError"
    assert error["remote_type"].endswith("work.MyError")
    assert "it is mine" in error["message"]
    assert "MyError: it is mine" in error["remote_traceback"] and "in fail_mine" in error["remote_traceback"]

    # the caller can catch them as it would locally
    assert runner.result("""
        try:
            pmnc("worker").work.fail("x")
        except ValueError:
            result = "caught"
    """) == "caught"


def test_calls_to_what_cannot_be_called_give_clear_errors(cluster: Cluster, tmp_path: Path) -> None:
    start_worker(cluster)
    runner = start_runner(cluster)

    error = runner.error('pmnc("worker").nosuch.f()')
    assert error["type"] == "pmnc.errors.ModuleNotFoundError"
    assert "nosuch.py was not found" in error["message"]

    error = runner.error('pmnc("worker").work.nosuch()')
    assert error["type"] == "pmnc.errors.InvalidMethodAccessError"
    assert error["message"] == "attribute nosuch is not declared in __all__ of module work"

    error = runner.error('pmnc("worker").work.hidden()')
    assert error["type"] == "pmnc.errors.InvalidMethodAccessError"
    assert error["message"] == "attribute hidden is not declared in __all__ of module work"

    error = runner.error('pmnc("worker").work._private()')
    assert error["type"] == "pmnc.errors.InvalidMethodAccessError"  # an AttributeError
    assert "_private" in error["message"] and "is private" in error["message"]

    error = runner.error('pmnc("worker")._work.handle(1)')
    assert error["type"] == "pmnc.errors.InvalidModuleNameError"
    assert "'_work'" in error["message"]

    # deny_modules (config_*, protocol_*, interface_* by default): refused though the module exists
    error = runner.error('pmnc("worker").config_interfaces.get("thread_count")')
    assert error["type"] == "pmnc.errors.InvalidMethodAccessError"
    assert error["message"] == "module config_interfaces is not callable from other cages"
    side_effect = tmp_path / "interface_http.ran"
    error = runner.error('pmnc("worker").interface_http.process_request({"path": path}, {})', path=str(side_effect))
    assert error["type"] == "pmnc.errors.InvalidMethodAccessError"
    assert error["message"] == "module interface_http is not callable from other cages"
    assert not side_effect.exists()


# --- 3. types ------------------------------------------------------------------------------------


def test_values_keep_their_types_both_ways(cluster: Cluster) -> None:
    start_worker(cluster)
    runner = start_runner(cluster)
    value = {
        "tuple": (1, ("nested", 2.5), [3, (4,)]),
        "bytes": b"\x00\xff binary",
        "datetime": datetime.datetime(2024, 2, 29, 23, 59, 58, 123456),
        "aware": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=3))),
        "date": datetime.date(1999, 12, 31),
        "timedelta": datetime.timedelta(days=-1, seconds=5, microseconds=7),
        "decimal": decimal.Decimal("1.10"),
        "set": {1, "two", (3, 4)},
        "frozenset": frozenset({b"x", None}),
        "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "big": 2 ** 70,
        "list": ["a", None, True],
    }

    back, seen_types = runner.result('result = pmnc("worker").work.echo(value)', value=value)

    assert seen_types == {key: type(item).__name__ for key, item in value.items()}  # as the worker saw them
    assert back == value
    assert {key: type(item) for key, item in back.items()} == {key: type(item) for key, item in value.items()}
    assert back["tuple"][2][1] == (4,) and type(back["tuple"][2]) is list
    assert str(back["decimal"]) == "1.10"
    assert back["aware"].utcoffset() == datetime.timedelta(hours=3)


def test_a_value_larger_than_the_socket_buffers_goes_both_ways_whole(cluster: Cluster) -> None:
    # The caller's socket does not block: a frame this large is written in many pieces as the
    # callee reads, and its answer comes in many TLS records, each waited for by the deadline.
    start_worker(cluster)
    runner = start_runner(cluster)
    code = """
import hashlib, os
value = {"blob": os.urandom(6 * 1024 * 1024), "text": "\u017e" * 100_000}
back, seen = pmnc("worker").work.echo(value)
small, _ = pmnc("worker").work.echo({"small": 1})
result = (back == value, hashlib.sha256(back["blob"]).hexdigest() == hashlib.sha256(value["blob"]).hexdigest(),
          seen, small)
"""

    same, same_digest, seen_types, small = runner.result(code)

    assert same and same_digest
    assert seen_types == {"blob": "bytes", "text": "str"}
    assert small == {"small": 1}  # the same connection, in step after the large exchange


def test_what_msgpack_cannot_carry_is_refused_before_sending_unless_pickle_is_enabled(cluster: Cluster) -> None:
    start_worker(cluster)
    runner = start_runner(cluster)
    error = runner.error('pmnc("worker").work.handle(1 + 2j)')
    assert error["type"] == "pmnc.errors.ResourceInputParameterError"
    assert "cannot be sent to cage worker" in error["message"] and "complex" in error["message"]

    # with pickle enabled on every cage of the cluster (both restarted to read it)
    cluster.kill_all()
    cluster.shared("config_cluster.py", config_source({"use_pickle": True}))
    start_worker(cluster)
    runner = start_runner(cluster)
    assert runner.result('result = pmnc("worker").work.handle(1 + 2j)') == 2 + 4j


def test_a_call_is_one_participant_of_a_larger_transaction(cluster: Cluster) -> None:
    start_worker(cluster)
    start_worker(cluster, "other")
    runner = start_runner(cluster)
    assert runner.result("""
        xa = pmnc.transaction.create()
        xa.rpc__worker.work.handle(1)
        xa.rpc__other.work.handle("a")
        result = xa.execute()
    """) == (2, "aa")
    error = runner.error("""
        xa = pmnc.transaction.create()
        xa.rpc__worker.work.handle(1)
        xa.rpc__other.work.fail("no")
        xa.execute()
    """)
    # inside a transaction the participant's error is an RPCError carrying the remote one
    assert error["type"] == "pmnc.errors.RPCError" and "ValueError: no" in error["message"]


# --- 4. deadlines --------------------------------------------------------------------------------


def test_a_slow_callee_gives_the_caller_a_deadline_error_at_its_deadline(cluster: Cluster) -> None:
    start_worker(cluster)
    runner = start_runner(cluster)

    started = time.monotonic()
    outcome = runner.run('pmnc("worker").work.sleep(3.0)', remain=1.0)
    waited = time.monotonic() - started

    assert outcome.error is not None
    assert outcome.error["type"] == "pmnc.errors.RPCDeadlineError"
    assert {"pmnc.errors.DeadlineError", "builtins.TimeoutError"} <= set(outcome.error["bases"])
    assert "deadline" in outcome.error["message"]
    assert 0.8 <= outcome.elapsed < 1.5
    assert waited < 2.0


def test_queued_work_whose_deadline_passes_is_never_started(cluster: Cluster, tmp_path: Path) -> None:
    worker = start_worker(cluster, "single", thread_count=1)
    runner = start_runner(cluster)
    journal = tmp_path / "journal"

    slow: list[Outcome] = []
    thread = threading.Thread(target=lambda: slow.append(
        runner.run('result = pmnc("single").work.append(path, "slow", 2.0)', path=str(journal))))
    thread.start()
    try:
        wait_until(lambda: journal.exists() and journal.read_text() == "slow\n", message="the slow call running")
        queued = runner.run('pmnc("single").work.append(path, "queued")', remain=1.0, path=str(journal))
    finally:
        thread.join(15.0)

    assert queued.error is not None and queued.error["type"] == "pmnc.errors.RPCDeadlineError"
    assert queued.elapsed < 1.5
    worker.wait_for_log(rf"request {queued.request_id} from cage runner has not been answered in time")
    assert slow[0].result == "slow"
    # a later call runs after the slow one: had the expired one stayed queued, it would have run first
    assert runner.result('result = pmnc("single").work.append(path, "after")', path=str(journal)) == "after"
    assert journal.read_text().split() == ["slow", "after"]


def test_calls_made_at_the_same_time_share_a_connection_and_none_waits_for_another(cluster: Cluster,
                                                                                  tmp_path: Path) -> None:
    """While one call holds the worker for 3 s, others made meanwhile (they share its connection)
    are answered at once, one at its deadline, and the connection serves on after it."""
    start_worker(cluster)
    overlapping_calls(start_runner(cluster), tmp_path)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="cpu_affinity is honoured on Linux only")
@pytest.mark.parametrize("spread", [True, False])
def test_calls_made_at_the_same_time_share_a_connection_while_the_threads_are_spread(cluster: Cluster, tmp_path: Path,
                                                                                     spread: bool) -> None:
    """Spread over CPUs (cpu_affinity None), calls that overlap share one connection, a reader
    thread handing out the answers; kept on one CPU, each takes a connection of its own (cheaper
    there: placement.on_one_cpu). Either way none waits for another."""
    start_worker(cluster)
    runner = start_runner(cluster, cpu_affinity=None if spread else (min(os.sched_getaffinity(0)),))
    overlapping_calls(runner, tmp_path)
    readers = runner.result("""
        import threading
        result = [t.name for t in threading.enumerate() if t.name.startswith("rpc:") and t.name.endswith(".worker")]
    """)  # a shared connection's reader thread (the rpc interface's are named for their peers)
    assert bool(readers) is spread


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="cpu_affinity is honoured on Linux only")
def test_a_burst_of_calls_kept_on_one_cpu_does_not_become_a_burst_of_handshakes(cluster: Cluster) -> None:
    """Forty calls at once from a cage kept on one CPU, each opening a connection of its own: four
    connections are opened at a time (MAX_CONNECTING), the others wait their turn, and every call
    is answered. The caller's connect is slowed by 50 ms (in the runner's process), as a callee busy
    with handshakes would slow it, so that without the gate all forty would be opening at once; how
    many were at once is counted there. (The callee's own count of connections in their handshake
    runs a little behind the caller's - its side ends after the caller's - so it is not what is
    asserted.)"""
    worker = start_worker(cluster)
    runner = start_runner(cluster, cpu_affinity=(min(os.sched_getaffinity(0)),))
    answers, most = runner.result("""
        import threading, time
        from pmnc.protocols import rpc as rpc_protocol

        connect = rpc_protocol._Channel.connect.__func__
        count, now, most = threading.Lock(), [0], [0]

        def slow_connect(cls, *args, **kwargs):
            with count:
                now[0] += 1
                most[0] = max(most[0], now[0])
            try:
                time.sleep(0.05)
                return connect(cls, *args, **kwargs)
            finally:
                with count:
                    now[0] -= 1

        start, answers = threading.Barrier(40), [None] * 40

        def call(i):
            start.wait()
            try:
                answers[i] = pmnc("worker").work.handle(i)
            except Exception as e:
                answers[i] = f"{type(e).__name__}: {e}"

        rpc_protocol._Channel.connect = classmethod(slow_connect)
        try:
            threads = [threading.Thread(target=call, args=(i,)) for i in range(40)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            rpc_protocol._Channel.connect = classmethod(connect)
        result = [answers, most[0]]
    """)
    assert answers == [2 * i for i in range(40)]
    assert most == MAX_CONNECTING
    assert "TLS handshake failed" not in worker.log_text()


def overlapping_calls(runner: Runner, tmp_path: Path) -> None:
    """One call holds the worker for 3 s; twenty made meanwhile are answered at once, one gives up
    at its deadline, and the next is answered."""
    markers = tmp_path / "markers"
    markers.mkdir()
    slow: list[Outcome] = []
    holder = threading.Thread(target=lambda: slow.append(
        runner.run('result = pmnc("worker").work.whoami(3.0, folder)', folder=str(markers))))
    holder.start()
    try:
        wait_until(lambda: any(markers.iterdir()), message="the slow call holding the worker")
        quick = runner.result("""
            import os
            result = [pmnc("worker").work.handle(i) for i in range(20)]
            result.append(bool(os.listdir(folder)))  # the slow call still under way
        """, folder=str(markers))
        late = runner.run('pmnc("worker").work.sleep(3.0)', remain=0.5)
        after = runner.result('result = pmnc("worker").work.handle(21)')
    finally:
        holder.join(15.0)
    assert quick == [2 * i for i in range(20)] + [True]
    assert late.error is not None and late.error["type"] == "pmnc.errors.RPCDeadlineError"
    assert late.elapsed < 1.5
    assert after == 42  # the connection the late call gave up on serves on
    assert slow[0].error is None and len(slow[0].result) == 2  # whoami: (node, pid)


# --- 5. several instances of a cage --------------------------------------------------------------


def _gone(pid: int) -> bool:
    """The process has exited (and closed its sockets): no such pid, or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_calls_spread_over_instances_and_survive_one_being_killed(cluster: Cluster, tmp_path: Path) -> None:
    a = start_worker(cluster, node="a")
    b = start_worker(cluster, node="b")
    runner = start_runner(cluster)
    a_pid, b_pid = a.child_pids()[-1], b.child_pids()[-1]

    answers = runner.result('result = [pmnc("worker").work.whoami() for _ in range(40)]')
    assert set(answers) == {("a", a_pid), ("b", b_pid)}

    # calls in a loop from three clients, each holding its instance for 0.3 s
    markers = tmp_path / "markers"
    markers.mkdir()
    calls: list[tuple[float, Outcome, float]] = []  # (started, outcome, seconds it took), monotonic
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            started = time.monotonic()
            outcome = runner.run('result = pmnc("worker").work.whoami(0.3, folder)', remain=3.0, folder=str(markers))
            calls.append((started, outcome, time.monotonic() - started))

    clients = [threading.Thread(target=client) for _ in range(3)]
    for thread in clients:
        thread.start()
    try:
        wait_until(lambda: any(markers.glob(f"holding-{b_pid}-*")), message="a call in flight in b.worker")
        os.kill(b_pid, signal.SIGKILL)
        wait_until(lambda: _gone(b_pid), message="b.worker's cage process gone")
        killed_at = time.monotonic()
        new_b_pid = wait_until(lambda: len(b.child_pids()) > 1 and b.child_pids()[-1], 10.0,
                               message="b.worker restarted by its supervisor")
        wait_until(lambda: any(o.result == ("b", new_b_pid) for _, o, _ in list(calls)), 15.0,
                   message="the restarted b.worker answering")
    finally:
        stop.set()
        for thread in clients:
            thread.join(15.0)

    failures = [(started, o) for started, o, _ in calls if o.error is not None]
    assert failures, "the call in flight in the killed instance should have failed"
    for started, outcome in failures:
        assert outcome.error is not None
        assert outcome.error["type"] == "pmnc.errors.ResourceError"
        assert "b.worker" in outcome.error["message"] and "lost during the call: " in outcome.error["message"]
        assert outcome.error["message"].split("lost during the call: ")[1].strip(), "it should say how it was lost"
        assert started < killed_at  # only calls already under way when it died
    assert all(took < 2.0 for _, _, took in calls), "a call hung"  # each within its 3 s, and well before
    after = [o.result for started, o, _ in calls if started >= killed_at]
    assert ("a", a_pid) in after  # the survivor took the load meanwhile
    assert ("b", b_pid) not in after


# --- 6. reverse calls ------------------------------------------------------------------------------


def test_reverse_calls_reach_a_cage_that_only_polls(cluster: Cluster) -> None:
    dmz = start_runner(cluster, "dmz")
    cluster.cage("lan", {"work.py": WORK,
                         "config_interface_revrpc.py": config_source({"protocol": "revrpc",
                                                                      "source_cages": ("dmz",)})},
                 interfaces=("revrpc",))
    lan = cluster.start("lan")
    assert "interface revrpc polls cage(s) dmz" in lan.log_text()
    assert "interface rpc" not in lan.log_text()  # nothing listens in the lan cage

    assert dmz.result('result = pmnc("lan:reverse").work.handle(21)') == 42

    seen = dmz.result('result = pmnc("lan:reverse").work.context(), pmnc.request.unique_id')
    assert seen[0]["id"] == seen[1]
    assert seen[0]["parameters"]["auth_tokens"]["source_cage"] == "dmz"

    error = dmz.error('pmnc("lan:reverse").work.fail("reverse boom")')
    assert error["type"] == "builtins.ValueError" and error["message"] == "reverse boom"
    assert "in fail" in error["remote_traceback"]
    error = dmz.error('pmnc("lan:reverse").work.fail_mine("mine, reversed")')
    assert error["type"] == "pmnc.errors.RemoteError" and error["remote_type"].endswith("work.MyError")

    outcome = dmz.run('pmnc("nowhere:reverse").work.handle(1)', remain=1.0)
    assert outcome.error is not None
    assert outcome.error["type"] == "pmnc.errors.RPCDeadlineError"
    assert "pmnc.errors.DeadlineError" in outcome.error["bases"]
    assert "nowhere" in outcome.error["message"] and "not taken" in outcome.error["message"]
    assert 0.9 <= outcome.elapsed < 1.5


# --- 8. zero configuration -----------------------------------------------------------------------


def test_cages_with_no_config_files_call_each_other(cluster: Cluster) -> None:
    cages = cluster.root / "cages"
    for name, body in (("zero1", """
            def hop(x):
                return pmnc("zero2").work.bounce(x)

            def name():
                return __cage__
        """), ("zero2", """
            def bounce(x):
                return {"x": x, "back": pmnc("zero1").work.name(), "tokens": pmnc.request.parameters["auth_tokens"]}
        """)):
        (cages / name).mkdir()
        write_file(cages / name / "work.py", module_source(body, ["hop", "name"] if name == "zero1" else ["bounce"]))
        assert [p.name for p in (cages / name).iterdir()] == ["work.py"]
    cluster.start("zero1")
    cluster.start("zero2")
    runner = start_runner(cluster)

    answer = runner.result('result = pmnc("zero1").work.hop(5)')

    assert answer["x"] == 5
    assert answer["back"] == "zero1"  # zero2 called zero1 back
    assert answer["tokens"]["source_cage"] == "runner"  # the first cage of the chain
    assert answer["tokens"]["peer_cage"] == "zero1"
