"""A benchmark script run by a runner (median5.py, scaling.py): output read as it comes, a time limit, a clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
STOP_GRACE = 90.0  # seconds an interrupted run gets to stop its servers before it is killed


class Interrupted(Exception):
    """The runner got SIGTERM: the running script is stopped cleanly, then the runner ends."""


def stop_cleanly_on_signals() -> None:
    """SIGTERM raises Interrupted; SIGINT gets its default. Started in the background, a runner has
    SIGINT ignored and its scripts would inherit that; they stop their servers on KeyboardInterrupt,
    so they must get SIGINT's default (a handler here gives them that)."""
    def terminate(signum: int, frame: FrameType | None) -> None:
        raise Interrupted

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def run(command: list[str], *, timeout: float, on_line: Callable[[str], None],
        name: str) -> tuple[int | None, list[str]]:
    """`command` in a session of its own, unbuffered, each line of its output handed to `on_line` as it
    comes; (exit code, the lines). On Ctrl-C, SIGTERM or the timeout it gets SIGINT (the scripts stop
    their servers on KeyboardInterrupt) and STOP_GRACE to clean up; the first two are raised again."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # so that a long run's progress shows as it goes
    process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=_read, args=(process, lines, on_line), name="reader", daemon=True)
    reader.start()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        stop(process)
        lines.append(f"{name}: interrupted after {timeout:.0f}s\n")
    except (KeyboardInterrupt, Interrupted):
        stop(process)
        raise
    finally:
        reader.join(10.0)
    return process.returncode, lines


def _read(process: subprocess.Popen[str], lines: list[str], on_line: Callable[[str], None]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        on_line(line)


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        process.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
