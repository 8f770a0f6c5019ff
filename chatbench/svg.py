"""Just enough SVG charting for the HTML report: line charts (linear or log x) and horizontal bar charts.

Generated as text, so the report needs no plotting library, no JavaScript and no network to render. Each
chart is an ``<svg class="plot" data-plot=NAME>``; every drawn series carries ``class="series"`` and a
``<title>`` (the browser shows it on hover).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#393b79", "#ad494a")
W, H = 680, 340
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 30, 44


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    return [round(start + i * step, 10) for i in range(int((hi - start) / step) + 2) if start + i * step <= hi * 1.0001]


def log_ticks(lo: float, hi: float) -> list[float]:
    out = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0 ** e
            if lo <= v <= hi:
                out.append(v)
    return out


def label_num(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v / 1000:g}k" if abs(v) < 1e6 else f"{v / 1e6:g}M"
    return f"{v:g}"


def _frame(name: str, title: str, body: list[str], height: int = H) -> str:
    return (f'<svg class="plot" data-plot="{escape(name)}" xmlns="http://www.w3.org/2000/svg" width="{W}" '
            f'height="{height}" viewBox="0 0 {W} {height}" role="img" aria-label="{escape(title)}">'
            f'<text x="{LEFT}" y="18" class="title">{escape(title)}</text>{"".join(body)}</svg>')


def line_chart(name: str, title: str, series: Sequence[tuple[str, Sequence[tuple[float, float]]]], *,
               x_label: str, y_label: str, x_log: bool = False, y_max: float | None = None,
               legend_bottom: bool = False, marks: Sequence[tuple[int, float, str]] = (),
               h_line: tuple[float, str] | None = None) -> str:
    """Each series: (label, [(x, y), ...]). Empty series are listed in the legend as "(no data)". ``marks``:
    (series index, x, text) — a dashed vertical line in the series' colour (e.g. a capacity knee); ``h_line``:
    (y, text) — a dashed horizontal line (e.g. an SLO ceiling)."""
    pts = [p for _, s in series for p in s if not x_log or p[0] > 0]
    if not pts:
        return _frame(name, title, [f'<text x="{LEFT}" y="60" class="nodata">no data</text>'])
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = (min(xs), max(xs)) if not x_log else (10 ** math.floor(math.log10(min(xs))), max(xs))
    if x1 <= x0:
        x1 = x0 * 10 if x_log else x0 + 1
    y0, y1 = 0.0, y_max if y_max is not None else (max([*ys, h_line[0] if h_line else 0.0]) * 1.05 or 1.0)
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def sx(x: float) -> float:
        f = (math.log10(x) - math.log10(x0)) / (math.log10(x1) - math.log10(x0)) if x_log else (x - x0) / (x1 - x0)
        return LEFT + f * pw

    def sy(y: float) -> float:
        return TOP + ph - (y - y0) / (y1 - y0) * ph

    body = [f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" class="area"/>']
    for t in (log_ticks(x0, x1) if x_log else nice_ticks(x0, x1)):
        body.append(f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{TOP}" y2="{TOP + ph}" class="grid"/>'
                    f'<text x="{sx(t):.1f}" y="{TOP + ph + 16}" class="tick" text-anchor="middle">'
                    f"{label_num(t)}</text>")
    for t in nice_ticks(y0, y1):
        body.append(f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" class="grid"/>'
                    f'<text x="{LEFT - 6}" y="{sy(t) + 4:.1f}" class="tick" text-anchor="end">{label_num(t)}</text>')
    body.append(f'<text x="{LEFT + pw / 2}" y="{H - 8}" class="axis" text-anchor="middle">{escape(x_label)}</text>'
                f'<text x="14" y="{TOP + ph / 2}" class="axis" text-anchor="middle" '
                f'transform="rotate(-90 14 {TOP + ph / 2})">{escape(y_label)}</text>')
    if h_line is not None:
        body.append(f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{sy(h_line[0]):.1f}" y2="{sy(h_line[0]):.1f}" '
                    f'class="mark" stroke="#c00" stroke-dasharray="6 4"/><text x="{LEFT + 4}" '
                    f'y="{sy(h_line[0]) - 4:.1f}" class="tick">{escape(h_line[1])}</text>')
    for i, x, text in marks:
        if (not x_log or x > 0) and x0 <= x <= x1:
            body.append(f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{TOP}" y2="{TOP + ph}" class="mark" '
                        f'stroke="{color(i)}" stroke-dasharray="4 3"><title>{escape(text)}</title></line>'
                        f'<text x="{sx(x) + 3:.1f}" y="{TOP + 12 + 12 * i}" class="tick">{escape(text)}</text>')
    for i, (lab, s) in enumerate(series):
        d = " ".join(f"{'M' if j == 0 else 'L'}{sx(x):.1f},{sy(min(y, y1)):.1f}"
                     for j, (x, y) in enumerate(p for p in s if not x_log or p[0] > 0))
        if d:
            body.append(f'<path class="series" d="{d}" fill="none" stroke="{color(i)}" stroke-width="2">'
                        f'<title>{escape(lab)}</title></path>')
        ly = TOP + ph - 8 - 16 * (len(series) - 1 - i) if legend_bottom else TOP + 14 + 16 * i
        body.append(f'<rect x="{LEFT + pw - 250}" y="{ly - 9}" width="10" height="10" fill="{color(i)}"/>'
                    f'<text x="{LEFT + pw - 236}" y="{ly}" class="legend">{escape(lab)}'
                    f'{"" if d else " (no data)"}</text>')
    return _frame(name, title, body)


def bar_chart(name: str, title: str, categories: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]],
              *, unit: str = "") -> str:
    """Horizontal bars: one row per category, one bar per series in it (values may be None: not measured)."""
    n_series = max(len(series), 1)
    bar_h = 12
    row_h = bar_h * n_series + 10
    label_w = 230
    height = TOP + row_h * len(categories) + (44 if n_series > 1 else 24)
    vals = [v for _, s in series for v in s if v is not None]
    vmax = max(vals, default=0.0) or 1.0
    pw = W - label_w - RIGHT - 70
    body = []
    for t in nice_ticks(0, vmax, 4):
        x = label_w + t / vmax * pw
        if x <= label_w + pw + 1:
            body.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{TOP + row_h * len(categories)}" '
                        f'class="grid"/><text x="{x:.1f}" y="{TOP + row_h * len(categories) + 14}" class="tick" '
                        f'text-anchor="middle">{label_num(t)}</text>')
    for r, cat in enumerate(categories):
        y = TOP + r * row_h + 5
        body.append(f'<text x="{label_w - 8}" y="{y + row_h / 2}" class="tick" text-anchor="end">{escape(cat)}</text>')
        for i, (sname, s) in enumerate(series):
            v = s[r] if r < len(s) else None
            by = y + i * bar_h
            if v is None:
                body.append(f'<text x="{label_w + 4}" y="{by + 10}" class="nodata">not measured</text>')
                continue
            w = max(v / vmax * pw, 0.5)
            body.append(f'<rect class="series bar" x="{label_w}" y="{by}" width="{w:.1f}" height="{bar_h - 2}" '
                        f'fill="{color(i)}"><title>{escape(cat)} {escape(sname)}: {v:,.4g} {escape(unit)}</title>'
                        f'</rect><text x="{label_w + w + 4:.1f}" y="{by + 10}" class="value">{v:,.4g}</text>')
    if n_series > 1:
        ly = TOP + row_h * len(categories) + 34
        for i, (sname, _) in enumerate(series):
            body.append(f'<rect x="{label_w + 90 * i}" y="{ly - 9}" width="10" height="10" fill="{color(i)}"/>'
                        f'<text x="{label_w + 90 * i + 14}" y="{ly}" class="legend">{escape(sname)}</text>')
    return _frame(name, title, body, height)
