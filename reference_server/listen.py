"""The WebSocket port's listening socket, and what keeps the server serving when file descriptors run out.

Two parts:

* ``connection_cap``: the most client connections the edge holds (``--max-connections``; automatic: the open-file
  limit minus a headroom for handshakes in flight, the database and the admin plane). Past it the upgrade is
  refused with 503, so a connection flood is answered instead of exhausting descriptors.
* ``ListeningSocket``, the one place the server works around a defect of aiofastnet 1.2.0 (picows' transport
  layer; README, "Known dependency defects"): when ``accept()`` fails for lack of descriptors (EMFILE/ENFILE/...),
  its server calls ``listening_sock.remove_reader(fd)`` — a method sockets do not have — instead of
  ``loop.remove_reader(fd)``. The AttributeError leaves the reader registered; the listening socket stays
  readable, so the loop spins at 100 % CPU logging the error, and no new client is ever answered. This socket has
  that method: it stops reading the listening socket (what the library meant), refuses the connections waiting
  in the backlog the way libuv does (a spare descriptor is freed to accept each one and close it at once: the
  client sees its connection closed instead of a hang), and backs off for ``RETRY_S``: until then ``accept``
  finds nothing (which ends the library's accept loop, and stops reading again should the library resume on its
  own 1 s timer); then accepting resumes. Whatever the library does next, the loop does not spin.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import socket
from collections.abc import Callable

log = logging.getLogger("chat.gateway")

RETRY_S = 0.25  # accept again this soon after running out of descriptors
MIN_HEADROOM = 64  # descriptors kept free for everything but client connections, at least


def connection_cap(configured: int) -> int:
    """``configured`` if > 0, else the open-file limit minus max(64, limit / 8)."""
    if configured > 0:
        return configured
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(1, soft - max(MIN_HEADROOM, soft // 8))


class ListeningSocket(socket.socket):
    """A listening TCP socket the aiofastnet server can call ``remove_reader`` on (see the module doc)."""

    __slots__ = ("backoff", "loop", "refused", "resume", "spare")

    def __init__(self, family: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(family, socket.SOCK_STREAM)
        self.loop = loop
        self.resume: Callable[[], object] | None = None  # set once the server exists: accept again
        self.spare: int | None = os.open(os.devnull, os.O_RDONLY)  # freed to refuse connections at EMFILE
        self.refused = 0  # connections refused for lack of descriptors
        self.backoff = False  # out of descriptors: not accepting until RETRY_S later

    @classmethod
    def bind_to(cls, host: str, port: int, loop: asyncio.AbstractEventLoop) -> ListeningSocket:
        family, _, _, _, addr = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                   flags=socket.AI_PASSIVE)[0]
        sock = cls(family, loop)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def remove_reader(self, fd: int) -> bool:
        """What aiofastnet calls when accept() fails for lack of descriptors (meaning ``loop.remove_reader``)."""
        removed = self.loop.remove_reader(fd)
        self._refuse_waiting()
        if not self.backoff:
            self.backoff = True  # until the retry: accept() finds nothing, so the library's accept loop ends
            self.loop.call_later(RETRY_S, self._retry)
        return removed

    def accept(self) -> tuple[socket.socket, object]:
        if self.backoff:
            # the library resumed on its own timer while backing off: stop reading again, or the loop would spin
            with contextlib.suppress(OSError, ValueError):
                self.loop.remove_reader(self.fileno())
            raise BlockingIOError(errno.EAGAIN, "backing off: out of file descriptors")
        return super().accept()

    def _retry(self) -> None:
        self.backoff = False
        if self.resume is not None and self.fileno() != -1:
            self.resume()

    def _refuse_waiting(self) -> None:
        """Accept each connection waiting in the backlog on the spare descriptor and close it at once."""
        if self.spare is None:
            return
        os.close(self.spare)
        self.spare = None
        n = 0
        try:
            while n < 65536:
                conn, _ = super().accept()
                conn.close()
                n += 1
        except OSError:
            pass  # the backlog is empty (BlockingIOError), or a descriptor is missing again
        finally:
            with contextlib.suppress(OSError):
                self.spare = os.open(os.devnull, os.O_RDONLY)
        if n:
            if self.refused == 0:
                log.warning("out of file descriptors: refusing new connections (closed at once) until some are free")
            self.refused += n

    def close(self) -> None:
        if self.spare is not None:
            with contextlib.suppress(OSError):
                os.close(self.spare)
            self.spare = None
        super().close()
