"""Benchmark the file interface (a spool) against a bare Python loop listing, reading and deleting.

    .venv/bin/python bench/file_spool.py [--files 5000] [--size 200] [--warmup 50] [--rounds 3]
                                         [--concurrency 1] [--keep]

Each round, both sides in turn take `--files` files of `--size` bytes from a folder on the
same disk (under a temporary folder in /tmp, or TMPDIR):

- bare: a loop of `os.listdir`, names sorted and matched against the regex, then per file
  `open` / `read` / `close` and `os.remove`, until a listing is empty;
- pmnc: a cage on a thread of this process whose one interface is protocol "file" (the
  default settle_time, interval 0.2 s, `--concurrency`) and whose handler opens and reads the
  file (the trivial handler), the interface deleting it after the handler returned.

The files are written into a folder beside the spool, their modification times set 10 s in
the past (settled, as files dropped a while ago are), and the folder is renamed into place:
the bare loop starts then; the cage's interface finds the folder at its next look (it was
missing: the interface logs that outage once, and its end). The clock and this process's CPU
meter run from the `--warmup`-th file read to the spool found empty. Afterwards each file
must have been read exactly once. The summary gives each round's ratio (pmnc files/s over
bare files/s) and their median; the target is >= 0.7. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from inprocess import InProcessCage  # noqa: E402

REGEX = r"f_\d+\.dat"
TARGET = 0.7

# The cage's handler: read the file, tell the benchmark (a function of this script, the
# process's __main__) which file it was.
HANDLER = """
import sys

def process_request(request, response):
    with open(request["file_name"], "rb") as f:
        f.read()
    sys.modules["__main__"].on_file(request["file_name"])

__all__ = ["process_request"]
# EOF
"""


class Meter:
    """Counts files read; takes the time and CPU at the warm-up's end."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset(0)

    def reset(self, warmup: int, count: int = 0) -> None:
        with self.lock:
            self.warmup, self.count, self.seen, self.repeats = warmup, count, set[str](), 0
            self.start: tuple[float, float] | None = None
            self.all_read = threading.Event()  # set at the last file: the benchmark waits without polling

    def file(self, path: str) -> None:
        with self.lock:
            name = os.path.basename(path)
            if name in self.seen:
                self.repeats += 1
            self.seen.add(name)
            if len(self.seen) == self.warmup:
                self.start = (time.monotonic(), time.process_time())
            if len(self.seen) == self.count:
                self.all_read.set()


METER = Meter()


def on_file(path: str) -> None:
    METER.file(path)


def load(base: Path, spool: Path, count: int, size: int) -> None:
    """`count` settled files of `size` bytes renamed in as the folder `spool`."""
    loading = base / "loading"
    loading.mkdir()
    data = os.urandom(size)
    past = time.time() - 10.0
    for i in range(count):
        path = loading / f"f_{i:07d}.dat"
        path.write_bytes(data)
        os.utime(path, (past, past))
    os.rename(loading, spool)


def bare(spool: Path, pattern: re.Pattern[str]) -> None:
    folder = str(spool)
    while True:
        names = sorted(n for n in os.listdir(folder) if pattern.fullmatch(n))
        if not names:
            return
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                f.read()
            on_file(path)
            os.remove(path)


def emptied(spool: Path) -> bool:
    with os.scandir(spool) as entries:
        return next(entries, None) is None


def measure(count: int) -> tuple[float, float]:
    """(files/s, CPU µs per file) from the warm-up's end to now."""
    end = (time.monotonic(), time.process_time())
    assert METER.start is not None, "the warm-up never ended"
    files = count - METER.warmup
    wall, cpu = end[0] - METER.start[0], end[1] - METER.start[1]
    return files / wall, cpu / files * 1e6


def check(count: int, side: str) -> str:
    if len(METER.seen) != count or METER.repeats:
        return f"NOT CLEAN: {side} read {len(METER.seen)} of {count} files, {METER.repeats} repeat(s)"
    return ""


def run_bare(base: Path, args: argparse.Namespace) -> tuple[float, float, str]:
    spool = base / "bare_spool"
    METER.reset(args.warmup)
    load(base, spool, args.files, args.size)
    bare(spool, re.compile(REGEX))
    rate, cpu = measure(args.files)
    spool.rmdir()
    return rate, cpu, check(args.files, "bare")


def run_pmnc(base: Path, spool: Path, args: argparse.Namespace) -> tuple[float, float, str]:
    METER.reset(args.warmup, args.files)
    load(base, spool, args.files, args.size)
    if not METER.all_read.wait(600.0):
        return 0.0, 0.0, f"NOT CLEAN: pmnc read {len(METER.seen)} of {args.files} files in 600 s"
    while not emptied(spool):  # the last file is deleted right after its handler returned
        time.sleep(0.0002)
    rate, cpu = measure(args.files)
    spool.rmdir()  # the interface sees the folder go: ready for the next round's
    return rate, cpu, check(args.files, "pmnc")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="pmnc-file-spool-"))
    spool = base / "spool"
    interface = {"protocol": "file", "source_directory": str(spool), "filename_regex": REGEX,
                 "interval": 0.2, "concurrency": args.concurrency}
    cage = InProcessCage(base / "tree", 10, {}, interfaces={"spool": interface},
                         files={"interface_spool.py": HANDLER})
    ratios, problems = [], []
    try:
        cage.start()
        print(f"{'':40s}{'files/s':>10s}{'CPU/file':>10s}")
        for n in range(1, args.rounds + 1):
            b_rate, b_cpu, b_problem = run_bare(base, args)
            p_rate, p_cpu, p_problem = run_pmnc(base, spool, args)
            problems += [p for p in (b_problem, p_problem) if p]
            print(f"{'bare listdir/read/remove loop':40s}{b_rate:10.0f}{b_cpu:8.0f}us  round {n}")
            print(f"{'pmnc file interface':40s}{p_rate:10.0f}{p_cpu:8.0f}us  round {n}")
            ratios.append(p_rate / b_rate if b_rate else 0.0)
        errors = [line for line in cage.problems() if "cannot be listed" not in line]
    finally:
        stopped = cage.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    median = statistics.median(ratios)
    print(f"ratio per round {', '.join(f'{r:.2f}' for r in ratios)}, median {median:.2f} "
          f"(target >= {TARGET}: {'met' if median >= TARGET else 'NOT met'}); {stopped}")
    for line in problems + errors[:5]:
        print(line)
    return 1 if problems or errors else 0


if __name__ == "__main__":
    sys.exit(main())
