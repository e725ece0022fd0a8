"""The `performance` interface: the cage's monitor over HTTP, with a built-in handler.

    GET /  and /performance   the page: figures and SVG charts of every interface and resource
    GET /metrics              Prometheus text format (monitor/prometheus.py)
    GET /status.json          monitor.status.cage_status(): the same figures, for scripts
    GET /notifications        pmnc.notify's kept notifications, newest first
    GET /cluster              the health monitor's page, in a cage named health_monitor
    anything else 404; methods other than GET and HEAD 405

It is an HTTP interface (protocols/http.py: its connection limits, TLS, keep-alive and
gzip) whose requests are answered here rather than by a cage's interface_<name>.py. It
listens on loopback, any free port, unless configured; the log says where. `username` and
`password` ask for HTTP Basic; with HTTPS, `ssl_client_cert_required` asks for a client
certificate of the CA in ssl_ca_cert_file. Every key of the original's
config_interface_performance.py is accepted (`css_font_family` sets the page's font).
"""

from __future__ import annotations

import hmac
import json
import os
import time
from typing import TYPE_CHECKING, Any

from pmnc import log
from pmnc.errors import ConfigError, exc_string
from pmnc.monitor import page, status
from pmnc.monitor.prometheus import CONTENT_TYPE, Metrics
from pmnc.protocols import http
from pmnc.protocols.httpwire import HttpRequest, error_response, finish_response, new_response
from pmnc.request import current as current_request
from pmnc.schema import Key, address

if TYPE_CHECKING:
    from pmnc.runtime import Runtime

NOTIFICATIONS_LISTED = 100
PAGES = ("/", "/performance", "/metrics", "/status.json", "/notifications", "/cluster")


class Interface(http.Interface):
    protocol = "performance"
    handler_module = False  # the pages are built in: no interface_performance.py
    keys = http.Interface.keys.extend(
        listener_address=Key(("127.0.0.1", 0), address),  # loopback, any free port: the log says which
        allowed_methods=Key(("GET", "HEAD")),
        gzip_content_types=Key(("text/.+", "application/json")),
        refresh_seconds=Key(10, int),  # the page reloads itself this often (0: never)
        css_font_family=Key(None),  # the page's font (CSS font-family); None: the system's sans-serif
        username=Key(None, str), password=Key(None, str),  # both: HTTP Basic protects every page
    )

    def __init__(self, name: str, runtime: Runtime, config: dict[str, Any]) -> None:
        super().__init__(name, runtime, config)
        s = self.config
        self.refresh_seconds: int = max(s["refresh_seconds"], 0)
        self.css_font_family: str | None = s["css_font_family"]
        self.username: str | None = s["username"]
        self.password: str | None = s["password"]
        if (self.username is None) != (self.password is None):
            raise ConfigError(f"config_interface_{name}.py: username and password go together (HTTP Basic)")
        self.metrics = Metrics(runtime)

    def start(self) -> None:
        super().start()
        host, port = self.address
        scheme = "https" if self._server_ssl else "http"
        log.message(f"interface {self.name} serves the monitor at {scheme}://{host}:{port}/")

    # --- a request, on a worker thread -------------------------------------------------

    def handle(self, request: HttpRequest, keep_alive: bool) -> tuple[bytes, bool]:
        """The answer to one request, rendered (HEAD: without its body)."""
        response = new_response(keep_alive)
        try:
            self.answer(request, response)
            if self.ceasing:
                keep_alive = False
                response["headers"]["connection"] = "close"
            data, keep_alive = finish_response(response, keep_alive, self.response_encoding,
                                               self.gzip_content_types, request.headers.get("accept-encoding", ""))
        except Exception as e:
            current_request().failed = True  # a failure in the statistics, though answered with a 500
            log.error(f"interface {self.name}: {request.method} {request.url[:200]} failed: "
                      f"{exc_string(e, stack=False)}")
            return error_response(500, "the monitor failed to draw this page, the cage's log says why"), False
        if request.method == "HEAD":
            data = data[:data.index(b"\r\n\r\n") + 4]
        return data, keep_alive

    def answer(self, request: HttpRequest, response: dict[str, Any]) -> None:
        """Fill `response` for `request`: the page, or 401, 404, 405."""
        headers = response["headers"]
        if not self.authorized(request):
            realm = f"pmnc monitor of cage {self.runtime.name}"
            _text(response, 401, "authentication required")
            headers["www-authenticate"] = f'Basic realm="{realm}", charset="UTF-8"'
            return
        path = request.url.partition("?")[0].partition("#")[0]
        if path not in PAGES or (path == "/cluster" and self.runtime.health is None):
            _text(response, 404, "no such page: the monitor has /performance, /notifications, /metrics "
                                 "and /status.json")
            return
        if request.method not in ("GET", "HEAD"):
            _text(response, 405, "the monitor's pages are only read: GET or HEAD")
            headers["allow"] = "GET, HEAD"
            return
        if path == "/metrics":
            headers["content-type"] = CONTENT_TYPE
            response["content"] = self.metrics.render()
        elif path == "/status.json":
            headers["content-type"] = "application/json"
            response["content"] = json.dumps(status.cage_status(self.runtime), default=str).encode("ascii")
        else:
            self._html(response, self._page(path))

    def _page(self, path: str) -> str:
        runtime, font = self.runtime, self.css_font_family
        if path == "/notifications":
            return page.notifications_page(_heading(runtime), runtime.notifications.recent(NOTIFICATIONS_LISTED),
                                           refresh_seconds=self.refresh_seconds, font=font)
        if path == "/cluster":
            assert runtime.health is not None
            return runtime.health.page()
        return page.performance_page(status.cage_status(runtime), refresh_seconds=self.refresh_seconds, font=font)

    def _html(self, response: dict[str, Any], text: str) -> None:
        """HTML in the configured encoding: what it cannot encode becomes character references,
        so that even the original's "ascii" shows every character."""
        encoding = self.response_encoding
        response["headers"]["content-type"] = f"text/html; charset={encoding}"
        response["headers"].update(page.HEADERS)
        response["content"] = text.encode(encoding, "xmlcharrefreplace")

    def authorized(self, request: HttpRequest) -> bool:
        """No username configured, or the request's Basic credentials match (compared in
        constant time, both parts always)."""
        if self.username is None or self.password is None:
            return True
        given = request.credentials or ("", "")
        user_ok = hmac.compare_digest(given[0].encode("utf-8"), self.username.encode("utf-8"))
        password_ok = hmac.compare_digest(given[1].encode("utf-8"), self.password.encode("utf-8"))
        return user_ok & password_ok


def _text(response: dict[str, Any], code: int, text: str) -> None:
    response["status_code"] = code
    response["headers"]["content-type"] = "text/plain; charset=utf-8"
    response["content"] = text.encode("utf-8")


def _heading(runtime: Runtime) -> dict[str, Any]:
    """What a page's header shows of the cage, without the statistics."""
    now = time.time()
    heading: dict[str, Any] = {"cage": runtime.name, "node": runtime.node, "pid": os.getpid(),
                               "now": now, "uptime": now - runtime.started_at}
    if runtime.health is not None:
        heading["cluster"] = True
    return heading
