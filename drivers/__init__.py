"""The client side of chatbench: it speaks the wire protocol and imports only ``reference_server.protocol``."""

from __future__ import annotations

from drivers.client import (
    CONNECTION_CLOSED,
    ChatClient,
    ChatClientError,
    ConnectionClosed,
    ConnectRefused,
    RequestTimeout,
    ServerError,
)

__all__ = [
    "CONNECTION_CLOSED",
    "ChatClient",
    "ChatClientError",
    "ConnectRefused",
    "ConnectionClosed",
    "RequestTimeout",
    "ServerError",
]
