"""Integration: a ChatUser's wait between tasks (drivers.locust_user.until_dropped) against a real server.

It runs in a child process: importing Locust monkey-patches the process with gevent, as in a swarm (this test
process must stay unpatched)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import orjson
import pytest

from harness.procs import ServerProcess
from tests.integration.conftest import provision

pytestmark = pytest.mark.integration

_CHILD = textwrap.dedent('''
    import sys, time
    from argparse import Namespace
    import gevent, orjson
    from locust.env import Environment
    from drivers import locust_user
    from drivers.engine import EngineClient, engine_for
    from drivers import swarm
    from reference_server.protocol import user_token, DEV_SECRET

    url = sys.argv[1]

    class Receiver(locust_user.ChatUser):
        wait_time = locust_user.until_dropped(30)
        heartbeat_s = None

    class Short(Receiver):
        wait_time = locust_user.until_dropped(0.3)

    Receiver.host = url  # what Locust's runner sets from --host
    env = Environment(user_classes=[Receiver], host=url, parsed_options=Namespace())
    user = Receiver(env)
    user.hello = user._open()
    out = {"uid": user.uid}

    def replace():  # the same user connects again: the server closes the first connection (4002 replaced)
        gevent.sleep(0.3)
        out["second"] = EngineClient(url, user.uid, user_token(DEV_SECRET, user.uid), engine=engine_for(swarm.ledger),
                                     heartbeat_s=None)
        out["second"].connect()

    gevent.spawn(replace)
    t0 = time.perf_counter()
    out["dropped"] = [user.wait_time(), time.perf_counter() - t0, user.client.close_code, user.wants_reconnect]
    t0 = time.perf_counter()  # dropped and not yet reconnected: the task runs at once (it reconnects)
    out["to_reconnect"] = [user.wait_time(), time.perf_counter() - t0]
    user.offline = True  # closed on purpose: nothing to wait for, and no spinning either
    t0 = time.perf_counter()
    out["offline"] = [user.wait_time(), time.perf_counter() - t0]
    out.pop("second").close()
    short = Short(env)
    short.hello = short._open()
    t0 = time.perf_counter()  # open all along: the wait ends at its bound
    out["open"] = [short.wait_time(), time.perf_counter() - t0, short.client.closed]
    short.client.close()
    print(orjson.dumps(out).decode())
''')


def test_a_receiver_waits_until_its_connection_drops(server: ServerProcess) -> None:
    """until_dropped(30): a member with an open connection waits in wait_time until the server drops it (here
    0.3 s in: the same user connects again, 4002) — not 30 s, and not a fixed poll — then its task runs at once
    (ensure_connected); taken offline it waits the full bound instead of spinning; open all along it waits the
    bound (0.3 s here) and its task runs."""
    provision(server, 2, gid=1)  # uids 1 and 2: the child's two users
    proc = subprocess.run([sys.executable, "-c", _CHILD, server.ws_url], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = orjson.loads(proc.stdout.strip().splitlines()[-1])
    wait, took, code, wants = out["dropped"]
    assert wait == 0.0 and 0.25 <= took < 5, out
    assert code == 4002 and wants is True, out
    wait, took = out["to_reconnect"]
    assert wait == 0.0 and took < 0.5, out
    wait, took = out["offline"]
    assert wait == 30 and took < 0.5, out
    wait, took, closed = out["open"]
    assert wait == 0.0 and 0.25 <= took < 5 and closed is False, out
