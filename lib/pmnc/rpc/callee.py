"""The callee's side of a call from another cage, shared by the `rpc` interface (the caller
connects to us) and `revrpc` (we fetch the calls): the caller's request continued here, the
call made if it may be, its answer.

A call is `pmnc.<module>.<method>(*args, **kwargs)` for any name in the module's `__all__`,
unless `deny_modules` matches the module - by the name called or by the file it resolves
to, so that a symlink or another spelling of a denied module is no way round them.

`performance.headline()` is answered by the callee itself (the health monitor asks every
cage for it, monitor/health.py): `performance` is a framework module, so no cage module of
that name is ever called from another cage.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable
from typing import Any

from pmnc import log
from pmnc.errors import InvalidMethodAccessError, exc_string
from pmnc.lifecycle import Lifecycle
from pmnc.loader import MODULE_NAME
from pmnc.request import Request
from pmnc.rpc import wire

MAX_ID_LENGTH = 128  # characters of a caller's request id
MAX_LOG_LEVELS = 8  # of a caller's stack of log levels, the innermost kept
FRAMEWORK_MODULE = "performance"  # answered here, never by a cage module of that name
HEADLINE = (FRAMEWORK_MODULE, "headline")


class Callee:
    """Calls from other cages into cage `cage`, arriving at interface `interface`."""

    def __init__(self, lifecycle: Lifecycle, *, cage: str, interface: str, protocol: str, request_timeout: float,
                 deny_modules: tuple[str, ...], headline: Callable[[], dict[str, Any]] | None = None) -> None:
        self.lifecycle, self.cage = lifecycle, cage
        self.interface, self.protocol, self.request_timeout = interface, protocol, request_timeout
        self.deny_modules = deny_modules
        self.headline = headline  # performance.headline(): this cage's figures in brief, read only

    def request(self, envelope: dict[str, Any], caller: str, arrived: float) -> Request:
        """The caller's request continued here, begun at the intake: its id, log levels and
        parameters (only what may travel, see wire.received_parameters), with the time it had
        left less the margin for the way back, and no more than our own timeout. Log levels
        quieter than this cage's own are dropped: a caller may ask for more detail in our log,
        never for less. ValueError for a malformed one; IntakeClosedError while stopping."""
        wanted: dict[str, Any] = envelope["request"]
        timeout = min(wire.callee_timeout(remain(envelope)), self.request_timeout)
        unique_id = wanted.get("unique_id", wanted.get("id"))  # "id": what pmnc before 0.2 sent
        if not (isinstance(unique_id, str) and 0 < len(unique_id) <= MAX_ID_LENGTH):
            raise ValueError(f"a request id must be a string of 1 to {MAX_ID_LENGTH} characters")
        floor = log.get_level()
        levels = [x for x in wanted.get("log_levels") or () if isinstance(x, int) and floor <= x <= log.NOISE]
        description = wanted.get("description")
        return self.lifecycle.begin(
            interface=self.interface, protocol=self.protocol, timeout=timeout,
            parameters=wire.received_parameters(wanted.get("parameters"), caller),
            description=description if isinstance(description, str) else None,
            log_levels=levels[-MAX_LOG_LEVELS:], unique_id=unique_id, start=arrived)

    def run(self, envelope: dict[str, Any], caller: str) -> dict[str, Any]:
        """The answer to a call: its result, or the error it raised (logged)."""
        try:
            return {"result": self._dispatch(envelope, caller)}
        except Exception as e:
            log.warning(f"call {envelope.get('module')}.{envelope.get('method')} from cage {caller} "
                        f"failed: {exc_string(e, stack=False)}")
            log.debug(f"call failed: {exc_string(e)}")
            return {"error": wire.error_dict(e)}

    def denied(self, module: str) -> bool:
        deny = self.deny_modules
        return bool(deny) and (_matches(module, deny) or _matches(self.lifecycle.loader.file_name(module), deny))

    def _dispatch(self, envelope: dict[str, Any], caller: str) -> Any:
        module, method = envelope.get("module"), envelope.get("method")
        args, kwargs = envelope.get("args", ()), envelope.get("kwargs", {})
        if not (isinstance(module, str) and isinstance(method, str) and MODULE_NAME.fullmatch(module)
                and not module.startswith("_") and not method.startswith("_")
                and isinstance(args, (list, tuple)) and isinstance(kwargs, dict)
                and all(isinstance(k, str) for k in kwargs)):
            raise InvalidMethodAccessError(f"a malformed call from cage {caller}")
        if envelope.get("target") != self.cage:
            raise InvalidMethodAccessError(f"a call for cage {envelope.get('target')!r} has reached cage {self.cage}")
        if self.denied(module):
            raise InvalidMethodAccessError(f"module {module} is not callable from other cages")
        log.debug(f"call {module}.{method} from cage {caller}")
        if module == FRAMEWORK_MODULE:
            return self._built_in(method, args, kwargs)
        return self.lifecycle.handle(module, method, tuple(args), kwargs)

    def _built_in(self, method: str, args: Any, kwargs: dict[str, Any]) -> Any:
        """A framework module's answer to other cages: performance.headline() only."""
        if (FRAMEWORK_MODULE, method) != HEADLINE or self.headline is None:
            raise InvalidMethodAccessError(f"{FRAMEWORK_MODULE}.{method} is not callable from other cages "
                                           f"(only {'.'.join(HEADLINE)}, where the cage answers it)")
        if args or kwargs:
            raise InvalidMethodAccessError(f"{'.'.join(HEADLINE)}() takes no arguments")
        return self.headline()


@functools.lru_cache(maxsize=4096)
def _matches(module: str, deny_modules: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(module, pattern) for pattern in deny_modules)


def remain(envelope: dict[str, Any]) -> float:
    """The seconds the caller had left when it sent the envelope."""
    seconds = float(envelope["request"]["remain"])
    if not 0.0 <= seconds < 1e9:  # NaN and infinity included
        raise ValueError("remain must be a number of seconds")
    return seconds
