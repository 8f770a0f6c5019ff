"""``python -m reference_server``: run the embedded reference server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from reference_server import config as cfg
from reference_server import fanout, offline, storage, unread
from reference_server.server import serve


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reference_server", description="chatbench reference group-chat server")
    cfg.add_arguments(p, {
        "storage": sorted(storage.MODES), "unread": sorted(unread.MODES), "offline": sorted(offline.MODES),
        "fanout": sorted(fanout.MODES),
    })
    return p


def main(argv: list[str] | None = None) -> int:
    config = cfg.from_args(parser().parse_args(argv))
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("picows").setLevel(logging.WARNING)  # it logs every connect and disconnect at INFO
    if config.use_uvloop:
        import uvloop

        uvloop.run(serve(config))
    else:
        asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
