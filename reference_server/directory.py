"""Who exists and who is in which group: an in-memory view of the database, loaded at start.

The writer thread is the only mutator, and it mutates only after the transaction that made a change has
committed. Readers on the event loop never iterate a structure the writer changes in place: member maps and
a user's group set are replaced whole (copy-on-write); single-key updates are atomic under the GIL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class Group:
    gid: int
    members: dict[int, int] = field(default_factory=dict)  # uid -> join seq (sees messages after it)
    read: dict[int, int] = field(default_factory=dict)  # uid -> read mark
    max_seq: int = 0  # highest committed seq


@dataclass(slots=True)
class Directory:
    users: set[int] = field(default_factory=set)
    groups: dict[int, Group] = field(default_factory=dict)
    user_groups: dict[int, frozenset[int]] = field(default_factory=dict)
    #: called (writer thread) with a gid after its member map changed; cluster mode mirrors it to Redis
    on_members_changed: Callable[[int], None] | None = None

    def groups_of(self, uid: int) -> frozenset[int]:
        return self.user_groups.get(uid, frozenset())

    def is_member(self, uid: int, gid: int) -> bool:
        group = self.groups.get(gid)
        return group is not None and uid in group.members

    def set_members(self, group: Group, members: dict[int, int]) -> None:
        """Swap in a new member map and keep user_groups in step (writer thread, after commit)."""
        old = group.members
        for uid in old.keys() - members.keys():
            self.user_groups[uid] = self.groups_of(uid) - {group.gid}
            group.read.pop(uid, None)
        for uid in members.keys() - old.keys():
            self.user_groups[uid] = self.groups_of(uid) | {group.gid}
            group.read[uid] = members[uid]
        group.members = members
        if self.on_members_changed is not None:
            self.on_members_changed(group.gid)
