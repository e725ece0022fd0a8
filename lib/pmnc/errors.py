"""The one error hierarchy of pmnc: one family per kind of failure.

Names and messages follow the original framework where it had them, so
operators grepping logs and tests comparing texts see the same words.
"""

from __future__ import annotations

import builtins
import os
import sys
import traceback
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

    `pmnc("cage").m.f()` raises `remote` itself; inside a larger transaction the
    participant's error is this one, as for any other resource.
    """

    def __init__(self, description: str, remote: BaseException | None = None) -> None:
        super().__init__(description, recoverable=False, terminal=False)
        self.remote = remote if remote is not None else RemoteError(description)


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


def _frames(tb: TracebackType | None) -> list[str]:
    summary = traceback.extract_tb(tb)
    return [f"{f.name}() ({os.path.basename(f.filename)}:{f.lineno})" for f in reversed(summary)]
