"""A real MongoDB wire-protocol peer for tests: nx-27017 on 127.0.0.1, in memory, in a temp dir.

`mongo_peer` (session-scoped) is one server shared by a test run;
`MongoPeer(base).start()` makes a private one a test may suspend or stop.
Readiness is polled with a deadline: the port accepting (between tries the
wait is on the process, so a server that dies is seen at once), then a
`ping`. A peer is stopped by its pid. Register with `-p mongo_peer` or
`pytest_plugins = [..., "mongo_peer"]` (tests/ is on sys.path);
PYTEST_DONT_REWRITE, as test modules import it too.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pymongo
import pytest
from peers import free_port
from pymongo.errors import PyMongoError

HOST = "127.0.0.1"
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0


def _executable() -> list[str]:
    script = Path(sys.executable).parent / "nx-27017"
    if script.exists():
        return [str(script)]
    found = shutil.which("nx-27017")
    if found is None:
        pytest.skip("nx-27017 is not installed (pip install nx-27017)")
    return [found]


class MongoPeer:
    """One nx-27017 process: `--data-dir memory`, its logs and pid file in `base`."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return HOST, self.port

    @property
    def uri(self) -> str:
        return f"mongodb://{HOST}:{self.port}/?directConnection=true"

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    @property
    def log_file(self) -> Path:
        return self.base / "nx.log"

    def start(self) -> MongoPeer:
        self.port = free_port()
        with open(self.base / "stdout.log", "ab") as out:
            self.process = subprocess.Popen(
                [*_executable(), "--host", HOST, "-p", str(self.port), "--data-dir", "memory",
                 "--log-file", str(self.log_file), "--pid-file", str(self.base / "nx.pid")],
                cwd=self.base, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(time.monotonic() + READY_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, deadline: float) -> None:
        process = self.process
        assert process is not None
        while True:
            try:
                socket.create_connection(self.address, timeout=0.5).close()
                break
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise RuntimeError(f"nx-27017 did not listen on port {self.port} within {READY_TIMEOUT}s")
            try:
                code = process.wait(0.02)  # the pause between tries, and a dead server ends it
            except subprocess.TimeoutExpired:
                continue
            raise RuntimeError(f"nx-27017 exited with {code}: {(self.base / 'stdout.log').read_text()[-2000:]}")
        client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
            self.uri, serverSelectionTimeoutMS=int(max(deadline - time.monotonic(), 0.1) * 1000))
        try:
            client.admin.command("ping")
        except PyMongoError as e:
            raise RuntimeError(f"nx-27017 on port {self.port} does not answer: {e}") from None
        finally:
            client.close()

    def suspend(self) -> None:
        """SIGSTOP: the port still accepts (the kernel does) but nothing answers."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM by pid (SIGKILL if it lingers); idempotent."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGCONT)  # a suspended process would not see SIGTERM until resumed
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)

    def __repr__(self) -> str:
        state = "stopped" if self.process is None or self.process.poll() is not None else f"pid={self.pid}"
        return f"<MongoPeer {HOST}:{self.port} {state}>"


@pytest.fixture(scope="session")
def mongo_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoPeer]:
    """One nx-27017 for the whole run, stopped (by pid) at its end."""
    peer = MongoPeer(tmp_path_factory.mktemp("nx-27017")).start()
    try:
        yield peer
    finally:
        peer.stop()
