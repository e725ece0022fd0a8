"""The floor of an HTTP server that runs user code on worker threads, against a bare uvicorn.

    .venv/bin/python bench/http_floor.py [--duration 10] [--warmup 2] [--rounds 3] [--threads 10]

Issue 20 asks the sample cage (bench/http_hello.py) for >= 0.8 x the
requests/s of a bare uvicorn hello-world. The cage keeps user code off the
event loop: the handler of every request runs on one of `thread_count`
worker threads, so that a slow handler cannot stall the other connections,
their 504s at the deadline, or the admission of new ones. This measures how
fast ANY Python server built that way can answer `Hello, world !`, so that
the target can be judged against what that design alone allows. Three
servers, each a process of its own on loopback:

- handoff: the least such a server can do. An asyncio protocol (the
  standard loop, as the cage's) parses each request with httptools (the C
  parser uvicorn uses), puts the handler on a `queue.SimpleQueue` read by
  --threads worker threads, and a worker hands the rendered answer back with
  `loop.call_soon_threadsafe(transport.write, ...)`. No deadlines, limits,
  admission, hot reload, logging or checks of any kind.
- guarded: handoff with each guarantee the sample cage gives a GET added
  back, each the leanest way found (bench/guarded_floor.py: limits, the
  request and its intake, the earliest-deadline-first pool, the deadline's
  504 and settling once, the module's reader count and type check, the
  response's checks, statistics). Its distance from the cage is the cost of
  the cage's own code, not of its guarantees.
- inline: the same server with the handler called on the loop (the design
  the cage does not take), to show what the hand-off alone costs.
- uvicorn: bench/uvicorn_hello.py, http_hello's peer.

Every round runs `wrk -t2 -c50 -d<N>s` against each after a warm-up, in the
order uvicorn, handoff, guarded, inline; the servers' CPU per request is read
from /proc. The summary gives the median over the rounds of handoff/uvicorn
and guarded/uvicorn against issue 20's 0.8: if the bare hand-off is below it,
the sample cage cannot reach it without running user code on the loop; if the
guarded one is, not without dropping a guarantee. Every server is stopped at
the end whatever happens. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import httptools

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_hello import HOST, TARGET, WRK_CONNECTIONS, Uvicorn, end_process, read_text, wait_answers, wait_until, wrk
from xmlrpc_echo import cpu_seconds

HELLO = b"Hello, world !"
MODES = ("handoff", "guarded", "inline")


# --- the floor servers (run with --serve MODE) ------------------------------------------------


def process_request(request: dict[str, bytes], response: dict[str, bytes]) -> None:
    """The handler: the sample cage's, filling in a response dict."""
    response["content"] = HELLO
    response["content_type"] = b"text/plain"


def render(response: dict[str, bytes], keep_alive: bool) -> bytes:
    content = response["content"]
    return b"".join((b"HTTP/1.1 200 OK\r\ncontent-type: ", response["content_type"],
                     b"\r\ncontent-length: ", str(len(content)).encode(),
                     b"\r\n" if keep_alive else b"\r\nconnection: close\r\n", b"\r\n", content))


def answer(request: dict[str, bytes], keep_alive: bool) -> bytes:
    response: dict[str, bytes] = {}
    process_request(request, response)
    return render(response, keep_alive)


class FloorProtocol(asyncio.Protocol):
    """One connection: httptools parses, `dispatch` gets each complete request."""

    def __init__(self, loop: asyncio.AbstractEventLoop, work: queue.SimpleQueue[tuple[object, ...]] | None) -> None:
        self.loop, self.work = loop, work
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_message_complete(self) -> None:
        request = {"url": self.url, "method": self.parser.get_method()}
        keep_alive = self.parser.should_keep_alive()
        if self.work is None:
            self.write(answer(request, keep_alive), keep_alive)
        else:
            self.work.put((self, request, keep_alive))

    def write(self, data: bytes, keep_alive: bool) -> None:
        assert self.transport is not None
        self.transport.write(data)
        if not keep_alive:
            self.transport.close()


def worker(loop: asyncio.AbstractEventLoop, work: queue.SimpleQueue[tuple[object, ...]]) -> None:
    while True:
        protocol, request, keep_alive = work.get()
        assert isinstance(protocol, FloorProtocol) and isinstance(request, dict) and isinstance(keep_alive, bool)
        loop.call_soon_threadsafe(protocol.write, answer(request, keep_alive), keep_alive)


async def serve(mode: str, port: int, threads: int) -> None:
    if mode == "guarded":
        import guarded_floor  # bench/, beside this script

        await guarded_floor.serve(port, threads)
        return
    loop = asyncio.get_running_loop()
    work: queue.SimpleQueue[tuple[object, ...]] | None = queue.SimpleQueue() if mode == "handoff" else None
    if work is not None:
        for _ in range(threads):
            threading.Thread(target=worker, args=(loop, work), daemon=True).start()
    server = await loop.create_server(lambda: FloorProtocol(loop, work), HOST, port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"http_floor: {mode} on http://{HOST}:{bound}/, {threads if work else 0} worker threads", flush=True)
    await server.serve_forever()


# --- the benchmark ----------------------------------------------------------------------------


class FloorServer:
    """This script with --serve MODE, one process."""

    BANNER = re.compile(r"http_floor: (\w+) on http://[\d.]+:(\d+)/.*")

    def __init__(self, base: Path, mode: str, threads: int) -> None:
        self.mode, self.threads = mode, threads
        self.output = base / f"{mode}.out"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> None:
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, __file__, "--serve", self.mode, "--threads", str(self.threads)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        match = wait_until(self._listening, 30.0, f"{self.mode}: its banner line")
        self.port = int(match.group(2))
        wait_answers(self.port, self.mode)

    def _listening(self) -> re.Match[str] | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.mode} exited with code {self.process.returncode}: "
                               f"{read_text(self.output)[-2000:]}")
        return self.BANNER.search(read_text(self.output))

    def stop(self) -> str:
        if self.process is None:
            return f"{self.mode} was not started"
        if self.process.poll() is None:
            self.process.terminate()
        return end_process(self.process, self.mode, 30.0, lambda: None)


def measure(name: str, port: int, pid: int, duration: int) -> tuple[float, float]:
    """(requests/s, µs of the server's CPU per request) of one wrk run; raises if any request failed."""
    before = cpu_seconds(pid)
    result = wrk(port, duration, latency=False, connections=WRK_CONNECTIONS)
    after = cpu_seconds(pid)
    if result.failed:
        raise RuntimeError(f"{name}: {result.failed} requests failed:\n{result.output}")
    if before is None or after is None or not result.requests:
        return result.rps, float("nan")
    return result.rps, (after - before) / result.requests * 1e6


def bench(args: argparse.Namespace, servers: dict[str, FloorServer | Uvicorn]) -> int:
    print(f"http_floor: wrk -t2 -c{WRK_CONNECTIONS} -d{args.duration}s, {args.rounds} rounds, warm-up "
          f"{args.warmup}s each; Python {sys.version.split()[0]}; {os.cpu_count()} CPUs shared by servers and wrk")
    for server in servers.values():
        server.start()
    rows: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
    for server in servers.values():
        wrk(server.port, args.warmup, latency=False, connections=WRK_CONNECTIONS)
    for round_ in range(1, args.rounds + 1):
        for name, server in servers.items():
            assert server.process is not None
            rows[name].append(measure(name, server.port, server.process.pid, args.duration))
        line = ", ".join(f"{name} {rows[name][-1][0]:.0f} req/s ({rows[name][-1][1]:.0f} µs CPU)" for name in servers)
        print(f"round {round_}: {line}", flush=True)
    print()
    print(f"{'server':<10} {'req/s (median)':>15} {'CPU µs/request':>15} {'/ uvicorn':>10}")
    peer = statistics.median(rps for rps, _ in rows["uvicorn"])
    for name in servers:
        rps = statistics.median(r for r, _ in rows[name])
        cpu = statistics.median(c for _, c in rows[name])
        print(f"{name:<10} {rps:>15.0f} {cpu:>15.1f} {rps / peer:>10.2f}")
    for mode, meaning in (("handoff", "with user code on worker threads"), ("guarded", "with the cage's guarantees")):
        ratios = [h[0] / u[0] for h, u in zip(rows[mode], rows["uvicorn"], strict=True)]
        ratio = statistics.median(ratios)
        verdict = f"reachable {meaning}" if ratio >= TARGET else f"NOT reachable {meaning}"
        print(f"http_floor: {mode}/uvicorn {ratio:.2f} (rounds: {' '.join(f'{r:.2f}' for r in ratios)}); "
              f"issue 20's target {TARGET:g}: {verdict}")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=10, help="seconds of each measured wrk run (10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of the warm-up run per server (2)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three servers (3)")
    parser.add_argument("--threads", type=int, default=10,
                        help="worker threads of handoff (10: the cage's thread_count)")
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(serve(args.serve, args.port, args.threads))
        return 0
    if args.duration < 1 or args.warmup < 1 or args.rounds < 1 or args.threads < 1:
        parser.error("--duration, --warmup, --rounds and --threads: at least 1")
    if shutil.which("wrk") is None:
        print("http_floor: wrk is not installed: run ./setup bench (as root) or apt-get install wrk", file=sys.stderr)
        return 2
    return run(args)


def run(args: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="pmnc-floor-"))
    servers: dict[str, FloorServer | Uvicorn] = {"uvicorn": Uvicorn(base)}
    servers.update((mode, FloorServer(base, mode, args.threads)) for mode in MODES)
    try:
        return bench(args, servers)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        print(f"http_floor: failed: {e}", file=sys.stderr)
        return 1
    finally:
        for server in servers.values():
            problem = server.stop()
            if problem:
                print(problem, file=sys.stderr)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
