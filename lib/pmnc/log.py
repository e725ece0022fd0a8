"""The cage log: one line per record in cages/<cage>/logs/<cage>-YYYYMMDD.log.

Record format, as the original's: `HH:MM:SS.cc LVL [thread] message`.
A record is written when its level is at or below the threshold: the
current request's pushed level if any, else the cage level. Logging never
raises into the caller.

Repeats are folded, so that a fault hit by every request (or a peer opening
connection after connection) cannot fill the disk: ERROR and WARNING records
(not MESSAGE: the cage's lifecycle is told in full) of one level and source
whose texts differ only in numbers, hex ids, quoted strings and addresses
(request ids too) share a key; in a window of REPEAT_WINDOW seconds from a key's
first record, its first REPEAT_SHOWN records are written and the rest
counted, and when the window ends (seen by the next such record or by
flush(), which the cage calls every second) one line says
`<the first text> ... and 1,200 more like it in the last 10 s`.

Libraries (psycopg, pymongo, asyncio, watchdog ...) log through stdlib
`logging`; bridge_stdlib() sends their records here as `name: text`, at the
matching level (CRITICAL and ERROR -> ERROR, WARNING -> WARNING, INFO ->
INFO, DEBUG -> DEBUG, lower -> NOISE), exceptions as one exc_string line.
The root logger's level follows the cage level, so records the cage would
drop are not even made; a level pushed by one request does not reach them.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from typing import Any, TextIO

from pmnc import request as _request
from pmnc.errors import exc_string

ERROR, MESSAGE, WARNING, LOG, INFO, DEBUG, NOISE = range(1, 8)
LEVELS = {"ERROR": ERROR, "MESSAGE": MESSAGE, "WARNING": WARNING, "LOG": LOG,
          "INFO": INFO, "DEBUG": DEBUG, "NOISE": NOISE}
CODES = {ERROR: "ERR", MESSAGE: "MSG", WARNING: "WRN", LOG: "LOG", INFO: "INF", DEBUG: "DBG", NOISE: "NSE"}

# Every record is one line: control characters other than TAB become spaces.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f]")

REPEAT_WINDOW = 10.0  # seconds a key's window lasts
REPEAT_SHOWN = 5  # records of a key written per window; the rest are counted
REPEAT_KEYS = 1000  # keys kept at most; beyond that, new texts share one key per level
REPEAT_TEXT = 500  # characters of a text kept as its key and its example: memory stays bounded
# What varies between repeats of one record: quoted strings, hex ids and numbers (addresses, ports,
# request ids, counts are made of these).
_VARIABLE = re.compile(r"'[^']*'|\"[^\"]*\"|\b(?:0x)?[0-9A-Fa-f]{8,}\b|\d+")
_FOLDED = (ERROR, WARNING)  # the levels whose repeats are folded
_monotonic = time.monotonic  # the repeats' clock: a seam for tests


def level_of(name: str | int) -> int:
    """`"DEBUG"` → 6; accepts numbers too. A bad name is a clear error."""
    if isinstance(name, int) and ERROR <= name <= NOISE:
        return name
    try:
        return LEVELS[str(name).upper()]
    except KeyError:
        raise ValueError(f"unknown log level {name!r}, expected one of {', '.join(LEVELS)}") from None


class LogFile:
    """Append-only daily files, readable by the owner and the group only (MODE);
    ERROR records are fsynced before returning."""

    MODE = 0o640

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
            fd = os.open(self.path(day), os.O_WRONLY | os.O_APPEND | os.O_CREAT, self.MODE)
        except OSError:
            return  # keep writing to the old file rather than lose records
        try:
            mode = os.fstat(fd).st_mode & 0o777
            if mode & ~self.MODE:  # a file made before, or with a looser umask: tightened, never loosened
                os.fchmod(fd, mode & self.MODE)
        except (OSError, AttributeError):  # another user's file; no fchmod on Windows
            pass
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


class _Window:
    __slots__ = ("began", "count", "example")

    def __init__(self, began: float, example: str) -> None:
        self.began, self.count, self.example = began, 1, example


Key = tuple[int, str, str]  # (level, where, masked text)


class _Repeats:
    """The windows of repeated records; used under the sink's lock."""

    def __init__(self) -> None:
        self.windows: dict[Key, _Window] = {}

    def admit(self, key: Key, message: str, now: float) -> tuple[bool, list[tuple[int, str]]]:
        """Whether to write this record, and the summaries due before it."""
        due: list[tuple[int, str]] = []
        window = self._live(key, now, due)
        if window is None and len(self.windows) >= REPEAT_KEYS:
            due.extend(self.sweep(now))
            if len(self.windows) >= REPEAT_KEYS:  # too many kinds at once: newcomers share one key per level
                key = (key[0], "", "")
                window = self._live(key, now, due)
        if window is None:
            self.windows[key] = _Window(now, message[:REPEAT_TEXT])
            return True, due
        window.count += 1
        return window.count <= REPEAT_SHOWN, due

    def _live(self, key: Key, now: float, due: list[tuple[int, str]]) -> _Window | None:
        """The key's window unless it has ended (its summary then goes to `due`)."""
        window = self.windows.get(key)
        if window is not None and now - window.began >= REPEAT_WINDOW:
            due.extend(self._end(key, window, now))
            return None
        return window

    def sweep(self, now: float, everything: bool = False) -> list[tuple[int, str]]:
        """The summaries of windows that have ended (of all, with `everything`). Windows are
        kept in the order they began, so the first one still open ends the search."""
        due: list[tuple[int, str]] = []
        while self.windows:
            key, window = next(iter(self.windows.items()))
            if not everything and now - window.began < REPEAT_WINDOW:
                break
            due.extend(self._end(key, window, now))
        return due

    def _end(self, key: Key, window: _Window, now: float) -> list[tuple[int, str]]:
        del self.windows[key]
        left_out = window.count - REPEAT_SHOWN
        if left_out <= 0:
            return []
        seconds = min(REPEAT_WINDOW, max(1.0, now - window.began))
        return [(key[0], f"{window.example} ... and {left_out:,} more like it in the last {seconds:.0f} s")]


class _Sink:
    """Where records go: the log file, or stderr before a cage sets one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.file: LogFile | None = None
        self.echo: TextIO | None = sys.stderr
        self.echo_level = NOISE
        self.level = LOG
        self.repeats = _Repeats()


_sink = _Sink()


def configure(file: LogFile | None, *, echo: TextIO | None = None, echo_level: int = MESSAGE) -> None:
    """Send records to `file`, echoing those at or below `echo_level` to `echo`."""
    with _sink.lock:
        _write_summaries(_sink.repeats.sweep(_monotonic(), everything=True))  # to the old destination
        if _sink.file is not None and _sink.file is not file:
            _sink.file.close()
        _sink.file, _sink.echo, _sink.echo_level = file, echo, echo_level


def set_level(level: str | int) -> None:
    _sink.level = level_of(level)
    if _bridge is not None:
        _bridge.follow(_sink.level)


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
    key = (level, where, _VARIABLE.sub("#", message[:REPEAT_TEXT])) if level in _FOLDED else None
    request = _request.current()
    text = f"{message} # {where}" if where else message
    if request.deadline is not None:
        text = f"{text}{' by ' if where else ' # by '}{request.description}"
    line = _format(level, text, now)
    with _sink.lock:
        if key is not None:
            shown, due = _sink.repeats.admit(key, message, _monotonic())
            _write_summaries(due)
            if not shown:
                return
        _write(level, line, now)


def _format(level: int, message: str, now: float) -> str:
    return "{} {} [{}] {}\n".format(
        time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 100) % 100:02d}",
        CODES.get(level, "???"),
        threading.current_thread().name,
        _CONTROL.sub(" ", message),
    )


def _write(level: int, line: str, now: float) -> None:
    """One formatted record to the file and the echo; under the sink's lock."""
    if _sink.file is not None:
        day = time.strftime("%Y%m%d", time.localtime(now))
        _sink.file.write(line.encode("utf-8", "replace"), day, level == ERROR)
    if _sink.echo is not None and level <= _sink.echo_level:
        try:
            _sink.echo.write(line)
            _sink.echo.flush()
        except (OSError, ValueError):
            pass


def _write_summaries(summaries: list[tuple[int, str]]) -> None:
    now = time.time()
    for level, text in summaries:
        _write(level, _format(level, text, now), now)


def flush(*, everything: bool = False) -> None:
    """Sync the file, writing the summaries of repeats whose window has ended (of all,
    with `everything`: at shutdown)."""
    with _sink.lock:
        _write_summaries(_sink.repeats.sweep(_monotonic(), everything))
        if _sink.file is not None:
            _sink.file.flush()
    if _bridge is not None:
        _bridge.adopt()


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



# --- stdlib logging ----------------------------------------------------------------

# The least severe stdlib level each cage level lets through: at LOG, WARNING and above.
_STDLIB_THRESHOLD = {ERROR: logging.ERROR, MESSAGE: logging.ERROR, WARNING: logging.WARNING,
                     LOG: logging.WARNING, INFO: logging.INFO, DEBUG: logging.DEBUG, NOISE: 1}


def cage_level(levelno: int) -> int:
    """The cage level of a stdlib level: `logging.WARNING` -> WARNING."""
    if levelno >= logging.ERROR:
        return ERROR
    if levelno >= logging.WARNING:
        return WARNING
    if levelno >= logging.INFO:
        return INFO
    return DEBUG if levelno >= logging.DEBUG else NOISE


class _Bridge(logging.Handler):
    """The handler on the root logger (and on loggers that do not propagate to it)."""

    def __init__(self) -> None:
        super().__init__()
        self.previous_level = logging.root.level
        self.adopted: list[logging.Logger] = []
        self.seen = -1  # loggers known when last adopting; the manager never forgets one
        self.busy = threading.local()  # a record logged while writing one is dropped, not looped

    def emit(self, record: logging.LogRecord) -> None:
        level = cage_level(record.levelno)
        if not enabled(level) or getattr(self.busy, "on", False):
            return
        self.busy.on = True
        try:
            write(level, f"{record.name}: {self.text(record)}")
        finally:
            self.busy.on = False

    @staticmethod
    def text(record: logging.LogRecord) -> str:
        try:
            text = record.getMessage()
        except Exception:  # bad arguments for the format: the parts, rather than nothing
            text = f"{record.msg!r} % {record.args!r}"
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            return f"{text}: {exc_string(exc)}"
        return f"{text}: {record.exc_text}" if record.exc_text else text

    def follow(self, level: int) -> None:
        logging.root.setLevel(_STDLIB_THRESHOLD[level])

    def adopt(self) -> None:
        """Add the handler to loggers that stop propagation (their records never reach the
        root); cheap when no logger was made since the last call."""
        loggers = logging.root.manager.loggerDict
        if len(loggers) == self.seen:
            return
        self.seen = len(loggers)
        for logger in list(loggers.values()):
            if isinstance(logger, logging.Logger) and not logger.propagate and self not in logger.handlers:
                logger.addHandler(self)
                self.adopted.append(logger)


_bridge: _Bridge | None = None


def bridge_stdlib() -> None:
    """Send stdlib `logging` records to the cage log; calling it again changes nothing."""
    global _bridge
    if _bridge is None:
        _bridge = _Bridge()
        logging.root.addHandler(_bridge)
    _bridge.follow(_sink.level)
    _bridge.adopt()


def unbridge_stdlib() -> None:
    """Undo bridge_stdlib(): the handlers removed, the root logger's level restored."""
    global _bridge
    bridge, _bridge = _bridge, None
    if bridge is not None:
        for logger in [logging.root, *bridge.adopted]:
            logger.removeHandler(bridge)
        logging.root.setLevel(bridge.previous_level)
