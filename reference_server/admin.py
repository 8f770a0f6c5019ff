"""The admin HTTP plane (aiohttp): provisioning under a bearer token, plus /metrics and /healthz.

Provisioning goes through the writer like every other change, so it is ordered with the sends around it
and durable before the response. A request that fails validation writes nothing.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from reference_server import protocol
from reference_server.store import AdminError, AdminJob, ChangeMembers, CreateGroups, CreateUsers, SeedHistory

if TYPE_CHECKING:
    from reference_server.config import ServerConfig
    from reference_server.logic import ChatLogic
    from reference_server.store import Store

MAX_BULK = 1_000_000
#: bulk work on the event loop is done this many ids at a time, letting everything else run in between
CHECK_SLICE = 50_000
#: users are created this many at a time, each chunk one writer transaction, so sends commit in between
USER_CHUNK = 20_000
#: seeded history: at most this many messages per request, and messages × members at most SEED_MAX_ROWS
SEED_MAX_MESSAGES = 100_000
SEED_MAX_ROWS = 20_000_000
#: ... applied this many messages × members at a time (at least one message), each chunk one writer transaction
SEED_CHUNK_ROWS = 200_000

Health = Callable[[], tuple[bool, dict[str, object]]]
#: a cluster front's choice of gateway for a new connection (None: no live gateway)
PickGateway = Callable[[], Awaitable[dict[str, Any] | None]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _bad(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


async def _ids(value: Any, what: str) -> list[int]:
    """A list of ids, checked a slice at a time (a million of them would hold the loop for a while)."""
    if type(value) is not list:
        raise AdminError(400, f"{what} must be a list of integer ids in [0, 2**63)")
    if len(value) > MAX_BULK:
        raise AdminError(400, f"{what}: at most {MAX_BULK} per request")
    for i in range(0, len(value), CHECK_SLICE):
        if any(type(v) is not int or not 0 <= v <= protocol.MAX_ID for v in value[i:i + CHECK_SLICE]):
            raise AdminError(400, f"{what} must be a list of integer ids in [0, 2**63)")
        if len(value) > CHECK_SLICE:
            await asyncio.sleep(0)
    return value


def build_app(config: ServerConfig, store: Store, logic: ChatLogic, registry: CollectorRegistry, health: Health,
              pick_gateway: PickGateway | None = None) -> web.Application:
    """The admin plane of a server that holds the store (embedded, or a cluster's logic node)."""
    token = f"Bearer {config.admin_token}".encode()

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/admin/"):
            # header values may carry undecodable bytes (surrogate escapes): compared as the bytes they were
            given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            if not hmac.compare_digest(given, token):
                return _bad(401, "admin endpoints need 'Authorization: Bearer <admin token>'")
        try:
            return await handler(request)
        except AdminError as exc:
            return _bad(exc.status, str(exc))

    async def body(request: web.Request) -> dict[str, Any]:
        try:
            data = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise AdminError(400, f"body is not valid JSON: {exc}") from None
        if type(data) is not dict:
            raise AdminError(400, "body must be a JSON object")
        return data

    async def run(job: AdminJob) -> dict[str, object]:
        if not logic.accepting:
            raise AdminError(503, "server is shutting down")
        store.submit(job)
        return await job.future

    async def create_users(request: web.Request) -> web.StreamResponse:
        data = await body(request)
        if "ids" in data:
            uids = await _ids(data["ids"], "ids")
        else:
            first, count = data.get("first"), data.get("count")
            if (type(first) is not int or type(count) is not int or first < 0 or not 0 < count <= MAX_BULK
                    or first + count - 1 > protocol.MAX_ID):
                raise AdminError(400, f"give 'ids' (a list) or 'first' and 'count' (1..{MAX_BULK})")
            uids = list(range(first, first + count))
        loop = asyncio.get_running_loop()
        created = 0
        for i in range(0, len(uids), USER_CHUNK):  # idempotent, so chunks may commit apart
            n = (await run(CreateUsers(loop, uids[i:i + USER_CHUNK])))["created"]
            assert isinstance(n, int)
            created += n
        head = {"created": created, "requested": len(uids)}
        if not data.get("tokens"):
            return _json(head)
        # a million tokens: computed and written a slice at a time (tens of MB of JSON, never whole in memory)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(orjson.dumps(head)[:-1] + b',"tokens":{')
        secret = config.secret
        for i in range(0, len(uids), CHECK_SLICE // 5):
            part = orjson.dumps({str(u): protocol.user_token(secret, u) for u in uids[i:i + CHECK_SLICE // 5]})
            await resp.write((b"," if i else b"") + part[1:-1])
        await resp.write(b"}}")
        await resp.write_eof()
        return resp

    async def create_groups(request: web.Request) -> web.Response:
        data = await body(request)
        raw = data.get("groups")
        if type(raw) is not list or not raw:
            raise AdminError(400, "'groups' must be a non-empty list of {gid, members}")
        groups = []
        for g in raw:
            if type(g) is not dict or type(g.get("gid")) is not int or not 0 <= g["gid"] <= protocol.MAX_ID:
                raise AdminError(400, "each group needs an integer 'gid' in [0, 2**63)")
            groups.append((g["gid"], await _ids(g.get("members", []), f"members of group {g['gid']}")))
        return _json(await run(CreateGroups(asyncio.get_running_loop(), groups)))

    async def change_members(request: web.Request) -> web.Response:
        gid = _path_id(request, "gid")
        data = await body(request)
        add = await _ids(data.get("add", []), "add")
        remove = await _ids(data.get("remove", []), "remove")
        return _json(await run(ChangeMembers(asyncio.get_running_loop(), gid, add, remove, logic.publish)))

    async def seed_history(request: web.Request) -> web.Response:
        gid = _path_id(request, "gid")
        data = await body(request)
        count, sender, text = data.get("messages"), data.get("sender"), data.get("body", "")
        if type(count) is not int or not 1 <= count <= SEED_MAX_MESSAGES:
            raise AdminError(400, f"'messages' must be an integer in 1..{SEED_MAX_MESSAGES}")
        if sender is not None and (type(sender) is not int or not 0 <= sender <= protocol.MAX_ID):
            raise AdminError(400, "'sender' must be a user id")
        if type(text) is not str or len(text) > config.max_body_chars:
            raise AdminError(400, f"'body' must be a string of at most {config.max_body_chars} characters")
        group = store.directory.groups.get(gid)
        if group is None:
            raise AdminError(404, f"no group {gid}")
        size = max(1, len(group.members))
        if count * size > SEED_MAX_ROWS:
            raise AdminError(400, f"{count} messages to {size} members: at most {SEED_MAX_ROWS:,} message-members "
                                  f"per request ({SEED_MAX_ROWS // size} messages for this group)")
        loop = asyncio.get_running_loop()
        chunk = max(1, SEED_CHUNK_ROWS // size)
        done, writes, result = 0, 0, {}
        while done < count:  # each chunk its own commit, so sends commit in between
            n = min(chunk, count - done)
            try:
                result = await run(SeedHistory(loop, gid, n, sender, text))
            except AdminError as exc:
                if done:
                    raise AdminError(exc.status, f"{exc} (after {done} of {count} messages were seeded)") from None
                raise
            done += n
            n_writes = result["storage_writes"]
            assert isinstance(n_writes, int)
            writes += n_writes
        return _json({"messages": count, "max_seq": result["max_seq"], "members": result["members"],
                      "storage_writes": writes})

    async def get_group(request: web.Request) -> web.Response:
        gid = _path_id(request, "gid")
        group = store.directory.groups.get(gid)
        if group is None:
            raise AdminError(404, f"no group {gid}")
        return _json({"gid": gid, "members": len(group.members), "max_seq": group.max_seq})

    async def user_token(request: web.Request) -> web.Response:
        uid = _path_id(request, "uid")
        if uid not in store.directory.users:
            raise AdminError(404, f"no user {uid}")
        return _json({"uid": uid, "token": protocol.user_token(config.secret, uid)})

    async def gateway(request: web.Request) -> web.Response:
        if pick_gateway is None:
            raise AdminError(404, "no front: this server is not a cluster's logic node")
        picked = await pick_gateway()
        if picked is None:
            raise AdminError(503, "no live gateway")
        return _json(picked)

    app = observability_app(registry, health, middlewares=[errors])
    app.router.add_post("/admin/users", create_users)
    app.router.add_get("/admin/users/{uid}/token", user_token)
    app.router.add_post("/admin/groups", create_groups)
    app.router.add_get("/admin/groups/{gid}", get_group)
    app.router.add_post("/admin/groups/{gid}/members", change_members)
    app.router.add_post("/admin/groups/{gid}/history", seed_history)
    app.router.add_get("/gateway", gateway)
    return app


def observability_app(registry: CollectorRegistry, health: Health,
                      middlewares: list[Any] | None = None) -> web.Application:
    """/metrics (Prometheus text) and /healthz (JSON; 503 unless healthy): every node serves these."""

    async def metrics(request: web.Request) -> web.Response:
        # ?name[]=...: only those samples (prometheus_client's own convention). A full render costs ~4 ms of CPU
        # on this loop, a freeze of ~40 ms for a server held to 0.1 core: a sampler that needs two counters asks
        # for two (docs/metrics.md, "What watching costs")
        names = request.query.getall("name[]", [])
        resp = web.Response(body=generate_latest(registry.restricted_registry(names) if names else registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def healthz(request: web.Request) -> web.Response:
        ok, info = health()
        return _json(info, 200 if ok else 503)

    app = web.Application(middlewares=middlewares or [], client_max_size=256 * 1024 * 1024)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


def _path_id(request: web.Request, name: str) -> int:
    value = protocol.parse_id(request.match_info[name])
    if value is None:
        raise AdminError(400, f"{name} must be an integer id in [0, 2**63)")
    return value
