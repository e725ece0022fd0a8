"""Count the function calls one HTTP request costs the sample cage and a bare uvicorn: where the time goes.

    .venv/bin/python bench/calls_per_request.py [--requests 4000] [--clients 8] [--top 25]
    .venv/bin/python bench/calls_per_request.py --pg [--requests 2000] [--top 25]
    .venv/bin/python bench/calls_per_request.py --opcodes [--requests 2000] [--top 25]

Timing under load varies by a tenth from run to run here, and a flame graph's shares are of a
total that moves with it; a count of calls does not. Each server runs on a thread of this
process with `threading.setprofile` counting every Python call and every call into C made by
its threads (not the clients'), while `--clients` keep-alive clients (http.client, on threads
of their own) send `--requests` GETs of `/` between them:

- pmnc: the sample cage (`cages/sample`, its HTTP interface and the performance interface moved
  to free loopback ports) run by `pmnc.cage.Cage` in a temporary tree;
- uvicorn: `bench/uvicorn_hello.py`'s application, asyncio loop and httptools, as http_hello.py
  runs it.

It prints calls per request (Python functions, and all calls with those into C), pmnc's Python
calls grouped by the part of pmnc that makes them, and the `--top` functions of each. Counting
slows both servers tenfold; the counts do not depend on it. See bench/README.md, "Issue 20".

`--opcodes` counts the bytecode instructions executed instead of the calls (a trace function,
slower still): what a call costs inside, where the count of calls is the same.

`--pg` counts one transaction of pg_transactions.py's "1 insert" instead, on one thread: plain
psycopg against `pmnc.transaction.db1.execute(...)` (a throwaway PostgreSQL 15 and a cage on a
thread of this process, as pg_transactions.py starts them; every call of this process counted).
"""

from __future__ import annotations

import argparse
import collections
import http.client
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "lib"))

import uvicorn  # noqa: E402
import uvicorn_hello  # noqa: E402
from http_hello import wait_until  # noqa: E402
from nats_server import free_port  # noqa: E402
from pmnc import log  # noqa: E402
from pmnc.cage import Cage  # noqa: E402

WARMUP = 200  # requests before counting starts: modules loaded, connections open
START_TIMEOUT = 30.0
# What each of pmnc's modules on the path is there for (the guarantee its calls buy).
PARTS = {
    "http.py": "HTTP connection: phases, admission, timers",
    "httpwire.py": "HTTP parsing and the response's checks and rendering",
    "workers.py": "hand-off to a worker, earliest deadline first",
    "lifecycle.py": "the request's lifecycle: intake, settling once",
    "request.py": "the request: id, deadline, attached to the thread",
    "threading.py": "hand-off: waking a worker",
    "loader.py": "hot reload: the module's current version",
    "rwlock.py": "hot reload: the module's reader lock",
    "typecheck.py": "the handler's type check",
    "stats.py": "statistics",
    "loop.py": "posting the answer back to the loop",
    "log.py": "log level checks",
    "interface_http.py": "the handler itself",
    "<string>": "dataclass constructors (the parsed request, its tokens)",
    "selector_events.py": "asyncio: the socket transport",
    "base_events.py": "asyncio: the loop",
    "events.py": "asyncio: callbacks",
    "selectors.py": "asyncio: epoll",
}


class Counter:
    """Calls made by the server's threads while `on`."""

    def __init__(self) -> None:
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.on = False

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if not self.on or threading.current_thread().name.startswith("client"):
            return
        if event == "call":
            code = frame.f_code
            self.counts[(os.path.basename(code.co_filename), code.co_name)] += 1
        elif event == "c_call":
            self.counts[("C", getattr(arg, "__qualname__", repr(arg)))] += 1

    def python(self) -> int:
        return sum(n for (where, _), n in self.counts.items() if where != "C")


class OpcodeCounter(Counter):
    """--opcodes: the bytecode instructions the server's threads execute, per function (a trace
    function with f_trace_opcodes: slower still, as exact)."""

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        if not self.on or threading.current_thread().name.startswith("client"):
            return None
        frame.f_trace_opcodes = True
        return self._opcode

    def _opcode(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode" and self.on:
            code = frame.f_code
            self.counts[(os.path.basename(code.co_filename), code.co_name)] += 1
        return self._opcode


def get(port: int, requests: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(requests):
            connection.request("GET", "/")
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"GET / answered {response.status}")
    finally:
        connection.close()


def count(counter: Counter, port: int, requests: int, clients: int) -> None:
    """`requests` GETs from `clients` threads, counted."""
    get(port, WARMUP)
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            get(port, n)
        except BaseException as e:
            errors.append(e)

    shares = [requests // clients + (i < requests % clients) for i in range(clients)]
    threads = [threading.Thread(target=client, args=(n,), name=f"client-{i}") for i, n in enumerate(shares)]
    counter.on = True
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        counter.on = False
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]!r}")


@contextmanager
def sample_cage(base: Path) -> Iterator[int]:
    """The sample cage on a thread of this process; yields its HTTP port."""
    cages = base / "cages"
    shutil.copytree(ROOT / "cages" / ".shared", cages / ".shared",
                    ignore=shutil.ignore_patterns("ssl_keys", "__pycache__"))
    cage_dir = cages / "sample"
    shutil.copytree(ROOT / "cages" / "sample", cage_dir, ignore=shutil.ignore_patterns("logs", "state", "__pycache__"))
    port = free_port()
    for name, chosen in (("http", port), ("performance", free_port())):
        config = cage_dir / f"config_interface_{name}.py"
        if config.exists():
            text = re.sub(r"listener_address\s*=\s*\([^)]*\)", f'listener_address=("127.0.0.1", {chosen})',
                          config.read_text())
            config.write_text(text)
    (cage_dir / "logs").mkdir(exist_ok=True)
    log.configure(log.LogFile(str(cage_dir / "logs"), "sample"), echo=None)
    cage = Cage(str(cages), "sample", "bench")
    stopping = threading.Event()
    thread = threading.Thread(target=cage.run, args=(stopping,), name="cage", daemon=True)
    thread.start()
    try:
        wait_until(lambda: answers(port), START_TIMEOUT, "the sample cage answering")
        yield port
    finally:
        stopping.set()
        thread.join(START_TIMEOUT)
        log.configure(None, echo=sys.stderr)


@contextmanager
def bare_uvicorn() -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(uvicorn_hello.app, host="127.0.0.1", port=port, loop="asyncio", http="httptools",
                            log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, START_TIMEOUT, "uvicorn started")
        yield port
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT)


def answers(port: int) -> bool:
    try:
        get(port, 1)
    except (OSError, RuntimeError, http.client.HTTPException):
        return False
    return True


def measure(name: str, server: Callable[[], Any], args: argparse.Namespace) -> Counter:
    counter = OpcodeCounter() if args.opcodes else Counter()
    hook = threading.settrace if args.opcodes else threading.setprofile
    hook(counter)  # threads started from now on: the server's
    try:
        with server() as port:
            count(counter, port, args.requests, args.clients)
    finally:
        hook(None)  # type: ignore[arg-type]
    n = args.requests
    if args.opcodes:
        print(f"{name}: {counter.python() / n:.0f} bytecode instructions per request")
    else:
        print(f"{name}: {sum(counter.counts.values()) / n:.0f} calls per request, {counter.python() / n:.0f} of them "
              f"Python functions")
    return counter


def report_parts(counter: Counter, n: int, unit: str = "Python calls") -> None:
    by_file: collections.Counter[str] = collections.Counter()
    for (where, _), calls in counter.counts.items():
        if where != "C":
            by_file[where] += calls
    print(f"pmnc's {unit} per request, by the part that makes them:")
    for where, calls in by_file.most_common():
        if calls / n >= 0.5:
            print(f"  {calls / n:6.1f}  {where:20} {PARTS.get(where, '')}")


def report_top(name: str, counter: Counter, n: int, top: int, unit: str = "request") -> None:
    most = "running the most bytecode" if isinstance(counter, OpcodeCounter) else "called most"
    print(f"{name}, the {top} Python functions {most} per {unit}:")
    python = [(key, calls) for key, calls in counter.counts.items() if key[0] != "C"]
    for (where, function), calls in sorted(python, key=lambda item: -item[1])[:top]:
        print(f"  {calls / n:6.2f}  {where}:{function}")


def count_transactions(args: argparse.Namespace, base: Path) -> None:
    """pg_transactions.py's single insert, plain psycopg and through pmnc, `--requests` each."""
    import pg_transactions as pgt  # psycopg and a PostgreSQL 15 only for --pg
    from inprocess import InProcessCage

    missing = pgt.missing_postgres()
    if missing is not None:
        raise SystemExit(f"calls_per_request: --pg needs PostgreSQL: {missing}")
    n, pg, cages = args.requests, pgt.PgCluster(1, False), []
    try:
        pg.start()
        cage = InProcessCage(base, 2, {
            db: f"protocol='postgresql', server_address=('127.0.0.1', {pg.port}), database={db!r}, "
                f"username='postgres', connect_timeout=3.0, pool__size=2" for db in pgt.DATABASES})
        cages.append(cage)
        cage.start()
        clients = {"psycopg": pgt.psycopg_single(pg), "pmnc": pgt.pmnc_single(cage.transaction, 600.0)}
        counted = {}
        for offset, (name, client) in enumerate(clients.items()):
            counter = counted[name] = Counter()
            thread = threading.Thread(target=transactions, args=(client, counter, offset * 10 * (WARMUP + n), n),
                                      name=f"txn-{name}")
            thread.start()
            thread.join()
    finally:
        for cage in cages:
            cage.stop()
        pg.stop()
    for name, counter in counted.items():
        print(f"{name}: {sum(counter.counts.values()) / n:.0f} calls per transaction, {counter.python() / n:.0f} "
              f"of them Python functions")
    for name, counter in counted.items():
        report_top(name, counter, n, args.top, "transaction")


def transactions(client: Any, counter: Counter, first_key: int, n: int) -> None:
    """On this thread: warm-up transactions, then `n` counted (sys.setprofile: this thread only)."""
    with client(0) as step:
        for key in range(first_key, first_key + WARMUP):
            step(key)
        counter.on = True
        sys.setprofile(counter)
        try:
            for key in range(first_key + WARMUP, first_key + WARMUP + n):
                step(key)
        finally:
            sys.setprofile(None)
            counter.on = False


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=4000, help="requests counted per server (4000)")
    parser.add_argument("--clients", type=int, default=8, help="keep-alive clients sending them (8)")
    parser.add_argument("--top", type=int, default=25, help="functions listed per server (25)")
    parser.add_argument("--pg", action="store_true", help="count a PostgreSQL transaction instead")
    parser.add_argument("--opcodes", action="store_true", help="count bytecode instructions, not calls")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="pmnc-calls-"))
    try:
        if args.pg:
            count_transactions(args, base)
            return 0
        started = time.monotonic()
        pmnc = measure("pmnc", lambda: sample_cage(base), args)
        peer = measure("uvicorn", bare_uvicorn, args)
        n = args.requests
        seconds = time.monotonic() - started
        if args.opcodes:
            print(f"calls_per_request: pmnc {pmnc.python() / n:.0f} bytecode instructions, uvicorn "
                  f"{peer.python() / n:.0f}: {pmnc.python() / peer.python():.2f} x; {seconds:.0f}s")
        else:
            print(f"calls_per_request: pmnc {sum(pmnc.counts.values()) / n:.0f} calls ({pmnc.python() / n:.0f} "
                  f"Python), uvicorn {sum(peer.counts.values()) / n:.0f} ({peer.python() / n:.0f} Python): "
                  f"{pmnc.python() / peer.python():.2f} x the Python calls; {seconds:.0f}s")
        report_parts(pmnc, n, "bytecode instructions" if args.opcodes else "Python calls")
        report_top("pmnc", pmnc, n, args.top)
        report_top("uvicorn", peer, n, args.top)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
