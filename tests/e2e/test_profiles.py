"""Profiles end to end: a real JupyterHub's spawn form lists them, and a choice made through the
form or the REST API gives a container with that profile's image, limits and node (two real
berthd nodes with different labels); a selector no node meets is a 503 naming it."""

import json
import os
import re
import secrets
import subprocess

import pytest
from conftest import IMAGE, TINY, Berthd, Hub, docker, free_port, wait_for

MIB = 1024 * 1024
TINY_CMD = ["sh", "-c", "exec httpd -f -p 8888 -h /www"]
PROFILES = [
    {
        "display_name": "Small notebook",
        "slug": "small",
        "description": "256 MB, half a core, zone a",
        "berth_override": {"mem_limit": "256M", "cpu_limit": 0.5, "node_selector": {"zone": "a"}},
    },
    {
        "display_name": "GPU box",
        "slug": "gpu",
        "description": "the A100 node",
        "default": True,
        "berth_override": {
            "image": TINY,
            "cmd": TINY_CMD,
            "mem_limit": "384M",
            "mem_guarantee": "128M",
            "cpu_limit": 1.5,
            "node_selector": {"gpu": "a100"},
        },
    },
    {"display_name": "H100", "slug": "h100", "berth_override": {"node_selector": {"gpu": "h100"}}},
    # As a KubeSpawner site writes it: kubespawner_override, and an image option whose unlisted
    # choice lets the user type an image the regex accepts.
    {
        "display_name": "Kube style",
        "slug": "kube",
        "kubespawner_override": {"cmd": TINY_CMD, "mem_limit": "200M", "node_selector": {"zone": "a"}},
        "profile_options": {
            "image": {
                "display_name": "Image",
                "choices": {"default": {"display_name": "Default image", "kubespawner_override": {"image": IMAGE}}},
                "unlisted_choice": {
                    "enabled": True,
                    "display_name": "Other image",
                    "validation_regex": "^berth-test/[a-z]+:latest$",
                    "validation_message": "a berth-test image",
                    "kubespawner_override": {"image": "{value}"},
                },
            }
        },
    },
]


@pytest.fixture(scope="module")
def labelled(workdir):
    """Two nodes with different labels, and a hub offering the profiles."""
    base = os.path.join(workdir, f"profiles-{secrets.token_hex(2)}")
    plain_cfg = '[node]\nlabels = { zone = "a" }\n'
    gpu_cfg = '[node]\nlabels = { gpu = "a100", zone = "b" }\n'
    extra = f"c.BerthSpawner.profile_list = {PROFILES!r}\n"
    with Berthd("plain", base, config=plain_cfg) as plain, Berthd("gpu", base, config=gpu_cfg) as gpu:
        with Hub(base, [plain, gpu], extra=extra) as hub:
            yield hub, {"plain": plain, "gpu": gpu}


def inspect(cid):
    return json.loads(docker("inspect", cid))[0]


def only_container(nodes, user):
    found = [(name, c) for name, n in nodes.items() for c in n.containers(user)]
    assert len(found) == 1, f"{user}: {found}"
    return found[0][0], inspect(found[0][1])


def test_the_spawn_form_lists_the_profiles(labelled):
    hub, _ = labelled
    hub.api("POST", "/users", json={"usernames": ["formview"]})
    s = hub.login("formview")
    r = s.get(f"{hub.url}/hub/spawn", timeout=30)
    assert r.status_code == 200, r.text[:500]
    for p in PROFILES:
        assert f'value="{p["slug"]}"' in r.text and p["display_name"] in r.text, p["slug"]
    assert re.search(r'value="gpu"\s+checked', r.text), "the default profile is checked"
    assert "256 MB, half a core, zone a" in r.text
    assert 'name="image"' in r.text and f'<option value="{TINY}">' in r.text, "the allowed_images picker"


def test_a_profile_chosen_in_the_form_gives_its_image_limits_and_node(labelled):
    hub, nodes = labelled
    user = "formgpu"
    hub.api("POST", "/users", json={"usernames": [user]})
    s = hub.login(user)
    s.get(f"{hub.url}/hub/spawn", timeout=30)
    r = s.post(
        f"{hub.url}/hub/spawn",
        data={"profile": "gpu", "_xsrf": s.cookies.get("_xsrf", "")},
        timeout=60,
        allow_redirects=False,
    )
    assert r.status_code in (302, 303), (r.status_code, r.text[:500])
    wait_for(f"{user} ready", lambda: (hub.server(user) or {}).get("ready"), 90)
    node, c = only_container(nodes, user)
    assert node == "gpu"
    assert c["Config"]["Image"].endswith(TINY) and c["Config"]["Cmd"] == TINY_CMD
    assert c["HostConfig"]["Memory"] == 384 * MIB
    assert c["HostConfig"]["NanoCpus"] == 1_500_000_000
    assert hub.server(user)["user_options"] == {"profile": "gpu"}


def test_a_profile_chosen_through_the_rest_api_gives_its_image_limits_and_node(labelled):
    hub, nodes = labelled
    user = "apismall"
    hub.spawn(user, options={"profile": "small"})
    node, c = only_container(nodes, user)
    assert node == "plain"
    assert c["Config"]["Image"].endswith(IMAGE)
    assert c["HostConfig"]["Memory"] == 256 * MIB
    assert c["HostConfig"]["NanoCpus"] == 500_000_000


def test_a_selector_no_node_meets_is_a_503_naming_it(labelled):
    hub, nodes = labelled
    user = "apih100"
    hub.api("POST", "/users", json={"usernames": [user]})
    r = hub.api("POST", f"/users/{user}/server", json={"profile": "h100"})
    assert r.status_code == 503, (r.status_code, r.text)
    assert "No node has labels gpu=h100" in r.json()["message"], r.text
    assert all(not n.containers(user) for n in nodes.values())


def test_an_unknown_profile_is_a_400_naming_it(labelled):
    hub, nodes = labelled
    user = "apibad"
    hub.api("POST", "/users", json={"usernames": [user]})
    r = hub.api("POST", f"/users/{user}/server", json={"profile": "huge"})
    assert r.status_code == 400, (r.status_code, r.text)
    assert "unknown profile 'huge'" in r.json()["message"], r.text
    assert all(not n.containers(user) for n in nodes.values())


def test_a_hub_with_a_bad_node_entry_stops_at_start_naming_it(workdir):
    d = os.path.join(workdir, f"badnodes-{secrets.token_hex(2)}")
    os.makedirs(d)
    with open(os.path.join(d, "jupyterhub_config.py"), "w") as f:
        f.write(
            'c.JupyterHub.spawner_class = "berth"\n'
            'c.BerthSpawner.nodes = [{"name": "n1", "address": "127.0.0.1:1", "token_file": "/nonexistent/token"}]\n'
            f'c.JupyterHub.ip = "127.0.0.1"\nc.JupyterHub.port = {free_port()}\n'
            f"c.JupyterHub.hub_port = {free_port()}\n"
            f'c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{free_port()}"\n'
        )
    p = subprocess.run(["jupyterhub", "-f", "jupyterhub_config.py"], cwd=d, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "BerthSpawner.nodes[0] ('n1'): token_file /nonexistent/token cannot be read" in p.stderr, p.stderr[-2000:]


def test_a_kubespawner_profile_with_a_typed_image_spawns_it_through_the_form(labelled):
    hub, nodes = labelled
    user = "formkube"
    hub.api("POST", "/users", json={"usernames": [user]})
    s = hub.login(user)
    page = s.get(f"{hub.url}/hub/spawn", timeout=30)
    assert '<option value="unlisted-choice">Other image</option>' in page.text, page.text[:2000]
    assert 'name="profile-option-kube--image--unlisted-choice"' in page.text
    r = s.post(
        f"{hub.url}/hub/spawn",
        data={
            "profile": "kube",
            "profile-option-kube--image": "unlisted-choice",
            "profile-option-kube--image--unlisted-choice": TINY,
            "_xsrf": s.cookies.get("_xsrf", ""),
        },
        timeout=60,
        allow_redirects=False,
    )
    assert r.status_code in (302, 303), (r.status_code, r.text[:500])
    wait_for(f"{user} ready", lambda: (hub.server(user) or {}).get("ready"), 90)
    node, c = only_container(nodes, user)
    assert node == "plain", "kubespawner_override's node_selector"
    assert c["Config"]["Image"].endswith(TINY) and c["Config"]["Cmd"] == TINY_CMD
    assert c["HostConfig"]["Memory"] == 200 * MIB
    assert hub.server(user)["user_options"] == {
        "profile": "kube",
        "image": "unlisted-choice",
        "image--unlisted-choice": TINY,
    }


def test_a_kubespawner_profile_with_a_typed_image_through_the_rest_api_and_a_refused_one(labelled):
    hub, nodes = labelled
    user = "apikube"
    hub.spawn(user, options={"profile": "kube", "image--unlisted-choice": TINY})
    node, c = only_container(nodes, user)
    assert (node, c["HostConfig"]["Memory"]) == ("plain", 200 * MIB)
    assert c["Config"]["Image"].endswith(TINY)
    bad = "apikubebad"
    hub.api("POST", "/users", json={"usernames": [bad]})
    r = hub.api("POST", f"/users/{bad}/server", json={"profile": "kube", "image--unlisted-choice": "evil/x:1"})
    assert r.status_code == 400, (r.status_code, r.text)
    assert "'evil/x:1' is not accepted: a berth-test image" in r.json()["message"], r.text
    assert all(not n.containers(bad) for n in nodes.values())
