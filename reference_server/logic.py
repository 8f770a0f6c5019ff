"""The logic layer: requests in, the send pipeline, replies out.

Send path: validate → writer (seq → storage → unread → offline, one transaction) → ack + fan-out.
Every request gets exactly one reply frame (its result or an ``error`` with a stable code); a bad frame
never affects the connection or anyone else.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from time import perf_counter
from typing import TYPE_CHECKING

from reference_server import protocol
from reference_server.directory import Directory, Group
from reference_server.fanout import Fanout
from reference_server.frames import ws_frame
from reference_server.limits import TokenBuckets
from reference_server.metrics import ServerMetrics
from reference_server.protocol import (
    Delete,
    ErrorCode,
    GroupState,
    Message,
    Ping,
    ProtocolError,
    Read,
    Recall,
    Send,
    Sync,
    Unread,
)
from reference_server.roles import Client
from reference_server.store import DeleteJob, OfflineDrainJob, ReadJob, RecallJob, SendJob, Store

if TYPE_CHECKING:
    from reference_server.config import ServerConfig

log = logging.getLogger("chat.logic")

#: what a request other than send costs of its user's request budget at least (seconds of server time)
MIN_REQUEST_COST_S = 50e-6


class _WithRemoved(Mapping[int, int]):
    """A group's members plus those a leave signal removed (they hear it), without copying a large group."""

    __slots__ = ("members", "removed")

    def __init__(self, members: Mapping[int, int], removed: dict[int, int]) -> None:
        self.members, self.removed = members, removed

    def __getitem__(self, uid: int) -> int:
        got = self.removed.get(uid)
        return self.members[uid] if got is None else got

    def __iter__(self) -> Iterator[int]:
        yield from self.removed
        yield from (u for u in self.members if u not in self.removed)

    def __len__(self) -> int:
        return len(self.members) + len(self.removed)  # disjoint: the removed are no longer members


class ChatLogic:
    """The request handling of the server (``roles.Logic``): the embedded gateway's clients and a cluster logic
    node's remote ones look the same to it (``roles.Client``)."""

    def __init__(self, config: ServerConfig, metrics: ServerMetrics, store: Store) -> None:
        self.config = config
        self.metrics = metrics
        self.store = store
        self.directory: Directory = store.directory
        self.fanout: Fanout | None = None  # set by the server of the role, from what it pushes through
        self.accepting = True
        # per user, not per connection: reconnecting must not refill a bucket
        self.send_buckets = TokenBuckets(config.send_rate, config.send_burst) if config.send_rate else None
        # the request budget, in seconds of server time per user
        self.request_budget = (TokenBuckets(config.request_budget_ms / 1000, config.request_burst_ms / 1000)
                               if config.request_budget_ms > 0 else None)
        self._flushed_sts: list[int] = []  # accept times of messages fanned out since the last flush
        self._req = {op: metrics.requests.labels(op) for op in ("send", "sync", "read", "unread", "delete", "recall",
                                                           "ping")}

    # -- connection events
    def user_exists(self, uid: int) -> bool:
        return uid in self.directory.users

    def admits(self, uid: int) -> bool:
        """A new connection of uid is accepted unless its request budget is used up (a reconnect refills nothing)."""
        return self.request_budget is None or not self.request_budget.exhausted(uid)

    def budget_wait(self, uid: int) -> float:
        return 0.0 if self.request_budget is None else self.request_budget.wait_s(uid)

    def on_disconnect(self, conn: Client) -> None:
        pass  # nothing of a user lives on its connection

    def on_connect(self, conn: Client) -> None:
        start = perf_counter()
        c = self.config
        gids = sorted(self.directory.groups_of(conn.uid))
        groups = [self._state(conn.uid, self.directory.groups[gid]) for gid in gids]
        conn.send(protocol.encode_hello(
            conn.uid, groups, max_body_chars=c.max_body_chars, max_frame_bytes=c.max_frame_bytes,
            idle_timeout_s=c.idle_timeout_s, send_rate=c.send_rate or 0.0,
            send_burst=c.send_burst, offline=self.store.offline.name,
        ))
        if self.store.offline.buffers:
            self.store.submit(OfflineDrainJob(conn.uid, lambda job: self._drained(conn, job)))
        if self.request_budget is not None:  # hello is work done for the user: a reconnect loop pays for itself
            self.request_budget.spend(conn.uid, max(perf_counter() - start, MIN_REQUEST_COST_S))

    def _drained(self, conn: Client, job: OfflineDrainJob) -> None:
        """Event loop: send the user's drained offline buffer as it sees each entry now."""
        if job.error is not None:
            return  # the buffer is intact (rolled back); the next connect sends it
        lookup, db, uid = self.store.storage.lookup, self.store.reader, conn.uid
        msgs = [m for gid, seq in job.entries if (m := lookup(db, uid, gid, seq)) is not None]
        conn.send(protocol.encode_offline(msgs, job.dropped))

    def reject_frame(self, conn: Client, why: str) -> None:
        self._error(conn, ProtocolError(ErrorCode.BAD_FRAME, why))
        if self.request_budget is not None:
            self.request_budget.spend(conn.uid, MIN_REQUEST_COST_S)

    def handle(self, conn: Client, payload: bytes) -> None:
        """One text frame. A valid send is paid from the send rate; anything else from the request budget: the
        server time it took (at least MIN_REQUEST_COST_S). An edge that can stops reading a user whose budget is
        used up (``budget_wait``); one that cannot (a cluster's gateways) gets rate_limited for such requests."""
        budget = self.request_budget
        start = perf_counter()
        try:
            req = protocol.decode_request(payload, max_body_chars=self.config.max_body_chars)
            # exact-type dispatch (cheaper than isinstance; mypy narrows it too)
            if type(req) is Send:
                self._req["send"].inc()
                self._send(conn, req)
                return
            if budget is not None and budget.exhausted(conn.uid):
                raise ProtocolError(ErrorCode.RATE_LIMITED, f"over the request budget of {budget.rate * 1000:g} ms of "
                                    "server time per second; not served", req.rid)
            if type(req) is Sync:
                self._req["sync"].inc()
                self._sync(conn, req)
            elif type(req) is Read:
                self._req["read"].inc()
                self._read(conn, req)
            elif type(req) is Unread:
                self._req["unread"].inc()
                self._unread(conn, req)
            elif type(req) is Delete:
                self._req["delete"].inc()
                self._delete(conn, req)
            elif type(req) is Recall:
                self._req["recall"].inc()
                self._recall(conn, req)
            elif type(req) is Ping:
                self._req["ping"].inc()
                conn.send(protocol.encode_pong(req.rid))
        except ProtocolError as exc:
            self._error(conn, exc)
        if budget is not None:
            budget.spend(conn.uid, max(perf_counter() - start, MIN_REQUEST_COST_S))

    def _error(self, conn: Client, exc: ProtocolError) -> None:
        self.metrics.errors.labels(exc.code).inc()
        conn.send(protocol.encode_error(exc.code, exc.message, exc.rid))

    def _group(self, uid: int, gid: int, rid: int | None) -> Group:
        group = self.directory.groups.get(gid)
        if group is None or uid not in group.members:
            raise ProtocolError(ErrorCode.NOT_MEMBER, f"user {uid} is not a member of group {gid}", rid)
        return group

    # -- send
    def _send(self, conn: Client, req: Send) -> None:
        sts = protocol.now_us()
        self._writable(req.rid)
        self._group(conn.uid, req.gid, req.rid)
        buckets = self.send_buckets
        if buckets is not None and not buckets.take(conn.uid):
            raise ProtocolError(ErrorCode.RATE_LIMITED, f"over {buckets.rate:g} messages/s; not accepted", req.rid)
        rid = req.rid
        msg = Message(req.gid, 0, conn.uid, req.cts, sts, req.body, req.to)
        self.store.submit(SendJob(msg, lambda job: self._sent(conn, rid, job)))

    def _sent(self, conn: Client, rid: int | None, job: SendJob) -> None:
        """Event loop, after the commit: ack the sender, push to the online members."""
        if job.error is not None:
            assert isinstance(job.error, ProtocolError)
            self._error(conn, ProtocolError(job.error.code, job.error.message, rid))
            return
        msg = job.msg
        assert msg is not None and self.fanout is not None
        self.metrics.messages_accepted.inc()
        conn.send(protocol.encode_ack(rid, msg.gid, msg.seq, msg.sts))
        n = self.fanout.push(msg, ws_frame(protocol.encode_push(msg)), self.directory.groups[msg.gid].members)
        self.metrics.deliveries.inc(n)
        if self.fanout.local:  # pushed by this process's next flush (a cluster's gateways write their own)
            self._flushed_sts.append(msg.sts)

    def publish(self, msg: Message, also: Sequence[int] = ()) -> None:
        """Event loop, after the commit: push a signal to the group's online members (and to ``also``, users
        no longer in the group who must hear it: the removed members of a leave signal)."""
        assert self.fanout is not None
        members: Mapping[int, int] = self.directory.groups[msg.gid].members
        if also:  # a view of the members that still holds them (joined before the signal), for this push only
            members = _WithRemoved(members, dict.fromkeys(also, msg.seq - 1))
        n = self.fanout.push(msg, ws_frame(protocol.encode_push(msg)), members)
        self.metrics.deliveries.inc(n)

    def after_flush(self) -> None:
        """The gateway wrote every queued frame: observe accept → write for the messages in it."""
        if self._flushed_sts:
            now = protocol.now_us()
            observe = self.metrics.push_latency.observe
            for sts in self._flushed_sts:
                observe((now - sts) / 1e6)
            self._flushed_sts.clear()

    # -- sync / read / unread / delete
    def _sync(self, conn: Client, req: Sync) -> None:
        group = self._group(conn.uid, req.gid, req.rid)
        self.metrics.sync_requests.inc()
        after = max(req.after, group.members[conn.uid])
        msgs, last = self.store.storage.history(self.store.reader, conn.uid, req.gid, after, req.limit)
        # read after the query: a commit may have landed in between (the scan saw it before the directory did);
        # nothing scanned (after at or past the latest seq): the latest seq, not ``after``
        max_seq = max(group.max_seq, last) if last > after else group.max_seq
        conn.send(protocol.encode_sync_page(req.rid, req.gid, msgs, last, last < max_seq, max_seq))

    def _state(self, uid: int, group: Group) -> GroupState:
        count = self.store.unread.count(self.store.reader, uid, group)
        return GroupState(group.gid, group.max_seq, group.read.get(uid, 0), count)

    def _writable(self, rid: int | None) -> None:
        if not self.accepting:
            raise ProtocolError(ErrorCode.UNAVAILABLE, "server is shutting down", rid)

    def _read(self, conn: Client, req: Read) -> None:
        self._group(conn.uid, req.gid, req.rid)
        self._writable(req.rid)

        def done(job: ReadJob) -> None:
            if job.error is not None:
                assert isinstance(job.error, ProtocolError)
                self._error(conn, job.error)
            else:
                conn.send(protocol.encode_read_reply(job.rid, self._state(conn.uid, self.directory.groups[job.gid])))

        self.store.submit(ReadJob(conn.uid, req.gid, req.seq, req.rid, done))

    def _unread(self, conn: Client, req: Unread) -> None:
        if req.gids is None:
            gids = sorted(self.directory.groups_of(conn.uid))
        else:
            gids = list(dict.fromkeys(req.gids))  # a repeated gid is reported once
            if len(gids) > protocol.MAX_UNREAD_GIDS:
                raise ProtocolError(ErrorCode.BAD_FIELD, f"'gids' names {len(gids)} groups, at most "
                                    f"{protocol.MAX_UNREAD_GIDS}", req.rid)
        groups = [self._group(conn.uid, gid, req.rid) for gid in gids]
        conn.send(protocol.encode_unread_reply(req.rid, [self._state(conn.uid, g) for g in groups]))

    def _delete(self, conn: Client, req: Delete) -> None:
        self._group(conn.uid, req.gid, req.rid)
        self._writable(req.rid)

        def done(job: DeleteJob) -> None:
            if job.error is not None:
                assert isinstance(job.error, ProtocolError)
                self._error(conn, job.error)
            else:
                conn.send(protocol.encode_delete_reply(job.rid, job.gid, job.seq))

        self.store.submit(DeleteJob(conn.uid, req.gid, req.seq, req.rid, done))

    def _recall(self, conn: Client, req: Recall) -> None:
        self._group(conn.uid, req.gid, req.rid)
        self._writable(req.rid)

        def done(job: RecallJob) -> None:
            if job.error is not None:
                assert isinstance(job.error, ProtocolError)
                self._error(conn, job.error)
                return
            msg = job.msg
            assert msg is not None
            conn.send(protocol.encode_recall_reply(job.rid, msg.gid, msg.seq, msg.ref, msg.sts))
            self.publish(msg)

        self.store.submit(RecallJob(conn.uid, req.gid, req.seq, req.rid, self.config.recall_window_s, done))
