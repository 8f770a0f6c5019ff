"""Integration: each non-default mode in a real server process with real clients, and the merged unread
mode's crash loss (kill -9) and its repair."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from drivers.client import ChatClient, ServerError
from harness.procs import ServerProcess
from record.promtext import counters as server_counters
from tests.integration.conftest import admin, provision

pytestmark = pytest.mark.integration

Connect = Callable[..., ChatClient]


class Pushes:
    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.cond = threading.Condition()

    def __call__(self, frame: dict[str, Any]) -> None:
        with self.cond:
            self.frames.append(frame)
            self.cond.notify_all()

    def wait(self, n: int) -> list[dict[str, Any]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.frames) >= n, 10), self.frames
            return list(self.frames)


def metric(srv: ServerProcess, name: str) -> float:
    return server_counters(admin(srv).metrics_text()).get(name, 0.0)


@pytest.mark.parametrize("flags", [
    ("--storage", "write"), ("--storage", "hybrid", "--hybrid-threshold", "5"), ("--unread", "per-message"),
    ("--unread", "merged", "--unread-flush-ms", "50"), ("--offline", "buffer"), ("--offline", "rate-limited"),
])
def test_mode_end_to_end(server_factory: Callable[..., ServerProcess], flags: tuple[str, ...]) -> None:
    srv = server_factory(*flags)
    provision(srv, 4)
    clients: list[ChatClient] = []

    def connect(uid: int, **kw: Any) -> ChatClient:
        c = ChatClient(srv.ws_url, uid, _token(uid), heartbeat_s=None, **kw)
        c.connect()
        clients.append(c)
        return c

    try:
        pushes = Pushes()
        a, b = connect(1), connect(2, on_message=pushes)
        assert a.send(1, "one")["seq"] == 1
        assert a.send(1, "for 3", to=[3])["seq"] == 2
        assert a.send(1, "oops")["seq"] == 3
        recall = a.recall(1, 3)
        assert {k: recall[k] for k in ("op", "gid", "seq", "ref")} == {"op": "recall", "gid": 1, "seq": 4, "ref": 3}
        with pytest.raises(ServerError) as info:
            b.recall(1, 1)
        assert info.value.code == "recall_refused"
        got = pushes.wait(3)
        assert [(f["seq"], f.get("kind", "msg")) for f in got] == [(1, "msg"), (3, "msg"), (4, "recall")]
        assert got[2]["ref"] == 3
        admin(srv).change_members(1, remove=[4])  # seq 5: leave, buffered for 3 and 4
        b.delete(1, 1)
        c = connect(3)
        assert c.hello is not None and c.hello["offline"] == flags[1] if flags[0] == "--offline" else True
        if flags[:2] in (("--offline", "buffer"), ("--offline", "rate-limited")):
            frame = c.wait_offline()
            assert [(m["seq"], m.get("kind", "msg")) for m in frame["msgs"]] == [
                (1, "msg"), (2, "msg"), (4, "recall"), (5, "leave")]
            assert frame["dropped"] == 0
        history = [(m["seq"], m.get("kind", "msg"), m["body"]) for m in c.sync_all(1, 0)]
        assert history == [(1, "msg", "one"), (2, "msg", "for 3"), (4, "recall", ""), (5, "leave", "")]
        assert [m["seq"] for m in b.sync_all(1, 0)] == [4, 5]  # 1 deleted, 2 private to 3, 3 recalled
        assert c.unread()["groups"][0]["unread"] == 2
        assert b.unread()["groups"][0]["unread"] == 0
        assert c.read(1, 1)["unread"] == 1
        assert a.unread()["groups"][0]["unread"] == 0  # own messages are never unread
        m = server_counters(admin(srv).metrics_text())
        info_series = [k for k in m if k.startswith("chat_server_info{")]
        assert len(info_series) == 1 and f"{flags[0][2:]}={flags[1]}" in info_series[0]
        if flags[1] in ("write", "hybrid"):  # write: 4 + 2 (private: sender and 3) + 4 + 4 (recall) + 3 (leave)
            assert m.get("chat_storage_writes_total{kind=index}", 0) == 17  # hybrid: 4 members < 5
        if flags[1] == "per-message":  # one counter row written per change: +1 for each receiver of seqs 1 (2, 3, 4),
            # 2 (3) and 3 (2, 3, 4); −1 for each of them still unread by the recall of 3; 4's row dropped at its
            # leave; −1 by 2's delete of unread seq 1; −1 by 3's read of seq 1
            assert m["chat_unread_writes_total"] == 3 + 1 + 3 + 3 + 1 + 1 + 1
        if flags[1] == "buffer":  # one entry per offline receiver (3 and 4) of each entry: seqs 1 (3, 4), 2 (private
            # to 3), 3 (3, 4), the recall 4 (3, 4) and the leave 5 (3, and the removed 4)
            assert m["chat_offline_writes_total"] == 2 + 1 + 2 + 2 + 2
    finally:
        for cl in clients:
            cl.close()


def _token(uid: int) -> str:
    from harness.procs import SECRET
    from reference_server.protocol import user_token

    return user_token(SECRET, uid)


def test_merged_unread_crash_loses_exactly_the_pending_changes_and_repair_restores(
    server_factory: Callable[..., ServerProcess],
) -> None:
    flags = ("--unread", "merged", "--unread-flush-ms", "600000", "--unread-flush-size", "100000000")
    srv = server_factory(*flags)
    n, k = 20, 3
    provision(srv, n)
    sender = ChatClient(srv.ws_url, 1, _token(1), heartbeat_s=None)
    sender.connect()
    for i in range(k):
        sender.send(1, f"m{i}")
    sender.close()
    pending = metric(srv, "chat_unread_pending")
    assert pending == k * (n - 1)  # every change still in memory
    srv.kill9()

    def counts(s: ServerProcess) -> dict[int, int]:
        out = {}
        for uid in range(2, n + 1):
            with ChatClient(s.ws_url, uid, _token(uid), heartbeat_s=None) as c:
                out[uid] = c.unread()["groups"][0]["unread"]
        return out

    truth = dict.fromkeys(range(2, n + 1), k)
    after = server_factory(*flags, db_path=srv.db_path)
    lost = counts(after)
    error = sum(abs(truth[u] - lost[u]) for u in truth)
    print(f"merged unread after kill -9 without repair: total error {error} over {n - 1} counters "
          f"(pending at the kill: {pending:g})")
    assert error > 0 and error == pending
    after.stop()
    repaired = server_factory(*flags, "--unread-repair", db_path=srv.db_path)
    assert counts(repaired) == truth
    assert metric(repaired, "chat_unread_writes_total") == n - 1  # the repair rewrote each stale counter once


def test_merged_unread_sigterm_flushes_pending_changes(server_factory: Callable[..., ServerProcess]) -> None:
    flags = ("--unread", "merged", "--unread-flush-ms", "600000")
    srv = server_factory(*flags)
    provision(srv, 5)
    with ChatClient(srv.ws_url, 1, _token(1), heartbeat_s=None) as sender:
        sender.send(1, "a")
        sender.send(1, "b")
    assert metric(srv, "chat_unread_pending") == 8
    assert srv.stop() == 0  # graceful: the writer flushes before it stops
    again = server_factory(*flags, db_path=srv.db_path)
    for uid in range(2, 6):
        with ChatClient(again.ws_url, uid, _token(uid), heartbeat_s=None) as c:
            assert c.unread()["groups"][0]["unread"] == 2
    assert metric(again, "chat_unread_pending") == 0
