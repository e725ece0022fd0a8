"""Benchmark pmnc's XML-RPC interface against the standard library's threading SimpleXMLRPCServer, both echoing.

    .venv/bin/python bench/xmlrpc_echo.py [--duration 10] [--warmup 2] [--processes 2] [--threads 4]
                                          [--client raw|proxy] [--pin CPU] [--keep]

Both servers run as processes of their own on free loopback ports: pmnc as
`startup.py xmlrpc_echo` in a temporary install tree (its interface made from
the template `cages/.shared/config_interface_xmlrpc_1.py`, only the address
changed), the standard library's server as this script with `--serve-stdlib`.
Each gets the same load, one after the other: `--processes` client processes
of `--threads` threads, each thread with its own keep-alive connection,
calling `echo(VALUE)` back to back for `--duration` seconds after a warm-up.
The default `raw` client sends a pre-built request and checks the answer byte
for byte, so that the clients cost little CPU next to the servers; `proxy`
uses `xmlrpc.client.ServerProxy` instead. `--pin CPU` keeps each server on
that one CPU (pmnc by `cpu_affinity` in its config_interfaces.py, the
standard library's server by this script; the clients go where the system
puts them); without it pmnc places itself as shipped (`cpu_affinity="auto"`)
and the peer goes where the system puts it. Both servers are stopped at the end whatever happens. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.synchronize
import os
import re
import shutil
import socket
import socketserver
import statistics
import subprocess
import sys
import threading
import time
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

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

ROOT = Path(__file__).resolve().parent.parent
CAGE = "xmlrpc_echo"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0

# What every call sends and expects back: a small struct, well under the 1400 bytes
# above which the standard library's server would gzip its answer.
VALUE: dict[str, Any] = {"id": 12345, "name": "Hello, world !", "tags": ["a", "b", "c"], "active": True,
                         "amount": 12.5}

HANDLER = '''# The echo handler of bench/xmlrpc_echo.py.

__all__ = ["process_request"]


def process_request(request: dict, response: dict) -> None:
    if request["method"] != "echo":
        raise LookupError(f"unknown method {request['method']}")
    (value,) = request["args"]
    response["result"] = value


# EOF
'''

CAGE_CONFIG = '''config = dict(
    interfaces=("xmlrpc",),
    request_timeout=10.0,
    thread_count=10,
    sweep_period=15.0,
    log_level="LOG",
    cpu_affinity={cpus},
)

# EOF
'''

PIN: int | None = None  # --pin: the CPU both servers are kept on (pmnc by its cpu_affinity, the peer by this script)


# --- the standard library's server (this script with --serve-stdlib) ------------------------------


class StdlibHandler(SimpleXMLRPCRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as pmnc and the client do
    disable_nagle_algorithm = True  # it writes head and body separately: no delayed-ACK stalls between them


class StdlibServer(socketserver.ThreadingMixIn, SimpleXMLRPCServer):
    daemon_threads = True


def echo(value: Any) -> Any:
    return value


def serve_stdlib(port: int) -> int:
    server = StdlibServer((HOST, port), requestHandler=StdlibHandler, logRequests=False, allow_none=False)
    server.register_function(echo, "echo")
    port = server.server_address[1]
    print(f"xmlrpc_echo: stdlib SimpleXMLRPCServer + ThreadingMixIn (a thread per connection), HTTP/1.1 "
          f"keep-alive, TCP_NODELAY, logRequests=False, on http://{HOST}:{port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


# --- the servers, from the benchmark's side ----------------------------------------------------------


def pinned() -> str:
    return "" if PIN is None else f", kept on CPU {PIN}"


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def echo_answers(port: int) -> bool:
    """One echo call through ServerProxy on a new connection answers VALUE."""
    proxy = xmlrpc.client.ServerProxy(f"http://{HOST}:{port}/RPC2")
    try:
        return bool(proxy.echo(VALUE) == VALUE)
    except (OSError, xmlrpc.client.Error):
        return False
    finally:
        proxy("close")()


class Server:
    """A server process of ours: started, found on its port, stopped."""

    name = ""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.output = base / f"{self.name}.out"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.description = ""

    def launch(self, command: list[str], cwd: Path) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def listening(self) -> re.Match[str] | None:
        raise NotImplementedError

    def start(self) -> None:
        match = wait_until(self._found, START_TIMEOUT, f"{self.name}: its listening line")
        self.port = int(match.group(1))
        wait_until(lambda: echo_answers(self.port), START_TIMEOUT, f"{self.name}: echo answering on {self.port}")

    def _found(self) -> re.Match[str] | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with code {self.process.returncode}: "
                               f"{read_text(self.output)[-2000:]}{self.log_text()[-2000:]}")
        return self.listening()

    def log_text(self) -> str:
        return ""

    def serving_pid(self) -> int:
        """The process that serves the calls."""
        assert self.process is not None
        return self.process.pid

    def stop(self) -> str:
        raise NotImplementedError


class PmncCage(Server):
    """A cage with one XML-RPC interface in a temporary install tree, run as `python startup.py xmlrpc_echo`."""

    name = "pmnc"
    LISTENS = re.compile(r"interface xmlrpc listens on https?://[\d.]+:(\d+)/")

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.root = base / "pmnc"
        self.cage_dir = self.root / "cages" / CAGE
        self.logs = self.cage_dir / "logs"

    def make_tree(self) -> None:
        """startup.py, lib (a symlink), cages/.shared and the cage, its interface from the template."""
        (self.root / "cages").mkdir(parents=True)
        shutil.copy(ROOT / "startup.py", self.root / "startup.py")
        os.symlink(ROOT / "lib", self.root / "lib")
        shutil.copytree(ROOT / "cages" / ".shared", self.root / "cages" / ".shared")
        self.cage_dir.mkdir()
        template = (ROOT / "cages" / ".shared" / "config_interface_xmlrpc_1.py").read_text()
        text, count = re.subn(r"listener_address\s*=\s*\([^)]*\)", f'listener_address=("{HOST}", 0)', template)
        if count != 1:
            raise RuntimeError("config_interface_xmlrpc_1.py: no listener_address to rewrite")
        (self.cage_dir / "config_interface_xmlrpc.py").write_text(text)
        (self.cage_dir / "interface_xmlrpc.py").write_text(HANDLER)
        cpus = repr("auto") if PIN is None else (PIN,)  # "auto": the default, as shipped
        (self.cage_dir / "config_interfaces.py").write_text(CAGE_CONFIG.format(cpus=cpus))
        settings = dict(re.findall(r"^\s*(keep_alive_max_requests|max_connections)=(\S+),", text, re.M))
        self.description = (f"{pmnc_version()}: cage {CAGE}, xmlrpc interface from the template "
                            f"(keep_alive_max_requests={settings.get('keep_alive_max_requests', '?')}), "
                            f"10 worker threads{pinned()}")

    def start(self) -> None:
        self.make_tree()
        self.launch([sys.executable, str(self.root / "startup.py"), CAGE], self.root)
        super().start()
        self.description += f", on http://{HOST}:{self.port}/"

    def listening(self) -> re.Match[str] | None:
        return self.LISTENS.search(self.log_text())

    def log_text(self) -> str:
        if not self.logs.is_dir():
            return ""
        return "".join(read_text(p) for p in sorted(self.logs.glob("*.log")))

    def serving_pid(self) -> int:
        return int(CAGE_PROCESS.findall(self.log_text())[-1])  # the cage, not its supervisor

    def _kill_cage(self) -> None:
        kill_cage_processes(self.log_text())

    def stop(self) -> str:
        if self.process is None:
            return "pmnc was not started"
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM to the supervisor: a graceful stop of the cage
        return end_process(self.process, "pmnc", STOP_TIMEOUT, self._kill_cage)


class Stdlib(Server):
    """This script with --serve-stdlib."""

    name = "stdlib"
    BANNER = re.compile(r"xmlrpc_echo: stdlib .* on http://[\d.]+:(\d+)/")

    def start(self) -> None:
        self.launch([sys.executable, str(Path(__file__).resolve()), "--serve-stdlib"], self.base)
        assert self.process is not None
        if PIN is not None:  # before it serves: the threads it starts for connections inherit it
            os.sched_setaffinity(self.process.pid, {PIN})
        super().start()

    def listening(self) -> re.Match[str] | None:
        match = self.BANNER.search(read_text(self.output))
        if match:
            self.description = match.group(0).removeprefix("xmlrpc_echo: ") + pinned()
        return match

    def stop(self) -> str:
        if self.process is None:
            return "stdlib was not started"
        if self.process.poll() is None:
            self.process.terminate()
        return end_process(self.process, "stdlib", STOP_TIMEOUT, lambda: None)


# --- the clients -----------------------------------------------------------------------------------


@dataclass
class Tally:
    calls: int = 0
    errors: int = 0
    reconnects: int = 0
    first_error: str = ""
    latencies: list[float] = field(default_factory=list)
    server_cpu: float | None = None  # seconds the server process spent on the CPU meanwhile

    def add(self, other: Tally) -> None:
        self.calls += other.calls
        self.errors += other.errors
        self.reconnects += other.reconnects
        self.first_error = self.first_error or other.first_error
        self.latencies += other.latencies

    def failed(self, message: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or message


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.I)
_CLOSE = re.compile(rb"\r\nconnection:\s*close", re.I)


class RawClient:
    """One keep-alive connection sending a pre-built call; the answer must be the expected bytes."""

    def __init__(self, port: int) -> None:
        self.port = port
        body = xmlrpc.client.dumps((VALUE,), "echo").encode()
        self.request = (f"POST /RPC2 HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: xmlrpc_echo\r\n"
                        f"Content-Type: text/xml\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
        self.expected = xmlrpc.client.dumps((VALUE,), methodresponse=True, encoding="utf-8").encode()
        self.sock = self._connect()
        self.buffer = b""

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((HOST, self.port), timeout=10.0)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def reconnect(self) -> None:
        self.sock.close()
        self.sock, self.buffer = self._connect(), b""

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buffer += data

    def call(self, tally: Tally) -> None:
        self.sock.sendall(self.request)
        while b"\r\n\r\n" not in self.buffer:
            self._more()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        length = _CONTENT_LENGTH.search(head)
        if length is None:
            raise ConnectionError(f"an answer without content-length: {head[:100]!r}")
        while len(self.buffer) < int(length.group(1)):
            self._more()
        body, self.buffer = self.buffer[:int(length.group(1))], self.buffer[int(length.group(1)):]
        if not head.startswith(b"HTTP/1.1 200 ") or body != self.expected:
            tally.failed(f"unexpected answer: {head[:40]!r} {body[:200]!r}")
        else:
            tally.calls += 1
        if _CLOSE.search(head):
            tally.reconnects += 1
            self.reconnect()

    def close(self) -> None:
        self.sock.close()


class ProxyClient:
    """One xmlrpc.client.ServerProxy: HTTP/1.1, it keeps its connection and reopens it when told to close."""

    def __init__(self, port: int) -> None:
        self.proxy = xmlrpc.client.ServerProxy(f"http://{HOST}:{port}/RPC2")

    def call(self, tally: Tally) -> None:
        try:
            answer = self.proxy.echo(VALUE)
        except xmlrpc.client.Error as e:
            tally.failed(repr(e))
            return
        if answer == VALUE:
            tally.calls += 1
        else:
            tally.failed(f"unexpected answer: {answer!r}"[:200])

    def reconnect(self) -> None:
        self.proxy("close")()

    def close(self) -> None:
        self.proxy("close")()


def _calls(client: RawClient | ProxyClient, end: float, tally: Tally) -> None:
    while True:
        began = time.perf_counter()
        if began >= end:
            return
        try:
            client.call(tally)
        except OSError as e:
            tally.failed(repr(e))
            try:
                client.reconnect()
            except OSError:
                return
        tally.latencies.append(time.perf_counter() - began)


def client_process(port: int, kind: str, threads: int, duration: float, ready: multiprocessing.synchronize.Barrier,
                   results: multiprocessing.Queue[Tally]) -> None:
    """`threads` connections opened first, then calls on all of them for `duration` seconds."""
    tally = Tally()
    clients = [RawClient(port) if kind == "raw" else ProxyClient(port) for _ in range(threads)]
    tallies = [Tally() for _ in clients]
    ready.wait(START_TIMEOUT)
    end = time.perf_counter() + duration
    workers = [threading.Thread(target=_calls, args=(c, end, t)) for c, t in zip(clients, tallies, strict=True)]
    for worker in workers:
        worker.start()
    for worker, client, part in zip(workers, clients, tallies, strict=True):
        worker.join()
        client.close()
        tally.add(part)
    results.put(tally)


def load(server: Server, args: argparse.Namespace, duration: float) -> Tally:
    """The whole client load against one server: its tally over `duration` seconds."""
    port = server.port
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(args.processes + 1)
    results: multiprocessing.Queue[Tally] = context.Queue()
    processes = [context.Process(target=client_process, daemon=True,
                                 args=(port, args.client, args.threads, duration, ready, results))
                 for _ in range(args.processes)]
    for process in processes:
        process.start()
    try:
        ready.wait(START_TIMEOUT)  # every connection is open: the clock starts now, for all
        cpu_before = cpu_seconds(server.serving_pid())
        total = Tally()
        for _ in processes:
            total.add(results.get(timeout=duration + START_TIMEOUT))
        cpu_after = cpu_seconds(server.serving_pid())
        if cpu_before is not None and cpu_after is not None:
            total.server_cpu = cpu_after - cpu_before
        return total
    finally:
        for process in processes:
            process.join(10.0)
            if process.is_alive():
                process.kill()


# --- the run ---------------------------------------------------------------------------------------------


def _ms(latencies: list[float], q: int) -> str:
    if len(latencies) < 2:
        return "?"
    return f"{statistics.quantiles(latencies, n=100)[q - 1] * 1000:.2f}ms"


def bench(args: argparse.Namespace, pmnc: PmncCage, peer: Stdlib) -> int:
    client = ("raw: a pre-built request, the answer checked byte for byte" if args.client == "raw"
              else "xmlrpc.client.ServerProxy")
    request_size = len(xmlrpc.client.dumps((VALUE,), "echo"))
    answer_size = len(xmlrpc.client.dumps((VALUE,), methodresponse=True))
    print(f"xmlrpc_echo: {args.processes} client processes x {args.threads} threads, one keep-alive connection "
          f"each, calling echo(struct) back to back ({request_size} bytes of XML in, {answer_size} out); "
          f"client {client}; {args.duration:g}s measured after {args.warmup:g}s warm-up, each server in turn; "
          f"Python {sys.version.split()[0]}; {os.cpu_count()} CPUs shared by servers and clients")
    pmnc.start()
    print(pmnc.description)
    peer.start()
    print(peer.description)

    print(f"warming up ({args.warmup:g}s each) ...", flush=True)
    load(pmnc, args, args.warmup)
    load(peer, args, args.warmup)
    print("measuring: pmnc, then stdlib ...", flush=True)
    on_pmnc = load(pmnc, args, args.duration)
    on_peer = load(peer, args, args.duration)

    print()
    print(f"{'':<10}{'calls/s':>10}{'calls':>10}{'p50':>10}{'p99':>10}{'errors':>8}{'reconnects':>12}"
          f"{'server CPU':>12}{'CPU/call':>10}")
    for name, tally in (("pmnc", on_pmnc), ("stdlib", on_peer)):
        cpu = tally.server_cpu
        print(f"{name:<10}{tally.calls / args.duration:>10.0f}{tally.calls:>10}{_ms(tally.latencies, 50):>10}"
              f"{_ms(tally.latencies, 99):>10}{tally.errors:>8}"
              f"{tally.reconnects if args.client == 'raw' else '-':>12}"  # ServerProxy reconnects unseen
              f"{'?' if cpu is None else f'{cpu / args.duration:.2f}':>12}"
              f"{'?' if cpu is None or not tally.calls else f'{cpu / tally.calls * 1e6:.0f}us':>10}")
        if tally.first_error:
            print(f"  {name}: first error: {tally.first_error}")
    ratio = on_pmnc.calls / on_peer.calls if on_peer.calls else float("nan")
    problems = [line for line in pmnc.log_text().splitlines() if " ERR " in line or " WRN " in line]
    if problems:
        print(f"cage log: {len(problems)} error/warning line(s), the first ones:")
        for line in problems[:5]:
            print(f"  {line}")
    print(f"xmlrpc_echo: pmnc {on_pmnc.calls / args.duration:.0f} calls/s, stdlib {on_peer.calls / args.duration:.0f}"
          f" calls/s, ratio {ratio:.2f} (target >= 2: {'met' if ratio >= 2 else 'NOT met'}); "
          f"errors: pmnc {on_pmnc.errors}, stdlib {on_peer.errors}")
    if on_pmnc.errors or on_peer.errors:
        print("xmlrpc_echo: NOT CLEAN: see the errors above")
        return 1
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each measured run (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of the warm-up run per server (2)")
    parser.add_argument("--processes", type=int, default=2, help="client processes (2)")
    parser.add_argument("--threads", type=int, default=4, help="threads per client process, a connection each (4)")
    parser.add_argument("--client", choices=("raw", "proxy"), default="raw", help="how clients call (raw)")
    parser.add_argument("--pin", type=int, metavar="CPU",
                        help="keep each server on this CPU (pmnc by its cpu_affinity; default: pmnc as shipped, "
                             "cpu_affinity \"auto\", the peer where the system puts it)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary tree and logs, print where")
    parser.add_argument("--serve-stdlib", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_stdlib:
        return serve_stdlib(args.port)
    if args.duration <= 0 or args.warmup <= 0 or args.processes < 1 or args.threads < 1:
        parser.error("--duration and --warmup must be positive, --processes and --threads at least 1")
    if args.pin is not None and args.pin not in os.sched_getaffinity(0):
        parser.error(f"--pin {args.pin}: not a CPU this machine lets us use")
    global PIN
    PIN = args.pin

    return run_pair("xmlrpc_echo", args.keep, PmncCage, Stdlib, lambda pmnc, peer: bench(args, pmnc, peer))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
