"""The front: hands a new connection the least-loaded live gateway (``GET /gateway`` on the logic node's
admin port). Load is each gateway's connection count, refreshed from Redis every second, plus what the
front handed out since — so a reconnect storm is spread, not sent to whichever gateway looked emptiest."""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis

from reference_server.cluster.gateway_node import LOAD_KEY, URL_KEY
from reference_server.cluster.logic_node import ALIVE_KEY

REFRESH_S = 1.0


class Front:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._load: dict[int, int] = {}
        self._urls: dict[int, str] = {}
        self._at = 0.0

    async def _refresh(self) -> None:
        loads: dict[Any, Any] = await self.redis.hgetall(LOAD_KEY)
        urls: dict[Any, Any] = await self.redis.hgetall(URL_KEY)
        gws = [int(k) for k in urls]
        async with self.redis.pipeline(transaction=False) as pipe:
            for gw in gws:
                pipe.exists(ALIVE_KEY.format(gw))
            alive = await pipe.execute()
        self._urls = {gw: urls[str(gw).encode()].decode() for gw, ok in zip(gws, alive, strict=True) if ok}
        self._load = {gw: int(loads.get(str(gw).encode(), 0)) for gw in self._urls}
        self._at = time.monotonic()

    async def pick(self) -> dict[str, Any] | None:
        if time.monotonic() - self._at > REFRESH_S:
            await self._refresh()
        if not self._load:
            return None
        gw = min(self._load, key=lambda g: (self._load[g], g))
        self._load[gw] += 1
        return {"gateway": gw, "url": self._urls[gw], "connections": self._load[gw]}
