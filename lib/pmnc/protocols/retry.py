"""The `retry` interface: runs this cage's retried calls (the engine is pmnc/retry.py).

config_interface_retry.py (the original's keys, and two of ours):

    queue_count         calls of one queue run at once                         (4)
    keep_order          one call of a queue at a time, in the order queued;
                        a failing call holds up the calls behind it            (False)
    retry_interval      seconds before a failed call is tried again            (120.0)
    backoff             double the wait after each failure ...                 (False)
    max_retry_interval  ... up to this many seconds                            (3600.0)
    retention_time      seconds a finished call's id keeps out duplicates      (259200.0)
    request_timeout     seconds one attempt may take      (the cage's request_timeout)
    max_pending_per_source  calls another cage may have handed over here and pending;
                        beyond it a hand-over is refused and the call stays
                        with its sender, tried again later                     (100000)

Calls can be queued whether or not the interface runs; it only runs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pmnc import interfaces, log
from pmnc.errors import ConfigError
from pmnc.retry import Engine, Settings
from pmnc.schema import Key

if TYPE_CHECKING:
    from pmnc.runtime import Runtime


class Interface(interfaces.Interface):
    protocol = "retry"
    handler_module = False  # no interface_<name>.py: calls go to the modules they name

    # the defaults are the engine's (retry.Settings)
    keys = interfaces.Interface.keys.extend(
        queue_count=Key(Settings.queue_count, int), keep_order=Key(Settings.keep_order, bool),
        retry_interval=Key(Settings.retry_interval, float), backoff=Key(Settings.backoff, bool),
        max_retry_interval=Key(Settings.max_retry_interval, float),
        retention_time=Key(Settings.retention_time, float),
        max_pending_per_source=Key(Settings.max_pending_per_source, int))

    def __init__(self, name: str, runtime: Runtime, config: dict[str, Any]) -> None:
        super().__init__(name, runtime, config)
        settings = {key: self.config[key] for key in self.keys if key != "request_timeout"}
        self.settings = Settings(**settings, request_timeout=self.request_timeout)
        if self.settings.queue_count < 1 or self.settings.retry_interval < 0 or self.settings.retention_time < 0 \
                or self.settings.max_pending_per_source < 0:
            raise ConfigError(f"config_interface_{name}.py: queue_count must be at least 1, retry_interval, "
                              f"retention_time and max_pending_per_source not negative")
        self.engine: Engine | None = None

    def start(self) -> None:
        runtime = self.runtime
        self.engine = Engine(runtime.lifecycle, runtime.state, runtime.transactions, cage=runtime.name,
                             node=runtime.node, settings=self.settings, interface=self.name)
        self.engine.start()
        order = "in order, one at a time" if self.settings.keep_order else \
            f"up to {self.settings.queue_count} at once per queue"
        log.message(f"interface {self.name} runs retried calls {order}, retrying every "
                    f"{self.settings.retry_interval:g}s{' with back-off' if self.settings.backoff else ''}")

    def cease(self) -> None:
        if self.engine is not None:
            self.engine.cease()

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.stop()
