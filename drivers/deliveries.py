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


def hdr_index(h: HdrHistogram, us: np.ndarray[Any, np.dtype[np.int64]]) -> np.ndarray[Any, np.dtype[np.int64]]:
    """hdrh's counts index of each value (1 ≤ value < 2**53), computed as its ``_counts_index_for`` does, in bulk."""
    # bit length of (value | sub_bucket_mask), exact through frexp for values below 2**53
    bits = np.frexp((us | h.sub_bucket_mask).astype(np.float64))[1].astype(np.int64)
    bucket = bits - (h.unit_magnitude + h.sub_bucket_half_count_magnitude + 1)
    sub = us >> (bucket + h.unit_magnitude)
    index: np.ndarray[Any, np.dtype[np.int64]] = ((bucket + 1) << h.sub_bucket_half_count_magnitude) + sub \
        - h.sub_bucket_half_count
    return index


_bounds: list[int] = []  # _bounds[i - 1]: the smallest value of LogBuckets bucket i (i ≥ 1)
_bounds_array: np.ndarray[Any, np.dtype[np.int64]] = np.zeros(0, np.int64)


def _log_bounds(upto: int) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Bucket lower bounds covering values up to ``upto``: ``searchsorted(bounds, v, "right")`` is LogBuckets'
    ``int(log(v) * K) if v > 1 else 0`` for every v ≥ 1 (that expression does not decrease with v)."""
    global _bounds_array
    if _bounds and _bounds[-1] > upto:
        return _bounds_array
    k, log = LogBuckets._K, math.log

    def bucket(v: int) -> int:
        return int(log(v) * k) if v > 1 else 0

    i = len(_bounds) + 1
    while not _bounds or _bounds[-1] <= upto:
        v = max(2, math.ceil(math.exp(i / k)))
        while v > 2 and bucket(v - 1) >= i:
            v -= 1
        while bucket(v) < i:
            v += 1
        _bounds.append(v)
        i += 1
    _bounds_array = np.array(_bounds, np.int64)
    return _bounds_array


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

    def record_many(self, us: np.ndarray[Any, np.dtype[np.int64]]) -> None:
        """:meth:`record` for every value of an int64 array, in bulk (the receive engine's batches): the same
        counts, clamping, total, min and max as recording them one by one."""
        n = int(us.size)
        if n == 0:
            return
        out = int(np.count_nonzero((us < LOWEST_US) | (us > HIGHEST_US)))
        if out:
            self.clamped += out
            us = np.clip(us, LOWEST_US, HIGHEST_US)
        h = self.h
        idx = hdr_index(h, us)
        counts = np.ctypeslib.as_array(h.counts)
        if n < 256:
            np.add.at(counts, idx, 1)
        else:  # latencies cluster: count over their index range only
            lo, hi = int(idx.min()), int(idx.max())
            counts[lo:hi + 1] += np.bincount(idx - lo, minlength=hi - lo + 1).astype(np.uint64)
        h.total_count += n
        h.min_value = min(h.min_value, int(us.min()))
        h.max_value = max(h.max_value, int(us.max()))

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

    def add_latencies(self, values: list[Any]) -> None:
        """:meth:`add_many` of the values with each one below 1 counted as 1 (a fan-out part's latencies), in
        bulk with numpy: the same buckets (from the same ``math.log``, through :func:`_log_bounds`), min and max.
        An element may be an int64 array of values (the batch ledger appends a batch's part of a message so)."""
        n = len(values)
        try:
            arr = np.fromiter(values, np.int64, n)
        except (TypeError, ValueError):  # arrays among the ints
            arr = np.concatenate([np.atleast_1d(np.asarray(v, np.int64)) for v in values])
            n = int(arr.size)
        if n < 64:
            self.add_many([v if v > 0 else 1 for v in arr.tolist()])
            return
        arr = np.maximum(arr, 1)
        idx = np.searchsorted(_log_bounds(int(arr.max())), arr, side="right")
        keys, counts = np.unique(idx, return_counts=True)
        b = self.buckets
        for i, c in zip(keys.tolist(), counts.tolist(), strict=True):
            b[i] = b.get(i, 0) + c
        lo, hi = int(arr.min()), int(arr.max())
        self.min = lo if self.count == 0 else min(self.min, lo)
        self.max = hi if self.count == 0 else max(self.max, hi)
        self.count += n

    def to_wire(self) -> list[Any]:
        return [self.count, self.min, self.max, list(self.buckets.items())]

    @staticmethod
    def many_to_wire(parts: list[list[Any]]) -> list[list[Any]]:
        """``[LogBuckets() + add_latencies(p) → to_wire()]`` for every part (the fan-out parts of a report's
        messages), in one numpy pass: a worker report of 1,500 messages took ~25 ms message by message, long enough
        to make its senders late."""
        if not parts:
            return []
        arrays: list[Any] = []
        ndarray = np.ndarray
        for p in parts:
            first = p[0] if p else None
            if type(first) is ndarray and len(p) == 1:  # the batch ledger's part: one array
                arrays.append(first)
                continue
            if type(first) is not ndarray:
                try:
                    arrays.append(np.fromiter(p, np.int64, len(p)))  # on_push's part: ints
                    continue
                except (TypeError, ValueError):
                    pass
            arrays.append(np.concatenate([np.atleast_1d(np.asarray(v, np.int64)) for v in p]))  # a mix
        sizes = np.fromiter(map(len, arrays), np.int64, len(arrays))
        arr = np.maximum(np.concatenate(arrays), 1)
        starts = np.concatenate((np.zeros(1, np.int64), np.cumsum(sizes)[:-1]))
        nonempty = sizes > 0
        lo = np.zeros(len(arrays), np.int64)
        hi = np.zeros(len(arrays), np.int64)
        if arr.size:
            lo[nonempty] = np.minimum.reduceat(arr, starts[nonempty])
            hi[nonempty] = np.maximum.reduceat(arr, starts[nonempty])
        bounds = _log_bounds(int(arr.max()) if arr.size else 1)
        span = len(bounds) + 1  # bucket numbers are 0 .. len(bounds)
        owner = np.repeat(np.arange(len(arrays), dtype=np.int64), sizes)
        keys, counts = np.unique(owner * span + np.searchsorted(bounds, arr, side="right"), return_counts=True)
        cut = np.searchsorted(keys // span, np.arange(len(arrays) + 1), side="left").tolist()
        buckets = (keys % span).tolist()
        counted = counts.tolist()
        return [[n, a, b, list(zip(buckets[cut[m]:cut[m + 1]], counted[cut[m]:cut[m + 1]], strict=True))]
                if n else [0, 0, 0, []]
                for m, (n, a, b) in enumerate(zip(sizes.tolist(), lo.tolist(), hi.tolist(), strict=True))]

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
