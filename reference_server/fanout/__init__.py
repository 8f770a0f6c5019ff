"""Online-push modes behind one interface. A new mode is one module here and one name in its role's registry.

The embedded server's mode pushes to this process's sockets (``roles.Sockets``); the cluster modes push over
the bus from a logic node (``roles.Routes``). Each registry is typed by what its modes are built from, and
the server of each role builds its mode from its own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping

from reference_server.protocol import Message
from reference_server.roles import Routes, Sockets


class Fanout(ABC):
    """Gets a committed entry to its online receivers (event loop): directly to this process's connections
    (embedded), or over the cluster bus to the gateways that hold them."""

    name: str
    #: whether this process's sockets write the pushes (so its flush ends their push latency)
    local: bool = False

    @abstractmethod
    def push(self, msg: Message, frame: bytes, members: Mapping[int, int]) -> int:
        """Queue the built frame to the entry's online audience among ``members`` (uid -> join seq; a
        snapshot: member maps are replaced, never changed); return how many this process queued."""


def create(name: str, *, sockets: Sockets | None = None, routes: Routes | None = None) -> Fanout:
    """The embedded server gives its ``sockets``, a cluster's logic node its ``routes``."""
    if name in LOCAL:
        if sockets is None:
            raise ValueError(f"fanout {name!r} is for the embedded server (one process holds every connection)")
        return LOCAL[name](sockets)
    if name in CLUSTER:
        if routes is None:
            raise ValueError(f"fanout {name!r} needs a cluster: run with --role logic and gateways (chatbench serve "
                             "--cluster)")
        return CLUSTER[name](routes)
    raise ValueError(f"unknown fanout mode {name!r}; choose from {sorted(MODES)}")


from reference_server.fanout.broadcast import BroadcastFanout  # noqa: E402  (modes subclass Fanout above)
from reference_server.fanout.local import LocalFanout  # noqa: E402
from reference_server.fanout.per_user import PerUserFanout  # noqa: E402
from reference_server.fanout.routed import RoutedFanout  # noqa: E402

LOCAL: dict[str, Callable[[Sockets], Fanout]] = {"local": LocalFanout}
CLUSTER: dict[str, Callable[[Routes], Fanout]] = {"per-user": PerUserFanout, "broadcast": BroadcastFanout,
                                                  "routed": RoutedFanout}
MODES: frozenset[str] = frozenset(LOCAL.keys() | CLUSTER.keys())
