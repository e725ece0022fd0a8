"""The floor of cage-to-cage calls: a bare echo over pmnc's wire and mutual TLS against Pyro5 msgpack over two-way TLS.

    .venv/bin/python bench/rpc_floor.py [--calls 5000] [--threads 8] [--warmup 200]

Issue 20 asks pmnc's cage-to-cage calls (bench/rpc_calls.py) for >= 1.5 x the
calls/s of Pyro5 msgpack over two-way TLS, the peer of equal security. This
measures how fast ANY Python implementation of pmnc's wire can go, so that the
target can be judged against what the wire and TLS alone allow:

- bare pmnc wire: a server process (this script with --serve-bare), a blocking
  `ssl` socket per connection, each served by a thread of its own, with pmnc's
  own mutual TLS (pmnc.rpc.identity.ClusterKeys: certificates made by
  pmnc.keys, TLS >= 1.2, a certificate required of both ends, the identity URI
  checked once per connection). Each end places itself as a cage does
  (cpu_affinity "auto", once a second; the sequential run comes after SETTLE
  seconds of calls) and waits for a frame as pmnc does (a poll for up to
  busywait's default before it sleeps, busywait.py), reads it as
  pmnc does (`recv` of pmnc's RECV_SIZE into codec.FrameDecoder; wire.py
  itself has nothing for sockets) and answers each value back in a frame of
  codec.encode. The client,
  in this process, sends {"id": i, "text": "x" * 100} in a frame of
  codec.encode on one blocking mutual-TLS connection per thread and waits for
  and reads the answer the same way. No request, lifecycle, pools, deadlines or call
  envelope: the wire and TLS only.
- multiplexed pmnc wire: the same server process, TLS and codec on a second
  port, where one connection carries many calls at once: each frame is
  `[call id, value]`; the connection's thread reads frames and hands each to
  a pool of WORKERS threads (user code never runs on the reading thread, as
  in a cage), and the answers go back tagged with their id, whoever is
  writing taking every answer waiting in one write. The client's threads
  share one connection (`MuxConnection`): the same combining write, and a
  reader thread that hands each answer to the thread waiting for its id.
  Both ends make every TLS call under a lock (`SharedTLS`): OpenSSL forbids
  reading and writing one connection from two threads at once.
  Measured over --threads threads only (sequentially it only adds the two
  hand-offs). This is the lever "one multiplexed connection per target
  cage": what it is worth before anything of pmnc's is added to it.
- Pyro5 msgpack over two-way TLS: rpc_calls.py's own peer (its --serve-pyro
  server with --pyro-tls, its --pyro-client, keys made as it makes them).

Each is measured sequentially (one connection) and over --threads threads (a
connection each), after warm-up calls; calls/s, p50 and p99 latency and the
client's and server's CPU per call (/proc) are printed, and the ratio bare /
Pyro5 (and multiplexed / Pyro5 over threads). pmnc's calls carry more than the bare wire (an envelope, a request,
the lifecycle on both sides), so they cannot beat it: if the ratio here is
below 1.5, issue 20's target cannot be met by pmnc without changing the wire
or its TLS guarantee. Every process is stopped at the end whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import re
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
from http_hello import HOST, end_process, read_text, run_pair, wait_until
from pmnc import keys
from pmnc.busywait import BusyWait
from pmnc.placement import AUTO, Placement
from pmnc.protocols.rpc import RECV_SIZE
from pmnc.rpc import codec
from pmnc.rpc.cluster import BUSY_WAIT
from pmnc.rpc.identity import ClusterKeys, Identity, peer_identity
from rpc_calls import (
    START_TIMEOUT,
    STOP_TIMEOUT,
    TARGET,
    PyroServer,
    Run,
    concurrent_calls,
    print_table,
    sequential_calls,
)

FLOCK = "RPC_FLOOR"
SERVER_CAGE, CLIENT_CAGE = "echo", "caller"  # the identities both ends show, as two cages would
BANNER = re.compile(r"rpc_floor: bare pmnc wire at ([\d.]+):(\d+), multiplexed at port (\d+)")
FOREVER = 3600.0  # seconds: the bare wire has no deadlines
SETTLE = 3.0  # seconds of calls before the sequential run: both ends placed as a cage places itself
WORKERS = 10  # the multiplexed server's threads that run calls: a cage's default thread_count


# --- the bare server: a process of its own --------------------------------------------------------------


def serve_connection(raw: socket.socket, context: ssl.SSLContext) -> None:
    """The handshake, the caller's identity as pmnc's interface checks it, then echo frames until EOF."""
    try:
        with context.wrap_socket(raw, server_side=True) as sock:
            identity = peer_identity(sock.getpeercert())
            if identity is None or identity.flock != FLOCK:
                return
            decoder, waiter, fds = codec.FrameDecoder(), BusyWait(BUSY_WAIT), [sock.fileno()]
            while waiter.ready(fds, FOREVER) and (data := sock.recv(RECV_SIZE)):
                for value in decoder.feed(data):
                    sock.sendall(codec.encode(value))
    except (OSError, codec.DecodeError, codec.EncodeError) as e:
        print(f"rpc_floor: a connection broke: {type(e).__name__}: {e}", flush=True)


class SharedTLS:
    """A mutual-TLS socket that several threads use at once. OpenSSL forbids reading and writing
    one connection from two threads at the same time (CPython's `ssl` lets both run and can crash,
    python/cpython#143756), so every TLS call is made under `lock` on a non-blocking socket, and
    the waits - for data, for room to write - are polls outside it. Writes combine: whoever finds
    nobody writing sends every frame waiting, so frames that come together go in one write."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        sock.setblocking(False)
        self.sock, self.fd, self.lock = sock, sock.fileno(), threading.Lock()
        self.waiting: list[bytes] = []
        self.writing = False

    def recv(self) -> bytes:
        """What has come (b"" at the end): the wait outside the lock, the read under it."""
        while True:
            select.select([self.fd], [], [])
            with self.lock:
                try:
                    return self.sock.recv(RECV_SIZE)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    continue

    def write(self, frame: bytes) -> None:
        self.lock.acquire()
        self.waiting.append(frame)
        if self.writing:  # the writer takes it with the rest
            self.lock.release()
            return
        self.writing = True
        try:
            while self.waiting:
                view = memoryview(b"".join(self.waiting))
                self.waiting.clear()
                while view:
                    try:
                        view = view[self.sock.send(view):]
                    except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                        self.lock.release()
                        try:
                            select.select([], [self.fd], [])
                        finally:
                            self.lock.acquire()
        finally:
            self.writing = False
            self.lock.release()


def serve_multiplexed(raw: socket.socket, context: ssl.SSLContext) -> None:
    """As serve_connection, but the calls of a connection run on WORKERS threads, answered by id."""
    calls: queue.SimpleQueue[list[Any] | None] = queue.SimpleQueue()
    try:
        with context.wrap_socket(raw, server_side=True) as sock:
            identity = peer_identity(sock.getpeercert())
            if identity is None or identity.flock != FLOCK:
                return
            shared = SharedTLS(sock)

            def work() -> None:
                while (call := calls.get()) is not None:
                    call_id, value = call
                    shared.write(codec.encode([call_id, value]))

            for _ in range(WORKERS):
                threading.Thread(target=work, daemon=True).start()
            decoder = codec.FrameDecoder()
            while data := shared.recv():
                for call in decoder.feed(data):
                    calls.put(call)
    except (OSError, codec.DecodeError, codec.EncodeError) as e:
        print(f"rpc_floor: a multiplexed connection broke: {type(e).__name__}: {e}", flush=True)
    finally:
        for _ in range(WORKERS):
            calls.put(None)


class CageLikePlacement:
    """This process placed as a cage's maintenance places it, once a second: cpu_affinity
    "auto" - its threads kept on the CPU others use least, and busy waits on only while they
    have it to themselves (placement.alone_on_its_cpu). stop() leaves them where the system
    puts them again (the processes started after, Pyro5's client, inherit that)."""

    def __init__(self) -> None:
        self.placement, self.stopping = Placement(owns_process=True), threading.Event()
        self.thread = threading.Thread(target=self._run, name="placement", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            self.placement.apply(AUTO)
            if self.stopping.wait(1.0):
                self.placement.apply(None)
                return

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()


def serve_bare(folder: str) -> int:
    """Accept on two free loopback ports until SIGTERM, a thread per connection: the bare wire
    on one, the multiplexed wire on the other; placed as a cage."""
    CageLikePlacement()
    context = ClusterKeys.ensure(Path(folder), FLOCK, SERVER_CAGE).server_context()
    listeners = [(socket.create_server((HOST, 0)), serve) for serve in (serve_connection, serve_multiplexed)]
    host, port = listeners[0][0].getsockname()[:2]
    print(f"rpc_floor: bare pmnc wire at {host}:{port}, multiplexed at port {listeners[1][0].getsockname()[1]}, "
          f"{ssl.OPENSSL_VERSION}", flush=True)
    threading.Thread(target=accept, args=(*listeners[1], context), daemon=True).start()
    accept(*listeners[0], context)
    return 0


def accept(listener: socket.socket, serve: Callable[[socket.socket, ssl.SSLContext], None],
           context: ssl.SSLContext) -> None:
    while True:
        raw, _ = listener.accept()
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as pmnc's interface does
        threading.Thread(target=serve, args=(raw, context), daemon=True).start()


class BareServer:
    """This script with --serve-bare, the cluster keys in `base/floor-keys`."""

    def __init__(self, base: Path) -> None:
        self.base, self.keys = base, base / "floor-keys"
        self.output = base / "bare.out"
        self.process: subprocess.Popen[bytes] | None = None
        self.address = self.multiplexed = (HOST, 0)

    def start(self) -> None:
        ClusterKeys.ensure(self.keys, FLOCK, SERVER_CAGE)  # the CA and both identities, before either end needs them
        ClusterKeys.ensure(self.keys, FLOCK, CLIENT_CAGE)
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve-bare",
                                             str(self.keys)],
                                            cwd=self.base, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                                            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        match = wait_until(self._listening, START_TIMEOUT, "the bare server: its banner line")
        self.address = (match.group(1), int(match.group(2)))
        self.multiplexed = (match.group(1), int(match.group(3)))

    def _listening(self) -> re.Match[str] | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"the bare server exited with code {self.process.returncode}: "
                               f"{read_text(self.output)[-2000:]}")
        return BANNER.search(read_text(self.output))

    def description(self) -> str:
        return read_text(self.output).splitlines()[0]

    def problems(self) -> list[str]:
        return [line for line in read_text(self.output).splitlines() if "broke" in line]

    def stop(self) -> str:
        if self.process is None:
            return "the bare server was not started"
        if self.process.poll() is None:
            self.process.terminate()
        return end_process(self.process, "the bare server", STOP_TIMEOUT, lambda: None)


# --- the bare client: in this process ---------------------------------------------------------------------


class BareProxy:
    """One blocking mutual-TLS connection; echo(x) as pyro_calls wants it: a frame out, a frame back."""

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext) -> None:
        raw = socket.create_connection(address)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = context.wrap_socket(raw, server_side=False)
        if peer_identity(self.sock.getpeercert()) != Identity(FLOCK, SERVER_CAGE):  # as pmnc's _Channel checks
            self.sock.close()
            raise RuntimeError("the bare server is not the expected cage")
        self.decoder, self.waiter, self.fds = codec.FrameDecoder(), BusyWait(BUSY_WAIT), [self.sock.fileno()]

    def echo(self, value: Any) -> Any:
        self.sock.sendall(codec.encode(value))
        while True:
            self.waiter.ready(self.fds, FOREVER)
            data = self.sock.recv(RECV_SIZE)
            if not data:
                raise EOFError("closed by the server")
            answers = self.decoder.feed(data)
            if answers:
                return answers[0]

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> BareProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MuxConnection:
    """One mutual-TLS connection shared by the client's threads: a call is a frame `[id, value]`
    written through SharedTLS; a reader thread hands each answer to the thread waiting for its id."""

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext) -> None:
        self.shared = SharedTLS(BareProxy(address, context).sock)
        self.lock = threading.Lock()
        self.waiting: dict[int, list[Any]] = {}  # id -> [a lock released when the answer is in, the answer]
        self.last_id = 0
        threading.Thread(target=self._read, name="mux-reader", daemon=True).start()

    def _read(self) -> None:
        decoder = codec.FrameDecoder()
        try:
            while data := self.shared.recv():
                for call_id, value in decoder.feed(data):
                    with self.lock:
                        slot = self.waiting.pop(call_id)
                    slot[1] = value
                    slot[0].release()
        except OSError:
            pass
        with self.lock:  # the end of the connection: whoever still waits gets an error
            for slot in self.waiting.values():
                slot[1] = EOFError("closed by the server")
                slot[0].release()
            self.waiting.clear()

    def echo(self, value: Any) -> Any:
        arrived = threading.Lock()
        arrived.acquire()
        slot = [arrived, None]
        with self.lock:
            self.last_id += 1
            call_id = self.last_id
            self.waiting[call_id] = slot
        self.shared.write(codec.encode([call_id, value]))
        arrived.acquire()
        if isinstance(slot[1], EOFError):
            raise slot[1]
        return slot[1]

    def close(self) -> None:
        self.shared.sock.close()


def bare_sequential(server: BareServer, context: ssl.SSLContext, calls: int, warmup: int) -> Run:
    """After SETTLE seconds of calls: each end places itself once a second, as a cage does."""
    assert server.process is not None
    with BareProxy(server.address, context) as proxy:
        settled = time.monotonic() + SETTLE
        while time.monotonic() < settled:
            proxy.echo({"id": 0, "text": "settling"})
        return sequential_calls(proxy, calls, warmup, server.process.pid)


def bare_concurrent(server: BareServer, context: ssl.SSLContext, calls: int, threads: int, warmup: int) -> Run:
    """As rpc_calls.pyro_concurrent: a connection per thread, connected and warmed up before the clock starts."""
    assert server.process is not None
    return concurrent_calls(lambda: BareProxy(server.address, context), calls, threads, warmup,
                            server.process.pid, "bare")


def multiplexed_concurrent(server: BareServer, context: ssl.SSLContext, calls: int, threads: int,
                           warmup: int) -> Run:
    """`threads` threads sharing one MuxConnection, warmed up before the clock starts."""
    assert server.process is not None
    shared = MuxConnection(server.multiplexed, context)
    try:
        return concurrent_calls(lambda: contextlib.nullcontext(shared), calls, threads, warmup,
                                server.process.pid, "mux")
    finally:
        shared.close()


# --- the run ------------------------------------------------------------------------------------------------


def start_pyro(peer: PyroServer) -> None:
    """Pyro5's two-way TLS keys, made as rpc_calls.PyroPeers makes them, then its server."""
    assert peer.tls is not None
    keys.make_ca(peer.tls, "rpc_floor Pyro5 CA")
    keys.make_server(peer.tls, "pyro")
    keys.make_client(peer.tls, "client")
    peer.start()


def ratio(bare: Run, pyro: Run) -> float:
    return bare.rate / pyro.rate if pyro.rate else float("nan")


def bench(args: argparse.Namespace, server: BareServer, pyro: PyroServer) -> int:
    print(f"rpc_floor: echo({{'id': i, 'text': 'x' * 100}}) between two processes on loopback, {args.calls} calls "
          f"sequentially, then over {args.threads} threads, after {args.warmup} warm-up calls; "
          f"Python {sys.version.split()[0]}; {os.cpu_count()} CPUs")
    server.start()
    print(f"{server.description()}; client and server: blocking ssl sockets, mutual TLS of pmnc.rpc.identity, "
          f"recv({RECV_SIZE}) into codec.FrameDecoder, codec.encode")
    start_pyro(pyro)
    print(f"{pyro.description}; client: rpc_calls.py --pyro-client, serializer msgpack {msgpack.version}")

    print("bare pmnc wire: warming up and measuring ...", flush=True)
    context = ClusterKeys.ensure(server.keys, FLOCK, CLIENT_CAGE).client_context()
    placed = CageLikePlacement()
    try:
        bare = (bare_sequential(server, context, args.calls, args.warmup),
                bare_concurrent(server, context, args.calls, args.threads, args.warmup),
                multiplexed_concurrent(server, context, args.calls, args.threads, args.warmup))
    finally:
        placed.stop()
    print("Pyro5 msgpack TLS: warming up and measuring ...", flush=True)
    peer = pyro.run("msgpack", args.calls, args.threads, args.warmup, 0.0)  # nothing here places itself

    print()
    threads = f"{args.threads} threads"
    print_table([("bare pmnc wire, sequential", bare[0]), ("Pyro5 msgpack TLS, sequential", peer[0]),
                 (f"bare pmnc wire, {threads}", bare[1]), (f"multiplexed wire, {threads}", bare[2]),
                 (f"Pyro5 msgpack TLS, {threads}", peer[1])])
    for line in server.problems()[:5]:
        print(f"bare server: {line}")
    print(f"rpc_floor: bare pmnc wire / Pyro5 msgpack TLS: sequential {ratio(bare[0], peer[0]):.2f}, "
          f"{threads} {ratio(bare[1], peer[1]):.2f}; multiplexed, {threads} {ratio(bare[2], peer[1]):.2f} "
          f"(issue 20's target for pmnc: >= {TARGET:g})")
    errors = sum(run.errors for run in (*bare, *peer))
    if errors:
        print(f"rpc_floor: NOT CLEAN: {errors} call(s) failed or answered something else")
        return 1
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=5000, help="calls per measured run (5000)")
    parser.add_argument("--threads", type=int, default=8, help="threads of the concurrent run (8)")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up calls before each run (200)")
    parser.add_argument("--serve-bare", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_bare:
        return serve_bare(args.serve_bare)
    if args.calls < 2 or args.threads < 2 or args.warmup < 1:
        parser.error("--calls and --threads must be at least 2, --warmup at least 1")
    return run_pair("rpc_floor", False, BareServer, lambda base: PyroServer(base, base / "pyro-keys"),
                    lambda server, pyro: bench(args, server, pyro))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
