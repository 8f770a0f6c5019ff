"""The cluster bus on a real Redis: pub/sub for messages, plain commands for the registries.

Publishing is fire-and-forget in order: one writer task drains a queue and sends pipelined PUBLISH
commands on one connection, so the order of publishes from one node is the order on the bus. Pub/sub has
no persistence: a message published while a subscriber is reconnecting is lost to it. When Redis goes away the
bus retries with backoff, re-subscribes, and runs every ``on_reconnect`` hook (each node re-registers its state
there), logging and counting each reconnect.

Losses are found, not assumed away: every message travels in an envelope with its publisher's epoch (random, per
process) and its number among that publisher's messages on the channel. A subscriber that sees a number skip runs
every ``on_gap`` hook (a copy it has already seen — a batch re-sent after a failed pipeline — is dropped), and
``check`` compares what a publisher says it has sent with what arrived, for losses at the end of a stream (the
nodes exchange those counts after a reconnect: cluster/gateway_node.py, logic_node.py). A node that found a loss
closes the clients concerned with 4003, and they resume by seq. ``hold`` keeps all but ``urgent`` publishes
queued (a gateway, until the logic node is known to listen again).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import struct
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
#: (channel, publisher epoch, the message after the gap)
GapHook = Callable[[str, int, bytes], None]
REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
_ENVELOPE = struct.Struct("!IQ")  # the publisher's epoch, its count of messages on the channel (1, 2, ...)


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
        self.on_gap: list[GapHook] = []
        #: run (synchronously) when the subscription is lost, before reconnecting
        self.on_lost: list[Callable[[], None]] = []
        self.dropped = 0  # publishes dropped because the queue overflowed during an outage
        self.connected = asyncio.Event()
        self.epoch = random.getrandbits(32)
        self._counts: dict[str, int] = {}  # channel -> messages published on it
        self._written: dict[str, int] = {}  # channel -> the last number handed to Redis
        self._seen: dict[tuple[str, int], int] = {}  # (channel, publisher epoch) -> last number received
        self._urgent: collections.deque[tuple[str, bytes]] = collections.deque()  # sent even while held
        self.held = False

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

    def publish(self, channel: str, data: bytes, *, urgent: bool = False, numbered: bool = True) -> None:
        """Queue one bus message (its first byte is its wire type); it is counted as published now. ``urgent``:
        sent even while the bus is held. Not ``numbered`` (number 0): a message whose loss loses nothing (the
        count exchanges themselves), left out of the counts."""
        self._published[wire.KIND_NAMES[data[0]]].inc()
        n = 0
        if numbered:
            n = self._counts[channel] = self._counts.get(channel, 0) + 1
        item = (channel, _ENVELOPE.pack(self.epoch, n) + data)
        if urgent:
            self._urgent.append(item)
        else:
            if len(self._queue) >= self._max_queue:
                self._queue.popleft()  # its number is skipped: the subscribers find the gap
                self.dropped += 1
            self._queue.append(item)
        self._wake.set()

    def count(self, channel: str) -> int:
        """The last number this node has handed to Redis on ``channel`` (messages still queued, e.g. held, are
        not counted: an urgent answer that overtakes them must not make them look lost)."""
        return self._written.get(channel, 0)

    def check(self, channel: str, epoch: int, sent: int) -> bool:
        """A publisher says it has sent ``sent`` messages on ``channel``: whether some of them never arrived here.
        The first word from a publisher sets where counting starts."""
        key = (channel, epoch)
        seen = self._seen.get(key)
        if seen is None or sent > seen:
            self._seen[key] = sent
        return seen is not None and sent > seen

    def hold(self) -> None:
        """Keep every publish but the urgent ones queued, until ``release``."""
        self.held = True

    def release(self) -> None:
        self.held = False
        self._wake.set()

    async def flush(self, timeout: float) -> None:
        """Wait until every queued publish has been sent (or timeout)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while (self._urgent or (self._queue and not self.held)) and asyncio.get_running_loop().time() < deadline:
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
            if not self._urgent and (not self._queue or self.held):
                self._wake.clear()
                await self._wake.wait()
                continue
            source = self._urgent if self._urgent else self._queue
            batch = [source.popleft() for _ in range(min(len(source), 1000))]
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for channel, data in batch:
                        pipe.publish(channel, data)
                    await pipe.execute()
                written = self._written
                for channel, data in batch:
                    number = _ENVELOPE.unpack_from(data)[1]
                    if number > written.get(channel, 0):
                        written[channel] = number
            except REDIS_ERRORS as exc:
                # not published (or some of it: the copies are dropped by number): put the batch back in order,
                # wait for Redis, and for this node's own subscription (publishing before it is back loses replies)
                source.extendleft(reversed(batch))
                log.warning("%s: publish failed (%s); holding %d messages", self.name, exc,
                            len(self._queue) + len(self._urgent))
                await self._wait_for_redis()
                await self.connected.wait()

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
                    channel = msg["channel"]
                    handler = handlers.get(channel)
                    if handler is None:
                        continue
                    envelope = msg["data"]
                    epoch, number = _ENVELOPE.unpack_from(envelope)
                    data = envelope[_ENVELOPE.size:]
                    key = (channel.decode(), epoch)
                    last = self._seen.get(key) if number else None
                    if last is not None and number <= last:
                        continue  # a copy of one already handled (re-sent after a failed pipeline)
                    if number:
                        self._seen[key] = number
                    self._received[data[0]].inc()
                    try:
                        if last is not None and number > last + 1:
                            for on_gap in self.on_gap:
                                on_gap(key[0], epoch, data)
                        handler(data)
                    except Exception:
                        log.exception("%s: handling a bus message failed", self.name)
            except REDIS_ERRORS as exc:
                self.connected.clear()
                log.warning("%s: lost redis (%s); reconnecting", self.name, exc)
                for lost in self.on_lost:
                    lost()
                await self._wait_for_redis()
            finally:
                with contextlib.suppress(Exception):  # the connection may already be gone
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # unannotated before redis-py 8.2
