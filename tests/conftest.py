"""Shared test helpers: temporary cage trees, real cage processes, in-process cages.

Nothing here sleeps to wait: every wait polls a condition with a deadline.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pmnc.facade import Pmnc
from pmnc.loader import Loader
from pmnc.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "lib"))

from pmnc import log  # noqa: E402
from pmnc import request as _request  # noqa: E402
from pmnc.cage import Cage  # noqa: E402
from pmnc.request import Request, attached  # noqa: E402

# fixtures of test peers: lan (network namespaces), pg (PostgreSQL 15), mongo (nx-27017), amq (ActiveMQ),
# mail (Dovecot + aiosmtpd), smsc (node-smpp)
pytest_plugins = ["lan", "pg_peer", "mongo_peer", "amq_peer", "mail_peer", "smpp_peer", "nats_peer"]


@pytest.fixture(autouse=True)
def _no_request_outlives_its_test() -> Iterator[None]:
    """A request a test attached to its thread (`fake_request`, as the original's tests do)
    is detached when the test ends: a later test on the same thread would find it expired."""
    yield
    _request.attach(None)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
               message: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail at the deadline."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            raise AssertionError(f"{message} not reached within {timeout}s")
        time.sleep(interval)


def module_source(body: str, exports: list[str] | None = None, eof: bool = True) -> str:
    """A cage module file: `__all__`, the dedented body, and the `# EOF` line."""
    text = textwrap.dedent(body).strip("\n") + "\n"
    if exports is not None:
        text = f"__all__ = {exports!r}\n" + text
    return text + ("# EOF\n" if eof else "")


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Byte flips, insertions, deletions and truncations at positions taken modulo the length."""
    buffer = bytearray(data)
    for kind, position, byte in edits:
        if not buffer:
            break
        at = position % len(buffer)
        if kind == 0:
            buffer[at] = byte
        elif kind == 1:
            buffer.insert(at, byte)
        elif kind == 2:
            del buffer[at]
        else:
            del buffer[at:]
    return bytes(buffer)


def config_source(config: dict[str, Any], self_test_config: dict[str, Any] | None = None) -> str:
    text = f"config = {config!r}\n"
    if self_test_config is not None:
        text += f"self_test_config = {self_test_config!r}\n"
    return text + "# EOF\n"


def write_file(path: Path, text: str) -> None:
    """Write a module the way an editor saves: a new file renamed into place."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    os.replace(temp, path)


def http_config(port: int = 0, **overrides: Any) -> dict[str, Any]:
    config = {"protocol": "http", "listener_address": ("127.0.0.1", port), "max_connections": 100}
    config.update(overrides)
    return config


HELLO_HANDLER = module_source("""
    def process_request(request, response):
        response["content"] = "Hello, world !"
        response["headers"]["content-type"] = "text/plain"
""", ["process_request"])


def make_tree(base: Path, cage: str = "sample", files: dict[str, str] | None = None,
              interfaces: dict[str, dict[str, Any]] | None = None, request_timeout: float = 10.0,
              thread_count: int = 10, log_level: str = "LOG") -> Path:
    """A runnable install tree under `base`: startup.py, lib, cages/.shared and one cage.

    `interfaces` maps interface names to their config dicts; a handler that
    answers "Hello, world !" is written for each unless `files` has one.
    """
    root = base / "tree"
    (root / "cages").mkdir(parents=True)
    shutil.copy(ROOT / "startup.py", root / "startup.py")
    os.symlink(ROOT / "lib", root / "lib")
    shutil.copytree(ROOT / "cages" / ".shared", root / "cages" / ".shared",
                    ignore=shutil.ignore_patterns("ssl_keys", "__pycache__"))
    cage_dir = root / "cages" / cage
    cage_dir.mkdir()
    interfaces = interfaces or {}
    (cage_dir / "config_interfaces.py").write_text(config_source({
        "interfaces": tuple(interfaces), "request_timeout": request_timeout,
        "thread_count": thread_count, "sweep_period": 15.0, "log_level": log_level}))
    for name, config in interfaces.items():
        (cage_dir / f"config_interface_{name}.py").write_text(config_source(config))
        (cage_dir / f"interface_{name}.py").write_text(HELLO_HANDLER)
    for name, text in (files or {}).items():
        (cage_dir / name).write_text(text)
    return root


class ServedLoader(Loader):
    """A loader whose modules get their `pmnc` objects as in a cage (the runtime hands them
    out; none of its services is started): `root` is the framework's own `pmnc`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runtime = Runtime(self)
        self.root = self.runtime.root

    def pmnc(self, module: str) -> Pmnc:
        return self.runtime.pmnc(module)


class CageTree:
    """cages/.shared and cages/sample under a temporary folder, for loaders in this process."""

    def __init__(self, base: Path) -> None:
        self.cages = base / "cages"
        self.shared = self.cages / ".shared"
        self.cage = self.cages / "sample"
        self.shared.mkdir(parents=True)
        self.cage.mkdir()

    def module(self, name: str, body: str, exports: list[str] | None = None, *, folder: Path | None = None,
               eof: bool = True) -> Path:
        path = (folder or self.cage) / f"{name}.py"
        write_file(path, module_source(body, exports, eof))
        return path

    def write(self, folder: Path, name: str, config: dict[str, Any],
              self_test_config: dict[str, Any] | None = None) -> None:
        write_file(folder / f"{name}.py", config_source(config, self_test_config))


@pytest.fixture
def tree(tmp_path: Path) -> CageTree:
    return CageTree(tmp_path)


class CageProcess:
    """A real `python startup.py cage` process in a temporary tree."""

    LISTENS = re.compile(r"interface (\w+) listens on https?://[\d.]+:(\d+)/")

    def __init__(self, root: Path, cage: str = "sample", node: str | None = None,
                 prefix: list[str] | None = None) -> None:
        """`node` runs it as `startup.py node.cage` (its own log and pid files); `prefix`
        goes before the command (e.g. `ip netns exec <host>`)."""
        self.root, self.cage, self.node = root, cage, node
        self.target = f"{node}.{cage}" if node else cage
        self.prefix = prefix or []
        self.cage_dir = root / "cages" / cage
        self.logs = self.cage_dir / "logs"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, ready: bool = True) -> CageProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.starts += 1
        self.process = subprocess.Popen([*self.prefix, sys.executable, str(self.root / "startup.py"), self.target],
                                        cwd=self.root, env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if ready:
            self.wait_for_log("the cage is ready", count=self.log_text().count("the cage is ready") + 1)
        return self

    def log_text(self) -> str:
        if not self.logs.is_dir():
            return ""
        return "".join(p.read_text(errors="replace") for p in sorted(self.logs.glob(f"{self.target}-*.log")))

    def wait_for_log(self, pattern: str, timeout: float = 15.0, count: int = 1) -> re.Match[str]:
        """The `count`-th match of the regex `pattern` in the log, when it appears."""
        def found() -> re.Match[str] | None:
            matches = list(re.finditer(pattern, self.log_text()))
            return matches[count - 1] if len(matches) >= count else None
        return wait_until(found, timeout, interval=0.05, message=f"log line /{pattern}/ (#{count})")  # type: ignore[no-any-return]

    def port(self, interface: str = "http", count: int = 1) -> int:
        match = self.wait_for_log(rf"interface {interface} listens on https?://[\d.]+:(\d+)/", count=count)
        return int(match.group(1))

    def child_pids(self) -> list[int]:
        return [int(m) for m in re.findall(r"the cage process has started, pid (\d+)", self.log_text())]

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM to the supervisor; returns its exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """Kill the supervisor and its cage without ceremony (test cleanup)."""
        if self.process is None:
            return
        for pid in self.child_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


class Cluster:
    """One install tree holding several cages (so they share cages/.shared and its keys),
    each started as real processes; all are killed afterwards."""

    def __init__(self, base: Path) -> None:
        self.root = make_tree(base, cage="cluster_unused")
        shutil.rmtree(self.root / "cages" / "cluster_unused")
        self.processes: list[CageProcess] = []

    def cage(self, name: str, files: dict[str, str] | None = None, *, interfaces: tuple[str, ...] = ("rpc",),
             request_timeout: float = 10.0, thread_count: int = 10, log_level: str = "LOG",
             cpu_affinity: Any = "auto") -> Path:
        """Make (or update) cage folder `name` with `files` and its config_interfaces."""
        folder = self.root / "cages" / name
        folder.mkdir(exist_ok=True)
        (folder / "config_interfaces.py").write_text(config_source({
            "interfaces": interfaces, "request_timeout": request_timeout, "thread_count": thread_count,
            "sweep_period": 15.0, "log_level": log_level,
            **({} if cpu_affinity == "auto" else {"cpu_affinity": cpu_affinity})}))
        for file, text in (files or {}).items():
            write_file(folder / file, text)
        return folder

    def shared(self, file: str, text: str) -> None:
        write_file(self.root / "cages" / ".shared" / file, text)

    def start(self, cage: str, node: str | None = None, *, prefix: list[str] | None = None,
              ready: bool = True) -> CageProcess:
        process = CageProcess(self.root, cage, node, prefix)
        self.processes.append(process)
        return process.start(ready=ready)

    def kill_all(self) -> None:
        for process in self.processes:
            process.kill()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(tmp_path)
    yield running
    running.kill_all()


@pytest.fixture
def cage_process(tmp_path: Path) -> Iterator[Callable[..., CageProcess]]:
    """`cage_process(**make_tree_kwargs)` starts a real cage; all are killed afterwards."""
    started: list[CageProcess] = []

    def start(cage: str = "sample", ready: bool = True, **kwargs: Any) -> CageProcess:
        root = make_tree(tmp_path / f"p{len(started)}", cage=cage, **kwargs)
        process = CageProcess(root, cage)
        started.append(process)
        return process.start(ready=ready)

    yield start
    for process in started:
        process.kill()


class InProcessCage:
    """A cage running in this test process, its log going to a file in the tree."""

    def __init__(self, root: Path, cage: str = "sample") -> None:
        self.root, self.cage_name = root, cage
        self.cage_dir = root / "cages" / cage
        logs = self.cage_dir / "logs"
        logs.mkdir(exist_ok=True)
        self.log_file = log.LogFile(str(logs), cage)
        log.configure(self.log_file, echo=None)
        self.cage = Cage(str(root / "cages"), cage, "test")
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.cage.run, args=(self.stopping,), name="cage", daemon=True)

    def start(self) -> InProcessCage:
        self.thread.start()
        wait_until(lambda: "the cage is ready" in self.log_text(), 15.0, message="cage ready")
        return self

    def log_text(self) -> str:
        logs = self.cage_dir / "logs"
        return "".join(p.read_text(errors="replace") for p in sorted(logs.glob("*.log")))

    def address(self, interface: str = "http") -> tuple[str, int]:
        live = self.cage.interfaces.live[interface][0]
        return live.address  # type: ignore[attr-defined,no-any-return]

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(30.0)
        log.configure(None, echo=sys.stderr)


@pytest.fixture
def in_process_cage(tmp_path: Path) -> Iterator[Callable[..., InProcessCage]]:
    """`in_process_cage(**make_tree_kwargs)`: a started cage in this process, stopped afterwards."""
    cages: list[InProcessCage] = []

    def start(cage: str = "sample", **kwargs: Any) -> InProcessCage:
        root = make_tree(tmp_path / f"c{len(cages)}", cage=cage, **kwargs)
        running = InProcessCage(root, cage)
        cages.append(running)
        return running.start()

    yield start
    for running in cages:
        running.stop()


@pytest.fixture
def attach() -> Iterator[Callable[[float], Request]]:
    """`attach(timeout)` makes a finite request the test thread's current one
    (the last one attached is current) until the test ends."""
    contexts: list[Any] = []

    def attach(timeout: float = 5.0) -> Request:
        request = Request(timeout=timeout, interface="test", protocol="test")
        context = attached(request)
        context.__enter__()
        contexts.append(context)
        return request

    yield attach
    for context in reversed(contexts):
        context.__exit__(None, None, None)


def http_request(port: int, path: str = "/", method: str = "GET", body: bytes | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 15.0,
                 host: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection: (status, lower-cased headers, body)."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


class Pki:
    """A test CA in `base`: ca.pem, server.pem (key + certificate for 127.0.0.1) and client.pem."""

    def __init__(self, base: Path) -> None:
        now = datetime.datetime.now(datetime.UTC)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pmnc test CA")])
        self.ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
                        .public_key(self.ca_key.public_key()).serial_number(x509.random_serial_number())
                        .not_valid_before(now - datetime.timedelta(days=1))
                        .not_valid_after(now + datetime.timedelta(days=30))
                        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                     key_encipherment=False, data_encipherment=False,
                                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                                     encipher_only=False, decipher_only=False), critical=True)
                        .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.ca_key.public_key()),
                                       critical=False)
                        .sign(self.ca_key, hashes.SHA256()))
        self.ca_file = base / "ca.pem"
        self.ca_file.write_bytes(self.ca_cert.public_bytes(serialization.Encoding.PEM))
        self.server_file = self._issue(base / "server.pem", "127.0.0.1", now, server=True)
        self.client_file = self._issue(base / "client.pem", "test-client", now, server=False)

    def _issue(self, path: Path, common_name: str, now: datetime.datetime, server: bool) -> Path:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                   .issuer_name(self.ca_cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()),
                                  critical=False)
                   .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server
                                                         else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
                                  critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        cert = builder.sign(self.ca_key, hashes.SHA256())
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())
                         + cert.public_bytes(serialization.Encoding.PEM))
        return path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    base = tmp_path / "pki"
    base.mkdir()
    return Pki(base)
