"""Hostile clients against the HTTP interface, over real sockets: fuzzing, slowloris,
connection floods, pipelining abuse, half-closed and reset connections.

Good requests carry a unique token in their URL that the handler echoes, so a
client can tell its own answers from anybody else's.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import logging
import os
import random
import re
import resource
import select
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httptools
import pytest
from conftest import CageProcess, InProcessCage, http_config, module_source, mutate, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pmnc.protocols.http import MAX_PIPELINED

HANDLER = module_source("""
    import os
    import time

    def process_request(request, response):
        path, _, query = request["url"].partition("?")
        if path == "/token":  # the token back, as the bytes it came in
            response["content"] = b"token:" + query.encode("latin-1")
        elif path == "/kb":
            response["content"] = b"k" * 1024 * int(query or 1)
        elif path == "/gate":  # busy until the test creates the file
            end = time.monotonic() + 10.0
            while not os.path.exists(query) and time.monotonic() < end:
                time.sleep(0.01)
            response["content"] = b"released"
        else:
            response["content"] = b"Hello, world !"
""", ["process_request"])

# small enough that the fuzzer's oversized pieces cross them cheaply
LIMITS = {"max_url_size": 512, "max_header_size": 2048, "max_body_size": 4096}

Response = tuple[int, dict[str, str], bytes]


# --- helpers ---------------------------------------------------------------------------------------


def start(in_process_cage: Callable[..., InProcessCage], **config: Any) -> InProcessCage:
    tree = {key: config.pop(key) for key in ("request_timeout", "thread_count", "log_level") if key in config}
    return in_process_cage(interfaces={"http": http_config(**config)}, files={"interface_http.py": HANDLER}, **tree)


def interface(cage: InProcessCage) -> Any:
    return cage.cage.interfaces.live["http"][0]


def new_token() -> str:
    return uuid.uuid4().hex


def connect(address: tuple[str, int], timeout: float = 5.0, source: str = "127.0.0.1") -> socket.socket:
    """A client connection from `source` (any 127/8 address is this machine's loopback)."""
    sock = socket.create_connection(address, timeout=timeout, source_address=(source, 0))
    sock.settimeout(timeout)
    return sock


def reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class Reader:
    """Responses off a socket, parsed by a real HTTP parser; 1xx ones included."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parser = httptools.HttpResponseParser(self)
        self.responses: collections.deque[Response] = collections.deque()
        self.eof = False
        self._headers: dict[str, str] = {}
        self._body = bytearray()

    def on_message_begin(self) -> None:
        self._headers, self._body = {}, bytearray()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.responses.append((self.parser.get_status_code(), self._headers, bytes(self._body)))

    def feed(self, data: bytes) -> None:
        if data:
            self.parser.feed_data(data)
        else:
            self.eof = True

    def response(self, final: bool = True) -> Response:
        """The next response (skipping 1xx ones if `final`); the socket's timeout applies."""
        while True:
            while not self.responses:
                assert not self.eof, "the connection was closed before a complete response"
                self.feed(self.sock.recv(65536))
            answer = self.responses.popleft()
            if not (final and 100 <= answer[0] < 200):
                return answer

    def drain(self, until: float) -> None:
        """Read whatever comes until EOF, a reset or the monotonic time `until`."""
        while not self.eof and time.monotonic() < until:
            readable, _, _ = select.select([self.sock], [], [], max(0.0, until - time.monotonic()))
            if not readable:
                return
            try:
                self.feed(self.sock.recv(65536))
            except (ConnectionResetError, TimeoutError):
                return


def token_exchange(sock: socket.socket, reader: Reader, template: str = "GET /token?{} HTTP/1.1\r\n\r\n") -> Response:
    """One good request on `sock`; its answer must carry its own token."""
    token = new_token()
    sock.sendall(template.format(token).encode())
    status, headers, body = reader.response()
    assert (status, body) == (200, b"token:" + token.encode()), (status, headers, body)
    return status, headers, body


def served(address: tuple[str, int], timeout: float = 3.0) -> bool:
    """A fresh client gets its own answer."""
    with connect(address, timeout) as sock:
        token_exchange(sock, Reader(sock), "GET /token?{} HTTP/1.1\r\nConnection: close\r\n\r\n")
    return True


def try_served(address: tuple[str, int], timeout: float = 1.0, source: str = "127.0.0.1") -> int:
    """A fresh client's status: 200 with its own token, or the refusal (0 for a reset or a close)."""
    try:
        with connect(address, timeout, source) as sock:
            token = new_token()
            sock.sendall(f"GET /token?{token} HTTP/1.1\r\nConnection: close\r\n\r\n".encode())
            status, _, body = Reader(sock).response()
    except (ConnectionError, AssertionError):
        return 0
    if status == 200:
        assert body == b"token:" + token.encode()
    return status


def statuses_over(address: tuple[str, int], seconds: float, pause: float) -> list[int]:
    """Fresh clients one after another for `seconds` (a `pause` between them): their statuses."""
    statuses: list[int] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        statuses.append(try_served(address, 2.0))
        time.sleep(pause)
    return statuses


def log_records(cage: InProcessCage | CageProcess, code: str) -> list[str]:
    return [line for line in cage.log_text().splitlines() if f" {code} [" in line[:20]]


def assert_quiet_log(cage: InProcessCage | CageProcess) -> None:
    """No errors or warnings; the only INFO records from the loop are the bad requests."""
    assert log_records(cage, "ERR") == []
    assert log_records(cage, "WRN") == []
    unexpected = [line for line in log_records(cage, "INF")
                  if "[asyncio]" in line and not re.search(r"interface http: bad request from 127\.0\.0\.1: \d{3} ",
                                                           line)]
    assert unexpected == []


class Sampler:
    """The largest value `probe()` returns, polled on a thread while the block runs."""

    def __init__(self, probe: Callable[[], int], interval: float = 0.0005) -> None:
        self.probe, self.interval = probe, interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.probe())
            except RuntimeError:  # a set changed size under us: sample again
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)


def queued(iface: Any) -> int:
    return max((len(connection.queue) for connection in list(iface.connections)), default=0)


def write_buffered(iface: Any) -> int:
    total = 0
    for connection in list(iface.connections):
        if connection.transport is not None:
            total += connection.transport.get_write_buffer_size()
    return total


def slots_by_ip(iface: Any) -> dict[str, int]:
    return {ip: len(held) for ip, held in iface.slots.by_ip.items()}


def rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture
def loop_errors() -> Iterator[list[str]]:
    """What asyncio logs (a protocol callback that raised, say) and exceptions that end threads."""
    seen: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(f"asyncio: {record.getMessage()} {record.exc_info!r}")

    handler = Catch(logging.WARNING)
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    previous_hook = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        seen.append(f"thread {args.thread.name if args.thread else '?'}: {args.exc_value!r}")
        previous_hook(args)

    threading.excepthook = hook
    yield seen
    threading.excepthook = previous_hook
    logger.removeHandler(handler)


@pytest.fixture
def many_files() -> Iterator[int]:
    """Room for a few thousand sockets in this process; the limit is put back afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if wanted < 2600:
        pytest.skip(f"the open-files limit is {hard}, a thousand connections need more")
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield wanted
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Path]:
    """A file whose existence releases handlers busy in /gate; always released at the end."""
    path = tmp_path / "gate"
    yield path
    path.touch()


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Sockets a test opens in bulk; all closed at the end."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


# --- 1. fuzzing over real sockets -------------------------------------------------------------------

VALID = (
    "GET /token?{} HTTP/1.1\r\nHost: pmnc\r\n\r\n",
    "POST /token?{} HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    "POST /token?{} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "GET /token?{} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "POST /token?{} HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
)

OVERSIZED = (  # each crosses one of LIMITS (or breaks the framing) with a large piece
    "GET /token?{}" + "u" * 600 + " HTTP/1.1\r\n\r\n",
    "GET /token?{} HTTP/1.1\r\nX-Big: " + "h" * 2100 + "\r\n\r\n",
    "GET /token?{} HTTP/1.1\r\n" + "X-Many: h\r\n" * 300 + "\r\n",
    "POST /token?{} HTTP/1.1\r\nContent-Length: 5000\r\n\r\n" + "b" * 5000,
    "POST /token?{} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + "800\r\n" + "c" * 2048 + "\r\n" * 3,
    "POST /token?{} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + "f" * 300 + "\r\n",
    "POST /token?{} HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
)


@dataclasses.dataclass
class Hostile:
    """One hostile client: what it sends, in which pieces and at what pace, and how it leaves."""

    shape: str  # mutated | oversized | garbage
    templates: list[int]
    edits: list[tuple[int, int, int]]
    garbage: bytes
    cuts: list[int]
    pauses: list[float]
    ending: str  # read | close | reset | half-close

    def data(self) -> bytes:
        if self.shape == "garbage":
            return self.garbage
        table = OVERSIZED if self.shape == "oversized" else VALID
        stream = "".join(table[i % len(table)].format(new_token()) for i in self.templates).encode()
        return mutate(stream, self.edits)


hostiles = st.builds(
    Hostile,
    shape=st.sampled_from(["mutated", "mutated", "oversized", "garbage"]),
    templates=st.lists(st.integers(0, 20), min_size=1, max_size=3),
    edits=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    garbage=st.binary(max_size=600),
    cuts=st.lists(st.integers(0, 10_000), max_size=5),
    pauses=st.lists(st.sampled_from([0.0, 0.0, 0.001, 0.01, 0.03]), min_size=6, max_size=6),
    ending=st.sampled_from(["read", "read", "close", "reset", "half-close"]),
)


def run_hostile(address: tuple[str, int], hostile: Hostile) -> None:
    """Send the bytes as told; whatever comes back must be well-formed HTTP, and a
    token it echoes must be one this client sent."""
    data = hostile.data()
    bounds = sorted({0, len(data), *(cut % (len(data) + 1) for cut in hostile.cuts)})
    sock = connect(address, 2.0)
    reader = Reader(sock)
    try:
        for (a, b), pause in zip(itertools.pairwise(bounds), hostile.pauses, strict=False):
            try:
                sock.sendall(data[a:b])
            except OSError:  # the server has already refused and closed
                break
            if pause:
                time.sleep(pause)
        if hostile.ending == "half-close":
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if hostile.ending in ("read", "half-close"):
            reader.drain(time.monotonic() + 0.3)
    finally:
        if hostile.ending == "reset":
            reset(sock)
        else:
            sock.close()
    for status, _, body in reader.responses:
        assert 100 <= status <= 599
        if status == 200 and body.startswith(b"token:"):
            assert body[6:] in data, f"a hostile client got an answer that was not for it: {body[:80]!r}"


def run_good(address: tuple[str, int], requests: int) -> int:
    """Keep-alive requests of each valid shape, every one checked for its own token."""
    answered = 0
    sock = connect(address, 5.0)
    try:
        reader = Reader(sock)
        for i in range(requests):
            template = VALID[i % len(VALID)]
            if i % 2:  # in two pieces, a moment apart
                token = new_token()
                data = template.format(token).encode()
                sock.sendall(data[:len(data) // 2])
                time.sleep(0.002)
                sock.sendall(data[len(data) // 2:])
                status, headers, body = reader.response()
                assert (status, body) == (200, b"token:" + token.encode()), (status, headers, body)
            else:
                token_exchange(sock, reader, template)
            answered += 1
    finally:
        sock.close()
    return answered


def test_fuzzed_clients_beside_good_ones(in_process_cage: Callable[..., InProcessCage],
                                         loop_errors: list[str]) -> None:
    cage = start(in_process_cage, request_timeout=2.0, log_level="INFO", keep_alive_idle_timeout=5.0, **LIMITS)
    address = cage.address()
    iface = interface(cage)

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(hostiles, min_size=1, max_size=6))
    def round_of(hostile: list[Hostile]) -> None:
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(hostile) + 3) as pool:
            bad = [pool.submit(run_hostile, address, h) for h in hostile]
            good = [pool.submit(run_good, address, 6) for _ in range(3)]
            for future in bad:
                future.result()
            assert [future.result() for future in good] == [6, 6, 6]
        assert served(address)

    round_of()
    # every connection ends and no request is left counted
    wait_until(lambda: not iface.connections and cage.cage.runtime.intake.active == 0, 5.0,
               message="all connections closed and no request in flight")
    assert served(address)
    assert loop_errors == []
    assert_quiet_log(cage)
    assert log_records(cage, "INF"), "the bad requests were logged"


def hostile_connection(address: tuple[str, int], rng: random.Random) -> None:
    """One hostile connection, decided by `rng`: garbage, a mutated, oversized, truncated or
    pipelined stream, ended by a close or a reset without reading."""
    choice = rng.randrange(5)
    if choice == 0:
        data = rng.randbytes(rng.randrange(1, 4096))
    elif choice == 1:
        stream = "".join(rng.choice(VALID).format(new_token()) for _ in range(3)).encode()
        data = mutate(stream, [(rng.randrange(4), rng.randrange(10_000), rng.randrange(256)) for _ in range(3)])
    elif choice == 2:
        data = rng.choice(OVERSIZED).format(new_token()).encode()
    elif choice == 3:
        data = rng.choice(VALID).format(new_token()).encode()[:-rng.randrange(1, 10)]
    else:
        data = "".join(rng.choice(VALID[:3]).format(new_token()) for _ in range(40)).encode()
    with connect(address, 2.0) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass
        if rng.random() < 0.5:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_memory_stays_bounded_under_thousands_of_hostile_connections(
        cage_process: Callable[..., CageProcess]) -> None:
    process = cage_process(interfaces={"http": http_config(max_connections=200, **LIMITS)},
                           files={"interface_http.py": HANDLER}, request_timeout=2.0, log_level="INFO")
    address = ("127.0.0.1", process.port())
    pid = process.child_pids()[0]

    def flood(connections: int, seed: int) -> None:
        rngs = [random.Random(seed * 100 + i) for i in range(4)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            for future in [pool.submit(lambda r=rng: [hostile_connection(address, r)
                                                      for _ in range(connections // 4)]) for rng in rngs]:
                future.result()

    def settled() -> bool:
        return open_fds(pid) <= fds_before + 2

    fds_before = open_fds(pid)
    flood(2000, 1)  # the allocator's arenas, the handler's module: warmed up
    wait_until(settled, 10.0, message="the hostile connections' sockets closed in the cage")
    before = rss_kb(pid)
    flood(4000, 2)
    wait_until(settled, 10.0, message="the hostile connections' sockets closed in the cage")
    after = rss_kb(pid)
    assert after - before < 12 * 1024, f"the cage grew from {before} kB to {after} kB"
    assert served(address)
    assert log_records(process, "ERR") == []
    assert process.wait_for_log(r"bad request from 127\.0\.0\.1: 4\d\d ")


# --- 2. slowloris --------------------------------------------------------------------------------------


def test_slowloris_holds_slots_only_until_its_header_timeout(in_process_cage: Callable[..., InProcessCage],
                                                             sockets: list[socket.socket],
                                                             loop_errors: list[str]) -> None:
    """Heads trickled into every place among the heads get 408 at header_timeout, well before
    request_timeout, and meanwhile a new client takes the place of the oldest trickler at once
    (one older than the grace)."""
    header_timeout, slots = 1.5, 20
    cage = start(in_process_cage, max_connections=slots, max_connections_per_ip=slots, request_timeout=5.0,
                 header_timeout=header_timeout, max_pending_heads=slots)
    address = cage.address()
    iface = interface(cage)
    opened: dict[socket.socket, float] = {}
    for _ in range(slots):
        sock = connect(address)
        opened[sock] = time.monotonic()
        sockets.append(sock)
        sock.sendall(b"GET /token?loris HTTP/1.1\r\nX-Slow: ")
    wait_until(lambda: len(iface.heads) == slots, 5.0, message="every place among the heads taken")
    assert len(iface.slots) == 0, "a head holds a slot"

    ended: dict[socket.socket, float] = {}
    answers: dict[socket.socket, bytes] = {sock: b"" for sock in opened}
    served_meanwhile: int | None = None
    end = time.monotonic() + header_timeout + 2.0
    while len(ended) < slots and time.monotonic() < end:
        live = [sock for sock in opened if sock not in ended]
        readable, _, _ = select.select(live, [], [], 0.02)
        for sock in readable:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            answers[sock] += data
            ended.setdefault(sock, time.monotonic())
        for sock in live:
            if sock not in ended:
                try:
                    sock.send(b"z")  # one byte at a time, never finishing the header
                except OSError:
                    ended.setdefault(sock, time.monotonic())
        if served_meanwhile is None and time.monotonic() - min(opened.values()) > iface.head_grace + 0.1:
            began = time.monotonic()
            served_meanwhile = try_served(address)
            assert time.monotonic() - began < 0.5, "the answer was not prompt"

    assert served_meanwhile == 200
    assert len(ended) == slots, "slowloris connections outlived their header_timeout"
    first = next(iter(opened))
    assert ended[first] - opened[first] < header_timeout - 0.3 and answers[first] == b"", "the oldest made room"
    lateness = [ended[sock] - opened[sock] - header_timeout for sock in opened if sock is not first]
    assert min(lateness) > -0.2, lateness
    assert max(lateness) < 0.5, lateness
    for sock, data in answers.items():
        assert data == b"" or data.startswith(b"HTTP/1.1 408 "), data[:80]
        if sock is not first:
            assert data or ended[sock] - opened[sock] > header_timeout - 0.2
    assert served(address)
    assert loop_errors == []


def test_slow_body_has_the_request_deadline_not_the_header_timeout(
        in_process_cage: Callable[..., InProcessCage]) -> None:
    """header_timeout is for the head: a body may take longer, within request_timeout."""
    cage = start(in_process_cage, request_timeout=5.0, header_timeout=0.5)
    with connect(cage.address()) as sock:
        token = new_token()
        sock.sendall(f"POST /token?{token} HTTP/1.1\r\nContent-Length: 10\r\n\r\n".encode())
        for _ in range(10):  # 1.5 s of body, three header_timeouts
            time.sleep(0.15)
            sock.sendall(b"b")
        assert Reader(sock).response()[:3:2] == (200, b"token:" + token.encode())


class Tricklers:
    """`count` slowloris clients from `source`: each sends a head a byte every `pace` seconds and
    never finishes it. A connection the cage ends is replaced at the next tick, as slowloris
    tools do, or at once with `at_once`. Runs on its own thread inside `with`."""

    HEAD = b"GET /token?loris HTTP/1.1\r\nX-Slow: "

    def __init__(self, address: tuple[str, int], count: int, pace: float = 0.5, source: str = "127.0.0.1",
                 at_once: bool = False) -> None:
        self.address, self.count, self.pace, self.source, self.at_once = address, count, pace, source, at_once
        self.made = 0  # connections made
        self.ended = 0  # connections the cage ended: refused, evicted or answered 408
        self.answers: collections.Counter[str] = collections.Counter()  # their statuses, "" for none
        self.live: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tricklers", daemon=True)

    def _fill(self) -> None:
        while len(self.live) < self.count and not self._stop.is_set():
            try:
                sock = connect(self.address, 2.0, self.source)
                sock.sendall(self.HEAD)
            except OSError:
                return
            self.live.append(sock)
            self.made += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._fill()
            for sock in list(self.live):
                try:
                    sock.send(b"z")
                except OSError:
                    self._drop(sock)
            tick = time.monotonic() + self.pace
            while self.live and not self._stop.is_set() and (left := tick - time.monotonic()) > 0:
                readable, _, _ = select.select(self.live, [], [], left)
                for sock in readable:  # an answer (408, 503) or the end: either way the cage let go
                    self.answers[self._status(sock)] += 1
                    self._drop(sock)
                if readable and self.at_once:
                    self._fill()
        for sock in self.live:
            sock.close()

    @staticmethod
    def _status(sock: socket.socket) -> str:
        try:
            return sock.recv(65536)[9:12].decode("latin-1")
        except OSError:
            return ""

    def _drop(self, sock: socket.socket) -> None:
        self.live.remove(sock)
        sock.close()
        self.ended += 1

    def __enter__(self) -> Tricklers:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10.0)


def test_tricklers_do_not_keep_normal_clients_out(in_process_cage: Callable[..., InProcessCage],
                                                   loop_errors: list[str]) -> None:
    """60 slowloris clients against 20 slots, all from the normal clients' own address: the
    tricklers wait among the heads (within their address's share of them) and hold no slot,
    and the normal clients are served."""
    cage = start(in_process_cage, max_connections=20, request_timeout=5.0, header_timeout=2.0)
    address = cage.address()
    iface = interface(cage)
    with Tricklers(address, 60) as tricklers:
        wait_until(lambda: len(iface.connections) >= 10 and tricklers.ended >= 20, 10.0,
                   message="the tricklers connected and being turned over")
        statuses = statuses_over(address, 4.0, 0.05)
    served_share = statuses.count(200) / len(statuses)
    assert served_share >= 0.9, collections.Counter(statuses)
    assert len(iface.slots) <= 20
    assert served(address)
    assert loop_errors == []


def test_tricklers_that_reconnect_at_once_do_not_keep_normal_clients_out(
        cage_process: Callable[..., CageProcess]) -> None:
    """60 slowloris clients from the normal clients' own address, each reconnecting the moment
    the cage closes it, against 20 slots (a cage process of its own, so that the tricklers
    come as fast as a real attacker's). When heads held slots, every trickler turned one over
    and reconnected at once to turn over another, and normal clients lost theirs before their
    heads were read; now tricklers wait among the heads (their address's share is 75), hold no
    slot and churn only at their header_timeout."""
    process = cage_process(interfaces={"http": http_config(max_connections=20, max_pending_heads=150,
                                                            header_timeout=2.0)},
                           files={"interface_http.py": HANDLER}, request_timeout=5.0)
    address = ("127.0.0.1", process.port())
    with Tricklers(address, 60, at_once=True) as tricklers:
        wait_until(lambda: tricklers.made >= 60, 10.0, message="the tricklers connected")
        statuses = statuses_over(address, 4.0, 0.02)  # two header_timeouts: the tricklers get 408, come back
        made = tricklers.made
    assert statuses.count(200) / len(statuses) >= 0.9, (collections.Counter(statuses), made)
    assert made < 60 * 5, f"{made} trickler connections: they are being turned over"
    assert served(address)
    assert log_records(process, "ERR") == []


def test_tricklers_beyond_their_share_of_heads_do_not_keep_normal_clients_out(
        cage_process: Callable[..., CageProcess]) -> None:
    """60 slowloris clients reconnecting at once from the normal clients' own address, against
    its share of 20 heads (max_pending_heads=40, max_connections=20): the heads stay full, and
    the oldest is dropped the moment it passes the grace, so a normal client that had to find a
    place among them was nearly always refused. Now one that finds none is kept until its first
    read, which holds its whole head: it is served; a trickler's does not: it gets 503."""
    process = cage_process(interfaces={"http": http_config(max_connections=20, max_pending_heads=40,
                                                            header_timeout=2.0)},
                           files={"interface_http.py": HANDLER}, request_timeout=5.0)
    address = ("127.0.0.1", process.port())
    with Tricklers(address, 60, at_once=True) as tricklers:
        wait_until(lambda: tricklers.made >= 60 and tricklers.ended >= 20, 10.0,
                   message="the tricklers connected and being turned over")
        statuses = statuses_over(address, 4.0, 0.02)
        made, answers = tricklers.made, tricklers.answers
    assert statuses.count(200) / len(statuses) >= 0.75, (collections.Counter(statuses), made)
    assert answers["503"] > 0 and set(answers) <= {"503", "408", ""}, answers
    assert served(address)
    assert log_records(process, "ERR") == []


def test_one_address_holds_only_its_share(in_process_cage: Callable[..., InProcessCage],
                                          sockets: list[socket.socket]) -> None:
    """Connections that cannot be dropped (bodies on their way) from one address take at most
    max_connections_per_ip slots (by default half): other addresses are still served."""
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.2", 0))
    except OSError:
        pytest.skip("127.0.0.2 is not a loopback address here")
    cage = start(in_process_cage, max_connections=6, request_timeout=10.0)
    address = cage.address()
    iface = interface(cage)
    answers = []
    for _ in range(6):
        sock = connect(address, 2.0, "127.0.0.2")
        sockets.append(sock)
        sock.sendall(b"POST /token?greedy HTTP/1.1\r\nContent-Length: 100\r\n\r\nb")  # and no more of it
        readable, _, _ = select.select([sock], [], [], 0.3)
        answers.append(sock.recv(65536) if readable else b"")
    assert answers[:3] == [b""] * 3  # still sending their bodies
    for refusal in answers[3:]:
        assert refusal.startswith(b"HTTP/1.1 503 ") and refusal.endswith(b"too many connections from your address")
    assert slots_by_ip(iface) == {"127.0.0.2": 3}
    for source in ("127.0.0.3", "127.0.0.4", "127.0.0.1"):
        assert try_served(address, 2.0, source) == 200
    # the cage closes a served connection just after its answer is written
    wait_until(lambda: slots_by_ip(iface) == {"127.0.0.2": 3}, 5.0, message="only the greedy address holding slots")


# --- 3. a thousand idle connections --------------------------------------------------------------------


def test_thousand_silent_connections_do_not_keep_a_client_out(
        in_process_cage: Callable[..., InProcessCage], many_files: int, sockets: list[socket.socket],
        loop_errors: list[str]) -> None:
    """Silent connections hold no slot, and at the limit of heads the oldest one that has waited
    longer than the grace makes room, so a client that speaks at once is served however many
    silent ones there are."""
    cage = start(in_process_cage, max_connections=100, request_timeout=5.0)
    address = cage.address()
    iface = interface(cage)
    began = time.monotonic()
    for _ in range(1000):
        sockets.append(connect(address))
    wait_until(lambda: len(iface.heads) == iface.max_pending_heads_per_ip, 5.0, message="the address's share of heads")
    assert len(iface.slots) == 0
    # heads younger than the grace are not dropped (they may be a batch of accepts not yet read)
    wait_until(lambda: time.monotonic() - began > iface.head_grace, 5.0, message="the first heads past the grace")
    began = time.monotonic()
    assert try_served(address) == 200
    assert time.monotonic() - began < 1.0
    # the first silent connection was closed to make room
    first = Reader(sockets[0])
    first.drain(time.monotonic() + 2.0)
    assert first.eof
    assert len(iface.heads) <= iface.max_pending_heads_per_ip and len(iface.slots) <= 100
    assert loop_errors == []


def test_thousand_idle_keep_alive_connections_do_not_keep_a_client_out(
        in_process_cage: Callable[..., InProcessCage], many_files: int, sockets: list[socket.socket],
        loop_errors: list[str]) -> None:
    cage = start(in_process_cage, max_connections=100, request_timeout=5.0, keep_alive_idle_timeout=60.0)
    address = cage.address()
    iface = interface(cage)
    for _ in range(1000):
        sock = connect(address)
        sockets.append(sock)
        assert token_exchange(sock, Reader(sock))[1]["connection"] == "keep-alive"
    assert len(iface.connections) <= 100
    began = time.monotonic()
    assert try_served(address) == 200  # at once: the oldest idle connection makes room
    assert time.monotonic() - began < 0.5
    assert loop_errors == []


# --- 4. pipelining abuse ---------------------------------------------------------------------------------


def pipeline_thousand(cage: InProcessCage) -> tuple[list[bytes], list[bytes], Sampler]:
    """1000 requests in one send: (tokens sent, bodies received, the queue's sampler)."""
    iface = interface(cage)
    tokens = [f"{i:04d}-{new_token()}".encode() for i in range(1000)]
    bodies = []
    with Sampler(lambda: queued(iface)) as sampler, connect(cage.address(), 10.0) as sock:
        sock.sendall(b"".join(b"GET /token?%s HTTP/1.1\r\n\r\n" % token for token in tokens))
        reader = Reader(sock)
        for _ in tokens:
            status, _, body = reader.response()
            assert status == 200
            bodies.append(body)
        reader.drain(time.monotonic() + 2.0)
        assert reader.eof, "the connection stays open past keep_alive_max_requests"
        assert not reader.responses
    return tokens, bodies, sampler


def test_thousand_pipelined_requests_are_answered_in_order(in_process_cage: Callable[..., InProcessCage],
                                                           loop_errors: list[str]) -> None:
    cage = start(in_process_cage)  # keep_alive_max_requests is 1000: the last answer closes
    tokens, bodies, _ = pipeline_thousand(cage)
    assert bodies == [b"token:" + token for token in tokens]
    assert loop_errors == []


def test_pipelined_requests_wait_unparsed_beyond_the_limit(in_process_cage: Callable[..., InProcessCage]) -> None:
    """Reading pauses at MAX_PIPELINED parsed requests. A parsed request costs
    some 30 times its bytes, so what one read brings beyond the limit must wait
    unparsed; the slack allows for parsing a read in small slices."""
    cage = start(in_process_cage)
    _, _, sampler = pipeline_thousand(cage)
    assert sampler.peak <= 2 * MAX_PIPELINED, f"{sampler.peak} parsed requests were held by one connection"


def test_client_that_never_reads_its_answers_is_not_buffered_without_bound(
        in_process_cage: Callable[..., InProcessCage], loop_errors: list[str]) -> None:
    """Answers a client does not read must hold the cage back (asyncio's
    pause_writing), not pile up in the transport's write buffer."""
    # url + header limits above asyncio's read size, so the false 431 of
    # test_valid_pipelined_stream_split_inside_headers_is_all_answered cannot end this early
    cage = start(in_process_cage, keep_alive_max_requests=10**6, max_url_size=8192, max_header_size=1 << 20)
    address = cage.address()
    iface = interface(cage)
    bound = 4 << 20
    hog = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    hog.connect(address)
    hog.setblocking(False)
    chunk = b"GET /kb?8 HTTP/1.1\r\n\r\n" * 50  # 8 kB answers for 22-byte requests
    sent, blocked_since = 0, None
    try:
        with Sampler(lambda: write_buffered(iface), 0.005) as buffered:
            end = time.monotonic() + 10.0
            while time.monotonic() < end and sent < 16 << 20 and buffered.peak <= bound:
                try:
                    sent += hog.send(chunk)
                    blocked_since = None
                except BlockingIOError:
                    now = time.monotonic()
                    blocked_since = blocked_since or now
                    if now - blocked_since > 1.0:
                        break  # held back: the cage has stopped reading
                    select.select([], [hog], [], 0.05)
            # a stop in reading may only be the pipelining limit: watch the requests read so far get answered
            watch = time.monotonic() + 1.5
            while time.monotonic() < watch and buffered.peak <= bound:
                select.select([], [], [], 0.05)
            # another client is served meanwhile
            assert try_served(address, timeout=2.0) == 200
    finally:
        reset(hog)
    assert buffered.peak <= bound, (f"{buffered.peak >> 20} MB of answers buffered for a client that sent "
                                    f"{sent >> 10} kB of requests and never read")
    assert blocked_since is not None, f"the client sent {sent >> 10} kB without ever being held back"
    wait_until(lambda: not iface.connections, 5.0, message="the hog's connection closed")
    assert loop_errors == []


def test_valid_pipelined_stream_split_inside_headers_is_all_answered(
        in_process_cage: Callable[..., InProcessCage]) -> None:
    """Valid requests must not be refused for how the stream is cut into reads:
    one read that starts and ends inside header blocks is not one header block."""
    cage = start(in_process_cage, max_url_size=256, max_header_size=512)
    iface = interface(cage)
    tokens = [new_token() for _ in range(40)]
    stream = b"".join(b"GET /token?%s HTTP/1.1\r\nHost: pmnc\r\n\r\n" % t.encode() for t in tokens)
    with connect(cage.address()) as sock:
        sock.sendall(stream[:20])  # inside the first request's header block
        wait_until(lambda: any(c.parser.receiving for c in list(iface.connections)), 5.0,
                   message="the first piece parsed")
        sock.sendall(stream[20:-10])  # ~2 kB, one read, ending inside the last header block
        time.sleep(0.05)
        sock.sendall(stream[-10:])
        reader = Reader(sock)
        answers = [reader.response() for _ in tokens]
    assert [(status, body) for status, _, body in answers] == [(200, b"token:" + t.encode()) for t in tokens]


def test_pipelined_expect_100_continue_waits_for_the_earlier_answer(
        in_process_cage: Callable[..., InProcessCage], gate: Path) -> None:
    """Responses go in request order, interim ones too: a `100 Continue` for the
    second request must not come before the first request's answer."""
    cage = start(in_process_cage)
    with connect(cage.address()) as sock:
        sock.sendall(f"GET /gate?{gate} HTTP/1.1\r\n\r\n"
                     "POST /token?second HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n".encode())
        wait_until(lambda: cage.cage.runtime.intake.active == 1, 5.0, message="the first request in flight")
        reader = Reader(sock)
        reader.drain(time.monotonic() + 0.3)
        early = [status for status, _, _ in reader.responses]
        gate.touch()
        assert early == [], f"{early} came before the first request's answer"
        assert reader.response(final=False)[2] == b"released"
        sock.sendall(b"abc")  # whether or not a 100 came for it
        status, _, body = reader.response()
        assert (status, body) == (200, b"token:second")


# --- 5. half-closed and reset connections ------------------------------------------------------------


def test_half_closed_client_gets_its_answer(in_process_cage: Callable[..., InProcessCage]) -> None:
    cage = start(in_process_cage)
    with connect(cage.address()) as sock:
        token = new_token()
        sock.sendall(f"GET /token?{token} HTTP/1.1\r\n\r\n".encode())
        sock.shutdown(socket.SHUT_WR)
        reader = Reader(sock)
        status, _, body = reader.response()
        assert (status, body) == (200, b"token:" + token.encode())
        reader.drain(time.monotonic() + 2.0)
        assert reader.eof, "no more requests can come, yet the connection stays open"


def test_half_closed_pipelining_client_gets_every_answer(in_process_cage: Callable[..., InProcessCage]) -> None:
    cage = start(in_process_cage)
    tokens = [new_token() for _ in range(3)]
    with connect(cage.address()) as sock:
        sock.sendall(b"".join(b"GET /token?%s HTTP/1.1\r\n\r\n" % t.encode() for t in tokens))
        sock.shutdown(socket.SHUT_WR)
        reader = Reader(sock)
        assert [reader.response()[2] for _ in tokens] == [b"token:" + t.encode() for t in tokens]


@pytest.mark.parametrize("moment", ["in the head", "in the body", "in the handler", "with requests queued"])
def test_reset_harms_neither_the_cage_nor_others(in_process_cage: Callable[..., InProcessCage], gate: Path,
                                                 loop_errors: list[str], moment: str) -> None:
    cage = start(in_process_cage, log_level="INFO")
    address = cage.address()
    iface = interface(cage)
    with connect(address) as good:
        good_reader = Reader(good)
        token_exchange(good, good_reader)
        victim = connect(address)
        if moment == "in the head":
            victim.sendall(b"GET /token?x HTTP/1.1\r\nX-Half: ")
        elif moment == "in the body":
            victim.sendall(b"POST /token?x HTTP/1.1\r\nContent-Length: 1000\r\n\r\n" + b"b" * 10)
        else:
            more = b"GET /token?later HTTP/1.1\r\n\r\n" * 5 if moment == "with requests queued" else b""
            victim.sendall(f"GET /gate?{gate} HTTP/1.1\r\n\r\n".encode() + more)
            wait_until(lambda: cage.cage.runtime.intake.active == 1, 5.0, message="the request in flight")
        wait_until(lambda: len(iface.connections) == 2, 5.0, message="the victim connected")
        reset(victim)
        wait_until(lambda: len(iface.connections) == 1, 5.0, message="the reset connection gone")
        wait_until(lambda: cage.cage.runtime.intake.active == 0, 5.0, message="no request left in flight")
        token_exchange(good, good_reader)  # the same keep-alive connection goes on
    gate.touch()
    assert served(address)
    wait_until(lambda: not iface.connections and cage.cage.runtime.intake.active == 0, 5.0, message="all closed")
    assert loop_errors == []
    assert_quiet_log(cage)
