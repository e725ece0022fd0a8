"""Retried calls between real cage processes: queued durably, run at least once, never lost.

A `runner` cage (tests/test_rpc.py's HTTP snippet runner) queues calls; a
`worker` cage runs them through module `jobs`, which appends one JSON line
per execution to a file the test reads. Both run the `retry` interface with
a short retry_interval so that failures come round quickly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import CageProcess, Cluster, config_source, http_config, module_source, wait_until
from pmnc.errors import ProtocolError
from pmnc.retry import Settings, _accepted_row
from test_rpc import RUNNER_HANDLER, Runner

JOBS = module_source("""
    import json
    import os
    import time

    def _record(path, value, **extra):
        line = {"value": value, "retry": pmnc.request.parameters.get("retry"),
                "request_id": pmnc.request.unique_id, "interface": pmnc.request.interface,
                "auth_tokens": pmnc.request.parameters.get("auth_tokens"), "cage": __cage__,
                "customer": pmnc.request.parameters.get("customer"), **extra}
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\\n")

    def record(path, value):
        _record(path, value)
        return value

    def flaky(path, value, failures):
        attempt = pmnc.request.parameters["retry"]["attempt"]
        _record(path, value, failed=attempt <= failures)
        if attempt <= failures:
            raise RuntimeError(f"attempt {attempt} fails on purpose")

    def later(path, value, times):
        attempt = pmnc.request.parameters["retry"]["attempt"]
        if attempt <= times:
            pmnc.retry.exit("not yet")
        _record(path, value)

    def parent(path, value):
        for _ in range(2):  # the same named step twice: it runs once per parent
            pmnc(queue="steps", id="step").jobs.record(path, f"{value}/step")
        _record(path, value)

    def slow(path, value, folder):
        marker = os.path.join(folder, f"running-{os.getpid()}")
        open(marker, "w").close()
        time.sleep(60)
        _record(path, value)
""", ["record", "flaky", "later", "parent", "slow"])

FAST_RETRY = {"protocol": "retry", "retry_interval": 0.2, "queue_count": 4}


def start(cluster: Cluster, *, worker: bool = True, retry: dict[str, Any] | None = None,
          worker_timeout: float = 10.0) -> tuple[Runner, CageProcess | None]:
    cluster.shared("config_interface_retry.py", config_source(retry or FAST_RETRY))
    cluster.cage("worker", {"jobs.py": JOBS}, interfaces=("rpc", "retry"), request_timeout=worker_timeout)
    process = cluster.start("worker") if worker else None
    cluster.cage("runner", {"jobs.py": JOBS, "interface_http.py": RUNNER_HANDLER,
                            "config_interface_http.py": config_source(http_config())},
                 interfaces=("rpc", "http", "retry"))
    return Runner(cluster.start("runner")), process


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def values(path: Path) -> list[Any]:
    return [r["value"] for r in records(path)]


def wait_for_values(path: Path, wanted: list[Any], timeout: float = 20.0) -> list[dict[str, Any]]:
    wait_until(lambda: sorted(map(str, values(path))) == sorted(map(str, wanted)) or
               len(values(path)) > len(wanted), timeout, message=f"executions {wanted}")
    assert sorted(map(str, values(path))) == sorted(map(str, wanted))
    return records(path)


def retry_command(cluster: Cluster, *args: str) -> str:
    done = subprocess.run([sys.executable, str(cluster.root / "startup.py"), "--retry", *args],
                          capture_output=True, text=True, timeout=30, cwd=cluster.root)
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


RT_ID = re.compile(r"RT-\d{14}-[0-9A-F]{12}")


# --- the call and what the callee sees ----------------------------------------------------------


def test_a_retried_call_returns_its_id_at_once_and_runs_in_the_other_cage(cluster: Cluster, tmp_path: Path) -> None:
    runner, _ = start(cluster)
    out = tmp_path / "out.jsonl"
    outcome = runner.run("""
        pmnc.request.parameters["customer"] = "c-17"
        pmnc.request.parameters["auth_tokens"] = {"username": "ann", "password": "secret"}
        result = pmnc("worker", queue="retry", expires_in=3600.0).jobs.record(path, 42)
    """, path=str(out))
    assert outcome.error is None and RT_ID.fullmatch(outcome.result)
    [seen] = wait_for_values(out, [42])
    assert seen["cage"] == "worker" and seen["interface"] == "retry"
    assert seen["request_id"] == outcome.request_id  # it runs as the request that queued it
    assert seen["customer"] == "c-17"
    assert seen["auth_tokens"]["source_cage"] == "runner"
    assert seen["auth_tokens"]["username"] == "ann" and "password" not in seen["auth_tokens"]
    stored = b"".join(p.read_bytes() for p in (cluster.root / "cages" / "runner" / "state").glob("state.sqlite*"))
    assert b"c-17" in stored and b"secret" not in stored  # no password kept for a call to another cage
    context = seen["retry"]
    assert context["id"] == outcome.result and context["attempt"] == 1
    assert context["deadline"] == pytest.approx(context["start"] + 3600.0, abs=1.0)


def test_a_call_for_the_own_cage_keeps_no_password_on_disk(cluster: Cluster, tmp_path: Path) -> None:
    runner, _ = start(cluster, worker=False)
    out = tmp_path / "out.jsonl"
    tokens = {"username": "ann", "password": "pw-Zq81x", "peer_ip": "127.0.0.9", "encrypted": False}
    outcome = runner.run("""
        pmnc.request.parameters["customer"] = "c-18"
        pmnc.request.parameters["auth_tokens"] = dict(tokens)
        result = pmnc(queue="local").jobs.record(path, 7)
    """, path=str(out), tokens=tokens)
    assert outcome.error is None and RT_ID.fullmatch(outcome.result)
    [seen] = wait_for_values(out, [7])
    assert seen["auth_tokens"] == {k: v for k, v in tokens.items() if k != "password"}  # the rest are kept
    stored = b"".join(p.read_bytes() for p in (cluster.root / "cages" / "runner" / "state").glob("state.sqlite*"))
    assert b"c-18" in stored and b"pw-Zq81x" not in stored


def test_own_cage_queues_and_the_original_form(cluster: Cluster, tmp_path: Path) -> None:
    runner, _ = start(cluster)
    out = tmp_path / "out.jsonl"
    runner.result('result = pmnc(queue="local").jobs.record(path, "here")', path=str(out))
    runner.result('result = pmnc("worker:retry").jobs.record(path, "there")', path=str(out))
    by_value = {r["value"]: r for r in wait_for_values(out, ["here", "there"])}
    assert by_value["here"]["cage"] == "runner" and by_value["here"]["retry"]["deadline"] is None
    assert by_value["there"]["cage"] == "worker"


def test_bad_calls_are_refused_when_queued(cluster: Cluster, tmp_path: Path) -> None:
    runner, _ = start(cluster, worker=False)
    refused = {
        'pmnc("worker", queue="no spaces").jobs.record(1, 2)': "InvalidModuleNameError",
        'pmnc("worker", queue="q", id="x" * 300).jobs.record(1, 2)': "ResourceInputParameterError",
        'pmnc("worker", queue="q", expires_in=True).jobs.record(1, 2)': "ResourceInputParameterError",
        'pmnc("worker", queue="q", expires_in=-1.0).jobs.record(1, 2)': "ResourceInputParameterError",
        'pmnc("worker", queue="q", colour="red").jobs.record(1, 2)': "TypeError",
        'pmnc("worker", id="x").jobs.record(1, 2)': "TypeError",
        'pmnc("worker", queue="q").jobs._private(1)': "InvalidMethodAccessError",
        # a call for another cage must be sendable there: no pickle between cages by default
        'pmnc("worker", queue="q").jobs.record(object(), 2)': "ResourceInputParameterError",
    }
    for code, error in refused.items():
        assert runner.error(code)["type"].endswith(error), code
    assert "pending" not in retry_command(cluster, "runner", "list")


# --- failures, back-off, expiry, exit() -------------------------------------------------------


def test_a_failing_call_is_tried_again_until_it_succeeds(cluster: Cluster, tmp_path: Path) -> None:
    runner, worker = start(cluster)
    assert worker is not None
    out = tmp_path / "out.jsonl"
    rt_id = runner.result('result = pmnc("worker", queue="retry").jobs.flaky(path, 7, 2)', path=str(out))
    wait_until(lambda: len(records(out)) == 3, 20, message="three attempts")
    attempts = [(r["retry"]["attempt"], r["failed"], r["retry"]["id"]) for r in records(out)]
    assert attempts == [(1, True, rt_id), (2, True, rt_id), (3, False, rt_id)]
    assert len(re.findall(r"WRN .*attempt \d\) has failed, next attempt in", worker.log_text())) == 2
    assert "1 done" in wait_until(lambda: (lambda s: "1 done" in s and s)(retry_command(cluster, "worker", "list")))


def test_back_off_doubles_the_wait_up_to_its_cap() -> None:
    fixed = Settings(retry_interval=10.0)
    assert [fixed.interval(n) for n in (1, 2, 5)] == [10.0, 10.0, 10.0]
    doubling = Settings(retry_interval=10.0, backoff=True, max_retry_interval=45.0)
    assert [doubling.interval(n) for n in (1, 2, 3, 4, 100)] == [10.0, 20.0, 40.0, 45.0, 45.0]


def test_exit_tries_again_later_without_an_error(cluster: Cluster, tmp_path: Path) -> None:
    runner, worker = start(cluster)
    assert worker is not None
    out = tmp_path / "out.jsonl"
    runner.result('result = pmnc("worker", queue="retry").jobs.later(path, "finally", 2)', path=str(out))
    [seen] = wait_for_values(out, ["finally"])
    assert seen["retry"]["attempt"] == 3
    assert not re.search(r"(WRN|ERR) .*jobs\.later", worker.log_text())


def test_an_expired_call_is_dropped(cluster: Cluster, tmp_path: Path) -> None:
    runner, worker = start(cluster)
    assert worker is not None
    out = tmp_path / "out.jsonl"
    runner.result('result = pmnc("worker", queue="retry", expires_in=1.0).jobs.flaky(path, "doomed", 10**6)',
                  path=str(out))
    worker.wait_for_log(r"jobs\.flaky, attempt \d+\) has expired, dropped", timeout=20)
    tried = len(records(out))
    assert tried >= 1 and all(r["failed"] for r in records(out))
    # a call queued after it runs, and the expired one is not tried again
    runner.result('result = pmnc("worker", queue="retry").jobs.record(path, "sentinel")', path=str(out))
    wait_until(lambda: "sentinel" in values(out), 20)
    assert len(records(out)) == tried + 1
    assert "1 expired" in retry_command(cluster, "worker", "list")


# --- de-duplication --------------------------------------------------------------------------------


def test_a_duplicate_id_is_dropped_and_named_steps_run_once_per_parent(cluster: Cluster, tmp_path: Path) -> None:
    runner, _ = start(cluster)
    out = tmp_path / "out.jsonl"
    first, second = runner.result("""
        result = [pmnc("worker", queue="retry", id="order-42").jobs.record(path, "order-42") for _ in range(2)]
    """, path=str(out))
    assert first != second and RT_ID.fullmatch(second)  # every call gets its own RT id, even a duplicate
    runner.process.wait_for_log(r"WRN .*jobs\.record with id order-42 is a duplicate .*dropped")
    for parent in ("p1", "p2"):
        runner.result('result = pmnc("worker", queue="retry").jobs.parent(path, name)', path=str(out), name=parent)
    runner.result('result = pmnc("worker", queue="retry").jobs.record(path, "sentinel")', path=str(out))
    wait_for_values(out, ["order-42", "p1", "p1/step", "p2", "p2/step", "sentinel"])


def test_an_id_is_accepted_again_once_its_retention_time_has_passed(cluster: Cluster, tmp_path: Path) -> None:
    runner, _ = start(cluster, retry={**FAST_RETRY, "retention_time": 0.5})
    out = tmp_path / "out.jsonl"
    queue_once = 'result = pmnc("worker", queue="retry", id="once").jobs.record(path, "once")'
    runner.result(queue_once, path=str(out))
    wait_for_values(out, ["once"])
    runner.result(queue_once, path=str(out))  # dropped: the id is still retained
    runner.process.wait_for_log(r"with id once is a duplicate")
    # finished calls are purged every 10 s; after that the same id is a new call
    def ran_again() -> bool:
        if values(out).count("once") < 2:
            runner.result(queue_once, path=str(out))
        return values(out).count("once") == 2

    wait_until(ran_again, 30, interval=1.0, message="the id accepted again")


# --- order -----------------------------------------------------------------------------------------------


def test_keep_order_runs_a_queue_in_order_and_a_failure_holds_it(cluster: Cluster, tmp_path: Path) -> None:
    runner, _ = start(cluster, retry={**FAST_RETRY, "keep_order": True})
    out = tmp_path / "out.jsonl"
    runner.result("""
        q = pmnc("worker", queue="ordered")
        q.jobs.flaky(path, 0, 2)  # fails twice: the others wait behind it
        for i in range(1, 20):
            q.jobs.record(path, i)
        result = None
    """, path=str(out))
    wait_until(lambda: len(records(out)) == 22, 30, message="all executions")
    assert values(out) == [0, 0, 0, *range(1, 20)]


# --- the outbox -----------------------------------------------------------------------------------------


def test_a_call_queued_in_a_transaction_is_queued_only_if_it_commits(cluster: Cluster, tmp_path: Path) -> None:
    runner, _ = start(cluster)
    out = tmp_path / "out.jsonl"
    error = runner.error("""
        xa = pmnc.transaction.create()
        xa.pmnc("worker", queue="retry").jobs.record(path, "rolled back")
        xa.state.set("bad", lambda: None)  # cannot be pickled: this participant fails
        xa.execute()
    """, path=str(out))
    assert "pickled" in error["message"]
    rt_id, nothing, many = runner.result("""
        xa = pmnc.transaction.create()
        xa.pmnc("worker", queue="retry").jobs.record(path, "committed")
        xa.state.set("order", 42)
        for i in range(30):  # more participants than the cage's 10 threads
            xa.pmnc("worker", queue="retry", id=f"many-{i}").jobs.record(path, f"many-{i}")
        results = xa.execute()
        result = results[0], results[1], results[2:]
    """, path=str(out))
    assert RT_ID.fullmatch(rt_id) and nothing is None and len(set(many)) == 30
    wait_for_values(out, ["committed", *(f"many-{i}" for i in range(30))])
    assert runner.result('result = pmnc.state.get("order")') == 42
    assert runner.result('result = pmnc.state.get("bad", "absent")') == "absent"


def test_an_outbox_call_takes_part_in_a_two_phase_commit(cluster: Cluster, tmp_path: Path) -> None:
    runner, _ = start(cluster)
    out = tmp_path / "out.jsonl"
    runner.result("""
        xa = pmnc.transaction.create(two_phase=True)
        xa.pmnc("worker", queue="retry").jobs.record(path, "prepared")
        xa.state.set("two-phase", True)
        result = xa.execute()
    """, path=str(out))
    wait_for_values(out, ["prepared"])
    assert runner.result('result = pmnc.state.get("two-phase")') is True
    assert " ERR " not in runner.process.log_text()


# --- nothing lost ---------------------------------------------------------------------------------------


def test_calls_wait_for_a_cage_that_is_down(cluster: Cluster, tmp_path: Path) -> None:
    runner, _ = start(cluster, worker=False)
    out = tmp_path / "out.jsonl"
    for i in range(3):
        runner.result('result = pmnc("worker", queue="retry").jobs.record(path, i)', path=str(out), i=i)
    runner.process.wait_for_log(r"WRN .*has failed, next attempt in")
    assert "3 pending" in retry_command(cluster, "runner", "list")
    cluster.start("worker")
    wait_for_values(out, [0, 1, 2])


def test_a_call_whose_cage_dies_while_running_it_runs_again_after_its_lease(cluster: Cluster, tmp_path: Path) -> None:
    runner, worker = start(cluster, worker_timeout=2.0)
    assert worker is not None
    out, folder = tmp_path / "out.jsonl", tmp_path / "markers"
    folder.mkdir()
    runner.result('result = pmnc("worker", queue="retry").jobs.slow(path, "slow", folder)',
                  path=str(out), folder=str(folder))
    wait_until(lambda: list(folder.iterdir()), 20, message="the call running")
    for pid in worker.child_pids():
        os.kill(pid, signal.SIGKILL)  # the cage dies in the middle of the call; its supervisor restarts it
    worker.wait_for_log("the cage is ready", count=2, timeout=30)
    wait_until(lambda: len(list(folder.iterdir())) >= 2, 30, message="the call running again after its lease")
    assert "1 running" in retry_command(cluster, "worker", "list", "retry")


def test_a_call_for_a_module_the_other_cage_lacks_stays_with_its_sender(cluster: Cluster, tmp_path: Path) -> None:
    runner, worker = start(cluster)
    assert worker is not None
    out = tmp_path / "out.jsonl"
    runner.result('result = pmnc("worker", queue="retry").later.record(path, 5)', path=str(out))
    worker.wait_for_log(r"WRN .*retried call from cage runner is refused: .*later\.py was not found in cage worker")
    runner.process.wait_for_log(r"WRN .*later\.record, attempt 1\) has failed")
    assert "later.record" in retry_command(cluster, "runner", "list")
    assert "later.record" not in retry_command(cluster, "worker", "list")  # nothing handed over
    (cluster.root / "cages" / "worker" / "later.py").write_text(JOBS)  # the module comes: the call follows
    wait_for_values(out, [5])


def test_a_cage_takes_at_most_max_pending_per_source_calls_of_another_and_loses_none(cluster: Cluster,
                                                                                    tmp_path: Path) -> None:
    runner, _ = start(cluster, worker=False)
    limited = config_source({**FAST_RETRY, "max_pending_per_source": 2})
    cluster.cage("worker", {"config_interface_retry.py": limited}, interfaces=("rpc",))  # takes calls, runs none
    worker = cluster.start("worker")
    out = tmp_path / "out.jsonl"
    for i in range(4):
        runner.result('result = pmnc("worker", queue="retry").jobs.record(path, i)', path=str(out), i=i)
    worker.wait_for_log(r"WRN .*refused: .*holds 2 pending retried calls from cage runner, "
                        r"max_pending_per_source is 2: the call stays with cage runner")
    wait_until(lambda: "queue retry: 2 pending" in retry_command(cluster, "runner", "list"), 20,
               message="two calls kept by the runner")
    listing = retry_command(cluster, "worker", "list")
    assert "queue retry: 2 pending" in listing and listing.count("from cage runner → worker: jobs.record") == 2
    cluster.cage("worker", interfaces=("rpc", "retry"))  # the worker runs its calls: room for the rest
    wait_for_values(out, [0, 1, 2, 3], timeout=30)


# --- operators ------------------------------------------------------------------------------------------


def test_operators_list_and_purge_a_queue(cluster: Cluster, tmp_path: Path) -> None:
    runner, _ = start(cluster, worker=False)
    for i in range(3):
        runner.result('result = pmnc("nowhere", queue="stuck", id=f"n-{i}").jobs.record("x", i)', i=i)
    runner.result('result = pmnc("nowhere", queue="other").jobs.record("x", 0)')
    listing = wait_until(lambda: (lambda s: "last error" in s and s)(retry_command(cluster, "runner", "list")), 20)
    assert "queue stuck: 3 pending" in listing and "queue other: 1 pending" in listing
    assert re.search(r"RT-\S+ id n-0 → nowhere: jobs\.record, attempt \d+", listing)
    assert "3 pending or expired call(s) purged" in retry_command(cluster, "runner", "purge", "stuck")
    listing = retry_command(cluster, "runner", "list")
    assert "queue stuck" not in listing and "queue other: 1 pending" in listing
    runner.process.wait_for_log(r"LOG .*retry queue other: 1 pending")


def test_a_malformed_hand_over_is_refused() -> None:
    class Loader:
        cage = "worker"

    good = {"queue": "q", "rt_id": "RT-1", "module": "m", "method": "f", "args": [], "kwargs": {},
            "request": {}, "start": 1.0, "expires": None}
    assert _accepted_row(Loader(), good, "runner")["filtered_id"] == "runner/RT-1"  # type: ignore[arg-type]
    for broken in ({**good, "module": "_m"}, {**good, "queue": "a b"}, {**good, "args": "x"},
                   {**good, "kwargs": {1: 2}}, {**good, "start": "now"}, {**good, "rt_id": ""}, "x"):
        with pytest.raises(ProtocolError):
            _accepted_row(Loader(), broken, "runner")  # type: ignore[arg-type]
