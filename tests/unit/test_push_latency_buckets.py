"""The server's push-latency histogram resolves quantiles to a factor of 1.25 from 1 ms to 1 s (and beyond)."""

from __future__ import annotations

import itertools
import random

from prometheus_client import CollectorRegistry

from record.promtext import bucket_quantiles, counters
from reference_server.metrics import PUSH_LATENCY_BUCKETS, ServerMetrics


def test_buckets_are_dense_everywhere_they_matter() -> None:
    assert PUSH_LATENCY_BUCKETS[0] <= 50e-6 and PUSH_LATENCY_BUCKETS[-1] >= 60.0
    assert max(b / a for a, b in itertools.pairwise(PUSH_LATENCY_BUCKETS)) <= 1.25


def test_quantiles_read_back_within_a_factor_of_1_25() -> None:
    from prometheus_client import generate_latest

    rng = random.Random(7)
    for true_p50_s in (0.0012, 0.018, 0.066, 0.25, 0.9):
        registry = CollectorRegistry()
        m = ServerMetrics(registry, version="test", modes={"storage": "read"})
        values = sorted(true_p50_s * rng.lognormvariate(0, 0.3) for _ in range(2001))
        for v in values:
            m.push_latency.observe(v)
        after = counters(generate_latest(registry).decode())
        q = bucket_quantiles(after, {}, "chat_push_latency_seconds", (0.5, 0.99))
        for name, exact in (("p50", values[1000]), ("p99", values[1980])):
            bound = q[name]
            assert bound is not None and exact * 1000 <= bound <= exact * 1000 * 1.25, (name, exact, bound)
