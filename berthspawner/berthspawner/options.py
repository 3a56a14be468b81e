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
    "user", "group_add", "working_dir", "shm_size", "pids_limit", "ulimits", "extra_hosts", "dns",
    "dns_search", "read_only_rootfs", "tmpfs", "network_name", "post_start_cmd", "labels",
}
# DockerSpawner's extra_host_config keys (docker-py's create_host_config) berth types, and
# extra_create_kwargs keys (docker-py's create_container): each maps to one field.
HOST_CONFIG_KEYS = {
    "shm_size": "shm_size", "pids_limit": "pids_limit", "ulimits": "ulimits", "extra_hosts": "extra_hosts",
    "dns": "dns", "dns_search": "dns_search", "group_add": "group_add", "read_only": "read_only_rootfs",
    "tmpfs": "tmpfs", "network_mode": "network_name",
}
CREATE_KWARGS_KEYS = {"user": "user", "working_dir": "working_dir", "labels": "labels"}
_WHY_NOT = (
    "berth has no raw Docker options (the node's policy must be able to check every one); "
    "the typed options are {}"
)


# Docker keys whose meaning berth has under another option: the refusal names it.
_ELSEWHERE = {
    "device_requests": "gpus", "mem_limit": "mem_limit", "memory": "mem_limit", "cpu_quota": "cpu_limit",
    "cpu_period": "cpu_limit", "nano_cpus": "cpu_limit", "cpu_shares": "cpu_guarantee",
    "mem_reservation": "mem_guarantee", "binds": "volumes", "volumes": "volumes", "mounts": "volumes",
    "environment": "environment", "command": "cmd", "image": "image", "port_bindings": "container_port",
}


def _unknown(trait, value, known):
    bad = sorted(set(value) - set(known))
    if bad:
        instead = [f"{k!r} is BerthSpawner.{_ELSEWHERE[k]}" for k in bad if k in _ELSEWHERE]
        hint = f" ({'; '.join(instead)})" if instead else ""
        raise TraitError(f"BerthSpawner.{trait}: {', '.join(map(repr, bad))} not supported{hint}: "
                         + _WHY_NOT.format(", ".join(sorted(known))))


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
        Other keys are refused: {_WHY_NOT.format('the keys of extra_container_options')}. A
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
            _unknown("extra_host_config", v, HOST_CONFIG_KEYS)
        elif not callable(v):
            raise TraitError("BerthSpawner.extra_host_config must be a dict or a callable")
        return v

    @validate("extra_create_kwargs")
    def _check_create_kwargs(self, proposal):
        v = proposal["value"]
        if isinstance(v, dict):
            _unknown("extra_create_kwargs", v, CREATE_KWARGS_KEYS)
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

    async def container_options(self):
        """The typed fields of this spawn, merged in DockerSpawner's order of precedence."""
        fields = {}
        for trait, keys in (("extra_host_config", HOST_CONFIG_KEYS), ("extra_create_kwargs", CREATE_KWARGS_KEYS)):
            value = getattr(self, trait)
            if callable(value):
                value = await maybe_future(value(self))
            _unknown(trait, value, keys)
            fields.update({keys[k]: v for k, v in value.items()})
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
