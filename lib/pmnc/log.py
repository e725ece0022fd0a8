"""The cage log: one line per record in cages/<cage>/logs/<cage>-YYYYMMDD.log.

Record format, as the original's: `HH:MM:SS.cc LVL [thread] message`.
A record is written when its level is at or below the threshold: the
current request's pushed level if any, else the cage level. Logging never
raises into the caller.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from typing import Any, TextIO

from pmnc import request as _request

ERROR, MESSAGE, WARNING, LOG, INFO, DEBUG, NOISE = range(1, 8)
LEVELS = {"ERROR": ERROR, "MESSAGE": MESSAGE, "WARNING": WARNING, "LOG": LOG,
          "INFO": INFO, "DEBUG": DEBUG, "NOISE": NOISE}
CODES = {ERROR: "ERR", MESSAGE: "MSG", WARNING: "WRN", LOG: "LOG", INFO: "INF", DEBUG: "DBG", NOISE: "NSE"}

# Every record is one line: control characters other than TAB become spaces.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f]")


def level_of(name: str | int) -> int:
    """`"DEBUG"` → 6; accepts numbers too. A bad name is a clear error."""
    if isinstance(name, int) and ERROR <= name <= NOISE:
        return name
    try:
        return LEVELS[str(name).upper()]
    except KeyError:
        raise ValueError(f"unknown log level {name!r}, expected one of {', '.join(LEVELS)}") from None


class LogFile:
    """Append-only daily files; ERROR records are fsynced before returning."""

    def __init__(self, directory: str, cage: str) -> None:
        self.directory = directory
        self.cage = cage
        self._day = ""
        self._fd = -1

    def path(self, day: str) -> str:
        return os.path.join(self.directory, f"{self.cage}-{day}.log")

    def write(self, data: bytes, day: str, sync: bool) -> None:
        if day != self._day:
            self._rotate(day)
        if self._fd >= 0:
            os.write(self._fd, data)
            if sync:
                os.fsync(self._fd)

    def _rotate(self, day: str) -> None:
        try:
            fd = os.open(self.path(day), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError:
            return  # keep writing to the old file rather than lose records
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._day = fd, day

    def flush(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd, self._day = -1, ""


class _Sink:
    """Where records go: the log file, or stderr before a cage sets one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.file: LogFile | None = None
        self.echo: TextIO | None = sys.stderr
        self.echo_level = NOISE
        self.level = LOG


_sink = _Sink()


def configure(file: LogFile | None, *, echo: TextIO | None = None, echo_level: int = MESSAGE) -> None:
    """Send records to `file`, echoing those at or below `echo_level` to `echo`."""
    with _sink.lock:
        if _sink.file is not None and _sink.file is not file:
            _sink.file.close()
        _sink.file, _sink.echo, _sink.echo_level = file, echo, echo_level


def set_level(level: str | int) -> None:
    _sink.level = level_of(level)


def get_level() -> int:
    return _sink.level


def enabled(level: int) -> bool:
    threshold = _request.current().log_level or _sink.level
    return level <= threshold


def write(level: int, message: str, where: str = "") -> None:
    """Emit one record if `level` passes the threshold. Never raises."""
    try:
        if level > (_request.current().log_level or _sink.level):
            return
        _emit(level, message, where)
    except Exception:
        pass


def _emit(level: int, message: str, where: str) -> None:
    now = time.time()
    local = time.localtime(now)
    request = _request.current()
    if where:
        message = f"{message} # {where}"
    if request.deadline is not None:
        message = f"{message}{' by ' if where else ' # by '}{request.description}"
    line = "{} {} [{}] {}\n".format(
        time.strftime("%H:%M:%S", local) + f".{int(now * 100) % 100:02d}",
        CODES.get(level, "???"),
        threading.current_thread().name,
        _CONTROL.sub(" ", message),
    )
    data = line.encode("utf-8", "replace")
    with _sink.lock:
        if _sink.file is not None:
            _sink.file.write(data, time.strftime("%Y%m%d", local), level == ERROR)
        if _sink.echo is not None and level <= _sink.echo_level:
            try:
                _sink.echo.write(line)
                _sink.echo.flush()
            except (OSError, ValueError):
                pass


def flush() -> None:
    with _sink.lock:
        if _sink.file is not None:
            _sink.file.flush()


def join(args: tuple[Any, ...]) -> str:
    """Arguments stringified and space-joined; an unprintable one by its class."""
    parts = []
    for arg in args:
        try:
            parts.append(arg if isinstance(arg, str) else str(arg))
        except Exception:
            parts.append(type(arg).__name__)
    return " ".join(parts)


# The framework's own records: `log.message("the cage is starting up")`.
def error(*args: Any) -> None:
    write(ERROR, join(args))


def message(*args: Any) -> None:
    write(MESSAGE, join(args))


def warning(*args: Any) -> None:
    write(WARNING, join(args))


def log(*args: Any) -> None:
    write(LOG, join(args))


def info(*args: Any) -> None:
    write(INFO, join(args))


def debug(*args: Any) -> None:
    write(DEBUG, join(args))


def noise(*args: Any) -> None:
    write(NOISE, join(args))


class _LevelLogger:
    """`pmnc.log.debug(...)` logs; `if pmnc.log.debug:` is a cheap test."""

    __slots__ = ("level", "module")

    def __init__(self, level: int, module: str) -> None:
        self.level, self.module = level, module

    def __bool__(self) -> bool:
        return enabled(self.level)

    def __call__(self, *args: Any, _depth: int = 1) -> None:
        if not enabled(self.level):
            return
        frame = sys._getframe(_depth)
        write(self.level, join(args), f"{self.module}.py:{frame.f_lineno} in {frame.f_code.co_name}()")


class ModuleLog:
    """The `pmnc.log` of one cage module; `pmnc.log(...)` logs at LOG level."""

    def __init__(self, module: str) -> None:
        self.error = _LevelLogger(ERROR, module)
        self.message = _LevelLogger(MESSAGE, module)
        self.warning = _LevelLogger(WARNING, module)
        self.log = _LevelLogger(LOG, module)
        self.info = _LevelLogger(INFO, module)
        self.debug = _LevelLogger(DEBUG, module)
        self.noise = _LevelLogger(NOISE, module)

    def __call__(self, *args: Any) -> None:
        self.log(*args, _depth=2)

    def level(self, name: str | int | None = None) -> _PushedLevel:
        """Push a level on the current request (usable as `with`); no name pops."""
        levels = _request.current().log_levels
        if name is None:
            if levels:
                levels.pop()
            return _PushedLevel(None)
        levels.append(level_of(name))
        return _PushedLevel(levels)

    def flush(self) -> None:
        flush()


class _PushedLevel:
    def __init__(self, levels: list[int] | None) -> None:
        self._levels = levels

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        if self._levels:
            self._levels.pop()

