"""The performance interface: the page, /metrics, /status.json, /notifications, protection;
drawn in-process from a synthetic status and served by a real cage under a known load,
and rendered in headless Chromium."""

from __future__ import annotations

import base64
import json
import math
import os
import random
import re
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CageProcess, InProcessCage, ServedLoader, make_tree, module_source, wait_until
from pmnc import keys
from pmnc.errors import ConfigError
from pmnc.monitor import page, prometheus
from pmnc.monitor.stats import BUCKETS, Statistics
from pmnc.protocols import performance
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
PROMTOOL = shutil.which("promtool")
CHROMIUM = shutil.which("chromium")

# --- a synthetic status: what a busy cage's cage_status() looks like ------------------------------


def _dist(seconds: float, spread: float = 1.0) -> dict[str, float]:
    return {"count": 10, "sum": seconds * 10, "max": seconds * 2.2 * spread, "p50": seconds,
            "p95": seconds * 1.8 * spread, "p99": seconds * 2.2 * spread}


def _points(now: float, slot: int, rate: float, ms: float, fail_every: int, rnd: random.Random,
            idle_before: int) -> list[dict[str, Any]]:
    start = int(now // slot * slot) - slot * 59
    points = []
    for i in range(60):
        t = start + i * slot
        if i < idle_before:
            points.append({"t": t, "seconds": slot, "rate": 0.0, "success": 0, "failure": 0,
                           "pending": None, "processing": None, "response": None})
            continue
        wave = 1 + 0.6 * math.sin(i / 6.0) + rnd.random() * 0.3
        total = int(rate * wave * slot)
        failed = int(total / fail_every * (1 + rnd.random())) if fail_every else 0
        processing = ms / 1000 * (0.8 + 0.5 * wave)
        pending = processing * 0.05 * (1 + 2 * rnd.random())
        points.append({"t": t, "seconds": slot, "rate": total / slot, "success": total - failed, "failure": failed,
                       "pending": _dist(pending, 1.5), "processing": _dist(processing),
                       "response": _dist(processing + pending)})
    return points


def _series(now: float, rate: float, ms: float, fail_every: int, seed: int, idle_before: int = 0) -> dict[str, Any]:
    rnd = random.Random(seed)
    minutes = _points(now, 10, rate, ms, fail_every, rnd, idle_before)
    hour = _points(now, 60, rate, ms, fail_every, rnd, idle_before)
    ok, failed = sum(p["success"] for p in minutes[-6:]), sum(p["failure"] for p in minutes[-6:])
    return {"success": sum(p["success"] for p in hour), "failure": sum(p["failure"] for p in hour),
            "readings": {"pending": _dist(ms / 20000), "processing": _dist(ms / 1000), "response": _dist(ms / 1000)},
            "last_minute": {"t": minutes[-6]["t"], "seconds": 60, "rate": (ok + failed) / 60, "success": ok,
                            "failure": failed, "pending": _dist(ms / 20000), "processing": _dist(ms / 1000),
                            "response": _dist(ms / 1000 * 1.05)},
            "minutes": minutes, "hour": hour}


HOSTILE = "<script>alert('x')</script>&"


def synthetic_status(hostile: bool = False) -> dict[str, Any]:
    now = time.time()
    interfaces = {"http_api": _series(now, 42.0, 18, 40, 1), "retry": _series(now, 0.5, 9, 8, 3),
                  "performance": _series(now, 0.1, 3, 0, 2, idle_before=40),
                  HOSTILE if hostile else "orders": _series(now, 7.0, 55, 0, 4)}
    for name, series in interfaces.items():
        series["in_flight"] = 3 if name == "http_api" else 0
    resources = {"postgresql_orders": _series(now, 40.0, 6, 200, 5), "smtp": _series(now, 0.8, 120, 10, 6, 20)}
    resources["postgresql_orders"]["pool"] = {"size": 10, "busy": 4, "queued": 1, "free": 5}
    resources["smtp"]["pool"] = {"size": 2, "busy": 0, "queued": 0, "free": 1}
    message = "smtp is slow: 2.1 s to send" + (" <img src=x onerror=alert(1)>" if hostile else "")
    return {
        "cage": "billing", "node": "node1", "pid": 4242, "started": now - 7260, "now": now, "uptime": 7260.0,
        "cage_wide": {"cpu_percent": 37.5, "cpu_user_seconds": 812.4, "cpu_system_seconds": 97.1,
                      "rss_bytes": 187 * 2**20, "threads": 27, "requests_in_flight": 3, "requests_queued": 0,
                      "workers_busy": 3, "workers_size": 10, "retry_queues": {"retry": 12, "mail": 0}},
        "interfaces": interfaces, "resources": resources,
        "modules": [{"name": "interface_http_api", "version": 3, "loaded": now - 300},
                    {"name": "orders", "version": 1, "loaded": now - 7200},
                    {"name": "billing_rules", "version": 2, "loaded": now - 1800}],
        "notifications": [
            {"time": now - 60, "level": "WARNING", "message": message, "count": 3, "source": "node1.billing"},
            {"time": now - 900, "level": "ERROR", "message": "payment gateway refused 2 orders", "count": 1,
             "source": "node1.billing"},
            {"time": now - 3000, "level": "INFO", "message": "tariffs reloaded", "count": 1,
             "source": "node1.billing"}],
    }


# --- the page, in-process ----------------------------------------------------------------------


def test_the_page_has_rate_queue_and_processing_charts_for_both_ranges_of_each_interface_and_resource() -> None:
    status = synthetic_status()
    html = page.performance_page(status, refresh_seconds=7)
    entities = len(status["interfaces"]) + len(status["resources"])
    assert html.count('<svg class="chart"') == entities * 6  # (rate, queue wait, processing) x (10 min, hour)
    assert html.count("<polyline") >= entities * 6
    assert '<meta http-equiv="refresh" content="7">' in html and 'data-refresh="7"' in html
    for figure in ("187.0 MB", "38 %", "3 / 10", "4 / 10", "interface_http_api", "/metrics", "/status.json",
                   "/notifications", "payment gateway refused 2 orders"):
        assert figure in html
    assert "/cluster" not in html  # only a health_monitor cage has it
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing loaded from elsewhere


def test_names_and_messages_from_a_cage_are_escaped() -> None:
    status = synthetic_status(hostile=True)
    pages = [page.performance_page(status), page.notifications_page(status, status["notifications"])]
    for html in pages:
        assert html.count("<script") == 1  # our own refresh script, nothing else
        assert "<img" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;" in pages[0]
    assert "&lt;img src=x onerror=alert(1)&gt;" in pages[1]


def test_the_notifications_page_lists_newest_first_with_level_colours() -> None:
    status = synthetic_status()
    html = page.notifications_page(status, status["notifications"])
    assert html.index("smtp is slow") < html.index("payment gateway") < html.index("tariffs reloaded")
    for level in ("WARNING", "ERROR", "INFO"):
        assert f'class="level level-{level}"' in html
    assert "\u00d73" in html  # a message repeated three times says so


def test_figures_are_written_for_people() -> None:
    assert [page.human_seconds(s) for s in (0.0005, 0.0123, 0.25, 2.5)] == ["500 µs", "12.3 ms", "250 ms", "2.5 s"]
    assert [page.human_rate(r) for r in (0, 0.05, 4.25, 12345)] == ["0/s", "3/min", "4.25/s", "12,345/s"]
    assert page.human_bytes(187 * 2**20) == "187.0 MB"
    assert page.human_duration(7260) == "2 h 1 min"
    assert [page.nice_ceiling(v) for v in (0.0, 0.7, 1.0, 1.2, 2.2, 3.0, 0.031)] == [1.0, 1.0, 1.0, 2.0, 2.5, 5.0, 0.05]


def test_a_chart_with_gaps_breaks_its_line_and_one_without_data_says_so() -> None:
    svg = page.chart([("c-p50", [0.1, 0.2, None, None, 0.3, 0.4, None, 0.5])], page.human_seconds, ("a", "b"), "t")
    assert svg.count("<polyline") == 2 and svg.count("<circle") == 1
    assert "500 ms" in svg  # the maximum, labelled
    empty = page.chart([("c-p50", [None] * 60)], page.human_seconds, ("a", "b"), "t")
    assert "no requests" in empty and "<polyline" not in empty


def test_an_hour_of_real_statistics_is_drawn() -> None:
    """monitor.stats.Statistics fed an hour of requests on a controllable clock: its snapshot
    is drawn as it comes, every chart with its lines."""
    clock = [1_700_000_000.0]
    stats = Statistics(clock=lambda: clock[0])
    for i in range(3600):
        clock[0] += 1.0
        stats.request("http", 0.001, 0.2 if i % 7 == 0 else 0.02, 0.021, i % 13 != 0)
        stats.resource("db", 0.0005, 0.004, True)
    status = synthetic_status()
    snapshot = stats.snapshot()
    status["interfaces"], status["resources"] = snapshot["interfaces"], snapshot["resources"]
    status["now"] = clock[0]
    html = page.performance_page(status)
    assert html.count('<svg class="chart"') == 2 * 6
    assert html.count("<polyline") == 2 * 2 * (2 + 3 + 3)  # ok and failed; p50, p95, p99 twice; both ranges
    assert "no requests" not in html


# --- /metrics, in-process, from totals of the contract's shape -----------------------------------


class _Totals:
    def __init__(self, totals: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.totals = totals

    def collect(self) -> Iterator[Any]:
        yield from prometheus.totals_metrics(self.totals, ["billing", "node1"])


def _buckets(values: list[float]) -> list[tuple[float, int]]:
    return [(le, sum(v <= le for v in values)) for le in BUCKETS]


def test_totals_become_counters_and_histograms_that_promtool_accepts() -> None:
    values = [0.003] * 7 + [0.03] * 2
    totals = {("interface", "http"): {"success": 8, "failure": 1,
                                      "buckets": {r: _buckets(values) for r in ("pending", "processing", "response")},
                                      "sum": {r: sum(values) for r in ("pending", "processing", "response")}},
              ("resource", "db"): {"success": 3, "failure": 0,
                                   "buckets": {r: _buckets([0.2] * 3) for r in ("pending", "processing")},
                                   "sum": {"pending": 0.6, "processing": 0.6}}}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Totals(totals))  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    samples = _samples(text)
    assert samples["pmnc_interface_requests_total", ("http", "success")] == 8
    assert samples["pmnc_interface_requests_total", ("http", "failure")] == 1
    assert samples["pmnc_interface_processing_seconds_bucket", ("http", "0.005")] == 7
    assert samples["pmnc_interface_processing_seconds_bucket", ("http", "0.05")] == 9
    assert samples["pmnc_interface_processing_seconds_count", ("http",)] == 9
    assert samples["pmnc_resource_calls_total", ("db", "success")] == 3
    assert samples["pmnc_resource_processing_seconds_bucket", ("db", "0.1")] == 0
    assert samples["pmnc_resource_processing_seconds_bucket", ("db", "+Inf")] == 3
    _promtool_accepts(text)


def _samples(text: str) -> dict[tuple[str, tuple[str, ...]], float]:
    """(sample name, its labels but cage and node, in order: interface/resource, outcome or le) → value."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = tuple(v for k, v in s.labels.items() if k in ("interface", "resource", "queue", "module"))
            labels += tuple(v for k, v in s.labels.items() if k in ("outcome", "le"))
            found[s.name, labels] = s.value
    return found


def _promtool_accepts(text: str) -> None:
    if PROMTOOL is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    checked = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert checked.returncode == 0 and not checked.stdout.strip() and not checked.stderr.strip(), checked


# --- config -------------------------------------------------------------------------------------

THE_ORIGINALS_KEYS = dict(  # cages/.shared/config_interface_performance.py of Pythomnic3k, but for its protocol
    listener_address=("127.0.0.1", 0), max_connections=100, ssl_key_cert_file=None, ssl_ca_cert_file=None,
    ssl_ciphers=None, response_encoding="ascii", original_ip_header_fields=(), allowed_methods=("GET",),
    keep_alive_support=True, keep_alive_idle_timeout=120.0, keep_alive_max_requests=10,
    gzip_content_types=("text/.+",), refresh_seconds=10, css_font_family="DejaVu Sans Mono, monospace")


def test_the_originals_config_keys_are_accepted_and_basic_needs_both_username_and_password(tmp_path: Path) -> None:
    (tmp_path / "cages" / "sample").mkdir(parents=True)
    runtime = ServedLoader(str(tmp_path / "cages"), "sample", "node1").runtime
    interface = performance.Interface("performance", runtime, dict(THE_ORIGINALS_KEYS))
    assert interface.refresh_seconds == 10 and interface.css_font_family == "DejaVu Sans Mono, monospace"
    response: dict[str, Any] = {"headers": {}}
    interface._html(response, "p95 5 µs")  # the original's "ascii": what it cannot hold becomes a reference
    assert response["content"] == b"p95 5 &#181;s" and response["headers"]["content-type"] == "text/html; charset=ascii"
    assert performance.Interface("performance", runtime, {}).config["listener_address"] == ("127.0.0.1", 0)
    with pytest.raises(ConfigError, match="username and password go together"):
        performance.Interface("performance", runtime, {"username": "monitor"})


def test_the_template_config_names_the_protocol_and_listens_on_loopback() -> None:
    namespace: dict[str, Any] = {}
    exec((ROOT / "cages" / ".shared" / "config_interface_performance.py").read_text(), namespace)
    assert namespace["config"] == {"protocol": "performance", "listener_address": ("127.0.0.1", 0),
                                   "refresh_seconds": 10}


# --- a real cage under a known load --------------------------------------------------------------

HANDLER = module_source("""
    import time
    def process_request(request, response):
        if request["url"].startswith("/fail"):
            raise Exception("failing as asked")
        if request["url"].startswith("/slow"):
            time.sleep(0.03)
        if request["url"].startswith("/void"):
            pmnc.transaction.void.success(1)
            try:
                pmnc.transaction.void.failure()
            except Exception:
                pass
        if request["url"].startswith("/notify"):
            pmnc.notify.warning("a <img src=x onerror=alert(1)> & \\"quotes\\"")
        response["content"] = "ok"
        response["headers"]["content-type"] = "text/plain"
""", ["process_request"])

FAST, FAILED, SLOW = 20, 5, 4
PASSWORD = "s3cret pass"


class Monitored:
    def __init__(self, process: CageProcess) -> None:
        self.process = process
        self.http = process.port("http")
        self.open = process.port("performance")  # no password
        self.guarded = process.port("guarded")  # username and password

    def get(self, path: str, port: int | None = None, auth: tuple[str, str] | None = None,
            method: str = "GET") -> tuple[int, Any, bytes]:
        """(status, headers: case-insensitive, body)."""
        request = urllib.request.Request(f"http://127.0.0.1:{port or self.open}{path}", method=method)
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    root = make_tree(tmp_path_factory.mktemp("performance"), interfaces={
        "http": {"protocol": "http", "listener_address": ("127.0.0.1", 0)},
        "performance": {"protocol": "performance", "refresh_seconds": 1},
        "guarded": {"protocol": "performance", "username": "monitor", "password": PASSWORD},
    }, files={"interface_http.py": HANDLER})
    process = CageProcess(root).start()
    try:
        cage = Monitored(process)
        # /notify and /void are fast successes too
        for path in ["/ok"] * (FAST - 3) + ["/notify", "/void", "/void"] + ["/fail"] * FAILED + ["/slow"] * SLOW:
            status, _, _ = cage.get(path, cage.http)
            assert status == (500 if path == "/fail" else 200)
        yield cage
    finally:
        process.kill()


def test_the_log_says_where_the_monitor_is(monitored: Monitored) -> None:
    assert f"interface performance serves the monitor at http://127.0.0.1:{monitored.open}/" in \
        monitored.process.log_text()


def test_metrics_show_exactly_the_requests_sent_with_latencies_in_their_buckets(monitored: Monitored) -> None:
    def metrics() -> dict[tuple[str, tuple[str, ...]], float]:
        status, headers, body = monitored.get("/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return _samples(body.decode())

    samples = wait_until(lambda: (s := metrics()).get(("pmnc_interface_requests_total", ("http", "failure")))
                         == FAILED and s, message="the failures counted")
    assert samples["pmnc_interface_requests_total", ("http", "success")] == FAST + SLOW
    # a 30 ms handler: counted at 50 ms, not at 25 ms; the others well within 25 ms
    assert samples["pmnc_interface_processing_seconds_bucket", ("http", "0.025")] == FAST + FAILED
    assert samples["pmnc_interface_processing_seconds_bucket", ("http", "0.05")] == FAST + FAILED + SLOW
    assert samples["pmnc_interface_processing_seconds_count", ("http",)] == FAST + FAILED + SLOW
    assert samples["pmnc_interface_response_seconds_bucket", ("http", "0.025")] <= FAST + FAILED
    assert samples["pmnc_workers_size", ()] == 10
    assert samples["pmnc_resource_calls_total", ("void", "success")] == 2
    assert samples["pmnc_resource_calls_total", ("void", "failure")] == 2
    assert samples["pmnc_resource_processing_seconds_count", ("void",)] == 4
    assert samples["pmnc_resource_pool_size", ("void",)] == 10
    assert samples["pmnc_module_version", ("interface_http",)] == 1
    assert samples["process_resident_memory_bytes", ()] > 0
    _promtool_accepts(monitored.get("/metrics")[2].decode())


def test_status_json_has_the_same_counts(monitored: Monitored) -> None:
    wait_until(lambda: json.loads(monitored.get("/status.json")[2])["interfaces"]["http"]["failure"] == FAILED,
               message="the failures counted")
    code, headers, body = monitored.get("/status.json")
    assert code == 200 and headers["Content-Type"].startswith("application/json")
    figures = json.loads(body)
    http = figures["interfaces"]["http"]
    assert (http["success"], http["failure"]) == (FAST + SLOW, FAILED)
    assert http["readings"]["processing"]["count"] == FAST + FAILED + SLOW
    assert 0.03 <= http["readings"]["processing"]["max"] < 0.05
    assert figures["cage"] == "sample" and figures["cage_wide"]["workers_size"] == 10
    assert {"performance", "guarded", "http"} <= set(figures["interfaces"])
    void = figures["resources"]["void"]
    assert (void["success"], void["failure"]) == (2, 2)
    assert set(void["pool"]) == {"size", "busy", "queued", "free"}
    assert (void["pool"]["size"], void["pool"]["busy"], void["pool"]["queued"]) == (10, 0, 0)
    assert any(m["name"] == "interface_http" and m["version"] == 1 for m in figures["modules"])


def test_a_notification_with_markup_is_shown_escaped(monitored: Monitored) -> None:
    def shown(path: str) -> str | None:
        html = monitored.get(path)[2].decode()
        return html if "onerror" in html else None

    for path in ("/notifications", "/performance"):
        html = wait_until(lambda path=path: shown(path), message=f"the notification on {path}")
        assert "<img" not in html and "a &lt;img src=x onerror=alert(1)&gt; &amp; &quot;quotes&quot;" in html


def test_basic_auth_refuses_no_or_a_wrong_password_and_accepts_the_right_one(monitored: Monitored) -> None:
    for auth in (None, ("monitor", "wrong"), ("someone", PASSWORD)):
        status, headers, body = monitored.get("/metrics", monitored.guarded, auth)
        assert status == 401 and headers["WWW-Authenticate"].startswith('Basic realm="pmnc monitor of cage sample"')
        assert b"pmnc_" not in body
    for path in ("/", "/metrics", "/status.json", "/notifications"):
        assert monitored.get(path, monitored.guarded, ("monitor", PASSWORD))[0] == 200


def test_unknown_pages_are_404_and_other_methods_405(monitored: Monitored) -> None:
    assert monitored.get("/etc/passwd")[0] == 404
    assert monitored.get("/cluster")[0] == 404  # not a health_monitor cage
    assert monitored.get("/metrics", method="POST")[0] == 405
    status, headers, body = monitored.get("/performance", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 1000
    status, headers, body = monitored.get("/performance?x=1")
    assert status == 200 and headers["Content-Security-Policy"].startswith("default-src 'none'")


def test_a_client_certificate_can_be_required(in_process_cage: Callable[..., InProcessCage], tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    keys.make_ca(folder)
    keys.make_server(folder, "cage")
    keys.make_client(folder, "alice")
    cage = in_process_cage(interfaces={"performance": {
        "protocol": "performance", "ssl_key_cert_file": str(folder / "cage.pem"),
        "ssl_ca_cert_file": str(folder / "ca.pem"), "ssl_client_cert_required": True}})
    port = cage.address("performance")[1]
    assert f"interface performance serves the monitor at https://127.0.0.1:{port}/" in cage.log_text()

    def get(cert: Path | None) -> int:
        context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
        if cert is not None:
            context.load_cert_chain(str(cert))
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/status.json", context=context, timeout=10) as r:
            return int(r.status)

    assert get(folder / "alice.pem") == 200
    with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
        get(None)


def test_an_original_cages_performance_config_naming_http_serves_the_pages(tmp_path: Path) -> None:
    """The original's config_interface_performance.py says protocol "http" (its pages were a module
    of .shared): without an interface_performance.py of the cage's own, the pages are served."""
    root = make_tree(tmp_path, interfaces={"performance": {
        "protocol": "http", "listener_address": ("127.0.0.1", 0), "max_connections": 100,
        "ssl_key_cert_file": None, "ssl_ca_cert_file": None, "ssl_ciphers": None, "response_encoding": "ascii",
        "original_ip_header_fields": (), "allowed_methods": ("GET",), "keep_alive_support": True,
        "keep_alive_idle_timeout": 120.0, "keep_alive_max_requests": 10, "gzip_content_types": ("text/.+",),
        "refresh_seconds": 10, "css_font_family": "DejaVu Sans Mono, monospace"}})
    (root / "cages" / "sample" / "interface_performance.py").unlink()  # make_tree writes a handler for each
    cage = InProcessCage(root).start()
    try:
        port = cage.address("performance")[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=10) as r:
            assert json.loads(r.read())["cage"] == "sample"
    finally:
        cage.stop()


# --- in a real browser ----------------------------------------------------------------------------


def _chromium(url: str, *flags: str) -> subprocess.CompletedProcess[str]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian package chromium)")
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", "--hide-scrollbars", *flags, url], capture_output=True, text=True, timeout=60)


def _console(stderr: str) -> list[str]:
    """What the page wrote to the console: errors, CSP refusals, uncaught exceptions."""
    return [line for line in stderr.splitlines() if "CONSOLE" in line]


def test_a_real_cages_page_in_chromium_has_its_charts_refreshes_and_logs_no_console_error(
        monitored: Monitored) -> None:
    def served() -> int:  # requests of the performance interface so far, this one not yet counted
        return int(json.loads(monitored.get("/status.json")[2])["interfaces"]["performance"]["success"])

    before = served()
    # the page refreshes each second: in 3.5 s of the browser's time it fetches and swaps itself in again
    run = _chromium(f"http://127.0.0.1:{monitored.open}/performance", "--virtual-time-budget=3500", "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    assert _console(run.stderr) == []
    assert served() - before - 1 >= 2  # the page, and at least one refresh
    dom = run.stdout
    assert dom.count('<svg class="chart"') == 6 * 4  # http, performance, guarded; the resource void
    assert "stale" not in re.search(r"<body[^>]*>", dom).group(0)  # type: ignore[union-attr]
    assert re.search(r"<h3>http</h3>", dom)


def test_the_screenshot_of_a_busy_cage(tmp_path: Path) -> None:
    """The page of a cage that has had an hour of traffic (synthetic), as a person sees it;
    PMNC_SCREENSHOT=1 keeps it as docs/performance.png."""
    html = tmp_path / "performance.html"
    html.write_text(page.performance_page(synthetic_status(), refresh_seconds=10))
    shot = tmp_path / "performance.png"
    run = _chromium(html.as_uri(), f"--screenshot={shot}", "--window-size=1280,2400")
    assert run.returncode == 0 and shot.stat().st_size > 50_000, run.stderr[-2000:]
    assert _console(run.stderr) == []
    if os.environ.get("PMNC_SCREENSHOT"):
        shutil.copy(shot, ROOT / "docs" / "performance.png")
