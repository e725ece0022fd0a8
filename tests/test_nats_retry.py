"""Retried calls kept in JetStream (config_cluster.py retry_store "jetstream") between real cage processes.

A `runner` cage (tests/test_rpc.py's snippet runner) queues calls for a `worker` cage whose retry
interface runs them; every run of a call appends a line `<key> <attempt>` to runs.txt in the test's
folder, so a call lost or run twice shows there. NATS is real (tests/nats_peer.py).
"""

from __future__ import annotations

import collections
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import CageProcess, Cluster, config_source, module_source, wait_until
from test_rpc import start_runner

if TYPE_CHECKING:
    from nats_peer import NatsServer


FLOCK = "F1"

SIDE = module_source("""
    import os
    import time

    def record(folder, key, pause=0.0):
        time.sleep(pause)  # a call that takes a while: some are in hand when the worker is killed
        note(folder, key)

    def chain(folder, key):  # queues a call for this cage, as a step of this one
        pmnc(queue="retry", id="step").side.record(folder, key + "-step")

    def flaky(folder, key):
        if pmnc.request.parameters["retry"]["attempt"] == 1:
            note(folder, key + ":failed")
            raise RuntimeError("the first attempt fails")
        note(folder, key)

    def note(folder, key):
        retry = pmnc.request.parameters["retry"]
        with open(os.path.join(folder, "runs.txt"), "a") as f:
            f.write(f"{key} {retry['attempt']} {retry['id']}\\n")
""", ["record", "chain", "flaky"])

RUNS_SERVED = r"interface retry runs the retried calls kept in JetStream"


def use_jetstream(cluster: Cluster, servers: tuple[str, ...], **extra: Any) -> None:
    cluster.shared("config_cluster.py", config_source(dict(
        transport="nats", nats_servers=servers, flock_id=FLOCK, retry_store="jetstream", **extra)))


def worker_cage(cluster: Cluster, retry_interval: float = 1.0, queue_count: int = 8) -> None:
    cluster.cage("worker", {"side.py": SIDE, "config_interface_retry.py": config_source(
        {"protocol": "retry", "retry_interval": retry_interval, "queue_count": queue_count,
         "request_timeout": 5.0})}, interfaces=("rpc", "retry"), log_level="INFO")


def start_worker(cluster: Cluster) -> CageProcess:
    process = cluster.start("worker")
    process.wait_for_log(RUNS_SERVED)
    return process


def runs(folder: Path) -> list[tuple[str, int]]:
    path = folder / "runs.txt"
    if not path.exists():
        return []
    return [(key, int(attempt)) for key, attempt, _ in (line.split() for line in path.read_text().splitlines())]


def counted(folder: Path) -> collections.Counter[str]:
    return collections.Counter(key for key, _ in runs(folder) if not key.endswith(":failed"))


def report_repeats(name: str, counts: collections.Counter[str]) -> int:
    repeats = sum(n - 1 for n in counts.values() if n > 1)
    print(f"\n{name}: {len(counts)} calls ran, {repeats} repeat(s) (runs beyond one per call)")
    return repeats


@pytest.fixture
def on_jetstream(cluster: Cluster, nats_server: NatsServer) -> Cluster:
    use_jetstream(cluster, (nats_server.url,))
    return cluster


# --- one server ------------------------------------------------------------------------------------


def test_a_retried_call_runs_in_the_other_cage_and_an_id_runs_once(on_jetstream: Cluster, tmp_path: Path) -> None:
    worker_cage(on_jetstream)
    worker = start_worker(on_jetstream)
    runner = start_runner(on_jetstream)

    rt_id = runner.result('result = pmnc("worker", queue="retry").side.record(folder, "one")', folder=str(tmp_path))
    assert rt_id.startswith("RT-")
    wait_until(lambda: counted(tmp_path)["one"] == 1, 15.0, message="the call has run in the worker")
    assert runs(tmp_path) == [("one", 1)]
    worker.wait_for_log(rf"retried call {rt_id} \(side\.record, attempt 1\) is done")

    twice = """
first = pmnc("worker", queue="retry", id="order-42").side.record(folder, "order-42")
second = pmnc("worker", queue="retry", id="order-42").side.record(folder, "order-42")
result = (first, second)
"""
    first, second = runner.result(twice, folder=str(tmp_path))
    assert first != second
    runner.process.wait_for_log(r"retried call side\.record with id order-42 is a duplicate of one queued in "
                                r"retry before, dropped")
    wait_until(lambda: counted(tmp_path)["order-42"] == 1, 15.0, message="the call with an id has run")
    runner.result('result = pmnc("worker", queue="retry").side.record(folder, "after")', folder=str(tmp_path))
    wait_until(lambda: counted(tmp_path)["after"] == 1, 15.0, message="a later call has run")
    assert counted(tmp_path)["order-42"] == 1  # the duplicate never ran, though later calls did

    runner.result('result = pmnc("worker", queue="retry").side.chain(folder, "chained")', folder=str(tmp_path))
    wait_until(lambda: counted(tmp_path)["chained-step"] == 1, 15.0, message="the worker's own retried call has run")


def test_an_id_keeps_its_call_from_running_again_after_the_duplicate_window(cluster: Cluster,
                                                                           nats_server: NatsServer,
                                                                           tmp_path: Path) -> None:
    """JetStream drops a re-published id for jetstream_duplicate_window (1 s here); after that the
    worker finds the id among the calls that have run (retention_time) and does not run it again."""
    use_jetstream(cluster, (nats_server.url,), jetstream_duplicate_window=1.0)
    worker_cage(cluster)
    worker = start_worker(cluster)
    runner = start_runner(cluster)
    once = 'result = pmnc("worker", queue="retry", id="pay-7").side.record(folder, "pay-7")'
    runner.result(once, folder=str(tmp_path))
    wait_until(lambda: counted(tmp_path)["pay-7"] == 1, 15.0, message="the call has run")

    def queued_again() -> bool:  # dropped by JetStream within the window, then kept and not run
        runner.result(once, folder=str(tmp_path))
        return "has already run, not run again" in worker.log_text()

    wait_until(queued_again, 15.0, interval=0.2, message="the call queued again after the window")
    assert runner.process.log_text().count("with id pay-7 is a duplicate") >= 1
    assert counted(tmp_path)["pay-7"] == 1


def test_a_failing_call_is_retried_after_the_interval_and_an_expired_one_dropped(on_jetstream: Cluster,
                                                                                 tmp_path: Path) -> None:
    worker_cage(on_jetstream, retry_interval=2.0)
    worker = start_worker(on_jetstream)
    runner = start_runner(on_jetstream)

    started = time.monotonic()
    runner.result('result = pmnc("worker", queue="retry").side.flaky(folder, "flaky")', folder=str(tmp_path))
    wait_until(lambda: counted(tmp_path)["flaky"] == 1, 20.0, message="the second attempt has succeeded")
    assert time.monotonic() - started >= 2.0  # not before the retry interval
    assert runs(tmp_path) == [("flaky:failed", 1), ("flaky", 2)]
    worker.wait_for_log(r"\(side\.flaky, attempt 1\) has failed, next attempt in 2s: RuntimeError")

    # fails once, and is past its expires_in when its second attempt comes
    rt_id = runner.result('result = pmnc("worker", queue="retry", expires_in=1.0).side.flaky(folder, "late")',
                          folder=str(tmp_path))
    worker.wait_for_log(rf"retried call {rt_id} \(side\.flaky, attempt 2\) has expired, dropped", timeout=20.0)
    assert ("late:failed", 1) in runs(tmp_path) and counted(tmp_path)["late"] == 0


def test_calls_of_a_transaction_are_queued_only_if_it_commits(on_jetstream: Cluster, tmp_path: Path) -> None:
    worker_cage(on_jetstream)
    start_worker(on_jetstream)
    runner = start_runner(on_jetstream)
    error = runner.error("""
xa = pmnc.transaction.create()
xa.pmnc("worker", queue="retry").side.record(folder, "rolled-back")
xa.state.set("bad", lambda: None)  # cannot be pickled: this participant fails
xa.execute()
""", folder=str(tmp_path))
    assert "pickled" in error["message"]
    for two_phase in (False, True):
        rt_id, nothing = runner.result("""
xa = pmnc.transaction.create(two_phase=two_phase)
xa.pmnc("worker", queue="retry").side.record(folder, f"committed-{two_phase}")
xa.state.set("order", 42)
result = xa.execute()
""", folder=str(tmp_path), two_phase=two_phase)
        assert rt_id.startswith("RT-") and nothing is None
    wait_until(lambda: set(counted(tmp_path)) == {"committed-False", "committed-True"}, 15.0,
               message="the committed calls have run")
    assert " ERR " not in runner.process.log_text()

    done = subprocess.run([sys.executable, str(on_jetstream.root / "startup.py"), "--retry", "worker", "list"],
                          capture_output=True, text=True, timeout=30, cwd=on_jetstream.root)
    assert done.returncode == 0, done.stderr
    assert "cage worker keeps its retried calls in JetStream, stream PMNC_F1, subjects pmnc.F1.retry.worker.*" \
        in done.stdout


def test_calls_survive_the_enqueuing_cage_killed_before_the_worker_starts(on_jetstream: Cluster,
                                                                         tmp_path: Path) -> None:
    calls = 300
    worker_cage(on_jetstream, queue_count=16)
    runner = start_runner(on_jetstream)
    feed = """
for n in range(count):
    pmnc("worker", queue="retry").side.record(folder, f"c{n}")
result = count
"""
    assert runner.result(feed, folder=str(tmp_path), count=calls) == calls  # each one kept by JetStream
    runner.process.kill()  # -9, supervisor and cage: nothing of the runner is left to send anything

    start_worker(on_jetstream)
    wait_until(lambda: len(counted(tmp_path)) == calls, 60.0, message="every call has run")
    counts = counted(tmp_path)
    assert set(counts) == {f"c{n}" for n in range(calls)}
    assert report_repeats("enqueuing cage killed", counts) == 0  # nothing disturbed the worker: exactly once


def test_calls_survive_a_killed_worker_cage(on_jetstream: Cluster, tmp_path: Path) -> None:
    """The worker killed -9 with calls in hand: they are delivered again after ack_wait and run;
    a call whose run was recorded before the kill is not run again."""
    calls = 100
    worker_cage(on_jetstream, queue_count=4)
    runner = start_runner(on_jetstream)
    worker = start_worker(on_jetstream)
    feed = """
for n in range(count):
    pmnc("worker", queue="retry").side.record(folder, f"w{n}", pause=0.05)
result = count
"""
    assert runner.result(feed, folder=str(tmp_path), count=calls) == calls
    wait_until(lambda: len(counted(tmp_path)) >= 10, 30.0, message="some calls have run")
    worker.kill()
    start_worker(on_jetstream)
    wait_until(lambda: len(counted(tmp_path)) == calls, 60.0, message="every call has run")
    report_repeats("worker killed", counted(tmp_path))  # a call being run at the kill may run again


# --- a 3-node NATS cluster, one node killed ------------------------------------------------------------


def test_no_call_is_lost_when_a_nats_node_is_killed(cluster: Cluster, nats_cluster: list[NatsServer],
                                                    tmp_path: Path) -> None:
    use_jetstream(cluster, tuple(node.url for node in nats_cluster), jetstream_replicas=3)
    worker_cage(cluster, queue_count=8)
    worker = start_worker(cluster)
    runner = start_runner(cluster)
    port = int(worker.wait_for_log(r"connected to NATS at nats://127\.0\.0\.1:(\d+)").group(1))
    victim = next(node for node in nats_cluster if node.port == port)  # the worker's own node
    batches, batch = 12, 25
    feed = """
for n in range(first, first + count):
    pmnc("worker", queue="retry", id=f"k{n}").side.record(folder, f"k{n}")
result = count
"""
    failures: list[str] = []

    def send(first: int) -> None:
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline:  # a batch cut short is sent again whole: the ids make it safe
            try:
                outcome = runner.run(feed, folder=str(tmp_path), first=first, count=batch)
            except AssertionError as e:  # the runner's own deadline (HTTP 504)
                failures.append(str(e)[:120])
                continue
            if outcome.error is None:
                return
            failures.append(outcome.error["message"])
        raise AssertionError(f"batch {first} could not be queued: {failures[-1:]}")

    def paced() -> None:  # a batch once the one before last has run: calls are queued around the kill too
        for b in range(batches):
            ran = (b - 1) * batch
            wait_until(lambda: len(counted(tmp_path)) >= ran, 60.0, message=f"batch {b - 1} has run")  # noqa: B023
            send(b * batch)

    sender = threading.Thread(target=paced, daemon=True)
    sender.start()
    wait_until(lambda: len(counted(tmp_path)) >= batch * 2, 30.0, message="calls flow")
    victim.kill()  # -9, with calls being fetched, run and acknowledged through it
    worker.wait_for_log(r"reconnected to NATS at", timeout=30.0)
    sender.join(90.0)
    assert not sender.is_alive()
    wait_until(lambda: len(counted(tmp_path)) == batches * batch, 60.0, message="every call has run")
    counts = counted(tmp_path)
    assert set(counts) == {f"k{n}" for n in range(batches * batch)}
    print(f"\nbatches sent again after an error: {len(failures)} {failures[:3]}")
    report_repeats("NATS node killed", counts)  # no loss is guaranteed; a repeat is possible, and reported


def test_a_queue_of_its_own_keeps_order_and_a_failing_head_holds_it(on_jetstream: Cluster, tmp_path: Path) -> None:
    """Interface `ordered` (keep_order) runs its queue one call at a time, in order; the catch-all
    `retry` of the same cage passes its calls over - even those waiting when the cage starts,
    before `ordered` has started - and runs the others."""
    worker_cage(on_jetstream)
    (on_jetstream.root / "cages" / "worker" / "config_interface_ordered.py").write_text(config_source(
        {"protocol": "retry", "keep_order": True, "retry_interval": 1.0, "request_timeout": 5.0}))
    on_jetstream.cage("worker", interfaces=("rpc", "retry", "ordered"), log_level="INFO")
    runner = start_runner(on_jetstream)
    feed = """
pmnc("worker", queue="ordered").side.flaky(folder, "o0")
for n in range(1, 10):
    pmnc("worker", queue="ordered").side.record(folder, f"o{n}")
pmnc("worker", queue="other").side.record(folder, "elsewhere")
result = True
"""
    runner.result(feed, folder=str(tmp_path))  # all waiting in JetStream when the worker starts
    worker = on_jetstream.start("worker")
    worker.wait_for_log(r"interface ordered runs the retried calls kept in JetStream of queue ordered, in order")
    wait_until(lambda: len(counted(tmp_path)) == 11, 30.0, message="every call has run")
    ordered = [key for key, _ in runs(tmp_path) if key.startswith("o")]
    assert ordered == ["o0:failed", "o0"] + [f"o{n}" for n in range(1, 10)]
    assert report_repeats("keep_order", counted(tmp_path)) == 0
    worker.wait_for_log(r"\(side\.record, attempt 1\) is done")


def test_a_call_jetstream_does_not_take_is_an_error_for_the_caller(on_jetstream: Cluster, nats_server: NatsServer,
                                                                   tmp_path: Path) -> None:
    runner = start_runner(on_jetstream)
    nats_server.kill()
    outcome = runner.run('result = pmnc("worker", queue="retry").side.record(folder, "lost")', remain=2.0,
                         folder=str(tmp_path))
    assert outcome.error is not None, outcome.result
    assert "pmnc.errors.ResourceError" in outcome.error["bases"]
    assert "retried call side.record is not queued: JetStream has not answered" in outcome.error["message"]
    assert outcome.elapsed < 3.0  # within the caller's deadline
