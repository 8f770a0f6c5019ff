"""Latency recording for swarms: HDR histograms in µs, never one Locust event per frame.

Each load-generator process records into its own histograms; workers ship encoded snapshots with their Locust
worker reports and the master merges them, so ``--processes N`` and workers on other hosts give one true
distribution. The per-delivery bookkeeping that uses them (ledger, fan-out, catch-up) is :mod:`drivers.ledger`.

Also here: :class:`LogBuckets`, a tiny mergeable histogram (1 % relative resolution) used per message for
fan-out completion, where one HDR histogram per message would cost too much memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Final

import numpy as np
from hdrh.histogram import HdrHistogram

LOWEST_US: Final = 1
HIGHEST_US: Final = 3_600_000_000  # one hour
SIGNIFICANT_FIGURES: Final = 3
#: explicit Prometheus histogram buckets (seconds) for latencies taken from HDR histograms
PROMETHEUS_BUCKETS_S: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)


def encode(h: HdrHistogram) -> str:
    """The histogram as HdrHistogram's compressed base64 text (re-mergeable with :func:`decode_into`)."""
    return str(h.encode().decode())


def decode_into(h: HdrHistogram, text: str) -> None:
    if text:
        h.decode_and_add(text.encode())


def recorded(h: HdrHistogram) -> list[tuple[int, int]]:
    """(highest equivalent value, count) of every non-empty bucket, read from the counts array with numpy.

    hdrh's ``get_recorded_iterator`` is pure Python and walks every bucket up to the largest value: called on the
    coordinator every second it took ~40 % of a generator process and held its event loop ~150 ms."""
    counts = np.ctypeslib.as_array(h.counts)[: h.counts_len]
    idx = np.flatnonzero(counts)
    if idx.size == 0:
        return []
    bucket = (idx >> h.sub_bucket_half_count_magnitude) - 1
    sub = (idx & (h.sub_bucket_half_count - 1)) + h.sub_bucket_half_count
    first = bucket < 0
    sub[first] -= h.sub_bucket_half_count
    bucket[first] = 0
    shift = bucket + h.unit_magnitude
    highest = (sub << shift) + (np.int64(1) << shift) - 1
    return list(zip(highest.tolist(), counts[idx].tolist(), strict=True))


def summary_ms(h: HdrHistogram, percentiles: Iterable[float] = (50, 90, 99, 99.9)) -> dict[str, float]:
    """{p50, p90, p99, p99.9 → "p999", max} in milliseconds; {} for an empty histogram."""
    if h.get_total_count() == 0:
        return {}
    out = {_pname(p): h.get_value_at_percentile(p) / 1000 for p in percentiles}
    out["max"] = h.get_max_value() / 1000
    out["count"] = float(h.get_total_count())
    return out


def _pname(p: float) -> str:
    return "p" + f"{p:g}".replace(".", "")


def cumulative_counts(h: HdrHistogram, bounds_s: Iterable[float]) -> list[int]:
    """For each bound (seconds), the number of recorded values ≤ it (Prometheus ``le`` buckets)."""
    bounds_us = [b * 1e6 for b in bounds_s]
    out = [0] * len(bounds_us)
    if h.get_total_count() == 0:
        return out
    i = 0
    running = 0
    for item in h.get_recorded_iterator():
        value = h.get_highest_equivalent_value(item.value_iterated_to)
        while i < len(bounds_us) and value > bounds_us[i]:
            out[i] = running
            i += 1
        running += item.count_at_value_iterated_to
    while i < len(bounds_us):
        out[i] = running
        i += 1
    return out


class Recorder:
    """One HDR histogram with clamping counted, not hidden (negative clock skew or over an hour)."""

    __slots__ = ("clamped", "h")

    def __init__(self) -> None:
        self.h = new_histogram()
        self.clamped = 0

    def record(self, us: int) -> None:
        if LOWEST_US <= us <= HIGHEST_US:
            self.h.record_value(us)
        else:
            self.clamped += 1
            self.h.record_value(LOWEST_US if us < LOWEST_US else HIGHEST_US)

    def take(self) -> dict[str, Any]:
        """Snapshot (encoded) and reset."""
        data = {"hdr": encode(self.h), "clamped": self.clamped}
        self.h = new_histogram()
        self.clamped = 0
        return data

    def merge(self, data: dict[str, Any]) -> None:
        decode_into(self.h, data["hdr"])
        self.clamped += int(data["clamped"])


class LogBuckets:
    """A mergeable histogram of positive integers with 1 % relative resolution: bucket → count, plus exact min/max."""

    RATIO: Final = 1.01
    _K: Final = 1 / math.log(1.01)

    __slots__ = ("buckets", "count", "max", "min")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.min = 0
        self.max = 0

    def add_many(self, values: list[int]) -> None:
        if not values:
            return
        k = self._K
        log = math.log
        b = self.buckets
        for v in values:
            i = int(log(v) * k) if v > 1 else 0
            b[i] = b.get(i, 0) + 1
        lo, hi = min(values), max(values)
        self.min = lo if self.count == 0 else min(self.min, lo)
        self.max = hi if self.count == 0 else max(self.max, hi)
        self.count += len(values)

    def to_wire(self) -> list[Any]:
        return [self.count, self.min, self.max, list(self.buckets.items())]

    def merge_wire(self, w: list[Any]) -> None:
        count, lo, hi, items = w
        if not count:
            return
        self.min = lo if self.count == 0 else min(self.min, lo)
        self.max = hi if self.count == 0 else max(self.max, hi)
        self.count += count
        b = self.buckets
        for i, c in items:
            b[i] = b.get(i, 0) + c

    def percentile(self, p: float) -> float:
        """Value at percentile p (0‥100): the bucket's geometric middle, clamped to [min, max]."""
        if self.count == 0:
            return 0.0
        if p <= 0:
            return float(self.min)
        if p >= 100:
            return float(self.max)
        rank = math.ceil(self.count * p / 100)
        seen = 0
        for i in sorted(self.buckets):
            seen += self.buckets[i]
            if seen >= rank:
                value = self.RATIO ** (i + 0.5)
                return float(min(max(value, self.min), self.max))
        return float(self.max)
