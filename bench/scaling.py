"""Run http_hello.py, rpc_calls.py and retry_enqueue.py at 1, 8 and 64 concurrent clients; write JSON and a table.

    .venv/bin/python bench/scaling.py [--clients 1,8,64] [--out bench/scaling.json] [--quick]
                                      [--only requests,calls,retried] [--duration 10] [--warmup 2]
                                      [--calls 10000] [--enqueues 2000] [--verbose]

Each benchmark is the shipped script, run as a subprocess one after the other
(never two at once); this script only reads the tables they print:

- requests/s: http_hello.py --no-reloads --connections N (wrk, N connections),
  pmnc's sample cage against uvicorn; one run per client count.
- calls/s: rpc_calls.py --serializers msgpack --threads N, pmnc cage-to-cage
  against Pyro5 msgpack over two-way TLS (pmnc's cages always talk mutual TLS);
  1 client is its sequential run. One run per count above 1 (each also runs
  sequentially; the first run's sequential row is the one kept).
- retried calls/s: retry_enqueue.py --celery sqlite-wal --threads N, pmnc's
  durable enqueues against Celery on SQLite in WAL mode (equal durability),
  its end-to-end part kept short (--e2e-calls); 1 client is its 1-thread
  run, as for calls/s.

It writes the rates and p99 latencies (and every run's command, exit code and
output) as JSON to --out, prints a Markdown table, and exits 0 when every run
exited 0 and every point was read. bench/plot_scaling.py draws the JSON.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import subrun
from http_hello import pmnc_version

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RUN_TIMEOUT = 900.0  # seconds one benchmark run may take before it is interrupted
E2E_CALLS = 20  # retry_enqueue.py's end-to-end part cannot be skipped: keep it short
QUICK = {"duration": 1, "warmup": 1, "calls": 300, "rpc_warmup": 20, "enqueues": 100, "enqueue_warmup": 10,
         "e2e_calls": 4}
FULL = {"duration": 10, "warmup": 2, "calls": 10000, "rpc_warmup": 200, "enqueues": 2000, "enqueue_warmup": 200,
        "e2e_calls": E2E_CALLS}

# A row of a benchmark's table: its name, then numbers only ("5516", "0.172ms", "104us", "?", "nan").
TOKEN = re.compile(r"nan(?:ms)?|\?|\d+(?:\.\d+)?(?:ms|us)?")
# rpc_calls prints p50 and p99 as {:7.3f}ms back to back, so a p99 of 1000 ms or more touches the p50.
TOUCHING = re.compile(r"ms(?=\d)")


@dataclass
class Point:
    """One side at one client count: what its row said."""

    rate: float
    p99_ms: float | None
    count: int  # requests or calls measured
    failed: int


@dataclass
class Benchmark:
    key: str
    title: str  # what the rate counts
    script: str
    peer: str
    points: dict[int, tuple[Point, Point]] = field(default_factory=dict)  # clients -> (pmnc, peer)


@dataclass
class RunRecord:
    benchmark: str
    command: str
    returncode: int | None
    seconds: float
    output: str


# --- reading the scripts' tables -------------------------------------------------------------------


def table_row(output: str, name: str) -> list[str] | None:
    """The numbers of the first line that is `name` followed by numbers only."""
    for line in output.splitlines():
        rest = line[len(name):]
        if not line.startswith(name) or not rest[:1].isspace():
            continue
        tokens = TOUCHING.sub("ms ", rest).split()
        if tokens and all(TOKEN.fullmatch(t) for t in tokens):
            return tokens
    return None


def _ms(token: str) -> float | None:
    value = token.removesuffix("ms")
    return None if value in ("?", "nan") else float(value)


def point(output: str, name: str, failed_columns: tuple[int, ...]) -> Point | None:
    """Every table read here has the rate first, the count second and p99 fourth."""
    row = table_row(output, name)
    if row is None or len(row) <= max(3, *failed_columns):
        return None
    return Point(rate=float(row[0]), p99_ms=_ms(row[3]), count=int(row[1]),
                 failed=sum(int(row[i]) for i in failed_columns))


def pair(output: str, pmnc: str, peer: str, failed_columns: tuple[int, ...]) -> tuple[Point, Point] | None:
    mine, theirs = point(output, pmnc, failed_columns), point(output, peer, failed_columns)
    return (mine, theirs) if mine is not None and theirs is not None else None


# --- running one script --------------------------------------------------------------------------------


def run_script(script: str, args: list[str], verbose: bool) -> RunRecord:
    """`python bench/<script> <args>` (subrun.run: stopped cleanly on Ctrl-C, SIGTERM or the timeout)."""
    command = [sys.executable, str(BENCH / script), *args]
    shown = " ".join(["python", f"bench/{script}", *args])
    print(f"scaling: {shown} ...", file=sys.stderr, flush=True)
    began = time.monotonic()

    def on_line(line: str) -> None:
        if verbose:
            print(f"  | {line}", end="", file=sys.stderr, flush=True)

    returncode, lines = subrun.run(command, timeout=RUN_TIMEOUT, on_line=on_line, name="scaling")
    seconds = time.monotonic() - began
    print(f"scaling: ... exit code {returncode}, {seconds:.0f}s", file=sys.stderr, flush=True)
    return RunRecord(script, shown, returncode, round(seconds, 1), "".join(lines))


# --- the three benchmarks --------------------------------------------------------------------------------


def concurrent_counts(clients: list[int]) -> list[int]:
    """The --threads of each run of a script that also runs 1 client each time (at least 2)."""
    return [c for c in clients if c > 1] or [2]


def requests_per_second(clients: list[int], s: dict[str, Any], runs: list[RunRecord], verbose: bool) -> Benchmark:
    bench = Benchmark("requests", "requests/s", "http_hello.py", "uvicorn")
    for c in clients:
        run = run_script(bench.script, ["--no-reloads", "--connections", str(c), "--duration", str(s["duration"]),
                                        "--warmup", str(s["warmup"])], verbose)
        runs.append(run)
        found = pair(run.output, "pmnc", "uvicorn", (4, 5))  # non-2xx, socket errors
        if found is not None:
            bench.points[c] = found
    return bench


def by_threads(bench: Benchmark, clients: list[int], runs: list[RunRecord], verbose: bool,
               args_for: Callable[[int], list[str]], rows: Callable[[int], tuple[str, str]]) -> Benchmark:
    """One run per client count above 1; 1 client from the first run's one-thread rows."""
    for t in concurrent_counts(clients):
        run = run_script(bench.script, args_for(t), verbose)
        runs.append(run)
        for c in (1, t):
            if c in clients and c not in bench.points:
                found = pair(run.output, *rows(c), (4,))  # errors
                if found is not None:
                    bench.points[c] = found
    return bench


def calls_per_second(clients: list[int], s: dict[str, Any], runs: list[RunRecord], verbose: bool) -> Benchmark:
    peer = "Pyro5 msgpack TLS"

    def args_for(t: int) -> list[str]:
        return ["--serializers", "msgpack", "--threads", str(t), "--calls", str(s["calls"]),
                "--warmup", str(s["rpc_warmup"])]

    def rows(c: int) -> tuple[str, str]:
        label = "sequential" if c == 1 else f"{c} threads"
        return f"pmnc, {label}", f"{peer}, {label}"

    return by_threads(Benchmark("calls", "calls/s", "rpc_calls.py", peer), clients, runs, verbose, args_for, rows)


def retried_per_second(clients: list[int], s: dict[str, Any], runs: list[RunRecord], verbose: bool) -> Benchmark:
    peer = "Celery sqlite-wal"

    def args_for(t: int) -> list[str]:
        return ["--celery", "sqlite-wal", "--threads", str(t), "--calls", str(s["enqueues"]),
                "--warmup", str(s["enqueue_warmup"]), "--e2e-calls", str(s["e2e_calls"])]

    def rows(c: int) -> tuple[str, str]:
        label = "1 thread" if c == 1 else f"{c} threads"
        return f"pmnc, {label}", f"{peer}, {label}"

    return by_threads(Benchmark("retried", "retried calls/s (durable enqueues)", "retry_enqueue.py", peer),
                      clients, runs, verbose, args_for, rows)


BENCHMARKS = {"requests": requests_per_second, "calls": calls_per_second, "retried": retried_per_second}


# --- the results ------------------------------------------------------------------------------------------


def fmt_rate(rate: float) -> str:
    return f"{rate:,.0f}"


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "?"
    digits = 0 if value >= 100 else 1 if value >= 10 else 2 if value >= 1 else 3
    return f"{value:.{digits}f} ms"


def ratio(mine: Point, theirs: Point) -> float | None:
    return mine.rate / theirs.rate if theirs.rate else None


def markdown(benches: list[Benchmark], clients: list[int]) -> str:
    lines = ["| benchmark | clients | pmnc | pmnc p99 | peer | peer p99 | pmnc/peer |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for bench in benches:
        for c in clients:
            name = f"{bench.title}, peer {bench.peer}"
            if c not in bench.points:
                lines.append(f"| {name} | {c} | ? | ? | ? | ? | ? |")
                continue
            mine, theirs = bench.points[c]
            r = ratio(mine, theirs)
            lines.append(f"| {name} | {c} | {fmt_rate(mine.rate)} | {fmt_ms(mine.p99_ms)} | "
                         f"{fmt_rate(theirs.rate)} | {fmt_ms(theirs.p99_ms)} | {'?' if r is None else f'{r:.2f}'} |")
    return "\n".join(lines)


def as_json(benches: list[Benchmark], clients: list[int], settings: dict[str, Any], runs: list[RunRecord],
            seconds: float) -> dict[str, Any]:
    return {
        "made": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "pmnc": pmnc_version(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "clients": clients,
        "settings": settings,
        "seconds": round(seconds, 1),
        "benchmarks": [{
            "key": b.key, "title": b.title, "script": b.script, "peer": b.peer,
            "points": [{"clients": c, "pmnc": asdict(b.points[c][0]), "peer": asdict(b.points[c][1]),
                        "ratio": ratio(*b.points[c])} for c in clients if c in b.points],
        } for b in benches],
        "runs": [asdict(r) for r in runs],
    }


def problems(benches: list[Benchmark], clients: list[int], runs: list[RunRecord]) -> list[str]:
    found = [f"{r.command}: exit code {r.returncode}" for r in runs if r.returncode != 0]
    found += [f"{b.title}, {c} clients: no rows read" for b in benches for c in clients if c not in b.points]
    found += [f"{b.title}, {c} clients: {side} {p.failed} failed" for b in benches for c, sides in b.points.items()
              for side, p in zip(("pmnc", b.peer), sides, strict=True) if p.failed]
    return found


# --- main ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", default="1,8,64", help="concurrent clients, comma-separated (1,8,64)")
    parser.add_argument("--out", type=Path, default=BENCH / "scaling.json", help="the JSON (bench/scaling.json)")
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"benchmarks to run, comma-separated ({','.join(BENCHMARKS)})")
    parser.add_argument("--quick", action="store_true", help="a smoke run: every run as short as it can be")
    parser.add_argument("--duration", type=int, help=f"http_hello.py --duration, seconds ({FULL['duration']})")
    parser.add_argument("--warmup", type=int, help=f"http_hello.py --warmup, seconds ({FULL['warmup']})")
    parser.add_argument("--calls", type=int, help=f"rpc_calls.py --calls per measured run ({FULL['calls']})")
    parser.add_argument("--enqueues", type=int, help=f"retry_enqueue.py --calls per measured run ({FULL['enqueues']})")
    parser.add_argument("--verbose", action="store_true", help="echo the scripts' output to stderr as it comes")
    args = parser.parse_args(argv)
    try:
        args.clients = sorted({int(c) for c in args.clients.split(",") if c.strip()})
    except ValueError:
        parser.error("--clients: whole numbers, comma-separated")
    if not args.clients or args.clients[0] < 1:
        parser.error("--clients: at least one count, each at least 1")
    args.only = [b for b in args.only.split(",") if b]
    if not args.only or not set(args.only) <= set(BENCHMARKS):
        parser.error(f"--only: some of {', '.join(BENCHMARKS)}")
    settings = dict(QUICK if args.quick else FULL)
    for name in ("duration", "warmup", "calls", "enqueues"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    return args, settings


def main(argv: list[str]) -> int:
    args, settings = parse_args(argv)

    subrun.stop_cleanly_on_signals()
    began = time.monotonic()
    benches: list[Benchmark] = []
    runs: list[RunRecord] = []
    try:
        for key in args.only:
            benches.append(BENCHMARKS[key](args.clients, settings, runs, args.verbose))
    except (KeyboardInterrupt, subrun.Interrupted):
        print("scaling: interrupted; nothing written", file=sys.stderr)
        return 130
    args.out.write_text(json.dumps(as_json(benches, args.clients, settings, runs, time.monotonic() - began),
                                   indent=1) + "\n")
    print(f"{pmnc_version()}; Python {sys.version.split()[0]}; {os.cpu_count()} CPUs; settings {settings}; "
          f"{time.monotonic() - began:.0f}s")
    print()
    print(markdown(benches, args.clients))
    print()
    print(f"scaling: wrote {args.out}")
    found = problems(benches, args.clients, runs)
    for line in found:
        print(f"scaling: NOT CLEAN: {line}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
