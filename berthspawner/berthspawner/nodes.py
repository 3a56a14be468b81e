"""Connections to berthd nodes: one gRPC channel and one shared Watch stream per node."""

import asyncio
import logging
import time

import grpc

from ._proto.berth.v1 import spawner_pb2 as pb
from ._proto.berth.v1 import spawner_pb2_grpc as pb_grpc

log = logging.getLogger("berthspawner")

State = pb.ServerStatus.State


class Node:
    """One berthd: address, credentials, channel, and the Watch cache of its servers."""

    def __init__(self, name, address, ca_file="", cert_file="", key_file="", token_file=""):
        self.name = name
        self.address = address
        self._ca_file, self._cert_file, self._key_file = ca_file, cert_file, key_file
        self._token_file = token_file
        self._channel = None
        self._stub = None
        self.statuses = {}
        self.watching = False
        self._watch_task = None
        self._listeners = {}
        self.first_failure = None

    def metadata(self):
        """Call metadata: the bearer token, read fresh so a rotated token is picked up."""
        if not self._token_file:
            return ()
        with open(self._token_file) as f:
            token = f.read().strip()
        return (("authorization", f"Bearer {token}"),)

    def stub(self):
        """The Spawner stub (the channel is created on first use, in the running loop)."""
        if self._stub is None:
            opts = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]
            if self._ca_file or self._cert_file:
                read = lambda p: open(p, "rb").read() if p else None  # noqa: E731
                creds = grpc.ssl_channel_credentials(
                    root_certificates=read(self._ca_file),
                    private_key=read(self._key_file),
                    certificate_chain=read(self._cert_file),
                )
                self._channel = grpc.aio.secure_channel(self.address, creds, options=opts)
            else:
                self._channel = grpc.aio.insecure_channel(self.address, options=opts)
            self._stub = pb_grpc.SpawnerStub(self._channel)
        return self._stub

    def listen(self, user, server, callback):
        """Calls `callback(status)` when the server's status changes on this node."""
        self._listeners[(user, server)] = callback
        self.ensure_watch()

    def unlisten(self, user, server):
        self._listeners.pop((user, server), None)

    def ensure_watch(self):
        if self._watch_task is None or self._watch_task.done():
            self._watch_task = asyncio.ensure_future(self._watch())

    async def _watch(self):
        """Keeps one Watch stream open, reconnecting with capped backoff."""
        backoff = 0.2
        while True:
            try:
                stream = self.stub().Watch(pb.WatchRequest(snapshot=True), metadata=self.metadata())
                async for ev in stream:
                    backoff = 0.2
                    if ev.kind == pb.WatchEvent.SNAPSHOT_END:
                        self.watching = True
                        continue
                    s = ev.status
                    k = (s.key.user, s.key.server_name)
                    self.statuses[k] = s
                    cb = self._listeners.get(k)
                    if cb is not None and ev.kind != pb.WatchEvent.SNAPSHOT:
                        try:
                            cb(s)
                        except Exception:
                            log.exception("watch callback failed for %s on %s", k, self.name)
                raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None, "watch ended")
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if self.watching:
                    log.warning("watch of node %s lost (%s); reconnecting", self.name, e)
                self.watching = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def note_failure(self):
        if self.first_failure is None:
            self.first_failure = time.monotonic()

    def note_success(self):
        self.first_failure = None

    def unreachable_for(self):
        return 0.0 if self.first_failure is None else time.monotonic() - self.first_failure


_NODES = {}


def node_for(cfg):
    """The shared Node for a config entry (one channel and one Watch per node per hub)."""
    key = (cfg["address"], cfg.get("token_file", ""), cfg.get("ca_file", ""), cfg.get("cert_file", ""))
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
