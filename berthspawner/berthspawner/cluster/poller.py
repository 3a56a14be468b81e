"""Asks every node what the cluster page shows, every few seconds, only while a page is open.

Each round calls Capacity, List and Stats on every node at once (Version until it answers,
ListVolumes with sizes every VOLUMES_SECONDS: Docker walks the volumes for it), each call with
a short deadline, so a node that does not answer is shown down within one interval and one
deadline. Nobody looking, no calls: the nodes count this service's calls as the hub's (they
carry its certificate and token), so an idle page must not keep a node from noticing a hub that
is gone (fencing)."""

import asyncio
import logging
import time

import grpc

from .._proto.berth.v1 import spawner_pb2 as pb
from .._proto.berth.v1 import spawner_pb2_grpc as pb_grpc
from ..nodes import bearer, tls_credentials
from . import view

log = logging.getLogger("berthspawner.cluster")

# Deadline of each call: a node slower than this reads as down.
CALL_TIMEOUT = 2.5
# A page that has not asked for this long is closed: rounds stop.
ACTIVE_SECONDS = 30.0
VOLUMES_SECONDS = 10.0
# A node back after an outage is reconnected within this long (gRPC's default backoff grows to
# two minutes).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def failure(e):
    """A failed call in a few words: the gRPC code and berthd's (or gRPC's) message."""
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {e.details()}"
    if isinstance(e, OSError):
        return f"{e.strerror or e}: {e.filename}" if e.filename else str(e)
    return f"{type(e).__name__}: {e}"


class NodePoller:
    """One node's channel and what it last answered (`state`, a view.NodeState)."""

    def __init__(self, cfg, clock=time.time):
        self.cfg = cfg
        self.clock = clock
        self.state = view.NodeState(cfg.name, cfg.address, can_drain=bool(cfg.admin_socket))
        self._stub = None
        self._channel = None
        self._volumes_at = None

    def stub(self):
        if self._stub is None:
            if self.cfg.ca_file or self.cfg.cert_file:
                creds = tls_credentials(self.cfg.ca_file, self.cfg.cert_file, self.cfg.key_file)
                self._channel = grpc.aio.secure_channel(self.cfg.address, creds, options=CHANNEL_OPTIONS)
            else:
                self._channel = grpc.aio.insecure_channel(self.cfg.address, options=CHANNEL_OPTIONS)
            self._stub = pb_grpc.SpawnerStub(self._channel)
        return self._stub

    def volumes_soon(self):
        """The next round lists volumes (a move ended)."""
        self._volumes_at = None

    async def poll(self):
        """One round of calls; never raises."""
        try:
            metadata = bearer(self.cfg.token_file)
        except OSError as e:
            self._down(f"token file: {failure(e)}")
            return
        stub = self.stub()

        def call(method, request):
            return getattr(stub, method)(request, metadata=metadata, timeout=CALL_TIMEOUT)

        now = time.monotonic()
        want_volumes = self._volumes_at is None or now - self._volumes_at >= VOLUMES_SECONDS
        calls = {
            "capacity": call("Capacity", pb.CapacityRequest()),
            "list": call("List", pb.ListRequest()),
            "stats": call("Stats", pb.StatsRequest()),
        }
        if self.state.version is None:
            calls["version"] = call("Version", pb.VersionRequest())
        if want_volumes:
            calls["volumes"] = call("ListVolumes", pb.ListVolumesRequest(sizes=True))
        answers = dict(zip(calls, await asyncio.gather(*calls.values(), return_exceptions=True)))
        cap = answers["capacity"]
        if isinstance(cap, BaseException):
            self._down(failure(cap))
            return
        st = self.state
        if st.up is False:
            log.info("berth cluster page: node %s answers again", st.name)
        st.up, st.error, st.down_since, st.last_answer = True, "", None, self.clock()
        st.capacity = cap
        if not isinstance(answers["list"], BaseException):
            st.servers = list(answers["list"].servers)
        stats = answers["stats"]
        if not isinstance(stats, BaseException):
            fresh = {s.container_id: s for s in stats.servers}
            st.cpu = view.cpu_rates(st.stats, fresh)
            st.stats = fresh
        v = answers.get("version")
        if v is not None and not isinstance(v, BaseException):
            st.version = v
        vols = answers.get("volumes")
        if vols is not None and not isinstance(vols, BaseException):
            st.volumes = list(vols.volumes)
            self._volumes_at = now

    def _down(self, why):
        st = self.state
        if st.up is not False:
            log.warning("berth cluster page: node %s does not answer: %s", st.name, why)
            st.down_since = self.clock()
        st.up, st.error = False, why
        # Asked again when it is back: it may have been upgraded.
        st.version = None
        st.cpu = {}

    async def close(self):
        if self._channel is not None:
            await self._channel.close()
        self._channel = self._stub = None


class Poller:
    """Every node's NodePoller, and the loop that runs rounds while a page is open."""

    def __init__(self, config, clock=time.time):
        self.interval = config.interval
        self.clock = clock
        self.nodes = [NodePoller(n, clock) for n in config.nodes]
        self._asked = None
        self._wake = None

    def node(self, name):
        return next((n for n in self.nodes if n.cfg.name == name), None)

    def asked(self):
        """A page asked for the state: rounds run (at once, if they had stopped)."""
        idle = not self._active()
        self._asked = time.monotonic()
        if idle and self._wake is not None:
            self._wake.set()

    def _active(self):
        return self._asked is not None and time.monotonic() - self._asked < ACTIVE_SECONDS

    async def round(self):
        await asyncio.gather(*(n.poll() for n in self.nodes))

    async def refresh(self, name):
        """Asks one node now (after a drain), without waiting for the next round."""
        n = self.node(name)
        if n is not None:
            await n.poll()

    def view(self):
        now = self.clock()
        return [view.node(n.state, now) for n in self.nodes]

    async def close(self):
        await asyncio.gather(*(n.close() for n in self.nodes))

    async def run(self):
        self._wake = asyncio.Event()
        while True:
            if self._active():
                await self.round()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.interval)
                except asyncio.TimeoutError:
                    pass
            else:
                await self._wake.wait()
            self._wake.clear()
