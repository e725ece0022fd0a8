"""The `revrpc` interface: a cage behind a firewall fetches calls from cages it can reach.

    config = dict(protocol="revrpc", source_cages=("dmz",), request_timeout=10.0)

One poller thread per source cage long-polls it (over the same mutual TLS
connections as any call, pool `rpc__<source>`) for calls made there with
`pmnc("<this cage>:reverse").m.f(...)`, runs each on the worker pool as the
caller's request (its id, log levels, the time it has left less a margin)
and posts the answer back. A failed poll is retried after `retry_interval`.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from pmnc import interfaces, log
from pmnc.errors import ConfigError, IntakeClosedError, exc_string
from pmnc.protocols.rpc import callee_request, run_call
from pmnc.request import Request, attached
from pmnc.rpc import wire
from pmnc.rpc.identity import CAGE_NAME, Identity
from pmnc.transaction import TransactionFactory
from pmnc.workers import WorkUnit

if TYPE_CHECKING:
    from pmnc.cage import Cage

POLL_TIMEOUT = 10.0  # each poll's request, as the original's
OUTAGE_LOG_PERIOD = 60.0  # seconds between log lines while a source cannot be polled


class Interface(interfaces.Interface):
    protocol = "revrpc"
    handler_module = False  # no interface_<name>.py: calls go to the modules they name

    def __init__(self, name: str, cage: Cage, config: dict[str, Any]) -> None:
        super().__init__(name, cage, config)
        sources = config.pop("source_cages", ())
        self.sources = (sources,) if isinstance(sources, str) else tuple(sources)
        if not self.sources or not all(isinstance(s, str) and CAGE_NAME.fullmatch(s) for s in self.sources):
            raise ConfigError(f"config_interface_{name}.py: source_cages must name the cages to poll")
        self.retry_interval = float(config.pop("retry_interval", 1.0))
        self.deny_modules = tuple(str(p) for p in config.pop("deny_modules", ()))
        self.stopping = threading.Event()
        self.transaction: TransactionFactory = cage.loader.root.transaction
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
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
            calls = getattr(self.transaction, f"rpc__{source}").poll(request.remain)
        return [c for c in calls if isinstance(c, dict)]

    def _start(self, source: str, call: dict[str, Any]) -> None:
        try:
            request = callee_request(self, call, Identity("", source), time.monotonic())
        except IntakeClosedError as e:  # shutting down: say so rather than let the caller wait
            self._post_error(source, call, e)
            return
        except Exception as e:
            log.warning(f"interface {self.name}: a malformed call from cage {source}: {exc_string(e, stack=False)}")
            return
        assert self.cage.pool is not None
        self.cage.pool.submit(request, self._run, source, call,
                              when_done=lambda unit: self._done(unit, request))

    def _run(self, source: str, call: dict[str, Any]) -> None:
        reply = run_call(self.cage, self.deny_modules, call, Identity("", source))
        accepted = getattr(self.transaction, f"rpc__{source}").post(str(call.get("call_id")), reply)
        if not accepted:
            log.warning(f"interface {self.name}: cage {source} no longer waits for the answer to "
                        f"{call.get('module')}.{call.get('method')}")

    def _post_error(self, source: str, call: dict[str, Any], error: Exception) -> None:
        request = Request(timeout=POLL_TIMEOUT, interface=self.name, protocol=self.protocol)
        try:
            with attached(request):
                getattr(self.transaction, f"rpc__{source}").post(str(call.get("call_id")),
                                                                {"error": wire.error_dict(error)})
        except Exception as e:
            log.warning(f"interface {self.name}: cage {source} cannot be told: {exc_string(e, stack=False)}")

    def _done(self, unit: WorkUnit, request: Request) -> None:
        self.cage.intake.end(request)
        if unit.cancelled():
            log.warning(f"interface {self.name}: reverse call {request.unique_id} expired before it could run")
            return
        error = unit.exception()
        if error is not None:
            log.warning(f"interface {self.name}: reverse call {request.unique_id}: {exc_string(error, stack=False)}")
