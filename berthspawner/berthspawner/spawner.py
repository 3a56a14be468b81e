"""BerthSpawner: JupyterHub single-user servers in Docker containers on berthd nodes."""

import asyncio
import json
import time
import uuid

import grpc
import jupyterhub
from jupyterhub.spawner import Spawner
from traitlets import (
    Any,
    Bool,
    CaselessStrEnum,
    Dict,
    Float,
    Integer,
    List,
    TraitError,
    Unicode,
    Union,
    default,
    validate,
)

from . import capcache, errors, fencing, form, nodecheck, placement, profiles, request, userfacing
from ._compat import SpawnException
from ._proto.berth.v1 import spawner_pb2 as pb
from .dsnames import DockerSpawnerNames
from .nodes import State, node_for
from .options import ContainerOptions

# Mixins holding BerthSpawner's traits by concern; their names are no config sections.
_MIXINS = ("ContainerOptions", "DockerSpawnerNames")


class BerthSpawner(ContainerOptions, DockerSpawnerNames, Spawner):
    """Runs each server as a Docker container on one of the configured berthd nodes."""

    @classmethod
    def section_names(cls):
        # A DockerSpawner configuration applies as written (c.DockerSpawner.image = …): its
        # section is read after Spawner's and before BerthSpawner's, which wins.
        names = [n for n in super().section_names() if n not in _MIXINS]
        at = names.index("Spawner") + 1
        return [*names[:at], "DockerSpawner", *names[at:]]

    nodes = List(
        Dict(),
        config=True,
        help="""The berthd nodes: a list of dicts with `address` ("host:port") and optionally
        `name`, `ca_file` (CA of the node's TLS certificate), `cert_file`/`key_file` (this
        hub's client certificate, for mutual TLS) and `token_file` (bearer token).""",
    )
    placement = Union(
        [Unicode(), Any()],
        default_value="spread",
        config=True,
        help="""How to choose among the nodes that fit: "spread" (most free memory first),
        "pack" (least free memory first), or a callable(candidates, demand) -> ordered list.""",
    )
    image = Unicode(
        config=True,
        help="""Image of the servers; a node pulls it as `pull_policy` says.
        Default: JupyterHub's single-user image of the hub's version.""",
    )
    pull_policy = CaselessStrEnum(
        ["ifnotpresent", "always", "never", "skip"],
        default_value="ifnotpresent",
        config=True,
        help="""When the node pulls the image (DockerSpawner's values): "ifnotpresent" when it
        does not have it, "always" before every start (unchanged layers are not downloaded
        again), "never" (a node without the image is skipped; "skip" means the same). Nodes
        that hold the image are preferred. The progress bar shows the pull's bytes; a failed
        pull (no such image, registry down, credentials refused) fails the spawn at once.""",
    )
    prepull_images = List(
        Unicode(),
        config=True,
        help="""Images `berthspawner.prepull.prepull_at_start(c)` pulls onto every node when the
        hub starts (off unless jupyterhub_config.py calls it). Default: `image` and the images of
        `allowed_images`.""",
    )
    allowed_images = Union(
        [List(Unicode()), Dict(), Unicode(), Any()],
        default_value=[],
        config=True,
        help="""Images a user may choose with user_options['image'], as in DockerSpawner: a list,
        a dict display name -> image, "*" (any image the node's policy allows), or a callable
        taking the spawner and returning one of those. With two or more, the spawn form offers
        a picker.""",
    )
    profile_list = Union(
        [List(Dict()), Any()],
        default_value=[],
        config=True,
        help="""Profiles to choose from in the spawn form, as in KubeSpawner: a list of dicts with
        `display_name`, `slug`, `description`, `default` and `berth_override` (any BerthSpawner
        option: image, mem_limit, cpu_guarantee, node_selector, volumes, ...), and optionally
        `profile_options` ({name: {display_name, choices: {key: {display_name, default,
        berth_override}}}}); or a callable (maybe async) taking the spawner and returning such
        a list. The REST API takes user_options {"profile": slug, <option name>: <choice key>}.""",
    )
    node_selector = Dict(
        Unicode(),
        config=True,
        help="""Node labels the server's node must carry ({"gpu": "a100"}), matched against each
        node's `[node] labels`; usually set per profile through berth_override.""",
    )
    volumes = Dict(
        config=True,
        help="""Named volumes: {source: target} or {source: {"bind": target, "mode": "ro"}};
        `{user}` and `{server}` in a source are expanded (escaped) by the node.""",
    )
    volume_affinity = Unicode(
        None,
        allow_none=True,
        config=True,
        help="""Where a user's server goes once their files are on a node. "required": only that
        node; when it cannot take the server the spawn fails with a 503 naming the node and why
        (never an empty home elsewhere). "preferred": that node first, another node with a fresh
        volume when it cannot (the progress bar says so). "none": any node (shared storage).
        Default: "required" when `volumes` has a node-local named volume templated with {user} or
        {server}, else "none".""",
    )
    gpus = Integer(
        0,
        min=0,
        config=True,
        help="""Devices of the nodes' class `gpu_class` the server gets to itself (0 = none). Only
        nodes with that many free are tried, those with the most free first; a node assigns
        specific devices and keeps them until the server stops. A profile may override it.""",
    )
    gpu_class = Unicode("", config=True, help='The node device class `gpus` counts ("" = "gpu").')
    gpu_model = Unicode("", config=True, help='Only devices of this model, e.g. "NVIDIA A100-SXM4-40GB" ("" = any).')
    remove = Bool(
        False,
        config=True,
        help="""Delete the container when the server stops. When False (DockerSpawner's default) the
        stopped container is kept and the next start resumes it when nothing that matters changed
        (image, command, env, resources, mounts, ports, options), so what the user installed into
        it survives; otherwise it is recreated and the progress bar says what changed.""",
    )
    container_port = Integer(8888, config=True, help="Port the server listens on in its container.")
    stop_grace = Integer(10, config=True, help="Seconds between SIGTERM and SIGKILL on stop.")
    unreachable_grace = Float(
        120.0,
        config=True,
        help="""How long a node may fail to answer before poll() reports its servers gone.
        The hub polls every 30 s by default: 120 s tolerates three missed polls, a daemon
        restart or a short network cut, without ending a session that is likely still alive.""",
    )
    fence_after = Integer(
        0,
        config=True,
        help="""Seconds without the hub after which this server's node stops it (fencing, so
        that a node cut off from the hub never runs it beside a replacement); 0 = the node's
        `[fencing] stop_after_hub_lost_seconds`. A profile may set it.""",
    )
    never_fence = Bool(
        False,
        config=True,
        help="""Never stop this server for lack of the hub (a long job that must outlive a
        partition). Its replacement then waits for the node, or for an administrator to declare
        the node lost. A profile may set it.""",
    )
    rpc_timeout = Float(15.0, config=True, help="Deadline of each RPC except Start and Stop.")
    capacity_ttl = Float(
        5.0,
        config=True,
        help="""How long a node's Capacity answer may be reused while its Watch stream is up and
        has shown no change on the node since (0: ask every node at every spawn). Saves asking
        every node at each spawn; a drain or config change is seen within this time, and a node
        that refuses a Start hands the spawn on anyway.""",
    )

    capacity_push = Bool(
        True,
        config=True,
        help="""Ask each node to push its capacity on its Watch stream, and place servers by the
        pushed answers (no Capacity call per spawn). Nodes whose daemon does not push (older
        berthd) or whose stream is down are asked as capacity_ttl says. False: never push
        (the benchmark's baseline).""",
    )

    # Per-server state (get_state/load_state): where the server runs, and where its files are
    # (kept across stops; also found again by asking the nodes when the hub's state is lost).
    node_name = Unicode("")
    spawn_id = Unicode("")
    container_id = Unicode("")
    home_node = Unicode("")
    # Where our last server may still run on a node the hub lost touch with (fencing.py):
    # {"node", "container_id", "since", "until"}; kept across stops, like home_node.
    # A plain attribute, not a trait: no profile can set it.
    lost = None
    # Said once on the progress stream of the current start (e.g. "a fresh volume").
    _notice = ""
    # Set by progress() once the current attempt's events are relayed (None: nobody follows).
    # (attempt, set when progress() has followed its Progress stream to the end)
    _attempt_ended = None
    # Whether progress() runs (a page follows the spawn).
    _following = False
    # (attempt, the queue progress() relays it from)
    _relay = None
    # (attempt, the detail of its failure)
    _failed_detail = None
    # Node attempts of the current start(), followed by progress().
    _attempt = 0
    # The chosen profile's option names (user_options keys it consumes), and the values its
    # overrides replaced (put back at the next start).
    _profile_option_names = frozenset()
    _profile_saved = None

    @validate("placement")
    def _check_placement(self, proposal):
        value = proposal["value"]
        if not callable(value) and value not in placement.POLICIES:
            raise TraitError(f"BerthSpawner.placement must be one of {sorted(placement.POLICIES)} or a callable")
        return value

    @validate("nodes")
    def _check_nodes(self, proposal):
        why = nodecheck.check(proposal["value"])
        if why:
            raise TraitError(why)
        return proposal["value"]

    @validate("allowed_images")
    def _check_allowed_images(self, proposal):
        value = proposal["value"]
        if not callable(value):
            try:
                form.images_as_dict(value)
            except ValueError as e:
                raise TraitError(f"BerthSpawner.{e}") from None
        return value

    @validate("profile_list")
    def _check_profile_list(self, proposal):
        value = proposal["value"]
        if not callable(value):
            try:
                profiles.initialized(value)
            except profiles.ProfileError as e:
                raise TraitError(f"BerthSpawner.profile_list: {e}") from None
        return value

    @default("options_form")
    def _default_options_form(self):
        # Nothing to choose: no form (the hub then spawns at once, and its pages say so).
        images = self.allowed_images
        if not self.profile_list and not callable(images) and (images == "*" or len(images) <= 1):
            return ""
        return _options_form

    @default("options_from_form")
    def _default_options_from_form(self):
        return form.to_user_options

    async def _profiles(self):
        try:
            return profiles.initialized(await profiles.evaluate(self.profile_list, self))
        except profiles.ProfileError as e:
            raise SpawnException(f"BerthSpawner.profile_list: {e}", reason="config", status_code=500) from None

    async def _apply_profile(self):
        """Sets the chosen profile's overrides on this spawner for this start (after putting
        back the last start's); an unknown profile or choice is a 400."""
        profiles.restore(self)
        try:
            overrides, self._profile_option_names = profiles.choose(await self._profiles(), self.user_options)
            profiles.apply(self, overrides)
        except profiles.ProfileError as e:
            status = 400 if e.user_error else 500
            raise SpawnException(f"Your server could not start: {e}", reason="profile", status_code=status) from None

    async def _reapply_profile(self):
        """A spawner made for a server that is already running (the hub restarted) has not
        applied its profile: apply it, so stop and poll honour the profile's `remove` and
        `stop_grace`. Best effort: a profile since removed from the list is only logged."""
        if self._profile_saved is not None or not self.profile_list:
            return
        try:
            await self._apply_profile()
        except SpawnException as e:
            self._profile_saved = {}
            self.log.warning("berth: the profile of %s no longer applies: %s", self._log_name, e)

    @validate("volumes", "read_only_volumes")
    def _check_volumes(self, proposal):
        try:
            request.check_volumes(proposal["trait"].name, proposal["value"])
        except ValueError as e:
            raise TraitError(str(e)) from None
        return proposal["value"]

    @validate("volume_affinity")
    def _check_affinity(self, proposal):
        value = proposal["value"]
        if value not in (None, "required", "preferred", "none"):
            raise TraitError('BerthSpawner.volume_affinity must be "required", "preferred" or "none"')
        return value

    @default("image")
    def _default_image(self):
        return f"quay.io/jupyterhub/singleuser:{jupyterhub.__version__}"

    # internal_ssl: where the node writes the server's key, certificate and CA in the container.
    CERT_PATHS = {
        "keyfile": "/.berth/certs/server.key",
        "certfile": "/.berth/certs/server.crt",
        "cafile": "/.berth/certs/ca.crt",
    }
    # The PEM files of the current spawn (internal_ssl), sent in its Start request.
    _certs = None

    async def move_certs(self, paths):
        """internal_ssl: the hub made this server's key and certificate on its own disk; their
        contents travel in the Start request and the node writes them into the container before
        it starts (never onto the node's disk). Returns their paths in the container."""
        pem = {}
        for k in self.CERT_PATHS:
            with open(paths[k], "rb") as f:
                pem[k] = f.read()
        # What the hub checks this server's certificate against (its own trust bundle): the
        # node's readiness probe checks it too. Not written into the container.
        server_ca = b""
        hub_trust = (self.internal_trust_bundles or {}).get("hub-ca")
        if hub_trust:
            with open(hub_trust, "rb") as f:
                server_ca = f.read()
        self._certs = pb.InternalSsl(key=pem["keyfile"], cert=pem["certfile"], ca=pem["cafile"], server_ca=server_ca)
        return dict(self.CERT_PATHS)

    @default("cmd")
    def _default_cmd(self):
        # As DockerSpawner and KubeSpawner: the image's own CMD (docker-stacks images need their
        # start script); `cmd` and `args` still override it.
        return None

    @default("ip")
    def _ip(self):
        # The bind address inside the container.
        return "0.0.0.0"

    @default("port")
    def _port(self):
        return self.container_port

    # ---- nodes ------------------------------------------------------------------------------

    def _nodes(self):
        return [node_for(n) for n in self.nodes]

    def _node(self, name):
        for n in self._nodes():
            if n.name == name:
                return n
        return None

    def _key(self):
        return pb.ServerKey(user=self.user.name, server_name=self.name or "")

    def _on_status(self, status):
        # A death seen on Watch (or a server missing from a fresh snapshot): let the hub
        # notice now, not at its next poll. poll() decides; a running server is left alone.
        if self._spawn_pending or self._stop_pending or not self.container_id:
            return
        if status is None or (
            status.container_id == self.container_id and status.state in (State.EXITED, State.ABSENT)
        ):
            asyncio.ensure_future(self.poll_and_notify())

    async def _find(self, seen=None):
        """This server's key on every node, through List: [(node, status)]. `seen(node, user,
        server)` may answer for a node without an RPC (a list, or None to ask)."""
        server = self.name or ""
        found, ask = [], []
        # The nodes `seen` answers for cost no task and no wait: only the others are asked.
        for node in self._nodes():
            known = seen(node, self.user.name, server) if seen else None
            if known is None:
                ask.append(node)
            else:
                found.extend((node, s) for s in known)

        async def on(node):
            servers = await node.servers_of(self.user.name, self.rpc_timeout)
            return [(node, s) for s in servers or () if s.key.server_name == server]

        if ask:
            for pairs in await asyncio.gather(*(on(n) for n in ask)):
                found.extend(pairs)
        return found

    # ---- state ------------------------------------------------------------------------------

    def get_state(self):
        state = super().get_state()
        if self.node_name:
            state.update(node=self.node_name, spawn_id=self.spawn_id, container_id=self.container_id)
        if self.home_node:
            state.update(home_node=self.home_node)
        if self.lost:
            state.update(lost=self.lost)
        return state

    def load_state(self, state):
        super().load_state(state)
        self.node_name = state.get("node", "")
        self.spawn_id = state.get("spawn_id", "")
        self.container_id = state.get("container_id", "")
        self.home_node = state.get("home_node", "")
        self.lost = state.get("lost") or None
        if self.node_name:
            fencing.place(self._key_tuple(), self.node_name)

    def clear_state(self):
        # The hub clears the state when the server stops; where the files are, and where a
        # server the hub lost touch with may still run, outlive that.
        home, lost = self.home_node, self.lost
        if self.node_name:
            fencing.unplace(self._key_tuple(), self.node_name)
        super().clear_state()
        self.node_name = self.spawn_id = self.container_id = ""
        self.home_node, self.lost = home, lost

    def _key_tuple(self):
        return (self.user.name, self.name or "")

    # ---- fencing (fencing.py) ---------------------------------------------------------------

    def _note_lost(self, node, down):
        """The hub has lost touch with our server's node: remember where the server may still
        run, and until when (the node's fence time, from when the hub lost it)."""
        since = time.time() - down
        fence = fencing.fence_seconds(self, node)
        self.lost = {
            "node": node.name,
            "container_id": self.container_id,
            "since": since,
            "until": fencing.release_at(since, fence, node.stop_grace),
        }

    def _check_lost(self, answers):
        """Before a start: refuses it while our last server may still run on a node the hub
        cannot reach (see fencing.py); forgets it once that node answered (its old server was
        stopped by _replace_orphans), fenced it, or was declared lost."""
        lost = self.lost
        if not lost:
            return
        name, until = lost["node"], lost.get("until")
        answered = any(c.name == name and not c.error for c in answers)
        if answered:
            self.log.info("berth: %s: node %s answers again; its old server was stopped", self._log_name, name)
        elif fencing.released_after(name, lost["since"]):
            self.log.warning("berth: %s: node %s was declared lost; starting elsewhere", self._log_name, name)
        elif until is not None and time.time() >= until:
            self.log.info(
                "berth: %s: node %s has fenced the old server by now; starting elsewhere", self._log_name, name
            )
        elif self._node(name) is None:
            self.log.warning("berth: %s: node %s is no longer configured; starting elsewhere", self._log_name, name)
        else:
            sentence = fencing.refusal(name, until)
            raise userfacing.failure(
                sentence,
                reason="fenced",
                status_code=409,
                detail=f"{self._log_name} may still run on unreachable node {name} (since "
                f"{time.ctime(lost['since'])}; fenced by {time.ctime(until) if until else 'never'}): "
                f"refusing a second server; POST /hub/api/berth/nodes/{name}/lost releases it",
            )
        self.lost = None

    # ---- where the files are ----------------------------------------------------------------

    def _affinity(self):
        if self.volume_affinity is not None:
            return self.volume_affinity
        return "required" if request.node_local_volumes(self.volumes) else "none"

    async def _volumes_on(self, node):
        """(newest use, node name) of this server's volumes on `node`; None when it has none,
        "unknown" when it did not answer."""
        server = self.name or ""
        try:
            r = await node.call("ListVolumes", pb.ListVolumesRequest(user=self.user.name), self.rpc_timeout)
        except grpc.aio.AioRpcError:
            return "unknown"
        mine = [v for v in r.volumes if v.owner.server_name in ("", server)]
        if not mine:
            return None
        return max(v.last_used.seconds if v.HasField("last_used") else 0 for v in mine), node.name

    async def _find_home(self, nodes):
        """The node holding this server's volumes: the one the state names if it still has them
        (one RPC), else asked of every node (the hub's state was lost, or an operator moved the
        volumes): the one used last, or "" when no node has any."""
        known = self._node(self.home_node) if self.home_node else None
        if known is not None and (await self._volumes_on(known)) is not None:
            # Still there, or the node is down: keep it (a down home node is a 503, not a move).
            return self.home_node
        found = [f for f in await asyncio.gather(*(self._volumes_on(n) for n in nodes)) if isinstance(f, tuple)]
        return max(found)[1] if found else ""

    def _follow_data(self, affinity, nodes, reasons):
        """The ranked nodes, narrowed to (required) or led by (preferred) the node with the
        user's files. Raises the 503 of a required home node that cannot take the server."""
        home = self.home_node if affinity != "none" else ""
        if not home:
            return nodes
        at_home = [n for n in nodes if n.name == home]
        if at_home:
            rest = [] if affinity == "required" else [n for n in nodes if n.name != home]
            return at_home + rest
        prefix = f"{home}: "
        why = next((r[len(prefix) :] for r in reasons if r.startswith(prefix)), "not one of this hub's nodes")
        self._away_from_home(affinity, home, why)
        return nodes

    def _away_from_home(self, affinity, home, why):
        """The home node cannot take the server: a 503 (required) or a notice (preferred)."""
        if affinity == "required":
            raise SpawnException(
                f"Your files are on {home}, which cannot take your server right now ({why}). "
                "Try again later, or ask an admin to move your files to another node.",
                reason="affinity",
                status_code=503,
            )
        self._notice = (
            f"Your files are on {home}, which cannot take your server right now ({why}): this "
            "server starts on another node with a fresh, empty volume."
        )
        self.log.warning("berth: %s starts away from its files on %s (%s)", self._log_name, home, why)

    async def _remember(self, node):
        """Keeps where the files are in the node's per-server state blob, so that a hub whose
        database was reset still finds them (with the user's last options). Best effort."""
        blob = {"home_node": self.home_node, "user_options": self.user_options or {}}
        try:
            cur = await node.call("GetState", pb.GetStateRequest(key=self._key()), self.rpc_timeout)
            await node.call(
                "PutState",
                pb.PutStateRequest(
                    key=self._key(), blob=json.dumps(blob, default=str).encode(), expected_version=cur.version
                ),
                self.rpc_timeout,
            )
        except grpc.aio.AioRpcError as e:
            self.log.warning("berth: cannot keep %s's home node on %s: %s", self._log_name, node.name, e.code().name)

    # ---- start ------------------------------------------------------------------------------

    async def _capacity(self, node):
        try:
            c = await node.call("Capacity", pb.CapacityRequest(), self.rpc_timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                return placement.Candidate(name=node.name, known=False)
            return placement.Candidate(name=node.name, error=e.code().name)
        node.fence_after, node.stop_grace = c.fence_after_seconds, c.stop_grace_seconds
        return placement.from_capacity(node.name, c)

    async def _answers(self, nodes, fresh=False):
        """Each node's Candidate: its pushed capacity at once (no RPC, no wait), the others
        asked together (reusing kept answers per capacity_ttl unless `fresh`)."""
        out = []
        for n in nodes:
            n.want_capacity = self.capacity_push
            c = None if fresh or not self.capacity_push else n.pushed_candidate()
            if c is None and not fresh and capcache.gone(n):
                # Known unreachable: not asked at every spawn (a 503 asks it afresh).
                c = placement.Candidate(name=n.name, error="UNAVAILABLE")
            out.append(c)
        missing = [i for i, c in enumerate(out) if c is None]
        if missing:
            ttl = 0 if fresh else self.capacity_ttl
            asked = await asyncio.gather(
                *(capcache.CACHE.get(nodes[i], self._capacity, ttl, pushed=False) for i in missing)
            )
            for i, c in zip(missing, asked):
                out[i] = c
        return out

    def _rank(self, nodes, answers, demand):
        """The nodes to try, best first, and why the others are left out. Synchronous, so that
        start() reserves its first choice before any other spawn ranks: what this hub has in
        flight is read now, not when Capacity was asked, and concurrent spawns see each other."""
        for node, c in zip(nodes, answers):
            # A pushed answer may not show yet the spawns placed here that were answered.
            pending = node.unreflected() if c.pushed else node.inflight
            c.inflight = len(pending)
            c.inflight_memory = sum(d.memory for d in pending.values())
            c.inflight_gpus = sum(d.gpus for d in pending.values() if d.gpus and d.device_class == demand.device_class)
        ordered, reasons = placement.rank(answers, demand, self.placement, spawner=self)
        by_name = {n.name: n for n in nodes}
        return [by_name[c.name] for c in ordered], reasons

    async def _replace_orphans(self):
        """A server of this key that the hub does not know (its state was lost, e.g. the hub
        died during a long start) may still run on some node: stop and remove it, since it
        holds an API token the hub no longer honours. start() runs only for a server the hub
        holds stopped, so every live one found is such an orphan. A node whose Watch stream is
        up answers from it; the others are asked (List)."""
        for node, st in await self._find(seen=capcache.live_servers_seen):
            if st.state in (State.RUNNING, State.STARTING):
                self.log.warning(
                    "berth: %s has a server unknown to the hub on %s (spawn %s); replacing it",
                    self._log_name,
                    node.name,
                    st.spawn_id,
                )
                await node.call("Stop", pb.StopRequest(key=self._key(), now=True, remove=True), self.rpc_timeout)

    async def start(self):
        self._attempt = 0
        self._attempt_ended = self._relay = self._failed_detail = None
        await self._apply_profile()
        try:
            await self.read_docker_kwargs()
        except (TraitError, ValueError, KeyError, TypeError) as e:
            raise SpawnException(f"Bad container options: {e}", reason="config", status_code=500) from None
        image = request.image(self)
        if image != self.image:
            # The user's pick is this start's `image`, as in DockerSpawner (hooks, the admin
            # API and the logs see it); put back at the next start, as a profile's overrides.
            self._profile_saved.setdefault("image", self.image)
            self.image = image
        demand = request.demand(self, image)
        nodes = self._nodes()
        if not nodes:
            raise SpawnException("BerthSpawner.nodes is empty", reason="config", status_code=500)
        affinity = self._affinity()
        self._notice = ""
        # All ask every node; together, a node that does not answer costs one timeout.
        asks = [self._answers(nodes), self._replace_orphans()]
        if affinity != "none":
            asks.append(self._find_home(nodes))
        answers, _, *home = await asyncio.gather(*asks)
        if home:
            self.home_node = home[0]
        self._check_lost(answers)
        _check_selector(demand, answers)
        self.spawn_id = uuid.uuid4().hex
        ranked, reasons = self._rank(nodes, answers, demand)
        if not ranked and (self.capacity_ttl > 0 or any(c.pushed for c in answers)):
            # Kept or pushed answers say no node fits, but what Watch does not carry (a drain
            # lifted, a config reloaded on an older node) may have changed since: ask every
            # node before saying no.
            for n in nodes:
                capcache.CACHE.forget(n)
            answers = await self._answers(nodes, fresh=True)
            _check_selector(demand, answers)
            ranked, reasons = self._rank(nodes, answers, demand)
        nodes = self._follow_data(affinity, ranked, reasons)
        start_request = request.start_request(self, image)
        try:
            options, labels = await self.container_options()
        except (TraitError, ValueError, KeyError, TypeError) as e:
            raise SpawnException(f"Bad container options: {e}", reason="config", status_code=500) from None
        start_request.options.CopyFrom(options)
        start_request.labels.update(labels)
        # Nodes that refused because they lack the image and may not pull it (pull_policy never).
        lacking = []
        for node in nodes:
            if self.home_node and node.name != self.home_node and affinity == "preferred" and not self._notice:
                self._away_from_home(affinity, self.home_node, "it refused the server")
            self.node_name = node.name
            self._attempt += 1
            node.place(self.spawn_id, demand)
            started = False
            try:
                resp = await node.call("Start", start_request, self.start_timeout + 10)
            except grpc.aio.AioRpcError as e:
                why, _ = errors.reason(e)
                if errors.try_another_node(e):
                    reasons.append(f"{node.name}: {e.details()}")
                    if why == "IMAGE_NOT_FOUND":
                        lacking.append(node.name)
                    self.log.warning("berth: %s refused %s: %s", node.name, self._log_name, e.details())
                    continue
                # The detail (exit code, last output, addresses) is for the hub's log; the page
                # says what the user can do.
                self.log.error("berth: %s failed to start on %s: %s", self._log_name, node.name, e.details())
                if why == "IMAGE_PULL_FAILED":
                    self._relay_detail(e.details())
                # Before the clean-up, which forgets the node and spawn the page follows.
                await self._failure_relayed()
                await self._discard_failed(node)
                if why == "IMAGE_PULL_FAILED":
                    # The image cannot be had: another node would fail the same way.
                    raise userfacing.failure(
                        userfacing.PULL_FAILED,
                        reason="image",
                        detail=f"The image of your server could not be pulled: {e.details()}",
                    ) from None
                raise userfacing.failure(
                    userfacing.START_FAILED, reason="start", detail=f"Your server could not start: {e.details()}"
                ) from None
            else:
                started = True
            finally:
                node.placed_answered(self.spawn_id, started)
                capcache.CACHE.forget(node)
            self.container_id = resp.container_id
            fencing.place(self._key_tuple(), node.name)
            node.listen(self.user.name, self.name or "", self._on_status)
            # Every node's Watch, so that the next spawns take capacity and orphans from it.
            for n in self._nodes():
                n.ensure_watch()
            self.log.info("berth: %s started on %s at %s", self._log_name, node.name, resp.url)
            if resp.note:
                self.log.info("berth: %s on %s: %s", self._log_name, node.name, resp.note)
            if affinity != "none":
                self.home_node = self.home_node or node.name
                await self._remember(node)
            # Under internal_ssl the server speaks HTTPS on the port the node published.
            return "https://" + resp.url.split("://", 1)[1] if self.internal_ssl else resp.url
        self.node_name = ""
        if affinity == "required" and self.home_node:
            prefix = f"{self.home_node}: "
            why = next((r[len(prefix) :] for r in reasons if r.startswith(prefix)), "it refused the server")
            self._away_from_home(affinity, self.home_node, why)
        why = "; ".join(reasons) or "no node answered"
        if lacking and len(lacking) == self._attempt:
            # Every node tried had room but not the image: not a matter of room.
            raise userfacing.failure(
                userfacing.IMAGE_MISSING,
                reason="image",
                detail=f"The image {image} is not on the nodes that could take your server and the pull "
                f"policy is {self.pull_policy!r} ({why}).",
            )
        raise userfacing.failure(
            userfacing.NO_ROOM,
            reason="capacity",
            status_code=503,
            detail=f"No node has room for your server right now ({why}). Try again later.",
        )

    async def _failure_relayed(self, timeout=5.0, join=2.0):
        """When a page follows the spawn (progress() runs), waits until progress() has followed
        this attempt's Progress stream to its end, so that the Event log holds the failed
        attempt's detail before the hub ends the page with the user's sentence. A spawn that
        fails within moments may end before the page has connected (the hub sends the browser
        to it right after the request) or before progress() has picked the attempt up: the
        wait gives a page `join` seconds to connect, and covers the pick-up. No page by then:
        no further wait."""
        loop = asyncio.get_running_loop()
        joined = loop.time() + join
        while not self._following and loop.time() < joined:
            await asyncio.sleep(0.05)
        end = loop.time() + timeout
        while self._following and loop.time() < end:
            followed = self._attempt_ended
            if followed is not None and followed[0] == self._attempt and followed[1].is_set():
                return
            await asyncio.sleep(0.05)

    async def _discard_failed(self, node):
        """After a failed Start: the hub will not call stop() (poll() says the server is not
        running), so the node's exited container is dealt with here, per `remove`."""
        await self._remove_exited(node)
        self.node_name = self.spawn_id = ""

    async def _remove_exited(self, node):
        """Stop(now) of a server that is already down, so that with `remove` its container goes
        as stop() would have removed it. Safe against a newer start of the key: it runs before
        the hub learns the server is gone, so before the hub can start it again."""
        try:
            await node.call("Stop", pb.StopRequest(key=self._key(), now=True, remove=self.remove), self.rpc_timeout)
        except grpc.aio.AioRpcError as e:
            self.log.warning("berth: cleaning up %s on %s: %s", self._log_name, node.name, e.details())

    # ---- progress ---------------------------------------------------------------------------

    async def progress(self):
        # Follows start() from node to node: each attempt's Progress stream is relayed until it
        # ends or start() moves on. Terminal events are the hub's to send (it knows whether the
        # spawn as a whole succeeded), so ready/failed from a node are not relayed. The hub
        # stops iterating when the spawn ends.
        self._following = True
        try:
            async for event in self._follow_attempts():
                yield event
        finally:
            self._following = False

    async def _follow_attempts(self):
        seen = 0
        while True:
            while self._attempt == seen:
                await asyncio.sleep(0.1)
            seen = self._attempt
            node = self._node(self.node_name)
            if node is None:
                continue
            if self._notice:
                yield {"message": self._notice}
            if seen > 1:
                # The node name means nothing to most users; that the first choice said no does.
                yield {"message": "The first machine tried could not take your server; trying another one."}
            req = pb.ProgressRequest(key=self._key(), spawn_id=self.spawn_id)
            ended = asyncio.Event()
            self._attempt_ended = (seen, ended)
            # berthd's events and, when the start fails, berthspawner's own detail of it, in one
            # queue: a stream that says nothing more still lets the detail through.
            queue = asyncio.Queue()
            self._relay = (seen, queue)
            failed = self._failed_detail
            if failed is not None and failed[0] == seen:
                # Failed before this stream opened: berthd's replay first, then the detail.
                asyncio.get_running_loop().call_later(0.5, queue.put_nowait, ("detail", failed[1]))
            pump = asyncio.ensure_future(self._pump(node, req, queue))
            last_message = ""
            try:
                while True:
                    kind, ev = await queue.get()
                    if kind == "end":
                        break
                    if kind == "detail":
                        yield {"message": ev}
                        break
                    if ev.ready or ev.failed or self._attempt != seen:
                        break
                    out = userfacing.hub_event(ev, last_message)
                    if out is None:
                        continue
                    last_message = out.get("message", last_message)
                    if ev.phase == pb.ProgressEvent.PULLING:
                        # The bytes are in the message; the numbers too, as KubeSpawner's raw_event.
                        out["raw_event"] = {
                            "phase": "pulling",
                            "image": ev.image,
                            "bytes_done": ev.bytes_done,
                            "bytes_total": ev.bytes_total,
                            "layers_done": ev.layers_done,
                            "layers_total": ev.layers_total,
                        }
                    yield out
            finally:
                pump.cancel()
                ended.set()

    async def _pump(self, node, req, queue):
        """Puts the attempt's Progress events into `queue`, then ("end", None)."""
        try:
            async for ev in node.stub().Progress(req, metadata=node.metadata()):
                queue.put_nowait(("event", ev))
        except grpc.aio.AioRpcError as e:
            self.log.debug("berth: progress of %s on %s ended: %s", self._log_name, node.name, e.code().name)
        finally:
            queue.put_nowait(("end", None))

    def _relay_detail(self, text):
        """The failed attempt's detail, for the page's Event log (a pull's error, which berthd's
        stream may not have said before the pull failed)."""
        self._failed_detail = (self._attempt, text)
        relay = self._relay
        if relay is not None and relay[0] == self._attempt:
            relay[1].put_nowait(("detail", text))

    # ---- poll / stop ------------------------------------------------------------------------

    async def poll(self):
        if not (self.node_name and (self.container_id or self.spawn_id)):
            return 0
        await self._reapply_profile()
        node = self._node(self.node_name) or await self._relocate()
        if node is None:
            return 0
        user, server = self.user.name, self.name or ""
        node.listen(user, server, self._on_status)
        status = node.cached(user, server, self.container_id) if self.container_id else None
        if status is None:
            try:
                status = await node.call("Poll", pb.PollRequest(key=self._key()), self.rpc_timeout)
            except grpc.aio.AioRpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                down = node.unreachable_for()
                if down < self.unreachable_grace:
                    self.log.warning(
                        "berth: node %s unreachable for %.0fs; assuming %s still runs",
                        node.name,
                        down,
                        self._log_name,
                    )
                    return None
                self._note_lost(node, down)
                self.log.error(
                    "berth: node %s unreachable for %.0fs (unreachable_grace %.0fs); %s is taken as gone "
                    "(no other server of it starts until the node answers, fences it or is declared lost)",
                    node.name,
                    down,
                    self.unreachable_grace,
                    self._log_name,
                )
                return 1
        if status.state == State.ABSENT:
            return 0
        if status.state in (State.RUNNING, State.STARTING, State.STOPPING):
            # Still ours, unless another spawn took the key (then ours is gone).
            ours = status.container_id == self.container_id if self.container_id else status.spawn_id == self.spawn_id
            return None if ours else 0
        if self.remove:
            await self._remove_exited(node)
        return int(status.exit_code) if status.HasField("exit_code") else 0

    async def get_object(self):
        """DockerSpawner's get_object, as far as the node tells: the container's Id, its
        Config.Image and State (Running, Status, ExitCode); None when there is no container."""
        node = self._node(self.node_name) if self.node_name else None
        if node is None:
            return None
        status = await node.call("Poll", pb.PollRequest(key=self._key()), self.rpc_timeout)
        if status.state == State.ABSENT:
            return None
        running = status.state in (State.RUNNING, State.STARTING, State.STOPPING)
        return {
            "Id": status.container_id,
            "Config": {"Image": status.image},
            "State": {
                "Running": running,
                "Status": "running" if running else "exited",
                "ExitCode": int(status.exit_code) if status.HasField("exit_code") else 0,
            },
        }

    async def _relocate(self):
        """The node of our container when the state names a node no longer configured under
        that name (renamed in the config): found through List on every node."""
        for node, st in await self._find():
            if self.container_id and st.container_id == self.container_id:
                self.log.info("berth: %s found on node %s (state said %s)", self._log_name, node.name, self.node_name)
                self.node_name = node.name
                return node
        return None

    async def stop(self, now=False):
        await self._reapply_profile()
        node = self._node(self.node_name) or await self._relocate()
        if node is None:
            return
        node.unlisten(self.user.name, self.name or "")
        if self.lost and self.lost["node"] == node.name and node.unreachable_for() > 0:
            # poll() gave it up: the node cannot be asked; it fences the server, or the next
            # start waits for it (fencing.py).
            self.log.warning("berth: %s is on unreachable node %s: not stopped there", self._log_name, node.name)
            return
        req = pb.StopRequest(key=self._key(), now=now, grace_seconds=self.stop_grace, remove=self.remove)
        await node.call("Stop", req, self.stop_grace + self.rpc_timeout)
        self.log.info("berth: %s stopped on %s", self._log_name, node.name)

    async def rename(self, old_name, new_name):
        # The hub renames only stopped servers. Nodes key servers by name and cannot rename:
        # a volume named per server would stay behind under the old name, so that is refused
        # (the hub shows the error); a stopped container kept under the old name is removed.
        if any(request.per_server(source) for source in self.volumes):
            raise SpawnException(
                "This server's volumes are named after it and cannot follow a rename",
                reason="rename",
                status_code=400,
            )
        key = pb.ServerKey(user=self.user.name, server_name=old_name)

        async def on(node):
            try:
                await node.call("Stop", pb.StopRequest(key=key, now=True, remove=True), self.rpc_timeout)
            except grpc.aio.AioRpcError as e:
                self.log.warning(
                    "berth: rename of %s: cleaning %s on %s: %s", self._log_name, old_name, node.name, e.code().name
                )

        await asyncio.gather(*(on(n) for n in self._nodes()))

    async def delete_forever(self):
        # The server may have run on any node over time: ask them all.
        key = self._key()

        async def on(node):
            try:
                await node.call("DeleteForever", pb.DeleteForeverRequest(key=key), self.rpc_timeout)
            except grpc.aio.AioRpcError as e:
                self.log.warning("berth: delete_forever of %s on %s: %s", self._log_name, node.name, e.code().name)

        await asyncio.gather(*(on(n) for n in self._nodes()))


async def _options_form(spawner):
    """The spawn form, rendered when a user opens it ("" when there is nothing to choose)."""
    images = form.allowed_images(spawner)
    return form.render(await spawner._profiles(), images, spawner.image, spawner.user_options)


def _check_selector(demand, answers):
    """A 503 naming the selector when no node that answered carries its labels."""
    if demand.node_selector and not any(placement.labels_match(c, demand) for c in answers):
        wanted = placement.selector_text(demand.node_selector)
        down = [c.name for c in answers if c.error]
        also = f" ({', '.join(down)} did not answer)" if down else ""
        raise SpawnException(
            f"No node has labels {wanted}{also}: your server cannot start anywhere right now.",
            reason="node_selector",
            status_code=503,
        )


nodecheck.watch_hub_config()
