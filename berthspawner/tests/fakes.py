"""An in-process fake berthd (a real grpc.aio server on 127.0.0.1 with scripted answers), and
a BerthSpawner that runs without a hub. For fast tests of berthspawner's own logic."""

import asyncio
from types import SimpleNamespace

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from berthspawner import BerthSpawner, errors
from berthspawner._proto.berth.v1 import spawner_pb2 as pb
from berthspawner._proto.berth.v1 import spawner_pb2_grpc as pb_grpc

GIB = 1 << 30
State = pb.ServerStatus.State


class FakeNode(pb_grpc.SpawnerServicer):
    """One fake node. Methods not overridden here answer UNIMPLEMENTED, as an older berthd
    does. `fail` maps a method name to a (code, details[, reason[, metadata]]) it answers
    instead; with a reason, the answer carries it as berthd's ErrorInfo."""

    def __init__(
        self, name, memory_free=8 * GIB, max_servers=0, running=0, draining=False, start_delay=0.0, labels=None
    ):
        self.name = name
        self.labels = labels or {}
        # Every StartRequest received, in order.
        self.starts = []
        self.memory_free = memory_free
        self.max_servers = max_servers
        self.running = running
        self.draining = draining
        self.start_delay = start_delay
        self.fail = {}
        self.watch = False
        # Push capacity on Watch when asked (a berthd with "watch-capacity"); `auto_push`: as
        # berthd does, a Start shows on Watch (STARTED) and a fresh CAPACITY follows.
        self.push = False
        self.auto_push = True
        self.watch_requests = []
        self.events = asyncio.Queue()
        self.servers = {}
        # Named volumes made from {user}/{server} templates: name -> (user, server, last start).
        self.volumes = {}
        self.blobs = {}
        self.calls = []
        self.metadata = []
        self.server = None
        self.address = ""
        # Images Capacity reports; events Progress sends before creating; the last Start.
        self.images = []
        self.progress_first = []
        self.started = None

    async def serve(self):
        self.server = grpc.aio.server()
        pb_grpc.add_SpawnerServicer_to_server(self, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.address = f"127.0.0.1:{port}"
        return self

    async def close(self):
        await self.server.stop(0)

    async def _enter(self, method, context):
        self.calls.append(method)
        self.metadata.append(dict(context.invocation_metadata()))
        if method in self.fail:
            code, message, *why = self.fail[method]
            trailer = ()
            if why:
                # As berthd sends it: a google.rpc.Status with an ErrorInfo of the reason.
                details = errors.encode_details(code.value[0], message, *why)
                trailer = ((errors.DETAILS_KEY, details),)
            await context.abort(code, message, trailing_metadata=trailer)

    def status(self, user, server=""):
        return self.servers.get((user, server))

    async def Capacity(self, request, context):
        await self._enter("Capacity", context)
        return self.capacity()

    def capacity(self):
        return pb.NodeCapacity(
            node_id=self.name,
            allocatable=pb.Allocation(cpu=4, memory_bytes=self.memory_free),
            committed=pb.Allocation(),
            running_servers=self.running,
            max_servers=self.max_servers,
            draining=self.draining,
            conditions=[pb.Condition(type="Ready", status="True")],
            images=self.images,
            labels=self.labels,
        )

    async def Start(self, request, context):
        self.started = request
        await self._enter("Start", context)
        self.starts.append(request)
        await asyncio.sleep(self.start_delay)
        key = (request.key.user, request.key.server_name)
        cid = f"{self.name}-{request.spawn_id[:8]}"
        self.servers[key] = pb.ServerStatus(
            key=request.key,
            state=State.RUNNING,
            container_id=cid,
            spawn_id=request.spawn_id,
            node_id=self.name,
            image=request.image,
        )
        self.running += 1
        if self.push and self.auto_push:
            self.events.put_nowait(pb.WatchEvent(kind=pb.WatchEvent.STARTED, status=self.servers[key]))
            self.push_capacity()
        for v in request.volumes:
            if not v.source.startswith("/") and ("{user}" in v.source or "{server}" in v.source):
                name = v.source.replace("{user}", request.key.user).replace("{server}", request.key.server_name)
                server = request.key.server_name if "{server}" in v.source else ""
                self.volumes[name] = (request.key.user, server, len(self.calls))
        return pb.StartResponse(
            url=f"http://{self.name}:1", container_id=cid, node_id=self.name, spawn_id=request.spawn_id
        )

    async def ListVolumes(self, request, context):
        await self._enter("ListVolumes", context)
        out = []
        for name, (user, server, used) in sorted(self.volumes.items()):
            if request.user in ("", user):
                out.append(
                    pb.UserVolume(
                        name=name,
                        owner=pb.ServerKey(user=user, server_name=server),
                        driver="local",
                        size_bytes=-1,
                        last_used=Timestamp(seconds=used),
                    )
                )
        return pb.ListVolumesResponse(node_id=self.name, volumes=out)

    async def GetState(self, request, context):
        await self._enter("GetState", context)
        blob, version = self.blobs.get((request.key.user, request.key.server_name), (b"", 0))
        return pb.StateRecord(key=request.key, blob=blob, version=version)

    async def PutState(self, request, context):
        await self._enter("PutState", context)
        key = (request.key.user, request.key.server_name)
        _, version = self.blobs.get(key, (b"", 0))
        if version != request.expected_version:
            await context.abort(grpc.StatusCode.ABORTED, "stale version")
        self.blobs[key] = (request.blob, version + 1)
        return pb.StateRecord(key=request.key, blob=request.blob, version=version + 1)

    async def Poll(self, request, context):
        await self._enter("Poll", context)
        return self.status(request.key.user, request.key.server_name) or pb.ServerStatus(
            key=request.key, state=State.ABSENT
        )

    async def List(self, request, context):
        await self._enter("List", context)
        return pb.ListResponse(
            servers=[s for (u, _), s in self.servers.items() if u == request.user or not request.user]
        )

    async def Stop(self, request, context):
        await self._enter("Stop", context)
        key = (request.key.user, request.key.server_name)
        s = self.servers.get(key)
        if s is not None:
            s.state = State.EXITED
            s.exit_code = 0
            if request.remove:
                del self.servers[key]
        return pb.StopResponse(status=s)

    async def Progress(self, request, context):
        await self._enter("Progress", context)
        for ev in self.progress_first:
            yield ev
        yield pb.ProgressEvent(progress=20, message="creating", phase=pb.ProgressEvent.CREATING)
        yield pb.ProgressEvent(progress=60, message="waiting for HTTP", phase=pb.ProgressEvent.WAITING_FOR_HTTP)
        yield pb.ProgressEvent(progress=100, message="ready", ready=True, phase=pb.ProgressEvent.READY)

    async def Prepull(self, request, context):
        await self._enter("Prepull", context)
        for image in request.images:
            if image in self.images:
                yield pb.PrepullEvent(image=image, done=True)
                continue
            yield pb.PrepullEvent(
                image=image,
                progress=pb.ProgressEvent(phase=pb.ProgressEvent.PULLING, message=f"Pulling {image}", image=image),
            )
            if image.endswith(":missing"):
                yield pb.PrepullEvent(image=image, error=f"cannot pull image {image!r}", reason="IMAGE_PULL_FAILED")
            else:
                self.images.append(image)
                yield pb.PrepullEvent(image=image, done=True)

    async def Watch(self, request, context):
        await self._enter("Watch", context)
        if not self.watch:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no Watch in this berthd")
        self.watch_requests.append(request)
        for s in list(self.servers.values()):
            yield pb.WatchEvent(kind=pb.WatchEvent.SNAPSHOT, status=s)
        yield pb.WatchEvent(kind=pb.WatchEvent.SNAPSHOT_END)
        if self.push and request.capacity:
            yield pb.WatchEvent(kind=pb.WatchEvent.CAPACITY, capacity=self.capacity())
        while True:
            ev = await self.events.get()
            if ev is None:
                return
            if ev.kind == pb.WatchEvent.CAPACITY and not (self.push and request.capacity):
                continue
            yield ev

    def push_capacity(self):
        """Watch pushes the node's capacity now (to streams that asked for it)."""
        self.events.put_nowait(pb.WatchEvent(kind=pb.WatchEvent.CAPACITY, capacity=self.capacity()))

    def exit(self, user, server="", code=137):
        """The server's container dies (as if killed from outside); Watch reports it."""
        s = self.servers[(user, server)]
        s.state = State.EXITED
        s.exit_code = code
        self.events.put_nowait(pb.WatchEvent(kind=pb.WatchEvent.EXITED, status=s))


class HublessSpawner(BerthSpawner):
    """A BerthSpawner outside a hub: a made-up user, server name and server, a small env."""

    server_name = ""

    @property
    def name(self):
        return self.server_name

    @property
    def server(self):
        suffix = f"{self.server_name}/" if self.server_name else ""
        return SimpleNamespace(base_url=f"{self.user.url}{suffix}")

    def get_env(self):
        return {"JUPYTERHUB_API_TOKEN": "secret-token"}


def spawner(nodes, user="alice", name="", **kw):
    """A spawner using the fake nodes (list of FakeNode or node config dicts; None: from config)."""
    if nodes is not None:
        kw["nodes"] = [n if isinstance(n, dict) else {"name": n.name, "address": n.address} for n in nodes]
    s = HublessSpawner(user=SimpleNamespace(name=user, url=f"/user/{user}/"), **kw)
    s.server_name = name
    return s


async def wait_until(what, check, timeout=5.0):
    """Waits for check() to be true, at most `timeout` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
