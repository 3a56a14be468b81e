"""Never two servers for one user: the hub's side of fencing.

The invariant: two servers of one (user, server name) never run at the same moment on two
nodes, unless an operator has declared the first node lost.

- A node that fences (berthd `[fencing] stop_after_hub_lost_seconds`, or the server's own
  `fence_after`) stops its servers once the hub has been out of touch for its fence time; it
  reports that time (Capacity, Version), dead-connection detection included.
- When a node stops answering for `unreachable_grace`, poll() reports its server gone (the hub
  drops its route) but the spawner remembers where it was (`Lost`, kept in the hub's database
  across a hub restart). A new start() of that server is refused, with a sentence saying where
  the server is and when it will be stopped there, until the node answers again (its old server
  is then stopped before the new one starts), the node's fence time plus a margin has passed
  since the hub lost it, or an operator declares the node lost (`POST
  /hub/api/berth/nodes/<node>/lost`, admin; see `handlers`).
- When a node answers again, any server of a key this hub runs on another node is stopped on it
  at once (its Watch snapshot shows it; `check_duplicate`) and logged.
"""

import asyncio
import logging
import math
import time

from ._proto.berth.v1 import spawner_pb2 as pb

log = logging.getLogger("berthspawner")

# berthd closes a dead hub's Watch stream within this long (daemon/src/runtime/lifecycle/
# fence.rs, DEAD_PEER_DETECTION): added to a server's own fence_after, as berthd's reported
# fence time already includes it.
DEAD_PEER_DETECTION = 15
# Beyond a node's fence time and stop grace: its one-second fencing tick, slack.
MARGIN = 10
# A node's stop grace when it has not told it yet (berthd's default is 10 s).
UNKNOWN_STOP_GRACE = 60

# (user, server name) -> the node this hub runs it on.
_placed = {}
# Node name -> wall-clock time an operator declared it lost.
_released = {}
_stopping = set()


def place(key, node_name):
    """This hub runs `key` on `node_name` (a start succeeded, or the state says so)."""
    _placed[key] = node_name


def unplace(key, node_name):
    """This hub no longer runs `key` on `node_name`."""
    if _placed.get(key) == node_name:
        del _placed[key]


def release(node_name, at=None):
    """An operator declares `node_name` lost: servers believed there may be started elsewhere."""
    _released[node_name] = time.time() if at is None else at
    log.warning("berth: node %s declared lost by an operator; its servers may start elsewhere", node_name)


def released_after(node_name, since):
    """Whether an operator declared `node_name` lost after `since` (wall clock)."""
    at = _released.get(node_name)
    return at is not None and at >= since


def release_at(since, fence_seconds, stop_grace):
    """When a server the hub lost at `since` is surely stopped by its node's fencing (its fence
    time, then the node's `stop_grace` from SIGTERM to SIGKILL), or None when its node does not
    fence it."""
    if not fence_seconds:
        return None
    grace = UNKNOWN_STOP_GRACE if stop_grace is None else stop_grace
    return since + fence_seconds + grace + MARGIN


def fence_seconds(spawner, node):
    """The fence time that applies to `spawner`'s server on `node`, in seconds from the hub's
    last contact; 0 when it is never fenced (or the node's setting is unknown)."""
    if spawner.never_fence:
        return 0
    if spawner.fence_after:
        return spawner.fence_after + DEAD_PEER_DETECTION
    return node.fence_after or 0


def refusal(node_name, until, now=None):
    """The user's sentence for a start refused while the server may still run on `node_name`."""
    if until is None:
        return (
            f"Your server is still on {node_name}, which the hub cannot reach; "
            "an administrator can release it, or it comes back when that machine does."
        )
    minutes = max(1, math.ceil((until - (now or time.time())) / 60))
    when = "1 minute" if minutes == 1 else f"{minutes} minutes"
    return (
        f"Your server is still on {node_name}, which the hub cannot reach; it will be stopped there "
        f"in {when}, or an administrator can release it."
    )


def check_duplicate(node, status):
    """Called for each live server a node's Watch shows: one whose key this hub runs on another
    node is a duplicate left by a partition, stopped at once (kept, not removed)."""
    if status.state not in (pb.ServerStatus.RUNNING, pb.ServerStatus.STARTING):
        return
    key = (status.key.user, status.key.server_name)
    elsewhere = _placed.get(key)
    if elsewhere is None or elsewhere == node.name or (node.name, key) in _stopping:
        return
    log.warning(
        "berth: %s/%s runs on %s but this hub runs it on %s (a partition healed): stopping it on %s",
        key[0],
        key[1],
        node.name,
        elsewhere,
        node.name,
    )
    _stopping.add((node.name, key))

    async def stop():
        try:
            await node.call("Stop", pb.StopRequest(key=status.key, now=True), 60)
        except Exception as e:  # noqa: BLE001 - logged; the next snapshot tries again
            log.error("berth: stopping the duplicate %s/%s on %s failed: %s", key[0], key[1], node.name, e)
        finally:
            _stopping.discard((node.name, key))

    asyncio.ensure_future(stop())


def handlers():
    """Tornado handlers for `c.JupyterHub.extra_handlers` (the hub mounts them under
    /hub/): `POST /hub/api/berth/nodes/<node>/lost` with an admin token declares a node lost."""
    from jupyterhub.apihandlers.base import APIHandler
    from tornado import web

    class LostNodeHandler(APIHandler):
        async def post(self, node_name):
            if self.current_user is None or "admin:servers" not in self.expanded_scopes:
                raise web.HTTPError(403, "declaring a node lost takes the admin:servers scope")
            release(node_name)
            self.set_status(200)
            self.write({"node": node_name, "released_at": _released[node_name]})

    return [(r"/api/berth/nodes/([^/]+)/lost", LostNodeHandler)]
