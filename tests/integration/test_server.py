"""Integration: a real server process, real WebSocket clients, a real SQLite file."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import websocket

from drivers.admin import AdminError
from drivers.client import ChatClient, ConnectionClosed, ConnectRefused, ServerError
from harness.procs import SECRET, ServerProcess
from reference_server.protocol import CloseCode, user_token
from tests.integration.conftest import admin, provision
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

Connect = Callable[..., ChatClient]


class Inbox:
    """Collects pushed ``msg`` frames from the receive thread."""

    def __init__(self) -> None:
        self.msgs: list[dict[str, Any]] = []
        self.cond = threading.Condition()

    def __call__(self, frame: dict[str, Any]) -> None:
        with self.cond:
            self.msgs.append(frame)
            self.cond.notify_all()

    def wait(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.msgs) >= n, timeout), f"got {len(self.msgs)} of {n} pushes"
            return list(self.msgs)

    def seqs(self) -> list[int]:
        with self.cond:
            return [m["seq"] for m in self.msgs]


def no_rid(frame: dict[str, Any]) -> dict[str, Any]:
    assert type(frame.get("rid")) is int
    return {k: v for k, v in frame.items() if k != "rid"}


def error_code(fn: Callable[[], object]) -> str:
    with pytest.raises(ServerError) as info:
        fn()
    return info.value.code


# -- authentication at the handshake


def test_handshake_refusals(server: ServerProcess) -> None:
    provision(server, 2)
    cases = {
        f"{server.ws_url}/ws": 401,  # no credentials
        f"{server.ws_url}/ws?uid=1&token=deadbeef": 401,  # forged
        f"{server.ws_url}/ws?uid=1&token={user_token(SECRET, 2)}": 401,  # another user's token
        f"{server.ws_url}/ws?uid=1&token={user_token('other-secret', 1)}": 401,  # another secret
        f"{server.ws_url}/ws?uid=99&token={user_token(SECRET, 99)}": 403,  # valid token, no such user
        f"{server.ws_url}/chat?uid=1&token={user_token(SECRET, 1)}": 404,
    }
    for url, status in cases.items():
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            websocket.create_connection(url)
        assert info.value.status_code == status, url
    with pytest.raises(ConnectRefused) as refused:
        ChatClient(server.ws_url, 1, "forged", heartbeat_s=None).connect()
    assert refused.value.status == 401
    metrics = admin(server).metrics_text()
    assert 'chat_auth_refusals_total{status="401"} 5.0' in metrics
    # the refused attempts did not disturb the server
    ok = ChatClient(server.ws_url, 1, user_token(SECRET, 1), heartbeat_s=None)
    assert ok.connect()["uid"] == 1
    ok.close()


# -- send / ack / push / sync / read / unread / delete


def test_send_ack_push(server: ServerProcess, connect: Connect) -> None:
    provision(server, 3)
    admin(server).create_users(10, 1)  # user 10 exists but is in no group
    inbox = {uid: Inbox() for uid in (1, 2, 3)}
    a, b, c = (connect(uid, on_message=inbox[uid]) for uid in (1, 2, 3))
    outsider = connect(10)
    before = time.time_ns() // 1000
    ack = a.send(1, "hello", cts=before)
    assert ack["op"] == "ack" and ack["gid"] == 1 and ack["seq"] == 1 and ack["sts"] >= before
    for box in (inbox[2], inbox[3]):
        (msg,) = box.wait(1)
        assert msg == {"op": "msg", "gid": 1, "seq": 1, "from": 1, "cts": before, "sts": ack["sts"], "body": "hello"}
    assert b.send(1, "second")["seq"] == 2
    assert inbox[1].wait(1)[0]["seq"] == 2  # the sender gets an ack, never its own message
    assert [m["seq"] for m in inbox[3].wait(2)] == [1, 2]
    assert error_code(lambda: outsider.send(1, "let me in")) == "not_member"
    assert error_code(lambda: a.send(404, "nowhere")) == "not_member"
    assert c.ping()["op"] == "pong"


def test_send_many_acks_in_order_and_pushes_all(server: ServerProcess, connect: Connect) -> None:
    provision(server, 2)
    inbox = Inbox()
    a = connect(1)
    connect(2, on_message=inbox)
    acks = a.send_many(1, ["one", "two", "three"])
    assert [ack["op"] for ack in acks] == ["ack"] * 3 and [ack["seq"] for ack in acks] == [1, 2, 3]
    assert [(m["seq"], m["body"]) for m in inbox.wait(3)] == [(1, "one"), (2, "two"), (3, "three")]
    assert a.send_many(1, []) == [] and a.send(1, "four")["seq"] == 4 and a.pending == 0
    assert error_code(lambda: a.send_many(404, ["x", "y"])) == "not_member"
    assert a.pending == 0  # the second reply's waiter is not left behind


def test_sync_pages(server: ServerProcess, connect: Connect) -> None:
    provision(server, 2)
    a = connect(1)
    bodies = [f"m{i}" for i in range(1, 26)]
    for body in bodies:
        a.send(1, body)
    b = connect(2)
    page = b.sync(1, 0, limit=10)
    assert [m["seq"] for m in page["msgs"]] == list(range(1, 11))
    assert page["next"] == 10 and page["more"] is True and page["max"] == 25
    page = b.sync(1, 20, limit=10)
    assert [m["seq"] for m in page["msgs"]] == list(range(21, 26)) and page["more"] is False
    assert [m["body"] for m in b.sync_all(1, 0)] == bodies
    assert b.sync(1, 25)["msgs"] == []
    # past the latest seq: an empty page that gives the group's latest seq, not the after asked for
    assert {k: v for k, v in b.sync(1, 40).items() if k != "rid"} == {
        "op": "sync", "gid": 1, "msgs": [], "next": 40, "more": False, "max": 25}


def test_read_unread_delete(server: ServerProcess, connect: Connect) -> None:
    provision(server, 3)
    a, b, c = connect(1), connect(2), connect(3)
    for i in range(5):
        a.send(1, f"m{i}")
    assert b.unread()["groups"] == [{"gid": 1, "max": 5, "read": 0, "unread": 5}]
    assert no_rid(b.read(1, 3)) == {"op": "read", "gid": 1, "max": 5, "read": 3, "unread": 2}
    assert b.read(1, 1)["read"] == 3  # a read mark never moves back
    assert b.read(1, 99)["read"] == 5  # clamped to the latest seq
    assert b.unread([1])["groups"][0]["unread"] == 0
    # delete-for-me hides a message from that user only, and from their unread count
    assert no_rid(c.delete(1, 4)) == {"op": "delete", "gid": 1, "seq": 4}
    assert [m["seq"] for m in c.sync_all(1, 0)] == [1, 2, 3, 5]
    assert [m["seq"] for m in b.sync_all(1, 0)] == [1, 2, 3, 4, 5]
    assert c.unread()["groups"][0]["unread"] == 4
    assert c.read(1, 2)["unread"] == 2  # seqs 3 and 5: 4 is deleted
    assert error_code(lambda: c.delete(1, 6)) == "no_such_message"
    assert error_code(lambda: c.unread([2])) == "not_member"


def test_private_message_visibility(server: ServerProcess, connect: Connect) -> None:
    provision(server, 3)
    boxes = {uid: Inbox() for uid in (2, 3)}
    a = connect(1)
    b, c = connect(2, on_message=boxes[2]), connect(3, on_message=boxes[3])
    a.send(1, "to everyone")
    a.send(1, "just for 2", to=[2])
    a.send(1, "everyone again")
    assert [m["seq"] for m in boxes[2].wait(3)] == [1, 2, 3]
    assert boxes[2].msgs[1]["to"] == [2]
    assert [m["seq"] for m in boxes[3].wait(2)] == [1, 3]
    assert [m["seq"] for m in c.sync_all(1, 0)] == [1, 3]
    assert c.unread()["groups"][0]["unread"] == 2
    assert b.unread()["groups"][0]["unread"] == 3
    assert [m["seq"] for m in a.sync_all(1, 0)] == [1, 2, 3]  # the sender sees its private message


def test_seq_gapless_under_concurrent_senders(server: ServerProcess, connect: Connect) -> None:
    senders, per_sender = 16, 40
    provision(server, senders + 1)
    watcher = Inbox()
    connect(senders + 1, on_message=watcher)
    clients = [connect(uid) for uid in range(1, senders + 1)]
    acked: list[int] = []
    lock = threading.Lock()

    def run(client: ChatClient) -> None:
        for i in range(per_sender):
            seq = client.send(1, f"{client.uid}:{i}")["seq"]
            with lock:
                acked.append(seq)

    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = senders * per_sender
    assert sorted(acked) == list(range(1, total + 1))
    msgs = watcher.wait(total)
    assert [m["seq"] for m in msgs] == list(range(1, total + 1))  # pushed in seq order, no gap, no repeat
    for uid in range(1, senders + 1):  # each sender's own messages in the order it sent them
        mine = [int(m["body"].split(":")[1]) for m in msgs if m["from"] == uid]
        assert mine == list(range(per_sender))


def test_ack_means_durable_across_kill9(server_factory: Callable[..., ServerProcess], tmp_path: Any) -> None:
    db = tmp_path / "durable.db"
    srv = server_factory("--send-rate", "0", db_path=db)
    provision(srv, 2)
    sender = ChatClient(srv.ws_url, 1, user_token(SECRET, 1), heartbeat_s=None)
    sender.connect()
    acked: dict[int, str] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def on_ack(reply: dict[str, Any], body: str) -> None:
        if reply.get("op") == "ack":
            with lock:
                acked[reply["seq"]] = body

    def flood() -> None:
        i = 0
        while not stop.is_set():
            body = f"durable-{i}"
            try:
                sender.send_nowait(1, body, on_ack=lambda r, b=body: on_ack(r, b))  # type: ignore[misc]
            except Exception:
                return
            i += 1
            if i % 50 == 0:
                time.sleep(0.001)  # not a wait: lets the receive thread take the acks in between

    t = threading.Thread(target=flood)
    t.start()
    wait_until(lambda: len(acked) >= 300, 10, "300 acks of the flood")
    srv.kill9()  # no shutdown path runs: what was acked must already be on disk
    stop.set()
    t.join()
    with lock:
        acked_now = dict(acked)
    assert len(acked_now) >= 300
    sender.close()
    srv2 = server_factory("--send-rate", "0", db_path=db)
    reader = ChatClient(srv2.ws_url, 2, user_token(SECRET, 2), heartbeat_s=None)
    hello = reader.connect()
    stored = {m["seq"]: m["body"] for m in reader.sync_all(1, 0)}
    reader.close()
    assert hello["groups"][0]["max"] == len(stored)
    assert sorted(stored) == list(range(1, len(stored) + 1))  # no gap
    missing = {seq: body for seq, body in acked_now.items() if stored.get(seq) != body}
    assert missing == {}, f"{len(missing)} acked messages lost or changed after kill -9"


def test_malformed_input_is_answered_and_harms_no_one(server: ServerProcess, connect: Connect) -> None:
    provision(server, 3)
    watcher = Inbox()
    errors = Inbox()
    a, bad = connect(1), connect(2, on_frame=errors, on_message=lambda frame: None)
    connect(3, on_message=watcher)
    cases: list[tuple[str | bytes, str]] = [
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_frame"),
        ('{"rid": 1}', "bad_frame"),
        ('{"op": "teleport", "rid": 2}', "unknown_op"),
        ('{"op": "send", "rid": 3, "gid": "1", "body": "x"}', "bad_field"),
        ('{"op": "send", "rid": 4, "gid": true, "body": "x"}', "bad_field"),
        ('{"op": "send", "rid": 5, "gid": 1, "body": 7}', "bad_field"),
        ('{"op": "sync", "rid": 6, "gid": 1, "after": -1}', "bad_field"),
        ('{"op": "read", "rid": 7, "gid": 1}', "bad_field"),
        ('{"op": "send", "rid": 8, "gid": 1, "body": "' + "x" * 5000 + '"}', "body_too_long"),
        ('{"op": "send", "rid": 9, "gid": 77, "body": "x"}', "not_member"),
    ]
    for i, (raw, _) in enumerate(cases):
        bad.send_raw(raw)
        a.send(1, f"ok-{i}")  # traffic goes on between the bad frames
    bad.send_raw(b"\x00\x01", binary=True)
    got = errors.wait(len(cases) + 1)
    assert [f["code"] for f in got] == [code for _, code in cases] + ["bad_frame"]
    assert all(f["op"] == "error" and f["msg"] for f in got)
    assert [f.get("rid") for f in got[3:11]] == [2, 3, 4, 5, 6, 7, 8, 9]
    assert [m["body"] for m in watcher.wait(len(cases))] == [f"ok-{i}" for i in range(len(cases))]
    assert bad.send(1, "still here")["seq"] == len(cases) + 1  # the offender's connection still works


def test_frame_too_big_closes_1009_only_that_connection(server: ServerProcess, connect: Connect) -> None:
    provision(server, 2)
    big, other = connect(1), connect(2)
    big.send_raw("x" * (70 * 1024))
    wait_until(lambda: big.closed, 5, "the server to close the connection of the big frame")
    assert big.close_code == CloseCode.MESSAGE_TOO_BIG
    assert other.send(1, "fine")["seq"] == 1


def test_rate_limit(server_factory: Callable[..., ServerProcess]) -> None:
    srv = server_factory("--send-rate", "5", "--send-burst", "5")
    provision(srv, 2)
    c = ChatClient(srv.ws_url, 1, user_token(SECRET, 1), heartbeat_s=None)
    c.connect()
    results: list[int | str] = []
    t0 = time.monotonic()
    for i in range(8):
        try:
            results.append(c.send(1, f"m{i}")["seq"])
        except ServerError as exc:
            results.append(exc.code)
    elapsed = time.monotonic() - t0
    assert results[:5] == [1, 2, 3, 4, 5]  # the burst
    acked = [r for r in results if type(r) is int]
    assert acked == list(range(1, len(acked) + 1))
    assert set(results) - set(acked) == {"rate_limited"}  # some refused, and only by the limiter
    assert len(acked) <= 5 + 5 * elapsed  # the bucket: its burst, then 5 a second
    time.sleep(0.5)  # the behaviour under test: the bucket refills at 5/s
    assert c.send(1, "later")["seq"] == len(acked) + 1
    c.close()


def test_idle_timeout_and_heartbeat(server_factory: Callable[..., ServerProcess]) -> None:
    srv = server_factory("--idle-timeout-s", "1")
    provision(srv, 2)
    silent = ChatClient(srv.ws_url, 1, user_token(SECRET, 1), heartbeat_s=None)
    alive = ChatClient(srv.ws_url, 2, user_token(SECRET, 2), heartbeat_s=0.3)
    t0 = time.monotonic()
    silent.connect()
    alive.connect()
    wait_until(lambda: silent.closed, 5, "the idle connection to be closed")
    assert silent.close_code == CloseCode.IDLE_TIMEOUT
    assert time.monotonic() - t0 >= 1.0  # not before a whole idle timeout (measured from before it connected)
    assert not alive.closed
    assert alive.send(1, "heartbeats kept me")["seq"] == 1
    alive.close()
    assert "chat_idle_disconnects_total 1.0" in admin(srv).metrics_text()


def test_slow_consumer_is_cut_off_others_unaffected(server_factory: Callable[..., ServerProcess]) -> None:
    srv = server_factory("--send-rate", "0", "--max-send-queue-bytes", "262144")
    provision(srv, 3)
    # a consumer that never reads, with a tiny receive buffer
    slow = websocket.create_connection(
        f"{srv.ws_url}/ws?uid=3&token={user_token(SECRET, 3)}",
        sockopt=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)],
    )
    watcher = Inbox()
    fast = ChatClient(srv.ws_url, 2, user_token(SECRET, 2), on_message=watcher, heartbeat_s=None)
    fast.connect()
    sender = ChatClient(srv.ws_url, 1, user_token(SECRET, 1), heartbeat_s=None)
    sender.connect()
    body = "y" * 4000
    n = 3000  # ~12 MB to the slow consumer: more than any socket buffers plus the 256 KiB bound
    for i in range(n):
        sender.send_nowait(1, body)
        if i % 100 == 99:
            sender.ping()  # keep a bounded number in flight
    assert len(watcher.wait(n, timeout=60)) == n
    assert "chat_slow_consumer_disconnects_total 1.0" in admin(srv).metrics_text()
    # the slow consumer finds a 4001 close at the end of what it was sent
    slow.settimeout(10)
    code = None
    while code is None:
        op, data = slow.recv_data(control_frame=True)
        if op == websocket.ABNF.OPCODE_CLOSE:
            code = int.from_bytes(data[:2], "big")
    assert code == CloseCode.SLOW_CONSUMER
    sender.close()
    fast.close()


def test_sigterm_closes_1001_and_keeps_acked(server_factory: Callable[..., ServerProcess], tmp_path: Any) -> None:
    db = tmp_path / "term.db"
    srv = server_factory(db_path=db)
    provision(srv, 2)
    a = ChatClient(srv.ws_url, 1, user_token(SECRET, 1), heartbeat_s=None)
    a.connect()
    seqs = [a.send(1, f"m{i}")["seq"] for i in range(10)]
    assert srv.stop() == 0
    wait_until(lambda: a.closed, 5, "the client to see the shutdown's close")
    assert a.close_code == CloseCode.GOING_AWAY
    with pytest.raises(ConnectionClosed):
        a.send(1, "after shutdown")
    srv2 = server_factory(db_path=db)
    b = ChatClient(srv2.ws_url, 2, user_token(SECRET, 2), heartbeat_s=None)
    b.connect()
    assert [m["seq"] for m in b.sync_all(1, 0)] == seqs
    b.close()


# -- admin plane


def test_admin_plane(server: ServerProcess, connect: Connect) -> None:
    adm = admin(server)
    # 10,000 users and a 10,000-member group, each one request
    assert adm.create_users(1, 10_000) == {"created": 10_000, "requested": 10_000}
    assert adm.create_groups({1: list(range(1, 10_001))}) == {"created": 1, "members": 10_000}
    assert adm.group(1) == {"gid": 1, "members": 10_000, "max_seq": 0}

    bad = type(adm)(adm.url, "wrong-token")
    with pytest.raises(AdminError) as info:
        bad.create_users(1, 1)
    assert info.value.status == 401
    for body, status in [
        ({"groups": [{"gid": 2, "members": [1, 99_999]}]}, 400),  # 99,999 is no user
        ({"groups": [{"gid": 1, "members": [1]}]}, 409),  # exists
        ({"groups": [{"gid": "2", "members": [1]}]}, 400),
        ({"groups": []}, 400),
    ]:
        with pytest.raises(AdminError) as info:
            adm.request("POST", "/admin/groups", body)
        assert info.value.status == status, body
    for body in ({"first": 1}, {"first": 2**63 - 1, "count": 2}, {"ids": [1, -1]}):
        with pytest.raises(AdminError) as info:
            adm.request("POST", "/admin/users", body)
        assert info.value.status == 400, body
    with pytest.raises(AdminError) as info:
        adm.request("GET", "/admin/users/%C2%B2/token")  # a non-ASCII digit is no id
    assert info.value.status == 400
    with pytest.raises(AdminError) as info:
        adm.group(2)  # nothing of the refused requests was written
    assert info.value.status == 404

    # membership changes: a new member sees what comes after its join, a removed one nothing
    adm.create_users(20_000, 2)
    adm.create_groups({2: [1, 20_000]})
    early = connect(1)
    early.send(2, "before the join")
    assert adm.change_members(2, add=[20_001], remove=[20_000]) == {"added": 1, "removed": 1, "members": 2}
    newcomer, gone = connect(20_001), connect(20_000)
    early.send(2, "after the join")
    # the change is announced by signals that take seqs 2 (join) and 3 (leave); the newcomer joined at seq 1
    synced = newcomer.sync_all(2, 0)
    assert [(m.get("kind", "msg"), m.get("uids"), m["body"]) for m in synced] == [
        ("join", [20_001], ""), ("leave", [20_000], ""), ("msg", None, "after the join")]
    assert newcomer.unread()["groups"] == [{"gid": 2, "max": 4, "read": 1, "unread": 1}]  # signals never count
    assert error_code(lambda: gone.send(2, "hello?")) == "not_member"
    health = adm.health()
    assert health["status"] == "ok" and health["modes"]["storage"] == "read"


def test_client_ignores_proxies_from_the_environment(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """A measurement goes client → server: an http(s)_proxy in the environment (nothing listens at it) is used
    neither by ChatClient nor by the admin client."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    provision(server, 2)
    c = ChatClient(server.ws_url, 1, user_token(SECRET, 1), heartbeat_s=None)
    c.connect()
    assert c.send(1, "direct")["seq"] == 1
    c.close()
