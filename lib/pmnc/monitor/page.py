"""The monitor's HTML: /performance and /notifications, drawn here from status.cage_status().

Charts are small inline SVG (a few polylines, a frame, the maximum labelled), drawn on the
server: the page needs no plotting library, no external resource and no JavaScript. A short
inline script, when it runs, fetches the page again every refresh_seconds and swaps the
content in place (no flicker, the scroll position kept); without it a <noscript> meta refresh
reloads the page. Every text that comes from a cage (names, messages) is HTML-escaped.

The helpers (`document`, `chart`, `escape`, `human_*`, `HEADERS`) are for the other pages
of the monitor too (health.py's cluster page), so that they look alike.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

NOTIFICATIONS_ON_PAGE = 5  # the performance page shows the latest few; /notifications all
NONE = "\u2013"  # an en dash: no figure

# --- formatting for people ---------------------------------------------------------------


def escape(text: Any) -> str:
    return html.escape(str(text), quote=True)


def human_seconds(seconds: float | None) -> str:
    if seconds is None:
        return NONE
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def human_rate(per_second: float | None) -> str:
    if per_second is None:
        return NONE
    if per_second == 0:
        return "0/s"
    if per_second < 0.1:
        return f"{per_second * 60:.2g}/min"
    return f"{per_second:.3g}/s" if per_second < 1000 else f"{per_second:,.0f}/s"


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def clock(epoch: float, seconds: bool = True) -> str:
    return time.strftime("%H:%M:%S" if seconds else "%H:%M", time.localtime(epoch))


def human_count(count: int) -> str:
    return f"{count:,}".replace(",", "\u202f")  # a narrow no-break space between thousands


# --- the document -----------------------------------------------------------------------

STYLE = """
:root { --bg: #f5f6f8; --card: #fff; --ink: #1d2330; --dim: #6b7385; --line: #e3e6ec;
  --ok: #1f9d55; --bad: #d64545; --p50: #2f6fde; --p95: #e08a00; --p99: #b4308e; --accent: #2f6fde; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink); font: 14px/1.4 FONT; }
main { max-width: 1280px; margin: 0 auto; padding: 16px 20px 40px; }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
header.top { display: flex; flex-wrap: wrap; align-items: baseline; gap: 4px 16px; margin-bottom: 12px; }
header.top h1 { font-size: 20px; margin: 0; font-weight: 600; }
header.top .sub { color: var(--dim); }
nav { margin-left: auto; display: flex; gap: 14px; }
h2 { font-size: 15px; text-transform: uppercase; letter-spacing: .06em; color: var(--dim); margin: 22px 0 8px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px; }
.card, .entity, .panel { background: var(--card); border: 1px solid var(--line); border-radius: 8px; }
.card { padding: 10px 12px; }
.card .label { color: var(--dim); font-size: 12px; }
.card .value { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .note { color: var(--dim); font-size: 12px; }
.entity { padding: 12px 14px; margin-bottom: 10px; }
.entity-head { display: flex; flex-wrap: wrap; align-items: baseline; gap: 4px 18px; margin-bottom: 6px; }
.entity-head h3 { margin: 0; font-size: 16px; word-break: break-all; }
.kind { color: var(--dim); font-size: 12px; }
.figures { display: flex; flex-wrap: wrap; gap: 4px 16px; margin: 0; font-variant-numeric: tabular-nums; }
.figures div { display: flex; gap: 5px; } .figures dt { color: var(--dim); }
.figures dd { margin: 0; font-weight: 600; }
.bad { color: var(--bad); } .ok { color: var(--ok); }
.charts { display: grid; grid-template-columns: 70px repeat(3, minmax(0, 1fr)); gap: 4px 12px; align-items: center; }
.range { color: var(--dim); font-size: 12px; }
figure { margin: 0; } figcaption { font-size: 12px; color: var(--dim); display: flex; gap: 8px; flex-wrap: wrap; }
.key::before { content: ""; display: inline-block; width: 9px; height: 3px; margin: 0 4px 3px 0;
  background: currentColor; }
svg.chart { width: 100%; height: auto; display: block; }
svg.chart .frame { fill: #fbfcfd; stroke: var(--line); } svg.chart .grid { stroke: var(--line); stroke-dasharray: 3 3; }
svg.chart text { font-size: 10px; fill: var(--dim); } svg.chart .empty { font-size: 11px; }
svg.chart polyline { fill: none; stroke-width: 1.6; stroke-linejoin: round; }
.c-ok { color: var(--ok); stroke: var(--ok); fill: var(--ok); }
.c-bad { color: var(--bad); stroke: var(--bad); fill: var(--bad); }
.c-p50 { color: var(--p50); stroke: var(--p50); fill: var(--p50); }
.c-p95 { color: var(--p95); stroke: var(--p95); fill: var(--p95); }
.c-p99 { color: var(--p99); stroke: var(--p99); fill: var(--p99); }
svg.chart polyline.c-ok, svg.chart polyline.c-bad, svg.chart polyline.c-p50, svg.chart polyline.c-p95,
svg.chart polyline.c-p99 { fill: none; }
.columns { display: grid; grid-template-columns: repeat(auto-fit, minmax(380px, 1fr)); gap: 10px; }
.panel { padding: 4px 0; }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 5px 12px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--dim); font-weight: 500; font-size: 12px; } tr:last-child td { border-bottom: 0; }
td.message { white-space: pre-wrap; word-break: break-word; }
.level { font-size: 11px; font-weight: 700; padding: 1px 6px; border-radius: 4px; }
.level-INFO { background: #e3f4ea; color: #17663a; } .level-WARNING { background: #fff1d6; color: #8a5300; }
.level-ERROR { background: #fde2e2; color: #a12626; } .level-ALERT { background: #c81e1e; color: #fff; }
.muted { color: var(--dim); } .empty-note { color: var(--dim); padding: 10px 12px; }
body.stale main { opacity: .55; }
body.stale header.top .sub::after { content: " \\00b7  not updated: the cage does not answer"; color: var(--bad); }
"""

# Fetches the page again every data-refresh seconds and swaps the content in place; a fetch
# that fails marks the page stale and tries again. A constant, so that the page's
# Content-Security-Policy can name its hash.
SCRIPT = """(function () {
  "use strict";
  var seconds = Number(document.body.getAttribute("data-refresh"));
  if (!(seconds > 0) || !window.fetch || !window.DOMParser) { return; }
  function swap() {
    var here = window.location.pathname + window.location.search;  // no credentials in it: fetch refuses those
    fetch(here, {cache: "no-store", credentials: "same-origin"}).then(function (r) {
      if (!r.ok) { throw new Error("HTTP " + r.status); }
      return r.text();
    }).then(function (text) {
      var fresh = new DOMParser().parseFromString(text, "text/html");
      var next = fresh.getElementById("content"), here = document.getElementById("content");
      if (next && here) { here.replaceWith(document.importNode(next, true)); document.title = fresh.title; }
      document.body.classList.remove("stale");
    }, function () {
      document.body.classList.add("stale");
    }).then(function () { window.setTimeout(swap, seconds * 1000); });
  }
  window.setTimeout(swap, seconds * 1000);
})();"""

_SCRIPT_HASH = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()

# What a browser may load for the monitor's pages: nothing from elsewhere, the one script above.
HEADERS = {
    "content-security-policy": (f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{_SCRIPT_HASH}'; "
                                f"connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                                f"frame-ancestors 'none'"),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}

DEFAULT_FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif"


def document(title: str, content: str, *, refresh_seconds: float = 0, font: str | None = None) -> str:
    """A whole page: `content` (HTML) in <main id="content">, refreshed every `refresh_seconds`
    (0: never). `title` is text, escaped here."""
    refresh = int(refresh_seconds) if refresh_seconds and refresh_seconds > 0 else 0
    meta = f'<noscript><meta http-equiv="refresh" content="{refresh}"></noscript>' if refresh else ""
    style = STYLE.replace("FONT", _css_font(font))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{escape(title)}</title>{meta}<style>{style}</style></head>\n'
            f'<body data-refresh="{refresh}"><main id="content">\n{content}\n</main>'
            f'<script>{SCRIPT}</script></body></html>\n')


def _css_font(font: str | None) -> str:
    """css_font_family from the config, kept to what a font list may hold: it goes into the style."""
    cleaned = re.sub(r"[^\w\s,'\"-]", "", font or "").strip()
    return cleaned or DEFAULT_FONT


# --- charts --------------------------------------------------------------------------------

W, H = 300, 92  # the viewBox; the chart scales to its column
TOP, BOTTOM, LEFT, RIGHT = 14, 14, 2, 2


def chart(lines: Sequence[tuple[str, Sequence[float | None]]], fmt: Callable[[float], str],
          x_labels: tuple[str, str], title: str) -> str:
    """An SVG of `lines` ((css class, values), values evenly spaced; None: no data there),
    from 0 up to a round maximum, which is labelled; `x_labels` under the ends."""
    values = [v for _, vs in lines for v in vs if v is not None]
    top = nice_ceiling(max(values)) if values else 0.0
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    parts = [f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" xmlns="http://www.w3.org/2000/svg">',
             f"<title>{escape(title)}</title>",
             f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}"/>',
             f'<line class="grid" x1="{LEFT}" y1="{TOP + plot_h / 2}" x2="{W - RIGHT}" y2="{TOP + plot_h / 2}"/>',
             f'<text x="{LEFT}" y="{TOP - 3}">{escape(fmt(top) if values else "")}</text>',
             f'<text x="{LEFT}" y="{H - 2}">{escape(x_labels[0])}</text>',
             f'<text x="{W - RIGHT}" y="{H - 2}" text-anchor="end">{escape(x_labels[1])}</text>']
    if not any(v for v in values):
        parts.append(f'<text class="empty" x="{W / 2}" y="{TOP + plot_h / 2 + 4}" text-anchor="middle">'
                     f'{"no requests" if not values else "all zero"}</text>')
    for css, vs in lines:
        if not vs:
            continue
        step = plot_w / max(len(vs) - 1, 1)
        for run in _runs(vs):
            points = [(LEFT + i * step, TOP + plot_h - (v / top * plot_h if top else 0.0)) for i, v in run]
            if len(points) == 1:
                parts.append(f'<circle class="{css}" cx="{points[0][0]:.1f}" cy="{points[0][1]:.1f}" r="1.8"/>')
            else:
                coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
                parts.append(f'<polyline class="{css}" points="{coords}"/>')
    parts.append("</svg>")
    return "".join(parts)


def _runs(values: Sequence[float | None]) -> list[list[tuple[int, float]]]:
    """Stretches of values without a None, with their indices."""
    runs: list[list[tuple[int, float]]] = []
    current: list[tuple[int, float]] = []
    for i, v in enumerate(values):
        if v is None:
            if current:
                runs.append(current)
            current = []
        else:
            current.append((i, v))
    if current:
        runs.append(current)
    return runs


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten at or above `value` (> 0)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for factor in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= factor * power * (1 + 1e-9):
            return factor * power
    return 10.0 * power


# --- /performance ----------------------------------------------------------------------------


def performance_page(status: dict[str, Any], *, refresh_seconds: float = 10, font: str | None = None) -> str:
    """The page of one cage from its cage_status()."""
    where = f"cage {status['cage']} at node {status['node']}"
    sections = [_header(status, "performance"), _cage_wide(status["cage_wide"])]
    for kind, title in (("interfaces", "Interfaces"), ("resources", "Resources")):
        entities = status.get(kind, {})
        body = "".join(_entity(name, series, kind[:-1], status["now"]) for name, series in sorted(entities.items()))
        sections.append(f"<h2>{title}</h2>" + (body or f'<div class="panel empty-note">no {kind} yet</div>'))
    sections.append(f'<div class="columns"><div><h2>Modules</h2>{_modules(status)}</div>'
                    f'<div><h2>Latest notifications</h2>'
                    f'{_notifications(status["notifications"][:NOTIFICATIONS_ON_PAGE], compact=True)}</div></div>')
    return document(f"Performance of {where}", "\n".join(sections), refresh_seconds=refresh_seconds, font=font)


def _header(status: dict[str, Any], page: str) -> str:
    links = [("performance", "/performance", "performance"), ("notifications", "/notifications", "notifications")]
    if "cluster" in status:
        links.append(("cluster", "/cluster", "cluster"))
    links += [("metrics", "/metrics", "/metrics"), ("status", "/status.json", "/status.json")]
    nav = "".join(f'<a href="{href}"{" aria-current=page" if key == page else ""}>{text}</a>'
                  for key, href, text in links)
    return (f'<header class="top"><h1>cage {escape(status["cage"])} <span class="muted">at node</span> '
            f'{escape(status["node"])}</h1><span class="sub">pid {status["pid"]} · up '
            f'{human_duration(status["uptime"])} · {clock(status["now"])}</span><nav>{nav}</nav></header>')


def _cage_wide(c: dict[str, Any]) -> str:
    queues = c.get("retry_queues", {})
    pending = sum(queues.values())
    queue_note = ", ".join(f"{escape(q)} {human_count(n)}" for q, n in sorted(queues.items())) or "no queue"
    cards = [
        ("CPU", f"{c['cpu_percent']:.0f} %",
         f"user {c['cpu_user_seconds']:.1f} s · sys {c['cpu_system_seconds']:.1f} s"),
        ("Memory", human_bytes(c["rss_bytes"]), "resident"),
        ("Threads", human_count(c["threads"]), "in the process"),
        ("In flight", human_count(c["requests_in_flight"]), "requests"),
        ("Queued", human_count(c["requests_queued"]), "waiting for a worker"),
        ("Workers", f"{c['workers_busy']} / {c['workers_size']}", "busy / threads"),
        ("Retry queues", human_count(pending), queue_note),
    ]
    return '<section class="cards">' + "".join(
        f'<div class="card"><div class="label">{label}</div><div class="value">{value}</div>'
        f'<div class="note">{note}</div></div>' for label, value, note in cards) + "</section>"


def _entity(name: str, series: dict[str, Any], kind: str, now: float) -> str:
    last = series.get("last_minute") or {}
    figures = [("last minute", human_rate(last.get("rate", 0.0)) if last else NONE, ""),
               ("ok", human_count(series.get("success", 0)), "ok"),
               ("failed", human_count(series.get("failure", 0)), "bad" if series.get("failure") else "")]
    reading = "response" if kind == "interface" else "processing"
    p95 = (last.get(reading) or {}).get("p95") if last else None
    figures.append((f"p95 {reading}", human_seconds(p95), ""))
    if "in_flight" in series:
        figures.append(("in flight", human_count(series["in_flight"]), ""))
    pool = series.get("pool")
    if pool:
        figures.append(("pool busy", f"{pool['busy']} / {pool['size']}", ""))
        figures.append(("queued", human_count(pool["queued"]), "bad" if pool["queued"] else ""))
        figures.append(("free", human_count(pool["free"]), ""))
    dl = "".join(f'<div><dt>{label}</dt><dd class="{css}">{value}</dd></div>' for label, value, css in figures)
    rows = "".join(_chart_row(title, series.get(key) or [], now, span)
                   for title, key, span in (("last 10 min", "minutes", 600), ("last hour", "hour", 3600)))
    return (f'<article class="entity"><div class="entity-head"><h3>{escape(name)}</h3>'
            f'<span class="kind">{kind}</span><dl class="figures">{dl}</dl></div>'
            f'<div class="charts"><span></span>'
            f'<figcaption><span class="key c-ok">ok/s</span><span class="key c-bad">failed/s</span></figcaption>'
            f'<figcaption>queue wait <span class="key c-p50">p50</span><span class="key c-p95">p95</span>'
            f'<span class="key c-p99">p99</span></figcaption>'
            f'<figcaption>processing <span class="key c-p50">p50</span><span class="key c-p95">p95</span>'
            f'<span class="key c-p99">p99</span></figcaption>{rows}</div></article>')


def _chart_row(title: str, points: list[dict[str, Any]], now: float, span: int) -> str:
    start = points[0]["t"] if points else now - span
    labels = (clock(start, seconds=False), "now")

    def rate(field: str) -> list[float | None]:
        return [p.get(field, 0) / max(p.get("seconds") or 1, 1) for p in points]

    def percentiles(reading: str) -> list[tuple[str, list[float | None]]]:
        return [(f"c-{q}", [(p.get(reading) or {}).get(q) for p in points]) for q in ("p50", "p95", "p99")]

    charts = [chart([("c-ok", rate("success")), ("c-bad", rate("failure"))], human_rate, labels,
                    f"requests per second, {title}"),
              chart(percentiles("pending"), human_seconds, labels, f"time in the queue, {title}"),
              chart(percentiles("processing"), human_seconds, labels, f"processing time, {title}")]
    return f'<span class="range">{title}</span>' + "".join(f"<figure>{c}</figure>" for c in charts)


def _modules(status: dict[str, Any]) -> str:
    modules = status.get("modules", [])
    if not modules:
        return '<div class="panel empty-note">no module loaded yet</div>'
    now = status["now"]
    rows = "".join(f'<tr><td>{escape(m["name"])}</td><td>{m["version"]}</td><td>{clock(m["loaded"])} '
                   f'<span class="muted">({human_duration(now - m["loaded"])} ago)</span></td></tr>'
                   for m in sorted(modules, key=lambda m: -m["loaded"]))
    return (f'<div class="panel"><table><thead><tr><th>module</th><th>version</th><th>loaded</th></tr></thead>'
            f"<tbody>{rows}</tbody></table></div>")


def _notifications(notifications: list[dict[str, Any]], *, compact: bool = False) -> str:
    if not notifications:
        return '<div class="panel empty-note">no notifications</div>'
    rows = []
    for n in notifications:
        level = str(n.get("level", "INFO")).upper()
        css = level if level in ("INFO", "WARNING", "ERROR", "ALERT") else "INFO"
        when = time.strftime("%b %d %H:%M:%S", time.localtime(n.get("time", 0)))
        count = n.get("count", 1)
        repeats = f' <span class="muted">\u00d7{count}</span>' if count and count > 1 else ""
        source = "" if compact else f'<td class="muted">{escape(n.get("source", ""))}</td>'
        rows.append(f'<tr><td class="muted">{when}</td><td><span class="level level-{css}">{escape(level)}</span></td>'
                    f'<td class="message">{escape(n.get("message", ""))}{repeats}</td>{source}</tr>')
    head = "" if compact else ("<thead><tr><th>time</th><th>level</th><th>message</th><th>source</th></tr></thead>")
    more = '<div class="empty-note"><a href="/notifications">all notifications</a></div>' if compact else ""
    return f'<div class="panel"><table>{head}<tbody>{"".join(rows)}</tbody></table>{more}</div>'


# --- /notifications ----------------------------------------------------------------------------


def notifications_page(status: dict[str, Any], notifications: list[dict[str, Any]], *,
                       refresh_seconds: float = 10, font: str | None = None) -> str:
    """The kept notifications, newest first (as Notifications.recent gives them)."""
    where = f"cage {status['cage']} at node {status['node']}"
    content = (_header(status, "notifications") + "<h2>Notifications, newest first</h2>"
               + _notifications(notifications))
    return document(f"Notifications of {where}", content, refresh_seconds=refresh_seconds, font=font)
