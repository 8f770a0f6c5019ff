"""SQLite (WAL) behind a single writer thread that commits in groups.

Every state change is a :class:`Job`. The writer takes all queued jobs (up to ``max_batch``), applies them
in one transaction, commits, publishes the batch's exact cost counts, updates the in-memory directory, and
only then hands the batch back to the event loop, where replies and pushes go out. So no ack precedes its
commit, and a seq is assigned inside the transaction that stores it: a rolled-back batch leaves no gap.
Reads (sync, unread) run on the event loop over a second connection; WAL lets them proceed during commits.

Checkpoints — copying the WAL into the database file, with its fsync — run on a third connection in a thread of
their own (``checkpoint_s``, PASSIVE: they never block the writer), not inside a commit as SQLite's autocheckpoint
does: there a checkpoint held every message of the batches queued behind it. The writer keeps an autocheckpoint
at ``WRITER_CHECKPOINT_PAGES`` as the bound on the WAL should the checkpoint thread fall behind.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

import orjson

from reference_server.directory import Directory, Group, audience
from reference_server.metrics import ServerMetrics
from reference_server.offline import OfflineDelivery
from reference_server.protocol import ADMIN_SENDER, ErrorCode, Kind, Message, ProtocolError, now_us
from reference_server.roles import SeqAllocator
from reference_server.storage import Storage
from reference_server.tally import Tally
from reference_server.unread import UnreadCounter

log = logging.getLogger("chat.store")

#: with a checkpoint thread, the WAL size (pages) at which the writer still checkpoints itself: the WAL's bound
WRITER_CHECKPOINT_PAGES: Final = 16_384

BASE_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS users (uid INTEGER PRIMARY KEY)",
    "CREATE TABLE IF NOT EXISTS groups (gid INTEGER PRIMARY KEY)",
    # join_seq: the member sees messages after it; read_seq: its read mark
    "CREATE TABLE IF NOT EXISTS members (gid INTEGER NOT NULL, uid INTEGER NOT NULL, join_seq INTEGER NOT NULL, "
    "read_seq INTEGER NOT NULL, PRIMARY KEY (gid, uid)) WITHOUT ROWID",
]


class AdminError(Exception):
    """An admin request that cannot be applied; nothing of it was written."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Job:
    """One unit of work for the writer. ``apply`` runs in the transaction (writer thread); ``done`` on the loop.

    An exception from ``apply`` that is a ProtocolError or AdminError fails this job only (it must not
    have written anything); any other exception rolls back the whole batch.
    """

    error: Exception | None = None
    rid: int | None = None  # the request's rid, for the error reply when the whole batch fails

    def apply(self, w: Writer) -> None:
        raise NotImplementedError

    def after_commit(self, w: Writer) -> None:
        """Writer thread, after the commit: publish in-memory state."""

    def done(self) -> None:
        """Event loop, after the commit."""


class LocalSeqs:
    """The embedded seq allocator: the writer's own record + 1 (recovered from the timeline at start)."""

    def next(self, gid: int, last: Mapping[int, int]) -> int:
        return last.get(gid, 0) + 1

    def rollback(self, before: Mapping[int, int], after: Mapping[int, int]) -> None:
        pass  # nothing outside the writer's record, which the writer restores itself


class Writer:
    """State the writer thread owns: its connection, the seq counters, the batch's tally."""

    def __init__(self, db: sqlite3.Connection, directory: Directory, storage: Storage, unread: UnreadCounter,
                 offline: OfflineDelivery, seqs: SeqAllocator, online: Callable[[int], bool]) -> None:
        self.db = db
        self.directory = directory
        self.storage = storage
        self.unread = unread
        self.offline = offline
        self.seqs = seqs
        self.online = online
        self.tally = Tally()
        # the last seq assigned per group, this transaction's included (a cluster's allocator re-seeds from it)
        self.last_seq: dict[int, int] = {gid: g.max_seq for gid, g in directory.groups.items()}
        # changes of the open transaction that the directory gets only after the commit, seen by later jobs of
        # the same batch: member maps (uid -> join seq) and read marks
        self.members_now: dict[int, dict[int, int]] = {}
        self.read_now: dict[tuple[int, int], int] = {}

    def next_seq(self, gid: int) -> int:
        seq = self.seqs.next(gid, self.last_seq)
        self.last_seq[gid] = seq
        return seq

    def members(self, group: Group) -> Mapping[int, int]:
        return self.members_now.get(group.gid, group.members)

    def read_mark(self, group: Group, uid: int) -> int:
        mark = self.read_now.get((group.gid, uid))
        return mark if mark is not None else group.read.get(uid, 0)

    def group(self, gid: int, uid: int, rid: int | None) -> Group:
        group = self.directory.groups.get(gid)
        if group is None or uid not in self.members(group):
            raise ProtocolError(ErrorCode.NOT_MEMBER, f"user {uid} is not a member of group {gid}", rid)
        return group

    def stage(self, msg: Message, members: Mapping[int, int], also: Iterable[int] = ()) -> None:
        """The pipeline after the seq, for a message or a signal: storage → unread → offline. ``also``: users
        beyond ``members`` who get the entry pushed or buffered (the removed members of a leave signal)."""
        self.storage.append(self.db, self.tally, msg, members)
        counts = self.unread.needs_receivers and msg.kind == Kind.MSG
        if not (counts or self.offline.needs_offline_members):
            return  # the defaults (seq unread, pull offline): no pass over the group at all
        receivers = audience(members, msg)
        if counts:
            self.unread.on_message(self.db, self.tally, msg, receivers)
        if self.offline.needs_offline_members:
            online = self.online
            offline = [u for u in receivers if not online(u)]
            offline.extend(u for u in also if not online(u))
            self.offline.on_message(self.db, self.tally, msg, offline)


def connect(path: Path, synchronous: str) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous.upper()}")
    db.execute("PRAGMA busy_timeout=10000")
    return db


class Store:
    def __init__(self, path: Path, *, synchronous: str, max_batch: int, storage: Storage, unread: UnreadCounter,
                 offline: OfflineDelivery, metrics: ServerMetrics, unread_repair: bool = False,
                 seqs: SeqAllocator | None = None, checkpoint_s: float = 0.0) -> None:
        """``checkpoint_s``: the checkpoint thread's period (0: SQLite's autocheckpoint inside the commits)."""
        self.path = path
        self.checkpoint_s = checkpoint_s
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()
        self.commits = 0  # transactions committed (the checkpoint thread skips a period without any)
        self._in_commit = 0  # jobs of the transaction the writer is applying now
        self.wal_frames = 0  # frames in the WAL at the checkpoint thread's last checkpoint
        self.max_batch = max_batch
        self.storage = storage
        self.unread = unread
        self.offline = offline
        self.metrics = metrics
        self._synchronous = synchronous
        self.reader = connect(path, synchronous)
        for stmt in BASE_SCHEMA + storage.schema() + unread.schema() + offline.schema():
            self.reader.execute(stmt)
        self.directory = load_directory(self.reader)
        offline.load(self.reader)
        if unread_repair:
            t0 = time.perf_counter()
            rows, error = unread.repair(self.reader, self.directory)
            metrics.unread_writes.inc(rows)
            log.warning("unread repair: %d counters rebuilt from seqs (total error %d) in %.2f s", rows, error,
                        time.perf_counter() - t0)
        if unread.needs_receivers:  # a counter store kept elsewhere (Redis) is rebuilt from seqs if it lost them
            unread.counters.start(self.reader, self.directory, storage.countable)
        metrics.track_unread_pending(lambda: float(unread.pending()))
        metrics.add_gauges("chat_writer_backlog", "Jobs queued for the writer or in its transaction now",
                           lambda: float(self.backlog()))
        if checkpoint_s > 0:
            metrics.add_gauges("chat_wal_frames", "Frames in the SQLite WAL at the last checkpoint (its size; "
                               f"the writer checkpoints itself past {WRITER_CHECKPOINT_PAGES})",
                               lambda: float(self.wal_frames))
        unread.request_flush = lambda: self.submit(UnreadFlushJob())
        self._flush_timer: asyncio.TimerHandle | None = None
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.failed: BaseException | None = None  # the last commit's error; None once a commit succeeds
        self.writer: Writer | None = None
        self.seqs: SeqAllocator = seqs if seqs is not None else LocalSeqs()  # a logic node: Redis allocates
        #: whether a user is connected now (the offline stage asks, from the writer thread)
        self.online: Callable[[int], bool] = lambda uid: False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="chat-writer", daemon=True)
        self._thread.start()
        if self.checkpoint_s > 0:
            self._stop_checkpoints.clear()
            self._checkpointer = threading.Thread(target=self._checkpointing, name="chat-checkpoint", daemon=True)
            self._checkpointer.start()
        if self.unread.flush_interval_s is not None:
            self._flush_timer = loop.call_later(self.unread.flush_interval_s, self._flush_tick)

    def _flush_tick(self) -> None:
        """The merged unread mode's timer: a flush job whenever changes are pending."""
        assert self._loop is not None and self.unread.flush_interval_s is not None
        if self.unread.has_pending():
            self.submit(UnreadFlushJob())
        self._flush_timer = self._loop.call_later(self.unread.flush_interval_s, self._flush_tick)

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    def backlog(self) -> int:
        """Jobs queued for the writer or in the transaction it is applying (0: it has caught up)."""
        return self._queue.qsize() + self._in_commit

    def stop(self) -> None:
        """Finish every queued job (and write pending unread changes), then stop the writer (blocking)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._thread is not None:
            if self.unread.flush_interval_s is not None:
                self._queue.put(UnreadFlushJob())
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._checkpointer is not None:
            self._stop_checkpoints.set()
            self._checkpointer.join()
            self._checkpointer = None

    def close(self) -> None:
        self.stop()
        self.reader.close()

    def _checkpointing(self) -> None:
        db = connect(self.path, self._synchronous)
        done = -1
        try:
            while not self._stop_checkpoints.wait(self.checkpoint_s):
                if self.commits == done:
                    continue
                done = self.commits
                t0 = time.perf_counter()
                try:
                    _, self.wal_frames, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error:  # the next period tries again; the writer's own bound still holds
                    log.exception("WAL checkpoint failed")
                    continue
                self.metrics.checkpoint_seconds.observe(time.perf_counter() - t0)
        finally:
            db.close()

    def _run(self) -> None:
        db = connect(self.path, self._synchronous)
        if self.checkpoint_s > 0:
            db.execute(f"PRAGMA wal_autocheckpoint={WRITER_CHECKPOINT_PAGES}")
        w = self.writer = Writer(db, self.directory, self.storage, self.unread, self.offline, self.seqs, self.online)
        assert self._loop is not None
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                batch.append(job)
            self._in_commit = len(batch)
            self._commit(w, batch)
            self._loop.call_soon_threadsafe(_finish, batch)
            self._in_commit = 0
        db.close()

    def _commit(self, w: Writer, batch: Sequence[Job]) -> None:
        t0 = time.perf_counter()
        w.tally = Tally()
        seqs_before = dict(w.last_seq)
        try:
            w.db.execute("BEGIN IMMEDIATE")
            for job in batch:
                try:
                    job.apply(w)
                except (ProtocolError, AdminError) as exc:
                    job.error = exc
            w.db.execute("COMMIT")
            self.commits += 1
        except Exception as exc:  # storage failure: nothing of this batch happened
            log.exception("group commit of %d jobs failed; batch rolled back", len(batch))
            if w.db.in_transaction:
                w.db.execute("ROLLBACK")
            w.seqs.rollback(seqs_before, w.last_seq)
            w.last_seq = seqs_before
            w.members_now.clear()
            w.read_now.clear()
            self.unread.rolled_back()
            self.unread.counters.rolled_back()
            self.offline.load(w.db)
            for job in batch:
                job.error = ProtocolError(ErrorCode.UNAVAILABLE, f"storage failure: {exc}", job.rid)
            self.failed = exc
            return
        self.failed = None
        for job in batch:
            if job.error is None:
                job.after_commit(w)
        w.members_now.clear()
        w.read_now.clear()
        self.unread.committed()
        self.unread.counters.committed(w.db, self.directory, self.storage.countable)  # before the acks go out
        m, t = self.metrics, w.tally
        for kind, n in t.storage.items():
            m.storage_writes.labels(kind).inc(n)
        if t.unread:
            m.unread_writes.inc(t.unread)
        if t.offline:
            m.offline_writes.inc(t.offline)
        if t.offline_dropped:
            m.offline_dropped.inc(t.offline_dropped)
        m.commit_seconds.observe(time.perf_counter() - t0)
        m.commit_batch.observe(len(batch))


def _finish(batch: Sequence[Job]) -> None:
    for job in batch:
        try:
            job.done()
        except Exception:
            log.exception("completing %s failed", type(job).__name__)


def load_directory(db: sqlite3.Connection) -> Directory:
    d = Directory()
    d.users.update(uid for (uid,) in db.execute("SELECT uid FROM users"))
    for (gid,) in db.execute("SELECT gid FROM groups"):
        d.groups[gid] = Group(gid)
    for gid, max_seq in db.execute("SELECT gid, max(seq) FROM messages GROUP BY gid"):
        if gid in d.groups:
            d.groups[gid].max_seq = max_seq
    user_groups: dict[int, set[int]] = {}
    for gid, uid, join_seq, read_seq in db.execute("SELECT gid, uid, join_seq, read_seq FROM members"):
        g = d.groups[gid]
        g.members[uid] = join_seq
        g.read[uid] = read_seq
        user_groups.setdefault(uid, set()).add(gid)
    d.user_groups = {uid: frozenset(gids) for uid, gids in user_groups.items()}
    return d


class SendJob(Job):
    """seq → storage → unread → offline, in the transaction; fan-out and ack on the loop."""

    __slots__ = ("msg", "on_done", "req")

    def __init__(self, req: Message, on_done: Callable[[SendJob], None]) -> None:
        self.req = req  # seq 0 until applied
        self.msg: Message | None = None
        self.on_done = on_done

    def apply(self, w: Writer) -> None:
        r = self.req
        group = w.group(r.gid, r.sender, None)
        members = w.members(group)
        to = r.to
        if to is not None:
            to = tuple(sorted({u for u in to if u in members and u != r.sender}))
        msg = Message(r.gid, w.next_seq(r.gid), r.sender, r.cts, r.sts, r.body, to)
        w.stage(msg, members)
        self.msg = msg

    def after_commit(self, w: Writer) -> None:
        assert self.msg is not None
        w.directory.groups[self.msg.gid].max_seq = self.msg.seq

    def done(self) -> None:
        self.on_done(self)


class ReadJob(Job):
    __slots__ = ("gid", "on_done", "rid", "seq", "uid")

    def __init__(self, uid: int, gid: int, seq: int, rid: int | None, on_done: Callable[[ReadJob], None]) -> None:
        self.uid, self.gid, self.seq, self.rid, self.on_done = uid, gid, seq, rid, on_done

    def apply(self, w: Writer) -> None:
        group = w.group(self.gid, self.uid, self.rid)
        old = w.read_mark(group, self.uid)
        new = min(max(old, self.seq), w.last_seq.get(self.gid, 0))
        if new > old:
            w.db.execute("UPDATE members SET read_seq = ? WHERE gid = ? AND uid = ?", (new, self.gid, self.uid))
            w.tally.storage["read_mark"] += 1
            w.unread.on_read(w.db, w.tally, self.uid, self.gid, old, new)
            w.read_now[(self.gid, self.uid)] = new
        self.seq = new

    def after_commit(self, w: Writer) -> None:
        group = w.directory.groups[self.gid]
        if group.read.get(self.uid, 0) < self.seq:
            group.read[self.uid] = self.seq

    def done(self) -> None:
        self.on_done(self)


class DeleteJob(Job):
    __slots__ = ("gid", "on_done", "rid", "seq", "uid")

    def __init__(self, uid: int, gid: int, seq: int, rid: int | None, on_done: Callable[[DeleteJob], None]) -> None:
        self.uid, self.gid, self.seq, self.rid, self.on_done = uid, gid, seq, rid, on_done

    def apply(self, w: Writer) -> None:
        group = w.group(self.gid, self.uid, self.rid)
        if not 1 <= self.seq <= w.last_seq.get(self.gid, 0):
            raise ProtocolError(ErrorCode.NO_SUCH_MESSAGE, f"group {self.gid} has no seq {self.seq}", self.rid)
        hid = w.storage.delete(w.db, w.tally, self.uid, self.gid, self.seq)
        if hid and w.unread.needs_receivers and self.seq > w.read_mark(group, self.uid):
            msg = w.storage.get(w.db, self.gid, self.seq)
            if msg is not None and msg.kind == Kind.MSG and audience(w.members(group), msg, among=(self.uid,)):
                w.unread.on_change(w.db, w.tally, self.gid, (self.uid,), -1)

    def done(self) -> None:
        self.on_done(self)


class AdminJob(Job):
    """Provisioning, applied in order with the sends; the admin coroutine awaits ``future``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.future: asyncio.Future[dict[str, object]] = loop.create_future()
        self.result: dict[str, object] = {}

    def done(self) -> None:
        if self.future.done():
            return
        if self.error is not None:
            self.future.set_exception(self.error)
        else:
            self.future.set_result(self.result)


def _json_ids(ids: Iterable[int]) -> str:
    """Ids as a JSON array, for one bulk statement over ``json_each`` (SQLite does the per-row work, and the GIL
    is released all the while: the event loop runs on)."""
    return orjson.dumps(ids if isinstance(ids, list) else list(ids)).decode()


class CreateUsers(AdminJob):
    def __init__(self, loop: asyncio.AbstractEventLoop, uids: list[int]) -> None:
        super().__init__(loop)
        self.uids = uids

    def apply(self, w: Writer) -> None:
        before = w.db.total_changes
        w.db.execute("INSERT OR IGNORE INTO users SELECT value FROM json_each(?)", (_json_ids(self.uids),))
        self.result = {"created": w.db.total_changes - before, "requested": len(self.uids)}

    def after_commit(self, w: Writer) -> None:
        w.directory.users.update(self.uids)


class CreateGroups(AdminJob):
    def __init__(self, loop: asyncio.AbstractEventLoop, groups: list[tuple[int, list[int]]]) -> None:
        super().__init__(loop)
        self.groups = groups

    def apply(self, w: Writer) -> None:
        d = w.directory
        gids = [gid for gid, _ in self.groups]
        if len(set(gids)) != len(gids):
            raise AdminError(400, "a gid appears twice in the request")
        exists = [gid for gid in gids if gid in d.groups]
        if exists:
            raise AdminError(409, f"groups already exist: {exists[:10]}")
        unknown = sorted({u for _, members in self.groups for u in members if u not in d.users})
        if unknown:
            raise AdminError(400, f"{len(unknown)} members are not users, e.g. {unknown[:10]}; create them first")
        w.db.executemany("INSERT INTO groups VALUES (?)", ((gid,) for gid in gids))
        for gid, members in self.groups:  # one statement per group, whatever its size (bulk work in SQLite)
            w.db.execute("INSERT OR IGNORE INTO members SELECT ?, value, 0, 0 FROM json_each(?)",
                         (gid, _json_ids(members)))
        self.result = {"created": len(gids), "members": sum(len(set(m)) for _, m in self.groups)}

    def after_commit(self, w: Writer) -> None:
        for gid, members in self.groups:
            group = Group(gid)
            w.directory.groups[gid] = group
            initial = dict.fromkeys(members, 0)
            w.directory.set_members(group, initial, initial, ())


class ChangeMembers(AdminJob):
    """Add and remove members; each non-empty side is announced by a signal that takes a seq in the group
    (``join`` first, then ``leave``): stored, pushed, synced and buffered offline like a message. Added members
    join at the seq before their ``join`` signal (so they see it); removed members get the ``leave`` signal
    pushed or buffered, but not in their history (they can no longer sync the group)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, gid: int, add: list[int], remove: list[int],
                 publish: Callable[[Message, Sequence[int]], None] | None = None) -> None:
        super().__init__(loop)
        self.gid, self.add, self.remove = gid, add, remove
        self.members: dict[int, int] = {}
        self.added: list[int] = []
        self.removed: list[int] = []
        self.publish = publish
        self.signals: list[tuple[Message, list[int]]] = []

    def apply(self, w: Writer) -> None:
        group = w.directory.groups.get(self.gid)
        if group is None:
            raise AdminError(404, f"no group {self.gid}")
        unknown = sorted({u for u in self.add if u not in w.directory.users})
        if unknown:
            raise AdminError(400, f"{len(unknown)} users do not exist, e.g. {unknown[:10]}")
        members = dict(w.members(group))
        added = [u for u in dict.fromkeys(self.add) if u not in members]
        removed = [u for u in dict.fromkeys(self.remove) if u in members and u not in added]
        sts = now_us()
        self.signals = []
        if added:
            join = w.last_seq.get(self.gid, 0)
            w.db.execute("INSERT INTO members SELECT ?, value, ?, ? FROM json_each(?)",
                         (self.gid, join, join, _json_ids(added)))
            for u in added:
                members[u] = join
            msg = Message(self.gid, w.next_seq(self.gid), ADMIN_SENDER, 0, sts, "", None, Kind.JOIN,
                          uids=tuple(added))
            w.stage(msg, members)
            self.signals.append((msg, removed))  # removed by the leave signal below, still members at the join
        if removed:
            w.db.execute("DELETE FROM members WHERE gid = ? AND uid IN (SELECT value FROM json_each(?))",
                         (self.gid, _json_ids(removed)))
            for u in removed:
                del members[u]
                w.unread.on_leave(w.db, w.tally, u, self.gid)
            msg = Message(self.gid, w.next_seq(self.gid), ADMIN_SENDER, 0, sts, "", None, Kind.LEAVE,
                          uids=tuple(removed))
            w.stage(msg, members, also=removed)
            self.signals.append((msg, removed))
        w.members_now[self.gid] = members
        self.members = members
        self.added, self.removed = added, removed
        self.result = {"added": len(added), "removed": len(removed), "members": len(members)}

    def after_commit(self, w: Writer) -> None:
        group = w.directory.groups[self.gid]
        w.directory.set_members(group, self.members, self.added, self.removed)
        if self.signals:
            group.max_seq = self.signals[-1][0].seq

    def done(self) -> None:
        if self.error is None and self.publish is not None:
            for msg, also in self.signals:
                self.publish(msg, also)
        super().done()


class SeedHistory(AdminJob):
    """Provisioning a group's past: ``count`` messages from ``sender``, stored as the storage mode stores a message
    (the body once; under write diffusion an index row per member), then every member's read mark at the last of
    them. It is history everyone has read: no unread count changes, nothing is pushed or buffered, and (like
    group creation's member rows) its writes are not counted as storage writes. So it is refused unless every
    member has read the group to its end: afterwards that holds again, in every unread mode."""

    def __init__(self, loop: asyncio.AbstractEventLoop, gid: int, count: int, sender: int | None, body: str) -> None:
        super().__init__(loop)
        self.gid, self.count, self.sender, self.body = gid, count, sender, body
        self.last = 0
        self.readers: list[int] = []

    def apply(self, w: Writer) -> None:
        group = w.directory.groups.get(self.gid)
        if group is None:
            raise AdminError(404, f"no group {self.gid}")
        members = w.members(group)
        if not members:
            raise AdminError(400, f"group {self.gid} has no members to send its history")
        sender = min(members) if self.sender is None else self.sender
        if sender not in members:
            raise AdminError(400, f"user {sender} is not a member of group {self.gid}")
        end = w.last_seq.get(self.gid, 0)
        behind = next((u for u in members if w.read_mark(group, u) < end), None)
        if behind is not None:
            raise AdminError(409, f"group {self.gid}: member {behind} has read to seq {w.read_mark(group, behind)} "
                                  f"of {end}; history is seeded only into a group its members have read to the end")
        sts = now_us()
        tally = Tally()  # provisioning: not the server's storage writes
        for _ in range(self.count):
            msg = Message(self.gid, w.next_seq(self.gid), sender, sts, sts, self.body)
            w.storage.append(w.db, tally, msg, members)
        self.last = w.last_seq[self.gid]
        w.db.execute("UPDATE members SET read_seq = ? WHERE gid = ?", (self.last, self.gid))
        self.readers = list(members)
        for u in self.readers:
            w.read_now[(self.gid, u)] = self.last
        self.result = {"messages": self.count, "max_seq": self.last, "members": len(members),
                       "storage_writes": tally.storage["body"] + tally.storage["index"]}

    def after_commit(self, w: Writer) -> None:
        group = w.directory.groups[self.gid]
        group.max_seq = self.last
        group.read.update(dict.fromkeys(self.readers, self.last))


class RecallJob(Job):
    """The sender retracts its own ordinary message within the recall window. In the transaction: the message
    leaves the unread counts of everyone who still had it unread, its body is erased (it leaves every history),
    and a ``recall`` signal (``ref`` = its seq, ``to`` = its recipients) takes the next seq and goes through
    storage and offline like a message. Then it is acked (``recall`` reply) and pushed."""

    __slots__ = ("gid", "msg", "on_done", "rid", "seq", "sts", "uid", "window_us")

    def __init__(self, uid: int, gid: int, seq: int, rid: int | None, window_s: float,
                 on_done: Callable[[RecallJob], None]) -> None:
        self.uid, self.gid, self.seq, self.rid, self.on_done = uid, gid, seq, rid, on_done
        self.window_us = int(window_s * 1e6)
        self.sts = now_us()
        self.msg: Message | None = None

    def apply(self, w: Writer) -> None:
        group = w.group(self.gid, self.uid, self.rid)
        seq = self.seq
        original = w.storage.get(w.db, self.gid, seq) if 1 <= seq <= w.last_seq.get(self.gid, 0) else None
        if original is None:
            raise ProtocolError(ErrorCode.NO_SUCH_MESSAGE, f"group {self.gid} has no seq {seq}", self.rid)
        if original.sender != self.uid or original.kind != Kind.MSG:
            raise ProtocolError(ErrorCode.RECALL_REFUSED,
                                f"seq {seq} is not a message of user {self.uid} that can be recalled", self.rid)
        if self.sts - original.sts > self.window_us:
            raise ProtocolError(ErrorCode.RECALL_REFUSED,
                                f"seq {seq} is older than the recall window of {self.window_us / 1e6:g} s", self.rid)
        members = w.members(group)
        if w.unread.needs_receivers:
            had = [u for u in audience(members, original) if w.read_mark(group, u) < seq]
            gone = w.storage.deleted_among(w.db, self.gid, seq, had)
            w.unread.on_change(w.db, w.tally, self.gid, [u for u in had if u not in gone], -1)
        w.storage.recall(w.db, w.tally, self.gid, seq)
        msg = Message(self.gid, w.next_seq(self.gid), self.uid, 0, self.sts, "", original.to, Kind.RECALL, ref=seq)
        w.stage(msg, members)
        self.msg = msg

    def after_commit(self, w: Writer) -> None:
        assert self.msg is not None
        w.directory.groups[self.gid].max_seq = self.msg.seq

    def done(self) -> None:
        self.on_done(self)


class OfflineDrainJob(Job):
    """On connect (buffering offline modes): empty the user's offline buffer; the loop sends it as the
    ``offline`` frame. Anything stored after this job finds the user online and is pushed instead."""

    __slots__ = ("dropped", "entries", "on_done", "uid")

    def __init__(self, uid: int, on_done: Callable[[OfflineDrainJob], None]) -> None:
        self.uid, self.on_done = uid, on_done
        self.entries: list[tuple[int, int]] = []
        self.dropped = 0

    def apply(self, w: Writer) -> None:
        self.entries, self.dropped = w.offline.drain(w.db, w.tally, self.uid)

    def done(self) -> None:
        self.on_done(self)


class UnreadFlushJob(Job):
    """The merged unread mode's flush: each pending (user, group) change written once."""

    def apply(self, w: Writer) -> None:
        w.unread.flush(w.db, w.tally)


class Barrier(Job):
    """Does nothing; ``done`` runs on the loop after every job submitted before it (tests and benchmarks)."""

    def __init__(self, on_done: Callable[[], None]) -> None:
        self.on_done = on_done

    def apply(self, w: Writer) -> None:
        pass

    def done(self) -> None:
        self.on_done()
