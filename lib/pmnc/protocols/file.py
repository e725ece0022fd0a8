"""Files: the interface takes the files other systems drop into a folder (a spool), each a
request; the resource writes files into a folder at commit, and reads them.

The interface (`config_interface_<n>.py`: `source_directory`, `filename_regex`, `interval`,
as the original's) lists the folder every `interval` seconds, or at once after a pass that
took files. `interface_<n>.process_request(request, response)` gets `{"file_name": <absolute
path>}`; it reads the file and must not delete it. Each pass, in name order:

    a name that does not fully match filename_regex, or not a regular file → left alone
    still being written (see settle_time) → left for a later pass
    its handler still running (past its deadline) → left, not run twice at once
    handled before but not deleted then (received.py marks) → deleted, the handler not run
    the handler, under the cage's deadline (lifecycle.call); up to `concurrency` at once
        → success: deleted, or moved to done_directory
        → failure: counted in the cage's state (received.failed, so a restart keeps it);
          at max_failures moved to failed_directory and logged once at ERROR

A file is settled (taken) when its modification time is at least `settle_time` seconds old,
or when its size and modification time have stayed the same for `settle_time` seconds of this
cage's clock (a writer on another machine with its clock ahead). A writer that can should
still write elsewhere and rename the file in. A file is identified by its name, inode, size
and modification time: a new file of the same name is a new file. The folder missing or
unreadable is logged once when it begins and once when it ends.

The resource (`config_resource_<n>.py`: `target_directory`, `temp_directory`,
`temp_extension`, `file_permissions`): `xa.<n>.write(name, data, overwrite=True)` writes a
temp file (fsynced, chmodded) now and renames it into place at commit (the folder fsynced
then), removes it at rollback; `read(name, remove=False)` returns the file's bytes, removing
it at commit if asked. Names are relative to target_directory; one that leaves it (`..`, an
absolute path, a symlink pointing out) is refused. In a `create(two_phase=True)` transaction
it is a branch: prepare records the branch's temp files in a small JSON file in the temp
folder, so that recovery finishes it after a crash (in_doubt / finish_prepared).
"""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any

from pmnc import interfaces, log, resource
from pmnc import request as _request
from pmnc.errors import (
    ConfigError,
    ResourceDeadlineError,
    ResourceError,
    ResourceInputParameterError,
    exc_string,
)
from pmnc.received import Entry, Received
from pmnc.schema import RESOURCE_KEYS, Key, interface_file, resource_file

if TYPE_CHECKING:
    from pmnc.runtime import Runtime

__all__ = ["Interface", "Resource"]

MAX_PASS = 10000  # files taken in one pass at most (the first by name); the rest in the next
MAX_ERROR_TEXT = 2000  # characters of a handler's error kept in the state
SWEEP_PERIOD = 600.0  # seconds between sweeps of the failure counts
CHUNK = 1024 * 1024  # bytes written or read at once between looks at the deadline
RECORD_PREFIX = ".pmnc-branch-"  # prepared branches' records in the temp folder


def _in_cage(runtime: Runtime, folder: str) -> str:
    """A configured folder: relative ones are the cage folder's."""
    return os.path.abspath(os.path.join(runtime.loader.cage_dir, os.path.expanduser(folder)))


def _fsync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _free_name(folder: str, name: str) -> str:
    """<folder>/<name>, or <name>-2 ... if that is taken."""
    path = os.path.join(folder, name)
    n = 1
    while os.path.lexists(path):
        n += 1
        path = os.path.join(folder, f"{name}-{n}")
    return path


def _move(path: str, folder: str) -> str:
    """Move the file into `folder` (made if missing) under a free name; where it went."""
    os.makedirs(folder, exist_ok=True)
    target = _free_name(folder, os.path.basename(path))
    try:
        os.rename(path, target)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        shutil.move(path, target)  # another file system: copied, then removed
    return target


# --- the interface ---------------------------------------------------------------------------


class _File:
    """One file of a pass."""

    __slots__ = ("id", "name", "path", "started")

    def __init__(self, name: str, path: str, st: os.stat_result) -> None:
        self.name, self.path = name, path
        self.id = f"{name}\0{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
        self.started = False


class Interface(interfaces.Interface):
    """A folder polled for files, each a request; see the module."""

    protocol = "file"

    keys = interfaces.Interface.keys.extend(
        source_directory=Key(None, str),  # the folder polled (relative: the cage folder's)
        filename_regex=Key(None, str),  # the names taken (the whole name must match)
        interval=Key(10.0, float),  # seconds between passes (a pass that took files is followed at once)
        settle_time=Key(1.0, float),  # seconds a file must be unchanged before it is taken (0: at once)
        done_directory=Key(None),  # where handled files are moved (None: deleted)
        failed_directory=Key(None),  # where failing files are moved (None: <cage>/file_failed/<name>)
        max_failures=Key(5, int),  # handler runs that fail before the file is moved to failed_directory
        concurrency=Key(1, int),  # files handled at once (1: one by one, in name order)
        failure_window=Key(86400.0, float),  # seconds a file's failure count is kept after its last failure
    )

    def __init__(self, name: str, runtime: Runtime, config: dict[str, Any]) -> None:
        super().__init__(name, runtime, config)
        c, file = self.config, interface_file(name)
        if not c["source_directory"] or not c["filename_regex"]:
            raise ConfigError(f"{file}: source_directory and filename_regex must be given "
                              f"(the folder to poll and a regular expression for the names to take)")
        try:
            self.pattern = re.compile(c["filename_regex"])
        except re.error as e:
            raise ConfigError(f"{file}: filename_regex is not a regular expression: {e}") from None
        if c["interval"] <= 0 or c["settle_time"] < 0 or c["failure_window"] <= 0:
            raise ConfigError(f"{file}: interval and failure_window must be positive, settle_time not negative")
        if c["max_failures"] < 1:
            raise ConfigError(f"{file}: max_failures must be at least 1")
        limit = runtime.thread_count()
        if not 1 <= c["concurrency"] <= limit:
            raise ConfigError(f"{file}: concurrency must be 1 to {limit} (the cage's thread_count)")
        self.source = _in_cage(runtime, c["source_directory"])
        self.done = _in_cage(runtime, c["done_directory"]) if c["done_directory"] else None
        self.failed_directory = _in_cage(runtime, c["failed_directory"]) if c["failed_directory"] \
            else _in_cage(runtime, os.path.join("file_failed", name))
        self._stopping = threading.Event()
        self._poller: threading.Thread | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._running: set[str] = set()  # ids whose handler runs (it may go on past its deadline)
        self._running_lock = threading.Lock()
        self._outage = interfaces.Outage(name)
        self._unsettled: dict[str, tuple[int, int, float]] = {}  # name → (size, mtime_ns, first seen unchanged)
        self._said: set[str] = set()  # ids whose disk trouble (not deleted, not moved) was logged once

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.received = Received(self.runtime.state, f"file:{self.name}", self.config["failure_window"])
        if self.config["concurrency"] > 1:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.config["concurrency"],
                                                               thread_name_prefix=f"file:{self.name}")
        self._poller = threading.Thread(target=self._poll_loop, name=f"file:{self.name}", daemon=True)
        self._poller.start()
        log.message(f"interface {self.name} polls {self.source} for {self.config['filename_regex']} "
                    f"every {self.config['interval']:g}s")

    def cease(self) -> None:
        """No new files: the pass under way finishes the handler runs it began."""
        self._stopping.set()

    def stop(self) -> None:
        self._stopping.set()
        if self._poller is not None:
            self._poller.join(self.request_timeout + 1.0)
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    # --- polling -----------------------------------------------------------------------------

    def _poll_loop(self) -> None:
        swept = time.monotonic()
        while not self._stopping.is_set():
            try:
                taken, waiting = self._pass()
            except OSError as e:
                self._outage.begins(f"the folder {self.source} cannot be listed: {exc_string(e, stack=False)}",
                                    meanwhile=f"listing it again every {self.config['interval']:g}s")
                self._stopping.wait(self.config["interval"])
                continue
            except Exception as e:  # a bug of ours: logged, and the next pass as usual
                log.error(f"interface {self.name}: the pass failed: {exc_string(e)}")
                taken, waiting = 0, 0
            if time.monotonic() - swept >= SWEEP_PERIOD:
                swept = time.monotonic()
                self._sweep()
            if taken:
                continue  # more may have come meanwhile
            # a file settling is looked at again when it may have settled, not a whole interval later
            wait = self.config["interval"] if not waiting else min(self.config["interval"],
                                                                   max(self.config["settle_time"] / 4, 0.05))
            self._stopping.wait(wait)

    def _listing(self) -> list[tuple[str, os.stat_result]]:
        """The matching regular files, in name order, with their stat (OSError: the folder is out)."""
        found = []
        with os.scandir(self.source) as entries:
            for entry in entries:
                if self.pattern.fullmatch(entry.name) is None:
                    continue
                try:
                    if entry.is_file():
                        found.append((entry.name, entry.stat()))
                except OSError:
                    continue  # gone meanwhile
        self._outage.ends(f"the folder {self.source} can be listed again, files are taken")
        found.sort(key=lambda item: item[0])
        return found

    def _settled(self, listing: list[tuple[str, os.stat_result]]) -> tuple[list[_File], int]:
        """The files that are no longer being written, and how many are not yet."""
        now_wall, now = time.time(), time.monotonic()
        settle = self.config["settle_time"]
        unsettled, ready, waiting = {}, [], 0
        for name, st in listing:
            if now_wall - st.st_mtime >= settle:
                ready.append(_File(name, os.path.join(self.source, name), st))
                continue
            size_mtime = (st.st_size, st.st_mtime_ns)
            previous = self._unsettled.get(name)
            since = previous[2] if previous is not None and previous[:2] == size_mtime else now
            if now - since >= settle:
                ready.append(_File(name, os.path.join(self.source, name), st))
            else:
                unsettled[name] = (*size_mtime, since)
                waiting += 1
        self._unsettled = unsettled
        return ready[:MAX_PASS], waiting

    def _pass(self) -> tuple[int, int]:
        """One pass over the folder: (files taken, files waiting to settle)."""
        files, waiting = self._settled(self._listing())
        if not files:
            return 0, waiting
        known = self._lookup([f.id for f in files])
        with self._running_lock:
            running = set(self._running)
        taken, to_run = 0, collections.deque[_File]()
        for f in files:
            entry = known.get(f.id)
            if f.id in running:
                continue
            if entry is not None and entry.handled:
                taken += self._dispose(f, handled_before=True)
            elif entry is not None and entry.failures >= self.config["max_failures"]:
                self._set_aside(f, entry.last_error, entry.failures)  # it could not be, last time
            else:
                to_run.append(f)
        if self._pool is None:
            return taken + self._drain(to_run), waiting
        # each of `concurrency` threads takes the next file in name order: no hand-off per file
        drains = [self._pool.submit(self._drain, to_run) for _ in range(self.config["concurrency"])]
        return taken + sum(drain.result() for drain in drains), waiting

    def _drain(self, to_run: collections.deque[_File]) -> int:
        """Run the files' handlers one after the other until none is left; how many were taken."""
        taken = 0
        while not self._stopping.is_set():
            try:
                f = to_run.popleft()
            except IndexError:
                break
            taken += self._finish(f, self._run(f))
        return taken

    # --- one file ------------------------------------------------------------------------------

    def _run(self, f: _File) -> str | None:
        """The handler for one file: None if it succeeded, else why not; "" if that was not
        the file's fault (the cage is stopping, the deadline came while it was queued)."""
        return interfaces.run_message(self, f"file {f.name}", f, self._handle, f, again="by a later pass")

    def _handle(self, f: _File) -> None:
        """On the worker: the handler, the file's id in `_running` while it runs."""
        with self._running_lock:
            self._running.add(f.id)
        f.started = True
        try:
            self.runtime.lifecycle.handle(self.handler, "process_request", ({"file_name": f.path}, {}))
        finally:
            with self._running_lock:
                self._running.discard(f.id)

    def _finish(self, f: _File, error: str | None) -> int:
        """After the handler: the file disposed of, or its failure counted; 1 if it was taken."""
        if error is None:
            return self._dispose(f, handled_before=False)
        if error == "" or not os.path.lexists(f.path):  # not the file's fault, or it is gone (taken by another)
            return 0
        failures = self._count_failure(f.id, error)
        if failures >= self.config["max_failures"]:
            self._set_aside(f, error, failures)
        return 0

    def _dispose(self, f: _File, *, handled_before: bool) -> int:
        """Delete the handled file (or move it to done_directory). If the disk will not, the
        file is marked handled in the state: later passes try again without the handler."""
        try:
            if self.done is not None:
                _move(f.path, self.done)
            else:
                os.remove(f.path)
        except FileNotFoundError:
            pass  # the handler removed it after all
        except OSError as e:
            if not handled_before:
                self._mark_handled(f)
            if f.id not in self._said:
                self._said.add(f.id)
                log.warning(f"interface {self.name}: file {f.name} was handled but cannot be "
                            f"{'moved to ' + self.done if self.done else 'deleted'}: {exc_string(e, stack=False)}; "
                            f"it is tried again, the handler is not run again")
            return 0
        if handled_before:
            self._said.discard(f.id)
            self._forget(f.id)
            log.info(f"interface {self.name}: file {f.name}, handled before, is now "
                     f"{'moved' if self.done else 'deleted'}")
        return 1

    def _set_aside(self, f: _File, error: str, failures: int) -> None:
        try:
            path = _move(f.path, self.failed_directory)
        except OSError as e:
            if f.id not in self._said:
                self._said.add(f.id)
                log.error(f"interface {self.name}: file {f.name} failed {failures} times but cannot be moved "
                          f"to {self.failed_directory}: {exc_string(e, stack=False)}; it is tried again")
            return
        self._said.discard(f.id)
        self._forget(f.id)
        log.error(f"interface {self.name}: file {f.name} set aside after {failures} failures, moved to "
                  f"{path}; the last error: {error}")

    # --- the state ----------------------------------------------------------------------------

    def _lookup(self, ids: list[str]) -> dict[str, Entry]:
        try:
            return self.received.lookup_many(ids)
        except Exception as e:  # the state cannot be read: the handlers run, failures uncounted
            log.error(f"interface {self.name}: cannot read the files' failure counts: {exc_string(e, stack=False)}")
            return {}

    def _mark_handled(self, f: _File) -> None:
        try:
            self.received.mark_handled([f.id], durable=True)
        except Exception as e:
            log.error(f"interface {self.name}: file {f.name} handled but not recorded, its handler may run "
                      f"again ({exc_string(e, stack=False)})")

    def _count_failure(self, file_id: str, error: str) -> int:
        try:
            return self.received.failed(file_id, error[:MAX_ERROR_TEXT])
        except Exception as e:
            log.error(f"interface {self.name}: a file's failure could not be counted: {exc_string(e, stack=False)}")
            return 0

    def _forget(self, file_id: str) -> None:
        try:
            self.received.forget(file_id)
        except Exception:
            pass  # it ages out of the window

    def _sweep(self) -> None:
        try:
            self.received.forget_old()
        except Exception as e:
            log.warning(f"interface {self.name}: old failure counts could not be dropped: {exc_string(e, stack=False)}")


# --- the resource --------------------------------------------------------------------------------

PERMISSIONS = re.compile(r"(?:[r-][w-][x-]){3}")
PERMISSION_BITS = (stat.S_IRUSR, stat.S_IWUSR, stat.S_IXUSR, stat.S_IRGRP, stat.S_IWGRP, stat.S_IXGRP,
                   stat.S_IROTH, stat.S_IWOTH, stat.S_IXOTH)

KEYS = RESOURCE_KEYS.extend(
    target_directory=Key(None),  # the folder written to and read from (best absolute: relative is the process's)
    temp_directory=Key(None),  # where temp files are written (None: the target file's folder); same file system
    temp_extension=Key("tmp", str),  # the temp files' extension
    file_permissions=Key("rw-rw----", str),  # the written files' permissions, as ls shows them
)


def _mode(text: str, file: str) -> int:
    if PERMISSIONS.fullmatch(text) is None:
        raise ConfigError(f"{file}: file_permissions must read like rw-rw---- (r, w, x or - for owner, group, "
                          f"others), not {text!r}")
    return sum(bit for bit, flag in zip(PERMISSION_BITS, text, strict=True) if flag != "-")


def _error(what: str, e: OSError) -> ResourceError:
    return ResourceError(f"{what}: {exc_string(e, stack=False)}", recoverable=True, terminal=False)


class _Write:
    """A write waiting for the commit: its temp file, where it goes, and whether it may replace."""

    __slots__ = ("overwrite", "target", "temp")

    def __init__(self, temp: str, target: str, overwrite: bool) -> None:
        self.temp, self.target, self.overwrite = temp, target, overwrite


class Resource(resource.Resource):
    """A folder written at commit and read: see the module."""

    inline = True  # every wait is a local disk's, and longer work looks at the deadline
    preparable = True  # can be a branch of a two-phase commit

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        file = resource_file(name)
        super().__init__(name, KEYS.read(config, file))
        c = self.config
        if not c["target_directory"]:
            raise ConfigError(f"{file}: target_directory must name the folder files are written to and read from")
        self.target = os.path.realpath(os.path.expanduser(str(c["target_directory"])))
        self.temp = os.path.realpath(os.path.expanduser(str(c["temp_directory"]))) if c["temp_directory"] else None
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", c["temp_extension"]):
            raise ConfigError(f"{file}: temp_extension must be letters, digits, '_', '-' or '.', like tmp")
        self.suffix = "." + c["temp_extension"]
        self.mode = _mode(c["file_permissions"], file)
        self.writes: list[_Write] = []
        self.removes: list[str] = []
        self.branch: str | None = None
        self.record: str | None = None  # the prepared branch's record

    # --- names ----------------------------------------------------------------------------

    def _path(self, name: str) -> str:
        """The absolute path of `name` under target_directory; ResourceInputParameterError if
        it would leave it (.., an absolute path, a symlink pointing out)."""
        if not isinstance(name, str) or not name or "\0" in name:
            raise ResourceInputParameterError(f"file name {name!r} must be a non-empty string")
        if os.path.isabs(name) or ".." in re.split(r"[/\\]", name):
            raise ResourceInputParameterError(f"file name {name!r} must be relative to {self.target} "
                                              f"and stay in it (no absolute path, no ..)")
        path = os.path.join(self.target, os.path.normpath(name))
        real = os.path.realpath(path)
        if os.path.commonpath([real, self.target]) != self.target or real == self.target:
            raise ResourceInputParameterError(f"file name {name!r} leads out of {self.target} "
                                              f"(through a symbolic link), it is refused")
        return path

    # --- lifecycle ------------------------------------------------------------------------

    def begin_transaction(self, xid: str, *, source_module_name: str, transaction_options: dict[str, Any],
                          resource_args: tuple[Any, ...], resource_kwargs: dict[str, Any]) -> None:
        self.writes, self.removes, self.record = [], [], None
        self.branch = transaction_options.get("branch")

    def commit(self) -> None:
        writes, removes, record = self.writes, self.removes, self.record
        self.writes, self.removes, self.record, self.branch = [], [], None, None
        try:
            _apply(writes, removes)
            if record is not None:
                os.remove(record)
        except OSError as e:
            raise ResourceError(f"{self.name}: commit failed: {exc_string(e, stack=False)}", terminal=False) from None

    def rollback(self) -> None:
        writes, record = self.writes, self.record
        self.writes, self.removes, self.record, self.branch = [], [], None, None
        _discard(writes, record)

    # --- calls ----------------------------------------------------------------------------

    def write(self, name: str, data: bytes, *, overwrite: bool = True) -> str:
        """Write `data` as `name` at commit; the path it will have."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ResourceInputParameterError(f"data must be bytes, not {type(data).__name__}")
        target = self._path(name)
        if not overwrite and os.path.lexists(target):
            raise ResourceError(f"file {target} already exists", recoverable=True, terminal=False)
        folder = self.temp or os.path.dirname(target)
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.makedirs(folder, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=folder, suffix=self.suffix)
        except OSError as e:
            raise _error(f"cannot write in {folder}", e) from None
        try:
            with os.fdopen(fd, "wb") as f:
                view = memoryview(data)
                for i in range(0, len(view), CHUNK):
                    _bounded(f"writing {target}")
                    f.write(view[i:i + CHUNK])
                f.flush()
                os.fchmod(f.fileno(), self.mode)
                os.fsync(f.fileno())
        except BaseException as e:
            _remove(temp)
            if isinstance(e, OSError):
                raise _error(f"cannot write {temp}", e) from None
            raise
        self.writes.append(_Write(temp, target, overwrite))
        return target

    def read(self, name: str, *, remove: bool = False) -> bytes:
        """The bytes of file `name` (removed at commit if `remove`)."""
        path = self._path(name)
        chunks = []
        try:
            with open(path, "rb") as f:
                while True:
                    _bounded(f"reading {path}")
                    chunk = f.read(CHUNK)
                    if not chunk:
                        break
                    chunks.append(chunk)
        except FileNotFoundError:
            raise ResourceError(f"file {path} does not exist", recoverable=True, terminal=False) from None
        except OSError as e:
            raise _error(f"cannot read {path}", e) from None
        if remove:
            self.removes.append(path)
        return b"".join(chunks)

    # --- two-phase commit -----------------------------------------------------------------

    def prepare(self) -> None:
        """Phase 1: the temp files are fsynced already; a record of them makes the branch
        survive a crash until it is decided."""
        assert self.branch is not None
        for w in self.writes:
            if not w.overwrite and os.path.lexists(w.target):
                raise ResourceError(f"file {w.target} already exists", recoverable=True, terminal=False)
        folder = self.temp or self.target
        record = os.path.join(folder, RECORD_PREFIX + hashlib.sha256(self.branch.encode()).hexdigest()[:40] + ".json")
        text = json.dumps({"branch": self.branch, "removes": self.removes,
                           "writes": [[w.temp, w.target, w.overwrite] for w in self.writes]})
        try:
            _write_durably(record, text.encode())
        except OSError as e:
            raise _error(f"cannot record the prepared branch in {folder}", e) from None
        self.record = record

    def in_doubt(self, prefix: str) -> list[str]:
        """The prepared branches recorded in the temp folder whose ids start with `prefix`."""
        return [branch for branch, _ in self._records() if branch.startswith(prefix)]

    def finish_prepared(self, branch: str, commit: bool) -> None:
        for recorded, path in self._records():
            if recorded != branch:
                continue
            with open(path, encoding="utf-8") as f:
                content = json.load(f)
            writes = [_Write(temp, target, overwrite) for temp, target, overwrite in content["writes"]]
            if commit:
                _apply(writes, content["removes"])
                os.remove(path)
            else:
                _discard(writes, path)

    def _records(self) -> list[tuple[str, str]]:
        folder = self.temp or self.target
        try:
            names = [n for n in os.listdir(folder) if n.startswith(RECORD_PREFIX) and n.endswith(".json")]
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            path = os.path.join(folder, name)
            try:
                with open(path, encoding="utf-8") as f:
                    found.append((str(json.load(f)["branch"]), path))
            except (OSError, ValueError, KeyError) as e:
                log.warning(f"{self.name}: the record {path} cannot be read: {e}")
        return found


def _bounded(what: str) -> None:
    if _request.current().expired:
        raise ResourceDeadlineError(f"request deadline {what}")


def _apply(writes: list[_Write], removes: list[str]) -> None:
    """The writes renamed into place and the removals done, each folder fsynced; a temp file
    gone means its write was applied before (recovery finishing a branch again)."""
    folders: set[str] = set()
    for w in writes:
        if not os.path.exists(w.temp):
            continue
        if w.overwrite:
            os.replace(w.temp, w.target)
        else:  # link refuses a target that appeared since: no file is ever replaced
            os.link(w.temp, w.target)
            os.remove(w.temp)
        folders.update((os.path.dirname(w.target), os.path.dirname(w.temp)))
    for path in removes:
        try:
            os.remove(path)
        except FileNotFoundError:
            continue
        folders.add(os.path.dirname(path))
    for folder in folders:
        _fsync_folder(folder)


def _discard(writes: list[_Write], record: str | None) -> None:
    for w in writes:
        _remove(w.temp)
    if record is not None:
        _remove(record)


def _write_durably(path: str, data: bytes) -> None:
    temp = path + ".part"
    with open(temp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    _fsync_folder(os.path.dirname(path))


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass

# EOF
