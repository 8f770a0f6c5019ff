"""FastReceiver: many receiving WebSocket connections in one process (asyncio + uvloop + picows), counted cheaply.

Built to hold a 10,000-member group's connections on one core and count push frames faster than the server
can produce them. Per frame the hot path is: copy the payload, test that it starts with ``{"gid":`` (the layout
of :func:`reference_server.protocol.encode_push`, checked when this module is imported), bump two counters.
On top of that, cheaply enough to keep up:

* the ``seq`` of the last frame of every socket read is cut out of the bytes (frames of one connection arrive in
  seq order, so that is the connection's max seq); a seq that does not increase counts as ``out_of_order``;
* every ``sample_every``-th push frame (over all connections) is parsed in full with orjson and checked: a
  ``msg`` object whose gid/seq match the bytes, ``from``/``cts``/``sts`` integers, ``body`` a string (and the
  gid the expected one, if given). A failure counts in ``bad_samples``;
* a push frame that does not match the byte layout is parsed in full and still counted (``slow_path_msgs``),
  so a protocol change costs speed, never correctness.

After a run, :meth:`FastReceiver.verify` checks every connection got exactly the expected number of frames and
the expected last seq, and reports lost/extra frames. The max-seq bookkeeping assumes each connection receives
one group's messages (the benchmark case); with several groups per connection only the counts are exact.

Use it as a library::

    rx = FastReceiver("ws://127.0.0.1:8765", expect_gid=1)
    await rx.connect_all(range(1, 10_001), secret)   # 500 handshakes in flight at a time
    ...                                              # someone sends M messages to group 1
    await rx.wait_for(10_000 * M, timeout=60)
    report = rx.verify(expected_per_connection=M, expected_max_seq=M)
    await rx.close_all()

One process is limited by its open-file limit (20,000 on the reference machines): use several processes,
each with its own FastReceiver, for more connections.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import orjson
from picows import WSCloseCode, WSError, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from reference_server import protocol

__all__ = [
    "PUSH_PREFIX",
    "SEQ_KEY",
    "ConnectReport",
    "DeliveryReport",
    "FastReceiver",
]

log = logging.getLogger(__name__)

#: Every ``msg`` push frame starts with PUSH_PREFIX <gid digits> SEQ_KEY (checked against protocol.encode_push at
#: import; the receive engine's pump tells a push by that layout).
PUSH_PREFIX: Final = b'{"gid":'
SEQ_KEY: Final = b',"seq":'
_SEQ_KEY_LEN: Final = len(SEQ_KEY)
_PREFIX_LEN: Final = len(PUSH_PREFIX)
_TEXT: Final = WSMsgType.TEXT
_CLOSE: Final = WSMsgType.CLOSE
_NEVER: Final = sys.maxsize
#: fds kept free for the event loop, the control pipe, logs, ...
FD_RESERVE: Final = 64


def _check_push_layout() -> None:
    """Fail loudly if encode_push no longer starts with ``{"gid":<gid>,"seq":<seq>,`` (the hot path needs it)."""
    for gid, seq in ((1, 1), (7, 123456), (protocol.MAX_ID, protocol.MAX_ID)):
        frame = protocol.encode_push(protocol.Message(gid, seq, 3, 4, 5, 'b"ody', (6,) if seq == 1 else None))
        expected = PUSH_PREFIX + str(gid).encode() + SEQ_KEY + str(seq).encode() + b","
        if not frame.startswith(expected) or _parse_seq(frame) != (gid, seq):
            raise RuntimeError(
                f"protocol.encode_push layout changed: {frame[:60]!r} does not start with {expected!r}; "
                "update drivers/fast_receiver.py"
            )
    # no other frame a listening receiver can get may look like a push
    others = [
        protocol.encode_hello(1, [protocol.GroupState(1, 2, 3, 4)], max_body_chars=1, max_frame_bytes=1,
                              idle_timeout_s=1.0, send_rate=1.0, send_burst=1),
        protocol.encode_ack(1, 1, 1, 1), protocol.encode_pong(1),
        protocol.encode_error(protocol.ErrorCode.BAD_JSON, "x", 1),
        protocol.encode_sync_page(1, 1, [], 0, False, 0), protocol.encode_delete_reply(1, 1, 1),
        protocol.encode_unread_reply(1, []),
    ]
    for other in others:
        if other.startswith(PUSH_PREFIX):
            raise RuntimeError(f"a non-push server frame starts with {PUSH_PREFIX!r}: {other[:60]!r}")
    # (the ``read`` reply does start with {"gid": ... ,"max": — it never reaches a receiver that only listens,
    # and _parse_seq rejects it because ,"seq": does not follow the gid)


def _parse_seq(payload: bytes) -> tuple[int, int] | None:
    """(gid, seq) cut from a payload that starts with PUSH_PREFIX; None if the layout does not match."""
    i = payload.find(SEQ_KEY, _PREFIX_LEN)
    if i < 0:
        return None
    j = payload.find(b",", i + _SEQ_KEY_LEN)
    try:
        return int(payload[_PREFIX_LEN:i]), int(payload[i + _SEQ_KEY_LEN:j])
    except ValueError:
        return None


_check_push_layout()


@dataclass(slots=True)
class ConnectReport:
    requested: int
    connected: int
    failed: int
    seconds: float
    retries: int
    errors: dict[str, int] = field(default_factory=dict)  # exception type / close reason -> count

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class DeliveryReport:
    """Result of :meth:`FastReceiver.verify`. ``ok`` only if every connection got exactly what was expected."""

    connections: int
    expected_per_connection: int
    expected_total: int
    received_total: int
    lost: int  # sum over connections of (expected - received) where short
    extra: int  # sum over connections of (received - expected) where over
    connections_short: int
    connections_over: int
    wrong_max_seq: int  # connections whose max seq differs from the expected one (when given)
    out_of_order: int
    samples: int
    bad_samples: int
    slow_path_msgs: int
    disconnected: int
    other_frames: int
    ok: bool
    examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        state = "complete" if self.ok else "INCOMPLETE"
        return (
            f"deliveries {state}: {self.received_total}/{self.expected_total} frames on {self.connections} "
            f"connections; lost {self.lost} ({self.connections_short} connections short), extra {self.extra} "
            f"({self.connections_over} over), wrong max seq {self.wrong_max_seq}, out of order {self.out_of_order}, "
            f"bad samples {self.bad_samples}/{self.samples}, disconnected {self.disconnected}"
        )


class _Conn(WSListener):
    """One receiving connection. The counters are plain attributes: read them, don't write them."""

    __slots__ = ("close_code", "frames", "hello", "hello_waiter", "max_seq", "rx", "transport", "uid")

    def __init__(self, rx: FastReceiver, uid: int) -> None:
        super().__init__()
        self.rx = rx
        self.uid = uid
        self.frames = 0  # push frames received
        self.max_seq = 0
        self.hello = False
        self.hello_waiter: asyncio.Future[None] | None = None
        self.close_code: int | None = None
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        payload = frame.get_payload_as_bytes()
        if payload.startswith(PUSH_PREFIX):
            self.frames += 1
            rx = self.rx
            n = rx.total + 1
            rx.total = n
            if frame.last_in_buffer or n % rx.sample_every == 0:
                rx._track(self, payload, n)
            if n >= rx._target:
                rx._reached()
        else:
            self.rx._slow_frame(self, transport, frame, payload)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.rx._disconnected(self)


class FastReceiver:
    """Holds many receiving connections on one event loop and counts the ``msg`` frames they get.

    Counters (all cumulative): ``total`` push frames over all connections, ``samples``/``bad_samples``,
    ``out_of_order``, ``slow_path_msgs``, ``other_frames`` (frames that are neither push nor hello),
    ``disconnected``. Per connection: frames and max seq (see :meth:`verify` and :meth:`per_connection`).
    """

    def __init__(
        self,
        url: str,
        *,
        expect_gid: int | None = None,
        sample_every: int = 997,
        read_buffer_size: int = 4096,
        handshake_timeout: float = 10.0,
    ) -> None:
        if sample_every < 1:
            raise ValueError("sample_every must be >= 1")
        self.url = url.rstrip("/")
        self.expect_gid = expect_gid
        self.sample_every = sample_every
        self.read_buffer_size = read_buffer_size
        self.handshake_timeout = handshake_timeout
        self.conns: dict[int, _Conn] = {}
        self.total = 0
        self.samples = 0
        self.bad_samples = 0
        self.out_of_order = 0
        self.slow_path_msgs = 0
        self.other_frames = 0
        self.disconnected = 0
        self.examples: list[str] = []  # the first few problems, for humans
        self._target = _NEVER
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    # ----------------------------------------------------------------------------------------------
    # Hot-path helpers (called from _Conn.on_ws_frame)

    def _track(self, conn: _Conn, payload: bytes, n: int) -> None:
        parsed = _parse_seq(payload)
        if parsed is None:
            self._problem(f"uid {conn.uid}: push frame with unexpected layout {payload[:80]!r}")
            self.bad_samples += 1
            return
        gid, seq = parsed
        if n % self.sample_every == 0:
            self.samples += 1
            self._check_sample(conn, payload, gid, seq)
        if seq > conn.max_seq:
            conn.max_seq = seq
        else:
            self.out_of_order += 1
            self._problem(f"uid {conn.uid}: seq {seq} after {conn.max_seq} (duplicate or out of order)")

    def _check_sample(self, conn: _Conn, payload: bytes, gid: int, seq: int) -> None:
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            self.bad_samples += 1
            self._problem(f"uid {conn.uid}: sampled frame is not JSON ({exc}): {payload[:80]!r}")
            return
        why = _bad_msg(obj, self.expect_gid)
        if why is None and (obj["gid"] != gid or obj["seq"] != seq):
            why = f"bytes say gid {gid} seq {seq}, JSON says gid {obj['gid']} seq {obj['seq']}"
        if why is not None:
            self.bad_samples += 1
            self._problem(f"uid {conn.uid}: bad sampled msg frame: {why}: {payload[:80]!r}")

    def _slow_frame(self, conn: _Conn, transport: WSTransport, frame: WSFrame, payload: bytes) -> None:
        t = frame.msg_type
        if t is _TEXT:
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                obj = None
            op = obj.get("op") if isinstance(obj, dict) else None
            if op == "hello":
                conn.hello = True
                if conn.hello_waiter is not None and not conn.hello_waiter.done():
                    conn.hello_waiter.set_result(None)
                return
            if op == "msg" and isinstance(obj, dict):
                # a push frame whose encoding no longer matches the fast path: still counted, exactly
                self.slow_path_msgs += 1
                self.samples += 1
                why = _bad_msg(obj, self.expect_gid)
                if why is not None:
                    self.bad_samples += 1
                    self._problem(f"uid {conn.uid}: bad msg frame: {why}")
                    return
                conn.frames += 1
                seq = obj["seq"]
                if seq > conn.max_seq:
                    conn.max_seq = seq
                else:
                    self.out_of_order += 1
                self.total += 1
                if self.total >= self._target:
                    self._reached()
                return
            self.other_frames += 1
            self._problem(f"uid {conn.uid}: unexpected frame {payload[:120]!r}")
        elif t is _CLOSE:
            code = frame.get_close_code()
            conn.close_code = code.value if isinstance(code, WSCloseCode) else int(code)
            if conn.hello_waiter is not None and not conn.hello_waiter.done():
                conn.hello_waiter.set_exception(ConnectionError(f"closed by server with {conn.close_code} "
                                                                f"{frame.get_close_reason()!r} before hello"))
            transport.send_close(code)
            transport.disconnect()
        elif t is not WSMsgType.PONG:
            self.other_frames += 1
            self._problem(f"uid {conn.uid}: unexpected {t.name} frame")

    def _disconnected(self, conn: _Conn) -> None:
        if self.conns.get(conn.uid) is conn:
            self.disconnected += 1
        if conn.hello_waiter is not None and not conn.hello_waiter.done():
            conn.hello_waiter.set_exception(ConnectionError(f"disconnected before hello (close {conn.close_code})"))

    def _problem(self, text: str) -> None:
        if len(self.examples) < 20:
            self.examples.append(text)
            log.warning("%s", text)

    # ----------------------------------------------------------------------------------------------
    # Waiting

    def _reached(self) -> None:
        total = self.total
        keep: list[tuple[int, asyncio.Future[None]]] = []
        for target, fut in self._waiters:
            if target <= total:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((target, fut))
        self._waiters = keep
        self._target = min((t for t, _ in keep), default=_NEVER)

    async def wait_for(self, total_frames: int, timeout: float) -> bool:
        """Wait until ``total`` (push frames over all connections) reaches total_frames; False on timeout."""
        if self.total >= total_frames:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((total_frames, fut))
        self._target = min(self._target, total_frames)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            self._waiters = [(t, f) for t, f in self._waiters if f is not fut]
            self._target = min((t for t, _ in self._waiters), default=_NEVER)
            return self.total >= total_frames
        return True

    # ----------------------------------------------------------------------------------------------
    # Connecting and closing

    @staticmethod
    def fd_headroom() -> int:
        """How many more sockets this process may open (soft limit raised to the hard one), minus a reserve."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        try:
            in_use = len(os.listdir("/proc/self/fd"))
        except OSError:
            in_use = 16
        limit = soft if soft != resource.RLIM_INFINITY else 1 << 20
        return int(limit) - in_use - FD_RESERVE

    async def connect_all(
        self,
        uids: Iterable[int],
        secret: str,
        *,
        concurrency: int = 500,
        retries: int = 3,
        timeout: float = 300.0,
    ) -> ConnectReport:
        """Connect every uid (at most ``concurrency`` handshakes in flight) and wait for each one's ``hello``.

        A failed attempt is retried up to ``retries`` times with a short backoff. Raises ValueError if the
        process cannot open that many sockets (the soft open-file limit is first raised to the hard one), and
        TimeoutError if the whole set takes longer than ``timeout``. Returns what happened; check ``failed``.
        """
        todo = [uid for uid in uids if uid not in self.conns]
        headroom = self.fd_headroom()
        if len(todo) > headroom:
            raise ValueError(
                f"{len(todo)} connections do not fit in this process's open-file limit (room for {headroom}); "
                "split them over several processes"
            )
        t0 = time.perf_counter()
        sem = asyncio.Semaphore(concurrency)
        report = ConnectReport(requested=len(todo), connected=0, failed=0, seconds=0.0, retries=0)

        async def one(uid: int) -> None:
            token = protocol.user_token(secret, uid)
            target = self.url + protocol.ws_query(uid, token)
            for attempt in range(retries + 1):
                async with sem:
                    conn: _Conn | None = None
                    try:
                        conn = await self._connect_one(uid, target)
                    except (OSError, WSError, ConnectionError, TimeoutError) as exc:
                        key = type(exc).__name__
                        report.errors[key] = report.errors.get(key, 0) + 1
                        if attempt == retries:
                            report.failed += 1
                            self._problem(f"uid {uid}: connect failed after {retries + 1} attempts: {exc!r}")
                            return
                        report.retries += 1
                if conn is not None:
                    report.connected += 1
                    return
                await asyncio.sleep(0.05 * (attempt + 1))

        await asyncio.wait_for(asyncio.gather(*(one(uid) for uid in todo)), timeout)
        report.seconds = time.perf_counter() - t0
        return report

    async def _connect_one(self, uid: int, target: str) -> _Conn:
        loop = asyncio.get_running_loop()
        conn = _Conn(self, uid)
        conn.hello_waiter = loop.create_future()
        transport, _ = await ws_connect(
            lambda: conn, target, websocket_handshake_timeout=self.handshake_timeout,
            read_buffer_init_size=self.read_buffer_size, enable_auto_pong=True, logger_name="fast_receiver",
        )
        try:
            await asyncio.wait_for(conn.hello_waiter, self.handshake_timeout)
        except BaseException:
            transport.disconnect(graceful=False)
            raise
        finally:
            conn.hello_waiter = None
        old = self.conns.get(uid)
        self.conns[uid] = conn
        if old is not None and old.transport is not None:
            old.transport.disconnect(graceful=False)
        return conn

    async def close_all(self, timeout: float = 10.0) -> None:
        """Close every connection (close frame, then disconnect) and wait up to timeout for them to end."""
        conns, self.conns = list(self.conns.values()), {}
        for conn in conns:
            t = conn.transport
            if t is not None and not t.is_disconnected:
                try:
                    t.send_close(WSCloseCode.OK)
                    t.disconnect()
                except Exception:  # already gone
                    pass
        waits = [c.transport.wait_disconnected() for c in conns if c.transport is not None]
        if waits:
            try:
                await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), timeout)
            except TimeoutError:
                for c in conns:
                    if c.transport is not None and not c.transport.is_disconnected:
                        c.transport.disconnect(graceful=False)

    # ----------------------------------------------------------------------------------------------
    # Results

    @property
    def connected(self) -> int:
        return len(self.conns)

    def per_connection(self) -> dict[int, tuple[int, int]]:
        """uid -> (push frames received, max seq seen)."""
        return {uid: (c.frames, c.max_seq) for uid, c in self.conns.items()}

    def counters(self) -> dict[str, int]:
        return {
            "connections": len(self.conns), "total": self.total, "samples": self.samples,
            "bad_samples": self.bad_samples, "out_of_order": self.out_of_order,
            "slow_path_msgs": self.slow_path_msgs, "other_frames": self.other_frames,
            "disconnected": self.disconnected,
        }

    def verify(self, expected_per_connection: int, expected_max_seq: int | None = None) -> DeliveryReport:
        """Check every connection received exactly ``expected_per_connection`` push frames (cumulative) and,
        if given, that its max seq is ``expected_max_seq``."""
        lost = extra = short = over = wrong = 0
        examples = list(self.examples[:10])
        for uid, c in self.conns.items():
            d = c.frames - expected_per_connection
            if d < 0:
                lost -= d
                short += 1
                if len(examples) < 20:
                    examples.append(f"uid {uid}: {c.frames} of {expected_per_connection} frames")
            elif d > 0:
                extra += d
                over += 1
                if len(examples) < 20:
                    examples.append(f"uid {uid}: {c.frames} frames, expected {expected_per_connection}")
            if expected_max_seq is not None and c.max_seq != expected_max_seq:
                wrong += 1
                if len(examples) < 20:
                    examples.append(f"uid {uid}: max seq {c.max_seq}, expected {expected_max_seq}")
        n = len(self.conns)
        received = sum(c.frames for c in self.conns.values())
        ok = (lost == extra == wrong == 0 and self.out_of_order == 0 and self.bad_samples == 0
              and self.disconnected == 0 and n > 0)
        return DeliveryReport(
            connections=n, expected_per_connection=expected_per_connection,
            expected_total=n * expected_per_connection, received_total=received, lost=lost, extra=extra,
            connections_short=short, connections_over=over, wrong_max_seq=wrong, out_of_order=self.out_of_order,
            samples=self.samples, bad_samples=self.bad_samples, slow_path_msgs=self.slow_path_msgs,
            disconnected=self.disconnected, other_frames=self.other_frames, ok=ok, examples=examples,
        )


def _bad_msg(obj: Any, expect_gid: int | None) -> str | None:
    """Why a parsed push frame is not a sane ``msg`` frame, or None."""
    if not isinstance(obj, dict):
        return "not an object"
    if obj.get("op") != "msg":
        return f"op is {obj.get('op')!r}"
    for key in ("gid", "seq", "from", "cts", "sts"):
        if type(obj.get(key)) is not int:
            return f"{key!r} is not an integer"
    if obj["seq"] < 1:
        return f"seq {obj['seq']} < 1"
    if type(obj.get("body")) is not str:
        return "'body' is not a string"
    if expect_gid is not None and obj["gid"] != expect_gid:
        return f"gid {obj['gid']}, expected {expect_gid}"
    return None
