"""Client of the server's admin HTTP plane (provisioning, health, metrics), on the standard library."""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from http.client import HTTPResponse
from typing import Any, Final

import orjson

from record.promtext import add, counters

#: what ``chatbench``'s sampler reads from every server process once a second, by ``name[]`` (a full render would
#: cost the server ~4 ms of its event loop each time): its time series' names and the counters they come from
SAMPLED_SERIES: Final = {"messages_per_s": "chat_messages_accepted_total", "deliveries_per_s": "chat_deliveries_total"}
#: what a capacity step and its drain read from the server, by ``name[]`` (a full /metrics render freezes a server
#: held to a tenth of a core for ~40 ms; these cost it about half of that)
CAPACITY_SERIES: Final = ("process_cpu_seconds_total", "chat_messages_accepted_total", "chat_deliveries_total",
                          "chat_slow_consumer_disconnects_total", "chat_push_latency_seconds_bucket",
                          "chat_writer_backlog", "chat_send_queue_bytes")

#: an opener that ignores http(s)_proxy from the environment: the toolkit talks to its own servers directly
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def urlopen_direct(req: str | urllib.request.Request, timeout: float) -> HTTPResponse:
    """``urllib.request.urlopen`` without any proxy (a proxy would sit inside what is measured, or not reach a
    server on 127.0.0.1 at all)."""
    resp: HTTPResponse = _DIRECT.open(req, timeout=timeout)
    return resp


def front_gateway(front_url: str, timeout: float) -> str:
    """The ws:// URL of the gateway a cluster front hands out now (GET front → {"gateway": id, "url": ...})."""
    with urlopen_direct(front_url, timeout=timeout) as resp:
        return str(orjson.loads(resp.read())["url"])


class AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"admin request failed with HTTP {status}: {message}")
        self.status = status
        self.message = message


class AdminClient:
    def __init__(self, url: str, token: str, *, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = orjson.dumps(body) if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urlopen_direct(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = orjson.loads(raw).get("error", raw.decode(errors="replace"))
            except orjson.JSONDecodeError:
                message = raw.decode(errors="replace")
            raise AdminError(exc.code, str(message)) from None
        if path.startswith("/metrics"):
            return raw.decode()
        return orjson.loads(raw)

    def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """A JSON request whose answer is a JSON object."""
        result = self.request(method, path, body)
        if not isinstance(result, dict):
            raise AdminError(200, f"expected a JSON object from {path}, got {type(result).__name__}")
        return result

    def create_users(self, first: int, count: int, *, tokens: bool = False) -> dict[str, Any]:
        return self.call("POST", "/admin/users", {"first": first, "count": count, "tokens": tokens})

    def create_groups(self, groups: dict[int, list[int]]) -> dict[str, Any]:
        body = {"groups": [{"gid": gid, "members": members} for gid, members in groups.items()]}
        return self.call("POST", "/admin/groups", body)

    def change_members(self, gid: int, add: list[int] | None = None, remove: list[int] | None = None) -> dict[str, Any]:
        return self.call("POST", f"/admin/groups/{gid}/members", {"add": add or [], "remove": remove or []})

    def seed_history(self, gid: int, messages: int, *, sender: int | None = None, body: str = "") -> dict[str, Any]:
        """Store ``messages`` of history everyone in the group has read (docs/protocol.md, admin API)."""
        req: dict[str, Any] = {"messages": messages, "body": body}
        if sender is not None:
            req["sender"] = sender
        return self.call("POST", f"/admin/groups/{gid}/history", req)

    def group(self, gid: int) -> dict[str, Any]:
        return self.call("GET", f"/admin/groups/{gid}")

    def health(self) -> dict[str, Any]:
        return self.call("GET", "/healthz")

    def metrics_text(self, names: Sequence[str] = ()) -> str:
        """/metrics; with ``names``, only those samples (``name[]``: a render of a few costs the server far less)."""
        query = urllib.parse.urlencode([("name[]", n) for n in names])
        return str(self.request("GET", "/metrics" + (f"?{query}" if query else "")))

    def wait_healthy(self, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.health()
            except (OSError, AdminError) as exc:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"server at {self.url} not healthy after {timeout:g} s: {exc}") from exc
                time.sleep(0.1)


def from_options(opts: Any) -> AdminClient | None:
    """The admin client a swarm's options name (``--admin-url``, ``--admin-token``), or None without a URL."""
    url = getattr(opts, "admin_url", "") if opts is not None else ""
    return AdminClient(url, getattr(opts, "admin_token", ""), timeout=10) if url else None


def metrics_urls(opts: Any) -> list[str]:
    """The admin URLs whose /metrics make up "the server": ``--server-metrics-urls`` (every process of a cluster),
    else ``--admin-url`` alone."""
    urls = [u.strip() for u in str(getattr(opts, "server_metrics_urls", "") or "").split(",") if u.strip()]
    own = getattr(opts, "admin_url", "") if opts is not None else ""
    return urls or ([own] if own else [])


def server_counters(opts: Any, names: Sequence[str] = ()) -> dict[str, float]:
    """The server's /metrics (only ``names``, if given), flattened (``record.promtext.counters``) and summed over
    every process of :func:`metrics_urls`, or {} if one of them cannot be read (a partial sum would be a false
    figure)."""
    total: dict[str, float] = {}
    token = getattr(opts, "admin_token", "") if opts is not None else ""
    try:
        for url in metrics_urls(opts):
            add(total, counters(AdminClient(url, token, timeout=10).metrics_text(names)))
    except Exception:
        return {}
    return total
