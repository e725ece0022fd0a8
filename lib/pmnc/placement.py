"""Which CPUs a cage's threads run on: config_interfaces.py's `cpu_affinity`, applied live.

Only one thread of a Python process runs Python at a time (the GIL), and a
request crosses threads twice (event loop → worker → event loop). Wherever
the scheduler spreads those threads over CPUs, each crossing is a wake-up of
a thread on another CPU, which on a virtual machine costs an interrupt
between virtual CPUs: measured in bench/README ("Issue 20, CPU placement"),
keeping a cage on one CPU served 40 % more XML-RPC calls for 27 % less CPU a
call.

So a cage process keeps its threads together by default (`"auto"`): on the
one CPU that other processes used least in the last second, moving when
another has become idler by a quarter of a CPU or more (on a coin's toss
each second, so that two cages that find themselves together do not both
move and meet again). A cage that runs on a thread of another program (the
tests, `bench/inprocess.py`) does not own its process and leaves it where it
is. Explicit CPUs, `(0,)` or `(0, 1)`, keep the threads there; None leaves
them where the system puts them (for a cage that computes outside the GIL:
compression, TLS in bulk).

Linux only (sched_setaffinity, /proc/stat); elsewhere explicit CPUs are
logged and not honoured, and "auto" does nothing.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Literal, NamedTuple

from pmnc import log
from pmnc.errors import ConfigError

__all__ = ["AUTO", "Placement", "Reading", "alone_on_its_cpu", "choose_cpu", "cpu_set", "on_one_cpu", "read_cpus"]

_TASKS = "/proc/self/task"
_STAT = "/proc/stat"

AUTO: Literal["auto"] = "auto"
MARGIN = 0.25  # of a CPU: how much idler another CPU must be for an "auto" cage to move there
ALONE = 0.25  # of a CPU: the most other processes may have used of a cage's one CPU for it to be alone there

Wanted = frozenset[int] | Literal["auto"] | None  # what config_interfaces.py asks for

_kept_on_one_cpu = False  # every thread of this process, now (Placement.apply: a process has one placement)
_alone = False  # ... on a CPU other processes left idle in the last second


def on_one_cpu() -> bool:
    """Whether every thread of this process is kept on one CPU now ("auto", or one CPU named).

    Then a thread waking another wakes it on the same CPU, cheaply, and the trade-offs that
    assume a wake-up across CPUs no longer hold: a cage-to-cage call made while others are under
    way takes a connection of its own rather than sharing theirs (protocols/rpc.py; over 8
    threads, kept on one CPU each, two cages served 10-20 % more calls that way, bench/README).
    """
    return _kept_on_one_cpu


def alone_on_its_cpu() -> bool:
    """Whether every thread of this process is kept on one CPU ("auto", or one CPU named) that
    other processes left idle, all but ALONE of it, in the last second. Only then does a thread
    of it poll for what it waits for rather than sleep (busywait.py): the CPU it takes is one
    nobody else needs. Where the cage shares its CPU, or its threads are spread, every poll
    would be a turn taken from another process or thread that needs it."""
    return _alone


def cpu_set(value: object) -> Wanted:
    """The CPUs a config names: one number or a collection of them, "auto" or None (schema
    conversion; ValueError for anything else, which the schema turns into a ConfigError)."""
    if value is None or value == AUTO:
        return value
    numbers: Iterable[object] = (value,) if isinstance(value, int) else value  # type: ignore[assignment]
    cpus = frozenset(cpu for cpu in numbers if type(cpu) is int and cpu >= 0)  # TypeError if not a collection
    if not cpus or len(cpus) != len(set(numbers)):  # empty, or something not a CPU number
        raise ValueError(value)
    return cpus


cpu_set.expected = 'a CPU number or a non-empty tuple of them, "auto" or None'  # type: ignore[attr-defined]


def choose_cpu(current: int | None, busy: Mapping[int, float], mine: float, coin: float) -> int:
    """The CPU an "auto" cage keeps its threads on for the next second.

    `busy` is each allowed CPU's busy share of the last interval (0 to 1, every process's),
    `mine` the CPUs this process used meanwhile, `current` the CPU it is kept on (None: spread),
    `coin` a random number in [0, 1). What others left on a CPU decides: a cage kept on a CPU
    discounts its own use there; a spread one, its share of each.
    """
    own = {cpu: mine if cpu == current else (mine / len(busy) if current is None else 0.0) for cpu in busy}
    others = {cpu: share - own[cpu] for cpu, share in busy.items()}
    best = min(busy, key=lambda cpu: (others[cpu], cpu))
    if current is None or current not in busy:
        return best
    if others[current] - others[best] > MARGIN and coin < 0.5:
        return best
    return current


class Reading(NamedTuple):
    """CPU time so far: each CPU's busy and total clock ticks (/proc/stat), this process's
    seconds of CPU (os.times), and when."""

    busy: dict[int, int]
    total: dict[int, int]
    mine: float
    at: float


def read_cpus() -> Reading:
    """Now's reading; OSError or ValueError if /proc/stat cannot be read as Linux writes it."""
    busy, total = {}, {}
    with open(_STAT) as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):  # "cpu " is all of them together
                continue
            name, *fields = line.split()
            cpu, ticks = int(name[3:]), [int(field) for field in fields[:8]]  # user nice system idle iowait ...
            total[cpu] = sum(ticks)
            busy[cpu] = total[cpu] - ticks[3] - ticks[4]  # all but idle and waiting for I/O
    times = os.times()
    return Reading(busy, total, times.user + times.system, time.monotonic())


class Placement:
    """Keeps every thread of this process on the CPUs asked for (None: those it started with).
    A thread started later inherits its starter's CPUs, so pinning the threads there are
    now pins those to come. `owns_process`: "auto" places the process only if the cage owns it."""

    def __init__(self, owns_process: bool = False, read: Callable[[], Reading] = read_cpus) -> None:
        self.supported = hasattr(os, "sched_setaffinity") and os.path.isdir(_TASKS)
        self.allowed = frozenset(os.sched_getaffinity(0)) if self.supported else frozenset()
        self.current: frozenset[int] | None = None  # what was last applied (None: the system's choice)
        self.reads = owns_process and self.supported and os.path.exists(_STAT)  # the CPUs' load, each second
        self.auto = self.reads and len(self.allowed) > 1
        self._read = read
        self._last: Reading | None = None  # "auto": the reading a second ago
        self._told_unsupported = False

    def check(self, wanted: Wanted) -> None:
        """ConfigError if CPUs asked for are not all among those this process may run on."""
        if isinstance(wanted, frozenset) and self.supported and not wanted <= self.allowed:
            raise ConfigError(f"config_interfaces.py: cpu_affinity {sorted(wanted)} names CPUs this process "
                              f"may not run on (it may run on {sorted(self.allowed)})")

    def apply(self, wanted: Wanted) -> None:
        """Every thread where `wanted` says (None: back where the process was allowed at start).
        Run again each second: it also catches a thread started meanwhile by one not yet moved,
        and "auto" chooses again. ConfigError for CPUs not allowed, or that the kernel refuses."""
        one_cpu = isinstance(wanted, frozenset) and len(wanted) == 1
        load = self._load(wanted) if (wanted == AUTO and self.auto) or (one_cpu and self.reads) else None
        if wanted == AUTO:
            cpus, why = self._auto(load), ' (cpu_affinity "auto": the CPU other processes use least)'
        else:
            cpus, why = wanted, ""
        was = self.current
        if cpus is None and was is None:
            return
        if not self.supported:
            if not self._told_unsupported:
                log.warning("cpu_affinity is not honoured on this system: threads run where it puts them")
                self._told_unsupported = True
            return
        self.check(cpus)
        self._move(cpus if cpus is not None else self.allowed)
        global _alone, _kept_on_one_cpu
        _alone = self._alone(load, was, cpus)
        if cpus != self.current:
            self.current = cpus
            _kept_on_one_cpu = cpus is not None and len(cpus) == 1
            log.message(f"the cage's threads run on CPU(s) {', '.join(map(str, sorted(cpus)))}{why}"
                        if cpus is not None else "the cage's threads run where the system puts them")

    def _load(self, wanted: Wanted) -> tuple[dict[int, float], float] | None:
        """Each allowed CPU's busy share since the last reading, and the CPUs this process used
        meanwhile; None on the first reading (nothing to compare yet) or if none can be made."""
        try:
            reading = self._read()
        except (OSError, ValueError) as e:  # not Linux's /proc after all: the threads stay where they are
            if wanted == AUTO:
                log.warning(f'cpu_affinity "auto" cannot read the CPUs\' load, the threads stay where they are: {e}')
            self.reads = self.auto = False
            return None
        last, self._last = self._last, reading
        if last is None or reading.at <= last.at:
            return None
        cpus = [cpu for cpu in sorted(self.allowed) if reading.total.get(cpu, 0) > last.total.get(cpu, 0)]
        if not cpus:
            return None
        busy = {cpu: (reading.busy[cpu] - last.busy[cpu]) / (reading.total[cpu] - last.total[cpu]) for cpu in cpus}
        return busy, (reading.mine - last.mine) / (reading.at - last.at)

    def _auto(self, load: tuple[dict[int, float], float] | None) -> frozenset[int] | None:
        """The one CPU for the next second, from the last second's `load` (None: the cage does
        not own its process)."""
        if not self.auto:
            return None
        if load is None:
            return self.current
        busy, mine = load
        current = next(iter(self.current)) if self.current is not None and len(self.current) == 1 else None
        return frozenset({choose_cpu(current, busy, mine, random.random())})

    @staticmethod
    def _alone(load: tuple[dict[int, float], float] | None, was: frozenset[int] | None,
               cpus: frozenset[int] | None) -> bool:
        """Whether the one CPU of `cpus` was left idle by other processes in the last second
        (`load`; this process's own use discounted if it `was` there)."""
        if load is None or cpus is None or len(cpus) != 1:
            return False
        (cpu,), (busy, mine) = cpus, load
        if cpu not in busy:
            return False
        return busy[cpu] - (mine if was == cpus else 0.0) < ALONE

    def _move(self, wanted: frozenset[int]) -> None:
        for tid in map(int, os.listdir(_TASKS)):
            try:
                if os.sched_getaffinity(tid) != wanted:
                    os.sched_setaffinity(tid, wanted)
            except ProcessLookupError:  # the thread has ended meanwhile
                pass
            except OSError as e:  # the kernel refuses: the process's cpuset has shrunk since it started
                raise ConfigError(f"config_interfaces.py: cpu_affinity {sorted(wanted)} cannot be applied: "
                                  f"{e.strerror or e}") from None
