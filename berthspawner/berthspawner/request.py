"""What a spawn asks of a node: the image, the placement demand and the StartRequest, built
from a BerthSpawner's configuration and the user's options."""

import json

from ._compat import SpawnException

from . import form, placement, templates
from ._proto.berth.v1 import spawner_pb2 as pb


def image(spawner):
    """The image: the configured one (or the chosen profile's), or the user's choice among
    `allowed_images`."""
    choice = (spawner.user_options or {}).get("image")
    if isinstance(choice, (list, tuple)) and len(choice) == 1:
        # options_from_form = "passthrough" hands the form's list over; of two, none is meant.
        choice = choice[0]
    if not choice or "image" in getattr(spawner, "_profile_option_names", ()):
        return spawner.image
    return allowed_image(spawner, choice)


def allowed_image(spawner, choice):
    """The image the user's `choice` stands for (DockerSpawner's check_allowed): a display name
    of `allowed_images`, or any image under "*"; else a 400 naming the choices."""
    if not isinstance(choice, str):
        raise SpawnException(
            f"user_options image must be a string, not {type(choice).__name__}", reason="image", status_code=400
        )
    allowed = form.allowed_images(spawner)
    if allowed == "*":
        return choice
    if choice in allowed:
        return allowed[choice]
    if not allowed:
        raise SpawnException(
            "Choosing an image is not allowed here (allowed_images is empty)", reason="image", status_code=400
        )
    raise SpawnException(
        f"image {choice!r} is not allowed; choose one of: {', '.join(allowed)}", reason="image", status_code=400
    )


# A volume's dict form, as DockerSpawner takes it (docker-py's binds), plus berth's driver keys.
VOLUME_KEYS = {"bind", "mode", "ro", "propagation", "driver", "driver_opts"}
# Propagation berth's mounts have: private (Docker's default, rprivate) is what they are.
_HONOURED_PROPAGATION = {"private", "rprivate"}
# docker-py's bind modes (comma-separated, or the propagation key) that berth's nodes cannot
# honour, and why not.
_REFUSED_MODES = {
    "z": "SELinux relabelling (z/Z) is not done by berth's nodes (they run without SELinux labels)",
    "Z": "SELinux relabelling (z/Z) is not done by berth's nodes (they run without SELinux labels)",
    **{
        p: "a host path is mounted through a private pin of the checked directory (so no symlink "
        "swapped in later is followed), and mounts made under it later do not propagate; "
        "berth's mounts are rprivate"
        for p in ("shared", "rshared", "slave", "rslave")
    },
    **{c: "consistency modes are Docker Desktop's, not a node's" for c in ("consistent", "cached", "delegated")},
    "nocopy": "berth's nodes always copy the image's files into a new volume",
}


def check_volumes(trait, spec):
    """DockerSpawner's `volumes`/`read_only_volumes` as berth can honour them: {source: target}
    or {source: {"bind", "mode", "driver", "driver_opts"}}, `mode` "ro" or "rw". A mode berth has
    no field for (z, Z, propagation) or an unknown key is a ValueError naming it and the volume:
    refused at config load, never dropped without a word."""
    if not isinstance(spec, dict):
        raise ValueError(f"BerthSpawner.{trait} must be a dict {{source: target}}")
    for source, target in spec.items():
        if isinstance(target, str):
            continue
        if not isinstance(target, dict):
            raise ValueError(f"BerthSpawner.{trait}[{source!r}] must be a path or a dict with bind and mode")
        unknown = sorted(set(target) - VOLUME_KEYS)
        if unknown:
            raise ValueError(
                f"BerthSpawner.{trait}[{source!r}]: key {unknown[0]!r} is not supported (known: {', '.join(sorted(VOLUME_KEYS))})"
            )
        if "bind" not in target:
            raise ValueError(f"BerthSpawner.{trait}[{source!r}]: has no bind (the path in the container)")
        if not isinstance(target.get("ro", False), bool):
            raise ValueError(f"BerthSpawner.{trait}[{source!r}]: ro must be True or False")
        modes = list(filter(None, str(target.get("mode", "")).split(",")))
        if target.get("propagation"):
            modes.append(str(target["propagation"]))
        for mode in modes:
            if mode in ("ro", "rw") or mode in _HONOURED_PROPAGATION:
                continue
            why = _REFUSED_MODES.get(mode, "it is not a Docker bind mode")
            raise ValueError(f"BerthSpawner.{trait}[{source!r}]: mode {mode!r} is not supported: {why}")


def read_only_mode(target):
    """Whether a volume's dict form asks for read-only ("ro", alone or with other modes, or
    docker-py's `"ro": True`)."""
    return "ro" in str(target.get("mode", "")).split(",") or target.get("ro") is True


def volumes(spec, spawner=None, image=""):
    """DockerSpawner-style {source: target | {"bind": target, "mode": "ro"}} as proto Volumes; a
    dict target may also give the Docker volume "driver" and its "driver_opts". Template names
    (DockerSpawner's included) are expanded as `templates` says; without a spawner, only into
    the node's `{user}`/`{server}` (enough to tell what the volume is)."""
    names = {}
    if spawner is not None:
        names = {"user": spawner.user.name, "server": spawner.name or "", "image": image}
    out = []
    for template, target in spec.items():
        try:
            source = templates.source(template, **names)
            bind = target["bind"] if isinstance(target, dict) else target
            bind = templates.target(bind, **names)
        except templates.TemplateError as e:
            raise SpawnException(f"BerthSpawner.volumes: {e}", reason="config", status_code=500) from None
        if isinstance(target, dict):
            out.append(
                pb.Volume(
                    source=source,
                    target=bind,
                    read_only=read_only_mode(target),
                    driver=target.get("driver", ""),
                    driver_opts={k: str(v) for k, v in (target.get("driver_opts") or {}).items()},
                )
            )
        else:
            out.append(pb.Volume(source=source, target=bind))
    return out


def read_only(spec, spawner=None, image=""):
    """DockerSpawner's read_only_volumes: {source: target}, mounted read-only."""
    out = volumes(spec, spawner, image)
    for v in out:
        v.read_only = True
    return out


# Docker local-driver mount types whose data lives elsewhere than the node.
_SHARED_TYPES = {"nfs", "nfs4", "cifs", "smb"}


def node_local_volumes(spec):
    """Whether a volume in `spec` keeps a user's files on one node: a named volume (not a host
    path) templated with {user} or {server}, on Docker's local driver, not a network mount."""
    for v in volumes(spec):
        if v.source.startswith("/") or not ("{user}" in v.source or "{server}" in v.source):
            continue
        if v.driver in ("", "local") and v.driver_opts.get("type", "") not in _SHARED_TYPES:
            return True
    return False


# BerthSpawner.pull_policy (DockerSpawner's values) as berthd's; "skip" (DockerSpawner: do not
# even look) is "never" for a node, which never pulls and fails a missing image at once.
PULL_POLICIES = {
    "ifnotpresent": pb.PULL_POLICY_IFNOTPRESENT,
    "always": pb.PULL_POLICY_ALWAYS,
    "never": pb.PULL_POLICY_NEVER,
    "skip": pb.PULL_POLICY_NEVER,
}


def per_server(source):
    """Whether a volume source is named per server ({server} or DockerSpawner's names for it)."""
    return "{server}" in templates.source(source)


def demand(spawner, image):
    """What the server holds on its node: its guarantees, or its limits where none is set
    (as the node counts it)."""
    mem = spawner.mem_guarantee or spawner.mem_limit or 0
    cpu = spawner.cpu_guarantee or spawner.cpu_limit or 0.0
    selector = {str(k): str(v) for k, v in (getattr(spawner, "node_selector", None) or {}).items()}
    return placement.Demand(
        memory=int(mem),
        cpu=float(cpu),
        image=image,
        node_selector=selector,
        gpus=int(spawner.gpus or 0),
        gpu_class=spawner.gpu_class or "",
        gpu_model=spawner.gpu_model or "",
        port=int(spawner.port or 0),
    )


def start_request(spawner, image):
    """The StartRequest of the spawner's current spawn. Its env holds the server's API token:
    never log it."""
    env = spawner.get_env()
    return pb.StartRequest(
        key=pb.ServerKey(user=spawner.user.name, server_name=spawner.name or ""),
        spawn_id=spawner.spawn_id,
        image=image,
        cmd=list(spawner.cmd or []),
        args=spawner.get_args(),
        env={k: str(v) for k, v in env.items()},
        port=spawner.port,
        resources=pb.Resources(
            mem_limit_bytes=int(spawner.mem_limit or 0),
            mem_guarantee_bytes=int(spawner.mem_guarantee or 0),
            cpu_limit=float(spawner.cpu_limit or 0.0),
            cpu_guarantee=float(spawner.cpu_guarantee or 0.0),
            gpus=int(spawner.gpus or 0),
            gpu_class=spawner.gpu_class or "",
            gpu_model=spawner.gpu_model or "",
        ),
        volumes=volumes(spawner.volumes, spawner, image) + read_only(spawner.read_only_volumes, spawner, image),
        user_options=json.dumps(spawner.user_options or {}, default=str),
        ready_path=spawner.server.base_url + "api",
        ready_timeout_seconds=int(spawner.start_timeout),
        resumable=not spawner.remove,
        internal_ssl=spawner._certs if spawner.internal_ssl else None,
        pull_policy=PULL_POLICIES[spawner.pull_policy.lower()],
        fence_after_seconds=0 if spawner.never_fence else int(spawner.fence_after or 0),
        never_fence=bool(spawner.never_fence),
    )
