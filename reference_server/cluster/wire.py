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
| CLOSE_USER | logic → one gateway | uid, close code | reason (UTF-8) |
| MEMBERS | logic → every gateway | gid | — (the member list changed: drop the cached copy) |
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

REQ: Final = 1
CONNECT: Final = 2
DISCONNECT: Final = 3
TO_USER: Final = 4
GROUP: Final = 5
CLOSE_USER: Final = 6
MEMBERS: Final = 7
PUSH: Final = 8

#: metric label of each type
KIND_NAMES: Final = {REQ: "request", CONNECT: "control", DISCONNECT: "control", TO_USER: "reply", GROUP: "group",
                     CLOSE_USER: "control", MEMBERS: "control", PUSH: "push"}

_GW_UID = struct.Struct("!BHQ")  # type, gateway id, uid
_UID = struct.Struct("!BQ")  # type, uid | gid
_GROUP = struct.Struct("!BQQQI")  # type, gid, seq, sender, recipient count
_CLOSE = struct.Struct("!BQH")  # type, uid, code
_ID = struct.Struct("!Q")

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


def close_user(uid: int, code: int, reason: str) -> bytes:
    return _CLOSE.pack(CLOSE_USER, uid, code) + reason.encode()


def members_changed(gid: int) -> bytes:
    return _UID.pack(MEMBERS, gid)


@dataclass(frozen=True, slots=True)
class Decoded:
    kind: int
    gw: int = 0
    uid: int = 0  # uid, or gid for GROUP and MEMBERS
    seq: int = 0
    sender: int = 0
    to: tuple[int, ...] | None = None
    code: int = 0
    payload: bytes = b""


def decode(data: bytes) -> Decoded:
    kind = data[0]
    if kind in (REQ, CONNECT, DISCONNECT):
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
    if kind == CLOSE_USER:
        _, uid, code = _CLOSE.unpack_from(data)
        return Decoded(kind, uid=uid, code=code, payload=data[_CLOSE.size:])
    raise ValueError(f"unknown bus message type {kind}")
