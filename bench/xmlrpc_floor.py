"""The floor of an XML-RPC server with the cage's guarantees: what xmlrpc_echo's target (2 x stdlib) allows.

    .venv/bin/python bench/xmlrpc_floor.py [--duration 5] [--rounds 3]

bench/guarded_floor.py (the hand-off server with every guarantee the sample
cage gives a request) made to answer xmlrpc_echo's call, three ways, each a
process of its own beside the standard library's threaded server, under
xmlrpc_echo's own raw clients (2 processes x 4 threads, keep-alive):

- guarded: the call parsed by pmnc's own `parse_call` and the answer made by
  its own `dumps_result`, as the cage does;
- unmarshalled: the same, with the answer's bytes made once (no marshalling);
- no_xml: the same, with neither parsing nor marshalling (the call's value
  known in advance): what the server costs around the XML.

Rounds alternate the four servers; it prints each one's calls/s, its ratio to
the standard library's and its CPU per call (from /proc). See bench/README.md,
"Issue 20". (The servers are this script with --serve MODE.)
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import sys
import tempfile
import xmlrpc.client
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lib"))
import guarded_floor as floor
import xmlrpc_echo
from pmnc.protocols.xmlrpc import dumps_result, parse_call

MODES = ("guarded", "unmarshalled", "no_xml")
HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/xml; charset=utf-8\r\nCache-Control: no-cache\r\n"
        b"Pragma: no-cache\r\nContent-Length: ")
ANSWER = xmlrpc.client.dumps((xmlrpc_echo.VALUE,), methodresponse=True, encoding="utf-8").encode()


def process_request(request: dict[str, Any], response: dict[str, Any]) -> None:
    """The echo handler of xmlrpc_echo.py's cage."""
    response["result"] = request["args"][0]


def serve(mode: str) -> None:
    """guarded_floor's server, its flights answering the echo call the `mode` way."""
    floor.ALLOWED = frozenset({"POST"})
    floor.MODULE = floor.Module({"process_request": floor.typechecked(process_request)})

    def answer(flight: floor.Flight) -> tuple[bytes, bool]:
        if flight.headers.get("content-type", "").partition(";")[0].strip().lower() != "text/xml":
            return floor.error(400), False
        method, args = ("echo", (xmlrpc_echo.VALUE,)) if mode == "no_xml" else parse_call(flight.body)
        response: dict[str, Any] = {"result": None}
        floor.MODULE.call("process_request", ({"method": method, "args": args}, response))
        body = ANSWER if mode != "guarded" else dumps_result(
            response["result"], "utf-8", allow_none=False).encode("utf-8", "xmlcharrefreplace")
        keep_alive = flight.keep_alive
        return b"".join((HEAD, str(len(body)).encode(), b"\r\nConnection: keep-alive\r\n\r\n" if keep_alive
                         else b"\r\nConnection: close\r\n\r\n", body)), keep_alive

    def run(flight: floor.Flight) -> None:  # Flight.run, with `answer` in place of the hello handler
        if flight.settled:
            return
        request = flight.request
        now = floor.monotonic()
        if now >= request.deadline:
            flight.done(None, False)
            return
        request.started = now
        previous = getattr(floor._current, "request", None)
        floor._current.request = request
        try:
            result = answer(flight)
        except Exception:
            request.failed = True
            result = (floor.error(500), False)
        finally:
            floor._current.request = previous
        flight.done(result, True)

    floor.Flight.run = run  # type: ignore[method-assign]
    asyncio.run(floor.serve(0, 10))


class Floor(xmlrpc_echo.Server):
    """This script with --serve MODE."""

    def __init__(self, base: Path, mode: str) -> None:
        self.name = mode
        super().__init__(base)

    def start(self) -> None:
        self.launch([sys.executable, str(Path(__file__).resolve()), "--serve", self.name], self.base)
        super().start()

    def listening(self) -> re.Match[str] | None:
        return re.search(r"guarded on http://[\d.]+:(\d+)/", xmlrpc_echo.read_text(self.output))

    def stop(self) -> str:
        if self.process is None:
            return f"{self.name} was not started"
        if self.process.poll() is None:
            self.process.terminate()
        return xmlrpc_echo.end_process(self.process, self.name, xmlrpc_echo.STOP_TIMEOUT, lambda: None)


def bench(args: argparse.Namespace, base: Path) -> int:
    load = argparse.Namespace(processes=2, threads=4, client="raw")
    servers: list[xmlrpc_echo.Server] = [xmlrpc_echo.Stdlib(base), *(Floor(base, mode) for mode in MODES)]
    try:
        for server in servers:
            server.start()
            xmlrpc_echo.load(server, load, 2.0)  # warm-up
        rows: dict[str, list[tuple[float, float]]] = {server.name: [] for server in servers}
        for round_ in range(1, args.rounds + 1):
            for server in servers:
                tally = xmlrpc_echo.load(server, load, float(args.duration))
                if tally.errors:
                    raise RuntimeError(f"{server.name}: {tally.errors} calls failed: {tally.first_error}")
                cpu = (tally.server_cpu or float("nan")) / max(tally.calls, 1) * 1e6
                rows[server.name].append((tally.calls / args.duration, cpu))
            print(f"round {round_}: " + ", ".join(f"{n} {r[-1][0]:.0f} calls/s" for n, r in rows.items()), flush=True)
        peer = statistics.median(rate for rate, _ in rows["stdlib"])
        print(f"\n{'server':<14}{'calls/s':>10}{'/ stdlib':>10}{'CPU µs/call':>13}")
        for name, measured in rows.items():
            rate = statistics.median(r for r, _ in measured)
            cpu = statistics.median(c for _, c in measured)
            print(f"{name:<14}{rate:>10.0f}{rate / peer:>10.2f}{cpu:>13.1f}")
        return 0
    finally:
        for server in servers:
            problem = server.stop()
            if problem:
                print(problem, file=sys.stderr)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=5, help="seconds of each measured load (5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the four servers (3)")
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    base = Path(tempfile.mkdtemp(prefix="pmnc-xmlrpc-floor-"))
    try:
        return bench(args, base)
    except (RuntimeError, OSError) as e:
        print(f"xmlrpc_floor: failed: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
