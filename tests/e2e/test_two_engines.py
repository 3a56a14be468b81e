"""Nodes that are really apart: each berthd has its own Docker engine in its own network
namespace, so what one node holds the other does not, and a server on the far node must reach
the hub (and the proxy it) over the network."""

import os
import secrets

import pytest
from conftest import Hub, docker, wait_for
from netnode import HUB_IP


def volume_exists(host, name):
    return docker("volume", "ls", "-q", "--filter", f"name=^{name}$", host=host) == name


@pytest.fixture(scope="module")
def far_hub(workdir, net_nodes):
    """A hub with both real nodes, listening where their containers reach it."""
    base = os.path.join(workdir, f"two-engines-{secrets.token_hex(2)}")
    with Hub(base, [n.berthd for n in net_nodes], hub_ip=HUB_IP) as hub:
        yield hub


def test_a_volume_made_on_one_node_is_not_on_the_other(net_nodes):
    n1, n2 = net_nodes
    for here, there in ((n1, n2), (n2, n1)):
        name = f"be2e-vol-{here.name}-{secrets.token_hex(3)}"
        here.engine.docker("volume", "create", name)
        try:
            assert volume_exists(here.docker_host, name), f"{name} was just made on {here.name}"
            assert not volume_exists(there.docker_host, name), f"{name} of {here.name} shows on {there.name}"
            assert not volume_exists(None, name), f"{name} of {here.name} shows on the host engine"
        finally:
            here.engine.docker("volume", "rm", name)


def _on_host_engine(user):
    return docker("ps", "-aq", "--filter", f"label=berth.user={user}")


def spawn_on(hub, nodes, target, user):
    """Starts the user's server on `target`: the other nodes are drained (through their Admin
    sockets, which reach into the namespaces as files) while the hub places it."""
    others = [n for n in nodes if n is not target]
    for n in others:
        n.berthd.admin("Drain", f"e2e: place {user} on {target.name}")
    try:
        hub.spawn(user)
    finally:
        for n in others:
            n.berthd.admin("Undrain")


def test_a_server_on_the_far_node_reaches_the_hub_and_the_proxy_reaches_it(far_hub, net_nodes):
    hub, (n1, n2) = far_hub, net_nodes
    user = "far"
    spawn_on(hub, net_nodes, n2, user)
    (cid,) = n2.berthd.containers(user)
    assert not n1.berthd.containers(user), "the server must not be on the drained node"
    assert not _on_host_engine(user), "nor on the host engine"
    published = n2.engine.docker("port", cid, "8888")
    assert published.startswith(f"{n2.ip}:"), f"published on the node's address: {published}"
    # The browser's way in: the proxy (root namespace) to the server on n2, which sends the
    # browser through the hub's OAuth flow and asks the hub (over the link) for the token.
    s = hub.login(user)
    r = hub.get_as(s, f"/user/{user}/api/status")
    assert r.status_code == 200, r.text[:300]
    visited = " ".join(h.url for h in r.first_visit.history)
    assert "/hub/api/oauth2/authorize" in visited and "oauth_callback" in visited, visited


def test_stopping_the_far_server_removes_it_from_its_node(far_hub, net_nodes):
    hub, (n1, n2) = far_hub, net_nodes
    user = "far2"
    spawn_on(hub, net_nodes, n2, user)
    assert n2.berthd.containers(user) and not n1.berthd.containers(user)
    r = hub.api("DELETE", f"/users/{user}/server")
    assert r.status_code in (202, 204)
    wait_for(f"{user}'s server to stop", lambda: hub.server(user) is None, 30)
    wait_for(f"{user}'s container to leave n2", lambda: not n2.berthd.containers(user), 30)
    assert not n2.engine.docker("ps", "-aq", "--filter", f"label=berth.user={user}")
