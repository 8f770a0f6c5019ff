"""Unit tests (no sockets): the batch ledger (drivers/batchledger.py) gives exactly what ReceiverLedger.on_push gives
frame by frame — injected drops, duplicates, reorders, signals, catch-up overlap, unexpected groups, repairs and
reconnects between batches, any cut into batches — and the bulk histogram helpers record what one-by-one does."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.batchledger import BatchLedger
from drivers.deliveries import LogBuckets, Recorder, _log_bounds
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


def run_both(sc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], BatchLedger]:
    """The same frames into one ledger by on_push and into another by BatchLedger batches, with the same repairs
    and reconnects between the same batches."""
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
        if chunk:
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
@given(scenario())
def test_batches_count_exactly_what_on_push_counts(sc: dict[str, Any]) -> None:
    expected, got, _ = run_both(sc)
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


def test_injected_drop_duplicate_and_reorder_are_counted() -> None:
    """The example of test_ledger (2 duplicated, 3 after 4, 5 a hole), arriving as one coalesced read."""
    ledger = Ledger()
    rl = ledger.receiver(1)
    rl.on_connect(hello(0, GIDS[:1]))
    bl = BatchLedger(ledger)
    slot = bl.register(rl)
    seqs = (1, 2, 2, 4, 3, 6)
    bl.apply_reads([payload(GIDS[0], s) for s in seqs], [6], [slot], [(T0 + 100) * 1000])
    c = ledger.counts
    assert (c["duplicated"], c["reordered"], ledger.delivered) == (1, 1, 5)
    assert list(rl.groups[GIDS[0]].holes) == [5] and rl in ledger.holey
    assert ledger.latency.h.get_total_count() == 5


def test_reads_expand_to_frames() -> None:
    """apply_reads(ends, slots, times) is apply with each read's slot and time on each of its frames."""
    frames = [(u, s) for s in range(1, 6) for u in (0, 1) for _ in range(1)]
    results = []
    for per_read in (False, True):
        ledger = Ledger()
        bl = BatchLedger(ledger)
        rls = {u: ledger.receiver(u + 1) for u in (0, 1)}
        slots = {}
        for u, rl in rls.items():
            rl.on_connect(hello(0, GIDS[:1]))
            slots[u] = bl.register(rl)
        ps = [payload(GIDS[0], s) for _, s in frames]
        if per_read:  # two frames per read, one read per connection turn
            by: list[tuple[int, list[bytes]]] = []
            for (u, _), p in zip(frames, ps, strict=True):
                if by and by[-1][0] == u:
                    by[-1][1].append(p)
                else:
                    by.append((u, [p]))
            flat, ends, ss, ts = [], [], [], []
            for i, (u, group) in enumerate(by):
                flat += group
                ends.append(len(flat))
                ss.append(slots[u])
                ts.append((T0 + 200 + i) * 1000)
            bl.apply_reads(flat, ends, ss, ts)
        else:
            ts = []
            i = -1
            prev = None
            for u, _ in frames:
                if u != prev:
                    i += 1
                    prev = u
                ts.append((T0 + 200 + i) * 1000)
            bl.apply(ps, [slots[u] for u, _ in frames], ts)
        results.append(state(ledger, rls))
    assert results[0] == results[1]


def test_frames_that_are_not_pushes_come_back() -> None:
    ledger = Ledger()
    rl = ledger.receiver(1)
    rl.on_connect(hello(0, GIDS[:1]))
    bl = BatchLedger(ledger)
    slot = bl.register(rl)
    read_reply = protocol.encode_read_reply(9, protocol.GroupState(GIDS[0], 2, 1, 1))
    assert read_reply.startswith(b'{"gid":')  # why the engine hands read replies around its batches
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


def test_log_bounds_are_the_bucket_edges_of_math_log() -> None:
    bounds = _log_bounds(10**12)
    k = LogBuckets._K
    for i, v in enumerate(bounds.tolist(), start=1):
        assert int(math.log(v) * k) >= i
        assert v == 2 or int(math.log(v - 1) * k) < i
