"""Benchmark retried calls, pmnc("callee", queue="retry", ...).bench.record(i), against Celery tasks.

    .venv/bin/python bench/retry_enqueue.py [--calls 2000] [--e2e-calls 1000] [--threads 8] [--warmup 200]
                                            [--queue-count 16] [--celery sqlite,sqlite-wal,fs] [--deadline 120]
                                            [--keep]

Needs Celery and SQLAlchemy (`./setup bench`). Two things are measured, each
on both sides in the same run, one after the other:

- durable enqueues/s: N calls queued, each committed to disk (fsync) before
  it returns, on 1 thread and then over T threads, timed inside the process
  that queues them. pmnc: `pmnc("callee", queue="retry", id=..., expires_in=...)
  .bench.record(i)` in a cage `enqueuer` (interfaces rpc and http, no retry
  interface: the calls stay queued), asked by GET /enqueue. Celery:
  `record.apply_async((i,), task_id=..., expires=...)` in a producer process
  (this script with --celery-produce), its broker SQLAlchemy on a SQLite file
  (`sqla+sqlite://`, SQLite's default rollback journal with synchronous=FULL:
  every commit fsynced), no worker running;
- end-to-end executions/s between two cages: N calls queued over T threads in
  a cage `caller` for a cage `callee` (both with interfaces rpc and retry,
  `queue_count` as given); the time from the first enqueue until the callee
  has run all N. Celery: the same N tasks from a producer process, run by a
  worker process (`celery worker --pool=threads --concurrency=<queue_count>`),
  results in `db+sqlite://`; the time until the worker has stored all N
  results.

Celery runs in up to three setups (`--celery`): `sqlite` as above; `sqlite-wal`,
the same files in WAL mode (still synchronous=FULL, as pmnc's state file);
`fs`, the filesystem transport and file result backend, a reference that is
NOT equally durable (it writes files without fsync). Every process started
is stopped at the end whatever happens. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from http_hello import HOST, end_process, pmnc_version, read_text, run_pair, wait_until
from rpc_calls import Cage
from xmlrpc_echo import cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
REQUEST_TIMEOUT = 300.0  # the HTTP cages' request_timeout: a whole /enqueue must fit in it
EXPIRES_IN = 3600.0  # expires_in of every pmnc call, expires= of every Celery task
POLL = 0.02  # seconds between looks at the callee's (the worker's) count of executed calls
CELERY_MODES = ("sqlite", "sqlite-wal", "fs")
CELERY_POLLING_INTERVAL = 0.1  # seconds an idle Celery worker waits before looking at its broker again

# --- the pmnc side: three cages ----------------------------------------------------------------------

CAGE_CONFIG = '''config = dict(
    interfaces={interfaces!r},
    request_timeout={request_timeout!r},
    thread_count={thread_count!r},
    sweep_period=15.0,
    log_level="LOG",
)

# EOF
'''

RETRY_CONFIG = '''# bench/retry_enqueue.py: queue_count set for the benchmark, attempts of 10 s, a failed call
# tried again after 2 s (the benchmark counts such retries as problems); otherwise as shipped.

config = dict(
    protocol="retry",
    queue_count={queue_count!r},
    keep_order=False,
    retry_interval=2.0,
    backoff=False,
    max_retry_interval=3600.0,
    retention_time=259200.0,
    request_timeout=10.0,
)

# EOF
'''

CALLEE_MODULE = '''# The callee cage of bench/retry_enqueue.py: what pmnc("callee", queue=...).bench.record(i) runs.

import threading

__all__ = ["record"]

_lock = threading.Lock()
_seen = []


def record(i):
    with _lock:
        _seen.append(i)
    return i


# EOF
'''

ENQUEUE_HANDLER = '''# bench/retry_enqueue.py: GET /enqueue?n=N&threads=T&target=CAGE&queue=Q&prefix=P queues N retried
# calls pmnc(CAGE, queue=Q, id=f"{P}-{i}", expires_in=EXPIRES).bench.record(i), T=1 on this request's
# own thread, else over T threads started together, and answers as JSON how long they took.

import json
import statistics
import threading
import time
import urllib.parse

__all__ = ["process_request"]

EXPIRES = __EXPIRES__


def _enqueue(target, queue, prefix, ids, latencies, errors):
    for i in ids:
        began = time.perf_counter()
        try:
            rt_id = pmnc(target, queue=queue, id=f"{prefix}-{i}", expires_in=EXPIRES).bench.record(i)
        except Exception as e:
            errors.append(f"call {i}: {type(e).__name__}: {e}")
        else:
            if not (isinstance(rt_id, str) and rt_id.startswith("RT-")):
                errors.append(f"call {i} returned {rt_id!r:.200}")
        latencies.append(time.perf_counter() - began)


def _thread(start, *args):
    start.wait()  # a thread of its own: pmnc.request is infinite
    _enqueue(*args)


def process_request(request: dict, response: dict) -> None:
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(request["url"]).query)
    calls, threads = int(query["n"][0]), int(query["threads"][0])
    target, queue, prefix = query["target"][0], query["queue"][0], query["prefix"][0]
    shares = [range(t, calls, threads) for t in range(threads)]
    latencies = [[] for _ in shares]
    errors = [[] for _ in shares]
    if threads == 1:
        start = time.time()
        began = time.perf_counter()
        _enqueue(target, queue, prefix, shares[0], latencies[0], errors[0])
        seconds = time.perf_counter() - began
    else:
        barrier = threading.Barrier(threads + 1)
        workers = [threading.Thread(target=_thread, args=(barrier, target, queue, prefix, *part),
                                    name=f"bench-{n}", daemon=True)
                   for n, part in enumerate(zip(shares, latencies, errors))]
        for worker in workers:
            worker.start()
        barrier.wait()
        start = time.time()
        began = time.perf_counter()
        for worker in workers:
            worker.join()
        seconds = time.perf_counter() - began
    every = [x for part in latencies for x in part]
    failed = [x for part in errors for x in part]
    cuts = statistics.quantiles(every, n=100) if len(every) > 1 else [float("nan")] * 99
    response["content"] = json.dumps({"calls": len(every), "seconds": seconds, "start": start,
                                      "p50_ms": cuts[49] * 1000, "p99_ms": cuts[98] * 1000,
                                      "errors": len(failed), "first_error": failed[0] if failed else ""}).encode()
    response["headers"]["content-type"] = "application/json"


# EOF
'''


@dataclass
class Run:
    """One measured batch, as either side reports it."""

    calls: int
    seconds: float  # enqueueing them (for end to end: the first enqueue until the last execution)
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    errors: int = 0
    first_error: str = ""
    start: float = 0.0  # epoch of the first enqueue
    cpu: float | None = None  # CPU seconds of the processes involved, meanwhile
    enqueue_seconds: float = float("nan")  # end to end: how long enqueueing took
    executed: int = 0  # end to end: calls run (done) by the deadline
    retries: int = 0  # end to end: calls that needed more than one attempt
    stored: int | None = None  # enqueue: rows the broker/state file holds afterwards (None: not counted)
    split: str = ""  # end to end: CPU per call of each process

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Run:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


def count(path: Path, sql: str, *params: Any) -> int:
    """One number from a SQLite file another process writes (0 while the file or table is missing)."""
    if not path.exists():
        return 0
    db = sqlite3.connect(path, timeout=10.0)
    try:
        row = db.execute(sql, params).fetchone()
        return int(row[0] or 0) if row else 0
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return 0
        raise
    finally:
        db.close()


def one_value(path: Path, sql: str, *params: Any) -> Any:
    db = sqlite3.connect(path, timeout=10.0)
    try:
        row = db.execute(sql, params).fetchone()
        return row[0] if row else None
    finally:
        db.close()


def wait_count(counter: Any, target: int, deadline: float) -> tuple[int, float]:
    """Poll `counter()` until it reaches `target` or the deadline (monotonic); (last count, epoch seen)."""
    while True:
        n = counter()
        if n >= target:
            return n, time.time()
        if time.monotonic() >= deadline:
            return n, time.time()
        time.sleep(POLL)


class PmncCages:
    """Cages `enqueuer` (rpc, http), `caller` (rpc, retry, http) and `callee` (rpc, retry)."""

    def __init__(self, base: Path) -> None:
        self.root = base / "pmnc"
        self.enqueuer = Cage(self.root, "enqueuer", base / "enqueuer.out")
        self.caller = Cage(self.root, "caller", base / "caller.out")
        self.callee = Cage(self.root, "callee", base / "callee.out")
        self.cages = (self.enqueuer, self.caller, self.callee)
        self.ports: dict[str, int] = {}
        self.queue_count = 16
        self.thread_count = 10
        self.description = ""

    def state(self, cage: Cage) -> Path:
        return cage.folder / "state" / "state.sqlite"

    def make_tree(self) -> None:
        (self.root / "cages").mkdir(parents=True)
        shutil.copy(ROOT / "startup.py", self.root / "startup.py")
        os.symlink(ROOT / "lib", self.root / "lib")
        shutil.copytree(ROOT / "cages" / ".shared", self.root / "cages" / ".shared",
                        ignore=shutil.ignore_patterns("ssl_keys", "__pycache__"))
        http = (ROOT / "cages" / "sample" / "config_interface_http.py").read_text()
        http, replaced = re.subn(r"listener_address\s*=\s*\([^)]*\)", f'listener_address=("{HOST}", 0)', http)
        if replaced != 1:
            raise RuntimeError("cages/sample/config_interface_http.py: no listener_address to rewrite")
        handler = ENQUEUE_HANDLER.replace("__EXPIRES__", repr(EXPIRES_IN))
        self.thread_count = max(10, 2 * self.queue_count + 4)  # the callee: queue_count runs + as many hand-overs
        retry = RETRY_CONFIG.format(queue_count=self.queue_count)
        for cage, interfaces, timeout in ((self.enqueuer, ("rpc", "http"), REQUEST_TIMEOUT),
                                          (self.caller, ("rpc", "retry", "http"), REQUEST_TIMEOUT),
                                          (self.callee, ("rpc", "retry"), 10.0)):
            cage.folder.mkdir()
            (cage.folder / "config_interfaces.py").write_text(CAGE_CONFIG.format(
                interfaces=interfaces, request_timeout=timeout, thread_count=self.thread_count))
            if "http" in interfaces:
                (cage.folder / "config_interface_http.py").write_text(http)
                (cage.folder / "interface_http.py").write_text(handler)
            if "retry" in interfaces:
                (cage.folder / "config_interface_retry.py").write_text(retry)
        (self.callee.folder / "bench.py").write_text(CALLEE_MODULE)
        self.description = (f"{pmnc_version()}: cages enqueuer (rpc, http), caller (rpc, retry, http), "
                            f"callee (rpc, retry); {self.thread_count} worker threads each, retry "
                            f"queue_count={self.queue_count}")

    def start(self) -> None:
        self.make_tree()
        for cage in self.cages:  # all at once: the first makes the cluster's keys, the others wait for its lock
            cage.launch()

        def logged(cage: Cage, pattern: str, what: str) -> re.Match[str]:
            return wait_until(lambda: cage.search(pattern), START_TIMEOUT, f"cage {cage.name}: {what}")

        for cage in (self.enqueuer, self.caller):
            match = logged(cage, r"interface http listens on https?://[\d.]+:(\d+)/", "interface http listening")
            self.ports[cage.name] = int(match.group(1))
        for cage in self.cages:
            logged(cage, r"the cage is ready", "ready")
        for cage in (self.caller, self.callee):
            logged(cage, r"interface retry runs (the )?retried calls", "interface retry started")

    def get(self, cage: Cage, query: str) -> dict[str, Any]:
        connection = http.client.HTTPConnection(HOST, self.ports[cage.name], timeout=REQUEST_TIMEOUT + 10.0)
        try:
            connection.request("GET", f"/enqueue?{query}")
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        if response.status != 200:
            raise RuntimeError(f"GET /enqueue on cage {cage.name}: {response.status} {body[:2000]!r}")
        answer: dict[str, Any] = json.loads(body)
        return answer

    def enqueue(self, calls: int, threads: int, warmup: int, prefix: str) -> Run:
        """Warm-up calls to queue "warmup", then the measured ones to queue "retry", for the callee:
        the enqueuer runs no retry interface, so they stay in its state file."""
        if warmup:
            self.get(self.enqueuer, f"n={warmup}&threads={threads}&target=callee&queue=warmup&prefix={prefix}w")
        pid = self.enqueuer.pid()
        before = cpu_seconds(pid)
        run = Run.from_json(self.get(self.enqueuer, f"n={calls}&threads={threads}&target=callee&queue=retry"
                                                    f"&prefix={prefix}"))
        after = cpu_seconds(pid)
        run.cpu = after - before if after is not None and before is not None else None
        run.stored = count(self.state(self.enqueuer), "SELECT COUNT(*) FROM retry WHERE queue = 'retry' "
                                                      "AND status = 'pending' AND filtered_id LIKE ?", f"{prefix}-%")
        return run

    def end_to_end(self, calls: int, threads: int, prefix: str, deadline: float) -> Run:
        """N calls queued in the caller for the callee; until the callee has run them all."""
        callee_state = self.state(self.callee)
        done_sql = "SELECT COUNT(*) FROM retry WHERE status = 'done'"
        base = count(callee_state, done_sql)
        pids = [self.caller.pid(), self.callee.pid()]
        before = [cpu_seconds(pid) for pid in pids]
        answer: dict[str, Any] = {}
        failure: list[BaseException] = []

        def request() -> None:
            try:
                answer.update(self.get(self.caller, f"n={calls}&threads={threads}&target=callee&queue=retry"
                                                    f"&prefix={prefix}"))
            except BaseException as e:
                failure.append(e)

        sender = threading.Thread(target=request, name="enqueue", daemon=True)
        sender.start()
        done, seen = wait_count(lambda: count(callee_state, done_sql) - base if not failure else calls + 1,
                                calls, time.monotonic() + deadline)
        after = [cpu_seconds(pid) for pid in pids]
        sender.join(REQUEST_TIMEOUT + 10.0)
        if failure:
            raise RuntimeError(f"end to end: queueing in the caller failed: {failure[0]}")
        run = Run.from_json(answer)
        run.enqueue_seconds, run.executed = run.seconds, min(done, calls)
        finished = one_value(callee_state, "SELECT MAX(finished) FROM retry WHERE status = 'done'")
        end = float(finished) if done >= calls and finished is not None else seen
        run.seconds = end - run.start
        if all(x is not None for x in before + after):
            used = [b - a for a, b in zip(before, after, strict=True)]  # type: ignore[operator]
            run.cpu = sum(used)
            run.split = f"caller {_per_call(used[0], calls)} + callee {_per_call(used[1], calls)}"
        run.retries = count(callee_state, "SELECT COUNT(*) FROM retry WHERE attempt > 1") + \
            count(self.state(self.caller), "SELECT COUNT(*) FROM retry WHERE attempt > 1")
        if done < calls:
            run.errors += calls - done
            run.first_error = run.first_error or f"only {done} of {calls} run within {deadline:.0f}s"
        return run

    def log_problems(self) -> list[str]:
        return [f"{cage.name}: {line}" for cage in self.cages
                for line in cage.log_text().splitlines() if " ERR " in line or " WRN " in line]

    def stop(self) -> str:
        for cage in self.cages:
            cage.signal_stop()
        return "; ".join(cage.wait_stopped() for cage in self.cages)


# --- the Celery side: a producer process per run, a worker process per end-to-end mode -----------------

CELERY_APP = '''"""bench/retry_enqueue.py's Celery application, set up by BENCH_CELERY_MODE and BENCH_CELERY_DATA."""

import json
import os
import threading
import time
import uuid

import kombu.transport.filesystem
import kombu.transport.sqlalchemy
from celery import Celery, signals
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps
from sqlalchemy import event
from sqlalchemy.engine import Engine

MODE = os.environ["BENCH_CELERY_MODE"]  # sqlite | sqlite-wal | fs
DATA = os.environ["BENCH_CELERY_DATA"]  # this mode's folder

app = Celery("celery_bench")
if MODE.startswith("sqlite"):
    app.conf.broker_url = f"sqla+sqlite:///{DATA}/broker.sqlite"
    app.conf.result_backend = f"db+sqlite:///{DATA}/results.sqlite"
else:
    app.conf.broker_url = "filesystem://"
    app.conf.broker_transport_options = {
        "data_folder_in": f"{DATA}/queue", "data_folder_out": f"{DATA}/queue",
        "processed_folder": f"{DATA}/processed", "store_processed": False, "control_folder": f"{DATA}/control"}
    app.conf.result_backend = f"file://{DATA}/results"
app.conf.broker_connection_retry_on_startup = True
app.conf.worker_hijack_root_logger = False

# An idle worker looks at the broker every polling_interval seconds (kombu's default 1.0). The
# SQLAlchemy transport hands its transport options to create_engine(), so it cannot be given there.
kombu.transport.sqlalchemy.Transport.polling_interval = __POLLING_INTERVAL__
kombu.transport.filesystem.Transport.polling_interval = __POLLING_INTERVAL__


def _put_whole(self, queue, payload, **kwargs):
    """kombu's filesystem _put, writing the message under a name the reader skips and renaming it into
    place: kombu writes it under its final name, and a worker that reads it half-written fails with
    JSONDecodeError, "Unrecoverable error", and exits (celery/kombu#1551)."""
    name = f"{int(round(time.monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
    temp = os.path.join(self.data_folder_out, f"_{name}.tmp")
    with open(temp, "wb", buffering=0) as f:
        f.write(str_to_bytes(dumps(payload)))
    os.rename(temp, os.path.join(self.data_folder_out, name))


kombu.transport.filesystem.Channel._put = _put_whole

_lock = threading.Lock()
_seen = []
SQLITE = {}  # database file → (journal_mode, synchronous) as the first connection of this process saw them


@event.listens_for(Engine, "do_connect")
def _which_file(dialect, connection_record, cargs, cparams):
    connection_record.info["bench_file"] = cargs[0] if cargs else cparams.get("database")


@event.listens_for(Engine, "connect")
def _sqlite_settings(dbapi_connection, connection_record):
    name = os.path.basename(str(connection_record.info.get("bench_file")))
    if name in SQLITE:  # only the first connection to each file asks
        return
    journal = dbapi_connection.execute("PRAGMA journal_mode").fetchone()[0]
    synchronous = dbapi_connection.execute("PRAGMA synchronous").fetchone()[0]
    SQLITE[name] = (journal, {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(synchronous, synchronous))
    with open(os.path.join(DATA, f"sqlite-{os.getpid()}.json"), "w") as f:
        json.dump(SQLITE, f)


@app.task(name="record")
def record(i):
    with _lock:
        _seen.append(i)
    return i


@signals.worker_ready.connect
def _ready(**kwargs):
    with open(os.path.join(DATA, "worker-ready"), "w") as f:
        f.write(str(os.getpid()))


# EOF
'''


def celery_produce(args: argparse.Namespace) -> int:
    """--celery-produce: warm-up sends to queue "warmup" (no worker reads it), then the measured sends
    over `threads` threads; one JSON line on stdout."""
    sys.path.insert(0, args.app_dir)
    import celery_bench  # the module CeleryPeer writes

    calls, threads = args.calls, args.threads
    celery_bench.app.conf.broker_pool_limit = max(10, threads + 2)
    record = celery_bench.record
    shares = [range(t, calls, threads) for t in range(threads)]
    latencies: list[list[float]] = [[] for _ in shares]
    errors: list[list[str]] = [[] for _ in shares]
    ready, start = threading.Barrier(threads + 1), threading.Barrier(threads + 1)

    def thread(n: int, ids: range, mine: list[float], failed: list[str]) -> None:
        try:
            for k in range(max(args.warmup // threads, 1)):  # connects this thread's producer
                record.apply_async((k,), queue="warmup", task_id=f"{args.prefix}w-{n}-{k}", expires=EXPIRES_IN)
        except Exception as e:
            failed.append(f"warm-up: {type(e).__name__}: {e}")
        ready.wait(START_TIMEOUT)
        start.wait(START_TIMEOUT)
        if failed:
            return
        for i in ids:
            began = time.perf_counter()
            try:
                record.apply_async((i,), task_id=f"{args.prefix}-{i}", expires=EXPIRES_IN)
            except Exception as e:
                failed.append(f"call {i}: {type(e).__name__}: {e}")
            mine.append(time.perf_counter() - began)

    workers = [threading.Thread(target=thread, args=(n, *part), name=f"producer-{n}", daemon=True)
               for n, part in enumerate(zip(shares, latencies, errors, strict=True))]
    for worker in workers:
        worker.start()
    ready.wait(START_TIMEOUT)
    cpu_before = time.process_time()
    start.wait(START_TIMEOUT)
    began_at, began = time.time(), time.perf_counter()
    for worker in workers:
        worker.join()
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu_before
    every = [x for part in latencies for x in part]
    failed = [x for part in errors for x in part]
    cuts = statistics.quantiles(every, n=100) if len(every) > 1 else [float("nan")] * 99
    print(json.dumps({"calls": len(every), "seconds": seconds, "start": began_at, "p50_ms": cuts[49] * 1000,
                      "p99_ms": cuts[98] * 1000, "errors": len(failed), "first_error": failed[0] if failed else "",
                      "cpu": cpu, "sqlite": celery_bench.SQLITE}), flush=True)
    return 0


class CeleryPeer:
    """Celery with each mode's broker and result backend in a folder of its own."""

    def __init__(self, base: Path) -> None:
        self.base = base / "celery"
        self.process: subprocess.Popen[bytes] | None = None  # the worker running, if any
        self.producers: list[subprocess.Popen[str]] = []
        self.worker_mode = ""
        self.worker_data: Path | None = None
        self.sqlite_seen: dict[str, dict[str, list[str]]] = {}  # mode → file → (journal_mode, synchronous)
        self.description = ""
        self.concurrency = 16

    def start(self) -> None:
        import celery
        import kombu
        import sqlalchemy

        self.base.mkdir(parents=True)
        (self.base / "celery_bench.py").write_text(
            CELERY_APP.replace("__POLLING_INTERVAL__", repr(CELERY_POLLING_INTERVAL)))
        self.description = (f"Celery {celery.__version__}, kombu {kombu.__version__}, SQLAlchemy "
                            f"{sqlalchemy.__version__}, SQLite {sqlite3.sqlite_version}; worker --pool=threads "
                            f"--concurrency={self.concurrency}, idle polling every {CELERY_POLLING_INTERVAL:g}s")

    def folder(self, phase: str, mode: str) -> Path:
        """A fresh folder per phase and mode (its databases in WAL mode for sqlite-wal)."""
        data = self.base / f"{phase}-{mode}"
        if not data.exists():
            data.mkdir()
            for sub in ("queue", "processed", "results", "control"):
                (data / sub).mkdir()
            if mode == "sqlite-wal":  # WAL is kept in the file; SQLAlchemy's connections keep synchronous=FULL
                for name in ("broker.sqlite", "results.sqlite"):
                    db = sqlite3.connect(data / name)
                    db.execute("PRAGMA journal_mode=WAL")
                    db.close()
        return data

    def env(self, mode: str, data: Path) -> dict[str, str]:
        return dict(os.environ, PYTHONUNBUFFERED="1", BENCH_CELERY_MODE=mode, BENCH_CELERY_DATA=str(data),
                    PYTHONPATH=str(self.base))

    def produce(self, mode: str, data: Path, calls: int, threads: int, warmup: int,
                prefix: str) -> subprocess.Popen[str]:
        command = [sys.executable, str(Path(__file__).resolve()), "--celery-produce", "--app-dir", str(self.base),
                   "--calls", str(calls), "--threads", str(threads), "--warmup", str(warmup), "--prefix", prefix]
        producer = subprocess.Popen(command, cwd=self.base, env=self.env(mode, data), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)
        self.producers.append(producer)
        return producer

    def produced(self, producer: subprocess.Popen[str], mode: str) -> Run:
        try:
            out, err = producer.communicate(timeout=REQUEST_TIMEOUT)
        except subprocess.TimeoutExpired:
            producer.kill()
            producer.wait(10)
            raise RuntimeError(f"the Celery producer ({mode}) did not finish within {REQUEST_TIMEOUT:.0f}s") from None
        finally:
            if producer.poll() is not None and producer in self.producers:
                self.producers.remove(producer)
        if producer.returncode != 0 or not out.strip():
            raise RuntimeError(f"the Celery producer ({mode}) failed with code {producer.returncode}:\n"
                               f"{out[-2000:]}{err[-3000:]}")
        answer = json.loads(out.strip().splitlines()[-1])
        for name, settings in answer.get("sqlite", {}).items():
            self.sqlite_seen.setdefault(mode, {})[Path(name).name] = settings
        return Run.from_json(answer)

    @staticmethod
    def queued(mode: str, data: Path) -> int:
        """Messages waiting in queue "celery"."""
        if mode == "fs":
            return sum(1 for name in os.listdir(data / "queue") if name.endswith(".celery.msg"))
        return count(data / "broker.sqlite", "SELECT COUNT(*) FROM kombu_message m JOIN kombu_queue q "
                                             "ON m.queue_id = q.id WHERE q.name = 'celery' AND m.visible")

    @staticmethod
    def results(mode: str, data: Path) -> int:
        if mode == "fs":
            return len(os.listdir(data / "results"))
        return count(data / "results.sqlite", "SELECT COUNT(*) FROM celery_taskmeta WHERE status = 'SUCCESS'")

    @staticmethod
    def last_result(mode: str, data: Path) -> float | None:
        """Epoch of the latest result stored."""
        if mode == "fs":
            times = [entry.stat().st_mtime for entry in os.scandir(data / "results")]
            return max(times) if times else None
        value = one_value(data / "results.sqlite", "SELECT MAX(date_done) FROM celery_taskmeta")
        if not value:
            return None
        return datetime.datetime.fromisoformat(str(value)).replace(tzinfo=datetime.UTC).timestamp()

    def enqueue(self, mode: str, calls: int, threads: int, warmup: int, prefix: str) -> Run:
        """No worker: the messages stay in the broker."""
        data = self.folder("enqueue", mode)
        before = self.queued(mode, data)
        run = self.produced(self.produce(mode, data, calls, threads, warmup, prefix), mode)
        run.stored = self.queued(mode, data) - before
        return run

    def start_worker(self, mode: str) -> Path:
        data = self.folder("e2e", mode)
        output = self.base / f"worker-{mode}.out"
        command = [sys.executable, "-m", "celery", "-A", "celery_bench", "worker", "--pool=threads",
                   f"--concurrency={self.concurrency}", "--loglevel=WARNING", "--without-heartbeat",
                   "--without-mingle", "--without-gossip", "-n", f"bench-{mode}@%h", "-Q", "celery"]
        with open(output, "wb") as out:
            self.process = subprocess.Popen(command, cwd=self.base, env=self.env(mode, data),
                                            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self.worker_mode, self.worker_data = mode, data

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"the Celery worker ({mode}) exited with code {self.process.returncode}: "
                                   f"{read_text(output)[-3000:]}")
            return (data / "worker-ready").exists()

        wait_until(ready, START_TIMEOUT, f"the Celery worker ({mode}): ready")
        return data

    def end_to_end(self, mode: str, data: Path, calls: int, threads: int, warmup: int, prefix: str,
                   deadline: float) -> Run:
        """N tasks from a producer; until the worker has stored all N results."""
        assert self.process is not None
        base = self.results(mode, data)
        worker_before = cpu_seconds(self.process.pid)
        producer = self.produce(mode, data, calls, threads, warmup, prefix)
        done, seen = wait_count(lambda: self.results(mode, data) - base if producer.poll() in (None, 0)
                                else calls + 1, calls, time.monotonic() + deadline)
        worker_after = cpu_seconds(self.process.pid)
        run = self.produced(producer, mode)
        run.enqueue_seconds, run.executed = run.seconds, min(done, calls)
        last = self.last_result(mode, data) if done >= calls else None
        run.seconds = (last if last is not None else seen) - run.start
        if run.cpu is not None and worker_before is not None and worker_after is not None:
            worker = _per_call(worker_after - worker_before, calls)
            run.split = f"producer {_per_call(run.cpu, calls)} + worker {worker}"
            run.cpu += worker_after - worker_before
        else:
            run.cpu = None
        if done < calls:
            run.errors += calls - done
            run.first_error = run.first_error or f"only {done} of {calls} run within {deadline:.0f}s"
        return run

    def stop_worker(self) -> str:
        if self.process is None:
            return ""
        process, self.process = self.process, None
        if process.poll() is None:
            process.terminate()  # a warm shutdown
        stopped = end_process(process, f"Celery worker ({self.worker_mode})", STOP_TIMEOUT, lambda: None)
        if self.worker_data is not None:  # what the worker's connections saw (celery_bench.SQLITE)
            for seen in self.worker_data.glob("sqlite-*.json"):
                for name, settings in json.loads(read_text(seen) or "{}").items():
                    self.sqlite_seen.setdefault(self.worker_mode, {})[name] = settings
        return stopped

    def stop(self) -> str:
        stopped = []
        for producer in self.producers:
            if producer.poll() is None:
                producer.kill()
                producer.wait(10)
                stopped.append("a Celery producer killed")
        self.producers.clear()
        worker = self.stop_worker()
        return "; ".join([*stopped, worker] if worker else stopped) or "Celery: nothing running"


# --- the run ---------------------------------------------------------------------------------------------


def _per_call(cpu: float | None, calls: int) -> str:
    return "?" if cpu is None or not calls else f"{cpu / calls * 1e6:.0f}us"


def _ms(value: float) -> str:
    return "?" if value != value else f"{value:.3f}ms"


def print_enqueue_table(rows: list[tuple[str, Run]]) -> None:
    print(f"{'durable enqueues':<36}{'calls/s':>9}{'calls':>7}{'p50':>10}{'p99':>10}{'errors':>8}{'stored':>8}"
          f"{'CPU/call':>10}")
    for name, run in rows:
        stored = "?" if run.stored is None else str(run.stored)
        print(f"{name:<36}{run.rate:>9.0f}{run.calls:>7}{_ms(run.p50_ms):>10}{_ms(run.p99_ms):>10}{run.errors:>8}"
              f"{stored:>8}{_per_call(run.cpu, run.calls):>10}")
        if run.first_error:
            print(f"  {name}: first error: {run.first_error}")


def print_e2e_table(rows: list[tuple[str, Run]]) -> None:
    print(f"{'end to end':<36}{'calls/s':>9}{'calls':>7}{'seconds':>9}{'enqueued in':>13}{'run':>7}"
          f"{'retries':>9}{'errors':>8}{'CPU/call':>10}  of which")
    for name, run in rows:
        print(f"{name:<36}{run.rate:>9.0f}{run.calls:>7}{run.seconds:>8.2f}s{run.enqueue_seconds:>12.2f}s"
              f"{run.executed:>7}{run.retries:>9}{run.errors:>8}{_per_call(run.cpu, run.calls):>10}  {run.split}")
        if run.first_error:
            print(f"  {name}: first error: {run.first_error}")


def ratio(pmnc: Run, peer: Run) -> float:
    return pmnc.rate / peer.rate if peer.rate else float("nan")


def verdict(what: str, pmnc: Run, peers: dict[str, Run], target: float | None) -> str:
    parts = []
    for mode, peer in peers.items():
        r = ratio(pmnc, peer)
        if mode == "fs":
            parts.append(f"pmnc/Celery fs {r:.2f} (not equal durability)")
        elif target is None:
            parts.append(f"pmnc/Celery {mode} {r:.2f}")
        else:
            parts.append(f"pmnc/Celery {mode} {r:.2f} ({'met' if r >= target else 'NOT met'})")
    head = f"{what} (target >= {target:g}, equal durability)" if target is not None else what
    return f"{head}: {', '.join(parts)}"


def mount_of(path: Path) -> str:
    """The filesystem type and device the temporary folder is on (fsync there is real on ext4/xfs, not on tmpfs)."""
    best = ("", "?", "?")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            device, point, kind = line.split()[:3]
            if str(path).startswith(point.rstrip("/") + "/") and len(point) >= len(best[0]):
                best = (point, kind, device)
    except OSError:
        pass
    return f"{best[1]} ({best[2]} on {best[0] or '?'})"


def bench(args: argparse.Namespace, pmnc: PmncCages, peer: CeleryPeer) -> int:
    threads = args.threads
    print(f"retry_enqueue: durable enqueues ({args.calls} calls on 1 thread, then over {threads} threads, after "
          f"{args.warmup} warm-up calls), then end to end ({args.e2e_calls} calls queued over {threads} threads "
          f"and run by the other side, after {args.warmup} warm-up calls); Python {sys.version.split()[0]}; "
          f"{os.cpu_count()} CPUs")
    pmnc.queue_count = peer.concurrency = args.queue_count
    pmnc.start()
    print(pmnc.description)
    peer.start()
    print(peer.description)
    print(f"temporary folder {pmnc.root.parent} on {mount_of(pmnc.root.parent)}")

    enqueue_rows: list[tuple[str, Run]] = []
    enqueued: dict[int, tuple[Run, dict[str, Run]]] = {}
    for t in (1, threads):
        label = "1 thread" if t == 1 else f"{t} threads"
        print(f"durable enqueues, {label}: pmnc ...", flush=True)
        mine = pmnc.enqueue(args.calls, t, args.warmup, f"enq{t}")
        enqueue_rows.append((f"pmnc, {label}", mine))
        theirs: dict[str, Run] = {}
        for mode in args.celery:
            print(f"durable enqueues, {label}: Celery {mode} ...", flush=True)
            theirs[mode] = peer.enqueue(mode, args.calls, t, args.warmup, f"enq{t}")
            enqueue_rows.append((f"Celery {mode}, {label}", theirs[mode]))
        enqueued[t] = (mine, theirs)

    e2e_rows: list[tuple[str, Run]] = []
    print(f"end to end: pmnc, {args.warmup} warm-up calls ...", flush=True)
    warm = pmnc.end_to_end(args.warmup, threads, "e2e-warm", args.deadline)
    if warm.errors:
        raise RuntimeError(f"end to end: the pmnc warm-up failed: {warm.first_error}")
    print(f"end to end: pmnc, {args.e2e_calls} calls ...", flush=True)
    pmnc_e2e = pmnc.end_to_end(args.e2e_calls, threads, "e2e", args.deadline)
    e2e_rows.append(("pmnc, caller -> callee", pmnc_e2e))
    celery_e2e: dict[str, Run] = {}
    for mode in args.celery:
        print(f"end to end: Celery {mode}, worker starting, {args.warmup} warm-up calls ...", flush=True)
        data = peer.start_worker(mode)
        try:
            warm = peer.end_to_end(mode, data, args.warmup, threads, 0, "e2e-warm", args.deadline)
            if warm.errors:
                raise RuntimeError(f"end to end: the Celery {mode} warm-up failed: {warm.first_error}")
            print(f"end to end: Celery {mode}, {args.e2e_calls} calls ...", flush=True)
            celery_e2e[mode] = peer.end_to_end(mode, data, args.e2e_calls, threads, args.warmup, "e2e",
                                               args.deadline)
        finally:
            stopped = peer.stop_worker()
        if "exited with code 0" not in stopped:
            print(f"  {stopped}")
        e2e_rows.append((f"Celery {mode}, producer -> worker", celery_e2e[mode]))

    print()
    print_enqueue_table(enqueue_rows)
    print()
    print_e2e_table(e2e_rows)
    for mode, files in sorted(peer.sqlite_seen.items()):
        print(f"Celery {mode}: SQLite as its connections had it: "
              + ", ".join(f"{name} journal_mode={s[0]} synchronous={s[1]}" for name, s in sorted(files.items())))
    print("pmnc: state.sqlite journal_mode=wal, synchronous=FULL for enqueues and hand-overs (group commit), "
          "NORMAL for claims and outcomes")
    problems = pmnc.log_problems()
    if problems:
        print(f"cage logs: {len(problems)} error/warning line(s), the first ones:")
        for line in problems[:5]:
            print(f"  {line}")
    for t, (mine, theirs) in enqueued.items():
        label = "1 thread" if t == 1 else f"{t} threads"
        print(verdict(f"enqueue, {label}", mine, theirs, 1.0))
    print(verdict("end to end", pmnc_e2e, celery_e2e, None))
    summary = [f"enqueue 1 thread pmnc {enqueued[1][0].rate:.0f}/s", *(
        f"Celery {m} {r.rate:.0f}/s" for m, r in enqueued[1][1].items())]
    summary += [f"{threads} threads pmnc {enqueued[threads][0].rate:.0f}/s", *(
        f"Celery {m} {r.rate:.0f}/s" for m, r in enqueued[threads][1].items())]
    summary += [f"end to end pmnc {pmnc_e2e.rate:.0f}/s",
                *(f"Celery {m} {r.rate:.0f}/s" for m, r in celery_e2e.items())]
    print(f"retry_enqueue: {', '.join(summary)}")

    everything = [run for _, run in enqueue_rows + e2e_rows]
    unclean = [f"{name}: {run.errors} error(s)" for name, run in enqueue_rows + e2e_rows if run.errors]
    unclean += [f"{name}: {run.stored} of {run.calls} stored" for name, run in enqueue_rows
                if run.stored is not None and run.stored != run.calls]
    unclean += [f"{name}: {run.retries} retried" for name, run in e2e_rows if run.retries]
    if unclean or not everything:
        print(f"retry_enqueue: NOT CLEAN: {'; '.join(unclean)}")
        return 1
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=2000, help="enqueues per measured enqueue run (2000)")
    parser.add_argument("--e2e-calls", type=int, default=1000, help="calls of the measured end-to-end run (1000)")
    parser.add_argument("--threads", type=int, default=8, help="threads of the concurrent runs (8)")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up calls before each run (200)")
    parser.add_argument("--queue-count", type=int, default=16,
                        help="the retry interfaces' queue_count and the Celery worker's --concurrency (16)")
    parser.add_argument("--celery", default=",".join(CELERY_MODES),
                        help=f"Celery setups to measure, comma-separated ({','.join(CELERY_MODES)})")
    parser.add_argument("--deadline", type=float, default=120.0,
                        help="seconds an end-to-end run may take before it counts as failed (120)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary tree and logs, print where")
    parser.add_argument("--celery-produce", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--app-dir", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="x", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.celery_produce:
        return celery_produce(args)
    args.celery = [m for m in args.celery.split(",") if m]
    if not args.celery or not set(args.celery) <= set(CELERY_MODES):
        parser.error(f"--celery: some of {', '.join(CELERY_MODES)}")
    if args.calls < 2 or args.e2e_calls < 2 or args.threads < 2 or args.warmup < 1 or args.queue_count < 1:
        parser.error("--calls, --e2e-calls and --threads must be at least 2, --warmup and --queue-count at least 1")
    try:
        import celery  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as e:
        print(f"retry_enqueue: {e}: run ./setup bench (Celery and SQLAlchemy are in the bench extra)",
              file=sys.stderr)
        return 2

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # run_pair stops everything

    signal.signal(signal.SIGTERM, terminate)
    return run_pair("retry_enqueue", args.keep, PmncCages, CeleryPeer, lambda pmnc, peer: bench(args, pmnc, peer))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
