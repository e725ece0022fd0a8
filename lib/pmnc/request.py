"""Requests: the unit of work, its absolute deadline, and the current request.

The deadline lives here and nowhere else. Every layer that waits derives its
own timeout from `request.remain`; `wait`, `acquire`, `acquire_shared` and `pop`
below are the one way to wait on a thread-level primitive within a request's time.
The API is the original's (`expires_in(t)` is its yes/no test, `to_dict` its keys);
`deadline_in(t)` and the `remain` setter move the deadline.
"""

from __future__ import annotations

import copy
import itertools
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from pmnc.errors import DeadlineError

# The clock seam: tests may replace it to move time without sleeping.
monotonic = time.monotonic

_current = threading.local()

# A description is for log lines: one a caller sends (15 MB, say) is cut to this many
# characters, so it cannot fill the log through every line its request writes.
MAX_DESCRIPTION = 1000


class _Lock(Protocol):
    def acquire(self, *, timeout: float) -> bool: ...  # a threading lock, or pmnc.shared_locks.get(name)


class _SharedLock(Protocol):
    def acquire_shared(self, timeout: float | None = ...) -> bool: ...


class _Queue(Protocol):
    def pop(self, timeout: float | None = ...) -> Any: ...


_ids = random.Random()  # seeded from os.urandom; far cheaper per id than os.urandom itself
_stamp = (0, "")  # (second, its local YYYYMMDDhhmmss): one strftime a second, not one an id


def new_unique_id(prefix: str = "RQ") -> str:
    """`RQ-YYYYMMDDhhmmss-<12 upper hex>`, local time as in the original."""
    global _stamp
    second = int(time.time())
    if _stamp[0] != second:
        _stamp = (second, time.strftime("%Y%m%d%H%M%S", time.localtime(second)))
    return f"{prefix}-{_stamp[1]}-{_ids.getrandbits(48):012X}"


_SCALARS = frozenset({str, int, float, bool, bytes, type(None)})


def _copy_of(value: Any) -> Any:
    """A deep copy of a parameter; a scalar, or a flat dict of scalars (auth_tokens, on every
    call to another cage), without deepcopy's machinery."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is dict and _SCALARS.issuperset(map(type, value)) and _SCALARS.issuperset(map(type, value.values())):
        return dict(value)
    return copy.deepcopy(value)


class Request:
    """One request: who asked, through which interface, and until when.

    A finite request has an interface and a protocol; an infinite one (the
    framework's own long-running threads) has neither and never expires.
    """

    _sequence = itertools.count()
    # The module under self-test (selftest.py), for every request of the process, as the
    # original's class attribute; a request may also be given its own.
    _self_test: str | None = None

    def __init__(
        self,
        *,
        timeout: float | None,
        interface: str | None = None,
        protocol: str | None = None,
        parameters: dict[str, Any] | None = None,
        description: str | None = None,
        log_levels: list[int] | None = None,
        unique_id: str | None = None,
        start: float | None = None,
    ) -> None:
        if (timeout is None) != (interface is None) or (interface is None) != (protocol is None):
            raise ValueError("a finite request needs an interface and a protocol, an infinite one neither")
        self._unique_id = unique_id or None  # made when first asked for: most requests never are
        self.interface = interface
        self._protocol = protocol
        self.parameters: dict[str, Any] = parameters if parameters is not None else {}
        self._description = description if description is None else _bounded(description)
        self.log_levels: list[int] = list(log_levels) if log_levels else []
        self.start = monotonic() if start is None else start
        self.started: float | None = None  # monotonic, when a worker began the work (workers.py)
        self.failed = False  # its handler raised, whatever the interface answered (lifecycle.py)
        self.deadline: float | None = None if timeout is None else self.start + timeout
        # A tie-breaker so equal deadlines keep arrival order in the EDF queue.
        self.sequence = next(self._sequence)

    @classmethod
    def begun(cls, interface: str, protocol: str, timeout: float, parameters: dict[str, Any] | None,
              start: float | None) -> Request:
        """`Request(interface=..., protocol=..., timeout=..., parameters=..., start=...)`, what the
        intake begins for every request of an interface: the same fields, set without the checks
        and the defaults of the keywords not given (it runs once per request)."""
        request = object.__new__(cls)
        request._unique_id = None
        request.interface = interface
        request._protocol = protocol
        request.parameters = parameters if parameters is not None else {}
        request._description = None
        request.log_levels = []
        request.start = start = monotonic() if start is None else start
        request.started = None
        request.failed = False
        request.deadline = start + timeout
        request.sequence = next(cls._sequence)
        return request

    @property
    def unique_id(self) -> str:
        """`RQ-YYYYMMDDhhmmss-<12 upper hex>` (new_unique_id), made the first time it is asked for:
        a request that writes no log line and goes to no other cage never needs it."""
        unique_id = self._unique_id
        if unique_id is None:
            unique_id = self._unique_id = new_unique_id()
        return unique_id

    # --- timing --------------------------------------------------------------

    @property
    def infinite(self) -> bool:
        return self.deadline is None

    @property
    def remain(self) -> float:
        """Seconds left, never negative. Setting it moves the deadline."""
        if self.deadline is None:
            raise DeadlineError("infinite request has no time remaining to tell")
        return max(self.deadline - monotonic(), 0.0)

    @remain.setter
    def remain(self, value: float) -> None:
        self.deadline = monotonic() + value

    def deadline_in(self, timeout: float) -> None:
        """Move the deadline to `timeout` seconds from now (what the `remain` setter does)."""
        self.remain = timeout

    def expires_in(self, timeout: float) -> bool:
        """Whether the deadline comes within `timeout` seconds (never, for an infinite request):
        the original's test before starting something that takes that long."""
        return self.deadline is not None and monotonic() + timeout >= self.deadline

    @property
    def expired(self) -> bool:
        return self.deadline is not None and monotonic() >= self.deadline

    @property
    def elapsed(self) -> float:
        return monotonic() - self.start

    @property
    def expired_for(self) -> float:
        if self.deadline is None:
            raise DeadlineError("infinite request cannot expire")
        return max(monotonic() - self.deadline, 0.0)

    @property
    def epoch_deadline(self) -> float | None:
        """The deadline as wall-clock seconds, the form that travels the wire."""
        if self.deadline is None:
            return None
        return time.time() + (self.deadline - monotonic())

    def sort_key(self) -> tuple[float, int]:
        """Earliest deadline first; infinite requests sort last."""
        return (float("inf") if self.deadline is None else self.deadline, self.sequence)

    # --- identity ------------------------------------------------------------

    @property
    def protocol(self) -> str | None:
        return self._protocol

    @protocol.setter
    def protocol(self, value: str) -> None:
        if self._protocol is None:
            raise AttributeError("protocol of an infinite request cannot be set")
        self._protocol = value

    def describe(self, description: str) -> None:
        self._description = _bounded(description)

    @property
    def description(self) -> str | None:
        """`RQ-ABCD (desc) via http +1.2s` - what log records say of it."""
        if self.deadline is None:
            return None
        left = self.deadline - monotonic()
        sign = "+" if left >= 0 else "-"
        what = f" ({self._description})" if self._description else ""
        return f"RQ-{self.unique_id[-4:]}{what} via {self.interface} {sign}{abs(left):.1f}s"

    @property
    def self_test(self) -> str | None:
        """The name of the module under self-test, None in a cage that serves."""
        return self._self_test

    @self_test.setter
    def self_test(self, module: str | None) -> None:
        self._self_test = module

    @property
    def log_level(self) -> int | None:
        return self.log_levels[-1] if self.log_levels else None

    def push_log_level(self, level: int) -> None:
        self.log_levels.append(level)

    def pop_log_level(self) -> None:
        """IndexError when none was pushed, as the original."""
        self.log_levels.pop()

    # --- waits bounded by the deadline ---------------------------------------

    def _timeout(self) -> float | None:
        return None if self.deadline is None else self.remain

    def wait(self, event: threading.Event) -> bool:
        return event.wait(self._timeout())

    def acquire(self, lock: _Lock) -> bool:
        timeout = self._timeout()
        return lock.acquire(timeout=-1 if timeout is None else timeout)

    def acquire_shared(self, lock: _SharedLock) -> bool:
        """A shared (reader) lock such as `pmnc.shared_locks.get(name)`'s, within the deadline."""
        return lock.acquire_shared(self._timeout())

    def acquire_shared_fast(self, lock: _SharedLock) -> bool:
        """The same, but a lock free at once is taken even after the deadline."""
        return lock.acquire_shared(0.0) or self.acquire_shared(lock)

    def pop(self, queue: _Queue) -> Any:
        """The next item of a queue such as `pmnc.shared_queues.get(name)`'s, or None at the deadline."""
        return queue.pop(self._timeout())

    def clone(self) -> Request:
        """The same request for another thread: same id and deadline, its own
        copy of the parameters and log levels (transaction participants)."""
        twin = object.__new__(Request)
        self.unique_id  # noqa: B018 - made now, so that the twin has the same
        twin.__dict__.update(self.__dict__)
        twin.parameters = dict(self.parameters)
        twin.log_levels = list(self.log_levels)
        twin.sequence = next(self._sequence)
        return twin

    # --- serialisation -------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The wire form, with an absolute epoch deadline, as the original's (and its keys)."""
        if self.deadline is None:
            raise DeadlineError("infinite request cannot be serialised")
        parameters = {k: _copy_of(v) for k, v in self.parameters.items()
                      if isinstance(k, str) and not k.startswith("_")}
        return {
            "unique_id": self.unique_id,
            "deadline": self.epoch_deadline,
            "interface": self.interface,
            "protocol": self.protocol,
            "description": self._description,
            "log_levels": list(self.log_levels),
            "parameters": parameters,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, timeout: float | None = None) -> Request:
        """Rebuild with the same id; deadline = min(timeout, time left on `d`) (a timeout
        of 0 or None: the time left). `id` is read where an older pmnc wrote it."""
        left = max(float(d["deadline"]) - time.time(), 0.0)
        if timeout:
            left = min(left, timeout)
        return cls(
            timeout=left,
            interface=d["interface"],
            protocol=d["protocol"],
            parameters=dict(d.get("parameters") or {}),
            description=d.get("description"),
            log_levels=list(d.get("log_levels") or ()),
            unique_id=d["unique_id"] if "unique_id" in d else d["id"],
        )

    def __repr__(self) -> str:
        if self.deadline is None:
            return f"<Request {self.unique_id} infinite>"
        return f"<Request {self.unique_id} via {self.interface} remain={self.remain:.2f}s>"


def _bounded(description: str | None) -> str | None:
    if description is None or len(description) <= MAX_DESCRIPTION:
        return description
    return description[:MAX_DESCRIPTION - 3] + "..."


def current() -> Request:
    """The request of this thread; a fresh infinite one where none is attached."""
    request: Request | None = getattr(_current, "request", None)
    if request is None:
        request = _current.request = Request(timeout=None)
    return request


def attach(request: Request | None) -> Request | None:
    """Make `request` this thread's current request; returns the previous one."""
    previous: Request | None = getattr(_current, "request", None)
    _current.request = request
    return previous


@contextmanager
def attached(request: Request) -> Iterator[Request]:
    previous = attach(request)
    try:
        yield request
    finally:
        attach(previous)


class InfiniteRequest(Request):
    """A request that never expires: what the framework's own threads run under."""

    def __init__(self) -> None:
        super().__init__(timeout=None)


def fake_request(timeout: float | None = None, interface: str = "__fake__") -> Request:
    """Attach a test request to the current thread, as the original's helper."""
    if timeout is None:
        request: Request = InfiniteRequest()
    else:
        request = Request(timeout=timeout, interface=interface, protocol="n/a", parameters={"auth_tokens": {}})
    attach(request)
    return request
