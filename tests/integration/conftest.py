"""Shared fixtures: a real server process on loopback, real clients."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drivers.admin import AdminClient
from drivers.client import ChatClient
from drivers.engine import Engine
from harness.procs import SECRET, ServerProcess
from reference_server.protocol import user_token


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def make(*args: str, db_path: Path | None = None) -> ServerProcess:
        srv = ServerProcess(*args, db_path=db_path or tmp_path / f"chat{len(started)}.db")
        started.append(srv)
        return srv.start()

    yield make
    for srv in started:
        srv.cleanup()


@pytest.fixture
def server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory()


def admin(srv: ServerProcess) -> AdminClient:
    assert srv.admin is not None
    return srv.admin


def pump_stats(engine: Engine) -> dict[str, int]:
    """The engine's pump counters (asked on the engine thread: the pump belongs to it)."""
    done = threading.Event()
    out: list[dict[str, int]] = []

    def ask() -> None:
        out.append(dict(engine._pump.stats))
        done.set()

    engine._call(ask)
    assert done.wait(5), "the engine thread did not answer"
    return out[0]


def pumped(engine: Engine) -> int:
    """How many connections the engine's pump reads."""
    return pump_stats(engine)["connections"]


def provision(srv: ServerProcess, members: int, gid: int = 1, first_uid: int = 1) -> list[int]:
    """Users first..first+members-1, all in group gid."""
    uids = list(range(first_uid, first_uid + members))
    admin(srv).create_users(first_uid, members)
    admin(srv).create_groups({gid: uids})
    return uids


@pytest.fixture
def connect(server: ServerProcess) -> Iterator[Callable[..., ChatClient]]:
    clients: list[ChatClient] = []

    def make(uid: int, srv: ServerProcess | None = None, **kw: object) -> ChatClient:
        s = srv or server
        kw.setdefault("heartbeat_s", None)
        c = ChatClient(s.ws_url, uid, user_token(SECRET, uid), **kw)  # type: ignore[arg-type]
        c.connect()
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()
