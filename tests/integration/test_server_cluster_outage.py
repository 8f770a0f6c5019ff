"""Integration: a real Redis killed and restarted under a cluster that is delivering messages (issue 13 item 6).
No push may be silently lost on a live connection: every connection either receives every stored seq after its
``hello`` (up to the end), or is closed by its gateway with 4003 and resumes by seq."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from drivers.client import ChatClient, ChatClientError
from harness.cluster import Cluster
from harness.procs import SECRET, RedisProcess
from reference_server.protocol import CloseCode, user_token
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

GID = 1


@dataclass
class Life:
    """One connection of a receiver: its hello's max seq, what was pushed, how it ended."""

    start: int
    seqs: list[int] = field(default_factory=list)
    close_code: int | None = None


class Observer:
    """A member that records each connection's pushes and reconnects when its gateway closes it."""

    def __init__(self, uid: int, url: str) -> None:
        self.uid, self.url = uid, url
        self.lives: list[Life] = []
        self.lock = threading.Lock()
        self.client = self._connect()

    def _connect(self) -> ChatClient:
        life: list[Life] = []

        def on_hello(frame: dict[str, Any]) -> None:
            (g,) = [g for g in frame["groups"] if g["gid"] == GID]
            life.append(Life(g["max"]))
            with self.lock:
                self.lives.append(life[0])

        def on_message(frame: dict[str, Any]) -> None:
            if frame.get("gid") == GID:
                with self.lock:
                    life[0].seqs.append(frame["seq"])

        c = ChatClient(self.url, self.uid, user_token(SECRET, self.uid), on_message=on_message, on_hello=on_hello,
                       heartbeat_s=None, request_timeout=5)
        c.connect()
        return c

    def tend(self) -> None:
        """Reconnect if the server closed the connection."""
        if self.client.closed:
            with self.lock:
                self.lives[-1].close_code = self.client.close_code
            self.client = wait_until(self._connect, 30, f"user {self.uid} reconnected", interval=0.2,
                                     ignoring=(OSError, ChatClientError))

    def has(self, seq: int) -> bool:
        """Got ``seq`` pushed, or was told of it: a connection whose hello's max is at ``seq`` or later (one its
        gateway closed with 4003 after the last message resumes there and is pushed nothing more)."""
        with self.lock:
            return any(max([life.start, *life.seqs]) >= seq for life in self.lives)


class Sender:
    """Posts ``rate`` messages a second in a thread, reconnecting when closed; counts acks."""

    def __init__(self, uid: int, url: str, rate: float = 100.0) -> None:
        self.uid, self.url, self.rate = uid, url, rate
        self.acked: list[int] = []
        self.client = self._connect()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _connect(self) -> ChatClient:
        c = ChatClient(self.url, self.uid, user_token(SECRET, self.uid), heartbeat_s=None)
        c.connect()
        return c

    def _on_ack(self, frame: dict[str, Any]) -> None:
        if frame.get("op") == "ack":
            self.acked.append(frame["seq"])

    def _run(self) -> None:
        i = 0
        while not self._stop.wait(1.0 / self.rate):
            try:
                if self.client.closed:
                    self.client = self._connect()
                self.client.send_nowait(GID, f"m{i}", on_ack=self._on_ack)
                i += 1
            except (OSError, ChatClientError):
                time.sleep(0.2)  # Redis is down: the gateway cannot hello us yet

    def __enter__(self) -> Sender:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def kill_subscriptions(url: str) -> int:
    """Drop every pub/sub connection (what Redis does to a subscriber past its output-buffer limit): each node
    reconnects, and what was published meanwhile is lost to it."""
    import redis as redis_py

    r = redis_py.Redis.from_url(url)
    try:
        return int(r.client_kill_filter(_type="pubsub"))
    finally:
        r.close()


@pytest.mark.parametrize("outage", ["restart", "pubsub-kill"])
@pytest.mark.parametrize("fanout", ["broadcast", "routed", "per-user"])
def test_redis_outage_loses_no_push_on_a_live_connection(fanout: str, outage: str) -> None:
    redis = RedisProcess().start()
    c = Cluster(2, "--send-rate", "0", fanout=fanout, redis_url=redis.url)
    try:
        c.start()
        c.admin.create_users(1, 6)
        c.admin.create_groups({GID: [1, 2, 3, 4, 5, 6]})
        urls = [g.ws_url for g in c.gateways]
        observers = [Observer(uid, urls[uid % 2]) for uid in (2, 3, 4, 5)]
        with Sender(1, urls[0]) as sender:
            wait_until(lambda: len(sender.acked) >= 50, 10, "50 acks before the outage")
            if outage == "restart":
                redis.kill9()
                time.sleep(1.0)
                redis = RedisProcess(port=redis.port).start()  # empty: keys and subscriptions gone
            else:
                for _ in range(3):  # while messages keep flowing
                    assert kill_subscriptions(redis.url) >= 3
                    time.sleep(0.7)
            deadline = time.monotonic() + 6.0
            while time.monotonic() < deadline:  # keep every observer connected through the aftermath
                for o in observers:
                    o.tend()
                time.sleep(0.05)
        final = max(sender.acked)
        for o in observers:
            wait_until(lambda o=o: (o.tend() or o.has(final)), 30,  # type: ignore[misc]
                       f"user {o.uid} to get seq {final} or a hello past it", interval=0.1)
        # what is stored, from a fresh connection
        reader = ChatClient(urls[0], 6, user_token(SECRET, 6), heartbeat_s=None)
        reader.connect()
        stored = {m["seq"] for m in reader.sync_all(GID, 0)}
        reader.close()
        assert stored >= set(sender.acked), "an acked message is not stored"
        silent: dict[int, list[int]] = {}
        resumed = 0
        for o in observers:
            for life in o.lives:
                if life.close_code is not None:
                    # closed by its gateway: it was told (4003) to resume; any other close is unexpected here
                    assert life.close_code in (CloseCode.RESUME, CloseCode.REPLACED), (o.uid, life.close_code)
                    resumed += 1
                    continue
                end = max(stored)
                missing = sorted(s for s in stored if life.start < s <= end and s not in set(life.seqs))
                if missing:
                    silent.setdefault(o.uid, []).extend(missing)
        figures = {"acked": len(sender.acked), "stored": len(stored), "resumed_connections": resumed,
                   "silently_lost": sum(len(v) for v in silent.values())}
        print(fanout, outage, figures)
        assert not silent, (figures, silent)
        for o in observers:
            o.client.close()
        sender.client.close()
    finally:
        c.stop()
        redis.stop()
