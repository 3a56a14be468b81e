"""Container options under DockerSpawner's names: `network_name`, `post_start_cmd`,
`read_only_volumes`, and the typed part of `extra_host_config` / `extra_create_kwargs`; plus
`extra_container_options` for per-spawn hooks. Each becomes a typed field of the StartRequest's
ContainerOptions, checked by the node's policy. There is no raw Docker JSON: a key berth has no
typed field for is an error naming it, at config load."""

import shlex

from jupyterhub.utils import maybe_future
from traitlets import Any, Dict, TraitError, Unicode, Union, List, validate
from traitlets.config import Configurable

from ._proto.berth.v1 import spawner_pb2 as pb

# The typed fields, as `extra_container_options` names them (the proto's names; sizes in bytes
# or with a K/M/G/T suffix as DockerSpawner's mem_limit takes them).
FIELDS = {
    "user",
    "group_add",
    "working_dir",
    "shm_size",
    "pids_limit",
    "ulimits",
    "extra_hosts",
    "dns",
    "dns_search",
    "read_only_rootfs",
    "tmpfs",
    "network_name",
    "post_start_cmd",
    "labels",
}
# DockerSpawner's extra_host_config keys (docker-py's create_host_config) berth types, and
# extra_create_kwargs keys (docker-py's create_container): each maps to one field.
HOST_CONFIG_KEYS = {
    "shm_size": "shm_size",
    "pids_limit": "pids_limit",
    "ulimits": "ulimits",
    "extra_hosts": "extra_hosts",
    "dns": "dns",
    "dns_search": "dns_search",
    "group_add": "group_add",
    "read_only": "read_only_rootfs",
    "tmpfs": "tmpfs",
    "network_mode": "network_name",
}
CREATE_KWARGS_KEYS = {"user": "user", "working_dir": "working_dir", "labels": "labels"}
# Keys of the two that mean one of the spawner's own options: read as that option at each start
# (they win over it, as in DockerSpawner, where they update the host config and create kwargs).
HOST_CONFIG_AS_TRAITS = {
    "mem_limit",
    "memory",
    "mem_reservation",
    "nano_cpus",
    "cpu_quota",
    "cpu_period",
    "device_requests",
}
CREATE_KWARGS_AS_TRAITS = {"command"}
_WHY_NOT = (
    "berth has no raw Docker options (the node's policy must be able to check every one); the typed options are {}"
)


# Docker keys whose meaning berth has under another option, but not one it can read them as:
# the refusal names the option. (`environment` would replace the hub's own variables, the API
# token among them; `binds` are raw host paths the node's policy could not check as volumes.)
_ELSEWHERE = {
    "cpu_shares": "cpu_guarantee",
    "binds": "volumes",
    "volumes": "volumes",
    "mounts": "volumes",
    "environment": "environment",
    "image": "image",
    "port_bindings": "container_port",
}


def _gpu_count(requests):
    """docker-py's device_requests (dicts or docker.types.DeviceRequest, keys in either case) as
    a number of GPUs; what berth cannot express (all GPUs, chosen device ids, another
    capability) is a ValueError naming it."""
    total = 0
    for r in requests or []:
        if not isinstance(r, dict):
            raise ValueError(f"device_requests: {r!r} must be a dict (or docker.types.DeviceRequest)")
        g = {k.lower(): v for k, v in r.items()}
        if g.get("deviceids") or g.get("device_ids"):
            raise ValueError("device_requests: device ids cannot be chosen (the node assigns free GPUs); use gpus")
        caps = [c for group in (g.get("capabilities") or [["gpu"]]) for c in group]
        if "gpu" not in caps:
            raise ValueError(f"device_requests: capabilities {caps} are not GPUs; only GPU requests are read (as gpus)")
        count = int(g.get("count", 0) or 0)
        if count < 0:
            raise ValueError("device_requests: count -1 (every GPU of the node) has no meaning across nodes; set gpus")
        total += count
    return total


def trait_values(host_config, create_kwargs):
    """The spawner options that extra_host_config's and extra_create_kwargs's keys in
    HOST_CONFIG_AS_TRAITS / CREATE_KWARGS_AS_TRAITS stand for: mem_limit, mem_guarantee,
    cpu_limit, gpus, cmd. A value berth cannot read raises ValueError naming the key."""
    out = {}
    h = {k: v for k, v in host_config.items() if k in HOST_CONFIG_AS_TRAITS and v is not None}
    for key in ("memory", "mem_limit"):
        if key in h:
            out["mem_limit"] = _bytes(key, h[key])
    if "mem_reservation" in h:
        out["mem_guarantee"] = _bytes("mem_reservation", h["mem_reservation"])
    if "nano_cpus" in h:
        out["cpu_limit"] = int(h["nano_cpus"]) / 1e9
    if "cpu_quota" in h:
        quota, period = int(h["cpu_quota"]), int(h.get("cpu_period") or 100_000)
        if quota > 0:
            out["cpu_limit"] = quota / period
    elif "cpu_period" in h:
        raise ValueError("cpu_period without cpu_quota sets no limit; set cpu_quota (or cpu_limit)")
    if "device_requests" in h:
        out["gpus"] = _gpu_count(h["device_requests"])
    command = create_kwargs.get("command")
    if command:
        out["cmd"] = _command(command)
    return out


def _unknown(trait, value, known):
    bad = sorted(set(value) - set(known))
    if bad:
        instead = [f"{k!r} is BerthSpawner.{_ELSEWHERE[k]}" for k in bad if k in _ELSEWHERE]
        hint = f" ({'; '.join(instead)})" if instead else ""
        raise TraitError(
            f"BerthSpawner.{trait}: {', '.join(map(repr, bad))} not supported{hint}: "
            + _WHY_NOT.format(", ".join(sorted(known)))
        )


def _bytes(name, v):
    if isinstance(v, int):
        return v
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    s = str(v).strip().lower().removesuffix("b")
    try:
        if s and s[-1] in units:
            return int(float(s[:-1]) * units[s[-1]])
        return int(s)
    except ValueError:
        raise ValueError(f"{name}: {v!r} is not a size (bytes, or a number with K, M, G or T)") from None


def _ulimits(v):
    out = []
    for u in v:
        if not isinstance(u, dict):  # docker.types.Ulimit is a dict subclass; anything else is not
            raise ValueError(f"ulimits: {u!r} must be a dict with name, soft and hard")
        g = {k.lower(): x for k, x in u.items()}
        out.append(pb.Ulimit(name=g["name"], soft=int(g.get("soft", -1)), hard=int(g.get("hard", g.get("soft", -1)))))
    return out


def _hosts(v):
    if isinstance(v, dict):
        return [f"{h}:{ip}" for h, ip in v.items()]
    return list(v)


def _command(v):
    if not v:
        return []
    return shlex.split(v) if isinstance(v, str) else [str(a) for a in v]


def to_proto(fields):
    """The ContainerOptions and labels of a dict of typed fields; a bad value raises ValueError
    naming the field."""
    _check = set(fields) - FIELDS
    if _check:
        raise ValueError(f"unknown container options {sorted(_check)}; known: {sorted(FIELDS)}")
    o = pb.ContainerOptions()
    for k, v in fields.items():
        if v is None:
            continue
        if k in ("shm_size",):
            o.shm_size_bytes = _bytes(k, v)
        elif k == "user":
            o.user = str(v)
        elif k in ("group_add", "dns", "dns_search"):
            getattr(o, k).extend(str(x) for x in v)
        elif k == "tmpfs":
            o.tmpfs.extend(v.keys() if isinstance(v, dict) else v)
        elif k == "ulimits":
            o.ulimits.extend(_ulimits(v))
        elif k == "extra_hosts":
            o.extra_hosts.extend(_hosts(v))
        elif k == "post_start_cmd":
            o.post_start_cmd.extend(_command(v))
        elif k == "network_name":
            # DockerSpawner's default network is "bridge", which is Docker's own default.
            o.network_name = "" if v in ("", "bridge", "default") else str(v)
        elif k == "working_dir":
            o.working_dir = str(v)
        elif k == "pids_limit":
            o.pids_limit = int(v)
        elif k == "read_only_rootfs":
            o.read_only_rootfs = bool(v)
    return o, {str(k): str(v) for k, v in (fields.get("labels") or {}).items()}


class ContainerOptions(Configurable):
    """The container option traits of BerthSpawner."""

    network_name = Unicode(
        "",
        config=True,
        help="""Docker network on the node the server joins (DockerSpawner's name). The node makes
        it when absent if its policy allows. The server's port is still published on the node, so
        the hub reaches it as before; "" or "bridge" is Docker's default network.""",
    )
    post_start_cmd = Union(
        [Unicode(), List(Unicode())],
        default_value="",
        config=True,
        help="""Command run in the container (docker exec) once the server answers (DockerSpawner's
        name): a string, split as a shell would, or a list. A failure is logged and shown on the
        progress bar; the server keeps running.""",
    )
    read_only_volumes = Dict(
        config=True,
        help="""As `volumes`, mounted read-only (DockerSpawner's name): {source: target}.""",
    )
    extra_host_config = Union(
        [Dict(), Any()],
        default_value={},
        config=True,
        help=f"""DockerSpawner's extra_host_config, its typed keys only: {sorted(HOST_CONFIG_KEYS)}.
        Other keys are refused: {_WHY_NOT.format("the keys of extra_container_options")}. A
        callable(spawner) -> dict is evaluated at each start.""",
    )
    extra_create_kwargs = Union(
        [Dict(), Any()],
        default_value={},
        config=True,
        help=f"""DockerSpawner's extra_create_kwargs, its typed keys only: {sorted(CREATE_KWARGS_KEYS)}.
        A callable(spawner) -> dict is evaluated at each start.""",
    )
    extra_container_options = Union(
        [Dict(), Any()],
        default_value={},
        config=True,
        help=f"""Container options by their berth names: {sorted(FIELDS)}; e.g. {{"user": "1000:100",
        "shm_size": "1G", "pids_limit": 1024, "ulimits": [{{"name": "nofile", "soft": 4096,
        "hard": 8192}}], "extra_hosts": {{"db": "10.0.0.5"}}, "read_only_rootfs": True, "tmpfs":
        ["/tmp"]}}. Set it in a pre_spawn_hook for per-spawn options, or as a callable(spawner) ->
        dict. It wins over extra_host_config and extra_create_kwargs.""",
    )

    @validate("extra_host_config")
    def _check_host_config(self, proposal):
        v = proposal["value"]
        if isinstance(v, dict):
            _unknown("extra_host_config", v, set(HOST_CONFIG_KEYS) | HOST_CONFIG_AS_TRAITS)
            try:
                trait_values(v, {})
            except (ValueError, TypeError) as e:
                raise TraitError(f"BerthSpawner.extra_host_config: {e}") from None
        elif not callable(v):
            raise TraitError("BerthSpawner.extra_host_config must be a dict or a callable")
        return v

    @validate("extra_create_kwargs")
    def _check_create_kwargs(self, proposal):
        v = proposal["value"]
        if isinstance(v, dict):
            _unknown("extra_create_kwargs", v, set(CREATE_KWARGS_KEYS) | CREATE_KWARGS_AS_TRAITS)
        elif not callable(v):
            raise TraitError("BerthSpawner.extra_create_kwargs must be a dict or a callable")
        return v

    @validate("extra_container_options")
    def _check_options(self, proposal):
        v = proposal["value"]
        if isinstance(v, dict):
            _unknown("extra_container_options", v, FIELDS)
            try:
                to_proto(v)
            except (ValueError, KeyError, TypeError) as e:
                raise TraitError(f"BerthSpawner.extra_container_options: {e}") from None
        elif not callable(v):
            raise TraitError("BerthSpawner.extra_container_options must be a dict or a callable")
        return v

    async def _docker_kwargs(self):
        """This spawn's extra_host_config and extra_create_kwargs (callables evaluated), each
        checked for keys berth has no meaning for."""
        out = []
        for trait, keys, as_traits in (
            ("extra_host_config", HOST_CONFIG_KEYS, HOST_CONFIG_AS_TRAITS),
            ("extra_create_kwargs", CREATE_KWARGS_KEYS, CREATE_KWARGS_AS_TRAITS),
        ):
            value = getattr(self, trait)
            if callable(value):
                value = await maybe_future(value(self))
            _unknown(trait, value, set(keys) | as_traits)
            out.append(value)
        return out

    async def read_docker_kwargs(self):
        """Sets mem_limit, mem_guarantee, cpu_limit, gpus and cmd from the extra_host_config /
        extra_create_kwargs keys that mean them (they win, as in DockerSpawner); put back at the
        next start. Before placement, which counts them."""
        host_config, create_kwargs = await self._docker_kwargs()
        for trait, value in trait_values(host_config, create_kwargs).items():
            if getattr(self, trait) != value:
                self.log.info(
                    "berth: %s's %s from extra_host_config/extra_create_kwargs: %r", self._log_name, trait, value
                )
                self._profile_saved.setdefault(trait, getattr(self, trait))
                setattr(self, trait, value)

    async def container_options(self):
        """The typed fields of this spawn, merged in DockerSpawner's order of precedence."""
        fields = {}
        for value, keys in zip(await self._docker_kwargs(), (HOST_CONFIG_KEYS, CREATE_KWARGS_KEYS)):
            fields.update({keys[k]: v for k, v in value.items() if k in keys})
        if self.network_name:
            fields["network_name"] = self.network_name
        if self.post_start_cmd:
            fields["post_start_cmd"] = self.post_start_cmd
        extra = self.extra_container_options
        if callable(extra):
            extra = await maybe_future(extra(self))
        _unknown("extra_container_options", extra, FIELDS)
        fields.update(extra)
        return to_proto(fields)
