"""Reverse calls, caller's side: `pmnc("T:reverse").m.f()` waits here until cage T fetches it.

Cage T, behind a firewall, cannot be connected to; it connects out instead
(its `revrpc` interface) and long-polls this cage for calls addressed to it,
runs them and posts the answers back. Who polls and who posts is the TLS
identity of the connection, so one cage cannot take or answer another's
calls. Calls are in memory: a restart of this cage fails the ones waiting.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pmnc.errors import RPCDeadlineError

POLL_MARGIN = 3.0  # a poll answers this much before the poller's own deadline, as the original's


@dataclass
class _Pending:
    call_id: str
    target: str
    envelope: dict[str, Any]
    deadline: float  # monotonic
    done: threading.Event = field(default_factory=threading.Event)
    reply: Any = None
    taken: bool = False


class ReverseCalls:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queued: dict[str, collections.deque[_Pending]] = {}  # target cage → calls not yet taken
        self._pending: dict[str, _Pending] = {}  # call id → call waiting for its answer
        self._arrived = threading.Condition(self._lock)  # a call has been queued
        self._stopped = False

    # --- the caller, on its worker thread ----------------------------------------------

    def call(self, target: str, call_id: str, envelope: dict[str, Any], deadline: float, now: float) -> Any:
        """Queue the call for `target` and wait for its answer until `deadline`."""
        pending = _Pending(call_id, target, envelope, deadline)
        with self._lock:
            self._pending[call_id] = pending
            self._queued.setdefault(target, collections.deque()).append(pending)
            self._arrived.notify_all()
        if not pending.done.wait(max(deadline - now, 0.0)):
            with self._lock:
                self._pending.pop(call_id, None)
            raise RPCDeadlineError(f"request deadline waiting for a response from cage {target} "
                                   f"({'taken' if pending.taken else 'not taken'} by it)")
        return pending.reply

    # --- the poller's and poster's requests, on their connections' threads ------------------------

    def poll(self, target: str, wait: float) -> list[_Pending]:
        """Calls queued for `target`, waiting up to `wait` seconds for one to come."""
        end = time.monotonic() + wait
        with self._lock:
            while True:
                taken = self._take(target, time.monotonic())
                left = end - time.monotonic()
                if taken or left <= 0 or self._stopped:
                    return taken
                self._arrived.wait(left)

    def calls_for(self, target: str, remain: float, limit: float) -> list[dict[str, Any]]:
        """A poll from cage `target` that had `remain` seconds left: the calls queued for it, as
        it runs them, or none by POLL_MARGIN before its deadline - which counts for no more than
        `limit` (the interface's request_timeout), whatever the poller asks."""
        calls = self.poll(target, min(remain, limit) - POLL_MARGIN)
        now = time.monotonic()
        result = []
        for pending in calls:
            call = dict(pending.envelope)
            call["request"] = dict(call["request"], remain=max(pending.deadline - now, 0.0))
            call["call_id"] = pending.call_id
            result.append(call)
        return result

    def _take(self, target: str, now: float) -> list[_Pending]:
        queue = self._queued.get(target)
        taken = []
        while queue:
            pending = queue.popleft()
            if pending.deadline > now and pending.call_id in self._pending:
                pending.taken = True
                taken.append(pending)
        return taken

    def post(self, target: str, call_id: str, reply: Any) -> bool:
        """The answer to a call taken by `target`; False if nobody waits for it (any more)."""
        with self._lock:
            pending = self._pending.get(call_id)
            if pending is None or pending.target != target or not pending.taken:
                return False
            del self._pending[call_id]
        pending.reply = reply
        pending.done.set()
        return True

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._arrived.notify_all()
