"""HeavyThread and LightThread: the original's two kinds of framework thread.

A HeavyThread lives long (a listener, a poller): it is not a daemon, runs
with an infinite request attached, and is told to stop with `stop()`, which
its loop notices through `stopped(timeout)`. A LightThread is a daemon for
short work that must not hold the process up at exit.
"""

from __future__ import annotations

import threading
from typing import Any

from pmnc.request import Request, attach

__all__ = ["HeavyThread", "LightThread"]


class HeavyThread(threading.Thread):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("daemon", False)  # not inherited from the starting thread: it must be stopped
        super().__init__(*args, **kwargs)
        self._stop_asked = threading.Event()  # not `_stop`: threading.Thread has a method of that name
        self._request: Request | None = None  # the original's self-tests read it after the thread ends

    def run(self) -> None:
        self._request = Request(timeout=None)
        attach(self._request)
        super().run()

    def stopped(self, timeout: float | None = None) -> bool:
        """Whether stop() was asked, after waiting up to `timeout` seconds for it."""
        if timeout is not None:
            self._stop_asked.wait(timeout)
        return self._stop_asked.is_set()

    def stop(self) -> None:
        """Ask the thread to stop and wait until it has (unless it asks itself)."""
        self._stop_asked.set()
        if threading.current_thread() is not self:
            self.join()


class LightThread(threading.Thread):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.daemon = True
