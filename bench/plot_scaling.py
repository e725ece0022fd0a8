"""Draw bench/scaling.json (bench/scaling.py's results) as an SVG: a panel per benchmark, rate against clients.

    .venv/bin/python bench/plot_scaling.py [--json bench/scaling.json] [--out bench/scaling.svg]

Each panel has the client counts on x (log-spaced), the rate on y from 0,
a line for pmnc and one for its peer, and each point's p99 latency written
next to it. The SVG is written as plain text: no plotting library needed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import scaling  # bench/ is on sys.path when run as a script

BENCH = Path(__file__).resolve().parent
PANEL_W, PANEL_H = 330, 270  # one panel, its margins included
PLOT_LEFT, PLOT_RIGHT, PLOT_TOP, PLOT_BOTTOM = 62, 14, 58, 44  # margins of the plot area within a panel
BELOW_ZERO = 18  # the zero line sits this far above the x axis: a p99 under a point near 0 fits there
X_PAD = 26  # the first and last client counts sit this far inside the plot area
FOOTER = 34
COLOURS = {"pmnc": "#1f5fbf", "peer": "#d9661f"}
FONT = 'font-family="Helvetica, Arial, sans-serif"'
CHAR_W = 5.6  # about the width of a character at font size 10, for the box behind a label


def attrs(**values: Any) -> str:
    return " ".join(f'{name.rstrip("_").replace("_", "-")}="{escape(str(v), {chr(34): "&quot;"})}"'
                    for name, v in values.items())


def text(x: float, y: float, content: str, size: int = 11, anchor: str = "middle", **more: Any) -> str:
    return f'<text {attrs(x=f"{x:.1f}", y=f"{y:.1f}", font_size=size, text_anchor=anchor, **more)} {FONT}>' \
           f"{escape(content)}</text>"


def line(x1: float, y1: float, x2: float, y2: float, **more: Any) -> str:
    return f'<line {attrs(x1=f"{x1:.1f}", y1=f"{y1:.1f}", x2=f"{x2:.1f}", y2=f"{y2:.1f}", **more)}/>'


def nice_step(top: float, ticks: int = 4) -> float:
    """A step of 1, 2, 2.5 or 5 times a power of ten giving about `ticks` intervals up to `top`."""
    raw = max(top, 1e-9) / ticks
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)


def fmt_rate(value: float) -> str:
    if value >= 1000 and value % 1000 == 0:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def fmt_ms(value: float | None) -> str:
    return f"p99 {scaling.fmt_ms(value)}"


class Axes:
    """Where a (clients, rate) pair lands in a panel whose top-left corner is (left, top)."""

    def __init__(self, left: float, top: float, clients: list[int], rate_top: float) -> None:
        self.x0, self.x1 = left + PLOT_LEFT, left + PANEL_W - PLOT_RIGHT
        self.base = top + PANEL_H - PLOT_BOTTOM  # the x axis's ticks hang from here
        self.y0, self.y1 = self.base - BELOW_ZERO, top + PLOT_TOP  # y0: rate 0, with room for labels below it
        self.low, self.high = math.log(min(clients)), math.log(max(clients))
        self.rate_top = rate_top

    def x(self, clients: int) -> float:
        if self.high == self.low:
            return (self.x0 + self.x1) / 2
        share = (math.log(clients) - self.low) / (self.high - self.low)
        return self.x0 + X_PAD + share * (self.x1 - self.x0 - 2 * X_PAD)

    def y(self, rate: float) -> float:
        return self.y0 - rate / self.rate_top * (self.y0 - self.y1)


def frame(axes: Axes, clients: list[int], step: float, title: str) -> list[str]:
    """Grid, ticks, axis labels and the panel's title."""
    out = []
    ticks = round(axes.rate_top / step)
    for i in range(ticks + 1):
        y = axes.y(i * step)
        out.append(line(axes.x0, y, axes.x1, y, stroke="#e2e2e2" if i else "#888", stroke_width=1))
        out.append(text(axes.x0 - 6, y + 4, fmt_rate(i * step), 10, "end", fill="#444"))
    for c in clients:
        out.append(line(axes.x(c), axes.base, axes.x(c), axes.base + 4, stroke="#888"))
        out.append(text(axes.x(c), axes.base + 16, str(c), 10, fill="#444"))
    out.append(line(axes.x0, axes.y0, axes.x0, axes.y1, stroke="#888"))
    out.append(text((axes.x0 + axes.x1) / 2, axes.base + 32, "concurrent clients (log scale)", 10, fill="#444"))
    out.append(text(axes.x0 - PLOT_LEFT + 12, (axes.y0 + axes.y1) / 2, title, 10, fill="#444",
                    transform=f"rotate(-90 {axes.x0 - PLOT_LEFT + 12:.1f} {(axes.y0 + axes.y1) / 2:.1f})"))
    return out


def series(axes: Axes, points: list[dict[str, Any]], side: str, other: str) -> tuple[list[str], list[str]]:
    """A polyline with a dot per point, and apart (drawn over every line) each point's p99: above the dot
    if this side is the higher there, else below."""
    colour = COLOURS[side]
    xy = [(axes.x(p["clients"]), axes.y(p[side]["rate"])) for p in points]
    out, labels = [], []
    if len(xy) > 1:
        out.append(f'<polyline {attrs(points=" ".join(f"{x:.1f},{y:.1f}" for x, y in xy), fill="none")} '
                   f'{attrs(stroke=colour, stroke_width=2)}/>')
    last = len(points) - 1
    for n, (p, (x, y)) in enumerate(zip(points, xy, strict=True)):
        out.append(f'<circle {attrs(cx=f"{x:.1f}", cy=f"{y:.1f}", r=3.5, fill=colour)}/>')
        higher = p[side]["rate"] >= p[other]["rate"]
        anchor = "start" if n == 0 and last else "end" if n == last and last else "middle"
        shift = {"start": -4, "end": 4, "middle": 0}[anchor]
        labels += label(x + shift, y - 9 if higher else y + 17, fmt_ms(p[side]["p99_ms"]), anchor, colour)
    return out, labels


def label(x: float, y: float, content: str, anchor: str, colour: str) -> list[str]:
    """Text at font size 10 on a white box, legible where it crosses a line."""
    width = len(content) * CHAR_W + 4
    left = {"start": x - 2, "end": x - width + 2, "middle": x - width / 2}[anchor]
    box = attrs(x=f"{left:.1f}", y=f"{y - 9:.1f}", width=f"{width:.1f}", height=12, fill="white", opacity=0.85)
    return [f"<rect {box}/>", text(x, y, content, 10, anchor, fill=colour)]


def panel(left: float, top: float, bench: dict[str, Any], clients: list[int]) -> list[str]:
    points = sorted(bench["points"], key=lambda p: p["clients"])
    highest = max([p[s]["rate"] for p in points for s in ("pmnc", "peer")] or [1.0])
    step = nice_step(highest * 1.1)
    axes = Axes(left, top, clients, math.ceil(highest * 1.1 / step) * step)
    out = [text(left + PANEL_W / 2, top + 16, bench["title"], 13, font_weight="bold")]
    legend_y = top + 34
    for n, (side, name) in enumerate((("pmnc", "pmnc"), ("peer", bench["peer"]))):
        x = axes.x0 + n * 110
        out.append(line(x, legend_y - 4, x + 18, legend_y - 4, stroke=COLOURS[side], stroke_width=2))
        out.append(text(x + 22, legend_y, name, 11, "start", fill="#222"))
    out += frame(axes, clients, step, bench["title"].split(" (")[0])
    if not points:
        out.append(text((axes.x0 + axes.x1) / 2, (axes.y0 + axes.y1) / 2, "no results", 12, fill="#888"))
    mine, my_labels = series(axes, points, "pmnc", "peer")
    theirs, their_labels = series(axes, points, "peer", "pmnc")
    out += mine + theirs + my_labels + their_labels
    return out


def svg(data: dict[str, Any]) -> str:
    benches = data["benchmarks"]
    clients = sorted(data["clients"])
    width, height = PANEL_W * max(len(benches), 1), PANEL_H + FOOTER
    body = [f'<rect {attrs(x=0, y=0, width=width, height=height, fill="white")}/>']
    for n, bench in enumerate(benches):
        body += panel(n * PANEL_W, 0, bench, clients)
    caption = (f"{data.get('pmnc', 'pmnc')}; Python {data.get('python', '?')}; {data.get('cpus', '?')} CPUs "
               f"shared by servers and clients; {data.get('made', '')}; bench/scaling.py")
    body.append(text(width / 2, PANEL_H + 20, caption, 10, fill="#666"))
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" {attrs(width=width, height=height)} '
            f'viewBox="0 0 {width} {height}">')
    return "\n".join([head, f"<title>{escape('pmnc and its peers at ' + ', '.join(map(str, clients)))}"
                      " concurrent clients</title>", *body, "</svg>", ""])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, default=BENCH / "scaling.json", help="bench/scaling.py's output")
    parser.add_argument("--out", type=Path, default=BENCH / "scaling.svg", help="the SVG to write")
    args = parser.parse_args(argv)
    data = json.loads(args.json.read_text())
    args.out.write_text(svg(data))
    print(f"plot_scaling: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
