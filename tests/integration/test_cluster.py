"""Integration: cluster mode — a real redis-server, one logic node, K gateway processes, real clients."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from drivers.client import ChatClient, ChatClientError
from harness.cluster import Cluster
from harness.procs import SECRET, RedisProcess
from record.promtext import counters as server_counters
from reference_server.protocol import user_token

pytestmark = pytest.mark.integration


def pick(front: str) -> dict[str, Any]:
    with urllib.request.urlopen(front, timeout=5) as resp:
        result: dict[str, Any] = orjson.loads(resp.read())
    return result


class Member:
    """A client that records pushes and can resume by seq on another gateway."""

    def __init__(self, uid: int, url: str) -> None:
        self.uid = uid
        self.seqs: list[int] = []
        self.lock = threading.Lock()
        self.client = self._connect(url)

    def _connect(self, url: str) -> ChatClient:
        c = ChatClient(url, self.uid, user_token(SECRET, self.uid), on_message=self._push, heartbeat_s=None)
        c.connect()
        return c

    def _push(self, frame: dict[str, Any]) -> None:
        with self.lock:
            self.seqs.append(frame["seq"])

    def resume(self, front: str, gid: int, timeout: float = 15.0) -> None:
        """Reconnect through the front (retrying while it still hands out a gateway that just died)."""
        self.client.close()
        with self.lock:  # before reconnecting: pushes on the new connection may arrive before sync is sent
            last = max(self.seqs, default=0)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client = self._connect(pick(front)["url"])
                break
            except (OSError, ChatClientError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        for m in self.client.sync_all(gid, last):
            self._push(m)

    def wait(self, n: int, timeout: float = 20.0) -> list[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.seqs) >= n:
                    return list(self.seqs)
            time.sleep(0.01)
        with self.lock:
            return list(self.seqs)


def metrics(admin_url: str) -> dict[str, float]:
    with urllib.request.urlopen(admin_url + "/metrics", timeout=5) as resp:
        return server_counters(resp.read().decode())


def total(m: dict[str, float], name: str) -> float:
    return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))


@pytest.fixture
def cluster_factory() -> Iterator[Any]:
    started: list[Cluster] = []

    def make(k: int, fanout: str, *args: str) -> Cluster:
        c = Cluster(k, "--send-rate", "0", *args, fanout=fanout)
        started.append(c)
        return c.start()

    yield make
    for c in started:
        c.stop()


@pytest.mark.parametrize("k", [2, 4])
def test_modes_deliver_the_same_and_cost_what_the_model_says(cluster_factory: Any, k: int) -> None:
    members, messages, offline = 24, 12, {23, 24}
    results = {}
    for mode in ("per-user", "broadcast", "routed"):
        c: Cluster = cluster_factory(k, mode)
        c.admin.create_users(1, members)
        c.admin.create_groups({1: list(range(1, members + 1))})
        # the online members take turns over gateways 1..k-1; gateway k stays empty (routed skips it)
        spread = k - 1
        online = [Member(uid, c.gateways[(uid - 1) % spread].ws_url)
                  for uid in range(1, members + 1) if uid not in offline]
        time.sleep(0.3)  # the gateways publish registry changes in 50 ms batches
        before = [metrics(c.logic.admin_url)] + [metrics(g.admin_url) for g in c.gateways]  # type: ignore[union-attr]
        sender = online[0]
        for i in range(messages):
            sender.client.send(1, f"m{i}")
        receivers = online[1:]
        got = {m.uid: m.wait(messages) for m in receivers}
        time.sleep(0.3)  # let any extra (wrong) delivery arrive before the counters are read
        after = [metrics(c.logic.admin_url)] + [metrics(g.admin_url) for g in c.gateways]  # type: ignore[union-attr]
        assert all(seqs == list(range(1, messages + 1)) for seqs in got.values()), (mode, got)
        results[mode] = got
        bus = {key: after[0].get(key, 0) - before[0].get(key, 0)
               for key in ('chat_bus_messages_total{kind=push}', 'chat_bus_messages_total{kind=group}')}
        received = sum(a.get('chat_bus_received_total{kind=group}', 0) - b.get('chat_bus_received_total{kind=group}', 0)
                       for a, b in zip(after[1:], before[1:], strict=True))
        delivered = sum(total(a, "chat_deliveries_total") - total(b, "chat_deliveries_total")
                        for a, b in zip(after[1:], before[1:], strict=True))
        o = len(receivers)
        gateways_with_members = len({(m.uid - 1) % spread for m in online})
        assert delivered == o * messages
        if mode == "per-user":  # one bus message per online receiver
            assert bus['chat_bus_messages_total{kind=push}'] == o * messages
            assert bus['chat_bus_messages_total{kind=group}'] == 0
        elif mode == "broadcast":  # one publish, every gateway receives it
            assert bus['chat_bus_messages_total{kind=group}'] == messages
            assert received == k * messages
        else:  # one bus message per gateway that has online members
            assert bus['chat_bus_messages_total{kind=group}'] == gateways_with_members * messages
            assert received == gateways_with_members * messages
        for m in online:
            m.client.close()
        c.stop()
    assert results["per-user"] == results["broadcast"] == results["routed"]


def test_empty_gateway_filters_in_broadcast_only(cluster_factory: Any) -> None:
    n, messages = 500, 10
    filtered = {}
    for mode in ("broadcast", "routed"):
        c: Cluster = cluster_factory(2, mode)
        c.admin.create_users(1, n)
        c.admin.create_groups({1: list(range(1, n + 1))})
        online = [Member(uid, c.gateways[0].ws_url) for uid in range(1, 21)]  # everyone online sits on gateway 1
        empty = c.gateways[1]
        before = metrics(empty.admin_url)
        for i in range(messages):
            online[0].client.send(1, f"m{i}")
        for m in online[1:]:
            assert m.wait(messages) == list(range(1, messages + 1))
        time.sleep(0.3)
        after = metrics(empty.admin_url)
        filtered[mode] = after.get("chat_gateway_filtered_total", 0) - before.get("chat_gateway_filtered_total", 0)
        assert total(after, "chat_deliveries_total") == total(before, "chat_deliveries_total")
        for m in online:
            m.client.close()
        c.stop()
    # broadcast: the empty gateway walked the whole member list of every message and delivered nothing
    assert filtered["broadcast"] == n * messages
    assert filtered["routed"] == 0


def test_kill9_gateway_during_burst_loses_no_acked_message(cluster_factory: Any) -> None:
    c: Cluster = cluster_factory(2, "routed")
    n = 40
    c.admin.create_users(1, n)
    c.admin.create_groups({1: list(range(1, n + 1))})
    members = [Member(uid, c.gateways[(uid - 1) % 2].ws_url) for uid in range(1, n + 1)]
    sender = members[0]  # on gateway 1, which survives
    acked: list[int] = []
    stop = threading.Event()

    def burst() -> None:
        i = 0
        while not stop.is_set() and i < 2000:
            acked.append(sender.client.send(1, f"m{i}")["seq"])
            i += 1

    t = threading.Thread(target=burst)
    t.start()
    time.sleep(0.5)
    c.gateways[1].kill9()
    time.sleep(0.3)
    for m in members:
        if (m.uid - 1) % 2 == 1:  # they were on the dead gateway: the front sends them elsewhere
            m.resume(c.front_url, 1)
    time.sleep(0.5)
    stop.set()
    t.join()
    assert acked == list(range(1, len(acked) + 1)) and len(acked) > 50
    for m in members[1:]:
        seqs = m.wait(len(acked))
        missing = set(acked) - set(seqs)
        if missing:  # a push lost with the dead gateway is repaired by seq, as any client would
            for msg in m.client.sync_all(1, min(missing) - 1):
                m._push(msg)
        assert set(acked) <= set(m.seqs), f"user {m.uid} lacks {sorted(set(acked) - set(m.seqs))[:5]}"
    for m in members:
        m.client.close()


def test_redis_restart_recovers_without_manual_steps(cluster_factory: Any) -> None:
    redis = RedisProcess().start()
    try:
        c = Cluster(2, "--send-rate", "0", fanout="broadcast", redis_url=redis.url).start()
        try:
            c.admin.create_users(1, 4)
            c.admin.create_groups({1: [1, 2, 3, 4]})
            a, b = Member(1, c.gateways[0].ws_url), Member(2, c.gateways[1].ws_url)
            assert a.client.send(1, "before")["seq"] == 1
            assert b.wait(1) == [1]
            redis.kill9()
            redis = RedisProcess(port=redis.port).start()  # empty: every key and subscription is gone
            deadline = time.monotonic() + 20
            seq = None
            while seq is None and time.monotonic() < deadline:
                try:
                    seq = a.client.send(1, "after", )["seq"]
                except Exception:
                    time.sleep(0.2)
            # the seq counter was re-seeded, not restarted at 1 (3 when the ack of a first "after" was lost with
            # the subscriptions: that message was stored, and the client's retry is a second one)
            assert seq in (2, 3)
            deadline = time.monotonic() + 10
            while seq not in b.wait(1) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert seq in b.wait(1)
            assert [m["seq"] for m in b.client.sync_all(1, 0)] == list(range(1, seq + 1))  # no gap, no reuse
            for node in [c.logic, *c.gateways]:
                assert node is not None
                assert metrics(node.admin_url).get("chat_redis_reconnects_total", 0) >= 1
                assert "reconnected to redis" in node.log_path.read_text()
            a.client.close()
            b.client.close()
        finally:
            c.stop()
    finally:
        redis.stop()


def test_front_assigns_by_load_not_round_robin(cluster_factory: Any) -> None:
    c: Cluster = cluster_factory(2, "routed")
    c.admin.create_users(1, 30)
    c.admin.create_groups({1: list(range(1, 31))})
    crowd = [Member(uid, c.gateways[0].ws_url) for uid in range(1, 11)]  # gateway 1 already holds 10
    time.sleep(1.5)  # the gateways report their load every 0.5 s; the front reads it every second
    picks = [pick(c.front_url)["gateway"] for _ in range(14)]
    # the emptier gateway gets every new connection until it catches up, then they alternate
    assert picks[:10] == [2] * 10
    assert sorted(picks[10:]) == [1, 1, 2, 2]
    for m in crowd:
        m.client.close()


def test_impaired_members_reach_the_gateways_through_the_front(cluster_factory: Any) -> None:
    """A --profile-mix proxy in a cluster asks the front for each new connection: impaired members spread by load
    like direct ones (the emptier gateway gets them), and their pushes still arrive."""
    from drivers.profiles import PROFILES
    from drivers.proxy import Proxy, impairing

    c: Cluster = cluster_factory(2, "routed")
    c.admin.create_users(1, 20)
    c.admin.create_groups({1: list(range(1, 21))})
    crowd = [Member(uid, c.gateways[0].ws_url) for uid in range(1, 11)]  # gateway 1 already holds 10
    proxy = Proxy("127.0.0.1:1", front_url=c.front_url, action_factory=impairing(PROFILES["wifi"])).start_in_thread()
    try:
        time.sleep(1.5)  # the gateways report their load every 0.5 s; the front reads it every second
        impaired = [Member(uid, proxy.url) for uid in range(11, 15)]  # the fixed upstream (port 1) is never used
        assert [metrics(gw.admin_url)["chat_connections"] for gw in c.gateways] == [10, 4]
        seq = crowd[0].client.send(1, "through the front")["seq"]
        for m in crowd[1:] + impaired:
            assert m.wait(1) == [seq], m.uid
        for m in crowd + impaired:
            m.client.close()
    finally:
        proxy.stop()


@pytest.mark.parametrize("fanout", ["per-user", "broadcast", "routed"])
def test_membership_changes_while_online_are_exact(cluster_factory: Any, fanout: str) -> None:
    """Members added or removed while online, with gateways that filter by cached member lists: the newcomer
    (alone on its gateway) hears its join and everything after; the removed member hears its leave signal and
    nothing after; everyone else hears each signal once."""
    c: Cluster = cluster_factory(3, fanout)
    c.admin.create_users(1, 5)
    c.admin.create_groups({1: [1, 2, 3, 4]})
    members = {uid: Member(uid, c.gateways[uid % 2].ws_url) for uid in (1, 2, 3, 4)}
    members[5] = Member(5, c.gateways[2].ws_url)  # not a member yet; nobody of the group on gateway 3
    time.sleep(0.3)  # the gateways publish registry changes in 50 ms batches
    seq = members[1].client.send(1, "before")["seq"]
    for uid in (2, 3, 4):
        assert members[uid].wait(1) == [seq]
    c.admin.change_members(1, add=[5], remove=[3])  # seq + 1: join of 5, seq + 2: leave of 3
    after = members[1].client.send(1, "after")["seq"]
    assert after == seq + 3
    want = {1: [seq + 1, seq + 2], 2: [seq, seq + 1, seq + 2, after], 3: [seq, seq + 1, seq + 2],
            4: [seq, seq + 1, seq + 2, after], 5: [seq + 1, seq + 2, after]}
    for uid, seqs in want.items():
        assert members[uid].wait(len(seqs)) == seqs, (fanout, uid)
    time.sleep(0.5)  # a duplicate, or a message after the leave, would arrive by now
    assert {uid: m.wait(0) for uid, m in members.items()} == want, fanout
    for m in members.values():
        m.client.close()


@pytest.mark.parametrize("mode", ["per-message", "merged"])
def test_redis_is_the_counter_store_and_rebuilds_after_losing_it(mode: str) -> None:
    """Cluster mode keeps the unread counters in Redis (hash chat:unread:<gid>); the counts clients get agree
    with it and with the seqs; a Redis restart that loses them is repaired from storage without manual steps."""
    import redis as redis_py

    server = RedisProcess().start()
    c = Cluster(2, "--send-rate", "0", "--unread", mode, "--unread-flush-ms", "100", fanout="broadcast",
                redis_url=server.url).start()
    try:
        r = redis_py.Redis.from_url(server.url)
        c.admin.create_users(1, 4)
        c.admin.create_groups({1: [1, 2, 3, 4]})
        a, b = Member(1, c.gateways[0].ws_url), Member(2, c.gateways[1].ws_url)
        for i in range(5):
            a.client.send(1, f"m{i}")
        assert b.wait(5) == [1, 2, 3, 4, 5]
        b.client.read(1, 3)

        def stored() -> dict[int, int]:
            return {int(k): int(v) for k, v in r.hgetall("chat:unread:1").items()}

        want = {2: 2, 3: 5, 4: 5}
        deadline = time.monotonic() + 5  # merged: until a flush wrote them
        while stored() != want and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stored() == want
        assert b.client.unread([1])["groups"][0]["unread"] == 2
        writes = metrics(c.logic.admin_url)["chat_unread_writes_total"]  # type: ignore[union-attr]
        if mode == "per-message":  # 3 receivers × 5 messages + 1 read
            assert writes == 16
        else:  # merged per flush: 3 counters once each if one flush took everything, never more than per-message
            assert 3 <= writes < 16
        assert not r.exists("unread_counts")  # nothing of it in the SQLite table's name space either

        server.kill9()
        server = RedisProcess(port=server.port).start()  # empty: the counters are gone
        r = redis_py.Redis.from_url(server.url)
        deadline = time.monotonic() + 20
        seq = None
        while seq is None and time.monotonic() < deadline:
            try:
                seq = a.client.send(1, "after")["seq"]
            except Exception:
                time.sleep(0.2)
        assert seq in (6, 7)  # 7: the ack of a first try was lost with the subscriptions (the message is stored)
        want = {2: seq - 3, 3: seq, 4: seq}
        deadline = time.monotonic() + 10
        while stored() != want and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stored() == want, "rebuilt from seqs, then the new message counted"
        assert b.client.unread([1])["groups"][0]["unread"] == seq - 3
        assert "unread counters rebuilt in redis from seqs" in c.logic.log_path.read_text()  # type: ignore[union-attr]
        a.client.close()
        b.client.close()
    finally:
        c.stop()
        server.stop()
