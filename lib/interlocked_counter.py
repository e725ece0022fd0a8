"""The original's `interlocked_counter` import path: a thread-safe sequence number.

pmnc has no counterpart (it counts with itertools.count under the GIL); the
original's modulo wrap-around needs a lock, so the class is here.
"""

from __future__ import annotations

import threading

__all__ = ["InterlockedCounter"]


class InterlockedCounter:
    """`next()` returns 0, 1, 2, ... and, with a `modulo`, starts again at 0 when it gets there."""

    def __init__(self, modulo: int | None = None) -> None:
        self._lock = threading.Lock()
        self._count, self._modulo = 0, modulo

    def next(self) -> int:
        with self._lock:
            count = self._count
            self._count = count + 1 if self._modulo is None else (count + 1) % self._modulo
            return count
