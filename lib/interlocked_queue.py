"""The original's `interlocked_queue` import path, over pmnc.interlocked: queues between
threads whose `pop(timeout)` returns None when nothing came in time."""

from pmnc.interlocked import InterlockedPriorityQueue, InterlockedQueue

__all__ = ["InterlockedPriorityQueue", "InterlockedQueue"]
