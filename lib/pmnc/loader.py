"""Cage modules: locate, load, hot-reload, and call into them.

Rules a cage module lives by:
- `name.py` in the cage folder overrides `name.py` in `cages/.shared`, per file.
- The file must hold a line `# EOF`; without it (a half-written file) it is
  not loaded. Only names in `__all__` not starting with `_` are reachable,
  and only functions (annotations enforced at call time) and classes.
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

import importlib.util
import os
import re
import sys
import threading
import time
import types
from collections.abc import Callable
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
    attrs: dict[str, Any]  # exported name → class or type-checked function
    reloadable: bool


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
        """(path, real module name) of the file spelt exactly `name.py`, the cage's first."""
        base = name + ".py"
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

    def call(self, name: str, attr: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """`pmnc.name.attr(*args, **kwargs)`, holding the module's lock shared
        so that a reload waits for this call to finish."""
        self.current(name)
        mod = self._modules[name]
        request = _request.current()
        if not mod.lock.acquire_shared(None if request.deadline is None else request.remain):
            raise ModuleAccessTimedOutError(f"request deadline waiting for module {name} being reloaded")
        try:
            version = mod.version
            assert version is not None
            return version_attr(version, attr)(*args, **kwargs)
        finally:
            mod.lock.release_shared()

    def version_number(self, name: str) -> int:
        return self.current(name).number

    # --- loading -------------------------------------------------------------

    def _first_load(self, name: str) -> ModuleVersion:
        if not MODULE_NAME.fullmatch(name) or name.startswith("_"):
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
        base = os.path.basename(path)
        try:
            with open(path, "rb") as f:
                source = f.read()
        except OSError as e:
            raise ModuleNotFoundError(f"file {base} cannot be read: {e}") from None
        if not any(line.rstrip() == _EOF for line in source.splitlines()):
            raise ModuleFileIncompleteError(f"file {base} is incomplete: it has no # EOF line")
        key = f"{CAGE_MODULES}.{name}"
        serving = sys.modules.get(key)
        module = self._new_module(key, name, path)
        try:
            try:
                exec(compile(source, path, "exec", dont_inherit=True), module.__dict__)
            except Exception as e:
                raise ModuleFileBrokenError(f"file {base} is broken: {exc_string(e, skip=1)}") from None
            exports = self._exports(name, module)
        except ModuleError:
            if serving is not None:
                sys.modules[key] = serving  # the version that keeps serving stays findable
            else:
                sys.modules.pop(key, None)
            raise
        return ModuleVersion(name, number, path, signature, module, exports,
                             bool(module.__dict__.get("__reloadable__", True)))

    def _new_module(self, key: str, name: str, path: str) -> types.ModuleType:
        # Registered under a name no real module has: dataclasses, pickle and
        # typing look classes' modules up in sys.modules, but `import name`
        # must not find cage code.
        spec = importlib.util.spec_from_file_location(key, path)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        module.__dict__.update(__node__=self.node, __cage__=self.cage, __cage_dir__=self.cage_dir,
                               __module__=name)
        if self.pmnc_factory is not None:
            module.__dict__["pmnc"] = self.pmnc_factory(name)
        sys.modules[key] = module
        return module

    def _exports(self, name: str, module: types.ModuleType) -> dict[str, Any]:
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
        attrs = {}
        for attr in names:
            if attr.startswith("_"):
                continue
            if attr not in module.__dict__:
                raise ModuleFileBrokenError(f"file {base} is broken: {attr} is in __all__ but not defined")
            attrs[attr] = self._exported(base, attr, module.__dict__[attr])
        return attrs

    @staticmethod
    def _exported(base: str, attr: str, value: Any) -> Any:
        if isinstance(value, type):
            return value
        if not callable(value):
            raise ModuleFileBrokenError(f"file {base} is broken: {attr} in __all__ is neither a class nor a function")
        try:
            return typecheck(value)
        except TypeCheckError as e:
            raise ModuleFileBrokenError(f"file {base} is broken: {e}") from None

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


def version_attr(version: ModuleVersion, attr: str) -> Any:
    """An exported attribute of a version, or a clear error saying why not."""
    try:
        return version.attrs[attr]
    except KeyError:
        pass
    if attr.startswith("_"):
        raise InvalidMethodAccessError(f"attribute {attr} of module {version.name} is private") from None
    raise InvalidMethodAccessError(f"attribute {attr} is not declared in __all__ of module {version.name}") from None


def _list_modules(folder: str) -> dict[str, str]:
    """The *.py files of `folder` as the directory spells them, each with the name of
    the module file it really is (a symlink's target's)."""
    found: dict[str, str] = {}
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.endswith(".py"):
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
            base = os.path.basename(os.fsdecode(path))
            if base.endswith(".py") and MODULE_NAME.fullmatch(base[:-3]):
                self.loader.file_changed(base[:-3])


T = TypeVar("T")


def protocol_class(loader: Loader, protocol: Any, kind: str, base: type[T], user: str) -> type[T]:
    """`pmnc.protocols.<protocol>.<kind>` (an Interface or a Resource), or the cage's own
    `protocol_<protocol>.py`, which wins: a cage can add or replace a protocol."""
    if not isinstance(protocol, str) or not protocol.isidentifier():
        raise ConfigError(f"{user} must name a protocol in its config file")
    if loader.locate(f"protocol_{protocol}") is not None:
        namespace = loader.current(f"protocol_{protocol}").module.__dict__
    else:
        try:
            namespace = importlib.import_module(f"pmnc.protocols.{protocol}").__dict__
        except ImportError:
            raise ConfigError(f"protocol {protocol!r} of {user} is not known") from None
    cls = namespace.get(kind)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"protocol {protocol!r} of {user} has no {kind.lower()} side")
    return cls
