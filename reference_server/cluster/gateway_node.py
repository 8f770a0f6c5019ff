"""A gateway node of a cluster: client sockets and a local online index, no storage.

Client frames go to the logic node over the bus; replies and pushes come back on the gateway's own
channel (and, in broadcast mode, on the channel every gateway hears). For group messages (broadcast and
routed modes) the gateway walks the group's member list, which it fetches from Redis in batches of
``MEMBER_BATCH`` the first time it needs it, and queues the frame to the members it holds; every member it
checks but does not hold is counted in ``chat_gateway_filtered_total``.

The gateway keeps its entries in the central online registry (uid → gateway), a liveness key with a
short TTL, and its connection count (the front hands new connections to the least-loaded gateway).

No push is silently lost on a live connection: a gateway that may have missed bus messages — a gap in the
numbers of what it received (cluster/bus.py), fewer messages than the logic node says it sent (PROBE → STATE, at
start and after every reconnect), or the logic node saying it missed requests of this gateway (RESET) — closes
all its clients with 4003, and they resume by seq. After losing Redis it holds its requests until the logic node
answers a PROBE (it listens again), so requests sent meanwhile are not lost on the way. A member list missing
from Redis (not mirrored again yet) is asked for again, never taken for an empty group (``_load_members``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from reference_server import protocol
from reference_server.cluster import wire
from reference_server.cluster.bus import REDIS_ERRORS, RedisBus
from reference_server.cluster.logic_node import ALIVE_KEY, MEMBERS_KEY, ONLINE_KEY
from reference_server.directory import audience
from reference_server.gateway import Gateway
from reference_server.protocol import CloseCode, ErrorCode

if TYPE_CHECKING:
    from reference_server.config import ServerConfig
    from reference_server.metrics import ServerMetrics
    from reference_server.roles import Client

log = logging.getLogger("chat.cluster.gateway")

MEMBER_BATCH = 100  # the lesson: member lists reach gateways about 100 at a time
PROBE_EVERY_S = 0.5  # a PROBE is repeated this often until the logic node answers
HOLD_MAX_S = 5.0  # requests held after a reconnect are sent anyway after this long without an answer
#: a group's member list missing from Redis (not mirrored yet: after a Redis restart the logic node mirrors every
#: group again, and a group message can arrive first) or unreadable is asked for again this often, this long; then
#: the gateway closes its clients with 4003 rather than dropping the group's held messages silently
MEMBERS_RETRY_S = 0.1
MEMBERS_WAIT_S = 5.0
LOAD_KEY = "chat:load"  # hash gateway id -> connections
URL_KEY = "chat:gateways"  # hash gateway id -> public ws:// URL
ALIVE_TTL_S = 2  # refreshed every HEARTBEAT_S: a dead gateway is forgotten within 2 s
HEARTBEAT_S = 0.5
# delete uid's registry entry only if it still names this gateway (the user may have moved on)
_DEL_IF_MINE = "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end"


class RemoteLogic:
    """The gateway edge's ``roles.Logic`` in a cluster: everything goes over the bus to the logic node."""

    def __init__(self, node: GatewayNode) -> None:
        self.node = node

    def user_exists(self, uid: int) -> bool:
        return True  # the logic node refuses unknown users (close 1008) right after the upgrade

    def admits(self, uid: int) -> bool:
        return True  # the budgets live at the logic node, which answers over-budget requests with rate_limited

    def budget_wait(self, uid: int) -> float:
        return 0.0

    def handle(self, conn: Client, payload: bytes) -> None:
        self.node.bus.publish(wire.LOGIC_CHANNEL, wire.request(wire.REQ, self.node.gw, conn.uid, payload))

    def reject_frame(self, conn: Client, why: str) -> None:
        conn.send(protocol.encode_error(ErrorCode.BAD_FRAME, why))

    def on_connect(self, conn: Client) -> None:
        self.node.registry[conn.uid] = True
        self.node.ungreeted.add(conn.uid)  # no push before its hello
        self.node.bus.publish(wire.LOGIC_CHANNEL, wire.request(wire.CONNECT, self.node.gw, conn.uid))

    def on_disconnect(self, conn: Client) -> None:
        self.node.registry[conn.uid] = False
        self.node.ungreeted.discard(conn.uid)
        self.node.bus.publish(wire.LOGIC_CHANNEL, wire.request(wire.DISCONNECT, self.node.gw, conn.uid))

    def after_flush(self) -> None:
        pass


class GatewayNode:
    def __init__(self, config: ServerConfig, metrics: ServerMetrics, loop: asyncio.AbstractEventLoop,
                 bus: RedisBus) -> None:
        self.config = config
        self.metrics = metrics
        self.gw = config.gateway_id
        self.bus = bus
        self.gateway = Gateway(config, metrics, RemoteLogic(self), loop)
        self.members: dict[int, dict[int, int]] = {}  # gid -> uid -> join seq, fetched on first use
        self._waiting: dict[int, list[wire.Decoded]] = {}  # group messages held while their members load
        self._held_bytes = 0  # their payloads' bytes, bounded by config.gateway_hold_bytes
        metrics.add_gauges("chat_gateway_held_bytes", "Bytes of group messages a gateway holds while their member "
                           "lists load", lambda: float(self._held_bytes))
        self.registry: dict[int, bool] = {}  # uid -> online here (True) / gone (False), not yet in redis
        # connected, hello not yet here: pushes that arrive before it are at or below its max seqs (the logic node
        # sent them before it handled the connect, and it sends in order), so they are left to the client's sync
        self.ungreeted: set[int] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self.public_url = config.public_url
        self._answered = asyncio.Event()  # the logic node answered the last PROBE
        self._prober: asyncio.Task[None] | None = None

    async def start(self) -> None:
        handlers = {wire.gateway_channel(self.gw): self._on_message, wire.CONTROL_CHANNEL: self._on_control}
        if self.config.fanout == "broadcast":
            handlers[wire.BROADCAST_CHANNEL] = self._on_message
        self._counted = [ch for ch in (wire.gateway_channel(self.gw), wire.BROADCAST_CHANNEL, wire.CONTROL_CHANNEL)
                         if ch in handlers]
        self.bus.on_reconnect.append(self._reregister)
        self.bus.on_gap.append(self._gap)
        self.bus.on_lost.append(self.bus.hold)  # until the logic node answers a PROBE again
        await self.bus.start(handlers)
        self._probe()  # where counting starts
        await self.gateway.start()
        if not self.public_url:
            self.public_url = f"ws://{self.config.host}:{self.gateway.port}"
        await self._heartbeat_once()
        self._tasks = [asyncio.create_task(self._heartbeat()), asyncio.create_task(self._flush_registry())]

    async def stop(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
        for task in self._tasks:
            task.cancel()
        try:
            await self.bus.redis.delete(ALIVE_KEY.format(self.gw))
            await self.bus.redis.hdel(LOAD_KEY, str(self.gw))
        except REDIS_ERRORS:
            pass
        await self.bus.stop()

    # -- from the bus
    def _on_message(self, data: bytes) -> None:
        m = wire.decode(data)
        online = self.gateway.online
        if m.kind in (wire.GROUP, wire.CHANGE):
            members = self.members.get(m.uid)
            if members is None:
                self._hold(m)
            else:
                self._deliver(m, members)
        elif m.kind in (wire.TO_USER, wire.PUSH):
            conn = online.get(m.uid)
            if m.kind == wire.TO_USER:
                self.ungreeted.discard(m.uid)  # the first reply to a connection is its hello
            elif m.uid in self.ungreeted:
                return
            if conn is not None and not conn.closing:
                conn.queue(m.payload)
                self.gateway.kick()
                if m.kind == wire.PUSH:
                    self.metrics.deliveries.inc()
            elif m.kind == wire.PUSH:
                self.metrics.gateway_filtered.inc()  # the registry pointed here, the user is not (any more)
        elif m.kind == wire.CLOSE_USER:
            conn = online.get(m.uid)
            if conn is not None:
                conn.close(CloseCode(m.code), m.payload.decode())
        elif m.kind == wire.STATE:
            self._on_state(m.payload)
        elif m.kind == wire.RESET:
            self._resume_all("the logic node missed requests of this gateway")

    def _on_control(self, data: bytes) -> None:
        m = wire.decode(data)
        if m.kind == wire.MEMBERS:
            self.members.pop(m.uid, None)
        elif m.kind == wire.PROBE_ALL:  # the logic node is back: the number of what we sent it (a gap is a loss)
            sent = self.bus.count(wire.LOGIC_CHANNEL)
            self.bus.publish(wire.LOGIC_CHANNEL, wire.counts(self.gw, self.bus.epoch, sent), urgent=True,
                             numbered=False)

    # -- losses on the bus: close the clients, they resume by seq
    def _gap(self, channel: str, epoch: int, data: bytes) -> None:
        self._resume_all(f"bus messages lost on {channel}")

    def _resume_all(self, why: str) -> None:
        conns = [c for c in self.gateway.online.values() if not c.closing]
        for conn in conns:
            conn.close(CloseCode.RESUME, "messages for you may have been lost; reconnect and resume by seq")
        self.metrics.resume_disconnects.inc(len(conns))
        log.warning("gateway %d: %s: closed its %d clients with %d (they resume by seq)", self.gw, why, len(conns),
                    CloseCode.RESUME)

    def _probe(self) -> None:
        """Ask the logic node how many messages it sent this gateway (until it answers)."""
        self._answered.clear()
        if self._prober is None or self._prober.done():
            self._prober = asyncio.get_running_loop().create_task(self._probing())

    async def _probing(self) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + HOLD_MAX_S
        while not self._answered.is_set():
            self.bus.publish(wire.LOGIC_CHANNEL, wire.probe(self.gw), urgent=True, numbered=False)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._answered.wait(), PROBE_EVERY_S)
            if self.bus.held and loop.time() > give_up:
                log.warning("gateway %d: no answer from the logic node for %.0f s; sending the held requests",
                            self.gw, HOLD_MAX_S)
                self.bus.release()

    def _on_state(self, data: bytes) -> None:
        """The logic node's counts: anything it sent on a channel of ours that never arrived is a loss."""
        epoch, own, broadcast, control = wire.decode_state(data)
        sent = {wire.gateway_channel(self.gw): own, wire.BROADCAST_CHANNEL: broadcast, wire.CONTROL_CHANNEL: control}
        lost = [ch for ch in self._counted if self.bus.check(ch, epoch, sent[ch])]
        if lost:
            self._resume_all(f"bus messages lost on {', '.join(lost)}")
        self._answered.set()
        self.bus.release()

    def _deliver(self, m: wire.Decoded, members: dict[int, int]) -> None:
        online, seq, frame = self.gateway.online, m.seq, m.payload
        if m.kind == wire.CHANGE:  # a join/leave signal: change the copy first (idempotent: a fresh load has it)
            for uid in m.joined:
                members[uid] = seq - 1
            for uid in m.left:
                members.pop(uid, None)
            # the removed hear their leave: members until just before it
            receivers = audience(members, m) + audience(dict.fromkeys(m.left, seq - 1), m)
            checked = len(members) + len(m.left)
        else:
            receivers = audience(members, m)
            checked = len(members) if m.to is None else len(m.to)
        delivered = 0
        ungreeted = self.ungreeted
        for uid in receivers:
            conn = online.get(uid)
            if conn is not None and not conn.closing and uid not in ungreeted:
                conn.queue(frame)
                delivered += 1
        self.gateway.kick()
        self.metrics.deliveries.inc(delivered)
        self.metrics.gateway_filtered.inc(checked - delivered)

    def _hold(self, m: wire.Decoded) -> None:
        held = self._waiting.get(m.uid)
        if held is None:
            held = self._waiting[m.uid] = []
            asyncio.get_running_loop().create_task(self._load_members(m.uid))
        held.append(m)  # kept in arrival order: delivered in seq order once the members are here
        self._held_bytes += len(m.payload)
        if self._held_bytes > self.config.gateway_hold_bytes:
            # every client is told to resume by seq, so nothing held is needed any more: all of it goes (the lists
            # stay, so each group keeps its one loader, and what arrives next is held again)
            dropped = sum(len(h) for h in self._waiting.values())
            for h in self._waiting.values():
                h.clear()
            self._held_bytes = 0
            self.metrics.hold_overflows.inc()
            self._resume_all(f"{dropped} group messages held while member lists load passed "
                             f"{self.config.gateway_hold_bytes} bytes; dropped")

    def _release(self, gid: int) -> list[wire.Decoded]:
        """The group's held messages, no longer held."""
        held = self._waiting.pop(gid, [])
        self._held_bytes -= sum(len(m.payload) for m in held)
        return held

    async def _load_members(self, gid: int) -> None:
        """Load the group's member list, its messages held meanwhile. A group that has messages has members (the
        sender at least): an empty list is one not mirrored yet, asked for again, never taken for the group's."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + MEMBERS_WAIT_S
        why = ""
        while True:
            try:
                members = await self._read_members(gid)
                if members:
                    break
                why = "its member list is not in redis"
            except REDIS_ERRORS as exc:
                why = f"reading its member list failed ({exc})"
            if loop.time() >= give_up:
                held = self._release(gid)
                self._resume_all(f"group {gid}: {why} for {MEMBERS_WAIT_S:g} s; {len(held)} held messages dropped")
                return
            await asyncio.sleep(MEMBERS_RETRY_S)
        self.members[gid] = members
        for m in self._release(gid):
            self._deliver(m, members)

    async def _read_members(self, gid: int) -> dict[int, int]:
        members: dict[int, int] = {}
        cursor = 0
        while True:
            cursor, batch = await self.bus.redis.hscan(MEMBERS_KEY.format(gid), cursor, count=MEMBER_BATCH)
            assert isinstance(batch, dict)  # with values (the stubs also allow no_values' list of keys)
            self.metrics.member_batches.inc()
            members.update((int(k), int(v)) for k, v in batch.items())
            if cursor == 0:
                return members

    # -- registry, liveness, load
    async def _flush_registry(self) -> None:
        script = self.bus.redis.register_script(_DEL_IF_MINE)
        while True:
            await asyncio.sleep(0.05)
            if not self.registry:
                continue
            changes, self.registry = self.registry, {}
            try:
                async with self.bus.redis.pipeline(transaction=False) as pipe:
                    up: dict[Any, Any] = {str(uid): self.gw for uid, on in changes.items() if on}
                    if up:
                        pipe.hset(ONLINE_KEY, mapping=up)
                    for uid, on in changes.items():
                        if not on:
                            await script(keys=[ONLINE_KEY], args=[uid, self.gw], client=pipe)
                    await pipe.execute()
                self.metrics.registry_updates.inc(len(changes))
            except REDIS_ERRORS:
                for uid, on in changes.items():  # keep what did not reach redis; newer changes win
                    self.registry.setdefault(uid, on)

    async def _heartbeat_once(self) -> None:
        async with self.bus.redis.pipeline(transaction=False) as pipe:
            pipe.set(ALIVE_KEY.format(self.gw), 1, ex=ALIVE_TTL_S)
            pipe.hset(LOAD_KEY, str(self.gw), len(self.gateway.online))
            pipe.hset(URL_KEY, str(self.gw), self.public_url)
            await pipe.execute()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            with contextlib.suppress(*REDIS_ERRORS):  # the bus logs the outage and reconnects
                await self._heartbeat_once()

    async def _reregister(self) -> None:
        """After a Redis restart: put this gateway's users, liveness and load back."""
        for uid in self.gateway.online:
            self.registry[uid] = True
        self.members.clear()
        self._probe()
        await self._heartbeat_once()
