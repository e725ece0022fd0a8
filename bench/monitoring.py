"""Benchmark what monitoring costs: the HTTP hello cage with statistics on and off, in one run.

    .venv/bin/python bench/monitoring.py [--duration 10] [--warmup 2] [--rounds 8] [--keep]

Two copies of the sample cage, each in its own temporary install tree (as in
bench/http_hello.py, its HTTP interface on a free loopback port): one as shipped
(config_interfaces.py `statistics=True`, the default), one with `statistics=False`. Every
round starts both afresh (one process's luck - where its memory and threads land - is
worth several percent here, so no pair of processes is kept for the whole run), warms each
up (and a first round, not counted, warms up the machine: the first processes of a run
were the slowest), runs `wrk -t2 -c50 -d<N>s --latency` against one and then the other, the order
alternating between rounds (on/off, off/on, ...), and stops both. The means over the
rounds are compared: requests/s (the issue's measure) and the cage process's CPU time per
request (from /proc).
Then the hot path alone: nanoseconds per `Statistics.request` call in this process, folding
included, and with statistics off. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "lib"))

from http_hello import (  # noqa: E402
    CAGE_PROCESS,
    WRK_CONNECTIONS,
    WRK_THREADS,
    PmncCage,
    WrkResult,
    pmnc_version,
    run_pair,
    wrk,
    wrk_version,
)
from http_resource import process_cpu  # noqa: E402
from pmnc.monitor.stats import Statistics  # noqa: E402

TARGET = 5.0  # the limit: monitoring may cost this many percent of requests/s
HOT_CALLS = 300_000


class SampleCage(PmncCage):
    """The sample cage (bench/http_hello.py's), statistics on or off in its config_interfaces.py;
    started again in the same tree, with a fresh log, for each round."""

    def __init__(self, base: Path, statistics: bool) -> None:
        self.statistics = statistics
        base = base / ("on" if statistics else "off")
        base.mkdir(parents=True, exist_ok=True)
        super().__init__(base)

    def make_tree(self) -> None:
        if self.root.exists():  # a round after the first: the same tree, its log begun afresh
            shutil.rmtree(self.logs, ignore_errors=True)
            return
        super().make_tree()
        config = self.cage_dir / "config_interfaces.py"
        text = config.read_text()
        if "config = dict(\n" not in text or "statistics=" in text:
            raise RuntimeError(f"{config}: cannot add statistics={self.statistics} to it")
        config.write_text(text.replace("config = dict(\n", f"config = dict(\n    statistics={self.statistics},\n", 1))

    def cage_pid(self) -> int:
        """The cage process (the supervisor's child), which serves the requests."""
        pids = CAGE_PROCESS.findall(self.log_text())
        if not pids:
            raise RuntimeError("the cage log does not say the cage process's pid")
        return int(pids[-1])


@dataclass
class Run:
    wrk: WrkResult
    cpu_us: float  # the cage process's CPU time per request


def measure(cage: SampleCage, duration: int) -> Run:
    pid = cage.cage_pid()
    before = process_cpu(pid)
    result = wrk(cage.port, duration)
    return Run(result, (process_cpu(pid) - before) / max(result.requests, 1) * 1e6)


def hot_path() -> tuple[float, float]:
    """ns per stats.request call, statistics on (its share of folding the records included)
    and off (the call alone)."""
    values = [random.lognormvariate(-7.5, 1.0) for _ in range(1000)]
    calls = [(values[i % 1000], values[(i * 7) % 1000], values[(i * 13) % 1000], i % 50 != 0)
             for i in range(HOT_CALLS)]

    def per_call(stats: Statistics) -> float:
        request = stats.request
        began = time.perf_counter()
        for pending, processing, response, ok in calls:
            request("http", pending, processing, response, ok)
        stats.snapshot()  # what is still waiting is folded too
        return (time.perf_counter() - began) / len(calls) * 1e9

    off = Statistics()
    off.enabled = False
    return min(per_call(Statistics()) for _ in range(3)), min(per_call(off) for _ in range(3))


def mean(values: list[float | None]) -> float:
    given = [v for v in values if v is not None]
    return sum(given) / len(given) if given else float("nan")


def print_runs(rows: list[tuple[str, Run]]) -> None:
    print(f"{'':<26}{'req/s':>10}{'requests':>11}{'p50':>10}{'p99':>10}{'CPU/req':>9}{'failed':>8}")
    for name, run in rows:
        r = run.wrk
        print(f"{name:<26}{r.rps:>10.0f}{r.requests:>11}{r.p50_ms or 0:>8.2f}ms{r.p99_ms or 0:>8.2f}ms"
              f"{run.cpu_us:>7.1f}us{r.failed:>8}")


def bench(args: argparse.Namespace, on: SampleCage, off: SampleCage) -> int:
    print(f"monitoring: wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{args.duration:g}s --latency, keep-alive, "
          f"warm-up {args.warmup:g}s each, {args.rounds} round(s), the order alternating; {wrk_version()}; "
          f"Python {sys.version.split()[0]}; {os.cpu_count()} CPUs shared by both cages and wrk")
    print(f"{pmnc_version()}: the sample cage, with statistics and without")
    runs: dict[bool, list[Run]] = {True: [], False: []}
    rows: list[tuple[str, Run]] = []
    print("round 0 (not counted): both cages started and loaded once ...", flush=True)
    for cage in (on, off):
        cage.start()
        wrk(cage.port, args.warmup, latency=False)
        cage.stop()
    for i in range(args.rounds):
        order = (on, off) if i % 2 == 0 else (off, on)
        print(f"round {i + 1}: both cages started, warmed up ({args.warmup:g}s each), then statistics "
              f"{' then '.join('on' if c.statistics else 'off' for c in order)} ...", flush=True)
        for cage in order:
            cage.start()
        for cage in order:
            wrk(cage.port, args.warmup, latency=False)
        for cage in order:
            run = measure(cage, args.duration)
            runs[cage.statistics].append(run)
            rows.append((f"statistics {'on' if cage.statistics else 'off'}, round {i + 1}", run))
        for cage in order:
            cage.stop()

    print("hot path ...", flush=True)
    on_ns, off_ns = hot_path()

    print()
    print_runs(rows)
    means = {}
    for statistics in (True, False):
        taken = runs[statistics]
        means[statistics] = rps, cpu = mean([r.wrk.rps for r in taken]), mean([r.cpu_us for r in taken])
        print(f"mean, statistics {'on ' if statistics else 'off'}: {rps:.0f} req/s, "
              f"p50 {mean([r.wrk.p50_ms for r in taken]):.2f}ms, p99 {mean([r.wrk.p99_ms for r in taken]):.2f}ms, "
              f"{cpu:.1f}us CPU per request")
    print(f"hot path: stats.request {on_ns:.0f} ns per call (its share of folding included), "
          f"{off_ns:.0f} ns with statistics off: {on_ns - off_ns:.0f} ns to take a request")
    (on_rps, on_cpu), (off_rps, off_cpu) = means[True], means[False]
    cost = (off_rps - on_rps) / off_rps * 100 if off_rps else float("nan")
    cpu_cost = (on_cpu - off_cpu) / off_cpu * 100 if off_cpu else float("nan")
    verdict = "met" if cost <= TARGET else "NOT met"
    print(f"monitoring: on {on_rps:.0f} req/s, off {off_rps:.0f} req/s, cost {cost:.1f} % "
          f"(target <= {TARGET:g} %: {verdict}); CPU per request {cpu_cost:+.1f} %")

    failed = sum(r.wrk.failed for r in runs[True] + runs[False])
    if failed:
        print(f"monitoring: NOT CLEAN: {failed} failed response(s)")
    return 0 if not failed else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=10, help="seconds of each measured wrk run (10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of the warm-up run per cage (2)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds of one run each, on and off (8)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary trees and logs, print where")
    args = parser.parse_args(argv)
    if args.duration < 1 or args.warmup < 1 or args.rounds < 1:
        parser.error("--duration, --warmup and --rounds are whole numbers, at least 1")
    if shutil.which("wrk") is None:
        print("monitoring: wrk is not installed: run ./setup bench (as root) or apt-get install wrk", file=sys.stderr)
        return 2
    return run_pair("monitoring", args.keep, lambda base: SampleCage(base, True),
                    lambda base: SampleCage(base, False), lambda on, off: bench(args, on, off))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
