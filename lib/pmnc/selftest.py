"""`python3 startup.py --self-test cage module`: run `module.self_test()` in a
temporary copy of the cage.

The copy holds the cage folder and `.shared` (logs and state left behind).
The cage boots without its interfaces, `self_test_config` keys override
`config`, `pmnc.request.self_test` names the module under test, and the log
goes to stdout at NOISE level. Exit code 0 on success, 1 on failure.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading

from pmnc import log
from pmnc import request as _request
from pmnc.cage import Cage
from pmnc.errors import exc_string

_SKIP = shutil.ignore_patterns("logs", "state", "__pycache__", "*.pyc")


def run_self_test(root: str, cage: str, module: str) -> int:
    threading.current_thread().name = "self_test"
    sys.path.insert(0, os.path.join(root, "cages", cage, "lib"))
    with tempfile.TemporaryDirectory(prefix=f"pmnc-self-test-{cage}-") as temp:
        cages = os.path.join(temp, "cages")
        shutil.copytree(os.path.join(root, "cages", cage), os.path.join(cages, cage), ignore=_SKIP)
        shared = os.path.join(root, "cages", ".shared")
        if os.path.isdir(shared):
            shutil.copytree(shared, os.path.join(cages, ".shared"), ignore=_SKIP)
        log.configure(None, echo=sys.stdout, echo_level=log.NOISE)
        log.set_level(log.NOISE)
        return _run(Cage(cages, cage, "self_test", self_test=module), module)


def _run(cage: Cage, module: str) -> int:
    request = _request.Request(timeout=None)
    request.self_test = module
    _request.attach(request)
    cage.start()
    log.set_level(log.NOISE)
    try:
        cage.loader.call(module, "self_test", (), {})
    except Exception as e:
        log.error(f"FAILURE: {exc_string(e)}")
        return 1
    else:
        log.message(f"SUCCESS: {module}.self_test() has passed")
        return 0
    finally:
        cage.stop()
