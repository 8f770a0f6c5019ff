"""What the abuse tests use: a raw WebSocket client that can send anything, a canary group measured throughout, and
the server process' memory and CPU (from /proc)."""

from __future__ import annotations

import contextlib
import math
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

import orjson

from drivers.client import CONNECTION_CLOSED, ChatClient
from harness.procs import REPO, SECRET
from reference_server.protocol import now_us, user_token, ws_query

_CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the server process


def rss_bytes(pid: int) -> int:
    """VmRSS of a process, in bytes (/proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


class RssWatch:
    """Samples a process' RSS every ``interval`` s in a thread: ``peak`` is the most seen since ``start``."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.before = rss_bytes(pid)
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except (OSError, RuntimeError):
                return  # the process is gone

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pid))

    @property
    def growth(self) -> int:
        return self.peak - self.before


# -- raw WebSocket


def client_frame(payload: bytes, opcode: int = 0x1, *, fin: bool = True, rsv: int = 0,
                 mask: bytes = b"\0\0\0\0") -> bytes:
    """One client frame, masked (the default all-zero key leaves the payload as is: cheap to build in bulk).
    ``rsv``: the three reserved bits as a number 0..7."""
    n = len(payload)
    first = (0x80 if fin else 0) | (rsv & 7) << 4 | opcode
    if n < 126:
        head = struct.pack("!BB", first, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, n)
    if mask != b"\0\0\0\0":
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + payload


def frames(payloads: Iterable[bytes]) -> bytes:
    return b"".join(client_frame(p) for p in payloads)


def upgrade_request(host: str, target: str, *, version: bytes = b"13", extra: bytes = b"") -> bytes:
    return (b"GET " + target.encode("latin-1") + b" HTTP/1.1\r\nHost: " + host.encode() +
            b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: " + version + b"\r\n" + extra + b"\r\n")


def ws_target(uid: int | str, token: str | None = None) -> str:
    if token is None:
        assert isinstance(uid, int)
        token = user_token(SECRET, uid)
    return ws_query(uid, token) if isinstance(uid, int) else f"/ws?uid={uid}&token={token}"


class RawWS:
    """A WebSocket connection made by hand: the upgrade request as given, frames as bytes, reading optional."""

    def __init__(self, port: int, target: str = "", *, request: bytes | None = None, rcvbuf: int | None = None,
                 timeout: float = 10.0, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.sock.sendall(request if request is not None else upgrade_request(f"{host}:{port}", target))
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            got += chunk
        head, _, rest = got.partition(b"\r\n\r\n")
        self.buf = bytearray(rest)
        self.at = 0  # read position in buf
        self.head = head.decode("latin-1")
        parts = self.head.split(" ", 2)
        self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        self.body = b""
        if self.status != 101:  # a refusal: the body until the server closes
            self.body = bytes(self.buf) + self._read_all()

    def _read_all(self) -> bytes:
        out = b""
        try:
            while chunk := self.sock.recv(65536):
                out += chunk
        except OSError:
            pass
        return out

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _need(self, n: int) -> bool:
        """At least n unread bytes in the buffer (reading them from the socket as needed)."""
        while len(self.buf) - self.at < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                return False
            if self.at > 1 << 20:  # compact now and then: the read position stays small, copying stays linear
                self.buf, self.at = self.buf[self.at:], 0
            self.buf += chunk
        return True

    def recv_frame(self) -> tuple[int, bytes] | None:
        """The next server frame (opcode, payload); None when the server ended the connection."""
        try:
            if not self._need(2):
                return None
            b0, b1 = self.buf[self.at], self.buf[self.at + 1]
            n, head = b1 & 0x7F, 2
            if n == 126:
                if not self._need(4):
                    return None
                n, head = struct.unpack_from("!H", self.buf, self.at + 2)[0], 4
            elif n == 127:
                if not self._need(10):
                    return None
                n, head = struct.unpack_from("!Q", self.buf, self.at + 2)[0], 10
            if not self._need(head + n):
                return None
        except OSError:  # reset, timed out, or closed by another thread
            return None
        start = self.at + head
        payload = bytes(self.buf[start:start + n])
        self.at = start + n
        return b0 & 0x0F, payload

    def recv_json(self) -> dict[str, Any] | None:
        """The next text frame as JSON (skipping control frames); None at a close or the end."""
        while True:
            got = self.recv_frame()
            if got is None or got[0] == 0x8:
                return None
            if got[0] == 0x1:
                value: dict[str, Any] = orjson.loads(got[1])
                return value

    def close_code(self) -> int | None:
        """Read until the server's close frame; its code (None: the connection ended without one)."""
        while True:
            got = self.recv_frame()
            if got is None:
                return None
            if got[0] == 0x8:
                return int.from_bytes(got[1][:2], "big") if len(got[1]) >= 2 else 1005

    def close(self) -> None:
        self.sock.close()


def http_status(port: int, request: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
    """Send one raw HTTP request; the status of the answer (0: none before the server closed) and its body (read
    to its Content-Length, or until the server closes)."""
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        try:
            while chunk := s.recv(65536):
                data += chunk
                head, sep, body = data.partition(b"\r\n\r\n")
                if sep:
                    if head.startswith(b"HTTP/1.1 101"):
                        break  # upgraded: frames follow, not a body
                    length = [line.split(b":", 1)[1] for line in head.split(b"\r\n")[1:]
                              if line.lower().startswith(b"content-length:")]
                    if length and len(body) >= int(length[0]):
                        break
        except OSError:
            pass
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0), body


# -- the canary


def p99(values: list[float]) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


class Canary:
    """A group of two members apart from every attack: ``sender`` posts ``rate`` messages a second, ``receiver``
    measures each one's delivery latency (its receive time − the message's cts; one machine, one clock).

    Both run in a child process (``python -m tests.abuse.tools``), so the attacking threads of the test process do
    not delay the measurement; it reports each sample with its CLOCK_MONOTONIC time, which processes share."""

    def __init__(self, url: str, gid: int, sender: int, receiver: int, rate: float = 100.0) -> None:
        self.args = [url, str(gid), str(sender), str(receiver), str(rate)]
        self.samples: list[tuple[float, float]] = []  # (monotonic time received, latency s)
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._ready = threading.Event()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            kind, _, rest = line.strip().partition(" ")
            if kind == "S":
                t, lat = rest.split()
                with self._lock:
                    self.samples.append((float(t), float(lat)))
            elif kind == "READY":
                self._ready.set()
            else:
                self.errors.append(line.strip())

    def start(self) -> Canary:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
        self._proc = subprocess.Popen([sys.executable, "-m", "tests.abuse.tools", *self.args], stdout=subprocess.PIPE,
                                      stdin=subprocess.PIPE, text=True, bufsize=1, env=env, cwd=REPO)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(30):
            self.stop()
            raise RuntimeError(f"the canary did not start: {self.errors}")
        return self

    def stop(self) -> None:
        if self._proc is None:
            return
        assert self._proc.stdin is not None
        with contextlib.suppress(OSError):
            self._proc.stdin.close()  # the child stops when its stdin ends
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        self._proc = None

    def window(self, since: float, until: float | None = None) -> list[float]:
        end = math.inf if until is None else until
        with self._lock:
            return [lat for t, lat in self.samples if since <= t <= end]

    def measure(self, seconds: float) -> list[float]:
        """The latencies of the next ``seconds``."""
        t0 = time.monotonic()
        time.sleep(seconds)
        return self.window(t0)

    def __enter__(self) -> Canary:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _canary_main(url: str, gid: int, sender: int, receiver: int, rate: float) -> None:
    """The canary's child process: samples on stdout ("S <monotonic> <latency s>"), until stdin ends."""
    out_lock = threading.Lock()

    def emit(line: str) -> None:
        with out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def on_msg(frame: dict[str, Any]) -> None:
        if frame.get("gid") == gid and frame.get("cts"):
            emit(f"S {time.monotonic():.6f} {(now_us() - frame['cts']) / 1e6:.6f}")

    def on_ack(frame: dict[str, Any]) -> None:
        if frame.get("op") != "ack" and not (stop.is_set() and frame.get("code") == CONNECTION_CLOSED):
            emit(f"E {orjson.dumps(frame).decode()}")

    stop = threading.Event()
    # heartbeats: the receiver sends nothing else, and the idle timeout would close it after 75 s
    rx = ChatClient(url, receiver, user_token(SECRET, receiver), on_message=on_msg, heartbeat_s=10.0)
    tx = ChatClient(url, sender, user_token(SECRET, sender), heartbeat_s=10.0)
    rx.connect()
    tx.connect()

    def watch_stdin() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    emit("READY")
    period = 1.0 / rate
    due = time.monotonic()
    while not stop.is_set():
        due += period
        if tx.closed or rx.closed:
            emit(f"E the canary's connection closed: {tx.close_code or rx.close_code}")
            break
        tx.send_nowait(gid, "canary", cts=now_us(), on_ack=on_ack)
        delay = due - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        else:
            due = time.monotonic()  # behind (starved): do not burst to catch up
    tx.close()
    rx.close()


def limit_ms(baseline_p99_s: float) -> float:
    """The most a canary's p99 may rise to under an attack: max(2 × its baseline, 50 ms), in ms."""
    return max(2 * baseline_p99_s * 1000, 50.0)


if __name__ == "__main__":
    _canary_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
