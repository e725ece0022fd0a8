"""/metrics: the cage's statistics and gauges in the Prometheus text format (prometheus-client).

Each cage has a registry of its own (never the library's global one) holding a collector
over `runtime.statistics.totals()` and the gauges of status.py, and prometheus-client's
ProcessCollector (process_cpu_seconds_total, process_resident_memory_bytes,
process_open_fds, ...). Every pmnc_ metric has the labels `cage` and `node`, and those
below:

    name                                type       labels              what
    pmnc_interface_requests_total       counter    interface, outcome  requests ended ("success", "failure")
    pmnc_interface_pending_seconds      histogram  interface           arrival until a worker took it
    pmnc_interface_processing_seconds   histogram  interface           the handler's time
    pmnc_interface_response_seconds     histogram  interface           arrival until the answer
    pmnc_interface_requests_in_flight   gauge      interface           requests begun and not ended
    pmnc_resource_calls_total           counter    resource, outcome   resource calls (transactions) ended
    pmnc_resource_pending_seconds       histogram  resource            waiting for a pool thread, a connection
    pmnc_resource_processing_seconds    histogram  resource            the call itself
    pmnc_resource_pool_size             gauge      resource            pool__size: calls at once
    pmnc_resource_pool_busy             gauge      resource            calls running now
    pmnc_resource_pool_queued           gauge      resource            calls waiting for a slot
    pmnc_resource_pool_free             gauge      resource            idle connections kept
    pmnc_requests_in_flight             gauge                          requests in flight, all interfaces
    pmnc_requests_queued                gauge                          requests waiting for a worker
    pmnc_workers_busy                   gauge                          worker threads running a request
    pmnc_workers_size                   gauge                          thread_count
    pmnc_threads                        gauge                          threads of the cage process
    pmnc_cpu_percent                    gauge                          CPU, last interval (100: one CPU)
    pmnc_retry_queue_depth              gauge      queue               retried calls pending
    pmnc_module_version                 gauge      module              each loaded module's version
    pmnc_uptime_seconds                 gauge                          since the cage started

Histogram buckets are monitor.stats.BUCKETS (1 ms to 10 s).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from pmnc.monitor import status

if TYPE_CHECKING:
    from pmnc.runtime import Runtime

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what generate_latest writes; every Prometheus reads it

_HELP = {
    ("interface", "pending"): "Seconds from a request's arrival until a worker took it",
    ("interface", "processing"): "Seconds the request's handler took",
    ("interface", "response"): "Seconds from a request's arrival until its answer",
    ("resource", "pending"): "Seconds a resource call waited for a pool thread and a connection",
    ("resource", "processing"): "Seconds a resource call took",
}
_COUNTERS = {"interface": ("pmnc_interface_requests", "Requests ended, by outcome"),
             "resource": ("pmnc_resource_calls", "Resource calls (transactions) ended, by outcome")}
_POOL = {"size": "pool__size: calls of the resource at once", "busy": "Calls of the resource running now",
         "queued": "Calls waiting for a slot of the pool", "free": "Idle connections kept by the pool"}
_CAGE_WIDE = {  # gauge → (status key, help)
    "pmnc_requests_in_flight": ("requests_in_flight", "Requests begun and not ended, all interfaces"),
    "pmnc_requests_queued": ("requests_queued", "Requests waiting for a worker thread"),
    "pmnc_workers_busy": ("workers_busy", "Worker threads running a request"),
    "pmnc_workers_size": ("workers_size", "Worker threads at most (thread_count)"),
    "pmnc_threads": ("threads", "Threads of the cage process"),
    "pmnc_cpu_percent": ("cpu_percent", "CPU use over the last interval, 100 being one CPU"),
}


class Metrics:
    """The /metrics of one cage: `render()` is the text, `CONTENT_TYPE` its type."""

    def __init__(self, runtime: Runtime, *, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(CageCollector(runtime))
        if process:
            ProcessCollector(registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CageCollector(Collector):
    """The pmnc_ metrics, read afresh at each scrape."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        runtime = self.runtime
        base = [runtime.name, runtime.node]
        yield from totals_metrics(runtime.statistics.totals(), base)
        yield from gauge_metrics(status.gauges(runtime), base, runtime.started_at)


def totals_metrics(totals: dict[tuple[str, str], dict[str, Any]], base: list[str]) -> Iterator[Metric]:
    """Counters and histograms of stats.totals(); `base` the values of cage and node."""
    for kind in ("interface", "resource"):
        of_kind = sorted((name, t) for (k, name), t in totals.items() if k == kind)
        name, text = _COUNTERS[kind]
        counter = CounterMetricFamily(name, text, labels=["cage", "node", kind, "outcome"])
        for subject, t in of_kind:
            counter.add_metric([*base, subject, "success"], t.get("success", 0))
            counter.add_metric([*base, subject, "failure"], t.get("failure", 0))
        yield counter
        readings = ("pending", "processing", "response") if kind == "interface" else ("pending", "processing")
        for reading in readings:
            histogram = HistogramMetricFamily(f"pmnc_{kind}_{reading}_seconds", _HELP[kind, reading],
                                              labels=["cage", "node", kind])
            for subject, t in of_kind:
                buckets = t.get("buckets", {}).get(reading)
                if buckets:
                    histogram.add_metric([*base, subject], [(_le(le), count) for le, count in buckets],
                                         t.get("sum", {}).get(reading, 0.0))
            yield histogram


def gauge_metrics(g: dict[str, Any], base: list[str], started: float) -> Iterator[Metric]:
    """The gauges of status.gauges()."""
    cage_wide = g["cage_wide"]
    for name, (key, text) in _CAGE_WIDE.items():
        yield _gauge(name, text, [([], cage_wide[key])], base)
    yield _gauge("pmnc_uptime_seconds", "Seconds since the cage started", [([], g["now"] - started)], base)
    yield _gauge("pmnc_interface_requests_in_flight", "Requests begun and not ended",
                 [([name], count) for name, count in sorted(g["in_flight"].items())], base, "interface")
    for field, text in _POOL.items():
        yield _gauge(f"pmnc_resource_pool_{field}", text,
                     [([name], pool[field]) for name, pool in g["pools"].items()], base, "resource")
    yield _gauge("pmnc_retry_queue_depth", "Retried calls pending in the queue",
                 [([queue], depth) for queue, depth in cage_wide["retry_queues"].items()], base, "queue")
    yield _gauge("pmnc_module_version", "Version of each loaded cage module (1 + its reloads)",
                 [([m["name"]], m["version"]) for m in g["modules"]], base, "module")


def _gauge(name: str, text: str, values: list[tuple[list[str], float]], base: list[str],
           *labels: str) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, text, labels=["cage", "node", *labels])
    for label_values, value in values:
        gauge.add_metric([*base, *label_values], value)
    return gauge


def _le(bound: float) -> str:
    """A bucket's upper bound as Prometheus writes it: 0.05, 1.0, +Inf."""
    return "+Inf" if bound == float("inf") else repr(float(bound))
