"""The receive engine: every member connection of a generator process in ONE asyncio event loop (uvloop + picows)
running in a real OS thread; once connected, a member's socket is read by a compiled pump and its pushes reach the
ledger in batches.

Why. Per delivered push the swarm's :class:`drivers.client.ChatClient` path pays a gevent socket read, its own
frame cutting, a full ``orjson.loads`` and the per-frame ledger with a pure-Python HDR record; a generator then
costs more per delivery than the server it measures (issue 15). picows on uvloop takes most of that away, but still
runs Python per frame (uvloop's buffer protocol, picows' callback, ours). So here picows connects, does the
handshake and writes; at the first frame after which picows holds no unread byte (normally the ``hello``), the
socket's reading moves to :class:`drivers._pump.Pump` (drivers/_pump.c): one epoll set of every such socket, read
with the GIL released, frames cut in C, each push (a final text frame laid out as
:func:`reference_server.protocol.encode_push` writes it) kept as (message, slot, receive time) with each distinct
payload once; while pushes flow the engine reads the pump every millisecond rather than at each arrival (the
receive times are the kernel's, so nothing it measures moves; see Engine._pass). Every other frame (a reply, a
pong, a close, a fragment, a ping), the end of a stream and a protocol
error come back to the engine thread as events, in order: before a frame the pushes read ahead of it are handed
over if one of them is its connection's (before an end or an error, all of them), so a connection's reply comes
after the pushes that preceded it on the wire. Connections without a ledger
(scripting) stay with picows, frame by frame.

Every ``flush_frames`` pushes or ``flush_s`` (and before another frame of a connection whose pushes are pending, a
reply: so it comes after them; before the end of any connection) the pump's records go to the swarm's thread,
where :class:`drivers.batchledger.BatchLedger` applies them with the full ledger's result (order, holes,
duplicates, catch-up overlap, latency into HDR, fan-out parts, per-profile figures).

Threads. Locust runs on gevent; the engine thread is a real one (``gevent.monkey.get_original("_thread",
"start_new_thread")`` — under monkey-patching ``threading.Thread`` would start a greenlet) and never touches a
gevent primitive: it talks to the gevent side through a deque and a thread-safe ``async_`` watcher of the hub;
the gevent side talks to it through ``loop.call_soon_threadsafe``. Every module the engine thread uses is imported
before it starts (an import in that thread could deadlock on gevent's patched import lock). Without gevent
(plain scripts, tests) a real thread takes the gevent side's place. The pump reads and cuts with the GIL released,
so the swarm's thread (senders, the ledger, Locust) runs beside it instead of waiting its turn.

Everything the ledger owns stays on the swarm's thread: hello (``ReceiverLedger.on_connect``), batches, replies,
ends of connections arrive there in the order the engine saw them, so a reply (a sync page of a repair) is
handled after every push that came before it on the wire, as with ChatClient.

:class:`EngineClient` is the member's handle: a :class:`ChatClient` whose socket lives in the engine (the same
request methods, exceptions and callbacks: ``send``, ``send_nowait``, ``sync``, ``read``, ``unread``, ``close``,
``closed``, ``dead``, ``hello``, ``on_frame``, ``on_hello``). Heartbeats and dead-connection detection (a ping
unanswered for ``pong_timeout_s``) run in the engine. Without a ledger an EngineClient hands pushes to
``on_message`` one by one (scripting), like ChatClient.

The pump needs Linux (epoll); elsewhere :data:`DEFAULT_RECEIVE_ENGINE` is ``client`` and ``batch`` says why it
cannot run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final

import numpy as np
import orjson
import uvloop
from picows import WSError, WSFrame, WSHandshakeError, WSListener, WSMsgType, WSTransport, ws_connect

from drivers.batchledger import BatchLedger
from drivers.client import (
    ABNORMAL_CLOSURE,
    ChatClient,
    ChatClientError,
    ConnectionClosed,
    ConnectRefused,
    FrameCallback,
    RequestTimeout,
    ServerError,
)
from drivers.fast_receiver import PUSH_PREFIX, SEQ_KEY
from drivers.ledger import Frame, Ledger, ReceiverLedger
from reference_server import protocol

try:
    from drivers import _pump
except ImportError as exc:  # not Linux, or the package was installed without building its extension
    _pump = None  # type: ignore[assignment]
    PUMP_MISSING: str | None = f"the receive engine's pump (drivers/_pump.c, Linux only) is not built: {exc}"
else:
    PUMP_MISSING = None

__all__ = ["DEFAULT_RECEIVE_ENGINE", "PUMP_MISSING", "RECEIVE_ENGINES", "Engine", "EngineClient", "engine_for"]

#: how a swarm's members receive (``--receive-engine``): "batch", this engine; "client", a ChatClient greenlet each
RECEIVE_ENGINES: Final = ("batch", "client")
DEFAULT_RECEIVE_ENGINE: Final = "batch" if PUMP_MISSING is None else "client"

log = logging.getLogger(__name__)
# picows logs each connection at INFO: not here (the engine thread should not contend for the handlers' locks, which
# under gevent are gevent locks). An adapter, so picows makes no child logger per connection.
_picows_base = logging.getLogger("chatbench.engine.picows")
_picows_base.setLevel(logging.WARNING)
_picows_log = logging.LoggerAdapter(_picows_base, {})

# WebSocket opcodes (RFC 6455), as the pump reports them
_OP_CONTINUATION: Final = 0
_OP_TEXT: Final = 1
_OP_BINARY: Final = 2
_OP_CLOSE: Final = 8
_OP_PING: Final = 9
_TEXT: Final = WSMsgType.TEXT
_BINARY: Final = WSMsgType.BINARY
_CLOSE: Final = WSMsgType.CLOSE
_PONG: Final = WSMsgType.PONG
_PING: Final = protocol.encode_ping(None)  # the engine's heartbeat; the server's pong has no rid either
_NO_STATUS: Final = 1005
#: picows read buffer per connection until the pump takes it over (it grows when a frame needs more)
_READ_BUFFER: Final = 4096
#: the largest frame a member connection takes from the server (picows' own default limit)
MAX_FRAME_BYTES: Final = 10 * 1024 * 1024

asyncio.get_event_loop_policy()  # create the policy here, not in the engine thread (its lock may be gevent's)


asyncio.get_event_loop_policy()  # create the policy here, not in the engine thread (its lock may be gevent's)


def _gevent_patched() -> bool:
    mod = sys.modules.get("gevent.monkey")
    return mod is not None and bool(mod.is_module_patched("threading"))


def _real_thread(target: Callable[[], None], name: str) -> None:
    """Start an OS thread even under gevent's monkey-patching (threading.Thread would be a greenlet then)."""
    if _gevent_patched():
        from gevent import monkey

        monkey.get_original("_thread", "start_new_thread")(target, ())
    else:
        threading.Thread(target=target, name=name, daemon=True).start()


class _Waker:
    """Wakes the swarm's side from the engine thread: a gevent hub watcher, or a real thread."""

    def __init__(self, drain: Callable[[], bool]) -> None:
        self._drain = drain
        self._stopped = False
        self._yield: Callable[[], None] = lambda: None
        if _gevent_patched():
            import gevent
            import gevent.event

            self._yield = gevent.sleep  # let the other greenlets (senders, Locust's heartbeats) run between slices

            self._event: Any = gevent.event.Event()
            hub = gevent.get_hub()
            self._watcher = hub.loop.async_()
            self._watcher.ref = False
            self._watcher.start(self._event.set)
            self.send = self._watcher.send
            gevent.spawn(self._loop)
        else:
            self._event = threading.Event()
            self.send = self._event.set
            threading.Thread(target=self._loop, name="chat-engine-drain", daemon=True).start()

    def stop(self) -> None:
        self._stopped = True
        self._event.set()

    def _loop(self) -> None:
        event = self._event
        while not self._stopped:
            event.wait()
            event.clear()
            try:
                while self._drain():
                    self._yield()
            except Exception:  # never: every item is handled under its own guard
                log.exception("receive engine: draining failed")



class _Conn(WSListener):
    """One connection, engine-thread side. ``pumped``: its socket's descriptor while the pump reads it, else -1
    (picows reads it, every frame through Engine._frame)."""

    __slots__ = ("beat", "cid", "close_code", "close_reason", "dead", "engine", "fragments", "hello", "ledgered",
                 "pending_pong", "pings", "pong_after", "pumped", "slot", "transport")

    def __init__(self, engine: Engine, cid: int, slot: int, ledgered: bool) -> None:
        super().__init__()
        self.engine = engine
        self.cid = cid
        self.slot = slot
        self.ledgered = ledgered  # pushes go to the batch ledger (else one by one to the client)
        self.pumped = -1
        self.hello = False
        self.transport: WSTransport | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self.dead = False
        self.beat: asyncio.TimerHandle | None = None
        self.pings = 0  # heartbeat pings sent
        self.pong_after = 0  # pings sent when the latest pong came
        self.pending_pong = False
        self.fragments: list[bytes] = []

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        self.engine._frame(self, transport, frame)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.engine._disconnected(self)


class Engine:
    """The process's receive engine (see the module doc). ``ledger``: the Ledger its batches go to."""

    #: the engine loop's clock tick: batch sizes are checked this often
    TICK_S: Final = 0.01
    #: one pump pass reads at most this many sockets / keeps this many pushes before the loop's other work runs
    PASS_READS: Final = 2048
    PASS_FRAMES: Final = 65536
    #: while pushes flow, the pump is read every READ_QUANTUM_S (not at every socket's arrival); after IDLE_PASSES
    #: passes in a row that read nothing, the engine waits for the pump's descriptor again (see _pass)
    READ_QUANTUM_S: Final = 0.001
    IDLE_PASSES: Final = 100

    def __init__(self, ledger: Ledger, *, flush_s: float = 0.05, flush_frames: int = 4096,
                 switch_interval_s: float | None = None) -> None:
        if PUMP_MISSING is not None:
            raise RuntimeError(f"{PUMP_MISSING}; use --receive-engine client")
        self.ledger = ledger
        #: lower the process's GIL switch interval to this when the engine starts (None: leave it). Not done by
        #: default: on CPython 3.11 a 1 ms interval made pytest sessions end with "AST constructor recursion depth
        #: mismatch" about every other run when proxy threads logged tracebacks (the AST state is not thread-safe)
        self.switch_interval_s = switch_interval_s
        self.batch = BatchLedger(ledger)
        # a batch costs a fixed ~0.2 ms to apply beside its per-frame work: hand over a few thousand at a time
        # (the ledger sees a push at most flush_s late; its receive time is the kernel's, taken when it arrived)
        self.flush_s = flush_s
        self.flush_frames = flush_frames
        self._flushed_at = 0.0
        self._clients: dict[int, EngineClient] = {}  # cid -> handle (swarm side)
        self._cids = itertools.count(1)
        self._out: deque[tuple[Any, ...]] = deque()
        self._signalled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pump: Any = None  # drivers._pump.Pump, made in the engine's process when it starts
        self._stopping = False
        self._conns: dict[int, _Conn] = {}  # cid -> connection (engine thread)
        self._by_slot: dict[int, EngineClient] = {}  # batch-ledger slot -> handle (swarm side)
        self._tasks: set[asyncio.Task[None]] = set()
        self._waker: _Waker | None = None
        self._lag_ms = 0.0  # worst lateness of a probe (see probe()) since lag_ms() was last called
        #: reads the pump stamped when read, for want of the kernel's stamp (only grows; the engine thread adds)
        self.unstamped_reads = 0
        self._probe_w = -1
        self.batches_out = 0
        self._idle_passes = 0  # pump passes in a row that read nothing (engine thread)
        #: the engine reads the pump on its quantum (True) or waits for its descriptor (False); ``wakeups``: how
        #: many spells of polling began (a wait ended by bytes on a socket; a probe's stamp alone starts none).
        #: Engine thread; read elsewhere as figures.
        self.polling = False
        self.wakeups = 0
        self._pid = os.getpid()

    # ------------------------------------------------------------------------------------------------
    # the engine thread
    def _post(self, item: tuple[Any, ...]) -> None:
        self._out.append(item)
        if not self._signalled:
            self._signalled = True
            assert self._waker is not None
            self._waker.send()

    def _flush(self, upto: int = -1) -> None:
        """Hand the pump's first ``upto`` push records (-1: all) over to the swarm's side."""
        assert self._loop is not None
        self._flushed_at = self._loop.time()
        batch = self._pump.take(upto)
        if batch is not None:
            self.batches_out += 1
            self._post(("batch", *batch))

    def _readable(self) -> None:
        """The pump's descriptor is readable while the engine waits: read it, and if a socket had bytes, poll from
        now on (see _pass). A wake that read no socket — the lag probe's stamp, every 50 ms — leaves the engine
        waiting: a spell per probe would end by putting the descriptor back in the loop's epoll set, which makes
        the kernel walk every socket of the pump — at 10,000 sockets that was ~100 epoll_ctl calls a second and
        14 % of a core for an engine with nothing to read (2 % without)."""
        loop = self._loop
        assert loop is not None
        pump = self._pump
        try:
            self._pumped()
        finally:  # after a pass that raised too (as in _pass): what it left in the again list wakes no one
            if pump.more or pump.pass_reads:
                loop.remove_reader(pump.fileno())
                self._idle_passes = 0
                self.polling = True
                self.wakeups += 1
                self._next_pass(loop)

    def _pass(self) -> None:
        """One pump pass, then the next one: at once when the pump stopped at a limit, after READ_QUANTUM_S while
        it reads, and after IDLE_PASSES empty ones at the pump's descriptor's next readiness.

        Why a quantum. Read at each arrival, a socket of a paced fan-out (one frame per write) costs a wake-up, an
        epoll wait and a Python pass for ~4 frames; read every millisecond, a pass takes ~100 and the receive
        path's CPU per frame falls by about a quarter (README: the receive benchmark). The receive times stay the
        kernel's (the pump's stamps), so a push's latency does not move; what the quantum delays, by at most
        READ_QUANTUM_S, is the handling of replies (a send's ack, a sync page) and the lag probe, which says so.
        Idle, the engine waits for the descriptor. Putting it back in the loop's epoll set makes the kernel walk the
        pump's sockets twice (libuv first adds and removes a descriptor to check it can be polled), ~1 ms each at
        10,000: once per idle spell (see _readable for the probe's wakes)."""
        loop = self._loop
        assert loop is not None
        try:
            self._pumped()
        finally:  # an error (the pump's MemoryError) is the loop's to report; the passes go on
            self._next_pass(loop)

    def _next_pass(self, loop: asyncio.AbstractEventLoop) -> None:
        pump = self._pump
        if pump.more:
            loop.call_soon(self._pass)
            return
        self._idle_passes = 0 if pump.pass_reads else self._idle_passes + 1
        if self._idle_passes < self.IDLE_PASSES:
            loop.call_later(self.READ_QUANTUM_S, self._pass)
        else:
            self.polling = False
            loop.add_reader(pump.fileno(), self._readable)

    def _pumped(self) -> None:
        """Read what the pump has ready; handle its events in order."""
        pump = self._pump
        events = pump.process(self.PASS_FRAMES, self.PASS_READS)
        lag = pump.take_probe_ns()
        if lag:
            self._lag_ms = max(self._lag_ms, lag / 1e6)
        taken = 0
        for pos, cid, kind, opcode, fin, _code, data in events:
            conn = self._conns.get(cid)
            # the pushes read before this event, first — for a frame, only when its connection has one of them
            # (another connection's pushes may follow its reply: a reply per sent message would otherwise cut the
            # batches into one per message, and the ledger pays per batch)
            if pos > taken and (kind != _pump.FRAME or conn is None or pump.holds(conn.slot, pos - taken)):
                self._flush(pos - taken)
                taken = pos
            if conn is None or conn.transport is None:
                continue
            if kind == _pump.FRAME:
                assert isinstance(data, bytes)
                self._other(conn, conn.transport, opcode, bool(fin), data, False)
                continue
            conn.pumped = -1  # the pump dropped it: the end of the stream, or a protocol error
            if kind == _pump.ERROR and conn.close_code is None:
                conn.close_code = ABNORMAL_CLOSURE
                conn.close_reason = str(data)
            conn.transport.disconnect(graceful=False)
        if pump.pending >= self.flush_frames:
            self._flush()

    def _frame(self, conn: _Conn, transport: WSTransport, frame: WSFrame) -> None:
        """A frame picows read (before the pump took the connection over, or a connection without a ledger)."""
        try:
            self._other(conn, transport, frame.msg_type.value, bool(frame.fin), frame.get_payload_as_bytes(), True)
        finally:
            if conn.ledgered and conn.hello and frame.last_in_buffer and frame.tail_size == 0 \
                    and not transport.is_disconnected and conn.pumped < 0 and not self._stopping:
                self._adopt(conn, transport)

    def _adopt(self, conn: _Conn, transport: WSTransport) -> None:
        """picows holds no unread byte of this connection: the pump reads it from now on (picows still writes)."""
        under = transport.underlying_transport
        fd = under.get_extra_info("socket").fileno()
        under.pause_reading()
        self._pump.add(fd, conn.cid, conn.slot)
        conn.pumped = fd

    def _unpump(self, conn: _Conn) -> None:
        """The pump stops reading ``conn`` (before its descriptor is closed)."""
        if conn.pumped >= 0:
            self._pump.remove(conn.pumped, conn.cid)
            conn.pumped = -1

    def _disconnect(self, conn: _Conn, transport: WSTransport, graceful: bool = True) -> None:
        self._unpump(conn)
        transport.disconnect(graceful=graceful)

    def _emit(self, item: tuple[Any, ...], flush: bool) -> None:
        if flush:
            self._flush()  # the pushes read before the frame this item comes from go first
        self._post(item)

    def _other(self, conn: _Conn, transport: WSTransport, op: int, fin: bool, p: bytes, flush: bool) -> None:
        """Every frame that is not a push read by the pump (engine thread). ``flush``: hand the pump's records over
        before posting anything (False: the caller handed over those that came before this frame)."""
        if op == _OP_CLOSE:
            if conn.close_code is None:
                conn.close_code = int.from_bytes(p[:2], "big") if len(p) >= 2 else _NO_STATUS
                conn.close_reason = p[2:].decode("utf-8", "replace")
            with contextlib.suppress(Exception):
                if not transport.is_close_frame_sent:
                    transport.send(_CLOSE, p[:2])  # echo, as websocket-client does
                self._disconnect(conn, transport)
            return
        if op == _OP_PING:
            if conn.pumped >= 0:  # (picows answers the pings it reads itself)
                with contextlib.suppress(Exception):
                    transport.send(_PONG, p)
            return
        if op == _OP_CONTINUATION or (op in (_OP_TEXT, _OP_BINARY) and not fin):
            conn.fragments.append(p)
            if not fin:
                return
            p = b"".join(conn.fragments)
            conn.fragments.clear()
        elif op not in (_OP_TEXT, _OP_BINARY):
            return  # a pong to a WebSocket ping, or anything else without meaning here
        try:
            obj = orjson.loads(p)
        except orjson.JSONDecodeError as exc:
            self._emit(("error", conn.cid, exc), flush)
            return
        if not isinstance(obj, dict):
            self._emit(("error", conn.cid, ChatClientError(f"server frame is not an object: {p[:80]!r}")), flush)
            return
        op_ = obj.get("op")
        if not conn.hello:
            conn.hello = True
            if op_ == "hello":
                self._emit(("hello", conn.cid, obj), flush)
            else:
                err: ChatClientError = ServerError(str(obj.get("code")), str(obj.get("msg", "")), obj.get("rid")) \
                    if op_ == "error" else ChatClientError(f"expected a hello frame first, got {op_!r}")
                self._emit(("failed", conn.cid, err), flush)
                self._disconnect(conn, transport, graceful=False)
            return
        if op_ == "msg" and conn.ledgered:
            t_ns = time.time_ns()
            if flush:  # read by picows now, after the pump's pending records: after them
                self._pump.push(conn.slot, p, t_ns)
            else:  # put together from the pump's fragments: before the records read after its last fragment
                self._post(("batch", [p], np.zeros(1, np.int32), np.full(1, conn.slot, np.int64),
                            np.full(1, t_ns, np.int64)))
            return
        if op_ == "pong" and "rid" not in obj:
            conn.pending_pong = False
            conn.pong_after = conn.pings
            return
        self._emit(("frame", conn.cid, obj), flush)

    def _disconnected(self, conn: _Conn) -> None:
        if self._conns.get(conn.cid) is conn:
            del self._conns[conn.cid]
        if conn.beat is not None:
            conn.beat.cancel()
        self._unpump(conn)
        self._flush()
        code = conn.close_code if conn.close_code is not None else ABNORMAL_CLOSURE
        reason = conn.close_reason if conn.close_code is not None else "connection ended without a close frame"
        self._post(("closed", conn.cid, code, reason, conn.dead, conn.hello))

    # ------------------------------------------------------------------------------------------------
    # engine-thread commands (scheduled from the swarm side with _call)
    async def _open(self, cid: int, slot: int, url: str, timeout: float, heartbeat_s: float | None,
                    pong_timeout_s: float | None, ledgered: bool) -> None:
        conn = _Conn(self, cid, slot, ledgered)
        self._conns[cid] = conn
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await asyncio.wait_for(
                ws_connect(lambda: conn, url, websocket_handshake_timeout=timeout, logger_name=_picows_log,
                           enable_auto_pong=True, read_buffer_init_size=_READ_BUFFER, max_frame_size=MAX_FRAME_BYTES,
                           # uvloop's own sockets: aiofastnet (picows' default when installed) would connect a
                           # Python socket, which under gevent's monkey-patching is gevent's, in this thread
                           use_aiofastnet=False), timeout)
        except WSHandshakeError as exc:
            resp = exc.response
            err: BaseException = ConnectRefused(resp.status, exc.raw_body) if resp is not None \
                else ChatClientError(f"connect to {url} failed: {exc}")
        except TimeoutError:
            err = RequestTimeout("connect", timeout)
        except (OSError, WSError, ConnectionError) as exc:
            err = exc if isinstance(exc, OSError) else ChatClientError(f"connect to {url} failed: {exc}")
        except Exception as exc:
            err = ChatClientError(f"connect to {url} failed: {exc!r}")
        else:
            conn.transport = transport

            def no_hello() -> None:
                if not conn.hello and self._conns.get(cid) is conn:
                    conn.hello = True
                    self._post(("failed", cid, RequestTimeout("hello", timeout)))
                    self._disconnect(conn, transport, graceful=False)

            loop.call_later(timeout, no_hello)
            if heartbeat_s:
                conn.beat = loop.call_later(heartbeat_s, self._beat, conn, heartbeat_s, pong_timeout_s)
            return
        self._conns.pop(cid, None)
        conn.hello = True
        self._post(("failed", cid, err))
        self._post(("closed", cid, ABNORMAL_CLOSURE, str(err), False, False))

    def _beat(self, conn: _Conn, interval: float, pong_timeout_s: float | None) -> None:
        t = conn.transport
        if t is None or t.is_disconnected or self._conns.get(conn.cid) is not conn:
            return
        try:
            t.send(_TEXT, _PING)
        except Exception:
            return
        loop = asyncio.get_running_loop()
        conn.pings += 1
        if pong_timeout_s and not conn.pending_pong:  # the first ping without its pong: it must come in time
            conn.pending_pong = True
            loop.call_later(pong_timeout_s, self._check_pong, conn, conn.pings, pong_timeout_s)
        conn.beat = loop.call_later(interval, self._beat, conn, interval, pong_timeout_s)

    def _check_pong(self, conn: _Conn, ping: int, timeout: float) -> None:
        """Dead unless a pong came since ping number ``ping`` (pongs come in order: any one answers it)."""
        t = conn.transport
        if conn.pending_pong and t is not None and not t.is_disconnected and conn.pong_after < ping:
            conn.dead = True
            conn.close_code = ABNORMAL_CLOSURE
            conn.close_reason = f"dead connection: no pong within {timeout:g} s"
            self._disconnect(conn, t, graceful=False)

    def _send(self, cid: int, payloads: Sequence[bytes]) -> None:
        conn = self._conns.get(cid)
        t = None if conn is None else conn.transport
        if conn is None or t is None or t.is_disconnected:
            return  # the end of the connection is on its way to the swarm side and fails the requests
        try:
            for payload in payloads:
                t.send(_TEXT, payload)
        except Exception as exc:
            conn.close_code = ABNORMAL_CLOSURE
            conn.close_reason = f"send failed: {exc}"
            self._disconnect(conn, t, graceful=False)

    def _send_raw(self, cid: int, data: bytes, binary: bool) -> None:
        conn = self._conns.get(cid)
        if conn is not None and conn.transport is not None and not conn.transport.is_disconnected:
            conn.transport.send(_BINARY if binary else _TEXT, data)

    def _close(self, cid: int, code: int, reason: str, timeout: float) -> None:
        conn = self._conns.get(cid)
        t = None if conn is None else conn.transport
        if conn is None or t is None or t.is_disconnected:
            return
        try:
            t.send(_CLOSE, code.to_bytes(2, "big") + reason.encode())
        except Exception:
            self._disconnect(conn, t, graceful=False)
            return
        asyncio.get_running_loop().call_later(timeout, self._abort, cid)

    def _abort(self, cid: int) -> None:
        conn = self._conns.get(cid)
        if conn is not None and conn.transport is not None:
            self._disconnect(conn, conn.transport, graceful=False)

    def _tick(self) -> None:
        loop = self._loop
        assert loop is not None
        if self._stopping:
            self._flush()
            return
        now = loop.time()
        self.unstamped_reads += self._pump.take_unstamped()
        if self._pump.pending >= self.flush_frames or now - self._flushed_at >= self.flush_s:
            self._flush()
        loop.call_at(now + self.TICK_S, self._tick)

    def probe(self) -> None:
        """Swarm side: measure the engine's lateness as a push frame feels it. A stamp written to a pipe the pump
        reads like its sockets (in the same epoll set) waits behind the same ready sockets; its wait goes into
        lag_ms(). (A timer would measure a loop iteration instead.)"""
        if self._probe_w >= 0:
            with contextlib.suppress(BlockingIOError):  # a full pipe: the engine is far behind, seen at the next
                os.write(self._probe_w, time.monotonic_ns().to_bytes(8, "little"))

    # ------------------------------------------------------------------------------------------------
    # the swarm side
    def start(self) -> None:
        """Start the engine thread (once; a forked child starts its own)."""
        if self._loop is not None and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        if self.switch_interval_s is not None and sys.getswitchinterval() > self.switch_interval_s:
            sys.setswitchinterval(self.switch_interval_s)
        self._waker = _Waker(self._drain)
        loop = uvloop.new_event_loop()
        self._loop = loop
        pump = self._pump = _pump.Pump(PUSH_PREFIX, SEQ_KEY, MAX_FRAME_BYTES)
        probe_r, probe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        pump.add_probe(probe_r)
        self._probe_w = probe_w
        loop.add_reader(pump.fileno(), self._readable)

        def run() -> None:
            with contextlib.suppress(OSError), open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
                f.write("chat-engine")  # the OS thread's name (top -H, the receive benchmark's CPU per thread)
            asyncio.set_event_loop(loop)
            loop.call_soon(self._tick)
            loop.run_forever()
            loop.remove_reader(pump.fileno())
            loop.close()
            self._probe_w = -1
            pump.close()
            for fd in (probe_r, probe_w):
                os.close(fd)

        _real_thread(run, "chat-engine")

    def stop(self) -> None:
        """End the engine thread (its connections are dropped) and the swarm side's drain (tests; a process's
        engine otherwise lives as long as the process)."""
        loop = self._loop
        if loop is None or self._stopping:
            return
        self._stopping = True
        self._probe_w = -1  # no probe after this (probe() runs on this side): the engine thread closes the pipe

        def end() -> None:
            for conn in list(self._conns.values()):
                if conn.transport is not None:
                    self._disconnect(conn, conn.transport, graceful=False)
            loop.call_later(0.05, loop.stop)

        loop.call_soon_threadsafe(end)
        if self._waker is not None:
            self._waker.stop()

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        assert loop is not None, "Engine.start() first"
        loop.call_soon_threadsafe(fn, *args)

    def _spawn(self, coro: Callable[..., Any], *args: Any) -> None:
        """Run ``coro(*args)`` as a task of the engine loop (not run_coroutine_threadsafe: its future's lock would
        be gevent's)."""
        loop = self._loop
        assert loop is not None, "Engine.start() first"

        def start() -> None:
            task = loop.create_task(coro(*args))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        loop.call_soon_threadsafe(start)

    @property
    def running(self) -> bool:
        """The engine thread was started in this process (and not stopped)."""
        return self._loop is not None and self._pid == os.getpid() and not self._stopping

    def lag_ms(self) -> float:
        """The engine's worst lateness (ms) since the previous call, as :meth:`probe` measures it: how long a
        readable descriptor waited to be read — including, while pushes flow, up to READ_QUANTUM_S between passes
        (1 ms). The pump's receive times are the kernel's, so this lateness is not in them; it still delays what
        the engine writes (a send whose intended time has passed leaves this late, and its latency counts from the
        intended time; the quantum does not: a write wakes the loop) and what picows reads before the pump takes a
        socket over."""
        lag, self._lag_ms = self._lag_ms, 0.0
        return lag

    #: the swarm side handles the engine's items in slices of about this long (then other greenlets run), a batch
    #: at most APPLY_SLICE frames at a time (a burst's batch can hold 100,000s)
    DRAIN_SLICE_S: Final = 0.005
    APPLY_SLICE: Final = 16384

    def _drain(self) -> bool:
        """Swarm side: handle what the engine posted, in order, for about DRAIN_SLICE_S; True if items are left."""
        out = self._out
        self._signalled = False
        until = time.perf_counter() + self.DRAIN_SLICE_S
        while out:
            if time.perf_counter() > until:
                return True
            item = out.popleft()
            kind = item[0]
            try:
                if kind == "batch":
                    distinct, ids, slots, times = item[1], item[2], item[3], item[4]
                    if isinstance(ids, bytes):  # as the pump packed them
                        ids, slots, times = (np.frombuffer(ids, np.int32), np.frombuffer(slots, np.int64),
                                             np.frombuffer(times, np.int64))
                    n = self.APPLY_SLICE
                    if ids.size > n:  # apply a slice, the rest after the other greenlets ran
                        out.appendleft(("batch", distinct, ids[n:], slots[n:], times[n:]))
                        ids, slots, times = ids[:n], slots[:n], times[:n]
                    for slot, frame in self.batch.apply_ids(distinct, ids, slots, times, self._apply_error):
                        client = self._by_slot.get(slot)
                        if client is not None:
                            client._frame(frame)
                    continue
                client = self._clients.get(item[1])
                if client is None:
                    continue
                if kind == "frame":
                    client._frame(item[2])
                elif kind == "hello":
                    client._got_hello(item[2])
                elif kind == "closed":
                    del self._clients[item[1]]
                    client._ended(item[2], item[3], item[4], item[5])
                elif kind == "failed":
                    client._failed(item[2])
                elif kind == "error":
                    client._callback_error(item[2])
            except Exception as exc:
                log.exception("receive engine: handling %s failed", kind, exc_info=exc)
        return False

    def _apply_error(self, slot: int, exc: BaseException) -> None:
        client = self._by_slot.get(slot)
        if client is not None:
            client._callback_error(exc)

    def attach(self, client: EngineClient, receiver: ReceiverLedger | None) -> tuple[int, int]:
        """(connection id, batch-ledger slot or -1) for a new connection of ``client`` (swarm side)."""
        self.start()
        cid = next(self._cids)
        self._clients[cid] = client
        slot = -1
        if receiver is not None:
            slot = self.batch.register(receiver)
            self._by_slot[slot] = client
        return cid, slot

    def detach(self, slot: int) -> None:
        if slot >= 0:
            self.batch.release(slot)
            self._by_slot.pop(slot, None)


_engines: dict[int, Engine] = {}  # id(ledger) -> its engine, in this process
_scripting = Ledger()  # the ledger of the engine that holds connections without a receiver ledger


def engine_for(ledger: Ledger | None = None) -> Engine:
    """The process's engine for ``ledger`` (one per ledger; created on first use, started on the first connect);
    None: the engine of connections that have no receiver ledger."""
    ledger = _scripting if ledger is None else ledger
    eng = _engines.get(id(ledger))
    if eng is None or eng.ledger is not ledger or eng._pid != os.getpid():
        eng = _engines[id(ledger)] = Engine(ledger)
    return eng


class EngineClient(ChatClient):
    """A member's connection held by the receive engine (see the module doc).

    ``receiver``: the member's ReceiverLedger: pushes go to it in batches (``on_message`` is then not called);
    without one, every push goes to ``on_message`` (or ``on_frame``), one by one. ``ledger``/``engine``: which
    engine (default: the one of ``receiver.ledger``, or of a private Ledger).
    """

    def __init__(self, url: str, uid: int, token: str, *, receiver: ReceiverLedger | None = None,
                 engine: Engine | None = None, on_message: FrameCallback | None = None,
                 on_frame: FrameCallback | None = None, on_hello: FrameCallback | None = None,
                 request_timeout: float = 10.0, heartbeat_s: float | None = 25.0, connect_timeout: float = 10.0,
                 pong_timeout_s: float | None = None) -> None:
        super().__init__(url, uid, token, on_message=on_message, on_frame=on_frame, on_hello=on_hello,
                         request_timeout=request_timeout, heartbeat_s=heartbeat_s, connect_timeout=connect_timeout,
                         pong_timeout_s=pong_timeout_s)
        self.receiver = receiver
        self._engine = engine if engine is not None else engine_for(None if receiver is None else receiver.ledger)
        self._cid = 0
        self._slot = -1
        self._ready = threading.Event()
        self._ended_event = threading.Event()
        self._failure: BaseException | None = None
        self._connected = False

    # -- connection
    def connect(self) -> Frame:
        """Open the connection in the engine, wait for the ``hello`` and return it (ChatClient.connect's errors)."""
        if self._cid or self._closing:
            raise ChatClientError("connect() may be called once per ChatClient")
        eng = self._engine
        self._cid, self._slot = eng.attach(self, self.receiver)
        target = self.url + protocol.ws_query(self.uid, self.token)
        eng._spawn(eng._open, self._cid, self._slot, target, self.connect_timeout, self.heartbeat_s,
                   self.pong_timeout_s if self.heartbeat_s else None, self.receiver is not None)
        if not self._ready.wait(self.connect_timeout + 5.0):
            eng._call(eng._abort, self._cid)
            self._failure = RequestTimeout("connect", self.connect_timeout)
        if self._failure is not None:
            self._dropped = True
            raise self._failure
        assert self.hello is not None
        return self.hello

    def _got_hello(self, hello: Frame) -> None:
        self.hello = hello
        self._connected = True
        try:
            if self._on_hello is not None:  # before any push of this connection is applied
                self._on_hello(hello)
        finally:
            if self._slot >= 0:
                self._engine.batch.refresh(self._slot)
            self._ready.set()

    def _failed(self, exc: BaseException) -> None:
        if self._failure is None and not self._connected:
            self._failure = exc
        self._ready.set()

    def _ended(self, code: int, reason: str, dead: bool, had_hello: bool) -> None:
        """The engine's connection is gone (swarm side): as ChatClient's receive loop ending."""
        if dead:
            self.dead = True
        if self._failure is None and not self._connected:
            self._failure = ConnectionClosed(code, reason)
        self._set_close(code, reason)
        self._engine.detach(self._slot)
        self._slot = -1
        self._ready.set()
        self._end()
        self._ended_event.set()

    def _end(self) -> None:
        with self._lock:
            self._dropped = True
            pending = list(self._pending.items())
            self._pending.clear()
        self._stop.set()
        for rid, callback in pending:
            cb: Any = callback
            if hasattr(cb, "event") and hasattr(cb, "reply"):  # a blocking request's waiter: wake it empty
                cb.event.set()
                continue
            try:
                callback({"op": "error", "code": "connection_closed", "msg": "connection closed", "rid": rid})
            except Exception as exc:
                self._callback_error(exc)

    def _frame(self, frame: Frame) -> None:
        """A frame for this client that is not a push applied by the batch ledger (swarm side)."""
        try:
            if self._on_message is not None and frame.get("op") == "msg":
                self._on_message(frame)
            else:
                self._dispatch(frame)
        except Exception as exc:
            self._callback_error(exc)

    def close(self, code: int = protocol.CloseCode.NORMAL, reason: str = "") -> None:
        """Send a close frame, wait (up to request_timeout) for the end of the connection."""
        if not self._begin_close():
            return
        if not self._cid or self._dropped:
            self._dropped = True
            return
        eng = self._engine
        eng._call(eng._close, self._cid, int(code), reason, self.request_timeout)
        if not self._ended_event.wait(self.request_timeout + 1.0):
            eng._call(eng._abort, self._cid)
            self._ended_event.wait(self.request_timeout)

    def _shutdown_socket(self) -> None:
        if self._cid:
            self._engine._call(self._engine._abort, self._cid)

    # -- requests: ChatClient's, written through the engine
    def _start_requests(self, encodes: Sequence[Callable[[int], bytes]],
                        callbacks: Sequence[FrameCallback | None]) -> list[int]:
        if not self._cid or not self._connected:
            raise ChatClientError("not connected")
        rids, payloads = self._register(encodes, callbacks)
        self._engine._call(self._engine._send, self._cid, payloads)
        return rids

    def send_raw(self, data: str | bytes, *, binary: bool = False) -> None:
        if not self._cid or not self._connected:
            raise ChatClientError("not connected")
        if self.closed:
            raise ConnectionClosed(self.close_code, self.close_reason)
        self._engine._call(self._engine._send_raw, self._cid, data.encode() if isinstance(data, str) else data,
                           binary)
