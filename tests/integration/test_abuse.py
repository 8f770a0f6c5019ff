"""The abuse suite's fast part: each attack of issue 13 against a real server, with a canary group measured before
and during it. No single member may raise the server's RSS by more than 64 MiB, nor lift the canary's delivery
p99 above max(2 × its baseline, 50 ms). The long part (100,000+ generated inputs) is ``make abuse``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from drivers.client import ChatClient
from harness.procs import SECRET, ServerProcess
from reference_server.protocol import MAX_UNREAD_GIDS, user_token
from tests.abuse.suite import fuzz
from tests.abuse.tools import Canary, RawWS, RssWatch, frames, limit_ms, p99, ws_target
from tests.integration.conftest import admin
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

MiB = 1 << 20
CANARY_GID, ATTACK_GID = 100, 1
CANARY_SENDER, CANARY_RECEIVER = 1, 2
ATTACKERS = [3, 4, 5, 6, 7, 8]
BASELINE_S, ATTACK_S = 3.0, 3.0


@pytest.fixture
def abuse_server(server_factory: Callable[..., ServerProcess]) -> Iterator[ServerProcess]:
    # sends unlimited: the canary posts 100 a second and the tests write history fast; every other budget default
    srv = server_factory("--send-rate", "0")
    admin(srv).create_users(1, 10)
    admin(srv).create_groups({CANARY_GID: [CANARY_SENDER, CANARY_RECEIVER], ATTACK_GID: list(range(3, 11))})
    yield srv


def history(srv: ServerProcess, uid: int, n: int, body: str) -> None:
    """n messages by uid in the attack group, pipelined 500 at a time."""
    c = ChatClient(srv.ws_url, uid, user_token(SECRET, uid), heartbeat_s=None, request_timeout=60)
    c.connect()
    for i in range(0, n, 500):
        c.send_many(ATTACK_GID, [body] * min(500, n - i))
    c.close()


def metric(srv: ServerProcess, name: str) -> float:
    for line in admin(srv).metrics_text().splitlines():
        key, _, value = line.rpartition(" ")
        if key == name:
            return float(value)
    return 0.0


class Judge:
    """The canary's baseline p99, then its p99 and the server's RSS growth during an attack."""

    def __init__(self, srv: ServerProcess) -> None:
        self.srv = srv
        self.canary = Canary(srv.ws_url, CANARY_GID, CANARY_SENDER, CANARY_RECEIVER).start()
        self.canary.measure(1.0)  # warm up
        self.baseline = p99(self.canary.measure(BASELINE_S))
        self.during: list[float] = []
        self.rss: RssWatch | None = None
        self._t0 = 0.0

    def __enter__(self) -> Judge:
        self.rss = RssWatch(self.srv.pid).__enter__()
        self._t0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.during = self.canary.window(self._t0)
        assert self.rss is not None
        self.rss.__exit__()
        self.canary.stop()

    def check(self, what: str) -> dict[str, float]:
        """RSS and the canary's health (every try); the figures, with whether the p99 held."""
        assert self.rss is not None
        figures = {"baseline_p99_ms": self.baseline * 1000, "attack_p99_ms": p99(self.during) * 1000,
                   "limit_ms": limit_ms(self.baseline), "samples": len(self.during),
                   "rss_growth_mib": self.rss.growth / MiB}
        print(what, {k: round(v, 2) for k, v in figures.items()})
        assert len(self.during) >= ATTACK_S * 50, f"{what}: the canary hardly got through: {figures}"
        assert self.rss.growth <= 64 * MiB, f"{what}: RSS grew too much: {figures}"
        assert not self.canary.errors, self.canary.errors[:3]
        return figures


#: the machine is shared: another session's load can lift any p99 for a while, so an attack passes when one of
#: these tries keeps the canary within its limit (a server that freezes fails them all); RSS must hold in every try
TRIES = 3


def judged(srv: ServerProcess, attack: Callable[[Judge], str]) -> dict[str, float]:
    """Run ``attack`` (it returns what it did) against a canary, up to TRIES times."""
    tries = []
    for _ in range(TRIES):
        judge = Judge(srv)
        with judge:
            what = attack(judge)
        figures = judge.check(what)
        if figures["attack_p99_ms"] <= figures["limit_ms"]:
            return figures
        tries.append(figures)
    raise AssertionError(f"canary p99 over its limit in {TRIES} tries: {tries}")


def read_all(ws: RawWS, want: int, replies: list[dict[str, Any]]) -> threading.Thread:
    """Drain a raw connection's replies in a thread until ``want`` arrived or it ends."""

    def run() -> None:
        while len(replies) < want:
            frame = ws.recv_json()
            if frame is None:
                return
            replies.append(frame)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_non_reading_members_pipelining_sync(abuse_server: ServerProcess) -> None:
    """Members that never read each write 1,300 sync requests (limit 1000) at once: each is closed with 4001 after
    its replies pass the send-queue bound, and the server neither freezes nor holds their replies."""
    srv = abuse_server
    history(srv, 10, 3000, "h" * 300)
    burst = frames(orjson.dumps({"op": "sync", "gid": ATTACK_GID, "after": 0, "limit": 1000, "rid": i})
                   for i in range(1300))

    def attack(judge: Judge) -> str:
        deadline = time.monotonic() + ATTACK_S
        rounds = 0
        while time.monotonic() < deadline:
            closed = metric(srv, "chat_slow_consumer_disconnects_total") + 3
            socks = [RawWS(srv.port, ws_target(uid), rcvbuf=4096) for uid in ATTACKERS[:3]]
            for ws in socks:
                assert ws.status == 101
                ws.send(burst)
            rounds += 1
            wait_until(lambda n=closed: metric(srv, "chat_slow_consumer_disconnects_total") >= n,  # type: ignore[misc]
                       20, "the attackers closed as slow consumers", interval=0.2)
            for ws in socks:
                ws.close()
        return f"non-reading sync pipelines ({rounds} rounds of 3)"

    judged(srv, attack)


def test_unread_with_one_gid_repeated(abuse_server: ServerProcess) -> None:
    """`unread` with one gid 12,000 times (a 24 KB frame), over 5,000 messages of the requester's own history: the
    gid is reported once; lists of more distinct gids than the cap are refused; a pipeline of them is worked on
    a slice at a time and at the user's request budget."""
    srv = abuse_server
    attacker = ATTACKERS[0]
    history(srv, attacker, 5000, "mine")
    one = orjson.dumps({"op": "unread", "gids": [ATTACK_GID] * 12000, "rid": 1})
    assert len(one) > 24_000
    ws = RawWS(srv.port, ws_target(attacker))
    assert ws.status == 101 and ws.recv_json() is not None  # hello
    ws.send(frames([one]))
    reply = ws.recv_json()
    assert reply is not None and reply["op"] == "unread" and len(reply["groups"]) == 1, reply
    too_many = orjson.dumps({"op": "unread", "gids": list(range(MAX_UNREAD_GIDS + 1)), "rid": 2})
    ws.send(frames([too_many]))
    reply = ws.recv_json()
    assert reply is not None and reply["code"] == "bad_field" and reply["rid"] == 2, reply
    n = 200

    def attack(judge: Judge) -> str:
        replies: list[dict[str, Any]] = []
        reader = read_all(ws, n, replies)
        ws.send(frames([one] * n))
        time.sleep(ATTACK_S)
        reader.join(30)
        assert [r["op"] for r in replies] == ["unread"] * n, "each request answered once, none refused"
        return f"{n} x unread of one gid x12000"

    judged(srv, attack)
    ws.close()


def test_fifty_thousand_pipelined_pings(abuse_server: ServerProcess) -> None:
    """50,000 pings in one write: answered in order at the user's request budget (its burst, then its rate; the
    rest waits unread in the socket), while everyone else is served as before."""
    srv = abuse_server
    n = 50_000
    blob = frames(orjson.dumps({"op": "ping", "rid": i}) for i in range(n))
    users = iter(ATTACKERS)  # a fresh user each try: a full budget

    def attack(judge: Judge) -> str:
        ws = RawWS(srv.port, ws_target(next(users)))
        assert ws.status == 101 and ws.recv_json() is not None
        replies: list[dict[str, Any]] = []
        reader = read_all(ws, n, replies)
        t0 = time.monotonic()
        ws.send(blob)
        time.sleep(ATTACK_S)
        ws.close()
        reader.join(10)
        elapsed = time.monotonic() - t0  # up to the last pong read: a true upper bound of the budget's time
        assert [r["op"] for r in replies] == ["pong"] * len(replies)
        assert [r["rid"] for r in replies] == list(range(len(replies)))
        # 500 ms of burst plus 100 ms a second, each ping at least 50 µs (the hello cost a little too)
        assert 1000 < len(replies) <= (0.5 + 0.1 * elapsed) / 50e-6, len(replies)
        return f"50,000 pings ({len(replies)} answered in {elapsed:.1f} s)"

    judged(srv, attack)


def test_reconnecting_does_not_reset_the_request_budget(abuse_server: ServerProcess) -> None:
    """One user reconnects over and over, each time pipelining pings: what it gets served stays within one
    budget (burst + rate × time), and once that is used up its new connections are refused with 429."""
    srv = abuse_server
    uid = ATTACKERS[0]
    blob = frames(orjson.dumps({"op": "ping", "rid": i}) for i in range(5000))
    start = time.monotonic()
    totals = {"connects": 0, "refused": 0}

    def attack(judge: Judge) -> str:
        t0 = time.monotonic()
        connects = refused = 0
        while time.monotonic() - t0 < ATTACK_S:
            ws = RawWS(srv.port, ws_target(uid))
            connects += 1
            if ws.status == 429:
                refused += 1
            else:
                assert ws.status == 101, ws.head
                ws.send(blob)
            ws.close()
        totals["connects"] += connects
        totals["refused"] += refused
        return f"reconnect loop ({connects} connects, {refused} refused 429)"

    judged(srv, attack)
    elapsed = time.monotonic() - start
    served = metric(srv, 'chat_requests_total{op="ping"}')
    # 500 ms of burst plus 100 ms a second, at least 50 µs a ping (hellos also cost), over every try
    assert served <= (0.5 + 0.1 * (elapsed + 1)) / 50e-6, served
    assert totals["refused"] > 0, "an over-budget user's new connections are refused"
    assert metric(srv, 'chat_auth_refusals_total{status="429"}') == totals["refused"]
    c = ChatClient(srv.ws_url, CANARY_RECEIVER, user_token(SECRET, CANARY_RECEIVER), heartbeat_s=None)
    assert c.connect()["uid"] == CANARY_RECEIVER and c.ping()["op"] == "pong"  # another user is not affected
    c.close()


def test_generated_malformed_input(server_factory: Callable[..., ServerProcess]) -> None:
    """The fast share of the generated-input suite (tests/abuse/fuzz.py; ``make abuse`` runs 100,000+): every
    answer follows the documented rules, nothing invalid is accepted, the server neither crashes nor logs an
    ERROR, and the canary is not hurt."""
    srv = server_factory()
    figures = fuzz(srv, {"requests": 600, "bulk": 1200, "frames": 400, "upgrades": 250, "admin": 250},
                   canary_baseline_s=2.0)
    r = figures.report
    print("generated input", {"inputs": r.inputs, "broken": r.broken_count, "accepted_invalid": r.accepted_invalid,
                              "canary_p99_ms": figures.canary_p99_ms, "rss_growth_mib": figures.rss_growth_mib,
                              "seconds": figures.seconds})
    assert r.total >= 2000, r.inputs
    assert r.broken_count == 0 and r.accepted_invalid == 0, r.broken[:10]
    assert figures.server_alive and figures.errors_logged == [], figures.errors_logged
    assert figures.canary_p99_ms["all"] <= limit_ms(figures.canary_baseline_p99_ms / 1000), figures.canary_p99_ms
    assert figures.rss_growth_mib <= 64
