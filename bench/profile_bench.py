"""Flame graphs of http_hello, xmlrpc_echo and pg_transactions under their own load: where each side's time goes.

    .venv/bin/python bench/profile_bench.py http_hello|xmlrpc_echo|pg_transactions
                                            [--seconds 12] [--warmup 2] [--out bench/profiles] [--py-spy PATH]

Each subcommand starts what its benchmark starts, with the benchmark's own classes and functions,
warms each side up, then, while the benchmark's load runs, runs `py-spy record --gil` on the process
that serves for `--seconds` and writes an SVG flame graph to `--out`:

- http_hello: the sample cage's process and the bare uvicorn, each under `wrk -t2 -c50`
  (`http_hello-pmnc.svg`, `http_hello-uvicorn.svg`);
- xmlrpc_echo: the xmlrpc_echo cage's process and the standard library's server, each under the raw
  client load (2 processes x 4 threads; `xmlrpc_echo-pmnc.svg`, `xmlrpc_echo-stdlib.svg`);
- pg_transactions: this process (the cage runs on a thread of it, as in the benchmark) during the
  "psycopg, 1 insert" and "pmnc, 1 insert" phases, 8 threads each
  (`pg_transactions-psycopg-1-insert.svg`, `pg_transactions-pmnc-1-insert.svg`).

`--gil` keeps only samples of the thread holding the GIL: what the process computes, not what it
waits for. After each graph it prints the top functions by inclusive and by own share of the
samples, read back from the graph itself (one recording: a second py-spy on the same process would
fight the first for ptrace and lose a third of its samples).

py-spy is not a dependency of pmnc: put it on PATH (`python3 -m venv /tmp/pyspy &&
/tmp/pyspy/bin/pip install py-spy`) or give `--py-spy`.
"""

from __future__ import annotations

import argparse
import bisect
import html
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TypeVar

import http_hello
import pg_transactions as pgt
import psycopg
import xmlrpc_echo
from inprocess import InProcessCage

SAMPLE_RATE = 250  # samples per second
LEAD = 1.5  # seconds of load before py-spy starts: the profile sees the load in full swing, not its start
TAIL = 1.5  # seconds of load after py-spy's last sample, so that its attaching late loses nothing
TOP = 15  # functions listed per summary
XMLRPC_PROCESSES, XMLRPC_THREADS = 2, 4  # xmlrpc_echo.py's defaults
PG_THREADS = 8  # pg_transactions.py's default

T = TypeVar("T")


# --- py-spy and what its graph says ---------------------------------------------------------------------


@dataclass
class Frame:
    name: str  # "function (file)": the line number left out, so that a function is one entry
    depth: int
    x: int  # first sample, in py-spy's order
    w: int  # samples


# One box of the graph, as py-spy's flame graph writer (inferno) draws it: its title, row and samples.
_BOX = re.compile(r'<g><title>(.*?) \([\d,]+ samples?, [\d.]+%\)</title><rect [^>]*?y="([\d.]+)"'
                  r'[^>]*?fg:x="(\d+)" fg:w="(\d+)"')


def read_frames(svg: Path) -> list[Frame]:
    boxes = [(html.unescape(title), float(y), int(x), int(w)) for title, y, x, w in _BOX.findall(svg.read_text())]
    if not boxes:
        return []
    root_y = next((y for title, y, _, _ in boxes if title == "all"), boxes[0][1])
    rows = sorted({abs(y - root_y) for _, y, _, _ in boxes})  # the root's row first, whichever way it grows
    depth = {row: i for i, row in enumerate(rows)}
    return [Frame(re.sub(r":\d+\)$", ")", title), depth[abs(y - root_y)], x, w) for title, y, x, w in boxes]


def shares(frames: list[Frame]) -> tuple[int, dict[str, int], dict[str, int]]:
    """(all samples, inclusive samples per function, own samples per function)."""
    by_depth: dict[int, list[Frame]] = {}
    for frame in sorted(frames, key=lambda f: (f.depth, f.x)):
        by_depth.setdefault(frame.depth, []).append(frame)
    children: dict[int, int] = {}  # samples in the boxes right above a box, by id of the box
    for d, row in by_depth.items():
        parents = by_depth.get(d - 1, [])
        if not parents:
            continue  # the root
        starts = [p.x for p in parents]
        for frame in row:
            parent = parents[bisect.bisect_right(starts, frame.x) - 1]
            children[id(parent)] = children.get(id(parent), 0) + frame.w
    own: dict[str, int] = {}
    spans: dict[str, list[tuple[int, int]]] = {}
    for frame in frames:
        own[frame.name] = own.get(frame.name, 0) + frame.w - children.get(id(frame), 0)
        spans.setdefault(frame.name, []).append((frame.x, frame.x + frame.w))
    # A function counts a sample once however often it is on its stack: the union of its boxes.
    inclusive = {name: _covered(intervals) for name, intervals in spans.items()}
    total = max((f.w for f in frames if f.depth == 0), default=0)
    return total, inclusive, own


def _covered(intervals: list[tuple[int, int]]) -> int:
    covered, reach = 0, -1
    for start, end in sorted(intervals):
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return covered


def summarize(svg: Path, seconds: int, errors: int | None) -> None:
    """The top functions by inclusive and by own share of the graph's samples."""
    frames = read_frames(svg)
    total, inclusive, own = shares(frames)
    if not total:
        print(f"  {svg.name}: no samples found in the graph, no summary")
        return
    # The root and the functions in every sample (a thread's bootstrap) tell nothing apart.
    everywhere = {name for name, n in inclusive.items() if n == total}
    # Samples of no thread holding the GIL (in a system call that let it go, or idle) are not in the graph.
    print(f"  {svg.name}: {total} samples holding the GIL of {SAMPLE_RATE * seconds} taken in {seconds}s "
          f"({'?' if errors is None else errors} py-spy errors); functions in every sample left out")
    for title, counts in (("inclusive", inclusive), ("own", own)):
        print(f"  top {TOP} by {title} share:")
        ranked = sorted(((n, name) for name, n in counts.items()
                         if n and not (counts is inclusive and name in everywhere)), reverse=True)
        for n, name in ranked[:TOP]:
            print(f"    {100 * n / total:5.1f}%  {name}")


def record(py_spy: str, pid: int, seconds: int, svg: Path) -> bool:
    """`py-spy record --gil` of `pid` for `seconds` into `svg`; its summary printed."""
    svg.parent.mkdir(parents=True, exist_ok=True)
    command = [py_spy, "record", "--gil", "-r", str(SAMPLE_RATE), "-d", str(seconds), "-f", "flamegraph",
               "-p", str(pid), "-o", str(svg)]
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=seconds + 60,
                          check=False)
    said = done.stdout.decode(errors="replace")
    if done.returncode != 0:
        print(f"profile_bench: py-spy on pid {pid} failed: {said[-500:]}")
        return False
    errors = re.search(r"Errors: (\d+)", said)
    summarize(svg, seconds, int(errors.group(1)) if errors else None)
    return True


def under_load(load: Callable[[float], T], seconds: int, py_spy: str, pid: int, svg: Path) -> tuple[T, bool]:
    """`load(duration)` on a thread, `pid` recorded from LEAD seconds into it: (its result, py-spy ok)."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(load(LEAD + seconds + TAIL))
        except BaseException as e:
            failure.append(e)

    loading = threading.Thread(target=run, name="load", daemon=True)
    loading.start()
    time.sleep(LEAD)
    recorded = record(py_spy, pid, seconds, svg)
    loading.join()
    if failure:
        raise failure[0]
    return outcome[0], recorded


# --- http_hello: the sample cage and uvicorn under wrk ----------------------------------------------------


def profile_http(args: argparse.Namespace, port: int, pid: int, stem: str) -> bool:
    http_hello.wrk(port, args.warmup, latency=False)

    def load(duration: float) -> http_hello.WrkResult:
        return http_hello.wrk(port, math.ceil(duration), latency=False)

    result, recorded = under_load(load, args.seconds, args.py_spy, pid, args.out / f"{stem}.svg")
    print(f"{stem}: wrk -t{http_hello.WRK_THREADS} -c{http_hello.WRK_CONNECTIONS}: {result.rps:.0f} req/s, "
          f"{result.failed} failed", flush=True)
    return recorded and not result.failed


def http(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        print("profile_bench: wrk is not installed: run ./setup bench (as root)", file=sys.stderr)
        return 2

    def run(pmnc: http_hello.PmncCage, peer: http_hello.Uvicorn) -> int:
        pmnc.start()
        peer.start()
        cage_pid = int(http_hello.CAGE_PROCESS.findall(pmnc.log_text())[-1])  # the cage, not its supervisor
        assert peer.process is not None
        print(f"{http_hello.pmnc_version()}: sample cage, pid {cage_pid}; {peer.banner}", flush=True)
        ok = [profile_http(args, pmnc.port, cage_pid, "http_hello-pmnc"),
              profile_http(args, peer.port, peer.process.pid, "http_hello-uvicorn")]
        return 0 if all(ok) else 1

    return http_hello.run_pair("profile_bench", False, http_hello.PmncCage, http_hello.Uvicorn, run)


# --- xmlrpc_echo: the XML-RPC cage and the standard library's server under the raw clients -----------------


def profile_xmlrpc(args: argparse.Namespace, server: xmlrpc_echo.Server, stem: str) -> bool:
    clients = argparse.Namespace(processes=XMLRPC_PROCESSES, threads=XMLRPC_THREADS, client="raw")
    xmlrpc_echo.load(server, clients, args.warmup)

    def load(duration: float) -> tuple[xmlrpc_echo.Tally, float]:
        return xmlrpc_echo.load(server, clients, duration), duration

    (tally, duration), recorded = under_load(load, args.seconds, args.py_spy, server.serving_pid(),
                                             args.out / f"{stem}.svg")
    cpu = f", {tally.server_cpu / tally.calls * 1e6:.0f}us server CPU per call" if tally.server_cpu and tally.calls \
        else ""
    print(f"{stem}: {XMLRPC_PROCESSES} x {XMLRPC_THREADS} raw clients: {tally.calls / duration:.0f} calls/s{cpu}, "
          f"{tally.errors} errors{': ' + tally.first_error if tally.first_error else ''}", flush=True)
    return recorded and not tally.errors


def xmlrpc(args: argparse.Namespace) -> int:
    def run(pmnc: xmlrpc_echo.PmncCage, peer: xmlrpc_echo.Stdlib) -> int:
        pmnc.start()
        peer.start()
        print(f"{pmnc.description}, cage pid {pmnc.serving_pid()}; {peer.description}", flush=True)
        ok = [profile_xmlrpc(args, pmnc, "xmlrpc_echo-pmnc"), profile_xmlrpc(args, peer, "xmlrpc_echo-stdlib")]
        return 0 if all(ok) else 1

    return http_hello.run_pair("profile_bench", False, xmlrpc_echo.PmncCage, xmlrpc_echo.Stdlib, run)


# --- pg_transactions: this process during the single-insert phases ------------------------------------------


def profile_pg_phase(args: argparse.Namespace, cluster: pgt.PgCluster, name: str, client: pgt.Client,
                     stem: str) -> bool:
    """A warm-up, then the phase with this process recorded, as pg_transactions.measure() runs it."""
    warm_up = pgt.drive(name, ("db1",), client, PG_THREADS, args.warmup, cluster)
    pgt.count_rows(warm_up, cluster)

    def load(duration: float) -> pgt.Run:
        return pgt.drive(name, ("db1",), client, PG_THREADS, duration, cluster)

    run, recorded = under_load(load, args.seconds, args.py_spy, os.getpid(), args.out / f"{stem}.svg")
    pgt.count_rows(run, cluster)
    run.warm_up = warm_up
    print(f"{stem}: {PG_THREADS} threads: {run.rate:.0f} txn/s, this process "
          f"{run.per_txn_us(run.client_cpu):.0f}us CPU per transaction, {run.errors} errors", flush=True)
    for problem in run.problems:
        print(f"{stem}: {problem}")
    return recorded and not run.problems


def pg(args: argparse.Namespace) -> int:
    missing = pgt.missing_postgres()
    if missing:
        print(f"profile_bench: {missing}", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="pmnc-bench-profile-"))
    cluster = pgt.PgCluster(PG_THREADS, durable=False)
    cages: list[InProcessCage] = []
    try:
        cluster.start()
        # db1 as pg_transactions.bench() configures it
        cage = InProcessCage(base, PG_THREADS, {
            "db1": f"protocol='postgresql', server_address=({pgt.HOST!r}, {cluster.port}), database='db1', "
                   f"username='postgres', connect_timeout=3.0, pool__size={PG_THREADS}"})
        cages.append(cage)
        cage.start()
        print(f"{http_hello.pmnc_version()}: cage in this process (pid {os.getpid()}), "
              f"PostgreSQL {cluster.version()} on {pgt.HOST}:{cluster.port}", flush=True)
        timeout = args.warmup + LEAD + args.seconds + TAIL + 60.0
        ok = [profile_pg_phase(args, cluster, "psycopg, 1 insert", pgt.psycopg_single(cluster),
                               "pg_transactions-psycopg-1-insert"),
              profile_pg_phase(args, cluster, "pmnc, 1 insert", pgt.pmnc_single(cage.transaction, timeout),
                               "pg_transactions-pmnc-1-insert")]
        return 0 if all(ok) else 1
    except (RuntimeError, OSError, subprocess.TimeoutExpired, psycopg.Error) as e:
        sys.stdout.flush()
        print(f"profile_bench: failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("profile_bench: interrupted", file=sys.stderr)
        return 130
    finally:
        print(f"stopped: {'; '.join([cage.stop() for cage in cages] + [cluster.stop()])}")
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(cluster.folder, ignore_errors=True)


# --- the command line -----------------------------------------------------------------------------------------


BENCHMARKS: dict[str, Callable[[argparse.Namespace], int]] = {
    "http_hello": http, "xmlrpc_echo": xmlrpc, "pg_transactions": pg}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("benchmark", choices=tuple(BENCHMARKS), help="which benchmark's load to profile")
    parser.add_argument("--seconds", type=int, default=12, help="seconds each process is profiled (12)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load before each profiled run (2)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "profiles")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "/tmp/pyspy/bin/py-spy")
    args = parser.parse_args(argv)
    if args.seconds < 1 or args.warmup < 1:
        parser.error("--seconds and --warmup are whole seconds, at least 1")
    if not Path(args.py_spy).exists():
        parser.error(f"no py-spy at {args.py_spy}: see this script's doc")

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # the servers and the PostgreSQL cluster are stopped on the way out

    signal.signal(signal.SIGTERM, terminate)
    code = BENCHMARKS[args.benchmark](args)
    print(f"profile_bench: {args.benchmark}: flame graphs in {args.out}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
