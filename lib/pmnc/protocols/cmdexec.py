"""cmdexec: a resource that runs a program, feeds it stdin and returns its exit code and output.

What the user sees is the original's: `config_resource_<n>.py` names `executable`, `arguments`
and `environment`, and

    exit_code, stdout, stderr = pmnc.transaction.<n>.execute("arg1", 2, stdin=b"...", env={"K": "V"})

runs `executable *arguments "arg1" "2"` (every argument made a string; no shell in between) in
the cage's environment plus `environment` plus `env` (the original's keyword `environment=` is
taken too). A non-zero exit code is not an error; a program killed by a signal gives minus the
signal's number, as `subprocess` does.

One call, on the caller's thread (the original pumped the pipes on a pool of three threads a call):

    start the program in a session of its own (its own process group)
    one loop, bounded by the request's deadline: stdin written, stdout and stderr read as the
    program is ready, so large input and large output at once never deadlock
        output beyond max_output → the group killed, an error
        the deadline → the group killed, an unrecoverable error (what it did stays done)
        the program exits → whatever it left running in its group killed, the rest of its
        output read, its exit code taken

A process that left the group on purpose (its own setsid, a daemon) is beyond reach; if it holds
the program's stdout or stderr open, the call waits for it until the deadline.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping
from typing import Any

from pmnc import log, resource
from pmnc import request as _request
from pmnc.errors import ConfigError, ResourceDeadlineError, ResourceError, ResourceInputParameterError, exc_string
from pmnc.schema import RESOURCE_KEYS, Key, resource_file

__all__ = ["Resource"]

MAX_OUTPUT = 16 * 1024 * 1024  # bytes of stdout and stderr together, by default
READ_CHUNK = 65536  # bytes read from a pipe at once
WRITE_CHUNK = 65536  # bytes offered to stdin at once (a pipe takes what it has room for)
POLL_PERIOD = 0.05  # seconds between looks at the program where the system has no pidfd
REAP_TIMEOUT = 5.0  # seconds a killed program is waited for (one stuck in the kernel takes longer)


def _arguments(value: Any) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)):
        raise ValueError(value)
    return tuple(str(v) for v in value)


_arguments.expected = "a tuple of arguments"  # type: ignore[attr-defined]


def _environment(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ValueError(value)
    return {str(k): str(v) for k, v in value.items()}


_environment.expected = "a dict of NAME: value"  # type: ignore[attr-defined]

KEYS = RESOURCE_KEYS.extend(
    executable=Key(None, str),  # the program: a path, or a name looked up in the cage's PATH
    arguments=Key((), _arguments),  # given before each call's own arguments
    environment=Key({}, _environment),  # added to the cage's environment
    max_output=Key(MAX_OUTPUT, int),  # bytes of stdout and stderr together; more kills the program
)


def _argument(arg: Any) -> str | bytes:
    return arg if isinstance(arg, (str, bytes)) else str(arg)


class Resource(resource.Resource):
    """`xa.<name>.execute(*args, stdin=b"", env={})` → (exit_code, stdout, stderr); not
    transactional: the program has run once the call returns."""

    transactional = False
    inline = True  # the one loop of a call is bounded by the request's deadline

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        file = resource_file(name)
        super().__init__(name, KEYS.read(config, file))
        if not self.config["executable"]:
            raise ConfigError(f"{file}: executable must name the program to run, e.g. \"/usr/bin/cat\"")
        if self.config["max_output"] < 1:
            raise ConfigError(f"{file}: max_output must be a positive number of bytes")
        self.executable: str = self.config["executable"]

    def execute(self, *args: Any, stdin: bytes | None = None, env: Mapping[str, Any] | None = None,
                environment: Mapping[str, Any] | None = None) -> tuple[int, bytes, bytes]:
        """Run the program with `args` after the configured arguments, `stdin` as its input and
        `env` (or `environment`) added to its environment; its exit code, stdout and stderr."""
        if env is not None and environment is not None:
            raise ResourceInputParameterError("give env or environment (the same thing), not both")
        extra = env if env is not None else environment
        if stdin is not None and not isinstance(stdin, (bytes, bytearray, memoryview)):
            raise ResourceInputParameterError(f"stdin must be bytes, not {type(stdin).__name__} "
                                              f"(encode text first)")
        if extra is not None and not isinstance(extra, Mapping):
            raise ResourceInputParameterError(f"env must be a dict, not {type(extra).__name__}")
        argv = [self.executable, *self.config["arguments"], *(_argument(a) for a in args)]
        variables = {**os.environ, **self.config["environment"],
                     **{str(k): str(v) for k, v in (extra or {}).items()}}
        data = bytes(stdin or b"")
        log.info(f"starting process {self.executable} with {len(data)} stdin byte(s)")
        run = _Run(argv, variables, self.config["max_output"])
        exit_code, out, err = run.complete(data)
        log.info(f"process {self.executable} (pid {run.pid}) returned exit code {exit_code} with "
                 f"{len(out)} stdout byte(s) and {len(err)} stderr byte(s)")
        return exit_code, out, err


class _Run:
    """One run of the program, from start to reaped; its process group never outlives it."""

    def __init__(self, argv: list[Any], variables: dict[str, str], max_output: int) -> None:
        self.argv, self.max_output = argv, max_output
        self.started = time.monotonic()
        self.process = self._start(argv, variables)
        self.pid = self.process.pid
        assert self.process.stdout is not None and self.process.stderr is not None
        self.stdout_fd, self.stderr_fd = self.process.stdout.fileno(), self.process.stderr.fileno()
        self.reaped = False
        self.output: dict[int, list[bytes]] = {self.stdout_fd: [], self.stderr_fd: []}  # fd → what it gave
        self.size = 0  # bytes of output so far

    @staticmethod
    def _start(argv: list[Any], variables: dict[str, str]) -> subprocess.Popen[bytes]:
        try:
            # a session of its own: its process group is this program and everything it starts
            return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env=variables, start_new_session=True, close_fds=True)
        except FileNotFoundError:
            raise ResourceError(f"cannot run {argv[0]}: no such program (give its full path, or put it on the "
                                f"PATH of the cage)", recoverable=True, terminal=False) from None
        except PermissionError:
            raise ResourceError(f"cannot run {argv[0]}: permission denied (is it executable?)",
                                recoverable=True, terminal=False) from None
        except OSError as e:
            raise ResourceError(f"cannot run {argv[0]}: {e.strerror or exc_string(e, stack=False)}",
                                recoverable=True, terminal=False) from None

    def complete(self, data: bytes) -> tuple[int, bytes, bytes]:
        try:
            self._pump(data)
            exit_code = self.process.wait()  # it has exited: no wait
            self.reaped = True
        finally:
            if not self.reaped:
                self._kill_and_reap()
            for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
                if pipe is not None:
                    pipe.close()
        return exit_code, b"".join(self.output[self.stdout_fd]), b"".join(self.output[self.stderr_fd])

    # --- the loop -----------------------------------------------------------------------------

    def _pump(self, data: bytes) -> None:
        """Until the program has exited and its output is read: stdin fed, output taken."""
        process = self.process
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        pidfd = _pidfd(self.pid)
        with selectors.DefaultSelector() as selector:
            for fd in (self.stdout_fd, self.stderr_fd):
                selector.register(fd, selectors.EVENT_READ, "read")
            if data:
                os.set_blocking(process.stdin.fileno(), False)
                selector.register(process.stdin.fileno(), selectors.EVENT_WRITE, "write")
            else:
                process.stdin.close()
            if pidfd is not None:
                selector.register(pidfd, selectors.EVENT_READ, "exit")
            try:
                self._loop(selector, memoryview(data), pidfd is not None)
            finally:
                if pidfd is not None:
                    os.close(pidfd)

    def _loop(self, selector: selectors.BaseSelector, data: memoryview, has_pidfd: bool) -> None:
        written, exited = 0, False
        reading = 2
        while reading or not exited:
            remain = self._remain()
            if remain <= 0:
                self._deadline(exited)
            events = selector.select(remain if has_pidfd else min(remain, POLL_PERIOD))
            if not has_pidfd and not exited and self._has_exited():
                exited = self._exited(selector)
            for key, _ in events:
                if key.data == "exit":
                    selector.unregister(key.fd)
                    exited = self._exited(selector)
                elif key.data == "read":
                    reading -= self._read(selector, key.fd)
                else:
                    written = self._write(selector, key.fd, data, written)

    def _read(self, selector: selectors.BaseSelector, fd: int) -> int:
        """1 if the pipe has ended, else 0."""
        chunk = os.read(fd, READ_CHUNK)
        if not chunk:
            selector.unregister(fd)
            return 1
        self.output[fd].append(chunk)
        self.size += len(chunk)
        if self.size > self.max_output:
            self._kill_and_reap()
            raise ResourceError(f"process {self.argv[0]} wrote more than max_output ({self.max_output} bytes) to "
                                f"stdout and stderr: it and every process it started were killed (raise max_output "
                                f"in the resource's config file if that much output is expected)")
        return 0

    def _write(self, selector: selectors.BaseSelector, fd: int, data: memoryview, written: int) -> int:
        try:
            written += os.write(fd, data[written:written + WRITE_CHUNK])
        except BlockingIOError:
            return written
        except BrokenPipeError:  # the program does not read all its input: it need not
            written = len(data)
        if written >= len(data):
            self._close_stdin(selector)
        return written

    def _close_stdin(self, selector: selectors.BaseSelector) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        if not stdin.closed:
            if stdin.fileno() in selector.get_map():
                selector.unregister(stdin.fileno())
            try:
                stdin.close()
            except BrokenPipeError:
                pass

    def _exited(self, selector: selectors.BaseSelector) -> bool:
        """The program has exited (not yet reaped, so its group id cannot be taken by another):
        what it left running in its group is killed, which also ends their hold on its pipes."""
        self._kill_group()
        self._close_stdin(selector)
        return True

    def _has_exited(self) -> bool:
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    @staticmethod
    def _remain() -> float:
        request = _request.current()
        return 3600.0 if request.deadline is None else request.remain

    def _deadline(self, exited: bool) -> None:
        self._kill_and_reap()
        elapsed = time.monotonic() - self.started
        if exited:
            why = (f"exited with code {self.process.returncode} but a process it started outside its group "
                   f"kept its stdout or stderr open until the request's deadline ({elapsed:.1f}s)")
        else:
            why = (f"did not finish within the request's deadline ({elapsed:.1f}s): it and every process it "
                   f"started were killed")
        log.warning(f"process {self.argv[0]} (pid {self.pid}) {why}")
        raise ResourceDeadlineError(f"process {self.argv[0]} {why}")

    # --- killing ------------------------------------------------------------------------------

    def _kill_group(self) -> None:
        """SIGKILL to the program's process group; only while the program is not reaped, so that
        the group id is still its own."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # nothing left in the group

    def _kill_and_reap(self) -> None:
        if self.reaped:
            return
        self._kill_group()
        try:
            self.process.wait(REAP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.error(f"process {self.argv[0]} (pid {self.pid}) was killed but has not ended within "
                      f"{REAP_TIMEOUT:.0f}s; it is left to the system")
            return
        self.reaped = True


def _pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when the process exits (Linux 5.3+), or None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None

# EOF
