"""What the cluster page's buttons do: drain and undrain a node over its Admin socket, and
move a user's volumes between nodes (move.py's logic, in a thread, its progress kept here)."""

import itertools
import logging
import threading
import time

import grpc

from .. import move
from .._proto.berth.v1 import admin_pb2, admin_pb2_grpc

log = logging.getLogger("berthspawner.cluster")

ADMIN_TIMEOUT = 10.0
# Finished moves kept on the page.
KEEP_MOVES = 20
# Lines of a move's log kept for the page.
KEEP_LINES = 50


class ActionError(Exception):
    """A refused action: the HTTP status and the sentence for the page."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


async def set_draining(node, draining, reason=""):
    """Drains (or undrains) `node` (a config.NodeConfig) through its Admin socket: berthd serves
    the Admin service only there, never on its network listener. Returns the node's answer."""
    if not node.admin_socket:
        raise ActionError(
            409,
            f"{node.name}: the page has no Admin socket for this node (berthd serves drain only "
            "there); run `berthctl drain` on the node, or give the page its socket (admin_sockets)",
        )
    # grpc-python would send the socket path as :authority, which berthd's HTTP/2 refuses.
    options = [("grpc.default_authority", "localhost")]
    async with grpc.aio.insecure_channel(f"unix:{node.admin_socket}", options=options) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        method = stub.Drain if draining else stub.Undrain
        try:
            answer = await method(admin_pb2.DrainRequest(reason=reason), timeout=ADMIN_TIMEOUT)
        except grpc.aio.AioRpcError as e:
            raise ActionError(502, f"{node.name}: Admin socket {node.admin_socket}: {e.code().name}: {e.details()}")
    log.info("berth cluster page: node %s %s (%s)", node.name, "drained" if draining else "undrained", reason or "-")
    return answer.draining


class Move:
    """One move of a user's volumes, as the page shows it."""

    def __init__(self, move_id, user, server, source, target, clock):
        self.id = move_id
        self.user, self.server = user, server
        self.source, self.target = source, target
        self.state = "running"
        self.lines = []
        self.volumes = []
        self.done = 0
        self.current = ""
        self.bytes = 0
        self.error = ""
        self.started = clock()
        self.ended = None

    def note(self, line):
        self.lines = (self.lines + [line])[-KEEP_LINES:]
        # move.py's line once a volume's source copy is gone: that volume has moved.
        if ": removed from " in line:
            self.done += 1

    def copied(self, volume, n):
        self.current, self.bytes = volume, n

    def listed(self, volumes):
        self.volumes = [v.name for v in volumes]

    def to_json(self):
        total = len(self.volumes)
        if self.state == "running" and self.current:
            progress = f"volume {min(self.done + 1, total)} of {total}: {self.current}, {move.mib(self.bytes)} copied"
        elif self.state == "running":
            progress = "checking the nodes"
        else:
            progress = f"{self.done} of {total} volume(s) moved"
        return {
            "id": self.id,
            "user": self.user,
            "server": self.server,
            "from": self.source,
            "to": self.target,
            "state": self.state,
            "progress": progress,
            "error": self.error,
            "lines": self.lines[-5:],
        }


class Moves:
    """The page's volume moves: at most one per user and source node at a time."""

    def __init__(self, config, on_end=None, clock=time.time):
        self.config = config
        # Called with the two node names when a move ends (the poller lists their volumes again).
        self.on_end = on_end
        self.clock = clock
        self._moves = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def start(self, user, server, source, target):
        """Starts moving the volumes of (`user`, `server`) from `source` to `target` (node
        names); the work runs in a thread. Returns the Move."""
        if not isinstance(user, str) or not user:
            raise ActionError(400, "user: a user name is needed")
        if not isinstance(server, str):
            raise ActionError(400, 'server: a server name ("" for the default server) is needed')
        src, dst = self.config.node(source), self.config.node(target)
        for name, n in ((source, src), (target, dst)):
            if n is None:
                raise ActionError(400, f"{name!r} is not one of the hub's nodes")
        if source == target:
            raise ActionError(400, f"the volumes are already on {source}")
        with self._lock:
            for m in self._moves:
                if m.state == "running" and m.user == user and m.source == source:
                    raise ActionError(409, f"a move of {user}'s volumes from {source} is under way")
            m = Move(next(self._ids), user, server, source, target, self.clock)
            self._moves.append(m)
            finished = [x for x in self._moves if x.state != "running"]
            for old in finished[:-KEEP_MOVES]:
                self._moves.remove(old)
        threading.Thread(target=self._run, args=(m, src, dst), name=f"berth-move-{m.id}", daemon=True).start()
        return m

    def _run(self, m, src, dst):
        log.info("berth cluster page: moving %s/%s's volumes from %s to %s", m.user, m.server, src.name, dst.name)
        source = move.Node(src.address, **src.credentials())
        target = move.Node(dst.address, **dst.credentials())
        try:
            move.move_user(source, target, m.user, m.server, False, m.note, m.copied, m.listed)
            m.state = "done"
        except move.MoveError as e:
            m.state, m.error = "failed", str(e)
        except Exception as e:  # noqa: BLE001 - shown on the page and logged
            log.exception("berth cluster page: move %s failed", m.id)
            m.state, m.error = "failed", f"{type(e).__name__}: {e}"
        finally:
            m.ended = self.clock()
            source.close()
            target.close()
            log.info("berth cluster page: move %s of %s/%s: %s %s", m.id, m.user, m.server, m.state, m.error)
            if self.on_end is not None:
                self.on_end(src.name, dst.name)

    def to_json(self):
        return [m.to_json() for m in reversed(self._moves)]
