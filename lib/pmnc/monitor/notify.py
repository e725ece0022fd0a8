"""pmnc.notify: STUB (helper C replaces it)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class Notifications:
    def __init__(self, cage: str, node: str, *, clock: Callable[[], float] = time.time) -> None:
        self.cage, self.node, self.clock = cage, node, clock

    def add(self, level: str, message: str) -> None:
        pass

    def recent(self, n: int = 100) -> list[dict[str, Any]]:
        return []
