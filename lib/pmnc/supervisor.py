"""`startup.py`: the supervisor (primary) process and the cage (secondary) process.

The primary locks `logs/<cage>.lock` (a second instance of the cage is
refused), writes `logs/<cage>.pid`, runs the cage as a child process and
restarts it whenever it ends without being asked to: with a growing
back-off when it dies abnormally, at once when it shut down cleanly (a
SIGTERM sent to the cage process rather than to the supervisor). SIGTERM or
SIGINT to the primary closes the child's stdin: that is the child's signal
to shut down gracefully (and, should the primary die, it is the same
signal, so a cage never outlives its supervisor). Both are portable: no
fork, no signals sent to the child.
"""

from __future__ import annotations

import gc
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Any

from pmnc import log
from pmnc.errors import StateCorruptError, exc_string

TARGET = re.compile(r"(?:([A-Za-z0-9_-]{1,32})\.)?([A-Za-z0-9_-]{1,32})")
USAGE = ("usage: python3 startup.py [node.]cage | --self-test cage module [sub-folder ...] | "
         "--keys ca|server|client|cage DIR ... | --retry cage list [queue] | --retry cage purge queue")
CHILD_FLAG = "--cage-process"

BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
EXIT_REFUSED = 3  # the cage refuses to start (a damaged state file): restarting would not help
EXIT_TERMINATED = 4  # the cage process shut down cleanly on its own SIGTERM, its supervisor did not ask
EXIT_ASKED = 5  # the cage stopped itself (pmnc.startup.exit()): the supervisor ends too
STABLE_AFTER = 60.0  # a cage that ran this long before dying restarts without delay
STOP_GRACE = 120.0  # how long the primary waits for a stopping cage before killing it


class UsageError(Exception):
    pass


def main(root: str, argv: list[str]) -> int:
    try:
        if argv[:1] == [CHILD_FLAG]:
            return run_cage(root, *argv[1:5])
        if argv[:1] == ["--self-test"]:
            from pmnc.selftest import run_self_test

            if len(argv) < 3:
                raise UsageError(USAGE)
            cage_dir = os.path.join(root, "cages", check_cage(root, argv[1]))
            return run_self_test(cage_dir, argv[2], required_dirs=argv[3:])
        if argv[:1] == ["--retry"]:
            from pmnc.retry import main as retry_main

            if len(argv) < 2:
                raise UsageError(USAGE)
            check_cage(root, argv[1])
            return retry_main(os.path.join(root, "cages"), argv[1:])
        if argv[:1] == ["--keys"]:
            from pmnc.keys import main as keys_main

            return keys_main(argv[1:])
        if len(argv) != 1:
            raise UsageError(USAGE)
        node, cage = parse_target(argv[0])
        # Two instances of a cage on one machine (`a.worker`, `b.worker`) keep separate files.
        files = f"{node}.{cage}" if "." in argv[0] else cage
        return Supervisor(root, node, check_cage(root, cage), files).run()
    except UsageError as e:
        print(f"startup.py: {e}", file=sys.stderr)
        return 2


def parse_target(target: str) -> tuple[str, str]:
    match = TARGET.fullmatch(target)
    if match is None:
        raise UsageError(f"invalid cage name {target!r}; {USAGE}")
    return match.group(1) or default_node(), match.group(2)


def default_node() -> str:
    return platform.node().split(".")[0] or "localhost"


def check_cage(root: str, cage: str) -> str:
    if not TARGET.fullmatch(cage) or "." in cage:
        raise UsageError(f"invalid cage name {cage!r}")
    if not os.path.isdir(os.path.join(root, "cages", cage)):
        raise UsageError(f"cage directory {os.path.join(root, 'cages', cage)} does not exist")
    return cage


def logs_dir(root: str, cage: str) -> str:
    path = os.path.join(root, "cages", cage, "logs")
    os.makedirs(path, exist_ok=True)
    return path


def open_log(root: str, cage: str, files: str) -> None:
    echo = sys.stderr if sys.stderr.isatty() else None
    log.configure(log.LogFile(logs_dir(root, cage), files), echo=echo, echo_level=log.MESSAGE)


class Supervisor:
    def __init__(self, root: str, node: str, cage: str, files: str | None = None) -> None:
        self.root, self.node, self.cage = root, node, cage
        self.files = files or cage  # the name of the pid and log files
        self.stopping = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None

    def run(self) -> int:
        threading.current_thread().name = "supervisor"
        lock = self._lock()
        if lock is None:
            return 1
        open_log(self.root, self.cage, self.files)
        pid_file = os.path.join(logs_dir(self.root, self.cage), f"{self.files}.pid")
        with open(pid_file, "w") as f:
            f.write(str(os.getpid()))
        self._install_signals()
        print(f"pmnc: cage {self.cage} is starting, supervisor pid {os.getpid()}, "
              f"log in {logs_dir(self.root, self.cage)}", file=sys.stderr)
        try:
            return self._supervise()
        finally:
            log.flush(everything=True)  # with the counts of repeats left out of the log
            lock.close()

    def _lock(self) -> IO[str] | None:
        """The lock file, locked for the supervisor's life; None (and one line to stderr)
        if another supervisor of this cage holds it."""
        lock = open(os.path.join(logs_dir(self.root, self.cage), f"{self.files}.lock"), "a+")
        lock.seek(0)  # what is locked on Windows: the first byte, not the end
        try:
            _lock_exclusively(lock)
        except OSError:
            try:
                holder = lock.read().strip() or "?"
            except OSError:  # Windows: the holder's locked byte cannot be read
                holder = "?"
            lock.close()
            print(f"startup.py: cage {self.files} is already running (supervisor pid {holder})", file=sys.stderr)
            return None
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        return lock

    def _supervise(self) -> int:
        failures, mode = 0, "NORMAL"
        while not self.stopping.is_set():
            began = time.monotonic()
            code = self._run_child(mode)
            if self.stopping.is_set():
                return 0
            if code == EXIT_ASKED:
                log.message("the cage has stopped itself (pmnc.startup.exit()), the supervisor ends")
                return 0
            if code == EXIT_REFUSED:
                log.error("the cage has refused to start (see above) and is not restarted")
                return 1
            assert self.child is not None
            if code in (0, EXIT_TERMINATED):  # a clean shutdown nobody here asked for: no back-off
                log.error(f"the cage process has ended without being asked to (SIGTERM to pid {self.child.pid}?), "
                          f"restarting")
                failures, mode = 0, "RESTART"
                continue
            failures = 1 if time.monotonic() - began >= STABLE_AFTER else failures + 1
            delay = min(BACKOFF_FIRST * 2 ** (failures - 1), BACKOFF_MAX)
            log.error(f"the cage process has exited with code {code}, restarting in {delay:.1f}s")
            mode = "FAILURE"
            self.stopping.wait(delay)
        return 0

    def _run_child(self, mode: str) -> int:
        command = [sys.executable, os.path.join(self.root, "startup.py"), CHILD_FLAG, self.node, self.cage, mode,
                   self.files]
        self.child = subprocess.Popen(command, stdin=subprocess.PIPE, cwd=self.root)
        log.message(f"the cage process has started, pid {self.child.pid}")
        return self.child.wait()  # signal handlers run meanwhile (PEP 475)

    def _install_signals(self) -> None:
        for name in ("SIGTERM", "SIGINT", "SIGBREAK"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        # No logging here: the handler may interrupt this thread inside the log's lock.
        name = signal.Signals(signum).name
        if self.stopping.is_set():
            if self.child is not None:
                self.child.kill()
            threading.Thread(target=log.warning, args=(f"{name} again, the cage process is killed",),
                             name="stopper", daemon=True).start()
            return
        self.stopping.set()
        threading.Thread(target=self._stop_child, args=(name,), name="stopper", daemon=True).start()

    def _stop_child(self, signal_name: str) -> None:
        log.message(f"signal {signal_name} received, the cage is stopping")
        child = self.child
        if child is None or child.poll() is not None:
            return
        try:
            assert child.stdin is not None
            child.stdin.close()  # the cage's cue to shut down gracefully
        except OSError:
            pass
        try:
            child.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            log.error(f"the cage process did not stop in {STOP_GRACE:.0f}s and is killed")
            child.kill()


STARTING = {"FAILURE": "restarting after a failure", "RESTART": "restarting"}


def run_cage(root: str, node: str, cage: str, mode: str, files: str = "") -> int:
    """The secondary: run the cage until stdin closes or SIGTERM arrives."""
    from pmnc.cage import Cage

    threading.current_thread().name = "cage"
    sys.path.insert(0, os.path.join(root, "cages", cage, "lib"))
    open_log(root, cage, files or cage)
    stopping, terminated = threading.Event(), threading.Event()
    if hasattr(signal, "SIGINT"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the supervisor

    def on_sigterm(signum: int, frame: Any) -> None:
        terminated.set()
        stopping.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    threading.Thread(target=_watch_stdin, args=(stopping,), name="stdin", daemon=True).start()
    log.message(f"the cage is {STARTING.get(mode, 'starting up')}, pid {os.getpid()}")
    raise_descriptor_limit()
    try:
        running = Cage(os.path.join(root, "cages"), cage, node, owns_process=True)
        running.run(stopping, ready=freeze_boot_objects)
    except StateCorruptError as e:
        log.error(f"the cage refuses to start: {e}")
        return EXIT_REFUSED
    except Exception as e:
        log.error(f"the cage has failed: {exc_string(e)}")
        return 1
    if running.runtime.exit_asked.is_set():
        return EXIT_ASKED
    return EXIT_TERMINATED if terminated.is_set() else 0


def freeze_boot_objects() -> None:
    """What the boot made (the framework, the modules loaded, their classes and configs) lives
    as long as the cage process: taken out of the garbage collector's sight, it is no longer
    walked by every full collection, which a busy cage makes every second or so - about 4 %
    of the CPU of a small HTTP request (bench/README.md, issue 20). What a module reload
    leaves behind of a version loaded at boot stays in memory, once per module."""
    gc.collect()
    gc.freeze()
    log.debug(f"{gc.get_freeze_count()} objects of the boot are no longer collected")


def raise_descriptor_limit() -> None:
    """Soft limit of open files up to the hard one: each connection is a descriptor,
    and a soft limit as low as 1024 is the common default."""
    try:
        import resource
    except ImportError:  # not on Windows, where there is no such limit to raise
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        log.log(f"the limit of open files is {soft}")
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as e:  # an unlimited hard limit may be above what the kernel allows
        log.warning(f"the limit of open files stays {soft}, it cannot be raised to {hard}: {e}")
        return
    log.log(f"the limit of open files has been raised from {soft} to {hard}")


def _watch_stdin(stopping: threading.Event) -> None:
    # os.read, not sys.stdin: a thread blocked in a buffered read holds its lock
    # and makes the interpreter abort when the process exits another way.
    try:
        while os.read(sys.stdin.fileno(), 512):
            pass
    except (OSError, ValueError):
        pass
    stopping.set()


def _lock_exclusively(file: IO[str]) -> None:
    """Raise OSError if another process holds the lock; it is released when the process ends."""
    if sys.platform == "win32":
        import msvcrt

        msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
