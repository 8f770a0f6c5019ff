"""Online-push modes behind one interface. A new mode is one module here and one name in MODES."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from reference_server.directory import Group
from reference_server.protocol import Message

if TYPE_CHECKING:
    from reference_server.gateway import Gateway


class Fanout(ABC):
    """Gets a committed message to the connections of its online receivers (event loop)."""

    name: str

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    @abstractmethod
    def push(self, msg: Message, frame: bytes, group: Group) -> int:
        """Queue the built frame to every online receiver except the sender; return how many."""


def create(name: str, gateway: Gateway) -> Fanout:
    if name not in MODES:
        raise ValueError(f"unknown fanout mode {name!r}; choose from {sorted(MODES)}")
    return MODES[name](gateway)


from reference_server.fanout.local import LocalFanout  # noqa: E402  (modes subclass Fanout above)

MODES: dict[str, type[Fanout]] = {"local": LocalFanout}
