"""The original's `pmnc.self_test`: a module file run directly runs its own self-test.

A module written for Pythomnic3k ends with

    if __name__ == "__main__": import pmnc.self_test; pmnc.self_test.run()

so that `python3 cages/<cage>/<module>.py` runs its `self_test()` in a temporary
copy of the cage, as `python3 startup.py --self-test <cage> <module>` does
(selftest.py). Inside `self_test()`, `with active_interface("http_1", **keys) as
ifc:` starts an interface the self-test needs (a self-test run starts none of the
configured ones).

This module is imported by whatever Python the user typed, possibly one without
pmnc's dependencies: it imports only the standard library until `run` has
moved the process to the project's `.venv`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pmnc import venv

if TYPE_CHECKING:
    from pmnc.interfaces import Interface

__all__ = ["active_interface", "run"]

def run(*, required_dirs: Sequence[str] = ()) -> None:
    """Run the self-test of the `__main__` module file and exit with its code
    (0 and SUCCESS, 1 and FAILURE); `required_dirs` are sub-folders of the cage
    copied as well."""
    venv.use_project_venv()
    module_dir, module = _main_module()
    try:
        from pmnc.selftest import run_self_test
    except ImportError as e:
        sys.exit(f"{module}.py: {e}; run ./setup in {venv.PROJECT} first to install what pmnc needs")
    sys.exit(run_self_test(module_dir, module, tuple(required_dirs)))


def _main_module() -> tuple[str, str]:
    """(its folder: the cage, its name) of the module file being run."""
    path = getattr(sys.modules["__main__"], "__file__", None)
    if not path or not path.endswith(".py"):
        sys.exit("pmnc.self_test.run() runs the self-test of a module file run as python3 <module>.py")
    path = os.path.abspath(path)
    return os.path.dirname(path), os.path.basename(path)[:-3]


class active_interface:  # the original's name, used as `with active_interface(...)`
    """`with active_interface("http_1", **keys) as ifc:` - interface http_1 built from
    config_interface_http_1.py (its self_test_config in force) with `keys` winning,
    started and findable by `pmnc.interfaces.get_interface("http_1")` while the block
    runs; ceased, given its requests in flight, and stopped at the end. Without the
    config file, `keys` are the whole config (`protocol` among them), as in the original."""

    def __init__(self, name: str, **config: Any) -> None:
        self._name, self._config = name, config
        self._interface: Interface | None = None

    def __enter__(self) -> Interface:
        from pmnc.selftest import running_cage

        manager = running_cage().interfaces
        interface = manager.create(self._name, dict(self._config))
        interface.start()
        try:
            manager.add(self._name, interface)
        except Exception:
            interface.cease()
            interface.stop()
            raise
        self._interface = interface
        return interface

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        from pmnc.selftest import running_cage

        if self._interface is not None:
            self._interface = None
            running_cage().interfaces.remove(self._name)
