"""Unit tests (no sockets): the delivery ledger, fan-out completion across workers, histograms, schedules,
the generator metrics and the append-only bundle writer."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.deliveries import PROMETHEUS_BUCKETS_S, LogBuckets, Recorder, cumulative_counts
from drivers.ledger import Ledger, now_us
from drivers.metrics import METRIC_NAMES, build_registry
from drivers.schedule import Schedule
from drivers.totals import Totals

GID = 7
T0 = 1_000_000_000_000


def push(seq: int, sender: int = 99, cts: int = T0, to: list[int] | None = None) -> dict[str, Any]:
    f: dict[str, Any] = {"op": "msg", "gid": GID, "seq": seq, "from": sender, "cts": cts, "sts": cts + 10, "body": "b"}
    if to is not None:
        f["to"] = to
    return f


def hello(max_seq: int, read: int = 0, sts: int = T0 - 1) -> dict[str, Any]:
    return {"op": "hello", "sts": sts, "groups": [{"gid": GID, "max": max_seq, "read": read, "unread": max_seq - read}]}


class FakeServer:
    """Answers sync/unread/read like the reference server for one group's history, as seen by ``uid``."""

    def __init__(self, uid: int, history: dict[int, dict[str, Any]], max_seq: int) -> None:
        self.uid = uid
        self.history = history  # seq -> message (absent: invisible to uid)
        self.max = max_seq
        self.read_mark = 0
        self.syncs = 0

    def sync(self, gid: int, after: int, limit: int) -> dict[str, Any]:
        self.syncs += 1
        upto = min(after + limit, self.max)
        msgs = [self.history[s] for s in range(after + 1, upto + 1) if s in self.history]
        nxt = max(upto, after)
        return {"gid": gid, "msgs": msgs, "next": nxt, "more": nxt < self.max, "max": self.max}

    def unread(self, gids: list[int]) -> dict[str, Any]:
        hidden = sum(1 for s in range(self.read_mark + 1, self.max + 1)
                     if s not in self.history or self.history[s]["from"] == self.uid or "kind" in self.history[s])
        return {"groups": [{"gid": g, "max": self.max, "read": self.read_mark,
                            "unread": self.max - self.read_mark - hidden} for g in gids]}

    def read(self, gid: int, seq: int) -> dict[str, Any]:
        self.read_mark = min(max(self.read_mark, seq), self.max)
        return {"gid": gid, "max": self.max, "read": self.read_mark, "unread": 0}


def make(uid: int = 1, start_max: int = 0) -> tuple[Ledger, Any]:
    ledger = Ledger()
    rl = ledger.receiver(uid)
    rl.on_connect(hello(start_max))
    return ledger, rl


def test_in_order_pushes_are_delivered_with_latency() -> None:
    ledger, rl = make()
    for s in range(1, 6):
        rl.on_push(push(s, cts=T0))
    assert ledger.delivered == 5
    data = ledger.take()
    assert data["counts"]["delivered"] == 5 and data["counts"]["lost"] == 0
    assert [f[:2] for f in data["fan"]] == [[GID, s] for s in range(1, 6)]


def test_duplicates_reorders_and_holes() -> None:
    ledger, rl = make()
    for s in (1, 2, 2, 4, 3, 6):  # 2 duplicated; 3 after 4: reordered; 5 a hole
        rl.on_push(push(s))
    c = ledger.counts
    assert (c["duplicated"], c["reordered"], ledger.delivered) == (1, 1, 5)
    assert list(rl.groups[GID].holes) == [5]


def test_repair_tells_lost_from_private_and_own() -> None:
    uid = 1
    history = {s: push(s) for s in range(1, 11)}
    del history[4]  # private to someone else: invisible to uid
    history[6] = push(6, sender=uid)  # uid's own message: acked, never pushed
    server = FakeServer(uid, history, 10)
    ledger, rl = make(uid)
    for s in (1, 2, 3, 5, 7, 9, 10):  # 8 was lost on the way
        rl.on_push(push(s))
    rl.repair(server.sync)
    c = ledger.counts
    assert (c["lost"], c["repaired"], c["private_holes"], c["own_holes"]) == (1, 1, 1, 1)
    assert not rl.groups[GID].holes
    rl.on_push(push(8))  # the lost push arriving after its repair is neither a delivery nor a duplicate
    assert c["late_after_repair"] == 1 and c["duplicated"] == 0


def test_acked_own_seq_is_not_synced() -> None:
    ledger, rl = make(uid=1)
    ledger.on_ack(1, {"gid": GID, "seq": 2, "sts": T0}, cts=T0 - 5, private=False)
    rl.on_push(push(1))
    rl.on_push(push(3))
    server = FakeServer(1, {}, 3)
    rl.repair(server.sync)
    assert server.syncs == 0 and ledger.counts["own_holes"] == 1


def test_reconnect_catch_up_and_overlap() -> None:
    history = {s: push(s) for s in range(1, 21)}
    server = FakeServer(1, history, 20)
    ledger, rl = make()
    for s in range(1, 6):
        rl.on_push(push(s))
    rl.on_disconnect()
    rl.on_connect(hello(12, sts=T0 + 5))  # 6..12 were committed while offline
    rl.on_push(push(12))  # a push at or below hello.max: overlap, not a duplicate
    rl.on_push(push(13))
    assert rl.catch_up(server.sync, started_us=T0)
    c = ledger.counts
    assert (c["catchup_msgs"], c["overlap"], c["duplicated"], c["lost"]) == (7, 1, 0, 0)
    assert ledger.delivered == 6
    assert [p[2] for p in ledger.presence] == [1, -1, 1]


def test_reconcile_counts_the_tail_and_in_flight() -> None:
    history = {s: push(s) for s in range(1, 8)}
    history[7] = push(7, cts=T0 + 1_000_000)  # accepted after the cutoff: in flight when the run stopped
    server = FakeServer(1, history, 7)
    ledger, rl = make()
    for s in range(1, 5):
        rl.on_push(push(s))
    rl.reconcile(server.sync, cutoff_us=T0 + 500)
    c = ledger.counts
    assert (c["lost"], c["in_flight_at_stop"]) == (2, 1)  # 5 and 6 never came


def test_reconcile_does_not_count_pushes_that_arrive_before_its_reply() -> None:
    """On a stalled link the queued pushes reach the client before the end-of-run sync's reply (one ordered
    stream): they are deliveries, not losses; a seq that really never came is still lost."""
    history = {s: push(s) for s in range(1, 9)}
    server = FakeServer(1, history, 8)
    ledger, rl = make()
    for s in range(1, 4):
        rl.on_push(push(s))

    def slow_link_sync(gid: int, after: int, limit: int) -> dict[str, Any]:
        for s in (4, 5, 7, 8):  # 6 never comes
            rl.on_push(push(s))
        return server.sync(gid, after, limit)

    rl.reconcile(slow_link_sync, cutoff_us=T0 + 500)
    c = ledger.counts
    assert (c["lost"], c["duplicated"], ledger.delivered) == (1, 0, 7)


def test_unread_oracle_agrees_and_detects_a_wrong_answer() -> None:
    history = {s: push(s) for s in range(1, 11)}
    del history[3]  # private to another member
    server = FakeServer(1, history, 10)
    ledger, rl = make()
    for s in (1, 2, 4, 5, 6, 7, 8, 9, 10):
        rl.on_push(push(s))
    rl.repair(server.sync)
    rl.check_unread(server.unread, server.read)
    assert ledger.counts["unread_checks"] == 1 and ledger.counts["unread_mismatches"] == 0

    def wrong(gids: list[int]) -> dict[str, Any]:
        reply = server.unread(gids)
        reply["groups"][0]["unread"] += 1
        return reply

    rl.check_unread(wrong, server.read)
    assert ledger.counts["unread_mismatches"] == 1


def test_signals_have_no_latency_and_never_count_as_unread() -> None:
    recall = {**push(5, cts=0), "kind": "recall", "ref": 3}
    history = {s: push(s) for s in (1, 2, 4)} | {5: recall}  # 3 was recalled: gone from history
    server = FakeServer(1, history, 5)
    ledger, rl = make()
    now = now_us()
    for f in (push(1, cts=now), push(2, cts=now), push(3, cts=now), push(4, cts=now), recall):
        rl.on_push(f)
    assert ledger.counts["signals"] == 1 and ledger.delivered == 5
    assert ledger.latency.h.get_total_count() == 4 and ledger.latency.clamped == 0
    rl.check_unread(server.unread, server.read)
    assert ledger.counts["unread_checks"] == 1 and ledger.counts["unread_mismatches"] == 0


def test_frozen_ledger_ignores_pushes() -> None:
    ledger, rl = make()
    ledger.frozen = True
    rl.on_push(push(1))
    assert ledger.delivered == 0


def _worker(uids: list[int], drop: set[tuple[int, int]], seqs: int,
            profiles: dict[int, str] | None = None) -> dict[str, Any]:
    ledger = Ledger()
    for uid in uids:
        rl = ledger.receiver(uid)
        if profiles:
            rl.profile = profiles[uid]
        rl.on_connect(hello(0, sts=T0 - 1000))
        for s in range(1, seqs + 1):
            if (uid, s) not in drop:
                rl.on_push(push(s, cts=T0 + s))
    return ledger.take()


def test_fan_out_completes_across_workers() -> None:
    sender = Ledger()
    sender.receiver(100).on_connect(hello(0, sts=T0 - 1000))
    for s in range(1, 4):
        sender.on_ack(100, {"gid": GID, "seq": s, "sts": T0 + s}, cts=T0 + s, private=False)
    totals = Totals()
    totals.merge(_worker([1, 2, 3], set(), 3), "w0")
    totals.merge(_worker([4, 5], {(5, 2)}, 3), "w1")  # seq 2 never reached uid 5
    totals.merge(sender.take(), "w2")
    assert totals.settle() == 3
    fc = totals.fan_counts
    assert (fc["messages"], fc["expected"], fc["received"], fc["complete"], fc["incomplete"]) == (3, 15, 14, 2, 1)
    assert totals.fan_last.h.get_total_count() == 2


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=10_000_000), min_size=1, max_size=300),
       st.integers(min_value=1, max_value=4))
def test_log_buckets_merge_and_percentiles(values: list[int], parts: int) -> None:
    merged = LogBuckets()
    for i in range(parts):
        b = LogBuckets()
        b.add_many(values[i::parts])
        merged.merge_wire(b.to_wire())
    ordered = sorted(values)
    assert (merged.count, merged.min, merged.max) == (len(values), ordered[0], ordered[-1])
    for p in (50, 99):
        exact = ordered[max(0, -(-len(values) * p // 100) - 1)]
        assert merged.percentile(p) == pytest.approx(exact, rel=0.011)


def test_cumulative_counts_match_the_histogram() -> None:
    r = Recorder()
    values = [random.randint(50, 2_000_000) for _ in range(2000)]
    for v in values:
        r.record(v)
    cum = cumulative_counts(r.h, PROMETHEUS_BUCKETS_S)
    for bound, count in zip(PROMETHEUS_BUCKETS_S, cum, strict=True):
        exact = sum(1 for v in values if v <= bound * 1e6)
        assert abs(count - exact) <= max(2, exact * 0.002)
    assert cum[-1] == len(values)


def test_schedule_rate_burst_and_poisson() -> None:
    s = Schedule(rate=10, start=100.0, duration=5, burst=3, rng=random.Random(1))
    slots = list(s.slots())
    assert len(slots) == 50 and all(b == 3 for _, b in slots)
    assert all(100e6 <= t < 105e6 for t, _ in slots)
    p = Schedule(rate=50, start=0.0, duration=200, poisson=True, rng=random.Random(2))
    assert 9_500 < len(list(p.slots())) < 10_500


def test_the_generator_is_judged_between_the_measured_phase_and_the_last_deliveries_only() -> None:
    """Connecting before it and the end-of-run reconciliation after it are the generator's own work, not the load:
    a 95 % sample there does not make the run generator-bound; inside, it does."""
    totals = Totals()
    totals.merge_health("w0", {"cpu": [(5.0, 0.97), (12.0, 0.4), (20.0, 0.95), (31.0, 0.99)],
                               "lag_ms": [(5.0, 400.0), (12.0, 20.0), (20.0, 60.0), (31.0, 900.0)]})
    totals.set_measure_from(10.0)
    totals.set_measure_until(30.0)
    h = totals.health["w0"]
    assert (h["cpu_max"], h["lag_max_ms"]) == (0.95, 60.0)
    assert totals.saturated() == ["w0: CPU 95% > 90%"]
    assert totals.metrics()["generator_health_until"] == 30.0
    totals.set_measure_until(15.0)
    assert (h["cpu_max"], h["lag_max_ms"]) == (0.4, 20.0) and totals.saturated() == []
    totals.merge_health("w0", {"cpu": [(14.0, 0.93)], "lag_ms": []})  # a late report of a sample inside
    assert totals.saturated() == ["w0: CPU 93% > 90%"]
    assert Totals().metrics()["generator_health_until"] is None
    # reads the receive engine stamped when read (no kernel stamp), summed over a worker's reports, whatever the phase
    totals.merge_health("w0", {"unstamped_reads": 3})
    totals.merge_health("w0", {"cpu": [], "lag_ms": [], "unstamped_reads": 2})
    totals.merge_health("w1", {"cpu": [(14.0, 0.2)], "lag_ms": []})
    assert {w: h["unstamped_reads"] for w, h in totals.metrics()["generator_health"].items()} == {"w0": 5, "w1": 0}


def test_generator_metrics_names_and_values() -> None:
    totals = Totals()
    totals.merge(_worker([1, 2], set(), 5), "w0")
    totals.merge_health("w0", {"cpu": [(1.0, 0.5)], "lag_ms": [(1.0, 3.0)]})
    registry = build_registry(totals, lambda: "run1", "unit")
    labels = {"run_id": "run1", "scenario": "unit"}
    direct = {**labels, "profile": "direct"}  # without a --profile-mix every member is direct
    assert registry.get_sample_value("chatbench_messages_delivered_total", direct) == 10
    assert registry.get_sample_value("chatbench_delivery_latency_seconds_count", direct) == 10
    assert registry.get_sample_value("chatbench_generator_cpu_ratio", {**labels, "worker": "w0"}) == 0.5
    exposed = {m.name for m in registry.collect()}
    for name in METRIC_NAMES:
        assert name.removesuffix("_total") in exposed


def test_generator_metrics_by_profile() -> None:
    totals = Totals()
    totals.merge(_worker([1, 2, 3], set(), 4, {1: "direct", 2: "3g", 3: "3g"}), "w0")
    totals.merge(_worker([4], set(), 4, {4: "subway"}), "w1")
    totals.profiles["subway"]["counts"]["reconnects"] = 2
    registry = build_registry(totals, lambda: "run1", "unit")
    labels = {"run_id": "run1", "scenario": "unit"}
    for prof, n in (("direct", 4), ("3g", 8), ("subway", 4)):
        assert registry.get_sample_value("chatbench_delivery_latency_seconds_count", {**labels, "profile": prof}) == n
    assert registry.get_sample_value("chatbench_reconnects_total", {**labels, "profile": "subway"}) == 2
    assert registry.get_sample_value("chatbench_messages_sent_total", labels) == 0  # per run: no profile label
    by = totals.metrics()["by_profile"]
    assert set(by) == {"direct", "3g", "subway"} and by["3g"]["delivery_latency_ms"]["count"] == 8


def test_faults_are_counted_per_receiving_profile() -> None:
    ledger = Ledger()
    slow, fast = ledger.receiver(1), ledger.receiver(2)
    slow.profile, fast.profile = "3g", "direct"
    for rl in (slow, fast):
        rl.on_connect(hello(0, sts=T0 - 1000))
    for s in (1, 3, 2, 3):  # 3g: seq 2 arrives after 3 (reordered), then 3 again (duplicated)
        slow.on_push(push(s, cts=T0 + s))
    for s in (1, 2, 3):
        fast.on_push(push(s, cts=T0 + s))
    totals = Totals()
    totals.merge(ledger.take(), "w0")
    registry = build_registry(totals, lambda: "run1", "unit")
    labels = {"run_id": "run1", "scenario": "unit"}
    for name, want in (("delivered", (3, 3)), ("reordered", (1, 0)), ("duplicated", (1, 0))):
        got = tuple(registry.get_sample_value(f"chatbench_messages_{name}_total", {**labels, "profile": prof})
                    for prof in ("3g", "direct"))
        assert got == want, name
    assert totals.counts["reordered"] == 1 and totals.counts["duplicated"] == 1


def test_bundle_files_are_never_overwritten(tmp_path: Path) -> None:
    from types import SimpleNamespace

    import record
    from drivers import bundle

    env: Any = SimpleNamespace(parsed_options=SimpleNamespace(results_dir=str(tmp_path), chatbench_out=""))
    result = record.finish(record.new("swarm", "s", {}, run_id="r"))
    first = bundle.write(env, result)
    second = bundle.write(env, result)
    assert first != second and first.exists() and second.exists()
    assert record.load(first)["run_id"] == record.load(second)["run_id"] == "r"


def _feed(scrape: bool) -> Totals:
    """The same recorded worker data — a sender, a worker, and a late worker part — merged with or without a
    Prometheus scrape between the reports."""
    from prometheus_client import generate_latest

    sender = Ledger()
    sender.receiver(100).on_connect(hello(0, sts=T0 - 1000))
    for s in range(1, 4):
        sender.on_ack(100, {"gid": GID, "seq": s, "sts": T0 + s}, cts=T0 + s, private=False)
    totals = Totals()
    registry = build_registry(totals, lambda: "r", "s")
    totals.merge(sender.take(), "w2")
    totals.merge(_worker([1, 2, 3], set(), 3), "w0")
    if scrape:
        generate_latest(registry)
    totals.merge(_worker([4, 5], set(), 3), "w1")  # a reconnecting receiver's parts, long after the sends
    if scrape:
        generate_latest(registry)
    totals.settle()
    return totals


def test_scraping_changes_nothing() -> None:
    quiet, watched = _feed(scrape=False), _feed(scrape=True)
    assert watched.fan_counts == quiet.fan_counts
    assert quiet.fan_counts["late_parts"] == 0 and quiet.fan_counts["complete"] == 3
    assert watched.metrics() == quiet.metrics()
    assert watched.histograms() == quiet.histograms()


def test_clock_estimate_takes_the_lowest_round_trip() -> None:
    from drivers.clock import estimate

    # reference = local + 50 ms; the second probe waited 8 ms in a busy loop on the way back
    off = 50_000
    fast = (1_000, 1_000 + off + 200, 1_000 + off + 210, 1_420)  # rtt 410 µs
    slow = (2_000, 2_000 + off + 200, 2_000 + off + 210, 10_420)
    offset, bound = estimate([slow, fast])  # type: ignore[misc]
    assert abs(offset - off) <= bound and bound == 205
    assert estimate([]) is None
    assert estimate([(5, 0, 0, 4)]) is None  # a clock step mid-probe gives no information


def test_clock_keeps_a_precise_estimate_over_a_busy_one() -> None:
    from drivers.clock import Clock

    c = Clock()
    assert c.update(-50_000, 400, good_enough_us=1000)
    assert not c.update(-47_000, 9_000, good_enough_us=1000)  # taken while a loop was busy: reported, not applied
    assert (c.offset_us, c.bound_us) == (-50_000, 400)
    assert c.update(-50_100, 300, good_enough_us=1000)
    assert [applied for *_, applied in c.take()] == [True, False, True]
    assert c.take() == []


def test_clock_summary_and_validity() -> None:
    from drivers.bundle import clock_reasons

    totals = Totals()
    totals.merge({**_worker([1], set(), 1), "clock": [(1.0, -50_000, 300, True), (6.0, -50_200, 400, True),
                                                      (11.0, -40_000, 9_000, False)]}, "w1")
    c = totals.clock_summary()
    w = c["workers"]["w1"]
    assert (w["offset_ms"], w["bound_ms"], w["drift_ms"], w["estimates"], w["rejected"]) == (-50.2, 0.4, 0.2, 2, 1)
    assert clock_reasons(c, True, 1.0, uncorrected=False) == []
    assert clock_reasons({**c, "workers": {}}, True, 1.0, uncorrected=False) == [
        "no clock offset estimate from any worker"]
    assert clock_reasons(c, True, 0.3, uncorrected=False) == [
        "w1: clock offset known only to ±0.400 ms > 0.3 ms"]
    assert clock_reasons(c, True, 1.0, uncorrected=True) == [
        "w1: clock -50.200 ms off the master's and latencies not corrected (--no-clock-correction)"]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=3_600_000_000), min_size=0, max_size=400))
def test_recorded_buckets_match_hdrh_iteration(values: list[int]) -> None:
    from drivers.deliveries import new_histogram, recorded

    h = new_histogram()
    for v in values:
        h.record_value(v)
    slow = [(h.get_highest_equivalent_value(i.value_iterated_to), i.count_at_value_iterated_to)
            for i in h.get_recorded_iterator()]
    assert recorded(h) == slow


def test_connect_failures_on_impairing_profiles_are_their_measure() -> None:
    """A run is invalid when more than --max-connect-failures of its first connects failed; a connect that failed
    through an impairing network profile (its stalls and resets) is that profile's figure, not missing work."""
    from types import SimpleNamespace

    from drivers.bundle import planned_work_reasons

    run: Any = SimpleNamespace(workers_lost=[], finals_missing=[])  # drivers.swarm.RunState's (it imports locust)

    def reasons(failures: int, by_profile: dict[str, dict[str, int]]) -> list[str]:
        metrics: dict[str, Any] = {"generator_saturated_reasons": [], "sent": 10, "expected_deliveries": 10,
                                   "latency_clamped": 0,
                                   "delivered": 10, "by_profile": by_profile}
        return planned_work_reasons(metrics, {"connect": {"count": 300, "failures": failures}}, run, 0.001)

    assert reasons(0, {}) == []
    assert reasons(1, {}) == ["1 of 300 connects failed (> 0.1%)"]
    # the failure was a subway member's: valid, and the profile counts it
    assert reasons(1, {"direct": {"connect_failures": 0}, "subway": {"connect_failures": 1}}) == []
    # a direct member failed beside two impaired ones: invalid, and the reason says how many of each
    assert reasons(3, {"direct": {"connect_failures": 1}, "2g": {"connect_failures": 2}}) == [
        "1 of 298 connects failed (> 0.1%); 2 more on impairing network profiles"]
