"""Per-user push (cluster baseline): for every message the logic node reads the central online registry
(Redis hash uid → gateway) for the receivers and publishes one bus message per online receiver to its
gateway. Cost per group message: O bus messages (O = online receivers), N registry reads. Pipelined, but
counted per message."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING

from reference_server.cluster import wire
from reference_server.cluster.logic_node import ONLINE_KEY
from reference_server.directory import Group
from reference_server.fanout import Fanout
from reference_server.protocol import Message

if TYPE_CHECKING:
    from reference_server.cluster.logic_node import LogicNode

LOOKUP_CHUNK = 2000


class PerUserFanout(Fanout):
    name = "per-user"

    def __init__(self, node: LogicNode) -> None:
        self.node = node
        # one task works the queue, so per-group order on the bus is the seq order
        self._queue: asyncio.Queue[tuple[Message, bytes, Mapping[int, int]]] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def push(self, msg: Message, frame: bytes, group: Group) -> int:
        self._queue.put_nowait((msg, frame, group.members))
        return 0  # deliveries are counted by the gateways that make them

    async def _run(self) -> None:
        node = self.node
        while True:
            msg, frame, members = await self._queue.get()
            seq, sender = msg.seq, msg.sender
            pairs = members.items() if msg.to is None else [(u, members.get(u, seq)) for u in msg.to]
            receivers = [uid for uid, join in pairs if join < seq and uid != sender]
            for i in range(0, len(receivers), LOOKUP_CHUNK):
                chunk = receivers[i:i + LOOKUP_CHUNK]
                try:
                    where = await node.bus.redis.hmget(ONLINE_KEY, chunk)
                except Exception:
                    where = [None] * len(chunk)  # registry unreachable: receivers repair by sync
                node.metrics.registry_reads.inc(len(chunk))
                publish = node.bus.publish
                for uid, gw in zip(chunk, where, strict=True):
                    if gw is not None:
                        publish(wire.gateway_channel(int(gw)), wire.to_user(uid, frame, wire.PUSH))
