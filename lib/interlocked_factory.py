"""The original's `interlocked_factory` import path: counts the objects it made until
they are destroyed, so whoever stops it can wait for the last one to go.

pmnc has no counterpart (its pools count their own connections), so the class is here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["InterlockedFactory"]


class InterlockedFactory:
    def __init__(self, factory: Callable[..., Any]) -> None:
        self._factory = factory
        self._cond = threading.Condition(threading.Lock())
        self._count = 0
        self._stopped = False

    @property
    def count(self) -> int:
        with self._cond:
            return self._count

    def create(self, *args: Any, **kwargs: Any) -> tuple[Any, int] | None:
        """(a new object, how many are alive now), or None once stopped; the factory's
        own exception goes to the caller and nothing is counted."""
        with self._cond:
            if self._stopped:
                return None
            made = self._factory(*args, **kwargs)
            self._count += 1
            return made, self._count

    def destroyed(self) -> int:
        """One object has gone: how many are left."""
        with self._cond:
            self._count -= 1
            if self._count == 0:
                self._cond.notify_all()
            return self._count

    def stop(self) -> None:
        with self._cond:
            if self._stopped:
                raise AssertionError("the factory is already stopped")
            self._stopped = True

    def wait(self, timeout: float) -> bool:
        """Whether the count reached zero within `timeout` (a zero timeout is always False,
        as in the original); only a stopped factory may be waited for."""
        end = time.monotonic() + timeout
        with self._cond:
            if not self._stopped:
                raise AssertionError("the factory must be stopped before it is waited for")
            if timeout <= 0.0:
                return False
            return self._cond.wait_for(lambda: self._count == 0, max(end - time.monotonic(), 0.0))
