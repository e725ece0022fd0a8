"""Annotations on exported functions, enforced at call time.

An annotation may be a class (isinstance, no int→float promotion), a tuple
or list literal (same type and length, each element checked), any callable
(a predicate), one of the helpers below, or a modern typing form:
`X | None`, `Optional[X]`, `list[int]`, `dict[str, int]`, `tuple[int, ...]`,
`Literal[...]`, `Any`. Positional parameters are checked however they are
passed; defaults are checked once, when the function is wrapped.

The original's extras live here too (the top-level `typecheck` module only
re-exports them): `typecheck_with_exceptions` to raise other error classes,
and `disable()` to stop wrapping from then on.
"""

from __future__ import annotations

import functools
import inspect
import operator
import re
import types
import typing
from collections.abc import Callable
from typing import Any

from pmnc.errors import InputParameterError, ReturnValueError, TypeCheckSpecificationError

Check = Callable[[Any], bool]

__all__ = [
    "anything",
    "by_regex",
    "dict_of",
    "disable",
    "either",
    "list_of",
    "nothing",
    "one_of",
    "optional",
    "set_of",
    "tuple_of",
    "typecheck",
    "typecheck_with_exceptions",
    "with_attr",
]

_enabled = True  # off for good once disable() is called, as in the original


def disable() -> None:
    """Functions wrapped from now on come back unchanged (those wrapped before stay checked)."""
    global _enabled
    _enabled = False


class _Predicate:
    """A helper-made check; carries a name so error messages stay readable."""

    def __init__(self, check: Check, name: str) -> None:
        self.check, self.name = check, name

    def __call__(self, value: Any) -> bool:
        return self.check(value)

    def __repr__(self) -> str:
        return self.name


def optional(spec: Any) -> _Predicate:
    check = compile_spec(spec)
    return _Predicate(lambda v: v is None or check(v), f"optional({spec!r})")


def by_regex(pattern: str | bytes) -> _Predicate:
    # fullmatch, so a pattern ending in `$` does not accept a trailing newline
    regex: re.Pattern[Any] = re.compile(pattern)
    kind = type(pattern)
    return _Predicate(lambda v: isinstance(v, kind) and regex.fullmatch(v) is not None, f"by_regex({pattern!r})")


def one_of(*values: Any) -> _Predicate:
    return _Predicate(lambda v: v in values, f"one_of{values!r}")


def either(*specs: Any) -> _Predicate:
    checks = [compile_spec(s) for s in specs]
    return _Predicate(lambda v: any(c(v) for c in checks), f"either{specs!r}")


anything = _Predicate(lambda v: True, "anything")
nothing = _Predicate(lambda v: v is None, "nothing")  # `-> nothing`: returns no value, as the original


def _container_of(kind: type[Any], spec: Any) -> _Predicate:
    check = compile_spec(spec)
    return _Predicate(lambda v: isinstance(v, kind) and all(check(x) for x in v), f"{kind.__name__}_of({spec!r})")


def tuple_of(spec: Any) -> _Predicate:
    return _container_of(tuple, spec)


def list_of(spec: Any) -> _Predicate:
    return _container_of(list, spec)


def set_of(spec: Any) -> _Predicate:
    return _container_of(set, spec)


def dict_of(key_spec: Any, value_spec: Any) -> _Predicate:
    kc, vc = compile_spec(key_spec), compile_spec(value_spec)
    return _Predicate(lambda v: isinstance(v, dict) and all(kc(k) and vc(x) for k, x in v.items()),
                      f"dict_of({key_spec!r}, {value_spec!r})")


def with_attr(*names: str) -> _Predicate:
    return _Predicate(lambda v: all(hasattr(v, n) for n in names), f"with_attr{names!r}")


def compile_spec(spec: Any) -> Check:
    """Turn one annotation into a check, or refuse it with a clear error."""
    # The two commonest checks are made of C callables: a handler's call then runs no Python
    # frame for them (`isinstance(v, spec)` is `type(spec).__instancecheck__(spec, v)`).
    if spec is None or spec is type(None):
        return functools.partial(operator.is_, None)
    if spec is Any:
        return anything
    if isinstance(spec, type) and not isinstance(spec, types.GenericAlias):
        return type(spec).__instancecheck__.__get__(spec)  # type: ignore[no-any-return]
    origin = typing.get_origin(spec)
    if origin is not None:
        return _compile_typing(spec, origin, typing.get_args(spec))
    if isinstance(spec, (tuple, list)):
        kind, checks = type(spec), [compile_spec(s) for s in spec]
        return lambda v: type(v) is kind and len(v) == len(checks) and all(c(x) for c, x in zip(checks, v, strict=True))
    if callable(spec):
        return spec  # type: ignore[no-any-return]
    raise TypeCheckSpecificationError(f"cannot check annotation {spec!r}")


def _compile_typing(spec: Any, origin: Any, args: tuple[Any, ...]) -> Check:
    if origin in (typing.Union, types.UnionType):
        checks = [compile_spec(a) for a in args]
        return lambda v: any(c(v) for c in checks)
    if origin is typing.Literal:
        return lambda v: any(type(v) is type(a) and v == a for a in args)  # True is not Literal[1]
    if origin in (list, set, frozenset) and len(args) == 1:
        return _container_of(origin, args[0])
    if origin is dict and len(args) == 2:
        return dict_of(*args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return tuple_of(args[0])
    if origin is tuple and args and Ellipsis not in args:
        checks = [compile_spec(a) for a in args]
        return lambda v: (isinstance(v, tuple) and len(v) == len(checks)
                          and all(c(x) for c, x in zip(checks, v, strict=True)))
    if isinstance(origin, type):
        return lambda v: isinstance(v, origin)  # other generics: check the container only
    if callable(origin):
        return anything  # e.g. typing.Callable[...] without a runtime form
    raise TypeCheckSpecificationError(f"cannot check annotation {spec!r}")


class _Signature:
    """What to check for one function, computed once when it is wrapped."""

    def __init__(self, func: Callable[..., Any]) -> None:
        hints = _annotations(func)
        sig = inspect.signature(func)
        self.positional: list[tuple[str, Check | None]] = []
        self.by_name: dict[str, Check] = {}
        self.named: set[str] = set()  # parameters that may be passed by name
        self.var_positional: Check | None = None
        self.var_keyword: Check | None = None
        for name, param in sig.parameters.items():
            check = _compile_named(name, hints[name]) if name in hints else None
            self._check_default(func, name, param, check)
            if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
                self.positional.append((name, check))
            if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                self.named.add(name)
            if param.kind == param.VAR_POSITIONAL:
                self.var_positional = check
            elif param.kind == param.VAR_KEYWORD:
                self.var_keyword = check
            elif check is not None and param.kind != param.POSITIONAL_ONLY:
                self.by_name[name] = check
        self.result = _compile_named("return", hints["return"]) if "return" in hints else None

    @staticmethod
    def _check_default(func: Callable[..., Any], name: str, param: inspect.Parameter, check: Check | None) -> None:
        if check is not None and param.default is not param.empty and not check(param.default):
            raise TypeCheckSpecificationError(  # the original's words first: its self-tests compare prefixes
                f"the default value for {name} is incompatible with its typecheck: "
                f"{_short(param.default)} in {func.__qualname__}() fails its own check")

    @property
    def empty(self) -> bool:
        return (self.result is None and self.var_positional is None and self.var_keyword is None
                and not self.by_name and all(c is None for _, c in self.positional))


def _compile_named(name: str, spec: Any) -> Check:
    try:
        return compile_spec(spec)
    except TypeCheckSpecificationError as e:
        raise TypeCheckSpecificationError(f"invalid typecheck for {name}: {e}") from None


def _annotations(func: Callable[..., Any]) -> dict[str, Any]:
    """Resolved annotations; string ones (PEP 563) are evaluated in the module."""
    try:
        return typing.get_type_hints(func)
    except Exception as e:
        raise TypeCheckSpecificationError(f"annotations of {func.__qualname__}() cannot be resolved: {e}") from None


def typecheck(func: Callable[..., Any], *, input_parameter_error: type[Exception] = InputParameterError,
              return_value_error: type[Exception] = ReturnValueError) -> Callable[..., Any]:
    """Wrap `func` to check its annotated parameters and result; unannotated
    functions, functions already wrapped, and every function after `disable()`
    come back unchanged. A failed check raises the given error classes."""
    if not _enabled or getattr(func, "__pmnc_checked__", False):
        return func  # already checked: the loader must not hide a cage's own error classes behind ours
    sig = _Signature(func)
    if sig.empty:
        return func
    name = func.__name__

    def bad_input(param: str, value: Any) -> Exception:
        return input_parameter_error(f"{name}() has got an incompatible value for {param}: {_short(value)}")

    positional = sig.positional

    @functools.wraps(func)
    def checked(*args: Any, **kwargs: Any) -> Any:
        for (param, check), value in zip(positional, args, strict=False):  # every call of a handler: kept lean
            if check is not None and not check(value):
                raise bad_input(param, value)
        if len(args) > len(positional) and sig.var_positional is not None:
            for value in args[len(positional):]:
                if not sig.var_positional(value):
                    raise bad_input("*args", value)
        for param, value in kwargs.items():
            check = sig.by_name.get(param) if param in sig.named else sig.var_keyword
            if check is not None and not check(value):
                raise bad_input(param, value)
        result = func(*args, **kwargs)
        if sig.result is not None and not sig.result(result):
            raise return_value_error(f"{name}() has returned an incompatible value: {_short(result)}")
        return result

    wrapper: Callable[..., Any] = checked
    if len(positional) == 2 and sig.var_positional is None and sig.var_keyword is None:
        wrapper = _checked_pair(func, checked, positional, sig.result, bad_input, return_value_error)
    wrapper.__pmnc_checked__ = True  # type: ignore[attr-defined]
    return wrapper


def _checked_pair(func: Callable[..., Any], general: Callable[..., Any], positional: list[tuple[str, Check | None]],
                  result_check: Check | None, bad_input: Callable[[str, Any], Exception],
                  return_value_error: type[Exception]) -> Callable[..., Any]:
    """`general` for a function of two parameters (every interface's `process_request(request,
    response)`), unrolled for a call with two positional values: it runs for every request."""
    (first, check_first), (second, check_second) = positional

    @functools.wraps(func)
    def checked(*args: Any, **kwargs: Any) -> Any:
        if kwargs or len(args) != 2:
            return general(*args, **kwargs)
        a, b = args
        if check_first is not None and not check_first(a):
            raise bad_input(first, a)
        if check_second is not None and not check_second(b):
            raise bad_input(second, b)
        result = func(a, b)
        if result_check is not None and not result_check(result):
            raise return_value_error(f"{func.__name__}() has returned an incompatible value: {_short(result)}")
        return result

    return checked


def typecheck_with_exceptions(
    *, input_parameter_error: type[Exception] | None = None, return_value_error: type[Exception] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`@typecheck_with_exceptions(input_parameter_error=E)`: a typecheck raising `E` (say, a
    resource's ResourceInputParameterError) instead of InputParameterError; None keeps ours."""
    for param, value in (("input_parameter_error", input_parameter_error), ("return_value_error", return_value_error)):
        if value is not None and not (isinstance(value, type) and issubclass(value, Exception)):
            raise InputParameterError(
                f"typecheck_with_exceptions() has got an incompatible value for {param}: {_short(value)}")
    inputs, results = input_parameter_error or InputParameterError, return_value_error or ReturnValueError
    return lambda func: typecheck(func, input_parameter_error=inputs, return_value_error=results)


# control characters shown escaped: the text reaches logs and HTTP bodies, one line each
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(32), 127)}


def _short(value: Any) -> str:
    """The value as the original's messages showed it (str, not repr: self-tests compare
    the texts), one line, at most 200 characters."""
    try:
        text = str(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    text = text.translate(_CONTROLS)
    return text if len(text) <= 200 else text[:197] + "..."
