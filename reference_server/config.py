"""One frozen ServerConfig: modes by name, limits, timeouts. Built from CLI flags, each with an env var."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from reference_server import protocol

DEV_SECRET = protocol.DEV_SECRET
DEV_ADMIN_TOKEN = protocol.DEV_ADMIN_TOKEN


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    # Endpoints
    host: str = "127.0.0.1"
    port: int = 8765  # WebSocket
    admin_port: int = 8766  # HTTP admin plane, /metrics, /healthz
    # Auth
    secret: str = DEV_SECRET
    admin_token: str = DEV_ADMIN_TOKEN
    # Modes (one module per mode; names checked against each package's registry)
    storage: str = "read"
    unread: str = "seq"
    offline: str = "pull"
    fanout: str = "local"
    # Mode parameters
    hybrid_threshold: int = 1000  # storage hybrid: write diffusion for groups with fewer members, read above
    unread_flush_ms: float = 1000.0  # unread merged: the timer that writes the merged changes
    unread_flush_size: int = 100_000  # unread merged: write as soon as this many changes are queued
    unread_repair: bool = False  # rebuild the unread counters from seqs at start (repairs a crash's loss)
    offline_cap: int = 1000  # offline buffer / rate-limited: entries kept per user; the oldest is dropped
    offline_rate: float = 10_000.0  # offline rate-limited: buffer writes per second (the bucket holds 1 s)
    recall_window_s: float = 120.0  # a sender may recall its message this long after the server accepted it
    # Cluster (docs/cluster.md): embedded = one process; logic + gateways over Redis
    role: str = "embedded"
    redis_url: str = "redis://127.0.0.1:6379/0"
    gateway_id: int = 1
    public_url: str = ""  # the ws:// URL clients use for this gateway (default: its listening address)
    # Storage
    db_path: Path = Path("var/chat.db")
    sqlite_synchronous: str = "full"  # full: durable across power loss; normal: across process crash only
    max_batch: int = 512  # messages per group-commit transaction
    # a thread of its own copies the WAL into the database this often, so the writer never waits on a checkpoint
    # (0: SQLite's autocheckpoint, run by the writer inside its commits)
    sqlite_checkpoint_ms: float = 500.0
    # Limits (None = no limit)
    max_frame_bytes: int = protocol.DEFAULT_MAX_FRAME_BYTES
    max_body_chars: int = protocol.DEFAULT_MAX_BODY_CHARS
    send_rate: float | None = 50.0  # messages/s per user (token bucket; a reconnect does not refill it)
    send_burst: int = 100
    # every request but send, and every frame that is not a valid request, spends the server time it took from a
    # per-user bucket (a reconnect does not refill it): refilled at this many ms per second (0 = unlimited) ...
    request_budget_ms: float = 100.0
    request_burst_ms: float = 500.0  # ... holding up to this many ms
    max_send_queue_bytes: int = 4 * 1024 * 1024  # per connection; past it: close 4001 slow consumer
    # cluster gateway: group messages held while their member lists load (after a Redis restart); past it every
    # held message is dropped and the gateway's clients are told to resume by seq (4003)
    gateway_hold_bytes: int = 16 * 1024 * 1024
    max_connections: int = 0  # client connections held at once; past it the upgrade gets 503 (0: from the fd limit)
    # Timeouts
    idle_timeout_s: float = 75.0  # nothing received for this long: close 4000
    shutdown_grace_s: float = 5.0
    # Runtime
    use_uvloop: bool = True
    log_level: str = "INFO"

    def modes(self) -> dict[str, str]:
        return {"storage": self.storage, "unread": self.unread, "offline": self.offline, "fanout": self.fanout}


_HELP: dict[str, str] = {
    "host": "address to listen on",
    "port": "WebSocket port",
    "admin_port": "admin HTTP port (also /metrics and /healthz)",
    "secret": "HMAC secret for user tokens",
    "admin_token": "bearer token of the admin plane",
    "storage": "storage mode",
    "unread": "unread-count mode",
    "offline": "offline-delivery mode",
    "fanout": "online-push mode",
    "hybrid_threshold": "storage hybrid: groups with fewer members use write diffusion, others read diffusion",
    "unread_flush_ms": "unread merged: flush the merged counter changes every this many ms",
    "unread_flush_size": "unread merged: flush as soon as this many counter changes are queued",
    "unread_repair": "rebuild unread counters from seqs at start (repairs merged changes lost in a crash)",
    "offline_cap": "offline buffer: entries kept per user (the oldest non-signal entry is dropped past it)",
    "offline_rate": "offline rate-limited: offline-buffer writes per second (bucket of one second)",
    "recall_window_s": "seconds after acceptance during which a sender may recall its message",
    "role": "embedded (one process), logic (cluster logic node) or gateway (cluster gateway node)",
    "redis_url": "Redis of the cluster (bus, registries, seq allocator)",
    "gateway_id": "this gateway's number in the cluster (1..K)",
    "public_url": "ws:// URL clients reach this gateway at (default: its listening address)",
    "db_path": "SQLite database file",
    "sqlite_synchronous": "SQLite synchronous setting: full or normal",
    "max_batch": "max messages per group-commit transaction",
    "sqlite_checkpoint_ms": "copy the WAL into the database from a thread of its own this often, so commits never "
                            "wait on a checkpoint (0 = SQLite's autocheckpoint inside the writer's commits)",
    "max_frame_bytes": "max inbound WebSocket frame size",
    "max_body_chars": "max message body length",
    "send_rate": "max sends per second per user, across its connections and reconnects (0 = unlimited)",
    "send_burst": "send-rate bucket size (per user)",
    "request_budget_ms": "server time (ms) per second each user's requests other than send may use; over it its "
                         "connection is not read until the budget refills, and new connections get 429 (0 = unlimited)",
    "request_burst_ms": "request-budget bucket size in ms of server time (per user)",
    "max_send_queue_bytes": "per-connection send-queue bound",
    "gateway_hold_bytes": "cluster gateway: bytes of group messages held while their member lists load; past it they "
                          "are dropped and the gateway's clients told to resume by seq (4003)",
    "max_connections": "client connections held at once, past which upgrades get 503 (0 = the open-file limit minus "
                       "max(64, limit/8))",
    "idle_timeout_s": "close connections silent for this many seconds",
    "shutdown_grace_s": "seconds to flush on SIGTERM",
    "use_uvloop": "run on uvloop",
    "log_level": "logging level",
}

_CHOICES: dict[str, list[str]] = {"sqlite_synchronous": ["full", "normal"], "role": ["embedded", "logic", "gateway"]}


def env_name(field: str) -> str:
    return "CHAT_" + field.upper()


def add_arguments(parser: argparse.ArgumentParser, mode_choices: dict[str, list[str]]) -> None:
    """Add one flag per config field; each defaults to its env var (CHAT_<FIELD>) or the built-in default."""
    defaults = ServerConfig()
    for f in fields(ServerConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        env = os.environ.get(env_name(f.name))
        help_text = f"{_HELP[f.name]} (env {env_name(f.name)}; default {default})"
        choices = mode_choices.get(f.name) or _CHOICES.get(f.name)
        if isinstance(default, bool):
            value = default if env is None else env.lower() in ("1", "true", "yes", "on")
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value, help=help_text)
            continue
        kind: Any = type(default) if default is not None else float
        parser.add_argument(flag, type=kind, default=kind(env) if env is not None else default, choices=choices,
                            help=help_text)


def from_args(ns: argparse.Namespace) -> ServerConfig:
    values = {f.name: getattr(ns, f.name) for f in fields(ServerConfig)}
    if values["send_rate"] is not None and values["send_rate"] <= 0:
        values["send_rate"] = None
    return ServerConfig(**values)
