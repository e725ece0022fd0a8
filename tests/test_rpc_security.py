"""Hostile peers against cage-to-cage RPC: TLS clients, frames, discovery packets and impostors.

Two real cages share one tree (so one cluster CA and one cluster.key):
`worker` serves `rpc` and is the target of every attack; `caller` has an
`http` interface whose handler calls `pmnc(<cage>).probe.<method>(arg)`,
so the real caller side (locator, TLS client, identity check) is exercised
by plain HTTP requests from the test. Both receive LAN discovery packets,
broadcast on the loopback (127.255.255.255) to a free UDP port.

Every attack must be refused and logged, and must leave the cages unharmed:
a legitimate call works afterwards.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import pickle
import random
import re
import secrets
import shutil
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
from conftest import CageProcess, Cluster, config_source, http_config, http_request, module_source, wait_until
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pmnc import keys
from pmnc.rpc import codec

FLOCK = "DEFAULT"
MAX_FRAME = 65536
RPC_LISTENS = r"interface rpc listens on ssl://127\.0\.0\.1:(\d+)/"
REFUSED_PACKETS = r"WRN \[discovery\] discovery: \d+ packet\(s\) refused \(bad MAC, stale or replayed\), the last from"

PROBE = module_source("""
    import os

    def ping(x):
        return ["pong", x, os.getpid()]

    def hidden(path):  # public, but not in __all__
        open(path, "w").close()

    def _secret(path):
        open(path, "w").close()
""", ["ping"])

# The caller's page: /call?target=<cage>&method=<name>&arg=<text> calls pmnc(target).probe.<method>(arg).
CALLER_HANDLER = module_source("""
    import urllib.parse

    def process_request(request, response):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request["url"]).query)
        target, method, arg = query["target"][0], query["method"][0], query.get("arg", [""])[0]
        try:
            text = "OK " + repr(getattr(pmnc(target).probe, method)(arg))
        except Exception as e:
            text = f"ERROR {type(e).__name__}: {e}"
        response["content"] = text
        response["headers"]["content-type"] = "text/plain"
""", ["process_request"])


# --- the running cluster ------------------------------------------------------------------


@dataclass
class Env:
    cluster: Cluster
    worker: CageProcess
    caller: CageProcess
    rpc_port: int
    http_port: int
    udp_port: int
    keys_dir: Path
    hmac_key: bytes
    forge: Path  # a copy of the cluster CA (certificate and key): what an insider could sign
    tmp: Path

    def cluster_cert(self, cage: str, flock: str = FLOCK) -> Path:
        """A legitimate certificate of this cluster for `cage` (made once)."""
        path = self.forge / keys.CAGES / f"{cage}.pem"
        if not path.exists():
            keys.make_cage(self.forge, cage, flock)
        return path

    def call_through_caller(self, target: str, method: str = "ping", arg: str = "x") -> str:
        query = urllib.parse.urlencode({"target": target, "method": method, "arg": arg})
        status, _, body = http_request(self.http_port, f"/call?{query}", timeout=20.0)
        assert status == 200, body
        return body.decode()

    def assert_unharmed(self) -> None:
        """Both cages run, a raw legitimate call is answered, and so is one through the caller."""
        for cage in (self.worker, self.caller):
            assert cage.process is not None and cage.process.poll() is None, f"cage {cage.cage} has exited"
        assert legit_call(self)["result"][:2] == ["pong", "still alive"]
        reply = self.call_through_caller("worker", arg="through the caller")
        assert reply.startswith("OK ['pong', 'through the caller', "), reply


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("rpc_security")
    cluster = Cluster(base)
    try:
        udp_port = free_udp_port()
        cluster.shared("config_cluster.py", config_source(dict(
            flock_id=FLOCK, ssl_keys_dir=None, broadcast_address=("127.0.0.1/127.255.255.255", udp_port),
            advertise_period=5.0, discovery_timeout=1.0, exact_locations={}, use_pickle=False,
            max_frame_size=MAX_FRAME)))
        cluster.cage("worker", {"probe.py": PROBE})
        cluster.cage("caller", {"config_interface_http.py": config_source(http_config()),
                                "interface_http.py": CALLER_HANDLER}, interfaces=("http",))
        worker = cluster.start("worker")
        caller = cluster.start("caller")
        rpc_port = int(worker.wait_for_log(RPC_LISTENS).group(1))
        keys_dir = cluster.root / "cages" / ".shared" / "ssl_keys"
        forge = base / "forge"
        forge.mkdir()
        for name in (keys.CA_CERT, keys.CA_KEY):
            shutil.copy(keys_dir / name, forge / name)
        running = Env(cluster, worker, caller, rpc_port, caller.port("http"), udp_port, keys_dir,
                      (keys_dir / "cluster.key").read_bytes(), forge, base)
        # The caller makes its cluster (keys, locator, UDP receiver) on its first call.
        assert running.call_through_caller("worker", arg="warm").startswith("OK ['pong', 'warm', ")
        caller.wait_for_log(rf"discovery: flock {FLOCK} on UDP 127\.255\.255\.255:{udp_port}")
        yield running
        for cage in (worker, caller):
            text = cage.log_text()
            assert "Traceback" not in text and " ERR " not in text, f"cage {cage.cage} logged an error:\n{text}"
    finally:
        cluster.kill_all()


# --- raw TLS clients ----------------------------------------------------------------------


def client_context(env: Env, cert: Path | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(env.keys_dir / keys.CA_CERT)
    if cert is not None:
        context.load_cert_chain(cert)
    return context


def connect(env: Env, cert: Path) -> tuple[ssl.SSLSocket, int]:
    """A TLS connection to the worker's rpc port with `cert`, and its local port."""
    raw = socket.create_connection(("127.0.0.1", env.rpc_port), timeout=5.0)
    local = raw.getsockname()[1]
    return client_context(env, cert).wrap_socket(raw), local


def wire_request(remain: float = 5.0) -> dict[str, Any]:
    return {"id": f"RQ-{secrets.token_hex(4)}", "remain": remain, "deadline": time.time() + remain,
            "interface": "test", "protocol": "test", "description": None, "log_levels": [], "parameters": {}}


def call_envelope(module: str = "probe", method: str = "ping", *args: Any, target: str = "worker") -> dict[str, Any]:
    return {"kind": "call", "source": ["test", "tester"], "target": target, "module": module, "method": method,
            "args": list(args), "kwargs": {}, "request": wire_request()}


def frame(value: Any) -> bytes:
    return codec.encode(value, limit=MAX_FRAME)


def recv_exactly(sock: ssl.SSLSocket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def read_answer(sock: ssl.SSLSocket) -> Any:
    kind, length = codec.parse_header(recv_exactly(sock, codec.HEADER_SIZE), limit=MAX_FRAME)
    return codec.decode_body(kind, recv_exactly(sock, length))


def legit_call(env: Env, arg: str = "still alive") -> Any:
    sock, _ = connect(env, env.cluster_cert("tester"))
    with sock:
        sock.sendall(frame(call_envelope("probe", "ping", arg)))
        return read_answer(sock)


def assert_closed_unanswered(sock: socket.socket) -> None:
    """The other side ends the connection without sending a byte of an answer."""
    sock.settimeout(5.0)
    try:
        data = sock.recv(65536)
    except TimeoutError:
        pytest.fail("the connection was neither answered nor closed")
    except (ssl.SSLError, ConnectionError):
        return  # reset, or a TLS alert: refused
    assert data == b"", f"the cage answered: {data[:100]!r}"


def assert_logged(cage: CageProcess, pattern: str) -> None:
    cage.wait_for_log(pattern, timeout=5.0)


# --- 1. TLS clients that are not cages of this cluster ----------------------------------------


def self_signed(path: Path, uri: str) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "worker")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
            .sign(key, hashes.SHA256()))
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM))
    return path


def no_certificate(env: Env) -> Path | None:
    return None


def self_signed_certificate(env: Env) -> Path | None:
    return self_signed(env.tmp / "self_signed.pem", f"pmnc://{FLOCK}/runner")


def certificate_of_another_ca(env: Env) -> Path | None:
    other = env.tmp / "other_ca"
    if not (other / keys.CA_CERT).exists():
        keys.make_ca(other, "pmnc cluster DEFAULT")  # even the same name as the cluster's CA
        keys.make_cage(other, "runner", FLOCK)
    return other / keys.CAGES / "runner.pem"


def certificate_without_uri(env: Env) -> Path | None:
    path = env.forge / "intruder.pem"
    if not path.exists():
        keys.make_client(env.forge, "intruder")
    return path


def certificate_of_another_flock(env: Env) -> Path | None:
    return env.cluster_cert("spy", flock="OTHER")


TLS_REFUSED = (r"WRN \[[^\]]*\] interface rpc: connection from 127\.0\.0\.1:{port} refused: "
               r"(TLS handshake failed|its certificate names no cage of flock DEFAULT)")


@pytest.mark.parametrize("certificate", [no_certificate, self_signed_certificate, certificate_of_another_ca,
                                         certificate_without_uri, certificate_of_another_flock])
def test_tls_client_that_is_not_a_cage_of_the_cluster_is_refused(
        env: Env, certificate: Callable[[Env], Path | None]) -> None:
    context = client_context(env, certificate(env))
    raw = socket.create_connection(("127.0.0.1", env.rpc_port), timeout=5.0)
    local = raw.getsockname()[1]
    try:
        sock = context.wrap_socket(raw)
    except (ssl.SSLError, ConnectionError):
        raw.close()  # refused during the handshake
    else:
        with sock:  # TLS 1.3: the client is done before the server has checked its certificate
            try:
                sock.sendall(frame(call_envelope("probe", "ping", "intruder")))
            except (ssl.SSLError, ConnectionError):
                pass
            else:
                assert_closed_unanswered(sock)
    assert_logged(env.worker, TLS_REFUSED.format(port=local))
    env.assert_unharmed()


def test_plain_tcp_garbage_is_refused(env: Env) -> None:
    garbage = b"GET / HTTP/1.0\r\n\r\n" + random.Random(1).randbytes(2000)
    with socket.create_connection(("127.0.0.1", env.rpc_port), timeout=5.0) as sock:
        local = sock.getsockname()[1]
        sock.sendall(garbage)
        sock.settimeout(5.0)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionError:
            pass
        except TimeoutError:
            pytest.fail("the connection was not closed")
    # at most a TLS alert record (content type 21), never anything of the protocol
    assert received == b"" or received[0] == 21, received[:100]
    assert_logged(env.worker, TLS_REFUSED.format(port=local))
    env.assert_unharmed()


# --- 2. frames from a legitimate certificate ------------------------------------------------------


def reduce_payload(path: Path) -> bytes:
    """A pickle that creates `path` when loaded."""

    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(path), "w"))

    return pickle.dumps(Exploit(), protocol=5)


BAD_FRAMES: dict[str, Callable[[Path], bytes]] = {
    "size over the limit": lambda _: b"M" + (MAX_FRAME + 1).to_bytes(4, "big"),
    "size of 4 GiB": lambda _: b"M\xff\xff\xff\xff" + b"\0" * 1000,
    "unknown kind": lambda _: b"X" + (10).to_bytes(4, "big") + b"0123456789",
    "garbage body": lambda _: b"M" + (64).to_bytes(4, "big") + b"\xc1" + random.Random(2).randbytes(63),
    "msgpack then extra bytes": lambda _: b"M" + (3).to_bytes(4, "big") + b"\x80\x80\x80",
    "pickle kind": lambda marker: b"P" + len(reduce_payload(marker)).to_bytes(4, "big") + reduce_payload(marker),
    "pickle body as msgpack": lambda marker: (b"M" + len(reduce_payload(marker)).to_bytes(4, "big")
                                              + reduce_payload(marker)),
}

BAD_FRAME_LOGGED = (r"WRN \[[^\]]*\] interface rpc: cage (attacker )?at 127\.0\.0\.1:{port} "
                    r"(sent a bad frame, disconnected|sent a frame that is not a call)")


@pytest.mark.parametrize("name", list(BAD_FRAMES))
def test_bad_frame_disconnects_with_a_warning(env: Env, name: str) -> None:
    marker = env.tmp / ("pwned-" + re.sub(r"\W", "_", name))
    sock, local = connect(env, env.cluster_cert("attacker"))
    with sock:
        sock.sendall(BAD_FRAMES[name](marker))
        assert_closed_unanswered(sock)
    assert_logged(env.worker, BAD_FRAME_LOGGED.format(port=local))
    env.assert_unharmed()
    assert not marker.exists(), "the cage has run a pickle payload"


def test_the_pickle_payload_is_live(tmp_path: Path) -> None:
    """The payload the cage must refuse does create its file when loaded (so the test means something)."""
    marker = tmp_path / "control"
    pickle.loads(reduce_payload(marker))
    assert marker.exists()


def test_frame_announcing_more_than_the_limit_is_refused_from_the_header_alone(env: Env) -> None:
    """The cage disconnects at the header: it does not wait for (or buffer) the announced body."""
    sock, local = connect(env, env.cluster_cert("attacker"))
    with sock:
        sock.sendall(b"M" + (1 << 30).to_bytes(4, "big") + b"\0" * 100)
        assert_closed_unanswered(sock)
    assert_logged(env.worker, BAD_FRAME_LOGGED.format(port=local) + r".*exceeds the limit of 65536 bytes")


def error_type(answer: Any) -> str:
    assert isinstance(answer, dict) and set(answer) == {"error"}, answer
    return str(answer["error"]["type"])


def test_malformed_and_forbidden_calls_get_error_answers(env: Env) -> None:
    marker = env.tmp / "pwned-by-call"
    no_request = call_envelope()
    del no_request["request"]
    bad_remain = call_envelope()
    bad_remain["request"]["remain"] = "soon"
    nan_remain = call_envelope()
    nan_remain["request"]["remain"] = float("nan")
    no_module = call_envelope()
    del no_module["module"]
    bad_args = call_envelope()
    bad_args["args"] = "not a list"
    bad_kwargs = call_envelope()
    bad_kwargs["kwargs"] = {1: "not a name"}
    cases: list[tuple[dict[str, Any], str]] = [
        (["call", "probe", "ping"], "pmnc.errors.ProtocolError"),  # type: ignore[list-item]
        ("call probe.ping", "pmnc.errors.ProtocolError"),  # type: ignore[list-item]
        ({"kind": "call"}, "pmnc.errors.ProtocolError"),
        ({"kind": "poke"}, "pmnc.errors.ProtocolError"),
        ({}, "pmnc.errors.ProtocolError"),
        (no_request, "pmnc.errors.ProtocolError"),
        (bad_remain, "pmnc.errors.ProtocolError"),
        (nan_remain, "pmnc.errors.ProtocolError"),
        (no_module, "pmnc.errors.InvalidMethodAccessError"),
        (bad_args, "pmnc.errors.InvalidMethodAccessError"),
        (bad_kwargs, "pmnc.errors.InvalidMethodAccessError"),
        (call_envelope("probe", "_secret", str(marker)), "pmnc.errors.InvalidMethodAccessError"),
        (call_envelope("probe", "__init__", str(marker)), "pmnc.errors.InvalidMethodAccessError"),
        (call_envelope("probe", "hidden", str(marker)), "pmnc.errors.InvalidMethodAccessError"),
        (call_envelope("_probe", "ping", "x"), "pmnc.errors.InvalidMethodAccessError"),
        (call_envelope("probe.os", "system", "true"), "pmnc.errors.InvalidMethodAccessError"),
        (call_envelope("../worker/probe", "ping", "x"), "pmnc.errors.InvalidMethodAccessError"),
        (call_envelope("config_cluster", "get", "x"), "pmnc.errors.InvalidMethodAccessError"),
        (call_envelope("interface_http_1", "process_request", {}, {}), "pmnc.errors.InvalidMethodAccessError"),
        (call_envelope("probe", "ping", "x", target="caller"), "pmnc.errors.InvalidMethodAccessError"),
    ]
    sock, _ = connect(env, env.cluster_cert("attacker"))
    with sock:
        for envelope, expected in cases:
            sock.sendall(frame(envelope))
            assert error_type(read_answer(sock)) == expected, envelope
        # the same connection still serves a good call; log levels that are not levels are ignored
        good = call_envelope("probe", "ping", "after the errors")
        good["request"]["log_levels"] = ["loud", -1, 99]
        sock.sendall(frame(good))
        assert read_answer(sock)["result"][:2] == ["pong", "after the errors"]
    assert not marker.exists(), "a private or unexported function has run"
    assert_logged(env.worker, r"WRN \[[^\]]*\] call probe\._secret from cage attacker failed: "
                              r"InvalidMethodAccessError")
    env.assert_unharmed()


def test_pickle_bytes_as_an_argument_stay_bytes(env: Env) -> None:
    marker = env.tmp / "pwned-by-argument"
    payload = reduce_payload(marker)
    sock, _ = connect(env, env.cluster_cert("attacker"))
    with sock:
        sock.sendall(frame(call_envelope("probe", "ping", payload)))
        assert read_answer(sock)["result"][:2] == ["pong", payload]
    assert not marker.exists()


# --- 3. discovery packets ----------------------------------------------------------------------------


def packet(key: bytes, kind: str, cage: str, port: int, *, flock: str = FLOCK, instance: str | None = None,
           node: str = "intruder", period: float = 5.0, ts: float | None = None) -> bytes:
    """A discovery packet as locator.py makes them: MAGIC, a truncated HMAC-SHA256 of MAGIC + body, body
    (sent from 127.0.0.1, see broadcast(), and naming it)."""
    body = msgpack.packb([kind, flock, instance or secrets.token_hex(8), cage, node, "127.0.0.1", port, period,
                          "127.0.0.1", time.time() if ts is None else ts])
    return b"PMNC1" + hmac.new(key, b"PMNC1" + body, hashlib.sha256).digest()[:16] + body


def broadcast(env: Env, *packets: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.bind(("127.0.0.1", 0))
        for data in packets:
            s.sendto(data, ("127.255.255.255", env.udp_port))


class Trap:
    """A plain TCP listener that counts connections and closes each at once."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.connects = 0
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connects += 1
            conn.close()

    def close(self) -> None:
        self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self.thread.join(5.0)


@pytest.fixture
def trap() -> Iterator[Trap]:
    listener = Trap()
    yield listener
    listener.close()


def test_forged_foreign_stale_and_malformed_packets_inject_no_location(env: Env, trap: Trap) -> None:
    key, now = env.hmac_key, time.time()
    good_body = msgpack.packb(["A", FLOCK, secrets.token_hex(8), "victim", "n", "127.0.0.1", trap.port, 5.0,
                               "127.0.0.1", now])
    oversized = packet(key, "A", "victim", trap.port, node="n" * 1100)
    assert len(oversized) > 1024
    broadcast(env,
              packet(secrets.token_bytes(32), "A", "victim", trap.port),  # forged: not the cluster key
              packet(key[:16], "A", "victim", trap.port),  # forged: part of the key
              b"PMNC1" + b"\0" * 16 + good_body,  # no MAC at all
              b"PMNC1" + hmac.new(key, good_body, hashlib.sha256).digest()[:16] + good_body,  # MAC without MAGIC
              packet(key, "A", "victim", trap.port, flock="OTHER"),  # the right key, another flock
              packet(key, "A", "victim", trap.port, ts=now - 60.0),  # stale
              packet(key, "A", "victim", trap.port, ts=now + 60.0),  # from the future
              packet(key, "A", "victim", trap.port, ts=float("nan")),
              packet(key, "X", "victim", trap.port),  # unknown kind
              oversized,
              b"PMNC1" + hmac.new(key, b"PMNC1" + b"\xc1", hashlib.sha256).digest()[:16] + b"\xc1",  # MACed garbage
              random.Random(3).randbytes(300),  # garbage
              b"")
    reply = env.call_through_caller("victim")
    assert reply.startswith("ERROR ") and "no instance of cage victim has been found" in reply, reply
    assert trap.connects == 0, "the caller tried a location injected with a bad packet"
    for cage in (env.caller, env.worker):
        assert_logged(cage, REFUSED_PACKETS)
    # the receiver has survived all that: a good advert still gets in
    broadcast(env, packet(key, "A", "survivor", trap.port))
    reply = env.call_through_caller("survivor")
    assert reply.startswith("ERROR ") and "cage survivor cannot be reached" in reply, reply
    wait_until(lambda: trap.connects >= 1, 5.0, message="a connection to the advertised port")
    env.assert_unharmed()


def test_a_valid_advert_is_used_once_and_its_replay_refused(env: Env, trap: Trap) -> None:
    advert = packet(env.hmac_key, "A", "ghost", trap.port)
    broadcast(env, advert)
    reply = env.call_through_caller("ghost")  # the advert is in: the caller connects to the advertised port
    assert reply.startswith("ERROR ") and "cage ghost cannot be reached" in reply, reply
    wait_until(lambda: trap.connects >= 1, 5.0, message="a connection to the advertised port")
    tried = trap.connects
    broadcast(env, advert)  # the same packet again, well within the replay window
    reply = env.call_through_caller("ghost")
    assert reply.startswith("ERROR ") and "no instance of cage ghost has been found" in reply, reply
    assert trap.connects == tried, "a replayed advert was accepted"
    assert_logged(env.caller, REFUSED_PACKETS)
    env.assert_unharmed()


# --- 4. impostors -----------------------------------------------------------------------------------


class Impostor:
    """A TLS server with a legitimate certificate of the cluster - but for another cage."""

    def __init__(self, env: Env, cage: str) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.load_cert_chain(env.cluster_cert(cage))
        self.context.load_verify_locations(env.keys_dir / keys.CA_CERT)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.connects = self.ended = self.handshakes = 0
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connects += 1
            conn.settimeout(5.0)
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    self.handshakes += 1
                    while data := tls.recv(65536):
                        self.received += data
            except (OSError, ssl.SSLError):
                pass
            self.ended += 1

    def assert_got_no_call(self) -> None:
        """It has been reached, and every connection has ended without a byte from the caller."""
        wait_until(lambda: self.connects >= 1, 5.0, message="a connection to the impostor")
        wait_until(lambda: self.ended == self.connects, 10.0, message="the impostor's connections ended")
        assert self.handshakes >= 1, "the impostor's certificate was not accepted: the test proves nothing"
        assert self.received == b"", "the impostor has received a call"

    def close(self) -> None:
        self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self.thread.join(10.0)


@pytest.fixture
def impostor(env: Env) -> Iterator[Impostor]:
    server = Impostor(env, "impostor")
    yield server
    server.close()


def register(env: Env, cage: str, port: int) -> Path:
    """A local registry entry, as a live process of this machine would write it, for `cage` at `port`."""
    folder = env.cluster.root / "cages" / ".registry" / FLOCK / cage
    folder.mkdir(parents=True, exist_ok=True)
    entry = folder / f"{secrets.token_hex(8)}.json"
    entry.write_text(json.dumps({"node": "impostor", "pid": os.getpid(), "netns": os.readlink("/proc/self/ns/net"),
                                 "host": "127.0.0.1", "port": port}))
    return entry


PINNING = r"the server there is not cage {cage} of flock DEFAULT \(it is Identity\(flock='DEFAULT', cage='impostor'\)\)"


@pytest.mark.parametrize("via", ["registry", "advert"])
def test_impostor_is_refused_by_the_caller(env: Env, impostor: Impostor, via: str) -> None:
    cage = f"ledger_{via}"
    if via == "registry":
        entry = register(env, cage, impostor.port)
    else:
        broadcast(env, packet(env.hmac_key, "A", cage, impostor.port))
    try:
        reply = env.call_through_caller(cage, arg="secret")
    finally:
        if via == "registry":
            entry.unlink()
    assert reply.startswith(f"ERROR ResourceError: cage {cage} cannot be reached: "), reply
    assert re.search(PINNING.format(cage=cage), reply), reply
    impostor.assert_got_no_call()
    env.assert_unharmed()


def test_impostor_registered_as_worker_gets_no_call(env: Env, impostor: Impostor) -> None:
    """Several impostor instances listed as `worker` next to the real one: the caller tries
    them, refuses each for its identity, and every call is answered by the real worker."""
    entries = [register(env, "worker", impostor.port) for _ in range(8)]
    try:
        answers = []
        deadline = time.monotonic() + 10.0
        while impostor.connects == 0 and time.monotonic() < deadline:
            answers.append(env.call_through_caller("worker", arg=f"call {len(answers)}"))
        worker_pid = env.worker.child_pids()[-1]
        for i, reply in enumerate(answers):
            assert reply == f"OK ['pong', 'call {i}', {worker_pid}]", reply
    finally:
        for entry in entries:
            entry.unlink()
    impostor.assert_got_no_call()
    env.assert_unharmed()


# --- bugs found in lib/ (these fail until lib/ is fixed) ------------------------------------------------


def answer_or_close(sock: ssl.SSLSocket) -> Any:
    """The next answer frame, or None if the cage closed the connection; fails if neither comes."""
    sock.settimeout(3.0)
    try:
        return read_answer(sock)
    except TimeoutError:
        pytest.fail("the cage neither answered nor closed the connection")
    except (EOFError, ConnectionError, ssl.SSLError):
        return None


@pytest.mark.parametrize("envelope", [{"kind": "poll"}, {"kind": "poll", "request": {"remain": "soon"}},
                                      {"kind": "poll", "request": ["not", "a", "dict"]}])
def test_malformed_poll_is_answered_or_disconnected(env: Env, envelope: dict[str, Any]) -> None:
    """protocols/rpc.py Connection._poll sets `current = _Busy()` and only then reads `remain`:
    a malformed poll raises inside the task, nothing answers, and the connection is wedged
    (every later frame queued behind a poll that never ends, the idle timer cancelled)."""
    sock, _ = connect(env, env.cluster_cert("attacker"))
    with sock:
        sock.sendall(frame(envelope))
        answer = answer_or_close(sock)
        if answer is not None:
            assert error_type(answer) == "pmnc.errors.ProtocolError"
            sock.sendall(frame(call_envelope("probe", "ping", "after the poll")))
            assert read_answer(sock)["result"][:2] == ["pong", "after the poll"]
    env.assert_unharmed()


def test_the_callers_log_levels_cannot_hide_a_refused_call(env: Env) -> None:
    """The callee continues the caller's log levels unchecked (protocols/rpc.py callee_request), and
    log.write takes any non-zero level as the threshold: log_levels=[-1] silences every record of
    that request, so a cage probing private names leaves no trace in the callee's log."""
    marker = env.tmp / "pwned-quietly"
    envelope = call_envelope("probe", "_secret", str(marker))
    envelope["request"]["log_levels"] = [-1]
    sock, _ = connect(env, env.cluster_cert("sneak"))
    with sock:
        sock.sendall(frame(envelope))
        answer = answer_or_close(sock)
    assert answer is None or "error" in answer, answer
    assert not marker.exists()
    assert_logged(env.worker, r"WRN \[[^\]]*\] .*cage sneak")
    env.assert_unharmed()
