"""The bus format between the logic node and the gateways (cluster mode), defined once.

Each bus message is one type byte, a fixed header and a payload. Client frames travel as they came;
frames for clients travel already WebSocket-framed, so a gateway only appends bytes to a queue.

| type | direction | header | payload |
|---|---|---|---|
| REQ | gateway → logic | gateway id, uid | the client's JSON frame |
| CONNECT / DISCONNECT | gateway → logic | gateway id, uid | — |
| TO_USER | logic → one gateway | uid | a WebSocket frame for that user (a reply) |
| PUSH | logic → one gateway | uid | a message push for that user (per-user fan-out: one per receiver) |
| GROUP | logic → gateway(s) | gid, seq, sender, recipients | a WebSocket frame for the members the gateway holds |
| CHANGE | logic → gateway(s) | gid, seq, joined, left uids | a join/leave signal's frame (see below) |
| CLOSE_USER | logic → one gateway | uid, close code | reason (UTF-8) |
| MEMBERS | logic → every gateway | gid | — (the member list changed: drop the cached copy) |
| PROBE | gateway → logic | gateway id | — ("how many messages have you sent me?": at start and after a reconnect) |
| STATE | logic → one gateway | logic epoch, its counts on that gateway's channel, broadcast, control | — |
| PROBE_ALL | logic → every gateway | — | — ("how many requests have you sent me?": after its reconnect) |
| COUNTS | gateway → logic | gateway id, its epoch, its count on the logic channel | — |
| RESET | logic → one gateway | — | — (some of your requests never reached me: close your clients, 4003) |

CHANGE travels where the group's messages travel, so a gateway applies a membership change to its copy of the
member list in seq order with them: no message after a leave reaches the removed member, none after a join misses
the newcomer, and the removed members hear their leave signal. MEMBERS (after the Redis mirror is rewritten) only
keeps cold copies fresh.

Every bus message also travels in the bus' envelope (publisher epoch, number on the channel: cluster/bus.py),
which finds messages lost between; PROBE/STATE and PROBE_ALL/COUNTS find those lost at the end of a stream.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from reference_server.protocol import Kind, Message

REQ: Final = 1
CONNECT: Final = 2
DISCONNECT: Final = 3
TO_USER: Final = 4
GROUP: Final = 5
CLOSE_USER: Final = 6
MEMBERS: Final = 7
PUSH: Final = 8
CHANGE: Final = 9
PROBE: Final = 10
STATE: Final = 11
PROBE_ALL: Final = 12
COUNTS: Final = 13
RESET: Final = 14

#: metric label of each type
KIND_NAMES: Final = {REQ: "request", CONNECT: "control", DISCONNECT: "control", TO_USER: "reply", GROUP: "group",
                     CLOSE_USER: "control", MEMBERS: "control", PUSH: "push", CHANGE: "group", PROBE: "control",
                     STATE: "control", PROBE_ALL: "control", COUNTS: "control", RESET: "control"}

_GW_UID = struct.Struct("!BHQ")  # type, gateway id, uid
_UID = struct.Struct("!BQ")  # type, uid | gid
_GROUP = struct.Struct("!BQQQI")  # type, gid, seq, sender, recipient count
_CHANGE = struct.Struct("!BQQII")  # type, gid, seq, joined count, left count
_CLOSE = struct.Struct("!BQH")  # type, uid, code
_ID = struct.Struct("!Q")
_STATE = struct.Struct("!BIQQQ")  # type, logic epoch, its counts on the gateway's channel, broadcast, control
_COUNTS = struct.Struct("!BHIQ")  # type, gateway id, gateway epoch, its count on the logic channel

LOGIC_CHANNEL: Final = "chat:logic"
BROADCAST_CHANNEL: Final = "chat:broadcast"
CONTROL_CHANNEL: Final = "chat:control"


def gateway_channel(gw: int) -> str:
    return f"chat:gw:{gw}"


def request(kind: int, gw: int, uid: int, payload: bytes = b"") -> bytes:
    return _GW_UID.pack(kind, gw, uid) + payload


def to_user(uid: int, frame: bytes, kind: int = TO_USER) -> bytes:
    return _UID.pack(kind, uid) + frame


def group(gid: int, seq: int, sender: int, to: tuple[int, ...] | None, frame: bytes) -> bytes:
    recipients = b"".join(_ID.pack(u) for u in to) if to is not None else b""
    count = len(to) if to is not None else 0xFFFFFFFF
    return _GROUP.pack(GROUP, gid, seq, sender, count) + recipients + frame


def change(gid: int, seq: int, joined: tuple[int, ...], left: tuple[int, ...], frame: bytes) -> bytes:
    ids = b"".join(_ID.pack(u) for u in (*joined, *left))
    return _CHANGE.pack(CHANGE, gid, seq, len(joined), len(left)) + ids + frame


def for_group(msg: Message, frame: bytes) -> bytes:
    """The bus message of a group entry for gateways that filter by member list (broadcast, routed): CHANGE for
    a join/leave signal, GROUP otherwise."""
    if msg.kind == Kind.JOIN and msg.uids:
        return change(msg.gid, msg.seq, msg.uids, (), frame)
    if msg.kind == Kind.LEAVE and msg.uids:
        return change(msg.gid, msg.seq, (), msg.uids, frame)
    return group(msg.gid, msg.seq, msg.sender, msg.to, frame)


def close_user(uid: int, code: int, reason: str) -> bytes:
    return _CLOSE.pack(CLOSE_USER, uid, code) + reason.encode()


def members_changed(gid: int) -> bytes:
    return _UID.pack(MEMBERS, gid)


def probe(gw: int) -> bytes:
    return _GW_UID.pack(PROBE, gw, 0)


def state(epoch: int, own: int, broadcast: int, control: int) -> bytes:
    return _STATE.pack(STATE, epoch, own, broadcast, control)


def decode_state(data: bytes) -> tuple[int, int, int, int]:
    """(logic epoch, its counts on the gateway's channel, on broadcast, on control)."""
    _, epoch, own, broadcast, control = _STATE.unpack_from(data)
    return epoch, own, broadcast, control


def probe_all() -> bytes:
    return _UID.pack(PROBE_ALL, 0)


def counts(gw: int, epoch: int, sent: int) -> bytes:
    return _COUNTS.pack(COUNTS, gw, epoch, sent)


def decode_counts(data: bytes) -> tuple[int, int, int]:
    """(gateway id, gateway epoch, its count on the logic channel)."""
    _, gw, epoch, sent = _COUNTS.unpack_from(data)
    return gw, epoch, sent


def reset() -> bytes:
    return _UID.pack(RESET, 0)


@dataclass(frozen=True, slots=True)
class Decoded:
    kind: int
    gw: int = 0
    uid: int = 0  # uid, or gid for GROUP and MEMBERS
    seq: int = 0
    sender: int = 0
    to: tuple[int, ...] | None = None
    joined: tuple[int, ...] = ()  # CHANGE
    left: tuple[int, ...] = ()
    code: int = 0
    payload: bytes = b""


def decode(data: bytes) -> Decoded:
    kind = data[0]
    if kind in (STATE, PROBE_ALL, COUNTS, RESET):
        return Decoded(kind, payload=data)  # decode_state, decode_counts
    if kind in (REQ, CONNECT, DISCONNECT, PROBE):
        _, gw, uid = _GW_UID.unpack_from(data)
        return Decoded(kind, gw=gw, uid=uid, payload=data[_GW_UID.size:])
    if kind in (TO_USER, PUSH, MEMBERS):
        _, uid = _UID.unpack_from(data)
        return Decoded(kind, uid=uid, payload=data[_UID.size:])
    if kind == GROUP:
        _, gid, seq, sender, count = _GROUP.unpack_from(data)
        off = _GROUP.size
        to = None
        if count != 0xFFFFFFFF:
            to = tuple(_ID.unpack_from(data, off + 8 * i)[0] for i in range(count))
            off += 8 * count
        return Decoded(kind, uid=gid, seq=seq, sender=sender, to=to, payload=data[off:])
    if kind == CHANGE:
        _, gid, seq, n_joined, n_left = _CHANGE.unpack_from(data)
        off = _CHANGE.size
        ids = tuple(_ID.unpack_from(data, off + 8 * i)[0] for i in range(n_joined + n_left))
        return Decoded(kind, uid=gid, seq=seq, joined=ids[:n_joined], left=ids[n_joined:],
                       payload=data[off + 8 * len(ids):])
    if kind == CLOSE_USER:
        _, uid, code = _CLOSE.unpack_from(data)
        return Decoded(kind, uid=uid, code=code, payload=data[_CLOSE.size:])
    raise ValueError(f"unknown bus message type {kind}")
