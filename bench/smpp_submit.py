"""Benchmark submit_sm through the smpp resource against bare smpplib, on one bound session each to the same SMSC.

    .venv/bin/python bench/smpp_submit.py [--count 5000] [--warmup 200] [--threads 8] [--window 10]
                                          [--repeat 3] [--cpus same|split] [--shortcut] [--peer-nagle] [--keep]

Needs Node.js and node-smpp in tests/smsc/node_modules (`./setup test`): the SMSC is
tests/smsc/smsc.js, started as the tests start it (tests/smpp_peer.py's `Smsc`, reused here:
node-smpp on a free loopback port, answering every submit_sm at once with a message id).
Every submit is the same one-part text in GSM 03.38 (data_coding 0), each response waited
for and checked (status 0). Each round measures, one after the other:

- sequential, one submit at a time:
  - smpplib: one `smpplib.client.Client` bound as a transmitter (TCP_NODELAY, as pmnc's
    session; `--peer-nagle` leaves smpplib's default), its usual use:
    `smpplib.gsm.make_parts(text)`, `send_message(...)`, then `read_pdu()` until the
    submit_sm_resp of that sequence number;
  - pmnc: on one thread with its own attached request, `xa = pmnc.transaction.create()`,
    `xa.smpp_1.submit_sm(destination_addr=..., short_message=text)`, `xa.execute()`
    (`--shortcut`: `pmnc.transaction.smpp_1.submit_sm(...)`), an smpp resource whose
    interface (esme_type "xmit", `window` as given) is bound in a cage on a thread of this
    process;
- concurrent:
  - smpplib: one client, one thread, pipelined: up to `--window` submits outstanding, the
    next sent as soon as a response is read (smpplib has no thread-safe session: one
    pipelining sender is how it goes faster);
  - pmnc: `--threads` threads sharing the interface's one session through its window.

The rate is taken over `--count` submits after `--warmup` more; latency is per submit (call
to response). After every phase the SMSC's count of submits must equal what was sent. The
summary gives each round's ratio pmnc/smpplib and their median. `--cpus same` pins this
process and the SMSC on CPU 0, `--cpus split` this process on CPU 0 and the SMSC on CPU 1;
by default the kernel places them. The SMSC is stopped at the end, whatever happens.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "lib"))
sys.path.append(str(ROOT / "tests"))  # smpp_peer.py: the SMSC as the tests run it

import smpplib.client  # noqa: E402
import smpplib.exceptions  # noqa: E402
import smpplib.gsm  # noqa: E402
from http_hello import pmnc_version, read_text  # noqa: E402
from inprocess import InProcessCage  # noqa: E402
from pmnc.request import Request, attached  # noqa: E402
from smpp_peer import HERE as SMSC_HOME  # noqa: E402
from smpp_peer import PASSWORD, SYSTEM_ID, Smsc  # noqa: E402

SEQUENTIAL_TARGET, CONCURRENT_TARGET = 0.8, 1.0  # pmnc / smpplib (issue 16)
TEXT = "Your code is 314159. It is valid for 10 minutes; do not share it."  # one GSM 03.38 part
SOURCE, DESTINATION = "pmnc", "31600000001"
MAX_ERRORS = 10  # per phase: a broken setup stops early instead of failing every submit
RESPONSE_TIMEOUT = 10.0  # seconds the bare client waits for any PDU

HANDLER = '''# bench/smpp_submit.py: the transmitter's interface gets no requests; a handler is still required.

__all__ = ["process_request"]


def process_request(request: dict, response: dict) -> None:
    response["pdu"] = request["pdu"].create_response(message_id=b"")


# EOF
'''


# --- measuring ---------------------------------------------------------------------------------------


def node_cpu(pid: int | None) -> float | None:
    """CPU seconds (user + system, all its threads) of the SMSC's process, from /proc."""
    if pid is None:
        return None
    fields = read_text(Path(f"/proc/{pid}/stat")).rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if len(fields) > 12 else None


@dataclass
class Run:
    name: str
    count: int = 0  # submits answered in the timed window
    seconds: float = 0.0
    client_cpu: float = 0.0  # this process, all its threads
    server_cpu: float | None = None  # the SMSC's
    latencies: list[float] = field(default_factory=list)  # seconds per submit, timed window
    sent: int = 0  # submits accepted in all, warm-up included
    counted: int | None = None  # what the SMSC counted
    errors: int = 0
    first_error: str = ""

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0

    def per_submit_us(self, seconds: float | None) -> float:
        return seconds * 1e6 / self.count if self.count and seconds is not None else float("nan")

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    def error(self, text: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or text

    @property
    def problems(self) -> list[str]:
        found = []
        if self.errors:
            found.append(f"{self.errors} error(s), the first: {self.first_error}")
        if self.counted is not None and self.counted != self.sent:
            found.append(f"the SMSC counted {self.counted} submits, {self.sent} were answered")
        return found


class Meters:
    """The clock and the CPU meters, read at the start and the end of a timed window."""

    def __init__(self, smsc_pid: int | None) -> None:
        self.smsc_pid = smsc_pid
        self.start: tuple[float, float, float | None] | None = None
        self.end: tuple[float, float, float | None] | None = None

    def read(self) -> tuple[float, float, float | None]:
        return time.monotonic(), time.process_time(), node_cpu(self.smsc_pid)

    def begin(self) -> None:
        self.start = self.read()

    def finish(self) -> None:
        self.end = self.read()

    def settle(self, run: Run) -> None:
        if self.start is None or self.end is None:
            return
        run.count = len(run.latencies)
        run.seconds = self.end[0] - self.start[0]
        run.client_cpu = self.end[1] - self.start[1]
        if self.start[2] is not None and self.end[2] is not None:
            run.server_cpu = self.end[2] - self.start[2]


def shares(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def timed(run: Run, step: Callable[[], None], latencies: list[float] | None, lock: threading.Lock) -> None:
    """One submit; its latency kept (timed window), an error counted instead of raised."""
    started = time.perf_counter()
    try:
        step()
    except Exception as e:
        with lock:
            run.error(f"{type(e).__name__}: {e}")
        return
    if latencies is not None:
        latencies.append(time.perf_counter() - started)


def on_threads(run: Run, meters: Meters, threads: int, warmup: int, count: int,
               step: Callable[[], Callable[[], None]], request_timeout: float | None) -> None:
    """`threads` threads, each with its own step (and attached request if `request_timeout`):
    its share of the warm-up, then all together its share of the timed submits."""
    lock = threading.Lock()
    barrier = threading.Barrier(threads, action=meters.begin)
    latencies: list[list[float]] = [[] for _ in range(threads)]
    warm, work = shares(warmup, threads), shares(count, threads)

    def worker(i: int) -> None:
        with attached_if(request_timeout):
            submit = step()
            for _ in range(warm[i]):
                if run.errors < MAX_ERRORS:
                    timed(run, submit, None, lock)
            barrier.wait()
            for _ in range(work[i]):
                if run.errors < MAX_ERRORS:
                    timed(run, submit, latencies[i], lock)

    pool = [threading.Thread(target=worker, args=(i,), name=f"bench-{i}") for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    meters.finish()
    run.latencies = [x for each in latencies for x in each]
    meters.settle(run)
    run.sent = warmup + count - run.errors


@contextmanager
def attached_if(timeout: float | None) -> Iterator[None]:
    if timeout is None:
        yield
    else:
        with attached(Request(timeout=timeout, interface="bench", protocol="bench")):
            yield


# --- the peer: bare smpplib ----------------------------------------------------------------------------


def bare_client(smsc: Smsc, nagle: bool) -> Any:
    """An smpplib client bound as a transmitter, set up as smpplib's README does; with TCP_NODELAY
    (as pmnc's session) unless `nagle`."""
    client = smpplib.client.Client(smsc.address[0], smsc.address[1], timeout=RESPONSE_TIMEOUT,
                                   allow_unknown_opt_params=True)
    client.connect()
    if not nagle:
        client._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.bind_transmitter(system_id=SYSTEM_ID, password=PASSWORD, system_type="pmnc")
    return client


def close_bare(client: Any) -> None:
    try:
        client.unbind()
    except Exception:  # going anyway
        pass
    client.disconnect()


def bare_send(client: Any) -> int:
    """One submit_sm written, as smpplib's README builds it; its sequence number."""
    parts, coding, esm_class = smpplib.gsm.make_parts(TEXT)
    pdu = client.send_message(source_addr_ton=0, source_addr_npi=0, source_addr=SOURCE, dest_addr_ton=0,
                              dest_addr_npi=0, destination_addr=DESTINATION, short_message=parts[0],
                              data_coding=coding, esm_class=esm_class)
    return int(pdu.sequence)


def bare_answer(pdu: Any) -> None:
    if pdu.command != "submit_sm_resp" or pdu.status != 0:
        raise RuntimeError(f"the SMSC answered {pdu.command} with status 0x{pdu.status:02x}")


def bare_sequential(client: Any) -> Callable[[], None]:
    def submit() -> None:
        sequence = bare_send(client)
        while True:
            pdu = client.read_pdu()
            if pdu.sequence == sequence and (pdu.command == "submit_sm_resp" or pdu.command == "generic_nack"):
                return bare_answer(pdu)
    return submit


def bare_pipelined(client: Any, run: Run, count: int, window: int, latencies: list[float] | None) -> None:
    """`count` submits, up to `window` outstanding: the next sent as soon as a response is read."""
    outstanding: dict[int, float] = {}
    sent = done = 0
    while done < count and run.errors < MAX_ERRORS:
        while sent < count and len(outstanding) < window:
            outstanding[bare_send(client)] = time.perf_counter()
            sent += 1
        pdu = client.read_pdu()
        started = outstanding.pop(pdu.sequence, None)
        if started is None:
            continue
        done += 1
        try:
            bare_answer(pdu)
        except RuntimeError as e:
            run.error(str(e))
            continue
        if latencies is not None:
            latencies.append(time.perf_counter() - started)


# --- the bench -----------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, base: Path, smsc: Smsc) -> None:
        self.args, self.base, self.smsc = args, base, smsc
        self.cage: InProcessCage | None = None
        self.request_timeout = 60.0 + (args.count + args.warmup) / 50

    def start_cage(self) -> InProcessCage:
        a = self.args
        interface = self.smsc.config(esme_type="xmit", window=a.window)
        resource = {"protocol": "smpp", "source_addr": SOURCE, "pool__size": max(a.threads, 1)}
        self.cage = InProcessCage(self.base / "cage", a.threads + 2, {"smpp_1": resource},
                                  interfaces={"smpp_1": interface}, files={"interface_smpp_1.py": HANDLER},
                                  request_timeout=self.request_timeout)
        self.cage.start()
        return self.cage

    def meters(self) -> Meters:
        self.smsc.control(cmd="reset")
        process = self.smsc.process
        return Meters(process.pid if process is not None else None)

    def counted(self, run: Run) -> Run:
        run.counted = len(self.smsc.stats()["submits"])
        self.smsc.control(cmd="reset")
        return run

    def pmnc_step(self) -> Callable[[], None]:
        assert self.cage is not None
        transaction = self.cage.transaction
        if self.args.shortcut:
            def shortcut() -> None:
                if not transaction.smpp_1.submit_sm(destination_addr=DESTINATION, short_message=TEXT):
                    raise RuntimeError("submit_sm returned no message_id")
            return shortcut

        def through_xa() -> None:
            xa = transaction.create()
            xa.smpp_1.submit_sm(destination_addr=DESTINATION, short_message=TEXT)
            if not xa.execute()[0]:
                raise RuntimeError("submit_sm returned no message_id")
        return through_xa

    def pmnc_name(self, threads: int) -> str:
        call = "smpp_1.submit_sm" if self.args.shortcut else "xa.smpp_1.submit_sm"
        return f"pmnc {call}, {threads} thread{'s' if threads > 1 else ''}"

    def pmnc(self, threads: int) -> Run:
        run = Run(self.pmnc_name(threads))
        on_threads(run, self.meters(), threads, self.args.warmup, self.args.count, self.pmnc_step,
                   self.request_timeout)
        return self.counted(run)

    def bare_sequential(self) -> Run:
        run = Run("smpplib, one at a time")
        client = bare_client(self.smsc, self.args.peer_nagle)
        try:
            on_threads(run, self.meters(), 1, self.args.warmup, self.args.count, lambda: bare_sequential(client),
                       None)
        finally:
            close_bare(client)
        return self.counted(run)

    def bare_pipelined(self) -> Run:
        a = self.args
        run = Run(f"smpplib, pipelined, window {a.window}")
        client = bare_client(self.smsc, self.args.peer_nagle)
        meters = self.meters()
        try:
            bare_pipelined(client, run, a.warmup, a.window, None)
            meters.begin()
            bare_pipelined(client, run, a.count, a.window, run.latencies)
            meters.finish()
        finally:
            close_bare(client)
        meters.settle(run)
        run.sent = a.warmup + a.count - run.errors
        return self.counted(run)

    def round(self) -> tuple[Run, Run, Run, Run]:
        return self.bare_sequential(), self.pmnc(1), self.bare_pipelined(), self.pmnc(self.args.threads)


# --- the report ----------------------------------------------------------------------------------------


def us(value: float) -> str:
    return "-" if value != value else f"{value:.0f}us"  # NaN: not measured


def ms(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds * 1000:.2f}ms"


def header() -> str:
    return (f"{'':<40}{'submit/s':>9}{'submits':>9}{'errors':>7}{'p50':>9}{'p99':>9}"
            f"{'CPU/submit':>12}{'SMSC/submit':>12}{'CPU':>6}")


def row(run: Run) -> str:
    cpu = run.client_cpu / run.seconds * 100 if run.seconds else 0.0
    return (f"{run.name:<40}{run.rate:>9.0f}{run.sent:>9}{run.errors:>7}{ms(run.percentile(0.5)):>9}"
            f"{ms(run.percentile(0.99)):>9}{us(run.per_submit_us(run.client_cpu)):>12}"
            f"{us(run.per_submit_us(run.server_cpu)):>12}{cpu:>5.0f}%")


def ratio(pmnc: Run, peer: Run) -> float:
    return pmnc.rate / peer.rate if peer.rate else float("nan")


def median_line(what: str, pmnc: list[Run], peer: list[Run], target: float, above: bool) -> tuple[str, float]:
    ratios = [ratio(p, q) for p, q in zip(pmnc, peer, strict=True)]
    median = statistics.median(ratios) if all(x == x for x in ratios) else float("nan")
    met = median > target if above else median >= target
    p_cpu = statistics.median(p.per_submit_us(p.client_cpu) for p in pmnc)
    q_cpu = statistics.median(q.per_submit_us(q.client_cpu) for q in peer)
    return (f"{what}: pmnc {statistics.median(p.rate for p in pmnc):.0f}/s, smpplib "
            f"{statistics.median(q.rate for q in peer):.0f}/s; CPU per submit {p_cpu:.0f} against {q_cpu:.0f} us; "
            f"ratio per round {', '.join(f'{x:.2f}' for x in ratios)}, median {median:.2f} "
            f"(target {'>' if above else '>='} {target:g}: {'met' if met else 'NOT met'})"), median


def report(args: argparse.Namespace, rounds: list[tuple[Run, Run, Run, Run]], problems: list[str]) -> int:
    print()
    print(header())
    for r, runs in enumerate(rounds):
        for run in runs:
            print(row(run) + f"  round {r + 1}")
    print()
    failed = bool(problems)
    for runs in rounds:
        for run in runs:
            for problem in run.problems:
                failed = True
                print(f"{run.name}: {problem}")
    sequential, seq = median_line("sequential", [r[1] for r in rounds], [r[0] for r in rounds],
                                  SEQUENTIAL_TARGET, False)
    concurrent, con = median_line(f"concurrent, pmnc {args.threads} threads, smpplib pipelined, window {args.window}",
                                  [r[3] for r in rounds], [r[2] for r in rounds], CONCURRENT_TARGET, True)
    print(sequential)
    print(concurrent)
    for line in problems[:5]:
        print(f"cage log: {line}")
    print(f"smpp_submit: median ratios pmnc/smpplib: sequential {seq:.2f} (target >= {SEQUENTIAL_TARGET:g}), "
          f"concurrent {con:.2f} (target > {CONCURRENT_TARGET:g})")
    if failed:
        print("smpp_submit: NOT CLEAN: see above")
    return 1 if failed else 0


def versions(smsc: Smsc) -> str:
    try:
        node_smpp = read_text(SMSC_HOME / "node_modules" / "smpp" / "package.json").split('"version"')[1]
        node_smpp = node_smpp.split('"')[1]
    except IndexError:
        node_smpp = "?"
    return (f"smpplib {version('smpplib')}, node-smpp {node_smpp} on 127.0.0.1:{smsc.port} "
            f"(pid {smsc.process.pid if smsc.process else '?'}); {pmnc_version()}")


def pin(smsc: Smsc, how: str) -> None:
    """This process's threads (those started later inherit it) on CPU 0; every thread of the SMSC
    on CPU 0 too, or on CPU 1."""
    assert smsc.process is not None
    for task in os.listdir(f"/proc/{smsc.process.pid}/task"):
        os.sched_setaffinity(int(task), {0} if how == "same" else {1})
    for task in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(task), {0})


def bench(args: argparse.Namespace, b: Bench) -> int:
    print(f"smpp_submit: {args.repeat} round(s) of {args.count} submits after {args.warmup}, each response "
          f"waited for; concurrent: pmnc {args.threads} threads, window {args.window}; Python "
          f"{sys.version.split()[0]}; {os.cpu_count()} CPUs shared by the SMSC and this process"
          f"{f', pinned {args.cpus}' if args.cpus else ''}")
    print(versions(b.smsc))
    b.start_cage()
    rounds = []
    for r in range(args.repeat):
        print(f"round {r + 1} ...", flush=True)
        rounds.append(b.round())
    assert b.cage is not None
    return report(args, rounds, b.cage.problems())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=5000, help="submits measured per phase (5000)")
    parser.add_argument("--warmup", type=int, default=200, help="submits before the clock starts (200)")
    parser.add_argument("--threads", type=int, default=8, help="pmnc's threads in the concurrent phase (8)")
    parser.add_argument("--window", type=int, default=10,
                        help="submits outstanding at once: the interface's window, the pipelined peer's (10)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the summary gives medians (3)")
    parser.add_argument("--cpus", choices=("same", "split"),
                        help="pin this process and the SMSC on CPU 0 (same), or this process on CPU 0 and the SMSC "
                             "on CPU 1 (split); by default the kernel places them")
    parser.add_argument("--shortcut", action="store_true",
                        help="pmnc.transaction.smpp_1.submit_sm(...) instead of xa = create(); xa.smpp_1...; execute()")
    parser.add_argument("--peer-nagle", action="store_true",
                        help="leave Nagle's algorithm on in the smpplib client, as smpplib does (pmnc turns it off)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (the cage log)")
    args = parser.parse_args(argv)
    if args.count < 1 or args.warmup < 1 or args.threads < 1 or args.window < 1 or args.repeat < 1:
        parser.error("--count, --warmup, --threads, --window and --repeat must be at least 1")
    if args.cpus == "split" and len(os.sched_getaffinity(0)) < 2:
        parser.error("--cpus split needs two CPUs")
    if shutil.which("node") is None or not (SMSC_HOME / "node_modules" / "smpp").is_dir():
        print("smpp_submit: needs Node.js and node-smpp in tests/smsc/node_modules (./setup test installs it)",
              file=sys.stderr)
        return 2

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    base = Path(tempfile.mkdtemp(prefix="pmnc-bench-"))
    smsc: Smsc | None = None
    b: Bench | None = None
    try:
        smsc = Smsc()
        if args.cpus:
            pin(smsc, args.cpus)
        b = Bench(args, base, smsc)
        return bench(args, b)
    except (RuntimeError, OSError, smpplib.exceptions.ConnectionError, smpplib.exceptions.PDUError) as e:
        sys.stdout.flush()
        print(f"smpp_submit: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        sys.stdout.flush()
        print("smpp_submit: interrupted", file=sys.stderr)
        return 130
    finally:
        stopped = [b.cage.stop()] if b is not None and b.cage is not None else []
        if smsc is not None:
            smsc.close()
            stopped.append("the SMSC stopped")
        print(f"stopped: {'; '.join(s for s in stopped if s) or 'nothing was running'}")
        if args.keep:
            print(f"kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
