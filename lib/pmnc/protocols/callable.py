"""The callable resource: any library as a transaction participant, through the user's hooks.

    # config_resource_cache_1.py
    config = dict(
        protocol="callable",
        connect=lambda: redis.Redis(host="127.0.0.1", socket_timeout=3.0),     # once per pooled connection
        execute=lambda resource, *args: resource.connection.execute_command(*args),
    )

    pmnc.transaction.cache.execute("SET", "k", "v")      # the execute hook, its result returned
    pmnc.transaction.cache.get("k")                      # any other name: the connection's own method

Hooks, each optional, given in the config file or (all but connect and disconnect) per call
as resource kwargs, the original's form: `xa.cache(commit=f, rollback=g).execute(...)`.

    connect()  or  connect(resource)   once per pooled connection; what it returns is
                                       `resource.connection` (it is called with the resource
                                       when it requires an argument)
    begin_transaction(resource, xid, transaction_options=, source_module_name=,
                      resource_args=, resource_kwargs=)       per participant, before the call
    execute(resource, *args, **kwargs) the call `xa.<name>.execute(...)`, its result returned;
                                       without it, the connection's own execute, else None
    commit(resource) / rollback(resource)  at the transaction's decision
    disconnect(resource)               when the pool drops the connection (idle, aged, broken,
                                       stopping); without it, the connection's close() if any

The config file's other keys are the hooks' own settings: `resource.config[key]` (the
original's `resource._config`). A key one letter away from a hook name is refused as a typo.

Errors: a hook may raise ResourceError itself, to say what was done; anything else it raises
becomes a ResourceError naming the hook. Before the call (connect, begin_transaction) it is
recoverable: nothing of this call was done. From the call itself (execute, a connection
method) it is not: something may have been. Either way the connection is dropped (terminal),
since nobody can tell whether the library's connection is still sound. A commit hook's failure
fails the transaction's commit; rollback and disconnect failures are logged.

Not preparable: in a `two_phase=True` transaction a callable resource is the one last resource.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

from pmnc import log
from pmnc import resource as _resource
from pmnc.errors import ConfigError, ResourceError, ResourceInputParameterError, exc_string
from pmnc.schema import resource_file

__all__ = ["Resource"]

Hook = Callable[..., Any]

CONFIG_HOOKS = ("connect", "disconnect")  # only in the config file
CALL_HOOKS = ("begin_transaction", "execute", "commit", "rollback")  # in the config file, or per call
HOOKS = CONFIG_HOOKS + CALL_HOOKS


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


class Resource(_resource.Resource):
    """One pooled connection of a callable resource: `connection` is what its connect hook made."""

    transactional = True  # commit and rollback hooks run at the decision
    inline = False  # the hooks' waits are the user's: keep them on the pool's threads

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        file = resource_file(name)
        settings = dict(config)
        hooks = {hook: _config_hook(file, hook, settings.pop(hook, None)) for hook in HOOKS}
        _refuse_typos(file, settings)
        super().__init__(name, settings)
        self._config = settings  # the original's name for the hooks' settings
        self._hooks = hooks
        self._call_hooks = {name: hooks[name] for name in CALL_HOOKS}  # this participant's
        self.connection: Any = None
        self.xid: str | None = None
        self.source_module_name: str | None = None
        self.transaction_options: dict[str, Any] = {}
        self.resource_args: tuple[Any, ...] = ()
        self.resource_kwargs: dict[str, Any] = {}

    @property
    def pool_name(self) -> str:
        return self.name.partition("/")[0]

    # --- lifecycle ----------------------------------------------------------------------------

    def connect(self) -> None:
        hook = self._hooks["connect"]
        if hook is None:
            return
        args = (self,) if _requires_argument(hook) else ()
        made = self._run("connect", hook, args, {}, recoverable=True)
        if made is not None:
            self.connection = made

    def disconnect(self) -> None:
        hook = self._hooks["disconnect"]
        if hook is None:
            hook = getattr(self.connection, "close", None)
            args: tuple[Any, ...] = ()
            if not callable(hook):
                return
        else:
            args = (self,)
        try:
            self._run("disconnect", hook, args, {}, recoverable=True)
        except ResourceError as e:  # the connection is dropped either way
            log.warning(str(e))

    def begin_transaction(self, xid: str, *, source_module_name: str, transaction_options: dict[str, Any],
                          resource_args: tuple[Any, ...], resource_kwargs: dict[str, Any]) -> None:
        # the per-call hooks are taken out of a copy: the registration's dict may serve other calls
        own = {k: v for k, v in resource_kwargs.items() if k not in CALL_HOOKS}
        self._call_hooks = {name: self._hooks[name] for name in CALL_HOOKS}
        for name in CALL_HOOKS:
            if name in resource_kwargs:
                self._call_hooks[name] = _call_hook(self.pool_name, name, resource_kwargs[name])
        self.xid, self.source_module_name = xid, source_module_name
        self.transaction_options, self.resource_args, self.resource_kwargs = transaction_options, resource_args, own
        hook = self._call_hooks["begin_transaction"]
        if hook is not None:
            self._run("begin_transaction", hook, (self, xid),
                      dict(transaction_options=transaction_options, source_module_name=source_module_name,
                           resource_args=resource_args, resource_kwargs=own), recoverable=True)

    def commit(self) -> None:
        self._finish("commit")

    def rollback(self) -> None:
        self._finish("rollback")

    def _finish(self, step: str) -> None:
        hook = self._call_hooks[step]
        self._call_hooks = {name: self._hooks[name] for name in CALL_HOOKS}  # this participant is done
        if hook is not None:
            self._run(step, hook, (self,), {}, recoverable=False)

    # --- the calls ----------------------------------------------------------------------------

    def _route(self, attrs: tuple[str, ...]) -> Callable[..., Any] | None:
        """`xa.<name>.execute(...)`: the execute hook; `xa.<name>.a.b(...)`: the connection's
        `a.b`, where connect made one. None: no such method."""
        if attrs == ("execute",):
            hook = self._call_hooks["execute"]
            if hook is not None:
                return lambda *args, **kwargs: self._run("execute", hook, (self, *args), kwargs, recoverable=False)
        target: Any = self.connection
        if attrs[0] in _resource.LIFECYCLE:  # xa.<name>.commit() would bypass the transaction
            return None
        if target is None:
            return _noop if attrs == ("execute",) else None  # the original's: no hook, nothing done
        try:
            for attr in attrs:
                target = getattr(target, attr)
        except AttributeError:
            return None
        if not callable(target):
            return None
        method = target
        return lambda *args, **kwargs: self._run(f"connection.{'.'.join(attrs)}()", method, args, kwargs,
                                                      recoverable=False)

    def _run(self, step: str, hook: Hook, args: tuple[Any, ...], kwargs: dict[str, Any], *,
             recoverable: bool) -> Any:
        """Call a hook; what it raises leaves as a ResourceError naming it (its own ResourceError as is)."""
        try:
            return hook(*args, **kwargs)
        except ResourceError:
            raise
        except Exception as e:
            raise ResourceError(f"resource {self.pool_name}: {_noun(step)} failed: {exc_string(e, skip=1)}",
                                recoverable=recoverable, terminal=True) from e

    def __repr__(self) -> str:
        return f"<callable.Resource {self.name} connection={type(self.connection).__name__} ttl={self.ttl:.1f}s>"


def _noun(step: str) -> str:
    return f"its {step} hook" if step in HOOKS else step


def _config_hook(file: str, name: str, value: Any) -> Hook | None:
    if value is not None and not callable(value):
        raise ConfigError(f"{file}: {name} must be a function (a hook), not {value!r}")
    return value  # type: ignore[no-any-return]


def _call_hook(resource: str, name: str, value: Any) -> Hook | None:
    if value is not None and not callable(value):
        raise ResourceInputParameterError(f"resource {resource}: the {name} hook given with the call must be a "
                                          f"function, not {value!r}")
    return value  # type: ignore[no-any-return]


def _refuse_typos(file: str, settings: dict[str, Any]) -> None:
    """The hooks' settings are free keys, but one that looks like a misspelt hook is a mistake."""
    for key in settings:
        close = difflib.get_close_matches(key, HOOKS, n=1, cutoff=0.85)
        if close:
            raise ConfigError(f"{file}: unknown config key: {key} (did you mean {close[0]}?)")


def _requires_argument(hook: Hook) -> bool:
    """True for connect(resource), the original's form; False for connect() or a class such as
    redis.Redis whose arguments all have defaults."""
    try:
        inspect.signature(hook).bind()
    except TypeError:
        return True
    except ValueError:  # no signature to read (some built-ins): call it as the simple form
        return False
    return False

# EOF
