"""A userspace TCP proxy for WebSocket traffic that can act on individual server→client frames.

Each accepted connection is a :class:`Pipe`: client→server bytes pass through untouched; server→client bytes
pass the HTTP upgrade response through, then are cut into WebSocket frames (server frames are unmasked, so
their payloads are readable) and every frame goes through the pipe's :class:`FrameAction`, which decides what
the client gets: the frame, nothing, the frame twice, the frame later. Actions are pluggable per connection
(``action_factory(pipe)``), so the same pipe will carry the weak-network profiles of issue 8 (latency, jitter,
bandwidth, loss). Used by the tests for fault injection:

* :class:`Faults` drops, duplicates or reorders *known* push frames — (receiver uid, seq) pairs — and counts
  what it actually did, so a test can require the ledger's counts to equal the injected ones;
* :class:`Delay` holds every server→client frame for a fixed time (in order), to check latency truth.

Run it in a thread of the current process (:meth:`Proxy.start_in_thread`) or as a process::

    python -m drivers.proxy --listen 127.0.0.1:9000 --upstream 127.0.0.1:8765 --delay-ms 50
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import orjson

_HEADER_END = b"\r\n\r\n"


class FrameAction:
    """Decides what the client gets for each server frame. The default passes every frame on unchanged."""

    def on_frame(self, pipe: Pipe, frame: bytes, payload: bytes, opcode: int) -> None:
        pipe.emit(frame)

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


class Pipe:
    """One proxied connection. ``emit(data, delay)`` queues bytes for the client, in order."""

    def __init__(self, proxy: Proxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.loop = asyncio.get_running_loop()
        self.client_reader = reader
        self.client_writer = writer
        self.uid: int | None = None
        self.path = ""
        self.state: dict[str, Any] = {}  # for the action's per-connection state
        self.action = proxy.action_factory(self)
        self._out: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

    def emit(self, data: bytes, delay: float = 0.0) -> None:
        self._out.put_nowait((time.monotonic() + delay, data))

    async def run(self) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.proxy.upstream_host, self.proxy.upstream_port)
        except OSError:
            self.client_writer.close()
            return
        tasks = [asyncio.create_task(self._client_to_server(up_writer)),
                 asyncio.create_task(self._server_to_client(up_reader)),
                 asyncio.create_task(self._writer())]
        try:
            await asyncio.wait(tasks[:2], return_when=asyncio.FIRST_COMPLETED)
            # let the other direction drain briefly (close frames), then finish the queued output
            await asyncio.wait(tasks[:2], timeout=2.0)
        finally:
            self.action.on_close(self)
            self._out.put_nowait(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(tasks[2], timeout=10.0)
            for t in tasks:
                t.cancel()
            for w in (up_writer, self.client_writer):
                with contextlib.suppress(Exception):
                    w.close()

    async def _client_to_server(self, up: asyncio.StreamWriter) -> None:
        first = True
        while data := await self.client_reader.read(65536):
            if first:
                first = False
                self._parse_request(data)
            up.write(data)
            await up.drain()
        with contextlib.suppress(OSError):
            up.write_eof()

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
            buf += data
            if not upgraded:
                i = buf.find(_HEADER_END)
                if i < 0:
                    continue
                self.emit(buf[:i + 4])
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
        if buf:
            self.emit(buf)

    async def _writer(self) -> None:
        w = self.client_writer
        while (item := await self._out.get()) is not None:
            due, data = item
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            w.write(data)
            while not self._out.empty():  # coalesce what is already due
                nxt = self._out._queue[0]  # type: ignore[attr-defined]
                if nxt is None or nxt[0] > time.monotonic():
                    break
                self._out.get_nowait()
                w.write(nxt[1])
            await w.drain()
        with contextlib.suppress(OSError, RuntimeError):
            w.write_eof()


class Proxy:
    """Listen on ``host:port`` (0 = any free port) and proxy every connection to the upstream server."""

    def __init__(self, upstream: str, *, host: str = "127.0.0.1", port: int = 0,
                 action_factory: Callable[[Pipe], FrameAction] | None = None) -> None:
        up_host, up_port = upstream.rsplit(":", 1)
        self.upstream_host = up_host.removeprefix("ws://")
        self.upstream_port = int(up_port.rstrip("/"))
        self.host = host
        self.port = port
        self.action_factory: Callable[[Pipe], FrameAction] = action_factory or (lambda _pipe: FrameAction())
        self.connections = 0
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def serve(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await Pipe(self, reader, writer).run()

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
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--upstream", default="127.0.0.1:8765")
    p.add_argument("--delay-ms", type=float, default=0.0, help="fixed delay of every server→client frame")
    p.add_argument("--duration", type=float, default=3600.0, help="stop after this many seconds")
    args = p.parse_args(argv)
    host, port = args.listen.rsplit(":", 1)
    delay = args.delay_ms / 1000
    proxy = Proxy(args.upstream, host=host, port=int(port),
                  action_factory=(lambda _p: Delay(delay)) if delay else None)

    async def run() -> None:
        await proxy.serve()
        print(f"chatbench proxy ready {proxy.url} -> {args.upstream}", flush=True)
        await asyncio.sleep(args.duration)

    asyncio.run(run())


if __name__ == "__main__":
    main()
