"""A cage run on a thread of the benchmark's own process, in a temporary tree: for resources.

    cage = InProcessCage(base, thread_count=8, resources={"db": "protocol='postgresql', ..."})
    cage.start(); cage.transaction.db.execute(...); cage.stop()

The cage has no interfaces; each resource gets `config_resource_<name>.py`
with `config = dict(<its text>)`. Its log is in the tree (`log_text()`).
"""

from __future__ import annotations

import shutil
import sys
import threading
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "lib"))

from http_hello import read_text, wait_until  # noqa: E402
from pmnc import log  # noqa: E402
from pmnc.cage import Cage  # noqa: E402

CAGE = "bench"
STOP_TIMEOUT = 30.0


class InProcessCage:
    def __init__(self, base: Path, thread_count: int, resources: dict[str, str]) -> None:
        self.cages = base / "cages"
        self.cage_dir = self.cages / CAGE
        self.cage_dir.mkdir(parents=True)
        shutil.copytree(ROOT / "cages" / ".shared", self.cages / ".shared",
                        ignore=shutil.ignore_patterns("ssl_keys", "__pycache__"))
        (self.cage_dir / "config_interfaces.py").write_text(
            f"config = dict(interfaces=(), request_timeout=10.0, thread_count={thread_count}, sweep_period=15.0, "
            f"log_level='LOG')\n# EOF\n")
        for name, config in resources.items():
            (self.cage_dir / f"config_resource_{name}.py").write_text(f"config = dict({config})\n# EOF\n")
        (self.cage_dir / "logs").mkdir()
        log.configure(log.LogFile(str(self.cage_dir / "logs"), CAGE), echo=None)
        self.cage = Cage(str(self.cages), CAGE, "bench")
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.cage.run, args=(self.stopping,), name="cage", daemon=True)

    @property
    def transaction(self) -> Any:
        """What a module of this cage knows as `pmnc.transaction`."""
        return self.cage.runtime.root.transaction

    def log_text(self) -> str:
        return "".join(read_text(p) for p in sorted((self.cage_dir / "logs").glob("*.log")))

    def start(self) -> None:
        self.thread.start()
        wait_until(lambda: "the cage is ready" in self.log_text(), 30.0, "pmnc: the cage is ready")

    def stop(self) -> str:
        if not self.thread.is_alive():
            return "pmnc was not running"
        self.stopping.set()
        self.thread.join(STOP_TIMEOUT)
        log.configure(None, echo=sys.stderr)
        return "pmnc stopped" if not self.thread.is_alive() else f"pmnc did not stop within {STOP_TIMEOUT:.0f}s"
