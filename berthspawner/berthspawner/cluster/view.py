"""A node's answers as the cluster page shows them: sizes, ages, bars, conditions, servers with
their CPU and memory now. Pure functions of what the poller holds and the time, so the page's
words and numbers are tested without a node or a browser."""

import dataclasses
from typing import Any, Optional

from .._proto.berth.v1 import spawner_pb2 as pb
from ..placement import normalize_image

State = pb.ServerStatus.State
# Conditions whose normal status is "True"; for every other, "True" is a problem.
NORMAL_TRUE = frozenset({"Ready"})


@dataclasses.dataclass
class NodeState:
    """What the poller knows of one node (proto messages as the node sent them)."""

    name: str
    address: str
    can_drain: bool = False
    # None until the first round of calls ends.
    up: Optional[bool] = None
    error: str = ""
    # Wall-clock seconds: the first failure of the current outage, the last answer.
    down_since: Optional[float] = None
    last_answer: Optional[float] = None
    # NodeCapacity and VersionResponse as last answered.
    capacity: Any = None
    version: Any = None
    servers: list = dataclasses.field(default_factory=list)
    # container id -> ServerStats
    stats: dict = dataclasses.field(default_factory=dict)
    # container id -> cores in use over the last interval
    cpu: dict = dataclasses.field(default_factory=dict)
    volumes: list = dataclasses.field(default_factory=list)


def size(n):
    """Bytes as berthctl writes them: `512 B`, `1.5 KiB`, `4.0 GiB`."""
    if n is None or n < 0:
        return "?"
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def age(seconds):
    """A duration in its two largest units: `45s`, `3m 12s`, `2h 5m`, `3d 4h`."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m {s}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h {m}m"
    d, h = divmod(h, 24)
    return f"{d}d {h}h"


def seconds(ts):
    """A protobuf Timestamp as wall-clock seconds, or None when unset."""
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return None
    return ts.seconds + ts.nanos / 1e9


def cpu_rates(previous, stats):
    """Cores each container used between two Stats answers: `previous` and `stats` map
    container ids to ServerStats; a container seen once (or a counter that went back: a
    restarted container) has no rate yet."""
    rates = {}
    for cid, now in stats.items():
        before = previous.get(cid)
        if before is None:
            continue
        t0, t1 = seconds(before.time), seconds(now.time)
        if t0 is None or t1 is None or t1 <= t0 or now.cpu_ns < before.cpu_ns:
            continue
        rates[cid] = (now.cpu_ns - before.cpu_ns) / ((t1 - t0) * 1e9)
    return rates


def bar(label, used, total, text):
    """One capacity bar: percent filled (None when there is no limit to fill)."""
    pct = None
    if total and total > 0:
        pct = round(min(100.0, max(0.0, 100.0 * used / total)), 1)
    return {"label": label, "pct": pct, "text": text}


def bars(c):
    """The bars of a NodeCapacity: memory and CPU committed of allocatable, memory in use on
    the host, servers of their limit, each device class's shares."""
    mem_used = c.memory_total_bytes - c.memory_available_bytes
    out = [
        bar(
            "Memory committed",
            c.committed.memory_bytes,
            c.allocatable.memory_bytes,
            f"{size(c.committed.memory_bytes)} of {size(c.allocatable.memory_bytes)}",
        ),
        bar("CPU committed", c.committed.cpu, c.allocatable.cpu, f"{c.committed.cpu:g} of {c.allocatable.cpu:g} cores"),
        bar(
            "Memory in use",
            mem_used,
            c.memory_total_bytes,
            f"{size(mem_used)} of {size(c.memory_total_bytes)} ({c.cpus} CPUs)",
        ),
    ]
    if c.max_servers:
        out.append(bar("Servers", c.running_servers, c.max_servers, f"{c.running_servers} of {c.max_servers}"))
    else:
        out.append(bar("Servers", c.running_servers, 0, f"{c.running_servers} running (no limit)"))
    for d in c.devices:
        models = f" ({', '.join(d.models)})" if d.models else ""
        if d.discovery_error:
            models += f"; discovery failed: {d.discovery_error}"
        # `class` is a Python keyword: protobuf keeps the field under its name all the same.
        label = f"Devices: {getattr(d, 'class')}"
        out.append(bar(label, d.committed, d.total, f"{d.committed} of {d.total} shares held{models}"))
    return out


def conditions(c):
    """Each condition, marked `bad` when its status is not the normal one."""
    out = []
    for cond in c.conditions:
        normal = "True" if cond.type in NORMAL_TRUE else "False"
        out.append(
            {
                "type": cond.type,
                "status": cond.status,
                "reason": cond.reason,
                "message": cond.message,
                "bad": cond.status != normal,
            }
        )
    return out


def fencing(c):
    """The node's fencing in words, or "" when it does not fence by default."""
    if not c.fence_after_seconds:
        return ""
    return f"stops its servers {age(c.fence_after_seconds)} after losing the hub (stop grace {c.stop_grace_seconds}s)"


def drain_reason(c):
    for cond in c.conditions:
        if cond.type == "Draining" and cond.status == "True":
            return cond.message or cond.reason
    return ""


def servers(st, now):
    """The node's servers, user then server name: state, image, age, CPU and memory now."""
    out = []
    for s in sorted(st.servers, key=lambda s: (s.key.user, s.key.server_name)):
        started = seconds(s.started_at)
        active = s.state in (State.STARTING, State.RUNNING, State.STOPPING)
        stats = st.stats.get(s.container_id) if s.container_id else None
        rate = st.cpu.get(s.container_id)
        out.append(
            {
                "user": s.key.user,
                "server": s.key.server_name,
                "state": State.Name(s.state),
                "image": s.image,
                "age": age(now - started) if active and started else "",
                "cpu": f"{rate:.2f}" if active and rate is not None else "",
                "memory": f"{size(stats.memory_bytes)} of {size(stats.memory_limit_bytes)}" if active and stats else "",
                "reason": s.reason if s.state == State.EXITED else "",
            }
        )
    return out


def images(st):
    """Images on the node, with the servers of this node running each."""
    # Compared in full: Capacity may say `x/y:1` where a server's status says `docker.io/x/y:1`.
    running = {}
    for s in st.servers:
        if s.state in (State.STARTING, State.RUNNING):
            ref = normalize_image(s.image)
            running[ref] = running.get(ref, 0) + 1
    listed = list(st.capacity.images) if st.capacity is not None else []
    sizes = dict(st.capacity.image_sizes) if st.capacity is not None else {}
    return [
        {"reference": ref, "size": size(sizes.get(ref)), "servers": running.get(normalize_image(ref), 0)}
        for ref in sorted(listed)
    ]


def warm(c):
    """The node's warm pools: servers booted ahead per image, ready of kept."""
    return [
        {"image": w.image, "port": w.port, "ready": w.ready, "size": w.size}
        for w in sorted(c.warm, key=lambda w: (w.image, w.port))
        if w.size or w.ready
    ]


def volumes(st, now):
    """The node's user volumes, by owner: size (`?` when unknown) and last use by a server."""
    return [
        {
            "name": v.name,
            "user": v.owner.user,
            "server": v.owner.server_name,
            "size": size(v.size_bytes),
            "driver": v.driver,
            "last_used": f"{age(now - seconds(v.last_used))} ago" if seconds(v.last_used) else "",
        }
        for v in sorted(st.volumes, key=lambda v: (v.owner.user, v.owner.server_name, v.name))
    ]


def node(st, now):
    """One node as the page's JSON has it."""
    out = {
        "name": st.name,
        "address": st.address,
        "can_drain": st.can_drain,
        "state": "waiting" if st.up is None else ("up" if st.up else "down"),
        "error": st.error,
        "down_for": age(now - st.down_since) if st.up is False and st.down_since else "",
        "last_answer": age(now - st.last_answer) if st.last_answer else "",
        "version": "",
        "draining": False,
        "drain_reason": "",
        "labels": {},
        "fencing": "",
        "bars": [],
        "conditions": [],
        "servers": servers(st, now),
        "images": images(st),
        "warm": [],
        "volumes": volumes(st, now),
    }
    if st.version is not None:
        v = st.version
        out["version"] = f"berthd {v.daemon_version}, Docker {v.docker_version}"
    c = st.capacity
    if c is not None:
        out.update(
            draining=c.draining,
            drain_reason=drain_reason(c),
            labels=dict(sorted(c.labels.items())),
            fencing=fencing(c),
            bars=bars(c),
            conditions=conditions(c),
            warm=warm(c),
        )
    return out
