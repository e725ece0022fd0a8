"""Cage modules: locate, load, hot-reload, and call into them.

Rules a cage module lives by:
- `name.py` in the cage folder overrides `name.py` in `cages/.shared`, per file.
- The file must hold a line `# EOF`; without it (a half-written file) it is
  not loaded (a compiled `name.pyc` needs none, and a `name.py` wins over it).
  Only names in `__all__` not starting with `_` are reachable, and only functions
  (annotations enforced at call time) and classes; a name in `__all__` that is
  neither fails where it is used. `__get_module_attr__` in `__all__` answers
  other names.
- As in the original: `__name__` is the bare module name; a function declaring the
  keyword-only `__source_module_name` / `__call_attributes` gets the caller's module
  name / the attributes after its own (`pmnc.m.f.a.b()` → ["a", "b"]); a caller's
  `__module_properties={}` gets {"version": N}; instances of exported classes carry
  `__containing_module__`; a module `__module_loader__` may substitute the file to load
  (`before_reload`) and is told of each load (`after_reload`).
- Other modules reach it as `pmnc.name.func(...)` (facade.py: the `pmnc` object is
  made for each module by the factory the runtime gives the loader), resolved at each
  call through `Loader.call`, so circular calls work and every call sees the current
  version.

A name resolves only to a file spelt exactly `name.py` in the folder's
listing (on a case-insensitive file system `Config_x` must not reach
`config_x.py`); `file_name` says what file a name really is, through a
symlink, for checks such as `deny_modules`. A name with no file leaves
nothing behind, so callers cannot grow the loader's maps with made-up names.

Reloading: watchdog reports a changed file; after a short settle time the
reloader thread builds the new version *outside* any lock, then takes the
module's writer-priority lock to swap it in once calls in flight on the old
code have finished. A broken new version is logged and the old one keeps
serving; `__reloadable__ = False` opts a module out.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import marshal
import os
import re
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from pmnc import log
from pmnc import request as _request
from pmnc.errors import (
    ConfigError,
    InvalidMethodAccessError,
    InvalidModuleNameError,
    ModuleAccessTimedOutError,
    ModuleError,
    ModuleFileBrokenError,
    ModuleFileIncompleteError,
    ModuleNotFoundError,
    TypeCheckError,
    exc_string,
)
from pmnc.rwlock import SharedLock
from pmnc.typecheck import typecheck

CAGE_MODULES = "pmnc.cage_modules"  # the sys.modules prefix of cage modules
MODULE_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")
_EOF = b"# EOF"
_EXTENSIONS = (".py", ".pyc")  # in this order: name.py in .shared wins over name.pyc in the cage
HOOKS = "__module_loader__"  # the module whose before_reload/after_reload see every other load
INJECTED = ("__source_module_name", "__call_attributes")  # keyword-only parameters the loader fills
MISSING_FOR = 1.0  # seconds a missing file is taken to stay missing, unless a file event says otherwise

Signature = tuple[str, int, int, int]  # path, mtime_ns, size, inode


@dataclass
class ModuleVersion:
    """One loaded version of a module and its reachable attributes."""

    name: str
    number: int
    path: str
    signature: Signature
    module: types.ModuleType
    attrs: dict[str, Any]  # exported name → class factory or type-checked function, or why it cannot be
    reloadable: bool
    injected: dict[str, frozenset[str]] = field(default_factory=dict)  # function → INJECTED names it declares
    dynamic: Callable[..., Any] | None = None  # __get_module_attr__, when in __all__
    loaded_at: float = field(default_factory=time.time)  # when this version was built (the performance page)


class _Unusable:
    """A name in `__all__` that cannot be called: the error is raised where it is used."""

    def __init__(self, error: ModuleError) -> None:
        self.error = error


@dataclass
class CageModule:
    """Everything the loader keeps about one module name across versions."""

    name: str
    lock: SharedLock = field(default_factory=SharedLock)
    load_lock: threading.Lock = field(default_factory=threading.Lock)
    version: ModuleVersion | None = None
    # The signature of a file that failed to load, and why: not retried until it changes.
    refused: tuple[Signature, ModuleError] | None = None


class Loader:
    """Finds, loads and reloads the modules of one cage."""

    def __init__(self, cages_dir: str, cage: str, node: str, *, self_test: str | None = None,
                 settle: float = 0.1, settle_max: float = 1.0, swap_timeout: float = 10.0) -> None:
        self.cage, self.node = cage, node
        self.cage_dir = os.path.join(cages_dir, cage)
        self.shared_dir = os.path.join(cages_dir, ".shared")
        self.self_test = self_test
        self.settle, self.settle_max = settle, settle_max
        self.swap_timeout = swap_timeout  # how long a reload waits for calls in flight
        self._modules: dict[str, CageModule] = {}  # only names that have, or had, a file
        self._missing: dict[str, float] = {}  # name asked for `cached` → when its file was last found missing
        self._listings: dict[str, dict[str, str]] = {}  # folder → its *.py files → the module each really is
        self._file_names: dict[str, str] = {}  # name → file_name(name), for names that have a file
        self._listed = 0  # bumped by every file event: a file name found before it is not kept
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[float, float]] = {}  # name → (first, last) event time
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._observer: BaseObserver | None = None
        self._reloader: threading.Thread | None = None
        # the `pmnc` global of each module, by its name (facade.Pmnc, given by the runtime)
        self.pmnc_factory: Callable[[str], object] | None = None

    # --- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Begin watching the cage and .shared folders for changed files."""
        self._observer = Observer()
        handler = _FileEvents(self)
        for folder in (self.cage_dir, self.shared_dir):
            if os.path.isdir(folder):
                self._observer.schedule(handler, folder, recursive=False)
        self._observer.daemon = True
        self._observer.start()
        self._reloader = threading.Thread(target=self._reload_loop, name="reloader", daemon=True)
        self._reloader.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=3.0)
        if self._reloader is not None:
            self._reloader.join(timeout=3.0)

    # --- location ------------------------------------------------------------

    def locate(self, name: str, *, cached: bool = False) -> str | None:
        """The file of module `name`: the cage's own copy, else the shared one.

        `cached`: a file found missing is taken to stay missing for MISSING_FOR seconds
        (or until a file event names it) - for optional modules asked for at every
        turn, such as config_config."""
        missing_since = self._missing.get(name) if cached else None
        if missing_since is not None and time.monotonic() - missing_since < MISSING_FOR:
            return None
        found = self._find(name)
        if found is not None:
            self._missing.pop(name, None)
            return found[0]
        if cached:  # only the few names the framework asks for so: made-up ones leave nothing
            self._missing[name] = time.monotonic()
        return None

    def file_name(self, name: str) -> str:
        """The name of the module file `name` resolves to: through a symlink, its target's;
        `name` itself if it has no file."""
        known = self._file_names.get(name)
        if known is not None:
            return known
        if not MODULE_NAME.fullmatch(name):
            return name
        listed = self._listed
        found = self._find(name)
        if found is None:
            return name
        if listed == self._listed:  # no file event meanwhile: still true
            self._file_names[name] = found[1]
        return found[1]

    def _find(self, name: str) -> tuple[str, str] | None:
        """(path, real module name) of the file spelt exactly `name.py` (else `name.pyc`),
        the cage's first."""
        for extension in _EXTENSIONS:
            base = name + extension
            for folder in (self.cage_dir, self.shared_dir):
                path = os.path.join(folder, base)
                if not os.path.isfile(path):  # cheap, and enough for names that have no file at all
                    continue
                listing = self._listings.get(folder)
                if listing is None or base not in listing:  # new since listed, or another spelling
                    listing = self._listings[folder] = _list_modules(folder)
                real = listing.get(base)
                if real is not None:
                    return path, real
        return None

    # --- access --------------------------------------------------------------

    def current(self, name: str) -> ModuleVersion:
        """The version now serving, loading the module on first use."""
        mod = self._modules.get(name)
        if mod is not None and mod.version is not None:
            return mod.version
        return self._first_load(name)

    def call(self, name: str, attr: str, args: tuple[Any, ...], kwargs: dict[str, Any],
             source: str | None = None, attributes: tuple[str, ...] = ()) -> Any:
        """`pmnc.name.attr(*args, **kwargs)` (from module `source`; `pmnc.name.attr.a.b(...)`
        has `attributes` ("a", "b")), holding the module's lock shared so that a reload
        waits for this call to finish."""
        mod = self._modules.get(name)
        if mod is None or mod.version is None:
            self._first_load(name)
            mod = self._modules[name]
        if not mod.lock.acquire_shared(0.0):  # a reload is waiting or under way: wait within the deadline
            request = _request.current()
            if not mod.lock.acquire_shared(None if request.deadline is None else request.remain):
                raise ModuleAccessTimedOutError(f"request deadline waiting for module {name} being reloaded")
        try:
            version = mod.version
            assert version is not None
            function = version.attrs.get(attr)
            if function is None or type(function) is _Unusable:
                function = version_attr(version, attr, source)  # dynamic, or the error saying why not
            if attributes or attr in version.injected or (kwargs and "__module_properties" in kwargs):
                return _call_the_originals_way(version, attr, function, args, kwargs, source, attributes)
            return function(*args, **kwargs) if kwargs else function(*args)
        finally:
            mod.lock.release_shared()

    def version_number(self, name: str) -> int:
        return self.current(name).number

    def loaded(self) -> list[tuple[str, int, float]]:
        """(name, version number, when that version was loaded) of each module serving now,
        by name; read only (the performance page), nothing is loaded."""
        with self._lock:
            modules = list(self._modules.values())
        serving = [(mod.name, mod.version) for mod in modules]
        return sorted((name, v.number, v.loaded_at) for name, v in serving if v is not None)

    # --- loading -------------------------------------------------------------

    def _first_load(self, name: str) -> ModuleVersion:
        # a name with a leading _ is nobody's to call, but the hooks' file is the loader's own to load
        if not MODULE_NAME.fullmatch(name) or (name.startswith("_") and name != HOOKS):
            raise InvalidModuleNameError(f"module name {name!r} is invalid")
        while True:
            with self._lock:
                mod = self._modules.setdefault(name, CageModule(name))
            if not _request.current().acquire(mod.load_lock):
                raise ModuleAccessTimedOutError(f"request deadline waiting for module {name} to load")
            try:
                if self._modules.get(name) is mod:  # else forgotten while we waited: take the new one
                    return self._load_first(mod)
            finally:
                mod.load_lock.release()

    def _load_first(self, mod: CageModule) -> ModuleVersion:
        """Version 1 of `mod`, holding its load lock."""
        name = mod.name
        if mod.version is not None:
            return mod.version
        path = self.locate(name)
        if path is None:
            self._forget(mod)
            raise ModuleNotFoundError(f"file {name}.py was not found")
        signature = _signature(path)
        if mod.refused is not None and mod.refused[0] == signature:
            error = mod.refused[1]
            raise type(error)(*error.args)
        try:
            mod.version = self._load(name, path, signature, 1)
        except ModuleError as e:
            mod.refused = (signature, e)
            raise
        log.message(f"module {name} has been loaded from {path}")
        if _signature(path) != signature:
            self.file_changed(name)  # saved again while we were loading it
        return mod.version

    def _forget(self, mod: CageModule) -> None:
        """A name without a file keeps no entry: made-up names must not add up."""
        with self._lock:
            if self._modules.get(mod.name) is mod and mod.version is None:
                del self._modules[mod.name]

    def _load(self, name: str, path: str, signature: Signature, number: int) -> ModuleVersion:
        """Build a version from the file; raises ModuleError if it cannot serve."""
        path = self._before_reload(name, path)
        base = os.path.basename(path)
        code = _compiled(path, base)
        key = f"{CAGE_MODULES}.{name}"
        serving = sys.modules.get(key)
        module = self._new_module(key, name, path)
        facade = module.__dict__.get("pmnc")
        try:
            try:
                with _findable_as(name, module):
                    exec(code, module.__dict__)
            except Exception as e:
                raise ModuleFileBrokenError(f"file {base} is broken: {exc_string(e, skip=1)}") from None
            if facade is not None:  # `import pmnc.resource_pool` (the original's idiom) rebinds the name
                module.__dict__["pmnc"] = facade
            _registered_as(module, name, key)
            version = ModuleVersion(name, number, path, signature, module, {},
                                    bool(module.__dict__.get("__reloadable__", True)))
            self._exports(version)
        except ModuleError:
            if serving is not None:
                sys.modules[key] = serving  # the version that keeps serving stays findable
            else:
                sys.modules.pop(key, None)
            raise
        self._after_reload(name, module)
        return version

    def _new_module(self, key: str, name: str, path: str) -> types.ModuleType:
        # Registered under a name no real module has: dataclasses, pickle and
        # typing look classes' modules up in sys.modules, but `import name`
        # must not find cage code. Its code sees the bare name, as in the original.
        spec = importlib.util.spec_from_file_location(key, path)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        module.__dict__.update(__name__=name, __node__=self.node, __cage__=self.cage,
                               __cage_dir__=self.cage_dir, __module__=name)
        if self.pmnc_factory is not None:
            module.__dict__["pmnc"] = self.pmnc_factory(name)
        sys.modules[key] = module
        return module

    # --- the __module_loader__ hooks -------------------------------------------------

    def _hooks(self, name: str) -> ModuleVersion | None:
        if name == HOOKS or self.locate(HOOKS, cached=True) is None:
            return None
        return self.current(HOOKS)

    def _before_reload(self, name: str, path: str) -> str:
        """The file to load for `name`: `path`, or what __module_loader__.before_reload says."""
        hooks = self._hooks(name)
        hook = hooks.module.__dict__.get("before_reload") if hooks is not None else None
        if hook is None:
            return path
        try:
            chosen = hook(name, path, path)
        except Exception as e:
            raise ModuleFileBrokenError(f"{HOOKS}.before_reload refused module {name}: {exc_string(e)}") from None
        return chosen if isinstance(chosen, str) and chosen else path

    def _after_reload(self, name: str, module: types.ModuleType) -> None:
        hooks = self._hooks(name)
        hook = hooks.module.__dict__.get("after_reload") if hooks is not None else None
        if hook is not None:
            try:
                hook(module)
            except Exception as e:  # the original ignored these too: the module has loaded
                log.error(f"{HOOKS}.after_reload failed for module {name}: {exc_string(e)}")

    def _exports(self, version: ModuleVersion) -> None:
        """Fill the version's reachable attributes from `__all__`."""
        name, module = version.name, version.module
        base = os.path.basename(module.__file__ or name)
        names = module.__dict__.get("__all__")
        if names is None:
            names = []
            if not name.startswith("config_"):
                log.warning(f"file {base} has no __all__: nothing in it can be called")
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise ModuleFileBrokenError(f"file {base} is broken: __all__ must be a list of strings")
        names = list(names)
        if self.self_test == name and "self_test" not in names:
            names.append("self_test")
        if "__get_module_attr__" in names:
            version.dynamic = _dynamic_lookup(base, module.__dict__.get("__get_module_attr__"))
        for attr in names:
            if attr.startswith("_"):
                continue
            if attr not in module.__dict__:
                version.attrs[attr] = _Unusable(InvalidMethodAccessError(
                    f"attribute {attr} is in __all__ of module {name} but not defined"))
                continue
            version.attrs[attr] = _exported(version, base, attr, module.__dict__[attr])

    # --- reloading -----------------------------------------------------------

    def file_changed(self, name: str) -> None:
        """A file event for `name.py`: reload it after the settle time."""
        self._missing.pop(name, None)
        with self._lock:
            self._listed += 1
            self._listings.clear()  # a file may have come, gone or been replaced by a symlink
            self._file_names.clear()
            mod = self._modules.get(name)
            if mod is None or mod.version is None:
                return  # not in use: it loads fresh on first access
            now = time.monotonic()
            first, _ = self._pending.get(name, (now, now))
            self._pending[name] = (first, now)
            self._wake.notify()

    def _due(self) -> list[str]:
        """Wait for names whose files have settled (quiet, or waited long enough)."""
        with self._lock:
            while not self._stopping:
                now = time.monotonic()
                due = [n for n, (first, last) in self._pending.items()
                       if now - last >= self.settle or now - first >= self.settle_max]
                if due:
                    for n in due:
                        del self._pending[n]
                    return due
                wait = min((min(last + self.settle, first + self.settle_max) - now
                            for first, last in self._pending.values()), default=None)
                self._wake.wait(wait)
            return []

    def _reload_loop(self) -> None:
        while not self._stopping:
            for name in self._due():
                try:
                    self._reload(name)
                except Exception as e:  # the reloader must outlive any one module
                    log.error(f"reloading module {name} failed: {exc_string(e)}")

    def _reload(self, name: str) -> None:
        mod = self._modules[name]
        old = mod.version
        assert old is not None
        path = self.locate(name)
        if path is None:
            log.warning(f"file {name}.py has been removed, version {old.number} keeps serving")
            return
        signature = _signature(path)
        if signature == old.signature or (mod.refused is not None and mod.refused[0] == signature):
            return
        if not old.reloadable:
            log.warning(f"module {name} is not reloadable, restart the cage to use the changed file")
            return
        log.message(f"reloading module {name} from {path}")
        try:
            new = self._load(name, path, signature, old.number + 1)
        except ModuleError as e:
            mod.refused = (signature, e)
            log.error(f"module {name} version {old.number + 1} refused, version {old.number} keeps serving: {e}")
            return
        self._swap(mod, new)

    def _swap(self, mod: CageModule, new: ModuleVersion) -> None:
        if not mod.lock.acquire_exclusive(self.swap_timeout):
            log.warning(f"module {mod.name} not reloaded: calls in flight did not finish within "
                        f"{self.swap_timeout:.1f}s, will retry")
            self.file_changed(mod.name)
            return
        try:
            mod.version, mod.refused = new, None
        finally:
            mod.lock.release_exclusive()
        log.message(f"module {mod.name} has been reloaded (version {new.number})")


def version_attr(version: ModuleVersion, attr: str, source: str | None = None) -> Any:
    """An exported attribute of a version, or a clear error saying why not. `source`:
    the calling module, for `__get_module_attr__`."""
    found = version.attrs.get(attr)
    if found is not None:
        if isinstance(found, _Unusable):
            raise type(found.error)(*found.error.args)
        return found
    if attr.startswith("_"):
        raise InvalidMethodAccessError(f"attribute {attr} of module {version.name} is private")
    if version.dynamic is not None:
        return _looked_up(version, attr, source)
    raise InvalidMethodAccessError(f"attribute {attr} is not declared in __all__ of module {version.name}")


def _exported(version: ModuleVersion, base: str, attr: str, value: Any) -> Any:
    """A class as a factory whose instances know their module, a function type-checked
    (a bad annotation is a broken file), anything else an _Unusable."""
    if isinstance(value, type):
        return _factory(value, version.module)
    if not callable(value):
        return _Unusable(InvalidMethodAccessError(
            f"attribute {attr} in module {version.name} is neither a class nor a function"))
    injected = _injected(value)
    if injected:
        version.injected[attr] = injected
    try:
        return typecheck(value)
    except TypeCheckError as e:
        raise ModuleFileBrokenError(f"file {base} is broken: {e}") from None


def _factory(cls: type, module: types.ModuleType) -> Any:
    """What `pmnc.m.Class` is: the class itself, its instances marked with `__containing_module__`
    (set on the class: an instance with __slots__ could take no attribute of its own)."""
    if cls.__dict__.get("__containing_module__") is not module:
        try:
            cls.__containing_module__ = module  # type: ignore[attr-defined]
        except TypeError:  # a built-in type re-exported: nothing to mark
            pass
    return cls


def _injected(function: Any) -> frozenset[str]:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return frozenset()
    return frozenset(n for n in INJECTED if n in parameters and parameters[n].kind is inspect.Parameter.KEYWORD_ONLY)


def _call_the_originals_way(version: ModuleVersion, attr: str, function: Callable[..., Any], args: tuple[Any, ...],
                            kwargs: dict[str, Any], source: str | None, attributes: tuple[str, ...]) -> Any:
    """A call with what the original's loader added: the injected keyword arguments the
    function declares, and a caller's `__module_properties` dict told the version."""
    properties = kwargs.pop("__module_properties", None) if "__module_properties" in kwargs else None
    injected = version.injected.get(attr)
    if injected or attributes:
        kwargs = _inject(version, attr, injected or frozenset(), kwargs, source, attributes)
    try:
        return function(*args, **kwargs)
    finally:
        if isinstance(properties, dict):
            properties["version"] = version.number


def _inject(version: ModuleVersion, attr: str, injected: frozenset[str], kwargs: dict[str, Any],
            source: str | None, attributes: tuple[str, ...]) -> dict[str, Any]:
    if attributes and "__call_attributes" not in injected:
        raise InvalidMethodAccessError(f"method {attr} of module {version.name} does not take "
                                       f"call attributes (.{'.'.join(attributes)})")
    kwargs = dict(kwargs)
    if "__source_module_name" in injected:
        kwargs["__source_module_name"] = source or "__framework__"
    if "__call_attributes" in injected:
        kwargs["__call_attributes"] = list(attributes)
    return kwargs


def _dynamic_lookup(base: str, function: Any) -> Callable[..., Any]:
    if not inspect.isfunction(function):
        raise ModuleFileBrokenError(f"file {base} is broken: __get_module_attr__ in __all__ is not a function")
    return function


def _looked_up(version: ModuleVersion, attr: str, source: str | None) -> Any:
    """`__get_module_attr__(attr, __source_module_name=source)`, asked at every call (the
    original kept the first answer for every caller); its answer follows the rules of
    `__all__`."""
    assert version.dynamic is not None
    value = version.dynamic(attr, __source_module_name=source or "__framework__")
    base = os.path.basename(version.path)
    found = _exported(version, base, attr, value)
    if isinstance(found, _Unusable):
        raise type(found.error)(*found.error.args)
    return found


@contextlib.contextmanager
def _findable_as(name: str, module: types.ModuleType) -> Iterator[None]:
    """While the body runs, sys.modules[name] is the module - dataclasses look a class's
    module up by the name its code saw - unless a real module has that name (which the
    code then cannot mean)."""
    if name in sys.modules or importlib.util.find_spec(name) is not None:
        yield
        return
    sys.modules[name] = module
    try:
        yield
    finally:
        if sys.modules.get(name) is module:
            del sys.modules[name]


def _registered_as(module: types.ModuleType, name: str, key: str) -> None:
    """Classes and functions the module defined name it by its sys.modules key (the code
    saw the bare name), so pickle, dataclasses and typing find their module."""
    for value in list(module.__dict__.values()):
        if isinstance(value, (type, types.FunctionType)) and getattr(value, "__module__", None) == name:
            try:
                value.__module__ = key
            except (AttributeError, TypeError):
                pass


def _compiled(path: str, base: str) -> types.CodeType:
    """The code of a module file: source with its `# EOF` line, or a compiled .pyc."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ModuleNotFoundError(f"file {base} cannot be read: {e}") from None
    if path.endswith(".pyc"):
        if data[:4] != importlib.util.MAGIC_NUMBER or len(data) < 16:
            raise ModuleFileBrokenError(f"file {base} is broken: not compiled by this version of Python")
        try:
            code = marshal.loads(data[16:])
        except (ValueError, EOFError, TypeError) as e:
            raise ModuleFileBrokenError(f"file {base} is broken: {e}") from None
        if not isinstance(code, types.CodeType):
            raise ModuleFileBrokenError(f"file {base} is broken: it holds no module code")
        return code
    if not any(line.rstrip() == _EOF for line in data.splitlines()):
        raise ModuleFileIncompleteError(f"file {base} is incomplete: it has no # EOF line")
    try:
        return compile(data, path, "exec", dont_inherit=True)
    except Exception as e:
        raise ModuleFileBrokenError(f"file {base} is broken: {exc_string(e, skip=1)}") from None


def _list_modules(folder: str) -> dict[str, str]:
    """The *.py files of `folder` as the directory spells them, each with the name of
    the module file it really is (a symlink's target's)."""
    found: dict[str, str] = {}
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.endswith(_EXTENSIONS):
                    real = os.path.realpath(entry.path) if entry.is_symlink() else entry.name
                    found[entry.name] = os.path.splitext(os.path.basename(real))[0]
    except OSError:
        pass
    return found


def _signature(path: str) -> Signature:
    try:
        st = os.stat(path)
    except OSError:
        return (path, 0, 0, 0)
    return (path, st.st_mtime_ns, st.st_size, st.st_ino)


class _FileEvents(FileSystemEventHandler):
    def __init__(self, loader: Loader) -> None:
        self.loader = loader

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write") or event.is_directory:
            return
        for path in (event.src_path, getattr(event, "dest_path", "")):
            stem, extension = os.path.splitext(os.path.basename(os.fsdecode(path)))
            if extension in _EXTENSIONS and MODULE_NAME.fullmatch(stem):
                self.loader.file_changed(stem)


T = TypeVar("T")


# The original's protocol names for what pmnc's protocols are now (a config file written for
# the original names its driver): the pmnc protocol, and the prefix of its class there.
PROTOCOL_ALIASES = {"postgresql_psycopg": ("postgresql", ""), "postgresql_pg8000": ("postgresql", ""),
                    "oracle_cx": ("oracle", "Sid")}  # oracle.SidResource: `database` is a SID
# ... and those that are two of pmnc's, one per side: "email" was a POP3 interface and an SMTP resource.
PROTOCOL_SIDES = {("email", "Interface"): "pop3", ("email", "Resource"): "smtp"}

# The original's protocols pmnc does not have, with what to do instead.
_OWN_FILE = ("write a protocol_{p}.py of the cage's own (in its folder or .shared) with a {kind} class, "
             "see docs/protocols.md")
PROTOCOLS_NOT_SHIPPED = {
    "mysql_pymysql": "pmnc has no MySQL resource: " + _OWN_FILE,
    "sqlserver_adodb": "pmnc has no SQL Server resource: " + _OWN_FILE,
    "tcp": "pmnc does not ship it: " + _OWN_FILE,
    "state": "the state resource is built in: use xa.state / pmnc.transaction.state with no config file",
}


def protocol_class(loader: Loader, protocol: Any, kind: str, base: type[T], user: str) -> type[T]:
    """`pmnc.protocols.<protocol>.<kind>` (an Interface or a Resource), or the cage's own
    `protocol_<protocol>.py`, which wins: a cage can add or replace a protocol. The
    original's names of pmnc's protocols (PROTOCOL_ALIASES) name them too."""
    if not isinstance(protocol, str) or not protocol.isidentifier():
        raise ConfigError(f"{user} must name a protocol in its config file")
    prefix = ""
    if loader.locate(f"protocol_{protocol}") is not None:
        namespace = loader.current(f"protocol_{protocol}").module.__dict__
    elif protocol in PROTOCOLS_NOT_SHIPPED:
        raise ConfigError(f"protocol {protocol!r} of {user} is one of the original's that pmnc does not have: "
                          f"{PROTOCOLS_NOT_SHIPPED[protocol].format(p=protocol, kind=kind)}")
    else:
        module, prefix = PROTOCOL_ALIASES.get(protocol, (PROTOCOL_SIDES.get((protocol, kind), protocol), ""))
        try:
            namespace = importlib.import_module(f"pmnc.protocols.{module}").__dict__
        except ImportError:
            raise ConfigError(f"protocol {protocol!r} of {user} is not known") from None
    cls = namespace.get(prefix + kind)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"protocol {protocol!r} of {user} has no {kind.lower()} side")
    return cls
