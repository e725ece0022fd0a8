"""The `revrpc` interface: a cage behind a firewall fetches calls from cages it can reach.

    config = dict(protocol="revrpc", source_cages=("dmz",), request_timeout=10.0)

One poller thread per source cage long-polls it (over the same mutual TLS
connections as any call, pool `rpc__<source>`) for calls made there with
`pmnc("<this cage>:reverse").m.f(...)`, runs each as the caller's request
(its id, log levels, the time it has left less a margin; rpc/callee.py) through
the one request lifecycle (lifecycle.py, `submit`) and posts the answer back.
A failed poll is retried after `retry_interval`.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import TYPE_CHECKING, Any

from pmnc import interfaces, log
from pmnc.errors import ConfigError, IntakeClosedError, exc_string
from pmnc.lifecycle import Outcome
from pmnc.monitor.health import headline
from pmnc.request import Request, attached
from pmnc.rpc import wire
from pmnc.rpc.callee import Callee
from pmnc.rpc.calls import CageLink
from pmnc.rpc.identity import CAGE_NAME
from pmnc.schema import Key, names

if TYPE_CHECKING:
    from pmnc.runtime import Runtime

POLL_TIMEOUT = 10.0  # each poll's request, as the original's
OUTAGE_LOG_PERIOD = 60.0  # seconds between log lines while a source cannot be polled


class Interface(interfaces.Interface):
    protocol = "revrpc"
    handler_module = False  # no interface_<name>.py: calls go to the modules they name

    keys = interfaces.Interface.keys.extend(
        source_cages=Key((), names),  # the cages to poll for reverse calls
        retry_interval=Key(1.0, float),  # seconds before a failed poll is tried again
        deny_modules=Key((), names),  # fnmatch patterns of modules the source cages may not call
    )

    def __init__(self, name: str, runtime: Runtime, config: dict[str, Any]) -> None:
        super().__init__(name, runtime, config)
        self.sources: tuple[str, ...] = self.config["source_cages"]
        if not self.sources or not all(CAGE_NAME.fullmatch(s) for s in self.sources):
            raise ConfigError(f"config_interface_{name}.py: source_cages must name the cages to poll")
        self.retry_interval: float = self.config["retry_interval"]
        self.deny_modules: tuple[str, ...] = self.config["deny_modules"]
        self.stopping = threading.Event()
        self.links = {source: CageLink(runtime.transactions, source) for source in self.sources}
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        self.lifecycle = self.runtime.lifecycle
        self.callee = Callee(self.lifecycle, cage=self.runtime.name, interface=self.name, protocol=self.protocol,
                             request_timeout=self.request_timeout, deny_modules=self.deny_modules,
                             headline=functools.partial(headline, self.runtime))
        for source in self.sources:
            thread = threading.Thread(target=self._poll_loop, args=(source,), name=f"{self.name}:{source}",
                                      daemon=True)
            thread.start()
            self.threads.append(thread)
        log.message(f"interface {self.name} polls cage(s) {', '.join(self.sources)} for reverse calls")

    def cease(self) -> None:
        self.stopping.set()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(POLL_TIMEOUT)

    def _poll_loop(self, source: str) -> None:
        failing_since: float | None = None  # an outage is logged when it begins, then once a minute
        logged_at = 0.0
        while not self.stopping.is_set():
            try:
                calls = self._poll(source)
            except Exception as e:
                now = time.monotonic()
                if failing_since is None or now - logged_at >= OUTAGE_LOG_PERIOD:
                    log.warning(f"interface {self.name}: polling cage {source} failed: {exc_string(e, stack=False)}")
                    logged_at = now
                failing_since = failing_since or now
                self.stopping.wait(self.retry_interval)
                continue
            if failing_since is not None:
                log.message(f"interface {self.name}: polling cage {source} works again after "
                            f"{time.monotonic() - failing_since:.0f}s")
                failing_since = None
            for call in calls:
                self._start(source, call)

    def _poll(self, source: str) -> list[dict[str, Any]]:
        request = Request(timeout=POLL_TIMEOUT, interface=self.name, protocol=self.protocol)
        with attached(request):
            calls = self.links[source].poll(request.remain)
        return [c for c in calls if isinstance(c, dict)]

    def _start(self, source: str, call: dict[str, Any]) -> None:
        try:
            request = self.callee.request(call, source, time.monotonic())
        except IntakeClosedError as e:  # shutting down: say so rather than let the caller wait
            self._post_error(source, call, e)
            return
        except Exception as e:
            log.warning(f"interface {self.name}: a malformed call from cage {source}: {exc_string(e, stack=False)}")
            return
        self.lifecycle.submit(request, self._run, source, call, when_done=functools.partial(self._done, request))

    def _run(self, source: str, call: dict[str, Any]) -> None:
        reply = self.callee.run(call, source)
        accepted = self.links[source].post(str(call.get("call_id")), reply)
        if not accepted:
            log.warning(f"interface {self.name}: cage {source} no longer waits for the answer to "
                        f"{call.get('module')}.{call.get('method')}")

    def _post_error(self, source: str, call: dict[str, Any], error: Exception) -> None:
        request = Request(timeout=POLL_TIMEOUT, interface=self.name, protocol=self.protocol)
        try:
            with attached(request):
                self.links[source].post(str(call.get("call_id")), {"error": wire.error_dict(error)})
        except Exception as e:
            log.warning(f"interface {self.name}: cage {source} cannot be told: {exc_string(e, stack=False)}")

    def _done(self, request: Request, outcome: Outcome) -> None:
        """The call has run, or never will (expired in the queue, the cage stopping)."""
        if outcome.error is not None:
            log.warning(f"interface {self.name}: reverse call {request.unique_id}: "
                        f"{exc_string(outcome.error, stack=False)}")
