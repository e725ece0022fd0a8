"""What a call through `pmnc` costs, against the plain Python call it stands for.

    .venv/bin/python bench/module_calls.py [--calls 200000]

Cage modules call each other as `pmnc.m.f(x)`: the loader finds the current version,
holds the module's lock shared (so a reload waits), checks the annotations and, for code
written for the original, fills in `__source_module_name` / `__call_attributes`. Config
files written for the original answer `pmnc.config.get(key)` through their own lambda.
Each row times one form in this process, over the same function, and prints the ratio
to the plain call (`f(x)` on the module object). Single-threaded, no request deadline.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "lib"))

from pmnc.loader import Loader  # noqa: E402
from pmnc.runtime import Runtime  # noqa: E402

MODULE = """
__all__ = ["plain", "checked", "injected", "chained"]

def plain(x):
    return x

def checked(x: int) -> int:
    return x

def injected(x, *, __source_module_name):
    return x

def chained(x, *, __call_attributes):
    return x

# EOF
"""

ORIGINAL_CONFIG = """
config = dict(key="value", other=1)

__all__ = ["get", "copy"]

get = lambda key, default = None: pmnc.config.get_(config, {}, key, default)
copy = lambda: pmnc.config.copy_(config, {})

# EOF
"""

PMNC_CONFIG = """
config = dict(key="value", other=1)

# EOF
"""


def timed(call: Callable[[], Any], count: int) -> float:
    """Calls per second of `call`, the best of three runs."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(count):
            call()
        best = min(best, time.perf_counter() - start)
    return count / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="pmnc-bench-calls-"))
    try:
        cage = base / "cages" / "bench"
        cage.mkdir(parents=True)
        (base / "cages" / ".shared").mkdir()
        for name, text in (("m", MODULE), ("config_orig", ORIGINAL_CONFIG), ("config_modern", PMNC_CONFIG)):
            (cage / f"{name}.py").write_text(textwrap.dedent(text))
        loader = Loader(str(base / "cages"), "bench", "bench")
        runtime = Runtime(loader)
        pmnc = runtime.pmnc("caller")
        module = loader.current("m").module
        direct = module.plain
        orig, modern = runtime.pmnc("orig").config, runtime.pmnc("modern").config
        rows = [
            ("plain call m.plain(1) (the peer)", lambda: direct(1)),
            ("pmnc.m.plain(1)", lambda: pmnc.m.plain(1)),
            ("pmnc.m.checked(1)  annotations checked", lambda: pmnc.m.checked(1)),
            ("pmnc.m.injected(1)  __source_module_name", lambda: pmnc.m.injected(1)),
            ("pmnc.m.chained.a.b(1)  __call_attributes", lambda: pmnc.m.chained.a.b(1)),
            ("pmnc.config.get (pmnc's config file)", lambda: modern.get("key")),
            ("pmnc.config.get (the original's file, its own get)", lambda: orig.get("key")),
        ]
        peer = 0.0
        print(f"{'form':55} {'calls/s':>12} {'ratio to plain':>15}")
        for title, call in rows:
            rate = timed(call, args.calls)
            peer = peer or rate
            print(f"{title:55} {rate:12,.0f} {rate / peer:15.3f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
