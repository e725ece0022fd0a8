"""Cages written the original's way (tests/original), run unchanged as real cages.

- `webserver`: a static web server in the form of the public Pythomnic3k sample: config
  files with their own get/copy, a handler using `typecheck`, and a self-test using
  `expected` and `active_interface`, run as the original ran it: `python3 interface_http.py`.
- `app`: an application module (`idioms.py`) using the original's idioms one family per
  function, driven through its HTTP interface; `peer` answers its calls to another cage.
- What pmnc dropped on purpose (the raw BerkeleyDB state, pickle between cages) gets one
  log line saying what to use instead.

The folders are copied as they are into one temporary install tree (they share its
cluster keys); only `compiled.pyc` is added, made from source here.
"""

from __future__ import annotations

import json
import py_compile
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import CageProcess, Cluster, http_request, module_source, wait_until

ORIGINAL = Path(__file__).resolve().parent / "original"
COMPILED = module_source("""
    def answer():
        return "answered by a module shipped compiled"
""", ["answer"])
FAILING = module_source("""
    if __name__ == "__main__":
        import os, sys
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "lib"))

    def self_test():
        assert 6 * 7 == 41, "the answer is not 41"

    if __name__ == "__main__": import pmnc.self_test; pmnc.self_test.run()
""", [])


@dataclass
class Cages:
    cluster: Cluster
    webserver: CageProcess
    app: CageProcess
    peer: CageProcess

    def folder(self, cage: str) -> Path:
        return self.cluster.root / "cages" / cage


@pytest.fixture(scope="module")
def cages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cages]:
    cluster = Cluster(tmp_path_factory.mktemp("original"))
    for name in ("webserver", "app", "peer"):
        shutil.copytree(ORIGINAL / name, cluster.root / "cages" / name,
                        ignore=shutil.ignore_patterns("__pycache__", "logs", "state"))
    source = cluster.root / "compiled_source.py"
    source.write_text(COMPILED)
    py_compile.compile(str(source), cfile=str(cluster.root / "cages" / "app" / "compiled.pyc"), doraise=True)
    try:
        peer = cluster.start("peer")
        running = Cages(cluster, cluster.start("webserver"), cluster.start("app"), peer)
        yield running
    finally:
        cluster.kill_all()


def call(cages: Cages, function: str, *args: Any) -> Any:
    """GET /<function>?<args> on the app cage: what pmnc.idioms.<function>(*args) returned."""
    query = "&".join(str(arg) for arg in args)
    status, _, body = http_request(cages.app.port("http"), f"/{function}?{query}")
    assert status == 200, body
    return json.loads(body)


SYSTEM_PYTHON = shutil.which("python3") or sys.executable


def run_self_test(folder: Path, module: str, python: str = sys.executable) -> tuple[int, str]:
    """`python3 <module>.py` in the cage folder, as the original's self-tests were run."""
    done = subprocess.run([python, f"{module}.py"], cwd=folder, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    return done.returncode, done.stdout.decode(errors="replace")


# --- the web server -------------------------------------------------------------------------


def test_the_web_server_serves_its_pages(cages: Cages) -> None:
    port = cages.webserver.port("http")
    status, headers, body = http_request(port, "/")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"Welcome" in body
    assert http_request(port, "/guide/start.html")[2].count(b"one folder down") == 1
    assert http_request(port, "/nowhere.html")[:3:2] == (404, b"no such page: /nowhere.html")
    # a path out of html/ is refused by the handler's by_regex checks
    status, _, body = http_request(port, "/../config_interfaces.py")
    assert status == 500 and b"refused URL: /../config_interfaces.py" in body


def test_the_web_server_self_test_runs_the_original_way(cages: Cages) -> None:
    code, output = run_self_test(cages.folder("webserver"), "interface_http", SYSTEM_PYTHON)
    assert code == 0 and "SUCCESS" in output, output
    assert "FAILURE" not in output


# --- the application: config, request, shared things ----------------------------------------


def test_config_files_of_the_original_form(cages: Cages) -> None:
    assert call(cages, "settings") == {
        "greeting": "hello from cage app",  # expanded by the file's own get
        "batch_size": 3,
        "missing": None, "missing_with_default": "fallback",
        "keys": ["batch_size", "greeting"],
        "thread_count": 6,  # config_interfaces.py, read from module idioms
        "own_get": 3, "http_protocol": "http",
    }


def test_expires_in_is_a_question_and_the_request_looks_as_it_did(cages: Cages) -> None:
    seen = call(cages, "deadline")
    assert seen["within_an_hour"] is True and seen["within_a_tenth"] is False
    assert seen["left_after_asking"] is True
    assert re.fullmatch(r"RQ-\w{4} via http \+\d+\.\ds", seen["description"]), seen["description"]
    assert {"unique_id", "deadline", "interface", "protocol", "parameters", "log_levels"} <= set(seen["keys"])
    assert seen["pushed_level"] == 7


def test_shared_queues_locks_and_private_pools(cages: Cages) -> None:
    assert call(cages, "queues") == {"fed": 3, "items": ["item 0", "item 1", "item 2"],
                                     "pool": ["idioms/feeders", 2], "stamp": True}
    # a reader with its own short request cannot take the lock held exclusively
    assert call(cages, "locks") == {"reader_got_it": False}


def test_interfaces_are_found_by_name(cages: Cages) -> None:
    assert call(cages, "interfaces") == {"http": True, "http_name": "http", "unknown": None}


# --- the application: modules as the original loaded them -----------------------------------


def test_modules_see_what_the_original_gave_them(cages: Cages) -> None:
    seen = call(cages, "modules")
    assert seen.pop("lazy_constant").startswith("InvalidMethodAccessError(")
    assert seen == {
        "name": "idioms", "through_own_name": 3,  # pmnc.__getattr__(__name__)
        "caller": "idioms",  # __source_module_name
        "route": "/api/orders/today",  # __call_attributes of pmnc.tools.route.orders.today
        "version": 1,  # __module_properties
        "containing_module": "tools", "tally": 15,  # __containing_module__ of a tools.Tally
        "dynamic": "dynamic.whatever(1, 2) asked by idioms",  # __get_module_attr__
        "lazy_function": "works, limit 3",  # its __all__ also names a constant
        "hooked": True,  # __module_loader__.after_reload
        "greeting": "the substitute greeting from alternatives/",  # __module_loader__.before_reload
    }


def test_a_compiled_module_is_a_module(cages: Cages) -> None:
    assert call(cages, "compiled") == "answered by a module shipped compiled"


# --- the application: resources, retried calls, other cages ---------------------------------


def test_the_cages_own_protocol_takes_part_in_transactions(cages: Cages) -> None:
    result = call(cages, "notebook", "today", "sunny")
    assert result["read_back"] == "sunny"
    assert "a note needs a key" in result["refused"]
    assert json.loads((cages.folder("app") / "notebook.json").read_text()) == {"today": "sunny"}
    # a key its annotation refuses: InputParameterError from the handler, a 500 with its text
    status, _, body = http_request(cages.app.port("http"), "/notebook?Today&x")
    assert status == 500 and b"notebook() has got an incompatible value for key: " in body and b"Today" in body


def test_a_retried_call_may_decline_with_protocol_retry_exit(cages: Cages) -> None:
    rt_id = call(cages, "retried", "m1")
    assert re.fullmatch(r"RT-\d{14}-[0-9A-F]{12}", rt_id), rt_id
    journal = cages.folder("app") / "jobs.journal"

    def lines() -> list[str]:
        return journal.read_text().splitlines() if journal.exists() else []
    wait_until(lambda: "m1 done" in lines(), 15.0, message="the second attempt")
    assert lines()[:2] == ["m1 declined", "m1 done"]


def test_a_remote_value_error_is_also_an_rpc_error(cages: Cages) -> None:
    assert call(cages, "remote", -5) == {
        "caught": [["ValueError", "amount must be positive, not -5"],
                   ["RPCError", "amount must be positive, not -5"],
                   ["ResourceError", "amount must be positive, not -5"]],
        "accepted": 5}


# --- what pmnc dropped: one log line saying what to change ----------------------------------


def test_the_raw_berkeleydb_state_api_is_refused_with_one_log_line(cages: Cages) -> None:
    for _ in range(2):
        status, _, body = http_request(cages.app.port("http"), "/raw_state")
        assert status == 500 and b"NotAvailableError" in body and b"get_database" in body
    # each failed request is logged as such; the advice itself is written once
    advice = [line for line in cages.app.log_text().splitlines()
              if re.search(r"\] pmnc\.state\.get_database\(\) is the original's raw BerkeleyDB API", line)]
    assert len(advice) == 1, advice
    assert "pmnc.state.get/set/delete" in advice[0] and "xa.state" in advice[0]


def test_asking_for_pickle_between_cages_gets_one_log_line(cages: Cages) -> None:
    lines = [line for line in cages.app.log_text().splitlines() if "refuses pickle from other cages" in line]
    assert len(lines) == 1, lines
    assert "config_interface_rpc.py" in lines[0] and "use_pickle=True in config_cluster.py" in lines[0]


# --- self-tests the original way ------------------------------------------------------------


def test_the_application_self_test_runs_the_original_way(cages: Cages) -> None:
    code, output = run_self_test(cages.folder("app"), "idioms")
    assert code == 0 and "SUCCESS" in output, output


def test_the_application_self_test_runs_under_the_systems_python3(cages: Cages) -> None:
    code, output = run_self_test(cages.folder("app"), "idioms", SYSTEM_PYTHON)
    assert code == 0 and "SUCCESS" in output, output


def test_a_failing_self_test_says_failure_and_why(cages: Cages) -> None:
    folder = cages.folder("peer")
    (folder / "failing.py").write_text(FAILING)
    code, output = run_self_test(folder, "failing")
    assert code == 1 and "FAILURE" in output and "the answer is not 41" in output, output


# --- last: the application stops itself -----------------------------------------------------


def test_startup_exit_stops_the_cage_and_its_supervisor(cages: Cages) -> None:
    assert call(cages, "stop_cage") == "stopping"
    assert cages.app.process is not None
    assert cages.app.process.wait(30) == 0
    cages.app.wait_for_log("the cage has stopped itself")
    # the other cages go on
    assert http_request(cages.webserver.port("http"), "/about.html")[0] == 200
