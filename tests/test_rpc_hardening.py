"""The rpc interface against hostile peers and real faults (issue 11): silent connections,
running out of descriptors, forged parameters, huge descriptions, endless polls, and
instances stopped one after another while calls go on.

Real cage processes of one install tree: `worker` serves `rpc` (its `probe` module is
what is called), `caller` has an `http` interface whose handler calls the worker, so
the real caller side is exercised by plain HTTP requests from the test. Raw TLS clients
with a certificate of the cluster CA play a cage that sends whatever it likes.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import socket
import ssl
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    CageProcess,
    Cluster,
    InProcessCage,
    config_source,
    http_config,
    http_request,
    module_source,
    wait_until,
)
from pmnc import keys
from pmnc.rpc import codec

RPC_LISTENS = r"interface rpc listens on ssl://127\.0\.0\.1:(\d+)/"
MAX_FRAME = 16 * 1024 * 1024

PROBE = module_source("""
    import os
    import time

    def ping(x):
        return ["pong", x, __node__, os.getpid()]

    def parameters():
        return pmnc.request.parameters

    def shout(text):
        pmnc.log.warning(text)

    def touch(path):
        open(path, "w").close()

    def nap(seconds, path):
        open(path, "w").close()
        time.sleep(seconds)
        return "napped"

    def sleep(seconds, path=None):
        if path is not None:
            open(path, "w").close()
        time.sleep(float(seconds))

    class OrderError(Exception):
        pass

    def fail(text):
        raise OrderError(text)
""", ["ping", "parameters", "shout", "touch", "nap", "sleep", "fail"])

# /call?method=<name>&arg=<text> calls pmnc("worker").probe.<method>(arg), as the request
# the query describes: forge=1 first fills its parameters with what must not travel;
# raise=1 lets the error go to the interface, which answers the client.
CALLER_HANDLER = module_source("""
    import json
    import urllib.parse

    def process_request(request, response):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request["url"]).query)
        method, args = query["method"][0], query.get("arg", [])
        if "forge" in query:
            pmnc.request.parameters["auth_tokens"].update(password="secret", peer_cage="forged")
            pmnc.request.parameters["retry"] = {"id": "RT-forged", "attempt": 99}
            pmnc.request.parameters["customer"] = "c-17"
        if "raise" in query:
            getattr(pmnc("worker").probe, method)(*args)
        try:
            text = "OK " + json.dumps(getattr(pmnc("worker").probe, method)(*args))
        except Exception as e:
            text = f"ERROR {type(e).__name__}: {e}"
        response["content"] = text
        response["headers"]["content-type"] = "text/plain"
""", ["process_request"])


def rpc_config(**overrides: Any) -> str:
    return config_source({"protocol": "rpc", "listener_address": ("127.0.0.1", 0), **overrides})


def start_cluster(cluster: Cluster, *, worker_nodes: tuple[str | None, ...] = (None,),
                  prefix: list[str] | None = None, **rpc: Any) -> tuple[list[CageProcess], CageProcess]:
    cluster.cage("worker", {"probe.py": PROBE, "config_interface_rpc.py": rpc_config(**rpc)},
                 request_timeout=4.0)
    cluster.cage("caller", {"config_interface_http.py": config_source(http_config()),
                            "interface_http.py": CALLER_HANDLER}, interfaces=("http",))
    workers = [cluster.start("worker", node, prefix=prefix) for node in worker_nodes]
    return workers, cluster.start("caller")


def call(caller: CageProcess, method: str = "ping", arg: str | None = "x", **extra: str) -> str:
    query = urllib.parse.urlencode({"method": method, **({"arg": arg} if arg is not None else {}), **extra})
    status, _, body = http_request(caller.port("http"), f"/call?{query}", timeout=20.0)
    assert status == 200, body
    return body.decode()


def rpc_port(worker: CageProcess) -> int:
    matches = re.findall(RPC_LISTENS, worker.log_text())
    assert matches, "the worker does not listen"
    return int(matches[-1])


# --- a raw TLS client with a certificate of the cluster: a cage that sends what it likes ------


class RawCage:
    def __init__(self, root: Path, tmp: Path, cage: str = "tester") -> None:
        keys_dir = root / "cages" / ".shared" / "ssl_keys"
        forge = tmp / "forge"
        if not forge.exists():
            forge.mkdir()
            for name in (keys.CA_CERT, keys.CA_KEY):
                shutil.copy(keys_dir / name, forge / name)
        keys.make_cage(forge, cage, "DEFAULT")
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.context.check_hostname = False
        self.context.load_verify_locations(keys_dir / keys.CA_CERT)
        self.context.load_cert_chain(forge / keys.CAGES / f"{cage}.pem")

    def connect(self, port: int) -> ssl.SSLSocket:
        return self.context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10.0))


def envelope(method: str, *args: Any, remain: float = 5.0, target: str = "worker", **request: Any) -> dict[str, Any]:
    wired = {"id": f"RQ-{secrets.token_hex(4)}", "remain": remain, "deadline": time.time() + remain,
             "interface": "test", "protocol": "test", "description": None, "log_levels": [], "parameters": {}}
    wired.update(request)
    return {"kind": "call", "source": ["test", "tester"], "target": target, "module": "probe",
            "method": method, "args": list(args), "kwargs": {}, "request": wired}


def read_answer(sock: ssl.SSLSocket) -> Any:
    decoder = codec.FrameDecoder(MAX_FRAME)
    while True:
        data = sock.recv(65536)
        if not data:
            raise EOFError("closed without an answer")
        answers = decoder.feed(data)
        if answers:
            return answers[0]


def exchange(sock: ssl.SSLSocket, value: dict[str, Any]) -> Any:
    sock.sendall(codec.encode(value, limit=MAX_FRAME))
    return read_answer(sock)


def closed(sock: socket.socket) -> bool:
    """Whether the other side has closed (or reset) `sock`; never waits."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


# --- the shared cluster -------------------------------------------------------------------------


@dataclass
class Env:
    cluster: Cluster
    worker: CageProcess
    caller: CageProcess
    raw: RawCage

    @property
    def port(self) -> int:
        return rpc_port(self.worker)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("rpc_hardening")
    cluster = Cluster(base)
    try:
        # a long handshake timeout: what drops silent connections here is the limit
        (worker,), caller = start_cluster(cluster, max_handshakes=4, handshake_timeout=30.0)
        assert call(caller, arg="warm").startswith('OK ["pong", "warm"')
        yield Env(cluster, worker, caller, RawCage(cluster.root, base))
    finally:
        cluster.kill_all()


# --- 1. the listener -----------------------------------------------------------------------------


def test_silent_connections_beyond_max_handshakes_are_dropped_oldest_first(env: Env) -> None:
    silent = [socket.create_connection(("127.0.0.1", env.port), timeout=5.0) for _ in range(10)]
    try:
        wait_until(lambda: all(closed(s) for s in silent[:6]), 5.0, message="the oldest silent connections closed")
        assert not any(closed(s) for s in silent[6:])  # the newest max_handshakes wait for their timeout
        # a cage gets in, although the silent ones never give up
        assert call(env.caller, arg="through").startswith('OK ["pong", "through"')
    finally:
        for s in silent:
            s.close()


def test_the_listener_survives_running_out_of_descriptors(cluster: Cluster) -> None:
    (worker,), caller = start_cluster(cluster, prefix=["prlimit", "--nofile=128:128"],
                                      max_handshakes=1000, handshake_timeout=60.0)
    assert call(caller, arg="before").startswith('OK ["pong", "before"')
    port = rpc_port(worker)
    flood: list[socket.socket] = []
    try:
        def failing() -> bool:
            if len(flood) < 300:
                flood.extend(socket.create_connection(("127.0.0.1", port), timeout=5.0) for _ in range(10))
            return "accepting connections fails" in worker.log_text()
        wait_until(failing, 20.0, interval=0.05, message="accept failing")
    finally:
        for s in flood:
            s.close()
    worker.wait_for_log(r"interface rpc: accepting connections works again", timeout=20.0)
    assert call(caller, arg="after").startswith('OK ["pong", "after"')
    text = worker.log_text()
    assert text.count("accepting connections fails") == 1, text[-3000:]
    assert text.count("accepting connections works again") == 1, text[-3000:]


def test_a_connection_that_gets_no_thread_is_closed_and_the_listener_goes_on(
        in_process_cage: Callable[..., InProcessCage], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    running = in_process_cage(interfaces={"rpc": {"protocol": "rpc", "listener_address": ("127.0.0.1", 0)}},
                              files={"probe.py": PROBE})
    raw = RawCage(running.root, tmp_path)
    start, refusals = threading.Thread.start, [3]

    def start_or_fail(thread: threading.Thread) -> None:
        if thread.name.startswith("rpc:127.0.0.1:") and refusals[0] > 0:
            refusals[0] -= 1
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_or_fail)
    for _ in range(3):  # no thread: closed unanswered
        with pytest.raises((ssl.SSLError, ConnectionError)):
            raw.connect(running.address("rpc")[1])
    with raw.connect(running.address("rpc")[1]) as sock:
        assert exchange(sock, envelope("ping", "got in", target="sample"))["result"][:2] == ["pong", "got in"]
    text = running.log_text()
    assert text.count("interface rpc: accepting connections fails: RuntimeError(\"can't start new thread\")") == 1
    assert text.count("interface rpc: accepting connections works again, after 3 failure(s)") == 1


# --- 4. forged parameters ------------------------------------------------------------------------------


def test_a_callee_keeps_only_the_parameters_that_may_travel(env: Env) -> None:
    forged = {"auth_tokens": {"password": "secret", "peer_cage": "forged", "peer_ip": "10.0.0.1",
                              "username": "ann", "source_cage": "origin", "encrypted": True},
              "retry": {"id": "RT-forged", "attempt": 99}, "customer": "c-17", "_private": 1}
    with env.raw.connect(env.port) as sock:
        answer = exchange(sock, envelope("parameters", parameters=forged))
    assert answer == {"result": {"auth_tokens": {"username": "ann", "source_cage": "origin", "peer_cage": "tester"},
                                 "customer": "c-17"}}


def test_a_real_caller_sends_neither_its_retry_context_nor_a_password(env: Env) -> None:
    reply = call(env.caller, "parameters", None, forge="1")
    assert reply.startswith("OK "), reply
    assert json.loads(reply[3:]) == {"auth_tokens": {"source_cage": "caller", "peer_cage": "caller"},
                                     "customer": "c-17"}


# --- 5. what a caller could make grow -----------------------------------------------------------------


def test_a_huge_description_is_cut_in_the_callees_log(env: Env) -> None:
    marker = f"shouting-{secrets.token_hex(4)}"
    with env.raw.connect(env.port) as sock:
        assert exchange(sock, envelope("shout", marker, description="D" * 2_000_000)) == {"result": None}
    line = next(line for line in env.worker.log_text().splitlines() if marker in line)
    assert len(line) < 1200
    assert "D" * 900 + "..." in line


def test_a_poll_cannot_wait_longer_than_the_callees_request_timeout(env: Env) -> None:
    poll = {"kind": "poll", "source": ["test", "tester"], "target": "worker",
            "request": envelope("ping", remain=1e8)["request"]}
    with env.raw.connect(env.port) as sock:
        sock.settimeout(10.0)  # the worker's request_timeout is 4 s
        assert exchange(sock, poll) == {"result": []}


# --- 11. rolling restarts -----------------------------------------------------------------------------


def test_a_call_that_crosses_the_goodbye_is_refused_not_run(cluster: Cluster, tmp_path: Path) -> None:
    (worker,), _ = start_cluster(cluster)
    raw = RawCage(cluster.root, tmp_path)
    marker = tmp_path / "ran"
    with raw.connect(rpc_port(worker)) as sock:
        assert exchange(sock, envelope("ping", "first"))["result"][:2] == ["pong", "first"]
        stopper = threading.Thread(target=worker.stop)
        stopper.start()
        try:
            assert read_answer(sock) == {"refused": "stopping"}  # the goodbye, unasked
            assert exchange(sock, envelope("touch", str(marker))) == {"refused": "stopping"}
        finally:
            stopper.join(30.0)
    assert not marker.exists()


def test_a_busy_connection_gets_its_answer_then_the_goodbye(cluster: Cluster, tmp_path: Path) -> None:
    (worker,), _ = start_cluster(cluster)
    raw = RawCage(cluster.root, tmp_path)
    marker = tmp_path / "ran"
    with raw.connect(rpc_port(worker)) as sock:
        sock.sendall(codec.encode(envelope("nap", 2.0, str(tmp_path / "napping")), limit=MAX_FRAME))
        wait_until((tmp_path / "napping").exists, message="the call running")
        stopper = threading.Thread(target=worker.stop)
        stopper.start()
        try:
            worker.wait_for_log("the cage is shutting down")
            assert read_answer(sock) == {"result": "napped"}  # more than the grace after the stop began
            assert read_answer(sock) == {"refused": "stopping"}
            assert exchange(sock, envelope("touch", str(marker))) == {"refused": "stopping"}
        finally:
            stopper.join(30.0)
    assert not marker.exists()


def test_rolling_restarts_lose_no_call(cluster: Cluster) -> None:
    workers, caller = start_cluster(cluster, worker_nodes=("a", "b"))
    served: Counter[str] = Counter()
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            reply = call(caller, arg="load")
            if reply.startswith("OK "):
                served[json.loads(reply[3:])[2]] += 1
            else:
                failures.append(reply)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(2):
            for worker in workers:
                assert worker.stop() == 0
                before = served[worker.node or ""]
                worker.start()
                wait_until(lambda w=worker, n=before: served[w.node or ""] >= n + 5, 10.0,
                           message="calls reaching the restarted instance")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30.0)
    assert failures == []
    assert served["a"] > 0 and served["b"] > 0, served


# --- 10. what reaches an HTTP client of a cage that calls another ---------------------------------


def test_a_deadline_reached_in_the_callee_is_504_for_the_http_client(env: Env) -> None:
    # The worker's request_timeout (4 s) is shorter than the caller's (10 s): the callee
    # reports its own deadline first, and that is a deadline all the same.
    query = urllib.parse.urlencode({"method": "sleep", "arg": "6", "raise": "1"})
    status, _, body = http_request(env.caller.port("http"), f"/call?{query}", timeout=20.0)
    assert (status, body) == (504, b"request deadline has expired")


def test_a_callee_lost_during_the_call_is_named_without_its_address(cluster: Cluster, tmp_path: Path) -> None:
    (worker,), caller = start_cluster(cluster)
    sleeping = tmp_path / "sleeping"
    query = urllib.parse.urlencode([("method", "sleep"), ("arg", "30"), ("arg", str(sleeping)), ("raise", "1")])
    answers: list[tuple[int, dict[str, str], bytes]] = []
    client = threading.Thread(target=lambda: answers.append(http_request(caller.port("http"), f"/call?{query}",
                                                                          timeout=20.0)))
    client.start()
    wait_until(sleeping.exists, message="the call running in the worker")
    worker.kill()
    client.join(20.0)
    status, _, body = answers[0]
    assert status == 500 and b"worker: connection lost during the call" in body, body
    assert b"127.0.0.1" not in body, body
    wait_until(lambda: re.search(r"cage \S+\.worker at 127\.0\.0\.1:\d+: connection lost", caller.log_text()),
               message="the address in the caller's log")


# --- 12. calls made at the same time share a connection: tagged frames ----------------------------------


def send_tagged(sock: ssl.SSLSocket, tag: Any, method: str, *args: Any, **request: Any) -> None:
    sock.sendall(codec.encode({**envelope(method, *args, **request), "tag": tag}, limit=MAX_FRAME))


def read_answers(sock: ssl.SSLSocket, decoder: codec.FrameDecoder, count: int) -> list[Any]:
    """The next `count` answers in the order they come (a decoder of the connection's own:
    several may arrive in one read)."""
    answers: list[Any] = []
    while len(answers) < count:
        data = sock.recv(65536)
        if not data:
            raise EOFError(f"closed after {answers}")
        answers.extend(decoder.feed(data))
    return answers


def test_tagged_calls_on_one_connection_are_answered_as_they_finish(env: Env, tmp_path: Path) -> None:
    """A slow call holds up no other on its connection: each is answered, tagged, when done."""
    napping = tmp_path / "napping"
    decoder = codec.FrameDecoder(MAX_FRAME)
    with env.raw.connect(env.port) as sock:
        send_tagged(sock, 1, "nap", 1.5, str(napping))
        wait_until(napping.exists, message="the slow call running")
        for tag in (2, 3, 4):
            send_tagged(sock, tag, "ping", f"quick-{tag}")
        quick = read_answers(sock, decoder, 3)
        assert sorted((a["tag"], a["result"][:2]) for a in quick) == [
            (tag, ["pong", f"quick-{tag}"]) for tag in (2, 3, 4)]
        assert read_answers(sock, decoder, 1) == [{"result": "napped", "tag": 1}]
        # untagged, the next call is answered before another frame is read, as before
        assert exchange(sock, envelope("ping", "plain"))["result"][:2] == ["pong", "plain"]


def test_every_answer_to_a_tagged_call_carries_its_tag(env: Env) -> None:
    decoder = codec.FrameDecoder(MAX_FRAME)
    with env.raw.connect(env.port) as sock:
        send_tagged(sock, 7, "fail", "no")
        send_tagged(sock, 8, "ping", "x", id="")  # a malformed request: an error, answered at once
        send_tagged(sock, "nine", "ping", "x")  # a tag that is not an integer: refused
        answers = {a["tag"]: a for a in read_answers(sock, decoder, 3)}
    assert answers[7]["error"]["type"].endswith("OrderError") and answers[7]["error"]["message"] == "no"
    assert "request id" in answers[8]["error"]["message"]
    assert "tag must be an integer" in answers["nine"]["error"]["message"]


def test_a_shared_connection_gets_its_answers_and_the_goodbye(cluster: Cluster, tmp_path: Path) -> None:
    """Stopping, the callee says goodbye at once and refuses what comes after, tagged; the
    tagged calls it has already taken are still answered."""
    (worker,), _ = start_cluster(cluster)
    raw = RawCage(cluster.root, tmp_path)
    marker = tmp_path / "ran"
    decoder = codec.FrameDecoder(MAX_FRAME)
    with raw.connect(rpc_port(worker)) as sock:
        send_tagged(sock, 1, "nap", 2.0, str(tmp_path / "napping"))
        wait_until((tmp_path / "napping").exists, message="the call running")
        stopper = threading.Thread(target=worker.stop)
        stopper.start()
        try:
            worker.wait_for_log("the cage is shutting down")
            assert read_answers(sock, decoder, 1) == [{"refused": "stopping"}]  # the goodbye, while it naps
            send_tagged(sock, 2, "touch", str(marker))
            answers = read_answers(sock, decoder, 2)
            assert sorted(answers, key=lambda a: a["tag"]) == [{"result": "napped", "tag": 1},
                                                               {"refused": "stopping", "tag": 2}]
        finally:
            stopper.join(30.0)
    assert not marker.exists()
