"""Integration: the receive engine (drivers/engine.py) against a real server — a fixed injected delay reads back
within 1 ms at p50 through its batch ledger, the ledger counts what a proxy injects exactly, EngineClient's requests
and errors are ChatClient's, and a half-open connection is found by the engine's heartbeat and resumed without
loss."""

from __future__ import annotations

import gc
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from drivers.client import ChatClient, ConnectionClosed, ConnectRefused
from drivers.engine import Engine, EngineClient
from drivers.ledger import Ledger, ReceiverLedger, now_us
from drivers.profiles import Profile
from drivers.proxy import Delay, Faults, FrameAction, Impair, Pipe, Proxy
from drivers.totals import Totals
from harness.procs import SECRET, ServerProcess
from reference_server.protocol import user_token
from tests.integration.conftest import admin, provision, pumped
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration
_engines: list[Engine] = []


@pytest.fixture(autouse=True)
def _stop_engines_and_collect() -> Iterator[None]:
    """Stop the test's engines, let the threads it left finish and finalize what they dropped here (as
    test_weak_network does: a finalizer logging a traceback inside pytest's end-of-session AST parse fails on
    Python 3.11.7 with "AST constructor recursion depth mismatch")."""
    before = set(threading.enumerate())
    yield
    while _engines:
        _engines.pop().stop()
    for t in set(threading.enumerate()) - before:
        t.join(timeout=1)
    gc.collect()


def new_engine(ledger: Ledger) -> Engine:
    engine = Engine(ledger)
    _engines.append(engine)
    return engine


@contextmanager
def running(proxy: Proxy) -> Iterator[Proxy]:
    proxy.start_in_thread()
    try:
        yield proxy
    finally:
        proxy.stop()


def member(url: str, uid: int, engine: Engine, rl: ReceiverLedger | None = None, **kw: object) -> EngineClient:
    kw.setdefault("heartbeat_s", None)
    c = EngineClient(url, uid, user_token(SECRET, uid), receiver=rl, engine=engine,
                     on_hello=None if rl is None else rl.on_connect, **kw)  # type: ignore[arg-type]
    c.connect()
    return c


class _Split(FrameAction):
    """Every frame through the proxy's timer (Delay); the delayed receivers' ``seconds`` later, the others' as
    soon as the timer can (the same path and the same per-frame work for both sets)."""

    def __init__(self, delayed: set[int], seconds: float) -> None:
        self.delayed = delayed
        self.delay = Delay(seconds)
        self.soon = Delay(0.0001)

    def on_frame(self, pipe: Pipe, frame: bytes, payload: bytes, opcode: int) -> None:
        (self.delay if pipe.uid in self.delayed else self.soon).on_frame(pipe, frame, payload, opcode)


def test_injected_delay_reads_back_within_1ms_at_p50(server: ServerProcess) -> None:
    uids = provision(server, 41, gid=9)
    sender_uid, rx = uids[0], uids[1:]
    delayed = set(rx[:20])
    delay_ms = 40.0
    ledger = Ledger()
    engine = new_engine(ledger)
    clients = []
    # both sets go through the proxy (same path, same hop); only one set's frames are held. Each set is a network
    # profile of the ledger, so the batch ledger's per-profile HDR histograms hold each set's latencies.
    with running(Proxy(server.ws_url, action_factory=lambda _p: _Split(delayed, delay_ms / 1000))) as proxy:
        for uid in rx:
            rl = ledger.receiver(uid)
            rl.profile = "delayed" if uid in delayed else "direct"
            clients.append(member(proxy.url, uid, engine, rl))
        assert pumped(engine) == len(rx)  # after the hello, the pump reads every member's socket
        sender = ChatClient(server.ws_url, sender_uid, user_token(SECRET, sender_uid), heartbeat_s=None)
        sender.connect()
        for i in range(100):
            sender.send(9, f"m{i}")
            time.sleep(0.01)  # a paced stream (part of the measurement): no push queues behind the previous one
        wait_until(lambda: ledger.delivered == 4000, 10, "100 pushes to each of the 40 receivers, in the ledger")
        for c in [*clients, sender]:
            c.close()
    assert admin(server).group(9)["max_seq"] == 100
    c = ledger.counts
    assert (c["duplicated"], c["reordered"], c["unexpected_group"], c["no_cts"]) == (0, 0, 0, 0)
    assert engine.batch.in_order == engine.batch.frames == 4000  # every push took the batch path
    d, n = ledger.profiles["delayed"]["latency"].h, ledger.profiles["direct"]["latency"].h
    assert d.get_total_count() == n.get_total_count() == 2000
    assert ledger.latency.h.get_total_count() == 4000
    shift_ms = (d.get_value_at_percentile(50) - n.get_value_at_percentile(50)) / 1000
    print(f"p50 direct {n.get_value_at_percentile(50) / 1000:.3f} ms, delayed "
          f"{d.get_value_at_percentile(50) / 1000:.3f} ms, shift {shift_ms:.3f} ms (injected {delay_ms:g} ms)")
    assert abs(shift_ms - delay_ms) <= 1.0


def test_engine_ledger_counts_equal_injected_faults(server: ServerProcess) -> None:
    """test_faults' drops, duplicates and reorders, received by the engine: the same exact counts."""
    uids = provision(server, 21, gid=5)
    sender_uid, rx = uids[0], uids[1:]
    faulty = rx[:10]
    drop = {(faulty[0], 3), (faulty[1], 7), (faulty[2], 30), (faulty[3], 12)}  # 30: the tail, found at reconcile
    dup = {(faulty[4], 5), (faulty[5], 9), (faulty[0], 20)}
    reorder = {(faulty[6], 10), (faulty[7], 15), (faulty[8], 25)}
    faults = Faults(drop=drop, duplicate=dup, reorder=reorder)
    ledger = Ledger()
    engine = new_engine(ledger)
    with running(Proxy(server.ws_url, action_factory=lambda _p: faults)) as proxy:
        clients = [member(proxy.url, uid, engine, ledger.receiver(uid)) for uid in faulty]
        clients += [member(server.ws_url, uid, engine, ledger.receiver(uid)) for uid in rx[10:]]
        sender = member(server.ws_url, sender_uid, engine, ledger.receiver(sender_uid))
        for i in range(1, 31):
            cts = now_us()
            private = i == 12
            ack = sender.send(5, f"m{i}", cts=cts, to=[faulty[3]] if private else None)
            assert ack["seq"] == i
            ledger.on_ack(sender_uid, ack, cts, private)
        last = {uid: 29 if (uid, 30) in drop else 30 for uid in rx}
        wait_until(lambda: {uid: ledger.receivers[uid].groups[5].last for uid in rx} == last, 10,
                   "every receiver's stream to reach its last seq")
        cutoff = now_us()
        for c in [*clients, sender]:
            rl = ledger.receivers[c.uid]
            rl.reconcile(c.sync, cutoff)
            rl.check_unread(c.unread, c.read)
        for c in [*clients, sender]:
            c.close()
    assert faults.counts == {"dropped": 4, "duplicated": 3, "reordered": 3, "released": 0}
    data = ledger.take()
    counts = data["counts"]
    assert counts["lost"] == counts["repaired"] == faults.counts["dropped"]
    assert counts["duplicated"] == faults.counts["duplicated"]
    assert counts["reordered"] == faults.counts["reordered"]
    assert counts["in_flight_at_stop"] == counts["repair_failed"] == 0
    assert counts["private_holes"] == 19
    assert counts["unread_mismatches"] == 0, ledger.mismatch_log
    assert counts["unread_checks"] == 21
    assert counts["delivered"] == 29 * 20 + 1 - 4
    totals = Totals()
    totals.merge(data)
    totals.settle()
    fan = totals.fan_counts
    assert fan["messages"] == 29 and fan["private"] == 1
    assert fan["expected"] == 29 * 20 and fan["received"] == 29 * 20 - 3
    assert fan["incomplete"] == 3 and fan["complete"] == 26


def test_engine_client_requests_are_chatclients(server: ServerProcess) -> None:
    provision(server, 4, gid=2)
    ledger = Ledger()
    engine = new_engine(ledger)
    with pytest.raises(ConnectRefused) as refused:
        EngineClient(server.ws_url, 1, "bad-token", engine=engine, heartbeat_s=None).connect()
    assert refused.value.status == 401
    a = member(server.ws_url, 1, engine, ledger.receiver(1))
    b = member(server.ws_url, 2, engine, ledger.receiver(2))
    script: list[dict[str, object]] = []
    c = member(server.ws_url, 3, engine, None, on_message=script.append)  # no ledger: pushes one by one
    assert a.hello is not None and [g["gid"] for g in a.hello["groups"]] == [2]
    acks: list[dict[str, object]] = []
    a.send_nowait(2, "first", on_ack=acks.append)
    ack = a.send(2, "second")
    wait_until(lambda: acks, 5, "send_nowait's ack")
    assert (acks[0]["op"], acks[0]["seq"], ack["seq"]) == ("ack", 1, 2)
    wait_until(lambda: ledger.receivers[2].groups[2].last == 2 and len(script) == 2, 5, "both pushes")
    assert [m["seq"] for m in script] == [1, 2]
    page = b.sync(2, 0, 10)
    assert [m["body"] for m in page["msgs"]] == ["first", "second"] and not page["more"]
    # a read's reply starts like a push: pushes around it still reach the ledger, the reply reaches the caller
    for i in range(20):
        a.send_nowait(2, f"x{i}")
    assert b.read(2, 2)["read"] == 2
    wait_until(lambda: ledger.receivers[2].groups[2].last == 22, 5, "the pushes around the read")
    assert b.unread([2])["groups"][0]["unread"] == 20
    assert b.ping()["op"] == "pong"
    assert ledger.counts["duplicated"] == ledger.counts["reordered"] == 0 and ledger.delivered == 22  # b: a sent
    b.close()
    assert b.closed and b.close_code == 1000
    with pytest.raises(ConnectionClosed):
        b.sync(2, 0, 1)
    for x in (a, c):
        x.close()


def test_a_flow_of_pushes_is_read_on_the_quantum_and_an_idle_engine_waits_for_its_descriptor(
        server: ServerProcess) -> None:
    """While pushes flow the engine reads its pump every READ_QUANTUM_S instead of waking at each arrival: 30
    messages 20 ms apart wake it once or twice, not 30 times; idle, it goes back to waiting for the descriptor (no
    pass runs), and the next push wakes it and is read with a latency of the wire's."""
    uids = provision(server, 2, gid=4)
    ledger = Ledger()
    engine = new_engine(ledger)
    rx = member(server.ws_url, uids[1], engine, ledger.receiver(uids[1]))
    wait_until(lambda: pumped(engine) == 1, 5, "the pump reading the member")
    with ChatClient(server.ws_url, uids[0], user_token(SECRET, uids[0]), heartbeat_s=None) as tx:
        wait_until(lambda: not engine.polling, 5, "the engine idle after the hello")
        woken = engine.wakeups
        for i in range(30):
            tx.send(4, f"m{i}")
            time.sleep(0.02)  # the flow's pace: each push is its own arrival, 20 ms after the last
        wait_until(lambda: ledger.delivered == 30, 5, "the 30 pushes")
        assert engine.wakeups - woken <= 2, f"{engine.wakeups - woken} wake-ups for 30 pushes 20 ms apart"
        wait_until(lambda: not engine.polling, 5, "the engine waiting for its descriptor again")
        woken = engine.wakeups
        tx.send(4, "after the idle spell")
        wait_until(lambda: ledger.delivered == 31, 5, "the push after the idle spell")
        assert engine.wakeups == woken + 1
    h = ledger.latency.h
    assert h.get_total_count() == 31 and h.get_max_value() < 100_000, h.get_max_value()  # the wire's, not a wait
    assert ledger.counts["duplicated"] == ledger.counts["reordered"] == 0
    rx.close()


def test_the_lag_probe_does_not_start_a_spell_of_polling(server: ServerProcess) -> None:
    """The probe's stamp makes the pump's descriptor readable every 50 ms; an idle engine reads it and goes on
    waiting (a spell of polling per stamp would end by re-adding the descriptor to the loop's epoll set: a walk over
    every socket of the pump, ~100 a second). The stamps are still read and measured."""
    uids = provision(server, 1, gid=7)
    ledger = Ledger()
    engine = new_engine(ledger)
    rx = member(server.ws_url, uids[0], engine, ledger.receiver(uids[0]))
    wait_until(lambda: pumped(engine) == 1, 5, "the pump reading the member")
    wait_until(lambda: not engine.polling, 5, "the engine idle after the hello")
    woken = engine.wakeups
    engine.lag_ms()
    for _ in range(20):
        engine.probe()
        lag = wait_until(lambda: engine.lag_ms() or None, 5, "the probe's stamp read")
        assert 0 < lag < 100, lag
        assert not engine.polling
    assert engine.wakeups == woken, f"{engine.wakeups - woken} spells of polling for 20 probes"
    rx.close()


def test_a_pass_that_fails_does_not_stop_the_engine_reading(server: ServerProcess) -> None:
    """A pump pass that raises (the pump's MemoryError) is the loop's to report; the passes go on, and the pushes
    it did not read are read by the next one — whether it failed on a wake (the engine waiting) or while polling
    (there the reader is gone: without a next pass nothing would read again)."""
    uids = provision(server, 2, gid=6)
    ledger = Ledger()
    engine = new_engine(ledger)
    rx = member(server.ws_url, uids[1], engine, ledger.receiver(uids[1]))
    wait_until(lambda: pumped(engine) == 1, 5, "the pump reading the member")
    wait_until(lambda: not engine.polling, 5, "the engine idle after the hello")
    real, failed = engine._pumped, []

    def fail_once_each_way() -> None:
        if (not failed and not engine.polling) or (len(failed) == 1 and engine.polling):
            failed.append(engine.polling)
            raise MemoryError("a pass that fails")
        real()

    engine._pumped = fail_once_each_way  # type: ignore[method-assign]
    with ChatClient(server.ws_url, uids[0], user_token(SECRET, uids[0]), heartbeat_s=None) as tx:
        tx.send(6, "m0")  # its wake fails, the next reads it and starts polling, whose next pass fails
        wait_until(lambda: len(failed) == 2, 5, "a failed pass on a wake and one while polling")
        for i in range(1, 3):
            tx.send(6, f"m{i}")
        wait_until(lambda: ledger.delivered == 3, 5, "the pushes after the failed passes")
    assert failed == [False, True] and ledger.counts["duplicated"] == ledger.counts["reordered"] == 0
    rx.close()


def test_half_open_found_by_the_engines_heartbeat_and_resumed(server: ServerProcess) -> None:
    uids = provision(server, 4, gid=3)
    sender_uid, rx = uids[0], uids[1:]
    ledger = Ledger()
    engine = new_engine(ledger)
    beat = {"heartbeat_s": 0.2, "pong_timeout_s": 0.3}
    rng = random.Random(1)
    with running(Proxy(server.ws_url, action_factory=lambda _p: Impair(Profile("t", rtt_ms=20),
                                                                       random.Random(rng.random())))) as proxy:
        clients = {uid: member(proxy.url, uid, engine, ledger.receiver(uid), **beat) for uid in rx}
        sender = ChatClient(server.ws_url, sender_uid, user_token(SECRET, sender_uid), heartbeat_s=None)
        sender.connect()
        ledger.receiver(sender_uid).on_connect(sender.hello or {})
        victim = rx[0]
        for i in range(1, 31):
            cts = now_us()
            ledger.on_ack(sender_uid, sender.send(3, f"m{i}", cts=cts), cts, False)
            if i == 10:
                pipe = next(p for p in list(proxy.pipes) if p.uid == victim)
                t0 = time.perf_counter()
                proxy.call(pipe.half_open)
                wait_until(lambda: clients[victim].closed, 5, "the half-open connection to be found")
                took = time.perf_counter() - t0
                old = clients[victim]
                assert old.dead and old.close_code == 1006 and "no pong" in old.close_reason
                assert took >= beat["pong_timeout_s"] * 0.9
                rl = ledger.receivers[victim]
                rl.on_disconnect()
                started = now_us()
                clients[victim] = c = member(proxy.url, victim, engine, rl, **beat)
                assert rl.catch_up(c.sync, started)
            time.sleep(0.01)
        wait_until(lambda: all(ledger.receivers[uid].groups[3].last == 30 for uid in rx), 10,
                   "every receiver's stream (pushes and catch-up) to reach seq 30")
        assert not any(c.closed for c in clients.values())
        cutoff = now_us()
        for c in [*clients.values(), sender]:
            ledger.receivers[c.uid].reconcile(c.sync, cutoff)
            c.close()
    counts = ledger.take()["counts"]
    assert counts["lost"] == counts["duplicated"] == counts["reordered"] == 0
    assert counts["catchups"] == 1 and counts["catchup_incomplete"] == 0
    assert counts["delivered"] + counts["catchup_msgs"] == 30 * len(rx)


def test_the_engine_lag_probe_measures_how_long_a_readable_descriptor_waits() -> None:
    """Engine.probe: a stamp written to a pipe the engine reads like its sockets. Idle, it is read at once; while
    the engine thread is held (here: a callback that blocks it 0.3 s, as a long run of ready sockets would), the
    stamp waits, and lag_ms() says how long."""
    engine = new_engine(Ledger())
    engine.start()
    wait_until(lambda: engine.running, 5, "the engine started")
    engine.lag_ms()
    for _ in range(5):
        engine.probe()
        time.sleep(0.01)  # the probe's reader runs in the engine thread: give it the time to read
    idle = wait_until(lambda: engine.lag_ms() or None, 5, "the idle probes read")
    assert 0 < idle < 50, idle
    engine._call(time.sleep, 0.3)  # holds the engine thread (and releases the GIL, as a socket read does)
    time.sleep(0.05)
    engine.probe()  # written while the engine is held: read when it is free again, ~0.25 s later
    held = wait_until(lambda: engine.lag_ms() or None, 5, "the probe read after the hold")
    assert 200 <= held < 1000, held
