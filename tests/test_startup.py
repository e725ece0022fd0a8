"""The supervisor and cage processes, end to end: real processes, real sockets.

Every cage here runs as `python startup.py <cage>` in a temporary tree (the
`cage_process` fixture kills whatever is left); self-test and usage runs are
plain subprocesses with a timeout.
"""

from __future__ import annotations

import errno
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import config_source, http_config, http_request, make_tree, module_source, wait_until, write_file
from pmnc import placement as placement_module
from pmnc.errors import ConfigError
from pmnc.placement import AUTO, Placement, Reading, alone_on_its_cpu, choose_cpu, on_one_cpu, read_cpus
from pmnc.schema import INTERFACES_KEYS

RECORD = re.compile(r"^\d\d:\d\d:\d\d\.\d\d (ERR|MSG|WRN|LOG|INF|DBG|NSE) \[[^\]]+\] ")

SLOW_HANDLER = module_source("""
    import time

    def process_request(request, response):
        if request["url"] == "/slow":
            pmnc.log.message("slow request started")
            time.sleep(1.0)
            response["content"] = "slow done"
            response["headers"]["content-type"] = "text/plain"
        elif request["url"] == "/fail":
            raise ValueError("first line\\nsecond line")
        else:
            response["content"] = "Hello, world !"
            response["headers"]["content-type"] = "text/plain"
""", ["process_request"])


def named_handler(text: str) -> str:
    return module_source(f"""
        def process_request(request, response):
            response["content"] = {text!r}
            response["headers"]["content-type"] = "text/plain"
    """, ["process_request"])


def interfaces_config(names: tuple[str, ...]) -> str:
    """config_interfaces.py as make_tree writes it, with other interface names."""
    return config_source({"interfaces": names, "request_timeout": 10.0, "thread_count": 10,
                          "sweep_period": 15.0, "log_level": "LOG"})


def run_startup(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(root / "startup.py"), *args], cwd=root,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan may wait unreaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def served(port: int, path: str = "/") -> tuple[int, str] | None:
    """(status, body) of one request, or None if the connection is refused or dropped."""
    try:
        status, _, body = http_request(port, path, timeout=5.0)
    except (OSError, http.client.HTTPException):
        return None
    return status, body.decode()


def hello(port: int) -> bool:
    return served(port) == (200, "Hello, world !")


# --- the command line ---------------------------------------------------------------------


@pytest.mark.parametrize("args, says", [
    ((), "usage"),
    (("bad name!",), "invalid cage name"),
    (("nosuchcage",), "does not exist"),
], ids=["no-argument", "invalid-name", "missing-folder"])
def test_bad_command_line_is_a_one_line_error(tmp_path: Path, args: tuple[str, ...], says: str) -> None:
    root = make_tree(tmp_path)
    result = run_startup(root, *args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert says in lines[0]
    assert sorted(p.name for p in (root / "cages").iterdir()) == [".shared", "sample"]  # nothing created


# --- pid file, log file, readiness ---------------------------------------------------------


def test_pid_file_and_log_records(cage_process) -> None:
    cage = cage_process(interfaces={"http": http_config()}, files={"interface_http.py": SLOW_HANDLER})
    assert (cage.logs / "sample.pid").read_text().strip() == str(cage.process.pid)
    port = cage.port()
    assert hello(port)
    assert served(port, "/fail")[0] == 500  # a multi-line exception text is still one record
    cage.wait_for_log(r"request GET /fail failed: ValueError")

    logs = sorted(p.name for p in cage.logs.glob("*.log"))
    assert len(logs) == 1
    day = re.fullmatch(r"sample-(\d{8})\.log", logs[0])
    assert day is not None, logs
    now = time.time()
    assert day.group(1) in {time.strftime("%Y%m%d", time.localtime(now - d)) for d in (0, 120)}
    lines = cage.log_text().splitlines()
    bad = [line for line in lines if not RECORD.match(line)]
    assert not bad, bad
    assert any("[supervisor]" in line for line in lines) and any("[cage]" in line for line in lines)
    assert f"interface http listens on http://127.0.0.1:{port}/" in cage.log_text()


def frozen_count_handler(version: str) -> str:
    return module_source(f"""
        import gc

        def process_request(request, response):
            response["content"] = f"{{gc.get_freeze_count()}} {version}"
            response["headers"]["content-type"] = "text/plain"
    """, ["process_request"])


def test_the_boot_is_out_of_the_collectors_sight_and_modules_still_reload(cage_process) -> None:
    # A full collection walks every object it tracks; what the boot made lives as long as the
    # process, so the cage freezes it once started (bench/README: the CPU of each request).
    cage = cage_process(interfaces={"http": http_config()}, files={"interface_http.py": frozen_count_handler("one")})
    port = cage.port()
    answer = served(port)
    assert answer is not None and answer[0] == 200
    frozen, version = answer[1].split()
    assert int(frozen) > 1000 and version == "one"  # the framework and the modules of the boot

    write_file(cage.root / "cages" / "sample" / "interface_http.py", frozen_count_handler("two"))
    wait_until(lambda: (served(port) or (0, ""))[1].endswith(" two"), message="the new version served")


# --- restarts ------------------------------------------------------------------------------


def test_killed_cage_is_restarted_and_serves_again(cage_process) -> None:
    port = free_port()  # clients know a fixed port: the new cage must bind it again
    cage = cage_process(interfaces={"http": http_config(port)})
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=5.0)
    client.request("GET", "/")
    assert client.getresponse().read() == b"Hello, world !"  # and the connection stays open
    (old,) = cage.child_pids()
    os.kill(old, signal.SIGKILL)
    started = cage.wait_for_log(r"the cage is restarting after a failure, pid (\d+)")
    new = int(started.group(1))
    assert new != old and cage.child_pids() == [old, new]
    assert "the cage process has exited with code -9, restarting in" in cage.log_text()
    cage.wait_for_log("the cage is ready", count=2)
    assert cage.port(count=2) == port
    assert hello(port)
    assert cage.process.poll() is None  # the supervisor itself lives on
    client.close()


def test_cage_that_keeps_dying_restarts_with_growing_delays(cage_process) -> None:
    cage = cage_process(interfaces={"http": http_config()})
    gaps = []
    for n in range(1, 4):
        cage.wait_for_log("the cage is ready", count=n)
        killed = time.monotonic()
        os.kill(cage.child_pids()[-1], signal.SIGKILL)
        wait_until(lambda n=n: len(cage.child_pids()) > n, timeout=10.0, message=f"restart #{n}")
        gaps.append(time.monotonic() - killed)
    delays = [float(d) for d in re.findall(r"exited with code -9, restarting in ([\d.]+)s", cage.log_text())]
    assert len(delays) == 3 and delays[0] < delays[1] < delays[2], delays
    for gap, delay in zip(gaps, delays, strict=True):
        assert gap >= delay * 0.9, (gaps, delays)  # the delay was really waited
    cage.wait_for_log("the cage is ready", count=4)
    assert hello(cage.port(count=4))


def test_cage_failing_at_boot_is_retried_and_stops_during_the_delay(cage_process) -> None:
    cage = cage_process(ready=False, thread_count=0)  # no worker pool can be built
    cage.wait_for_log(r"the cage has failed: ValueError")
    second = cage.wait_for_log(r"the cage process has exited with code (-?\d+), restarting in 1\.0s")
    stopped = time.monotonic()
    cage.process.send_signal(signal.SIGTERM)
    assert cage.process.wait(5.0) == 0
    assert time.monotonic() - stopped < 0.9  # it did not sit out the delay
    assert len(cage.child_pids()) == 2  # and started no third cage
    assert second.group(1) == "1"  # the cage's own exit code, not a crash on the way out
    assert "Fatal Python error" not in cage.process.stdout.read().decode(errors="replace")


def test_sigterm_to_the_cage_process_restarts_it(cage_process) -> None:
    port = free_port()
    cage = cage_process(interfaces={"http": http_config(port)})
    (child,) = cage.child_pids()
    os.kill(child, signal.SIGTERM)  # only a signal to the supervisor means "stop"
    cage.wait_for_log("the cage has been properly shut down")  # still a graceful shutdown
    cage.wait_for_log(rf"ERR \[supervisor\] the cage process has ended without being asked to "
                      rf"\(SIGTERM to pid {child}\?\), restarting")
    cage.wait_for_log("the cage is ready", count=2)
    assert "the cage is restarting, pid" in cage.log_text()
    assert hello(port)
    assert cage.process.poll() is None
    assert len(cage.child_pids()) == 2 and not alive(child)
    assert cage.stop() == 0  # and a stop is still a stop
    assert len(cage.child_pids()) == 2


# --- stopping ------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_gracefully_after_requests_in_flight(cage_process, signum: int) -> None:
    cage = cage_process(interfaces={"http": http_config()}, files={"interface_http.py": SLOW_HANDLER})
    port = cage.port()
    (child,) = cage.child_pids()
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(served, port, "/slow")
        cage.wait_for_log("slow request started")
        cage.process.send_signal(signum)
        cage.wait_for_log(r"request intake is closed, 1 request\(s\) in flight", timeout=5.0)
        late = served(port)
        assert late is None or late[0] != 200, late  # no new request is served once the stop began
        assert slow.result(timeout=10.0) == (200, "slow done")
    assert cage.process.wait(15.0) == 0
    assert "the cage has been properly shut down" in cage.log_text()
    wait_until(lambda: not alive(child), timeout=5.0, message="cage process gone")
    assert len(cage.child_pids()) == 1  # a stop is not a failure: no restart


def test_cage_shuts_down_when_supervisor_is_killed(cage_process) -> None:
    cage = cage_process(interfaces={"http": http_config()})
    port = cage.port()
    (child,) = cage.child_pids()
    cage.process.kill()
    cage.process.wait(5.0)
    wait_until(lambda: not alive(child), timeout=10.0, message="orphaned cage process gone")
    cage.wait_for_log("the cage has been properly shut down", timeout=5.0)
    assert served(port) is None


# --- interfaces ----------------------------------------------------------------------------


def test_interface_on_a_taken_port_fails_and_others_serve(cage_process) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        cage = cage_process(interfaces={"taken": http_config(taken), "http": http_config()})
        cage.wait_for_log(r"interface taken failed to start: \w+")
        assert "interface taken has started" not in cage.log_text()
        assert "the cage is ready, 1 interface(s) serving" in cage.log_text()
        assert hello(cage.port("http"))


def test_changed_port_restarts_the_interface(cage_process) -> None:
    cage = cage_process(interfaces={"http": http_config()})
    old = cage.port()
    assert hello(old)
    new = free_port()
    write_file(cage.cage_dir / "config_interface_http.py", config_source(http_config(new)))
    cage.wait_for_log("restarting interface http due to configuration change", timeout=5.0)
    assert cage.port(count=2) == new
    assert hello(new)
    assert served(old) is None


def test_changed_key_restarts_the_interface_with_it(cage_process) -> None:
    port = free_port()
    cage = cage_process(interfaces={"http": http_config(port)})
    assert hello(port)
    write_file(cage.cage_dir / "config_interface_http.py", config_source(http_config(port, max_connections=1)))
    cage.wait_for_log("restarting interface http due to configuration change", timeout=5.0)
    assert cage.port(count=2) == port  # the same port is bound again
    assert hello(port)
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as busy:
        # takes the one connection halfway through a request (a silent one would be dropped for the
        # newcomer); its 100 Continue says the cage has read that much
        busy.sendall(b"POST / HTTP/1.1\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
        assert busy.recv(100).startswith(b"HTTP/1.1 100 Continue")
        status, text = served(port)
        assert status == 503 and text.startswith("too many connections"), text  # per address or in all
    wait_until(lambda: hello(port), timeout=5.0, message="served once the connection is gone")


def test_config_change_lets_requests_in_flight_finish(cage_process) -> None:
    cage = cage_process(interfaces={"http": http_config()}, files={"interface_http.py": SLOW_HANDLER})
    port = cage.port()
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(served, port, "/slow")
        cage.wait_for_log("slow request started")
        write_file(cage.cage_dir / "config_interface_http.py", config_source(http_config(max_connections=50)))
        cage.wait_for_log("restarting interface http due to configuration change", timeout=5.0)
        assert slow.result(timeout=10.0) == (200, "slow done")
    assert hello(cage.port(count=2))


def test_interface_added_and_removed_in_config_interfaces(cage_process) -> None:
    cage = cage_process(interfaces={"http": http_config()},
                        files={"config_interface_extra.py": config_source(http_config()),
                               "interface_extra.py": named_handler("extra")})
    config = cage.cage_dir / "config_interfaces.py"
    write_file(config, interfaces_config(("http", "extra")))
    cage.wait_for_log("interface extra has started", timeout=5.0)
    extra = cage.port("extra")
    assert served(extra) == (200, "extra")

    write_file(config, interfaces_config(("http",)))
    cage.wait_for_log("stopping interface extra, it is no longer configured", timeout=5.0)
    assert served(extra) is None
    assert hello(cage.port("http"))


# --- CPU placement -------------------------------------------------------------------------


def placed_config(cpu_affinity: object) -> str:
    """config_interfaces.py as make_tree writes it (one interface, http), with `cpu_affinity`."""
    return config_source({"interfaces": ("http",), "request_timeout": 10.0, "thread_count": 10,
                          "sweep_period": 15.0, "log_level": "LOG", "cpu_affinity": cpu_affinity})


def thread_cpus(pid: int) -> set[frozenset[int]]:
    """The distinct CPU sets the threads of process `pid` may run on."""
    cpus = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            cpus.add(frozenset(os.sched_getaffinity(int(tid))))
        except ProcessLookupError:  # the thread has just ended
            pass
    return cpus


needs_two_cpus = pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                                    reason="placing threads on CPUs needs Linux and two CPUs to choose from")


@needs_two_cpus
def test_cpu_affinity_keeps_every_thread_on_its_cpus_and_follows_the_config(cage_process) -> None:
    allowed = sorted(os.sched_getaffinity(0))
    first, second = allowed[0], allowed[-1]
    cage = cage_process(interfaces={"http": http_config()}, files={"config_interfaces.py": placed_config((first,))})
    pid = cage.child_pids()[-1]
    port = cage.port()
    assert hello(port)  # the loop, a worker and the threads started for them are all there now
    assert thread_cpus(pid) == {frozenset({first})}
    cage.wait_for_log(rf"the cage's threads run on CPU\(s\) {first}\n")

    write_file(cage.cage_dir / "config_interfaces.py", placed_config(second))
    wait_until(lambda: thread_cpus(pid) == {frozenset({second})}, 5.0, message=f"every thread on CPU {second}")
    assert hello(port)

    write_file(cage.cage_dir / "config_interfaces.py", placed_config((first, 4095)))  # not a CPU it may use
    cage.wait_for_log(r"cpu_affinity \[\d+, 4095\] names CPUs this process may not run on.*stay where they are")
    assert thread_cpus(pid) == {frozenset({second})}

    write_file(cage.cage_dir / "config_interfaces.py", placed_config(None))
    wait_until(lambda: thread_cpus(pid) == {frozenset(allowed)}, 5.0, message="every thread back on every CPU")
    cage.wait_for_log("the cage's threads run where the system puts them")
    assert hello(port)


def test_cpu_affinity_naming_a_cpu_not_allowed_stops_the_boot(cage_process) -> None:
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("cpu_affinity is honoured on Linux only")
    cage = cage_process(interfaces={"http": http_config()}, files={"config_interfaces.py": placed_config(4095)},
                        ready=False)
    cage.wait_for_log(r"cpu_affinity \[4095\] names CPUs this process may not run on \(it may run on \[")
    assert "the cage is ready" not in cage.log_text()


@needs_two_cpus
def test_cpu_affinity_auto_is_the_default_and_keeps_the_threads_on_one_cpu(cage_process) -> None:
    cage = cage_process(interfaces={"http": http_config()})  # config_interfaces.py without cpu_affinity
    pid = cage.child_pids()[-1]
    port = cage.port()
    assert hello(port)
    cage.wait_for_log(r"the cage's threads run on CPU\(s\) \d+ "
                      r"\(cpu_affinity \"auto\": the CPU other processes use least\)")
    wait_until(lambda: len(cpus := thread_cpus(pid)) == 1 and len(next(iter(cpus))) == 1, 5.0,
               message="every thread on one and the same CPU")
    assert hello(port)

    write_file(cage.cage_dir / "config_interfaces.py", placed_config(None))  # a cage that computes outside the GIL
    wait_until(lambda: thread_cpus(pid) == {frozenset(os.sched_getaffinity(0))}, 5.0,
               message="every thread back on every CPU")
    cage.wait_for_log("the cage's threads run where the system puts them")


@pytest.mark.parametrize("value, cpus", [(0, {0}), ((0, 1), {0, 1}), ([1], {1}), (None, None)])
def test_cpu_affinity_takes_a_cpu_or_a_collection_of_them(value: object, cpus: set[int] | None) -> None:
    settings = INTERFACES_KEYS.read({"cpu_affinity": value}, "config_interfaces.py")
    assert settings["cpu_affinity"] == (None if cpus is None else frozenset(cpus))


def test_cpu_affinity_is_auto_unless_said_otherwise() -> None:
    assert INTERFACES_KEYS.read({}, "config_interfaces.py")["cpu_affinity"] == AUTO
    assert INTERFACES_KEYS.read({"cpu_affinity": "auto"}, "config_interfaces.py")["cpu_affinity"] == AUTO


@pytest.mark.parametrize("value", [(), "0", "AUTO", True, (0, "1"), (-1,), 1.0, [[0]]])
def test_cpu_affinity_that_names_no_cpu_is_a_config_error(value: object) -> None:
    with pytest.raises(ConfigError, match=r"cpu_affinity must be a CPU number or a non-empty tuple of them"):
        INTERFACES_KEYS.read({"cpu_affinity": value}, "config_interfaces.py")


@needs_two_cpus
def test_cpu_affinity_the_kernel_refuses_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cpuset shrunk under a running cage cannot be produced here: the kernel's refusal is."""
    def refuse(tid: int, cpus: object) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    placement = Placement()
    monkeypatch.setattr(os, "sched_setaffinity", refuse)
    with pytest.raises(ConfigError, match=r"cpu_affinity \[0\] cannot be applied: Invalid argument"):
        placement.apply(frozenset({0}))
    assert placement.current is None  # nothing was moved: the next second tries again


@pytest.mark.parametrize("current, busy, mine, coin, chosen", [
    (None, {0: 0.9, 1: 0.2}, 0.4, 0.9, 1),  # spread: what others leave decides (its own share discounted)
    (None, {0: 0.3, 1: 0.3}, 0.2, 0.9, 0),  # a tie: the lowest
    (0, {0: 0.9, 1: 0.5}, 0.8, 0.0, 0),  # kept on 0: most of CPU 0's load is its own, it stays
    (0, {0: 1.0, 1: 0.1}, 0.5, 0.3, 1),  # others keep CPU 0 busier by more than a quarter: heads, it moves
    (0, {0: 1.0, 1: 0.1}, 0.5, 0.7, 0),  # ... tails, it stays this second (another cage may move instead)
    (0, {0: 0.6, 1: 0.3}, 0.1, 0.0, 0),  # idler by less than the margin: it stays
    (3, {0: 0.6, 1: 0.3}, 0.1, 0.9, 1),  # its CPU is no longer among those it may use
])
def test_cpu_affinity_auto_chooses_the_cpu_others_use_least(current: int | None, busy: dict[int, float],
                                                            mine: float, coin: float, chosen: int) -> None:
    assert choose_cpu(current, busy, mine, coin) == chosen


def readings(*loads: dict[int, float], mine: float = 0.0) -> list[Reading]:
    """Readings a second apart in which each CPU was busy the given share of its 100 ticks."""
    busy, total = dict.fromkeys(loads[0], 0), dict.fromkeys(loads[0], 0)
    result = [Reading(dict(busy), dict(total), 0.0, 0.0)]
    for n, load in enumerate(loads, 1):
        for cpu, share in load.items():
            busy[cpu] += int(share * 100)
            total[cpu] += 100
        result.append(Reading(dict(busy), dict(total), mine * n, float(n)))
    return result


@needs_two_cpus
def test_cpu_affinity_auto_moves_the_threads_a_second_after_the_first_reading(
        monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = sorted(os.sched_getaffinity(0))[:2]
    queue = readings({first: 0.9, second: 0.1}, {first: 0.9, second: 0.1})
    placement = Placement(owns_process=True, read=lambda: queue.pop(0))
    moves: list[frozenset[int]] = []
    monkeypatch.setattr(placement, "_move", moves.append)  # not this test process's own threads
    monkeypatch.setattr(placement_module, "_kept_on_one_cpu", False)  # whatever happens, as it was after
    placement.apply(AUTO)
    assert moves == [] and placement.current is None and not on_one_cpu()  # one reading: nothing to compare yet
    placement.apply(AUTO)
    assert moves == [frozenset({second})] and placement.current == frozenset({second}) and on_one_cpu()
    placement.apply(AUTO)  # CPU `first` still the busier, by others: it stays
    assert placement.current == frozenset({second})
    placement.apply(None)
    assert moves[-1] == frozenset(os.sched_getaffinity(0)) and placement.current is None and not on_one_cpu()


@needs_two_cpus
def test_a_cage_is_alone_on_its_cpu_while_other_processes_leave_it_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    """What busywait.py asks before it polls: kept on one CPU that others used less than a quarter of."""
    first, second = sorted(os.sched_getaffinity(0))[:2]
    queue = readings({first: 0.9, second: 0.1}, {first: 0.9, second: 0.9}, {first: 0.2, second: 0.9}, mine=0.4)
    placement = Placement(owns_process=True, read=lambda: queue.pop(0))
    monkeypatch.setattr(placement, "_move", lambda cpus: None)  # not this test process's own threads
    monkeypatch.setattr(placement_module, "_alone", False)
    monkeypatch.setattr(placement_module, "_kept_on_one_cpu", False)
    placement.apply(AUTO)
    assert not alone_on_its_cpu()  # one reading: nothing known yet
    placement.apply(AUTO)
    assert placement.current == frozenset({second}) and alone_on_its_cpu()  # others used 0.1 of it
    placement.apply(AUTO)
    assert placement.current == frozenset({second}) and not alone_on_its_cpu()  # 0.9 less its own 0.4
    placement.apply(frozenset({first}))
    assert alone_on_its_cpu()  # named: what others used of CPU `first` (0.2) decides the same way
    placement.apply(None)
    assert not queue and not alone_on_its_cpu()  # spread: never alone, and no reading is needed


def test_cpu_affinity_auto_leaves_a_process_the_cage_does_not_own_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    placement = Placement(owns_process=False, read=lambda: pytest.fail("no reading is needed"))
    monkeypatch.setattr(placement, "_move", lambda cpus: pytest.fail(f"moved to {cpus}"))
    placement.apply(AUTO)
    placement.apply(AUTO)
    assert placement.current is None


@needs_two_cpus
def test_cpu_affinity_auto_that_cannot_read_the_load_leaves_the_threads_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreadable() -> Reading:
        raise OSError(errno.ENOENT, "No such file or directory", "/proc/stat")

    placement = Placement(owns_process=True, read=unreadable)
    monkeypatch.setattr(placement, "_move", lambda cpus: pytest.fail(f"moved to {cpus}"))
    placement.apply(AUTO)  # logged once; "auto" gives up for this process
    placement.apply(AUTO)
    assert placement.current is None and not placement.auto


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux only")
def test_cpu_readings_cover_every_cpu_this_process_may_use() -> None:
    before = read_cpus()
    after = read_cpus()
    for cpu in os.sched_getaffinity(0):
        assert 0 <= before.busy[cpu] <= after.busy[cpu] and before.busy[cpu] <= before.total[cpu] <= after.total[cpu]
    assert 0 < before.mine <= after.mine and before.at <= after.at


# --- self-test -----------------------------------------------------------------------------


def self_test_tree(tmp_path: Path, body: str) -> Path:
    module = module_source(body, [])
    config = config_source({"greeting": "production", "other": "kept"},
                           {"greeting": "self-test"})
    return make_tree(tmp_path, interfaces={"http": http_config()},
                     files={"mymod.py": module, "config_mymod.py": config})


def test_self_test_success(tmp_path: Path) -> None:
    root = self_test_tree(tmp_path, """
        import os

        def self_test():
            assert pmnc.request.self_test == "mymod"
            with open(os.path.join(__cage_dir__, "marker"), "w") as f:
                f.write("written by the self-test")
    """)
    result = run_startup(root, "--self-test", "sample", "mymod")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "FAILURE" not in result.stdout
    assert "listens on" not in result.stdout  # interfaces do not start in a self-test
    assert not (root / "cages" / "sample" / "marker").exists()  # it ran on a copy


def test_self_test_failure(tmp_path: Path) -> None:
    root = self_test_tree(tmp_path, """
        def self_test():
            assert 1 + 1 == 3, "arithmetic is broken"
    """)
    result = run_startup(root, "--self-test", "sample", "mymod")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILURE" in result.stdout and "SUCCESS" not in result.stdout
    assert "arithmetic is broken" in result.stdout


def test_self_test_sees_self_test_config(tmp_path: Path) -> None:
    root = self_test_tree(tmp_path, """
        def self_test():
            assert pmnc.config.get("greeting") == "self-test", pmnc.config.get("greeting")
            assert pmnc.config.get("other") == "kept"
    """)
    result = run_startup(root, "--self-test", "sample", "mymod")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout

