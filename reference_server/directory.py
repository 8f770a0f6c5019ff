"""Who exists and who is in which group: an in-memory view of the database, loaded at start.

The writer thread is the only mutator, and it mutates only after the transaction that made a change has
committed. Readers on the event loop never iterate a structure the writer changes in place: member maps and
a user's group set are replaced whole (copy-on-write); single-key updates are atomic under the GIL.

``audience`` is the one statement of who receives a group entry; storage, unread, offline and every fan-out
(here or at a cluster's gateways) ask it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(slots=True)
class Group:
    gid: int
    members: dict[int, int] = field(default_factory=dict)  # uid -> join seq (sees messages after it)
    read: dict[int, int] = field(default_factory=dict)  # uid -> read mark
    max_seq: int = 0  # highest committed seq


class Entry(Protocol):
    """What the audience rule reads of a group entry: a ``protocol.Message``, or a cluster bus message."""

    @property
    def seq(self) -> int: ...

    @property
    def sender(self) -> int: ...

    @property
    def to(self) -> tuple[int, ...] | None: ...


def audience(members: Mapping[int, int], entry: Entry, among: Iterable[int] | None = None) -> list[int]:
    """Who receives an entry (pushed, buffered offline, counted unread): a member who joined before its seq
    (``members`` maps uid -> join seq; one who joined in the same batch, at the seq or after, does not), not
    its sender, and one of its ``to`` if it has a recipient list. In member order, or in ``to`` order.

    ``among``: only these candidates (one user's check costs one lookup, not a pass over the group).
    """
    seq, sender, to = entry.seq, entry.sender, entry.to
    if among is None:
        if to is None:  # the hot path of every public message: one pass over the members
            return [u for u, join in members.items() if join < seq and u != sender]
        among, to = to, None  # every candidate is in ``to`` already
    return [u for u in among if members.get(u, seq) < seq and u != sender and (to is None or u in to)]


_NONE: frozenset[int] = frozenset()


@dataclass(slots=True)
class Directory:
    users: set[int] = field(default_factory=set)
    groups: dict[int, Group] = field(default_factory=dict)
    user_groups: dict[int, frozenset[int]] = field(default_factory=dict)
    #: called (writer thread) with a gid after its member map changed; cluster mode mirrors it to Redis
    on_members_changed: Callable[[int], None] | None = None

    def groups_of(self, uid: int) -> frozenset[int]:
        return self.user_groups.get(uid, _NONE)

    def set_members(self, group: Group, members: dict[int, int], added: Iterable[int] | None = None,
                    removed: Iterable[int] | None = None) -> None:
        """Swap in a new member map and keep user_groups in step (writer thread, after commit). ``added`` and
        ``removed``: the change, when the caller knows it (otherwise it is found by comparing the two maps — a
        pass over both, which a large group makes long)."""
        old = group.members
        if added is None or removed is None:
            removed, added = old.keys() - members.keys(), members.keys() - old.keys()
        gid = group.gid
        ug, read = self.user_groups, group.read
        only = frozenset((gid,))  # shared by every user in no other group (frozensets never change)
        for uid in removed:
            have = ug.get(uid)
            if have is not None:
                if have == only:
                    del ug[uid]
                else:
                    ug[uid] = have - only
            read.pop(uid, None)
        for uid in added:
            have = ug.get(uid)
            ug[uid] = only if have is None else have | only
            read[uid] = members[uid]
        group.members = members
        if self.on_members_changed is not None:
            self.on_members_changed(group.gid)
