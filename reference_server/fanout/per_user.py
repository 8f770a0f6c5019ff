"""Per-user push (cluster baseline): for every message the logic node reads the central online registry
(Redis hash uid → gateway) for the receivers and publishes one bus message per online receiver to its
gateway. Cost per group message: O bus messages (O = online receivers), N registry reads. Pipelined, but
counted per message."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from reference_server.directory import audience
from reference_server.fanout import Fanout
from reference_server.protocol import Message
from reference_server.roles import Routes

LOOKUP_CHUNK = 2000


class PerUserFanout(Fanout):
    name = "per-user"

    def __init__(self, routes: Routes) -> None:
        self.routes = routes
        # one task works the queue, so per-group order on the bus is the seq order
        self._queue: asyncio.Queue[tuple[Message, bytes, Mapping[int, int]]] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())  # held: the loop keeps only weak refs

    def push(self, msg: Message, frame: bytes, members: Mapping[int, int]) -> int:
        self._queue.put_nowait((msg, frame, members))
        return 0  # deliveries are counted by the gateways that make them

    async def _run(self) -> None:
        routes = self.routes
        while True:
            msg, frame, members = await self._queue.get()
            receivers = audience(members, msg)
            for i in range(0, len(receivers), LOOKUP_CHUNK):
                chunk = receivers[i:i + LOOKUP_CHUNK]
                for uid, gw in zip(chunk, await routes.locate(chunk), strict=True):
                    if gw is not None:
                        routes.to_user(gw, uid, frame)
