"""Interfaces: the incoming side of a cage - the base class every protocol's interface
extends, and the manager that starts them and keeps them in step with their config.

`config_interface_<name>.py` names a `protocol` (its keys are read against the
protocol's schema, `keys`); the interface is built as
`pmnc.protocols.<protocol>.Interface(name, runtime, config)` and runs each
request through the one lifecycle (lifecycle.py; docs/protocols.md), usually
into `interface_<name>.process_request(...)`, looked up per request so it
hot-reloads. Lifecycle: start → cease (stop
intake, let in-flight requests finish) → stop. An interface whose config
file changes is restarted (if the new config fails, the old one keeps
serving until the file changes again); one that fails to start is logged
and tried again with a growing back-off (`InterfaceManager.failures`). A
live interface whose handler module is missing is logged loudly, once
each time it goes missing. A self-test starts the interfaces it needs itself
(`pmnc.self_test.active_interface`, through `add` / `remove`); `get(name)` finds
those as well as the configured ones.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, NamedTuple

from pmnc import log
from pmnc.config import Config, read_settings
from pmnc.errors import ConfigError, IntakeClosedError, ModuleError, RequestExpiredError, exc_string
from pmnc.loader import protocol_class
from pmnc.schema import INTERFACES_KEYS, Key, Schema, interface_file

if TYPE_CHECKING:
    from pmnc.runtime import Runtime


class Interface:
    """Base of every protocol's interface; subclasses override the lifecycle."""

    protocol = ""
    handler_module = True  # requests are handled by interface_<name>.process_request

    # the keys of config_interface_<name>.py (`protocol` is the manager's); a protocol extends them
    keys = Schema(request_timeout=Key(None, float))  # None: the cage's request_timeout

    def __init__(self, name: str, runtime: Runtime, config: dict[str, Any]) -> None:
        """Reads `config` against the protocol's `keys` into `self.config` (every key, defaults
        filled in), refusing unknown keys."""
        self.name, self.runtime = name, runtime
        self.handler = f"interface_{name}"  # the module whose process_request handles requests, if handler_module
        if type(self).keys is Interface.keys:  # a protocol without a schema (a cage's own) pops its keys itself
            timeout = Interface.keys.read({k: config.pop(k) for k in Interface.keys if k in config},
                                          interface_file(name))["request_timeout"]
            self.config = config
        else:
            self.config = type(self).keys.read(config, interface_file(name))
            timeout = self.config["request_timeout"]
        self.request_timeout: float = runtime.request_timeout if timeout is None else timeout

    def start(self) -> None:
        """Begin serving; raise if the interface cannot serve."""

    def cease(self) -> None:
        """Stop intake; requests in flight go on."""

    def stop(self) -> None:
        """Release everything; called after in-flight requests had their time."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class Outage:
    """What a polling or connected interface says of the server it cannot reach: an error when
    the outage begins; while it lasts, a warning for each new thing the server answered (back,
    but refusing the login, say); nothing for the attempts between; a line when it ends."""

    def __init__(self, interface: str) -> None:
        self.interface = interface
        self._reasons: set[str] | None = None  # while out of reach: the reasons said

    @property
    def ongoing(self) -> bool:
        return self._reasons is not None

    def begins(self, why: str, *, answered: bool = False, meanwhile: str = "trying again with back-off") -> None:
        if self._reasons is None:
            log.error(f"interface {self.interface}: {why}; {meanwhile}, nothing is lost meanwhile")
            self._reasons = {why}
        elif answered and why not in self._reasons:
            log.warning(f"interface {self.interface}: still out of reach: {why}")
            self._reasons.add(why)

    def ends(self, back: str) -> bool:
        """Log `back` if an outage was going on; whether one was."""
        was = self._reasons is not None
        if was:
            log.message(f"interface {self.interface}: {back}")
        self._reasons = None
        return was


def run_message(interface: Interface, description: str, item: Any, fn: Any, *args: Any, again: str) -> str | None:
    """For an interface that takes messages, acknowledging after success (pop3, file): `fn(*args)`
    for one `item` through the lifecycle, on this thread. None if it succeeded, else why not;
    "" if that was not the item's fault - the cage is stopping, or the deadline came while it
    waited in the queue (`item.started`, which `fn` sets, still False): not counted against it,
    it is taken `again` ("by a later poll")."""
    lifecycle = interface.runtime.lifecycle
    try:
        request = lifecycle.begin(interface=interface.name, protocol=interface.protocol,
                                  timeout=interface.request_timeout, parameters={"auth_tokens": {}},
                                  description=description)
    except IntakeClosedError:
        return ""
    try:
        lifecycle.call(request, fn, *args)
    except IntakeClosedError:
        return ""
    except RequestExpiredError as e:
        if not item.started:
            log.warning(f"{description} was not processed: {e}; it is taken again {again}")
            return ""
        log.warning(f"{description} processing failed: {e}")
        return f"the deadline: {e}"
    except Exception as e:
        log.warning(f"{description} processing failed: {exc_string(e)}")
        return exc_string(e, stack=False)
    return None


RETRY_FIRST, RETRY_MAX = 1.0, 60.0  # seconds before an interface that failed to start is tried again


class Failure(NamedTuple):
    """Why an interface is not serving: the last error, since when (time.time()), attempts so far."""

    error: str
    since: float
    attempts: int


class InterfaceManager:
    """Starts the configured interfaces and keeps them in step with their config."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.live: dict[str, tuple[Interface, int]] = {}  # name → (interface, config version)
        self.failures: dict[str, Failure] = {}  # configured interfaces that failed to start
        self.missing_handlers: set[str] = set()  # live interfaces whose handler module is missing
        self._retry: dict[str, tuple[float, int]] = {}  # name → (when to try again, config version tried)
        self.added: dict[str, Interface] = {}  # started by a self-test (active_interface), not configured

    def get(self, name: str) -> Interface | None:
        """The running interface `name`, configured or added by a self-test; None if there is none."""
        live = self.live.get(name)
        return live[0] if live is not None else self.added.get(name)

    def names(self) -> list[str]:
        """The running interfaces, configured and added by a self-test."""
        return [*self.live, *self.added]

    def add(self, name: str, interface: Interface) -> None:
        """Make a started `interface` findable by `get` until `remove(name)`."""
        if self.get(name) is not None:
            raise ValueError(f"interface {name} is already running")
        self.added[name] = interface

    def remove(self, name: str) -> None:
        """Cease an added interface, give its requests in flight their time, stop it."""
        interface = self.added.pop(name)
        self._cease(interface)
        self._finish(interface)

    def configured(self) -> tuple[str, ...]:
        return tuple(read_settings(self.runtime.loader, "interfaces", INTERFACES_KEYS)["interfaces"])

    def start_all(self) -> None:
        for name in self.configured():
            self._start(name)
        self._check_handlers()

    def status(self) -> str:
        """`2 interface(s) serving, 1 failed to start: http`, for the ready line."""
        text = f"{len(self.live)} interface(s) serving"
        if self.failures:
            text += f", {len(self.failures)} failed to start: {', '.join(self.failures)}"
        if self.missing_handlers:
            missing = sorted(self.missing_handlers)
            text += f", {len(missing)} without a handler module: {', '.join(missing)}"
        return text

    def reload(self) -> None:
        """Start added interfaces, stop removed ones, restart changed ones, retry failed ones."""
        try:
            wanted = self.configured()
        except (ModuleError, ConfigError) as e:
            log.error(f"config_interfaces.py cannot be used, interfaces left as they are: {e}")
            return
        for name in [n for n in self.live if n not in wanted]:
            log.message(f"stopping interface {name}, it is no longer configured")
            self._stop(name)
        for name in [n for n in self._retry if n not in wanted]:
            self._retry.pop(name)
            self.failures.pop(name, None)
        for name in wanted:
            version = self._config_version(name)
            if name in self.live:
                if version is not None and version != self.live[name][1]:
                    self._restart(name, version)
            elif version is not None and self._due(name, version):
                self._start(name)
        self._check_handlers()

    def _due(self, name: str, version: int) -> bool:
        """A failed interface is tried again after its back-off, or at once if its config changed."""
        retry = self._retry.get(name)
        return retry is None or retry[1] != version or time.monotonic() >= retry[0]

    def _check_handlers(self) -> None:
        """Say loudly, once each time, that a live interface's handler module has gone (or is back)."""
        for name, (interface, _) in self.live.items():
            module = f"interface_{name}"
            missing = interface.handler_module and self.runtime.loader.locate(module) is None
            if missing and name not in self.missing_handlers:
                self.missing_handlers.add(name)
                log.error(f"interface {name}: its handler module {module}.py is missing, "
                          f"every request will fail{self._until_restart(module)}")
            elif not missing and name in self.missing_handlers:
                self.missing_handlers.discard(name)
                log.message(f"interface {name}: its handler module {module}.py is there again")
        self.missing_handlers.intersection_update(self.live)

    def _until_restart(self, module: str) -> str:
        """A version loaded before the file went keeps serving (see loader): for how long."""
        try:
            return f" once the cage restarts (version {self.runtime.loader.version_number(module)} serves until then)"
        except ModuleError:
            return ""

    def _restart(self, name: str, version: int) -> None:
        """Swap in an interface built from its changed config. The old one
        stops taking requests first (freeing its port), and is stopped only
        after its requests in flight had their time."""
        log.message(f"restarting interface {name} due to configuration change")
        old, _ = self.live[name]
        try:
            new = self.create(name)
        except Exception as e:
            self.live[name] = (old, version)  # not retried until the file changes again
            log.error(f"interface {name} keeps its old configuration, the new one is refused: "
                      f"{exc_string(e, stack=False)}")
            return
        self._cease(old)
        del self.live[name]
        self._start(name, new)
        self._finish(old)

    def _config_version(self, name: str) -> int | None:
        try:
            return self.runtime.loader.version_number("config_interface_" + name)
        except ModuleError:
            return None

    def _start(self, name: str, interface: Interface | None = None) -> None:
        version = self._config_version(name) or 0
        try:
            interface = interface or self.create(name)
            interface.start()
        except Exception as e:
            self._failed(name, version, exc_string(e, stack=False))
            log.debug(f"interface {name} failed to start: {exc_string(e)}")
            return
        self._retry.pop(name, None)
        self.failures.pop(name, None)
        self.live[name] = (interface, version)
        log.message(f"interface {name} has started")

    def _failed(self, name: str, version: int, error: str) -> None:
        previous = self.failures.get(name)
        attempts = previous.attempts + 1 if previous else 1
        self.failures[name] = Failure(error, previous.since if previous else time.time(), attempts)
        delay = min(RETRY_FIRST * 2 ** (attempts - 1), RETRY_MAX)
        self._retry[name] = (time.monotonic() + delay, version)
        # the same text each time (but for numbers), so that the log folds the repeats
        log.error(f"interface {name} failed to start: {error}, next attempt in {delay:.0f}s")

    def create(self, name: str, overrides: dict[str, Any] | None = None) -> Interface:
        """Interface `name` built (not started) from config_interface_<name>.py with `overrides`
        winning; with overrides, the file may be missing (they then name the protocol)."""
        config: dict[str, Any] = {}
        if overrides is None or self.runtime.loader.locate("config_interface_" + name) is not None:
            config = Config(self.runtime.loader, "interface_" + name).copy()
        config.update(overrides or {})
        protocol = config.pop("protocol", None)
        if name == "performance" and protocol == "http" and self.runtime.loader.locate("interface_performance") is None:
            protocol = "performance"  # the original's file names plain http: its pages are built in here
        cls = protocol_class(self.runtime.loader, protocol, "Interface", Interface, f"interface {name}")
        return cls(name, self.runtime, config)

    def _stop(self, name: str) -> None:
        interface, _ = self.live.pop(name)
        self._cease(interface)
        self._finish(interface)

    def _finish(self, interface: Interface) -> None:
        """Give a ceased interface's requests in flight their time, then stop it."""
        left = self.runtime.intake.drain(interface.request_timeout, interface.name)
        if left:
            log.warning(f"interface {interface.name}: {left} request(s) did not finish "
                        f"within {interface.request_timeout:.1f}s")
        self._step(interface, "stop")

    def _cease(self, interface: Interface) -> None:
        self._step(interface, "cease")

    @staticmethod
    def _step(interface: Interface, step: str) -> None:
        try:
            getattr(interface, step)()
        except Exception as e:
            log.error(f"interface {interface.name} failed to {step}: {exc_string(e)}")

    def cease_all(self) -> None:
        for interface in [i for i, _ in self.live.values()] + list(self.added.values()):
            self._cease(interface)

    def stop_all(self) -> None:
        for interface in [i for i, _ in self.live.values()] + list(self.added.values()):
            self._step(interface, "stop")
        self.live.clear()
        self.added.clear()
