"""A simulated cluster: K real berthd processes on the simulated engine (feature `sim`: the
in-memory fake engine, each container a real tiny HTTP listener on 127.0.0.1, each start taking
BERTHD_SIM_START_MS), one real JupyterHub with berthspawner, spawns at a fixed rate through the
hub's REST API. Measures placement latency (start() entered → Start RPC sent, in the hub; and
the node choice itself: gathering the nodes' answers and ranking them), hub CPU and memory per
spawn, RPCs per spawn, Watch streams held, spread evenness, and what spawns do when 10 nodes
vanish at once in the middle of a run. Each configuration: capacity pushed on Watch (the
default), or the baseline without it (capacity_push False, capacity_ttl 0: every node asked at
every spawn).

    python bench/sim.py [--smoke] [--out FILE]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
os.environ.setdefault("BERTHD", os.path.join(REPO, "target", "sim", "debug", "berthd"))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))

from conftest import IMAGE, TINY, Berthd, Hub  # noqa: E402
from e2e import load, pct, replace_section  # noqa: E402

START_MS = 300
MAX_SERVERS = 60

# Counts the hub's RPCs per method, the placement latency of each start (start() entered →
# Start RPC sent), the node choice (BerthSpawner._answers + _rank) and the Watch streams held
# (and how many push capacity); dumped to a file twice a second.
PROBE = """
import asyncio, contextvars, json, os, threading, time
import berthspawner.nodes as _bn
import berthspawner.spawner as _bs
_calls, _placed, _t0 = {{}}, [], contextvars.ContextVar("t0", default=None)
_chosen = []
_ready = {{}}
import jupyterhub.user as _ju
_orig_spawn = _ju.User.spawn
async def _spawn(self, *args, **kwargs):
    out = await _orig_spawn(self, *args, **kwargs)
    _ready[self.name] = time.time()
    return out
_ju.User.spawn = _spawn
_orig_call, _orig_start = _bn.Node.call, _bs.BerthSpawner.start
_orig_answers, _orig_rank = _bs.BerthSpawner._answers, _bs.BerthSpawner._rank
async def _answers(self, nodes, fresh=False):
    t = time.perf_counter()
    out = await _orig_answers(self, nodes, fresh)
    self._probe_answers = time.perf_counter() - t
    return out
def _rank(self, nodes, answers, demand):
    t = time.perf_counter()
    out = _orig_rank(self, nodes, answers, demand)
    took = getattr(self, "_probe_answers", None)
    if took is not None:
        _chosen.append((took + time.perf_counter() - t) * 1000)
        self._probe_answers = None
    return out
_bs.BerthSpawner._answers, _bs.BerthSpawner._rank = _answers, _rank
async def _call(self, method, request, timeout):
    _calls[method] = _calls.get(method, 0) + 1
    t0 = _t0.get()
    if method == "Start" and t0 is not None:
        _placed.append((time.perf_counter() - t0) * 1000)
        _t0.set(None)
    return await _orig_call(self, method, request, timeout)
async def _start(self):
    _t0.set(time.perf_counter())
    return await _orig_start(self)
_bn.Node.call, _bs.BerthSpawner.start = _call, _start
def _dump():
    while True:
        time.sleep(0.5)
        ns = list(_bn._NODES.values())
        w = sum(1 for n in ns if n.watching)
        p = sum(1 for n in ns if n.pushed() is not None)
        with open("{path}.tmp", "w") as f:
            json.dump({{"calls": dict(_calls), "placed": list(_placed), "chosen": list(_chosen), "watching": w, "pushing": p, "ready": dict(_ready)}}, f)
        os.replace("{path}.tmp", "{path}")
threading.Thread(target=_dump, daemon=True).start()
c.BerthSpawner.capacity_ttl = {ttl}
c.BerthSpawner.capacity_push = {push}
c.Spawner.mem_limit = "256M"
c.JupyterHub.log_level = "WARN"
"""


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def probe(path):
    for _ in range(20):
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            time.sleep(0.25)
    return {"calls": {}, "placed": [], "chosen": [], "watching": 0, "pushing": 0, "ready": {}}


def spawn_at_rate(hub, users, rate, path, at=None):
    """POSTs each user's server at `rate` per second (from enough threads that a slow hub
    answer does not delay the next POST); waits until each is up, as the probe in the hub saw
    it (User.spawn returned: the server answered the hub's check; the client does not poll
    the hub, which would add to the hub's load). Seconds each (None: the POST was refused or
    the server was not up within 120 s). `at(i)` is called just before the i-th POST."""
    posted = [None] * len(users)

    def one(i_user):
        i, user = i_user
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if at is not None:
            at(i)
        t0 = time.time()
        try:
            r = hub.api("POST", f"/users/{user}/server", json={})
        except requests.RequestException:
            return  # the hub did not answer within 30 s: counted as failed
        if r.status_code in (201, 202):
            posted[i] = t0

    start = time.perf_counter() + 0.5
    with ThreadPoolExecutor(max(8, int(rate * 2))) as pool:
        list(pool.map(one, enumerate(users)))
    while True:
        ready = probe(path)["ready"]
        now = time.time()
        waiting = [t for u, t in zip(users, posted) if t is not None and u not in ready and now - t < 120]
        if not waiting:
            break
        time.sleep(1)
    return [
        ready[u] - t if t is not None and u in ready and ready[u] - t < 120 else None for u, t in zip(users, posted)
    ]


def servers_per_node(nodes):
    import grpc

    from berthspawner._proto.berth.v1 import spawner_pb2 as pb
    from berthspawner._proto.berth.v1 import spawner_pb2_grpc as pb_grpc

    counts = []
    for n in nodes:
        with grpc.insecure_channel(n.address) as ch:
            counts.append(len(pb_grpc.SpawnerStub(ch).List(pb.ListRequest(), timeout=10).servers))
    return counts


def run(k, n, rate, ttl, push, vanish=0, base=None):
    """One cluster of k nodes, n spawns at `rate`/s, capacity_ttl `ttl`, capacity pushed on
    Watch or not; with `vanish`, that many nodes are SIGKILLed at once before the middle spawn.
    A dict of figures."""
    base = tempfile.mkdtemp(prefix=f"berth-sim-{k}-", dir=base)
    path = os.path.join(base, "probe.json")
    nodes = []
    try:
        for i in range(k):
            nodes.append(Berthd(f"s{i}", base, config=f"[capacity]\nmax_servers = {MAX_SERVERS}\n"))
        extra = PROBE.format(path=path, ttl=ttl, push=push) + f'c.BerthSpawner.image = "{TINY}"\n'
        hub = Hub(base, nodes, extra=extra, hub_ip="127.0.0.1")
        try:
            users = [f"u{i}" for i in range(n)]
            for i in range(0, n, 200):
                hub.api("POST", "/users", json={"usernames": users[i : i + 200]})
            # One spawn first, so the nodes' Watch streams are up (as in a running hub).
            spawn_at_rate(hub, ["warm"], 1, path) if hub.api("POST", "/users", json={"usernames": ["warm"]}) else None
            time.sleep(1)
            before, cpu0 = probe(path), cpu_ticks(hub.proc.pid)
            killed = {}
            lock = threading.Lock()

            def at(i):
                if not vanish or i != n // 2:
                    return
                with lock:
                    killed["probe"] = probe(path)
                    killed["t"] = time.perf_counter()
                    for node in nodes[:vanish]:
                        node.proc.kill()

            t0 = time.perf_counter()
            times = spawn_at_rate(hub, users, rate, path, at)
            wall = time.perf_counter() - t0
            cpu = (cpu_ticks(hub.proc.pid) - cpu0) / os.sysconf("SC_CLK_TCK")
            time.sleep(1)
            after = probe(path)
            ok = [t for t in times if t is not None]
            rpcs = {m: after["calls"].get(m, 0) - before["calls"].get(m, 0) for m in after["calls"]}
            placed = after["placed"][len(before["placed"]) :]
            chosen = after["chosen"][len(before["chosen"]) :]
            spread = servers_per_node(nodes[vanish:])
            out = {
                "k": k,
                "n": n,
                "rate": rate,
                "ttl": ttl,
                "push": push,
                "ok": len(ok),
                "wall": wall,
                "achieved": len(ok) / wall if wall else 0.0,
                "spawn_p50": pct(ok, 50),
                "spawn_p99": pct(ok, 99),
                "place_p50": pct(placed, 50),
                "place_p99": pct(placed, 99),
                "choice_p50": pct(chosen, 50),
                "choice_p99": pct(chosen, 99),
                "cpu_ms": cpu / max(1, len(ok)) * 1000,
                "rss": rss_mib(hub.proc.pid),
                "rpcs": sum(rpcs.values()) / max(1, len(ok)),
                "by_method": rpcs,
                "watching": before["watching"],
                "pushing": before["pushing"],
                "spread": (min(spread), max(spread), statistics.pstdev(spread)),
                "load": os.getloadavg(),
            }
            if vanish:
                mid = n // 2
                first, second = times[:mid], times[mid:]
                later = [t for t in second if t is not None]
                calls = {m: after["calls"].get(m, 0) - killed["probe"]["calls"].get(m, 0) for m in after["calls"]}
                out["vanish"] = {
                    "nodes": vanish,
                    "before_ok": sum(t is not None for t in first),
                    "before_of": len(first),
                    "ok": len(later),
                    "of": len(second),
                    "p50": pct(later, 50),
                    "p99": pct(later, 99),
                    "max": max(later) if later else float("nan"),
                    "by_method": calls,
                    "watching_after": after["watching"],
                }
            print(json.dumps(out), file=sys.stderr, flush=True)
            return out
        finally:
            hub.stop()
    finally:
        for node in nodes:
            if node.proc.poll() is None:
                node.proc.kill()
            node.proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--big", type=int, default=1000, help="spawns of the 100-node run")
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--curve", default="10,30,100", help="node counts of the curve")
    ap.add_argument("--curve-spawns", type=int, default=200)
    ap.add_argument("--from-log", default=None, help="render the runs printed (JSON lines) by an earlier run")
    args = ap.parse_args()
    if args.from_log:
        with open(args.from_log) as f:
            runs = [json.loads(line) for line in f if line.startswith("{")]
        runs = [r for i, r in enumerate(runs) if r not in runs[:i]]
        big = next((r for r in runs if "vanish" in r), None)
        return render(args, [r for r in runs if r is not big], big, 0)
    os.environ["BERTHD_SIM_IMAGES"] = f"{TINY},{IMAGE}"
    os.environ["BERTHD_SIM_START_MS"] = str(START_MS)
    assert os.path.exists(os.environ["BERTHD"]), (
        "build it: cargo build -p berthd --features sim --target-dir target/sim"
    )
    started = time.time()
    if args.smoke:
        curve, big = [run(3, 10, 10, 5.0, True), run(3, 10, 10, 0.0, False)], None
    else:
        curve = []
        for k in (int(x) for x in args.curve.split(",")):
            # The baseline and the push, one after the other at each size.
            curve.append(run(k, args.curve_spawns, args.rate, 0.0, False))
            curve.append(run(k, args.curve_spawns, args.rate, 5.0, True))
        big = run(100, args.big, args.rate, 5.0, True, vanish=10) if args.big else None
    render(args, curve, big, time.time() - started)


def mode(r):
    """How the hub learned each node's capacity in this run."""
    if r.get("push"):
        return f"pushed on Watch (fallback ttl {r['ttl']:g} s)"
    return "asked at every spawn (ttl 0, no push)" if not r["ttl"] else f"asked, ttl {r['ttl']:g} s"


def render(args, curve, big, elapsed):
    lines = [
        "## Simulated cluster: K berthd on the simulated engine, one hub with berthspawner",
        "",
        f"Generated by `bench/run-sim{' --smoke' if args.smoke else ''}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {elapsed:.0f} s; {load()} at the end.",
        "",
        f"Each node: a real berthd (`--features sim`, debug build) whose engine is the in-memory fake: a "
        f"container is a real HTTP listener on 127.0.0.1, each start takes {START_MS} ms; max_servers "
        f"{MAX_SERVERS}, the host's memory; servers ask 256 MiB. One JupyterHub process, spawns POSTed "
        "through its REST API at the rate asked.",
        "",
        "- **placement**: start() entered → Start RPC sent, inside the hub (includes the hub's event-loop "
        "lag, the orphan check and building the request).",
        "- **choice**: the node choice itself: gathering every node's capacity answer "
        "(`BerthSpawner._answers`: pushed answers read at once, the others asked) plus ranking them "
        "(`_rank`).",
        "- **spawn**: POST /users/<u>/server sent → the hub's User.spawn returned (the server answered the "
        "hub's check; its proxy route is added next), both on this machine's clock; POSTs come from a "
        "pool of 2 × rate threads and nothing polls the hub meanwhile. Failed: the POST refused (e.g. 429, "
        "the hub's concurrent_spawn_limit) or no server up within 120 s.",
        "- **hub CPU**: the hub process's user+system time over the spawns (not the proxy), per ready spawn.",
        "- **RPCs**: unary calls from the hub to the nodes per ready spawn (Watch and Progress streams not "
        "counted). **Watch**: streams up / of which pushing capacity, before the spawns.",
        "- **achieved/s**: ready spawns per second of the run (POSTs at the rate asked, until the last is ready).",
        "- **load**: 1-min load average at the end of that run (the machine is shared).",
        "",
        "| nodes | capacity | spawns (rate/s) | ok | achieved/s | placement p50 / p99 ms | choice p50 / p99 ms "
        "| spawn p50 / p99 s | hub CPU ms/spawn | hub RSS MiB | RPCs/spawn | Watch | servers per node "
        "min/max (σ) | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in curve + ([big] if big else []):
        lo, hi, sd = r["spread"]
        lines.append(
            f"| {r['k']} | {mode(r)} | {r['n']} ({r['rate']:g}) | {r['ok']} | {r.get('achieved', 0):.1f} "
            f"| {r['place_p50']:.1f} / {r['place_p99']:.1f} "
            f"| {r.get('choice_p50', float('nan')):.2f} / {r.get('choice_p99', float('nan')):.2f} "
            f"| {r['spawn_p50']:.2f} / {r['spawn_p99']:.2f} | {r['cpu_ms']:.0f} | {r['rss']:.0f} | {r['rpcs']:.1f} "
            f"| {r['watching']} / {r.get('pushing', 0)} | {lo} / {hi} ({sd:.1f}) | {r.get('load', [0])[0]:.1f} |"
        )
    lines.append("")
    lines.append(
        "RPCs by method: "
        + "; ".join(
            f"{r['k']} nodes, {'push' if r.get('push') else 'ttl ' + format(r['ttl'], 'g')}: "
            + ", ".join(f"{m} {v}" for m, v in sorted(r["by_method"].items()))
            for r in curve + ([big] if big else [])
        )
        + "."
    )
    if big and "vanish" in big:
        v = big["vanish"]
        lines += [
            "",
            f"Vanishing nodes: {v['nodes']} of the {big['k']} nodes SIGKILLed at once just before spawn "
            f"{v['before_of'] + 1} of {big['n']}. Spawns POSTed before: {v['before_ok']} of {v['before_of']} "
            f"ready; after: {v['ok']} of {v['of']} ready, spawn p50 {v['p50']:.2f} s, p99 {v['p99']:.2f} s, "
            f"max {v['max']:.2f} s. Hub RPCs from the kill to the end: "
            + ", ".join(f"{m} {n}" for m, n in sorted(v["by_method"].items()))
            + f"; Watch streams up at the end: {v['watching_after']}. Servers per node above: the "
            f"{big['k'] - v['nodes']} surviving nodes.",
        ]
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    elif not args.smoke:
        replace_section(os.path.join(HERE, "RESULTS.md"), "sim", text)
    print(text)


if __name__ == "__main__":
    main()
