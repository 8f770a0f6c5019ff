"""Delivery recording for swarms: latency in µs in an HDR histogram, never one Locust event per frame.

Each load-generator process records into its own :class:`DeliveryRecorder`; workers ship an encoded
snapshot with every Locust worker report and the master merges them, so ``--processes N`` and workers on
other hosts give one true distribution.
"""

from __future__ import annotations

import threading
from typing import Any

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour
SIGNIFICANT_FIGURES = 3


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)


class DeliveryRecorder:
    """Delivery latency (receive time − sender's cts) and counts for one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.latency = new_histogram()
        self.delivered = 0
        self.clamped = 0  # latencies outside the histogram range (negative clock skew or > 1 h), counted not hidden

    def record(self, latency_us: int) -> None:
        with self._lock:
            self.delivered += 1
            if LOWEST_US <= latency_us <= HIGHEST_US:
                self.latency.record_value(latency_us)
            else:
                self.clamped += 1
                self.latency.record_value(min(max(latency_us, LOWEST_US), HIGHEST_US))

    def snapshot_and_reset(self) -> dict[str, Any]:
        """What a worker ships with a report: everything since its previous report."""
        with self._lock:
            data = {"latency": self.latency.encode().decode(), "delivered": self.delivered, "clamped": self.clamped}
            self.latency = new_histogram()
            self.delivered = self.clamped = 0
        return data

    def merge(self, data: dict[str, Any]) -> None:
        with self._lock:
            self.latency.decode_and_add(data["latency"].encode())
            self.delivered += int(data["delivered"])
            self.clamped += int(data["clamped"])

    def summary_ms(self) -> dict[str, float]:
        with self._lock:
            h = self.latency
            if h.get_total_count() == 0:
                return {}
            out = {f"p{p:g}": h.get_value_at_percentile(p) / 1000 for p in (50, 90, 99, 99.9)}
            out["max"] = h.get_max_value() / 1000
            return out
