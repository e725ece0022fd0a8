"""The loader against hostile names: made-up modules leave nothing behind, and a module is
reached only by the name its file is spelt with (deny_modules cannot be got round)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CageTree, Cluster, ServedLoader, config_source, http_config, module_source
from pmnc import errors
from pmnc.facade import MAX_KEPT
from pmnc.loader import Loader
from test_rpc import RUNNER_HANDLER, Runner

SECRET = module_source("""
    def value():
        return "the secret"
""", ["value"])


@pytest.fixture
def loader(tree: CageTree) -> Iterator[ServedLoader]:
    made = ServedLoader(str(tree.cages), "sample", "node1", settle=0.05)
    made.start()
    yield made
    made.stop()


def test_made_up_module_names_leave_nothing_behind(tree: CageTree, loader: ServedLoader) -> None:
    tree.module("real", "def f():\n    return 1\n", ["f"])
    assert loader.root.real.f() == 1
    for i in range(20000):
        with pytest.raises(errors.ModuleNotFoundError):
            loader.call(f"made_up_{i}", "f", (), {})
    for i in range(3000):
        with pytest.raises(errors.ModuleNotFoundError):
            getattr(loader.root, f"ref_{i}").f()
    assert set(loader._modules) == {"real"}  # one entry per module that has a file
    assert set(loader._missing) <= {"__module_loader__"} and not loader._pending  # the framework's own asks
    assert len(loader._file_names) <= 1
    assert len(loader.root.__dict__) <= MAX_KEPT  # module refs kept for speed, not without end
    assert loader.root.real.f() == 1


def test_a_module_is_found_only_by_the_exact_spelling_of_its_file(tree: CageTree, loader: Loader,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a case-insensitive file system (macOS, Windows): there any spelling of a file's
    name opens it, so the lookup must go by the folder's listing."""
    tree.module("config_secret", SECRET, ["value"])
    real_isfile = os.path.isfile

    def isfile_ignoring_case(path: str | os.PathLike[str]) -> bool:
        folder, base = os.path.split(os.fspath(path))
        try:
            return any(name.lower() == base.lower() and real_isfile(os.path.join(folder, name))
                       for name in os.listdir(folder or "."))
        except OSError:
            return False

    monkeypatch.setattr(os.path, "isfile", isfile_ignoring_case)
    assert loader.locate("config_secret") is not None
    for alias in ("Config_secret", "CONFIG_SECRET", "config_Secret"):
        assert loader.locate(alias) is None
        with pytest.raises(errors.ModuleNotFoundError):
            loader.call(alias, "value", (), {})
        assert loader.file_name(alias) == alias
    assert loader.call("config_secret", "value", (), {}) == "the secret"


def test_file_name_sees_through_a_symlink(tree: CageTree, loader: ServedLoader) -> None:
    tree.module("config_secret", SECRET, ["value"])
    os.symlink("config_secret.py", tree.cage / "Config_secret.py")
    assert loader.file_name("Config_secret") == "config_secret"
    assert loader.file_name("config_secret") == "config_secret"
    assert loader.file_name("nowhere") == "nowhere"


def test_a_symlink_to_a_denied_module_is_denied_too(cluster: Cluster, tmp_path: Path) -> None:
    folder = cluster.cage("worker", {"config_secret.py": SECRET, "public.py": SECRET})
    os.symlink("config_secret.py", folder / "Config_secret.py")  # an alias deny_modules' config_* misses
    os.symlink(str(folder / "public.py"), folder / "alias.py")  # a symlink to an allowed module is fine
    worker = cluster.start("worker")
    cluster.cage("runner", {"config_interface_http.py": config_source(http_config()),
                            "interface_http.py": RUNNER_HANDLER}, interfaces=("rpc", "http", "retry"))
    runner = Runner(cluster.start("runner"))
    for name in ("config_secret", "Config_secret"):
        error = runner.error(f'result = pmnc("worker").{name}.value()')
        assert error["type"] == "pmnc.errors.InvalidMethodAccessError", error
        assert error["message"] == f"module {name} is not callable from other cages"
    assert runner.result('result = pmnc("worker").alias.value()') == "the secret"
    # and a hand-over of a retried call for it is refused alike: it stays with its sender
    outcome = runner.run('result = pmnc("worker", queue="retry").Config_secret.value()')
    assert outcome.error is None
    worker.wait_for_log(r"WRN .*retried call from cage runner is refused: .*Config_secret is not callable")
    runner.process.wait_for_log(r"WRN .*Config_secret\.value, attempt 1\) has failed")


def test_names_are_checked_before_anything_is_looked_up(loader: Loader) -> None:
    for name in ("../escape", "a/b", "", "x" * 200, "_private"):
        with pytest.raises(errors.InvalidModuleNameError):
            loader.call(name, "f", (), {})
    assert not loader._modules
