"""Server → client WebSocket frames, sans-I/O: what the logic builds and every edge writes unchanged.

A frame is built once and the same bytes go to every receiver — to this process's sockets (gateway.py), or
over the cluster bus to the gateways that hold them (cluster/). Server frames are never masked.
"""

from __future__ import annotations

import struct

_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """An unmasked, final server frame (text by default) around payload."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return _LEN16.pack(0x80 | opcode, 126, n) + payload
    return _LEN64.pack(0x80 | opcode, 127, n) + payload


def close_frame(code: int, reason: str) -> bytes:
    return ws_frame(struct.pack("!H", code) + reason.encode()[:120], 0x8)
