"""Waiting for a socket that is about to be ready: a short busy wait before sleeping.

A thread that sleeps in poll() while its peer answers from another CPU is woken by an
interrupt to its own idle CPU, which on a virtual machine costs more than a cage-to-cage
call's whole work (bench/README, "The eighth session's steps": a ping-pong over loopback
TCP between two processes on two vCPUs made ~9.5 k round trips a second asleep, ~95 k
polling). A thread that polls for a few hundred microseconds first finds the answer there,
with nobody to wake.

It costs CPU, so it is kept small and only where it pays:
- a connection busy-waits only while its waits are short: one that waited longer than the
  limit last time (an idle caller, a slow callee) sleeps at once, till a wait is short again;
- at most one thread of a process busy-waits at a time; the others sleep;
- it yields the CPU between its polls, so the cage's own other threads run meanwhile;
- only a cage kept on a CPU of its own busy-waits (placement.alone_on_its_cpu: "auto" or one
  CPU named, that other processes left idle in the last second), so the CPU it takes is one
  nobody else needs: not a cage whose threads are spread (cpu_affinity None), nor one that
  runs in another program's process (the tests' in-process cages); on a machine of one CPU
  it never does.
"""

from __future__ import annotations

import os
import select
import threading
import time

from pmnc import placement

# The config key (config_cluster.py busy_wait) is checked against this: more would be a
# spin, not a wait for an answer on its way.
MAX_LIMIT = 0.01
SEVERAL_CPUS = (os.cpu_count() or 1) > 1
_one_at_a_time = threading.Lock()  # the process's busy-waiting thread holds it


def limit(value: object) -> float:
    """A config value of busy_wait: seconds, 0 to MAX_LIMIT."""
    seconds = float(value)  # type: ignore[arg-type]
    if not 0.0 <= seconds <= MAX_LIMIT:
        raise ValueError(value)
    return seconds


limit.expected = f"seconds from 0 to {MAX_LIMIT:g}"  # type: ignore[attr-defined]


def ready(fds: list[int], timeout: float, events: int = select.POLLIN) -> list[int]:
    """Those of `fds` ready (or closed, or failed) within `timeout` seconds, asleep. poll,
    not select: descriptor numbers may be above select's 1024."""
    return _found(_poller(fds, events), timeout)


def _poller(fds: list[int], events: int) -> select.poll:
    poller = select.poll()
    for fd in fds:
        poller.register(fd, events)
    return poller


def _found(poller: select.poll, timeout: float) -> list[int]:
    return [fd for fd, _ in poller.poll(max(timeout, 0.0) * 1000.0)]


class BusyWait:
    """The waits of one connection for what it reads next (an answer, the next call)."""

    __slots__ = ("limit", "quick")

    def __init__(self, limit: float) -> None:
        self.limit = limit if SEVERAL_CPUS else 0.0
        self.quick = False  # the last wait was within the limit: the next is likely to be

    def ready(self, fds: list[int], timeout: float) -> list[int]:
        """Those of `fds` readable (or closed, or failed) within `timeout` seconds: polled
        for up to `limit` first if the last wait was quick, then asleep."""
        began = time.monotonic()
        poller = _poller(fds, select.POLLIN)
        awake = self.quick and placement.alone_on_its_cpu()
        found = self._poll_awake(poller, began + min(self.limit, timeout)) if awake else None
        if found is None:
            found = _found(poller, began + timeout - time.monotonic())
        self.quick = time.monotonic() - began < self.limit
        return found

    @staticmethod
    def _poll_awake(poller: select.poll, until: float) -> list[int] | None:
        """What is ready by `until`, polled for without sleeping; None if nothing was (or
        another thread is busy-waiting)."""
        if not _one_at_a_time.acquire(blocking=False):
            return None
        try:
            while True:
                found = poller.poll(0)
                if found:
                    return [fd for fd, _ in found]
                if time.monotonic() >= until:
                    return None
                os.sched_yield()  # the cage's other threads on this CPU run meanwhile
        finally:
            _one_at_a_time.release()
