"""The WebSocket edge on picows: handshake auth, per-connection bounded send queues, coalesced writes.

Every server → client frame is built once (``frames.ws_frame``) and its bytes are appended to each receiving
connection's queue; one flush per event-loop turn writes each dirty connection's queue with a single
``transport.write`` — a burst of k messages costs one write per receiver, not k. Frames in are handed to the
logic layer.

Bounded work and memory per connection:

* every reply (``send``) counts against ``max_send_queue_bytes`` at once, with what the transport still buffers,
  so a connection over it is closed with 4001 (slow consumer) before another of its frames is worked on; pushes
  (``queue``) count once its socket stops draining (``pause_writing``). A closed one is not read any more and
  resumes later with sync;
* one read of a connection's socket is worked on for at most ``SLICE_S``; the frames left of it wait in the
  connection's inbox (the socket is not read meanwhile) and are worked on in later loop turns, in turn with the
  other connections', so no one client holds the loop;
* once the server closes a connection, or the WebSocket library has sent a close frame (a frame over
  ``max_frame_bytes``, a protocol violation), nothing more of it reaches the logic.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from time import perf_counter
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

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
from reference_server.listen import ListeningSocket, connection_cap
from reference_server.protocol import CloseCode

if TYPE_CHECKING:
    from reference_server.config import ServerConfig
    from reference_server.metrics import ServerMetrics
    from reference_server.roles import Logic

log = logging.getLogger("chat.gateway")

_WS_VERSIONS = ("13", "8", "7")  # what the WebSocket library accepts


def _sendable_close(code: int) -> bool:
    """RFC 6455 7.4: the codes a close frame may carry (1004-1006 and 1015 are reserved, 1016-2999 unassigned)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999
#: the most time one read of a connection is worked on before the rest waits for a later loop turn (seconds)
SLICE_S = 0.002


_CLOSE_REASONS = {1002: "protocol_error", 1007: "invalid_utf8", 1009: "frame_too_big"}


class Violations(logging.Handler):
    """Client protocol violations are counted (``chat_protocol_violations_total{reason}``), not logged one by one:
    a hostile client must not fill the disk. At most one WARNING line per reason a minute says how many there were.

    It is also the WebSocket library's log handler (the library's logger is this process' ``chat.picows``, which
    does not propagate): the library's parser errors are client violations and are counted; everything else it
    logs goes on to the root logger's handlers as before."""

    INTERVAL_S = 60.0

    def __init__(self, metrics: ServerMetrics) -> None:
        super().__init__()
        self.metrics = metrics
        self._since: dict[str, tuple[float, int]] = {}  # reason -> (when last logged, count since)

    def count(self, reason: str) -> None:
        self.metrics.protocol_violations.labels(reason).inc()
        now = time.monotonic()
        at, n = self._since.get(reason, (-self.INTERVAL_S, 0))
        if now - at >= self.INTERVAL_S:
            log.warning("%d client protocol violation(s) of kind %s in the last %.0f s (counted in "
                        "chat_protocol_violations_total; logged at most once a minute)", n + 1, reason,
                        min(now - at, self.INTERVAL_S))
            self._since[reason] = (now, 0)
        else:
            self._since[reason] = (at, n + 1)

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, str) and record.msg.startswith("WS parser error"):
            try:
                code = int(record.args[0][0])  # type: ignore[index]  # ("...: %s", (close code, text))
            except (TypeError, ValueError, IndexError):
                code = 0
            self.count(_CLOSE_REASONS.get(code, f"close_{code}"))
            return
        logging.getLogger().handle(record)

    @classmethod
    def logger(cls, metrics: ServerMetrics) -> logging.Logger:
        """The library's logger for this process, its records through a fresh handler of this class."""
        lib = logging.getLogger("chat.picows")
        lib.propagate = False
        for h in [h for h in lib.handlers if isinstance(h, cls)]:
            lib.removeHandler(h)
        lib.addHandler(cls(metrics))
        if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
            lib.setLevel(logging.WARNING)  # it logs every connect and disconnect at INFO
        return lib


class Conn(WSListener):
    """One client connection (``roles.Client`` to the logic, ``roles.Receiver`` to the local fan-out).
    ``queue`` is the only way bytes go to the client."""

    __slots__ = ("active", "closing", "gw", "held", "idle_ticks", "inbox", "paused", "pending", "pending_bytes",
                 "raw", "slice_at", "transport", "uid")

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
        self.inbox: deque[bytes | None] | None = None  # frames waiting for a later loop turn (the socket is not read)
        self.slice_at = 0.0  # when work on the current read of the socket began (0: between reads)
        self.held = False  # waiting for the user's request budget to refill (a timer puts it back in turn)

    # -- picows callbacks
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.raw = transport.underlying_transport
        self.gw.connected += 1
        self.gw.attach(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self.closing or transport.is_close_frame_sent:
            return  # closing (a frame over the size limit, a protocol violation): nothing more reaches the logic
        self.active = True
        if frame.rsv1 or frame.rsv2 or frame.rsv3:  # no extension is negotiated, so no bit has a meaning
            self.gw.violation("rsv_bits")
            self.close(CloseCode.PROTOCOL_ERROR, "reserved bits set without a negotiated extension")
            return
        t = frame.msg_type
        if t is WSMsgType.TEXT and frame.fin:
            self.work(frame.get_payload_as_bytes())
        elif t is WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())
        elif t is WSMsgType.CLOSE:
            self.inbox = None
            self.flush_now()
            answer = frame.get_close_code()
            if frame.payload_size == 0:
                answer = WSCloseCode.OK  # no status given: answer 1000
            elif not _sendable_close(answer.value):  # no endpoint may send it (the library lets 0, 1006, 5000+ by)
                self.gw.violation("close_code")
                answer = WSCloseCode.PROTOCOL_ERROR
            transport.send_close(answer)
            transport.disconnect()
        elif t is not WSMsgType.PONG:
            self.work(None)
        if frame.last_in_buffer:
            self.slice_at = 0.0

    def work(self, payload: bytes | None) -> None:
        """Hand one frame to the logic now, or to the inbox: once this read has had its slice of the loop, or while
        the user's request budget is used up (None: a frame the edge cannot hand on, binary or fragmented)."""
        if self.inbox is not None:
            self.inbox.append(payload)
            return
        wait = self.gw.logic.budget_wait(self.uid)
        if not wait:
            now = perf_counter()
            if not self.slice_at:
                self.slice_at = now
            elif now - self.slice_at >= SLICE_S:
                wait = -1.0  # no wait, only the rest of this read's work in a later turn
        if wait:
            self.inbox = deque((payload,))
            assert self.raw is not None
            self.raw.pause_reading()
            if wait > 0:
                self.gw.hold(self, wait)
            else:
                self.gw.later(self)
            return
        self.hand_on(payload)

    def hand_on(self, payload: bytes | None) -> None:
        if payload is None:
            self.gw.logic.reject_frame(self, "binary and fragmented frames are not supported")
        else:
            self.gw.logic.handle(self, payload)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.gw.connected -= 1
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
        if not self.pending:
            self.gw.dirty.append(self)
        self.pending.append(frame)
        self.pending_bytes += len(frame)
        if self.paused and self.pending_bytes > self.gw.config.max_send_queue_bytes:
            self.overflow()  # the socket does not drain (a burst to one that does is written by this turn's flush)

    def send(self, payload: bytes) -> None:
        """Queue one reply and make sure a flush follows; counted with what the transport still buffers, so the
        connection is closed (4001) before another of its requests is worked on if they pass the bound."""
        if self.closing:
            return
        self.queue(ws_frame(payload))
        raw = self.raw
        if (not self.closing and raw is not None
                and self.pending_bytes + raw.get_write_buffer_size() > self.gw.config.max_send_queue_bytes):
            self.overflow()
        self.gw.kick()

    def overflow(self) -> None:
        """Over the send-queue bound: drop what is queued, stop reading, close with 4001."""
        if not self.closing:
            self.gw.metrics.slow_consumer_disconnects.inc()
            self.close(CloseCode.SLOW_CONSUMER, "send queue over its bound; resume with sync", flush=False)

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
        else:
            self.pending.clear()
            self.pending_bytes = 0
        self.closing = True
        self.inbox = None
        self.raw.pause_reading()
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
        self.waiting: deque[Conn] = deque()  # connections with frames in their inbox, worked on in turn
        self._drain_scheduled = False
        self._server: asyncio.Server | None = None
        self._port = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self.accepting = True
        self.violations = Violations(metrics)  # replaced by the library's log handler at start
        self.connected = 0  # connections between on_ws_connected and on_ws_disconnected
        self.max_connections = connection_cap(config.max_connections)
        metrics.add_gauges("chat_connections", "Open client connections", lambda: len(self.online))
        metrics.add_gauges("chat_send_queue_bytes", "Bytes queued to clients: ours plus the transports' buffers",
                           self.queued_bytes)

    # -- lifecycle
    async def start(self) -> None:
        c = self.config
        ws_log = Violations.logger(self.metrics)
        self.violations = next(h for h in ws_log.handlers if isinstance(h, Violations))
        self.max_connections = connection_cap(c.max_connections)
        sock = ListeningSocket.bind_to(c.host, c.port, self.loop)
        try:
            self._server = await ws_create_server(
                self._route, sock=sock, max_frame_size=c.max_frame_bytes, enable_auto_pong=False,
                websocket_handshake_timeout=5, logger_name=ws_log, backlog=4096,
            )
        except BaseException:
            sock.close()
            raise
        self._port = int(sock.getsockname()[1])
        resume = getattr(self._server, "_start_serving_one_listener", None)  # aiofastnet's: accept again
        if resume is not None:
            sock.resume = functools.partial(resume, sock)
        self._schedule_sweep()

    @property
    def port(self) -> int:
        """The port listened on (still known once the server stopped listening: /healthz asks while stopping)."""
        assert self._port, "not started"
        return self._port

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
        """Auth before the upgrade. Nothing in the request may raise here (the library would answer 500): every
        malformed part gets its 4xx."""

        def refuse(status: int, why: str) -> WSUpgradeResponseWithListener:
            self.metrics.auth_refusals.labels(str(status)).inc()
            body = why.encode("utf-8", "backslashreplace")
            return WSUpgradeResponseWithListener(WSUpgradeResponse.create_error_response(status, body), None)

        # the request target in origin form, taken apart by hand (urlsplit raises on an authority-like "//[")
        path, _, query = request.path.decode("latin-1").partition("?")
        if path != protocol.WS_PATH:
            return refuse(404, f"no endpoint {path[:100]}; connect to {protocol.WS_PATH}")
        version = request.headers.get("sec-websocket-version")
        if version not in _WS_VERSIONS:  # checked here: the library's own refusal echoes it and fails on non-ASCII
            return refuse(400, "Sec-WebSocket-Version must be 13")
        if not self.accepting:
            return refuse(503, "server is shutting down")
        if self.connected >= self.max_connections:
            return refuse(503, f"server is at its connection limit ({self.max_connections}); retry later")
        params = parse_qs(query.partition("#")[0])
        uid_s, token = params.get("uid", [""])[0], params.get("token", [""])[0]
        if not (uid_s.isascii() and uid_s.isdigit()) or not token:
            return refuse(401, "uid and token query parameters are required")
        uid = protocol.parse_id(uid_s)
        if uid is None or not protocol.verify_token(self.config.secret, uid, token):
            return refuse(401, "invalid token")
        if not self.logic.user_exists(uid):
            return refuse(403, f"user {uid} does not exist")
        if not self.logic.admits(uid):
            return refuse(429, f"user {uid} is over its request budget; retry later")
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
        for conn in dirty:
            if conn.closing or not conn.pending or conn.paused:
                continue  # resume_writing puts a paused one back on the dirty list
            pending, raw = conn.pending, conn.raw
            assert raw is not None  # a connection is attached, so queued to, only once connected
            raw.write(pending[0] if len(pending) == 1 else b"".join(pending))
            pending.clear()
            conn.pending_bytes = 0
        self.logic.after_flush()

    # -- inbound work, a slice per connection per loop turn
    def later(self, conn: Conn) -> None:
        """conn's inbox has frames: work on them in later loop turns, in turn with the other waiting ones."""
        self.waiting.append(conn)
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self.loop.call_soon(self._drain)

    def hold(self, conn: Conn, wait: float) -> None:
        """conn's user has no request budget left: its inbox waits ``wait`` s before it is worked on again."""
        conn.held = True
        self.loop.call_later(wait, self._unhold, conn)

    def _unhold(self, conn: Conn) -> None:
        conn.held = False
        if conn.inbox is not None and not conn.closing:
            self.later(conn)

    def _drain(self) -> None:
        """One slice of the loop (at least one frame) for the waiting connections, in turn; the rest next turn."""
        self._drain_scheduled = False
        waiting, budget_wait = self.waiting, self.logic.budget_wait
        start = perf_counter()
        while waiting:
            conn = waiting.popleft()
            inbox = conn.inbox
            if inbox is None or conn.closing or conn.held:
                continue
            while inbox and conn.inbox is inbox:
                wait = budget_wait(conn.uid)
                if wait:
                    self.hold(conn, wait)
                    break
                conn.hand_on(inbox.popleft())
                if perf_counter() - start >= SLICE_S:
                    break
            if conn.held:
                pass  # its timer puts it back
            elif inbox and conn.inbox is inbox:
                waiting.append(conn)
            elif conn.inbox is inbox:
                conn.inbox = None
                conn.slice_at = 0.0
                if conn.raw is not None and not conn.closing:
                    conn.raw.resume_reading()
            if perf_counter() - start >= SLICE_S:
                break
        if waiting and not self._drain_scheduled:
            # after a slice's pause: I/O and other callbacks run first, and the loop thread leaves the GIL to the
            # writer thread for a while (busy without a pause, it would starve every commit: a convoy)
            self._drain_scheduled = True
            self.loop.call_later(SLICE_S, self._drain)

    def violation(self, reason: str) -> None:
        """A client broke the WebSocket protocol (counted, not logged: hostile clients must not fill the disk)."""
        self.violations.count(reason)

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
