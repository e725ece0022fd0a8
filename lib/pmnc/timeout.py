"""Timeout: a resettable countdown to wait on an event or a queue within, as the original's.

`Timeout(2.0)` starts counting at once; `remain` and `expired` read it,
`reset([t])` starts it again, `wait(event)` and `pop(queue)` wait no longer
than what is left. Local time only, so a monotonic clock; a request's
deadline is another thing (`pmnc.request`).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

from pmnc.typecheck import typecheck

__all__ = ["Timeout"]


class _Queue(Protocol):
    def pop(self, timeout: float | None = ...) -> Any: ...


class Timeout:
    _never_set = threading.Event()  # what wait() without an event waits on: the whole time

    @typecheck
    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def remain(self) -> float:
        return max(self._deadline - time.monotonic(), 0.0)

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self._deadline

    @typecheck
    def reset(self, timeout: float | None = None) -> None:
        """Count again from now, for `timeout` seconds if given (it is kept for the next reset)."""
        if timeout is not None:
            self._timeout = timeout
        self._deadline = time.monotonic() + self._timeout

    @typecheck
    def wait(self, event: threading.Event | None = None) -> bool:
        """Whether `event` was set before the time ran out; without one, sleep the time left."""
        event = event or self._never_set
        remain = self.remain
        while remain > 0.0:  # Event.wait may return a little early: wait again for the rest
            if event.wait(remain):
                return True
            remain = self.remain
        return False

    def pop(self, queue: _Queue) -> Any:
        """The queue's next item, or None when the time runs out first."""
        return queue.pop(self.remain)

    def __repr__(self) -> str:
        return f"<Timeout {self._timeout}s remain={self.remain:.2f}s>"
