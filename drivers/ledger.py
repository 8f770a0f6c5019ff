"""The delivery ledger: every push checked, every gap explained, every latency recorded.

Per (receiver, group) a :class:`GroupLedger` holds the highest seq pushed (``last``) and the holes below it.
Pushes on one connection arrive in strictly increasing seq order (protocol §11), so for a push of ``seq``:

* ``seq == last + 1``: in order.
* ``seq > last + 1``: the seqs between are *holes*. A hole is not yet a loss: it is either a private message for
  someone else or one deleted for me (legitimate), or a push the receiver should have had. After ``grace``
  seconds the hole is *repaired* with ``sync`` over it: visible messages from others count as ``lost`` (and
  ``repaired``), invisible seqs as ``private_holes``, my own messages as ``own`` (a sender gets an ack, no push).
* ``seq`` fills a hole: ``reordered`` (arrived after a later seq).
* otherwise (``seq`` already seen): ``duplicated``.

Seqs at or below the ``hello.max`` of a (re)connect belong to *catch-up*, not to the push stream: after a
reconnect the receiver pages ``sync`` from its last seq to that max (completeness and time are recorded); a push
of such a seq is an ``overlap`` (allowed by protocol §10), never a duplicate. A member sees only seqs after its
join: ``sync`` applies the join clamp, so holes before it come back invisible.

At the end of a run :meth:`ReceiverLedger.reconcile` syncs every group from ``last`` to the server's max: visible
messages from others accepted before ``cutoff`` count as ``lost`` (the tail nobody noticed), later ones as
``in_flight_at_stop``; then the *unread oracle* compares the client's own count — (max − read mark) minus the
seqs it knows it cannot see — with the server's ``unread`` answer and counts ``unread_mismatches``.

Signals (recall, join, leave: ``cts`` 0) take seqs and are checked like messages, but have no latency and are
not part of fan-out; they and recalled seqs never count as unread. The buffer modes' ``offline`` frame is only
counted (``offline_msgs``): catch-up after a reconnect is always verified by ``sync``.

Latency is receive time − ``cts`` (the sender's *intended* send time under an open-model schedule), in µs, into
an HDR histogram; for fan-out completion every push's latency is also appended to a per-message list, which
:meth:`Ledger.take` ships (bucketed) to the coordinator with the send log and the receivers' presence changes,
where :class:`drivers.totals.Totals` completes each message across workers.

Threads: the hot path takes no lock (a lock would cost about a tenth of the per-frame budget). Under Locust
(gevent) nothing switches greenlets inside it. With real threads (:class:`ChatClient` without gevent) counts are
exact once receiving is quiet; a :meth:`Ledger.take` racing a receive thread may misplace that frame's count.
"""

from __future__ import annotations

import threading
from array import array
from collections.abc import Callable
from typing import Any, Final

import numpy as np

from drivers.clock import CLOCK
from drivers.deliveries import LogBuckets, Recorder

Frame = dict[str, Any]
SyncFn = Callable[[int, int, int], Frame]  # (gid, after, limit) -> sync reply

#: counters shipped from workers and summed on the coordinator
COUNTERS: Final = (
    "sent", "send_failed", "delivered", "duplicated", "reordered", "lost", "repaired", "private_holes", "own_holes",
    "overlap", "in_flight_at_stop", "unverified_holes", "repair_failed", "unexpected_group", "catchups",
    "catchup_msgs", "catchup_incomplete", "reconnects", "reconnect_failures", "unread_checks", "unread_mismatches",
    "unread_skipped", "missed_send_slots", "late_after_repair", "signals", "no_cts", "offline_frames", "offline_msgs",
    "offline_dropped_reported", "dead_connections", "connect_failures",
)
_SYNC_LIMIT: Final = 1000


#: counted per network profile too (weak networks); ``members``: users of the profile that connected
PROFILE_COUNTERS: Final = ("members", "connect_failures", "reconnects", "reconnect_failures", "dead_connections",
                            "delivered", "lost", "duplicated", "reordered")


def now_us() -> int:
    """The reference clock (drivers/clock.py), µs: every timestamp of the swarm."""
    return CLOCK.now_us()


class Lasts:
    """Every GroupLedger's ``last`` of one Ledger, in one growable array of int64 (``array('q')``: an element reads
    as a Python int). The batch ledger checks and moves many of them at once through a numpy view of it
    (:meth:`view`); a GroupLedger reads and writes its own element."""

    __slots__ = ("a",)

    def __init__(self) -> None:
        self.a = array("q")

    def new(self, value: int) -> int:
        """The index of a new element holding ``value``."""
        self.a.append(value)
        return len(self.a) - 1

    def view(self) -> Any:
        """A numpy int64 view of every element (drop it before the next :meth:`new`: a view pins the array)."""
        return np.frombuffer(self.a, np.int64)


class GroupLedger:
    __slots__ = ("_lasts", "base", "gid", "holes", "invisible", "ix", "live_from", "read", "repaired")

    def __init__(self, lasts: Lasts, gid: int, max_seq: int, read: int) -> None:
        self.gid = gid
        self._lasts = lasts.a
        self.ix = lasts.new(max_seq)  # this group's element in the ledger's Lasts
        self.live_from = max_seq  # seqs ≤ this belong to history / catch-up
        self.base = max_seq  # live_from at the first connect: below it visibility is unknown
        self.read = read  # the read mark as the client knows it
        self.holes: dict[int, int] = {}  # seq -> µs when the hole was seen
        self.invisible: set[int] = set()  # seqs > base this receiver cannot see (private to others, deleted)
        self.repaired: set[int] = set()  # seqs counted lost and fetched by sync (a late push is not a duplicate)

    @property
    def last(self) -> int:
        """The highest seq accounted for in the push stream."""
        return self._lasts[self.ix]

    @last.setter
    def last(self, value: int) -> None:
        self._lasts[self.ix] = value


class ReceiverLedger:
    """One receiver's ledger: a :class:`GroupLedger` per group of its ``hello``. Feed it pushes with :meth:`on_push`."""

    __slots__ = ("groups", "ledger", "online", "own", "pending_catchup", "profile", "repairing", "uid")

    def __init__(self, ledger: Ledger, uid: int) -> None:
        self.ledger = ledger
        self.uid = uid
        self.groups: dict[int, GroupLedger] = {}
        self.own: set[tuple[int, int]] = set()  # (gid, seq) this receiver sent
        self.pending_catchup: dict[int, tuple[int, int]] = {}  # gid -> (after, up to) still to sync
        self.online = False
        self.repairing = False  # a repair is in flight (the repair loop starts one at a time)
        self.profile: str | None = None  # network profile (weak networks): its figures are also kept apart

    def count(self, key: str) -> None:
        """Count ``key`` for the run and for this member's profile (delivery faults, reconnects, ...). Looked up
        at each call: a take() (worker report) swaps the ledger's dicts."""
        self.ledger.counts[key] += 1
        if self.profile is not None:
            self.ledger.profile(self.profile)["counts"][key] += 1

    # -- connection lifecycle
    def on_connect(self, hello: Frame, t_us: int | None = None) -> None:
        """A (re)connect's ``hello``: first time, start at each group's max; again, plan the catch-up."""
        # the server's clock when it built the hello: it registered the connection for pushes just before
        t = t_us if t_us is not None else int(hello.get("sts") or now_us())
        ledger = self.ledger
        for g in hello.get("groups", ()):
            gid, mx = g["gid"], g["max"]
            gl = self.groups.get(gid)
            if gl is None:
                self.groups[gid] = GroupLedger(ledger.lasts, gid, mx, g["read"])
            else:
                if mx > gl.last:
                    self.pending_catchup[gid] = (gl.last, mx)
                    gl.last = mx
                gl.live_from = max(gl.live_from, mx)
                gl.read = g["read"]
            ledger.presence.append((gid, t, 1))
        self.online = True
        ledger.receivers[self.uid] = self

    def join(self, gid: int, t_us: int | None = None) -> None:
        """Added to a new group ``gid`` (no seq yet) while running: its ledger starts at seq 0, so every message of
        it is checked (a group first seen in a push starts at that push: ``unexpected_group``)."""
        if gid in self.groups:
            return
        self.groups[gid] = GroupLedger(self.ledger.lasts, gid, 0, 0)
        if self.online:
            self.ledger.presence.append((gid, now_us() if t_us is None else t_us, 1))

    def on_disconnect(self, t_us: int | None = None) -> None:
        if not self.online:
            return
        self.online = False
        t = now_us() if t_us is None else t_us
        for gid in self.groups:
            self.ledger.presence.append((gid, t, -1))

    def note_own(self, gid: int, seq: int) -> None:
        """This receiver sent (gid, seq): it gets an ack, never a push; the seq is not a hole."""
        self.own.add((gid, seq))

    def note_read(self, reply: Frame) -> None:
        gl = self.groups.get(reply["gid"])
        if gl is not None:
            gl.read = reply["read"]

    # -- the hot path (receive thread / greenlet)
    def on_push(self, frame: Frame, t_us: int | None = None) -> None:
        """One push; ``t_us`` is when it was received (default: now). drivers/batchledger.py applies whole
        batches of pushes with the same result."""
        ledger = self.ledger
        if ledger.frozen:
            return
        t = CLOCK.now_us() if t_us is None else t_us
        gid = frame["gid"]
        seq = frame["seq"]
        gl = self.groups.get(gid)
        if gl is None:  # added to a group after hello: start its ledger here
            ledger.counts["unexpected_group"] += 1
            gl = self.groups[gid] = GroupLedger(ledger.lasts, gid, seq - 1, seq - 1)
        last = gl.last
        if seq == last + 1:
            gl.last = seq
        elif seq > last:
            holes = gl.holes
            for s in range(last + 1, seq):
                holes[s] = t
            gl.last = seq
            ledger.holey.add(self)
        elif seq in gl.holes:
            del gl.holes[seq]
            self.count("reordered")
        elif seq <= gl.live_from:
            ledger.counts["overlap"] += 1
            return
        elif seq in gl.repaired:
            gl.repaired.discard(seq)
            ledger.counts["late_after_repair"] += 1
            return
        else:
            self.count("duplicated")
            return
        ledger.delivered += 1
        prof = None if self.profile is None else ledger.profile(self.profile)
        if prof is not None:
            prof["counts"]["delivered"] += 1
        cts = frame["cts"]
        if not cts:  # a signal (recall, join, leave: cts 0) or a message sent without a timestamp
            self._no_latency(gl, frame)
            return
        lat = t - cts
        ledger.latency.record(lat)
        if prof is not None:
            prof["latency"].record(lat)
        key = (gid, seq)
        fan = ledger.fan.get(key)
        if fan is None:
            ledger.fan[key] = [lat]
        else:
            fan.append(lat)

    def _no_latency(self, gl: GroupLedger, frame: Frame) -> None:
        kind = frame.get("kind")
        if kind is None:
            self.ledger.counts["no_cts"] += 1
            return
        self.ledger.counts["signals"] += 1
        self._note_signal(gl, frame)

    @staticmethod
    def _note_signal(gl: GroupLedger, m: Frame) -> None:
        """Signals and recalled messages never count as unread (protocol §4.4)."""
        gl.invisible.add(m["seq"])
        if m.get("kind") == "recall" and "ref" in m:
            gl.invisible.add(m["ref"])

    def on_offline(self, frame: Frame) -> None:
        """The ``offline`` frame of the buffer modes: counted; the catch-up by sync still covers every seq."""
        counts = self.ledger.counts
        counts["offline_frames"] += 1
        counts["offline_msgs"] += len(frame.get("msgs", ()))
        counts["offline_dropped_reported"] += int(frame.get("dropped", 0))

    # -- repairs (a request per group: call from the user's greenlet or a repair loop, never from on_push)
    def holes_due(self, before_us: int) -> bool:
        return any(t <= before_us for gl in self.groups.values() for t in gl.holes.values())

    def has_holes(self) -> bool:
        return any(gl.holes for gl in self.groups.values())

    def repair(self, sync: SyncFn, before_us: int | None = None) -> None:
        """Sync over every hole seen before ``before_us`` (all holes if None) and classify each seq."""
        self.repairing = True
        try:
            self._repair(sync, before_us)
        finally:
            self.repairing = False

    def _repair(self, sync: SyncFn, before_us: int | None) -> None:
        for gl in list(self.groups.values()):
            due = sorted(s for s, t in gl.holes.items() if before_us is None or t <= before_us)
            own = [s for s in due if (gl.gid, s) in self.own]
            for s in own:  # my own messages: acked to me, never pushed
                del gl.holes[s]
                self.ledger.counts["own_holes"] += 1
            if own:
                due = [s for s in due if s in gl.holes]
            if not due:
                continue
            try:
                self._sync_range(gl, sync, due[0] - 1, due[-1], set(due), tail_cutoff=None)
            except Exception:
                self.ledger.counts["repair_failed"] += 1

    def catch_up(self, sync: SyncFn, started_us: int) -> bool:
        """After a reconnect: sync each group from the last seq held to the reconnect's ``hello.max``."""
        counts = self.ledger.counts
        complete = True
        for gid, (after, upto) in list(self.pending_catchup.items()):
            gl = self.groups[gid]
            try:
                self._sync_range(gl, sync, after, upto, None, tail_cutoff=None, catchup=True)
                del self.pending_catchup[gid]
            except Exception:
                complete = False
        counts["catchups"] += 1
        if complete:
            self.ledger.catchup.record(now_us() - started_us)
            if self.profile is not None:
                self.ledger.profile(self.profile)["catchup"].record(now_us() - started_us)
        else:
            counts["catchup_incomplete"] += 1
        return complete

    def reconcile(self, sync: SyncFn, cutoff_us: int) -> None:
        """End of run: resolve every hole, then sync each group's tail after ``last`` (see the module doc)."""
        self.repair(sync)
        for gl in list(self.groups.values()):
            try:
                self._sync_range(gl, sync, gl.last, None, None, tail_cutoff=cutoff_us)
            except Exception:
                self.ledger.counts["repair_failed"] += 1

    def _sync_range(self, gl: GroupLedger, sync: SyncFn, after: int, upto: int | None, only: set[int] | None,
                    tail_cutoff: int | None, catchup: bool = False) -> None:
        counts = self.ledger.counts
        uid = self.uid
        gid = gl.gid
        while upto is None or after < upto:
            limit = _SYNC_LIMIT if upto is None else min(_SYNC_LIMIT, upto - after)
            page = sync(gid, after, limit)
            nxt = page["next"]
            visible = {m["seq"]: m for m in page["msgs"]}
            for s in range(after + 1, nxt + 1):
                if only is not None and (s not in only or s not in gl.holes):
                    continue  # not asked for, or resolved meanwhile (a late push, a concurrent repair)
                if only is None and not catchup and s <= gl.last and s not in gl.holes:
                    continue  # pushed while this sync was on its way: a slow link delivers queued pushes first
                gl.holes.pop(s, None)
                m = visible.get(s)
                if m is not None and m.get("kind") is not None:
                    self._note_signal(gl, m)
                if (gid, s) in self.own or (m is not None and m["from"] == uid):
                    self.own.add((gid, s))
                    if not catchup:
                        counts["own_holes"] += 1
                elif m is None:
                    if s > gl.base:
                        gl.invisible.add(s)
                    if not catchup and s > gl.live_from:
                        counts["private_holes"] += 1
                elif catchup:
                    counts["catchup_msgs"] += 1
                elif tail_cutoff is not None and m["sts"] > tail_cutoff:
                    counts["in_flight_at_stop"] += 1
                else:
                    self.count("lost")
                    counts["repaired"] += 1
                    gl.repaired.add(s)
            if nxt > gl.last:
                gl.last = nxt
            if not page["more"] or nxt <= after:
                return
            after = nxt

    def check_unread(self, unread: Callable[[list[int]], Frame], read: Callable[[int, int], Frame]) -> None:
        """The unread oracle, for groups with no open holes: the client's truth against the server's answer."""
        counts = self.ledger.counts
        gids = [gid for gid, gl in self.groups.items() if not gl.holes and gid not in self.pending_catchup]
        if not gids:
            return
        for gid in gids:
            gl = self.groups[gid]
            if gl.read < gl.base:  # visibility below base is unknown to this client: move the mark up to it
                self.note_read(read(gid, gl.base))
        reply = unread(gids)
        for g in reply["groups"]:
            gl = self.groups[g["gid"]]
            if g["max"] != gl.last:
                counts["unread_skipped"] += 1  # traffic still in flight: no truth to compare with
                continue
            hidden = sum(1 for s in gl.invisible if gl.read < s <= gl.last)
            if not self.ledger.own_messages_unread:
                hidden += sum(1 for g_, s in self.own if g_ == gl.gid and gl.read < s <= gl.last)
            truth = gl.last - gl.read - hidden
            counts["unread_checks"] += 1
            if g["unread"] != truth or g["read"] != gl.read:
                counts["unread_mismatches"] += 1
                if self.ledger.mismatch_log is not None and len(self.ledger.mismatch_log) < 100:
                    self.ledger.mismatch_log.append({"uid": self.uid, "server": g, "client_read": gl.read,
                                                     "client_max": gl.last, "client_unread": truth})


class Ledger:
    """Everything one generator process records; :meth:`take` ships it (and resets) for the coordinator."""

    def __init__(self) -> None:
        #: whether a user's own messages count in its unread count (protocol §4.4: they never do)
        self.own_messages_unread = False
        self.mismatch_log: list[dict[str, Any]] | None = []  # the first unread mismatches, for diagnosis
        self.frozen = False  # set at the end of a run: pushes after the final reconciliation are not counted
        self.receivers: dict[int, ReceiverLedger] = {}
        self.holey: set[ReceiverLedger] = set()  # receivers that saw a hole since the last repair pass
        self.lasts = Lasts()  # every GroupLedger's last (kept across take(): it is the receivers' state)
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.delivered = 0
        self.latency = Recorder()
        self.send_ack = Recorder()
        self.catchup = Recorder()
        self.fan: dict[tuple[int, int], list[Any]] = {}  # latencies: ints (on_push), int64 arrays (batch ledger)
        self.sends: list[tuple[int, int, int, int, int, bool]] = []
        self.presence: list[tuple[int, int, int]] = []
        self.profiles: dict[str, dict[str, Any]] = {}  # profile -> latency, catchup (Recorder), counts

    def profile(self, name: str) -> dict[str, Any]:
        """One network profile's figures: ``latency`` and ``catchup`` recorders, ``counts`` (PROFILE_COUNTERS)."""
        p = self.profiles.get(name)
        if p is None:
            p = self.profiles[name] = {"latency": Recorder(), "catchup": Recorder(),
                                       "counts": dict.fromkeys(PROFILE_COUNTERS, 0)}
        return p

    def receiver(self, uid: int) -> ReceiverLedger:
        r = self.receivers.get(uid)
        if r is None:
            r = ReceiverLedger(self, uid)
        return r

    def on_ack(self, uid: int, ack: Frame, cts: int, private: bool, t_us: int | None = None) -> None:
        """A send was acked: send→ack latency from the intended send time; the send log entry for fan-out."""
        t = now_us() if t_us is None else t_us
        self.counts["sent"] += 1
        self.send_ack.record(t - cts)
        self.sends.append((ack["gid"], ack["seq"], ack["sts"], cts, uid, private))
        r = self.receivers.get(uid)
        if r is not None:
            r.note_own(ack["gid"], ack["seq"])

    def take(self) -> dict[str, Any]:
        """Everything since the previous take, in a form Locust's worker reports carry (msgpack-able)."""
        with self._lock:
            counts, delivered = self.counts, self.delivered
            latency, send_ack, catchup = self.latency, self.send_ack, self.catchup
            fan, sends, presence, profiles = self.fan, self.sends, self.presence, self.profiles
            self._reset()
        counts["delivered"] += delivered
        fan_wire = [[gid, seq, w] for (gid, seq), w in zip(fan, LogBuckets.many_to_wire(list(fan.values())),
                                                              strict=True)]
        return {
            "counts": counts, "latency": latency.take(), "send_ack": send_ack.take(), "catchup": catchup.take(),
            "fan": fan_wire, "sends": [list(s) for s in sends], "presence": [list(p) for p in presence],
            "profiles": {name: {"latency": p["latency"].take(), "catchup": p["catchup"].take(), "counts": p["counts"]}
                         for name, p in profiles.items()},
        }
