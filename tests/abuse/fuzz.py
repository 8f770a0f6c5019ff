"""Generated malformed input against a running server, checked against the documented rules (docs/protocol.md).

Four kinds of input, each generated with hypothesis (``run_examples``: generation only, no shrinking, nothing
saved), each counted as one input:

* ``requests``: JSON frames — requests of every op with fields left out, of the wrong type, out of range,
  unknown ops, unknown fields, bad rids — and raw text that is not JSON, pipelined a batch to a write. The oracle
  is the protocol's definition (``protocol.decode_request``) and §6: a frame it refuses gets exactly that error
  (with its rid if readable, none otherwise) and nothing else; a frame it accepts gets its op's reply or one of
  the op-level errors, with its rid; every frame exactly one reply.
* ``frames``: WebSocket frames with any opcode, FIN, RSV bits, mask, payload and length: each gets what §7 says
  (1002 for RSV bits, reserved opcodes, unmasked or bad control frames; 1009 past the size limit; bad_frame for
  binary and fragmented frames; pong for ping; the close echoed), and the connection stays usable otherwise.
* ``upgrades``: upgrade requests with mutated paths, ids, tokens and headers: a status of §2, never a 5xx or
  no answer, and exactly the documented one where the request is well formed.
* ``admin``: admin requests with mutated paths, ids and bodies: a documented status (§12), never a 5xx.

Any answer that breaks a rule is kept (the first ones) in the report; the caller also checks that the server
process is alive and logged nothing at ERROR.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote

import orjson
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from harness.procs import ADMIN_TOKEN, SECRET
from reference_server import protocol
from reference_server.protocol import ErrorCode, ProtocolError, user_token
from tests.abuse.tools import RawWS, client_frame, http_status, upgrade_request, ws_target

T = TypeVar("T")

SUCCESS = {"send": "ack", "sync": "sync", "read": "read", "unread": "unread", "delete": "delete", "recall": "recall",
           "ping": "pong"}
#: errors a request the decoder accepts may still get (membership, state, the unread cap, budgets, storage)
OP_LEVEL = {ErrorCode.NOT_MEMBER, ErrorCode.NO_SUCH_MESSAGE, ErrorCode.RECALL_REFUSED, ErrorCode.RATE_LIMITED,
            ErrorCode.UNAVAILABLE, ErrorCode.BAD_FIELD}
CODES = {str(c) for c in ErrorCode}
KINDS = ("requests", "frames", "upgrades", "admin")
UPGRADE_STATUSES = {101, 400, 401, 403, 404, 429, 503}
ADMIN_STATUSES = {200, 400, 401, 404, 405, 409, 413}


@dataclass
class Report:
    inputs: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    broken: list[str] = field(default_factory=list)  # answers that break a documented rule (the first 50)
    broken_count: int = 0
    accepted_invalid: int = 0  # frames the protocol refuses that got a success reply
    outcomes: dict[str, int] = field(default_factory=dict)

    def bad(self, what: str) -> None:
        self.broken_count += 1
        if len(self.broken) < 50:
            self.broken.append(what[:400])

    def saw(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.inputs.values())


def run_examples(strategy: st.SearchStrategy[T], n: int, fn: Callable[[T], None]) -> None:
    """Call ``fn`` on ``n`` generated examples (generation only: no shrinking, no example database)."""

    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def each(example: T) -> None:
        fn(example)

    each()


# -- strategies

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**64), max_value=2**64)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=5), max_leaves=12)
FIELDS = ["gid", "body", "cts", "to", "after", "limit", "seq", "gids"]


@st.composite
def request_objects(draw: st.DrawFn, gid: int, rids: itertools.count[int]) -> Any:
    """A request, mostly well formed with one or more fields broken; sometimes no object at all."""
    kind = draw(st.integers(0, 19))
    if kind == 0:
        return draw(json_values)  # any JSON value, mostly not an object
    obj: dict[str, Any] = {}
    op = draw(st.sampled_from(list(SUCCESS)) if kind > 2 else st.text(max_size=8) | json_values)
    if draw(st.integers(0, 15)):
        obj["op"] = op
    valid: dict[str, Any] = {
        "gid": draw(st.sampled_from([gid, gid, gid + 1, 0, protocol.MAX_ID])),
        "body": draw(st.text(max_size=64) | st.just("x" * (protocol.DEFAULT_MAX_BODY_CHARS + 1))),
        "cts": draw(st.integers(0, 2**53)), "to": draw(st.lists(st.integers(1, 12), min_size=1, max_size=3)),
        "after": draw(st.integers(0, 40)), "limit": draw(st.integers(1, 1000)), "seq": draw(st.integers(0, 40)),
        "gids": draw(st.lists(st.sampled_from([gid, gid + 1]), max_size=3)),
    }
    for name in FIELDS:
        choice = draw(st.integers(0, 9))
        if choice <= 5:
            obj[name] = valid[name]
        elif choice <= 8:
            obj[name] = draw(json_values)
    for _ in range(draw(st.integers(0, 2))):
        obj[draw(st.text(max_size=6))] = draw(json_values)
    rid_choice = draw(st.integers(0, 9))
    if rid_choice <= 6:
        obj["rid"] = next(rids)
    elif rid_choice <= 8:
        obj["rid"] = draw(json_values)
    return obj


@st.composite
def request_frames(draw: st.DrawFn, gid: int, rids: itertools.count[int]) -> bytes:
    if draw(st.integers(0, 9)) == 0:  # not JSON: truncated, invalid UTF-8, garbage, nesting past the parser
        return draw(st.binary(max_size=64) | st.sampled_from(
            [b"", b"{", b'{"op":"ping"', b"\xff\xfe", b'"\\ud800"', b"[" * 2000 + b"]" * 2000, b"null",
             b'{"op":"ping","rid":1}{}', b'{"op":"send","body":"\xc3"}']))
    try:
        return orjson.dumps(draw(request_objects(gid, rids)))
    except TypeError:  # a value orjson cannot write (an int past 64 bits): as text
        return b'{"op":"ping","rid":' + str(2**70).encode() + b"}"


class RandomRequests:
    """The same kinds of broken request as ``request_frames``, drawn with ``random`` (microseconds a frame instead
    of hypothesis' milliseconds): the long suite's bulk."""

    OPS: ClassVar[list[str]] = [*SUCCESS, "", "hello", "ack", "SEND", "send ", "msg", "error"]
    RAW: ClassVar[list[bytes]] = [
        b"", b"{", b'{"op":"ping"', b"\xff\xfe", b'"\\ud800"', b"[" * 2000 + b"]" * 2000, b"null", b"[]",
        b'{"op":"ping","rid":1}{}', b'{"op":"send","body":"\xc3"}', b"1e999", b'{"op":"ping","rid":-0}']

    def __init__(self, seed: int, gid: int, rids: itertools.count[int]) -> None:
        self.r = random.Random(seed)
        self.gid, self.rids = gid, rids

    def value(self, depth: int = 0) -> Any:
        r = self.r
        k = r.randrange(12 if depth < 2 else 9)
        if k == 0:
            return None
        if k == 1:
            return r.random() < 0.5
        if k == 2:
            return r.choice([0, -1, 1, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), 2**64 - 1])
        if k == 3:
            return r.randrange(-1000, 100_000)
        if k == 4:
            return r.choice([0.5, -0.0, 1e308, 7.0, 1e-9])
        if k <= 6:
            return "".join(chr(r.randrange(1, 0x2FF)) for _ in range(r.randrange(8)))
        if k == 7:
            return r.choice(["", "x" * 5000, "\ud7ff", "é" * 4097, "\x00"])
        if k == 8:
            return str(r.randrange(10**6))
        if k <= 10:
            return [self.value(depth + 1) for _ in range(r.randrange(5))]
        keys = [*FIELDS, "op", "rid", "x", "é", ""]
        return {r.choice(keys): self.value(depth + 1) for _ in range(r.randrange(4))}

    def valid(self, name: str) -> Any:
        r, gid = self.r, self.gid
        return {
            "gid": r.choice([gid, gid, gid, gid + 1, 0]), "body": r.choice(["hi", "", "x" * 4097, "é" * 100]),
            "cts": r.randrange(2**53), "to": [r.randrange(1, 12) for _ in range(r.randrange(1, 4))],
            "after": r.randrange(50), "limit": r.randrange(1, 1001), "seq": r.randrange(50),
            "gids": [r.choice([gid, gid + 1]) for _ in range(r.randrange(4))],
        }[name]

    def frame(self) -> bytes:
        r = self.r
        if r.random() < 0.08:
            return r.choice(self.RAW) if r.random() < 0.7 else bytes(r.randrange(256) for _ in range(r.randrange(40)))
        if r.random() < 0.04:
            obj: Any = self.value()
        else:
            obj = {}
            if r.random() < 0.95:
                obj["op"] = r.choice(self.OPS) if r.random() < 0.9 else self.value()
            for name in FIELDS:
                k = r.randrange(10)
                if k <= 5:
                    obj[name] = self.valid(name)
                elif k <= 8:
                    obj[name] = self.value()
            k = r.randrange(10)
            if k <= 6:
                obj["rid"] = next(self.rids)
            elif k <= 8:
                obj["rid"] = self.value()
        try:
            return orjson.dumps(obj)
        except TypeError:
            return b'{"op":"ping","rid":' + str(2**70).encode() + b"}"


# -- requests


class RequestFuzzer:
    """Pipelined JSON frames on one connection per user (several users: each has its own request budget)."""

    def __init__(self, port: int, users: list[int], gid: int, report: Report) -> None:
        self.port, self.users, self.gid, self.report = port, users, gid, report
        self.rids = itertools.count(10**15)  # barriers: apart from the generated frames' rids
        self.turn = itertools.cycle(users)
        self.conns: dict[int, RawWS] = {}

    def conn(self, uid: int) -> RawWS:
        ws = self.conns.get(uid)
        if ws is None:
            for _ in range(50):
                ws = RawWS(self.port, ws_target(uid), timeout=30)
                if ws.status == 101:
                    break
                ws.close()
                time.sleep(0.2)  # 429: the user's budget refills
            assert ws is not None and ws.status == 101, ws.head if ws is not None else None
            ws.recv_json()  # hello
            self.conns[uid] = ws
        return ws

    def batch(self, frames: list[bytes]) -> None:
        uid = next(self.turn)
        ws = self.conn(uid)
        barrier = next(self.rids)
        wire = b"".join(client_frame(f) for f in frames)
        wire += client_frame(orjson.dumps({"op": "read", "gid": self.gid, "seq": 0, "rid": barrier}))
        ws.send(wire)
        replies: list[dict[str, Any]] = []
        while True:  # the barrier is a storage-stage request: every earlier reply is in once it answers
            got = ws.recv_json()
            if got is None:
                self.report.bad(f"connection ended before the barrier: {frames[:3]!r}")
                self.conns.pop(uid).close()
                return
            if got.get("op") in ("msg", "offline"):
                continue
            if got.get("rid") == barrier and got.get("op") == "read":
                break
            replies.append(got)
        self.report.inputs["requests"] += len(frames)
        self.check(frames, replies)

    def check(self, frames: list[bytes], replies: list[dict[str, Any]]) -> None:
        """Each frame's expected answer (from the protocol's decoder) against the replies, matched by rid (a rid
        several frames share — generated ones may — is matched as a multiset)."""
        report = self.report
        by_rid: dict[object, list[dict[str, Any]]] = {}
        for r in replies:
            if type(r.get("op")) is not str:
                report.bad(f"a reply without op: {r}")
            elif r["op"] == "error" and r.get("code") not in CODES:
                report.bad(f"unknown error code {r}")
            by_rid.setdefault(r.get("rid"), []).append(r)
        wants: dict[object, list[tuple[bytes, str, str]]] = {}  # rid -> (frame, what it is, the decoder's code)
        for frame in frames:
            try:
                req = protocol.decode_request(frame)
            except ProtocolError as exc:
                wants.setdefault(exc.rid, []).append((frame, "refused", str(exc.code)))
                report.saw(str(exc.code))
                continue
            wants.setdefault(req.rid, []).append((frame, "valid", type(req).__name__.lower()))
        for rid in set(wants) | set(by_rid):
            want, got = wants.get(rid, []), list(by_rid.get(rid, []))
            if len(want) != len(got):
                report.bad(f"rid {rid}: {len(want)} frames, {len(got)} replies: {want[:2]} / {got[:3]}")
                continue
            # exact refusals first, then valid requests that got their reply, then those refused at the op level
            unmatched: list[tuple[bytes, str]] = []
            for frame, what, detail in sorted(want, key=lambda w: w[1] == "valid"):
                if what == "refused":
                    match = next((g for g in got if g.get("op") == "error" and g.get("code") == detail), None)
                    if match is None:
                        report.bad(f"{frame[:200]!r}: expected {detail} (rid {rid}), got {got}")
                        if any(g.get("op") != "error" for g in got):
                            report.accepted_invalid += 1
                        continue
                else:
                    match = next((g for g in got if g.get("op") == SUCCESS[detail]), None)
                    if match is None:
                        unmatched.append((frame, detail))
                        continue
                    report.saw(f"{detail}:ok")
                got.remove(match)
            for frame, detail in unmatched:
                match = next((g for g in got if g.get("op") == "error" and g.get("code") in OP_LEVEL), None)
                if match is None:
                    report.bad(f"{frame[:200]!r}: a valid {detail} (rid {rid}) got none of its replies: {got}")
                    continue
                report.saw(f"{detail}:{match.get('code')}")
                got.remove(match)

    def close(self) -> None:
        for ws in self.conns.values():
            ws.close()


# -- WebSocket frames


@dataclass(frozen=True)
class FrameCase:
    opcode: int
    fin: bool
    rsv: int
    masked: bool
    payload: bytes


frame_cases = st.builds(
    FrameCase,
    st.sampled_from([0, 1, 1, 1, 2, 3, 7, 8, 9, 9, 10, 11, 15]),
    st.booleans() | st.just(True),
    st.sampled_from([0, 0, 0, 0, 1, 2, 4, 7]),
    st.booleans() | st.just(True) | st.just(True),
    st.binary(max_size=200) | st.just(b"x" * 2000) | st.builds(lambda n: os.urandom(n), st.integers(126, 600))
    | st.just(b"y" * 70_000) | st.builds(lambda n: n.to_bytes(2, "big"), st.integers(0, 65535))
    | st.builds(lambda n, r: n.to_bytes(2, "big") + r, st.sampled_from([1000, 1001, 1006, 3000, 4999, 5000]),
                st.binary(max_size=8)),
)


_LIBRARY_CLOSE_CODES = {0, 1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}


def expected_frame_outcome(c: FrameCase, max_frame: int) -> str:
    """What §7 and §1 say a frame gets: 'close <code>', 'close echo', 'pong', 'bad_frame', 'json' (handled as a
    request), 'none'. The WebSocket library's checks come first (opcode, control frames, mask, size, a close
    frame's code and reason), then the server's (reserved bits, the close code it may echo)."""
    control = c.opcode >= 8
    if c.opcode not in (0, 1, 2, 8, 9, 10) or not c.masked or (control and (not c.fin or len(c.payload) > 125)):
        return "close 1002"
    if not control and len(c.payload) > max_frame:
        return "close 1009"
    if c.opcode == 8 and c.payload:
        code = int.from_bytes(c.payload[:2], "big") if len(c.payload) >= 2 else 0
        if len(c.payload) == 1 or (code < 3000 and code not in _LIBRARY_CLOSE_CODES):
            return "close 1002"
        try:
            c.payload[2:].decode()
        except UnicodeDecodeError:
            return "close 1007"
    if c.rsv:
        return "close 1002"
    if c.opcode == 8:
        code = int.from_bytes(c.payload[:2], "big") if c.payload else 1000
        sendable = 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999
        return "close echo" if sendable else "close 1002"
    if c.opcode == 9:
        return "pong"
    if c.opcode == 10:
        return "none"
    if c.opcode == 1 and c.fin:
        return "json"
    return "bad_frame"


class FrameFuzzer:
    def __init__(self, port: int, uid: int, max_frame: int, report: Report) -> None:
        self.port, self.uid, self.max_frame, self.report = port, uid, max_frame, report
        self.ws: RawWS | None = None
        self.rids = itertools.count(10**12)

    def conn(self) -> RawWS:
        if self.ws is None:
            for _ in range(50):
                ws = RawWS(self.port, ws_target(self.uid), timeout=10)
                if ws.status == 101:
                    break
                ws.close()
                time.sleep(0.2)
            assert ws.status == 101, ws.head
            ws.recv_json()
            self.ws = ws
        return self.ws

    def one(self, c: FrameCase) -> None:
        ws = self.conn()
        expect = expected_frame_outcome(c, self.max_frame)
        n = len(c.payload)
        first = (0x80 if c.fin else 0) | (c.rsv & 7) << 4 | c.opcode
        mask = b"\x01\x02\x03\x04"
        m = 0x80 if c.masked else 0
        if n < 126:
            head = bytes((first, m | n))
        elif n < 65536:
            head = bytes((first, m | 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((first, m | 127)) + n.to_bytes(8, "big")
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(c.payload)) if c.masked else c.payload
        probe = next(self.rids)
        data = head + (mask if c.masked else b"") + body
        if not expect.startswith("close"):  # then a ping request: the connection must still answer
            data += client_frame(orjson.dumps({"op": "ping", "rid": probe}))
        self.report.inputs["frames"] += 1
        try:
            ws.send(data)
        except OSError:
            self.report.bad(f"{c}: the connection was gone before it was sent")
            self.reset()
            return
        got: list[tuple[int, bytes]] = []
        while True:
            frame = ws.recv_frame()
            if frame is None:
                break
            got.append(frame)
            if frame[0] == 0x8:
                break
            if frame[0] == 0x1 and orjson.loads(frame[1]).get("rid") == probe:
                break
        self.report.saw(f"frame:{expect}")
        closes = [f for f in got if f[0] == 0x8]
        if expect.startswith("close"):
            code = int.from_bytes(closes[0][1][:2], "big") if closes and len(closes[0][1]) >= 2 else None
            if expect == "close echo":
                sent = int.from_bytes(c.payload[:2], "big") if len(c.payload) >= 2 else 1000
                if code != sent:
                    self.report.bad(f"{c}: a close answered {code}, not its echo {sent}")
            elif code != int(expect.split()[1]):
                self.report.bad(f"{c}: expected {expect}, got {got[-3:]}")
            if any(f[0] == 0x1 for f in got):  # nothing of this frame is handled as a request
                texts = [orjson.loads(f[1]) for f in got if f[0] == 0x1]
                if any(t.get("op") not in ("msg",) for t in texts):
                    self.report.bad(f"{c}: a reply before its close: {texts[:2]}")
            self.reset()
            return
        if closes or not got or orjson.loads(got[-1][1]).get("rid") != probe:
            self.report.bad(f"{c}: expected {expect} and the connection answering on, got {got[-3:]}")
            self.reset()
            return
        texts = [orjson.loads(f[1]) for f in got[:-1] if f[0] == 0x1]
        texts = [t for t in texts if t.get("op") not in ("msg", "offline")]
        pongs = [f for f in got if f[0] == 0xA]
        if expect == "pong" and (not pongs or pongs[0][1] != c.payload):
            self.report.bad(f"{c}: no pong with its payload: {got}")
        elif expect == "bad_frame" and [t.get("code") for t in texts] != ["bad_frame"]:
            self.report.bad(f"{c}: expected one bad_frame, got {texts}")
        elif expect == "none" and texts:
            self.report.bad(f"{c}: a pong got replies {texts}")
        elif expect == "json" and len(texts) != 1:
            self.report.bad(f"{c}: a text frame got {len(texts)} replies: {texts}")

    def reset(self) -> None:
        if self.ws is not None:
            self.ws.close()
        self.ws = None


# -- upgrades


@dataclass(frozen=True)
class Upgrade:
    path: str
    uid: str | None
    token: str | None
    version: bytes
    junk: bytes  # extra header lines (maybe malformed)


def upgrade_cases(valid_uids: list[int]) -> st.SearchStrategy[Upgrade]:
    uid_text = (st.sampled_from([str(u) for u in valid_uids]) | st.just("9" * 5000) | st.just("0" * 300 + "1")
                | st.integers(-5, 2**64).map(str) | st.text(max_size=8))
    return st.builds(
        Upgrade,
        st.sampled_from(["/ws", "/ws", "/ws", "//[::1/ws", "/ws/", "/", "/WS", "/ws%00", "/admin"])
        | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20).map(
            lambda t: "/" + t),
        st.none() | uid_text,
        st.none() | st.just("valid") | st.text(max_size=70),
        st.sampled_from([b"13", b"13", b"8", b"12", b"", b"1\xff3", b"\x00"]),
        st.sampled_from([b"", b"", b"X-A: b\r\n", b"Bad header\r\n", b"\xff: \xfe\r\n", b" folded\r\n"]),
    )


def expected_upgrade(u: Upgrade, users: set[int]) -> int | None:
    """The documented status, or None when the head is malformed (the library's 400, or its own answer)."""
    if (u.junk not in (b"", b"X-A: b\r\n") or any(ch in u.path for ch in " \r\n")
            or any(not (b == 9 or 32 <= b <= 126 or b >= 128) for b in u.version)):  # HTTP's field-value rule
        return None
    path = u.path.partition("?")[0]
    if path != "/ws":
        return 404
    if u.version not in (b"13", b"8", b"7"):
        return 400
    if u.uid is None or not u.uid or not (u.uid.isascii() and u.uid.isdigit()) or not u.token:
        return 401
    uid = protocol.parse_id(u.uid)
    if uid is None or u.token != "valid":
        return 401
    return 101 if uid in users else 403


class UpgradeFuzzer:
    def __init__(self, port: int, users: set[int], report: Report) -> None:
        self.port, self.users, self.report = port, users, report

    def one(self, u: Upgrade) -> None:
        query = []
        if u.uid is not None:
            query.append(f"uid={quote(u.uid, safe='')}")
        if u.token is not None:
            uid = protocol.parse_id(u.uid or "")
            token = user_token(SECRET, uid) if u.token == "valid" and uid is not None else u.token
            query.append(f"token={quote(token, safe='')}")
        target = u.path + ("?" + "&".join(query) if query else "")
        request = upgrade_request("127.0.0.1", target.replace(" ", "%20").replace("\r", "").replace("\n", ""),
                                  version=u.version, extra=u.junk)
        self.report.inputs["upgrades"] += 1
        try:
            status, _ = http_status(self.port, request, timeout=10)
        except OSError as exc:
            self.report.bad(f"{u}: {exc}")
            return
        self.report.saw(f"upgrade:{status}")
        want = expected_upgrade(u, self.users)
        if status not in UPGRADE_STATUSES or (want is not None and status not in (want, 429)):
            self.report.bad(f"{u}: status {status}, expected {want}")


# -- admin plane


@dataclass(frozen=True)
class AdminCase:
    method: str
    path: str
    auth: bool
    body: bytes


def admin_cases() -> st.SearchStrategy[AdminCase]:
    ids = st.integers(-3, 2**64).map(str) | st.just("9" * 5000) | st.text(max_size=6)
    paths = st.one_of(
        st.just("/admin/users"), st.just("/admin/groups"), ids.map(lambda i: f"/admin/users/{i}/token"),
        ids.map(lambda i: f"/admin/groups/{i}"), ids.map(lambda i: f"/admin/groups/{i}/members"),
        st.just("/admin/nothing"), st.just("/healthz"), st.just("/metrics"), st.just("/gateway"),
    )

    def body(value: Any) -> bytes:
        with contextlib.suppress(TypeError):
            return orjson.dumps(value)
        return b"{"

    bodies = st.one_of(
        json_values.map(body), st.binary(max_size=40),
        st.fixed_dictionaries({"ids": st.lists(st.integers(-2, 2**63), max_size=4)}).map(body),
        st.fixed_dictionaries({"first": json_scalars, "count": json_scalars, "tokens": json_scalars}).map(body),
        st.fixed_dictionaries({"groups": st.lists(st.fixed_dictionaries(
            {"gid": json_scalars, "members": st.lists(json_scalars, max_size=3)}), max_size=3)}).map(body),
        st.fixed_dictionaries({"add": st.lists(json_scalars, max_size=3), "remove": json_values}).map(body),
    )
    return st.builds(AdminCase, st.sampled_from(["GET", "POST", "POST", "PUT"]), paths, st.booleans() | st.just(True),
                     bodies)


class AdminFuzzer:
    """Provisioning in a gid range of its own, so the fuzz does not touch the groups other parts use."""

    def __init__(self, port: int, report: Report) -> None:
        self.port, self.report = port, report

    def one(self, c: AdminCase) -> None:
        head = f"{c.method} {c.path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        if c.auth:
            head += f"Authorization: Bearer {ADMIN_TOKEN}\r\n"
        body = c.body if c.method != "GET" else b""
        request = head.encode("utf-8", "surrogateescape") + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        self.report.inputs["admin"] += 1
        try:
            status, payload = http_status(self.port, request, timeout=30)
        except OSError as exc:
            self.report.bad(f"{c}: {exc}")
            return
        self.report.saw(f"admin:{status}")
        if status not in ADMIN_STATUSES and not (status == 503 and c.path in ("/gateway", "/healthz")):
            self.report.bad(f"{c}: status {status}: {payload[:200]!r}")
        if c.path.startswith("/admin/") and status != 200 and status in (400, 401, 404, 409):
            with contextlib.suppress(orjson.JSONDecodeError):
                if "error" not in orjson.loads(payload):
                    self.report.bad(f"{c}: an admin error without 'error': {payload[:100]!r}")
