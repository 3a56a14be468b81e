"""GPUs across nodes (real JupyterHub, two real berthd nodes on the host engine): nodes with 1
and 2 fake "GPUs" (character devices made with mknod), a spawn with the 2-GPU profile lands on
the node that has 2 free, and a spawn no node can serve is a 503 naming the shortfall."""

import os
import secrets
import shutil
import subprocess

import pytest
from conftest import TINY, Berthd, Hub, docker, wait_for

TINY_CMD = ["sh", "-c", "exec httpd -f -p 8888 -h /www"]
PROFILES = [
    {"display_name": f"{n} GPU", "slug": f"gpu{n}", "berth_override": {"image": TINY, "cmd": TINY_CMD, "gpus": n}}
    for n in (1, 2)
]
# The placement prefers the 1-GPU node by name, so only the GPU filter keeps servers off it.
HUB_EXTRA = f"""
c.BerthSpawner.profile_list = {PROFILES!r}
def one_first(fits, demand):
    return sorted(fits, key=lambda c: (not c.name.startswith("e2e-one-"), c.name))
c.BerthSpawner.placement = one_first
"""


def make_gpus(n):
    """A root-only directory under /dev with `n` character devices (copies of /dev/null)."""
    d = os.path.join("/dev", f"berth-e2e-gpus-{secrets.token_hex(3)}")
    os.mkdir(d, 0o755)
    for i in range(n):
        subprocess.run(["mknod", os.path.join(d, f"gpu{i}"), "c", "1", "3"], check=True)
    return d


def node_config(gpu_dir, n):
    out = '[[devices.classes]]\nname = "gpu"\n'
    for i in range(n):
        out += f'[[devices.classes.devices]]\nid = "{i}"\npaths = ["{gpu_dir}/gpu{i}"]\nmodel = "FakeGPU"\n'
    return out


@pytest.fixture(scope="module")
def gpu_cluster(workdir):
    base = os.path.join(workdir, f"gpus-{secrets.token_hex(2)}")
    dirs = [make_gpus(1), make_gpus(2)]
    try:
        with (
            Berthd("one", base, config=node_config(dirs[0], 1)) as one,
            Berthd("two", base, config=node_config(dirs[1], 2)) as two,
            Hub(base, [one, two], extra=HUB_EXTRA) as hub,
        ):
            yield hub, one, two, dirs
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


def devices_seen(node, user, gpu_dir):
    (cid,) = node.containers(user)
    return docker("exec", cid, "ls", gpu_dir).split()


def test_two_gpus_go_to_the_node_with_two_free(gpu_cluster):
    hub, one, two, dirs = gpu_cluster
    user = f"gpu{secrets.token_hex(3)}"
    hub.spawn(user, options={"profile": "gpu2"})
    assert one.containers(user) == [], "the 1-GPU node cannot take 2"
    assert devices_seen(two, user, dirs[1]) == ["gpu0", "gpu1"]

    # Now no node has 2 free: a 503 that names the GPU shortfall of each node.
    other = f"gpu{secrets.token_hex(3)}"
    hub.api("POST", "/users", json={"usernames": [other]})
    r = hub.api("POST", f"/users/{other}/server", json={"profile": "gpu2"})
    if r.status_code == 202:
        wait_for("the spawn to fail", lambda: hub.server(other) is None, 60)
        r = hub.api("GET", f"/users/{other}")
        assert not r.json().get("servers"), r.text
    else:
        # The user reads one sentence; each node's GPU shortfall is in the hub's log.
        assert r.status_code == 503, (r.status_code, r.text)
        assert "There is no room for your server" in r.json()["message"], r.text
    log = open(hub.log.name).read()
    assert "not enough gpu devices (2 asked, 0 free)" in log, log[-3000:]
    assert "not enough gpu devices (2 asked, 1 free)" in log, log[-3000:]
    assert one.containers(other) == [] and two.containers(other) == []

    # One GPU fits on the 1-GPU node (placement puts it first).
    small = f"gpu{secrets.token_hex(3)}"
    hub.spawn(small, options={"profile": "gpu1"})
    assert devices_seen(one, small, dirs[0]) == ["gpu0"]

    # Stop the 2-GPU server: the other user's spawn now fits there.
    r = hub.api("DELETE", f"/users/{user}/server")
    assert r.status_code in (202, 204), r.text
    wait_for(f"{user}'s server to stop", lambda: hub.server(user) is None, 30)
    hub.spawn(other, options={"profile": "gpu2"})
    assert devices_seen(two, other, dirs[1]) == ["gpu0", "gpu1"]
