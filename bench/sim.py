"""A simulated cluster: K real berthd processes on the simulated engine (feature `sim`: the
in-memory fake engine, each container a real tiny HTTP listener on 127.0.0.1, each start taking
BERTHD_SIM_START_MS), one real JupyterHub with berthspawner, spawns at a fixed rate through the
hub's REST API. Measures placement latency (start() entered → Start RPC sent, in the hub), hub
CPU and memory per spawn, RPCs per spawn, Watch streams held, spread evenness, and spawns after
10 nodes vanish at once.

    python bench/sim.py [--smoke] [--out FILE]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
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
# Start RPC sent) and the Watch streams held; dumped to a file twice a second.
PROBE = '''
import asyncio, contextvars, json, os, threading, time
import berthspawner.nodes as _bn
import berthspawner.spawner as _bs
_calls, _placed, _t0 = {{}}, [], contextvars.ContextVar("t0", default=None)
_orig_call, _orig_start = _bn.Node.call, _bs.BerthSpawner.start
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
        w = sum(1 for n in list(_bn._NODES.values()) if n.watching)
        with open("{path}.tmp", "w") as f:
            json.dump({{"calls": dict(_calls), "placed": list(_placed), "watching": w}}, f)
        os.replace("{path}.tmp", "{path}")
threading.Thread(target=_dump, daemon=True).start()
c.BerthSpawner.capacity_ttl = {ttl}
c.Spawner.mem_limit = "256M"
c.JupyterHub.log_level = "WARN"
'''


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
    return {"calls": {}, "placed": [], "watching": 0}


def spawn_at_rate(hub, users, rate):
    """POSTs each user's server at `rate` per second; waits until all are ready. Seconds each."""

    def one(i_user):
        i, user = i_user
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        t0 = time.perf_counter()
        try:
            r = hub.api("POST", f"/users/{user}/server", json={})
            if r.status_code not in (201, 202):
                return None
            while r.status_code == 202:
                s = (hub.server(user) or {})
                if s.get("ready"):
                    break
                if not s or time.perf_counter() - t0 > 120:
                    return None
                time.sleep(0.2)
        except requests.RequestException:
            return None  # the hub did not answer within 30 s: counted as failed
        return time.perf_counter() - t0

    start = time.perf_counter() + 0.5
    with ThreadPoolExecutor(64) as pool:
        return list(pool.map(one, enumerate(users)))


def servers_per_node(nodes):
    import grpc

    from berthspawner._proto.berth.v1 import spawner_pb2 as pb
    from berthspawner._proto.berth.v1 import spawner_pb2_grpc as pb_grpc

    counts = []
    for n in nodes:
        with grpc.insecure_channel(n.address) as ch:
            counts.append(len(pb_grpc.SpawnerStub(ch).List(pb.ListRequest(), timeout=10).servers))
    return counts


def run(k, n, rate, ttl, vanish=0, base=None):
    """One cluster of k nodes, n spawns at `rate`/s, capacity_ttl `ttl`. A dict of figures."""
    base = tempfile.mkdtemp(prefix=f"berth-sim-{k}-", dir=base)
    path = os.path.join(base, "probe.json")
    nodes = []
    try:
        for i in range(k):
            nodes.append(Berthd(f"s{i}", base, config=f"[capacity]\nmax_servers = {MAX_SERVERS}\n"))
        extra = PROBE.format(path=path, ttl=ttl) + f'c.BerthSpawner.image = "{TINY}"\n'
        hub = Hub(base, nodes, extra=extra, hub_ip="127.0.0.1")
        try:
            users = [f"u{i}" for i in range(n)]
            for i in range(0, n, 200):
                hub.api("POST", "/users", json={"usernames": users[i:i + 200]})
            # One spawn first, so the nodes' Watch streams are up (as in a running hub).
            spawn_at_rate(hub, ["warm"], 1) if hub.api("POST", "/users", json={"usernames": ["warm"]}) else None
            before, cpu0 = probe(path), cpu_ticks(hub.proc.pid)
            t0 = time.perf_counter()
            times = spawn_at_rate(hub, users, rate)
            wall = time.perf_counter() - t0
            cpu = (cpu_ticks(hub.proc.pid) - cpu0) / os.sysconf("SC_CLK_TCK")
            time.sleep(1)
            after = probe(path)
            ok = [t for t in times if t is not None]
            rpcs = {m: after["calls"].get(m, 0) - before["calls"].get(m, 0) for m in after["calls"]}
            placed = after["placed"][len(before["placed"]):]
            spread = servers_per_node(nodes)
            out = {
                "k": k, "n": n, "rate": rate, "ttl": ttl, "ok": len(ok), "wall": wall,
                "spawn_p50": pct(ok, 50), "spawn_p99": pct(ok, 99),
                "place_p50": pct(placed, 50), "place_p99": pct(placed, 99),
                "cpu_ms": cpu / max(1, len(ok)) * 1000, "rss": rss_mib(hub.proc.pid),
                "rpcs": sum(rpcs.values()) / max(1, len(ok)), "by_method": rpcs,
                "watching": after["watching"], "spread": (min(spread), max(spread), statistics.pstdev(spread)),
            }
            print(json.dumps(out), file=sys.stderr, flush=True)
            if vanish:
                for node in nodes[:vanish]:
                    node.kill_daemon()
                more = [f"v{i}" for i in range(40)]
                hub.api("POST", "/users", json={"usernames": more})
                t1 = time.perf_counter()
                vt = spawn_at_rate(hub, more, rate)
                vok = [t for t in vt if t is not None]
                out["vanish"] = {
                    "ok": len(vok), "of": len(more), "p50": pct(vok, 50), "max": max(vok) if vok else float("nan"),
                    "wall": time.perf_counter() - t1,
                }
            return out
        finally:
            hub.stop()
    finally:
        for node in nodes:
            node.proc.kill()
            node.proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--big", type=int, default=1000, help="spawns of the 100-node run")
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--from-log", default=None, help="render the runs printed (JSON lines) by an earlier run")
    args = ap.parse_args()
    if args.from_log:
        with open(args.from_log) as f:
            runs = [json.loads(line) for line in f if line.startswith("{")]
        runs = [r for i, r in enumerate(runs) if r not in runs[:i]]
        big = next((r for r in runs if "vanish" in r), None)
        return render(args, [r for r in runs if r is not big and r["n"] == 200], big, 0)
    os.environ["BERTHD_SIM_IMAGES"] = f"{TINY},{IMAGE}"
    os.environ["BERTHD_SIM_START_MS"] = str(START_MS)
    assert os.path.exists(os.environ["BERTHD"]), "build it: cargo build -p berthd --features sim --target-dir target/sim"
    started = time.time()
    if args.smoke:
        curve, big = [run(3, 10, 10, 5.0)], None
    else:
        curve = []
        for ttl in (0.0, 5.0):
            for k in (10, 100):
                curve.append(run(k, 200, args.rate, ttl))
                print(json.dumps(curve[-1]), file=sys.stderr, flush=True)
        big = run(100, args.big, args.rate, 5.0, vanish=10)
    render(args, curve, big, time.time() - started)


def render(args, curve, big, elapsed):
    lines = [
        "## Simulated cluster: K berthd on the simulated engine, one hub with berthspawner",
        "",
        f"Generated by `bench/run-sim{' --smoke' if args.smoke else ''}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {elapsed:.0f} s; {load()} at the end.",
        "",
        f"Each node: a real berthd (`--features sim`, debug build) whose engine is the in-memory fake: a "
        f"container is a real HTTP listener on 127.0.0.1, each start takes {START_MS} ms; max_servers "
        f"{MAX_SERVERS}, the host's memory; servers ask 256 MiB. Placement: start() entered → Start RPC "
        "sent, inside the hub. Hub CPU: the hub process's user+system time over the spawns (not the proxy). "
        "RPCs: unary calls from the hub to the nodes (Watch and Progress streams not counted).",
        "",
        "| nodes | capacity_ttl | spawns (rate/s) | ok | placement p50 / p99 ms | spawn p50 / p99 s "
        "| hub CPU ms/spawn | hub RSS MiB | RPCs/spawn | Watch streams | servers per node min/max (σ) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in curve + ([big] if big else []):
        lo, hi, sd = r["spread"]
        lines.append(
            f"| {r['k']} | {r['ttl']:g} s | {r['n']} ({r['rate']:g}) | {r['ok']} | {r['place_p50']:.1f} / {r['place_p99']:.1f} "
            f"| {r['spawn_p50']:.2f} / {r['spawn_p99']:.2f} | {r['cpu_ms']:.0f} | {r['rss']:.0f} | {r['rpcs']:.1f} "
            f"| {r['watching']} | {lo} / {hi} ({sd:.1f}) |"
        )
    lines.append("")
    lines.append("RPCs by method: " + "; ".join(
        f"{r['k']} nodes, ttl {r['ttl']:g}: " + ", ".join(f"{m} {v}" for m, v in sorted(r["by_method"].items()))
        for r in curve + ([big] if big else [])
    ) + ".")
    if big and "vanish" in big:
        v = big["vanish"]
        lines += [
            "",
            f"10 of the 100 nodes SIGKILLed at once, then {v['of']} more spawns at {big['rate']:g}/s: "
            f"{v['ok']} ready, spawn p50 {v['p50']:.2f} s, max {v['max']:.2f} s.",
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
