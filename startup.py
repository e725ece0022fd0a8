#!/usr/bin/env python3
"""Run one cage: `python3 startup.py [node.]cage` (see README.md).

Uses the project's .venv when there is one, so `python3 startup.py` works
after `./setup` without activating anything.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))


def _venv_python() -> str:
    if os.name == "nt":
        return os.path.join(ROOT, ".venv", "Scripts", "python.exe")
    return os.path.join(ROOT, ".venv", "bin", "python")


def _use_venv() -> None:
    python = _venv_python()
    if not os.path.exists(python) or os.path.realpath(sys.prefix) == os.path.realpath(os.path.join(ROOT, ".venv")):
        return
    args = [python, os.path.abspath(__file__), *sys.argv[1:]]
    if os.name == "nt":  # execv on Windows does not replace the process
        sys.exit(subprocess.call(args))
    os.execv(python, args)


if __name__ == "__main__":
    _use_venv()
    sys.path.insert(0, os.path.join(ROOT, "lib"))
    try:
        from pmnc.supervisor import main
    except ImportError as e:
        sys.exit(f"startup.py: {e}; run ./setup first to install what pmnc needs")
    sys.exit(main(ROOT, sys.argv[1:]))
