"""Real NATS servers for the tests: Debian's nats-server 2.9 on loopback, one node or a 3-node cluster.

`single(folder)` starts one server, `cluster3(folder)` three with routes between them and
JetStream on each (a stream of replicas 3 works). Each node runs from a config file written
in its own folder (the form docs/nats/ shows), on free loopback ports, with its JetStream
store in that folder. Readiness is polled: the monitoring port's /healthz answers ok, and
for a cluster /routez shows the two other nodes and /jsz a meta leader. The fixtures
`nats_server` and `nats_cluster` kill every server by its pid at teardown; tests skip with
the reason when nats-server is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from peers import free_port, remove_orphans

NATS_SERVER = Path("/usr/sbin/nats-server")
PREFIX = "pmnc-nats-"  # of the temporary folders the fixtures make, in tempfile's directory
CLUSTER_NAME = "pmnc-test"


def node_config(*, name: str, port: int, http_port: int, store_dir: Path | None, cluster_port: int | None = None,
                routes: tuple[int, ...] = (), max_payload: int | None = None, extra: str = "") -> str:
    """A nats-server config: clients, monitoring and (for a cluster node) routes on 127.0.0.1."""
    lines = [f"server_name: {name}", f"listen: 127.0.0.1:{port}", f"http: 127.0.0.1:{http_port}"]
    if max_payload is not None:
        lines.append(f"max_payload: {max_payload}")
    if store_dir is not None:
        lines.append(f'jetstream {{\n  store_dir: "{store_dir}"\n  max_memory_store: 64MB\n  max_file_store: 1GB\n}}')
    if cluster_port is not None:
        route_urls = ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes)
        lines.append(f"cluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{cluster_port}\n"
                     f"  routes: [{route_urls}]\n}}")
    return "\n".join(lines) + "\n" + extra


class NatsServer:
    """One nats-server process run from `folder`/nats.conf; `url`, `port`, `http_port`."""

    def __init__(self, folder: Path, name: str, config: str, port: int, http_port: int,
                 jetstream: bool = False, routes: int = 0) -> None:
        if not NATS_SERVER.exists():
            pytest.skip(f"no NATS server at {NATS_SERVER} (Debian package nats-server)")
        self.folder, self.name, self.port, self.http_port = folder, name, port, http_port
        self.url = f"nats://127.0.0.1:{port}"
        self.jetstream, self.routes = jetstream, routes
        folder.mkdir(parents=True, exist_ok=True)
        self.config_file = folder / "nats.conf"
        self.config_file.write_text(config)
        self.log_file = folder / "nats.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "down"
        return f"<NatsServer {self.name} {self.url} {state}>"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def launch(self) -> NatsServer:
        """Start the process without waiting for it to be ready."""
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen([str(NATS_SERVER), "-c", str(self.config_file)], stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.folder)
        (self.folder / "nats.pid").write_text(str(self.process.pid))
        return self

    def start(self, timeout: float = 20.0) -> NatsServer:
        self.launch()
        self.wait_ready(timeout)
        return self

    def monitor(self, path: str) -> tuple[int, Any]:
        """GET a monitoring endpoint: (status, parsed JSON), or (0, None) when it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=2.0) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, None
        except (OSError, ValueError):
            return 0, None

    def ready(self) -> bool:
        """Healthy, with its routes up and (when clustered JetStream) a meta leader known."""
        if self.monitor("/healthz")[0] != 200:
            return False
        if self.routes and (self.monitor("/routez")[1] or {}).get("num_routes", 0) < self.routes:
            return False
        if self.jetstream and self.routes:
            meta = (self.monitor("/jsz")[1] or {}).get("meta_cluster") or {}
            return bool(meta.get("leader"))
        return True

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} ended with {self.process.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server {self.name} not ready within {timeout:.0f}s: {self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: a crash (JetStream's files stay for a restart)."""
        if self.running:
            assert self.process is not None
            os.kill(self.process.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(10)

    def stop(self) -> None:
        """A clean shutdown (SIGTERM), SIGKILL after 10 s."""
        if self.running:
            assert self.process is not None
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self, timeout: float = 30.0) -> NatsServer:
        """Start again on the same ports with the same store (after kill or stop)."""
        if self.running:
            self.stop()
        return self.start(timeout)


def single(tmp: Path, *, jetstream: bool = True, max_payload: int | None = None, extra: str = "") -> NatsServer:
    """One started server in `tmp`/n1."""
    folder = tmp / "n1"
    port, http_port = free_port(), free_port()
    config = node_config(name="n1", port=port, http_port=http_port,
                         store_dir=folder / "jetstream" if jetstream else None, max_payload=max_payload, extra=extra)
    return NatsServer(folder, "n1", config, port, http_port, jetstream=jetstream).start()


# nats-server 2.9 may settle with a route missing (CI saw "Duplicate Route", then no retry; route
# reconnects silently abandoned after duplicate resolution were fixed upstream in 2026, nats-server #8454)
MESH_ATTEMPTS = 2


def cluster3(tmp: Path, *, jetstream: bool = True, max_payload: int | None = None) -> list[NatsServer]:
    """Three started servers n1..n3 in `tmp`, each routing to the other two, one cluster. A mesh
    that has not formed in time is killed and started again, once, on new ports."""
    for attempt in range(1, MESH_ATTEMPTS + 1):
        try:
            return _cluster3(tmp if attempt == 1 else tmp / f"attempt{attempt}", jetstream, max_payload)
        except RuntimeError:
            if attempt == MESH_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def _cluster3(tmp: Path, jetstream: bool, max_payload: int | None) -> list[NatsServer]:
    ports = [(free_port(), free_port(), free_port()) for _ in range(3)]
    nodes = []
    for i, (port, http_port, cluster_port) in enumerate(ports):
        name = f"n{i + 1}"
        folder = tmp / name
        routes = tuple(other[2] for j, other in enumerate(ports) if j != i)
        config = node_config(name=name, port=port, http_port=http_port,
                             store_dir=folder / "jetstream" if jetstream else None, cluster_port=cluster_port,
                             routes=routes, max_payload=max_payload)
        nodes.append(NatsServer(folder, name, config, port, http_port, jetstream=jetstream, routes=2))
    start_all(nodes)
    return nodes


def start_all(nodes: list[NatsServer], timeout: float = 30.0) -> None:
    """Launch every node, then wait for all: a JetStream meta leader needs a quorum up."""
    try:
        for node in nodes:
            node.launch()
        for node in nodes:
            node.wait_ready(timeout)
    except BaseException:
        for node in nodes:
            node.kill()
        raise


class NatsFolder:
    """A temporary folder for servers, with owner.pid so a later run can clean up after a killed one."""

    def __init__(self) -> None:
        if not NATS_SERVER.exists():
            pytest.skip(f"no NATS server at {NATS_SERVER} (Debian package nats-server)")
        remove_orphans(PREFIX, "*/nats.pid")  # servers a killed test run left behind
        self.path = Path(tempfile.mkdtemp(prefix=PREFIX))
        (self.path / "owner.pid").write_text(str(os.getpid()))
        self.servers: list[NatsServer] = []

    def single(self, **kwargs: Any) -> NatsServer:
        server = single(self.path / f"s{len(self.servers)}", **kwargs)
        self.servers.append(server)
        return server

    def cluster3(self, **kwargs: Any) -> list[NatsServer]:
        nodes = cluster3(self.path / f"c{len(self.servers)}", **kwargs)
        self.servers += nodes
        return nodes

    def cluster_of(self, configs: list[tuple[str, str, int, int]]) -> list[NatsServer]:
        """Start a cluster from config texts: (name, config, client port, monitoring port) each."""
        nodes = [NatsServer(self.path / name, name, config, port, http_port, jetstream=True,
                            routes=len(configs) - 1) for name, config, port, http_port in configs]
        self.servers += nodes
        start_all(nodes)
        return nodes

    def close(self) -> None:
        for server in self.servers:
            server.kill()
        shutil.rmtree(self.path, ignore_errors=True)


@pytest.fixture
def nats_folder() -> Iterator[NatsFolder]:
    """`nats_folder.single(max_payload=...)` / `.cluster3()`: servers of one's own, killed afterwards."""
    folder = NatsFolder()
    yield folder
    folder.close()


@pytest.fixture
def nats_server(nats_folder: NatsFolder) -> NatsServer:
    """One server with JetStream, for this test."""
    return nats_folder.single()


@pytest.fixture
def nats_cluster(nats_folder: NatsFolder) -> list[NatsServer]:
    """Three clustered servers with JetStream, for this test."""
    return nats_folder.cluster3()
