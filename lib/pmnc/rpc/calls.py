"""`pmnc("cage")`: the caller's side of a call to another cage, in each of its forms,
and `CageLink`, the framework's own typed way to another cage.

    pmnc("worker").m.f(x)            a synchronous call: a one-participant transaction
                                     on pool rpc__worker (xa.rpc__worker.m.f(x) inside a larger one)
    pmnc("worker:reverse").m.f(x)    queued here until cage worker polls for it (revrpc)
    pmnc("worker", queue="retry")    a persistent retried call (retry.py): returns its RT id at once

A remote exception comes as `RPCError.like(remote)`: an RPCError (so a
ResourceError, as in the original) that is also of the remote type (builtin and
framework types; RemoteError naming the type for any other) and reads as it,
so both `except RPCError` and `except ValueError` catch a remote ValueError;
`remote` is the rebuilt exception, `remote_traceback` the text of the remote
traceback. A request without a deadline (a framework thread) calls with the
cage's `request_timeout`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from pmnc import request as _request
from pmnc.errors import (
    InvalidMethodAccessError,
    InvalidModuleNameError,
    ProtocolError,
    ResourceInputParameterError,
    RPCError,
)
from pmnc.loader import MODULE_NAME
from pmnc.rpc import codec, wire
from pmnc.rpc.cluster import Cluster, ClusterHandle
from pmnc.transaction import TransactionFactory

# The operations of an rpc connection (protocols/rpc.py's Resource) the framework calls, by
# names no module can have (a colon): `xa.rpc__<cage>.<name>` is always the module <name>.
OPS = {op: f"rpc:{op}" for op in ("call", "poll", "post", "hand_over")}

_TARGET = re.compile(r"([A-Za-z0-9_-]{1,32})?(?::(reverse|retry))?")


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


class CageLink:
    """The framework's typed way to another cage: each method is a one-call transaction
    on pool `rpc__<cage>` (protocols/rpc.py's Resource), bounded by the current request."""

    def __init__(self, transactions: TransactionFactory, cage: str) -> None:
        self._transactions, self._pool = transactions, f"rpc__{cage}"

    def call(self, module: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """`pmnc.<module>.<method>(*args, **kwargs)` there; a remote exception comes as RPCError."""
        return self._transactions.call_one(self._pool, OPS["call"], module, method, args, kwargs)

    def poll(self, wait: float) -> list[dict[str, Any]]:
        """The reverse calls that cage has queued for this one, waiting up to `wait` seconds."""
        return list(self._transactions.call_one(self._pool, OPS["poll"], wait))

    def post(self, call_id: str, reply: dict[str, Any]) -> bool:
        """The answer to reverse call `call_id`: True if that cage still waited for it."""
        return bool(self._transactions.call_one(self._pool, OPS["post"], call_id, reply))

    def hand_over(self, message: dict[str, Any]) -> bool:
        """A retried call into that cage's state file: True once it is there, False if it was already."""
        return bool(self._transactions.call_one(self._pool, OPS["hand_over"], message))


class CageCall:
    """`pmnc("cage")` and `pmnc("cage:reverse")`: `.module.method(...)` runs there."""

    def __init__(self, transactions: TransactionFactory, request_timeout: Callable[[], float], cluster: ClusterHandle,
                 cage: str, *, reverse: bool) -> None:
        self._link = CageLink(transactions, cage)
        self._request_timeout = request_timeout  # the cage's, for a call made outside any request
        self._cluster, self._cage, self._reverse = cluster, cage, reverse

    def __getattr__(self, module: str) -> _Module:
        if module.startswith("_") or not MODULE_NAME.fullmatch(module):
            raise InvalidModuleNameError(f"module name {module!r} is invalid")
        ref = self.__dict__[module] = _Module(self, module)
        return ref

    def _call(self, module: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        request = _request.current()
        if request.infinite:
            timeout = self._request_timeout()
            with _request.attached(_request.Request(timeout=timeout, interface="__rpc__", protocol="rpc")):
                return self._call(module, method, args, kwargs)
        if self._reverse:
            return _reverse_call(self._cluster.get(), self._cage, module, method, args, kwargs, request)
        try:
            return self._link.call(module, method, args, kwargs)
        except RPCError as e:
            raise RPCError.like(e.remote) from None

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


def _reverse_call(cluster: Cluster, cage: str, module: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                  request: _request.Request) -> Any:
    """Queue the call for `cage` to fetch (see reverse.py) and wait for its answer."""
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
    raise RPCError.like(error.remote) if isinstance(error, RPCError) else error
