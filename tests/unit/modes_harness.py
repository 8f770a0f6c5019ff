"""An in-process server for unit tests of the modes: the real ChatLogic, Store (writer thread, SQLite) and
LocalFanout, with fake connections that capture the frames they are sent instead of sockets."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from reference_server import offline, protocol, storage, unread
from reference_server.config import ServerConfig
from reference_server.fanout.local import LocalFanout
from reference_server.logic import ChatLogic
from reference_server.metrics import ServerMetrics
from reference_server.store import Barrier, ChangeMembers, CreateGroups, CreateUsers, Store, UnreadFlushJob

Frame = dict[str, Any]


def ws_payload(frame: bytes) -> bytes:
    n = frame[1] & 0x7F
    return frame[2:] if n < 126 else frame[4:] if n == 126 else frame[10:]


class FakeConn:
    """Stands in for gateway.Conn (a roles.Client and roles.Receiver): records every frame queued to it."""

    def __init__(self, uid: int) -> None:
        self.uid = uid
        self.closing = False
        self.frames: list[Frame] = []

    def queue(self, frame: bytes) -> None:
        self.frames.append(orjson.loads(ws_payload(frame)))

    def send(self, payload: bytes) -> None:
        if not self.closing:
            self.frames.append(orjson.loads(payload))


class FakeGateway:
    """Stands in for gateway.Gateway as the local fan-out's roles.Sockets."""

    def __init__(self) -> None:
        self.online: dict[int, FakeConn] = {}

    def kick(self) -> None:
        pass


class Harness:
    def __init__(self, db_path: Path, **config: Any) -> None:
        config.setdefault("send_rate", None)
        config.setdefault("unread_flush_ms", 3_600_000.0)  # tests flush explicitly
        self.config = ServerConfig(db_path=db_path, **config)
        c = self.config
        self.registry = CollectorRegistry()
        self.metrics = ServerMetrics(self.registry, version="test", modes=c.modes())
        self.loop = asyncio.new_event_loop()
        st = storage.create(c.storage, c)
        self.store = Store(c.db_path, synchronous="normal", max_batch=c.max_batch, storage=st,
                           unread=unread.create(c.unread, st, c), offline=offline.create(c.offline, c),
                           metrics=self.metrics, unread_repair=c.unread_repair,
                           checkpoint_s=c.sqlite_checkpoint_ms / 1000)
        self.logic = ChatLogic(c, self.metrics, self.store)
        self.gateway = FakeGateway()
        self.logic.fanout = LocalFanout(self.gateway)
        self.store.online = self.gateway.online.__contains__
        self.store.start(self.loop)
        self.rids = itertools.count(1)
        self.received: dict[int, list[Frame]] = {}  # every frame each user got, over all its connections

    def close(self) -> None:
        self.store.close()
        self.loop.close()

    def settle(self) -> None:
        """Wait until every job submitted so far is done (on the loop)."""
        fut = self.loop.create_future()
        self.store.submit(Barrier(lambda: fut.set_result(None)))
        self.loop.run_until_complete(fut)
        self.loop.run_until_complete(asyncio.sleep(0))

    def admin(self, job: Any) -> Any:
        self.store.submit(job)
        return self.loop.run_until_complete(job.future)

    def provision(self, users: list[int], groups: dict[int, list[int]]) -> None:
        self.admin(CreateUsers(self.loop, users))
        self.admin(CreateGroups(self.loop, list(groups.items())))

    def change(self, gid: int, add: list[int] = (), remove: list[int] = ()) -> Any:  # type: ignore[assignment]
        result = self.admin(ChangeMembers(self.loop, gid, list(add), list(remove), self.logic.publish))
        self.settle()
        return result

    def flush(self) -> None:
        self.store.submit(UnreadFlushJob())
        self.settle()

    # -- connections
    def online(self, uid: int) -> FakeConn:
        conn = FakeConn(uid)
        conn.frames = self.received.setdefault(uid, [])
        self.gateway.online[uid] = conn
        self.logic.on_connect(conn)
        self.settle()
        return conn

    def offline(self, uid: int) -> None:
        conn = self.gateway.online.pop(uid, None)
        if conn is not None:
            conn.closing = True

    def request(self, uid: int, encode: Any, *args: Any) -> Frame:
        conn = self.gateway.online[uid]
        rid = next(self.rids)
        self.logic.handle(conn, encode(rid, *args))
        self.settle()
        replies = [f for f in conn.frames if f.get("rid") == rid]
        assert len(replies) == 1, replies
        return replies[0]

    def history(self, uid: int, gid: int) -> list[Frame] | str:
        after, out = 0, []
        while True:
            page = self.request(uid, protocol.encode_sync, gid, after, 3)
            if page["op"] == "error":
                return str(page["code"])
            out.extend(page["msgs"])
            if not page["more"]:
                return out
            after = page["next"]

    def pages(self, uid: int, gid: int, limit: int, after: int = 0) -> list[Frame] | str:
        """Every sync page from ``after`` on, as the wire has them (without rid; message sts left out, the server
        clock's reading): a storage mode must page exactly like the others, not only return the same entries."""
        out: list[Frame] = []
        while True:
            page = self.request(uid, protocol.encode_sync, gid, after, limit)
            if page["op"] == "error":
                return str(page["code"])
            out.append({"next": page["next"], "more": page["more"], "max": page["max"],
                        "msgs": [{k: v for k, v in m.items() if k != "sts"} for m in page["msgs"]]})
            if not page["more"]:
                return out
            after = page["next"]

    def counter(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0
