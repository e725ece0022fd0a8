"""Moving a process to the project's `.venv`: for a cage module file run directly.

`python3 cages/<cage>/<module>.py` (the original's way to run a module's self-test) may
start under a Python without pmnc's dependencies, and such a module imports
`pmnc.resource_pool` or the like at its top, long before `pmnc.self_test.run()` at its
end. So the first `import pmnc` of such a process re-runs the same command under the
project's `.venv` Python (the body has run once already; the original ran it once too,
before its self-test). Standard library only: this runs before anything else of pmnc.
"""

from __future__ import annotations

import os
import subprocess
import sys

# lib/pmnc/venv.py → the project (through symlinks: a tree whose lib links to the project's
# uses the project's venv)
PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
_MOVED = "PMNC_SELF_TEST_VENV"  # set in the re-run process: never a second time


def python() -> str:
    if os.name == "nt":
        return os.path.join(PROJECT, ".venv", "Scripts", "python.exe")
    return os.path.join(PROJECT, ".venv", "bin", "python")


def use_project_venv() -> None:
    """Re-run the `__main__` script under the project's .venv Python, unless this is it
    (or there is none, or this process is that re-run)."""
    target = python()
    in_venv = os.path.realpath(sys.prefix) == os.path.realpath(os.path.join(PROJECT, ".venv"))
    if in_venv or os.environ.get(_MOVED) or not os.path.exists(target):
        return
    script = os.path.abspath(getattr(sys.modules["__main__"], "__file__", None) or sys.argv[0])
    args = [target, script, *sys.argv[1:]]
    env = dict(os.environ, **{_MOVED: "1"})
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "nt":  # execv on Windows does not replace the process
        sys.exit(subprocess.call(args, env=env))
    os.execve(target, args, env)


def main_is_a_cage_module() -> bool:
    """Whether this process runs a cage module file directly (`cages/<cage>/<module>.py`)."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if not isinstance(path, str) or not path.endswith(".py"):
        return False
    cage_dir = os.path.dirname(os.path.abspath(path))
    return os.path.basename(os.path.dirname(cage_dir)) == "cages"
