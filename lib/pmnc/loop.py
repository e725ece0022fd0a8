"""The cage's one asyncio event loop, running in its own thread.

Listeners and connections live here; user code never does. Work crosses to
the worker pool, and the worker woken for it is woken once, just before the
loop next waits (`before_waiting`): a burst of requests read in one turn of
the loop costs one wake-up, and a worker that finishes meanwhile takes the
next without any. Results come back with `post`, which shares one
`call_soon_threadsafe` among all that arrive between two turns.
"""

from __future__ import annotations

import asyncio
import collections
import selectors
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class EventLoopThread:
    def __init__(self, name: str = "asyncio", before_waiting: Callable[[], None] | None = None) -> None:
        """`before_waiting()` runs on the loop each time it is about to wait for events."""
        self.loop = asyncio.SelectorEventLoop(_Selector(before_waiting)) if before_waiting else asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._posted: collections.deque[tuple[Callable[[Any], None], Any]] = collections.deque()
        self._wakeup_pending = False

    def post(self, callback: Callable[[Any], None], arg: Any) -> None:
        """Run `callback(arg)` on the loop soon; callable from any thread.

        Under load many results arrive between two loop iterations; they share
        one wake-up of the loop instead of paying a self-pipe write each.
        """
        self._posted.append((callback, arg))
        if not self._wakeup_pending:
            self._wakeup_pending = True
            try:
                self.loop.call_soon_threadsafe(self._run_posted)
            except RuntimeError:  # the loop is closed: the cage is stopping
                pass

    def _run_posted(self) -> None:
        # Clear the flag first: a callback posted from now on schedules its own wake-up.
        self._wakeup_pending = False
        posted = self._posted
        while posted:
            callback, arg = posted.popleft()
            callback(arg)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run `coro` on the loop and wait for its result from another thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, timeout: float = 3.0) -> None:
        if not self._thread.is_alive():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()


class _Selector(selectors.DefaultSelector):  # the platform's best: epoll here
    """The loop's selector, calling `before_waiting` each time before it waits for events."""

    def __init__(self, before_waiting: Callable[[], None]) -> None:
        super().__init__()
        self._before_waiting = before_waiting

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self._before_waiting()
        return super().select(timeout)
