"""The original's `shared_lock` import path, over pmnc.interlocked: a reader/writer lock
(pmnc.rwlock underneath) with the original's API."""

from pmnc.interlocked import SharedLock, SharedLockWriterPriority

__all__ = ["SharedLock", "SharedLockWriterPriority"]
