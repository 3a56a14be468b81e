"""Spawns through a real JupyterHub: berthspawner on real berthd against DockerSpawner 14.

Both hubs (same JupyterHub, same proxy, same image, same host engine) run at once and every
scenario runs on one then the other (the order alternates), so machine load hits both alike.
A spawn is timed from the POST of the server to the `ready` event of the hub's progress stream;
a stop from the DELETE until the hub's user model no longer lists the server.

    python bench/e2e.py [--smoke] [--warm N] [--out FILE]

With --warm N a third hub runs berthspawner on a second berthd that keeps N servers of the image
warm ([[warm.pools]]); before each scenario it waits until the pool is full again (it refills in
the background), so every spawn of a scenario of at most N users can take a warm server.
"""

import argparse
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "e2e"))

import conftest  # noqa: E402  (the e2e suite's Berthd and Hub: one way to start them)
from conftest import IMAGE, TINY, Berthd, Hub, docker, require_docker  # noqa: E402

# DockerSpawner's containers carry this prefix (and a per-run suffix), so they are told apart
# from everything else on the shared engine and removed at the end.
DS_PREFIX = "bench-ds"


def hub_ip():
    """Where the servers reach the hub: the bridge's gateway, or docker0's address when the
    engine's bridge network does not name its gateway."""
    gw = docker("network", "inspect", "bridge", "-f", "{{range .IPAM.Config}}{{.Gateway}}{{end}}")
    if gw:
        return gw
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True).stdout
    assert out.split(), "no docker bridge address found"
    return out.split()[3].split("/")[0]


def dockerspawner_config(prefix):
    return f'''
c.JupyterHub.spawner_class = "docker"
c.DockerSpawner.image = "{IMAGE}"
c.DockerSpawner.prefix = "{prefix}"
c.DockerSpawner.name_template = "{{prefix}}-{{username}}--{{servername}}"
c.DockerSpawner.remove = True
c.DockerSpawner.pull_policy = "never"
c.DockerSpawner.extra_labels = {{"berth.bench": "{prefix}"}}
'''


# Both hubs: 30 concurrent single-user servers on a shared 2-core machine can take minutes.
SLOW_MACHINE = "c.Spawner.start_timeout = 300\nc.Spawner.http_timeout = 300\n"

TINY_HOOK = f"""
def _tiny(spawner):
    if spawner.user.name.startswith("tiny"):
        spawner.image = "{TINY}"
        spawner.cmd = ["httpd", "-f", "-p", "8888", "-h", "/www"]
c.Spawner.pre_spawn_hook = _tiny
"""


def pct(values, p):
    """The p-th percentile (nearest rank) of `values`."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def warm_pool(size):
    return f"""
[[warm.pools]]
image = "{IMAGE}"
size = {size}
memory_bytes = "128M"
"""


def warm_ready(node):
    """How many warm servers of the node wait now (its Capacity answer)."""
    import grpc
    from berthspawner._proto.berth.v1 import spawner_pb2 as pb
    from berthspawner._proto.berth.v1 import spawner_pb2_grpc as pb_grpc

    with grpc.insecure_channel(node.address) as ch:
        cap = pb_grpc.SpawnerStub(ch).Capacity(pb.CapacityRequest(), timeout=30)
    return sum(w.ready for w in cap.warm)


def wait_warm(node, want, timeout=900):
    """Waits until `want` warm servers wait on the node (refilling takes each one's boot)."""
    end = time.monotonic() + timeout
    while warm_ready(node) < want:
        assert time.monotonic() < end, f"the warm pool did not reach {want} in {timeout} s"
        time.sleep(1)


class Timer:
    """Spawn and stop timings through one hub's REST API."""

    def __init__(self, hub, label):
        self.hub = hub
        self.label = label

    def add_users(self, users):
        r = self.hub.api("POST", "/users", json={"usernames": list(users)})
        assert r.status_code in (201, 409), (r.status_code, r.text)

    def spawn(self, user, timeout=600):
        """Seconds from the POST to the hub's `ready` event; (seconds, t0 wall clock)."""
        t0_wall = time.time()
        t0 = time.perf_counter()
        # A hub busy with 30 spawns at once may take a while to answer the POST itself.
        r = self.hub.api("POST", f"/users/{user}/server", json={}, timeout=timeout)
        assert r.status_code in (201, 202), f"{self.label} spawn {user}: {r.status_code} {r.text}"
        if r.status_code == 202:
            stream = requests.get(
                f"{self.hub.url}/hub/api/users/{user}/server/progress",
                headers={"Authorization": f"token {self.hub.token}"},
                stream=True,
                timeout=timeout,
            )
            ok = False
            for line in stream.iter_lines(decode_unicode=True):
                if not line or not line.startswith("data:"):
                    continue
                ev = json.loads(line[5:])
                if ev.get("ready"):
                    ok = True
                    break
                if ev.get("failed"):
                    raise AssertionError(f"{self.label} spawn {user} failed: {ev.get('message')}")
            stream.close()
            # The proxy ends a stream after a while (CHP's Python port: 20 s): poll from there.
            end = t0 + timeout
            while not ok:
                assert time.perf_counter() < end, f"{self.label} spawn {user}: not ready after {timeout}s"
                server = self.hub.api("GET", f"/users/{user}").json().get("servers", {}).get("")
                assert server is not None, f"{self.label} spawn {user} failed"
                ok = server.get("ready")
                time.sleep(0 if ok else 0.2)
        return time.perf_counter() - t0, t0_wall

    def stop(self, user, timeout=120):
        t0 = time.perf_counter()
        r = self.hub.api("DELETE", f"/users/{user}/server", timeout=timeout)
        assert r.status_code in (202, 204), f"{self.label} stop {user}: {r.status_code} {r.text}"
        end = t0 + timeout
        while r.status_code == 202:
            model = self.hub.api("GET", f"/users/{user}").json()
            if "" not in model.get("servers", {}):
                break
            assert time.perf_counter() < end, f"{self.label} stop {user} timed out"
            time.sleep(0.05)
        return time.perf_counter() - t0


class CpuMeter:
    """CPU seconds by part while a scenario runs, from /proc: the spawner's hub process, berthd,
    the Docker engine (dockerd, containerd and its shims, docker-proxy, fuse-overlayfs) and the
    single-user servers. Sampled every 0.2 s; a process that ends loses what it used since its
    last sample (a short-lived process may be missed altogether)."""

    DOCKER = ("dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2", "docker-proxy", "fuse-overlayfs")

    def __init__(self, pids):
        self.named = {pid: part for part, pid in pids.items()}  # the hub, berthd
        self.base, self.last, self.part = {}, {}, {}
        self._stop = threading.Event()
        self._sample(first=True)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _classify(self, pid):
        if pid in self.named:
            return self.named[pid]
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return None
        if comm in self.DOCKER or comm.startswith("containerd-shim"):
            return "docker"
        if "jupyterhub-singleuser" in cmd or "ipykernel" in cmd or "httpd" == comm:
            return "servers"
        return None

    def _sample(self, first=False):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            if self.part.get(pid) is None:
                # Again until known: a container's first process execs into the server.
                self.part[pid] = self._classify(pid)
            if self.part[pid] is None:
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks = int(fields[11]) + int(fields[12])
            self.base.setdefault(pid, ticks if first else 0)
            self.last[pid] = ticks

    def _run(self):
        while not self._stop.wait(0.2):
            self._sample()

    def stop(self):
        """CPU seconds by part since the meter started."""
        self._stop.set()
        self._thread.join()
        self._sample()
        hz = os.sysconf("SC_CLK_TCK")
        parts = {}
        for pid, ticks in self.last.items():
            part = self.part[pid]
            parts[part] = parts.get(part, 0.0) + (ticks - self.base[pid]) / hz
        return parts


def run_scenario(timer, users, concurrent):
    """Spawns `users` (in order, or all at once), then stops them the same way."""
    timer.add_users(set(users))
    spawns, stops = [], []
    if concurrent:
        with ThreadPoolExecutor(len(users)) as pool:
            spawns = [s for s, _ in pool.map(timer.spawn, users)]
            stops = list(pool.map(timer.stop, users))
    else:
        for u in users:
            spawns.append(timer.spawn(u)[0])
            stops.append(timer.stop(u))
    return spawns, stops


SCENARIOS = [
    # (label, users, concurrent)
    ("1 user ×5, sequential", ["solo"] * 5, False),
    ("10 users, sequential", [f"seq{i}" for i in range(10)], False),
    ("10 users, concurrent", [f"cc{i}" for i in range(10)], True),
    ("30 users, concurrent", [f"cx{i}" for i in range(30)], True),
]
QUICK = [
    ("1 user ×3, sequential", ["solo"] * 3, False),
    ("10 users, concurrent", [f"cc{i}" for i in range(10)], True),
]
SMOKE = [
    ("1 user, once", ["solo"], False),
    ("2 users, concurrent", [f"cc{i}" for i in range(2)], True),
]


def breakdown(hub, node, user):
    """One berth spawn, phase by phase: client clock + berthd's progress timestamps + hub log."""
    import grpc

    from berthspawner._proto.berth.v1 import spawner_pb2 as pb
    from berthspawner._proto.berth.v1 import spawner_pb2_grpc as pb_grpc

    t = Timer(hub, "berth")
    t.add_users([user])
    hub_log_start = os.path.getsize(hub.log.name)
    total, t0 = t.spawn(user)
    t_ready = t0 + total
    events = []
    with grpc.insecure_channel(node.address) as ch:
        stub = pb_grpc.SpawnerStub(ch)
        req = pb.ProgressRequest(key=pb.ServerKey(user=user, server_name=""))
        for ev in stub.Progress(req, timeout=10):
            events.append((pb.ProgressEvent.Phase.Name(ev.phase), ev.time.seconds + ev.time.nanos / 1e9, ev.message))
            if ev.ready or ev.failed:
                break
    with open(hub.log.name) as f:
        f.seek(hub_log_start)
        log = f.read()
    t.stop(user)
    return t0, t_ready, events, log


def hub_time(log, needle):
    """Wall-clock time of the first hub log line containing `needle`."""
    import datetime

    for line in log.splitlines():
        if needle in line and line.startswith("["):
            stamp = " ".join(line[3:].split(" ")[:2])
            try:
                dt = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f")
            except ValueError:
                continue
            return dt.replace(tzinfo=datetime.timezone.utc).timestamp()
    return None


def machine():
    mem = ""
    with open("/proc/meminfo") as f:
        mem = f"{int(f.readline().split()[1]) // 1024 // 1024} GiB"
    dv = docker("version", "-f", "{{.Server.Version}} (API {{.Server.APIVersion}})")
    import jupyterhub

    try:
        import dockerspawner

        dsv = dockerspawner.__version__
    except ImportError:
        dsv = "?"
    return (
        f"{platform.node()}: {os.cpu_count()} cores, {mem}, {platform.system()} {platform.release()}, "
        f"Docker {dv}, JupyterHub {jupyterhub.__version__}, DockerSpawner {dsv}, image {IMAGE}, "
        f"berthd {os.path.relpath(conftest.BERTHD, os.path.dirname(HERE))}"
    )


def load():
    return "load average " + " / ".join(f"{x:.2f}" for x in os.getloadavg())


def fmt(values):
    return f"{pct(values, 50):.2f} / {pct(values, 90):.2f} / {max(values):.2f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="two tiny scenarios, to check the harness")
    ap.add_argument("--quick", action="store_true", help="1 user ×3 and 10 concurrent only (a loaded machine)")
    ap.add_argument(
        "--only", choices=["berth", "DockerSpawner", "berth warm"], help="one spawner (to study it), not the comparison"
    )
    ap.add_argument("--out", default=None, help="where the tables go (default: their section of bench/RESULTS.md)")
    ap.add_argument("--warm", type=int, default=0, help="also a hub on a node keeping N warm servers")
    args = ap.parse_args()
    require_docker()
    scenarios = SMOKE if args.smoke else QUICK if args.quick else SCENARIOS
    out = args.out
    prefix = f"{DS_PREFIX}-{secrets.token_hex(3)}"
    base = tempfile.mkdtemp(prefix="berth-bench-")
    # Debug logging for the breakdown; users named tiny* run the tiny image (busybox httpd), so
    # the hub's and berth's own share of a spawn shows.
    hub_debug = 'c.JupyterHub.log_level = "DEBUG"\n' + TINY_HOOK + SLOW_MACHINE
    rows, loads, cpu = [], [], {}
    print(f"bench: work dir {base}; DockerSpawner containers {prefix}-*", file=sys.stderr)
    started = time.time()
    ip = hub_ip()
    warm_node = Berthd("warm", base, config=warm_pool(args.warm)) if args.warm else None
    with Berthd("bench", base) as node:
        berth_hub = ds_hub = warm_hub = None
        try:
            # Inside the try: a hub that cannot start still stops the nodes (and their pools).
            berth_hub = Hub(os.path.join(base, "berth"), [node], extra=hub_debug, hub_ip=ip)
            ds_hub = Hub(os.path.join(base, "ds"), [], extra=dockerspawner_config(prefix) + SLOW_MACHINE, hub_ip=ip)
            timers = {"berth": Timer(berth_hub, "berth"), "DockerSpawner": Timer(ds_hub, "DockerSpawner")}
            if warm_node:
                warm_hub = Hub(os.path.join(base, "warm"), [warm_node], extra=SLOW_MACHINE, hub_ip=ip)
                timers["berth warm"] = Timer(warm_hub, "berth warm")
            # One warm-up spawn each (first imports, page cache), not counted.
            for t in timers.values() if not args.smoke else ():
                run_scenario(t, ["warmup"], False)
            for i, (label, users, conc) in enumerate(scenarios):
                order = ["berth", "DockerSpawner"] if i % 2 == 0 else ["DockerSpawner", "berth"]
                if warm_node:
                    order.append("berth warm")
                res = {}
                for name in order:
                    if args.only and name != args.only:
                        continue
                    if warm_node:
                        # The pool full again before every scenario (not timed), so its refills
                        # never share the machine with a timed spawn: a class starts on a full
                        # pool, and the cold spawners run on a quiet machine.
                        wait_warm(warm_node, args.warm)
                    before = os.getloadavg()[0]
                    print(f"bench: {label}: {name}", file=sys.stderr)
                    pids = {"hub": timers[name].hub.proc.pid}
                    if name == "berth":
                        pids["berthd"] = node.proc.pid
                    if name == "berth warm":
                        pids["berthd"] = warm_node.proc.pid
                    meter = CpuMeter(pids)
                    res[name] = run_scenario(timers[name], users, conc)
                    cpu[(label, name)] = (meter.stop(), len(users))
                    print(
                        f"bench: {label} / {name}: spawns {res[name][0]} stops {res[name][1]}",
                        file=sys.stderr,
                        flush=True,
                    )
                    loads.append(f"{label} / {name}: 1-min load {before:.2f} → {os.getloadavg()[0]:.2f}")
                rows.append((label, res))
            bd = [breakdown(berth_hub, node, u) for u in ("anatomy", "tinyanatomy")]
        finally:
            if berth_hub is not None:
                berth_hub.stop()
            if ds_hub is not None:
                ds_hub.stop()
            if warm_hub is not None:
                warm_hub.stop()
            if warm_node is not None:
                warm_node.stop()
            left = docker("ps", "-aq", "--filter", f"label=berth.bench={prefix}").split()
            if left:
                docker("rm", "-f", *left)
    elapsed = time.time() - started

    lines = [
        "## End to end through JupyterHub: berthspawner vs DockerSpawner",
        "",
        f"Generated by `bench/run-e2e{' --smoke' if args.smoke else ' --quick' if args.quick else ''}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {elapsed:.0f} s.",
        "",
        f"Machine: {machine()}.",
        "",
        f"Load: {load()} at the end (the concurrent scenarios load the machine themselves; both spawners "
        "ran interleaved in the same run: compare the ratios; the load per scenario is below).",
        "",
        "Spawn: POST /hub/api/users/<u>/server → `ready` on the hub's progress stream. "
        "Stop: DELETE → server gone from the user model. Seconds, p50 / p90 / max.",
        "",
        "| scenario | berth spawn | DockerSpawner spawn | ratio p50 (p90) | berth stop | DockerSpawner stop | ratio p50 |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, res in rows:
        if len(res) < 2:
            continue
        bs, bst = res["berth"]
        ds, dst = res["DockerSpawner"]
        lines.append(
            f"| {label} | {fmt(bs)} | {fmt(ds)} | {pct(bs, 50) / pct(ds, 50):.2f}× ({pct(bs, 90) / pct(ds, 90):.2f}×) "
            f"| {fmt(bst)} | {fmt(dst)} | {pct(bst, 50) / pct(dst, 50):.2f}× |"
        )
    if args.warm:
        lines += [
            "",
            f"Warm start: the same scenarios on a third hub whose node keeps {args.warm} servers of the image "
            "booted ahead ([[warm.pools]]); the pool is full when each scenario begins.",
            "",
            "| scenario | warm spawn | cold berth spawn | DockerSpawner spawn | warm / cold p50 | warm / DockerSpawner p50 |",
            "|---|---|---|---|---|---|",
        ]
        for label, res in rows:
            if {"berth warm", "berth", "DockerSpawner"} <= set(res):
                ws, bs, ds = res["berth warm"][0], res["berth"][0], res["DockerSpawner"][0]
                lines.append(
                    f"| {label} | {fmt(ws)} | {fmt(bs)} | {fmt(ds)} | {pct(ws, 50) / pct(bs, 50):.2f}× "
                    f"| {pct(ws, 50) / pct(ds, 50):.2f}× |"
                )
    lines += ["", "Load per scenario: " + "; ".join(loads) + ".", ""]
    lines += cpu_table(rows, cpu)
    for user, (t0, t_ready, events, log) in zip(("anatomy", "tinyanatomy"), bd):
        lines += breakdown_table(user, t0, t_ready, events, log)
    text = "\n".join(lines) + "\n"
    if out:
        with open(out, "w") as f:
            f.write(text)
    else:
        replace_section(os.path.join(HERE, "RESULTS.md"), "e2e", text)
    print(text)


def cpu_table(rows, cpu):
    """CPU seconds per spawn (spawn and stop together) by part, for each scenario and spawner."""
    out = [
        "### Where the CPU goes",
        "",
        "CPU seconds per server (its spawn and its stop), by part, from /proc while each scenario "
        "ran (bench/e2e.py `CpuMeter`). The machine has 2 cores: n servers booting at once need "
        "n × (servers' CPU per server) / 2 seconds at least.",
        "",
        "| scenario | spawner | single-user servers | Docker engine | hub | berthd | all |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, res in rows:
        for name in res:
            parts, n = cpu[(label, name)]
            each = {k: v / n for k, v in parts.items()}
            berthd = f"{each.get('berthd', 0):.2f}" if name.startswith("berth") else "—"
            out.append(
                f"| {label} | {name} | {each.get('servers', 0):.2f} | {each.get('docker', 0):.2f} | "
                f"{each.get('hub', 0):.2f} | {berthd} | {sum(each.values()):.2f} |"
            )
    out.append("")
    return out


def replace_section(path, name, text):
    """Puts `text` between the section's markers in `path` (appended when it has none)."""
    begin, end = f"<!-- {name}: generated, begin -->\n", f"<!-- {name}: generated, end -->\n"
    with open(path) as f:
        old = f.read()
    if begin in old and end in old:
        new = old[: old.index(begin)] + begin + text + old[old.index(end) :]
    else:
        new = old.rstrip("\n") + "\n\n" + begin + text + end
    with open(path, "w") as f:
        f.write(new)


def breakdown_table(user, t0, t_ready, events, log):
    marks = [(f"POST /hub/api/users/{user}/server sent", t0)]
    started = hub_time(log, f"berth: {user} started on")
    for phase, at, _msg in events:
        marks.append((f"berthd: {phase}", at))
    if started:
        marks.append(("hub: Start RPC returned (berthspawner log)", started))
    up = hub_time(log, "responded with")
    if up:
        marks.append(("hub: its own HTTP check of the server answered", up))
    took = hub_time(log, f"User {user} took")
    if took:
        marks.append(('hub: spawn done ("took … seconds")', took))
    marks.append(("client: `ready` on the progress stream", t_ready))
    marks.sort(key=lambda m: m[1])
    out = [
        f"### Where one berth spawn's time goes: {IMAGE if user == 'anatomy' else TINY}",
        "",
        "Client clock, berthd's progress timestamps and the hub's (debug) log, on one machine's wall clock.",
        "",
        "| step | at (ms from POST) | since previous (ms) |",
        "|---|---|---|",
    ]
    prev = t0
    for name, at in marks:
        out.append(f"| {name} | {(at - t0) * 1000:.0f} | {(at - prev) * 1000:.0f} |")
        prev = at
    out.append("")
    return out


if __name__ == "__main__":
    main()
