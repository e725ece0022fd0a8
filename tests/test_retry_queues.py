"""Retry interfaces per queue, as the original ran them: the interface of protocol "retry"
named Q runs queue Q with the settings of config_interface_Q.py; the one named `retry`
also runs every queue without an interface of its own; a queue moves between them when
interfaces come and go, with no call lost or run twice.

One real `worker` cage queues calls into its own queues from an HTTP snippet runner
(tests/test_rpc.py) and runs them through module `jobs`, which appends one JSON line
per execution (value, queue's interface, attempt) to a file the test reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import Cluster, config_source, http_config, module_source, wait_until
from test_retry import RT_ID, records, retry_command, values, wait_for_values
from test_rpc import RUNNER_HANDLER, Runner

JOBS = module_source("""
    import json
    import os
    import time

    def _record(path, value, **extra):
        context = pmnc.request.parameters["retry"]
        line = {"value": value, "interface": pmnc.request.interface, "attempt": context["attempt"],
                "id": context["id"], **extra}
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\\n")

    def record(path, value):
        _record(path, value)

    def flaky(path, value, failures):
        failing = pmnc.request.parameters["retry"]["attempt"] <= failures
        _record(path, value, failed=failing)
        if failing:
            raise RuntimeError("fails on purpose")

    def gather(path, value, folder, count):
        # runs only if `count` calls of its queue run at once: each waits here for the others
        open(os.path.join(folder, f"gather-{value}"), "w").close()
        deadline = time.monotonic() + 8.0
        while len([n for n in os.listdir(folder) if n.startswith("gather-")]) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{count} calls did not run at once")
            time.sleep(0.02)
        _record(path, value)

    def hold(path, value, folder):
        # runs until the test lets it go (a call being run while its queue moves)
        open(os.path.join(folder, f"holding-{value}"), "w").close()
        deadline = time.monotonic() + 25.0
        while not os.path.exists(os.path.join(folder, "release")):
            if time.monotonic() > deadline:
                raise RuntimeError("not released")
            time.sleep(0.02)
        _record(path, value)
""", ["record", "flaky", "gather", "hold"])


def retry_config(**settings: Any) -> str:
    return config_source({"protocol": "retry", "retry_interval": 0.2, **settings})


def worker_cage(cluster: Cluster, interfaces: tuple[str, ...], **retry_configs: dict[str, Any]) -> None:
    """Cage `worker`, made or updated (its interfaces, and of protocol retry a
    config_interface_<name>.py for each of `retry_configs`): the snippet runner on http, `jobs`."""
    files = {"jobs.py": JOBS, "interface_http.py": RUNNER_HANDLER,
             "config_interface_http.py": config_source(http_config())}
    files.update({f"config_interface_{name}.py": retry_config(**settings) for name, settings in retry_configs.items()})
    folder = cluster.root / "cages" / "worker"
    unchanged = [file for file, text in files.items() if (folder / file).exists() and
                 (folder / file).read_text() == text]  # rewritten, its interface would restart
    cluster.cage("worker", {file: text for file, text in files.items() if file not in unchanged},
                 interfaces=("http", *interfaces), request_timeout=30.0)


def queue(runner: Runner, code: str, **values: Any) -> None:
    rt_ids = runner.result(f"result = [{code}]", **values)
    assert all(RT_ID.fullmatch(rt_id) for rt_id in rt_ids)


def by_value(path: Path) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {}
    for line in records(path):
        runs.setdefault(line["value"], []).append(line)
    return runs


# --- each queue its own settings ------------------------------------------------------------------------


def test_each_queue_runs_with_the_settings_of_the_interface_named_after_it(cluster: Cluster, tmp_path: Path) -> None:
    worker_cage(cluster, ("retry", "ordered", "wide", "patient"),
                retry={"queue_count": 1}, ordered={"keep_order": True}, wide={"queue_count": 3},
                patient={"retry_interval": 3600.0})
    process = cluster.start("worker")
    runner = Runner(process)
    log = process.log_text()
    assert "interface ordered runs the retried calls of queue ordered, in order, one at a time, retrying " \
           "every 0.2s" in log
    assert "interface wide runs the retried calls of queue wide, up to 3 at once, retrying every 0.2s" in log
    assert "interface retry runs the retried calls of queue retry and of every queue without a retry interface " \
           "of its own, up to 1 at once per queue" in log
    out, folder = tmp_path / "out.jsonl", str(tmp_path)

    # keep_order (interface ordered): the failing first call holds up the two behind it
    queue(runner, 'pmnc(queue="ordered").jobs.flaky(path, "o1", 2), '
                  'pmnc(queue="ordered").jobs.record(path, "o2"), pmnc(queue="ordered").jobs.record(path, "o3")',
          path=str(out))
    # queue_count 3 (interface wide): three calls that succeed only if they run at once
    queue(runner, ", ".join(f'pmnc(queue="wide").jobs.gather(path, "w{i}", folder, 3)' for i in range(3)),
          path=str(out), folder=folder)
    # retry_interval: an hour for queue patient, 0.2 s for a queue without an interface of its own
    queue(runner, 'pmnc(queue="patient").jobs.flaky(path, "p", 1), pmnc(queue="other").jobs.flaky(path, "x", 1)',
          path=str(out))

    wait_for_values(out, ["o1", "o1", "o1", "o2", "o3", "w0", "w1", "w2", "p", "x", "x"])
    ordered = [line for line in records(out) if line["value"].startswith("o")]
    assert [(line["value"], line["attempt"]) for line in ordered] == \
        [("o1", 1), ("o1", 2), ("o1", 3), ("o2", 1), ("o3", 1)]
    runs = by_value(out)
    assert all(line["interface"] == "ordered" for line in ordered)
    assert [(line["interface"], line["attempt"]) for v in ("w0", "w1", "w2") for line in runs[v]] == [("wide", 1)] * 3
    assert [(line["interface"], line["attempt"]) for line in runs["p"]] == [("patient", 1)]
    assert [(line["interface"], line["attempt"]) for line in runs["x"]] == [("retry", 1), ("retry", 2)]
    text = process.log_text()
    assert f"{runs['p'][0]['id']} (jobs.flaky, attempt 1) has failed, next attempt in 3600s" in text
    assert f"{runs['x'][0]['id']} (jobs.flaky, attempt 1) has failed, next attempt in 0s" in text
    assert "interface retry runs the retried calls of queue other, which has no retry interface of its own" in text
    listing = retry_command(cluster, "worker", "list", "patient")
    assert "queue patient: 1 pending (1 retrying, 0 running), 0 done" in listing and "attempt 2" in listing


def test_a_cage_without_the_retry_interface_runs_only_the_queues_it_has_interfaces_for(
        cluster: Cluster, tmp_path: Path) -> None:
    """As in the original: a queue nobody runs keeps its calls until an interface runs it."""
    worker_cage(cluster, ("orders",), orders={})
    process = cluster.start("worker")
    runner = Runner(process)
    out = tmp_path / "out.jsonl"
    queue(runner, 'pmnc(queue="parked").jobs.record(path, "parked"), pmnc(queue="orders").jobs.record(path, "o")',
          path=str(out))
    [seen] = wait_for_values(out, ["o"])
    assert seen["interface"] == "orders"
    assert "queue parked: 1 pending (0 retrying, 0 running)" in retry_command(cluster, "worker", "list")

    worker_cage(cluster, ("orders", "retry"), orders={}, retry={})  # the catch-all comes: it runs the rest
    process.wait_for_log("interface retry has started")
    wait_for_values(out, ["o", "parked"])
    assert [line["interface"] for line in by_value(out)["parked"]] == ["retry"]


def test_each_queue_keeps_finished_ids_for_the_retention_time_of_its_interface(
        cluster: Cluster, tmp_path: Path) -> None:
    worker_cage(cluster, ("retry", "brief"), retry={}, brief={"retention_time": 0.5})
    runner = Runner(cluster.start("worker"))
    out = tmp_path / "out.jsonl"
    both = 'pmnc(queue="brief", id="once").jobs.record(path, "brief"), ' \
           'pmnc(queue="retry", id="once").jobs.record(path, "kept")'
    queue(runner, both, path=str(out))
    wait_for_values(out, ["brief", "kept"])

    # finished calls are purged every 10 s, each queue's by its own interface: then queue brief
    # takes the id again, while queue retry (3 days) still drops it as a duplicate
    def brief_ran_again() -> bool:
        if values(out).count("brief") < 2:
            queue(runner, both, path=str(out))
        return values(out).count("brief") == 2

    wait_until(brief_ran_again, 30, interval=1.0, message="the id accepted again in queue brief")
    runner.process.wait_for_log("with id once is a duplicate of one queued in retry before, dropped")
    assert values(out).count("kept") == 1


# --- a queue moving between interfaces --------------------------------------------------------------------


def test_a_queue_moves_between_interfaces_at_runtime_without_losing_or_repeating_a_call(
        cluster: Cluster, tmp_path: Path) -> None:
    worker_cage(cluster, ("retry",), retry={"queue_count": 4}, moved={"keep_order": True})
    process = cluster.start("worker")
    runner = Runner(process)
    out, folder = tmp_path / "out.jsonl", tmp_path

    # the catch-all runs queue moved; a call of it is running when interface moved comes
    queue(runner, 'pmnc(queue="moved").jobs.hold(path, "held", folder)', path=str(out), folder=str(folder))
    wait_until(lambda: (folder / "holding-held").exists(), 20, message="call held running")
    worker_cage(cluster, ("retry", "moved"), retry={"queue_count": 4}, moved={"keep_order": True})
    process.wait_for_log("interface moved runs the retried calls of queue moved, in order, one at a time")
    queue(runner, 'pmnc(queue="moved").jobs.record(path, "next")', path=str(out))
    listing = retry_command(cluster, "worker", "list", "moved")
    assert "queue moved: 2 pending (0 retrying, 1 running)" in listing
    (folder / "release").touch()
    # the held call is finished by the engine that claimed it, once; the next one waited for it
    wait_for_values(out, ["held", "next"])
    assert [(line["value"], line["interface"]) for line in records(out)] == [("held", "retry"), ("next", "moved")]

    # interface moved goes: the catch-all takes its queue back
    worker_cage(cluster, ("retry",), retry={"queue_count": 4}, moved={"keep_order": True})
    process.wait_for_log("interface moved no longer runs the retried calls of queue moved")
    queue(runner, 'pmnc(queue="moved").jobs.record(path, "back")', path=str(out))
    wait_for_values(out, ["held", "next", "back"])
    assert by_value(out)["back"][0]["interface"] == "retry"
    adopted = "interface retry runs the retried calls of queue moved, which has no retry interface of its own"
    assert process.log_text().count(adopted) == 2  # at first, and again once moved had gone
    wait_until(lambda: "queue moved: 0 pending (0 retrying, 0 running), 3 done" in
               retry_command(cluster, "worker", "list", "moved"), 20, interval=0.5)
    assert sorted(values(out)) == ["back", "held", "next"]  # each once
