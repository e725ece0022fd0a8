"""The health monitor: STUB (helper D replaces it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pmnc.runtime import Runtime


class HealthMonitor:
    def status(self) -> dict[str, Any]:
        return {"cages": []}

    def page(self) -> str:
        return ""

    def stop(self) -> None:
        pass


def start_health_monitor(runtime: Runtime) -> HealthMonitor | None:
    return None
