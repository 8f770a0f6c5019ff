"""The receive engine's compiled read path (drivers/_pump.c) on real sockets (socket pairs and loopback TCP, no
server): frames cut the same wherever the bytes are split, pushes told from every other frame by their layout,
order kept between pushes and events, hostile bytes refused with a reason (never a crash, never a frame past the
limit buffered), bounded memory per connection, the end of a stream and a reset reported, descriptor reuse, the
probe's wait, and a pass's limits losing nothing."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import socket
import struct
import termios
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from drivers import _pump
from drivers.fast_receiver import PUSH_PREFIX, SEQ_KEY
from reference_server import protocol

pytestmark = pytest.mark.integration

MAX = 1 << 20
CHUNK = 65536


def ws(op: int, payload: bytes, fin: bool = True, mask: bool = False, rsv: int = 0) -> bytes:
    """One server-to-client WebSocket frame (RFC 6455)."""
    b0 = (0x80 if fin else 0) | rsv << 4 | op
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head = bytes([b0, m | n])
    elif n < 65536:
        head = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack(">Q", n)
    return head + (b"\0\0\0\0" if mask else b"") + payload


def push(gid: int, seq: int, body: str = "x") -> bytes:
    return protocol.encode_push(protocol.Message(gid, seq, 3, 1_800_000_000_000_000, 1_800_000_000_000_100, body))


@pytest.fixture
def pump() -> Iterator[Any]:
    p = _pump.Pump(PUSH_PREFIX, SEQ_KEY, MAX)
    yield p
    p.close()


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made: list[tuple[socket.socket, socket.socket]] = []
    yield made
    for a, b in made:
        a.close()
        b.close()


def pair(pairs: list[tuple[socket.socket, socket.socket]]) -> tuple[socket.socket, socket.socket]:
    """(the pump's end, the 'server' end)"""
    a, b = socket.socketpair()
    a.setblocking(False)
    pairs.append((a, b))
    return a, b


def drain(pump: Any, want_records: int = 0, want_events: int = 0, timeout: float = 5.0) -> tuple[list[Any], Any]:
    """process() until at least the records and events wanted came; (events, taken records or None)."""
    deadline = time.monotonic() + timeout
    events: list[Any] = []
    while True:
        events += pump.process(1 << 20, 1 << 20)
        if (pump.pending >= want_records and len(events) >= want_events) or time.monotonic() > deadline:
            return events, pump.take()


def records(taken: Any) -> list[tuple[bytes, int]]:
    """(payload, slot) of every record taken, in order."""
    if taken is None:
        return []
    distinct, ids, slots, _ = taken
    return [(distinct[i], s) for i, s in zip(np.frombuffer(ids, np.int32).tolist(),
                                             np.frombuffer(slots, np.int64).tolist(), strict=True)]


# --- cutting frames -----------------------------------------------------------------------------------------------

frame_st = st.one_of(
    st.builds(lambda g, s, n: ("push", push(g, s, "b" * n)), st.integers(1, 2**62), st.integers(1, 2**40),
              st.sampled_from([1, 100, 200, 70_000])),
    st.builds(lambda n: ("other", b'{"op":"pong","x":"' + b"y" * n + b'"}'), st.sampled_from([0, 130, 66_000])),
    st.just(("read", protocol.encode_read_reply(9, protocol.GroupState(5, 2, 1, 1)))),
    st.just(("ping", b"hi")),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(frame_st, min_size=1, max_size=12), st.lists(st.integers(1, 200_000), max_size=6))
def test_frames_are_cut_the_same_wherever_the_bytes_split(frames: list[tuple[str, bytes]], cuts: list[int]) -> None:
    """Any split of the stream (mid-header, mid-payload, 7/16/64-bit lengths) gives the same records and events,
    and the events sit between the pushes exactly where they were on the wire."""
    pump = _pump.Pump(PUSH_PREFIX, SEQ_KEY, MAX)
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        b.setblocking(False)
        pump.add(a.fileno(), 11, 4)
        wire = b"".join(ws(9 if kind == "ping" else 1, p) for kind, p in frames)
        bounds = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
        events: list[Any] = []
        for lo, hi in itertools.pairwise(bounds):
            part = memoryview(wire)[lo:hi]
            while part:
                with contextlib.suppress(BlockingIOError):
                    part = part[b.send(part):]
                events += pump.process(1 << 20, 1 << 20)  # nothing taken: each event's pos is absolute
        deadline = time.monotonic() + 5
        while pump.pending + len(events) < len(frames) and time.monotonic() < deadline:
            events += pump.process(1 << 20, 1 << 20)
        got: list[tuple[str, bytes]] = [("push", p) for p, _ in records(pump.take())]
        for pos, cid, kind, op, fin, code, data in reversed(events):
            assert (cid, kind, fin, code) == (11, _pump.FRAME, 1, 0)
            got.insert(pos, ("ping" if op == 9 else "text", data))
        assert got == [("push" if kind == "push" else "ping" if kind == "ping" else "text", p) for kind, p in frames]
        assert pump.stats["carry_bytes"] == 0  # every frame complete: nothing held
    finally:
        pump.close()
        a.close()
        b.close()


def test_a_read_reply_is_not_a_push_though_it_starts_like_one(pump: Any, pairs: Any) -> None:
    a, b = pair(pairs)
    pump.add(a.fileno(), 1, 0)
    reply = protocol.encode_read_reply(9, protocol.GroupState(5, 2, 1, 1))
    assert reply.startswith(PUSH_PREFIX)
    b.sendall(ws(1, push(5, 1)) + ws(1, reply) + ws(1, push(5, 2)))
    events, taken = drain(pump, 2, 1)
    assert [(e[0], e[6]) for e in events] == [(1, reply)]
    assert [p for p, _ in records(taken)] == [push(5, 1), push(5, 2)]


def test_pushes_from_python_and_from_sockets_share_one_order_and_one_copy_per_payload(pump: Any, pairs: Any) -> None:
    a, b = pair(pairs)
    pump.add(a.fileno(), 1, 7)
    m = push(5, 1)
    pump.push(3, m, 123)
    b.sendall(ws(1, m))
    _, taken = drain(pump, 2)
    assert records(taken) == [(m, 3), (m, 7)] and len(taken[0]) == 1


def test_holds_says_whether_a_slot_has_a_record_among_the_first_pending(pump: Any, pairs: Any) -> None:
    a, b = pair(pairs)
    pump.add(a.fileno(), 1, 7)
    assert not pump.holds(7)  # nothing pending
    pump.push(3, push(5, 1), 1)
    b.sendall(ws(1, push(5, 2)) + ws(1, push(5, 3)))
    drain_to(pump, 3)
    pump.push(4, push(5, 4), 2)
    assert [pump.holds(7, n) for n in (0, 1, 2, 3, 4, -1, 99)] == [False, False, True, True, True, True, True]
    assert [pump.holds(3, n) for n in (0, 1, -1)] == [False, True, True]
    assert [pump.holds(4, n) for n in (3, 4)] == [False, True] and not pump.holds(8)
    pump.take(2)  # what is left: slot 7's second record, slot 4's
    assert pump.holds(7, 1) and not pump.holds(3) and not pump.holds(4, 1) and pump.holds(4)
    pump.close()
    with pytest.raises(ValueError, match="closed"):
        pump.holds(7)


def drain_to(pump: Any, want_records: int, timeout: float = 5.0) -> None:
    """process() until ``want_records`` are pending (nothing taken)."""
    deadline = time.monotonic() + timeout
    while pump.pending < want_records:
        assert time.monotonic() < deadline, f"{pump.pending} of {want_records} records"
        assert pump.process(1 << 20, 1 << 20) == []


# --- hostile bytes ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "code", "why"), [
    (ws(1, push(1, 1), mask=True), 1002, "masked"),
    (ws(1, push(1, 1), rsv=4), 1002, "reserved bits"),
    (ws(3, b"x"), 1002, "unknown opcode"),
    (ws(9, b"x", fin=False), 1002, "control frame"),
    (ws(9, b"x" * 126), 1002, "control frame"),
    (bytes([0x81, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]), 1009, "over the limit"),  # 2**63: the top bit
    (bytes([0x81, 127]) + struct.pack(">Q", MAX + 1), 1009, "over the limit"),
])
def test_protocol_errors_drop_the_connection_with_a_reason(pump: Any, pairs: Any, raw: bytes, code: int,
                                                           why: str) -> None:
    a, b = pair(pairs)
    good, other = pair(pairs)
    pump.add(a.fileno(), 1, 0)
    pump.add(good.fileno(), 2, 1)
    b.sendall(ws(1, push(1, 1)) + raw + ws(1, push(1, 2)))
    other.sendall(ws(1, push(1, 1)))
    events, taken = drain(pump, 2, 1)
    assert [(e[1], e[2], e[5]) for e in events] == [(1, _pump.ERROR, code)]
    assert why in events[0][6]
    # what came before the error counts; nothing of that connection after it; the other connection untouched
    assert sorted(records(taken)) == [(push(1, 1), 0), (push(1, 1), 1)]
    assert pump.stats["connections"] == 1 and pump.stats["carry_bytes"] == 0
    assert pump.remove(a.fileno(), 1) is False  # the pump dropped it already


def test_a_frame_over_the_limit_is_refused_at_its_header_before_any_of_it_is_held(pairs: Any) -> None:
    """The limit holds however the bytes come: a header announcing max + 1 bytes, sent alone and then followed by
    payload, is an error at once; one announcing exactly max is held and completes."""
    small = 200_000
    pump = _pump.Pump(PUSH_PREFIX, SEQ_KEY, small)
    try:
        a, b = pair(pairs)
        pump.add(a.fileno(), 1, 0)
        b.sendall(bytes([0x81, 127]) + struct.pack(">Q", small + 1))
        events, _ = drain(pump, 0, 1)
        assert events[0][2] == _pump.ERROR and events[0][5] == 1009
        assert pump.stats["carry_bytes"] == 0
        c, d = pair(pairs)
        pump.add(c.fileno(), 2, 0)
        body = push(1, 1, "z" * (small - len(push(1, 1, ""))))
        assert len(body) == small
        frame = ws(1, body)
        d.sendall(frame[:150_000])
        drain(pump, timeout=0.2)
        held = pump.stats["carry_bytes"]
        assert 0 < held <= small + 14 + CHUNK  # the partial frame, bounded by the limit and one read
        d.sendall(frame[150_000:])
        _, taken = drain(pump, 1)
        assert records(taken) == [(body, 0)] and pump.stats["carry_bytes"] == 0
    finally:
        pump.close()


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=3000))
@example(b"\x00\x00")  # a whole empty fragment, then the end: two passes
def test_random_bytes_never_crash_the_pump(junk: bytes) -> None:
    """Whatever a server sends, the pump reports frames or one error and keeps serving its other connections."""
    pump = _pump.Pump(PUSH_PREFIX, SEQ_KEY, 4096)
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    try:
        a.setblocking(False)
        c.setblocking(False)
        pump.add(a.fileno(), 1, 0)
        pump.add(c.fileno(), 2, 1)
        b.sendall(junk)
        b.close()
        d.sendall(ws(1, push(1, 1)))
        events, taken = drain(pump, 1, 1)
        # junk that is a whole frame (b"\x00\x00": an empty fragment) is an event of its own, and the stream's end
        # is read in a later pass: go on until the end is there (a CI run drew that example)
        deadline = time.monotonic() + 5
        while not any(e[2] != _pump.FRAME for e in events) and time.monotonic() < deadline:
            events += pump.process(1 << 20, 1 << 20)
        ends = [e for e in events if e[2] != _pump.FRAME]
        assert len(ends) == 1 and ends[0][1] == 1  # the junk's connection ends once: an error or its end
        assert all(e[1] == 1 for e in events)
        assert (push(1, 1), 1) in records(taken)
        assert pump.stats["connections"] == 1 and pump.stats["carry_bytes"] == 0
    finally:
        pump.close()
        for s in (a, c, d):
            s.close()


def test_many_connections_ending_their_reads_inside_a_frame_hold_only_those_bytes(pump: Any, pairs: Any) -> None:
    """10,000 members whose every read ends mid-frame must not each keep a read's room: the carry is about the
    partial frame."""
    n = 500
    ends = []
    for i in range(n):
        a, b = pair(pairs)
        pump.add(a.fileno(), i, i)
        ends.append(b)
    frame = ws(1, push(1, 1, "q" * 300))
    for b in ends:
        b.sendall(frame + frame[:40])
    events, taken = drain(pump, n)
    assert not events and len(records(taken)) == n
    stats = pump.stats
    assert stats["carry_bytes"] <= n * 40 * 2 + n * 256, stats
    for b in ends:
        b.sendall(frame[40:])
    _, taken = drain(pump, n)
    assert len(records(taken)) == n and pump.stats["carry_bytes"] == 0


# --- ends, resets, reuse ------------------------------------------------------------------------------------------

def test_the_end_of_a_stream_and_a_reset_are_events(pump: Any) -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    try:
        conns = []
        for _ in range(2):
            c = socket.create_connection(srv.getsockname())
            s, _ = srv.accept()
            c.setblocking(False)
            conns.append((c, s))
        (c1, s1), (c2, s2) = conns
        pump.add(c1.fileno(), 1, 0)
        pump.add(c2.fileno(), 2, 1)
        s1.sendall(ws(1, push(1, 1)))
        s1.shutdown(socket.SHUT_WR)  # a clean end
        s2.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s2.close()  # a reset
        events, taken = drain(pump, 1, 2)
        by = {e[1]: e for e in events}
        assert by[1][2] == _pump.EOF and by[1][5] == 0 and by[1][0] == 1  # after the push before it
        assert by[2][2] == _pump.EOF and "reset" in by[2][6].lower() and by[2][5] != 0
        assert records(taken) == [(push(1, 1), 0)] and pump.stats["connections"] == 0
        for c, s in conns:
            c.close()
            s.close()
    finally:
        srv.close()


def test_a_reused_descriptor_belongs_to_its_new_connection(pump: Any, pairs: Any) -> None:
    a, b = pair(pairs)
    fd = a.fileno()
    pump.add(fd, 1, 0)
    pairs.remove((a, b))
    a.close()  # closed without remove(): the fd number comes back for the next socket
    b.close()
    c, d = pair(pairs)
    dup = c.fileno() != fd  # the lowest free number is normally the one just closed; else make it so
    if dup:
        os.dup2(c.fileno(), fd)
    try:
        pump.add(fd, 2, 5)
        assert pump.remove(fd, 1) is False  # the old connection's late remove does not touch the new one
        d.sendall(ws(1, push(1, 1)))
        _, taken = drain(pump, 1)
        assert records(taken) == [(push(1, 1), 5)]
        assert pump.remove(fd, 2) is True and pump.stats["connections"] == 0
    finally:
        if dup:
            os.close(fd)


# --- the probe and a pass's limits --------------------------------------------------------------------------------

def test_the_probe_reports_how_long_a_stamp_waited(pump: Any) -> None:
    r, w = os.pipe2(os.O_NONBLOCK)
    try:
        pump.add_probe(r)
        os.write(w, (time.monotonic_ns() - 80_000_000).to_bytes(8, "little"))  # written 80 ms "ago"
        os.write(w, time.monotonic_ns().to_bytes(8, "little"))
        drain(pump, timeout=0.05)
        lag = pump.take_probe_ns() / 1e6
        assert 80 <= lag < 1000, lag
        assert pump.take_probe_ns() == 0  # taken
        with pytest.raises(ValueError, match="probe already"):
            pump.add_probe(r)
    finally:
        os.close(r)
        os.close(w)


def test_a_tcp_read_carries_the_kernels_receive_time_and_a_socket_without_one_the_time_it_was_read(
        pump: Any) -> None:
    """A push that waited 200 ms in a loopback TCP socket's buffer is stamped with when it arrived (the kernel's
    stamp, SO_TIMESTAMPNS); one that waited as long in a Unix socket pair (no kernel stamp there) with when it was
    read — and is counted in take_unstamped()."""
    srv = socket.create_server(("127.0.0.1", 0))
    tcp_w = socket.create_connection(srv.getsockname())
    tcp_r, _ = srv.accept()
    unix_r, unix_w = socket.socketpair()
    try:
        pump.add(tcp_r.fileno(), 1, 1)
        pump.add(unix_r.fileno(), 2, 2)
        # the kernel turns receive stamps on for the whole system lazily: when no socket had asked for them, the
        # first to ask schedules a work item, and a segment that arrives before it ran carries no stamp (a CI run
        # sent within that moment). A fresh pump in a quiet system: first wait for a stamped read.
        deadline = time.monotonic() + 5
        while not pump.stats["stamped_reads"] and time.monotonic() < deadline:
            tcp_w.sendall(ws(1, push(1, 1)))
            drain(pump, want_records=1)
            time.sleep(0.01)
        before = pump.stats
        assert before["stamped_reads"], "no read of a loopback TCP socket was stamped by the kernel in 5 s"
        pump.take_unstamped()
        sent = time.time_ns()
        tcp_w.sendall(ws(1, push(1, 1)))
        unix_w.sendall(ws(1, push(1, 2)))
        time.sleep(0.2)  # the bytes wait, unread: what the stamps are about
        read = time.time_ns()
        _, taken = drain(pump, want_records=2)
        assert taken is not None
        _, _, slots, times = taken
        at = dict(zip(np.frombuffer(slots, np.int64).tolist(), np.frombuffer(times, np.int64).tolist(), strict=True))
        assert abs(at[1] - sent) < 20_000_000, (at[1] - sent) / 1e6  # arrived when sent: loopback
        assert at[2] >= read, (at[2] - read) / 1e6  # stamped when read, 200 ms later
        assert pump.take_unstamped() == 1 and pump.take_unstamped() == 0
        stats = pump.stats
        assert (stats["reads"] - before["reads"], stats["stamped_reads"] - before["stamped_reads"]) == (2, 1)
        assert abs(stats["clock_skew_ns"]) < 1_000_000  # an unshifted process clock is the kernel's
    finally:
        for sock in (srv, tcp_w, tcp_r, unix_r, unix_w):
            sock.close()


def test_a_pass_stops_at_its_limits_and_the_next_pass_loses_nothing(pump: Any, pairs: Any) -> None:
    n = 50
    for i in range(n):
        a, b = pair(pairs)
        pump.add(a.fileno(), i, i)
        b.sendall(ws(1, push(1, 1)) * 3)
    pump.process(1 << 20, 10)
    assert pump.stats["reads"] == 10 and pump.pending == 30  # 10 sockets read, 3 frames each
    assert pump.more  # the caller is told not to wait: no new byte will announce the other 40 (edge-triggered)
    pump.process(31, 1 << 20)
    assert pump.pending == 33 and pump.more  # a pass ends once max_frames records are pending: after one more read
    events = pump.process(1 << 20, 1 << 20)  # no byte sent since: the sockets left over are read all the same
    assert not events and pump.pending == 3 * n and not pump.more and pump.pass_reads == n - 11
    taken = pump.take()
    assert len(records(taken)) == 3 * n
    assert sorted(s for _, s in records(taken)) == sorted(list(range(n)) * 3)


def test_a_socket_with_more_than_a_pass_reads_is_read_on_without_new_bytes(pump: Any) -> None:
    """A socket holding more than a pass reads of one socket (4 reads of 64 KiB) is read on in the next pass,
    though no byte arrives in between to announce it again (epoll is edge-triggered): nothing waits for the next
    message, and the order holds."""
    srv = socket.create_server(("127.0.0.1", 0))
    cli = socket.socket()
    cli.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # room for all of it before any read
    cli.connect(srv.getsockname())
    peer, _ = srv.accept()
    try:
        cli.setblocking(False)
        pump.add(cli.fileno(), 1, 7)
        frames = [ws(1, push(1, seq, "b" * 1000)) for seq in range(1, 401)]  # ~420 KB
        wire = b"".join(frames)
        peer.sendall(wire)

        def queued() -> int:
            return int.from_bytes(fcntl.ioctl(cli.fileno(), termios.FIONREAD, b"\0\0\0\0"), "little")
        deadline = time.monotonic() + 5
        while queued() < len(wire) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert queued() == len(wire)
        pump.process(1 << 20, 1 << 20)
        assert pump.pass_reads == 4 and pump.more and 0 < pump.pending < 400
        while pump.more:
            pump.process(1 << 20, 1 << 20)
        assert records(pump.take()) == [(push(1, seq, "b" * 1000), 7) for seq in range(1, 401)]
    finally:
        for sock in (cli, peer, srv):
            sock.close()


def test_a_frame_and_the_end_behind_it_are_read_in_one_pass(pump: Any, pairs: Any) -> None:
    """Bytes and the peer's end that came before a pass are one edge: the pass reads the frame and goes on to
    the end (EPOLLRDHUP), where a read shorter than asked would otherwise leave the end unreported."""
    a, b = pair(pairs)
    pump.add(a.fileno(), 3, 2)
    b.sendall(ws(1, push(1, 1)))
    b.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + 5
    events: list[Any] = []
    while not pump.pending and time.monotonic() < deadline:
        events = pump.process(1 << 20, 1 << 20)
    assert pump.pending == 1 and [e[:3] for e in events] == [(1, 3, _pump.EOF)]
    assert pump.stats["connections"] == 0


def test_bad_arguments_are_refused(pump: Any) -> None:
    with pytest.raises(ValueError, match="max_frame_bytes"):
        _pump.Pump(PUSH_PREFIX, SEQ_KEY, 10)
    with pytest.raises(ValueError, match="prefix"):
        _pump.Pump(b"", SEQ_KEY, MAX)
    with pytest.raises(ValueError, match="descriptor"):
        pump.add(-1, 1, 1)
    with pytest.raises(OSError):
        pump.add(9999, 1, 1)  # not open
    pump.close()
    with pytest.raises(ValueError, match="closed"):
        pump.process(1, 1)
