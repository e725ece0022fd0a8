"""What one call and its answer look like on the wire, and exceptions across it.

A call is a dict (msgpack-encoded in one frame, see codec.py):

    kind      "call", "poll"/"post" of reverse calls, or "retry": a retried call handed
              over (`message`: queue, rt_id, module, method, args, kwargs, request,
              start, expires; see retry.py)
    source    [node, cage] of the caller (informational: the TLS identity decides)
    target    the cage called
    tag       (optional) an integer the answer carries back: calls a caller makes while
              others to the same cage are under way share one connection, tagged, and
              their answers come in the order they are done; an untagged call is answered
              before the next frame on its connection is read
    module, method, args, kwargs
    request   id, remain (seconds left when sent), deadline (epoch, informational),
              interface, protocol, description, log_levels, parameters (not `retry`; of
              auth_tokens only TRAVELLING_TOKENS - the callee keeps no more, see
              received_parameters)

The callee's deadline is `remain` counted from the arrival of the call, less
a margin, so no clock skew matters and the answer reaches the caller before
its own deadline. An answer is `{"result": value}` or `{"error": {...}}`
with the exception's type, message, args, attributes and traceback text;
the caller rebuilds builtin and framework types and turns any other into
RemoteError naming the type. `{"refused": "stopping"}` (REFUSED) says
the callee is stopping: nothing more sent on that connection runs there,
so the caller tries another instance; it also comes unasked (untagged), as a
goodbye, after which the tagged calls already under way are still answered.
Every answer to a tagged call, refusals and errors included, carries its tag.
"""

from __future__ import annotations

import builtins
import traceback
from typing import Any

from pmnc import errors, log
from pmnc import request as _request
from pmnc.errors import ProtocolError, RemoteError
from pmnc.rpc import codec

# The callee keeps this share of the time left (at most MAX_MARGIN seconds) for the
# answer's way back, so an answer finished right at its deadline is still in time.
MARGIN_SHARE, MAX_MARGIN = 0.05, 0.25

_SIMPLE = (str, int, float, bool, bytes, type(None))

REFUSED = {"refused": "stopping"}  # the answer, or goodbye, of a cage that is stopping


def is_refusal(answer: Any) -> bool:
    return isinstance(answer, dict) and "refused" in answer


def callee_timeout(remain: float) -> float:
    return max(remain - min(remain * MARGIN_SHARE, MAX_MARGIN), 0.0)


def error_dict(e: BaseException) -> dict[str, Any]:
    cls = type(e)
    try:
        message = str(e)
    except Exception:
        message = ""
    return {
        "type": f"{cls.__module__}.{cls.__qualname__}",
        "message": message,
        "args": list(e.args) if all(isinstance(a, _SIMPLE) for a in e.args) else None,
        "attrs": {k: v for k, v in [*errors.builtin_fields(e).items(), *vars(e).items()]
                  if isinstance(k, str) and not k.startswith("_") and isinstance(v, _SIMPLE)},
        "traceback": "".join(traceback.format_exception(e)),
    }


def rebuild(error: Any, where: str) -> BaseException:
    """The exception an `error` dict describes: the same type if it is a builtin or
    a framework one, else RemoteError; `remote_traceback` is set on it either way."""
    if not isinstance(error, dict):
        return RemoteError(f"{where} answered with a malformed error")
    type_name, message = str(error.get("type", "")), str(error.get("message", ""))
    trace = str(error.get("traceback", ""))
    cls = _known_type(type_name)
    exc: BaseException | None = None
    if cls is not None:
        exc = _construct(cls, error.get("args"), message)
    if exc is None:
        exc = RemoteError(message, type_name, trace)
    else:
        attrs = error.get("attrs")
        if isinstance(attrs, dict):
            for key, value in attrs.items():
                if isinstance(key, str) and not key.startswith("_"):
                    try:
                        setattr(exc, key, value)
                    except (AttributeError, TypeError):
                        pass
    exc.remote_traceback = trace  # type: ignore[attr-defined]
    if trace:
        exc.add_note(f"raised in {where}:\n{trace.rstrip()}")
    return exc


def _known_type(name: str) -> type[BaseException] | None:
    module, _, attr = name.rpartition(".")
    if module == "builtins":
        cls = getattr(builtins, attr, None)
    elif module == "pmnc.errors":
        cls = getattr(errors, attr, None)
    else:
        return None
    # Exception, not BaseException: a remote SystemExit must not stop this cage
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls
    return None


def _construct(cls: type[BaseException], args: Any, message: str) -> BaseException | None:
    candidates = [tuple(args)] if isinstance(args, list) else []
    candidates.append((message,))
    for arguments in candidates:
        try:
            exc = cls(*arguments)
        except Exception:
            continue
        return exc
    try:
        exc = cls.__new__(cls)
        exc.args = (message,)
        return exc
    except Exception:
        return None


# Of the caller's auth_tokens, these travel: who the user is and which cage the chain
# started in - never a password, nor what describes the caller's own connection.
TRAVELLING_TOKENS = ("username", "source_cage")
# Parameters the framework sets in each cage itself, never taken from a caller: `retry`
# comes only from this cage's retry engine (retry.py), `auth_tokens` is rebuilt.
LOCAL_PARAMETERS = ("retry", "auth_tokens")


def wire_request(request: _request.Request) -> dict[str, Any]:
    """The caller's request as it travels: what the callee continues (see the module's doc)."""
    wired = request.to_dict()
    wired["remain"] = request.remain
    parameters = wired["parameters"]
    parameters.pop("retry", None)
    tokens = parameters.get("auth_tokens")
    if isinstance(tokens, dict):
        parameters["auth_tokens"] = {k: v for k, v in tokens.items() if k in TRAVELLING_TOKENS}
    return wired


def received_parameters(sent: Any, peer_cage: str) -> dict[str, Any]:
    """What a callee takes of the parameters a caller sent - whatever the caller sent:
    the caller's own keys (strings not starting with "_", except LOCAL_PARAMETERS) and, of
    its auth_tokens, TRAVELLING_TOKENS with string values; `source_cage` is the first cage
    of a chain of calls (`peer_cage` if the caller names none), `peer_cage` the cage that
    connected (for a reverse call, the one that queued it)."""
    sent = sent if isinstance(sent, dict) else {}
    parameters = {k: v for k, v in sent.items()
                  if isinstance(k, str) and not k.startswith("_") and k not in LOCAL_PARAMETERS}
    tokens = sent.get("auth_tokens")
    kept = {k: v for k, v in tokens.items() if k in TRAVELLING_TOKENS and isinstance(v, str)} \
        if isinstance(tokens, dict) else {}
    kept.setdefault("source_cage", peer_cage)
    kept["peer_cage"] = peer_cage
    parameters["auth_tokens"] = kept
    return parameters


def remote_error(error: Any, where: str) -> errors.ResourceError:
    """The participant's error for an answer that is an error: RPCError carrying the
    rebuilt exception, or RPCDeadlineError for a deadline there."""
    remote = rebuild(error, where)
    if isinstance(remote, errors.DeadlineError):
        deadline = errors.RPCDeadlineError(f"request deadline has expired in {where}")
        deadline.__cause__ = remote
        return deadline
    return errors.RPCError(f"{where}: {type(remote).__name__}: {remote}", remote)


def answer_frame(reply: dict[str, Any], limit: int, use_pickle: bool, caller: str) -> bytes:
    """The frame of an answer; one that cannot be encoded becomes the error saying why."""
    try:
        return codec.encode(reply, limit=limit, use_pickle=use_pickle)
    except ProtocolError as e:
        log.warning(f"the answer to cage {caller} cannot be sent: {e}")
        error = {"error": error_dict(e)}
        if "tag" in reply:
            error["tag"] = reply["tag"]
        return codec.encode(error, limit=limit)
