"""Which CPUs a cage's threads run on: config_interfaces.py's `cpu_affinity`, applied live.

Only one thread of a Python process runs Python at a time (the GIL), and a
request crosses threads twice (event loop → worker → event loop). Wherever
the scheduler spreads those threads over CPUs, each crossing is a wake-up of
a thread on another CPU, which on a virtual machine costs an interrupt
between virtual CPUs: measured in bench/README ("Issue 20, CPU placement"),
keeping a cage on one CPU served 40 % more XML-RPC calls for 27 % less CPU a
call. It is not the default: a pinned cage cannot move off a CPU that
something else keeps busy, and work that runs outside the GIL (TLS, drivers)
loses the second CPU. Where cages call each other, placing them on different
CPUs keeps one from waiting for the other's CPU.

Linux only (sched_setaffinity); elsewhere the key is logged and not honoured.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from pmnc import log
from pmnc.errors import ConfigError

__all__ = ["Placement", "cpu_set"]

_TASKS = "/proc/self/task"


def cpu_set(value: object) -> frozenset[int]:
    """The CPUs a config names: one number or a collection of them (schema conversion;
    ValueError for anything else, which the schema turns into a ConfigError)."""
    numbers: Iterable[object] = (value,) if isinstance(value, int) else value  # type: ignore[assignment]
    cpus = frozenset(cpu for cpu in numbers if type(cpu) is int and cpu >= 0)  # TypeError if not a collection
    if not cpus or len(cpus) != len(set(numbers)):  # empty, or something not a CPU number
        raise ValueError(value)
    return cpus


cpu_set.expected = "a CPU number or a non-empty tuple of them"  # type: ignore[attr-defined]


class Placement:
    """Keeps every thread of this process on the CPUs asked for (None: those it started with).
    A thread started later inherits its starter's CPUs, so pinning the threads there are
    now pins those to come."""

    def __init__(self) -> None:
        self.supported = hasattr(os, "sched_setaffinity") and os.path.isdir(_TASKS)
        self.allowed = frozenset(os.sched_getaffinity(0)) if self.supported else frozenset()
        self.current: frozenset[int] | None = None  # what was last applied (None: the system's choice)
        self._told_unsupported = False

    def check(self, cpus: frozenset[int] | None) -> None:
        """ConfigError if `cpus` are not all among those this process may run on."""
        if cpus is not None and self.supported and not cpus <= self.allowed:
            raise ConfigError(f"config_interfaces.py: cpu_affinity {sorted(cpus)} names CPUs this process "
                              f"may not run on (it may run on {sorted(self.allowed)})")

    def apply(self, cpus: frozenset[int] | None) -> None:
        """Every thread on `cpus` (None: back where the process was allowed at start). Run again
        each second: it also catches a thread started meanwhile by one not yet moved. ConfigError
        for CPUs not allowed, or that the kernel refuses."""
        if cpus is None and self.current is None:
            return
        if not self.supported:
            if not self._told_unsupported:
                log.warning("cpu_affinity is not honoured on this system: threads run where it puts them")
                self._told_unsupported = True
            return
        self.check(cpus)
        wanted = cpus if cpus is not None else self.allowed
        for tid in map(int, os.listdir(_TASKS)):
            try:
                if os.sched_getaffinity(tid) != wanted:
                    os.sched_setaffinity(tid, wanted)
            except ProcessLookupError:  # the thread has ended meanwhile
                pass
            except OSError as e:  # the kernel refuses: the process's cpuset has shrunk since it started
                raise ConfigError(f"config_interfaces.py: cpu_affinity {sorted(wanted)} cannot be applied: "
                                  f"{e.strerror or e}") from None
        if cpus != self.current:
            self.current = cpus
            log.message(f"the cage's threads run on CPU(s) {', '.join(map(str, sorted(cpus)))}"
                        if cpus is not None else "the cage's threads run where the system puts them")
