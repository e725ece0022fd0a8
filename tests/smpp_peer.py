"""A real SMSC for the SMPP tests: node-smpp (npm `smpp` 0.5.1, an implementation not ours)
run by Node.js with `tests/smsc/smsc.js`, on free loopback ports.

`smsc` (per test) is the session-wide SMSC, reset before the test; `smsc_own` (per test) is
one of its own, for tests that cut it off or restart it. Both take the password PASSWORD.
`./setup test` installs node-smpp into tests/smsc/node_modules (npm ci); without Node.js or
it, the tests skip saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from peers import free_port, remove_orphans

HERE = Path(__file__).resolve().parent / "smsc"
PREFIX = "pmnc-smsc-"
SYSTEM_ID, PASSWORD = "pmnc", "secret"


class Smsc:
    """One SMSC process: SMPP on `port`, the JSON control protocol of smsc.js on `control_port`."""

    def __init__(self) -> None:
        if shutil.which("node") is None or not (HERE / "node_modules" / "smpp").is_dir():
            pytest.skip("no Node.js or no node-smpp in tests/smsc/node_modules (./setup test installs it)")
        remove_orphans(PREFIX, "smsc.pid", signal.SIGTERM)
        self.folder = Path(tempfile.mkdtemp(prefix=PREFIX))
        (self.folder / "owner.pid").write_text(str(os.getpid()))
        self.port, self.control_port = free_port(), free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def start(self, timeout: float = 15.0) -> None:
        """Start it (again, on the same ports) and wait until the control port answers."""
        env = dict(os.environ, SMSC_PASSWORD=PASSWORD)
        with open(self.folder / "smsc.log", "ab") as log:
            self.process = subprocess.Popen(["node", str(HERE / "smsc.js"), str(self.port), str(self.control_port)],
                                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=HERE)
        (self.folder / "smsc.pid").write_text(str(self.process.pid))
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.control(cmd="stats", timeout=1.0)
                return
            except OSError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"the SMSC ended with {self.process.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the SMSC did not answer within {timeout:.0f}s: {self.log_tail()}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def control(self, timeout: float = 10.0, **request: Any) -> dict[str, Any]:
        """One request on the control port: `cmd="stats"`, `cmd="set", echo=True`, ..."""
        with socket.create_connection(("127.0.0.1", self.control_port), timeout=timeout) as s:
            s.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("the SMSC closed the control connection")
                data += chunk
        answer: dict[str, Any] = json.loads(data)
        if "error" in answer:
            raise RuntimeError(f"SMSC control: {answer['error']}")
        return answer

    def stats(self) -> dict[str, Any]:
        return self.control(cmd="stats")

    def set(self, **settings: Any) -> None:
        self.control(cmd="set", **settings)

    def mo(self, text: str | None = None, *, hex: str | None = None, source: str = "31699999999",
           destination: str = "31600000001", **kwargs: Any) -> int:
        """A deliver_sm (or `command="data_sm"`) to every receiving session; how many."""
        request: dict[str, Any] = {"cmd": "mo", "from": source, "to": destination, **kwargs}
        if text is not None:
            request["text"] = text
        if hex is not None:
            request["hex"] = hex
        return int(self.control(**request)["queued"])

    def bound(self) -> list[dict[str, Any]]:
        return list(self.stats()["bound"])

    def config(self, **overrides: Any) -> dict[str, Any]:
        """A config_interface_<name>.py dict for this SMSC."""
        config: dict[str, Any] = {"protocol": "smpp", "server_address": self.address, "system_id": SYSTEM_ID,
                                  "password": PASSWORD, "system_type": "pmnc", "esme_type": "xcvr",
                                  "connect_timeout": 5.0, "response_timeout": 3.0}
        config.update(overrides)
        return config

    def log_tail(self) -> str:
        try:
            return (self.folder / "smsc.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def smsc_server() -> Iterator[Smsc]:
    server = Smsc()
    yield server
    server.close()


@pytest.fixture
def smsc(smsc_server: Smsc) -> Smsc:
    smsc_server.control(cmd="reset")
    return smsc_server


@pytest.fixture
def smsc_own() -> Iterator[Smsc]:
    server = Smsc()
    yield server
    server.close()
