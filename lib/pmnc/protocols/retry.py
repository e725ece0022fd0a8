"""Interfaces of protocol "retry": each runs the retried calls of the queue named like it
(the engine is pmnc/retry.py); the one named `retry` also runs every queue that has no
retry interface of its own. A queue of its own settings, as in the original:

    cp cages/.shared/config_interface_retry.py cages/<cage>/config_interface_orders.py
    # and "orders" in config_interfaces.py's `interfaces`; then pmnc(queue="orders") calls
    # run with the settings of config_interface_orders.py

config_interface_<queue>.py (the original's keys, and two of ours):

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
                        with its sender, tried again later (cage-wide: read
                        from config_interface_retry.py only)                   (100000)

Calls can be queued whether or not an interface runs their queue; it only runs them.

With config_cluster.py's retry_store = "jetstream" the calls are kept in the flock's JetStream
stream instead of the state file, and each interface runs its queue from a durable consumer
shared by all instances of the cage (rpc/jetstream.py, retry.JetStreamEngine). The keys keep
their meaning; request_timeout (plus 5 s) is the consumer's ack_wait, and retention_time is how
long the ids of calls that have run are kept (the KV bucket's TTL, set by the first cage that
makes it). max_pending_per_source is not used: no call is handed over between cages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pmnc import interfaces, log
from pmnc.errors import ConfigError
from pmnc.retry import CATCH_ALL, MAX_PENDING_PER_SOURCE, QUEUE_NAME, Engine, JetStreamEngine, Settings
from pmnc.rpc import jetstream
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
        if not QUEUE_NAME.fullmatch(name):
            raise ConfigError(f"interface {name} of protocol retry runs the queue of its name, and {name!r} "
                              f"is not a queue name: 1 to 64 of A-Z a-z 0-9 _ . -")
        self.engine: Engine | JetStreamEngine | None = None

    def start(self) -> None:
        runtime = self.runtime
        if jetstream.is_jetstream(runtime.cluster):  # config_cluster.py: retry_store = "jetstream"
            self.engine = JetStreamEngine(runtime.lifecycle, runtime.cluster.get(), cage=runtime.name,
                                          settings=self.settings, interface=self.name)
            kept = " kept in JetStream"
        else:
            self.engine = Engine(runtime.lifecycle, runtime.state, runtime.transactions, cage=runtime.name,
                                 node=runtime.node, settings=self.settings, interface=self.name)
            kept = ""
        self.engine.start()
        log.message(f"interface {self.name} runs the retried calls{kept} of {self._queues()}, {self._manner()}")
        if self.name != CATCH_ALL and self.settings.max_pending_per_source != MAX_PENDING_PER_SOURCE:
            log.warning(f"interface {self.name}: max_pending_per_source is not used here, the limit is "
                        f"the cage's: set it in config_interface_{CATCH_ALL}.py")

    def _queues(self) -> str:
        if self.name == CATCH_ALL:
            return f"queue {CATCH_ALL} and of every queue without a retry interface of its own"
        return f"queue {self.name}"

    def _manner(self) -> str:
        per_queue = " per queue" if self.name == CATCH_ALL else ""
        order = "in order, one at a time" if self.settings.keep_order else \
            f"up to {self.settings.queue_count} at once{per_queue}"
        backoff = " with back-off" if self.settings.backoff else ""
        return f"{order}, retrying every {self.settings.retry_interval:g}s{backoff}"

    def cease(self) -> None:
        if self.engine is not None:
            self.engine.cease()

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.stop()
            log.message(f"interface {self.name} no longer runs the retried calls of {self._queues()}")
