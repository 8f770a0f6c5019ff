"""The server's roles, declared once: what each part needs of the part it is joined to.

    edge ──a client's events──▶ Logic        gateway.Gateway, cluster.logic_node.LogicNode  ▶  logic.ChatLogic,
                                             cluster.gateway_node.RemoteLogic (a gateway forwards over the bus)
    Logic ──replies──▶ Client                gateway.Conn, cluster.logic_node.RemoteConn
    fan-out ──pushes──▶ Sockets | Routes     local ▶ gateway.Gateway; per-user, broadcast, routed ▶ LogicNode
    writer ──seqs──▶ SeqAllocator            store.LocalSeqs, cluster.seqs.RedisSeqs
    serve ──runs──▶ Node                     server.EmbeddedServer, cluster.nodes.LogicServer, GatewayServer

Structural (``typing.Protocol``): an implementation fits by its shape and never imports this module, and this
module imports only the wire protocol, so the roles sit below every part and no part imports the one it is
joined to. (The unread counter store, another
plug point, is a mode interface of its own: ``unread.counters.CounterStore``.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from reference_server.protocol import Message


class Client(Protocol):
    """One user's connection as the logic sees it."""

    @property
    def uid(self) -> int: ...

    def send(self, payload: bytes) -> None:
        """Queue one reply (a JSON payload; the edge frames it) to be written soon."""


class Logic(Protocol):
    """What an edge hands its clients' events to; every call is on the event loop."""

    def user_exists(self, uid: int) -> bool: ...

    def admits(self, uid: int) -> bool:
        """Whether a new connection of uid is accepted now (False: its request budget is used up)."""

    def budget_wait(self, uid: int) -> float:
        """Seconds until uid's request budget holds something again (0.0: now): the edge reads nothing more of
        the user's connection until then."""

    def on_connect(self, conn: Client) -> None: ...

    def on_disconnect(self, conn: Client) -> None: ...

    def handle(self, conn: Client, payload: bytes) -> None:
        """One text frame from the client: answered with exactly one reply."""

    def reject_frame(self, conn: Client, why: str) -> None:
        """A frame the edge cannot hand on (binary, fragmented): answered with an error."""

    def after_flush(self) -> None:
        """The edge wrote every queued frame to its sockets."""


class Receiver(Protocol):
    """A connection of this process as the local fan-out sees it."""

    @property
    def closing(self) -> bool: ...

    def queue(self, frame: bytes) -> None:
        """Append a built frame to the connection's queue (the edge's next flush writes it)."""


class Sockets(Protocol):
    """This process's online connections (the embedded server's gateway): what the local fan-out pushes to."""

    @property
    def online(self) -> Mapping[int, Receiver]: ...

    def kick(self) -> None:
        """Make sure a flush follows this event-loop turn."""


class Routes(Protocol):
    """A cluster's logic node: its registries and the bus to the gateways, for the fan-out modes that push through
    it (the mode decides where an entry goes, the node how it gets there)."""

    @property
    def group_gateways(self) -> Mapping[int, Mapping[int, int]]:
        """The routed registry: gid -> {gateway id: online members of the group there}."""

    def route_members(self, gid: int, uids: Sequence[int], delta: int) -> set[int]:
        """Members added (+1) to or removed (−1) from a group: update the routed registry; their gateways."""

    async def locate(self, uids: Sequence[int]) -> list[int | None]:
        """Each user's gateway from the central online registry (None: not online, or unknown)."""

    def to_every_gateway(self, msg: Message, frame: bytes) -> None:
        """One bus message every gateway hears; each pushes to the members of the group it holds."""

    def to_gateways(self, gateways: Iterable[int], msg: Message, frame: bytes) -> None:
        """One bus message to each of these gateways; each pushes to the members of the group it holds."""

    def to_user(self, gateway: int, uid: int, frame: bytes) -> None:
        """A push for one user, to the gateway that holds it."""


class SeqAllocator(Protocol):
    """Hands out each group's next seq inside the writer's transaction (writer thread)."""

    def next(self, gid: int, last: Mapping[int, int]) -> int:
        """The group's next seq; ``last`` is the writer's record of the last seq per group (this batch's too)."""

    def rollback(self, before: Mapping[int, int], after: Mapping[int, int]) -> None:
        """The batch that moved the writer's record from ``before`` to ``after`` rolled back."""


class Node(Protocol):
    """One server process, whatever its role, as ``server.serve`` runs it."""

    @property
    def ws_url(self) -> str: ...

    @property
    def admin_port(self) -> int: ...

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...
