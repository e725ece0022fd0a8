"""The one error hierarchy of pmnc: one family per kind of failure.

Names and messages follow the original framework where it had them, so
operators grepping logs and tests comparing texts see the same words.
"""

from __future__ import annotations

import builtins
import os
import sys
import traceback
from collections.abc import Sequence
from types import TracebackType


class PmncError(Exception):
    """Base of every error the framework raises on purpose."""


# --- deadlines ---------------------------------------------------------------


class DeadlineError(PmncError, TimeoutError):
    """The request's deadline passed while something waited for it."""


class RequestExpiredError(DeadlineError):
    """Queued work whose request expired before a worker could start it."""


class ModuleAccessTimedOutError(DeadlineError):
    """A call waited for a module being reloaded past its deadline."""


class ModuleReloadTimedOutError(DeadlineError):
    """A reload waited for calls in flight past its deadline."""


# --- module loading ----------------------------------------------------------


class ModuleError(PmncError):
    """A cage module could not be located, loaded or reached."""


class InvalidModuleNameError(ModuleError):
    pass


class ModuleNotFoundError(ModuleError, builtins.ModuleNotFoundError):
    """No file for the module in the cage folder nor in .shared."""


class ModuleFileIncompleteError(ModuleError):
    """The file lacks its `# EOF` line: probably still being written."""


class ModuleFileBrokenError(ModuleError):
    """The file raised (SyntaxError included) while its body ran."""


class InvalidMethodAccessError(ModuleError, AttributeError):
    """A private name, a name not in __all__, or not a function/class."""


# --- call-time type checks ---------------------------------------------------


class TypeCheckError(PmncError, TypeError):
    pass


class TypeCheckSpecificationError(TypeCheckError):
    """An annotation that cannot be checked, or a default that fails it."""


class InputParameterError(TypeCheckError):
    pass


class ReturnValueError(TypeCheckError):
    pass


# --- configuration and lifecycle ---------------------------------------------


class ConfigError(PmncError):
    """A config file is missing a required key or holds a bad value."""


class KeysError(ConfigError):
    """A key or certificate cannot be made: a bad argument, a missing CA, a file in the way."""


class NotAvailableError(PmncError):
    """A documented form this version does not support yet."""


class IntakeClosedError(PmncError):
    """The cage is shutting down and accepts no new requests."""


class InterfaceError(PmncError):
    """An interface could not be built or started."""


# --- protocols ---------------------------------------------------------------


class ProtocolError(PmncError):
    """A peer broke the rules of a wire protocol."""


# --- resources and transactions ----------------------------------------------


class ParticipantError(PmncError):
    """Something went wrong with one participant of a transaction.

    `participant_index` is its place in registration order, once known.
    """

    participant_index: int | None = None


class ResourceError(ParticipantError):
    """A resource call failed.

    `recoverable`: nothing irreversible was done, the call may be retried.
    `terminal`: the connection is unusable and is discarded (the default).
    """

    def __init__(self, description: str = "", *, code: int | str | None = None,
                 recoverable: bool = False, terminal: bool = True) -> None:
        super().__init__(description)
        self.description, self.code = description, code
        self.recoverable, self.terminal = recoverable, terminal

    def __str__(self) -> str:
        return f"{self.code}: {self.description}" if self.code is not None else self.description


class SQLResourceError(ResourceError):
    """A database refused a statement; `state` is its SQLSTATE (or None), `code` the
    driver's own code (ORA-nnnnn) where it has one."""

    def __init__(self, description: str = "", *, state: str | None = None, code: int | str | None = None,
                 recoverable: bool = False, terminal: bool = True) -> None:
        super().__init__(description, code=code, recoverable=recoverable, terminal=terminal)
        self.state = state

    def __str__(self) -> str:
        text = f"[{self.state}] {self.description}" if self.state else self.description
        return f"{self.code}: {text}" if self.code is not None else text


class ResourceInputParameterError(ResourceError):
    """The call's arguments are wrong; nothing was sent anywhere."""

    def __init__(self, description: str) -> None:
        super().__init__(description, recoverable=True, terminal=False)


class TransactionError(ParticipantError):
    """Raised by the coordinator, never by a resource."""

    def __init__(self, description: str, participant_index: int | None = None) -> None:
        super().__init__(description)
        self.participant_index = participant_index


class TransactionExecutionError(TransactionError):
    """No decision was reached: the deadline, or an accept that never accepted."""


class TransactionCommitError(TransactionError):
    """Commit was decided but a participant failed to (or did not say it did) commit."""


# --- cage-to-cage calls -------------------------------------------------------------------


class StateError(ResourceError):
    """The cage's durable state cannot be read or written: the disk is full, the folder is
    read-only, the file is damaged. Nothing of the failed write has been kept."""

    def __init__(self, description: str, *, recoverable: bool = True) -> None:
        super().__init__(description, recoverable=recoverable, terminal=False)


class StateCorruptError(StateError):
    """The state file is damaged: the cage refuses to start rather than lose data silently."""

    def __init__(self, description: str) -> None:
        super().__init__(description, recoverable=False)


class RetryExitError(PmncError):
    """Raised by `pmnc.retry.exit()` in a retried call: try again later, without an error in the log."""


class RPCError(ResourceError):
    """The code called in another cage raised; `remote` is that exception, rebuilt here.

    A participant's error inside a larger transaction (`xa.rpc__cage.m.f()`) is this
    class itself, as for any other resource. `pmnc("cage").m.f()` raises `RPCError.like(
    remote)`: an RPCError that is also of the remote type, so that `except ValueError`
    and `except RPCError` (the original's) both catch a remote ValueError.
    """

    def __init__(self, description: str, remote: BaseException | None = None) -> None:
        super().__init__(description, recoverable=False, terminal=False)
        self.remote = remote if remote is not None else RemoteError(description)

    @classmethod
    def like(cls, remote: BaseException) -> RPCError:
        """An RPCError posing as `remote`: of its type too, with its name, message, args and
        attributes, so that logs, tracebacks and HTTP error bodies read as `remote` would."""
        while type(remote) in _MADE:  # already posing: pose as what it poses as
            remote = remote.remote  # type: ignore[attr-defined]
        exc = _posing(remote)
        if exc is None:  # a type that cannot be combined or made empty: its RemoteError
            exc = _posing(RemoteError(str(remote), _type_name(type(remote)), getattr(remote, "remote_traceback", "")))
            assert exc is not None
        return exc


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# The class made per remote type (see RPCError.like): it derives from both and poses as the
# remote type. Every builtin exception's layout combines with RPCError's (that of
# BaseException); a remote type whose instances cannot be made empty (ExceptionGroup) or
# that refuses to be combined falls back to RemoteError.
_POSING: dict[type[BaseException], type[RPCError] | None] = {}
_MADE: set[type] = set()


def _posing_class(remote_type: type[BaseException]) -> type[RPCError] | None:
    try:
        return _POSING[remote_type]
    except KeyError:
        pass
    bases = (remote_type,) if issubclass(remote_type, RPCError) else (RPCError, remote_type)
    namespace = {"__module__": remote_type.__module__, "__qualname__": remote_type.__qualname__,
                 "__str__": _remote_text,
                 "__reduce__": _reduce, "__doc__": f"RPCError and {remote_type.__qualname__}: see RPCError.like"}
    made: type[RPCError] | None
    try:
        made = type(remote_type.__name__, bases, namespace)
    except TypeError:
        made = None
    made = _POSING.setdefault(remote_type, made)
    if made is not None:
        _MADE.add(made)
    return made


def _remote_text(exc: RPCError) -> str:
    return str(exc.remote)


def _reduce(exc: RPCError) -> tuple[object, tuple[BaseException]]:
    return _like_again, (exc.remote,)


# Builtin exceptions keep some of their state in C fields rather than in the instance dict.
_BUILTIN_FIELDS = ("errno", "strerror", "filename", "filename2", "characters_written", "name", "path", "obj",
                   "msg", "lineno", "offset", "text", "end_lineno", "end_offset", "print_file_and_line",
                   "encoding", "object", "start", "end", "reason", "code", "value")


def builtin_fields(exc: BaseException) -> dict[str, object]:
    """The fields a builtin exception type keeps outside the instance dict (an OSError's
    errno and filename ...), those set."""
    builtin = [c for c in type(exc).__mro__ if c.__module__ == "builtins"]
    fields = {}
    for field in _BUILTIN_FIELDS:
        if any(field in vars(c) for c in builtin):
            value = getattr(exc, field, None)
            if value is not None:
                fields[field] = value
    return fields


def _posing(remote: BaseException) -> RPCError | None:
    cls = _posing_class(type(remote))
    if cls is None:
        return None
    try:
        exc = cls.__new__(cls, *remote.args)
    except Exception:
        try:
            exc = cls.__new__(cls)
        except Exception:
            return None
    exc.args = remote.args
    for field, value in builtin_fields(remote).items():
        try:
            setattr(exc, field, value)
        except (AttributeError, TypeError, ValueError):
            pass
    fields = vars(remote)
    exc.__dict__.update(fields)  # remote_traceback, a remote ResourceError's code and flags, ...
    for key, value in (("description", str(remote)), ("code", None), ("recoverable", False), ("terminal", False)):
        exc.__dict__.setdefault(key, value)  # RPCError's own state, where the remote had none
    if "__notes__" in fields:
        exc.__notes__ = list(fields["__notes__"])
    exc.remote = remote
    return exc


def _like_again(remote: BaseException) -> RPCError:
    """What unpickling a posing exception makes (its class poses under a name it does not own)."""
    return RPCError.like(remote)


class RemoteError(PmncError):
    """An exception of a type this cage does not rebuild (user-defined ones):
    `remote_type` names it, `remote_traceback` is the text of its traceback there."""

    def __init__(self, message: str, remote_type: str = "", remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_type, self.remote_traceback = remote_type, remote_traceback

    def __str__(self) -> str:
        return f"{self.remote_type}: {self.args[0]}" if self.remote_type else str(self.args[0])


class ResourceDeadlineError(ResourceError, DeadlineError):
    """The request's deadline passed while a resource was waited for; what was asked
    may have been done, and the connection is dropped."""

    def __init__(self, description: str) -> None:
        super().__init__(description, recoverable=False, terminal=True)


class RPCDeadlineError(ResourceDeadlineError):
    """The caller's deadline passed before the other cage answered; the call may have run."""


def exc_string(exc: BaseException | None = None, *, stack: bool = True, skip: int = 0) -> str:
    """One line: `Type("msg") in inner() (file.py:N) <- outer() (file.py:M)`.

    Innermost frame first, base file names only, as the original's logs read.
    Without `stack`, only `Type("msg")` - what a client may be shown; `skip`
    drops that many outermost frames (the framework's own).
    """
    if exc is None:
        exc = sys.exc_info()[1]
        if exc is None:
            return ""
    try:
        message = str(exc)
    except Exception:
        message = ""
    head = f'{type(exc).__name__}("{message}")'
    if not stack:
        return head
    frames = _frames(exc.__traceback__)[: -skip or None]
    return " in ".join([head, " <- ".join(frames)]) if frames else head


def trace_string(*, tb: Sequence[traceback.FrameSummary] | None = None, skip: int = 0) -> str:
    """The calling stack as `inner() (file.py:N) <- outer() (file.py:M)`, the original's helper.

    The caller comes first; `skip` drops that many innermost frames, the caller's
    included. `tb`, a summary from `traceback.extract_tb` or `extract_stack`, is
    formatted instead of the stack.
    """
    if tb is None:
        tb = traceback.extract_stack(sys._getframe(1 + skip))
    return " <- ".join(_describe(tb))


def _frames(tb: TracebackType | None) -> list[str]:
    return _describe(traceback.extract_tb(tb))


def _describe(summary: Sequence[traceback.FrameSummary]) -> list[str]:
    """Innermost first, base file names only."""
    return [f"{f.name}() ({os.path.basename(f.filename)}:{f.lineno})" for f in reversed(summary)]
