"""Unit tests (no sockets): the batch ledger (drivers/batchledger.py) gives exactly what ReceiverLedger.on_push gives
frame by frame — injected drops, duplicates, reorders, signals, catch-up overlap, unexpected groups, repairs and
reconnects between batches, any cut into batches, as lists of payloads or through the receive engine's pump — and the
bulk histogram helpers record what one-by-one does."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import _pump
from drivers.batchledger import BatchLedger
from drivers.deliveries import LogBuckets, Recorder, _log_bounds
from drivers.fast_receiver import PUSH_PREFIX, SEQ_KEY
from drivers.ledger import Ledger, ReceiverLedger
from reference_server import protocol

T0 = 1_800_000_000_000_000  # µs
GIDS = (7, 2**61 + 3)  # a small gid and one the size provision_group draws
SENDER = 999


def payload(gid: int, seq: int, kind: str | None = None, cts: int | None = None) -> bytes:
    if kind is not None:  # a signal: no send timestamp
        return protocol.encode_push(protocol.Message(gid, seq, SENDER, 0, T0, "", kind=kind,
                                                     ref=seq - 1 if kind == "recall" else 0,
                                                     uids=(5,) if kind != "recall" else None))
    return protocol.encode_push(protocol.Message(gid, seq, SENDER, T0 + 10 * seq if cts is None else cts,
                                                 T0 + 10 * seq + 3, f"body {seq}"))


def hello(max_seq: int, gids: tuple[int, ...] = GIDS, sts: int = T0 - 5) -> dict[str, Any]:
    return {"op": "hello", "sts": sts, "groups": [{"gid": g, "max": max_seq, "read": 0, "unread": max_seq}
                                                  for g in gids]}


class History:
    """sync as the reference server answers it, for every receiver: all seqs visible except ``hidden``."""

    def __init__(self, max_seq: int, hidden: set[tuple[int, int]]) -> None:
        self.max = max_seq
        self.hidden = hidden

    def sync(self, gid: int, after: int, limit: int) -> dict[str, Any]:
        upto = min(after + limit, self.max)
        msgs = [orjson.loads(payload(gid, s)) for s in range(after + 1, upto + 1) if (gid, s) not in self.hidden]
        nxt = max(upto, after)
        return {"gid": gid, "msgs": msgs, "next": nxt, "more": nxt < self.max, "max": self.max}


def state(ledger: Ledger, receivers: dict[int, ReceiverLedger]) -> dict[str, Any]:
    """Everything the ledger knows, in comparable form (fan-out parts as multisets of latencies — on_push appends
    ints, the batch ledger arrays —, histograms encoded)."""
    out: dict[str, Any] = {
        "delivered": ledger.delivered, "counts": dict(ledger.counts), "holey": sorted(r.uid for r in ledger.holey),
        "fan": {k: sorted(np.concatenate([np.atleast_1d(x) for x in v]).tolist()) for k, v in ledger.fan.items()},
        "groups": {u: {g: (gl.last, dict(gl.holes), sorted(gl.invisible), sorted(gl.repaired), gl.live_from)
                       for g, gl in rl.groups.items()} for u, rl in receivers.items()},
        "pending": {u: dict(rl.pending_catchup) for u, rl in receivers.items()},
    }
    data = ledger.take()
    out["take"] = {k: data[k] for k in ("latency", "counts", "presence", "profiles")}
    out["take_fan"] = sorted((g, s, w[0], w[1], w[2], sorted(w[3])) for g, s, w in data["fan"])
    return out


# one receiver's stream for one group: each seq 1..n once, then faults injected
fault = st.sampled_from(["none", "drop", "dup", "swap", "signal", "late_dup"])


@st.composite
def scenario(draw: st.DrawFn) -> dict[str, Any]:
    n_rx = draw(st.integers(1, 4))
    gids = GIDS[:draw(st.integers(1, 2))]
    start = draw(st.integers(0, 3))  # hello.max: seqs up to it are history (a push of one is an overlap)
    streams: dict[int, list[tuple[int, int, str | None]]] = {}
    hidden: set[tuple[int, int]] = set()
    top = start
    for u in range(n_rx):
        frames: list[tuple[int, int, str | None]] = []
        for g in gids:
            n = draw(st.integers(0, 25))
            top = max(top, start + n)
            seq: list[tuple[int, int, str | None]] = []
            for s in range(start + 1, start + n + 1):
                f = draw(fault)
                if f == "drop":
                    if draw(st.booleans()):
                        hidden.add((g, s))  # invisible to everyone: a private hole, not a loss
                    continue
                kind = "recall" if f == "signal" else None
                seq.append((g, s, kind))
                if f == "dup":
                    seq.append((g, s, kind))
                if f == "late_dup" and seq:
                    seq.insert(max(0, len(seq) - 3), (g, s, kind))
                if f == "swap" and len(seq) >= 2:
                    seq[-1], seq[-2] = seq[-2], seq[-1]
            if draw(st.booleans()) and start:
                seq.insert(0, (g, start, None))  # catch-up overlap
            frames.extend(seq)
        if draw(st.booleans()):
            frames.append((1234, 1, None))  # a group the hello did not have
        streams[u] = frames
    # arrival order across connections: an interleaving that keeps each connection's order
    order = draw(st.lists(st.integers(0, n_rx - 1), min_size=sum(map(len, streams.values())),
                          max_size=sum(map(len, streams.values()))))
    merged: list[tuple[int, int, int, str | None]] = []
    pos = dict.fromkeys(streams, 0)
    for u in order + [v for v in streams for _ in streams[v]]:
        if pos[u] < len(streams[u]):
            g, s, kind = streams[u][pos[u]]
            merged.append((u, g, s, kind))
            pos[u] += 1
    cuts = sorted(set(draw(st.lists(st.integers(0, len(merged)), max_size=8))))
    return {"n_rx": n_rx, "gids": gids, "start": start, "frames": merged, "cuts": cuts, "hidden": hidden,
            "top": top, "profiles": draw(st.lists(st.sampled_from([None, "3g", "wifi"]), min_size=n_rx,
                                                  max_size=n_rx)),
            "repair_at": draw(st.sets(st.integers(0, 8), max_size=3)),
            "reconnect": draw(st.one_of(st.none(), st.tuples(st.integers(0, n_rx - 1), st.integers(0, 8)))),
            "lag": draw(st.integers(0, 3000))}


def via_pump(bl: BatchLedger, chunk: list[tuple[int, bytes, int]], slots: dict[int, int], split: int) -> None:
    """A batch as the receive engine hands it over: each frame into the pump (drivers/_pump.c keeps each distinct
    payload once), taken in two parts (as around a reply), applied by apply_ids."""
    pump = _pump.Pump(PUSH_PREFIX, SEQ_KEY, 1 << 20)
    try:
        for u, p, t in chunk:
            pump.push(slots[u], p, t)
        for upto in (split % (len(chunk) + 1), -1):
            taken = pump.take(upto)
            if taken is None:
                continue
            distinct, ids, ss, ts = taken
            bl.apply_ids(distinct, np.frombuffer(ids, np.int32), np.frombuffer(ss, np.int64),
                         np.frombuffer(ts, np.int64))
        assert pump.pending == 0
    finally:
        pump.close()


def run_both(sc: dict[str, Any], via: str = "apply") -> tuple[dict[str, Any], dict[str, Any], BatchLedger]:
    """The same frames into one ledger by on_push and into another by BatchLedger batches, with the same repairs
    and reconnects between the same batches. ``via``: the batches as lists of payloads (apply) or through the
    engine's pump (apply_ids)."""
    one, batch_ledger = Ledger(), Ledger()
    bl = BatchLedger(batch_ledger)
    a: dict[int, ReceiverLedger] = {}
    b: dict[int, ReceiverLedger] = {}
    slots: dict[int, int] = {}
    for u in range(sc["n_rx"]):
        for ledger, rls in ((one, a), (batch_ledger, b)):
            rl = ledger.receiver(u + 1)
            rl.profile = sc["profiles"][u]
            rl.on_connect(hello(sc["start"], sc["gids"]))
            rls[u] = rl
        slots[u] = bl.register(b[u])
    server = History(sc["top"], sc["hidden"])
    frames = [(u, payload(g, s, kind), (T0 + 10 * s + sc["lag"] + i) * 1000 + 999)
              for i, (u, g, s, kind) in enumerate(sc["frames"])]
    bounds = [0, *sc["cuts"], len(frames)]
    for j, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        chunk = frames[lo:hi]
        for u, p, t in chunk:
            a[u].on_push(orjson.loads(p), t // 1000)
        if chunk and via == "pump":
            via_pump(bl, chunk, slots, sc["lag"] + j)
        elif chunk:
            bl.apply([p for _, p, _ in chunk], [slots[u] for u, _, _ in chunk], [t for _, _, t in chunk])
        if j in sc["repair_at"]:
            for rls in (a, b):
                for rl in rls.values():
                    rl.repair(server.sync)
        if sc["reconnect"] is not None and sc["reconnect"][1] == j:
            u = sc["reconnect"][0]
            for rls in (a, b):
                rls[u].on_disconnect(T0)
                rls[u].on_connect(hello(sc["top"], sc["gids"], sts=T0 + 1), T0 + 1)
                rls[u].catch_up(server.sync, T0)
            bl.refresh(slots[u])
    return state(one, a), state(batch_ledger, b), bl


@settings(max_examples=300, deadline=None)
@given(scenario(), st.sampled_from(["apply", "pump"]))
def test_batches_count_exactly_what_on_push_counts(sc: dict[str, Any], via: str) -> None:
    expected, got, _ = run_both(sc, via)
    for key in expected:
        assert got[key] == expected[key], key


def test_clean_streams_take_the_run_check() -> None:
    """In-order pushes never go frame by frame (that is the point), and still count exactly."""
    sc = {"n_rx": 3, "gids": GIDS[:1], "start": 0, "cuts": [7, 20], "hidden": set(), "top": 30,
          "profiles": [None, "3g", None], "repair_at": set(), "reconnect": None, "lag": 1500,
          "frames": [(u, GIDS[0], s, None) for s in range(1, 31) for u in range(3)]}
    expected, got, bl = run_both(sc)
    assert got == expected
    assert bl.in_order == bl.frames == 90
    assert expected["delivered"] == 90 and expected["counts"]["duplicated"] == 0


def test_receivers_of_several_groups_take_the_run_check_and_joins_and_reused_slots_count_right() -> None:
    """Members of several groups (many_groups): in-order runs are checked in bulk through their (slot, group) pairs;
    a group joined after the slot was read and a slot reused by a receiver of other groups count as on_push does."""
    one, two = Ledger(), Ledger()
    bl = BatchLedger(two)
    a = {u: one.receiver(u) for u in (1, 2)}
    b = {u: two.receiver(u) for u in (1, 2)}
    for rl in (*a.values(), *b.values()):
        rl.on_connect(hello(0, GIDS))
    slots = {u: bl.register(b[u]) for u in (1, 2)}

    def both(frames: list[tuple[int, int, int]]) -> None:
        ps = [payload(g, s) for _, g, s in frames]
        ts = [(T0 + 10 * s + 500) * 1000 for _, _, s in frames]
        for (u, _, _), p, t in zip(frames, ps, ts, strict=True):
            a[u].on_push(orjson.loads(p), t // 1000)
        bl.apply(ps, [slots[u] for u, _, _ in frames], ts)

    both([(u, g, s) for s in range(1, 6) for g in GIDS for u in (1, 2)])
    assert bl.in_order == bl.frames == 20
    for rls in (a, b):  # a group joined without a new hello: its first batch the general way, then the short one
        rls[1].join(77, T0)
    both([(1, 77, 1), (1, 77, 2), (2, GIDS[0], 6)])
    both([(1, 77, 3), (1, GIDS[1], 6), (1, 77, 4)])
    assert bl.in_order == bl.frames == 26
    # receiver 2 goes; its slot goes to receiver 3, which is in GIDS[0] only: a push of GIDS[1] on that slot is
    # receiver 3's unexpected group, not receiver 2's next message
    bl.release(slots[2])
    a[3], b[3] = one.receiver(3), two.receiver(3)
    for rl in (a[3], b[3]):
        rl.on_connect(hello(6, GIDS[:1]))
    slots[3] = bl.register(b[3])
    assert slots[3] == slots[2]
    both([(3, GIDS[1], 6), (3, GIDS[0], 7), (1, GIDS[0], 6)])
    assert two.counts["unexpected_group"] == one.counts["unexpected_group"] == 1
    assert b[2].groups[GIDS[1]].last == 5
    assert state(two, b) == state(one, a)


def test_injected_drop_duplicate_and_reorder_are_counted() -> None:
    """The example of test_ledger (2 duplicated, 3 after 4, 5 a hole), arriving as one coalesced read."""
    ledger = Ledger()
    rl = ledger.receiver(1)
    rl.on_connect(hello(0, GIDS[:1]))
    bl = BatchLedger(ledger)
    slot = bl.register(rl)
    seqs = (1, 2, 2, 4, 3, 6)
    bl.apply([payload(GIDS[0], s) for s in seqs], [slot] * 6, [(T0 + 100) * 1000] * 6)
    c = ledger.counts
    assert (c["duplicated"], c["reordered"], ledger.delivered) == (1, 1, 5)
    assert list(rl.groups[GIDS[0]].holes) == [5] and rl in ledger.holey
    assert ledger.latency.h.get_total_count() == 5


def test_the_pump_keeps_each_distinct_payload_once_and_hands_over_in_order() -> None:
    """Frames of one message are one payload in the pump's batch; ids, slots and times keep the arrival order; a
    take of the first records leaves the rest (and the payloads they name) for the next."""
    pump = _pump.Pump(PUSH_PREFIX, SEQ_KEY, 1 << 20)
    m1, m2 = payload(GIDS[0], 1), payload(GIDS[1], 1)
    frames = [(3, m1), (4, m1), (3, m2), (5, m1), (4, m2)]
    for i, (slot, p) in enumerate(frames):
        pump.push(slot, p, T0 * 1000 + i)
    assert pump.pending == 5 and pump.stats["distinct"] == 2
    first = pump.take(2)
    assert first is not None
    distinct, ids, slots, _ = first
    assert distinct == [m1, m2]
    assert np.frombuffer(ids, np.int32).tolist() == [0, 0] and np.frombuffer(slots, np.int64).tolist() == [3, 4]
    rest = pump.take()
    assert rest is not None and rest[0] == [m1, m2]
    assert np.frombuffer(rest[1], np.int32).tolist() == [1, 0, 1]
    assert np.frombuffer(rest[2], np.int64).tolist() == [3, 5, 4]
    assert np.frombuffer(rest[3], np.int64).tolist() == [T0 * 1000 + i for i in (2, 3, 4)]
    assert pump.take() is None and pump.stats["distinct"] == 0  # all taken: the payloads are let go
    pump.close()


def test_frames_that_are_not_pushes_come_back() -> None:
    ledger = Ledger()
    rl = ledger.receiver(1)
    rl.on_connect(hello(0, GIDS[:1]))
    bl = BatchLedger(ledger)
    slot = bl.register(rl)
    read_reply = protocol.encode_read_reply(9, protocol.GroupState(GIDS[0], 2, 1, 1))
    assert read_reply.startswith(b'{"gid":')  # why the pump tells a push by PUSH_PREFIX <gid> SEQ_KEY, not the prefix
    out = bl.apply([payload(GIDS[0], 1), read_reply, payload(GIDS[0], 2)], [slot] * 3, [T0 * 1000] * 3)
    assert [(k, f["op"], f["rid"]) for k, f in out] == [(slot, "read", 9)]
    assert ledger.delivered == 2 and ledger.counts["duplicated"] == 0


def test_frozen_ledger_ignores_batches_and_released_slots_are_reused() -> None:
    ledger = Ledger()
    rl = ledger.receiver(1)
    rl.on_connect(hello(0, GIDS[:1]))
    bl = BatchLedger(ledger)
    slot = bl.register(rl)
    ledger.frozen = True
    bl.apply([payload(GIDS[0], 1)], [slot], [T0 * 1000])
    assert ledger.delivered == 0
    bl.release(slot)
    assert bl.register(ledger.receiver(2)) == slot


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.integers(-10**6, 10), st.integers(1, 10**7), st.integers(1, 2**45)), min_size=0,
                max_size=4000))
def test_record_many_is_record_one_by_one(values: list[int]) -> None:
    one, bulk = Recorder(), Recorder()
    for v in values:
        one.record(v)
    bulk.record_many(np.array(values, np.int64))
    assert (bulk.clamped, bulk.h.total_count, bulk.h.min_value, bulk.h.max_value) == \
        (one.clamped, one.h.total_count, one.h.min_value, one.h.max_value)
    assert list(bulk.h.counts) == list(one.h.counts)
    assert bulk.take() == one.take()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.integers(-5, 5), st.integers(1, 10**6), st.integers(1, 2**50)), min_size=1,
                max_size=3000))
def test_add_latencies_is_add_many_of_the_clamped_values(values: list[int]) -> None:
    one, bulk = LogBuckets(), LogBuckets()
    one.add_many([v if v > 0 else 1 for v in values])
    bulk.add_latencies(values)
    assert (bulk.count, bulk.min, bulk.max, bulk.buckets) == (one.count, one.min, one.max, one.buckets)


part_st = st.one_of(
    st.lists(st.integers(-5, 10**9), min_size=1, max_size=80),  # on_push's part: ints
    st.lists(st.lists(st.integers(-5, 10**9), max_size=120).map(lambda v: np.array(v, np.int64)), min_size=1,
             max_size=3),  # the batch ledger's: arrays
    st.tuples(st.integers(1, 10**6), st.lists(st.integers(1, 10**9), max_size=70)).map(
        lambda t: [t[0], np.array(t[1], np.int64)]),  # a mix
)


@settings(max_examples=200, deadline=None)
@given(st.lists(part_st, max_size=40))
def test_many_to_wire_is_each_parts_own_log_buckets(parts: list[list[Any]]) -> None:
    """A worker report's fan-out parts bucketed in one pass give what each message's LogBuckets gives."""
    def norm(w: list[Any]) -> list[Any]:
        return [w[0], w[1], w[2], sorted(w[3])]

    expected = []
    for p in parts:
        b = LogBuckets()
        b.add_latencies(p)
        expected.append(norm(b.to_wire()))
    assert [norm(w) for w in LogBuckets.many_to_wire(parts)] == expected


def test_log_bounds_are_the_bucket_edges_of_math_log() -> None:
    bounds = _log_bounds(10**12)
    k = LogBuckets._K
    for i, v in enumerate(bounds.tolist(), start=1):
        assert int(math.log(v) * k) >= i
        assert v == 2 or int(math.log(v - 1) * k) < i
