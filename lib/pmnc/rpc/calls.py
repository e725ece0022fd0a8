"""`pmnc("cage")`: the caller's side of a call to another cage, in each of its forms.

    pmnc("worker").m.f(x)            a synchronous call: a one-participant transaction
                                     on pool rpc__worker (xa.rpc__worker.m.f(x) inside a larger one)
    pmnc("worker:reverse").m.f(x)    queued here until cage worker polls for it (revrpc)
    pmnc("worker", queue="retry")    a persistent retried call (retry.py): returns its RT id at once

A remote exception is raised as itself (builtin and framework types) or as
RemoteError naming its type; `remote_traceback` holds the text of the remote
traceback. A request without a deadline (a framework thread) calls with the
cage's `request_timeout`.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any

from pmnc import request as _request
from pmnc.config import Config
from pmnc.errors import (
    InvalidMethodAccessError,
    InvalidModuleNameError,
    ProtocolError,
    ResourceInputParameterError,
    RPCError,
)
from pmnc.loader import MODULE_NAME
from pmnc.retry import RetriedCall, Target
from pmnc.rpc import cluster as _cluster
from pmnc.rpc import codec, wire

if TYPE_CHECKING:
    from pmnc.loader import Pmnc

_TARGET = re.compile(r"([A-Za-z0-9_-]{1,32})?(?::(reverse|retry))?")
DEFAULT_TIMEOUT = 10.0


def parse_target(target: str = "", *, queue: str | None = None,
                 **options: Any) -> tuple[str | None, str | None, bool, dict[str, Any]]:
    """`pmnc(target, queue=..., **options)` read once: (cage or None for this one, queue or
    None for a synchronous call, reverse, the retried call's options)."""
    match = _TARGET.fullmatch(target) if isinstance(target, str) else None
    if match is None:
        raise InvalidModuleNameError(f"cage name {target!r} is invalid: 1 to 32 of A-Z a-z 0-9 _ -, "
                                     f"optionally followed by :reverse or :retry")
    cage, mode = match.group(1), match.group(2)
    if mode == "retry" and queue is None:
        queue = "retry"  # the original's form
    if options and queue is None:
        raise TypeError(f"pmnc(\"{target}\") got option(s) of a retried call without queue=: "
                        f"{', '.join(sorted(options))}")
    return cage, queue, mode == "reverse", options


def cage_call(pmnc: Pmnc, target: str = "", *, queue: str | None = None, **options: Any) -> CageCall | RetriedCall:
    cage, queue, reverse, options = parse_target(target, queue=queue, **options)
    if queue is not None:
        if reverse:
            raise InvalidModuleNameError("a call is either reverse or retried, not both")
        return RetriedCall(pmnc, Target.parse(cage or pmnc._loader.cage, queue, **options))
    if cage is None:
        raise InvalidModuleNameError("pmnc(\"\") needs a cage name, or queue= for a retried call to this cage")
    return CageCall(pmnc, cage, reverse=reverse)


class CageCall:
    def __init__(self, pmnc: Pmnc, cage: str, *, reverse: bool) -> None:
        self._pmnc, self._cage, self._reverse = pmnc, cage, reverse

    def __getattr__(self, module: str) -> _Module:
        if module.startswith("_") or not MODULE_NAME.fullmatch(module):
            raise InvalidModuleNameError(f"module name {module!r} is invalid")
        ref = self.__dict__[module] = _Module(self, module)
        return ref

    def _call(self, module: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        request = _request.current()
        if request.infinite:
            config = self._pmnc.__dict__.get("_interfaces_config")
            if config is None:
                config = self._pmnc.__dict__["_interfaces_config"] = Config(self._pmnc._loader, "interfaces")
            timeout = float(config.get("request_timeout", DEFAULT_TIMEOUT))
            with _request.attached(_request.Request(timeout=timeout, interface="__rpc__", protocol="rpc")):
                return self._call(module, method, args, kwargs)
        if self._reverse:
            return _reverse_call(self._cage, module, method, args, kwargs, request)
        shortcut = self.__dict__.get("_shortcut")
        if shortcut is None:  # pmnc.transaction.rpc__<cage>.call, kept: it holds no state
            shortcut = self.__dict__["_shortcut"] = getattr(self._pmnc.transaction, f"rpc__{self._cage}").call
        try:
            return shortcut(module, method, args, kwargs)
        except RPCError as e:
            raise e.remote from None

    def __repr__(self) -> str:
        return f"<cage {self._cage}{':reverse' if self._reverse else ''}>"


class _Module:
    def __init__(self, cage: CageCall, module: str) -> None:
        self._cage, self._module = cage, module

    def __getattr__(self, method: str) -> Any:
        if method.startswith("__"):
            raise AttributeError(method)
        if method.startswith("_"):
            raise InvalidMethodAccessError(f"{self._module}.{method} is private and cannot be called")
        call = self.__dict__[method] = functools.partial(_invoke, self._cage, self._module, method)
        return call

    def __repr__(self) -> str:
        return f"<module {self._module} of {self._cage!r}>"


def _invoke(cage: CageCall, module: str, method: str, *args: Any, **kwargs: Any) -> Any:
    return cage._call(module, method, args, kwargs)


def _reverse_call(cage: str, module: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                  request: _request.Request) -> Any:
    """Queue the call for `cage` to fetch (see reverse.py) and wait for its answer."""
    cluster = _cluster.get()
    envelope = {"kind": "call", "module": module, "method": method, "args": args, "kwargs": kwargs,
                "request": wire.wire_request(request), "source": [cluster.node, cluster.cage], "target": cage}
    try:
        codec.encode(envelope, limit=cluster.max_frame_size, use_pickle=cluster.use_pickle)
    except ProtocolError as e:
        raise ResourceInputParameterError(f"the call cannot be sent to cage {cage}: {e}") from None
    assert request.deadline is not None
    reply = cluster.reverse.call(cage, _request.new_unique_id("RC"), envelope, request.deadline,
                                 _request.monotonic())
    if isinstance(reply, dict) and "result" in reply:
        return reply["result"]
    error = wire.remote_error(reply.get("error") if isinstance(reply, dict) else None, f"cage {cage} (reverse)")
    raise error.remote if isinstance(error, RPCError) else error
