"""The health monitor: in a cage named health_monitor, probes of every other cage of the cluster,
the cage_up / cage_down events they give rise to, and the cluster page.

Each pass (every `probe_period` of config_health_monitor.py, the cages spread over it) probes
every instance the locator lists - local registry, LAN adverts, static `exact_locations`,
instances answering a discovery on NATS with transport "nats" -
and every instance believed up though no longer listed, except this cage itself. A probe
is a connection to exactly that instance (the rpc interface's `exact`) calling
`health_monitor_event.probe()`, which must return a dict, then `performance.headline()`,
which the callee answers itself (rpc/callee.py; a cage that does not answer it is still up).

States, one row per instance (what the page and `status()` show):

    new  --probe answered-->  up           (cage_up)
    new  --a vanished instance at the same node.cage was replaced-->  restarted
                                           (cage_down if that one was up, then cage_up)
    up / restarted  --answered, another probe result-->  same state     (cage_up)
    up / restarted / down  --a static location answered by another process-->  restarted
                                           (cage_down unless it was down, then cage_up)
    any but down  --`down_after` failed probes in a row-->  down        (cage_down)
    down  --probe answered-->  up          (cage_up)

One failed probe is not a down (hysteresis). A down instance no longer listed is not probed
and leaves the page after `forget_after`. The events run as requests of interface
`__health_monitor__` through the lifecycle, one at a time in order, calling
`pmnc.health_monitor_event.cage_up(node, cage, probe_result)` / `cage_down(node, cage)` of
this cage's modules (hot-reloadable).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from pmnc import log
from pmnc.config import read_settings
from pmnc.errors import ConfigError, IntakeClosedError, RequestExpiredError, exc_string
from pmnc.monitor import page
from pmnc.monitor import status as cage_status
from pmnc.request import Request
from pmnc.rpc import natsrpc
from pmnc.rpc.identity import CAGE_NAME
from pmnc.rpc.locator import Location
from pmnc.schema import Key, Schema
from pmnc.workers import WorkerPool, WorkUnit

if TYPE_CHECKING:
    from pmnc.runtime import Runtime

MONITOR_CAGE = "health_monitor"
INTERFACE = "__health_monitor__"  # the interface name of the probes and of the events' requests
EVENTS_MODULE = "health_monitor_event"

KEYS = Schema(  # of config_health_monitor.py
    probe_period=Key(30.0, float),  # seconds between probes of one instance; the cages are spread over it
    down_after=Key(2, int),  # failed probes in a row before an instance is down
    probe_timeout=Key(None, float),  # seconds one probe may take; None: min(request_timeout, probe_period)
    probe_threads=Key(16, int),  # probes at once
    forget_after=Key(3600.0, float),  # seconds a down instance no longer listed stays on the page
)

NEW, UP, DOWN, RESTARTED = "new", "up", "down", "restarted"
MAX_TEXT = 128  # characters of a text a probed cage sends in its headline
MAX_URL = 512
HEADLINE_NUMBERS = ("requests_per_second", "failures_last_minute", "p95_response", "in_flight", "rss_bytes",
                    "cpu_percent", "pid", "started", "uptime")
HEADLINE_TEXTS = ("cage", "node", "instance")


class ExactCalls(Protocol):
    """Calls to one exact instance (protocols/rpc.py's ExactLink)."""

    def __enter__(self) -> ExactCalls: ...

    def __exit__(self, *exc: object) -> None: ...

    def call(self, module: str, method: str, *args: Any, **kwargs: Any) -> Any: ...


# --- the headline a cage answers over rpc (rpc/callee.py) -----------------------------------


def headline(runtime: Runtime) -> dict[str, Any]:
    """This cage's figures in brief, for the health monitor's page: `performance.headline()`."""
    rate, failures, p95 = _last_minute(runtime)
    try:
        wide = cage_status.gauges(runtime)["cage_wide"]
    except Exception as e:  # the page's figures must not fail the probe that asks for them
        log.debug(f"the cage-wide figures cannot be read: {exc_string(e)}")
        wide = {"rss_bytes": cage_status.rss_bytes()}
    try:
        instance: str | None = runtime.cluster.get().locator.instance
    except Exception:
        instance = None
    now = time.time()
    return {
        "cage": runtime.name, "node": runtime.node, "instance": instance, "pid": os.getpid(),
        "started": runtime.started_at, "uptime": now - runtime.started_at,
        "requests_per_second": rate, "failures_last_minute": failures, "p95_response": p95,
        "in_flight": max(runtime.intake.active - 1, 0),  # not counting the headline's own request
        "rss_bytes": wide.get("rss_bytes"), "cpu_percent": wide.get("cpu_percent"),
        "page": performance_url(runtime),
    }


def _last_minute(runtime: Runtime) -> tuple[float, int, float | None]:
    """(requests per second, failures, the worst interface's p95 response in seconds) over the
    last minute, every interface together; zeros while nothing is counted."""
    try:
        interfaces = runtime.statistics.snapshot().get("interfaces") or {}
    except Exception as e:
        log.debug(f"the statistics cannot be read: {exc_string(e)}")
        interfaces = {}
    rate, failures, p95s = 0.0, 0, []
    for series in interfaces.values():
        point = series.get("last_minute") if isinstance(series, dict) else None
        if not isinstance(point, dict):
            continue
        rate += float(point.get("rate") or 0.0)
        failures += int(point.get("failure") or 0)
        response = point.get("response")
        if isinstance(response, dict) and response.get("p95") is not None:
            p95s.append(float(response["p95"]))
    return round(rate, 3), failures, max(p95s) if p95s else None


def performance_url(runtime: Runtime) -> str | None:
    """The URL of this cage's performance page, if its `performance` interface runs."""
    iface = runtime.interface("performance")
    if iface is None:
        return None
    url = getattr(iface, "url", None)
    if isinstance(url, str):
        return url
    try:
        host, port = iface.listener_address[:2]
    except (AttributeError, TypeError, ValueError):
        return None
    scheme = "https" if getattr(iface, "_server_ssl", None) else "http"
    host = f"[{host}]" if ":" in str(host) else host
    return f"{scheme}://{host}:{port}/"


# --- the monitor ---------------------------------------------------------------------------


@dataclass
class Watched:
    """One instance the monitor watches."""

    location: Location
    node: str
    state: str = NEW
    since: float = 0.0
    last_probe: float | None = None
    failures: int = 0  # failed probes in a row
    result: dict[str, Any] | None = None  # what probe() returned last
    headline: dict[str, Any] | None = None
    error: str | None = None
    listed: bool = True  # by the locator, at the last pass
    probing: bool = False  # a probe is on its way: no second one meanwhile


def start_health_monitor(runtime: Runtime) -> HealthMonitor | None:
    """The health monitor of a cage named health_monitor, started; None in any other cage,
    or (with an error in the log) when the rpc interface does not run."""
    if runtime.name != MONITOR_CAGE:
        return None
    if not hasattr(runtime.interface("rpc"), "exact"):
        log.error("the health monitor needs the rpc interface: add \"rpc\" to interfaces in config_interfaces.py "
                  "of cage health_monitor; no cage is probed")
        return None
    try:
        monitor = HealthMonitor(runtime)
    except ConfigError as e:
        log.error(f"the health monitor cannot start: {e}")
        return None
    monitor.start()
    return monitor


class HealthMonitor:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = self._read_settings()
        self._rows: dict[str, Watched] = {}  # instance → row
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._events: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        self._probes = WorkerPool("health_monitor:probe", self.settings["probe_threads"])
        self._thread = threading.Thread(target=self._run, name="health_monitor", daemon=True)
        self._deliverer = threading.Thread(target=self._deliver, name="health_monitor:events", daemon=True)
        self._no_rpc_said = False

    def start(self) -> None:
        self._thread.start()
        self._deliverer.start()
        s = self.settings
        log.message(f"health monitor: probing the cluster every {s['probe_period']:.1f}s, an instance is down "
                    f"after {s['down_after']} failed probe(s)")

    def stop(self) -> None:
        """Ends the probes at once (the cage calls it first thing at shutdown); an event
        being delivered finishes as any request in flight."""
        self._stopping.set()
        self._events.put(None)
        self._thread.join(2.0)
        self._probes.stop(0.5)
        self._deliverer.join(1.0)

    # --- settings -------------------------------------------------------------------------

    def _read_settings(self) -> dict[str, Any]:
        s = read_settings(self.runtime.loader, "health_monitor", KEYS)
        if not (s["probe_period"] >= 0.1 and s["down_after"] >= 1 and s["probe_threads"] >= 1
                and (s["probe_timeout"] is None or s["probe_timeout"] > 0)):
            raise ConfigError("config_health_monitor.py: probe_period must be at least 0.1 s, down_after and "
                              "probe_threads at least 1, probe_timeout above 0")
        return s

    def _reread_settings(self) -> None:
        """Re-read each pass (the file may change); a broken file leaves them as they were."""
        try:
            self.settings = self._read_settings()
        except Exception as e:
            log.error(f"health monitor: config_health_monitor.py cannot be used, the settings stay as they "
                      f"are: {exc_string(e, stack=False)}")

    def _probe_timeout(self) -> float:
        s = self.settings
        return float(s["probe_timeout"] or min(self.runtime.request_timeout, s["probe_period"]))

    # --- passes ---------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            interval = self.settings["probe_period"]
            try:
                self._reread_settings()
                targets = self._targets()
                interval = self.settings["probe_period"] / (len(targets) + 1)
                for key in targets:
                    self._launch(key)
                    if self._stopping.wait(interval):
                        return
            except Exception as e:
                log.error(f"health monitor: a pass failed: {exc_string(e)}")
            self._stopping.wait(interval)

    def _rpc(self) -> Any:
        """The rpc interface (looked up each time: it may have been restarted), or None."""
        rpc = self.runtime.interface("rpc")
        if hasattr(rpc, "exact"):
            self._no_rpc_said = False
            return rpc
        if not self._no_rpc_said:
            log.warning("health monitor: the rpc interface does not run, no cage is probed until it does")
            self._no_rpc_said = True
        return None

    def _listed(self, rpc: Any) -> dict[str, Location]:
        """Every instance the locator lists, and with transport "nats" every one that answers
        a discovery there, but this cage; a static location that is also listed by another
        source (the same address) only once."""
        cluster = self.runtime.cluster.get()
        locator = cluster.locator
        found = {loc.instance: loc for cage in locator.cages() for loc in locator.listing(cage)
                 if loc.instance != locator.instance}
        if cluster.transport == "nats":
            found.update({loc.instance: loc for loc in natsrpc.discover(cluster) if loc.instance != locator.instance})
        own = tuple(getattr(rpc, "address", ()))[:2]
        addresses = {(loc.host, loc.port) for loc in found.values() if loc.source != "static"}
        return {key: loc for key, loc in found.items()
                if loc.source != "static" or ((loc.host, loc.port) not in addresses and (loc.host, loc.port) != own)}

    def _targets(self) -> list[str]:
        """The instances to probe this pass: those listed, and those believed up."""
        rpc = self._rpc()
        if rpc is None:
            return []
        listed = self._listed(rpc)
        now = time.time()
        with self._lock:
            for key, location in listed.items():
                row = self._rows.get(key)
                if row is None:
                    self._rows[key] = Watched(location, location.node, since=now)
                else:
                    row.location, row.listed = location, True
            for key, row in list(self._rows.items()):
                if key in listed:
                    continue
                row.listed = False
                if row.state == NEW or (row.state == DOWN and now - row.since > self.settings["forget_after"]):
                    del self._rows[key]
            return [key for key, row in self._rows.items() if row.listed or row.state in (UP, RESTARTED)]

    def _launch(self, key: str) -> None:
        with self._lock:
            row = self._rows.get(key)
            if row is None or row.probing:
                return
            row.probing = True
            location = row.location
        request = Request(timeout=self._probe_timeout(), interface=INTERFACE, protocol="rpc",
                          description=f"probing cage {location}")
        try:
            self._probes.submit(request, self._probe, key, location,
                                when_done=lambda unit: self._probe_ended(key, location, unit))
        except RuntimeError:  # stopped meanwhile
            self._probe_ended(key, location, None)

    def _probe_ended(self, key: str, location: Location, unit: WorkUnit | None) -> None:
        with self._lock:
            row = self._rows.get(key)
            if row is not None:
                row.probing = False
        error = unit.settled()[1] if unit is not None and not unit.cancelled() else None
        if isinstance(error, RequestExpiredError):  # _probe never raises: it did not run
            log.warning(f"health monitor: the probe of {location} could not start in time "
                        f"(all {self.settings['probe_threads']} probe_threads busy)")

    # --- one probe, on a thread of the probe pool -------------------------------------------

    def _probe(self, key: str, location: Location) -> None:
        try:
            rpc = self._rpc()
            if rpc is None:
                return
            with rpc.exact(location) as link:
                result = link.call(EVENTS_MODULE, "probe")
                if not isinstance(result, dict):
                    raise TypeError(f"{EVENTS_MODULE}.probe() returned {type(result).__name__}, not a dict")
                brief = self._headline(link)
        except Exception as e:
            self._failed(key, location, exc_string(e, stack=False))
        else:
            self._answered(key, result, brief)

    @staticmethod
    def _headline(link: ExactCalls) -> dict[str, Any] | None:
        """performance.headline() there; None from a cage that does not answer it (an older
        pmnc): it is up all the same."""
        try:
            return _checked_headline(link.call("performance", "headline"))
        except Exception as e:
            log.debug(f"health monitor: no headline: {exc_string(e, stack=False)}")
            return None

    def _answered(self, key: str, result: dict[str, Any], brief: dict[str, Any] | None) -> None:
        now = time.time()
        with self._lock:
            row = self._rows.get(key)
            if row is None:
                return  # forgotten meanwhile
            row.last_probe, row.failures, row.error = now, 0, None
            before = (row.headline or {}).get("instance")
            row.headline = brief
            if row.location.source == "static" and brief is not None and brief.get("node"):
                row.node = brief["node"]  # a static location knows only its host
            after = (brief or {}).get("instance")
            if row.state != NEW and before and after and before != after:  # another process at that address
                if row.state != DOWN:
                    self._event(row, DOWN)
                self._became(row, RESTARTED, now, "restarted")
                self._event(row, UP, result)
            elif row.state == NEW:
                replaced = self._replaced(key, row)
                if any(old.state in (UP, RESTARTED) for old in replaced):
                    self._event(row, DOWN)
                self._became(row, RESTARTED if replaced else UP, now, "restarted" if replaced else "up")
                self._event(row, UP, result)
            elif row.state == DOWN:
                self._became(row, UP, now, "up again")
                self._event(row, UP, result)
            elif result != row.result:
                log.message(f"health monitor: cage {row.node}.{row.location.cage} answers its probe differently")
                self._event(row, UP, result)
            row.result = result

    def _replaced(self, key: str, row: Watched) -> list[Watched]:
        """Instances of the same node.cage no longer listed, which `row` replaces (a restart):
        forgotten."""
        old = [(k, r) for k, r in self._rows.items()
               if k != key and not r.listed and r.node == row.node and r.location.cage == row.location.cage]
        for k, _ in old:
            del self._rows[k]
        return [r for _, r in old]

    def _failed(self, key: str, location: Location, error: str) -> None:
        now = time.time()
        with self._lock:
            row = self._rows.get(key)
            if row is None:
                return
            row.last_probe, row.error = now, error
            row.failures += 1
            down_after = self.settings["down_after"]
            if row.state != DOWN:
                log.warning(f"health monitor: probe of {location} failed ({row.failures} of {down_after}): {error}")
                if row.failures >= down_after:
                    self._became(row, DOWN, now, f"down after {row.failures} failed probe(s)")
                    self._event(row, DOWN)

    @staticmethod
    def _became(row: Watched, state: str, now: float, said: str) -> None:
        row.state, row.since = state, now
        log.message(f"health monitor: cage {row.node}.{row.location.cage} at {row.location.host}:"
                    f"{row.location.port} is {said}")

    def _event(self, row: Watched, kind: str, result: dict[str, Any] | None = None) -> None:
        """Queued under the lock: the events are delivered in the order they happened."""
        self._events.put((kind, row.node, row.location.cage, result))

    # --- the events, one at a time, as requests -----------------------------------------------

    def _deliver(self) -> None:
        while (event := self._events.get()) is not None:
            kind, node, cage, result = event
            try:
                self._hook(kind, node, cage, result)
            except Exception as e:
                log.error(f"health monitor: {EVENTS_MODULE}.cage_{kind}({node}, {cage}) failed: {exc_string(e)}")

    def _hook(self, kind: str, node: str, cage: str, result: dict[str, Any] | None) -> None:
        lifecycle = self.runtime.lifecycle
        try:
            request = lifecycle.begin(interface=INTERFACE, protocol="health_monitor",
                                      timeout=self.runtime.request_timeout, description=f"cage {node}.{cage} is {kind}")
        except IntakeClosedError:
            return  # the cage is stopping
        args = (node, cage, result) if kind == UP else (node, cage)
        lifecycle.call(request, lifecycle.handle, EVENTS_MODULE, f"cage_{kind}", args)

    # --- what the pages show -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The cluster as the monitor sees it: one entry per instance with a verdict."""
        with self._lock:
            rows = [_row_status(row) for row in self._rows.values() if row.state != NEW]
        rows.sort(key=lambda r: (r["cage"], r["node"], r["location"]))
        s = self.settings
        return {"cages": rows, "probe_period": s["probe_period"], "down_after": s["down_after"], "now": time.time()}

    def page(self) -> str:
        """The cluster page, refreshed (and in the font) as the performance interface's pages."""
        pages = self.runtime.interface("performance")
        return cluster_page(self.runtime.name, self.runtime.node, self.status(),
                            refresh_seconds=getattr(pages, "refresh_seconds", 10),
                            font=getattr(pages, "css_font_family", None))

    def __repr__(self) -> str:
        with self._lock:
            states = [row.state for row in self._rows.values()]
        return f"<HealthMonitor up={states.count(UP) + states.count(RESTARTED)} down={states.count(DOWN)}>"


def _row_status(row: Watched) -> dict[str, Any]:
    location = row.location
    brief = row.headline
    page = brief.get("page") if brief else None
    return {"cage": location.cage, "node": row.node, "location": f"{location.host}:{location.port}",
            "source": location.source, "instance": location.instance, "state": row.state,
            "last_probe": row.last_probe, "since": row.since, "failures": row.failures, "error": row.error,
            "headline": brief, "page": _reachable(page, location.host) if isinstance(page, str) else None}


def _checked_headline(value: Any) -> dict[str, Any] | None:
    """What a probed cage sent as its headline, kept only as far as it is what we expect:
    numbers, short names, an http(s) URL."""
    if not isinstance(value, dict):
        return None
    brief: dict[str, Any] = {}
    for key in HEADLINE_NUMBERS:
        number = value.get(key)
        brief[key] = number if isinstance(number, (int, float)) and not isinstance(number, bool) else None
    for key in HEADLINE_TEXTS:
        text = value.get(key)
        brief[key] = text if isinstance(text, str) and len(text) <= MAX_TEXT else None
    if brief["node"] is not None and not CAGE_NAME.fullmatch(brief["node"]):
        brief["node"] = None
    page = value.get("page")
    brief["page"] = page if isinstance(page, str) and len(page) <= MAX_URL and \
        page.lower().startswith(("http://", "https://")) else None
    return brief


def _reachable(url: str, host: str) -> str:
    """A cage listening on every address says so in its URL: the address it was reached at instead."""
    parts = urlsplit(url)
    if parts.hostname in ("0.0.0.0", "::", ""):
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
        return parts._replace(netloc=netloc).geturl()
    return url


# --- the cluster page (in the look of page.py's pages) -------------------------------------------

_CSS = """<style>
.state { font-size: 11px; font-weight: 700; padding: 1px 7px; border-radius: 4px; color: #fff; }
.state-up { background: var(--ok); } .state-restarted { background: var(--p95); }
.state-down { background: var(--bad); }
td.num { text-align: right; } td .why { color: var(--bad); font-size: 12px; white-space: normal; }
</style>"""
_COLUMNS = ("cage", "node", "state", "since", "last probe", "requests", "failures/min", "p95", "in flight",
            "memory", "CPU", "")


def cluster_page(cage: str, node: str, status: dict[str, Any], *, refresh_seconds: float = 10,
                 font: str | None = None) -> str:
    """The whole cluster on one page: each instance, its state, its last probe and its
    headline figures, with a link to its own performance page. Everything shown is escaped."""
    now = float(status.get("now") or time.time())
    rows = status.get("cages") or []
    counts = {state: sum(1 for r in rows if r["state"] == state) for state in (UP, RESTARTED, DOWN)}
    nav = "".join(f'<a href="{href}"{" aria-current=page" if href == "/cluster" else ""}>{text}</a>'
                  for href, text in (("/performance", "performance"), ("/notifications", "notifications"),
                                     ("/cluster", "cluster"), ("/status.json", "/status.json")))
    summary = (f"{counts[UP] + counts[RESTARTED]} up ({counts[RESTARTED]} restarted) · {counts[DOWN]} down · "
               f"probed every {float(status.get('probe_period') or 0):g} s, down after "
               f"{status.get('down_after')} failed probes · {page.clock(now)}")
    head = "".join(f"<th>{c}</th>" for c in _COLUMNS)
    body = "".join(_page_row(row, now) for row in rows) or \
        f'<tr><td colspan="{len(_COLUMNS)}" class="muted">no other cage has been found yet</td></tr>'
    content = (f'{_CSS}<header class="top"><h1>the cluster <span class="muted">as seen by</span> '
               f'{page.escape(node)}.{page.escape(cage)}</h1><span class="sub">{page.escape(summary)}</span>'
               f'<nav>{nav}</nav></header><div class="panel"><table><thead><tr>{head}</tr></thead>'
               f'<tbody>{body}</tbody></table></div>')
    return page.document(f"The cluster, as {node}.{cage} sees it", content, refresh_seconds=refresh_seconds, font=font)


def _page_row(row: dict[str, Any], now: float) -> str:
    e = page.escape
    brief = row.get("headline") or {}
    state = row["state"]
    where = f"{row['location']} ({row['source']})"
    why = f'<div class="why">{e(row["error"])}</div>' if row.get("error") and state == DOWN else ""
    link = f'<a href="{e(row["page"])}">performance</a>' if row.get("page") else ""
    cells = [
        f"<td>{e(row['cage'])}</td>", f'<td title="{e(where)}">{e(row["node"])}</td>',
        f'<td><span class="state state-{e(state)}">{e(state)}</span>{why}</td>',
        f'<td title="{e(_clock(row["since"]))}">{e(_ago(now, row["since"]))}</td>',
        f'<td title="{e(_clock(row["last_probe"]))}">{e(_ago(now, row["last_probe"]))}</td>',
        _num(brief.get("requests_per_second"), page.human_rate),
        _num(brief.get("failures_last_minute"), lambda n: page.human_count(int(n))),
        _num(brief.get("p95_response"), page.human_seconds), _num(brief.get("in_flight"), lambda n: f"{n:.0f}"),
        _num(brief.get("rss_bytes"), page.human_bytes), _num(brief.get("cpu_percent"), lambda n: f"{n:.0f} %"),
        f"<td>{link}</td>",
    ]
    return f"<tr>{''.join(cells)}</tr>"


def _num(value: Any, form: Callable[[float], str]) -> str:
    text = page.NONE if not isinstance(value, (int, float)) else form(value)
    return f'<td class="num">{page.escape(text)}</td>'


def _ago(now: float, then: float | None) -> str:
    if then is None:
        return page.NONE
    return f"{page.human_duration(now - then)} ago"


def _clock(then: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(then)) if then is not None else ""
