"""Crash torture: 2000 retried calls from cage `source` to cage `sink`, both killed -9 at random
moments while the calls flow; in the end every call has run, once in the table, and nothing else.

The sink's handler records each execution in PostgreSQL: one row per execution in
`torture_runs`, and the call in `torture` (primary key: the retry id, so a repeated
execution changes nothing there). The driver queues the calls through the source's
HTTP interface in batches, each with its own id (`call-<n>`); a batch that fails
because the source died is sent again whole once it is back - the ids make that
safe, which is exactly what a client of a crashing cage does.
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import socket
import textwrap
import threading
import time

import pytest
from conftest import Cluster, config_source, http_config, http_request, module_source, wait_until
from pg_peer import PgServer
from test_rpc import RUNNER_HANDLER

CALLS = 2000
BATCH = 50
KILLS = 6

SINK = module_source("""
    def store(n):
        retry_id = pmnc.request.parameters["retry"]["id"]
        pmnc.transaction.db1.execute(
            "INSERT INTO torture_runs (retry_id, n) VALUES ({retry_id}, {n})",
            "INSERT INTO torture (retry_id, n) VALUES ({retry_id}, {n}) ON CONFLICT (retry_id) DO NOTHING",
            retry_id=retry_id, n=n)
""", ["store"])

FEED = """
for n in range(first, first + count):
    pmnc("sink", queue="retry", id=f"call-{n}").sink.store(n)
result = count
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _feed(port: int, first: int, count: int) -> bool:
    job = pickle.dumps({"code": textwrap.dedent(FEED), "remain": None, "values": {"first": first, "count": count}})
    try:
        status, _, content = http_request(port, "/", "POST", job, {"content-type": "application/octet-stream"},
                                          timeout=30.0)
    except OSError:
        return False  # the source died under the request
    return status == 200 and pickle.loads(content).get("result") == count


@pytest.mark.timeout(300)
def test_no_call_is_lost_or_doubled_when_both_cages_crash_again_and_again(cluster: Cluster, pg: PgServer) -> None:
    pg.query("DROP TABLE IF EXISTS torture, torture_runs")
    pg.query("CREATE TABLE torture (retry_id text PRIMARY KEY, n int NOT NULL)")
    pg.query("CREATE TABLE torture_runs (retry_id text NOT NULL, n int NOT NULL)")
    cluster.shared("config_interface_retry.py", config_source(
        {"protocol": "retry", "retry_interval": 0.5, "queue_count": 8, "request_timeout": 3.0}))
    cluster.cage("sink", {"sink.py": SINK, "config_resource_db1.py": config_source(pg.config("db1"))},
                 interfaces=("rpc", "retry"))
    port = _free_port()
    cluster.cage("source", {"interface_http.py": RUNNER_HANDLER,
                            "config_interface_http.py": config_source(http_config(port))},
                 interfaces=("rpc", "http", "retry"))
    cages = {"sink": cluster.start("sink"), "source": cluster.start("source")}

    stop_killing = threading.Event()
    kills: list[str] = []

    def killer() -> None:
        chance = random.Random()
        order = ["source", "sink"] * (KILLS // 2)
        chance.shuffle(order)
        while len(kills) < KILLS and not stop_killing.wait(chance.uniform(0.3, 1.5)):
            name = order[len(kills)]
            process = cages[name]
            ready = process.log_text().count("the cage is ready")
            pids = process.child_pids()
            try:
                os.kill(pids[-1], signal.SIGKILL)
            except ProcessLookupError:
                continue
            kills.append(f"{name}@{_count(pg)}")
            process.wait_for_log("the cage is ready", count=ready + 1, timeout=60)

    thread = threading.Thread(target=killer, name="killer")
    thread.start()
    try:
        first = 0
        deadline = time.monotonic() + 180
        while first < CALLS:
            assert time.monotonic() < deadline, "the calls could not all be queued"
            if _feed(port, first, BATCH):
                first += BATCH
            else:
                wait_until(lambda: _source_answers(port), 60, message="the source back")
        thread.join(120)  # the kills go on while the queued calls are run
    finally:
        stop_killing.set()
        thread.join(90)

    wait_until(lambda: _count(pg) >= CALLS, 120, interval=0.5, message=f"{CALLS} calls in the table")
    rows = pg.query("SELECT n, count(*) FROM torture GROUP BY n ORDER BY n")
    assert [n for n, _ in rows] == list(range(CALLS))  # every call, none lost ...
    assert all(count == 1 for _, count in rows)  # ... each under one retry id: duplicates were dropped
    [(runs,)] = pg.query("SELECT count(*) FROM torture_runs")
    assert runs >= CALLS
    print(f"\ncrash torture: {CALLS} calls, kills {kills}, {runs} executions, {runs - CALLS} repeated")


def _source_answers(port: int) -> bool:
    return _feed(port, 0, 0)


def _count(pg: PgServer) -> int:
    [(count,)] = pg.query("SELECT count(*) FROM torture")
    return int(count)
