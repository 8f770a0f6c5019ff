"""The server's structure, checked: the embedded server imports no cluster code (nor Redis), no import loop
inside reference_server, the audience rule, and the per-user send budget (it survives a reconnect)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from reference_server import protocol
from reference_server.directory import audience
from reference_server.limits import MIN_SWEEP, TokenBuckets
from reference_server.protocol import Message
from tests.unit.modes_harness import Harness

PACKAGE = Path(__file__).resolve().parents[2] / "reference_server"

# build the embedded server of the default role, as `python -m reference_server` does, without starting it
_EMBEDDED = """
import asyncio, sys
from reference_server import __main__ as entry
config = entry.cfg.from_args(entry.parser().parse_args(["--db-path", sys.argv[1]]))
server = entry.build(config, asyncio.new_event_loop())
assert type(server).__name__ == "EmbeddedServer", server
print(sorted(m for m in sys.modules if m == "redis" or m.startswith(("redis.", "reference_server.cluster"))))
"""


def test_embedded_server_imports_no_cluster_code_and_not_redis(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", _EMBEDDED, str(tmp_path / "chat.db")], capture_output=True,
                         text=True, check=True, cwd=PACKAGE.parent).stdout
    assert out.strip() == "[]"


def _imports(path: Path) -> set[str]:
    """The reference_server modules a file imports (TYPE_CHECKING and function-level imports included)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
    known = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
             for p in PACKAGE.rglob("*.py")}
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    # a package's __init__ importing its own modes at the bottom (the registry) is no loop of the design
    inside = module + "." if path.name == "__init__.py" else None
    return {m for m in found & known if m != module and not (inside and m.startswith(inside))}


def test_no_import_loop_inside_reference_server() -> None:
    graph = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): _imports(p)
             for p in PACKAGE.rglob("*.py")}
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        if m in path:
            raise AssertionError("import loop: " + " -> ".join([*path[path.index(m):], m]))
        if m in done:
            return
        for n in sorted(graph[m]):
            visit(n, [*path, m])
        done.add(m)

    for m in sorted(graph):
        visit(m, [])


def _msg(seq: int, sender: int, to: tuple[int, ...] | None = None) -> Message:
    return Message(1, seq, sender, 0, 0, "b", to)


def test_audience_is_the_members_who_joined_before_the_entry_but_its_sender_and_outside_to() -> None:
    members = {1: 0, 2: 3, 3: 5, 4: 9}  # uid -> join seq: 3 joined at seq 5 (in the entry's batch), 4 after it
    assert audience(members, _msg(5, 1)) == [2]
    assert audience(members, _msg(10, 1)) == [2, 3, 4]
    assert audience(members, _msg(10, 2, to=(4, 1, 99))) == [4, 1]  # in ``to`` order; 99 is no member
    assert audience(members, _msg(10, 1, to=(2,)), among=(2, 3)) == [2]  # among: only these candidates
    assert audience(members, _msg(10, 1), among=(1,)) == []  # never its sender


def test_token_buckets_refill_at_the_rate_up_to_the_burst() -> None:
    now = [100.0]
    b = TokenBuckets(rate=2.0, burst=3, clock=lambda: now[0])
    assert [b.take(7) for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # one token back
    assert [b.take(7), b.take(7)] == [True, False]
    assert b.take(8)  # another user's bucket is its own
    now[0] += 60.0
    assert [b.take(7) for _ in range(4)] == [True, True, True, False]  # full again, never above the burst


def test_token_buckets_forget_only_the_users_whose_bucket_is_full_again() -> None:
    now = [0.0]
    b = TokenBuckets(rate=1.0, burst=2, clock=lambda: now[0])
    for uid in range(MIN_SWEEP - 1):
        b.take(uid)  # each left with 1 of 2 tokens
    now[0] += 5.0  # all of them full again
    assert b.take(-1) and b.take(-1) and not b.take(-1)  # the 1024th entry sweeps the full ones, keeps this one
    assert len(b) == 1
    assert not b.take(-1)  # its state survived the sweep


def test_the_send_budget_is_per_user_and_survives_a_reconnect(tmp_path: Path) -> None:
    h = Harness(tmp_path / "chat.db", send_rate=1.0, send_burst=2)
    try:
        assert h.logic.send_buckets is not None
        now = [1000.0]
        h.logic.send_buckets.clock = lambda: now[0]
        h.provision([1, 2], {1: [1, 2]})
        h.online(1)

        def send() -> str:
            return str(h.request(1, protocol.encode_send, 1, "m", 0)["op"])

        assert [send(), send()] == ["ack", "ack"]
        err = h.request(1, protocol.encode_send, 1, "m", 0)
        assert (err["op"], err["code"]) == ("error", protocol.ErrorCode.RATE_LIMITED)
        h.offline(1)
        h.online(1)  # a new connection of the same user: no fresh bucket
        assert send() == "error"
        now[0] += 1.0
        assert [send(), send()] == ["ack", "error"]
    finally:
        h.close()
