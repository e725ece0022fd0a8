"""One cage: boot, maintenance and shutdown, in the original's order.

Boot:      log level → loader (watching files) → state file checked (a
           damaged one stops the boot) → worker pool and resource pools →
           event loop → branches of two-phase commits left prepared are
           finished (transaction.recover_in_doubt) → intake opens →
           interfaces start, in the configured order.
Every 1 s: re-read the log level; start, stop or restart interfaces whose
           configuration changed, retry those that failed to start (with a
           back-off), say if a handler module went missing; sweep resource
           pools every sweep_period; retry recovery every RECOVERY_PERIOD
           while it has work left; the log writes the counts of repeats it
           left out (log.flush).
Shutdown:  interfaces cease (no new requests) → intake closes → requests in
           flight get up to `request_timeout` → interfaces stop → resource
           pools, worker pool, loop and loader stop → "the cage has been
           properly shut down".
"""

from __future__ import annotations

import threading
import time
from typing import Any

from pmnc import log
from pmnc.config import Config
from pmnc.errors import exc_string
from pmnc.interfaces import Intake, InterfaceManager
from pmnc.loader import Loader
from pmnc.loop import EventLoopThread
from pmnc.pools import ResourcePools
from pmnc.rpc import cluster
from pmnc.state import StateStore, store_path
from pmnc.transaction import recover_in_doubt
from pmnc.workers import WorkerPool

MAINTENANCE_PERIOD = 1.0
RECOVERY_PERIOD = 30.0  # seconds between attempts to finish two-phase branches left prepared


class Cage:
    def __init__(self, cages_dir: str, name: str, node: str, *, self_test: str | None = None) -> None:
        self.name, self.node = name, node
        self.loader = Loader(cages_dir, name, node, self_test=self_test)
        self.config = Config(self.loader, "interfaces")
        self.intake = Intake()
        self.interfaces = InterfaceManager(self)
        self.pool: WorkerPool | None = None
        self.resources: ResourcePools | None = None
        self.loop: EventLoopThread | None = None
        self.request_timeout = 10.0
        self._recovery_due: float | None = None
        self._recovery: threading.Thread | None = None

    def setting(self, key: str, default: Any) -> Any:
        """A key of config_interfaces, falling back to `default` if it cannot be read."""
        try:
            return self.config.get(key, default)
        except Exception as e:
            log.error(f"config_interfaces.py: {key} cannot be read, using {default!r}: {e}")
            return default

    def start(self) -> None:
        self._apply_log_level()
        self.loader.start()
        self.request_timeout = float(self.setting("request_timeout", 10.0))
        thread_count = int(self.setting("thread_count", 10))
        self.loader.state = self._open_state()
        self.pool = WorkerPool("worker", thread_count)
        self.loader.resources = self.resources = ResourcePools(self.loader, thread_count,
                                                               float(self.setting("sweep_period", 15.0)))
        self.loader.swap_timeout = self.request_timeout
        self.loop = EventLoopThread()
        self.loop.start()
        cluster.attach(self.loader)  # made when first needed: by the rpc interface or a call
        self._recover()
        self.intake.open()
        log.message("as of this moment requests can be created")
        if self.loader.self_test is None:
            self.interfaces.start_all()
        log.message(f"the cage is ready, {self.interfaces.status()}")

    def _open_state(self) -> StateStore:
        """The state file, checked now: StateCorruptError stops the boot."""
        megabytes = Config(self.loader, "state").get("minimum_free_space", 50.0) \
            if self.loader.locate("config_state") else 50.0
        store = StateStore(store_path(self.loader.cage_dir), minimum_free_space=int(float(megabytes) * 1024 * 1024))
        store.check()
        return store

    def maintenance(self) -> None:
        self._apply_log_level()
        if self.loader.self_test is None:
            self.interfaces.reload()
        if self.resources is not None:
            self.resources.maintain()
            if self._recovery_due is not None and time.monotonic() >= self._recovery_due and \
                    (self._recovery is None or not self._recovery.is_alive()):
                self._recovery = threading.Thread(target=self._recover, name="recovery", daemon=True)
                self._recovery.start()
        log.flush()

    def _recover(self) -> None:
        """Finish two-phase branches left prepared; try again later while some are left."""
        assert self.resources is not None
        try:
            done = recover_in_doubt(self.resources) and not self.resources.decisions.decisions()
        except Exception as e:
            log.error(f"recovery of two-phase transactions failed: {exc_string(e)}")
            done = False
        self._recovery_due = None if done else time.monotonic() + RECOVERY_PERIOD

    def _apply_log_level(self) -> None:
        try:
            log.set_level(self.setting("log_level", "LOG"))
        except ValueError as e:
            log.error(f"config_interfaces.py: {e}")

    def stop(self) -> None:
        log.message("the cage is shutting down")
        self.interfaces.cease_all()
        active = self.intake.close()
        log.message(f"request intake is closed, {active} request(s) in flight")
        left = self.intake.drain(self.request_timeout)
        if left:
            log.warning(f"{left} request(s) did not finish within {self.request_timeout:.1f}s")
        self.interfaces.stop_all()
        cluster.attach(None)
        if self.resources is not None:
            self.resources.stop()
        if self.pool is not None:
            self.pool.stop()
        if self.loader.state is not None:
            self.loader.state.close()
        if self.loop is not None:
            self.loop.stop()
        self.loader.stop()

    def run(self, stopping: threading.Event) -> None:
        """Serve until `stopping` is set, with maintenance every second."""
        self.start()
        try:
            while not stopping.wait(MAINTENANCE_PERIOD):
                try:
                    self.maintenance()
                except Exception as e:
                    log.error(f"cage maintenance failed: {exc_string(e)}")
        finally:
            self.stop()
        log.message("the cage has been properly shut down")
        log.flush(everything=True)  # with the counts of repeats left out of the log

    def __repr__(self) -> str:
        return f"<Cage {self.node}.{self.name} interfaces={len(self.interfaces.live)} active={self.intake.active}>"
