"""A userspace TCP proxy for WebSocket traffic that can act on individual server→client frames.

Each accepted connection is a :class:`Pipe`: client→server bytes pass through untouched; server→client bytes
pass the HTTP upgrade response through, then are cut into WebSocket frames (server frames are unmasked, so
their payloads are readable) and every frame goes through the pipe's :class:`FrameAction`, which decides what
the client gets: the frame, nothing, the frame twice, the frame later; client→server bytes go through the
action's ``on_upstream`` (default: on unchanged). Actions are pluggable per connection (``action_factory(pipe)``):

* :class:`Impair` is a weak network (:mod:`drivers.profiles`): latency + jitter both ways, a token bucket per
  direction, stalls, disconnects (FIN), resets (RST), half-open connections (silence without FIN), late frames.

Used by the tests for fault injection:

* :class:`Faults` drops, duplicates or reorders *known* push frames — (receiver uid, seq) pairs — and counts
  what it actually did, so a test can require the ledger's counts to equal the injected ones;
* :class:`Delay` holds every server→client frame for a fixed time (in order), to check latency truth.

Run it in a thread of the current process (:meth:`Proxy.start_in_thread`) or as a process::

    python -m drivers.proxy --listen 127.0.0.1:9000 --upstream 127.0.0.1:8765 --delay-ms 50
    python -m drivers.proxy --upstream 127.0.0.1:8765 --profile 3g --profile subway   # prints {profile: url}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import socket
import struct
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson

from drivers.admin import front_gateway
from drivers.profiles import PROFILES, Profile

_HEADER_END = b"\r\n\r\n"
#: directions: server → client, client → server
DOWN, UP = 0, 1


class FrameAction:
    """Decides what the client gets for each server frame. The default passes every frame on unchanged.

    Shaping actions (``shaped = True``) are also asked, before each write, to :meth:`gate` it (bandwidth, stalls);
    :meth:`latency` gives the delay of bytes that are not frames (the upgrade, client→server data).
    """

    shaped = False

    def on_open(self, pipe: Pipe) -> None:
        """Both sides are connected."""

    def on_frame(self, pipe: Pipe, frame: bytes, payload: bytes, opcode: int) -> None:
        pipe.emit(frame)

    def on_upstream(self, pipe: Pipe, data: bytes) -> None:
        pipe.emit_up(data, self.latency(pipe, UP))

    def latency(self, pipe: Pipe, direction: int) -> float:
        return 0.0

    async def gate(self, pipe: Pipe, direction: int, nbytes: int) -> None:
        """Called before ``nbytes`` are written in ``direction`` (shaped actions only): wait as long as needed."""

    def on_close(self, pipe: Pipe) -> None:
        """The server side ended: release anything held."""


class Delay(FrameAction):
    """Every server→client frame reaches the client ``seconds`` after it left the server, order kept."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_frame(self, pipe: Pipe, frame: bytes, payload: bytes, opcode: int) -> None:
        pipe.emit(frame, self.seconds)


class Faults(FrameAction):
    """Drop, duplicate or reorder the push frames of given (receiver uid, seq) pairs; count what was done.

    Reorder: the frame is held and sent right after the receiver's next push of the same group (so the receiver
    sees seq s+k before s). If no such push comes within ``hold_s`` the frame is released in order and counted
    in ``released`` instead.
    """

    def __init__(self, *, drop: set[tuple[int, int]] | None = None, duplicate: set[tuple[int, int]] | None = None,
                 reorder: set[tuple[int, int]] | None = None, hold_s: float = 2.0) -> None:
        self.drop = drop or set()
        self.duplicate = duplicate or set()
        self.reorder = reorder or set()
        self.hold_s = hold_s
        self.counts = {"dropped": 0, "duplicated": 0, "reordered": 0, "released": 0}
        self._lock = threading.Lock()

    def on_frame(self, pipe: Pipe, frame: bytes, payload: bytes, opcode: int) -> None:
        key = None
        gid = None
        if opcode == 1 and payload.startswith(b'{"gid":'):
            obj = orjson.loads(payload)
            if obj.get("op") == "msg":
                key = (pipe.uid, obj["seq"])
                gid = obj["gid"]
        held = pipe.state.get("held")
        if key is None:
            pipe.emit(frame)
            return
        if key in self.drop:
            self._count("dropped")
            return
        if key in self.reorder and held is None:
            handle = pipe.loop.call_later(self.hold_s, self._release, pipe)
            pipe.state["held"] = (gid, frame, handle)
            return
        pipe.emit(frame)
        if key in self.duplicate:
            pipe.emit(frame)
            self._count("duplicated")
        if held is not None and held[0] == gid:
            held[2].cancel()
            del pipe.state["held"]
            pipe.emit(held[1])
            self._count("reordered")

    def _release(self, pipe: Pipe) -> None:
        held = pipe.state.pop("held", None)
        if held is not None:
            pipe.emit(held[1])
            self._count("released")

    def on_close(self, pipe: Pipe) -> None:
        held = pipe.state.pop("held", None)
        if held is not None:
            held[2].cancel()

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1


class Impair(FrameAction):
    """A weak network on one connection, as a :class:`drivers.profiles.Profile` describes it (see there).

    Latency and jitter per frame (server→client) and per read chunk (client→server), order kept; a token bucket
    per direction; stalls (both directions hold every byte); disconnects, resets and half-open connections at
    random times; late "retransmitted" frames. One instance per connection (``action_factory``), so the random
    timers and buckets are the connection's own. :meth:`stall` can be called directly (tests).
    """

    shaped = True

    def __init__(self, profile: Profile, rng: random.Random | None = None) -> None:
        self.p = profile
        self.rng = rng or random.Random()
        self.stalled_until = 0.0
        rates = (profile.down_kbps * 125.0, profile.up_kbps * 125.0)  # kbit/s → bytes/s
        self._rate = rates
        self._tokens = [float(profile.burst_bytes), float(profile.burst_bytes)]
        self._last = [time.monotonic(), time.monotonic()]
        self._timers: list[asyncio.TimerHandle] = []

    def latency(self, pipe: Pipe, direction: int) -> float:
        p = self.p
        base = p.rtt_ms / 2000.0
        j = p.jitter_ms / 1000.0
        if not j:
            return base
        if p.jitter == "uniform":
            x = self.rng.uniform(-j, j)
        elif p.jitter == "pareto":  # shape 3: mean 1.5 → (pareto − 1) has mean 0.5; scaled to mean j
            x = (self.rng.paretovariate(3.0) - 1.0) * 2.0 * j
        else:
            x = self.rng.gauss(0.0, j)
        return max(0.0, base + x)

    def on_frame(self, pipe: Pipe, frame: bytes, payload: bytes, opcode: int) -> None:
        d = self.latency(pipe, DOWN)
        if self.p.retransmit_pct and self.rng.random() * 100 < self.p.retransmit_pct:
            d += self.p.retransmit_ms / 1000.0
            pipe.proxy.count("retransmits")
        pipe.emit(frame, d)

    def on_open(self, pipe: Pipe) -> None:
        p = self.p

        def stall() -> None:
            pipe.proxy.count("stalls")
            self.stall(p.stall_s)

        for every, fn, repeat in ((p.stall_every_s if p.stall_s else 0.0, stall, True),
                                  (p.disconnect_every_s, pipe.disconnect, False), (p.reset_every_s, pipe.reset, False),
                                  (p.half_open_every_s, pipe.half_open, False)):
            if every > 0:
                self._schedule(pipe, every, fn, repeat)

    def _schedule(self, pipe: Pipe, every: float, fn: Callable[[], None], repeat: bool) -> None:
        def fire() -> None:
            fn()
            if repeat:
                self._schedule(pipe, every, fn, repeat)

        self._timers.append(pipe.loop.call_later(self.rng.expovariate(1.0 / every), fire))

    def stall(self, seconds: float) -> None:
        """No byte passes either way for ``seconds`` from now (queued bytes wait; nothing is lost)."""
        self.stalled_until = max(self.stalled_until, time.monotonic() + seconds)

    async def gate(self, pipe: Pipe, direction: int, nbytes: int) -> None:
        while (wait := self.stalled_until - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        rate = self._rate[direction]
        if rate <= 0:
            return
        now = time.monotonic()
        tokens = min(float(self.p.burst_bytes), self._tokens[direction] + (now - self._last[direction]) * rate)
        tokens -= nbytes
        self._tokens[direction] = tokens
        self._last[direction] = now
        if tokens < 0:  # in debt: this write waits until the bucket has refilled to zero
            await asyncio.sleep(-tokens / rate)

    def on_close(self, pipe: Pipe) -> None:
        for t in self._timers:
            t.cancel()
        self._timers.clear()


class Pipe:
    """One proxied connection. ``emit(data, delay)`` queues bytes for the client, ``emit_up`` for the server, in
    order. :meth:`disconnect` (FIN), :meth:`reset` (RST) and :meth:`half_open` (silence, no FIN) end it."""

    def __init__(self, proxy: Proxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.loop = asyncio.get_running_loop()
        self.client_reader = reader
        self.client_writer = writer
        self.up_writer: asyncio.StreamWriter | None = None
        self.uid: int | None = None
        self.path = ""
        self.state: dict[str, Any] = {}  # for the action's per-connection state
        self.action = proxy.action_factory(self)
        self.blackholed = False  # half-open: nothing passes, nothing is closed towards the client
        self._out: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        self._up: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        self._ended = asyncio.Event()
        # bytes queued per direction; past proxy.window the reader of that direction pauses (backpressure, as
        # TCP windows would give): a slow link fills the sender's socket buffers, not the proxy's memory
        self.queued = [0, 0]
        self._room = [asyncio.Event(), asyncio.Event()]

    def emit(self, data: bytes, delay: float = 0.0) -> None:
        self.queued[DOWN] += len(data)
        self._out.put_nowait((time.monotonic() + delay, data))

    def emit_up(self, data: bytes, delay: float = 0.0) -> None:
        self.queued[UP] += len(data)
        self._up.put_nowait((time.monotonic() + delay, data))

    async def _backpressure(self, direction: int) -> None:
        window = self.proxy.window
        while self.queued[direction] > window and not self._ended.is_set() and not self.blackholed:
            self._room[direction].clear()
            await self._room[direction].wait()

    # -- ending the connection the ways a network does
    def disconnect(self) -> None:
        """Close both sides with a FIN now, dropping whatever is queued."""
        self.proxy.count("disconnects")
        self._end(abort=False)

    def reset(self) -> None:
        """Close both sides with a RST now."""
        self.proxy.count("resets")
        self._end(abort=True)

    def half_open(self) -> None:
        """Stop every byte both ways, close the server side, and leave the client's socket open and silent."""
        if self.blackholed or self._ended.is_set():
            return
        self.proxy.count("half_open")
        self.blackholed = True
        for room in self._room:
            room.set()
        if self.up_writer is not None:
            self.up_writer.close()

    def _end(self, *, abort: bool) -> None:
        if self._ended.is_set():
            return
        self._ended.set()
        for room in self._room:
            room.set()
        for w in (self.up_writer, self.client_writer):
            if w is None:
                continue
            with contextlib.suppress(Exception):
                if abort:
                    sock = w.get_extra_info("socket")
                    if sock is not None:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    w.transport.abort()
                else:
                    w.close()

    async def run(self) -> None:
        try:
            host, port = await self.proxy.pick_upstream()
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except (OSError, ValueError, KeyError):
            self.client_writer.close()
            return
        self.up_writer = up_writer
        self.action.on_open(self)
        tasks = [asyncio.create_task(self._client_to_server()),
                 asyncio.create_task(self._server_to_client(up_reader)),
                 asyncio.create_task(self._writer(self._out, self.client_writer, DOWN)),
                 asyncio.create_task(self._writer(self._up, up_writer, UP))]
        try:
            await asyncio.wait(tasks[:2], return_when=asyncio.FIRST_COMPLETED)
            if self.blackholed:  # the client notices only by itself (heartbeat timeout) and closes
                await asyncio.wait([tasks[0]], timeout=self.proxy.half_open_max_s)
            # let the other direction drain briefly (close frames), then finish the queued output
            await asyncio.wait(tasks[:2], timeout=2.0)
        finally:
            self.action.on_close(self)
            self._out.put_nowait(None)
            self._up.put_nowait(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*tasks[2:], return_exceptions=True), timeout=10.0)
            for t in tasks:
                t.cancel()
            for w in (up_writer, self.client_writer):
                with contextlib.suppress(Exception):
                    w.close()

    async def _client_to_server(self) -> None:
        first = True
        while data := await self.client_reader.read(65536):
            if first:
                first = False
                self._parse_request(data)
            if not self.blackholed:
                self.action.on_upstream(self, data)
                await self._backpressure(UP)
        self._up.put_nowait((time.monotonic() + self.action.latency(self, UP), b""))  # EOF, in order

    def _parse_request(self, data: bytes) -> None:
        with contextlib.suppress(Exception):
            line = data.split(b"\r\n", 1)[0].decode()
            self.path = line.split(" ")[1]
            uid = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("uid")
            if uid:
                self.uid = int(uid[0])

    async def _server_to_client(self, up: asyncio.StreamReader) -> None:
        buf = b""
        upgraded = False
        while data := await up.read(262144):
            if self.blackholed:
                continue
            buf += data
            if not upgraded:
                i = buf.find(_HEADER_END)
                if i < 0:
                    continue
                self.emit(buf[:i + 4], self.action.latency(self, DOWN))
                buf = buf[i + 4:]
                upgraded = True
            pos = 0
            n = len(buf)
            while n - pos >= 2:
                b0, b1 = buf[pos], buf[pos + 1] & 0x7F
                hl = 2 if b1 < 126 else (4 if b1 == 126 else 10)
                if n - pos < hl:
                    break
                ln = b1 if b1 < 126 else int.from_bytes(buf[pos + 2:pos + hl], "big")
                end = pos + hl + ln
                if end > n:
                    break
                self.action.on_frame(self, buf[pos:end], buf[pos + hl:end], b0 & 0x0F)
                pos = end
            buf = buf[pos:]
            await self._backpressure(DOWN)
        if buf and not self.blackholed:
            self.emit(buf, self.action.latency(self, DOWN))

    async def _writer(self, queue: asyncio.Queue[tuple[float, bytes] | None], w: asyncio.StreamWriter,
                      direction: int) -> None:
        """Write the queue's bytes at their due times; ``b""`` (client→server) or the end (→client) is EOF."""
        action = self.action
        shaped = action.shaped
        queued, room, low = self.queued, self._room[direction], self.proxy.window // 2
        while (item := await queue.get()) is not None:
            due, data = item
            queued[direction] -= len(data)
            if queued[direction] <= low:
                room.set()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                break
            if shaped:
                await action.gate(self, direction, len(data))
            if self.blackholed or self._ended.is_set():
                continue
            w.write(data)
            while not shaped and not queue.empty():  # coalesce what is already due
                nxt = queue._queue[0]  # type: ignore[attr-defined]
                if nxt is None or not nxt[1] or nxt[0] > time.monotonic():
                    break
                queue.get_nowait()
                queued[direction] -= len(nxt[1])
                w.write(nxt[1])
            await w.drain()
        if not self.blackholed and not self._ended.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                w.write_eof()


class Proxy:
    """Listen on ``host:port`` (0 = any free port) and proxy every connection to the upstream server."""

    def __init__(self, upstream: str, *, host: str = "127.0.0.1", port: int = 0,
                 action_factory: Callable[[Pipe], FrameAction] | None = None, front_url: str = "") -> None:
        self.upstream_host, self.upstream_port = _host_port(upstream)
        #: a cluster front (GET → {"url": "ws://gateway"}): asked for every new connection, as a direct client
        #: would, so impaired members spread over the gateways by load too; ``upstream`` is then unused
        self.front_url = front_url
        self.host = host
        self.port = port
        self.action_factory: Callable[[Pipe], FrameAction] = action_factory or (lambda _pipe: FrameAction())
        self.connections = 0
        self.counts: dict[str, int] = {}  # impairments done: disconnects, resets, half_open, stalls, retransmits
        self.pipes: set[Pipe] = set()  # open connections
        self.half_open_max_s = 600.0  # a half-open client socket is closed after this long at the latest
        self.window = 256 * 1024  # bytes a connection may hold per direction before its reader pauses
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def pick_upstream(self) -> tuple[str, int]:
        """The server for a new connection: the front's pick (asked off the loop), or the fixed upstream."""
        if not self.front_url:
            return self.upstream_host, self.upstream_port
        return _host_port(await asyncio.to_thread(front_gateway, self.front_url, 10.0))

    async def serve(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        pipe = Pipe(self, reader, writer)
        self.pipes.add(pipe)
        try:
            await pipe.run()
        finally:
            self.pipes.discard(pipe)

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the proxy's loop (proxy started in a thread) and return its result."""
        assert self._loop is not None

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(5)

    def start_in_thread(self) -> Proxy:
        """Run the proxy on its own event loop in a daemon thread; returns once it listens."""
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self.serve())
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=main, name="chatbench-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("proxy did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=2)

        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(8)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)


def _host_port(url: str) -> tuple[str, int]:
    """``ws://host:port/`` or ``host:port`` → (host, port)."""
    host, port = url.removeprefix("ws://").rstrip("/").rsplit(":", 1)
    return host, int(port)


def impairing(profile: Profile) -> Callable[[Pipe], FrameAction]:
    """An ``action_factory``: every connection gets its own :class:`Impair` of ``profile``."""
    return lambda _pipe: Impair(profile)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--upstream", default="127.0.0.1:8765")
    p.add_argument("--upstream-front", default="", metavar="URL",
                   help="a cluster front (chatbench serve --cluster: LOGIC_ADMIN/gateway) asked for the gateway of "
                   "every new connection, instead of the fixed --upstream")
    p.add_argument("--delay-ms", type=float, default=0.0, help="fixed delay of every server→client frame")
    p.add_argument("--profile", action="append", default=[], choices=sorted(PROFILES),
                   help="impair with this network profile (drivers/profiles.py); repeat for one listener per "
                   "profile on free ports of --listen's host; prints {profile: url} as JSON when ready")
    p.add_argument("--duration", type=float, default=3600.0, help="stop after this many seconds")
    p.add_argument("--report-s", type=float, default=0.0,
                   help="with --profile: every this many seconds, print a JSON line {profile: {impairment: count}} "
                   "of the impairments done so far (connections, stalls, disconnects, resets, half_open, "
                   "retransmits); 0: never")
    args = p.parse_args(argv)
    host, port = args.listen.rsplit(":", 1)
    delay = args.delay_ms / 1000
    if args.profile:
        proxies = {name: Proxy(args.upstream, host=host, action_factory=impairing(PROFILES[name]),
                               front_url=args.upstream_front) for name in args.profile}
    else:
        proxies = {"": Proxy(args.upstream, host=host, port=int(port),
                             action_factory=(lambda _p: Delay(delay)) if delay else None,
                             front_url=args.upstream_front)}

    async def run() -> None:
        for proxy in proxies.values():
            await proxy.serve()
        if args.profile:
            print(orjson.dumps({name: proxy.url for name, proxy in proxies.items()}).decode(), flush=True)
        else:
            print(f"chatbench proxy ready {proxies[''].url} -> {args.upstream}", flush=True)
        if not (args.profile and args.report_s > 0):
            await asyncio.sleep(args.duration)
            return
        end = time.monotonic() + args.duration
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(args.report_s, left))
            print(orjson.dumps({name: {"connections": proxy.connections, **proxy.counts}
                                for name, proxy in proxies.items()}).decode(), flush=True)

    asyncio.run(run())


if __name__ == "__main__":
    main()
