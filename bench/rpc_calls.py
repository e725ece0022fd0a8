"""Benchmark cage-to-cage calls, pmnc("echo").echo.echo(x), against Pyro5 calls, both between two processes.

    .venv/bin/python bench/rpc_calls.py [--calls 5000] [--threads 8] [--warmup 200] [--settle 5]
                                        [--serializers serpent,msgpack] [--transport direct|nats] [--keep]

Every call sends a small dict, {"id": i, "text": "x" * 100}, and gets it back;
each answer must equal what was sent. Both sides run on loopback:

- pmnc: a temporary install tree with two cages, each `startup.py <cage>`:
  `echo` (a module `echo.py` with `echo(x)`, interface `rpc`) and `caller`
  (interfaces `rpc` and `http`). GET /run?calls=N&threads=T on the caller
  makes N calls to the echo cage (mutual TLS, msgpack), T=1 on the request's
  own thread, else over T threads, and answers their timing as JSON.
- Pyro5: this script with --serve-pyro (a Daemon, plain TCP, the thread pool
  server) and, per serializer, this script with --pyro-client: the same N
  calls on one proxy, then over T threads with a proxy each.

Each side is loaded first for --settle seconds over T threads (a cage with
cpu_affinity "auto", the default, chooses its CPU once a second from the
last second's load; Pyro5 gets the same), then warmed up (connections open),
then measured sequentially
and over T threads; calls/s, p50 and p99 latency and the CPU per call of
both processes are printed, with the ratios pmnc/Pyro5 against the target
(>= 1.5, sequential and concurrent). Every process is stopped at the end
whatever happens. See bench/README.md.

With --transport nats a nats-server (/usr/sbin/nats-server) is started on a
free loopback port and a second tree of the same two cages with
config_cluster.py transport="nats" calls through it; both trees run in the
same run, measured one after the other, next to Pyro5, and the ratios
nats/direct are printed against their targets (>= 0.5 sequential, >= 1
concurrent), with the nats-server's own CPU per call.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import Pyro5
import Pyro5.api
import serpent
from http_hello import (
    CAGE_PROCESS,
    HOST,
    end_process,
    kill_cage_processes,
    pmnc_version,
    read_text,
    run_pair,
    wait_until,
)
from nats_server import NatsServer
from pmnc import keys
from xmlrpc_echo import cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
REQUEST_TIMEOUT = 120.0  # the caller cage's request_timeout: a whole /run must fit in it
TEXT = "x" * 100  # the payload is {"id": i, "text": TEXT}
SERIALIZERS = ("serpent", "msgpack")
TARGET = 1.5  # pmnc / Pyro5, sequential and over threads alike (issue 20)
TRANSPORTS = ("direct", "nats")
NATS_FLOCK = "BENCH_NATS"  # the nats tree's flock (the direct tree keeps the default)

# --- the pmnc side: two cages --------------------------------------------------------------------------

ECHO_MODULE = '''# The echo cage of bench/rpc_calls.py: other cages call pmnc("echo").echo.echo(x).

__all__ = ["echo"]


def echo(x):
    return x


# EOF
'''

CAGE_CONFIG = '''config = dict(
    interfaces={interfaces!r},
    request_timeout={request_timeout!r},
    thread_count={thread_count!r},
    sweep_period=15.0,
    log_level="LOG",
    cpu_affinity={cpu_affinity!r},
)

# EOF
'''

CALLER_HANDLER = '''# The caller cage of bench/rpc_calls.py. GET /run?calls=N&threads=T makes N calls
# pmnc("echo").echo.echo(payload), T=1 on this request's own thread, else over T threads
# started together, and answers as JSON how long they took.

import json
import statistics
import threading
import time
import urllib.parse

__all__ = ["process_request"]

TEXT = "x" * 100


def _calls(ids, latencies, errors):
    for i in ids:
        payload = {"id": i, "text": TEXT}
        began = time.perf_counter()
        try:
            answer = pmnc("echo").echo.echo(payload)
        except Exception as e:
            latencies.append(time.perf_counter() - began)
            errors.append(f"call {i}: {type(e).__name__}: {e}")
            continue
        latencies.append(time.perf_counter() - began)
        if answer != payload:
            errors.append(f"call {i} answered {answer!r:.200}")


def _thread(start, ids, latencies, errors):
    start.wait()  # a thread of its own: pmnc.request is infinite, each call gets request_timeout
    _calls(ids, latencies, errors)


def process_request(request: dict, response: dict) -> None:
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(request["url"]).query)
    calls, threads = int(query["calls"][0]), int(query.get("threads", ["1"])[0])
    shares = [range(t, calls, threads) for t in range(threads)]
    latencies = [[] for _ in shares]
    errors = [[] for _ in shares]
    if threads == 1:
        began = time.perf_counter()
        _calls(shares[0], latencies[0], errors[0])
        seconds = time.perf_counter() - began
    else:
        start = threading.Barrier(threads + 1)
        workers = [threading.Thread(target=_thread, args=(start, *part), name=f"bench-{n}", daemon=True)
                   for n, part in enumerate(zip(shares, latencies, errors))]
        for worker in workers:
            worker.start()
        start.wait()
        began = time.perf_counter()
        for worker in workers:
            worker.join()
        seconds = time.perf_counter() - began
    every = [x for part in latencies for x in part]
    failed = [x for part in errors for x in part]
    cuts = statistics.quantiles(every, n=100) if len(every) > 1 else [float("nan")] * 99
    response["content"] = json.dumps({"calls": len(every), "seconds": seconds, "p50_ms": cuts[49] * 1000,
                                      "p99_ms": cuts[98] * 1000, "errors": len(failed),
                                      "first_error": failed[0] if failed else ""}).encode()
    response["headers"]["content-type"] = "application/json"


# EOF
'''

NATS_CLUSTER_CONFIG = '''# The nats tree of bench/rpc_calls.py: calls between its cages go through one nats-server.

config = dict(
    flock_id={flock!r},
    transport="nats",
    nats_servers=({url!r},),
)

# EOF
'''


@dataclass
class Run:
    """One measured batch of calls, as either side reports it."""

    calls: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    first_error: str
    client_cpu: float | None = None  # CPU seconds of the calling process meanwhile
    server_cpu: float | None = None  # ... and of the answering one
    broker_cpu: float | None = None  # ... and of the nats-server in between (transport nats)

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Run:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


class Cage:
    """One cage of the tree, run as `python startup.py <name>`."""


    def __init__(self, root: Path, name: str, output: Path) -> None:
        self.root, self.name, self.output = root, name, output
        self.folder = root / "cages" / name
        self.process: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen([sys.executable, str(self.root / "startup.py"), self.name],
                                            cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def log_text(self) -> str:
        logs = self.folder / "logs"
        return "".join(read_text(p) for p in sorted(logs.glob("*.log"))) if logs.is_dir() else ""

    def search(self, pattern: str) -> re.Match[str] | None:
        """`pattern` in the cage log; fails at once if the supervisor has exited."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"cage {self.name} exited with code {self.process.returncode}: "
                               f"{read_text(self.output)[-2000:]}{self.log_text()[-2000:]}")
        return re.search(pattern, self.log_text())

    def pid(self) -> int:
        """The cage process (the supervisor's child), not the supervisor."""
        return int(CAGE_PROCESS.findall(self.log_text())[-1])

    def signal_stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM to the supervisor: a graceful stop of the cage

    def wait_stopped(self) -> str:
        if self.process is None:
            return f"cage {self.name} was not started"
        return end_process(self.process, f"cage {self.name}", STOP_TIMEOUT, self._kill_cage)

    def _kill_cage(self) -> None:
        kill_cage_processes(self.log_text())


PIN: tuple[int, int] | None = None  # --pin: the CPUs of the callers and of the callees, both pmnc's and Pyro5's
CALLER, CALLEE = 0, 1


def kept_on(side: int) -> tuple[int] | str:
    """A cage's cpu_affinity: its side's CPU under --pin, else the default ("auto")."""
    return "auto" if PIN is None else (PIN[side],)


def pinned() -> str:
    return "" if PIN is None else f", callers kept on CPU {PIN[CALLER]} and callees on CPU {PIN[CALLEE]}"


class PmncCages:
    """Cages `echo` and `caller` in a temporary install tree; the caller runs the calls.
    With transport "nats" the tree's config_cluster.py sends calls through the nats-server `broker`."""

    def __init__(self, base: Path, transport: str = "direct", broker: NatsServer | None = None) -> None:
        suffix = "" if transport == "direct" else f"-{transport}"
        self.root = base / f"pmnc{suffix}"
        self.echo = Cage(self.root, "echo", base / f"echo{suffix}.out")
        self.caller = Cage(self.root, "caller", base / f"caller{suffix}.out")
        self.transport, self.broker = transport, broker
        self.threads = 1
        self.port = 0
        self.description = ""

    def make_tree(self) -> None:
        """startup.py, lib (a symlink), cages/.shared without its keys, and the two cages."""
        (self.root / "cages").mkdir(parents=True)
        shutil.copy(ROOT / "startup.py", self.root / "startup.py")
        os.symlink(ROOT / "lib", self.root / "lib")
        shutil.copytree(ROOT / "cages" / ".shared", self.root / "cages" / ".shared",
                        ignore=shutil.ignore_patterns("ssl_keys", "__pycache__"))
        if self.broker is not None:  # the other keys keep their defaults
            (self.root / "cages" / ".shared" / "config_cluster.py").write_text(
                NATS_CLUSTER_CONFIG.format(flock=NATS_FLOCK, url=self.broker.url))
        thread_count = max(10, self.threads + 2)
        self.echo.folder.mkdir()
        (self.echo.folder / "echo.py").write_text(ECHO_MODULE)
        (self.echo.folder / "config_interfaces.py").write_text(CAGE_CONFIG.format(
            interfaces=("rpc",), request_timeout=10.0, thread_count=thread_count, cpu_affinity=kept_on(CALLEE)))
        self.caller.folder.mkdir()
        (self.caller.folder / "interface_http.py").write_text(CALLER_HANDLER)
        (self.caller.folder / "config_interfaces.py").write_text(CAGE_CONFIG.format(
            interfaces=("rpc", "http"), request_timeout=REQUEST_TIMEOUT, thread_count=thread_count,
            cpu_affinity=kept_on(CALLER)))
        config = (ROOT / "cages" / "sample" / "config_interface_http.py").read_text()
        config, count = re.subn(r"listener_address\s*=\s*\([^)]*\)", f'listener_address=("{HOST}", 0)', config)
        if count != 1:
            raise RuntimeError("cages/sample/config_interface_http.py: no listener_address to rewrite")
        (self.caller.folder / "config_interface_http.py").write_text(config)
        self.description = (f"{pmnc_version()}: cages echo (rpc) and caller (rpc, http), "
                            f"{thread_count} worker threads each{pinned()}")
        if self.broker is not None:
            self.description += f", transport nats through {self.broker.url}"

    def start(self) -> None:
        self.make_tree()
        self.echo.launch()  # both at once: the first makes the cluster's keys, the other waits for its lock
        self.caller.launch()
        serving = "serves calls on NATS subject" if self.broker is not None else "listens on ssl://"
        wait_until(lambda: self.echo.search(f"interface rpc {serving}"), START_TIMEOUT,
                   f"cage echo: its line 'interface rpc {serving}'")
        match = wait_until(lambda: self.caller.search(r"interface http listens on https?://[\d.]+:(\d+)/"),
                           START_TIMEOUT, "cage caller: its line 'interface http listens on'")
        self.port = int(match.group(1))
        wait_until(lambda: self.caller.search(r"the cage is ready"), START_TIMEOUT, "cage caller: ready")
        self.description += f", GET http://{HOST}:{self.port}/run on the caller"

    def run(self, calls: int, threads: int) -> Run:
        """GET /run on the caller; the CPU both cage processes (and the nats-server) used meanwhile."""
        pids = (self.caller.pid(), self.echo.pid()) + ((self.broker.pid,) if self.broker is not None else ())
        before = [cpu_seconds(pid) for pid in pids]
        connection = http.client.HTTPConnection(HOST, self.port, timeout=REQUEST_TIMEOUT + 10.0)
        try:
            connection.request("GET", f"/run?calls={calls}&threads={threads}")
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        after = [cpu_seconds(pid) for pid in pids]
        if response.status != 200:
            raise RuntimeError(f"GET /run on the caller cage: {response.status} {body[:2000]!r}")
        run = Run.from_json(json.loads(body))
        cpu = [b - a if a is not None and b is not None else None for a, b in zip(before, after, strict=True)]
        run.client_cpu, run.server_cpu = cpu[:2]
        if self.broker is not None:
            run.broker_cpu = cpu[2]
        return run

    def log_problems(self) -> list[str]:
        return [f"{cage.name}: {line}" for cage in (self.caller, self.echo)
                for line in cage.log_text().splitlines() if " ERR " in line or " WRN " in line]

    def stop(self) -> str:
        """SIGTERM to both supervisors at once, then wait for each (killing what does not stop)."""
        for cage in (self.caller, self.echo):
            cage.signal_stop()
        return "; ".join(cage.wait_stopped() for cage in (self.caller, self.echo))


class BothTransports:
    """The direct tree and the nats tree (and its nats-server) in one run: started and stopped together."""

    def __init__(self, base: Path) -> None:
        self.broker = NatsServer(base / "nats")
        self.direct = PmncCages(base)
        self.nats = PmncCages(base, "nats", self.broker)

    def start(self, threads: int) -> None:
        self.broker.start()
        for cages in (self.direct, self.nats):
            cages.threads = threads
            cages.start()

    def log_problems(self) -> list[str]:
        return [f"{cages.transport} {line}" for cages in (self.direct, self.nats) for line in cages.log_problems()]

    def stop(self) -> str:
        """Both trees first (their cages leave NATS cleanly), then the nats-server."""
        return "; ".join((f"direct: {self.direct.stop()}", f"nats: {self.nats.stop()}", self.broker.stop()))


# --- the Pyro5 side: a server process, a client process per serializer ---------------------------------


@Pyro5.api.expose
class Echo:
    def echo(self, x: Any) -> Any:
        return x


def pyro_tls(folder: str, role: str) -> None:
    """Pyro5's two-way TLS, as pmnc's cages have it: the server and the client each show a
    certificate of one CA (pmnc.keys made them) and check the other's (SSL_REQUIRECLIENTCERT)."""
    config = Pyro5.config
    config.SSL, config.SSL_REQUIRECLIENTCERT, config.SSL_CACERTS = True, True, str(Path(folder) / "ca.pem")
    if role == "server":
        config.SSL_SERVERCERT = str(Path(folder) / "pyro.pem")  # key and certificate in one file
    else:
        config.SSL_CLIENTCERT = str(Path(folder) / "client.pem")


def serve_pyro(tls: str | None) -> int:
    """A Pyro5 daemon on a free loopback port serving one Echo object, until SIGTERM; over two-way
    TLS with the keys in folder `tls`, if given."""
    if tls:
        pyro_tls(tls, "server")
    daemon = Pyro5.api.Daemon(host=HOST, port=0)
    uri = daemon.register(Echo(), "echo")
    config = Pyro5.config
    print(f"rpc_calls: Pyro5 {Pyro5.__version__} daemon, servertype {config.SERVERTYPE} (thread pool "
          f"{config.THREADPOOL_SIZE_MIN}..{config.THREADPOOL_SIZE}), SOCK_NODELAY={config.SOCK_NODELAY}"
          f"{', two-way TLS' if tls else ''}, at {uri}", flush=True)
    try:
        daemon.requestLoop()
    finally:
        daemon.close()
    return 0


def summary(latencies: list[float], seconds: float, errors: list[str]) -> Run:
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return Run(calls=len(latencies), seconds=seconds, p50_ms=cuts[49] * 1000, p99_ms=cuts[98] * 1000,
               errors=len(errors), first_error=errors[0] if errors else "")


def pyro_calls(proxy: Any, ids: range, latencies: list[float], errors: list[str]) -> None:
    """The same loop as the caller cage's: each answer must be the payload itself."""
    for i in ids:
        payload = {"id": i, "text": TEXT}
        began = time.perf_counter()
        try:
            answer = proxy.echo(payload)
        except Exception as e:
            latencies.append(time.perf_counter() - began)
            errors.append(f"call {i}: {type(e).__name__}: {e}")
            continue
        latencies.append(time.perf_counter() - began)
        if answer != payload:
            errors.append(f"call {i} answered {answer!r:.200}")


def measured(server_pid: int, body: Callable[[], tuple[list[float], float, list[str]]]) -> Run:
    """`body()` (which returns its latencies, wall seconds and errors) and the CPU of both processes meanwhile."""
    server_before, client_before = cpu_seconds(server_pid), time.process_time()
    latencies, seconds, errors = body()
    client_cpu, server_after = time.process_time() - client_before, cpu_seconds(server_pid)
    run = summary(latencies, seconds, errors)
    run.client_cpu = client_cpu
    run.server_cpu = server_after - server_before if server_before is not None and server_after is not None else None
    return run


def pyro_sequential(uri: str, calls: int, warmup: int, server_pid: int) -> Run:
    with Pyro5.api.Proxy(uri) as proxy:
        proxy._pyroBind()
        return sequential_calls(proxy, calls, warmup, server_pid)


def sequential_calls(proxy: Any, calls: int, warmup: int, server_pid: int) -> Run:
    """`calls` echoes one after the other on `proxy`, after `warmup` of them."""
    pyro_calls(proxy, range(warmup), [], [])

    def body() -> tuple[list[float], float, list[str]]:
        latencies: list[float] = []
        errors: list[str] = []
        began = time.perf_counter()
        pyro_calls(proxy, range(calls), latencies, errors)
        return latencies, time.perf_counter() - began, errors

    return measured(server_pid, body)


def pyro_concurrent(uri: str, calls: int, threads: int, warmup: int, server_pid: int) -> Run:
    """T threads, each with a proxy of its own, connected and warmed up before the clock starts."""
    def connect() -> Any:
        proxy = Pyro5.api.Proxy(uri)
        proxy._pyroBind()
        return proxy

    return concurrent_calls(connect, calls, threads, warmup, server_pid, "pyro")


def concurrent_calls(connect: Callable[[], Any], calls: int, threads: int, warmup: int, server_pid: int,
                     name: str) -> Run:
    """T threads, each with a client of its own from `connect()` (a context manager with `echo`),
    connected and warmed up before the clock starts; the calls shared out between them."""
    shares = [range(t, calls, threads) for t in range(threads)]
    latencies: list[list[float]] = [[] for _ in shares]
    errors: list[list[str]] = [[] for _ in shares]
    ready, start = threading.Barrier(threads + 1), threading.Barrier(threads + 1)

    def thread(ids: range, mine: list[float], failed: list[str]) -> None:
        try:
            client = connect()
        except Exception as e:
            failed.append(f"connecting: {type(e).__name__}: {e}")
            client = contextlib.nullcontext()
        with client as proxy:
            if proxy is not None:
                pyro_calls(proxy, range(max(warmup // threads, 1)), [], failed)
            ready.wait(START_TIMEOUT)
            start.wait(START_TIMEOUT)
            if proxy is not None and not failed:
                pyro_calls(proxy, ids, mine, failed)

    workers = [threading.Thread(target=thread, args=part, name=f"{name}-{n}", daemon=True)
               for n, part in enumerate(zip(shares, latencies, errors, strict=True))]
    for worker in workers:
        worker.start()
    ready.wait(START_TIMEOUT)

    def body() -> tuple[list[float], float, list[str]]:
        start.wait(START_TIMEOUT)
        began = time.perf_counter()
        for worker in workers:
            worker.join()
        return ([x for part in latencies for x in part], time.perf_counter() - began,
                [x for part in errors for x in part])

    return measured(server_pid, body)


def settle(load: Callable[[], object], seconds: float) -> None:
    """`load()` again and again for `seconds`: the side under test as it runs once settled."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        load()


def pyro_settle(uri: str, threads: int, seconds: float) -> None:
    """Pyro5 loaded as the cages are before they are measured: `threads` proxies calling for
    `seconds` (one proxy a thread for the whole time, as in the measured run)."""
    until = time.monotonic() + seconds

    def load() -> None:
        with Pyro5.api.Proxy(uri) as proxy:
            while time.monotonic() < until:
                pyro_calls(proxy, range(20), [], [])

    workers = [threading.Thread(target=load, name=f"settle-{n}", daemon=True) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def pyro_client(uri: str, serializer: str, calls: int, threads: int, warmup: int, server_pid: int,
                tls: str | None, settle_seconds: float) -> int:
    """Settled, then sequential, then over `threads`: one JSON line on stdout."""
    if tls:
        pyro_tls(tls, "client")
    Pyro5.config.SERIALIZER = serializer
    pyro_settle(uri, threads, settle_seconds)
    sequential = pyro_sequential(uri, calls, warmup, server_pid)
    concurrent = pyro_concurrent(uri, calls, threads, warmup, server_pid)
    print(json.dumps({"sequential": sequential.__dict__, "concurrent": concurrent.__dict__}), flush=True)
    return 0


class PyroServer:
    """This script with --serve-pyro; its clients are this script with --pyro-client. Over two-way
    TLS with the keys in `tls` (a folder), if given."""

    BANNER = re.compile(r"rpc_calls: (Pyro5 .* at (PYRO:echo@[\d.]+:\d+))")

    def __init__(self, base: Path, tls: Path | None = None) -> None:
        self.base, self.tls = base, tls
        self.output = base / ("pyro-tls.out" if tls else "pyro.out")
        self.process: subprocess.Popen[bytes] | None = None
        self.uri = ""
        self.description = ""

    def _tls_args(self) -> list[str]:
        return ["--pyro-tls", str(self.tls)] if self.tls else []

    def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve-pyro",
                                             *self._tls_args()],
                                            cwd=self.base, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        if PIN is not None:  # before it serves: the threads it starts inherit it
            os.sched_setaffinity(self.process.pid, {PIN[CALLEE]})
        match = wait_until(self._listening, START_TIMEOUT, "Pyro5: its banner line")
        self.description, self.uri = match.group(1) + pinned(), match.group(2)

    def _listening(self) -> re.Match[str] | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"the Pyro5 server exited with code {self.process.returncode}: "
                               f"{read_text(self.output)[-2000:]}")
        return self.BANNER.search(read_text(self.output))

    def run(self, serializer: str, calls: int, threads: int, warmup: int, settle_seconds: float) -> tuple[Run, Run]:
        """A client process: its sequential and concurrent runs."""
        assert self.process is not None
        command = [sys.executable, str(Path(__file__).resolve()), "--pyro-client", self.uri,
                   "--serializer", serializer, "--calls", str(calls), "--threads", str(threads),
                   "--warmup", str(warmup), "--settle", str(settle_seconds), "--server-pid", str(self.process.pid),
                   *self._tls_args()]
        keep = None if PIN is None else functools.partial(os.sched_setaffinity, 0, {PIN[CALLER]})
        done = subprocess.run(command, cwd=self.base, capture_output=True, text=True,
                              timeout=REQUEST_TIMEOUT * 2, check=False, preexec_fn=keep)
        if done.returncode != 0:
            raise RuntimeError(f"the Pyro5 client ({serializer}) failed with code {done.returncode}:\n"
                               f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
        answer = json.loads(done.stdout.strip().splitlines()[-1])
        return Run.from_json(answer["sequential"]), Run.from_json(answer["concurrent"])

    def stop(self) -> str:
        name = "Pyro5 TLS" if self.tls else "Pyro5"
        if self.process is None:
            return f"{name} was not started"
        if self.process.poll() is None:
            self.process.terminate()
        return end_process(self.process, name, STOP_TIMEOUT, lambda: None)


class PyroPeers:
    """The Pyro5 peers of a run: plain TCP, and two-way TLS (`tls`: certificates of a CA of its own,
    made by pmnc.keys, so that pmnc's mutual TLS is measured against Pyro5 doing as much)."""

    def __init__(self, base: Path, tls: bool = True) -> None:
        self.plain = PyroServer(base)
        self.secure = PyroServer(base, base / "pyro-keys") if tls else None

    def start(self) -> None:
        self.plain.start()
        if self.secure is not None:
            assert self.secure.tls is not None
            keys.make_ca(self.secure.tls, "rpc_calls Pyro5 CA")
            keys.make_server(self.secure.tls, "pyro")
            keys.make_client(self.secure.tls, "client")
            self.secure.start()

    @property
    def description(self) -> str:
        return self.plain.description + (f"; and {self.secure.description}" if self.secure else "")

    def run(self, serializer: str, calls: int, threads: int, warmup: int,
            settle_seconds: float) -> dict[str, tuple[Run, Run]]:
        """`serializer` over plain TCP and over TLS: {"msgpack": ..., "msgpack TLS": ...}."""
        runs = {serializer: self.plain.run(serializer, calls, threads, warmup, settle_seconds)}
        if self.secure is not None:
            runs[f"{serializer} TLS"] = self.secure.run(serializer, calls, threads, warmup, settle_seconds)
        return runs

    def stop(self) -> str:
        return "; ".join([self.plain.stop(), *([self.secure.stop()] if self.secure else [])])


# --- the run ---------------------------------------------------------------------------------------------


def _per_call(cpu: float | None, calls: int) -> str:
    return "?" if cpu is None or not calls else f"{cpu / calls * 1e6:.0f}us"


def print_table(rows: list[tuple[str, Run]], broker: bool = False) -> None:
    """`broker`: a column more, the nats-server's CPU per call (blank for rows without one)."""
    print(f"{'':<28}{'calls/s':>9}{'calls':>7}{'p50':>9}{'p99':>9}{'errors':>8}"
          f"{'client CPU/call':>17}{'server CPU/call':>17}" + (f"{'NATS CPU/call':>15}" if broker else ""))
    for name, run in rows:
        nats = "" if run.broker_cpu is None else _per_call(run.broker_cpu, run.calls)
        print(f"{name:<28}{run.rate:>9.0f}{run.calls:>7}{run.p50_ms:>7.3f}ms{run.p99_ms:>7.3f}ms{run.errors:>8}"
              f"{_per_call(run.client_cpu, run.calls):>17}{_per_call(run.server_cpu, run.calls):>17}"
              + (f"{nats:>15}" if broker else ""))
        if run.first_error:
            print(f"  {name}: first error: {run.first_error}")


def verdicts(what: str, pmnc: Run, peers: dict[str, Run], target: float, name: str = "pmnc") -> str:
    """`sequential: pmnc/Pyro5 serpent 1.20 (target >= 1.5: NOT met), ...`"""
    parts = []
    for serializer, peer in peers.items():
        ratio = pmnc.rate / peer.rate if peer.rate else float("nan")
        parts.append(f"{name}/Pyro5 {serializer} {ratio:.2f} ({'met' if ratio >= target else 'NOT met'})")
    return f"{what} (target >= {target:g}): {', '.join(parts)}"


def nats_verdict(what: str, nats: Run, direct: Run, target: float) -> str:
    """`sequential (target >= 0.5): nats/direct 0.61 (met)`"""
    ratio = nats.rate / direct.rate if direct.rate else float("nan")
    return f"{what} (target >= {target:g}): nats/direct {ratio:.2f} ({'met' if ratio >= target else 'NOT met'})"


def print_problems(problems: list[str]) -> None:
    if problems:
        print(f"cage logs: {len(problems)} error/warning line(s), the first ones:")
        for line in problems[:5]:
            print(f"  {line}")


def measure_pmnc(pmnc: PmncCages, args: argparse.Namespace, threads: int) -> Run:
    """Warm-up calls, then the measured run, both over `threads`."""
    pmnc.run(args.warmup, threads)
    return pmnc.run(args.calls, threads)


def introduce(args: argparse.Namespace) -> None:
    print(f"rpc_calls: echo({{'id': i, 'text': 'x' * 100}}) between two processes on loopback, {args.calls} calls "
          f"sequentially, then over {args.threads} threads, after {args.warmup} warm-up calls; "
          f"Python {sys.version.split()[0]}; {os.cpu_count()} CPUs")


def measure_pyro(args: argparse.Namespace, peer: PyroPeers) -> dict[str, tuple[Run, Run]]:
    pyro: dict[str, tuple[Run, Run]] = {}
    for serializer in args.serializers:
        print(f"Pyro5 {serializer}: warming up and measuring ...", flush=True)
        pyro.update(peer.run(serializer, args.calls, args.threads, args.warmup, args.settle))
    return pyro


def failed_calls(runs: list[Run]) -> int:
    errors = sum(run.errors for run in runs)
    if errors:
        print(f"rpc_calls: NOT CLEAN: {errors} call(s) failed or answered something else")
    return errors


def bench(args: argparse.Namespace, pmnc: PmncCages, peer: PyroPeers) -> int:
    print(f"rpc_calls: echo({{'id': i, 'text': 'x' * 100}}) between two processes on loopback, {args.calls} calls "
          f"sequentially, then over {args.threads} threads, after {args.warmup} warm-up calls; "
          f"Python {sys.version.split()[0]}; {os.cpu_count()} CPUs")
    pmnc.threads = args.threads
    pmnc.start()
    print(pmnc.description)
    peer.start()
    print(f"{peer.description}; clients: msgpack {msgpack.version}, serpent {serpent.__version__}")

    print("pmnc: settling, warming up and measuring ...", flush=True)
    settle(lambda: pmnc.run(args.warmup, args.threads), args.settle)
    pmnc.run(args.warmup, 1)
    pmnc_sequential = pmnc.run(args.calls, 1)
    pmnc.run(args.warmup, args.threads)
    pmnc_concurrent = pmnc.run(args.calls, args.threads)
    pyro = measure_pyro(args, peer)

    print()
    threads = f"{args.threads} threads"
    print_table([("pmnc, sequential", pmnc_sequential),
                 *((f"Pyro5 {s}, sequential", runs[0]) for s, runs in pyro.items()),
                 (f"pmnc, {threads}", pmnc_concurrent),
                 *((f"Pyro5 {s}, {threads}", runs[1]) for s, runs in pyro.items())])
    problems = pmnc.log_problems()
    if problems:
        print(f"cage logs: {len(problems)} error/warning line(s), the first ones:")
        for line in problems[:5]:
            print(f"  {line}")
    print(verdicts("sequential", pmnc_sequential, {s: runs[0] for s, runs in pyro.items()}, TARGET))
    print(verdicts(threads, pmnc_concurrent, {s: runs[1] for s, runs in pyro.items()}, TARGET))
    print(f"rpc_calls: sequential pmnc {pmnc_sequential.rate:.0f} calls/s, "
          + ", ".join(f"Pyro5 {s} {runs[0].rate:.0f}" for s, runs in pyro.items())
          + f"; {threads} pmnc {pmnc_concurrent.rate:.0f} calls/s, "
          + ", ".join(f"Pyro5 {s} {runs[1].rate:.0f}" for s, runs in pyro.items()))

    errors = pmnc_sequential.errors + pmnc_concurrent.errors + sum(r.errors for runs in pyro.values() for r in runs)
    if errors:
        print(f"rpc_calls: NOT CLEAN: {errors} call(s) failed or answered something else")
        return 1
    return 0


def bench_nats(args: argparse.Namespace, both: BothTransports, peer: PyroPeers) -> int:
    """The direct and the nats tree, each sequentially then over threads, next to Pyro5."""
    introduce(args)
    both.start(args.threads)
    print(both.broker.description)
    print(both.direct.description)
    print(both.nats.description)
    peer.start()
    print(f"{peer.description}; clients: msgpack {msgpack.version}, serpent {serpent.__version__}")

    runs: dict[tuple[str, int], Run] = {}
    for cages in (both.direct, both.nats):
        settle(lambda: cages.run(args.warmup, args.threads), args.settle)  # noqa: B023 - called at once
    for threads in (1, args.threads):  # direct and nats one after the other at each step: the same conditions
        for cages in (both.direct, both.nats):
            print(f"pmnc {cages.transport}, {threads} thread(s): warming up and measuring ...", flush=True)
            runs[cages.transport, threads] = measure_pmnc(cages, args, threads)
    pyro = measure_pyro(args, peer)

    print()
    threads = f"{args.threads} threads"
    print_table([("pmnc direct, sequential", runs["direct", 1]), ("pmnc nats, sequential", runs["nats", 1]),
                 *((f"Pyro5 {s}, sequential", r[0]) for s, r in pyro.items()),
                 (f"pmnc direct, {threads}", runs["direct", args.threads]),
                 (f"pmnc nats, {threads}", runs["nats", args.threads]),
                 *((f"Pyro5 {s}, {threads}", r[1]) for s, r in pyro.items())], broker=True)
    print_problems(both.log_problems())
    print(nats_verdict("sequential", runs["nats", 1], runs["direct", 1], 0.5))
    print(nats_verdict(threads, runs["nats", args.threads], runs["direct", args.threads], 1.0))
    for transport in TRANSPORTS:
        print(verdicts(f"{transport}, sequential", runs[transport, 1], {s: r[0] for s, r in pyro.items()}, TARGET,
                       f"pmnc {transport}"))
        print(verdicts(f"{transport}, {threads}", runs[transport, args.threads], {s: r[1] for s, r in pyro.items()},
                       TARGET, f"pmnc {transport}"))
    print(f"rpc_calls: sequential direct {runs['direct', 1].rate:.0f} calls/s, nats {runs['nats', 1].rate:.0f}, "
          + ", ".join(f"Pyro5 {s} {r[0].rate:.0f}" for s, r in pyro.items())
          + f"; {threads} direct {runs['direct', args.threads].rate:.0f} calls/s, "
          f"nats {runs['nats', args.threads].rate:.0f}, "
          + ", ".join(f"Pyro5 {s} {r[1].rate:.0f}" for s, r in pyro.items()))
    return 1 if failed_calls([*runs.values(), *(r for pair in pyro.values() for r in pair)]) else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=5000, help="calls per measured run (5000)")
    parser.add_argument("--threads", type=int, default=8, help="threads of the concurrent run (8)")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up calls before each run (200)")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds each side is loaded over --threads threads before it is measured: a cage "
                             "chooses its CPU once a second (5)")
    parser.add_argument("--serializers", default=",".join(SERIALIZERS),
                        help=f"Pyro5 serializers to measure, comma-separated ({','.join(SERIALIZERS)})")
    parser.add_argument("--transport", choices=TRANSPORTS, default="direct",
                        help="direct: the cages' own TLS connections (the default); nats: those AND calls "
                             "through a nats-server started for the run, in the same run")
    parser.add_argument("--pin", metavar="CALLER,CALLEE",
                        help="keep the calling side (the caller cage, the Pyro5 client) on CPU CALLER and the "
                             "called (the echo cage, the Pyro5 server) on CPU CALLEE (default: the cages as shipped, "
                             "cpu_affinity \"auto\", Pyro5 where the system puts it)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary tree and logs, print where")
    parser.add_argument("--serve-pyro", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pyro-client", metavar="URI", help=argparse.SUPPRESS)
    parser.add_argument("--serializer", default="serpent", help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--pyro-tls", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--no-tls-peer", action="store_true",
                        help="measure Pyro5 over plain TCP only, not also over two-way TLS")
    args = parser.parse_args(argv)
    if args.serve_pyro:
        return serve_pyro(args.pyro_tls)
    if args.pyro_client:
        return pyro_client(args.pyro_client, args.serializer, args.calls, args.threads, args.warmup,
                           args.server_pid, args.pyro_tls, args.settle)
    args.serializers = [s for s in args.serializers.split(",") if s]
    if args.calls < 2 or args.threads < 2 or args.warmup < 1:
        parser.error("--calls and --threads must be at least 2, --warmup at least 1")
    if not args.serializers or not set(args.serializers) <= set(SERIALIZERS):
        parser.error(f"--serializers: some of {', '.join(SERIALIZERS)}")
    if args.pin is not None:
        cpus = tuple(int(cpu) for cpu in args.pin.split(",") if cpu.strip().isdigit())
        if len(cpus) != 2 or not set(cpus) <= os.sched_getaffinity(0):
            parser.error(f"--pin {args.pin}: two CPUs this machine lets us use, such as 0,1")
        global PIN
        PIN = (cpus[0], cpus[1])

    def peers(base: Path) -> PyroPeers:
        return PyroPeers(base, tls=not args.no_tls_peer)

    if args.transport == "nats":
        return run_pair("rpc_calls", args.keep, BothTransports, peers,
                        lambda both, peer: bench_nats(args, both, peer))
    return run_pair("rpc_calls", args.keep, PmncCages, peers, lambda pmnc, peer: bench(args, pmnc, peer))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
