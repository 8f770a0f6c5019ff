"""``chatbench capacity``: one capacity search per configuration and repeat (drivers/capacity.py runs inside the
swarm), live progress from the search's step lines, and a table of capacities with their spread and which
differences between configurations are significant (Mann-Whitney U over the repeats)."""

from __future__ import annotations

import argparse
import re
import statistics
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from chatbench import bundles
from chatbench.compare import fmt, mann_whitney_worse
from drivers.capacity import Slo

CAPACITY = bundles.BY_NAME["capacity"]
ALPHA = 0.05


def locust_args(args: argparse.Namespace) -> list[str]:
    """The swarm's --capacity flags; a bad SLO or an unsupported axis is refused before anything starts."""
    Slo.parse(args.slo)
    return ["--capacity", args.slo, "--capacity-vary", args.vary, "--capacity-start", str(args.start),
            "--capacity-growth", str(args.growth),
            "--capacity-resolution", str(args.resolution), "--capacity-max", str(args.max),
            "--capacity-step-s", str(args.step_s), "--capacity-warm-s", str(args.warm_s),
            "--capacity-confirm-s", str(args.confirm_s), "--capacity-retry", str(args.retry)]


def progress_line(console: Console, line: str) -> None:
    """Show the search's step lines (printed by the swarm's coordinator) as they come."""
    if line.startswith("capacity "):
        style = "green" if ": held" in line else "yellow"
        console.print(f"  [{style}]{escape(line)}[/]", highlight=False)


def unit_of(loaded: list[dict[str, Any]]) -> str:
    """The levels' unit of these searches (``msg/s``, ``groups``; several: each named)."""
    units = sorted({str((b.get("metrics") or {}).get("capacity", {}).get("short_unit", "msg/s")) for b in loaded})
    return " / ".join(units) or "msg/s"


def ranked(group: bundles.Group) -> list[float]:
    """The answers a significance test ranks: every capacity found, and 0 for every search in which no level held
    down to the lowest a step measures (its capacity is below every level: it ranks below all of them). A
    generator-bound or unconfirmed search answered nothing about the server and is left out."""
    answers = [(b.get("metrics") or {}).get("capacity") or {} for b in group.bundles]
    return group.values(CAPACITY) + [0.0 for a in answers if a.get("below_minimum")]


def clause(reason: str) -> str:
    """What broke, without the step's own figure, so the repeats' reasons merge: ``latency p99 159.9 ms ≥ 100 ms``
    → ``latency p99 ≥ 100 ms``, ``generator event loop 40 ms late: …`` → ``generator event loop late``,
    ``3 send slots missed`` → ``send slots missed``."""
    head = reason.split(":")[0]
    head = re.sub(r" [0-9][0-9.,]*(?: ?(?:ms|%))?(?= [≥>] | late$)", "", head)
    return re.sub(r"^[0-9][0-9,]* ", "", head)


def cost(answers: list[dict[str, Any]]) -> str:
    """``first → found``: the medians over the searches of the server's CPU ms per message in their first step and
    in the step that gave their capacity."""
    first = [v for a in answers if (v := a.get("server_ms_per_message_first")) is not None]
    found = [v for a in answers if (v := a.get("server_ms_per_message_found")) is not None]
    if not first:
        return "–"
    return f"{statistics.median(first):.1f} → {statistics.median(found):.1f}" if found else \
        f"{statistics.median(first):.1f} → –"


def capacity_table(loaded: list[dict[str, Any]], title: str) -> Table:
    gs = sorted(bundles.groups(loaded), key=lambda g: -(g.median(CAPACITY) or -1))
    varying = bundles.varying_axes([g.key for g in gs])
    t = Table(title=title, header_style="bold", title_justify="left")
    unit = unit_of(loaded)
    for col in ("configuration", "runs", f"capacity {unit}", "range", "first failed", "server ms/msg", "limit",
                "vs next"):
        t.add_column(col, justify="left" if col in ("configuration", "limit") else "right")
    for i, g in enumerate(gs):
        values = g.values(CAPACITY)
        answers = [b["metrics"].get("capacity") or {} for b in g.bundles]
        gen = sum(1 for a in answers if a.get("generator_bound"))
        floors = [a["minimum"] for a in answers if a.get("below_minimum")]
        below = f"< {fmt(min(floors))} (in {len(floors)} of {len(answers)})" if floors else ""
        failed = [a["first_failed"] for a in answers if a.get("first_failed")]
        reasons = sorted({clause(r) for a in answers for r in a.get("failed_because", [])})
        limit = ", ".join(reasons) or "—"
        if gen:
            limit = f"[red]generator-bound in {gen} of {len(answers)}[/] " + limit
        spread = "–"
        if len(values) > 1 and statistics.median(values):
            half = (max(values) - min(values)) / 2 / statistics.median(values)
            spread = f"{fmt(min(values))}–{fmt(max(values))} (±{half:.0%})"
        nxt = "–"
        if i + 1 < len(gs):
            p = mann_whitney_worse(ranked(g), ranked(gs[i + 1]), higher_is_better=True)  # is the next one lower?
            nxt = "n/a (≥ 2 answers a side)" if p is None else (f"[bold]higher[/], p={p:.3f}" if p < ALPHA
                                                                 else f"not significant, p={p:.2f}")
        t.add_row(bundles.label(g.key, varying), str(len(g.bundles)),
                  fmt(statistics.median(values)) if values else below or "none", spread,
                  fmt(statistics.median(failed)) if failed else "–", cost(answers),
                  escape(limit) if not gen else limit, nxt)
    t.caption = ("capacity: the level that held the SLO for the confirm period (the highest short step that held, "
                 "or one further down after failed confirms); server ms/msg: its CPU per message in the first step "
                 "→ in the step that gave the capacity (grown: the server's state grew during the search); "
                 "medians over the repeats; 'vs next': one-sided Mann-Whitney U against the row below")
    return t
