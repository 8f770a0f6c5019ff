"""``chatbench report RESULTS... -o report.html``: one self-contained HTML page comparing configurations.

Plots (inline SVG, see :mod:`chatbench.svg`; no JavaScript library, no CDN, viewable offline):
delivery-latency CDF per configuration from the raw HDR histograms merged over its repetitions (and per network
profile of the receiving members, for runs with a profile mix); fan-out
completion (p50/p99/max, from the merged histogram); cost per message (storage writes, unread writes, bus
messages, server CPU); deliveries per second over time (first run of each configuration, when the bundle has
the orchestrator's time series). A short inline script only checks that every plot has data and says so.
"""

from __future__ import annotations

import datetime
import statistics
from html import escape
from pathlib import Path
from typing import Any

from chatbench import bundles, svg
from chatbench.compare import fmt
from chatbench.matrix import columns
from drivers.totals import profile_histogram

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px auto;max-width:1400px;color:#222;padding:0 16px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}.warn{color:#a60}.meta{color:#555}
.plots{display:flex;flex-wrap:wrap;gap:16px}
svg.plot{background:#fff;border:1px solid #ddd}svg .title{font-weight:600;font-size:13px}
svg .grid{stroke:#eee}svg .area{fill:none;stroke:#bbb}svg .tick,svg .value,svg .legend{font-size:11px}
svg .axis{font-size:12px}svg .nodata{font-size:12px;fill:#a60}
"""
CHECK_JS = """
document.addEventListener("DOMContentLoaded", function () {
  var plots = document.querySelectorAll("svg.plot"), drawn = 0;
  plots.forEach(function (p) {
    if (p.querySelector(".series")) { drawn++; } else { console.warn("plot without data: " + p.dataset.plot); }
  });
  document.body.dataset.plots = String(plots.length);
  document.body.dataset.plotsDrawn = String(drawn);
});
"""


def build(loaded: list[dict[str, Any]], title: str = "chatbench report") -> str:
    gs = bundles.groups(loaded)
    varying = bundles.varying_axes([g.key for g in gs])
    names = [bundles.label(g.key, varying) for g in gs]
    parts = [f"<h1>{escape(title)}</h1>", meta(loaded, gs)]
    parts.append("<h2>Summary (medians over repetitions)</h2>" + summary_html(gs, names))
    plots = [capacity(gs, names), latency_cdf(gs, names), profile_cdf(gs, names), fanout(gs, names),
             *costs(gs, names), over_time(gs, names)]
    parts.append('<h2>Plots</h2><div class="plots">' + "".join(p for p in plots if p) + "</div>")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{CSS}</style><script>{CHECK_JS}</script></head><body>{''.join(parts)}</body></html>")


def meta(loaded: list[dict[str, Any]], gs: list[bundles.Group]) -> str:
    scen = sorted({str(b.get("scenario")) for b in loaded})
    commits = sorted({str(b.get("commit") or "?")[:10] + ("+dirty" if b.get("dirty") else "") for b in loaded})
    cpus = sorted({str((b.get("machine") or {}).get("cpu_model", "?")) for b in loaded})
    records = {repr(bundles.comparability(b)) for b in loaded}
    out = [f'<p class="meta">{len(loaded)} runs, {len(gs)} configurations; scenario {escape(", ".join(scen))}; '
           f"commit {escape(', '.join(commits))}; CPU {escape('; '.join(cpus))}; generated "
           f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}</p>"]
    if len(records) > 1:
        out.append('<p class="warn">These runs differ in scenario parameters or api version: their figures are '
                   "not strictly comparable.</p>")
    invalid = sum(g.invalid for g in gs)
    if invalid:
        out.append(f'<p class="warn">{invalid} runs are marked invalid (generator saturated or data missing).</p>')
    return "".join(out)


def summary_html(gs: list[bundles.Group], names: list[str]) -> str:
    cols = columns([b for g in gs for b in g.bundles])
    head = "".join(f"<th>{escape(h)}</th>" for h, _ in cols)
    rows = []
    for g, name in zip(gs, names, strict=True):
        cells = []
        for _, mname in cols:
            vals = g.values(bundles.BY_NAME[mname])
            cells.append(f"<td>{fmt(statistics.median(vals)) if vals else '–'}</td>")
        rows.append(f"<tr><td>{escape(name)}</td><td>{len(g.bundles)}</td>{''.join(cells)}</tr>")
    return f"<table><tr><th>configuration</th><th>runs</th>{head}</tr>{''.join(rows)}</table>"


def capacity(gs: list[bundles.Group], names: list[str]) -> str:
    """Capacity searches: p99 of every step against its level, per configuration, the knee (the median capacity)
    marked; "" without searches."""
    series: list[tuple[str, list[tuple[float, float]]]] = []
    marks: list[tuple[int, float, str]] = []
    slo = ""
    units: set[str] = set()
    for g, n in zip(gs, names, strict=True):
        answers = [b["metrics"]["capacity"] for b in g.bundles if (b.get("metrics") or {}).get("capacity")]
        units.update(str(a.get("unit", "messages/s")) for a in answers)
        steps = sorted((s["level"], s["latency_ms"]["p99"]) for a in answers for s in a.get("steps", [])
                       if s.get("latency_ms", {}).get("p99") is not None)
        if not answers:
            continue
        series.append((n, steps))
        slo = slo or str(answers[0].get("slo", ""))
        found = g.values(bundles.BY_NAME["capacity"])
        if found:
            short = next((str(a["short_unit"]) for a in answers if a.get("short_unit")), "msg/s")
            marks.append((len(series) - 1, statistics.median(found), f"{fmt(statistics.median(found))} {short}"))
    if not series:
        return ""
    ceiling = next((float(part.split("<")[1].rstrip("ms").strip("=")) for part in slo.split(",")
                    if part.strip().startswith("p99<") and part.strip().endswith("ms")), None)
    return svg.line_chart("capacity", f"Latency against load (capacity search, SLO {slo})",
                          series, x_label=f"level ({' / '.join(sorted(units)) or 'messages/s'}, log scale)",
                          y_label="p99 of the step (ms)",
                          x_log=True, marks=marks, h_line=(ceiling, f"SLO p99 {ceiling:g} ms") if ceiling else None)


def latency_cdf(gs: list[bundles.Group], names: list[str]) -> str:
    series = [(n, bundles.cdf_points(g.histogram("delivery_latency_us"))) for g, n in zip(gs, names, strict=True)]
    return svg.line_chart("latency-cdf", "Delivery latency CDF (send → receive, HDR, all repetitions)", series,
                          x_label="latency (ms, log scale)", y_label="fraction of deliveries ≤ x", x_log=True,
                          y_max=1.0, legend_bottom=True)


def profile_cdf(gs: list[bundles.Group], names: list[str]) -> str:
    """Weak networks: one CDF per (configuration, receiving member's network profile); "" without profile mixes."""
    series = []
    for g, n in zip(gs, names, strict=True):
        profiles = sorted({prof for b in g.bundles for prof in b.get("metrics", {}).get("by_profile", {})})
        for prof in profiles:
            series.append((f"{n} · {prof}", bundles.cdf_points(g.histogram(profile_histogram(prof)))))
    if not series:
        return ""
    return svg.line_chart("profile-cdf", "Delivery latency CDF by receiving member's network profile", series,
                          x_label="latency (ms, log scale)", y_label="fraction of deliveries ≤ x", x_log=True,
                          y_max=1.0, legend_bottom=True)


def fanout(gs: list[bundles.Group], names: list[str]) -> str:
    stats: dict[str, list[float | None]] = {"p50": [], "p99": [], "max": []}
    for g in gs:
        h = g.histogram("fanout_completion_us")
        n = h.get_total_count()
        stats["p50"].append(h.get_value_at_percentile(50) / 1000 if n else None)
        stats["p99"].append(h.get_value_at_percentile(99) / 1000 if n else None)
        stats["max"].append(h.get_max_value() / 1000 if n else None)
    return svg.bar_chart("fanout", "Fan-out completion (send → last online recipient), ms", names,
                         list(stats.items()), unit="ms")


def costs(gs: list[bundles.Group], names: list[str]) -> list[str]:
    out = []
    for mname, title in (("storage_writes_per_message", "Storage writes per message"),
                         ("disk_bytes_per_message", "Disk bytes per message (server's page cache dirtied)"),
                         ("unread_writes_per_message", "Unread-counter writes per message"),
                         ("bus_messages_per_message", "Bus messages per message"),
                         ("server_cpu_us_per_message", "Server CPU per message (µs, schedstat)")):
        m = bundles.BY_NAME[mname]
        out.append(svg.bar_chart(f"cost-{mname}", title, names, [("median", [g.median(m) for g in gs])],
                                 unit=m.unit))
    return out


def over_time(gs: list[bundles.Group], names: list[str]) -> str:
    series = []
    for g, n in zip(gs, names, strict=True):
        ts = next((b["timeseries"] for b in g.bundles if (b.get("timeseries") or {}).get("t_s")), None)
        series.append((n, list(zip(ts["t_s"], ts["deliveries_per_s"], strict=False)) if ts else []))
    if not any(s for _, s in series):
        return ""
    return svg.line_chart("deliveries-over-time", "Deliveries per second (server, first run of each)", series,
                          x_label="seconds since the swarm started", y_label="deliveries / s")


def write(paths: list[Path], out: Path, title: str = "chatbench report") -> int:
    loaded = bundles.load_all(paths)
    if not loaded:
        raise SystemExit("no result bundles found in " + ", ".join(map(str, paths)))
    out.write_text(build(loaded, title), encoding="utf-8")
    return len(loaded)
