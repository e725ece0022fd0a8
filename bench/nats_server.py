"""A nats-server (Debian's /usr/sbin/nats-server) on free loopback ports in a benchmark's temporary folder."""

from __future__ import annotations

import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from http_hello import HOST, end_process, read_text, wait_until

NATS_SERVER = Path("/usr/sbin/nats-server")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    """A loopback port free right now (the server binds it a moment later)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class NatsServer:
    """One nats-server run from `folder`/nats.conf: clients on `url`, monitoring on `http_port`, no JetStream."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port, self.http_port = 0, 0
        self.process: subprocess.Popen[bytes] | None = None
        self.description = ""

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        if not NATS_SERVER.exists():
            raise RuntimeError(f"no NATS server at {NATS_SERVER} (Debian package nats-server)")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port, self.http_port = free_port(), free_port()
        config = self.folder / "nats.conf"
        config.write_text(f"listen: {HOST}:{self.port}\nhttp: {HOST}:{self.http_port}\n")
        with open(self.folder / "nats.log", "wb") as log:
            self.process = subprocess.Popen([str(NATS_SERVER), "-c", str(config)], cwd=self.folder, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        wait_until(self._healthy, START_TIMEOUT, f"nats-server: /healthz on {HOST}:{self.http_port}")
        version = subprocess.run([str(NATS_SERVER), "--version"], capture_output=True, text=True,
                                 timeout=10, check=False).stdout.strip()
        self.description = f"{version or 'nats-server'} at {self.url} (pid {self.pid})"

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"nats-server exited with code {self.process.returncode}: "
                               f"{read_text(self.folder / 'nats.log')[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.http_port}/healthz", timeout=2.0) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> str:
        if self.process is None:
            return "nats-server was not started"
        if self.process.poll() is not None:
            return f"nats-server had exited with code {self.process.returncode}"
        self.process.terminate()
        said = end_process(self.process, "nats-server", STOP_TIMEOUT, lambda: None)
        # nats-server shuts down cleanly on SIGTERM and then exits with code 1
        return "nats-server stopped" if self.process.returncode == 1 else said
