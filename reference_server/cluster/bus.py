"""The cluster bus on a real Redis: pub/sub for messages, plain commands for the registries.

Publishing is fire-and-forget in order: one writer task drains a queue and sends pipelined PUBLISH
commands on one connection, so the order of publishes from one node is the order on the bus. Pub/sub has
no persistence: a message published while a subscriber is reconnecting is lost to it, which is why
clients resume by seq. When Redis goes away the bus retries with backoff, re-subscribes, and runs every
``on_reconnect`` hook (each node re-registers its state there), logging and counting each reconnect.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from reference_server.cluster import wire

if TYPE_CHECKING:
    from reference_server.metrics import ServerMetrics

log = logging.getLogger("chat.bus")

Handler = Callable[[bytes], None]
REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


class RedisBus:
    def __init__(self, url: str, metrics: ServerMetrics, *, name: str, max_queue: int = 1_000_000) -> None:
        self.url = url
        self.name = name
        self.redis: aioredis.Redis = aioredis.Redis.from_url(url, socket_connect_timeout=2, health_check_interval=5)
        self._handlers: dict[str, Handler] = {}
        self._queue: collections.deque[tuple[str, bytes]] = collections.deque()
        self._max_queue = max_queue
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.metrics = metrics
        self._published = {kind: metrics.bus_messages.labels(kind) for kind in wire.KIND_NAMES.values()}
        self._received = {code: metrics.bus_received.labels(kind) for code, kind in wire.KIND_NAMES.items()}
        self.on_reconnect: list[Callable[[], Awaitable[None]]] = []
        self.dropped = 0  # publishes dropped because the queue overflowed during an outage
        self.connected = asyncio.Event()

    async def start(self, handlers: Mapping[str, Handler]) -> None:
        self._handlers = dict(handlers)
        await self._wait_for_redis()
        self._tasks = [asyncio.create_task(self._read(), name=f"{self.name}-bus-read"),
                       asyncio.create_task(self._write(), name=f"{self.name}-bus-write")]
        await self.connected.wait()

    async def stop(self) -> None:
        await self.flush(timeout=2.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.redis.aclose()

    def publish(self, channel: str, data: bytes) -> None:
        """Queue one bus message (its first byte is its wire type); it is counted as published now."""
        self._published[wire.KIND_NAMES[data[0]]].inc()
        if len(self._queue) >= self._max_queue:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append((channel, data))
        self._wake.set()

    async def flush(self, timeout: float) -> None:
        """Wait until every queued publish has been sent (or timeout)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._queue and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)

    async def _wait_for_redis(self) -> None:
        delay = 0.05
        while True:
            try:
                await self.redis.ping()
                return
            except REDIS_ERRORS as exc:
                log.warning("%s: redis at %s not reachable (%s); retrying in %.1f s", self.name, self.url, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _write(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), 1000))]
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for channel, data in batch:
                        pipe.publish(channel, data)
                    await pipe.execute()
            except REDIS_ERRORS as exc:
                # not published: put the batch back in order and wait for Redis
                self._queue.extendleft(reversed(batch))
                log.warning("%s: publish failed (%s); holding %d messages", self.name, exc, len(self._queue))
                await self._wait_for_redis()

    async def _read(self) -> None:
        first = True
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*self._handlers)
                if not first:
                    self.metrics.redis_reconnects.inc()
                    log.warning("%s: reconnected to redis at %s; re-registering state", self.name, self.url)
                    for hook in self.on_reconnect:
                        await hook()
                first = False
                self.connected.set()
                handlers = {k.encode(): v for k, v in self._handlers.items()}
                n = 0
                while True:
                    n += 1
                    if n % 64 == 0:
                        # with a backlog buffered, get_message never suspends: let flushes and signals run
                        await asyncio.sleep(0)
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is None or msg["type"] != "message":
                        continue
                    handler = handlers.get(msg["channel"])
                    if handler is None:
                        continue
                    data = msg["data"]
                    self._received[data[0]].inc()
                    try:
                        handler(data)
                    except Exception:
                        log.exception("%s: handling a bus message failed", self.name)
            except REDIS_ERRORS as exc:
                self.connected.clear()
                log.warning("%s: lost redis (%s); reconnecting", self.name, exc)
                await self._wait_for_redis()
            finally:
                with contextlib.suppress(Exception):  # the connection may already be gone
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py 8 leaves it unannotated
