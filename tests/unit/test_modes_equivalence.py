"""Every storage × unread × offline combination gives the same user-visible results.

Unit level, no sockets: the real ChatLogic, Store (writer thread, SQLite) and LocalFanout in this process,
with fake connections that capture the frames they get (tests/unit/modes_harness.py). Hypothesis generates
conversations — sends (public and private), deletes, reads, recalls, members going offline and online, members
added and removed — and each is replayed against all 27 combinations. Compared: every reply (acks, seqs,
errors), every user's full history, unread counts (after a merged flush). Checked against independent facts:
unread = the messages in the user's own history above its read mark that it did not send; recalled bodies and
private messages never show up where they must not; in ``buffer`` every entry of a user's history reached it
by push or by its offline frame; in ``rate-limited`` every signal did (ordinary copies may be dropped, never a
message after sync).

Sync paging is compared page by page (``next``, ``more``, ``max`` and the entries of every page, at several
limits, and past the latest seq), not only the history it adds up to: ``limit`` counts seqs in every storage mode,
and a page ends at the same entry when it is full by bytes (``test_sync_pages_end_alike_by_count_and_by_bytes``).
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from reference_server import protocol
from tests.unit.modes_harness import Harness

STORAGE = ("read", "write", "hybrid")
UNREAD = ("seq", "per-message", "merged")
OFFLINE = ("pull", "buffer", "rate-limited")
COMBOS = list(itertools.product(STORAGE, UNREAD, OFFLINE))
PAGE_LIMITS = (1, 4)
USERS = [1, 2, 3, 4, 5]
GID = 1

uid_st = st.sampled_from(USERS)
op_st = st.one_of(
    st.tuples(st.just("send"), uid_st, st.none() | st.lists(uid_st, min_size=1, max_size=2)),
    st.tuples(st.just("delete"), uid_st, st.integers(1, 12)),
    st.tuples(st.just("read"), uid_st, st.integers(1, 12)),
    st.tuples(st.just("recall"), uid_st, st.integers(1, 12)),
    st.tuples(st.just("offline"), uid_st, st.none()),
    st.tuples(st.just("online"), uid_st, st.none()),
    st.tuples(st.just("add"), uid_st, st.none()),
    st.tuples(st.just("remove"), uid_st, st.none()),
)


def replay(tmp: Path, modes: tuple[str, str, str], ops: list[tuple[str, int, Any]]) -> dict[str, Any]:
    s, u, o = modes
    # hybrid threshold 4: the group (4 then 3..5 members) crosses it both ways during a conversation
    h = Harness(tmp / "chat.db", storage=s, unread=u, offline=o, hybrid_threshold=4, offline_rate=3.0)
    if o == "rate-limited":
        # no refill: 3 copies in all
        h.store.offline.clock, h.store.offline.at = lambda: 0.0, 0.0  # type: ignore[attr-defined]
    try:
        h.provision(USERS, {GID: [1, 2, 3, 4]})
        for uid in (1, 2, 3):
            h.online(uid)
        replies: list[Any] = []
        for op, uid, arg in ops:
            on = uid in h.gateway.online
            if op == "offline":
                h.offline(uid)
            elif op == "online":
                if not on:
                    h.online(uid)
            elif op == "add":
                replies.append(h.change(GID, add=[uid]))
            elif op == "remove":
                replies.append(h.change(GID, remove=[uid]))
            elif not on:
                continue
            elif op == "send":
                replies.append(h.request(uid, protocol.encode_send, GID, f"m{len(replies)}", 0, arg))
            elif op == "delete":
                replies.append(h.request(uid, protocol.encode_delete, GID, arg))
            elif op == "read":
                replies.append(h.request(uid, protocol.encode_read, GID, arg))
            elif op == "recall":
                replies.append(h.request(uid, protocol.encode_recall, GID, arg))
        for uid in USERS:  # everyone reconnects: buffers are drained
            h.offline(uid)
            h.online(uid)
        h.flush()
        out: dict[str, Any] = {"replies": [_strip(r) for r in replies], "users": {}}
        for uid in USERS:
            hist = h.history(uid, GID)
            state = h.request(uid, protocol.encode_unread, [GID])
            out["users"][uid] = {"history": hist, "unread": state.get("groups", state.get("code")),
                                 "pages": {limit: h.pages(uid, GID, limit) for limit in PAGE_LIMITS},
                                 "past_the_end": _strip(h.request(uid, protocol.encode_sync, GID, 10_000, 5))}
        out["received"] = {uid: [f for f in frames if f.get("op") in ("msg", "offline")]
                           for uid, frames in h.received.items()}
        out["dropped"] = h.counter("chat_offline_dropped_total")
        return out
    finally:
        h.close()


def _strip(frame: Any) -> Any:
    if isinstance(frame, dict):
        return {k: v for k, v in frame.items() if k not in ("rid", "sts", "msg")}
    return frame


def received_seqs(frames: list[dict[str, Any]]) -> set[int]:
    seqs = set()
    for f in frames:
        for m in f["msgs"] if f["op"] == "offline" else [f]:
            seqs.add(m["seq"])
    return seqs


def check_facts(modes: tuple[str, str, str], result: dict[str, Any]) -> None:
    recalled = {r["ref"] for r in result["replies"] if r.get("op") == "recall"}
    for uid, user in result["users"].items():
        hist, groups = user["history"], user["unread"]
        if isinstance(hist, str):
            assert hist == groups == "not_member"
            continue
        (g,) = groups
        for limit, pages in user["pages"].items():  # limit counts seqs: each page scans exactly the next ones
            after: int | None = None  # the first page starts at the user's join (clamped)
            for page in pages:
                if after is not None:
                    assert after < page["next"] <= after + limit, (uid, limit, page)
                assert all(after is None or after < m["seq"] for m in page["msgs"]), (uid, limit, page)
                assert all(m["seq"] <= page["next"] for m in page["msgs"]), (uid, limit, page)
                assert page["more"] == (page["next"] < page["max"]), (uid, limit, page)
                after = page["next"]
        end = user["past_the_end"]  # past the latest seq: empty, not more, and the group's latest seq as max
        # (the group's latest seq, which a private message to others makes higher than the user's visible history)
        assert end["msgs"] == [] and end["more"] is False and end["max"] == g["max"], (end, g)
        assert not recalled & {m["seq"] for m in hist}, "a recalled message is still in a history"
        for m in hist:
            assert m.get("to") is None or uid == m["from"] or uid in m["to"], "private message leaked"
        mine = [m for m in hist if m.get("kind", "msg") == "msg" and m["from"] != uid and m["seq"] > g["read"]]
        assert g["unread"] == len(mine), (uid, g, hist)
        got = received_seqs(result["received"].get(uid, []))
        others = [m for m in hist if m["from"] != uid]
        if modes[2] == "buffer":
            assert {m["seq"] for m in others} <= got, (uid, "missed by push and offline buffer")
        if modes[2] != "pull":
            assert {m["seq"] for m in others if "kind" in m} <= got, (uid, "a signal was not delivered")


def comparable(result: dict[str, Any]) -> dict[str, Any]:
    """Without server clock readings (``sts``), which differ from run to run."""
    users = {uid: {"unread": u["unread"], "history": u["history"] if isinstance(u["history"], str) else
                   [_strip(m) for m in u["history"]], "pages": u["pages"], "past_the_end": u["past_the_end"]}
             for uid, u in result["users"].items()}
    return {"replies": result["replies"], "users": users}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op_st, min_size=1, max_size=30))
@example([("send", 1, None), ("send", 1, [1])])  # a private message to the sender: the group's max passes the user's
def test_every_mode_combination_gives_the_same_user_visible_results(ops: list[tuple[str, int, Any]]) -> None:
    with tempfile.TemporaryDirectory(prefix="chatbench-modes-") as tmp:
        reference = None
        for i, modes in enumerate(COMBOS):
            d = Path(tmp) / str(i)
            d.mkdir()
            result = replay(d, modes, ops)
            check_facts(modes, result)
            if reference is None:
                reference = result
            else:
                assert comparable(result) == comparable(reference), modes


def test_a_fixed_conversation_touches_every_feature() -> None:
    """A hand-written conversation (so the features are covered whatever hypothesis draws)."""
    ops: list[tuple[str, int, Any]] = [
        ("send", 1, None), ("send", 2, [3]), ("offline", 3, None), ("send", 1, None), ("send", 2, None),
        ("delete", 2, 1), ("recall", 1, 3), ("recall", 2, 1), ("read", 2, 2), ("add", 5, None),
        ("send", 1, [5, 3]), ("remove", 2, None), ("online", 3, None), ("online", 5, None), ("send", 5, None),
        ("read", 3, 4), ("offline", 1, None), ("send", 3, None), ("send", 3, None), ("send", 3, None),
        ("send", 3, None), ("add", 2, None), ("recall", 3, 14),
    ]
    with tempfile.TemporaryDirectory(prefix="chatbench-modes-") as tmp:
        results = {}
        for i, modes in enumerate(COMBOS):
            d = Path(tmp) / str(i)
            d.mkdir()
            results[modes] = replay(d, modes, ops)
            check_facts(modes, results[modes])
    ref = comparable(results[("read", "seq", "pull")])
    for modes, result in results.items():
        assert comparable(result) == ref, modes
    replies = ref["replies"]
    assert [r.get("op") for r in replies].count("ack") == 10
    assert {"op": "error", "code": "recall_refused"} in replies  # 2 cannot recall 1's message
    assert any(r.get("op") == "recall" for r in replies)
    users = ref["users"]
    assert users[2]["history"][0]["kind"] == "join"  # re-added: sees only from its new join on
    assert all(m["body"] != "m5" for u in users.values() if isinstance(u["history"], list)
               for m in u["history"])  # the recalled message's body is gone for everyone
    # rate-limited dropped copies (3 tokens in all) and the dropped ones were repaired by sync
    assert results[("read", "seq", "rate-limited")]["dropped"] > 0
    assert results[("read", "seq", "buffer")]["dropped"] == 0


@pytest.mark.parametrize("ops", [
    # a recall of a message one member had already deleted while it was unread: its count must not drop twice
    [("send", 1, None), ("delete", 2, 1), ("recall", 1, 1), ("send", 1, None)],
    # a read past a recalled and a deleted message, then a re-join
    [("send", 1, None), ("send", 1, None), ("send", 1, [2]), ("delete", 2, 2), ("recall", 1, 1),
     ("read", 2, 2), ("remove", 2, None), ("add", 2, None), ("send", 3, None)],
])
def test_edge_conversations(ops: list[tuple[str, int, Any]]) -> None:
    with tempfile.TemporaryDirectory(prefix="chatbench-modes-") as tmp:
        reference = None
        for i, modes in enumerate(COMBOS):
            d = Path(tmp) / str(i)
            d.mkdir()
            result = replay(d, modes, ops)
            check_facts(modes, result)
            reference = reference or comparable(result)
            assert comparable(result) == reference, modes


def test_sync_pages_end_alike_by_count_and_by_bytes() -> None:
    """Long bodies fill a page by bytes before ``limit`` (64 KiB: each entry counts its body's UTF-8 bytes + 128):
    every storage mode ends it at the same entry, with deletes and private messages among them, and pages on."""
    from reference_server.protocol import MAX_SYNC_PAGE_BYTES, SYNC_ENTRY_BYTES

    body = "é" * 1500  # 3000 UTF-8 bytes
    per_page = -(-MAX_SYNC_PAGE_BYTES // (3000 + SYNC_ENTRY_BYTES))  # entries that fill a page
    results = {}
    for storage in STORAGE:
        with tempfile.TemporaryDirectory(prefix="chatbench-modes-") as tmp:
            h = Harness(Path(tmp) / "chat.db", storage=storage, hybrid_threshold=4)
            try:
                h.provision(USERS, {GID: [1, 2, 3, 4]})
                for uid in (1, 2, 3):
                    h.online(uid)
                for i in range(3 * per_page):
                    to = [3] if i % 7 == 3 else None  # private to 3: a hole in 2's pages, an entry in 3's
                    h.request(1, protocol.encode_send, GID, body, 0, to)
                for seq in range(5, 3 * per_page, 11):
                    h.request(2, protocol.encode_delete, GID, seq)
                results[storage] = {uid: {limit: h.pages(uid, GID, limit) for limit in (1000, per_page // 2)}
                                    for uid in (1, 2, 3)}
            finally:
                h.close()
    assert results["write"] == results["read"] == results["hybrid"]
    pages = results["read"][1][1000]
    assert [len(p["msgs"]) for p in pages] == [per_page, per_page, per_page], "full by bytes at the same entry"
    assert all(p["next"] == p["msgs"][-1]["seq"] for p in pages)
    two = results["read"][2][1000]
    assert two[0]["next"] > per_page and len(two[0]["msgs"]) == per_page  # its holes do not count toward bytes
