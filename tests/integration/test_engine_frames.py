"""Integration: the receive engine against a hand-written WebSocket server on loopback — once the pump reads a
member's socket, what is not a push still reaches the right place: a WebSocket ping is answered with its pong, a
fragmented message is put together, a reply that starts like a push reaches its caller in order with the pushes
around it, the server's close code arrives and its close frame is echoed, and a masked frame or a stream that just
ends closes the member with a reason (no server of the project sends those, hence a server written here)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.engine import Engine, EngineClient
from drivers.ledger import Ledger
from reference_server import protocol
from tests.integration.conftest import pump_stats, pumped
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GID = 5
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(op: int, payload: bytes, fin: bool = True, mask: bool = False) -> bytes:
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | op])
    m = 0x80 if mask else 0
    head += bytes([m | n]) if n < 126 else bytes([m | 126]) + struct.pack(">H", n)
    return head + (b"\0\0\0\0" if mask else b"") + payload


def push(seq: int) -> bytes:
    return protocol.encode_push(protocol.Message(GID, seq, 9, protocol.now_us(), protocol.now_us(), f"m{seq}"))


class Peer:
    """The server's end of one connection: reads the client's (masked) frames."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_frame(self) -> tuple[int, bytes]:
        def need(n: int) -> bytes:
            while len(self.buf) < n:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise EOFError
                self.buf += chunk
            out, self.buf = self.buf[:n], self.buf[n:]
            return out

        b0, b1 = need(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", need(2))[0]
        key = need(4) if b1 & 0x80 else b"\0\0\0\0"
        data = bytes(c ^ key[i % 4] for i, c in enumerate(need(n)))
        return b0 & 0x0F, data

    def read_until(self, op: int) -> bytes:
        while True:
            got, data = self.read_frame()
            if got == op:
                return data


@pytest.fixture
def ws_server() -> Iterator[tuple[str, Callable[[], Peer]]]:
    """A WebSocket server that upgrades each connection and greets it with a hello of group GID; accept() hands
    the test the next connection."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(10)
    peers: list[Peer] = []

    def accept() -> Peer:
        sock, _ = srv.accept()
        sock.settimeout(10)
        req = b""
        while b"\r\n\r\n" not in req:
            req += sock.recv(4096)
        m = re.search(rb"Sec-WebSocket-Key: *(\S+)", req, re.IGNORECASE)
        assert m is not None
        accept_key = base64.b64encode(hashlib.sha1(m.group(1) + _GUID).digest())
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept_key + b"\r\n\r\n")
        peer = Peer(sock)
        hello = protocol.encode_hello(1, [protocol.GroupState(GID, 0, 0, 0)], max_body_chars=100,
                                      max_frame_bytes=65536, idle_timeout_s=60, send_rate=0, send_burst=0)
        peer.send(frame(1, hello))
        peers.append(peer)
        return peer

    yield f"ws://127.0.0.1:{srv.getsockname()[1]}/", accept
    for p in peers:
        with contextlib.suppress(OSError):
            p.sock.close()
    srv.close()


@pytest.fixture
def engine() -> Iterator[Engine]:
    eng = Engine(Ledger())
    yield eng
    eng.stop()


def connect(url: str, accept: Callable[[], Peer], engine: Engine,
            frames: list[dict[str, Any]]) -> tuple[EngineClient, Peer]:
    rl = engine.ledger.receiver(1)
    client = EngineClient(url, 1, "t", receiver=rl, engine=engine, on_hello=rl.on_connect, heartbeat_s=None,
                          on_frame=frames.append)
    peer: list[Peer] = []
    t = threading.Thread(target=lambda: peer.append(accept()))
    t.start()
    client.connect()
    t.join(10)
    wait_until(lambda: pumped(engine) == 1, 5, "the pump to read the member's socket")
    return client, peer[0]


def test_pings_fragments_replies_and_the_servers_close_on_a_pumped_connection(
        ws_server: tuple[str, Callable[[], Peer]], engine: Engine) -> None:
    url, accept = ws_server
    replies: list[dict[str, Any]] = []
    client, peer = connect(url, accept, engine, replies)
    ledger = engine.ledger
    peer.send(frame(9, b"are you there"))
    assert peer.read_until(10) == b"are you there"  # the pong carries the ping's payload
    whole = push(2)
    reply = protocol.encode_read_reply(None, protocol.GroupState(GID, 3, 3, 0))  # starts like a push
    peer.send(frame(1, push(1)) + frame(1, whole[:10], fin=False) + frame(9, b"mid") + frame(0, whole[10:])
              + frame(1, reply) + frame(1, push(3)))
    assert peer.read_until(10) == b"mid"  # a ping between fragments is answered too
    wait_until(lambda: ledger.receivers[1].groups[GID].last == 3 and replies, 5, "three pushes and the reply")
    assert [r["op"] for r in replies] == ["read"]
    assert ledger.delivered == 3 and ledger.counts["duplicated"] == ledger.counts["reordered"] == 0
    peer.send(frame(8, struct.pack(">H", 4001) + b"bye"))
    assert peer.read_until(8)[:2] == struct.pack(">H", 4001)  # echoed
    wait_until(lambda: client.closed, 5, "the member to see the close")
    assert (client.close_code, client.close_reason) == (4001, "bye")
    assert pumped(engine) == 0


def test_a_late_engine_thread_does_not_add_its_lateness_to_the_latency(
        ws_server: tuple[str, Callable[[], Peer]], engine: Engine) -> None:
    """The pump stamps each read with when the kernel received the bytes (SO_TIMESTAMPNS), not when the engine's
    thread got round to reading them: pushes that arrive while the thread is stalled for 300 ms read a latency of
    about the wire's, and the stall shows only as the loop's lag. (Stamped when read, they read ≥ 300 ms.)"""
    url, accept = ws_server
    client, peer = connect(url, accept, engine, [])
    stalled, stall_s = threading.Event(), 0.3

    def stall() -> None:
        stalled.set()
        time.sleep(stall_s)  # the engine thread itself, busy: nothing of it reads until this returns

    engine._call(stall)
    assert stalled.wait(5)
    for seq in (1, 2, 3):
        peer.send(frame(1, push(seq)))
    ledger = engine.ledger
    wait_until(lambda: ledger.delivered == 3, 5, "the three pushes")
    h = ledger.latency.h
    print(f"latency max {h.get_max_value() / 1000:.3f} ms over {h.get_total_count()} pushes (stall {stall_s} s)")
    assert h.get_total_count() == 3
    assert h.get_max_value() < 100_000, "the stall is in the latency: the reads were stamped when read"
    stats = pump_stats(engine)
    assert stats["stamped_reads"] >= 1 and stats["stamped_reads"] == stats["reads"], stats
    client.close()


@pytest.mark.parametrize(("wire", "reason"), [
    (frame(1, b'{"op":"pong"}', mask=True), "protocol error: a masked frame from the server"),
    (b"", "connection ended without a close frame"),
])
def test_a_masked_frame_or_a_stream_that_just_ends_closes_the_member_with_a_reason(
        ws_server: tuple[str, Callable[[], Peer]], engine: Engine, wire: bytes, reason: str) -> None:
    url, accept = ws_server
    client, peer = connect(url, accept, engine, [])
    peer.send(frame(1, push(1)) + wire)
    if not wire:
        peer.sock.shutdown(socket.SHUT_WR)
    wait_until(lambda: client.closed, 5, "the member to be closed")
    assert client.close_code == 1006 and client.close_reason == reason
    assert engine.ledger.delivered == 1  # the push before it counted
    assert pumped(engine) == 0


def test_the_batch_engine_without_its_pump_stops_locust_saying_why() -> None:
    """Where drivers/_pump.c is not built (not Linux, or installed without compiling), --receive-engine batch stops
    at the command line with what to do; the default is then the client engine."""
    hide = "import sys; sys.modules['drivers._pump'] = None; from locust.main import main; sys.exit(main())"
    base = [sys.executable, "-c", hide, "-f", str(REPO / "scenarios" / "smoke.py"), "--headless", "-u", "1", "-t",
            "1s", "--host", "ws://127.0.0.1:9"]
    proc = subprocess.run([*base, "--receive-engine", "batch"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "is not built" in proc.stderr and "use --receive-engine client" in proc.stderr
    out = subprocess.run([sys.executable, "-c", "import sys; sys.modules['drivers._pump'] = None; "
                          "import drivers.engine as e; print(e.DEFAULT_RECEIVE_ENGINE)"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "client", out.stderr[-2000:]
