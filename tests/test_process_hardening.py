"""A cage process against real faults and hostile peers: descriptor limits, file modes at rest,
a second instance, interfaces that cannot start or lost their handler, floods of log lines.

Real `startup.py` processes in temporary trees (the `cage_process` and `cluster` fixtures kill
whatever is left), real sockets on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conftest import (
    HELLO_HANDLER,
    CageProcess,
    config_source,
    http_config,
    http_request,
    module_source,
    wait_until,
    write_file,
)
from pmnc.decisions import DecisionLog
from test_startup import hello

FAILING_HANDLER = module_source("""
    def process_request(request, response):
        raise ValueError("no database at " + request["url"])
""", ["process_request"])

SECRET_HANDLER = module_source("""
    def process_request(request, response):
        pmnc.state.set("password", "s3cret")
        response["content"] = "kept"
        response["headers"]["content-type"] = "text/plain"
""", ["process_request"])

SUMMARY = re.compile(r"\.\.\. and ([\d,]+) more like it in the last (\d+) s")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def folded(text: str, pattern: str) -> tuple[int, int]:
    """(lines matching `pattern` written as they came, how many more the summaries counted)."""
    written = left_out = 0
    for line in text.splitlines():
        if not re.search(pattern, line):
            continue
        summary = SUMMARY.search(line)
        if summary:
            left_out += int(summary.group(1).replace(",", ""))
        else:
            written += 1
    return written, left_out


# --- 1. the descriptor limit ---------------------------------------------------------------


def test_cage_process_raises_its_soft_descriptor_limit_to_the_hard_one(cluster) -> None:
    cluster.cage("sample", {"config_interface_http.py": config_source(http_config()),
                            "interface_http.py": SECRET_HANDLER}, interfaces=("http",))
    cage = cluster.start("sample", prefix=["prlimit", "--nofile=256:4096"])
    (child,) = cage.child_pids()
    limits = Path(f"/proc/{child}/limits").read_text()
    assert re.search(r"Max open files\s+4096\s+4096\s", limits), limits
    assert "the limit of open files has been raised from 256 to 4096" in cage.log_text()


# --- 3. files at rest ----------------------------------------------------------------------


def test_state_and_log_files_are_private(cluster) -> None:
    folder = cluster.cage("sample", {"config_interface_http.py": config_source(http_config()),
                                     "interface_http.py": SECRET_HANDLER}, interfaces=("http",))
    # made before by a careless hand (or an older pmnc): put right at start
    state = folder / "state"
    decisions = state / "n1.transactions.sqlite"
    made = DecisionLog(str(decisions))
    made.remember_resource("db1")
    made.close()
    os.chmod(state, 0o755)
    os.chmod(decisions, 0o644)
    cage = cluster.start("sample", node="n1")
    assert mode(state) == 0o700 and mode(decisions) == 0o600
    assert http_request(int(cage.port()))[2] == b"kept"  # the state file is made now
    files = sorted(p.name for p in state.iterdir())
    assert {"state.sqlite", "state.sqlite-wal", "state.sqlite-shm"} <= set(files), files
    assert {f: mode(state / f) for f in files} == dict.fromkeys(files, 0o600)
    assert {p.name: mode(p) for p in cage.logs.glob("*.log")} == dict.fromkeys(
        (p.name for p in cage.logs.glob("*.log")), 0o640)


def test_decision_log_made_private(tmp_path: Path) -> None:
    log = DecisionLog(str(tmp_path / "state" / "n1.transactions.sqlite"))
    log.remember_resource("db1")
    made = sorted((tmp_path / "state").iterdir())
    assert mode(tmp_path / "state") == 0o700
    assert {p.name: mode(p) for p in made} == dict.fromkeys((p.name for p in made), 0o600)
    log.close()


# --- 8 and 14. floods of log lines ---------------------------------------------------------


def test_garbage_connections_to_the_rpc_port_are_logged_folded(cluster) -> None:
    cluster.cage("sink")
    cage = cluster.start("sink")
    port = int(cage.wait_for_log(r"interface rpc listens on ssl://127\.0\.0\.1:(\d+)/").group(1))
    for _ in range(300):
        with socket.create_connection(("127.0.0.1", port), timeout=5.0) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n" + os.urandom(64))
    refused = r"interface rpc: connection from 127\.0\.0\.1:\d+ refused"
    # the summaries come when the 10 s window of each kind of line ends
    wait_until(lambda: sum(folded(cage.log_text(), refused)) == 300, timeout=25.0, message="300 refusals counted")
    written, left_out = folded(cage.log_text(), refused)
    assert written <= 20 and left_out >= 280, (written, left_out)
    assert SUMMARY.search(cage.log_text()).group(2) == "10"
    assert "handler module" not in cage.log_text()  # the rpc interface has none


def test_a_failing_handler_does_not_flood_the_log(cage_process) -> None:
    cage = cage_process(interfaces={"http": http_config()}, files={"interface_http.py": FAILING_HANDLER})
    port = cage.port()
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda n: http_request(port, f"/orders/{n}")[0], range(500)))
    assert statuses == [500] * 500
    assert cage.stop() == 0  # the cage's last flush counts what is left out
    failed = r"request GET /orders/\d+ failed: ValueError"
    written, left_out = folded(cage.log_text(), failed)
    assert written + left_out == 500, (written, left_out)
    assert written < 50, written
    assert re.search(r"ERR \[\w+\] request GET /orders/\d+ failed: ValueError\(.no database at /orders/\d+.\) "
                     r"\.\.\. and [\d,]+ more like it in the last \d+ s", cage.log_text())


# --- 9. one instance of a cage; interfaces that cannot start -------------------------------


def test_second_instance_of_a_running_cage_is_refused(cage_process) -> None:
    cage = cage_process(interfaces={"http": http_config()})
    pid_file = cage.logs / "sample.pid"
    before, log_before = pid_file.read_text(), cage.log_text()
    second = subprocess.run([sys.executable, str(cage.root / "startup.py"), "sample"], cwd=cage.root,
                            capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    assert second.returncode == 1
    assert second.stderr.strip() == f"startup.py: cage sample is already running (supervisor pid {cage.process.pid})"
    assert pid_file.read_text() == before
    assert cage.log_text() == log_before
    assert hello(cage.port())
    assert cage.stop() == 0
    again = CageProcess(cage.root)  # the lock went with the first one
    try:
        again.start()
        assert pid_file.read_text() == str(again.process.pid)
    finally:
        again.kill()


def test_interface_on_a_taken_port_starts_once_it_is_free(cage_process) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    try:
        cage = cage_process(interfaces={"http": http_config(), "taken": http_config(taken)})
        cage.wait_for_log(r"ERR \[cage\] interface taken failed to start: \w+")
        assert "the cage is ready, 1 interface(s) serving, 1 failed to start: taken" in cage.log_text()
        cage.wait_for_log(r"interface taken failed to start", count=2)  # tried again
    finally:
        blocker.close()
    cage.wait_for_log("interface taken has started", timeout=10.0)
    assert hello(taken)
    assert hello(cage.port("http"))


# --- 13. a handler module that is missing --------------------------------------------------


def test_missing_handler_module_is_said_loudly_once_per_change(cluster) -> None:
    folder = cluster.cage("sample", {"config_interface_http.py": config_source(http_config())},
                          interfaces=("http",))
    cage = cluster.start("sample")
    missing = "ERR [cage] interface http: its handler module interface_http.py is missing, every request will fail"
    assert missing in cage.log_text()
    assert "the cage is ready, 1 interface(s) serving, 1 without a handler module: http" in cage.log_text()
    port = int(cage.port())
    assert http_request(port)[0] == 500

    handler = folder / "interface_http.py"
    write_file(handler, HELLO_HANDLER)
    cage.wait_for_log("interface http: its handler module interface_http.py is there again")
    assert hello(port)
    handler.unlink()
    cage.wait_for_log(re.escape(missing) + r" once the cage restarts \(version 1 serves until then\)")
    assert hello(port)  # the loader keeps the version it has
    time.sleep(2.5)  # three rounds of maintenance: that nothing more is said cannot be waited for
    assert cage.log_text().count(missing) == 2
