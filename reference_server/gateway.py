"""The WebSocket edge on picows: handshake auth, per-connection bounded send queues, coalesced writes.

Every server → client frame is built once (``frames.ws_frame``) and its bytes are appended to each receiving
connection's queue; one flush per event-loop turn writes each dirty connection's queue with a single
``transport.write`` — a burst of k messages costs one write per receiver, not k. A connection whose
transport stops draining (``pause_writing``) keeps queueing; past ``max_send_queue_bytes`` it is closed
with 4001 (slow consumer) and resumes later with sync. Frames in are handed to the logic layer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

from reference_server import protocol
from reference_server.frames import close_frame, ws_frame
from reference_server.protocol import CloseCode

if TYPE_CHECKING:
    from reference_server.config import ServerConfig
    from reference_server.metrics import ServerMetrics
    from reference_server.roles import Logic

log = logging.getLogger("chat.gateway")


class Conn(WSListener):
    """One client connection (``roles.Client`` to the logic, ``roles.Receiver`` to the local fan-out).
    ``queue`` is the only way bytes go to the client."""

    __slots__ = ("active", "closing", "gw", "idle_ticks", "paused", "pending", "pending_bytes", "raw", "transport",
                 "uid")

    def __init__(self, gw: Gateway, uid: int) -> None:
        super().__init__()
        self.gw = gw
        self.uid = uid
        self.transport: WSTransport | None = None
        self.raw: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.paused = False
        self.closing = False
        self.active = True  # set by every inbound frame; cleared by the idle sweeper
        self.idle_ticks = 0

    # -- picows callbacks
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.raw = transport.underlying_transport
        self.gw.attach(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        self.active = True
        t = frame.msg_type
        if t is WSMsgType.TEXT and frame.fin:
            self.gw.logic.handle(self, frame.get_payload_as_bytes())
        elif t is WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())
        elif t is WSMsgType.CLOSE:
            self.flush_now()
            code = frame.get_close_code()
            transport.send_close(code if code.value else WSCloseCode.OK)  # no status given: answer 1000
            transport.disconnect()
        elif t is not WSMsgType.PONG:
            self.gw.logic.reject_frame(self, "binary and fragmented frames are not supported")

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closing = True
        self.pending.clear()
        self.pending_bytes = 0
        self.gw.detach(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.pending and not self.closing:
            self.gw.dirty.append(self)
            self.gw.kick()

    # -- sending
    def queue(self, frame: bytes) -> None:
        """Queue one built frame; the flush at the end of this loop turn writes it."""
        if not self.pending or self.paused:  # a paused connection is re-checked against its bound each time
            self.gw.dirty.append(self)
        self.pending.append(frame)
        self.pending_bytes += len(frame)

    def send(self, payload: bytes) -> None:
        """Queue one reply and make sure a flush follows."""
        if not self.closing:
            self.queue(ws_frame(payload))
            self.gw.kick()

    def flush_now(self) -> None:
        if self.pending and self.raw is not None and not self.closing:
            self.raw.write(self.pending[0] if len(self.pending) == 1 else b"".join(self.pending))
        self.pending.clear()
        self.pending_bytes = 0

    def close(self, code: CloseCode, reason: str, *, flush: bool = True) -> None:
        """Send a close frame (after what is queued, if flush) and disconnect."""
        if self.closing or self.raw is None or self.transport is None:
            return
        if flush:
            self.flush_now()
        self.closing = True
        self.raw.write(close_frame(code, reason))
        self.transport.disconnect(graceful=True)
        # a consumer that never drains would hold the socket until TCP gives up: abort it
        self.gw.loop.call_later(2.0, self.transport.disconnect, False)


class Gateway:
    """Holds the connections of this process and the local online index (uid → Conn): the edge of the embedded
    server (``roles.Sockets`` to its local fan-out) and of each cluster gateway, in front of a ``roles.Logic``."""

    def __init__(self, config: ServerConfig, metrics: ServerMetrics, logic: Logic,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.metrics = metrics
        self.logic = logic
        self.loop = loop
        self.online: dict[int, Conn] = {}
        self.dirty: list[Conn] = []
        self._flush_scheduled = False
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.accepting = True
        metrics.add_gauges("chat_connections", "Open client connections", lambda: len(self.online))
        metrics.add_gauges("chat_send_queue_bytes", "Bytes queued to clients: ours plus the transports' buffers",
                           self.queued_bytes)

    # -- lifecycle
    async def start(self) -> None:
        c = self.config
        self._server = await ws_create_server(
            self._route, c.host, c.port, max_frame_size=c.max_frame_bytes, enable_auto_pong=False,
            websocket_handshake_timeout=5, logger_name="chat.picows", backlog=4096,
        )
        self._schedule_sweep()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def stop_accepting(self) -> None:
        self.accepting = False
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()

    async def close_all(self, code: CloseCode, reason: str, grace_s: float) -> int:
        """Write what is queued, close every connection, and wait up to grace_s for them to go; how many."""
        self.flush()
        n = len(self.online)
        for conn in list(self.online.values()):
            conn.close(code, reason)
        deadline = time.monotonic() + grace_s
        while self.online and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return n

    # -- handshake
    def _route(self, request: WSUpgradeRequest) -> Any:
        def refuse(status: int, why: str) -> WSUpgradeResponseWithListener:
            self.metrics.auth_refusals.labels(str(status)).inc()
            return WSUpgradeResponseWithListener(WSUpgradeResponse.create_error_response(status, why.encode()), None)

        target = urlsplit(request.path.decode("latin-1"))
        if target.path != protocol.WS_PATH:
            return refuse(404, f"no endpoint {target.path}; connect to {protocol.WS_PATH}")
        if not self.accepting:
            return refuse(503, "server is shutting down")
        query = parse_qs(target.query)
        uid_s, token = query.get("uid", [""])[0], query.get("token", [""])[0]
        if not (uid_s.isascii() and uid_s.isdigit()) or not token:
            return refuse(401, "uid and token query parameters are required")
        uid = int(uid_s)
        if uid > protocol.MAX_ID or not protocol.verify_token(self.config.secret, uid, token):
            return refuse(401, "invalid token")
        if not self.logic.user_exists(uid):
            return refuse(403, f"user {uid} does not exist")
        return Conn(self, uid)

    def attach(self, conn: Conn) -> None:
        old = self.online.get(conn.uid)
        self.online[conn.uid] = conn
        if old is not None:
            old.close(CloseCode.REPLACED, "connected again elsewhere")
        self.logic.on_connect(conn)

    def detach(self, conn: Conn) -> None:
        if self.online.get(conn.uid) is conn:
            del self.online[conn.uid]
            self.logic.on_disconnect(conn)

    # -- writing
    def kick(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        dirty, self.dirty = self.dirty, []
        limit = self.config.max_send_queue_bytes
        for conn in dirty:
            if conn.closing or not conn.pending:
                continue
            if conn.paused:
                if conn.pending_bytes > limit:
                    self.metrics.slow_consumer_disconnects.inc()
                    conn.close(CloseCode.SLOW_CONSUMER, "send queue over its bound; resume with sync", flush=False)
                continue  # resume_writing puts it back on the dirty list
            pending, raw = conn.pending, conn.raw
            assert raw is not None  # a connection is attached, so queued to, only once connected
            raw.write(pending[0] if len(pending) == 1 else b"".join(pending))
            pending.clear()
            conn.pending_bytes = 0
        self.logic.after_flush()

    def queued_bytes(self) -> float:
        total = 0
        for conn in self.online.values():
            total += conn.pending_bytes
            if conn.raw is not None:
                total += conn.raw.get_write_buffer_size()
        return float(total)

    # -- idle sweep: a connection with no inbound frame for idle_timeout is closed with 4000
    def _schedule_sweep(self) -> None:
        self._sweeper = self.loop.call_later(self.config.idle_timeout_s / 3, self._sweep)

    def _sweep(self) -> None:
        for conn in list(self.online.values()):
            if conn.active:
                conn.active = False
                conn.idle_ticks = 0
            else:
                conn.idle_ticks += 1
                if conn.idle_ticks >= 3:
                    self.metrics.idle_disconnects.inc()
                    conn.close(CloseCode.IDLE_TIMEOUT, f"nothing received for {self.config.idle_timeout_s:g} s")
        self._schedule_sweep()
