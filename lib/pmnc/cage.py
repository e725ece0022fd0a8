"""One cage: boot, maintenance and shutdown, in the original's order.

Boot:      stdlib logging bridged → log level, CPUs (placement.py) → loader (watching files) → state file checked (a
           damaged one stops the boot) → worker pool and resource pools →
           event loop → branches of two-phase commits left prepared are
           finished (transaction.recover_in_doubt) → intake opens →
           interfaces start, in the configured order → in a cage named
           health_monitor, its probes of the other cages (monitor/health.py).
Every 1 s: re-read the log level, whether statistics are taken, the CPUs ("auto": chosen again);
           start, stop or restart interfaces whose configuration changed,
           retry those that failed to start (with a back-off), say if a
           handler module went missing; sweep resource
           pools every sweep_period; retry recovery every RECOVERY_PERIOD
           while it has work left; the log writes the counts of repeats it
           left out (log.flush).
Shutdown:  the health monitor's probes stop → interfaces cease (no new
           requests) → intake closes → requests in flight get up to
           `request_timeout` → interfaces stop → resource
           pools, worker pool, loop and loader stop → stdlib logging is let go →
           "the cage has been properly shut down".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from pmnc import log
from pmnc.config import read_settings
from pmnc.errors import ConfigError, ModuleError, exc_string
from pmnc.interfaces import InterfaceManager
from pmnc.loader import Loader
from pmnc.monitor.health import start_health_monitor
from pmnc.placement import Placement
from pmnc.runtime import Runtime
from pmnc.schema import INTERFACES_KEYS
from pmnc.state import KEYS as STATE_KEYS
from pmnc.state import StateStore, store_path
from pmnc.transaction import recover_in_doubt

MAINTENANCE_PERIOD = 1.0
RECOVERY_PERIOD = 30.0  # seconds between attempts to finish two-phase branches left prepared


class Cage:
    def __init__(self, cages_dir: str, name: str, node: str, *, self_test: str | None = None,
                 owns_process: bool = False) -> None:
        """`owns_process`: the cage is the process (startup.py's), so cpu_affinity "auto" may place it."""
        self.name, self.node = name, node
        self.loader = Loader(cages_dir, name, node, self_test=self_test)
        self.runtime = Runtime(self.loader)
        self.interfaces = InterfaceManager(self.runtime)
        self.runtime.interface_lookup = self.interfaces.get  # also sees a self-test's active_interface
        self.runtime.interface_names = self.interfaces.names
        self._recovery_due: float | None = None
        self._recovery: threading.Thread | None = None
        self.placement = Placement(owns_process)

    def settings(self) -> dict[str, Any]:
        """config_interfaces.py, every key (schema.INTERFACES_KEYS); ConfigError for an unknown one."""
        return read_settings(self.loader, "interfaces", INTERFACES_KEYS)

    def start(self) -> None:
        log.bridge_stdlib()  # what drivers and asyncio log through stdlib logging reaches the cage log
        settings = self.settings()  # a key it does not know stops the boot: the cage would not run as meant
        self.placement.check(settings["cpu_affinity"])  # so do CPUs it may not run on
        self._apply_settings()
        self.loader.start()
        self.runtime.request_timeout = settings["request_timeout"]
        self.loader.swap_timeout = self.runtime.request_timeout
        self.runtime.start(self._open_state(), thread_count=settings["thread_count"],
                           sweep_period=settings["sweep_period"])
        self._recover()
        self.runtime.intake.open()
        log.message("as of this moment requests can be created")
        if self.loader.self_test is None:
            self.interfaces.start_all()
            self.runtime.health = start_health_monitor(self.runtime)
        log.message(f"the cage is ready, {self.interfaces.status()}")

    def _open_state(self) -> StateStore:
        """The state file, checked now: StateCorruptError stops the boot."""
        megabytes = read_settings(self.loader, "state", STATE_KEYS)["minimum_free_space"]
        store = StateStore(store_path(self.loader.cage_dir), minimum_free_space=int(megabytes * 1024 * 1024))
        store.check()
        return store

    def maintenance(self) -> None:
        self._apply_settings()
        if self.loader.self_test is None:
            self.interfaces.reload()
        if self.runtime.started:
            self.runtime.resources.maintain()
            if self._recovery_due is not None and time.monotonic() >= self._recovery_due and \
                    (self._recovery is None or not self._recovery.is_alive()):
                self._recovery = threading.Thread(target=self._recover, name="recovery", daemon=True)
                self._recovery.start()
        log.flush()

    def _recover(self) -> None:
        """Finish two-phase branches left prepared; try again later while some are left."""
        resources = self.runtime.resources
        try:
            done = recover_in_doubt(resources) and not resources.decisions.decisions()
        except Exception as e:
            log.error(f"recovery of two-phase transactions failed: {exc_string(e)}")
            done = False
        self._recovery_due = None if done else time.monotonic() + RECOVERY_PERIOD

    def _apply_settings(self) -> None:
        """The log level, `statistics`, `request_timeout` (of calls made outside any request,
        rpc/calls.py) and `cpu_affinity` of config_interfaces.py, re-read every second; kept as
        they are while the file cannot be used."""
        try:
            settings = self.settings()
            log.set_level(settings["log_level"])
        except (ModuleError, ConfigError, ValueError) as e:
            log.error(f"config_interfaces.py cannot be used, the log level stays as it is: {e}")
            return
        self.runtime.request_timeout = settings["request_timeout"]
        try:
            self.placement.apply(settings["cpu_affinity"])
        except ConfigError as e:
            log.error(f"{e}; the threads stay where they are")
        statistics = self.runtime.statistics
        if statistics.enabled != settings["statistics"]:
            statistics.enabled = settings["statistics"]
            log.message(f"statistics are {'taken' if statistics.enabled else 'not taken'} from now on")

    def stop(self) -> None:
        log.message("the cage is shutting down")
        if self.runtime.health is not None:
            self.runtime.health.stop()
        self.interfaces.cease_all()
        active = self.runtime.intake.close()
        log.message(f"request intake is closed, {active} request(s) in flight")
        left = self.runtime.intake.drain(self.runtime.request_timeout)
        if left:
            log.warning(f"{left} request(s) did not finish within {self.runtime.request_timeout:.1f}s")
        self.interfaces.stop_all()
        self.runtime.stop()
        self.loader.stop()
        log.unbridge_stdlib()  # a process may run another cage after this one (tests, self-test)

    def run(self, stopping: threading.Event, ready: Callable[[], None] | None = None) -> None:
        """Serve until `stopping` is set (or pmnc.startup.exit() sets it), with maintenance
        every second; `ready()` once the cage has started."""
        self.runtime.on_exit = stopping.set
        self.start()
        if ready is not None:
            ready()
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
        return (f"<Cage {self.node}.{self.name} interfaces={len(self.interfaces.live)} "
                f"active={self.runtime.intake.active}>")
