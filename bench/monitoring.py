"""Benchmark what monitoring costs: the HTTP hello cage with statistics on and off, in one run.

    .venv/bin/python bench/monitoring.py [--duration 10] [--warmup 2] [--rounds 8] [--keep]

The sample cage in a temporary install tree (as in bench/http_hello.py, its HTTP interface on
a free loopback port), one process for the whole run: `statistics` in its config_interfaces.py
is re-read every second, so each round rewrites it (on, then off, or the other way round,
alternating between rounds) and waits for the cage's log line "statistics are taken / not
taken from now on" before it measures. One process, because one process's luck - where its
memory and threads land - was worth up to 15 % here, more than what is measured. Each
measurement is `wrk -t2 -c50 -d<N>s --latency` after a warm-up; the means over the rounds are
compared: requests/s (the issue's measure) and the cage process's CPU time per request (from
/proc). Then the hot path alone: nanoseconds per `Statistics.request` call in this process,
folding included, and with statistics off. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import random
import re
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
    wait_until,
    wrk,
    wrk_version,
)
from http_resource import process_cpu  # noqa: E402
from pmnc.monitor.stats import Statistics  # noqa: E402

TARGET = 5.0  # the limit: monitoring may cost this many percent of requests/s
HOT_CALLS = 300_000


class SampleCage(PmncCage):
    """The sample cage (bench/http_hello.py's), whose config_interfaces.py says `statistics=`."""

    def make_tree(self) -> None:
        super().make_tree()
        self.statistics = True
        self.write_config()

    def write_config(self) -> None:
        config = self.cage_dir / "config_interfaces.py"
        text = re.sub(r"\n    statistics=(True|False),", "", config.read_text())
        if "config = dict(\n" not in text:
            raise RuntimeError(f"{config}: cannot add statistics= to it")
        temporary = config.with_suffix(".tmp")
        line = f"    statistics={self.statistics},\n"
        temporary.write_text(text.replace("config = dict(\n", "config = dict(\n" + line, 1))
        temporary.replace(config)  # as editors save: the cage never reads half a file

    def set_statistics(self, on: bool) -> None:
        """Rewrite the config and wait for the cage to say it took the change."""
        if on == self.statistics:
            return
        said = f"statistics are {'taken' if on else 'not taken'} from now on"
        before = self.log_text().count(said)
        self.statistics = on
        self.write_config()
        wait_until(lambda: self.log_text().count(said) > before or None, 15.0, f"pmnc: the log line {said!r}")

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


def bench(args: argparse.Namespace, cage: SampleCage) -> int:
    print(f"monitoring: wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{args.duration:g}s --latency, keep-alive, "
          f"warm-up {args.warmup:g}s before each, {args.rounds} round(s), the order alternating; {wrk_version()}; "
          f"Python {sys.version.split()[0]}; {os.cpu_count()} CPUs shared by the cage and wrk")
    print(f"{pmnc_version()}: the sample cage, one process, statistics switched on and off in it")
    runs: dict[bool, list[Run]] = {True: [], False: []}
    rows: list[tuple[str, Run]] = []
    cage.start()
    wrk(cage.port, args.warmup, latency=False)  # the first requests load the handler
    for i in range(args.rounds):
        order = (True, False) if i % 2 == 0 else (False, True)
        print(f"round {i + 1}: statistics {' then '.join('on' if on else 'off' for on in order)} ...", flush=True)
        for on in order:
            cage.set_statistics(on)
            wrk(cage.port, args.warmup, latency=False)
            run = measure(cage, args.duration)
            runs[on].append(run)
            rows.append((f"statistics {'on' if on else 'off'}, round {i + 1}", run))

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


class Nothing:
    """No peer: this benchmark compares the cage with itself."""

    def stop(self) -> str:
        return "no peer"


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
    return run_pair("monitoring", args.keep, lambda base: SampleCage(base),
                    lambda base: Nothing(), lambda cage, _: bench(args, cage))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
