"""Request and resource statistics: taken once per request in the lifecycle (and once per
resource call in transaction.py), kept in 10-second and one-minute windows for the last
ten minutes and the last hour, with percentiles.

CONTRACT (the helper implementing this replaces this text with the real docstring):

    stats = Statistics(clock=time.time)        # wall-clock seconds; tests pass their own clock
    stats.enabled = False                      # config_interfaces.py statistics=False: nothing taken

    # the hot path, called once per request / resource call; must stay cheap (see bench/monitoring.py)
    stats.request(interface, pending, processing, response, ok)   # seconds; processing None if it never ran
    stats.resource(resource, pending, processing, ok)             # seconds

    # the original's pmnc.performance API (keys "interface|resource.<name>.<reading>_rate|_time[.success|.failure]")
    stats.event(key); stats.sample(key, ms)

    stats.snapshot() -> dict   # see /tmp/i18/contract.md
    stats.totals() -> dict     # cumulative since start, for /metrics
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class Statistics:
    """STUB (helper A replaces it)."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.enabled = True

    def request(self, interface: str, pending: float, processing: float | None, response: float, ok: bool) -> None:
        pass

    def resource(self, resource: str, pending: float, processing: float, ok: bool) -> None:
        pass

    def event(self, key: str) -> None:
        pass

    def sample(self, key: str, ms: float) -> None:
        pass

    def snapshot(self) -> dict[str, Any]:
        return {"interfaces": {}, "resources": {}}

    def totals(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {}
