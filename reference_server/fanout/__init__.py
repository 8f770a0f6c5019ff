"""Online-push modes behind one interface. A new mode is one module here and one name in MODES."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from reference_server.directory import Group
from reference_server.protocol import Message

if TYPE_CHECKING:
    from reference_server.cluster.logic_node import LogicNode
    from reference_server.gateway import Gateway


class Fanout(ABC):
    """Gets a committed message to its online receivers (event loop): directly to this process's
    connections (embedded), or over the cluster bus to the gateways that hold them."""

    name: str

    @abstractmethod
    def push(self, msg: Message, frame: bytes, group: Group) -> int:
        """Queue the built frame to every online receiver except the sender; return how many."""


def create(name: str, *, gateway: Gateway | None = None, node: LogicNode | None = None) -> Fanout:
    """``local`` needs the process's gateway (embedded); the cluster modes need the logic node."""
    if name not in MODES:
        raise ValueError(f"unknown fanout mode {name!r}; choose from {sorted(MODES)}")
    if name in LOCAL:
        if gateway is None:
            raise ValueError(f"fanout {name!r} is for the embedded server (one process holds every connection)")
        return MODES[name](gateway)  # type: ignore[call-arg]
    if node is None:
        raise ValueError(f"fanout {name!r} needs a cluster: run with --role logic and gateways (chatbench serve "
                         "--cluster)")
    return MODES[name](node)  # type: ignore[call-arg]


from reference_server.fanout.broadcast import BroadcastFanout  # noqa: E402  (modes subclass Fanout above)
from reference_server.fanout.local import LocalFanout  # noqa: E402
from reference_server.fanout.per_user import PerUserFanout  # noqa: E402
from reference_server.fanout.routed import RoutedFanout  # noqa: E402

MODES: dict[str, type[Fanout]] = {"local": LocalFanout, "per-user": PerUserFanout, "broadcast": BroadcastFanout,
                                  "routed": RoutedFanout}
LOCAL = {"local"}
