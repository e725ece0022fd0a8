"""Self-tests: run `module.self_test()` in a temporary copy of its cage, for
`python3 startup.py --self-test cage module` and for a module file run directly
(`python3 cages/<cage>/<module>.py`, through pmnc/self_test.py).

The copy holds, as the original's did, the files of the cage folder and its
`ssl_keys`, the sub-folders the caller names (`required_dirs`), and the same of
`.shared` unless the cage is `.shared` itself; logs and state are left
behind. The cage boots without its interfaces (a self-test starts those it needs
with `pmnc.self_test.active_interface`), `self_test_config` keys override
`config`, `pmnc.request.self_test` names the module under test, and the log goes
to stdout at NOISE level. Exit code 0 and a SUCCESS line on success, 1 and a
FAILURE line with the error on failure.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Sequence

from pmnc import log
from pmnc import request as _request
from pmnc.cage import Cage
from pmnc.errors import exc_string

SHARED = ".shared"
NODE = "self_test"
KEYS_DIR = "ssl_keys"  # copied with the files: interfaces and the flock's identity read their keys there

_running: Cage | None = None  # the cage under self-test in this process, for active_interface


def running_cage() -> Cage:
    """The cage of the self-test now running in this process; RuntimeError outside one."""
    if _running is None:
        raise RuntimeError("no self-test is running: active_interface works inside a module's self_test()")
    return _running


def run_self_test(cage_dir: str, module: str, required_dirs: Sequence[str] = ()) -> int:
    """Run `module.self_test()` of the cage in `cage_dir` on a temporary copy; the exit code."""
    threading.current_thread().name = "self_test"
    cage_dir = os.path.abspath(cage_dir)
    cage = os.path.basename(cage_dir)
    log.configure(None, echo=sys.stdout, echo_level=log.NOISE)
    log.set_level(log.NOISE)
    log.message(f"starting the self-test of module {module} of cage {cage}")
    missing = [d for d in required_dirs if not _is_sub_folder(cage_dir, d)]
    if missing:
        log.error(f"FAILURE: required_dirs must name sub-folders of {cage_dir}, these are not: {', '.join(missing)}")
        return 1
    lib = os.path.join(cage_dir, "lib")  # the cage's own libraries, from where they are
    if lib not in sys.path:
        sys.path.insert(0, lib)
    with tempfile.TemporaryDirectory(prefix=f"pmnc-self-test-{cage.lstrip('.')}-") as temp:
        _copy_cage(cage_dir, os.path.join(temp, cage), required_dirs)
        shared = os.path.join(os.path.dirname(cage_dir), SHARED)
        if cage != SHARED and os.path.isdir(shared):
            _copy_cage(shared, os.path.join(temp, SHARED), ())
        return _run(Cage(temp, cage, NODE, self_test=module), module)


def _is_sub_folder(cage_dir: str, folder: str) -> bool:
    path = os.path.realpath(os.path.join(cage_dir, folder))
    return not os.path.isabs(folder) and path.startswith(os.path.realpath(cage_dir) + os.sep) and os.path.isdir(path)


def _copy_cage(source: str, target: str, required_dirs: Sequence[str]) -> None:
    """The files of `source` (not its sub-folders), its ssl_keys and `required_dirs`."""
    os.makedirs(target)
    for entry in os.scandir(source):
        if entry.is_file():
            shutil.copy2(entry.path, os.path.join(target, entry.name))
    for folder in (KEYS_DIR, *required_dirs):
        if os.path.isdir(os.path.join(source, folder)):
            shutil.copytree(os.path.join(source, folder), os.path.join(target, folder),
                            ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)


def _run(cage: Cage, module: str) -> int:
    global _running
    # For every request of the process, as the original's class attribute: a worker
    # serving a request of an active_interface sees it too.
    _request.Request._self_test = module
    _request.fake_request()
    try:
        cage.start()
    except Exception as e:
        log.error(f"FAILURE: the cage has failed to start: {exc_string(e)}")
        cage.stop()
        return 1
    log.set_level(log.NOISE)
    _running = cage
    try:
        cage.loader.call(module, "self_test", (), {})
    except Exception as e:
        log.error(f"FAILURE: {exc_string(e)}")
        return 1
    else:
        log.message(f"SUCCESS: {module}.self_test() has passed")
        return 0
    finally:
        _running = None
        cage.stop()
        _request.Request._self_test = None
