"""Connections to berthd nodes: one gRPC channel and one shared Watch stream per node per hub."""

import asyncio
import dataclasses
import logging
import time

import grpc

from . import fencing, placement
from ._proto.berth.v1 import spawner_pb2 as pb
from ._proto.berth.v1 import spawner_pb2_grpc as pb_grpc

log = logging.getLogger("berthspawner")

State = pb.ServerStatus.State

# Reconnect backoff of the Watch stream: first retry, cap, and the retry interval of a daemon
# that does not implement Watch yet (an older berthd may be upgraded under a running hub).
WATCH_BACKOFF_FIRST = 0.2
WATCH_BACKOFF_MAX = 5.0
WATCH_UNIMPLEMENTED_RETRY = 60.0
# A placement the node's pushed capacity has not shown within this long stops counting (a
# safety net: it normally counts until the first CAPACITY event after the node showed it).
PLACED_FORGET = 30.0
# Keepalive pings on every node channel: interval, and how long an unanswered ping may wait.
KEEPALIVE_MS = 20_000
KEEPALIVE_TIMEOUT_MS = 10_000


def _read(path):
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def tls_credentials(ca_file, cert_file, key_file):
    """A node channel's TLS: the node's CA, and this client's certificate for mutual TLS."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file), private_key=_read(key_file), certificate_chain=_read(cert_file)
    )


def bearer(token_file):
    """Call metadata with the bearer token, read fresh so a rotated token is picked up. The
    token is never logged."""
    token = _read(token_file)
    if token is None:
        return ()
    return (("authorization", f"Bearer {token.decode().strip()}"),)


class Node:
    """One berthd: address, credentials, channel, and the Watch cache of its servers."""

    def __init__(self, name, address, ca_file="", cert_file="", key_file="", token_file=""):
        self.name = name
        self.address = address
        self._ca_file, self._cert_file, self._key_file = ca_file, cert_file, key_file
        self._token_file = token_file
        self._channel = None
        self._stub = None
        # Newest status of each key seen on Watch; trusted only while `watching`.
        self.statuses = {}
        self.watching = False
        # Bumped at every Watch event and every loss of the stream (capcache: an answer older
        # than the last change is not reused).
        self.generation = 0
        self._watch_task = None
        self._listeners = {}
        self._snapshot = {}
        self._first_failure = None
        # Starts this hub has sent and not yet seen answered: spawn id -> placement.Demand.
        self.inflight = {}
        # The node's capacity as its Watch stream pushes it (WatchRequest.capacity): the newest
        # NodeCapacity, None while the stream is down or the daemon does not push (older berthd).
        self.capacity = None
        self._candidate = None
        # Whether to ask the node for pushed capacity (BerthSpawner.capacity_push).
        self.want_capacity = True
        # Spawns this hub placed on the node that its pushed capacity may not show yet:
        # spawn id -> _Placed. Counted in placement until a CAPACITY event shows them.
        self.placed = {}
        # Bumped at every new Watch stream: a stream begun after a Start was answered shows it
        # in its first CAPACITY event.
        self.stream_epoch = 0
        # The node's fence time (NodeCapacity.fence_after_seconds) from its last capacity
        # answer: 0 = it does not fence, None = not known yet (see fencing.py).
        self.fence_after = None
        # Its stop grace (NodeCapacity.stop_grace_seconds), None = not known yet.
        self.stop_grace = None

    def metadata(self):
        """Call metadata: the bearer token (see `bearer`)."""
        return bearer(self._token_file)

    def stub(self):
        """The Spawner stub (the channel is created on first use, in the running loop)."""
        if self._stub is None:
            opts = [
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                # HTTP/2 pings: a node that vanishes without closing its connections (power
                # loss, a network cut) ends the Watch stream within ~30 s, instead of leaving
                # a silent stream whose cache would vouch for dead servers forever.
                ("grpc.keepalive_time_ms", KEEPALIVE_MS),
                ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.max_pings_without_data", 0),
            ]
            if self._ca_file or self._cert_file:
                creds = tls_credentials(self._ca_file, self._cert_file, self._key_file)
                self._channel = grpc.aio.secure_channel(self.address, creds, options=opts)
            else:
                self._channel = grpc.aio.insecure_channel(self.address, options=opts)
            self._stub = pb_grpc.SpawnerStub(self._channel)
        return self._stub

    async def call(self, method, request, timeout):
        """A unary call that records whether the node answered (for the unreachable grace)."""
        try:
            answer = await getattr(self.stub(), method)(request, metadata=self.metadata(), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                self.note_failure()
            else:
                self.note_success()
            raise
        self.note_success()
        return answer

    async def servers_of(self, user, timeout):
        """The node's servers of `user` (List), or None when the node does not answer."""
        try:
            return list((await self.call("List", pb.ListRequest(user=user), timeout)).servers)
        except grpc.aio.AioRpcError as e:
            log.warning("berth: List on %s failed: %s", self.name, e.code().name)
            return None

    async def close(self):
        """Ends the Watch stream and closes the channel."""
        if self._watch_task is not None:
            self._watch_task.cancel()
            await asyncio.gather(self._watch_task, return_exceptions=True)
        if self._channel is not None:
            await self._channel.close()
        self._channel = self._stub = self._watch_task = None
        self.watching = False

    # ---- Watch ------------------------------------------------------------------------------

    def listen(self, user, server, callback):
        """Calls `callback(status)` when the server's status changes on this node, and
        `callback(None)` when a fresh snapshot no longer holds the server."""
        self._listeners[(user, server)] = callback
        self.ensure_watch()

    def unlisten(self, user, server):
        self._listeners.pop((user, server), None)

    def ensure_watch(self):
        if self._watch_task is None or self._watch_task.done():
            self._watch_task = asyncio.ensure_future(self._watch())

    def cached(self, user, server, container_id):
        """The Watch cache's status of our container, or None when the cache cannot tell
        (not watching, or the key last showed another container: ask Poll instead)."""
        if not self.watching:
            return None
        status = self.statuses.get((user, server))
        if status is None or status.container_id != container_id:
            return None
        return status

    async def _watch(self):
        """Keeps one Watch stream open, reconnecting with capped backoff."""
        backoff = WATCH_BACKOFF_FIRST
        while True:
            self._snapshot = {}
            self.stream_epoch += 1
            try:
                request = pb.WatchRequest(snapshot=True, capacity=self.want_capacity)
                stream = self.stub().Watch(request, metadata=self.metadata())
                async for ev in stream:
                    backoff = WATCH_BACKOFF_FIRST
                    self.note_success()
                    self._on_event(ev)
                raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None, "watch ended")
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.generation += 1
                self.capacity = None
                was_watching, self.watching = self.watching, False
                code = e.code() if isinstance(e, grpc.aio.AioRpcError) else None
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    # Degrade to Poll: the hub's own poll interval finds deaths.
                    log.info("berth: node %s has no Watch; using Poll", self.name)
                    await asyncio.sleep(WATCH_UNIMPLEMENTED_RETRY)
                    continue
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    self.note_failure()
                # Warn once per outage, not at every retry.
                level = logging.WARNING if was_watching else logging.DEBUG
                log.log(level, "berth: watch of node %s lost (%s); retrying", self.name, code or e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, WATCH_BACKOFF_MAX)

    def _on_event(self, ev):
        self.generation += 1
        if ev.kind == pb.WatchEvent.CAPACITY:
            self.capacity = ev.capacity
            self.fence_after = ev.capacity.fence_after_seconds
            self.stop_grace = ev.capacity.stop_grace_seconds
            self._reflected()
            return
        self._seen(ev.status.spawn_id)
        if ev.kind == pb.WatchEvent.SNAPSHOT:
            self._snapshot[(ev.status.key.user, ev.status.key.server_name)] = ev.status
            return
        if ev.kind == pb.WatchEvent.SNAPSHOT_END:
            # The snapshot replaces what an earlier stream left: a server removed while the
            # stream was down is no longer in the cache. Listeners re-check, as they may have
            # missed their server's death.
            self.statuses, self._snapshot = self._snapshot, {}
            self.watching = True
            for k, cb in list(self._listeners.items()):
                self._notify(k, cb, self.statuses.get(k))
            # A node back from a partition may still run a server this hub has since
            # started elsewhere.
            for st in list(self.statuses.values()):
                fencing.check_duplicate(self, st)
            return
        s = ev.status
        k = (s.key.user, s.key.server_name)
        self.statuses[k] = s
        fencing.check_duplicate(self, s)
        cb = self._listeners.get(k)
        if cb is not None:
            self._notify(k, cb, s)

    # ---- pushed capacity --------------------------------------------------------------------

    def pushed(self):
        """The node's pushed NodeCapacity while its Watch stream is up, else None."""
        return self.capacity if self.watching else None

    def pushed_candidate(self):
        """The placement.Candidate of the pushed answer (converted once per answer; a copy, as
        the caller writes its in-flight counts into it), or None."""
        c = self.pushed()
        if c is None:
            return None
        if self._candidate is None or self._candidate[0] is not c:
            self._candidate = (c, placement.from_capacity(self.name, c, pushed=True))
        return dataclasses.replace(self._candidate[1])

    def place(self, spawn_id, demand):
        """This hub sends a Start of `spawn_id` to the node: it counts in placement (as in
        flight, then as placed) until the node's pushed capacity shows it."""
        self.inflight[spawn_id] = demand
        self.placed[spawn_id] = _Placed(demand)

    def placed_answered(self, spawn_id, started):
        """The Start of `spawn_id` was answered: no longer in flight; if it started, it counts
        on until a CAPACITY event after the node showed it, or one on a newer stream."""
        self.inflight.pop(spawn_id, None)
        p = self.placed.get(spawn_id)
        if p is None:
            return
        if not started:
            del self.placed[spawn_id]
            return
        p.answered = time.monotonic()
        p.epoch = self.stream_epoch

    def unreflected(self):
        """Demands of the spawns this hub placed that the pushed capacity may not show yet."""
        now = time.monotonic()
        for sid, p in list(self.placed.items()):
            if p.answered is not None and now - p.answered > PLACED_FORGET:
                del self.placed[sid]
        return {sid: p.demand for sid, p in self.placed.items()}

    def _seen(self, spawn_id):
        p = self.placed.get(spawn_id) if spawn_id else None
        if p is not None:
            p.seen = True

    def _reflected(self):
        # berthd numbers a CAPACITY event after every change it reflects: an answered spawn the
        # stream showed before this event (its admission came before any status of it), or one
        # answered before this stream began, is in this answer.
        for sid, p in list(self.placed.items()):
            if p.answered is not None and (p.seen or p.epoch < self.stream_epoch):
                del self.placed[sid]

    def _notify(self, k, cb, status):
        try:
            cb(status)
        except Exception:
            log.exception("berth: watch callback failed for %s on %s", k, self.name)

    # ---- reachability -----------------------------------------------------------------------

    def note_failure(self):
        if self._first_failure is None:
            self._first_failure = time.monotonic()

    def note_success(self):
        self._first_failure = None

    def unreachable_for(self):
        """Seconds since the node stopped answering (0 while it answers)."""
        return 0.0 if self._first_failure is None else time.monotonic() - self._first_failure


class _Placed:
    """A spawn this hub placed on a node, until its pushed capacity shows it."""

    __slots__ = ("demand", "seen", "answered", "epoch")

    def __init__(self, demand):
        self.demand = demand
        # The node's Watch showed a status of this spawn.
        self.seen = False
        # When the Start was answered (None while in flight), and the stream then.
        self.answered = None
        self.epoch = 0


_NODES = {}


def node_for(cfg):
    """The shared Node for a config entry (one channel and one Watch per node per hub)."""
    key = tuple(cfg.get(k, "") for k in ("address", "name", "token_file", "ca_file", "cert_file", "key_file"))
    node = _NODES.get(key)
    if node is None:
        node = Node(
            cfg.get("name") or cfg["address"],
            cfg["address"],
            cfg.get("ca_file", ""),
            cfg.get("cert_file", ""),
            cfg.get("key_file", ""),
            cfg.get("token_file", ""),
        )
        _NODES[key] = node
    return node


async def close_nodes():
    """Ends every shared Node's Watch and channel, and forgets them (hub shutdown, tests)."""
    nodes = list(_NODES.values())
    _NODES.clear()
    for node in nodes:
        await node.close()
