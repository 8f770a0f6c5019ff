"""The cost model, exactly: rows written per message for N = 10, 1,000 and 10,000 members, read from the
server's own counters (published by the writer after each commit). In-process, no sockets
(tests/unit/modes_harness.py): the real Store and writer thread, fake connections for the online members."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reference_server import protocol
from tests.unit.modes_harness import Harness

GID = 1
SIZES = [10, 1_000, 10_000]


def group_of(tmp: Path, n: int, online: int = 1, **config: Any) -> Harness:
    """Users 1..n in group 1; users 1..online connected (user 1 sends)."""
    h = Harness(tmp / "chat.db", **config)
    h.provision(list(range(1, n + 1)), {GID: list(range(1, n + 1))})
    for uid in range(1, online + 1):
        h.online(uid)
    return h


def send(h: Harness, k: int = 1) -> dict[str, float]:
    """k messages from user 1; the counters' increase."""
    names = [("chat_storage_writes_total", {"kind": "body"}), ("chat_storage_writes_total", {"kind": "index"}),
             ("chat_unread_writes_total", None), ("chat_offline_writes_total", None),
             ("chat_offline_dropped_total", None)]
    before = [h.counter(n, lb) for n, lb in names]
    for i in range(k):
        assert h.request(1, protocol.encode_send, GID, f"m{i}", 0)["op"] == "ack"
    keys = ["body", "index", "unread", "offline", "dropped"]
    return {key: h.counter(n, lb) - b for key, (n, lb), b in zip(keys, names, before, strict=True)}


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize(("mode", "index_rows"), [("write", lambda n: n), ("read", lambda n: 0),
                                                  ("hybrid", lambda n: n if n < 1000 else 0)])
def test_storage_writes_per_message(tmp_path: Path, n: int, mode: str, index_rows: Any) -> None:
    h = group_of(tmp_path, n, storage=mode, hybrid_threshold=1000)
    try:
        cost = send(h)
        assert cost["body"] == 1  # the body once, whatever the mode
        assert cost["index"] == index_rows(n)  # write diffusion: one index row per member, sender included
    finally:
        h.close()


@pytest.mark.parametrize("n", SIZES)
def test_unread_writes_per_message(tmp_path: Path, n: int) -> None:
    for mode, expected in (("per-message", n - 1), ("seq", 0)):
        h = group_of(tmp_path / mode, n, unread=mode)
        try:
            assert send(h)["unread"] == expected
        finally:
            h.close()


@pytest.mark.parametrize("n", SIZES)
def test_merged_unread_writes_each_counter_once_per_flush(tmp_path: Path, n: int) -> None:
    k = 5  # messages in one flush window
    h = group_of(tmp_path, n, unread="merged")
    try:
        assert send(h, k)["unread"] == 0  # nothing written in the messages' transactions
        assert h.counter("chat_unread_pending") == k * (n - 1)  # k·(N−1) changes queued ...
        before = h.counter("chat_unread_writes_total")
        h.flush()
        written = h.counter("chat_unread_writes_total") - before
        assert written == n - 1  # ... merged into N−1 counter writes: ≤ N−1 per flush
        assert k * (n - 1) / written == k  # the merge ratio: k changes per write
        assert h.counter("chat_unread_pending") == 0
        state = h.request(2, protocol.encode_unread, [GID])["groups"][0] if 2 in h.gateway.online else None
        assert state is None or state["unread"] == k
    finally:
        h.close()


@pytest.mark.parametrize("n", SIZES)
def test_offline_writes_per_message(tmp_path: Path, n: int) -> None:
    online = 3  # the sender and two receivers are connected
    offline_members = n - online
    h = group_of(tmp_path / "buffer", n, online=online, offline="buffer")
    try:
        cost = send(h)
        assert cost["offline"] == offline_members and cost["dropped"] == 0
    finally:
        h.close()
    bucket = 100
    h = group_of(tmp_path / "rate", n, online=online, offline="rate-limited", offline_rate=float(bucket))
    # no refill between the two messages
    h.store.offline.clock, h.store.offline.at = lambda: 0.0, 0.0  # type: ignore[attr-defined]
    try:
        first, second = send(h), send(h)
        assert first["offline"] == min(bucket, offline_members) <= bucket
        assert first["dropped"] == offline_members - first["offline"]
        assert second["offline"] == min(offline_members, bucket - first["offline"])  # what is left in the bucket
        assert second["dropped"] == offline_members - second["offline"]
    finally:
        h.close()
    h = group_of(tmp_path / "pull", n, online=online, offline="pull")
    try:
        assert send(h)["offline"] == 0
    finally:
        h.close()


def test_offline_buffer_cap_drops_the_oldest_but_never_a_signal(tmp_path: Path) -> None:
    h = group_of(tmp_path, 3, online=1, offline="buffer", offline_cap=2)
    try:
        assert send(h, 3)["dropped"] == 2  # users 2 and 3 lost their oldest copy each
        h.change(GID, remove=[3])  # a leave signal to 2 (and to 3, removed) even though both are at the cap
        conn = h.online(2)
        (frame,) = [f for f in conn.frames if f["op"] == "offline"]
        assert [m["seq"] for m in frame["msgs"]] == [2, 3, 4] and frame["dropped"] == 1
        assert frame["msgs"][-1]["kind"] == "leave"
    finally:
        h.close()
