"""The client side of chatbench: clients that speak the wire protocol, the Locust users, the ledger, the impairing
proxy. Of the server it imports only ``reference_server.protocol`` (the wire format); of the rest of the project
only the leaf package ``record`` (the result record). It never imports harness/, benchmarks/ or the CLI."""

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
