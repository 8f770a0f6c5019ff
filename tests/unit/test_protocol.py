"""Unit tests of reference_server/protocol.py: decoding, validation, error codes, encoders, tokens. No sockets."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference_server import protocol
from reference_server.protocol import (
    MAX_ID,
    Delete,
    ErrorCode,
    GroupState,
    Message,
    Op,
    Ping,
    ProtocolError,
    Read,
    Send,
    Sync,
    Unread,
    decode_request,
)

CLIENT_OPS = {Op.SEND, Op.SYNC, Op.READ, Op.UNREAD, Op.DELETE, Op.RECALL, Op.PING}
SERVER_OPS = set(Op) - CLIENT_OPS


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def decode_error(data: bytes | str, **kwargs: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_request(data, **kwargs)
    return info.value


# --------------------------------------------------------------------------------------------------
# Round trips through the client encoders


ROUND_TRIPS: list[tuple[bytes, protocol.Request]] = [
    (protocol.encode_send(7, 1, "hello", 1_700_000_000_000_000), Send(7, 1, "hello", 1_700_000_000_000_000)),
    (protocol.encode_send(8, 2, "psst", 5, to=[3, 4]), Send(8, 2, "psst", 5, (3, 4))),
    (protocol.encode_send(None, 2, "", 0), Send(None, 2, "", 0)),
    (protocol.encode_send(0, 2, "万人群聊 🎉", 1, to=[5]), Send(0, 2, "万人群聊 🎉", 1, (5,))),
    (protocol.encode_sync(3, 2, 10, 50), Sync(3, 2, 10, 50)),
    (protocol.encode_sync(4, 2, 0), Sync(4, 2, 0, 100)),
    (protocol.encode_read(5, 9, 42), Read(5, 9, 42)),
    (protocol.encode_unread(6), Unread(6, None)),
    (protocol.encode_unread(6, [1, 2, 3]), Unread(6, (1, 2, 3))),
    (protocol.encode_unread(6, []), Unread(6, ())),
    (protocol.encode_delete(7, 9, 41), Delete(7, 9, 41)),
    (protocol.encode_recall(8, 9, 40), protocol.Recall(8, 9, 40)),
    (protocol.encode_ping(9), Ping(9)),
    (protocol.encode_ping(None), Ping(None)),
    (protocol.encode_read(MAX_ID, MAX_ID, MAX_ID), Read(MAX_ID, MAX_ID, MAX_ID)),
]


@pytest.mark.parametrize(("data", "expected"), ROUND_TRIPS)
def test_encoded_request_decodes_to_same_request(data: bytes, expected: protocol.Request) -> None:
    assert decode_request(data) == expected
    # a text frame (str) decodes the same as its bytes
    assert decode_request(data.decode()) == expected


def test_round_trips_cover_every_client_op() -> None:
    ops = {orjson.loads(data)["op"] for data, _ in ROUND_TRIPS}
    assert ops == {str(op) for op in CLIENT_OPS}


def test_encoders_omit_rid_when_none_and_optional_fields_when_unset() -> None:
    assert orjson.loads(protocol.encode_ping(None)) == {"op": "ping"}
    assert "to" not in orjson.loads(protocol.encode_send(1, 1, "x", 1))
    assert "gids" not in orjson.loads(protocol.encode_unread(1))


def test_optional_fields_take_documented_defaults() -> None:
    assert decode_request(b'{"op":"send","gid":1,"body":"x"}') == Send(None, 1, "x", 0, None)
    assert decode_request(b'{"op":"sync","gid":1}') == Sync(None, 1, 0, 100)
    assert decode_request(b'{"op":"unread","gids":null}') == Unread(None, None)
    assert decode_request(b'{"op":"send","gid":1,"body":"x","to":null}') == Send(None, 1, "x", 0, None)


def test_unknown_fields_are_ignored() -> None:
    assert decode_request(b'{"op":"ping","rid":1,"extra":{"a":[1,2]}}') == Ping(1)


def test_decoded_requests_are_frozen() -> None:
    req = decode_request(protocol.encode_read(1, 2, 3))
    assert isinstance(req, Read)
    with pytest.raises(AttributeError):
        req.gid = 5  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------
# Error paths: the documented code, and the rid when it could be read


@pytest.mark.parametrize("data", [b"", b"{", b"not json", b"{'op': 'ping'}", b"NaN", b"\xff\xfe", b'{"op":"ping"} x'])
def test_bad_json(data: bytes) -> None:
    err = decode_error(data)
    assert err.code is ErrorCode.BAD_JSON
    assert err.rid is None


def test_lone_surrogate_escape_is_bad_json() -> None:
    assert decode_error(b'{"op":"send","gid":1,"body":"\\ud800","rid":3}').code is ErrorCode.BAD_JSON


@pytest.mark.parametrize("data", [b"[]", b'[{"op":"ping"}]', b"1", b'"ping"', b"null", b"true"])
def test_non_object_is_bad_frame(data: bytes) -> None:
    err = decode_error(data)
    assert err.code is ErrorCode.BAD_FRAME
    assert err.rid is None


@pytest.mark.parametrize("obj", [{"rid": 4}, {"rid": 4, "op": None}, {"rid": 4, "op": 1}, {"rid": 4, "op": ["ping"]}])
def test_missing_or_non_string_op_is_bad_frame_with_rid(obj: dict[str, Any]) -> None:
    err = decode_error(dumps(obj))
    assert err.code is ErrorCode.BAD_FRAME
    assert err.rid == 4


@pytest.mark.parametrize("op", ["fly", "", "SEND", "Ping", " ping", *sorted(str(op) for op in SERVER_OPS)])
def test_unknown_op_keeps_rid(op: str) -> None:
    err = decode_error(dumps({"op": op, "rid": 11}))
    assert err.code is ErrorCode.UNKNOWN_OP
    assert err.rid == 11


VALID: dict[str, dict[str, Any]] = {
    "send": {"op": "send", "gid": 1, "body": "hi", "cts": 5, "to": [2]},
    "sync": {"op": "sync", "gid": 1, "after": 0, "limit": 10},
    "read": {"op": "read", "gid": 1, "seq": 1},
    "unread": {"op": "unread", "gids": [1, 2]},
    "delete": {"op": "delete", "gid": 1, "seq": 1},
}

# (op, field) pairs whose value must be a non-negative integer id/seq/timestamp.
INT_FIELDS = [
    ("send", "gid"),
    ("send", "cts"),
    ("sync", "gid"),
    ("sync", "after"),
    ("read", "gid"),
    ("read", "seq"),
    ("delete", "gid"),
    ("delete", "seq"),
]
LIST_FIELDS = [("send", "to"), ("unread", "gids")]
BAD_INTS: list[Any] = [True, False, -1, 2**63, 2**64, 10**30, 1.0, 1.5, "1", [1], {"v": 1}]


def test_valid_templates_decode() -> None:
    for obj in VALID.values():
        decode_request(dumps({**obj, "rid": 1}))


@pytest.mark.parametrize(("op", "field"), INT_FIELDS)
@pytest.mark.parametrize("value", BAD_INTS, ids=repr)
def test_bad_int_field_is_bad_field_with_rid(op: str, field: str, value: Any) -> None:
    if type(value) is int and value >= 2**64:
        data = dumps({**VALID[op], "rid": 12}).replace(b'"rid"', f'"{field}":{value},"rid"'.encode())
    else:
        data = dumps({**VALID[op], field: value, "rid": 12})
    err = decode_error(data)
    assert err.code is ErrorCode.BAD_FIELD
    assert err.rid == 12
    assert field in err.message


@pytest.mark.parametrize(
    ("op", "field"),
    [("send", "gid"), ("sync", "gid"), ("read", "gid"), ("read", "seq"), ("delete", "gid"), ("delete", "seq")],
)
def test_missing_required_field_is_bad_field_with_rid(op: str, field: str) -> None:
    obj = {k: v for k, v in VALID[op].items() if k != field}
    err = decode_error(dumps({**obj, "rid": 13}))
    assert err.code is ErrorCode.BAD_FIELD
    assert err.rid == 13
    assert field in err.message


@pytest.mark.parametrize(("op", "field"), INT_FIELDS)
def test_int_fields_accept_the_full_range(op: str, field: str) -> None:
    for value in (0, MAX_ID):
        req = decode_request(dumps({**VALID[op], field: value}))
        assert getattr(req, field) == value


@pytest.mark.parametrize(("op", "field"), LIST_FIELDS)
@pytest.mark.parametrize("value", [1, "1,2", {"a": 1}, [True], [-1], [2**63], [1.0], ["1"], [None], [[1]]], ids=repr)
def test_bad_id_list_is_bad_field_with_rid(op: str, field: str, value: Any) -> None:
    err = decode_error(dumps({**VALID[op], field: value, "rid": 14}))
    assert err.code is ErrorCode.BAD_FIELD
    assert err.rid == 14


@pytest.mark.parametrize("body", [None, 5, True, ["x"], {"t": "x"}])
def test_bad_or_missing_body_is_bad_field_with_rid(body: Any) -> None:
    obj = {"op": "send", "gid": 1, "rid": 15}
    if body is not None:
        obj["body"] = body
    err = decode_error(dumps(obj))
    assert err.code is ErrorCode.BAD_FIELD
    assert err.rid == 15


@pytest.mark.parametrize("rid", [True, False, -1, 2**63, 1.0, "1", [1]], ids=repr)
def test_bad_rid_is_bad_field_without_rid(rid: Any) -> None:
    err = decode_error(dumps({"op": "ping", "rid": rid}))
    assert err.code is ErrorCode.BAD_FIELD
    assert err.rid is None


def test_rid_range() -> None:
    assert decode_request(dumps({"op": "ping", "rid": 0})) == Ping(0)
    assert decode_request(dumps({"op": "ping", "rid": MAX_ID})) == Ping(MAX_ID)


def test_body_too_long() -> None:
    limit = protocol.DEFAULT_MAX_BODY_CHARS
    assert decode_request(protocol.encode_send(1, 1, "x" * limit, 1)).body == "x" * limit  # type: ignore[union-attr]
    err = decode_error(protocol.encode_send(16, 1, "x" * (limit + 1), 1))
    assert err.code is ErrorCode.BODY_TOO_LONG
    assert err.rid == 16


def test_body_limit_counts_characters_not_bytes() -> None:
    body = "群" * protocol.DEFAULT_MAX_BODY_CHARS  # 3 bytes each in UTF-8
    assert decode_request(protocol.encode_send(1, 1, body, 1)) == Send(1, 1, body, 1)


def test_body_limit_is_the_servers() -> None:
    assert decode_request(protocol.encode_send(1, 1, "x" * 10, 1), max_body_chars=10).body == "x" * 10  # type: ignore[union-attr]
    err = decode_error(protocol.encode_send(17, 1, "x" * 11, 1), max_body_chars=10)
    assert err.code is ErrorCode.BODY_TOO_LONG
    assert err.rid == 17


@pytest.mark.parametrize("limit", [0, -1, protocol.MAX_SYNC_LIMIT + 1, 10**6])
def test_sync_limit_out_of_range(limit: int) -> None:
    err = decode_error(protocol.encode_sync(18, 1, 0, limit))
    assert err.code is ErrorCode.BAD_FIELD
    assert err.rid == 18
    assert "limit" in err.message


@pytest.mark.parametrize("limit", [1, protocol.MAX_SYNC_LIMIT])
def test_sync_limit_bounds_accepted(limit: int) -> None:
    assert decode_request(protocol.encode_sync(1, 1, 0, limit)) == Sync(1, 1, 0, limit)


def test_protocol_error_carries_code_message_rid() -> None:
    err = ProtocolError(ErrorCode.NOT_MEMBER, "nope", 3)
    assert (err.code, err.message, err.rid) == (ErrorCode.NOT_MEMBER, "nope", 3)
    assert "not_member" in str(err)


# --------------------------------------------------------------------------------------------------
# Tokens


SECRET = protocol.DEV_SECRET


def test_token_is_hex_hmac_sha256_of_decimal_uid() -> None:
    expected = hmac.new(SECRET.encode(), b"42", hashlib.sha256).hexdigest()
    assert protocol.user_token(SECRET, 42) == expected
    assert protocol.user_token(SECRET.encode(), 42) == expected


def test_verify_accepts_the_right_token() -> None:
    assert protocol.verify_token(SECRET, 42, protocol.user_token(SECRET, 42))
    assert protocol.verify_token(SECRET.encode(), 42, protocol.user_token(SECRET, 42))


def test_verify_rejects_other_uid_token() -> None:
    assert not protocol.verify_token(SECRET, 42, protocol.user_token(SECRET, 43))
    assert not protocol.verify_token(SECRET, 43, protocol.user_token(SECRET, 42))


def test_verify_rejects_other_secret_token() -> None:
    assert not protocol.verify_token(SECRET, 42, protocol.user_token("another-secret", 42))


@pytest.mark.parametrize(
    "forge",
    [
        lambda t: "",
        lambda t: t[:-1],
        lambda t: t + "0",
        lambda t: t[:-1] + ("0" if t[-1] != "0" else "1"),
        lambda t: t.upper() if t != t.upper() else t[:-1] + "g",
        lambda t: "0" * len(t),
    ],
)
def test_verify_rejects_forged_tokens(forge: Any) -> None:
    token = protocol.user_token(SECRET, 42)
    forged = forge(token)
    assert forged != token
    assert not protocol.verify_token(SECRET, 42, forged)


def test_verify_rejects_non_ascii_token() -> None:
    # the token comes from the handshake query string: a non-ASCII one must be refused, not crash
    assert not protocol.verify_token(SECRET, 42, "é" * 64)


def test_null_optional_fields_mean_absent() -> None:
    req = protocol.decode_request(b'{"op":"send","gid":1,"body":"x","cts":null,"to":null}')
    assert req == Send(None, 1, "x", 0, None)


def test_empty_recipient_list_is_refused() -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.decode_request(b'{"op":"send","rid":3,"gid":1,"body":"x","to":[]}')
    assert info.value.code is ErrorCode.BAD_FIELD and info.value.rid == 3


def test_message_from_wire_rejects_non_messages() -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.message_from_wire({"op": "msg", "gid": 1})
    assert info.value.code is ErrorCode.BAD_FRAME


def test_ws_query() -> None:
    assert protocol.ws_query(42, "abc") == "/ws?uid=42&token=abc"


# --------------------------------------------------------------------------------------------------
# Server → client frames


def test_push_round_trip() -> None:
    msg = Message(gid=1, seq=2, sender=3, cts=4, sts=5, body="hi 群")
    frame = protocol.decode_server_frame(protocol.encode_push(msg))
    assert frame == {"op": "msg", "gid": 1, "seq": 2, "from": 3, "cts": 4, "sts": 5, "body": "hi 群"}
    assert protocol.message_from_wire(frame) == msg


def test_long_push_round_trip() -> None:
    msg = Message(
        gid=MAX_ID, seq=MAX_ID, sender=MAX_ID, cts=MAX_ID, sts=MAX_ID, body="群" * protocol.DEFAULT_MAX_BODY_CHARS
    )
    assert protocol.message_from_wire(protocol.decode_server_frame(protocol.encode_push(msg))) == msg


def test_private_push_round_trip() -> None:
    msg = Message(gid=1, seq=2, sender=3, cts=4, sts=5, body="psst", to=(7, 8))
    frame = protocol.decode_server_frame(protocol.encode_push(msg))
    assert frame["to"] == [7, 8]
    assert protocol.message_from_wire(frame) == msg


def test_visible_to() -> None:
    public = Message(1, 1, 3, 0, 0, "x")
    private = Message(1, 1, 3, 0, 0, "x", to=(7,))
    assert public.visible_to(99)
    assert private.visible_to(7) and private.visible_to(3)
    assert not private.visible_to(99)


def test_encode_error_carries_code_msg_and_rid() -> None:
    frame = protocol.decode_server_frame(protocol.encode_error(ErrorCode.NOT_MEMBER, "not yours", 21))
    assert frame == {"op": "error", "code": "not_member", "msg": "not yours", "rid": 21}
    frame = protocol.decode_server_frame(protocol.encode_error(ErrorCode.BAD_JSON, "bad"))
    assert frame == {"op": "error", "code": "bad_json", "msg": "bad"}


def test_protocol_error_to_error_frame_round_trip() -> None:
    err = decode_error(dumps({"op": "read", "gid": -1, "seq": 1, "rid": 22}))
    frame = protocol.decode_server_frame(protocol.encode_error(err.code, err.message, err.rid))
    assert (frame["code"], frame["rid"]) == ("bad_field", 22)


def test_replies_echo_rid() -> None:
    state = GroupState(gid=1, max_seq=10, read_seq=4, unread=6)
    msg = Message(1, 5, 3, 4, 5, "x")
    replies = {
        "ack": protocol.encode_ack(30, 1, 5, 99),
        "sync": protocol.encode_sync_page(31, 1, [msg], 5, True, 10),
        "read": protocol.encode_read_reply(32, state),
        "unread": protocol.encode_unread_reply(33, [state]),
        "delete": protocol.encode_delete_reply(34, 1, 5),
        "pong": protocol.encode_pong(35),
    }
    for i, (op, data) in enumerate(replies.items()):
        frame = protocol.decode_server_frame(data)
        assert frame["op"] == op
        assert frame["rid"] == 30 + i
    assert orjson.loads(replies["ack"]) == {"op": "ack", "gid": 1, "seq": 5, "sts": 99, "rid": 30}
    page = orjson.loads(replies["sync"])
    assert (page["next"], page["more"], page["max"]) == (5, True, 10)
    assert [protocol.message_from_wire(m) for m in page["msgs"]] == [msg]
    assert orjson.loads(replies["read"]) == {"op": "read", "gid": 1, "max": 10, "read": 4, "unread": 6, "rid": 32}
    assert "rid" not in orjson.loads(protocol.encode_ack(None, 1, 5, 99))


def test_hello() -> None:
    frame = protocol.decode_server_frame(
        protocol.encode_hello(
            7,
            [GroupState(1, 10, 4, 6)],
            max_body_chars=100,
            max_frame_bytes=1000,
            idle_timeout_s=75.0,
            send_rate=50.0,
            send_burst=100,
        )
    )
    assert frame["op"] == "hello"
    assert frame["v"] == protocol.PROTOCOL_VERSION
    assert frame["uid"] == 7
    assert frame["limits"] == {"max_body_chars": 100, "max_frame_bytes": 1000, "idle_timeout_s": 75.0,
                               "send_rate": 50.0, "send_burst": 100}
    assert frame["groups"] == [{"gid": 1, "max": 10, "read": 4, "unread": 6}]
    assert abs(frame["sts"] - protocol.now_us()) < 60_000_000


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"{", ErrorCode.BAD_JSON),
        (b"[]", ErrorCode.BAD_FRAME),
        (b'{"rid":1}', ErrorCode.BAD_FRAME),
        (b'{"op":5}', ErrorCode.BAD_FRAME),
    ],
)
def test_decode_server_frame_errors(data: bytes, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.decode_server_frame(data)
    assert info.value.code is code


# --------------------------------------------------------------------------------------------------
# Properties


ids = st.integers(min_value=0, max_value=MAX_ID)
rids = st.none() | ids
bodies = st.text(max_size=protocol.DEFAULT_MAX_BODY_CHARS)
requests = st.one_of(
    st.builds(Send, rids, ids, bodies, ids, st.none() | st.lists(ids, min_size=1, max_size=20).map(tuple)),
    st.builds(Sync, rids, ids, ids, st.integers(min_value=1, max_value=protocol.MAX_SYNC_LIMIT)),
    st.builds(Read, rids, ids, ids),
    st.builds(Delete, rids, ids, ids),
    st.builds(Unread, rids, st.none() | st.lists(ids, max_size=20).map(tuple)),
    st.builds(Ping, rids),
)


def encode(req: protocol.Request) -> bytes:
    match req:
        case Send():
            return protocol.encode_send(
                req.rid, req.gid, req.body, req.cts, list(req.to) if req.to is not None else None
            )
        case Sync():
            return protocol.encode_sync(req.rid, req.gid, req.after, req.limit)
        case Read():
            return protocol.encode_read(req.rid, req.gid, req.seq)
        case Delete():
            return protocol.encode_delete(req.rid, req.gid, req.seq)
        case Unread():
            return protocol.encode_unread(req.rid, list(req.gids) if req.gids is not None else None)
        case Ping():
            return protocol.encode_ping(req.rid)
    raise AssertionError(req)


@given(requests)
def test_property_encode_decode_round_trip(req: protocol.Request) -> None:
    assert decode_request(encode(req)) == req


@given(st.builds(Message, ids, ids, ids, ids, ids, bodies, st.none() | st.lists(ids, max_size=20).map(tuple)))
def test_property_push_round_trip(msg: Message) -> None:
    assert protocol.message_from_wire(protocol.decode_server_frame(protocol.encode_push(msg))) == msg


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=10,
)
fields = st.sampled_from(["op", "rid", "gid", "body", "cts", "to", "after", "limit", "seq", "gids"])
frames = st.dictionaries(fields, json_values | st.sampled_from([str(op) for op in Op]), max_size=8)


@given(frames)
def test_property_any_json_object_decodes_or_raises_protocol_error(obj: dict[str, Any]) -> None:
    try:
        req = decode_request(dumps(obj))
    except ProtocolError as err:
        assert isinstance(err.code, ErrorCode)
        rid = obj.get("rid")
        if type(rid) is int and 0 <= rid <= MAX_ID:
            assert err.rid == rid  # the rid was readable, so it is kept
    else:
        assert str(obj["op"]) in {str(op) for op in CLIENT_OPS}
        assert req.rid == obj.get("rid")


@given(st.binary(max_size=64))
def test_property_any_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    try:
        decode_request(data)
    except ProtocolError as err:
        assert isinstance(err.code, ErrorCode)
