"""The delivery ledger in batch form: pushes received together are applied to the process's :class:`Ledger` at
once, with exactly the result :meth:`ReceiverLedger.on_push` gives frame by frame.

The receive engine's pump (:mod:`drivers.engine`, drivers/_pump.c) hands over, per batch, each *distinct* push
payload once (a message's frames are byte-identical on every connection: the server encodes a push once) and, in
arrival order, per frame: the index of its payload, the slot of the connection it came on
(:meth:`BatchLedger.register`) and the receive time (ns since the epoch, as ``time.time_ns()``).
:meth:`BatchLedger.apply_ids` (or :meth:`BatchLedger.apply`, given every frame's payload) then

1. parses each distinct payload once and maps every frame to its message;
2. cuts the batch into runs of consecutive frames of one connection and one group, and checks each run in one step
   against its :class:`GroupLedger`: the run is *in order* when its first seq is ``last + 1``, every next seq is the
   previous one + 1 and every frame is a message with a send timestamp — then ``last`` moves to the run's last seq.
   Any other run (a hole, a duplicate, a reorder, catch-up overlap, a signal, a group not in the hello, a frame
   that is not a message) goes frame by frame through :meth:`ReceiverLedger.on_push` itself, in arrival order,
   with each frame's own receive time — so every exception is counted by the one implementation in
   :mod:`drivers.ledger`;
3. accounts the in-order frames in bulk: ``delivered``, receive time − ``cts`` into the HDR histogram
   (:meth:`Recorder.record_many`), the per-message fan-out lists, and per network profile the same.

Runs are checked in batch order, so a (receiver, group) seen in two runs of one batch is checked against the state
the first run left. The ledger objects stay the only state (nothing is cached between batches): repairs, catch-up
and the end-of-run reconciliation see every seq the moment its batch is applied. Everything here runs on one thread
(the swarm's gevent thread), like the rest of the ledger.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, Final

import numpy as np
import numpy.ma  # np.unique imports it on first use: here, not inside a run (it takes ~0.2 s)
import orjson

from drivers.clock import CLOCK
from drivers.ledger import Frame, Ledger, ReceiverLedger

__all__ = ["BatchLedger"]

I64: Final = np.int64
_NO_GID: Final = -2**63  # never a gid (_as_message takes gids above it only)

ErrorFn = Callable[[int, BaseException], None]  # (slot, exception) for a frame the ledger could not take


def _as_message(payload: bytes) -> tuple[Frame | None, int, int, int, bool]:
    """(parsed frame or None, gid, seq, cts, in-order-able) of one distinct payload."""
    try:
        frame = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None, 0, 0, 0, False
    if not isinstance(frame, dict) or frame.get("op") != "msg":
        return frame if isinstance(frame, dict) else None, 0, 0, 0, False
    gid, seq, cts = frame.get("gid"), frame.get("seq"), frame.get("cts")
    if type(gid) is not int or type(seq) is not int or type(cts) is not int or not _NO_GID < gid < 2**63 \
            or not 0 <= seq < 2**62 or not 0 < cts < 2**62:
        # a signal (cts 0) or anything unusual: ReceiverLedger.on_push decides, frame by frame
        return frame, 0, 0, 0, False
    return frame, gid, seq, cts, True


class BatchLedger:
    """Applies batches of received pushes to ``ledger`` (see the module doc). One per generator process."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.receivers: list[ReceiverLedger | None] = []
        # where the run check finds a run's GroupLedger (its element of the ledger's Lasts): a slot whose receiver
        # has one group in two arrays (a 10,000-member group: no Python per run); every (slot, group) of a
        # receiver with several in a dict keyed slot << 32 | the gid's dense index (many groups: one look-up a run)
        self._slot_gid = np.zeros(0, I64)  # per slot: its receiver's one group's gid, or _NO_GID
        self._slot_gi = np.zeros(0, I64)  # that group's element of the ledger's Lasts, or -1
        self._slot_groups: list[int] = []  # per slot: how many groups its receiver had when last read
        self._slot_keys: list[list[int]] = []  # per slot: its keys in _pair_gi
        self._gidx: dict[int, int] = {}  # gid -> dense index (for the pair keys)
        self._pair_gi: dict[int, int] = {}  # slot << 32 | gidx -> the GroupLedger's element of Lasts
        self._slot_rid = np.zeros(0, I64)  # the receiver's identity (id()), to keep a receiver's runs together
        self._profiles: dict[int, str] = {}  # slot -> network profile of its receiver, for slots that have one
        self._free: list[int] = []
        self.batches = 0
        self.frames = 0
        self.in_order = 0  # frames taken by the run check (the rest went through on_push)

    # -- connection slots (the engine tags every frame with its connection's slot)
    def register(self, rl: ReceiverLedger) -> int:
        """A slot for one connection of receiver ``rl`` (its ``profile`` is read here: set it before)."""
        if self._free:
            slot = self._free.pop()
            self.receivers[slot] = rl
        else:
            slot = len(self.receivers)
            self.receivers.append(rl)
            self._slot_groups.append(0)
            self._slot_keys.append([])
            if slot >= self._slot_gid.size:
                size = max(64, 2 * self._slot_gid.size)
                self._slot_gid = np.resize(self._slot_gid, size)
                self._slot_gi = np.resize(self._slot_gi, size)
                self._slot_rid = np.resize(self._slot_rid, size)
        self._slot_rid[slot] = id(rl)
        if rl.profile is not None:
            self._profiles[slot] = rl.profile
        self.refresh(slot)
        return slot

    def refresh(self, slot: int) -> None:
        """Re-read the slot's receiver's groups (call after its hello: on_connect creates them)."""
        rl = self.receivers[slot]
        groups = {} if rl is None else rl.groups
        gl = next(iter(groups.values())) if len(groups) == 1 else None
        self._slot_gid[slot] = _NO_GID if gl is None else gl.gid
        self._slot_gi[slot] = -1 if gl is None else gl.ix
        self._slot_groups[slot] = len(groups)
        pairs = self._pair_gi
        for key in self._slot_keys[slot]:
            del pairs[key]
        keys: list[int] = []
        if len(groups) > 1:
            gidx, base = self._gidx, slot << 32
            for gid, g in groups.items():
                key = base | gidx.setdefault(gid, len(gidx))
                pairs[key] = g.ix
                keys.append(key)
        self._slot_keys[slot] = keys

    def release(self, slot: int) -> None:
        """The connection of ``slot`` ended and its last frames were applied: the slot may be reused."""
        if 0 <= slot < len(self.receivers) and self.receivers[slot] is not None:
            self.receivers[slot] = None
            self.refresh(slot)
            self._slot_rid[slot] = 0
            self._profiles.pop(slot, None)
            self._free.append(slot)

    # -- the hot path
    def apply(self, payloads: Sequence[bytes], slots: Sequence[int], times_ns: Sequence[int],
              on_error: ErrorFn | None = None) -> list[tuple[int, Frame]]:
        """Apply one batch: each frame's payload, connection slot and receive time (``time.time_ns()``); return
        the frames that were not pushes (slot, frame), in order, for the caller to dispatch (the engine sends a
        connection's replies around its batches, so normally there are none)."""
        n = len(payloads)
        if n == 0 or self.ledger.frozen:
            return []
        index: dict[bytes, int] = {}
        ids = np.fromiter((index.setdefault(p, len(index)) for p in payloads), np.intp, n)
        return self._apply(list(index), ids, np.fromiter(slots, I64, n), np.fromiter(times_ns, I64, n), on_error)

    def apply_ids(self, distinct: Sequence[bytes], ids: Any, slots: Any, times_ns: Any,
                  on_error: ErrorFn | None = None) -> list[tuple[int, Frame]]:
        """:meth:`apply` of a batch as the receive engine's pump hands it over: each distinct payload once, and per
        frame (integer arrays) its index into them, its slot and its receive time."""
        if len(ids) == 0 or self.ledger.frozen:
            return []
        return self._apply(distinct, ids, slots, times_ns, on_error)

    def _apply(self, distinct: Sequence[bytes], ids: Any, slot: Any, t_ns: Any,
               on_error: ErrorFn | None) -> list[tuple[int, Frame]]:
        n = len(ids)
        self.batches += 1
        self.frames += n
        # 1. every frame → its message; each distinct payload parsed once
        frames: list[Frame | None] = []
        m_gid: list[int] = []
        m_seq: list[int] = []
        m_cts: list[int] = []
        m_ok: list[bool] = []
        others = False
        for payload in distinct:
            frame, gid, seq, cts, ok = _as_message(payload)
            frames.append(frame)
            m_gid.append(gid)
            m_seq.append(seq)
            m_cts.append(cts)
            m_ok.append(ok)
            if not ok and (frame is None or frame.get("op") != "msg"):
                others = True
        offset = CLOCK.offset_us if CLOCK.correct else 0
        t_us = t_ns // 1000 + offset
        if len(distinct) == 1:
            gid_a = np.full(n, m_gid[0], I64)
            seq_a = np.full(n, m_seq[0], I64)
            ok_a = np.full(n, m_ok[0], np.bool_)
        else:
            gid_a = np.array(m_gid, I64)[ids]
            seq_a = np.array(m_seq, I64)[ids]
            ok_a = np.array(m_ok, np.bool_)[ids]
        # 2. runs of one (connection, group); a run is checkable when all its frames are messages in seq steps of 1
        bad = ~ok_a
        if n > 1:
            brk = np.flatnonzero((slot[1:] != slot[:-1]) | (gid_a[1:] != gid_a[:-1])) + 1
            step_bad = seq_a[1:] != seq_a[:-1] + 1
            step_bad[brk - 1] = False
            bad[1:] |= step_bad
        else:
            brk = np.zeros(0, np.intp)
        starts = np.concatenate((np.zeros(1, np.intp), brk))
        ends = np.concatenate((brk, np.full(1, n, np.intp)))
        run_k = slot[starts]
        run_first = seq_a[starts]
        run_last = seq_a[ends - 1]
        # the short way: an in-order run of a group its receiver has; a receiver with any other run in this batch
        # has all its runs checked the general way, in batch order
        run_gid = gid_a[starts]
        run_gi = np.where(run_gid == self._slot_gid[run_k], self._slot_gi[run_k], -1)
        look = np.flatnonzero(run_gi < 0)
        if look.size and self._pair_gi:  # runs to receivers of several groups: their (slot, group) pairs
            gidx = self._gidx
            run_gx = np.array([gidx.get(g, -1) for g in m_gid], I64)[ids[starts[look]]]
            keys = np.where(run_gx >= 0, (run_k[look] << 32) | run_gx, -1)
            run_gi[look] = np.fromiter(map(self._pair_gi.get, keys.tolist(), itertools.repeat(-1)), I64, look.size)
        short = ~np.logical_or.reduceat(bad, starts) & (run_gi >= 0)
        general: Any = None
        if not short.all():
            rid = self._slot_rid[run_k]
            short &= ~np.isin(rid, rid[~short])
            general = np.flatnonzero(~short)
        slow: list[int] = []  # runs that went through on_push
        sidx = np.flatnonzero(short) if general is not None else np.arange(run_k.size)
        # in batch order, each against what the one before left: from a group's first run out of step on
        for r in self._run_check(run_gi[sidx], run_first[sidx], run_last[sidx], sidx):
            k = int(run_k[r])
            rl = self.receivers[k]
            assert rl is not None  # a short run's slot has its receiver, which has the run's group
            gl = rl.groups[int(run_gid[r])]
            if int(run_first[r]) == gl.last + 1:
                gl.last = int(run_last[r])
            else:
                slow.append(r)
                self._slow_run(self.receivers[k], k, int(starts[r]), int(ends[r]), ids, t_us, frames, on_error)
        if general is not None:
            receivers = self.receivers
            for r, k, gid, first, last, b in zip(general.tolist(), run_k[general].tolist(),
                                                 gid_a[starts[general]].tolist(), run_first[general].tolist(),
                                                 run_last[general].tolist(),
                                                 np.logical_or.reduceat(bad, starts)[general].tolist(), strict=True):
                rl = receivers[k]
                if rl is None:  # a released slot (the engine releases a slot after its last batch): nothing to do
                    slow.append(r)
                    continue
                gl = rl.groups.get(gid)
                if len(rl.groups) != self._slot_groups[k]:
                    self.refresh(k)  # a group joined since the slot was read: later batches take the short way
                if not b and gl is not None and first == gl.last + 1:
                    gl.last = last
                    continue
                slow.append(r)
                self._slow_run(rl, k, int(starts[r]), int(ends[r]), ids, t_us, frames, on_error)
        # 3. the in-order frames in bulk
        if slow:
            fast = np.ones(n, np.bool_)
            for r in slow:
                fast[starts[r]:ends[r]] = False
            fi = np.flatnonzero(fast)
            nf = int(fi.size)
        else:
            fi = None
            nf = n
        self.in_order += nf
        if nf:
            lat = t_us - (np.full(n, m_cts[0], I64) if len(distinct) == 1 else np.array(m_cts, I64)[ids])
            fid = ids
            fslot = slot
            if fi is not None:
                lat, fid, fslot = lat[fi], ids[fi], slot[fi]
            self._account(nf, lat, fid, fslot, m_gid, m_seq)
        if not others:
            return []
        out: list[tuple[int, Frame]] = []
        for k, m in zip(slot.tolist(), ids.tolist(), strict=True):
            frame = frames[m]
            if not m_ok[m] and (frame is None or frame.get("op") != "msg"):
                if frame is None:
                    if on_error is not None:
                        on_error(k, ValueError(f"unparsable server frame: {distinct[m][:80]!r}"))
                else:
                    out.append((k, frame))
        return out

    def _run_check(self, gi: Any, rf: Any, rl_: Any, runs: Any) -> list[int]:
        """The short way's check, in bulk: per receiver's group (``gi``: each run's element of the ledger's Lasts),
        its runs (first and last seq, in batch order) in step with each other and with the group's ``last``, which
        moves to the last run in step. Returns the runs (from ``runs``) left to check one by one, in batch order: a
        group's first run out of step and every later run of that group."""
        m = int(gi.size)
        if not m:
            return []
        lasts = self.ledger.lasts.view()  # (a local: no view may outlive this call, GroupLedgers append to it)
        order = np.argsort(gi, kind="stable")  # each group's runs together, in batch order
        g, f, last = gi[order], rf[order], rl_[order]
        head = np.ones(m, np.bool_)
        head[1:] = g[1:] != g[:-1]
        before = np.empty(m, I64)  # what each run must follow: the group's last, or the run before it
        before[head] = lasts[g[head]]
        follows = np.flatnonzero(~head)
        before[follows] = last[follows - 1]
        off = f != before + 1
        heads = np.flatnonzero(head)
        pos = np.arange(m)
        first_off = np.minimum.reduceat(np.where(off, pos, m), heads)  # per group: its first run out of step
        in_step_to = np.minimum(np.append(heads[1:], m), first_off) - 1  # per group: its last run in step
        moved = in_step_to >= heads
        lasts[g[in_step_to[moved]]] = last[in_step_to[moved]]
        if not off.any():
            return []
        grp = np.cumsum(head) - 1
        return [int(r) for r in runs[np.sort(order[pos >= first_off[grp]])].tolist()]

    def _slow_run(self, rl: ReceiverLedger | None, k: int, start: int, end: int, ids: Any, t_us: Any,
                  frames: list[Frame | None], on_error: ErrorFn | None) -> None:
        if rl is None:
            return
        for m, t in zip(ids[start:end].tolist(), t_us[start:end].tolist(), strict=True):
            frame = frames[m]
            if frame is None or frame.get("op") != "msg":
                continue  # not a push: returned to the caller
            try:
                rl.on_push(frame, t)
            except Exception as exc:  # a malformed push: the caller counts it, the batch goes on
                if on_error is not None:
                    on_error(k, exc)
        if len(rl.groups) != self._slot_groups[k]:
            self.refresh(k)  # on_push may have added a group the hello did not have

    def _account(self, nf: int, lat: Any, fid: Any, fslot: Any, m_gid: list[int], m_seq: list[int]) -> None:
        """What on_push does for each in-order push after its seq check: delivered, latency, fan-out, profile."""
        ledger = self.ledger
        ledger.delivered += nf
        ledger.latency.record_many(lat)
        # fan-out: each message's latencies onto its list (order within a list does not matter)
        fan = ledger.fan
        if int(fid.min()) == int(fid.max()):
            groups: list[tuple[int, Any]] = [(int(fid[0]), lat)]
        else:
            order = np.argsort(fid, kind="stable")
            sid = fid[order]
            cut = np.flatnonzero(sid[1:] != sid[:-1]) + 1
            slat = lat[order]
            groups = list(zip(sid[np.concatenate((np.zeros(1, np.intp), cut))].tolist(), np.split(slat, cut),
                              strict=True))
        for m, part in groups:  # the part as one array: Ledger.take buckets it (LogBuckets.add_latencies)
            key = (m_gid[m], m_seq[m])
            lst = fan.get(key)
            if lst is None:
                fan[key] = [part]
            else:
                lst.append(part)
        # network profiles (weak networks): their members' figures apart as well
        if not self._profiles:
            return
        profiles = self._profiles
        by_profile: dict[str, list[int]] = {}
        for k in np.unique(fslot).tolist():
            name = profiles.get(k)
            if name is not None:
                by_profile.setdefault(name, []).append(k)
        for name, ks in by_profile.items():
            mask = np.isin(fslot, np.array(ks, I64))
            prof = ledger.profile(name)
            prof["counts"]["delivered"] += int(np.count_nonzero(mask))
            prof["latency"].record_many(lat[mask])
