"""A cage run on a thread of the benchmark's own process, in a temporary tree: for resources.

    cage = InProcessCage(base, thread_count=8, resources={"db": "protocol='postgresql', ..."})
    cage.start(); cage.transaction.db.execute(...); cage.stop()

Each resource gets `config_resource_<name>.py` with `config = dict(<its text>)` (or the
dict given); `interfaces` (name -> config dict) are listed and configured the same way, and
`files` (name -> text) go into the cage folder (handler modules). Its log is in the tree
(`log_text()`, `problems()`).
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
    def __init__(self, base: Path, thread_count: int, resources: dict[str, str | dict[str, Any]], *,
                 interfaces: dict[str, dict[str, Any]] | None = None, files: dict[str, str] | None = None,
                 request_timeout: float = 10.0) -> None:
        interfaces = interfaces or {}
        self.cages = base / "cages"
        self.cage_dir = self.cages / CAGE
        self.cage_dir.mkdir(parents=True)
        shutil.copytree(ROOT / "cages" / ".shared", self.cages / ".shared",
                        ignore=shutil.ignore_patterns("ssl_keys", "__pycache__"))
        settings = {"interfaces": tuple(interfaces), "request_timeout": request_timeout,
                    "thread_count": thread_count, "sweep_period": 15.0, "log_level": "LOG"}
        self._write("config_interfaces.py", settings)
        for name, config in interfaces.items():
            self._write(f"config_interface_{name}.py", config)
        for name, config in resources.items():
            self._write(f"config_resource_{name}.py", config)
        for name, text in (files or {}).items():
            (self.cage_dir / name).write_text(text)
        (self.cage_dir / "logs").mkdir()
        log.configure(log.LogFile(str(self.cage_dir / "logs"), CAGE), echo=None)
        self.cage = Cage(str(self.cages), CAGE, "bench")
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.cage.run, args=(self.stopping,), name="cage", daemon=True)

    def _write(self, file: str, config: str | dict[str, Any]) -> None:
        text = f"dict({config})" if isinstance(config, str) else repr(config)
        (self.cage_dir / file).write_text(f"config = {text}\n# EOF\n")

    @property
    def transaction(self) -> Any:
        """What a module of this cage knows as `pmnc.transaction`."""
        return self.cage.runtime.root.transaction

    def log_text(self) -> str:
        return "".join(read_text(p) for p in sorted((self.cage_dir / "logs").glob("*.log")))

    def problems(self) -> list[str]:
        """The log's errors and warnings."""
        return [line for line in self.log_text().splitlines() if " ERR " in line or " WRN " in line]

    def start(self) -> None:
        self.thread.start()
        wait_until(lambda: "the cage is ready" in self.log_text() or not self.thread.is_alive(), 30.0,
                   "pmnc: the cage is ready")
        if not self.thread.is_alive():
            raise RuntimeError(f"pmnc: the cage ended at its start: {self.problems()[-3:]}")

    def stop(self) -> str:
        if not self.thread.is_alive():
            return "" if self.stopping.is_set() else "pmnc was not running"  # "": stopped before
        self.stopping.set()
        self.thread.join(STOP_TIMEOUT)
        log.configure(None, echo=sys.stderr)
        return "pmnc stopped" if not self.thread.is_alive() else f"pmnc did not stop within {STOP_TIMEOUT:.0f}s"
