"""Server figures from Prometheus text (a server's ``/metrics``): flatten, difference, bucket quantiles."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families


def counters(text: str) -> dict[str, float]:
    """Flatten /metrics text into ``name{k=v,...}`` (labels sorted) or ``name`` -> value."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def add(into: dict[str, float], more: dict[str, float]) -> None:
    """Sum ``more`` into ``into`` (counters of several server processes)."""
    for k, v in more.items():
        into[k] = into.get(k, 0.0) + v


def delta(after: dict[str, float], before: dict[str, float], prefix: str) -> float:
    """Sum of after − before over the series ``prefix`` and ``prefix{...}``."""
    return sum(v - before.get(k, 0.0) for k, v in after.items() if k == prefix or k.startswith(prefix + "{"))


def bucket_quantiles(after: dict[str, float], before: dict[str, float], histogram: str,
                     quantiles: tuple[float, ...] = (0.5, 0.99, 0.999)) -> dict[str, float | None]:
    """Upper bounds (ms) of the quantiles of a server histogram over the run, from its bucket counts summed over
    every process: "p99 ≤ 25 ms". Bounds, not interpolated values. None: above the largest finite bucket (no
    bound known). {} without samples."""
    prefix = histogram + "_bucket{"
    counts: dict[float, float] = {}
    for key, value in after.items():
        if key.startswith(prefix):
            le = dict(part.split("=", 1) for part in key[len(prefix):-1].split(","))["le"]
            bound = float(le)
            counts[bound] = counts.get(bound, 0.0) + value - before.get(key, 0.0)
    ordered = sorted(counts.items())
    total = ordered[-1][1] if ordered else 0.0
    if total <= 0:
        return {}
    out: dict[str, float | None] = {}
    for q in quantiles:
        bound = next(b for b, c in ordered if c >= q * total)
        out[f"p{q * 100:g}"] = bound * 1000 if math.isfinite(bound) else None
    return out
