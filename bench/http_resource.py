"""Benchmark the HTTP resource's pool against plain http.client, both GETting from one uvicorn.

    .venv/bin/python bench/http_resource.py [--duration 5] [--threads 4,8] [--warmup 1]

The peer is `bench/uvicorn_hello.py` in a process of its own. pmnc runs in
this process: a temporary cage tree with `config_resource_hello.py` (protocol
"http", pool__size = the most threads asked for), started as `pmnc.cage.Cage`
on a thread, and N client threads each with its own attached Request calling
`pmnc.transaction.hello.get("/")` in a loop. The baseline: N threads each with
its own `http.client.HTTPConnection` (one keep-alive connection per thread)
calling GET / in a loop. Same N, same duration, same server, one after the
other. See bench/README.md.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "lib"))

from http_hello import HOST, Uvicorn, pmnc_version, read_text  # noqa: E402
from inprocess import CAGE, InProcessCage  # noqa: E402
from pmnc.cage import Cage  # noqa: E402
from pmnc.request import Request, attached  # noqa: E402

HELLO = b"Hello, world !"


# --- measuring ---------------------------------------------------------------------------------


@dataclass
class Run:
    calls: int
    errors: int
    seconds: float
    server_cpu: float  # share of one CPU the server process used during the run
    client_cpu: float  # the same for this process (all its threads)
    first_error: str = ""

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far, from /proc."""
    try:
        fields = read_text(Path(f"/proc/{pid}/stat")).rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (IndexError, ValueError):
        return float("nan")


def hammer(threads: int, duration: float, server_pid: int, client: Callable[[], Callable[[], bytes]]) -> Run:
    """`threads` threads, each calling what `client()` made for it until `duration` is up."""
    counts, errors, first_error = [0] * threads, [0] * threads, [""]
    ready = threading.Barrier(threads + 1)
    go = threading.Event()
    end = [0.0]

    def worker(i: int) -> None:
        call = client()
        ready.wait()
        go.wait()
        while time.monotonic() < end[0]:
            try:
                body = call()
            except Exception as e:
                errors[i] += 1
                first_error[0] = first_error[0] or repr(e)
                continue
            if body == HELLO:
                counts[i] += 1
            else:
                errors[i] += 1
                first_error[0] = first_error[0] or f"unexpected body {body[:50]!r}"

    workers = [threading.Thread(target=worker, args=(i,), name=f"client-{i}", daemon=True) for i in range(threads)]
    for thread in workers:
        thread.start()
    ready.wait(30.0)
    server_before, client_before, began = process_cpu(server_pid), time.process_time(), time.monotonic()
    end[0] = began + duration
    go.set()
    for thread in workers:
        thread.join(duration + 30.0)
    seconds = time.monotonic() - began
    return Run(sum(counts), sum(errors), seconds, (process_cpu(server_pid) - server_before) / seconds,
               (time.process_time() - client_before) / seconds, first_error[0])


def plain_client(port: int) -> Callable[[], Callable[[], bytes]]:
    """Per thread: one persistent HTTPConnection, GET / on it."""
    def make() -> Callable[[], bytes]:
        connection = http.client.HTTPConnection(HOST, port, timeout=10.0)

        def get() -> bytes:
            connection.request("GET", "/")
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"status {response.status}")
            return body
        return get
    return make


def pmnc_client(cage: Cage, resource: str, duration: float) -> Callable[[], Callable[[], bytes]]:
    """Per thread: its own attached Request, `pmnc.transaction.<resource>.get("/")`."""
    assert cage.loader is not None

    def make() -> Callable[[], bytes]:
        attached(Request(timeout=duration + 60.0, interface="bench", protocol="bench")).__enter__()
        target = getattr(cage.runtime.root.transaction, resource)

        def get() -> bytes:
            status, _, body = target.get("/")
            if status != 200:
                raise RuntimeError(f"status {status}")
            return body  # type: ignore[no-any-return]
        return get
    return make


def row(name: str, run: Run) -> str:
    per_call = run.client_cpu / run.rate * 1e6 if run.rate else float("nan")
    return (f"{name:<28}{run.rate:>10.0f}{run.calls:>10}{run.errors:>8}"
            f"{run.client_cpu * 100:>10.0f}%{per_call:>10.0f}us{run.server_cpu * 100:>10.0f}%")


def bench(args: argparse.Namespace, base: Path, peer: Uvicorn) -> int:
    counts = sorted({int(n) for n in args.threads.split(",")})
    print(f"http_resource: GET / for {args.duration:g}s per run, threads {counts}, warm-up {args.warmup:g}s; "
          f"Python {sys.version.split()[0]}; {os.cpu_count()} CPUs shared by the server and the clients")
    peer.start()
    assert peer.process is not None
    print(peer.banner)
    size = max(counts)
    cage = InProcessCage(base, size, {"hello": f"protocol='http', server_address=({HOST!r}, {peer.port}), "
                                              f"pool__size={size}"})
    try:
        cage.start()
        print(f"{pmnc_version()}: cage {CAGE} in this process, resource hello (pool__size={max(counts)})")
        results: list[tuple[int, Run, Run]] = []
        for n in counts:
            resource = f"hello__t{n}"  # a pool of its own per thread count, sized by config_resource_hello.py
            plain, pooled = plain_client(peer.port), pmnc_client(cage.cage, resource, args.duration + args.warmup)
            print(f"{n} threads: warming up ...", flush=True)
            hammer(n, args.warmup, peer.process.pid, plain)
            hammer(n, args.warmup, peer.process.pid, pooled)
            print(f"{n} threads: http.client, then pmnc ...", flush=True)
            on_plain = hammer(n, args.duration, peer.process.pid, plain)
            on_pmnc = hammer(n, args.duration, peer.process.pid, pooled)
            results.append((n, on_plain, on_pmnc))
        print()
        print(f"{'':<28}{'GET/s':>10}{'calls':>10}{'errors':>8}{'client CPU':>11}{'CPU/call':>12}"
              f"{'server CPU':>11}")
        for n, on_plain, on_pmnc in results:
            print(row(f"http.client, {n} threads", on_plain))
            print(row(f"pmnc resource, {n} threads", on_pmnc))
        failed = False
        for n, on_plain, on_pmnc in results:
            for name, run in (("http.client", on_plain), ("pmnc", on_pmnc)):
                if run.errors:
                    failed = True
                    print(f"{name}, {n} threads: {run.errors} errors, the first: {run.first_error}")
        summary = ", ".join(f"{n} threads: pmnc {p.rate:.0f}/s, http.client {b.rate:.0f}/s, ratio "
                            f"{p.rate / b.rate if b.rate else float('nan'):.2f}" for n, b, p in results)
        print(f"http_resource: {summary}")
        problems = [line for line in cage.log_text().splitlines() if " ERR " in line or " WRN " in line]
        for line in problems[:5]:
            print(f"cage log: {line}")
        return 1 if failed else 0
    finally:
        print(f"stopped: {cage.stop()}; {peer.stop()}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of each measured run (5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per client and N (1)")
    parser.add_argument("--threads", default="4,8", help="comma-separated client thread counts (4,8)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary tree and logs, print where")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="pmnc-bench-"))
    peer = Uvicorn(base)
    try:
        return bench(args, base, peer)
    except (RuntimeError, OSError) as e:
        sys.stdout.flush()
        print(f"http_resource: failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        sys.stdout.flush()
        print("http_resource: interrupted", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
