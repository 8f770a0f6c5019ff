"""The logic node of a cluster: storage, seq, unread, offline and the fan-out decision, no client sockets.

Gateways forward each client frame over the bus (``REQ``); the logic node answers through a
:class:`RemoteConn`, which publishes the reply, already WebSocket-framed, to the user's gateway. The
request handling is the embedded server's ``ChatLogic`` unchanged: a remote connection is a ``roles.Client``
like a local one, and the node is the logic's edge as the embedded gateway is (and ``roles.Routes`` to the
cluster fan-out modes). One logic node owns every group, so per-group order and gap-free seqs hold as in the embedded
server; gateways scale the sockets.

It also keeps, from CONNECT/DISCONNECT, which gateway holds which user (for replies) and the routed
registry (group → gateways with online members), and mirrors group membership into Redis, where the
gateways fetch it in batches. Gateways that stop refreshing their liveness key are purged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from reference_server.cluster import wire
from reference_server.cluster.bus import REDIS_ERRORS, RedisBus
from reference_server.frames import ws_frame
from reference_server.protocol import CloseCode

if TYPE_CHECKING:
    from reference_server.directory import Directory
    from reference_server.metrics import ServerMetrics
    from reference_server.protocol import Message
    from reference_server.roles import Logic

log = logging.getLogger("chat.cluster.logic")

ALIVE_KEY = "chat:alive:{}"  # set by each gateway with a short TTL
MEMBERS_KEY = "chat:members:{}"  # hash uid -> join seq, mirrored by the logic node
ONLINE_KEY = "chat:online"  # hash uid -> gateway id, the central online registry, written by gateways
MIRROR_CHUNK = 5000
UP_KEY = "chat:logic:up"  # set by the logic node; missing = Redis lost every key (a restart), liveness keys too
RESTART_GRACE_S = 2.0  # after that, before any gateway is judged dead (they refresh liveness every 0.5 s)


class RemoteConn:
    """A user connected at some gateway, as the logic sees it (``roles.Client``)."""

    __slots__ = ("bus", "channel", "closing", "gw", "uid")

    def __init__(self, bus: RedisBus, gw: int, uid: int) -> None:
        self.bus = bus
        self.gw = gw
        self.uid = uid
        self.channel = wire.gateway_channel(gw)
        self.closing = False

    def send(self, payload: bytes) -> None:
        if not self.closing:
            self.bus.publish(self.channel, wire.to_user(self.uid, ws_frame(payload)))

    def close(self, code: CloseCode, reason: str) -> None:
        if not self.closing:
            self.closing = True
            self.bus.publish(self.channel, wire.close_user(self.uid, code, reason))


class LogicNode:
    def __init__(self, logic: Logic, directory: Directory, bus: RedisBus, metrics: ServerMetrics) -> None:
        self.logic = logic
        self.directory = directory
        self.bus = bus
        self.metrics = metrics
        self.conns: dict[int, RemoteConn] = {}
        #: routed registry: gid -> {gateway id: online members there}, kept on login/logout
        self.group_gateways: dict[int, dict[int, int]] = {}
        self.gateways: set[int] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._mirror_pending: set[int] = set()
        self.loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.bus.on_reconnect.append(self._mirror_all)
        self.bus.on_reconnect.append(self._probe_all)
        self.bus.on_gap.append(self._gap)
        await self.bus.start({wire.LOGIC_CHANNEL: self._on_bus})
        await self._mirror_all()
        self._tasks.append(asyncio.create_task(self._purge_dead_gateways()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.bus.stop()

    # -- requests from gateways
    def _on_bus(self, data: bytes) -> None:
        m = wire.decode(data)
        if m.kind == wire.REQ:
            conn = self.conns.get(m.uid)
            if conn is not None and conn.gw == m.gw:
                self.logic.handle(conn, m.payload)
        elif m.kind == wire.CONNECT:
            self._connect(m.gw, m.uid)
        elif m.kind == wire.DISCONNECT:
            conn = self.conns.get(m.uid)
            if conn is not None and conn.gw == m.gw:
                del self.conns[m.uid]
                self._route(m.uid, m.gw, -1)
                self.logic.on_disconnect(conn)
        elif m.kind == wire.PROBE:  # a gateway (re)started counting: how many messages it should have had from us
            gw = m.gw
            self.bus.publish(wire.gateway_channel(gw), wire.state(
                self.bus.epoch, self.bus.count(wire.gateway_channel(gw)), self.bus.count(wire.BROADCAST_CHANNEL),
                self.bus.count(wire.CONTROL_CHANNEL)), urgent=True, numbered=False)
        elif m.kind == wire.COUNTS:  # what a gateway sent us: any of it that never arrived is a loss
            gw, epoch, sent = wire.decode_counts(data)
            if self.bus.check(wire.LOGIC_CHANNEL, epoch, sent):
                self._reset(gw)

    # -- losses on the bus
    def _gap(self, channel: str, epoch: int, data: bytes) -> None:
        """Requests of a gateway went missing: it closes its clients (4003) and they resume by seq."""
        if channel != wire.LOGIC_CHANNEL:
            return
        self._reset(wire.decode(data).gw)

    def _reset(self, gw: int) -> None:
        log.warning("requests of gateway %d were lost on the bus: telling it to close its clients", gw)
        self.bus.publish(wire.gateway_channel(gw), wire.reset(), urgent=True)

    async def _probe_all(self) -> None:
        """Back on the bus: each gateway answers how many requests it sent."""
        self.bus.publish(wire.CONTROL_CHANNEL, wire.probe_all(), urgent=True, numbered=False)

    def _connect(self, gw: int, uid: int) -> None:
        self.gateways.add(gw)
        if not self.logic.user_exists(uid):
            RemoteConn(self.bus, gw, uid).close(CloseCode.POLICY_VIOLATION, f"user {uid} does not exist")
            return
        old = self.conns.get(uid)
        if old is not None:
            if old.gw != gw:
                old.close(CloseCode.REPLACED, "connected again elsewhere")
            self._route(uid, old.gw, -1)
        conn = RemoteConn(self.bus, gw, uid)
        self.conns[uid] = conn
        self._route(uid, gw, +1)
        self.logic.on_connect(conn)

    # -- for the cluster fan-out modes (roles.Routes)
    def to_every_gateway(self, msg: Message, frame: bytes) -> None:
        self.bus.publish(wire.BROADCAST_CHANNEL, wire.for_group(msg, frame))

    def to_gateways(self, gateways: Iterable[int], msg: Message, frame: bytes) -> None:
        data = wire.for_group(msg, frame)  # built once, the same bytes to each
        for gw in gateways:
            self.bus.publish(wire.gateway_channel(gw), data)

    def to_user(self, gateway: int, uid: int, frame: bytes) -> None:
        self.bus.publish(wire.gateway_channel(gateway), wire.to_user(uid, frame, wire.PUSH))

    async def locate(self, uids: Sequence[int]) -> list[int | None]:
        """Each user's gateway from the central online registry, counted as registry reads."""
        conns = self.conns
        try:
            where = await self.bus.redis.hmget(ONLINE_KEY, list(uids))
        except Exception:  # registry unreachable (a Redis outage): this node's own record of who is where
            return [conns[u].gw if u in conns else None for u in uids]
        self.metrics.registry_reads.inc(len(uids))
        # where this node knows better (the registry lags a login by its 50 ms flush, and comes back empty after
        # a Redis restart), its own record wins: a user online here is never skipped
        return [conns[u].gw if u in conns else int(gw) if gw is not None else None
                for u, gw in zip(uids, where, strict=True)]

    def _route(self, uid: int, gw: int, delta: int) -> None:
        """Keep the routed registry: the user's groups gain or lose one online member at gateway gw."""
        gids = self.directory.groups_of(uid)
        for gid in gids:
            gws = self.group_gateways.setdefault(gid, {})
            n = gws.get(gw, 0) + delta
            if n > 0:
                gws[gw] = n
            else:
                gws.pop(gw, None)
        self.metrics.registry_updates.inc(len(gids))

    def route_members(self, gid: int, uids: Sequence[int], delta: int) -> set[int]:
        """Members added (+1) to or removed (−1) from group ``gid``: count the online ones at their gateways in
        the routed registry; return those gateways."""
        touched: set[int] = set()
        gws = self.group_gateways.setdefault(gid, {})
        for uid in uids:
            conn = self.conns.get(uid)
            if conn is None:
                continue
            touched.add(conn.gw)
            n = gws.get(conn.gw, 0) + delta
            if n > 0:
                gws[conn.gw] = n
            else:
                gws.pop(conn.gw, None)
        self.metrics.registry_updates.inc(len(touched))
        return touched

    # -- membership mirror for the gateways' filters
    def members_changed(self, gid: int) -> None:
        """Directory hook (any thread): re-mirror one group and tell the gateways to drop their copy."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self._schedule_mirror, gid)

    def _schedule_mirror(self, gid: int) -> None:
        if gid not in self._mirror_pending:
            self._mirror_pending.add(gid)
            asyncio.get_running_loop().create_task(self._mirror_one(gid))

    async def _mirror_one(self, gid: int) -> None:
        self._mirror_pending.discard(gid)
        try:
            await self._mirror(gid)
        except REDIS_ERRORS as exc:
            log.warning("mirroring group %d failed (%s); the reconnect hook mirrors again", gid, exc)
        self.bus.publish(wire.CONTROL_CHANNEL, wire.members_changed(gid))

    async def _mirror(self, gid: int) -> None:
        group = self.directory.groups.get(gid)
        key = MEMBERS_KEY.format(gid)
        items = list(group.members.items()) if group is not None else []
        async with self.bus.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            for i in range(0, len(items), MIRROR_CHUNK):
                pipe.hset(key, mapping=dict(items[i:i + MIRROR_CHUNK]))
            await pipe.execute()

    async def _mirror_all(self) -> None:
        for gid in list(self.directory.groups):
            await self._mirror(gid)
        log.info("mirrored %d groups' members into redis", len(self.directory.groups))

    # -- liveness: forget gateways whose key expired (killed, partitioned)
    async def _purge_dead_gateways(self) -> None:
        loop = asyncio.get_running_loop()
        grace_until = 0.0
        while True:
            await asyncio.sleep(1.0)
            gws = list(self.gateways)
            try:
                async with self.bus.redis.pipeline(transaction=False) as pipe:
                    pipe.set(UP_KEY, 1, nx=True)
                    for gw in gws:
                        pipe.exists(ALIVE_KEY.format(gw))
                    restarted, *alive = await pipe.execute()
            except REDIS_ERRORS:
                continue
            if restarted:  # Redis came back empty: no liveness key is there until each gateway's next heartbeat
                grace_until = loop.time() + RESTART_GRACE_S
            if loop.time() < grace_until:
                continue
            for gw, ok in zip(gws, alive, strict=True):
                if not ok:
                    self._purge(gw)

    def _purge(self, gw: int) -> None:
        gone = [uid for uid, conn in self.conns.items() if conn.gw == gw]
        for uid in gone:
            del self.conns[uid]
            self._route(uid, gw, -1)
        self.gateways.discard(gw)
        log.warning("gateway %d is gone (liveness key expired): forgot its %d users", gw, len(gone))
