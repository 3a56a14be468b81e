"""Never two servers for one user (issue 27), on two real engines in their own network
namespaces with the real hub: the user's server runs on n1, n1's link goes down (a partition:
the hub and the proxy cannot reach n1, n1 cannot reach the hub). An observer lists the user's
running containers on both engines every 100 ms for the whole run.

- With fencing on n1: the hub reports the server gone, refuses a second one with a sentence
  naming n1 (also after a restart of the hub during the partition), n1 stops its server by
  itself, and only then does the hub start the replacement on n2; never two at once; after the
  link heals nothing of the user runs on n1.
- With fencing off: the hub refuses until an operator declares n1 lost (the hub's admin API);
  the replacement then starts on n2 (two may run, as the operator allowed); when the link
  heals, the hub stops the old server on n1 at once.
"""

import os
import secrets
import subprocess
import threading
import time

import pytest
from conftest import TINY, Hub, docker, wait_for
from netnode import HUB_IP, PREFIX
from test_two_engines import spawn_on

FENCE = 5
STOP_GRACE = 2
FENCING = f"[fencing]\nstop_after_hub_lost_seconds = {FENCE}\n[spawn]\nstop_grace_seconds = {STOP_GRACE}\n"
EXTRA = f"""
from berthspawner import fencing
c.JupyterHub.extra_handlers = fencing.handlers()
c.BerthSpawner.image = "{TINY}"
c.BerthSpawner.cmd = ["httpd", "-f", "-p", "8888", "-h", "/www"]
c.BerthSpawner.unreachable_grace = 3.0
c.BerthSpawner.rpc_timeout = 3.0
c.Spawner.poll_interval = 1
"""


def link(node, state):
    subprocess.run(["ip", "link", "set", f"{PREFIX}-{node.name}-h", state], check=True)


class Observer:
    """Lists the user's running containers on each engine every 100 ms, from outside berth."""

    def __init__(self, user, nodes):
        self.user, self.nodes = user, nodes
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def running(self, node):
        out = docker("ps", "-q", "--filter", f"label=berth.user={self.user}", host=node.docker_host)
        return len(out.split())

    def _run(self):
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), *(self.running(n) for n in self.nodes)))
            time.sleep(0.1)

    def stop(self):
        self._stop.set()
        self._thread.join(10)
        return self.samples

    def both(self, since=0.0, until=float("inf")):
        """The samples that saw a running server on both engines in [since, until)."""
        return [s for s in self.samples if since <= s[0] < until and all(n > 0 for n in s[1:])]


def refused_start(hub, user, node_name):
    """A start while the old server may run on the cut-off node: refused, naming it."""
    r = hub.api("POST", f"/users/{user}/server")
    if r.status_code in (201, 202):
        # Pending: it fails within moments.
        wait_for("the refused start to end", lambda: not (hub.server(user) or {}).get("pending"), 30)
        assert hub.server(user) is None, f"a second server started: {hub.server(user)}"
        return
    assert r.status_code >= 400 and node_name in r.text, f"{r.status_code} {r.text}"


def gone(hub, user, timeout):
    wait_for(f"the hub to report {user}'s server gone", lambda: hub.server(user) is None, timeout)


@pytest.fixture
def hub_for(workdir, net_nodes):
    hubs = []

    def make(tag):
        base = os.path.join(workdir, f"fencing-{tag}-{secrets.token_hex(2)}")
        h = Hub(base, [n.berthd for n in net_nodes], hub_ip=HUB_IP, extra=EXTRA)
        hubs.append(h)
        return h

    yield make
    for h in hubs:
        h.stop()


@pytest.fixture
def healed(net_nodes):
    yield
    for n in net_nodes:
        link(n, "up")


def test_a_fencing_node_stops_its_server_before_the_hub_starts_another(hub_for, net_nodes, healed):
    n1, n2 = net_nodes
    n1.berthd.restart_with_config(FENCING)
    user = f"fence-{secrets.token_hex(2)}"
    try:
        hub = hub_for("on")
        spawn_on(hub, net_nodes, n1, user)
        watcher = Observer(user, net_nodes)
        t_cut = time.monotonic()
        link(n1, "down")
        gone(hub, user, 90)
        refused_start(hub, user, n1.berthd.name)
        # A hub restarted during the partition remembers where the server is (its database).
        hub.terminate()
        hub.start()
        refused_start(hub, user, n1.berthd.name)
        # n1 fences by itself (no hub: its Watch stream dies by keepalive, then FENCE s).
        wait_for("n1 to fence the server", lambda: watcher.running(n1) == 0, 60)
        t_fenced = next(t for t, on_n1, _ in watcher.samples if t > t_cut and on_n1 == 0)
        # The hub starts the replacement only after n1's reported fence time (+ grace, margin).
        deadline = time.monotonic() + 120
        while True:
            r = hub.api("POST", f"/users/{user}/server")
            if r.status_code in (201, 202):
                wait_for(f"{user} on n2", lambda: (hub.server(user) or {}).get("ready") or hub.server(user) is None, 60)
                if (hub.server(user) or {}).get("ready"):
                    break
            assert time.monotonic() < deadline, f"no replacement within 120 s: {r.status_code} {r.text}"
            time.sleep(2)
        t_replaced = time.monotonic()
        assert watcher.running(n2) == 1
        link(n1, "up")
        time.sleep(8)  # the hub's Watch of n1 reconnects (backoff at most 5 s)
        samples = watcher.stop()
        assert not watcher.both(), f"two servers at once: {watcher.both()[:5]}"
        assert watcher.running(n1) == 0, "a server of the user runs on n1 after the heal"
        print(
            f"fencing: fenced {t_fenced - t_cut:.1f}s after the cut, replaced after {t_replaced - t_cut:.1f}s; "
            f"{len(samples)} samples, never two"
        )
        hub.api("DELETE", f"/users/{user}/server")
        wait_for("the replacement to stop", lambda: hub.server(user) is None, 30)
    finally:
        link(n1, "up")
        for cid in n1.berthd.containers(user):
            docker("rm", "-f", cid, host=n1.docker_host)
        n1.berthd.restart_with_config("")


def test_without_fencing_an_operator_releases_the_node_and_the_heal_stops_the_old_server(hub_for, net_nodes, healed):
    n1, n2 = net_nodes
    user = f"nofence-{secrets.token_hex(2)}"
    hub = hub_for("off")
    try:
        spawn_on(hub, net_nodes, n1, user)
        watcher = Observer(user, net_nodes)
        link(n1, "down")
        gone(hub, user, 90)
        refused_start(hub, user, n1.berthd.name)
        time.sleep(5)
        refused_start(hub, user, n1.berthd.name)
        assert watcher.running(n1) == 1, "n1 does not fence: its server runs on"
        t_release = time.monotonic()
        r = hub.api("POST", f"/berth/nodes/{n1.berthd.name}/lost")
        assert r.status_code == 200, f"{r.status_code} {r.text}"
        hub.spawn(user)
        assert watcher.running(n2) == 1
        link(n1, "up")
        wait_for("the hub to stop the old server on n1", lambda: watcher.running(n1) == 0, 60)
        watcher.stop()
        assert not watcher.both(until=t_release), "two servers before the operator released n1"
        hub.api("DELETE", f"/users/{user}/server")
        wait_for("the replacement to stop", lambda: hub.server(user) is None, 30)
    finally:
        link(n1, "up")
        for cid in n1.berthd.containers(user):
            docker("rm", "-f", cid, host=n1.docker_host)


def test_a_partition_healing_a_second_before_the_fence_time_never_makes_two(hub_for, net_nodes, healed):
    """The link comes back one second before n1 would fence (counted from n1's own log line
    saying the hub's last stream ended): whichever way the race goes (n1 fences, or the hub's
    start replaces the old server), the user clicks Start until a server runs, and there is
    never a moment with two."""
    n1, n2 = net_nodes
    n1.berthd.restart_with_config(FENCING)
    user = f"edge-{secrets.token_hex(2)}"
    marker = "no Watch stream of the hub is open any more"
    try:
        hub = hub_for("edge")
        spawn_on(hub, net_nodes, n1, user)
        n1.berthd.log.flush()
        with open(n1.berthd.log.name) as f:
            before = f.read().count(marker)
        watcher = Observer(user, net_nodes)
        link(n1, "down")

        def stream_ended():
            with open(n1.berthd.log.name) as f:
                return f.read().count(marker) > before

        wait_for("n1 to see the hub's stream end", stream_ended, 40)
        time.sleep(FENCE - 1)
        link(n1, "up")
        # The user clicks Start whenever the hub shows no server, through whatever the race
        # brings (n1 fencing late, the hub noticing late), then until one runs.
        clicking = time.monotonic() + 45
        deadline = clicking + 75
        while time.monotonic() < clicking or not (hub.server(user) or {}).get("ready"):
            assert time.monotonic() < deadline, f"no server for {user} within 120 s after the heal"
            if hub.server(user) is None:
                hub.api("POST", f"/users/{user}/server")
            time.sleep(1)
        time.sleep(3)
        watcher.stop()
        assert not watcher.both(), f"two servers at once: {watcher.both()[:5]}"
        assert watcher.running(n1) + watcher.running(n2) == 1
        hub.api("DELETE", f"/users/{user}/server")
        wait_for("the server to stop", lambda: hub.server(user) is None, 30)
    finally:
        link(n1, "up")
        for n in net_nodes:
            for cid in n.berthd.containers(user):
                docker("rm", "-f", cid, host=n.docker_host)
        n1.berthd.restart_with_config("")
