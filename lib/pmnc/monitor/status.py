"""The whole picture of a running cage, as one JSON-able dict: statistics and gauges, for every page.

`cage_status(runtime)` is what /status.json serves and what the performance page draws;
`gauges(runtime)` is its cheap part (no percentiles), which /metrics reads. Every reading
here is read only and bounded: it must not slow the cage it describes, nor fail because a
service has not started yet (a cage starting or stopping is shown with what it has).
"""

from __future__ import annotations

import os
import resource
import sqlite3
import threading
import time
from typing import TYPE_CHECKING, Any

from pmnc.errors import ModuleError, StateError

if TYPE_CHECKING:
    from pmnc.runtime import Runtime
    from pmnc.workers import WorkerPool

NOTIFICATIONS_SHOWN = 20
RETRY_ROWS_COUNTED = 1_000_000  # pending calls counted at most, so a huge backlog cannot stall a page
RETRY_QUEUES_SHOWN = 100


def cage_status(runtime: Runtime) -> dict[str, Any]:
    """Everything the pages show; /status.json is exactly this."""
    g = gauges(runtime)
    snapshot = runtime.statistics.snapshot()
    interfaces: dict[str, Any] = {name: dict(series) for name, series in snapshot.get("interfaces", {}).items()}
    for name in runtime.interface_names():
        interfaces.setdefault(name, empty_series())
    for name, series in interfaces.items():
        series["in_flight"] = g["in_flight"].get(name, 0)
    resources: dict[str, Any] = {name: dict(series) for name, series in snapshot.get("resources", {}).items()}
    for name, pool in g["pools"].items():
        resources.setdefault(name, empty_series())["pool"] = pool
    status: dict[str, Any] = {
        "cage": runtime.name, "node": runtime.node, "pid": os.getpid(),
        "started": runtime.started_at, "now": g["now"], "uptime": g["now"] - runtime.started_at,
        "cage_wide": g["cage_wide"], "interfaces": interfaces, "resources": resources,
        "modules": g["modules"], "notifications": runtime.notifications.recent(NOTIFICATIONS_SHOWN),
    }
    if runtime.health is not None:
        status["cluster"] = runtime.health.status()
    return status


def empty_series() -> dict[str, Any]:
    """The series of an interface or resource nothing has been counted for yet."""
    return {"success": 0, "failure": 0, "readings": {}, "last_minute": None, "minutes": [], "hour": []}


def gauges(runtime: Runtime) -> dict[str, Any]:
    """What is true now, without statistics: the cage-wide figures, requests in flight by
    interface, resource pools, module versions."""
    now = time.time()
    user, system = _cpu_seconds()
    busy, size, queued = _workers(runtime)
    in_flight = _in_flight(runtime)
    return {
        "now": now,
        "cage_wide": {
            "cpu_percent": _CPU.percent(now, user + system, runtime.started_at),
            "cpu_user_seconds": user, "cpu_system_seconds": system,
            "rss_bytes": rss_bytes(), "threads": threading.active_count(),
            "requests_in_flight": sum(in_flight.values()), "requests_queued": queued,
            "workers_busy": busy, "workers_size": size, "retry_queues": retry_queues(runtime),
        },
        "in_flight": in_flight,
        "pools": _pools(runtime),
        "modules": [{"name": name, "version": number, "loaded": at} for name, number, at in runtime.loader.loaded()],
    }


# --- the process ------------------------------------------------------------------------


def _cpu_seconds() -> tuple[float, float]:
    times = os.times()
    return times.user, times.system


class _CpuMeter:
    """CPU % over the interval since the previous reading at least MIN_INTERVAL ago (a page
    asked for twice at once must not divide by nothing); the first reading covers the time
    since the cage started. 100 % is one CPU busy."""

    MIN_INTERVAL = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: tuple[float, float] | None = None  # (time, cpu seconds) of the last reading
        self._percent = 0.0

    def percent(self, now: float, cpu: float, started: float) -> float:
        with self._lock:
            if self._last is None:
                elapsed = now - started
                self._percent = 100.0 * cpu / elapsed if elapsed >= self.MIN_INTERVAL else 0.0
                self._last = (now, cpu)
            elif now - self._last[0] >= self.MIN_INTERVAL:
                self._percent = 100.0 * (cpu - self._last[1]) / (now - self._last[0])
                self._last = (now, cpu)
            return round(max(self._percent, 0.0), 1)


_CPU = _CpuMeter()


def rss_bytes() -> int:
    """The resident set now (/proc), else the peak the kernel reports."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- the cage's services ------------------------------------------------------------------


def _workers(runtime: Runtime) -> tuple[int, int, int]:
    """(busy, size, queued) of the worker pool; zeros before it starts."""
    try:
        pool = runtime.workers
    except ModuleError:
        return 0, runtime.thread_count(), 0
    return pool_counts(pool)


def pool_counts(pool: WorkerPool) -> tuple[int, int, int]:
    """(busy, size, queued) of a worker pool: read without its lock (a page's figures may be a
    moment old, a request must never wait for a page)."""
    return pool.busy, pool.size, pool.queued


def _in_flight(runtime: Runtime) -> dict[str, int]:
    return runtime.intake.in_flight()


def _pools(runtime: Runtime) -> dict[str, dict[str, int]]:
    """size, busy (slots taken), queued (calls waiting for a slot), free (idle connections)."""
    if not runtime.started:
        return {}
    try:
        pools = runtime.resources.all()
    except ModuleError:
        return {}
    return {pool.name: {"size": pool.size, "busy": pool.busy, "queued": pool.waiting, "free": pool.free}
            for pool in pools}


def retry_queues(runtime: Runtime) -> dict[str, int]:
    """Pending retried calls per queue, from the state file (counted up to RETRY_ROWS_COUNTED)."""
    if not runtime.started:
        return {}
    try:
        with runtime.state.reading() as db:
            rows = db.execute(
                "SELECT queue, COUNT(*) FROM (SELECT queue FROM retry WHERE status = 'pending' LIMIT ?) "
                "GROUP BY queue ORDER BY queue LIMIT ?", (RETRY_ROWS_COUNTED, RETRY_QUEUES_SHOWN)).fetchall()
    except (ModuleError, StateError, sqlite3.Error):
        return {}  # the state file is not there (yet), or broken: the log says so elsewhere
    return {str(queue): int(count) for queue, count in rows}
