"""What the test peers' harnesses share (pg_peer, amq_peer, mail_peer): free loopback ports,
and the servers a killed test run left behind."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def remove_orphans(prefix: str, pid_file: str, sig: int = signal.SIGKILL) -> None:
    """Folders `<tempdir>/<prefix>*` of a test run that was killed (its owner.pid is dead): the
    server whose pid is the first word of `pid_file` there gets `sig`, the folder is removed."""
    for folder in Path(tempfile.gettempdir()).glob(prefix + "*"):
        try:
            owner = int((folder / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if alive(owner):
            continue
        try:
            os.kill(int((folder / pid_file).read_text().split()[0]), sig)
        except (OSError, ValueError, IndexError):
            pass
        shutil.rmtree(folder, ignore_errors=True)
