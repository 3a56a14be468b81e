"""Coming from DockerSpawner: resume of a kept container, through a real JupyterHub, real berthd
and real Docker."""

import os
import secrets

import pytest
from conftest import CLUSTER_HOOK, TINY, Berthd, Hub, docker, wait_for


@pytest.fixture(scope="module")
def one_node(workdir):
    """One node and a hub whose "keep*" users keep their stopped container (remove=False)."""
    base = os.path.join(workdir, f"compat-{secrets.token_hex(2)}")
    with Berthd("compat", base) as node, Hub(base, [node], extra=CLUSTER_HOOK) as hub:
        yield hub, node


def hub_log(hub):
    with open(os.path.join(hub.dir, "hub.log")) as f:
        return f.read()


def test_a_kept_server_resumes_with_its_files_and_a_new_token_and_a_new_image_recreates(one_node):
    hub, node = one_node
    user = "keepresume"
    hub.spawn(user)
    (cid,) = node.containers(user)
    # A file in the container's writable layer, outside any volume ("pip install --user").
    docker("exec", cid, "sh", "-c", "echo kept > $HOME/installed.txt")
    r = hub.api("DELETE", f"/users/{user}/server")
    assert r.status_code in (202, 204)
    wait_for("the server to stop", lambda: hub.server(user) is None, 30)
    assert docker("inspect", "-f", "{{.State.Running}}", cid) == "false"

    hub.spawn(user)
    assert node.containers(user) == [cid], "the same container resumes"
    assert docker("exec", cid, "sh", "-c", "cat $HOME/installed.txt") == "kept"
    assert f"berth: {user} on {node.name}: resumed the stopped container" in hub_log(hub)
    # The login goes through OAuth, which the server completes with its new API token.
    s = hub.login(user)
    r = hub.get_as(s, f"/user/{user}/api/status")
    assert r.status_code == 200, r.text[:300]
    env = docker("inspect", "-f", "{{json .Config.Env}}", cid)
    assert "JUPYTERHUB_API_TOKEN" not in env, "the token reaches the server through the node's file only"

    r = hub.api("DELETE", f"/users/{user}/server")
    wait_for("the server to stop", lambda: hub.server(user) is None, 30)
    hub.spawn(user, options={"image": TINY})
    (new,) = node.containers(user)
    assert new != cid, "another image: a new container"
    assert "recreated the stopped container: image changed" in hub_log(hub)
    node.log.flush()
    with open(node.log.name) as f:
        assert "image changed" in f.read(), "berthd's log names the change"
    hub.api("DELETE", f"/users/{user}/server")
    wait_for("the server to stop", lambda: hub.server(user) is None, 30)


DS_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "dockerspawner_style.py")


def test_a_dockerspawner_config_runs_with_only_the_spawner_class_and_nodes_changed(workdir, monkeypatch):
    base = os.path.join(workdir, f"ds-{secrets.token_hex(2)}")
    network = f"berth-e2e-ds-{secrets.token_hex(3)}"
    monkeypatch.setenv("BERTH_E2E_NETWORK", network)
    with open(DS_CONFIG) as f:
        deployment = f.read()
    # The harness's own BerthSpawner defaults give way to the deployment's settings.
    extra = "for _k in ('image', 'remove', 'allowed_images'):\n    c.BerthSpawner.pop(_k, None)\n" + deployment
    node_cfg = "[policy.container_options]\nallow_network_create = true\n"
    try:
        with Berthd("ds", base, config=node_cfg) as node:
            monkeypatch.setenv("BERTH_E2E_NODE", node.address)
            with Hub(base, [node], extra=extra) as hub:
                hub.spawn("dsuser")
                (cid,) = node.containers("dsuser")
                for fmt, want in [
                    ("{{.HostConfig.NetworkMode}}", network),
                    ("{{.HostConfig.ShmSize}}", str(256 << 20)),
                    ("{{.HostConfig.PidsLimit}}", "400"),
                    ("{{json .HostConfig.ExtraHosts}}", '["db.example:10.1.2.3"]'),
                    ("{{.Config.WorkingDir}}", "/home/jovyan"),
                    ('{{index .Config.Labels "team"}}', "physics"),
                    ("{{.HostConfig.Memory}}", str(512 << 20)),
                    ("{{.HostConfig.NanoCpus}}", str(10**9)),
                ]:
                    assert docker("inspect", "-f", fmt, cid) == want, fmt
                assert docker("exec", cid, "cat", "/tmp/post-start") == "post-start ran"
                assert "SITE=e2e" in docker("inspect", "-f", "{{json .Config.Env}}", cid)
                assert docker("inspect", "-f", "{{json .Config.Cmd}}", cid).endswith('"jupyterhub-singleuser"]'), (
                    "the image's own CMD"
                )
                s = hub.login("dsuser")
                r = hub.get_as(s, "/user/dsuser/api/status")
                assert r.status_code == 200, r.text[:300]
                hub.api("DELETE", "/users/dsuser/server")
                wait_for("the server to stop", lambda: hub.server("dsuser") is None, 30)
                assert node.containers("dsuser") == [cid], "remove = False keeps it"
    finally:
        docker("network", "rm", network)


INTERNAL_SSL = """
c.JupyterHub.internal_ssl = True
c.JupyterHub.internal_certs_location = {certs!r}
c.JupyterHub.trusted_alt_names = ["IP:{bridge}"]
c.JupyterHub.hub_connect_url = c.JupyterHub.hub_connect_url.replace("http://", "https://")
c.ConfigurableHTTPProxy.api_url = c.ConfigurableHTTPProxy.api_url.replace("http://", "https://")
# The Node.js proxy (Debian's node-configurable-http-proxy, installed by tests/e2e/setup): the
# Python port the venv uses elsewhere speaks no TLS to the servers nor on its API. NODE_PATH:
# a Node.js not from Debian does not look in /usr/share/nodejs.
c.ConfigurableHTTPProxy.command = ["env", "NODE_PATH=/usr/share/nodejs", "/usr/bin/configurable-http-proxy"]
"""


def test_with_internal_ssl_the_hub_reaches_the_server_over_https_and_the_user_logs_in(workdir):
    import ssl
    import subprocess

    from conftest import bridge_ip

    base = os.path.join(workdir, f"ssl-{secrets.token_hex(2)}")
    extra = INTERNAL_SSL.format(certs=os.path.join(base, "internal-ssl"), bridge=bridge_ip())
    with Berthd("ssl", base) as node, Hub(base, [node], extra=extra) as hub:
        hub.spawn("tlsuser")
        (cid,) = node.containers("tlsuser")
        assert "berth: tlsuser started on" in hub_log(hub)
        port = int(docker("port", cid, "8888").splitlines()[0].rsplit(":", 1)[1])
        pem = ssl.get_server_certificate(("127.0.0.1", port))
        assert "BEGIN CERTIFICATE" in pem, "the server speaks TLS on its published port"
        s = hub.login("tlsuser")
        r = hub.get_as(s, "/user/tlsuser/api/status")
        assert r.status_code == 200, r.text[:300]
        env = docker("exec", cid, "sh", "-c", "env | grep JUPYTERHUB_SSL_ | sort")
        assert "JUPYTERHUB_SSL_KEYFILE=/.berth/certs/server.key" in env, env
        # The key went into the container, not onto the node's disk.
        found = subprocess.run(["grep", "-rl", "PRIVATE KEY", node.dir], capture_output=True, text=True).stdout
        assert found == "", found
        hub.api("DELETE", "/users/tlsuser/server")
        wait_for("the server to stop", lambda: hub.server("tlsuser") is None, 30)
