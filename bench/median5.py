"""Run issue 20's four benchmarks, rpc_calls' floor and three pinned runs N times each (5 by default): the medians.

    .venv/bin/python bench/median5.py [--runs 5] [--only http_hello,xmlrpc_echo,rpc_calls,rpc_floor,...]
                                      [--quick] [--out bench/median5.json] [--logs DIR] [--verbose]

Issue 20's targets hold for the median of five runs on one machine. Each
benchmark is the shipped script with its defaults, run as a subprocess
`.venv/bin/python bench/<name>.py`, never two at once; the runs go in rounds
(every benchmark once per round), so that a drift in the machine's load
touches all of them alike. This script only reads each run's own summary
line(s):

- http_hello.py --no-reloads: pmnc's sample cage against uvicorn, requests/s
  under wrk -t2 -c50; target >= 0.8. Phase 2 (wrk during 10 hot reloads) is
  not part of the ratio, so it is left out.
- xmlrpc_echo.py: pmnc against the standard library's threaded XML-RPC
  server, calls/s; target >= 2.
- rpc_calls.py: pmnc cage-to-cage calls against Pyro5 msgpack, sequentially
  and over 8 threads, each against Pyro5 over plain TCP and over two-way TLS;
  target >= 1.5 for each. pmnc's cages always talk mutual TLS, so at equal
  security the TLS rows decide; the plain ones are shown next to them. The
  serpent ratios it also prints are kept in the JSON's raw lines only.
- rpc_floor.py: not a target of its own but the measure of rpc_calls' one:
  the bare wire (pmnc's mutual TLS and codec, nothing else) against the same
  Pyro5 msgpack TLS, sequentially and over 8 threads, and the multiplexed
  wire over 8 threads, in the same rounds - how far any call that carries a
  request and a deadline could go on each wire.
- http_hello_pinned, xmlrpc_echo_pinned, rpc_calls_pinned: the same scripts
  with --pin, each server kept on one CPU (pmnc by its config's cpu_affinity,
  the peer by the script, alike; rpc_calls: the calling side on CPU 0, the
  called on CPU 1), shown for scale: the targets are for the defaults, where
  a cage places itself (cpu_affinity "auto") and the peer is where the
  system puts it.
- pg_transactions.py: "1 insert", pmnc.transaction against plain psycopg,
  transactions/s; target >= 0.8.

A run that exits non-zero or prints no summary line is recorded as failed,
with the tail of its output, and left out of the medians; the others go on.
One line per finished run, then the table: each measure's ratios, their
median, the target, met or NOT met. The JSON (--out, bench/median5.json by
default; with --quick only when --out is given, a smoke run measures
nothing) holds the table, the commit, the date, the CPU count and every
run's raw summary lines. Each run's whole output is written to a log folder
(--logs, a new temporary one by default; --verbose echoes it as it comes).
--quick gives every benchmark its shortest sensible run, for a smoke test.
The exit code is 0 when every run succeeded, 1 otherwise, 130 when
interrupted (Ctrl-C or SIGTERM stop the running script cleanly; nothing is
written). See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import subrun
from http_hello import pmnc_version

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
RUN_TIMEOUT = 900.0  # seconds one run may take before it is interrupted (the defaults take well under 2 minutes)
TAIL = 25  # lines of a failed run's output kept in the JSON
RATIO = r"(nan|\d+(?:\.\d+)?)"  # the benchmarks print their ratios as {:.2f}


@dataclass(frozen=True)
class Measure:
    key: str  # what a run's ratios are keyed by
    title: str
    target: float
    decides: bool = True  # False: shown, but another row of the same benchmark is the one that counts


@dataclass(frozen=True)
class Benchmark:
    name: str
    args: tuple[str, ...]  # "as shipped": its defaults, save what the ratio does not need
    quick: tuple[str, ...]
    summary: re.Pattern[str]  # the lines kept as the run's raw summary lines
    measures: tuple[Measure, ...]
    script: str = ""  # bench/<script>.py, if not bench/<name>.py (the same script run another way)

    @property
    def path(self) -> str:
        return f"{self.script or self.name}.py"

    def command(self, quick: bool) -> list[str]:
        python = VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable)
        return [str(python), str(BENCH / self.path), *(self.quick if quick else self.args)]

    def shown(self, quick: bool) -> str:
        return " ".join([".venv/bin/python", f"bench/{self.path}", *(self.quick if quick else self.args)])


def _summary(*starts: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{s})" for s in starts))


BENCHMARKS = {b.name: b for b in (
    Benchmark("http_hello", ("--no-reloads",), ("--no-reloads", "--duration", "2", "--warmup", "1"),
              _summary(r"http_hello: pmnc ", r"http_hello: NOT CLEAN"),
              (Measure("requests", "http_hello: requests/s, pmnc/uvicorn (wrk -c50)", 0.8),)),
    Benchmark("xmlrpc_echo", (), ("--duration", "2", "--warmup", "1"),
              _summary(r"xmlrpc_echo: pmnc ", r"xmlrpc_echo: NOT CLEAN"),
              (Measure("calls", "xmlrpc_echo: calls/s, pmnc/stdlib threaded", 2.0),)),
    Benchmark("rpc_calls", (), ("--calls", "500", "--warmup", "50", "--settle", "0.5"),
              _summary(r"sequential \(target >= ", r"\d+ threads \(target >= ", r"rpc_calls: sequential ",
                       r"rpc_calls: NOT CLEAN"),
              (Measure("sequential msgpack", "rpc_calls: sequential, pmnc/Pyro5 msgpack", 1.5, decides=False),
               Measure("sequential msgpack TLS", "rpc_calls: sequential, pmnc/Pyro5 msgpack TLS", 1.5),
               Measure("threads msgpack", "rpc_calls: 8 threads, pmnc/Pyro5 msgpack", 1.5, decides=False),
               Measure("threads msgpack TLS", "rpc_calls: 8 threads, pmnc/Pyro5 msgpack TLS", 1.5))),
    Benchmark("rpc_floor", (), ("--calls", "500", "--warmup", "50"),
              _summary(r"rpc_floor: bare pmnc wire / ", r"rpc_floor: NOT CLEAN"),
              (Measure("floor sequential", "rpc_floor: sequential, bare wire/Pyro5 msgpack TLS", 1.5, decides=False),
               Measure("floor threads", "rpc_floor: 8 threads, bare wire/Pyro5 msgpack TLS", 1.5, decides=False),
               Measure("floor multiplexed", "rpc_floor: 8 threads, multiplexed wire/Pyro5 msgpack TLS", 1.5,
                       decides=False))),
    # The same three, each server kept on one CPU (pmnc by its cpu_affinity, the peer alike): not the
    # targets' conditions, but equal ones for both sides; what pmnc's cpu_affinity gives.
    Benchmark("http_hello_pinned", ("--no-reloads", "--pin", "0"), ("--no-reloads", "--duration", "2", "--warmup",
                                                                      "1", "--pin", "0"),
              _summary(r"http_hello: pmnc ", r"http_hello: NOT CLEAN"),
              (Measure("requests", "http_hello --pin 0: requests/s, pmnc/uvicorn", 0.8, decides=False),),
              script="http_hello"),
    Benchmark("xmlrpc_echo_pinned", ("--pin", "0"), ("--duration", "2", "--warmup", "1", "--pin", "0"),
              _summary(r"xmlrpc_echo: pmnc ", r"xmlrpc_echo: NOT CLEAN"),
              (Measure("calls", "xmlrpc_echo --pin 0: calls/s, pmnc/stdlib threaded", 2.0, decides=False),),
              script="xmlrpc_echo"),
    Benchmark("rpc_calls_pinned", ("--pin", "0,1"), ("--calls", "500", "--warmup", "50", "--settle", "0.5", "--pin",
                                                     "0,1"),
              _summary(r"sequential \(target >= ", r"\d+ threads \(target >= ", r"rpc_calls: sequential ",
                       r"rpc_calls: NOT CLEAN"),
              (Measure("sequential msgpack TLS", "rpc_calls --pin 0,1: sequential, pmnc/Pyro5 msgpack TLS", 1.5,
                       decides=False),
               Measure("threads msgpack TLS", "rpc_calls --pin 0,1: 8 threads, pmnc/Pyro5 msgpack TLS", 1.5,
                       decides=False)),
              script="rpc_calls"),
    Benchmark("pg_transactions", (), ("--duration", "1", "--warmup", "0.5"),
              _summary(r"single insert: ", r"pg_transactions: pmnc ", r"pg_transactions: NOT CLEAN"),
              (Measure("1 insert", "pg_transactions: 1 insert, tx/s, pmnc/psycopg", 0.8),)),
)}


# --- reading a run's summary lines --------------------------------------------------------------------


def _ratio(text: str) -> float | None:
    return None if text == "nan" else float(text)  # nan: the peer's rate was 0


def ratios(bench: Benchmark, lines: list[str]) -> dict[str, float | None]:
    """The ratios of one run by measure key, from its summary lines (the last line of a kind wins)."""
    found: dict[str, float | None] = {}
    name = bench.script or bench.name
    for line in lines:
        if name == "rpc_calls":
            phase = re.match(r"(sequential|\d+ threads) \(target >= [\d.]+\): ", line)
            if phase is None:
                continue
            kind = "sequential" if phase.group(1) == "sequential" else "threads"
            for serializer, value in re.findall(rf"pmnc/Pyro5 (msgpack(?: TLS)?) {RATIO}\b", line):
                found[f"{kind} {serializer}"] = _ratio(value)
        elif name == "rpc_floor":
            per_connection, _, multiplexed = line.partition("; multiplexed")
            for kind, value in re.findall(rf"(sequential|threads) {RATIO}\b", per_connection):
                found[f"floor {kind}"] = _ratio(value)
            for value in re.findall(rf"threads {RATIO}\b", multiplexed):
                found["floor multiplexed"] = _ratio(value)
        else:
            match = re.match(rf"{name}: pmnc .*?, ratio {RATIO}\b", line)
            if match:
                found[bench.measures[0].key] = _ratio(match.group(1))
    return found


# --- running one script -------------------------------------------------------------------------------


@dataclass
class Run:
    benchmark: str
    round: int
    command: str
    returncode: int | None
    seconds: float
    summary_lines: list[str]
    ratios: dict[str, float | None]
    ok: bool
    why: str = ""  # why it failed
    tail: list[str] = field(default_factory=list)  # the end of a failed run's output


def run_once(bench: Benchmark, round_: int, quick: bool, logs: Path, verbose: bool) -> Run:
    """One run of `bench` (subrun.run: stopped cleanly on Ctrl-C, SIGTERM or the timeout), its output
    streamed to a log file."""
    began = time.monotonic()
    with (logs / f"{bench.name}-{round_}.log").open("w") as log:
        def on_line(line: str) -> None:
            log.write(line)
            log.flush()
            if verbose:
                print(f"  | {line}", end="", flush=True)

        returncode, lines = subrun.run(bench.command(quick), timeout=RUN_TIMEOUT, on_line=on_line, name="median5")
    return judge(bench, round_, quick, returncode, time.monotonic() - began, lines)


def judge(bench: Benchmark, round_: int, quick: bool, returncode: int | None, seconds: float,
          lines: list[str]) -> Run:
    """Failed: a non-zero exit code (the script's NOT CLEAN included), or a measure it did not print
    (or printed as nan)."""
    text = [line.rstrip("\n") for line in lines]
    summary = [line for line in text if bench.summary.match(line)]
    found = ratios(bench, summary)
    missing = [m.key for m in bench.measures if found.get(m.key) is None]
    why = ""
    if returncode != 0:
        why = f"exit code {returncode}"
    elif not summary:
        why = "no summary line"
    elif missing:
        why = f"no ratio for {', '.join(missing)}"
    return Run(bench.name, round_, bench.shown(quick), returncode, round(seconds, 1), summary, found,
               ok=not why, why=why, tail=text[-TAIL:] if why else [])


def progress(run: Run, runs: int) -> str:
    head = f"median5: round {run.round}/{runs}, {run.benchmark}:"
    shown = ", ".join(f"{key} {'nan' if value is None else f'{value:.2f}'}" for key, value in run.ratios.items())
    if run.ok:
        return f"{head} {shown}; {run.seconds:.0f}s"
    return f"{head} FAILED ({run.why}){f'; printed {shown}' if shown else ''}; {run.seconds:.0f}s"


# --- the table --------------------------------------------------------------------------------------------


@dataclass
class Row:
    benchmark: str
    measure: str
    title: str
    target: float
    decides: bool
    ratios: list[float | None]  # per round; None: that run failed
    median: float | None
    counted: int
    verdict: str


def rows(benches: list[Benchmark], runs: list[Run], count: int) -> list[Row]:
    table = []
    for bench in benches:
        mine = {run.round: run for run in runs if run.benchmark == bench.name}
        for m in bench.measures:
            values = [mine[r].ratios.get(m.key) if r in mine and mine[r].ok else None for r in range(1, count + 1)]
            counted = [v for v in values if v is not None]
            median = statistics.median(counted) if counted else None
            verdict = "no run" if median is None else "met" if median >= m.target else "NOT met"
            if not m.decides and median is not None:
                verdict = f"(for scale: {'at or above' if median >= m.target else 'below'} the target)"
            if counted and len(counted) < count:
                verdict += f" ({len(counted)} of {count} runs)"
            table.append(Row(bench.name, m.key, m.title, m.target, m.decides, values, median, len(counted), verdict))
    return table


def print_table(table: list[Row], count: int) -> None:
    """A star marks the rows that decide where a benchmark shows others for scale."""
    shown_for_scale = {row.benchmark for row in table if not row.decides and any(r.benchmark == row.benchmark
                                                                                  and r.decides for r in table)}
    titles = [f"{row.title} *" if row.benchmark in shown_for_scale and row.decides else row.title for row in table]
    width = max(len(title) for title in titles) + 2
    print(f"{'benchmark / measure':<{width}}" + "".join(f"{f'run {i}':>8}" for i in range(1, count + 1))
          + f"{'median':>8}{'target':>9}  verdict")
    for row, title in zip(table, titles, strict=True):
        cells = "".join(f"{'fail' if v is None else f'{v:.2f}':>8}" for v in row.ratios)
        median = "-" if row.median is None else f"{row.median:.2f}"
        print(f"{title:<{width}}{cells}{median:>8}{f'>= {row.target:g}':>9}  {row.verdict}")
    if shown_for_scale:
        print("* at equal security (pmnc's cages always talk mutual TLS) the TLS rows decide rpc_calls' target; "
              "the plain TCP rows are shown for scale")


# --- main -------------------------------------------------------------------------------------------------


def git_commit() -> str:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return done.stdout.strip() if done.returncode == 0 else "?"


def as_json(args: argparse.Namespace, benches: list[Benchmark], table: list[Row], runs: list[Run],
            seconds: float) -> dict[str, Any]:
    return {
        "made": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "pmnc": pmnc_version(),  # says whether lib/ had uncommitted changes
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "runs_per_benchmark": args.runs,
        "quick": args.quick,
        "seconds": round(seconds, 1),
        "commands": {b.name: b.shown(args.quick) for b in benches},
        "table": [asdict(row) for row in table],
        "runs": [asdict(run) for run in runs],
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="runs of each benchmark (5)")
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"benchmarks to run, comma-separated ({','.join(BENCHMARKS)})")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: every run as short as it sensibly can be; no JSON unless --out")
    parser.add_argument("--out", type=Path, help="the JSON (bench/median5.json; with --quick none by default)")
    parser.add_argument("--logs", type=Path, help="folder for each run's whole output (a new temporary one)")
    parser.add_argument("--verbose", action="store_true", help="echo the scripts' output as it comes")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs: at least 1")
    args.only = [name for name in args.only.split(",") if name]
    if not args.only or not set(args.only) <= set(BENCHMARKS):
        parser.error(f"--only: some of {', '.join(BENCHMARKS)}")
    if args.out is None and not args.quick:
        args.out = BENCH / "median5.json"
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    benches = [BENCHMARKS[name] for name in BENCHMARKS if name in args.only]  # always in the same order

    subrun.stop_cleanly_on_signals()
    logs = args.logs or Path(tempfile.mkdtemp(prefix="pmnc-median5-"))
    logs.mkdir(parents=True, exist_ok=True)
    quick = " (--quick: a smoke test, not a measurement)" if args.quick else ""
    print(f"median5: {pmnc_version()}; Python {sys.version.split()[0]}; {os.cpu_count()} CPUs; {args.runs} run(s) "
          f"of {', '.join(b.name for b in benches)}{quick}; each run's output in {logs}/", flush=True)
    for bench in benches:
        print(f"median5: {bench.shown(args.quick)}", flush=True)
    began = time.monotonic()
    runs: list[Run] = []
    try:
        for round_ in range(1, args.runs + 1):
            for bench in benches:
                runs.append(run_once(bench, round_, args.quick, logs, args.verbose))
                print(progress(runs[-1], args.runs), flush=True)
    except (KeyboardInterrupt, subrun.Interrupted):
        print("median5: interrupted; nothing written", file=sys.stderr)
        return 130
    seconds = time.monotonic() - began

    table = rows(benches, runs, args.runs)
    print()
    print_table(table, args.runs)
    for run in runs:
        if not run.ok:
            print(f"\nmedian5: NOT CLEAN: {run.benchmark}, round {run.round}: {run.why}; the end of its output:")
            print("\n".join(f"  | {line}" for line in run.tail))
    if args.out is not None:
        args.out.write_text(json.dumps(as_json(args, benches, table, runs, seconds), indent=1) + "\n")
        print(f"median5: wrote {args.out}")
    print(f"median5: {len(runs)} run(s) in {seconds:.0f}s, {sum(not run.ok for run in runs)} failed")
    return 0 if all(run.ok for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
