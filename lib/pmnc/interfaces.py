"""Interfaces: the incoming side of a cage, and the intake of requests.

`config_interface_<name>.py` names a `protocol`; the interface is built as
`pmnc.protocols.<protocol>.Interface(name, cage, config)` and handles each
request through `interface_<name>.process_request(request, response)`,
looked up per request so it hot-reloads. Lifecycle: start → cease (stop
intake, let in-flight requests finish) → stop. An interface whose config
file changes is restarted; one that fails to start is logged and skipped.
"""

from __future__ import annotations

import importlib
import threading
from typing import TYPE_CHECKING, Any

from pmnc import log
from pmnc.config import Config
from pmnc.errors import ConfigError, IntakeClosedError, InterfaceError, ModuleError, exc_string
from pmnc.request import Request

if TYPE_CHECKING:
    from pmnc.cage import Cage


class Interface:
    """Base of every protocol's interface; subclasses override the lifecycle."""

    protocol = ""

    def __init__(self, name: str, cage: Cage, config: dict[str, Any]) -> None:
        self.name, self.cage = name, cage
        self.request_timeout = float(config.pop("request_timeout", cage.request_timeout))
        self.config = config

    def start(self) -> None:
        """Begin serving; raise if the interface cannot serve."""

    def cease(self) -> None:
        """Stop intake; requests in flight go on."""

    def stop(self) -> None:
        """Release everything; called after in-flight requests had their time."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class Intake:
    """Counts requests in flight; once closed, no request can begin."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._open = False

    def open(self) -> None:
        with self._cond:
            self._open = True

    def begin(self, **kwargs: Any) -> Request:
        with self._cond:
            if not self._open:
                raise IntakeClosedError("request cannot begin, request factory has been shut down")
            self._active += 1
        return Request(**kwargs)

    def end(self) -> None:
        with self._cond:
            self._active -= 1
            if not self._active:
                self._cond.notify_all()

    def close(self) -> int:
        with self._cond:
            self._open = False
            return self._active

    def drain(self, timeout: float) -> int:
        """Wait up to `timeout` for requests in flight; returns how many remain."""
        with self._cond:
            self._cond.wait_for(lambda: not self._active, timeout)
            return self._active

    @property
    def active(self) -> int:
        return self._active


class InterfaceManager:
    """Starts the configured interfaces and keeps them in step with their config."""

    def __init__(self, cage: Cage) -> None:
        self.cage = cage
        self.live: dict[str, tuple[Interface, int]] = {}  # name → (interface, config version)
        self._failed: dict[str, int] = {}  # name → config version that failed to start

    def configured(self) -> tuple[str, ...]:
        names = Config(self.cage.loader, "interfaces").get("interfaces", ())
        return tuple(names)

    def start_all(self) -> None:
        for name in self.configured():
            self._start(name)

    def reload(self) -> None:
        """Start added interfaces, stop removed ones, restart changed ones."""
        try:
            wanted = self.configured()
        except (ModuleError, ConfigError) as e:
            log.error(f"config_interfaces.py cannot be used, interfaces left as they are: {e}")
            return
        for name in [n for n in self.live if n not in wanted]:
            log.message(f"stopping interface {name}, it is no longer configured")
            self._stop(name)
        for name in wanted:
            version = self._config_version(name)
            if name in self.live:
                if version is not None and version != self.live[name][1]:
                    log.message(f"restarting interface {name} due to configuration change")
                    self._stop(name)
                    self._start(name)
            elif version is not None and self._failed.get(name) != version:
                self._start(name)

    def _config_version(self, name: str) -> int | None:
        try:
            return self.cage.loader.version_number("config_interface_" + name)
        except ModuleError:
            return None

    def _start(self, name: str) -> None:
        version = self._config_version(name) or 0
        try:
            interface = self._create(name)
            interface.start()
        except Exception as e:
            self._failed[name] = version
            log.error(f"interface {name} failed to start: {exc_string(e, stack=False)}")
            log.debug(f"interface {name} failed to start: {exc_string(e)}")
            return
        self._failed.pop(name, None)
        self.live[name] = (interface, version)
        log.message(f"interface {name} has started")

    def _create(self, name: str) -> Interface:
        config = Config(self.cage.loader, "interface_" + name).copy()
        protocol = config.pop("protocol", None)
        if not isinstance(protocol, str) or not protocol.isidentifier():
            raise InterfaceError(f"config_interface_{name}.py must name a protocol")
        try:
            module = importlib.import_module(f"pmnc.protocols.{protocol}")
        except ImportError:
            raise InterfaceError(f"protocol {protocol!r} of interface {name} is not known") from None
        interface: Interface = module.Interface(name, self.cage, config)
        return interface

    def _stop(self, name: str) -> None:
        interface, _ = self.live.pop(name)
        for step in (interface.cease, interface.stop):
            try:
                step()
            except Exception as e:
                log.error(f"interface {name} failed to {step.__name__}: {exc_string(e)}")

    def cease_all(self) -> None:
        for name, (interface, _) in self.live.items():
            try:
                interface.cease()
            except Exception as e:
                log.error(f"interface {name} failed to cease: {exc_string(e)}")

    def stop_all(self) -> None:
        for name, (interface, _) in list(self.live.items()):
            try:
                interface.stop()
            except Exception as e:
                log.error(f"interface {name} failed to stop: {exc_string(e)}")
        self.live.clear()
