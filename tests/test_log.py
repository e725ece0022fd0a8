"""The cage log: lib/pmnc/log.py."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import io
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pmnc import log
from pmnc import request as rq
from pmnc.log import ModuleLog

RECORD = re.compile(r"^(\d{2}):(\d{2}):(\d{2})\.(\d{2}) (ERR|MSG|WRN|LOG|INF|DBG|NSE) \[([^\]]+)\] (.*)$")


@pytest.fixture(autouse=True)
def clean_log() -> Iterator[None]:
    """log.py keeps process-global state: restore it around every test."""
    rq.attach(None)
    log.configure(None, echo=sys.stderr)
    log.set_level("LOG")
    yield
    rq.attach(None)
    log.configure(None, echo=sys.stderr)
    log.set_level("LOG")


@pytest.fixture
def echo() -> io.StringIO:
    """Records of every level that passes the threshold, captured in memory."""
    buffer = io.StringIO()
    log.configure(None, echo=buffer, echo_level=log.NOISE)
    return buffer


def lines(buffer: io.StringIO) -> list[str]:
    return buffer.getvalue().splitlines()


def messages(buffer: io.StringIO) -> list[str]:
    """The message part of every record in `buffer`."""
    result = []
    for line in lines(buffer):
        match = RECORD.match(line)
        assert match, f"not a log record: {line!r}"
        result.append(match.group(7))
    return result


def finite_request(timeout: float = 5.0, description: str | None = None) -> rq.Request:
    return rq.Request(timeout=timeout, interface="http", protocol="http", description=description)


# --- record format ---------------------------------------------------------------


def test_record_format(echo: io.StringIO) -> None:
    log.message("the cage is starting up")
    now = time.localtime()
    [line] = lines(echo)
    match = RECORD.match(line)
    assert match, line
    hh, mm, ss, _cc, code, thread, text = match.groups()
    assert code == "MSG"
    assert thread == threading.current_thread().name
    assert text == "the cage is starting up"
    stamped = int(hh) * 3600 + int(mm) * 60 + int(ss)
    local = now.tm_hour * 3600 + now.tm_min * 60 + now.tm_sec
    assert (local - stamped) % 86400 <= 2  # local time of day, not UTC


@pytest.mark.parametrize(("function", "code"), [
    (log.error, "ERR"), (log.message, "MSG"), (log.warning, "WRN"), (log.log, "LOG"),
    (log.info, "INF"), (log.debug, "DBG"), (log.noise, "NSE"),
])
def test_level_codes(echo: io.StringIO, function: object, code: str) -> None:
    log.set_level("NOISE")
    function("x")  # type: ignore[operator]
    [line] = lines(echo)
    assert line.split(" ")[1] == code


def test_thread_name_in_record(echo: io.StringIO) -> None:
    thread = threading.Thread(target=log.message, args=("from a worker",), name="worker/7")
    thread.start()
    thread.join()
    [line] = lines(echo)
    assert " MSG [worker/7] from a worker" in line


def test_arguments_are_space_joined(echo: io.StringIO) -> None:
    log.message("a", 1, None, 2.5)
    assert messages(echo) == ["a 1 None 2.5"]


def test_control_characters_are_scrubbed_to_one_line(echo: io.StringIO) -> None:
    log.message("a\nb\r\nc\x00d\te\x1bf")
    assert messages(echo) == ["a b  c d\te f"]  # TAB survives, the rest become spaces
    assert echo.getvalue().count("\n") == 1


def test_unknown_level_code_is_question_marks(echo: io.StringIO) -> None:
    log.write(0, "odd")
    [line] = lines(echo)
    assert line.split(" ")[1] == "???"


# --- threshold ----------------------------------------------------------------------


def test_cage_level_threshold(echo: io.StringIO) -> None:
    log.set_level("WARNING")
    for function in (log.error, log.message, log.warning, log.log, log.info, log.debug, log.noise):
        function(function.__name__)
    assert messages(echo) == ["error", "message", "warning"]
    assert log.get_level() == log.WARNING


def test_message_level_passes_every_threshold_but_error(echo: io.StringIO) -> None:
    log.set_level("ERROR")
    log.message("hidden")
    log.error("shown")
    assert messages(echo) == ["shown"]


def test_pushed_request_level_wins_over_cage_level(echo: io.StringIO) -> None:
    pmnc_log = ModuleLog("mod")
    with rq.attached(finite_request()):
        pmnc_log.debug("before push")
        with pmnc_log.level("DEBUG"):
            pmnc_log.debug("pushed")
            pmnc_log.noise("too verbose still")
        pmnc_log.debug("after pop")
    assert [m.split(" #")[0] for m in messages(echo)] == ["pushed"]


def test_pushed_level_can_be_quieter_than_cage_level(echo: io.StringIO) -> None:
    pmnc_log = ModuleLog("mod")
    log.set_level("NOISE")
    with rq.attached(finite_request()):
        with pmnc_log.level("ERROR"):
            pmnc_log.warning("quiet")
            pmnc_log.error("loud")
            log.message("framework also quiet")
        pmnc_log.info("back to noise")
    assert [m.split(" #")[0] for m in messages(echo)] == ["loud", "back to noise"]


def test_level_without_name_pops(echo: io.StringIO) -> None:
    pmnc_log = ModuleLog("mod")
    request = finite_request()
    with rq.attached(request):
        pmnc_log.level("DEBUG")
        pmnc_log.level("NOISE")
        assert request.log_level == log.NOISE
        pmnc_log.level()
        assert request.log_level == log.DEBUG
        pmnc_log.level()
        assert request.log_level is None
        pmnc_log.level()  # popping an empty stack is harmless
        pmnc_log.debug("at cage level")
    assert messages(echo) == []


def test_pushed_level_is_per_request(echo: io.StringIO) -> None:
    pmnc_log = ModuleLog("mod")
    with rq.attached(finite_request()):
        pmnc_log.level("DEBUG")
        with rq.attached(finite_request()):
            pmnc_log.debug("other request")
        pmnc_log.debug("this request")
    assert [m.split(" #")[0] for m in messages(echo)] == ["this request"]


def test_bool_of_level_logger_is_a_cheap_test() -> None:
    pmnc_log = ModuleLog("mod")
    assert not pmnc_log.debug
    assert pmnc_log.log
    assert pmnc_log.error
    log.set_level("DEBUG")
    assert pmnc_log.debug
    assert not pmnc_log.noise
    log.set_level("LOG")
    with rq.attached(finite_request()), pmnc_log.level("NOISE"):
        assert pmnc_log.noise


def test_set_level_accepts_names_and_numbers() -> None:
    log.set_level("info")
    assert log.get_level() == log.INFO
    log.set_level(6)
    assert log.get_level() == log.DEBUG


# --- module suffix and request description -----------------------------------------


def test_module_records_say_where(echo: io.StringIO) -> None:
    pmnc_log = ModuleLog("mod")
    pmnc_log.warning("careful"); line = inspect.currentframe().f_lineno  # type: ignore[union-attr] # noqa: E702
    assert messages(echo) == [f"careful # mod.py:{line} in test_module_records_say_where()"]


def test_calling_module_log_directly_logs_at_log_level_and_says_where(echo: io.StringIO) -> None:
    """`pmnc.log(...)` is `pmnc.log.log(...)`: the suffix names the caller, not log.py."""
    pmnc_log = ModuleLog("mod")

    def handler() -> int:
        pmnc_log("handled"); return inspect.currentframe().f_lineno  # type: ignore[union-attr] # noqa: E702

    line = handler()
    [record] = lines(echo)
    assert record.split(" ")[1] == "LOG"
    assert messages(echo) == [f"handled # mod.py:{line} in handler()"]


def test_finite_request_description_appended(echo: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rq, "monotonic", lambda: 1000.0)
    request = finite_request(5.0, description="GET /")
    pmnc_log = ModuleLog("mod")

    def handler() -> int:
        pmnc_log.message("served"); return inspect.currentframe().f_lineno  # type: ignore[union-attr] # noqa: E702

    with rq.attached(request):
        line = handler()
        log.message("framework")
    tail = "RQ-" + request.unique_id[-4:]
    assert messages(echo) == [
        f"served # mod.py:{line} in handler() by {tail} (GET /) via http +5.0s",
        f"framework # by {tail} (GET /) via http +5.0s",
    ]


def test_infinite_request_adds_no_description(echo: io.StringIO) -> None:
    with rq.attached(rq.Request(timeout=None)):
        log.message("plain")
    assert messages(echo) == ["plain"]


# --- files ----------------------------------------------------------------------------


def test_daily_file_name_and_content(tmp_path: Path) -> None:
    day_before = time.strftime("%Y%m%d")
    log.configure(log.LogFile(str(tmp_path), "sample"), echo=None)
    log.message("first")
    log.log("second")
    log.info("not at LOG level")
    day_after = time.strftime("%Y%m%d")
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files in (["sample-" + day_before + ".log"], ["sample-" + day_after + ".log"])
    text = (tmp_path / files[0]).read_text()
    records = text.splitlines()
    assert [RECORD.match(r).group(7) for r in records] == ["first", "second"]  # type: ignore[union-attr]
    assert text.endswith("\n")


def test_file_is_appended_not_truncated(tmp_path: Path) -> None:
    log.configure(log.LogFile(str(tmp_path), "sample"), echo=None)
    log.message("one")
    log.configure(log.LogFile(str(tmp_path), "sample"), echo=None)
    log.message("two")
    text = "".join(p.read_text() for p in tmp_path.iterdir())
    assert [RECORD.match(r).group(7) for r in text.splitlines()] == ["one", "two"]  # type: ignore[union-attr]


def test_new_day_opens_a_new_file(tmp_path: Path) -> None:
    file = log.LogFile(str(tmp_path), "sample")
    file.write(b"a\n", "20240101", False)
    file.write(b"b\n", "20240102", False)
    file.close()
    assert (tmp_path / "sample-20240101.log").read_bytes() == b"a\n"
    assert (tmp_path / "sample-20240102.log").read_bytes() == b"b\n"


def test_echo_only_at_or_below_echo_level(tmp_path: Path) -> None:
    echo = io.StringIO()
    log.configure(log.LogFile(str(tmp_path), "sample"), echo=echo, echo_level=log.MESSAGE)
    log.message("to both")
    log.log("to file only")
    assert messages(echo) == ["to both"]
    text = "".join(p.read_text() for p in tmp_path.iterdir())
    assert "to both" in text and "to file only" in text


def test_utf8_records(tmp_path: Path) -> None:
    log.configure(log.LogFile(str(tmp_path), "sample"), echo=None)
    log.message("привет ✓")
    text = "".join(p.read_text(encoding="utf-8") for p in tmp_path.iterdir())
    assert "привет ✓" in text


def test_error_records_are_synced_and_flush_syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    log.configure(log.LogFile(str(tmp_path), "sample"), echo=None)
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    log.message("not synced")
    assert synced == []
    log.error("synced")
    assert len(synced) == 1
    log.flush()
    assert len(synced) == 2


# --- level_of --------------------------------------------------------------------------


def test_level_of_names_and_numbers() -> None:
    assert log.level_of("ERROR") == 1
    assert log.level_of("message") == 2
    assert log.level_of("Debug") == 6
    assert log.level_of("NOISE") == 7
    assert log.level_of(4) == 4


@pytest.mark.parametrize("bad", ["VERBOSE", "", 0, 8, -1, None])
def test_level_of_refuses_unknown_levels(bad: object) -> None:
    with pytest.raises(ValueError) as info:
        log.level_of(bad)  # type: ignore[arg-type]
    assert "unknown log level" in str(info.value)
    assert "DEBUG" in str(info.value)


def test_set_level_refuses_unknown_and_keeps_the_old_level() -> None:
    log.set_level("INFO")
    with pytest.raises(ValueError):
        log.set_level("LOUD")
    assert log.get_level() == log.INFO


# --- never raises -------------------------------------------------------------------------


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")

    __repr__ = __str__


def test_unprintable_argument_logged_by_class_name(echo: io.StringIO) -> None:
    log.message("value:", Unprintable())
    ModuleLog("mod").warning(Unprintable(), "end")
    result = messages(echo)
    assert result[0] == "value: Unprintable"
    assert result[1].startswith("Unprintable end # mod.py:")


def test_broken_echo_stream_does_not_raise() -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError("disk full")

    log.configure(None, echo=Broken(), echo_level=log.NOISE)
    log.message("still fine")
    ModuleLog("mod").error("still fine")


def test_failing_echo_stream_of_any_kind_does_not_raise() -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise RuntimeError("surprise")

    log.configure(None, echo=Broken(), echo_level=log.NOISE)
    log.message("still fine")
    ModuleLog("mod")("still fine")
    # and the lock was released: the next record gets through
    echo = io.StringIO()
    log.configure(None, echo=echo, echo_level=log.NOISE)
    log.message("after")
    assert messages(echo) == ["after"]


def test_unwritable_log_directory_does_not_raise(tmp_path: Path) -> None:
    log.configure(log.LogFile(str(tmp_path / "missing"), "sample"), echo=None)
    log.error("nowhere to go")
    log.flush()
    assert not (tmp_path / "missing").exists()


# --- repeats folded --------------------------------------------------------------


class Clock:
    """The repeats' clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    hand = Clock()
    monkeypatch.setattr(log, "_monotonic", hand)
    return hand


def test_repeats_are_folded_into_a_summary_when_their_window_ends(echo: io.StringIO, clock: Clock) -> None:
    for port in range(40000, 40300):
        log.warning(f"interface rpc: connection from 127.0.0.1:{port} refused: TLS handshake failed: "
                    f"[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:{port % 7 + 1000})")
    assert len(lines(echo)) == log.REPEAT_SHOWN
    clock.now += 9.9
    log.flush()
    assert len(lines(echo)) == log.REPEAT_SHOWN  # the window is still open
    clock.now += 0.1
    log.flush()
    summary = messages(echo)[-1]
    assert summary == ("interface rpc: connection from 127.0.0.1:40000 refused: TLS handshake failed: "
                       "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1002) "
                       f"... and {300 - log.REPEAT_SHOWN} more like it in the last 10 s")
    assert lines(echo)[-1].split()[1] == "WRN"
    log.flush()
    assert len(lines(echo)) == log.REPEAT_SHOWN + 1  # said once


def test_thousands_are_counted_with_separators(echo: io.StringIO, clock: Clock) -> None:
    for n in range(1205):
        log.error(f"request {n} failed: database is down")
    clock.now += 10.0
    log.flush()
    assert messages(echo)[-1] == "request 0 failed: database is down ... and 1,200 more like it in the last 10 s"


def test_the_next_repeat_after_the_window_writes_the_summary_first(echo: io.StringIO, clock: Clock) -> None:
    for _ in range(7):
        log.error("database is down")
    clock.now += 12.0
    log.error("database is down")
    assert messages(echo)[-2:] == ["database is down ... and 2 more like it in the last 10 s", "database is down"]


def test_request_ids_and_descriptions_do_not_defeat_folding(echo: io.StringIO, clock: Clock) -> None:
    for _ in range(20):
        request = finite_request()
        with rq.attached(request):
            log.error(f"request {request.unique_id} has failed: ValueError('bad id {id(request)}')")
    assert len(lines(echo)) == log.REPEAT_SHOWN
    assert all(" # by " in line for line in lines(echo))  # each written record still says whose it was


def test_different_texts_and_lower_levels_are_not_folded(echo: io.StringIO, clock: Clock) -> None:
    for _ in range(10):
        log.warning("disk is slow")
        log.warning("disk is full")
        log.log("request served")  # per-request records at LOG level and below are not touched
    written = messages(echo)
    assert written.count("disk is slow") == written.count("disk is full") == log.REPEAT_SHOWN
    assert written.count("request served") == 10


def test_keys_are_bounded(echo: io.StringIO, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log, "REPEAT_KEYS", 3)
    for kind in "abcdefghij":
        for _ in range(10):
            log.warning(f"failure of kind {kind}")
    assert len(log._sink.repeats.windows) == 4  # three kinds, and one key that all the newcomers share
    written = messages(echo)
    assert len(written) == 3 * log.REPEAT_SHOWN + log.REPEAT_SHOWN
    clock.now += 10.0
    log.flush()
    assert messages(echo)[-1] == "failure of kind d ... and 65 more like it in the last 10 s"
    assert not log._sink.repeats.windows


def test_summaries_are_written_before_the_log_changes_hands(tmp_path: Path, clock: Clock) -> None:
    log.configure(log.LogFile(str(tmp_path), "sample"), echo=None)
    for _ in range(8):
        log.error("database is down")
    clock.now += 3.0
    log.configure(None, echo=None)
    text = "".join(p.read_text() for p in tmp_path.iterdir())
    assert text.splitlines()[-1].endswith("database is down ... and 3 more like it in the last 3 s")


def test_log_files_are_for_owner_and_group(tmp_path: Path) -> None:
    old = tmp_path / "sample-20240101.log"
    old.write_text("made by an older pmnc\n")
    old.chmod(0o644)
    strict = tmp_path / "sample-20240103.log"
    strict.write_text("")
    strict.chmod(0o600)
    file = log.LogFile(str(tmp_path), "sample")
    for day in ("20240101", "20240102", "20240103"):
        file.write(b"a\n", day, False)
    file.close()
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"sample-20240101.log": 0o640, "sample-20240102.log": 0o640,
                     "sample-20240103.log": 0o600}  # tightened, never loosened


# --- stdlib logging bridged ------------------------------------------------------


@pytest.fixture
def bridged(echo: io.StringIO) -> Iterator[io.StringIO]:
    """The bridge installed for one test; the root logger as it was afterwards."""
    log.unbridge_stdlib()  # left by a cage that did not stop
    level, handlers = logging.root.level, list(logging.root.handlers)
    log.bridge_stdlib()
    yield echo
    log.unbridge_stdlib()
    assert logging.root.level == level and logging.root.handlers == handlers


class Counted:
    """A log argument that counts how often it was made into text."""

    def __init__(self) -> None:
        self.made = 0

    def __str__(self) -> str:
        self.made += 1
        return "counted"


def test_stdlib_warning_is_a_cage_warning_naming_its_logger(bridged: io.StringIO) -> None:
    logging.getLogger("psycopg.pool").warning("connection %s lost", "pg-1")
    [line] = lines(bridged)
    assert line.split()[1] == "WRN"
    assert messages(bridged) == ["psycopg.pool: connection pg-1 lost"]


@pytest.mark.parametrize(("level", "code"), [
    (logging.CRITICAL, "ERR"), (logging.ERROR, "ERR"), (logging.WARNING, "WRN"),
    (logging.INFO, "INF"), (logging.DEBUG, "DBG"), (5, "NSE"),
])
def test_stdlib_levels_map_to_cage_levels(bridged: io.StringIO, level: int, code: str) -> None:
    log.set_level("NOISE")
    logging.getLogger("pymongo.topology").log(level, "heartbeat")
    assert [line.split()[1] for line in lines(bridged)] == [code]


def test_stdlib_records_below_the_cage_level_are_not_even_made(bridged: io.StringIO) -> None:
    counted, library = Counted(), logging.getLogger("watchdog.observers")
    library.debug("event %s", counted)
    library.info("event %s", counted)
    assert lines(bridged) == [] and counted.made == 0
    assert not library.isEnabledFor(logging.INFO)  # refused by the level, before a record exists


def test_the_bridge_follows_the_cage_level_changed_at_runtime(bridged: io.StringIO) -> None:
    library = logging.getLogger("pymongo.command")  # not psycopg: it sets its own level, WARNING
    log.set_level("DEBUG")
    library.debug("query sent")
    log.set_level("ERROR")
    library.warning("slow query")
    library.error("connection failed")
    assert messages(bridged) == ["pymongo.command: query sent", "pymongo.command: connection failed"]


def test_stdlib_exception_records_carry_the_exception(bridged: io.StringIO) -> None:
    try:
        raise ValueError("bad reply")
    except ValueError:
        logging.getLogger("pymongo").exception("monitor failed")
    [text] = messages(bridged)
    assert text.startswith('pymongo: monitor failed: ValueError("bad reply") in test_stdlib_exception_records')
    assert "test_log.py:" in text


@contextlib.contextmanager
def bridge_alone() -> Iterator[None]:
    """The bridge as the root logger's only handler, as in a cage: pytest's own handlers
    (added for each test's call) would format records too, and raise on a bad format."""
    handlers = logging.root.handlers
    logging.root.handlers = [handler for handler in handlers if handler is log._bridge]
    try:
        yield
    finally:
        logging.root.handlers = handlers


def test_a_broken_stdlib_format_is_logged_as_its_parts(bridged: io.StringIO) -> None:
    with bridge_alone():
        logging.getLogger("driver").warning("%d rows", "many")
    assert messages(bridged) == ["driver: '%d rows' % ('many',)"]


def test_bridging_twice_bridges_once(bridged: io.StringIO) -> None:
    log.bridge_stdlib()
    logging.getLogger("asyncio").warning("slow callback")
    assert messages(bridged) == ["asyncio: slow callback"]


def test_loggers_that_do_not_propagate_are_bridged_too(bridged: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    isolated = logging.getLogger("test_log.isolated_library")  # made after bridging
    monkeypatch.setattr(isolated, "propagate", False)
    monkeypatch.setattr(isolated, "handlers", [])
    isolated.warning("lost before the next flush")
    log.flush()  # the cage flushes every second
    isolated.warning("seen")
    isolated.getChild("part").warning("seen too")  # propagates to its isolated parent only: once
    assert messages(bridged) == ["test_log.isolated_library: seen", "test_log.isolated_library.part: seen too"]


class Recursive:
    """An argument whose text is made by logging through stdlib again."""

    def __str__(self) -> str:
        logging.getLogger("inner").warning("from inside")
        return "outer text"


def test_a_record_logged_while_bridging_one_is_dropped_not_looped(bridged: io.StringIO) -> None:
    with bridge_alone():
        logging.getLogger("outer").warning("%s", Recursive())
    assert messages(bridged) == ["outer: outer text"]


def test_asyncio_task_exception_never_retrieved_reaches_the_cage_log(bridged: io.StringIO) -> None:
    async def lost() -> None:
        raise RuntimeError("nobody awaited me")

    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(lost())
        loop.run_until_complete(asyncio.wait([task]))
    finally:
        loop.close()
    del task
    gc.collect()
    [line] = [line for line in lines(bridged) if "asyncio:" in line]
    assert line.split()[1] == "ERR"
    assert "asyncio: Task exception was never retrieved" in line
    assert 'RuntimeError("nobody awaited me") in lost() (test_log.py:' in line
