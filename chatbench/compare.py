"""Compare result bundles: a table of deltas per configuration, and regression checks for a CI gate.

Checks are parsed from strings, asv/pytest-benchmark style:

    p99:10%                          delivery latency p99 may grow by at most 10 %
    storage_writes_per_message:0     may not grow at all (an absolute allowance; deterministic counter)
    fanout_p99:5                     may grow by at most 5 (ms, the measure's unit)

A *count* measure (writes, bus messages per message, losses) is deterministic: it fails when it is over the
allowance, full stop. A *time* measure (latencies, CPU) fails only when it is over the allowance **and** the
change is significant: a one-sided Mann-Whitney U test over the repetitions (scipy; exact for small samples)
with p < alpha. With one run a side no time can fail: repeat (``chatbench matrix --repeat 5``).
Runs of different scenario parameters or api versions are marked incomparable and not compared. A record from
before a scenario option existed is read at the default the newer records declare (bundles.fill_defaults); records
of different scenario versions (a scenario's SCENARIO_VERSION, absent: 1) are incomparable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from chatbench.bundles import AXES, MEASURES, Group, Measure, differences, label, measure, varying_axes

ALPHA = 0.05


@dataclass(frozen=True)
class Check:
    """``measure`` may get worse by at most ``allowed`` (relative when ``relative``, else in its unit)."""

    text: str
    measure: Measure
    allowed: float
    relative: bool

    @classmethod
    def parse(cls, text: str) -> Check:
        name, sep, limit = text.strip().rpartition(":")
        if not sep or not name:
            raise ValueError(f"check {text!r}: expected NAME:LIMIT, e.g. p99:10% or storage_writes_per_message:0")
        relative = limit.endswith("%")
        try:
            allowed = float(limit[:-1] if relative else limit)
        except ValueError:
            raise ValueError(f"check {text!r}: limit {limit!r} is not a number or a percentage") from None
        if allowed < 0 or not math.isfinite(allowed):
            raise ValueError(f"check {text!r}: the limit must be a finite number ≥ 0")
        return cls(text.strip(), measure(name.strip()), allowed / 100 if relative else allowed, relative)

    def limit(self, base: float) -> float:
        """How much worse than ``base`` the candidate may be (in the measure's unit)."""
        return abs(base) * self.allowed if self.relative else self.allowed


@dataclass
class Row:
    measure: Measure
    base: float | None
    cand: float | None
    n_base: int
    n_cand: int
    p: float | None = None  # one-sided, "candidate is worse"; None for counts or when not testable
    status: str = ""  # ok / REGRESSION / improved / worse / not significant / missing
    note: str = ""

    @property
    def worse_by(self) -> float | None:
        if self.base is None or self.cand is None:
            return None
        d = self.cand - self.base
        return -d if self.measure.higher_is_better else d


@dataclass
class Pair:
    base: Group
    cand: Group
    incomparable: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)


@dataclass
class Outcome:
    pairs: list[Pair]
    unpaired: list[Group]
    failures: list[str]
    warnings: list[str]

    @property
    def compared(self) -> int:
        return sum(1 for p in self.pairs if not p.incomparable)


def mann_whitney_worse(base: list[float], cand: list[float], higher_is_better: bool) -> float | None:
    """One-sided p-value that the candidate's values are worse than the baseline's (None: fewer than 2 a side)."""
    return _mann_whitney(base, cand, "less" if higher_is_better else "greater")


def mann_whitney_differs(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value that the two sets of repetitions differ (None: fewer than 2 a side). With n repeats a side
    the smallest possible p is 2 / C(2n, n): 0.10 at 3, 0.029 at 4, 0.008 at 5."""
    return _mann_whitney(a, b, "two-sided")


def _mann_whitney(base: list[float], cand: list[float], alternative: str) -> float | None:
    if len(base) < 2 or len(cand) < 2:
        return None
    from scipy.stats import mannwhitneyu

    method = "exact" if len(base) + len(cand) <= 16 and len(set(base) | set(cand)) == len(base) + len(cand) \
        else "auto"
    return float(mannwhitneyu(cand, base, alternative=alternative, method=method).pvalue)


def pair_groups(base: list[Group], cand: list[Group],
                against: tuple[str, str] | None = None) -> tuple[list[Pair], list[Group]]:
    """Same configuration on both sides; or, when each side is one configuration, those two (A vs B); or, with
    ``against`` = (axis, value), each candidate against the baseline that differs from it only on that axis."""
    by_key = {g.key: g for g in base}
    if against is None and len(base) == 1 and len(cand) == 1 and base[0].key != cand[0].key:
        return [Pair(base[0], cand[0])], []
    pairs, unpaired = [], []
    for g in cand:
        key = g.key
        if against is not None:
            i = AXES.index(against[0])
            key = (*key[:i], against[1], *key[i + 1:])
        if key in by_key:
            pairs.append(Pair(by_key[key], g))
            continue
        # the same configuration under another workload: paired, so the report says what differs
        same_config = [b for b in base if b.key[:-1] == key[:-1]]
        if len(same_config) == 1:
            pairs.append(Pair(same_config[0], g))
        else:
            unpaired.append(g)
    return pairs, unpaired


def compare(base: list[Group], cand: list[Group], checks: list[Check], alpha: float = ALPHA,
            against: tuple[str, str] | None = None) -> Outcome:
    pairs, unpaired = pair_groups(base, cand, against)
    failures: list[str] = []
    warnings: list[str] = []
    axes = varying_axes([g.key for g in base + cand])
    by_measure = {c.measure.name: c for c in checks}
    measures = list(MEASURES) + [c.measure for c in checks if c.measure.name not in {m.name for m in MEASURES}]
    for pair in pairs:
        where = label(pair.cand.key, axes)
        if pair.base.key != pair.cand.key:
            where = f"{label(pair.base.key, axes)} → {label(pair.cand.key, axes)}"
        rb, rc = pair.base.comparability(), pair.cand.comparability()
        if rb is None or rc is None:
            pair.incomparable = ["the runs of one side differ in scenario parameters or api version"]
        elif rb != rc:
            pair.incomparable = differences(rb, rc)
        if pair.incomparable:
            warnings.append(f"INCOMPARABLE [{where}]: " + "; ".join(pair.incomparable))
            continue
        assumed = sorted({f"{k}={b['parameters'][k]}" for g in (pair.base, pair.cand) for b in g.bundles
                          for k in b.get("_filled", ())})
        if assumed:  # compared on the promise that an option's default is the behaviour from before it
            warnings.append(f"ASSUMED [{where}]: records from before these options read at their declared defaults: "
                            + ", ".join(assumed))
        for m in measures:
            row = evaluate(m, pair.base, pair.cand, by_measure.get(m.name), alpha)
            if row is None:
                continue
            pair.rows.append(row)
            if row.status == "REGRESSION":
                failures.append(f"REGRESSION [{where}] {m.name}: {fmt(row.base)} → {fmt(row.cand)} {m.unit}"
                                f" ({change(row)}), {row.note}")
            elif row.status == "missing":
                failures.append(f"MISSING [{where}] {m.name}: {row.note}")
            elif row.status == "not significant" and m.name in by_measure:
                warnings.append(f"not significant [{where}] {m.name}: {fmt(row.base)} → {fmt(row.cand)} {m.unit}"
                                f" ({change(row)}), {row.note}")
    return Outcome(pairs, unpaired, failures, warnings)


def evaluate(m: Measure, base: Group, cand: Group, check: Check | None, alpha: float) -> Row | None:
    vb, vc = base.values(m), cand.values(m)
    if not vb and not vc:
        if check is not None:
            return Row(m, None, None, 0, 0, status="missing", note=f"no run has it (check {check.text})")
        return None
    row = Row(m, base.median(m), cand.median(m), len(vb), len(vc))
    if row.base is None or row.cand is None:
        row.status = "missing" if check is not None else ""
        row.note = "only one side has it" + (f" (check {check.text})" if check is not None else "")
        return row
    worse = row.worse_by or 0.0
    if m.kind == "time":
        row.p = mann_whitney_worse(vb, vc, m.higher_is_better)
    if check is None:
        row.status = "worse" if worse > 0 else "better" if worse < 0 else "same"
        return row
    limit = check.limit(row.base)
    over = worse > limit + 1e-9 * max(1.0, abs(row.base))
    allowed = f"allowed {'+' if not m.higher_is_better else '-'}{fmt(limit)} {m.unit} (check {check.text})"
    if not over:
        row.status, row.note = ("improved" if worse < 0 else "ok"), allowed
    elif m.kind == "count":
        row.status, row.note = "REGRESSION", allowed
    elif row.p is None:
        row.status = "not significant"
        row.note = f"{allowed}; {len(vb)} vs {len(vc)} runs: too few to test (need ≥ 2 a side, ≥ 3 for p < 0.05)"
    elif row.p < alpha:
        row.status, row.note = "REGRESSION", f"{allowed}; Mann-Whitney p={row.p:.3f} < {alpha}"
    else:
        row.status, row.note = "not significant", f"{allowed}; Mann-Whitney p={row.p:.3f} ≥ {alpha}"
    return row


def fmt(v: float | None) -> str:
    if v is None:
        return "–"
    if v == int(v) or abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"


def change(row: Row) -> str:
    if row.base is None or row.cand is None:
        return ""
    d = row.cand - row.base
    if row.base == 0:
        return "±0" if d == 0 else f"{d:+.3g}"
    return f"{d / abs(row.base):+.1%}"


STYLE = {"REGRESSION": "bold red", "missing": "red", "not significant": "yellow", "improved": "green",
         "ok": "green", "worse": "", "better": "", "same": "dim"}


def print_outcome(outcome: Outcome, console: Console) -> None:
    axes = varying_axes([g.key for p in outcome.pairs for g in (p.base, p.cand)] +
                        [g.key for g in outcome.unpaired])
    for pair in outcome.pairs:
        title = (f"{label(pair.base.key, axes)} (baseline, {len(pair.base.bundles)} runs) vs "
                 f"{label(pair.cand.key, axes)} ({len(pair.cand.bundles)} runs)")
        if pair.incomparable:
            console.print(f"[yellow]{escape(title)}: incomparable, not compared[/] — "
                          + escape("; ".join(pair.incomparable)))
            continue
        t = Table(title=escape(title), header_style="bold", title_justify="left")
        for col, just in (("measure", "left"), ("baseline", "right"), ("candidate", "right"), ("change", "right"),
                          ("p", "right"), ("status", "left")):
            t.add_column(col, justify=just)  # type: ignore[arg-type]
        for r in pair.rows:
            unit = f" {r.measure.unit}" if r.measure.unit else ""
            t.add_row(r.measure.name, fmt(r.base) + unit, fmt(r.cand) + unit, change(r),
                      "" if r.p is None else f"{r.p:.3f}",
                      f"[{STYLE[r.status]}]{r.status}[/]" if STYLE.get(r.status) else r.status)
        invalid = pair.base.invalid + pair.cand.invalid
        if invalid:
            t.caption = f"{invalid} of the runs are marked invalid (generator saturated or data missing)"
        console.print(t)
    for g in outcome.unpaired:
        console.print(f"[yellow]no baseline for {escape(label(g.key, axes))}[/] ({len(g.bundles)} runs)")

