"""``chatbench matrix``: every combination of the given modes (and network profile mixes), each repeated, one
bundle per run.

Repetitions are interleaved (round r runs every combination once before round r+1), so a slow drift of the
machine — other work on the shared cores, thermal limits — spreads over all configurations instead of
landing on the ones measured last. A failed run is recorded and the matrix goes on; Ctrl-C stops it (the
run in progress stops everything it started).
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from chatbench import bundles
from chatbench.compare import ALPHA, fmt, mann_whitney_differs
from chatbench.runner import RunConfig, run_once

AXES = ("fanout", "storage", "unread", "offline", "network", "server_cpu_quota")
COLUMNS = (  # (header, measure name)
    ("p50 ms", "p50"), ("p99 ms", "p99"), ("fan-out p99 ms", "fanout_p99"),
    ("storage w/msg", "storage_writes_per_message"), ("unread w/msg", "unread_writes_per_message"),
    ("disk B/msg", "disk_bytes_per_message"),
    ("bus/msg", "bus_messages_per_message"), ("CPU µs/msg", "server_cpu_us_per_message"),
    ("deliv./CPU-s", "deliveries_per_server_cpu_s"), ("lost", "lost"),
)


def combinations(base: RunConfig, axes: dict[str, list[Any]]) -> list[RunConfig]:
    names = [a for a in AXES if axes.get(a)]
    changes: list[dict[str, Any]] = [dict(zip(names, values, strict=True))
                                     for values in itertools.product(*(axes[a] for a in names))]
    return [replace(base, **c) for c in changes]


def run_matrix(base: RunConfig, axes: dict[str, list[Any]], repeat: int, console: Console,
               on_line: Callable[[str], None] | None = None) -> list[Path]:
    combos = combinations(base, axes)
    plan = [(r, cfg) for r in range(repeat) for cfg in combos]
    paths: list[Path] = []
    failures: list[str] = []
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("matrix", total=len(plan))
        for r, cfg in plan:
            what = " ".join(f"{a}={getattr(cfg, a)}" for a in AXES if axes.get(a))
            progress.update(task, description=f"run {r + 1}/{repeat}: {what}")
            outcome = run_once(cfg, on_line)
            if outcome.path is None:
                failures.append(f"{what} (round {r + 1}): no bundle, locust exit {outcome.locust_rc}")
                progress.console.print(f"[red]{failures[-1]}[/]\n{outcome.locust_output[-1500:]}")
            else:
                paths.append(outcome.path)
                valid = (outcome.bundle or {}).get("metrics", {}).get("valid", False)
                progress.console.print(f"{what} round {r + 1}: {outcome.elapsed_s:.0f} s"
                                       f"{'' if valid else ' [yellow](run marked invalid)[/]'} → {outcome.path}")
            progress.advance(task)
    for f in failures:
        console.print(f"[red]FAILED[/] {f}")
    return paths


def columns(loaded: list[dict[str, Any]]) -> tuple[tuple[str, str], ...]:
    """The summary's columns; with a network profile mix also the unimpaired (direct) members' p99."""
    if any(b.get("metrics", {}).get("by_profile") for b in loaded):
        return (*COLUMNS[:2], ("direct p99 ms", "direct_p99"), *COLUMNS[2:])
    return COLUMNS


def summary_table(loaded: list[dict[str, Any]], title: str) -> Table:
    gs = bundles.groups(loaded)
    varying = bundles.varying_axes([g.key for g in gs])
    cols = columns(loaded)
    t = Table(title=title, header_style="bold", title_justify="left")
    t.add_column("configuration", no_wrap=True)  # the row's name: other columns wrap first
    t.add_column("runs", justify="right")
    for header, _ in cols:
        t.add_column(header, justify="right")
    first = gs[0] if gs else None
    marked = False
    for g in gs:
        cells = []
        for _, name in cols:
            m = bundles.BY_NAME[name]
            vals = g.values(m)
            cell = fmt(statistics.median(vals)) if vals else "–"
            if len(vals) > 1 and m.kind == "time":
                cell += f" ±{fmt((max(vals) - min(vals)) / 2)}"
                if first is not None and g is not first:
                    p = mann_whitney_differs(first.values(m), vals)
                    if p is not None and p < ALPHA:
                        cell += " *"
                        marked = True
            cells.append(cell)
        runs = f"{len(g.bundles)}" + (f" ({g.invalid} invalid)" if g.invalid else "")
        t.add_row(bundles.label(g.key, varying), runs, *cells)
    repeats = min((len(g.bundles) for g in gs), default=0)
    t.caption = ("medians over the runs (± half the range for times); counts (writes, bus messages, lost) are exact"
                 + ("; * = differs from the first row: two-sided Mann-Whitney U over the repeats, p < 0.05"
                    if repeats >= 4 else "; significance of times needs ≥ 4 repeats a configuration (--repeat 4)")
                 + ("" if marked or repeats < 4 else " — no time differs significantly"))
    return t
