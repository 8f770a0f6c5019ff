"""The chatbench wire protocol, sans-I/O.

This module is the only definition of the wire format. The server edge and the drivers both import it;
it never touches a socket, so every rule here is unit-tested without one. docs/protocol.md is the
human-readable contract and must agree with this file.

Transport: WebSocket, one JSON object per text frame, UTF-8. Ids (users, groups) are non-negative
integers below 2**63; timestamps are integer microseconds since the Unix epoch.

Client → server requests carry ``op`` and an optional integer ``rid`` that the reply echoes.
Server → client frames carry ``op``; replies also carry ``rid`` when the request had one.

Exceptions: :class:`ProtocolError` (the peer sent something invalid; it carries a stable
:class:`ErrorCode` and the request's ``rid`` when it could be read).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any, Final

import orjson

PROTOCOL_VERSION: Final = 1

MAX_ID: Final = 2**63 - 1
#: the default user-token secret and admin token: loopback benchmarking only (the server and every client of this
#: toolkit default to them; set CHAT_SECRET / CHAT_ADMIN_TOKEN anywhere else)
DEV_SECRET: Final = "chatbench-dev-secret"
DEV_ADMIN_TOKEN: Final = "chatbench-dev-admin"
#: Default limits; the server's may be stricter (it announces them in ``hello``).
DEFAULT_MAX_FRAME_BYTES: Final = 64 * 1024
DEFAULT_MAX_BODY_CHARS: Final = 4096
MAX_SYNC_LIMIT: Final = 1000
#: a sync page also ends after the entry that brings its size to this many bytes, each entry counting its body's
#: UTF-8 bytes plus SYNC_ENTRY_BYTES (about what its other fields take on the wire)
MAX_SYNC_PAGE_BYTES: Final = 64 * 1024
SYNC_ENTRY_BYTES: Final = 128
#: an ``unread`` request names at most this many distinct groups (repeats count once)
MAX_UNREAD_GIDS: Final = 1000
#: a join/leave signal lists the members it names (``uids``) only up to this many; it always says how many
#: (``count``), so its size does not grow with the size of the change
MAX_SIGNAL_UIDS: Final = 100
WS_PATH: Final = "/ws"


class Op(StrEnum):
    """Every ``op`` value on the wire."""

    # client → server
    SEND = "send"
    SYNC = "sync"
    READ = "read"
    UNREAD = "unread"
    DELETE = "delete"
    RECALL = "recall"
    PING = "ping"
    # server → client
    HELLO = "hello"
    OFFLINE = "offline"  # right after hello in the buffering offline modes: the user's offline buffer
    ACK = "ack"
    MSG = "msg"
    PONG = "pong"
    ERROR = "error"


class ErrorCode(StrEnum):
    """Stable error codes of ``error`` frames. The connection stays open after every one of them."""

    BAD_JSON = "bad_json"  # the frame is not valid UTF-8 JSON
    BAD_FRAME = "bad_frame"  # valid JSON but not an object with a string ``op``, or a binary frame
    UNKNOWN_OP = "unknown_op"  # ``op`` is not a client operation
    BAD_FIELD = "bad_field"  # a field is missing, of the wrong type or out of range
    BODY_TOO_LONG = "body_too_long"  # ``body`` longer than the server's max_body_chars
    NOT_MEMBER = "not_member"  # the user is not a member of the group (or the group does not exist)
    NO_SUCH_MESSAGE = "no_such_message"  # delete of a seq the group does not have
    RATE_LIMITED = "rate_limited"  # over the user's send rate or request budget (reconnecting refills neither)
    RECALL_REFUSED = "recall_refused"  # not the sender's own ordinary message, or past the recall window
    UNAVAILABLE = "unavailable"  # the server is shutting down or its storage failed; retry elsewhere


class CloseCode(IntEnum):
    """WebSocket close codes the server uses."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutdown
    PROTOCOL_ERROR = 1002  # WebSocket-level violation
    POLICY_VIOLATION = 1008  # cluster gateways: the user does not exist (refused after the upgrade)
    MESSAGE_TOO_BIG = 1009  # frame over max_frame_bytes
    INTERNAL_ERROR = 1011
    IDLE_TIMEOUT = 4000  # nothing received for idle_timeout seconds
    SLOW_CONSUMER = 4001  # the connection's send queue passed its bound; resume with sync
    REPLACED = 4002  # the same user connected again elsewhere on this server
    RESUME = 4003  # a cluster gateway may have missed bus messages for this connection: resume by seq


class ProtocolError(Exception):
    """The peer sent a frame that breaks the protocol; ``code`` is stable, ``message`` is for humans."""

    def __init__(self, code: ErrorCode, message: str, rid: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.rid = rid


def parse_id(text: str) -> int | None:
    """An id written in ASCII decimal digits (leading zeros allowed), or None: not digits, or above MAX_ID —
    checked on the length first, so thousands of digits cost nothing (and never hit int()'s digit limit)."""
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > 19:
        return None
    value = int(digits)
    return value if value <= MAX_ID else None


def now_us() -> int:
    """Wall-clock time in integer microseconds (the unit of every timestamp on the wire)."""
    return time.time_ns() // 1000


# --------------------------------------------------------------------------------------------------
# Authentication: a token is the hex HMAC-SHA256 of the decimal user id under the server secret.


def user_token(secret: str | bytes, uid: int) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, str(uid).encode(), hashlib.sha256).hexdigest()


def verify_token(secret: str | bytes, uid: int, token: str) -> bool:
    # compare_digest only takes ASCII str; a non-ASCII token is simply wrong
    return token.isascii() and hmac.compare_digest(user_token(secret, uid), token)


def ws_query(uid: int, token: str) -> str:
    """The request target a client opens: ``/ws?uid=<uid>&token=<token>``."""
    return f"{WS_PATH}?uid={uid}&token={token}"


# --------------------------------------------------------------------------------------------------
# Client → server requests


@dataclass(frozen=True, slots=True)
class Send:
    rid: int | None
    gid: int
    body: str
    cts: int  # sender's client timestamp, µs
    to: tuple[int, ...] | None = None  # visible only to these members (and the sender); None = everyone


@dataclass(frozen=True, slots=True)
class Sync:
    rid: int | None
    gid: int
    after: int  # return messages with seq > after
    limit: int


@dataclass(frozen=True, slots=True)
class Read:
    rid: int | None
    gid: int
    seq: int  # everything up to and including seq is read


@dataclass(frozen=True, slots=True)
class Unread:
    rid: int | None
    gids: tuple[int, ...] | None  # None = every group of the user


@dataclass(frozen=True, slots=True)
class Delete:
    rid: int | None
    gid: int
    seq: int


@dataclass(frozen=True, slots=True)
class Recall:
    rid: int | None
    gid: int
    seq: int  # the sender's own message to retract


@dataclass(frozen=True, slots=True)
class Ping:
    rid: int | None


Request = Send | Sync | Read | Unread | Delete | Recall | Ping


def _int(obj: dict[str, Any], key: str, rid: int | None, *, default: int | None = None) -> int:
    value = obj.get(key)
    if value is None:  # absent or null
        if default is None:
            raise ProtocolError(ErrorCode.BAD_FIELD, f"missing field {key!r}", rid)
        return default
    # bool is an int subclass in Python; on the wire it is not a number.
    if type(value) is not int or not 0 <= value <= MAX_ID:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{key!r} must be an integer in [0, 2**63)", rid)
    return value


def _id_list(obj: dict[str, Any], key: str, rid: int | None, *, non_empty: bool = False) -> tuple[int, ...] | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is not list or any(type(v) is not int or not 0 <= v <= MAX_ID for v in value):
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{key!r} must be a list of integer ids", rid)
    if non_empty and not value:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{key!r} must name at least one id", rid)
    return tuple(value)


def decode_request(data: bytes | str, *, max_body_chars: int = DEFAULT_MAX_BODY_CHARS) -> Request:
    """Parse and validate one client frame. Raises :class:`ProtocolError` with a stable code."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"not valid JSON: {exc}") from None
    if type(obj) is not dict:
        raise ProtocolError(ErrorCode.BAD_FRAME, "a frame must be a JSON object")
    rid = obj.get("rid")
    if rid is not None and (type(rid) is not int or not 0 <= rid <= MAX_ID):
        raise ProtocolError(ErrorCode.BAD_FIELD, "'rid' must be an integer in [0, 2**63)")
    op = obj.get("op")
    if type(op) is not str:
        raise ProtocolError(ErrorCode.BAD_FRAME, "missing string field 'op'", rid)
    if op == "send":
        body = obj.get("body")
        if type(body) is not str:
            raise ProtocolError(ErrorCode.BAD_FIELD, "'body' must be a string", rid)
        if len(body) > max_body_chars:
            raise ProtocolError(
                ErrorCode.BODY_TOO_LONG, f"body has {len(body)} characters, limit {max_body_chars}", rid
            )
        return Send(rid, _int(obj, "gid", rid), body, _int(obj, "cts", rid, default=0),
                    _id_list(obj, "to", rid, non_empty=True))
    if op == "sync":
        limit = _int(obj, "limit", rid, default=100)
        if not 1 <= limit <= MAX_SYNC_LIMIT:
            raise ProtocolError(ErrorCode.BAD_FIELD, f"'limit' must be in [1, {MAX_SYNC_LIMIT}]", rid)
        return Sync(rid, _int(obj, "gid", rid), _int(obj, "after", rid, default=0), limit)
    if op == "read":
        return Read(rid, _int(obj, "gid", rid), _int(obj, "seq", rid))
    if op == "unread":
        return Unread(rid, _id_list(obj, "gids", rid))
    if op == "delete":
        return Delete(rid, _int(obj, "gid", rid), _int(obj, "seq", rid))
    if op == "recall":
        return Recall(rid, _int(obj, "gid", rid), _int(obj, "seq", rid))
    if op == "ping":
        return Ping(rid)
    raise ProtocolError(ErrorCode.UNKNOWN_OP, f"unknown op {op!r}", rid)


def _dumps(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj)


def _with_rid(obj: dict[str, Any], rid: int | None) -> dict[str, Any]:
    if rid is not None:
        obj["rid"] = rid
    return obj


# Client-side encoders (the drivers use these; the server only decodes them).


def encode_send(rid: int | None, gid: int, body: str, cts: int, to: list[int] | None = None) -> bytes:
    obj: dict[str, Any] = {"op": "send", "gid": gid, "body": body, "cts": cts}
    if to is not None:
        obj["to"] = to
    return _dumps(_with_rid(obj, rid))


def encode_sync(rid: int | None, gid: int, after: int, limit: int = 100) -> bytes:
    return _dumps(_with_rid({"op": "sync", "gid": gid, "after": after, "limit": limit}, rid))


def encode_read(rid: int | None, gid: int, seq: int) -> bytes:
    return _dumps(_with_rid({"op": "read", "gid": gid, "seq": seq}, rid))


def encode_unread(rid: int | None, gids: list[int] | None = None) -> bytes:
    obj: dict[str, Any] = {"op": "unread"}
    if gids is not None:
        obj["gids"] = gids
    return _dumps(_with_rid(obj, rid))


def encode_delete(rid: int | None, gid: int, seq: int) -> bytes:
    return _dumps(_with_rid({"op": "delete", "gid": gid, "seq": seq}, rid))


def encode_recall(rid: int | None, gid: int, seq: int) -> bytes:
    return _dumps(_with_rid({"op": "recall", "gid": gid, "seq": seq}, rid))


def encode_ping(rid: int | None) -> bytes:
    return _dumps(_with_rid({"op": "ping"}, rid))


# --------------------------------------------------------------------------------------------------
# Server → client frames


class Kind(StrEnum):
    """What a stored group entry is. Everything but MSG is signalling: it takes a seq, is pushed, synced and
    buffered offline like a message, is never dropped by any offline mode, and never counts as unread."""

    MSG = "msg"  # an ordinary message (``kind`` is omitted on the wire)
    RECALL = "recall"  # the sender retracted its message ``ref``; ``to`` copies the recalled message's
    JOIN = "join"  # members ``uids`` were added (``from`` is 0: the admin plane)
    LEAVE = "leave"  # members ``uids`` were removed (``from`` is 0)
    RECALLED = "recalled"  # storage only: a message whose recall is stored; never on the wire


#: ``from`` of membership signals: they come from the admin plane, not from a user
ADMIN_SENDER: Final = 0


@dataclass(frozen=True, slots=True)
class Message:
    """One stored group entry (a message or a signal), as pushed and as returned by sync."""

    gid: int
    seq: int
    sender: int
    cts: int  # sender's client timestamp, µs
    sts: int  # server accept timestamp, µs
    body: str
    to: tuple[int, ...] | None = None  # private: visible only to these members and the sender
    kind: str = Kind.MSG
    ref: int = 0  # RECALL: the recalled seq
    # JOIN/LEAVE: the members added/removed (all of them in memory, where the server knows them; on the wire and
    # in storage only up to MAX_SIGNAL_UIDS), and how many (``count``: what a signal read back without them says)
    uids: tuple[int, ...] | None = None
    count: int = 0

    def wire(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "gid": self.gid,
            "seq": self.seq,
            "from": self.sender,
            "cts": self.cts,
            "sts": self.sts,
            "body": self.body,
        }
        if self.to is not None:
            obj["to"] = list(self.to)
        if self.kind != Kind.MSG:
            obj["kind"] = str(self.kind)
            if self.kind == Kind.RECALL:
                obj["ref"] = self.ref
            elif self.kind == Kind.JOIN or self.kind == Kind.LEAVE:
                obj["count"] = self.members_named
                if self.uids is not None and len(self.uids) <= MAX_SIGNAL_UIDS:
                    obj["uids"] = list(self.uids)
            elif self.uids is not None:
                obj["uids"] = list(self.uids)
        return obj

    @property
    def members_named(self) -> int:
        """JOIN/LEAVE: how many members were added/removed."""
        return len(self.uids) if self.uids is not None else self.count

    def bounded(self) -> tuple[int, ...] | None:
        """The ``uids`` as the wire and storage keep them: None past MAX_SIGNAL_UIDS."""
        return self.uids if self.uids is not None and len(self.uids) <= MAX_SIGNAL_UIDS else None

    def visible_to(self, uid: int) -> bool:
        return self.to is None or uid == self.sender or uid in self.to

    @property
    def signal(self) -> bool:
        return self.kind != Kind.MSG and self.kind != Kind.RECALLED


def encode_push(msg: Message) -> bytes:
    """The ``msg`` frame; encoded once per message and the same bytes written to every receiver."""
    obj = msg.wire()
    obj["op"] = "msg"
    return _dumps(obj)


@dataclass(frozen=True, slots=True)
class GroupState:
    gid: int
    max_seq: int  # the group's latest seq (0 = empty)
    read_seq: int  # the user's read mark
    unread: int


def encode_hello(
    uid: int, groups: list[GroupState], *, max_body_chars: int, max_frame_bytes: int, idle_timeout_s: float,
    send_rate: float, send_burst: int, offline: str = "pull",
) -> bytes:
    return _dumps(
        {
            "op": "hello",
            "v": PROTOCOL_VERSION,
            "uid": uid,
            "sts": now_us(),
            "offline": offline,
            "limits": {
                "max_body_chars": max_body_chars,
                "max_frame_bytes": max_frame_bytes,
                "idle_timeout_s": idle_timeout_s,
                "send_rate": send_rate,
                "send_burst": send_burst,
            },
            "groups": [_group_wire(g) for g in groups],
        }
    )


def _group_wire(g: GroupState) -> dict[str, int]:
    return {"gid": g.gid, "max": g.max_seq, "read": g.read_seq, "unread": g.unread}


def encode_ack(rid: int | None, gid: int, seq: int, sts: int) -> bytes:
    return _dumps(_with_rid({"op": "ack", "gid": gid, "seq": seq, "sts": sts}, rid))


def encode_sync_page(
    rid: int | None, gid: int, msgs: list[Message], next_after: int, more: bool, max_seq: int
) -> bytes:
    return _dumps(
        _with_rid(
            {"op": "sync", "gid": gid, "msgs": [m.wire() for m in msgs], "next": next_after, "more": more,
             "max": max_seq},
            rid,
        )
    )


def encode_read_reply(rid: int | None, state: GroupState) -> bytes:
    obj: dict[str, Any] = _group_wire(state)
    obj["op"] = "read"
    return _dumps(_with_rid(obj, rid))


def encode_unread_reply(rid: int | None, groups: list[GroupState]) -> bytes:
    return _dumps(_with_rid({"op": "unread", "groups": [_group_wire(g) for g in groups]}, rid))


def encode_delete_reply(rid: int | None, gid: int, seq: int) -> bytes:
    return _dumps(_with_rid({"op": "delete", "gid": gid, "seq": seq}, rid))


def encode_recall_reply(rid: int | None, gid: int, seq: int, ref: int, sts: int) -> bytes:
    """The recall's own ack: ``seq`` is the recall signal's seq, ``ref`` the recalled message's."""
    return _dumps(_with_rid({"op": "recall", "gid": gid, "seq": seq, "ref": ref, "sts": sts}, rid))


def encode_offline(msgs: list[Message], dropped: int) -> bytes:
    """The user's offline buffer, oldest first, sent once right after ``hello`` (buffering offline modes)."""
    return _dumps({"op": "offline", "msgs": [m.wire() for m in msgs], "dropped": dropped})


def encode_pong(rid: int | None) -> bytes:
    return _dumps(_with_rid({"op": "pong", "sts": now_us()}, rid))


def encode_error(code: ErrorCode, message: str, rid: int | None = None) -> bytes:
    return _dumps(_with_rid({"op": "error", "code": str(code), "msg": message}, rid))


def decode_server_frame(data: bytes | str) -> dict[str, Any]:
    """Parse a server frame for a client. Raises :class:`ProtocolError` if it is not a JSON object with an op."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"server sent invalid JSON: {exc}") from None
    if type(obj) is not dict or type(obj.get("op")) is not str:
        raise ProtocolError(ErrorCode.BAD_FRAME, "server frame is not an object with an 'op'")
    return obj


def message_from_wire(obj: dict[str, Any]) -> Message:
    """A :class:`Message` from a ``msg`` frame or a sync page entry."""
    try:
        to = obj.get("to")
        uids = obj.get("uids")
        return Message(
            gid=obj["gid"], seq=obj["seq"], sender=obj["from"], cts=obj["cts"], sts=obj["sts"], body=obj["body"],
            to=tuple(to) if to is not None else None, kind=obj.get("kind", Kind.MSG), ref=obj.get("ref", 0),
            uids=tuple(uids) if uids is not None else None, count=obj.get("count", 0),
        )
    except (KeyError, TypeError) as exc:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"not a message: missing or bad {exc}") from None
