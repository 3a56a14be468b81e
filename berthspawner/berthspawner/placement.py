"""Choosing a node for a new server: pure functions over the nodes' Capacity answers."""

import inspect
from dataclasses import dataclass, field

# The device class a `gpus` demand names when it gives none (berthd's default too).
DEFAULT_GPU_CLASS = "gpu"


@dataclass
class Candidate:
    """What one node said about itself.

    `error` is set when the node did not answer; `known` is False when it answered that it
    cannot report capacity (Capacity unimplemented): such a node is assumed to fit, is tried
    after the nodes that do report, and its own admission control has the last word.
    `inflight`/`inflight_memory` count the starts this hub has sent to the node and not yet
    seen answered (and, for an answer the node pushed on Watch, those it may not show yet):
    they order concurrent spawns but never refuse a node (the node counts admitted spawns in
    its own answer already). `pushed` says the answer came from the node's Watch stream.
    """

    name: str
    error: str = ""
    known: bool = True
    draining: bool = False
    ready: bool = True
    cpus: float = 0.0
    memory_free: int = 0
    cpu_free: float = 0.0
    running: int = 0
    max_servers: int = 0
    images: list = field(default_factory=list)
    labels: dict = field(default_factory=dict)
    inflight: int = 0
    inflight_memory: int = 0
    # Per device class: {"free": devices with a free share, "total": shares, "models": [...]}.
    devices: dict = field(default_factory=dict)
    inflight_gpus: int = 0
    pushed: bool = False
    # Warm pools: {(full image reference, port): (members ready, memory each holds)}.
    warm: dict = field(default_factory=dict)


@dataclass
class Demand:
    """What the server will hold on its node."""

    memory: int = 0
    cpu: float = 0.0
    image: str = ""
    gpus: int = 0
    gpu_class: str = ""
    gpu_model: str = ""
    # Labels the node must carry (the spawner's node_selector).
    node_selector: dict = field(default_factory=dict)
    # The port the server listens on (a warm pool serves one image and port).
    port: int = 0

    @property
    def device_class(self):
        return self.gpu_class or DEFAULT_GPU_CLASS


def selector_text(selector):
    """A node selector as people write it: gpu=a100,zone=b."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def labels_match(c, demand):
    """Whether the node carries every label the demand selects (a node that cannot report its
    labels carries none)."""
    return all(c.labels.get(k) == v for k, v in demand.node_selector.items())


def from_capacity(name, c, pushed=False):
    """The Candidate for a node's NodeCapacity answer. Free = allocatable - committed; a node
    without a Ready condition counts as Ready."""
    conditions = {k.type: k.status for k in c.conditions}
    return Candidate(
        name=name,
        pushed=pushed,
        draining=c.draining,
        ready=conditions.get("Ready", "True") == "True",
        cpus=c.cpus,
        memory_free=max(0, c.allocatable.memory_bytes - c.committed.memory_bytes),
        cpu_free=max(0.0, c.allocatable.cpu - c.committed.cpu),
        running=c.running_servers,
        max_servers=c.max_servers,
        images=list(c.images),
        devices={
            getattr(d, "class"): {"free": d.free_devices, "total": d.total, "models": list(d.models)} for d in c.devices
        },
        labels=dict(c.labels),
        warm={(normalize_image(w.image), w.port): (w.ready, w.memory_bytes) for w in c.warm},
    )


def normalize_image(ref):
    """The full reference Docker resolves `ref` to, as berthd writes it: `ubuntu` is
    `docker.io/library/ubuntu:latest`, `index.docker.io/x/y` is `docker.io/x/y:latest`. Nodes
    list images as Docker names them (`ubuntu:latest`), hubs configure them as they like."""
    rest, at, digest = ref.partition("@")
    slash = rest.rfind("/") + 1
    colon = rest.rfind(":", slash)
    name, tag = (rest[:colon], rest[colon + 1 :]) if colon >= 0 else (rest, "")
    first, sep, remainder = name.partition("/")
    if sep and (any(ch in first for ch in ".:") or first == "localhost" or first != first.lower()):
        domain, path = first, remainder
    else:
        domain, path = "docker.io", name
    if domain == "index.docker.io":
        domain = "docker.io"
    if domain == "docker.io" and "/" not in path:
        path = "library/" + path
    full = f"{domain}/{path}"
    if tag:
        full += ":" + tag
    elif not at:
        full += ":latest"
    return full + (at + digest if at else "")


def has_image(c, demand):
    """Whether the node reports holding the demanded image (compared as full references)."""
    if demand is None or not demand.image or not c.images:
        return False
    want = normalize_image(demand.image)
    return any(normalize_image(i) == want for i in c.images)


def warm_slot(c, demand):
    """The memory a warm member of the node holds for the demanded image and port, when one is
    likely ready for this spawn (members ready beyond this hub's starts in flight there), or
    None. A start that takes it frees that member's place."""
    if demand is None or not demand.image or not c.warm:
        return None
    ready, memory = c.warm.get((normalize_image(demand.image), demand.port), (0, 0))
    return memory if ready - c.inflight > 0 else None


def why_not(c, demand):
    """Why the node cannot take the server, or '' when it can."""
    if c.error:
        return f"{c.name}: unreachable ({c.error})"
    if not labels_match(c, demand):
        return f"{c.name}: lacks labels {selector_text(demand.node_selector)}"
    if not c.known:
        return ""
    if c.draining:
        return f"{c.name}: draining"
    if not c.ready:
        return f"{c.name}: not ready"
    # Waiting warm members count as servers; the one this start takes becomes it.
    warm = warm_slot(c, demand)
    running = c.running - (1 if warm is not None else 0)
    if c.max_servers and running >= c.max_servers:
        return f"{c.name}: full ({c.running} of {c.max_servers} servers)"
    if demand.memory > c.memory_free + (warm or 0):
        return f"{c.name}: not enough memory ({demand.memory} bytes asked, {c.memory_free} free)"
    if demand.cpu > c.cpu_free + 1e-9:
        return f"{c.name}: not enough cpu ({demand.cpu} asked, {c.cpu_free:.2f} free)"
    # A node without the image is not refused: it pulls it (placement prefers nodes that have it).
    return _gpu_shortfall(c, demand)


def _gpu_shortfall(c, demand):
    """Why the node's devices cannot serve the demand's GPUs, or ''."""
    if not demand.gpus:
        return ""
    cls = demand.device_class
    d = c.devices.get(cls)
    if d is None:
        return f"{c.name}: no {cls} devices"
    if demand.gpu_model and demand.gpu_model.lower() not in (m.lower() for m in d["models"]):
        return f"{c.name}: no {cls} of model {demand.gpu_model}"
    if demand.gpus > d["free"]:
        return f"{c.name}: not enough {cls} devices ({demand.gpus} asked, {d['free']} free)"
    return ""


def _free_gpus(c, demand):
    """Free devices of the demand's class once this hub's starts in flight are counted."""
    if not demand.gpus:
        return 0
    return c.devices.get(demand.device_class, {}).get("free", 0) - c.inflight_gpus


def _free(c):
    return c.memory_free - c.inflight_memory


def _servers(c):
    return c.running + c.inflight


def _cold(c, demand):
    return warm_slot(c, demand) is None


def spread(fits, demand=None):
    """Nodes with a warm server of the image first (it answers in about a second), then nodes
    holding the image (a pull can take minutes), then, for a GPU demand, most free devices of
    its class, then most free memory (then fewest servers): spreads servers over the nodes."""
    demand = demand or Demand()
    return sorted(
        fits,
        key=lambda c: (
            not c.known,
            _cold(c, demand),
            not has_image(c, demand),
            -_free_gpus(c, demand),
            -_free(c),
            _servers(c),
            c.name,
        ),
    )


def pack(fits, demand=None):
    """Nodes with a warm server of the image first, then nodes holding the image, then the
    fewest free devices that fit (for a GPU demand), then least free memory (then most
    servers): fills one node before the next."""
    demand = demand or Demand()
    return sorted(
        fits,
        key=lambda c: (
            not c.known,
            _cold(c, demand),
            not has_image(c, demand),
            _free_gpus(c, demand),
            _free(c),
            -_servers(c),
            c.name,
        ),
    )


POLICIES = {"spread": spread, "pack": pack}


def rank(candidates, demand, policy="spread", spawner=None):
    """The nodes that fit, best first, and the reasons the others do not.

    `policy` is "spread", "pack", or a callable taking the fitting candidates and the demand
    (and, if it takes a third argument, the spawner: its user, name and user_options, so a
    deployment can pin groups or profiles to nodes) and returning them in the order to try.
    """
    fits, reasons = [], []
    for c in candidates:
        reason = why_not(c, demand)
        if reason:
            reasons.append(reason)
        else:
            fits.append(c)
    if callable(policy):
        takes_spawner = len(inspect.signature(policy).parameters) >= 3
        ordered = list(policy(fits, demand, spawner) if takes_spawner else policy(fits, demand))
    else:
        ordered = POLICIES[policy](fits, demand)
    return ordered, reasons
