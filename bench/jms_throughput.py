"""Benchmark the jms interface and resource against bare stomp.py, on the same ActiveMQ broker.

    .venv/bin/python bench/jms_throughput.py [--messages 5000] [--warmup 200] [--concurrency 1,4]
                                             [--sends 2000] [--send-warmup 100] [--send-threads 1]
                                             [--size 100] [--rounds 3] [--peer-nagle] [--keep]

Needs ActiveMQ from Debian's packages (/usr/share/activemq, and java), started
as the tests start it (tests/amq_peer.py: KahaDB in a temporary folder, STOMP on
a free loopback port). Two things are measured, each on both sides in the same
run, one after the other, `--rounds` times; the summary gives each round's ratio
and their median:

- consumption: `--messages` persistent messages of `--size` bytes are put on a
  fresh queue, then consumed and acknowledged, for each `--concurrency` K:
  - stomp.py: one connection, K subscriptions with ack=client-individual and
    activemq.prefetchSize 1, each served by a thread of its own that takes
    the frame from the listener, decodes the body and ACKs it (and, for scale,
    the same with the ACK sent from stomp.py's listener thread, no hand-off);
  - pmnc: a cage on a thread of this process whose one interface is protocol
    "jms" with `concurrency` K (K subscriptions of prefetch 1, the same
    acknowledgement mode) and a handler that does nothing; the cage is
    started after the queue is loaded.
  The rate is taken from the `--warmup`-th acknowledgement to the last one,
  counted where each side sends its ACK (for pmnc by wrapping
  `Interface._ack`). Afterwards the queue is browsed: nothing may be left.
- sends: `--sends` messages of `--size` bytes, each in a transaction of its
  own, after `--send-warmup` more, by T threads (`--send-threads`):
  - stomp.py: one connection per thread; BEGIN, SEND (persistent), COMMIT
    with a receipt, the receipt waited for;
  - pmnc: `pmnc.transaction.<resource>.send(text)` on a thread with its own
    attached request, a jms resource with `pool__size` T (one connection per
    thread); each call is its own pmnc transaction (BEGIN and SEND at the
    call, COMMIT with a receipt waited for when it commits).
  Afterwards the queue is browsed (every message sent must be there) and
  emptied.

The peer's connections are set up as the jms protocol sets up its own
(heart-beats of 10 s, no decoding of bodies), and with TCP_NODELAY: stomp.py
leaves Nagle's algorithm on, and then the SEND after a BEGIN waits for the
broker's delayed TCP acknowledgement, some 40 ms per transaction
(`--peer-nagle` measures the peer that way).
Every process started (the broker) is stopped at the end, whatever happens.
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
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "lib"))
sys.path.append(str(ROOT / "tests"))  # amq_peer.py: the broker as the tests run it

import stomp  # noqa: E402
from amq_peer import HOME as AMQ_HOME  # noqa: E402
from amq_peer import PASSWORD, USER, AmqBroker  # noqa: E402
from http_hello import pmnc_version, read_text  # noqa: E402
from inprocess import InProcessCage  # noqa: E402
from pmnc.protocols import jms  # noqa: E402
from pmnc.request import Request, attached  # noqa: E402

TARGET = 0.7  # pmnc / stomp.py, both for consumption and for sends
THREAD_COUNT = 10  # the cages' thread_count (as shipped), at least the largest concurrency
HEARTBEAT = 10.0  # seconds, both ways: what the jms protocol's Link asks for by default, the peer too
RECEIPT_TIMEOUT = 30.0
LOAD_BATCH = 500  # messages per STOMP transaction when loading a queue

HANDLER = '''# bench/jms_throughput.py: the trivial handler of the consuming cage.

__all__ = ["process_request"]


def process_request(request: dict, response: dict) -> None:
    pass


# EOF
'''


# --- the broker side: loading, browsing, draining ----------------------------------------------------


def connect(broker: AmqBroker, listener: stomp.ConnectionListener | None = None, nodelay: bool = True) \
        -> stomp.Connection12:
    """A bare stomp.py connection set up as the jms protocol sets up its own (heart-beats, no decoding),
    with TCP_NODELAY unless `nodelay` is False (stomp.py leaves Nagle's algorithm on)."""
    ms = int(HEARTBEAT * 1000)
    conn = stomp.Connection12([("127.0.0.1", broker.stomp_port)], heartbeats=(ms, ms), heart_beat_receive_scale=2.0,
                              keepalive=True, auto_decode=False, auto_content_length=False)
    if listener is not None:
        conn.set_listener("bench", listener)
    conn.connect(USER, PASSWORD, wait=True)
    if nodelay:
        conn.transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


class Receipts(stomp.ConnectionListener):  # type: ignore[misc]
    """Receipts waited for on one connection (a thread waits for its own, one at a time)."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self.errors: list[str] = []

    def new(self) -> tuple[str, threading.Event]:
        receipt, event = uuid.uuid4().hex, threading.Event()
        self._events[receipt] = event
        return receipt, event

    def on_receipt(self, frame: Any) -> None:
        event = self._events.pop(frame.headers.get("receipt-id", ""), None)
        if event is not None:
            event.set()

    def on_error(self, frame: Any) -> None:
        self.errors.append(frame.headers.get("message") or repr(frame.body)[:200])
        for event in list(self._events.values()):
            event.set()

    def on_disconnected(self) -> None:
        for event in list(self._events.values()):
            event.set()


def load(broker: AmqBroker, queue: str, count: int, body: str) -> None:
    """Put `count` persistent messages on the queue, LOAD_BATCH per transaction, each commit confirmed."""
    receipts = Receipts()
    conn = connect(broker, receipts)
    try:
        sent = 0
        while sent < count:
            tx = conn.begin()
            for _ in range(min(LOAD_BATCH, count - sent)):
                conn.send(f"/queue/{queue}", body, headers={"persistent": "true", "transaction": tx})
                sent += 1
            receipt, event = receipts.new()
            conn.commit(tx, headers={"receipt": receipt})
            if not event.wait(RECEIPT_TIMEOUT) or receipts.errors:
                raise RuntimeError(f"loading {queue}: the broker did not confirm a commit: {receipts.errors}")
    finally:
        conn.disconnect()


class _Browser(stomp.ConnectionListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.count = 0
        self.ended = threading.Event()

    def on_message(self, frame: Any) -> None:
        if frame.headers.get("browser") == "end":
            self.ended.set()
        else:
            self.count += 1

    def on_disconnected(self) -> None:
        self.ended.set()


def browse(broker: AmqBroker, queue: str) -> int:
    """How many messages the queue holds (ActiveMQ's queue browser: it ends with a `browser:end` frame)."""
    browser = _Browser()
    conn = connect(broker, browser)
    try:
        conn.subscribe(f"/queue/{queue}", id="browse", ack="auto", headers={"browser": "true"})
        if not browser.ended.wait(60.0):
            raise RuntimeError(f"browsing {queue}: no end of the browse within 60s")
        return browser.count
    finally:
        conn.disconnect()


class _Drainer(stomp.ConnectionListener):  # type: ignore[misc]
    def __init__(self, count: int) -> None:
        self.left = count
        self.done = threading.Event()
        if count <= 0:
            self.done.set()

    def on_message(self, frame: Any) -> None:
        self.left -= 1
        if self.left <= 0:
            self.done.set()


def drain(broker: AmqBroker, queue: str, count: int) -> None:
    """Take (ack=auto) the `count` messages the queue holds, so that the broker's store stays small."""
    drainer = _Drainer(count)
    conn = connect(broker, drainer)
    try:
        conn.subscribe(f"/queue/{queue}", id="drain", ack="auto", headers={"activemq.prefetchSize": "1000"})
        if not drainer.done.wait(60.0):
            raise RuntimeError(f"draining {queue}: {drainer.left} of {count} messages did not come within 60s")
    finally:
        conn.disconnect()


def broker_cpu(broker: AmqBroker) -> float:
    """CPU seconds (user + system, all its threads) the broker's JVM has used so far, from /proc."""
    if broker.process is None:
        return 0.0
    fields = read_text(Path(f"/proc/{broker.process.pid}/stat")).rpartition(")")[2].split()
    try:
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (IndexError, ValueError):
        return 0.0


# --- measuring -----------------------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    count: int = 0  # messages in the measured window
    seconds: float = 0.0
    client_cpu: float = 0.0  # CPU seconds of this process in the window (all its threads)
    broker_cpu: float = 0.0
    done: int = 0  # consumption: acknowledgements in all; sends: messages sent in all
    expected: int = 0
    left: int | None = None  # consumption: messages left on the queue afterwards; sends: messages on it
    consumed: bool = False  # a consumption run (else sends)
    errors: int = 0
    first_error: str = ""

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0

    def per_msg_us(self, seconds: float) -> float:
        return seconds * 1e6 / self.count if self.count else float("nan")

    @property
    def problems(self) -> list[str]:
        found = []
        if self.errors:
            found.append(f"{self.errors} error(s), the first: {self.first_error}")
        if self.done != self.expected:
            found.append(f"{self.done} of {self.expected} messages done")
        if self.consumed and self.left:
            found.append(f"{self.left} message(s) left on the queue")
        return found


class AckCounter:
    """Counts acknowledgements; the clock (and both CPU meters) read at the `warmup`-th and the last."""

    def __init__(self, broker: AmqBroker, warmup: int, total: int) -> None:
        self.broker, self.warmup, self.total = broker, warmup, total
        self.count = 0
        self._lock = threading.Lock()
        self.done = threading.Event()
        self.start: tuple[float, float, float] | None = None
        self.end: tuple[float, float, float] | None = None

    def _meters(self) -> tuple[float, float, float]:
        return time.monotonic(), time.process_time(), broker_cpu(self.broker)

    def hit(self) -> None:
        with self._lock:
            self.count += 1
            count = self.count
        if count == self.warmup:
            self.start = self._meters()
        elif count == self.total:
            self.end = self._meters()
            self.done.set()

    def wait(self, run: Run, timeout: float) -> None:
        if not self.done.wait(timeout):
            run.errors += 1
            run.first_error = run.first_error or f"{self.count} of {self.total} acknowledged within {timeout:.0f}s"

    def settle(self, run: Run) -> None:
        run.done, run.expected = self.count, self.total
        if self.start is not None and self.end is not None:
            run.count = self.total - self.warmup
            run.seconds = self.end[0] - self.start[0]
            run.client_cpu = self.end[1] - self.start[1]
            run.broker_cpu = self.end[2] - self.start[2]


class BareConsumer(stomp.ConnectionListener):  # type: ignore[misc]
    """The peer: one connection, `subscriptions` subscriptions of prefetch 1 with ack=client-individual;
    each frame decoded and ACKed on its subscription's thread, or on stomp.py's listener thread."""

    def __init__(self, broker: AmqBroker, queue: str, subscriptions: int, counter: AckCounter,
                 in_listener: bool, nodelay: bool) -> None:
        self.counter, self.in_listener = counter, in_listener
        self.errors: list[str] = []
        self.frames: dict[str, Any] = {}
        self.threads: list[threading.Thread] = []
        if not in_listener:
            import queue as queues
            for i in range(subscriptions):
                frames: queues.SimpleQueue[Any] = queues.SimpleQueue()
                self.frames[f"s{i}"] = frames
                self.threads.append(threading.Thread(target=self._serve, args=(frames,), name=f"peer-{i}",
                                                     daemon=True))
        for thread in self.threads:
            thread.start()
        self.conn = connect(broker, self, nodelay)
        for i in range(subscriptions):
            self.conn.subscribe(f"/queue/{queue}", id=f"s{i}", ack="client-individual",
                                headers={"activemq.prefetchSize": "1"})

    def _consume(self, frame: Any) -> None:
        frame.body.decode("utf-8")  # the handler: nothing but the text
        self.conn.ack(frame.headers["ack"])
        self.counter.hit()

    def _serve(self, frames: Any) -> None:
        while (frame := frames.get()) is not None:
            try:
                self._consume(frame)
            except Exception as e:
                self.errors.append(f"{type(e).__name__}: {e}")

    def on_message(self, frame: Any) -> None:
        if self.in_listener:
            self._consume(frame)
        else:
            self.frames[frame.headers["subscription"]].put(frame)

    def on_error(self, frame: Any) -> None:
        self.errors.append(frame.headers.get("message") or repr(frame.body)[:200])

    def close(self) -> None:
        try:
            self.conn.disconnect()
        finally:
            for frames in self.frames.values():
                frames.put(None)
            for thread in self.threads:
                thread.join(10.0)


class AckHook:
    """Counts the jms interface's acknowledgements: wraps `Interface._ack` while active."""

    def __init__(self, counter: AckCounter) -> None:
        self.counter = counter
        self._original: Callable[..., bool] = jms.Interface._ack

    def __enter__(self) -> AckHook:
        original, counter = self._original, self.counter

        def _ack(self: jms.Interface, link: jms.Link, ack: str) -> bool:
            done = original(self, link, ack)
            counter.hit()
            return done

        jms.Interface._ack = _ack  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        jms.Interface._ack = self._original  # type: ignore[method-assign]


class Bench:
    def __init__(self, args: argparse.Namespace, base: Path, broker: AmqBroker) -> None:
        self.args, self.base, self.broker = args, base, broker
        self.body = "x" * args.size
        self.nodelay = not args.peer_nagle
        self.cages: list[InProcessCage] = []
        self.log_problems: list[str] = []

    def cage(self, what: str, interfaces: dict[str, dict[str, Any]], resources: dict[str, dict[str, Any]],
             files: dict[str, str]) -> InProcessCage:
        cage = InProcessCage(self.base / f"{what}-{len(self.cages)}", THREAD_COUNT, resources,
                             interfaces=interfaces, files=files, request_timeout=60.0)
        self.cages.append(cage)
        return cage

    def queue(self, what: str) -> str:
        return f"bench.{what}.{uuid.uuid4().hex[:8]}"

    def timeout(self, messages: int) -> float:
        return 60.0 + messages / 50

    # --- consumption ---

    def consume_peer(self, concurrency: int, in_listener: bool) -> Run:
        where = "listener" if in_listener else f"{concurrency} thread(s)"
        run = Run(f"stomp.py, {concurrency} sub(s), ack on {where}", consumed=True)
        queue = self.queue("consume.stomp")
        load(self.broker, queue, self.args.messages, self.body)
        counter = AckCounter(self.broker, self.args.warmup, self.args.messages)
        consumer = BareConsumer(self.broker, queue, concurrency, counter, in_listener, self.nodelay)
        try:
            counter.wait(run, self.timeout(self.args.messages))
        finally:
            consumer.close()
        counter.settle(run)
        if consumer.errors:
            run.errors += len(consumer.errors)
            run.first_error = run.first_error or consumer.errors[0]
        run.left = self.left_on(queue, 0)
        return run

    def consume_pmnc(self, concurrency: int) -> Run:
        run = Run(f"pmnc jms, concurrency {concurrency}", consumed=True)
        queue = self.queue("consume.pmnc")
        load(self.broker, queue, self.args.messages, self.body)
        counter = AckCounter(self.broker, self.args.warmup, self.args.messages)
        interface = self.broker.config(queue=queue, concurrency=concurrency, heartbeat=HEARTBEAT)
        cage = self.cage("consume", {"jms_1": interface}, {}, {"interface_jms_1.py": HANDLER})
        with AckHook(counter):
            cage.start()
            try:
                counter.wait(run, self.timeout(self.args.messages))
            finally:
                cage.stop()
        counter.settle(run)
        self.log_problems += cage.problems()
        run.left = self.left_on(queue, 0)
        return run

    # --- sends ---

    def drive(self, run: Run, threads: int, client: Callable[[int], AbstractContextManager[Callable[[], None]]]) \
            -> None:
        """`threads` threads, each with its client set up, `--send-warmup`/threads sends, then (timed, all
        together) `--sends`/threads sends each."""
        warm, each = -(-self.args.send_warmup // threads), -(-self.args.sends // threads)
        ready, finished = threading.Barrier(threads + 1), threading.Barrier(threads + 1)
        go = threading.Event()
        lock = threading.Lock()
        sent = [0]

        def worker(i: int) -> None:
            try:
                with client(i) as step:
                    for _ in range(warm):
                        step()
                    ready.wait()
                    go.wait()
                    done = 0
                    for _ in range(each):
                        try:
                            step()
                            done += 1
                        except Exception as e:
                            with lock:
                                run.errors += 1
                                run.first_error = run.first_error or f"{type(e).__name__}: {e}"
                    with lock:
                        sent[0] += done
                    finished.wait()
            except threading.BrokenBarrierError:
                pass
            except Exception as e:
                with lock:
                    run.errors += 1
                    run.first_error = run.first_error or f"setting up or warming up: {type(e).__name__}: {e}"
                ready.abort()
                finished.abort()

        workers = [threading.Thread(target=worker, args=(i,), name=f"client-{i}", daemon=True)
                   for i in range(threads)]
        for thread in workers:
            thread.start()
        try:
            ready.wait(self.timeout(self.args.send_warmup))
        except threading.BrokenBarrierError:
            go.set()
            for thread in workers:
                thread.join(10.0)
            raise RuntimeError(f"{run.name}: the clients could not start: {run.first_error}") from None
        began, cpu, broker = time.monotonic(), time.process_time(), broker_cpu(self.broker)
        go.set()
        try:
            finished.wait(self.timeout(self.args.sends))
        except threading.BrokenBarrierError:
            pass
        run.seconds = time.monotonic() - began
        run.client_cpu = time.process_time() - cpu
        run.broker_cpu = broker_cpu(self.broker) - broker
        finished.abort()
        for thread in workers:
            thread.join(10.0)
        run.count = sent[0]
        run.done, run.expected = sent[0] + warm * threads, (each + warm) * threads

    def send_peer(self, threads: int) -> Run:
        run = Run(f"stomp.py, {threads} connection(s)")
        queue = self.queue("send.stomp")
        body = self.body

        @contextmanager
        def client(i: int) -> Iterator[Callable[[], None]]:
            receipts = Receipts()
            conn = connect(self.broker, receipts, self.nodelay)

            def step() -> None:
                tx = uuid.uuid4().hex
                conn.begin(tx)
                conn.send(f"/queue/{queue}", body, headers={"persistent": "true", "transaction": tx})
                receipt, event = receipts.new()
                conn.commit(tx, headers={"receipt": receipt})
                if not event.wait(RECEIPT_TIMEOUT) or receipts.errors:
                    raise RuntimeError(f"the commit was not confirmed: {receipts.errors[-1:]}")
            try:
                yield step
            finally:
                conn.disconnect()

        self.drive(run, threads, client)
        self.check_sent(run, queue)
        return run

    def send_pmnc(self, cage: InProcessCage, resource: str, queue: str, threads: int) -> Run:
        run = Run(f"pmnc jms_1.send, {threads} thread(s)")
        transaction, body, timeout = cage.transaction, self.body, self.timeout(self.args.sends) + 60.0

        @contextmanager
        def client(i: int) -> Iterator[Callable[[], None]]:
            with attached(Request(timeout=timeout, interface="bench", protocol="bench")):
                def step() -> None:
                    getattr(transaction, resource).send(body)
                yield step

        self.drive(run, threads, client)
        self.check_sent(run, queue)
        return run

    def left_on(self, queue: str, expected: int) -> int:
        """What the queue holds, browsed until it is `expected` (ActiveMQ removes acknowledged
        messages from its store a moment after the ACK: a browse just after may still see them),
        or 10 s have passed."""
        deadline = time.monotonic() + 10.0
        while (count := browse(self.broker, queue)) != expected and time.monotonic() < deadline:
            time.sleep(0.1)
        return count

    def check_sent(self, run: Run, queue: str) -> None:
        run.left = self.left_on(queue, run.done)
        if run.left != run.done:
            run.errors += 1
            run.first_error = run.first_error or f"{run.left} messages on the queue, {run.done} sent"
        else:
            drain(self.broker, queue, run.left)  # the broker's store and memory kept small


# --- the run -------------------------------------------------------------------------------------------


def row(run: Run) -> str:
    left = "-" if run.left is None else str(run.left)
    return (f"{run.name:<40}{run.rate:>8.0f}{run.done:>8}{left:>8}{run.errors:>7}"
            f"{run.per_msg_us(run.client_cpu):>10.0f}us{run.per_msg_us(run.broker_cpu):>10.0f}us"
            f"{run.client_cpu / run.seconds * 100 if run.seconds else 0:>8.0f}%")


def header(title: str, what: str) -> str:
    return f"{title:<40}{'msg/s':>8}{what:>8}{'queue':>8}{'errors':>7}{'CPU/msg':>12}{'broker/msg':>12}{'CPU':>9}"


def ratio(pmnc: Run, peer: Run) -> float:
    return pmnc.rate / peer.rate if peer.rate else float("nan")


def verdict(value: float) -> str:
    return "met" if value >= TARGET else "NOT met"


def bench(args: argparse.Namespace, broker: AmqBroker, b: Bench) -> int:
    print(f"jms_throughput: {args.rounds} round(s); consumption of {args.messages} persistent messages of "
          f"{args.size} bytes (rate after the first {args.warmup}), concurrency {args.concurrency}; "
          f"{args.sends} sends after {args.send_warmup}, threads {args.send_threads}; Python "
          f"{sys.version.split()[0]}, stomp.py {stomp.__version__}; "
          f"{os.cpu_count()} CPUs shared by the broker and this process")
    print(f"ActiveMQ ({AMQ_HOME}) on 127.0.0.1:{broker.stomp_port}, KahaDB in {broker.folder}; {pmnc_version()}")
    concurrencies = [int(k) for k in args.concurrency.split(",")]
    send_threads = [int(t) for t in args.send_threads.split(",")]

    consumed: list[dict[int, tuple[Run, Run, Run]]] = []
    sent: list[dict[int, tuple[Run, Run]]] = []
    for r in range(args.rounds):
        print(f"round {r + 1}: consumption ...", flush=True)
        round_consumed = {}
        for k in concurrencies:
            peer = b.consume_peer(k, in_listener=False)
            listener = b.consume_peer(k, in_listener=True)
            pmnc = b.consume_pmnc(k)
            round_consumed[k] = (peer, listener, pmnc)
        consumed.append(round_consumed)
        print(f"round {r + 1}: sends ...", flush=True)
        round_sent = {}
        resources = {t: (f"jms_t{t}", b.queue("send.pmnc")) for t in send_threads}
        sender = b.cage("send", {}, {name: broker.config(queue=queue, heartbeat=HEARTBEAT, pool__size=t)
                                     for t, (name, queue) in resources.items()}, {})
        sender.start()
        try:
            for t in send_threads:
                peer = b.send_peer(t)
                pmnc = b.send_pmnc(sender, *resources[t], t)
                round_sent[t] = (peer, pmnc)
        finally:
            sender.stop()
            b.log_problems += sender.problems()
        sent.append(round_sent)

    print()
    print(header("consumption", "acked"))
    for r, round_consumed in enumerate(consumed):
        for k in concurrencies:
            for run in round_consumed[k]:
                print(row(run) + f"  round {r + 1}")
    print(header("sends", "sent"))
    for r, round_sent in enumerate(sent):
        for t in send_threads:
            for run in round_sent[t]:
                print(row(run) + f"  round {r + 1}")
    print()
    failed = False
    for runs in [*[rc[k] for rc in consumed for k in concurrencies], *[rs[t] for rs in sent for t in send_threads]]:
        for run in runs:
            for problem in run.problems:
                failed = True
                print(f"{run.name}: {problem}")
    summary = []
    for k in concurrencies:
        ratios = [ratio(rc[k][2], rc[k][0]) for rc in consumed]
        median = statistics.median(ratios)
        pmnc_rate = statistics.median(rc[k][2].rate for rc in consumed)
        peer_rate = statistics.median(rc[k][0].rate for rc in consumed)
        listener_rate = statistics.median(rc[k][1].rate for rc in consumed)
        print(f"consumption, concurrency {k}: pmnc {pmnc_rate:.0f}/s, stomp.py {peer_rate:.0f}/s "
              f"({listener_rate:.0f}/s acked on the listener); ratio per round "
              f"{', '.join(f'{x:.2f}' for x in ratios)}, median {median:.2f} (target >= {TARGET}: {verdict(median)})")
        summary.append(f"consume x{k} {median:.2f}")
    for t in send_threads:
        ratios = [ratio(rs[t][1], rs[t][0]) for rs in sent]
        median = statistics.median(ratios)
        pmnc_rate = statistics.median(rs[t][1].rate for rs in sent)
        peer_rate = statistics.median(rs[t][0].rate for rs in sent)
        print(f"sends, {t} thread(s): pmnc {pmnc_rate:.0f}/s, stomp.py {peer_rate:.0f}/s; ratio per round "
              f"{', '.join(f'{x:.2f}' for x in ratios)}, median {median:.2f} (target >= {TARGET}: {verdict(median)})")
        summary.append(f"send x{t} {median:.2f}")
    for line in b.log_problems[:5]:
        print(f"cage log: {line}")
    print(f"jms_throughput: median ratios pmnc/stomp.py: {', '.join(summary)} (target >= {TARGET})")
    if failed:
        print("jms_throughput: NOT CLEAN: see above")
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=5000, help="messages loaded and consumed per run (5000)")
    parser.add_argument("--warmup", type=int, default=200, help="acknowledgements before the clock starts (200)")
    parser.add_argument("--concurrency", default="1,4", help="subscriptions (pmnc: concurrency), a list (1,4)")
    parser.add_argument("--sends", type=int, default=2000, help="transactional sends measured per run (2000)")
    parser.add_argument("--send-warmup", type=int, default=100, help="sends before the clock starts (100)")
    parser.add_argument("--send-threads", default="1", help="sending threads (connections), a list (1)")
    parser.add_argument("--size", type=int, default=100, help="bytes of each message's text (100)")
    parser.add_argument("--rounds", type=int, default=3, help="times everything is measured; medians (3)")
    parser.add_argument("--peer-nagle", action="store_true",
                        help="leave Nagle's algorithm on in the peer's connections, as stomp.py does (TCP_NODELAY)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders (cage logs, broker data)")
    args = parser.parse_args(argv)
    try:
        concurrencies = [int(k) for k in args.concurrency.split(",")]
        send_threads = [int(t) for t in args.send_threads.split(",")]
    except ValueError:
        parser.error("--concurrency and --send-threads are comma-separated whole numbers")
    if (args.messages < 2 or not 1 <= args.warmup < args.messages or args.sends < 1 or args.send_warmup < 1
            or args.size < 1 or args.rounds < 1 or not all(1 <= k <= THREAD_COUNT for k in concurrencies)
            or not all(t >= 1 for t in send_threads)):
        parser.error(f"--warmup must be at least 1 and below --messages, --sends, --send-warmup, --size and "
                     f"--rounds at least 1, concurrencies 1 to {THREAD_COUNT}, send threads at least 1")
    if not (AMQ_HOME / "bin" / "activemq.jar").exists() or shutil.which("java") is None:
        print(f"jms_throughput: no ActiveMQ in {AMQ_HOME} (Debian package activemq) or no java", file=sys.stderr)
        return 2

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    base = Path(tempfile.mkdtemp(prefix="pmnc-bench-"))
    broker: AmqBroker | None = None
    b: Bench | None = None
    try:
        broker = AmqBroker()
        b = Bench(args, base, broker)
        return bench(args, broker, b)
    except (RuntimeError, OSError, stomp.exception.StompException) as e:
        sys.stdout.flush()
        print(f"jms_throughput: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        sys.stdout.flush()
        print("jms_throughput: interrupted", file=sys.stderr)
        return 130
    finally:
        stopped = [cage.stop() for cage in (b.cages if b is not None else [])]
        stopped = [what for what in stopped if what]
        if broker is not None:
            broker.stop()
            stopped.append("ActiveMQ stopped")
        print(f"stopped: {'; '.join(stopped) or 'nothing was running'}")
        if args.keep:
            print(f"kept: {base}" + (f" {broker.folder}" if broker is not None else ""))
        else:
            shutil.rmtree(base, ignore_errors=True)
            if broker is not None:
                shutil.rmtree(broker.folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
