"""ChatClient: a blocking client for the chatbench WebSocket protocol, on websocket-client.

Works with plain threads and under Locust (gevent patches ``threading``, so only ``threading`` primitives are
used). One daemon thread receives frames; push frames (``msg``) go to ``on_message`` on that thread. Requests
carry an integer ``rid`` and block until the reply with the same ``rid`` arrives.

Frames are read as bytes with ``skip_utf8_validation=True`` and parsed with ``orjson`` (the pure-Python UTF-8
check would cost about two thirds of the receive CPU).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Final

import orjson
import websocket

from reference_server import protocol

__all__ = [
    "ABNORMAL_CLOSURE",
    "CONNECTION_CLOSED",
    "ChatClient",
    "ChatClientError",
    "ConnectRefused",
    "ConnectionClosed",
    "RequestTimeout",
    "ServerError",
]

log = logging.getLogger(__name__)

Frame = dict[str, Any]
FrameCallback = Callable[[Frame], None]

#: ``code`` of the error frame that :meth:`ChatClient.send_nowait` callbacks get when the connection closes
#: before the reply arrived. Made up by the client; the server never sends it.
CONNECTION_CLOSED: Final = "connection_closed"
#: ``close_code`` when the connection ended without a close frame from the server (RFC 6455: 1006).
ABNORMAL_CLOSURE: Final = 1006
_NO_STATUS: Final = 1005
_OPCODE_CLOSE: Final = websocket.ABNF.OPCODE_CLOSE
_OPCODE_TEXT: Final = websocket.ABNF.OPCODE_TEXT
_OPCODE_BINARY: Final = websocket.ABNF.OPCODE_BINARY
_OPCODE_PING: Final = websocket.ABNF.OPCODE_PING
_RECV_BYTES: Final = 256 * 1024


class ChatClientError(Exception):
    """Base of every error ChatClient raises."""


class ConnectRefused(ChatClientError):
    """The server refused the WebSocket handshake with an HTTP status (401 bad token, 404 wrong path, ...)."""

    def __init__(self, status: int, body: bytes | None = None) -> None:
        super().__init__(f"handshake refused with HTTP {status}")
        self.status = status
        self.body = body


class RequestTimeout(ChatClientError):
    """No reply within the timeout (also raised when ``hello`` does not arrive in time)."""

    def __init__(self, what: str, timeout: float, rid: int | None = None) -> None:
        super().__init__(f"no reply to {what} within {timeout:g} s" + (f" (rid {rid})" if rid is not None else ""))
        self.what = what
        self.timeout = timeout
        self.rid = rid


class ServerError(ChatClientError):
    """The server answered a request with an ``error`` frame. ``code`` is a :class:`protocol.ErrorCode` value."""

    def __init__(self, code: str, msg: str, rid: int | None = None) -> None:
        super().__init__(f"{code}: {msg}")
        self.code = code
        self.msg = msg
        self.rid = rid


class ConnectionClosed(ChatClientError):
    """The connection is closed (by either side, or dropped). ``code`` is the close code, if known."""

    def __init__(self, code: int | None = None, reason: str = "") -> None:
        super().__init__(f"connection closed (code {code}{', ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


class _Socket(websocket.WebSocket):
    """websocket-client echoes every close frame it receives, even after it sent one itself; send at most one."""

    _close_sent = False

    def send_close(self, status: int = websocket.STATUS_NORMAL, reason: str | bytes = b"") -> None:
        if self._close_sent:
            return
        self._close_sent = True
        super().send_close(status, reason)

    def release(self) -> None:
        """Close the file descriptor (websocket-client's shutdown(), which is not annotated)."""
        self.shutdown()  # type: ignore[no-untyped-call]

    def send_texts(self, payloads: Sequence[bytes]) -> None:
        """Text frames, each masked as send() does, written with one sendall under the send lock."""
        if len(payloads) == 1:
            self.send(payloads[0], _OPCODE_TEXT)
            return
        frames = []
        for payload in payloads:
            frame = websocket.ABNF.create_frame(payload, _OPCODE_TEXT)
            if self.get_mask_key:
                frame.get_mask_key = self.get_mask_key
            frames.append(frame.format())
        data = b"".join(frames)
        with self.lock:
            while data:
                data = data[self._send(data):]


class _Waiter:
    """The pending entry of a blocking request: the receive thread fills ``reply`` and sets ``event``."""

    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reply: Frame | None = None  # stays None when woken because the connection ended

    def __call__(self, reply: Frame) -> None:
        self.reply = reply
        self.event.set()


class _Setter:
    """A request callback that sets an event (heartbeat pongs)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, _reply: Frame) -> None:
        self.event.set()


def _discard(_reply: Frame) -> None:
    pass


class ChatClient:
    """One user's connection. Request methods block until their reply; pushes arrive on ``on_message``.

    ``on_hello(frame)`` gets the ``hello`` before any push can arrive (set up per-connection state there).
    ``on_message(frame)`` gets every ``msg`` frame (or ``on_frame`` does, when ``on_message`` is None).
    ``on_frame(frame)`` gets every other frame that is not the reply to a pending request: late replies,
    error frames without ``rid``, unknown ops. Both run on the receive thread and must not block for long.
    An exception in a callback is counted in ``errors`` (the first is logged) and does not stop receiving.
    """

    def __init__(
        self,
        url: str,
        uid: int,
        token: str,
        *,
        on_message: FrameCallback | None = None,
        on_frame: FrameCallback | None = None,
        on_hello: FrameCallback | None = None,
        request_timeout: float = 10.0,
        heartbeat_s: float | None = 25.0,
        connect_timeout: float = 10.0,
        pong_timeout_s: float | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.uid = uid
        self.token = token
        self.request_timeout = request_timeout
        self.heartbeat_s = heartbeat_s
        #: dead-connection detection: a heartbeat ping unanswered for this long ends the connection (1006,
        #: ``dead`` set) — what notices a half-open connection, where no FIN or RST ever arrives. None: off.
        self.pong_timeout_s = pong_timeout_s
        self.dead = False
        self.connect_timeout = connect_timeout
        self.hello: Frame | None = None
        #: the ``offline`` frame that follows ``hello`` in the buffering offline modes (see wait_offline)
        self.offline: Frame | None = None
        self._offline_event = threading.Event()
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.errors = 0  # exceptions from callbacks or unparsable server frames
        self.last_error: BaseException | None = None
        self._on_message = on_message
        self._on_frame = on_frame
        self._on_hello = on_hello
        self._ws: _Socket | None = None
        self._pending: dict[int, FrameCallback] = {}
        self._lock = threading.Lock()
        self._rids = itertools.count(1)
        self._closing = False  # close() was called
        self._dropped = False  # the receive loop has ended
        self._stop = threading.Event()
        self._recv_thread: threading.Thread | None = None
        self._heartbeat_thread: threading.Thread | None = None

    # ----------------------------------------------------------------------------------------------
    # Connection

    def connect(self) -> Frame:
        """Open the socket, wait for the server's ``hello`` and return it; start the background threads.

        Raises ConnectRefused (HTTP status), RequestTimeout (no hello), ConnectionClosed (closed before hello),
        ServerError (error frame instead of hello); transport failures (e.g. ConnectionRefusedError) as OSError.
        """
        if self._ws is not None or self._closing:
            raise ChatClientError("connect() may be called once per ChatClient")
        target = self.url + protocol.ws_query(self.uid, self.token)
        try:
            sock = self._tcp_connect()
            try:
                ws = websocket.create_connection(
                    target,
                    timeout=self.connect_timeout,
                    class_=_Socket,
                    skip_utf8_validation=True,
                    enable_multithread=True,
                    socket=sock,
                )
            except BaseException:
                if sock is not None:
                    sock.close()
                raise
        except websocket.WebSocketBadStatusException as exc:
            raise ConnectRefused(exc.status_code, exc.resp_body) from exc
        except websocket.WebSocketTimeoutException as exc:
            raise RequestTimeout("connect", self.connect_timeout) from exc
        except websocket.WebSocketException as exc:
            raise ChatClientError(f"connect to {self.url} failed: {exc}") from exc
        assert isinstance(ws, _Socket)
        try:
            hello = self._first_frame(ws)
        except BaseException:
            ws.release()
            self._dropped = True
            raise
        self._ws = ws
        self.hello = hello
        if self._on_hello is not None:  # before the receive thread starts: no push can overtake it
            self._on_hello(hello)
        # Later reads block until data or close; the timeout bounds sends (a stuck peer fails them) and an
        # idle receive just wakes up and loops.
        ws.settimeout(self.request_timeout)
        self._recv_thread = threading.Thread(target=self._recv_loop, name=f"chat-recv-{self.uid}", daemon=True)
        self._recv_thread.start()
        if self.heartbeat_s:
            self._heartbeat_thread = threading.Thread(
                target=self._heartbeat_loop, args=(self.heartbeat_s,), name=f"chat-ping-{self.uid}", daemon=True
            )
            self._heartbeat_thread.start()
        return hello

    def _tcp_connect(self) -> socket.socket | None:
        """The TCP connection for a ws:// URL, made here so that no http(s)_proxy of the environment is used (a
        proxy would sit inside the measured path; websocket-client ignores ``http_no_proxy`` without an explicit
        proxy host). None for wss:// (websocket-client connects and wraps TLS itself)."""
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme != "ws" or parts.hostname is None:
            return None
        try:
            sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=self.connect_timeout)
        except TimeoutError as exc:
            raise RequestTimeout("connect", self.connect_timeout) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _first_frame(self, ws: _Socket) -> Frame:
        try:
            opcode, data = ws.recv_data()
        except websocket.WebSocketTimeoutException as exc:
            raise RequestTimeout("hello", self.connect_timeout) from exc
        except (websocket.WebSocketException, OSError) as exc:
            self._set_close(ABNORMAL_CLOSURE, str(exc))
            raise ConnectionClosed(ABNORMAL_CLOSURE, str(exc)) from exc
        if opcode == _OPCODE_CLOSE:
            self._set_close_frame(data)
            raise ConnectionClosed(self.close_code, self.close_reason)
        try:
            frame = protocol.decode_server_frame(data)
        except protocol.ProtocolError as exc:
            raise ChatClientError(f"bad first frame from server: {exc}") from exc
        op = frame["op"]
        if op == protocol.Op.ERROR:
            raise ServerError(str(frame.get("code")), str(frame.get("msg", "")), frame.get("rid"))
        if op != protocol.Op.HELLO:
            raise ChatClientError(f"expected a hello frame first, got {op!r}")
        return frame

    @property
    def closed(self) -> bool:
        """True once close() was called or the connection ended."""
        return self._closing or self._dropped

    def wait_closed(self, timeout: float) -> bool:
        """Block until close() was called or the connection ended (True), or ``timeout`` seconds passed (False)."""
        return self._stop.wait(timeout)

    @property
    def pending(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._pending)

    def _begin_close(self) -> bool:
        """Mark the client closing and stop its background work; False if a close already began."""
        with self._lock:
            if self._closing:
                return False
            self._closing = True
        self._stop.set()
        return True

    def close(self, code: int = protocol.CloseCode.NORMAL, reason: str = "") -> None:
        """Send a close frame, wait (up to request_timeout) for the server's, and release the socket."""
        if not self._begin_close():
            return
        ws = self._ws
        if ws is None or self._recv_thread is None:
            self._dropped = True
            return
        if not self._dropped:
            try:
                ws.send_close(code, reason)
            except Exception:  # already broken: the receive loop will notice
                self._shutdown_socket()
        if threading.current_thread() is self._recv_thread:
            return  # called from a callback: the receive loop ends when the server's close frame arrives
        self._recv_thread.join(self.request_timeout)
        if self._recv_thread.is_alive():
            self._shutdown_socket()
            self._recv_thread.join(self.request_timeout)

    def __enter__(self) -> ChatClient:
        if self._ws is None:
            self.connect()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _shutdown_socket(self) -> None:
        """Wake the receive thread; only that thread closes the file descriptor."""
        ws = self._ws
        sock = ws.sock if ws is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _set_close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason

    def _set_close_frame(self, data: bytes) -> None:
        if len(data) >= 2:
            self._set_close(int.from_bytes(data[:2], "big"), data[2:].decode("utf-8", "replace"))
        else:
            self._set_close(_NO_STATUS, "")

    # ----------------------------------------------------------------------------------------------
    # Background threads

    def _recv_loop(self) -> None:
        """Read the socket in large chunks and cut every frame out of them here (not in websocket-client).

        Server frames are unmasked and unfragmented (protocol §1), and the server coalesces several frames per
        write, so one ``recv`` usually yields many frames; parsing them in this loop costs about a fifth of what
        websocket-client's per-frame ``recv_data`` does (see benchmarks/receive.py). websocket-client reads
        exactly one frame at a time, so nothing is buffered in it after ``hello``.
        """
        ws = self._ws
        assert ws is not None
        sock = ws.sock
        assert sock is not None
        loads = orjson.loads
        on_message = self._on_message
        dispatch = self._dispatch
        fragments: list[bytes] = []
        buf = b""
        try:
            while True:
                try:
                    chunk = sock.recv(_RECV_BYTES)
                except TimeoutError:
                    continue  # idle; the socket timeout only exists to bound sends
                except Exception as exc:
                    self._set_close(ABNORMAL_CLOSURE, str(exc) or type(exc).__name__)
                    return
                if not chunk:
                    self._set_close(ABNORMAL_CLOSURE, "connection ended without a close frame")
                    return
                buf = buf + chunk if buf else chunk
                n = len(buf)
                pos = 0
                while n - pos >= 2:
                    b0 = buf[pos]
                    length = buf[pos + 1]
                    if length & 0x80:
                        self._set_close(protocol.CloseCode.PROTOCOL_ERROR, "masked frame from the server")
                        return
                    if length < 126:
                        start = pos + 2
                    elif length == 126:
                        if n - pos < 4:
                            break
                        length = (buf[pos + 2] << 8) | buf[pos + 3]
                        start = pos + 4
                    else:
                        if n - pos < 10:
                            break
                        length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                        start = pos + 10
                    end = start + length
                    if end > n:
                        break
                    data = buf[start:end]
                    pos = end
                    opcode = b0 & 0x0F
                    if opcode == _OPCODE_TEXT and b0 & 0x80:
                        pass
                    elif opcode == _OPCODE_CLOSE:
                        self._set_close_frame(data)
                        with contextlib.suppress(Exception):
                            ws.send_close()  # echo, as websocket-client does
                        return
                    elif opcode >= 0x8:  # ping / pong
                        if opcode == _OPCODE_PING:
                            ws.pong(data)
                        continue
                    else:  # fragments (never sent by the reference server) and binary frames
                        fragments.append(data)
                        if not b0 & 0x80:
                            continue
                        data = b"".join(fragments)
                        fragments.clear()
                    try:
                        frame = loads(data)
                        if on_message is not None and frame.get("op") == "msg":
                            on_message(frame)
                        else:
                            dispatch(frame)
                    except Exception as exc:
                        self._callback_error(exc)
                buf = buf[pos:] if pos < n else b""
        finally:
            self._end()

    def _dispatch(self, frame: Frame) -> None:
        rid = frame.get("rid")
        if rid is not None:
            callback = self._pending.pop(rid, None)
            if callback is not None:
                callback(frame)
                return
        elif frame.get("op") == "offline":
            self.offline = frame
            self._offline_event.set()
        if self._on_frame is not None:
            self._on_frame(frame)

    def _callback_error(self, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = exc
        if self.errors == 1:
            log.error("uid %d: error handling a server frame (further ones only counted)", self.uid, exc_info=exc)

    def _end(self) -> None:
        """The receive loop is over: release the socket and fail every pending request."""
        with self._lock:
            self._dropped = True
            pending = list(self._pending.items())
            self._pending.clear()
        self._stop.set()
        if self._ws is not None:
            self._ws.release()
        for rid, callback in pending:
            if isinstance(callback, _Waiter):
                callback.event.set()
                continue
            try:
                callback({"op": "error", "code": CONNECTION_CLOSED, "msg": "connection closed", "rid": rid})
            except Exception as exc:
                self._callback_error(exc)

    def _heartbeat_loop(self, interval: float) -> None:
        timeout = self.pong_timeout_s
        while not self._stop.wait(interval):
            answered = threading.Event()
            try:
                self._start_request(protocol.encode_ping, _discard if timeout is None else _Setter(answered))
            except ChatClientError:
                return
            if timeout is None:
                continue
            if not answered.wait(timeout) and not self._stop.is_set():
                self.dead = True
                self._set_close(ABNORMAL_CLOSURE, f"dead connection: no pong within {timeout:g} s")
                self._shutdown_socket()
                return

    # ----------------------------------------------------------------------------------------------
    # Requests

    def _start_request(self, encode: Callable[[int], bytes], callback: FrameCallback | None) -> int:
        """Register ``callback`` under a new rid (unless None), send ``encode(rid)``; return the rid."""
        return self._start_requests([encode], [callback])[0]

    def _start_requests(
        self, encodes: Sequence[Callable[[int], bytes]], callbacks: Sequence[FrameCallback | None]
    ) -> list[int]:
        """Register each callback under a new rid (unless None), send every ``encode(rid)`` in one write."""
        ws = self._ws
        if ws is None:
            raise ChatClientError("not connected")
        rids, payloads = self._register(encodes, callbacks)
        try:
            ws.send_texts(payloads)
        except Exception as exc:
            # A failed or partial write leaves the stream unusable: drop the connection.
            self._forget(rids)
            self._shutdown_socket()
            raise ConnectionClosed(self.close_code or ABNORMAL_CLOSURE, f"send failed: {exc}") from exc
        return rids

    def _register(self, encodes: Sequence[Callable[[int], bytes]],
                  callbacks: Sequence[FrameCallback | None]) -> tuple[list[int], list[bytes]]:
        """New rids, each callback registered under its rid (unless None), and the encoded payloads; nothing stays
        registered if encoding fails. Every write path (this socket, the receive engine) goes through it."""
        with self._lock:
            if self._closing or self._dropped:
                raise ConnectionClosed(self.close_code, self.close_reason)
            rids = [next(self._rids) for _ in encodes]
            for rid, callback in zip(rids, callbacks, strict=True):
                if callback is not None:
                    self._pending[rid] = callback
        try:
            payloads = [encode(rid) for encode, rid in zip(encodes, rids, strict=True)]
        except BaseException:
            self._forget(rids)
            raise
        return rids, payloads

    def _forget(self, rids: Sequence[int]) -> None:
        for rid in rids:
            self._pending.pop(rid, None)

    def _request(self, what: str, encode: Callable[[int], bytes]) -> Frame:
        waiter = _Waiter()
        rid = self._start_request(encode, waiter)
        return self._await_reply(what, rid, waiter, self.request_timeout)

    def _await_reply(self, what: str, rid: int, waiter: _Waiter, timeout: float) -> Frame:
        if not waiter.event.wait(max(timeout, 0.0)):
            self._pending.pop(rid, None)
            if not waiter.event.is_set():
                raise RequestTimeout(what, self.request_timeout, rid)
        reply = waiter.reply
        if reply is None:  # woken by _end()
            raise ConnectionClosed(self.close_code, self.close_reason)
        if reply.get("op") == "error":
            raise ServerError(str(reply.get("code")), str(reply.get("msg", "")), rid)
        return reply

    @staticmethod
    def _send_encoder(gid: int, body: str, cts: int | None, to: Sequence[int] | None) -> Callable[[int], bytes]:
        """``encode(rid)`` for a send request; ``cts`` None = now, taken when the frame is built."""
        to_list = list(to) if to is not None else None
        return lambda rid: protocol.encode_send(rid, gid, body, protocol.now_us() if cts is None else cts, to_list)

    def send(self, gid: int, body: str, *, to: Sequence[int] | None = None, cts: int | None = None) -> Frame:
        """Send a message; return the ``ack`` frame (gid, seq, sts). ``cts`` defaults to now, in µs."""
        return self._request("send", self._send_encoder(gid, body, cts, to))

    def send_nowait(
        self,
        gid: int,
        body: str,
        *,
        cts: int | None = None,
        on_ack: FrameCallback | None = None,
        to: Sequence[int] | None = None,
    ) -> int:
        """Send a message without waiting; return its rid.

        ``on_ack`` gets the ``ack`` or ``error`` frame on the receive thread. If the connection closes first it
        gets ``{"op": "error", "code": CONNECTION_CLOSED, "rid": rid, ...}``. Without ``on_ack`` the reply goes
        to ``on_frame``.
        """
        return self._start_request(self._send_encoder(gid, body, cts, to), on_ack)

    def send_many(self, gid: int, bodies: Sequence[str]) -> list[Frame]:
        """Send several messages in one socket write; return their ``ack`` frames, in order.

        A pipelined burst, as a client that batches its writes sends it: the server reads the messages together
        (one ``send()`` per message may reach it as several reads). ``cts`` is now. Raises as :meth:`send` does;
        ``request_timeout`` bounds the wait for all the replies.
        """
        waiters = [_Waiter() for _ in bodies]
        rids = self._start_requests([self._send_encoder(gid, body, None, None) for body in bodies], waiters)
        deadline = time.monotonic() + self.request_timeout
        try:
            return [self._await_reply("send", rid, waiter, deadline - time.monotonic())
                    for rid, waiter in zip(rids, waiters, strict=True)]
        finally:
            self._forget(rids)

    def sync(self, gid: int, after: int, limit: int = 100) -> Frame:
        """One page of messages with seq > after: ``{gid, msgs, next, more, max}``."""
        return self._request("sync", lambda rid: protocol.encode_sync(rid, gid, after, limit))

    def sync_all(self, gid: int, after: int, *, limit: int = protocol.MAX_SYNC_LIMIT) -> list[Frame]:
        """Every message with seq > after, paging until ``more`` is false."""
        msgs: list[Frame] = []
        while True:
            page = self.sync(gid, after, limit)
            msgs.extend(page["msgs"])
            if not page["more"]:
                return msgs
            next_after = page["next"]
            if next_after <= after:
                raise ChatClientError(f"sync of group {gid} did not advance past seq {after}")
            after = next_after

    def read(self, gid: int, seq: int) -> Frame:
        """Mark everything up to and including seq read; return ``{gid, max, read, unread}``."""
        return self._request("read", lambda rid: protocol.encode_read(rid, gid, seq))

    def unread(self, gids: Sequence[int] | None = None) -> Frame:
        """Unread counts: ``{groups: [{gid, max, read, unread}, ...]}``; None = every group of the user."""
        gid_list = list(gids) if gids is not None else None
        return self._request("unread", lambda rid: protocol.encode_unread(rid, gid_list))

    def delete(self, gid: int, seq: int) -> Frame:
        """Delete a message for this user only."""
        return self._request("delete", lambda rid: protocol.encode_delete(rid, gid, seq))

    def recall(self, gid: int, seq: int) -> Frame:
        """Retract this user's own message; return ``{gid, seq: the recall signal's seq, ref: seq, sts}``."""
        return self._request("recall", lambda rid: protocol.encode_recall(rid, gid, seq))

    def wait_offline(self, timeout: float | None = None) -> Frame:
        """The ``offline`` frame (buffer contents) the server sends after ``hello`` when ``hello["offline"]`` is
        a buffering mode; raises RequestTimeout if it does not arrive."""
        t = self.request_timeout if timeout is None else timeout
        if not self._offline_event.wait(t):
            raise RequestTimeout("offline frame", t)
        assert self.offline is not None
        return self.offline

    def ping(self) -> Frame:
        """Round trip a ``ping``; return the ``pong`` frame (it carries the server's ``sts``)."""
        return self._request("ping", protocol.encode_ping)

    def send_raw(self, data: str | bytes, *, binary: bool = False) -> None:
        """Send one frame as is (for tests of malformed input): a text frame, or a binary one if ``binary``."""
        ws = self._ws
        if ws is None:
            raise ChatClientError("not connected")
        if self.closed:
            raise ConnectionClosed(self.close_code, self.close_reason)
        try:
            ws.send(data, _OPCODE_BINARY if binary else _OPCODE_TEXT)
        except Exception as exc:
            self._shutdown_socket()
            raise ConnectionClosed(self.close_code or ABNORMAL_CLOSURE, f"send failed: {exc}") from exc
