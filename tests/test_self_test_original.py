"""Self-tests the original's way: `python3 <module>.py` runs the module's self_test().

The cage here is written as for Pythomnic3k: a module adds ../../lib to sys.path
when it is `__main__`, ends with `import pmnc.self_test; pmnc.self_test.run()`, and
its self_test() starts the HTTP interface it needs with `active_interface` and
requests it with urllib. Each run is a real subprocess, with the system Python
where there is one (it lacks pmnc's dependencies: the run moves itself to the
project's .venv), and without PYTHONHASHSEED (the original demanded 0).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import config_source, make_tree

SYSTEM_PYTHON = "/usr/bin/python3"
PYTHONS = [sys.executable] + ([SYSTEM_PYTHON] if os.path.exists(SYSTEM_PYTHON) else [])

HEAD = '''\
#!/usr/bin/env python3
__all__ = [ "process_request" ]

if __name__ == "__main__": # add pythomnic/lib to sys.path
    import os; import sys
    main_module_dir = os.path.dirname(sys.modules["__main__"].__file__) or os.getcwd()
    sys.path.insert(0, os.path.normpath(os.path.join(main_module_dir, "..", "..", "lib")))

import urllib.request

def process_request(request, response):
    response["headers"]["content-type"] = "text/plain"
    response["content"] = pmnc.greeter.greet(request["url"])

'''
TAIL = '''
if __name__ == "__main__": import pmnc.self_test; pmnc.self_test.run({run_args})

# EOF
'''

PASSING = '''\
def self_test():
    from pmnc.request import fake_request
    from pmnc.self_test import active_interface
    assert pmnc.request.self_test == "interface_web", pmnc.request.self_test
    fake_request(10.0)
    with active_interface("web", keep_alive_support = False) as ifc:
        host, port = ifc.address
        url = "http://{0}:{1}/hello".format(host, port)
        body = urllib.request.urlopen(url, timeout = 5.0).read().decode("utf-8")
    assert body == "self-test greeting at /hello in self-test of interface_web", body
'''

GREETER = '''\
__all__ = [ "greet" ]

def greet(url):
    return "{0:s} at {1:s} in self-test of {2}".format(pmnc.config.get("greeting"), url, pmnc.request.self_test)

# EOF
'''


def handler(self_test: str, run_args: str = "") -> str:
    return HEAD + textwrap.dedent(self_test) + TAIL.format(run_args=run_args)


def original_cage(tmp_path: Path, self_test: str = PASSING, run_args: str = "",
                  extra: dict[str, str] | None = None) -> Path:
    """cages/web of a tree: interface web configured on a fixed port, moved to port 0
    by self_test_config; its handler module and the greeter it calls."""
    files = {
        "config_interface_web.py": config_source({"protocol": "http", "listener_address": ("127.0.0.1", 8080)},
                                                 {"listener_address": ("127.0.0.1", 0)}),
        "interface_web.py": handler(self_test, run_args),
        "greeter.py": GREETER,
        "config_greeter.py": config_source({"greeting": "production greeting"},
                                           {"greeting": "self-test greeting"}),
        **(extra or {}),
    }
    root = make_tree(tmp_path, "web", files=files, interfaces={"web": {}})
    return root / "cages" / "web"


def run_module(python: str, script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHASHSEED", "VIRTUAL_ENV", "PYTHONPATH")}
    return subprocess.run([python, script], cwd=cwd, env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def passed(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode == 0 and "SUCCESS" in result.stdout and "FAILURE" not in result.stdout


@pytest.mark.parametrize("python", PYTHONS)
def test_module_run_in_its_cage_folder_runs_its_self_test(tmp_path: Path, python: str) -> None:
    cage = original_cage(tmp_path)
    result = run_module(python, "interface_web.py", cage)
    assert passed(result), result.stdout + result.stderr
    assert "SUCCESS: interface_web.self_test() has passed" in result.stdout
    assert "interface web listens on http://127.0.0.1:8080/" not in result.stdout  # the overlay's port 0 was used
    assert not (cage / "state").exists() and not (cage / "logs").exists()  # it ran on a copy


@pytest.mark.parametrize("python", PYTHONS)
def test_module_run_from_elsewhere_runs_its_self_test(tmp_path: Path, python: str) -> None:
    cage = original_cage(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_module(python, os.path.relpath(cage / "interface_web.py", elsewhere), elsewhere)
    assert passed(result), result.stdout + result.stderr


@pytest.mark.parametrize("python", PYTHONS)
def test_failing_self_test_reports_failure_with_the_error(tmp_path: Path, python: str) -> None:
    cage = original_cage(tmp_path, '''\
        def self_test():
            from pmnc.self_test import active_interface
            with active_interface("web"):
                raise Exception("the greeting is wrong on purpose")
    ''')
    result = run_module(python, "interface_web.py", cage)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "SUCCESS" not in result.stdout
    failure = [line for line in result.stdout.splitlines() if "FAILURE" in line]
    assert failure and "the greeting is wrong on purpose" in failure[0], result.stdout


def test_interface_of_active_interface_is_found_by_the_framework(tmp_path: Path) -> None:
    # needs pmnc.interfaces.get_interface (framework.py, issue 13 item 1)
    cage = original_cage(tmp_path, '''\
        def self_test():
            from pmnc.self_test import active_interface
            assert pmnc.interfaces.get_interface("web") is None  # configured, but not started in a self-test
            with active_interface("web") as ifc:
                assert pmnc.interfaces.get_interface("web") is ifc
            assert pmnc.interfaces.get_interface("web") is None
    ''')
    result = run_module(sys.executable, "interface_web.py", cage)
    assert passed(result), result.stdout + result.stderr


def test_active_interface_takes_the_whole_config_without_a_config_file(tmp_path: Path) -> None:
    cage = original_cage(tmp_path, '''\
        def self_test():
            from pmnc.self_test import active_interface
            with active_interface("adhoc", protocol = "http", listener_address = ("127.0.0.1", 0)) as ifc:
                host, port = ifc.address
                body = urllib.request.urlopen("http://{0}:{1}/x".format(host, port), timeout = 5.0).read()
            assert body == b"self-test greeting at /x in self-test of interface_web", body
    ''', extra={"interface_adhoc.py": handler("def self_test(): pass\n")})
    result = run_module(sys.executable, "interface_web.py", cage)
    assert passed(result), result.stdout + result.stderr


def test_required_dirs_are_copied_and_other_sub_folders_are_not(tmp_path: Path) -> None:
    cage = original_cage(tmp_path, '''\
        def self_test():
            import os
            with open(os.path.join(__cage_dir__, "data", "input.txt")) as f:
                assert f.read() == "needed"
            assert not os.path.exists(os.path.join(__cage_dir__, "archive"))
    ''', run_args='required_dirs = ("data",)')
    (cage / "data").mkdir()
    (cage / "data" / "input.txt").write_text("needed")
    (cage / "archive").mkdir()
    (cage / "archive" / "big.bin").write_bytes(b"not for the copy")
    result = run_module(sys.executable, "interface_web.py", cage)
    assert passed(result), result.stdout + result.stderr


def test_startup_self_test_copies_the_sub_folders_named_after_the_module(tmp_path: Path) -> None:
    cage = original_cage(tmp_path, '''\
        def self_test():
            import os
            assert os.path.isfile(os.path.join(__cage_dir__, "data", "input.txt"))
    ''')
    (cage / "data").mkdir()
    (cage / "data" / "input.txt").write_text("needed")
    root = cage.parent.parent
    command = [sys.executable, str(root / "startup.py"), "--self-test", "web", "interface_web"]
    without = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=60)
    assert without.returncode == 1 and "FAILURE" in without.stdout, without.stdout + without.stderr
    with_data = subprocess.run([*command, "data"], cwd=root, capture_output=True, text=True, timeout=60)
    assert with_data.returncode == 0 and "SUCCESS" in with_data.stdout, with_data.stdout + with_data.stderr


def test_module_of_shared_is_tested_with_shared_alone_as_its_cage(tmp_path: Path) -> None:
    cage = original_cage(tmp_path)
    shared = cage.parent / ".shared"
    (shared / "shared_thing.py").write_text(textwrap.dedent('''\
        __all__ = []

        if __name__ == "__main__": # add pythomnic/lib to sys.path
            import os; import sys
            main_module_dir = os.path.dirname(sys.modules["__main__"].__file__) or os.getcwd()
            sys.path.insert(0, os.path.normpath(os.path.join(main_module_dir, "..", "..", "lib")))

        def self_test():
            import os
            assert pmnc.request.self_test == "shared_thing"
            assert __cage__ == ".shared", __cage__
            assert not os.path.exists(os.path.join(__cage_dir__, "..", "web"))

        if __name__ == "__main__": import pmnc.self_test; pmnc.self_test.run()

        # EOF
    '''))
    result = run_module(PYTHONS[-1], "shared_thing.py", shared)
    assert passed(result), result.stdout + result.stderr
