"""Cage-to-cage calls over NATS (config_cluster.py transport "nats") between real cage processes.

Calls are driven as in tests/test_rpc.py: a `runner` cage runs snippets its HTTP handler
receives, with its `pmnc` in scope. The NATS servers are real nats-server processes
(tests/nats_peer.py); strangers are raw nats-py clients holding no cage certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
import nats
import pytest
from conftest import CageProcess, Cluster, config_source, wait_until
from nats.aio.msg import Msg
from pmnc import keys
from test_rpc import WORK, Outcome, Runner, _gone, start_runner, start_worker

if TYPE_CHECKING:
    from nats_peer import NatsFolder, NatsServer


FLOCK = "F1"
CALLS = f"pmnc.{FLOCK}.call"
CLIENTS = 4  # threads calling at once in the tests under load
SERVES = r"interface rpc serves calls on NATS subject pmnc\.{flock}\.call\.{cage}"


def use_nats(cluster: Cluster, servers: tuple[str, ...] | str, flock: str = FLOCK, **extra: Any) -> None:
    """cages/.shared/config_cluster.py: calls through NATS at `servers` (a tuple, or an "eval(...)")."""
    cluster.shared("config_cluster.py", config_source(dict(transport="nats", nats_servers=servers,
                                                           flock_id=flock, **extra)))


def serves(process: Any, cage: str, flock: str = FLOCK) -> None:
    process.wait_for_log(SERVES.format(flock=flock, cage=cage))


@pytest.fixture
def on_nats(cluster: Cluster, nats_server: NatsServer) -> Cluster:
    """The cluster's cages call each other through one NATS server."""
    use_nats(cluster, (nats_server.url,))
    return cluster


# --- results and errors --------------------------------------------------------------------------


def test_calls_return_results_and_remote_errors_over_nats(on_nats: Cluster, nats_server: NatsServer) -> None:
    worker = start_worker(on_nats)
    runner = start_runner(on_nats)
    serves(worker, "worker")
    assert f"cluster: cage worker of flock {FLOCK} connected to NATS at nats://127.0.0.1:{nats_server.port}" \
        in worker.log_text()
    assert "interface rpc listens" not in worker.log_text()  # no TCP listener with transport "nats"

    assert runner.result('result = pmnc("worker").work.handle(21)') == 42
    value = {"tuple": (1, (2, b"\x00\xff")), "set": {1, "two"}, "none": None}
    assert runner.result('result = pmnc("worker").work.echo(value)[0]', value=value) == value

    seen = runner.result('result = pmnc("worker").work.context(), pmnc.request.unique_id')
    assert seen[0]["id"] == seen[1]  # the call continues the caller's request
    assert seen[0]["parameters"]["auth_tokens"]["peer_cage"] == "runner"  # who called, from the seal

    error = runner.error('pmnc("worker").work.fail("bad value 42")')
    assert error["type"] == "builtins.ValueError" and error["message"] == "bad value 42"
    assert "in fail" in error["remote_traceback"]
    error = runner.error('pmnc("worker").work.fail_mine("mine")')
    assert error["type"] == "pmnc.errors.RemoteError" and error["remote_type"].endswith("work.MyError")
    assert runner.result("""
        try:
            pmnc("worker").work.fail("x")
        except ValueError:
            result = "caught"
    """) == "caught"

    error = runner.error('pmnc("nobody").work.handle(1)', remain=3.0)
    assert error["type"] == "pmnc.errors.ResourceError"
    assert "no instance of cage nobody serves calls on NATS" in error["message"]


def test_a_slow_callee_gives_a_deadline_error_at_the_callers_deadline(on_nats: Cluster) -> None:
    serves(start_worker(on_nats), "worker")
    runner = start_runner(on_nats)

    started = time.monotonic()
    outcome = runner.run('pmnc("worker").work.sleep(3.0)', remain=1.0)
    waited = time.monotonic() - started

    assert outcome.error is not None
    assert outcome.error["type"] == "pmnc.errors.RPCDeadlineError"
    assert {"pmnc.errors.DeadlineError", "builtins.TimeoutError"} <= set(outcome.error["bases"])
    assert "deadline" in outcome.error["message"] and "worker" in outcome.error["message"]
    assert 0.8 <= outcome.elapsed < 1.5
    assert waited < 2.0
    assert runner.result('result = pmnc("worker").work.handle(1)') == 2  # nothing left stuck


def test_a_call_larger_than_max_payload_fails_before_it_is_sent(cluster: Cluster, nats_folder: NatsFolder,
                                                                 tmp_path: Path) -> None:
    server = nats_folder.single(max_payload=65536)
    use_nats(cluster, (server.url,))
    serves(start_worker(cluster), "worker")
    runner = start_runner(cluster)
    journal = tmp_path / "journal"

    outcome = runner.run('pmnc("worker").work.append(path, "x" * 100000)', path=str(journal))

    assert outcome.error is not None
    assert outcome.error["type"] == "pmnc.errors.ResourceInputParameterError"
    assert "max_payload of 65536 bytes" in outcome.error["message"]
    assert outcome.elapsed < 0.5
    assert not journal.exists()  # it never reached the worker
    assert runner.result('result = pmnc("worker").work.append(path, "x" * 30000)', path=str(journal)) == "x" * 30000

    # an answer too large for NATS: the caller is told so at once, not left waiting for its deadline
    outcome = runner.run('pmnc("worker").work.handle("y" * 40000)', remain=5.0)
    assert outcome.error is not None and "max_payload of 65536 bytes" in outcome.error["message"], outcome.error
    assert "answer" in outcome.error["message"] and outcome.elapsed < 1.0


def tls_block(folder: Path) -> str:
    """The tls block of docs/nats/nats-N.conf for a server certificate of the cluster CA in `folder`."""
    server = keys.make_server(folder, "nats-test", ("127.0.0.1",))
    return (f'tls {{\n  cert_file: "{server}"\n  key_file: "{server}"\n  ca_file: "{folder / keys.CA_CERT}"\n'
            f"  verify: true\n  timeout: 2\n}}\n")


def test_cages_call_each_other_through_nats_with_tls_and_their_own_certificates(cluster: Cluster,
                                                                               nats_folder: NatsFolder) -> None:
    ssl_keys = cluster.root / "cages" / ".shared" / "ssl_keys"
    keys.make_ca(ssl_keys, f"pmnc cluster {FLOCK}")  # the cages make the rest of their keys with it
    server = nats_folder.single(extra=tls_block(ssl_keys))
    use_nats(cluster, (f"tls://127.0.0.1:{server.port}",), nats_tls="cluster")
    worker = start_worker(cluster)
    serves(worker, "worker")
    runner = start_runner(cluster)
    assert f"connected to NATS at tls://127.0.0.1:{server.port}" in worker.log_text()

    assert runner.result('result = pmnc("worker").work.handle(21)') == 42
    connected = (server.monitor("/connz")[1] or {}).get("connections", [])
    assert sorted(c["name"].split(".")[-1] for c in connected if c.get("tls_version")) == ["runner", "worker"]

    # a client with no certificate of the cluster CA does not get in
    async def stranger() -> None:
        context = ssl.create_default_context(cafile=str(ssl_keys / keys.CA_CERT))
        await nats.connect(f"tls://127.0.0.1:{server.port}", tls=context, allow_reconnect=False,
                           max_reconnect_attempts=0, connect_timeout=2)
    with pytest.raises((OSError, nats.errors.Error)):  # the server drops it in the handshake
        asyncio.run(stranger())
    wait_until(lambda: "TLS handshake error" in server.log_tail(), message="the server refusing the handshake")


# --- several instances ---------------------------------------------------------------------------


@contextlib.contextmanager
def load(runner: Runner, folder: Path, hold: float = 0.2,
         remain: float = 2.0) -> Iterator[list[tuple[float, Outcome, float]]]:
    """CLIENTS threads calling worker.whoami(hold, folder) in a loop for the `with`'s time; yields
    the calls, (started, outcome, took), as they end. `folder` gets whoami's markers."""
    folder.mkdir()
    calls: list[tuple[float, Outcome, float]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            started = time.monotonic()
            outcome = runner.run('result = pmnc("worker").work.whoami(hold, folder)', remain=remain,
                                 hold=hold, folder=str(folder))
            calls.append((started, outcome, time.monotonic() - started))

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        yield calls
    finally:
        stop.set()
        for thread in threads:
            thread.join(15.0)


def holding(folder: Path, pid: int) -> int:
    """Calls in flight in process `pid` (whoami's markers)."""
    return len(list(folder.glob(f"holding-{pid}-*")))


def two_workers(cluster: Cluster) -> tuple[Runner, CageProcess, CageProcess, int, int]:
    """Instances a.worker and b.worker and the runner, once the queue group spreads the runner's
    calls over both: (runner, a, b, pid of a's cage, pid of b's)."""
    a = start_worker(cluster, node="a")
    b = start_worker(cluster, node="b")
    serves(a, "worker")
    serves(b, "worker")
    runner = start_runner(cluster)
    a_pid, b_pid = a.child_pids()[-1], b.child_pids()[-1]
    # interest crosses NATS routes a moment after the subscriptions: wait until both answer
    wait_until(lambda: set(runner.result('result = [pmnc("worker").work.whoami() for _ in range(20)]'))
               == {("a", a_pid), ("b", b_pid)}, message="both instances taking calls")
    return runner, a, b, a_pid, b_pid


def test_instances_share_the_load_and_a_killed_one_costs_only_its_calls_in_flight(on_nats: Cluster,
                                                                                    tmp_path: Path) -> None:
    runner, _, _, a_pid, b_pid = two_workers(on_nats)  # the queue group spreads the calls

    markers = tmp_path / "markers"
    with load(runner, markers) as calls:
        wait_until(lambda: holding(markers, b_pid), message="a call in flight in b.worker")
        os.kill(b_pid, signal.SIGKILL)
        in_flight = holding(markers, b_pid)  # its markers stay: the process died holding them
        wait_until(lambda: _gone(b_pid), message="b.worker's cage process gone")
        killed_at = time.monotonic()
        wait_until(lambda: sum(1 for s, o, _ in list(calls) if s > killed_at and o.result == ("a", a_pid)) >= 10,
                   15.0, message="a.worker taking the calls")

    failures = [(started, o) for started, o, _ in calls if o.error is not None]
    # only calls b.worker had taken: the one(s) it was running, and any NATS had just handed it
    assert in_flight >= 1 and 1 <= len(failures) <= CLIENTS, failures
    for started, outcome in failures:
        assert outcome.error is not None
        assert outcome.error["type"] in ("pmnc.errors.RPCDeadlineError", "pmnc.errors.ResourceError"), outcome.error
        assert started < killed_at, (started - killed_at, outcome.error, outcome.elapsed)
    assert all(took < 3.0 for _, _, took in calls), "a call outlived its deadline"
    after = [o.result for started, o, _ in calls if started >= killed_at]
    assert ("b", b_pid) not in after


def test_an_instance_stopped_gracefully_under_load_costs_no_call(on_nats: Cluster, tmp_path: Path) -> None:
    """A rolling restart: the stopping instance leaves the queue group first and answers what it
    has taken; a call that reaches it meanwhile is refused unrun and goes to the other."""
    runner, _, b, a_pid, b_pid = two_workers(on_nats)

    markers = tmp_path / "markers"
    with load(runner, markers, hold=0.1, remain=5.0) as calls:
        wait_until(lambda: holding(markers, b_pid), message="a call in flight in b.worker")
        assert b.stop() == 0  # SIGTERM: the supervisor stops the cage gracefully
        stopped_at = time.monotonic()
        wait_until(lambda: sum(1 for s, o, _ in list(calls) if s > stopped_at and o.result == ("a", a_pid)) >= 10,
                   15.0, message="a.worker taking the calls")

    assert [o.error for _, o, _ in calls if o.error is not None] == [], b.log_text()[-3000:]
    assert ("b", b_pid) in [o.result for _, o, _ in calls]  # b.worker did answer calls under the load
    assert "the cage has been properly shut down" in b.log_text()


def _pin(servers: dict[str, str], default: str) -> str:
    """nats_servers for config_cluster.py: each node's cages start on a NATS node of their own
    (they learn the others from it, for when it dies)."""
    table = {node: (url,) for node, url in servers.items()}
    return f"eval({table!r}.get(__node__, ({default!r},)))"


def connections(server: NatsServer) -> set[str]:
    """The names of the clients connected to `server` (the bus names itself node.cage)."""
    return {c.get("name", "") for c in (server.monitor("/connz")[1] or {}).get("connections", [])}


def test_a_nats_node_killed_under_load_costs_at_most_its_calls_in_flight(cluster: Cluster,
                                                                        nats_cluster: list[NatsServer],
                                                                        tmp_path: Path) -> None:
    n1, n2, n3 = nats_cluster
    use_nats(cluster, _pin({"a": n2.url, "b": n3.url}, n1.url))
    runner, _, _, a_pid, _ = two_workers(cluster)  # the runner on n1 reaches both
    assert "a.worker" in connections(n2) and "b.worker" in connections(n3)
    assert not {"a.worker", "b.worker"} & connections(n1)

    markers = tmp_path / "markers"
    with load(runner, markers) as calls:
        wait_until(lambda: holding(markers, a_pid), message="a call in flight in a.worker")
        in_flight = holding(markers, a_pid)
        n2.kill()  # a.worker's NATS node
        killed_at = time.monotonic()
        # a.worker reconnects to a node it learnt of and takes calls again
        wait_until(lambda: sum(1 for s, o, _ in list(calls) if s > killed_at + 0.5 and o.result == ("a", a_pid)) >= 3,
                   20.0, message="a.worker answering through another NATS node")

    failures = [(started, o) for started, o, _ in calls if o.error is not None]
    # at most what a.worker was running when its node died, and what NATS had handed it on the way
    assert in_flight >= 1 and len(failures) <= CLIENTS, failures
    for started, outcome in failures:
        assert outcome.error is not None
        assert outcome.error["type"] in ("pmnc.errors.RPCDeadlineError", "pmnc.errors.ResourceError"), outcome.error
        assert started < killed_at + 1.0, "calls made after the node died should find a live path"
    assert all(took < 3.0 for _, _, took in calls), "a call outlived its deadline"
    assert "a.worker" in connections(n1) | connections(n3)  # it moved to a live node


# --- strangers on the bus ------------------------------------------------------------------------


class Stranger:
    """A raw nats-py client with no cage certificate, on a loop thread of its own."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.nc = self.run(nats.connect(url))
        self.captured: list[bytes] = []

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def capture(self, subject: str) -> None:
        """Every message on `subject` (no queue group: a copy besides the cage's)."""
        async def keep(msg: Msg) -> None:
            self.captured.append(msg.data)
        self.run(self.nc.subscribe(subject, cb=keep))
        self.run(self.nc.flush())

    def request(self, subject: str, data: bytes) -> list[Any]:
        """The answer, msgpack-decoded."""
        answer = self.run(self.nc.request(subject, data, timeout=5.0))
        return list(msgpack.unpackb(answer.data, raw=False))

    def close(self) -> None:
        self.run(self.nc.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5.0)


@pytest.fixture
def stranger(nats_server: NatsServer) -> Iterator[Stranger]:
    client = Stranger(nats_server.url)
    yield client
    client.close()


def refused(answer: list[Any], how: tuple[str, ...] = ("refused",)) -> bool:
    """The callee's answer turns the call down: [1, "refused", reason] (or asks who is calling,
    or hands its certificate to a caller that did not seal the call: both unrun)."""
    return answer[0] == 1 and answer[1] in how


def test_strangers_on_nats_are_refused_and_nothing_runs(on_nats: Cluster, stranger: Stranger, tmp_path: Path) -> None:
    worker = start_worker(on_nats)
    serves(worker, "worker")
    runner = start_runner(on_nats)
    journal = tmp_path / "journal"
    subject = f"{CALLS}.worker"
    stranger.capture(subject)

    assert runner.result('result = pmnc("worker").work.append(path, "genuine")', path=str(journal)) == "genuine"
    assert journal.read_text() == "genuine\n"
    wait_until(lambda: stranger.captured, message="the genuine call captured")
    calls = [msgpack.unpackb(data, raw=False) for data in stranger.captured]
    sealed = [c for c in calls if c[1] == "call" and c[8] is not None]  # the one that ran had a MAC
    assert sealed, calls

    # garbage, and no-msgpack-at-all
    for junk in (b"", b"hello", msgpack.packb([1, "call"]), msgpack.packb({"x": 1}), os.urandom(300)):
        assert refused(stranger.request(subject, junk)), junk
    # a well-formed call with a made-up MAC: the genuine one, its MAC replaced
    genuine = sealed[-1]
    forged = list(genuine)
    forged[8] = bytes(len(genuine[8]))
    assert refused(stranger.request(subject, msgpack.packb(forged)))
    # ... and as a fresh caller instance, counter and expiry (nothing the window has seen)
    forged[5], forged[6], forged[7] = "0123456789abcdef", 1, time.time() + 30
    forged[8] = os.urandom(len(genuine[8]))
    assert refused(stranger.request(subject, msgpack.packb(forged)))
    # replays of what was captured, byte for byte: the sealed call is refused as a replay, the
    # unsealed first try (asking for the worker's certificate) only gets the certificate again
    for data in stranger.captured[:len(calls)]:
        answer = stranger.request(subject, data)
        assert refused(answer, ("refused", "certificate", "who")), answer
        if msgpack.unpackb(data, raw=False)[8] is not None:
            assert answer[1] == "refused" and "replay" in answer[2], answer

    assert journal.read_text() == "genuine\n"  # the module ran once: for the genuine call
    assert runner.result('result = pmnc("worker").work.handle(2)') == 4  # the cages go on as before


# --- flocks --------------------------------------------------------------------------------------


def test_two_flocks_on_one_nats_do_not_see_each_other(on_nats: Cluster, nats_server: NatsServer,
                                                     tmp_path: Path) -> None:
    other = Cluster(tmp_path / "flock-b")
    try:
        use_nats(other, (nats_server.url,), flock="B")
        serves(start_worker(other, "onlyb"), "onlyb", flock="B")
        serves(start_worker(on_nats), "worker")
        runner = start_runner(on_nats)

        error = runner.error('pmnc("onlyb").work.handle(1)', remain=3.0)
        assert error["type"] == "pmnc.errors.ResourceError"
        assert "no instance of cage onlyb" in error["message"]
        assert runner.result('result = pmnc("worker").work.handle(1)') == 2  # its own flock it reaches
    finally:
        other.kill_all()


# --- reverse calls -------------------------------------------------------------------------------


def test_reverse_calls_work_with_transport_nats(on_nats: Cluster) -> None:
    dmz = start_runner(on_nats, "dmz")
    on_nats.cage("lan", {"work.py": WORK,
                         "config_interface_revrpc.py": config_source({"protocol": "revrpc",
                                                                      "source_cages": ("dmz",)})},
                 interfaces=("revrpc",))
    lan = on_nats.start("lan")
    lan.wait_for_log("interface revrpc polls cage")

    assert wait_until(lambda: dmz.run('result = pmnc("lan:reverse").work.handle(21)', remain=3.0).result,
                      message="a reverse call answered") == 42
    seen = dmz.result('result = pmnc("lan:reverse").work.context(), pmnc.request.unique_id')
    assert seen[0]["id"] == seen[1]
    error = dmz.error('pmnc("lan:reverse").work.fail("reverse boom")')
    assert error["type"] == "builtins.ValueError" and error["message"] == "reverse boom"
