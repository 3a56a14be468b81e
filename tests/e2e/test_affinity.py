"""A user's files follow the user across nodes (real JupyterHub, two berthd nodes on two Docker
engines in two network namespaces): volume affinity, a lost hub state, a shared host path."""

import json
import os
import secrets
import sqlite3
import threading
import time

import pytest
from conftest import Hub, wait_for
from netnode import HUB_IP

# The tiny image runs its own HTTP server; it has a shell to write and read files with. It
# answers after a second, so that a spawn's progress can be read while it is under way.
TINY_CMD = 'c.BerthSpawner.cmd = ["sh", "-c", "sleep 1; exec httpd -f -p 8888 -h /www"]'
TINY = {"image": "berth-test/tiny:latest"}
# Adversarial placement: always the node that does NOT hold the user's files (by name when
# there are none yet). Only volume affinity can bring the user home.
AWAY = """
def away_from_home(fits, demand, spawner):
    return sorted(fits, key=lambda c: (c.name == spawner.home_node, c.name))
c.BerthSpawner.placement = away_from_home
"""


def hub_config(affinity, volumes):
    return "\n".join(
        [
            TINY_CMD,
            AWAY,
            f"c.BerthSpawner.volumes = {volumes!r}",
            f"c.BerthSpawner.volume_affinity = {affinity!r}",
        ]
    )


@pytest.fixture(scope="module")
def hubs(workdir, net_nodes):
    """Two hubs on the same two real nodes: one requires the home node, one prefers it."""
    base = os.path.join(workdir, f"affinity-{secrets.token_hex(2)}")
    home = {"berth-e2e-home-{user}": "/home/data"}
    nodes = [n.berthd for n in net_nodes]
    with (
        Hub(os.path.join(base, "required"), nodes, hub_ip=HUB_IP, extra=hub_config("required", home)) as req,
        Hub(os.path.join(base, "preferred"), nodes, hub_ip=HUB_IP, extra=hub_config("preferred", home)) as pref,
    ):
        yield {"required": req, "preferred": pref}


def where(net_nodes, user):
    """(node, container id) of the user's one container across the real nodes."""
    found = [(n, c) for n in net_nodes for c in n.berthd.containers(user)]
    assert len(found) == 1, f"{user}: containers {found}"
    return found[0]


def stop(hub, user):
    r = hub.api("DELETE", f"/users/{user}/server")
    assert r.status_code in (202, 204), r.text
    wait_for(f"{user}'s server to stop", lambda: hub.server(user) is None, 30)


@pytest.mark.parametrize("affinity", ["required", "preferred"])
def test_the_users_file_is_there_at_every_start_though_placement_prefers_the_other_node(hubs, net_nodes, affinity):
    hub, user = hubs[affinity], f"aff-{affinity[:3]}"
    hub.spawn(user, options=TINY)
    home, cid = where(net_nodes, user)
    home.engine.docker("exec", cid, "sh", "-c", "echo 'my thesis' > /home/data/thesis.tex")
    stop(hub, user)
    for i in range(5):
        hub.spawn(user, options=TINY)
        node, cid = where(net_nodes, user)
        assert node is home, f"start {i}: on {node.name}, files on {home.name}"
        assert node.engine.docker("exec", cid, "cat", "/home/data/thesis.tex") == "my thesis"
        stop(hub, user)


def progress_of_a_spawn(hub, user):
    """Starts the user's server and returns the messages of its progress stream, read while the
    spawn is under way."""
    posted = threading.Thread(
        target=hub.api, args=("POST", f"/users/{user}/server"), kwargs={"json": TINY}, daemon=True
    )
    posted.start()
    wait_for("the spawn to be pending", lambda: (hub.server(user) or {}).get("pending") == "spawn", 10, 0.02)
    messages = progress_messages(hub, user)
    posted.join(30)
    return messages


def progress_messages(hub, user):
    events = []
    with hub.api_stream(f"/users/{user}/server/progress") as r:
        assert r.status_code == 200, r.text
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
                if events[-1].get("ready") or events[-1].get("failed"):
                    break
    return [e.get("message", "") for e in events]


def test_a_drained_home_node_is_a_quick_503_when_required_and_a_fresh_volume_when_preferred(hubs, net_nodes):
    for affinity in ("required", "preferred"):
        hub, user = hubs[affinity], f"drain-{affinity[:3]}"
        hub.spawn(user, options=TINY)
        home, _ = where(net_nodes, user)
        stop(hub, user)
        home.berthd.admin("Drain", "e2e maintenance")
        try:
            if affinity == "required":
                t0 = time.monotonic()
                r = hub.api("POST", f"/users/{user}/server", json=TINY)
                took = time.monotonic() - t0
                assert r.status_code == 503, (r.status_code, r.text)
                msg = r.json()["message"]
                assert f"Your files are on {home.berthd.name}" in msg and "draining" in msg, msg
                assert took < 2, f"the refusal took {took:.1f}s"
                assert all(not n.berthd.containers(user) for n in net_nodes), "no container anywhere"
                assert hub.server(user) is None
            else:
                messages = progress_of_a_spawn(hub, user)
                wait_for(f"{user} ready", lambda: (hub.server(user) or {}).get("ready"), 60)
                node, _ = where(net_nodes, user)
                assert node is not home
                assert any("fresh, empty volume" in m and home.berthd.name in m for m in messages), messages
                stop(hub, user)
        finally:
            home.berthd.admin("Undrain")


def test_a_lost_hub_state_still_finds_the_home_node(hubs, net_nodes):
    hub, user = hubs["required"], "lost-state"
    hub.spawn(user, options=TINY)
    home, cid = where(net_nodes, user)
    home.engine.docker("exec", cid, "sh", "-c", "echo kept > /home/data/f")
    stop(hub, user)
    # The hub's database loses the user's spawner state (a reset or restored database).
    hub.stop()
    with sqlite3.connect(os.path.join(hub.dir, "jupyterhub.sqlite")) as db:
        db.execute("UPDATE spawners SET state = NULL WHERE user_id = (SELECT id FROM users WHERE name = ?)", (user,))
    hub.start()
    hub.spawn(user, options=TINY)
    node, cid = where(net_nodes, user)
    assert node is home, f"on {node.name}; the files are on {home.name}"
    assert node.engine.docker("exec", cid, "cat", "/home/data/f") == "kept"
    stop(hub, user)


def test_a_templated_host_path_on_storage_both_nodes_share_follows_the_user(workdir, net_nodes):
    """A {user} home under an allowed root that both nodes mount (here the same directory of
    this machine, as NFS would be): written on one node, read on the other. (A template that
    climbs out of its root, and a user name that tries to, are refused or escaped by berthd:
    daemon/tests/volumes.rs.)"""
    root = os.path.join(workdir, f"shared-homes-{secrets.token_hex(2)}")
    os.makedirs(root)
    for n in net_nodes:
        n.berthd.restart_with_config(f"[policy]\nallowed_host_path_roots = [{root!r}]\n")
    base = os.path.join(workdir, f"shared-{secrets.token_hex(2)}")
    shared = {root + "/{user}": "/home/data"}
    try:
        with Hub(base, [n.berthd for n in net_nodes], hub_ip=HUB_IP, extra=hub_config("none", shared)) as hub:
            run_on_both(hub, net_nodes, root)
    finally:
        for n in net_nodes:
            n.berthd.restart_with_config("")


def run_on_both(hub, net_nodes, root):
    """The user's server on n1 writes a file in the shared home; on n2 it reads it."""
    n1, n2 = net_nodes
    user = "nfsuser"
    for target, other in ((n1, n2), (n2, n1)):
        other.berthd.admin("Drain", "e2e: place the user")
        try:
            hub.spawn(user, options=TINY)
        finally:
            other.berthd.admin("Undrain")
        node, cid = where(net_nodes, user)
        assert node is target
        if target is n1:
            node.engine.docker("exec", cid, "sh", "-c", "echo shared > /home/data/f")
        else:
            assert node.engine.docker("exec", cid, "cat", "/home/data/f") == "shared"
        stop(hub, user)
    assert os.listdir(root) == [user], os.listdir(root)
