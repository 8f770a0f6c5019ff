"""``python -m reference_server``: run the reference server in the role ``--role`` names (default: embedded)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from reference_server import config as cfg
from reference_server import fanout, offline, storage, unread
from reference_server.roles import Node
from reference_server.server import EmbeddedServer, serve


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reference_server", description="chatbench reference group-chat server")
    cfg.add_arguments(p, {
        "storage": sorted(storage.MODES), "unread": sorted(unread.MODES), "offline": sorted(offline.MODES),
        "fanout": sorted(fanout.MODES),
    })
    return p


def build(config: cfg.ServerConfig, loop: asyncio.AbstractEventLoop) -> Node:
    """The server of the configured role. Only a cluster role imports the cluster (and with it Redis)."""
    if config.role == "embedded":
        return EmbeddedServer(config, loop)
    from reference_server.cluster import nodes

    return nodes.create(config, loop)


def main(argv: list[str] | None = None) -> int:
    config = cfg.from_args(parser().parse_args(argv))
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("picows").setLevel(logging.WARNING)  # it logs every connect and disconnect at INFO
    if config.use_uvloop:
        import uvloop

        uvloop.run(serve(config, build))
    else:
        asyncio.run(serve(config, build))
    return 0


if __name__ == "__main__":
    sys.exit(main())
