"""Benchmark insert transactions through pmnc.transaction against plain psycopg, and two-phase commit.

    .venv/bin/python bench/pg_transactions.py [--duration 5] [--warmup 1] [--threads 8] [--durable]
                                              [--profile] [--profile-threads 1] [--keep]

Needs PostgreSQL 15 from Debian's packages (/usr/lib/postgresql/15/bin) and
root, to run it as the `postgres` user: a throwaway cluster on a free
loopback port, with the databases db1 and db2, each with a table
`t (id bigint PRIMARY KEY, payload text)`. By default the server runs with
fsync, synchronous_commit and full_page_writes off (as the tests' server):
commits do not wait for the disk, so what is measured is CPU. `--durable`
turns all three on.

The same N threads (8 by default), one phase after the other, each phase a
warm-up and then `--duration` seconds of transactions back to back, every one
inserting a row of 100 characters:
- psycopg: each thread with its own connection (autocommit off), `INSERT`
  then `commit()`;
- pmnc: an in-process cage with `config_resource_db1.py` / `db2` (protocol
  "postgresql", pool__size = N); each thread with its own attached Request
  calling `pmnc.transaction.db1.execute("INSERT ...", id=..., payload=...)`
  (a transaction of one statement: pmnc sends it autocommitted, one round
  trip where psycopg's transaction takes three);
- for scale, psycopg with the insert autocommitted, what pmnc sends;
- pmnc, two participants: `xa = pmnc.transaction.create()`, an insert on
  db1 and one on db2, `xa.execute()` (best effort), and the same with
  `create(two_phase=True)` when this version of pmnc prepares the branches
  (otherwise it says "two-phase: not available in this version");
- for scale, psycopg with two connections per thread: both inserts then both
  commits (best effort), and by hand with its `tpc_*` calls (begin, insert,
  prepare both, commit both: the floor of a two-phase commit, no coordinator).
After every phase the rows are counted: each transaction reported done must
have its row(s), in both databases for two participants. The server is
stopped at the end whatever happens. `--profile` adds a pmnc phase with
cProfile on its caller's and pool's threads (one client thread by default, so
that waiting for the GIL does not blur it) and prints where pmnc's time per
transaction goes. See bench/README.md.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "lib"))

import psycopg  # noqa: E402
from http_hello import pmnc_version, read_text  # noqa: E402
from inprocess import CAGE, InProcessCage  # noqa: E402
from pmnc.protocols import postgresql  # noqa: E402
from pmnc.request import Request, attached  # noqa: E402

HOST = "127.0.0.1"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
DATABASES = ("db1", "db2")
PAYLOAD = "x" * 100
INSERT_PMNC = "INSERT INTO t (id, payload) VALUES ({id}, {payload})"
INSERT_PSYCOPG = "INSERT INTO t (id, payload) VALUES (%s, %s)"
KEYS_PER_THREAD = 10 ** 9  # thread i inserts ids i * KEYS_PER_THREAD + 0, 1, 2 ...
TARGET = 0.8  # pmnc / psycopg, single-participant inserts (issue 20)
PROFILED = "db1__profiled"  # the profiled phase's resource: a pool of its own, started while profiling
STOP_TIMEOUT = 30.0

Step = Callable[[int], None]  # one transaction inserting the row(s) with this id
Client = Callable[[int], AbstractContextManager[Step]]  # thread i's step, set up and torn down


# --- the PostgreSQL cluster ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) of a process, from /proc."""
    fields = read_text(Path(f"/proc/{pid}/stat")).rpartition(")")[2].split()
    try:
        return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (IndexError, ValueError):
        return None


def context_switches() -> int:
    """Context switches so far of this process's threads alive now (voluntary and not), from /proc."""
    total = 0
    for task in Path("/proc/self/task").iterdir():
        for line in read_text(task / "status").splitlines():
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                total += int(line.split(":")[1])
    return total


class PgCluster:
    """A throwaway PostgreSQL 15 run as `postgres` on loopback, in a temporary folder of its own."""

    def __init__(self, threads: int, durable: bool) -> None:
        self.user = pwd.getpwnam("postgres")
        self.folder = Path(tempfile.mkdtemp(prefix="pmnc-bench-pg-"))
        os.chown(self.folder, self.user.pw_uid, self.user.pw_gid)
        self.data = self.folder / "data"
        self.port = free_port()
        self.durable = durable
        flag = "on" if durable else "off"
        self.settings = {"fsync": flag, "synchronous_commit": flag, "full_page_writes": flag,
                         "max_prepared_transactions": str(max(20, 2 * threads + 4)),
                         "max_connections": str(max(100, 6 * threads + 20))}

    def _as_postgres(self, *argv: str, timeout: float = 60.0) -> None:
        done = subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True,
                              cwd=self.folder, timeout=timeout, check=False)
        if done.returncode:
            raise RuntimeError(f"{Path(argv[0]).name} failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                          "-E", "UTF8", "--locale=C.UTF-8", "-N")
        options = " ".join([f"-p {self.port}", f"-c listen_addresses={HOST}", f"-k {self.data}",
                            *(f"-c {k}={v}" for k, v in self.settings.items())])
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "server.log"),
                          "-w", "-t", "30", "start", "-o", options)
        for database in DATABASES:
            self.execute("postgres", f"CREATE DATABASE {database}")
            self.execute(database, "CREATE TABLE t (id bigint PRIMARY KEY, payload text)")

    def dsn(self, database: str) -> str:
        return f"host={HOST} port={self.port} dbname={database} user=postgres"

    def execute(self, database: str, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn(database), autocommit=True) as conn:
            cursor = conn.execute(sql)
            return cursor.fetchall() if cursor.description else []

    def count(self, database: str) -> int:
        return int(self.execute(database, "SELECT count(*) FROM t")[0][0])

    def in_doubt(self) -> int:
        """Prepared transactions left in the server, in any database."""
        return int(self.execute("postgres", "SELECT count(*) FROM pg_prepared_xacts")[0][0])

    def truncate(self) -> None:
        for database in DATABASES:
            self.execute(database, "TRUNCATE t")

    def version(self) -> str:
        return str(self.execute("postgres", "SHOW server_version")[0][0])

    def postmaster(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def cpu(self) -> dict[int, float]:
        """CPU seconds so far of the postmaster and each of its children (backends, background workers)."""
        master = self.postmaster()
        if master is None:
            return {}
        found: dict[int, float] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                stat = cpu_seconds(int(entry.name))
                if stat is not None and (stat[0] == master or int(entry.name) == master):
                    found[int(entry.name)] = stat[1]
        return found

    def stop(self) -> str:
        """pg_ctl stop -m fast; the postmaster killed by its pid if that fails."""
        master = self.postmaster()
        if master is None:
            return "PostgreSQL was not running"
        try:
            self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop",
                              timeout=STOP_TIMEOUT + 10)
            return "PostgreSQL stopped"
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            for sig in (signal.SIGQUIT, signal.SIGKILL):
                try:
                    os.kill(master, sig)
                except ProcessLookupError:
                    break
                time.sleep(2.0)
            return f"PostgreSQL did not stop ({e}); its postmaster {master} was killed"


class PrepareCounter:
    """Counts the calls of the PostgreSQL resource's `prepare()` (phase 1 of a
    two-phase commit), to tell a transaction that prepares from one that only
    accepts `two_phase=True` and commits each participant in one phase."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()
        self._original: Callable[..., Any] = postgresql.Resource.prepare

    def __enter__(self) -> PrepareCounter:
        original, counter = self._original, self

        def prepare(self: postgresql.Resource) -> None:
            original(self)
            with counter._lock:
                counter.calls += 1

        postgresql.Resource.prepare = prepare  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        postgresql.Resource.prepare = self._original  # type: ignore[method-assign]


# --- the clients ---------------------------------------------------------------------------------------


def psycopg_single(pg: PgCluster, *, autocommit: bool = False) -> Client:
    """A transaction per insert (BEGIN, INSERT, COMMIT: three round trips); or, `autocommit`,
    the insert alone, its own transaction in one round trip (as pmnc runs a transaction of one
    statement)."""
    @contextmanager
    def client(i: int) -> Iterator[Step]:
        with psycopg.connect(pg.dsn("db1"), autocommit=autocommit) as conn:
            cursor = conn.cursor()

            def step(key: int) -> None:
                try:
                    cursor.execute(INSERT_PSYCOPG, (key, PAYLOAD))
                    if not autocommit:
                        conn.commit()
                except Exception:
                    conn.rollback()
                    raise
            yield step
    return client


def psycopg_two(pg: PgCluster, *, by_hand_tpc: bool) -> Client:
    """Two connections per thread: both inserts, then both commits; or a two-phase commit by hand."""
    @contextmanager
    def client(i: int) -> Iterator[Step]:
        with psycopg.connect(pg.dsn("db1"), autocommit=False) as one, \
                psycopg.connect(pg.dsn("db2"), autocommit=False) as two:
            conns = (one, two)

            def best_effort(key: int) -> None:
                try:
                    for conn in conns:
                        conn.execute(INSERT_PSYCOPG, (key, PAYLOAD))
                    for conn in conns:
                        conn.commit()
                except Exception:
                    for conn in conns:
                        conn.rollback()
                    raise

            def tpc(key: int) -> None:
                try:
                    for n, conn in enumerate(conns):
                        conn.tpc_begin(f"bench-{key}-{n}")
                        conn.execute(INSERT_PSYCOPG, (key, PAYLOAD))
                    for conn in conns:
                        conn.tpc_prepare()
                    for conn in conns:
                        conn.tpc_commit()
                except Exception:
                    for conn in conns:
                        conn.tpc_rollback()
                    raise
            yield tpc if by_hand_tpc else best_effort
    return client


def pmnc_single(transaction: Any, timeout: float, resource: str = "db1") -> Client:
    """`pmnc.transaction.<resource>.execute(...)` on a thread with its own attached request."""
    @contextmanager
    def client(i: int) -> Iterator[Step]:
        with attached(Request(timeout=timeout, interface="bench", protocol="bench")):
            def step(key: int) -> None:
                getattr(transaction, resource).execute(INSERT_PMNC, id=key, payload=PAYLOAD)
            yield step
    return client


def pmnc_two(transaction: Any, timeout: float, *, two_phase: bool) -> Client:
    """One transaction with an insert on db1 and one on db2, best effort or two-phase."""
    @contextmanager
    def client(i: int) -> Iterator[Step]:
        with attached(Request(timeout=timeout, interface="bench", protocol="bench")):
            def step(key: int) -> None:
                xa = transaction.create(two_phase=True) if two_phase else transaction.create()
                xa.db1.execute(INSERT_PMNC, id=key, payload=PAYLOAD)
                xa.db2.execute(INSERT_PMNC, id=key, payload=PAYLOAD)
                xa.execute()
            yield step
    return client


def two_phase_missing(transaction: Any, counter: PrepareCounter) -> str | None:
    """Why `create(two_phase=True)` cannot be measured in this version, or None if it prepares."""
    before = counter.calls
    try:
        with attached(Request(timeout=10.0, interface="bench", protocol="bench")):
            xa = transaction.create(two_phase=True)
            xa.db1.execute(INSERT_PMNC, id=-1, payload="probe")
            xa.db2.execute(INSERT_PMNC, id=-1, payload="probe")
            xa.execute()
    except Exception as e:
        return f"create(two_phase=True) failed: {type(e).__name__}: {e}"
    prepared = counter.calls - before
    if prepared < 2:
        return f"create(two_phase=True) committed without preparing ({prepared} of 2 branches prepared)"
    return None


# --- measuring -----------------------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    databases: tuple[str, ...]
    ok: int = 0
    errors: int = 0
    seconds: float = 0.0
    client_cpu: float = 0.0  # CPU seconds of this process during the run (all its threads)
    server_cpu: float = 0.0  # CPU seconds of the PostgreSQL processes during the run
    switches: int = 0  # context switches of this process's threads during the run
    first_error: str = ""
    stuck: int = 0  # threads still running after the run
    rows: dict[str, int] = field(default_factory=dict)
    prepared: int | None = None  # branches prepared during the run (two-phase only)
    in_doubt: int = 0  # prepared transactions left in the server afterwards
    warm_up: Run | None = None  # the warm-up before it, its rows counted too

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def per_txn_us(self, seconds: float) -> float:
        return seconds / self.ok * 1e6 if self.ok else float("nan")

    @property
    def problems(self) -> list[str]:
        """What makes this run not clean: errors, stuck threads, rows that do not match the count."""
        found = []
        if self.errors:
            found.append(f"{self.errors} failed transactions, the first: {self.first_error}")
        if self.stuck:
            found.append(f"{self.stuck} threads did not finish")
        for database, rows in self.rows.items():
            if not self.ok <= rows <= self.ok + self.errors:
                found.append(f"{rows} rows in {database} after {self.ok} transactions done and {self.errors} failed")
        if self.prepared is not None and self.prepared < 2 * self.ok:
            found.append(f"{self.prepared} branches prepared for {self.ok} two-phase transactions")
        if self.in_doubt:
            found.append(f"{self.in_doubt} prepared transactions left in doubt")
        if self.warm_up is not None:
            found.extend(f"warm-up: {problem}" for problem in self.warm_up.problems)
        return found

    @property
    def warm_ok(self) -> int:
        return self.warm_up.ok if self.warm_up is not None else 0


def drive(name: str, databases: tuple[str, ...], client: Client, threads: int, duration: float,
          pg: PgCluster) -> Run:
    """`threads` threads, each setting up its client, then transactions back to back for `duration` s."""
    run = Run(name, databases)
    counts, errors = [0] * threads, [0] * threads
    ready = threading.Barrier(threads + 1)  # every client set up
    finished = threading.Barrier(threads + 1)  # every client done, none torn down yet
    go, released = threading.Event(), threading.Event()
    end = [0.0]
    lock = threading.Lock()

    def worker(i: int) -> None:
        try:
            with client(i) as step:
                ready.wait()
                go.wait()
                key = i * KEYS_PER_THREAD
                while time.monotonic() < end[0]:
                    try:
                        step(key)
                        counts[i] += 1
                    except Exception as e:
                        errors[i] += 1
                        with lock:
                            run.first_error = run.first_error or f"{type(e).__name__}: {e}"
                    key += 1
                finished.wait()
                released.wait(60.0)  # the connections stay open until the server's CPU has been read
        except threading.BrokenBarrierError:
            pass
        except Exception as e:
            ready.abort()
            with lock:
                run.first_error = run.first_error or f"setting up the client: {type(e).__name__}: {e}"
                run.errors += 1

    workers = [threading.Thread(target=worker, args=(i,), name=f"client-{i}", daemon=True) for i in range(threads)]
    for thread in workers:
        thread.start()
    try:
        ready.wait(60.0)
    except threading.BrokenBarrierError:
        go.set()
        finished.abort()
        released.set()
        for thread in workers:
            thread.join(10.0)
        raise RuntimeError(f"{name}: the clients could not start: {run.first_error}") from None
    server_before, switches_before = pg.cpu(), context_switches()
    client_before, began = time.process_time(), time.monotonic()
    end[0] = began + duration
    go.set()
    try:
        finished.wait(duration + 60.0)
    except threading.BrokenBarrierError:
        pass  # a thread is stuck: counted below
    run.seconds = time.monotonic() - began
    run.client_cpu = time.process_time() - client_before
    run.switches = context_switches() - switches_before
    server_after = pg.cpu()
    run.server_cpu = sum(cpu - server_before.get(pid, 0.0) for pid, cpu in server_after.items())
    released.set()
    finished.abort()
    for thread in workers:
        thread.join(10.0)
    run.stuck = sum(thread.is_alive() for thread in workers)
    run.ok, run.errors = sum(counts), run.errors + sum(errors)
    return run


def count_rows(run: Run, pg: PgCluster) -> None:
    """What the run left in the server; then the tables are emptied for the next one."""
    run.rows = {database: pg.count(database) for database in run.databases}
    run.in_doubt = pg.in_doubt()
    pg.truncate()


def measure(name: str, databases: tuple[str, ...], client: Client, args: argparse.Namespace, pg: PgCluster,
            counter: PrepareCounter | None = None, threads: int | None = None) -> Run:
    """A warm-up, then the measured run; the rows counted, then the tables emptied for the next phase."""
    print(f"{name} ...", flush=True)
    warm_up = None
    if args.warmup > 0:
        warm_up = drive(name, databases, client, threads or args.threads, args.warmup, pg)
        count_rows(warm_up, pg)
    prepared_before = counter.calls if counter is not None else 0
    run = drive(name, databases, client, threads or args.threads, args.duration, pg)
    if counter is not None:
        run.prepared = counter.calls - prepared_before
    count_rows(run, pg)
    run.warm_up = warm_up
    return run


# --- profiling -------------------------------------------------------------------------------------------


class ThreadProfiles:
    """A cProfile for every thread started while active (pool threads start lazily, on first use)."""

    def __init__(self) -> None:
        self.profiles: list[tuple[str, cProfile.Profile]] = []
        self._lock = threading.Lock()

    def _boot(self, frame: FrameType, event: str, arg: Any) -> None:
        profile = cProfile.Profile()
        with self._lock:
            self.profiles.append((threading.current_thread().name, profile))
        profile.enable()  # replaces this hook, for this thread only

    def __enter__(self) -> ThreadProfiles:
        threading.setprofile(self._boot)
        return self

    def __exit__(self, *exc: object) -> None:
        threading.setprofile(None)


# Builtins in which a thread blocks: their own time is waiting (for a lock, the server), not work.
BLOCKING = ("acquire", "wait", "select", "poll", "recv", "sleep")


def _where(path: str, function: str) -> str:
    if path.startswith(str(ROOT / "lib" / "pmnc")):
        return "pmnc"
    if path.endswith(f"psycopg{os.sep}connection.py") and function == "wait":
        return "blocked"  # its own time is the wait for the server, in psycopg's compiled wait_c
    if "psycopg" in path:
        return "psycopg"
    if path == "~":
        return "blocked" if any(word in function for word in BLOCKING) else "builtins"
    return "other Python"


def print_profile(profiles: ThreadProfiles, transactions: int, resource: str, top: int) -> None:
    """Per group of threads (the callers', the resource pool's): own time per transaction by where it
    is spent, the functions of lib/pmnc that take the most, and the largest others."""
    groups: dict[str, list[cProfile.Profile]] = {}
    for name, profile in profiles.profiles:
        group = ("callers' threads" if name.startswith("client-")
                 else "resource pool's threads" if name.startswith(f"{resource}/") else "other threads")
        groups.setdefault(group, []).append(profile)
    lib = str(ROOT / "lib") + os.sep

    def us(seconds: float) -> float:
        return seconds * 1e6 / transactions

    for group, members in sorted(groups.items()):
        stats = pstats.Stats(members[0])
        for profile in members[1:]:
            stats.add(profile)
        entries: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
        functions = sorted(((own, calls, path, line, function)
                            for (path, line, function), (_, calls, own, _, _) in entries.items()), reverse=True)
        shares: dict[str, float] = {}
        for own, _, path, _, function in functions:
            shares[_where(path, function)] = shares.get(_where(path, function), 0.0) + own
        working = sum(seconds for where, seconds in shares.items() if where != "blocked")
        if us(working) < 1.0:
            continue
        split = ", ".join(f"{where} {us(seconds):.0f}" for where, seconds in sorted(shares.items(),
                                                                                 key=lambda kv: -kv[1])
                          if where != "blocked")
        print(f"{group} ({len(members)}): {us(working):.0f} us per transaction not blocked: {split}; "
              f"blocked {us(shares.get('blocked', 0.0)):.0f}")
        mine = [f for f in functions if _where(f[2], f[4]) == "pmnc"][:top]
        others = [f for f in functions if _where(f[2], f[4]) not in ("pmnc", "blocked")][:max(top // 2, 1)]
        for title, listed in (("lib/pmnc", mine), ("elsewhere, not blocked", others)):
            if listed:
                print(f"  {title}:")
            for own, calls, path, line, function in listed:
                where = f"{path.removeprefix(lib)}:{line}({function})" if path != "~" else function
                print(f"    {us(own):>6.1f} us {calls / transactions:>5.1f} calls  {where}")


# --- the run -------------------------------------------------------------------------------------------


def row(run: Run) -> str:
    rows = "/".join(str(run.rows.get(database, "-")) for database in run.databases)
    return (f"{run.name:<36}{run.rate:>8.0f}{run.ok:>8}{run.errors:>7}{rows:>14}"
            f"{run.client_cpu / run.seconds * 100:>8.0f}%{run.per_txn_us(run.client_cpu):>8.0f}us"
            f"{run.server_cpu / run.seconds * 100:>8.0f}%{run.per_txn_us(run.server_cpu):>8.0f}us"
            f"{run.switches / run.ok if run.ok else float('nan'):>9.1f}")


def bench(args: argparse.Namespace, base: Path, pg: PgCluster, cages: list[InProcessCage]) -> int:
    print(f"pg_transactions: {args.threads} threads, {args.duration:g}s per run after {args.warmup:g}s of warm-up; "
          f"Python {sys.version.split()[0]}, psycopg {psycopg.__version__} (libpq {psycopg.pq.version()}); "
          f"{os.cpu_count()} CPUs shared by the server and the clients")
    pg.start()
    settings = ", ".join(f"{k}={v}" for k, v in pg.settings.items())
    print(f"PostgreSQL {pg.version()} on {HOST}:{pg.port}: {settings}")
    cage = InProcessCage(base, args.threads, {
        database: f"protocol='postgresql', server_address=({HOST!r}, {pg.port}), database={database!r}, "
                  f"username='postgres', connect_timeout=3.0, pool__size={args.threads}"
        for database in DATABASES})
    cages.append(cage)
    cage.start()
    print(f"{pmnc_version()}: cage {CAGE} in this process, resources db1 and db2 (pool__size={args.threads})")
    transaction, timeout = cage.transaction, args.duration + args.warmup + 60.0

    runs: list[Run] = []
    with PrepareCounter() as counter:
        runs.append(measure("psycopg, 1 insert", ("db1",), psycopg_single(pg), args, pg))
        runs.append(measure("pmnc, 1 insert", ("db1",), pmnc_single(transaction, timeout), args, pg))
        runs.append(measure("psycopg, 1 insert autocommitted", ("db1",), psycopg_single(pg, autocommit=True),
                            args, pg))
        runs.append(measure("pmnc, 2 participants, best effort", DATABASES,
                            pmnc_two(transaction, timeout, two_phase=False), args, pg))
        missing = two_phase_missing(transaction, counter)
        pg.truncate()
        if missing is None:
            runs.append(measure("pmnc, 2 participants, two-phase", DATABASES,
                                pmnc_two(transaction, timeout, two_phase=True), args, pg, counter))
        runs.append(measure("psycopg, 2 connections, best effort", DATABASES,
                            psycopg_two(pg, by_hand_tpc=False), args, pg))
        runs.append(measure("psycopg, 2 connections, tpc_* by hand", DATABASES,
                            psycopg_two(pg, by_hand_tpc=True), args, pg))

    profiled: list[tuple[Run, ThreadProfiles]] = []
    if args.profile:
        n = args.profile_threads
        for name, client in ((f"psycopg, 1 insert, {n} thread(s), profiled", psycopg_single(pg)),
                             (f"pmnc, 1 insert, {n} thread(s), profiled", pmnc_single(transaction, timeout, PROFILED))):
            with ThreadProfiles() as profiles:
                profiled.append((measure(name, ("db1",), client, args, pg, threads=n), profiles))

    print()
    print(f"{'':<36}{'txn/s':>8}{'txns':>8}{'errors':>7}{'rows':>14}{'client CPU':>19}{'server CPU':>19}{'cs/txn':>9}")
    for run in runs:
        print(row(run))
    by_name = {run.name: run for run in runs}
    plain, pooled = by_name["psycopg, 1 insert"], by_name["pmnc, 1 insert"]
    ratio = pooled.rate / plain.rate if plain.rate else float("nan")
    verdict = "met" if ratio >= TARGET else "NOT met"
    best_effort = by_name["pmnc, 2 participants, best effort"]
    print(f"single insert: pmnc {pooled.rate:.0f}/s, psycopg {plain.rate:.0f}/s, ratio {ratio:.2f} "
          f"(target >= {TARGET}: {verdict}); CPU per transaction: this process "
          f"{pooled.per_txn_us(pooled.client_cpu):.0f} against {plain.per_txn_us(plain.client_cpu):.0f} us, "
          f"the server {pooled.per_txn_us(pooled.server_cpu):.0f} against {plain.per_txn_us(plain.server_cpu):.0f} us")
    alone = by_name["psycopg, 1 insert autocommitted"]
    print(f"for scale: psycopg with the insert autocommitted (one round trip, as pmnc sends a transaction of one "
          f"statement) {alone.rate:.0f}/s; pmnc/that {pooled.rate / alone.rate if alone.rate else float('nan'):.2f}")
    two_phase = by_name.get("pmnc, 2 participants, two-phase")
    if two_phase is None:
        print(f"two-phase: not available in this version ({missing})")
        two_phase_text = "two-phase not available"
    else:
        by_hand = by_name["psycopg, 2 connections, tpc_* by hand"]
        print(f"two-phase: pmnc {two_phase.rate:.0f}/s ({two_phase.prepared} branches prepared), best effort "
              f"{best_effort.rate:.0f}/s; psycopg by hand {by_hand.rate:.0f}/s")
        two_phase_text = f"two-phase {two_phase.rate:.0f}/s"

    failed = False
    for run in runs + [run for run, _ in profiled]:
        for problem in run.problems:
            failed = True
            print(f"{run.name}: {problem}")
    print(f"rows: {'every transaction done has its row(s), ' if not failed else ''}"
          f"{sum(run.ok + run.warm_ok for run in runs + [run for run, _ in profiled])} transactions checked")
    for run, profiles in profiled:
        print()
        print(f"{run.name}: {run.rate:.0f} txn/s, this process {run.per_txn_us(run.client_cpu):.0f} us CPU per "
              f"transaction; cProfile's own time per function and transaction (warm-up included):")
        print_profile(profiles, max(run.ok + run.warm_ok, 1), PROFILED, args.top)
    problems = [line for line in cage.log_text().splitlines() if " ERR " in line or " WRN " in line]
    for line in problems[:5]:
        print(f"cage log: {line}")
    print(f"pg_transactions: pmnc {pooled.rate:.0f}/s, psycopg {plain.rate:.0f}/s, ratio {ratio:.2f} "
          f"(target >= {TARGET}: {verdict}); 2 participants: best effort {best_effort.rate:.0f}/s, {two_phase_text}")
    if failed:
        print("pg_transactions: NOT CLEAN: see above")
    return 1 if failed else 0


def missing_postgres() -> str | None:
    """Why PostgreSQL 15 cannot run here (not installed, no postgres user), or None."""
    if not (PG_BIN / "initdb").exists():
        return f"no PostgreSQL 15 in {PG_BIN} (Debian package postgresql-15)"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres user to run PostgreSQL as"
    return None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of each measured run (5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up before each (1)")
    parser.add_argument("--threads", type=int, default=8, help="client threads, and pool__size (8)")
    parser.add_argument("--durable", action="store_true",
                        help="fsync, synchronous_commit and full_page_writes on (off by default)")
    parser.add_argument("--profile", action="store_true", help="add a profiled pmnc phase and print where it goes")
    parser.add_argument("--profile-threads", type=int, default=1, help="client threads of the profiled phase (1)")
    parser.add_argument("--top", type=int, default=12, help="functions of lib/pmnc to list per thread group (12)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders (cage log, server data)")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.threads < 1:
        parser.error("--duration must be positive, --warmup not negative, --threads at least 1")
    missing = missing_postgres()
    if missing:
        print(f"pg_transactions: {missing}", file=sys.stderr)
        return 2

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    base = Path(tempfile.mkdtemp(prefix="pmnc-bench-"))
    pg = PgCluster(args.threads, args.durable)
    cages: list[InProcessCage] = []
    try:
        return bench(args, base, pg, cages)
    except (RuntimeError, OSError, subprocess.TimeoutExpired, psycopg.Error) as e:
        sys.stdout.flush()
        print(f"pg_transactions: failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        sys.stdout.flush()
        print("pg_transactions: interrupted", file=sys.stderr)
        return 130
    finally:
        stopped = [cage.stop() for cage in cages] + [pg.stop()]
        print(f"stopped: {'; '.join(stopped)}")
        if args.keep:
            print(f"kept: {base} {pg.folder}")
        else:
            shutil.rmtree(base, ignore_errors=True)
            shutil.rmtree(pg.folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
