"""The cmdexec resource: a program run without a shell, its input fed and output taken without
deadlock, its exit code returned; at the deadline it and every process it started are killed."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import InProcessCage, config_source, wait_until
from pmnc.errors import (
    ConfigError,
    DeadlineError,
    ResourceError,
    ResourceInputParameterError,
    TransactionExecutionError,
)
from pmnc.protocols import cmdexec
from pmnc.request import fake_request

PYTHON = sys.executable

# Forks a child that sleeps, writes the child's pid to argv[1], then sleeps itself; the child keeps
# the program's stdout open, as a forgotten helper process would.
FORKS_AND_SLEEPS = """
import os, sys, time
child = os.fork()
if child == 0:
    time.sleep(60)
    os._exit(0)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(child))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
print("started", flush=True)
time.sleep(60)
"""


def python(*arguments: str, **config: object) -> cmdexec.Resource:
    return cmdexec.Resource("cmd/1", {"executable": PYTHON, "arguments": ("-c", *arguments), **config})


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting to be reaped by init is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_program_and_the_child_it_forked_are_killed_at_the_deadline(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    fake_request(1.0)
    started = time.monotonic()
    with pytest.raises(ResourceError, match="did not finish within the request's deadline") as error:
        python(FORKS_AND_SLEEPS).execute(str(pid_file))
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 1.5  # at its deadline, not when the program would have ended
    assert isinstance(error.value, DeadlineError) and not error.value.recoverable
    child = int(pid_file.read_text())
    wait_until(lambda: not alive(child), timeout=5.0, message=f"the child {child} gone")


def test_the_deadline_through_a_transaction_in_a_cage(in_process_cage: Callable[..., InProcessCage],
                                                      tmp_path: Path) -> None:
    cage = in_process_cage(files={"config_resource_slow.py": config_source(
        {"protocol": "cmdexec", "executable": PYTHON, "arguments": ("-c", FORKS_AND_SLEEPS)})})
    pmnc = cage.cage.runtime.pmnc("test")
    for n, run, error in [(1, lambda f: pmnc.transaction.slow.execute(f), ResourceError),  # inline, on this thread
                          # on the pool's threads: the coordinator's deadline, or the participant's error first
                          (2, lambda f: two_participants(pmnc, f), (TransactionExecutionError, DeadlineError))]:
        pid_file = tmp_path / f"child{n}.pid"
        fake_request(1.0)
        started = time.monotonic()
        with pytest.raises(error):
            run(str(pid_file))
        assert time.monotonic() - started < 1.5
        for pid_path in [pid_file, tmp_path / f"child{n}.pid-2"][:n]:
            child = int(wait_until(lambda p=pid_path: p.exists() and p.read_text(), message="pid written"))
            wait_until(lambda c=child: not alive(c), timeout=5.0, message=f"the child {child} gone")


def two_participants(pmnc: object, pid_file: str) -> object:
    xa = pmnc.transaction.create()  # type: ignore[attr-defined]
    xa.slow.execute(pid_file)
    xa.slow.execute(pid_file + "-2")
    return xa.execute()


def test_exit_codes_are_returned_not_raised() -> None:
    fake_request(10.0)
    assert python("import sys; sys.exit(3)").execute() == (3, b"", b"")
    assert python("print('out'); import sys; print('err', file=sys.stderr)").execute() == (0, b"out\n", b"err\n")
    assert python("import os, signal; os.kill(os.getpid(), signal.SIGTERM)").execute()[0] == -15


def test_arguments_go_to_the_program_as_they_are_without_a_shell() -> None:
    fake_request(10.0)
    echo = python("import sys; print(repr(sys.argv[1:]))", "conf igured")
    code, out, _ = echo.execute("$HOME", "a;b", "*", 12, 1.5)
    assert code == 0
    assert out.decode().strip() == repr(["conf igured", "$HOME", "a;b", "*", "12", "1.5"])


def test_megabytes_through_stdin_and_stdout_at_once() -> None:
    """cat writes as it reads: with the pipes fed one after the other this would deadlock."""
    fake_request(20.0)
    data = os.urandom(8 * 1024 * 1024)
    cat = cmdexec.Resource("cat/1", {"executable": "cat"})
    code, out, err = cat.execute(stdin=data)
    assert (code, len(out), err) == (0, len(data), b"")
    assert out == data
    both = python("import sys; d = sys.stdin.buffer.read(); sys.stdout.buffer.write(d); sys.stderr.buffer.write(d)")
    code, out, err = both.execute(stdin=data[:3_000_000])
    assert code == 0 and out == err == data[:3_000_000]


def test_a_program_that_does_not_read_its_input_is_fine() -> None:
    fake_request(10.0)
    assert python("print('ignored it')").execute(stdin=b"x" * 5_000_000) == (0, b"ignored it\n", b"")


def test_output_beyond_max_output_kills_the_program(tmp_path: Path) -> None:
    fake_request(10.0)
    endless = python("import sys\nwhile True: sys.stdout.write('x' * 65536)", max_output=1_000_000)
    started = time.monotonic()
    with pytest.raises(ResourceError, match=r"wrote more than max_output \(1000000 bytes\)"):
        endless.execute()
    assert time.monotonic() - started < 5.0
    both = python("import sys; sys.stdout.write('o' * 600); sys.stderr.write('e' * 600)", max_output=1000)
    with pytest.raises(ResourceError, match="max_output"):
        both.execute()  # stdout and stderr together
    assert python("print('x' * 998)", max_output=1000).execute()[1] == b"x" * 998 + b"\n"  # 999: within


def test_environment_from_the_config_and_the_call() -> None:
    fake_request(10.0)
    show = python("import os; print(os.environ.get('PATH') == os.environ['EXPECTED_PATH'], "
                  "os.environ['NAME'], os.environ.get('FOO'))",
                  environment={"NAME": "VALUE", "EXPECTED_PATH": os.environ["PATH"]})
    assert show.execute()[1] == b"True VALUE None\n"  # the cage's environment, and the config's
    assert show.execute(env={"FOO": "BAR"})[1] == b"True VALUE BAR\n"
    assert show.execute(environment={"FOO": 42, "NAME": "other"})[1] == b"True other 42\n"  # the original's keyword
    with pytest.raises(ResourceInputParameterError, match="env or environment"):
        show.execute(env={}, environment={})


def test_a_missing_executable_is_a_clear_error(tmp_path: Path) -> None:
    fake_request(10.0)
    with pytest.raises(ResourceError, match="cannot run never-existed: no such program") as error:
        cmdexec.Resource("na/1", {"executable": "never-existed"}).execute()
    assert error.value.recoverable  # nothing ran
    text = tmp_path / "notes.txt"
    text.write_text("not a program\n")
    text.chmod(0o644)
    with pytest.raises(ResourceError, match="permission denied"):
        cmdexec.Resource("na/1", {"executable": str(text)}).execute()
    text.chmod(0o755)
    with pytest.raises(ResourceError, match="Exec format error"):
        cmdexec.Resource("na/1", {"executable": str(text)}).execute()


def test_bad_input_and_config_are_refused() -> None:
    fake_request(10.0)
    with pytest.raises(ResourceInputParameterError, match="stdin must be bytes, not str"):
        python("pass").execute(stdin="text")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="executable must name the program"):
        cmdexec.Resource("cmd/1", {})
    with pytest.raises(ConfigError, match="arguments must be a tuple of arguments"):
        cmdexec.Resource("cmd/1", {"executable": "cat", "arguments": "-n"})
    with pytest.raises(ConfigError, match="unknown config key: enviroment"):
        cmdexec.Resource("cmd/1", {"executable": "cat", "enviroment": {}})


def test_a_transaction_in_a_cage_runs_the_configured_program(in_process_cage: Callable[..., InProcessCage]) -> None:
    cage = in_process_cage(files={"config_resource_cmdexec_1.py": config_source(
        {"protocol": "cmdexec", "executable": "cat", "arguments": (), "environment": {}})})
    pmnc = cage.cage.runtime.pmnc("test")
    fake_request(10.0)
    assert pmnc.transaction.cmdexec_1.execute(stdin=b"foo") == (0, b"foo", b"")
    code, out, err = pmnc.transaction.cmdexec_1.execute("never#existed")
    assert code != 0 and out == b"" and b"never#existed" in err
