"""End-to-end fixtures: real berthd nodes, a real JupyterHub (PyPI), the real proxy, real dockerd."""

import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest
import requests

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The proxy JupyterHub runs by default, as Debian packages it (tests/e2e/setup installs it). The
# installed node does not search Debian's module directory on its own ("Cannot find module
# 'commander'" without NODE_PATH); the hub hands its environment to the proxy.
CHP = "/usr/bin/configurable-http-proxy"
CHP_ENV = {"NODE_PATH": "/usr/share/nodejs"}
BERTHD = os.environ.get("BERTHD", os.path.join(REPO, "target", "debug", "berthd"))
IMAGE = "berth-test/singleuser:latest"
TINY = "berth-test/tiny:latest"


def docker(*args, host=None):
    """Output of a docker command against the host engine, or the engine at `host`."""
    pre = ["docker"] + (["-H", host] if host else [])
    return subprocess.run([*pre, *args], capture_output=True, text=True, check=False).stdout.strip()


def require_docker():
    ok = subprocess.run(["docker", "info"], capture_output=True).returncode == 0
    assert ok, "these tests need a running Docker engine"
    for image in (IMAGE, TINY):
        assert docker("image", "inspect", "-f", "{{.Id}}", image), f"image {image} missing: run tests/images/"
    assert os.path.exists(BERTHD), f"{BERTHD} missing: cargo build -p berthd"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bridge_ip():
    ip = docker("network", "inspect", "bridge", "-f", "{{(index .IPAM.Config 0).Gateway}}")
    if not ip:
        # Some engines list only the subnet; Docker gives the bridge its first address.
        subnet = docker("network", "inspect", "bridge", "-f", "{{(index .IPAM.Config 0).Subnet}}")
        ip = str(next(ipaddress.ip_network(subnet).hosts())) if subnet else ""
    assert ip, "docker bridge network has no gateway"
    return ip


def wait_for(what, check, timeout=60, interval=0.2):
    end = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Berthd:
    """One berthd node process.

    By default it runs on the host engine and loopback. A node on its own machine
    (netnode.py) passes `netns` (berthd runs inside that network namespace), `listen`
    (its address there) and `docker_host` (its own engine)."""

    def __init__(
        self, name, workdir, config="", args=(), client=None, netns=None, listen="127.0.0.1:0", docker_host=None
    ):
        self.name = f"e2e-{name}-{secrets.token_hex(3)}"
        # Extra keys of this node's entry in BerthSpawner.nodes (TLS files, token file).
        self.client = client or {}
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.admin_socket = os.path.join(self.dir, "admin.sock")
        cfg = os.path.join(self.dir, "config.toml")
        with open(cfg, "w") as f:
            f.write(config)
        self.log = open(os.path.join(self.dir, "berthd.log"), "w+")
        self.docker_host = docker_host
        self._prefix = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []
        if docker_host:
            args = [*args, "--docker-host", docker_host]
        self._args = [
            "--node-id",
            self.name,
            "--config",
            cfg,
            "--state-dir",
            os.path.join(self.dir, "state"),
            "--admin-socket",
            self.admin_socket,
            *args,
        ]
        self.address = listen
        self._launch()

    def _launch(self):
        """Starts berthd on self.address (port 0: any) and learns the address it listens on."""
        self.proc = subprocess.Popen(
            [*self._prefix, BERTHD, "serve", "--listen", self.address, *self._args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            # Image GC off: the engines' test images are shared by every test and may be unused
            # when a pass runs (daemon/tests/image_gc.rs tests GC on an engine of its own).
            env={**os.environ, "BERTH_LOG": "info", "BERTH_IMAGE_GC_HIGH_PERCENT": "0"},
        )
        line = ""
        for line in self.proc.stderr:
            self.log.write(line)
            if "berthd listening" in line:
                break
        m = re.search(r"addr=(\S+)", line)
        if not m:
            self.stop()
            raise AssertionError(f"berthd {self.name} did not start (log {self.log.name})")
        self.address = m.group(1)
        threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()

    def kill_daemon(self):
        """SIGKILL berthd alone: its containers keep running."""
        self.proc.kill()
        self.proc.wait()

    def restart(self):
        """Starts berthd again at the same address with the same state."""
        self._launch()

    def restart_with_config(self, config):
        """Restarts berthd (its servers keep running) with `config` as its configuration file."""
        self.kill_daemon()
        with open(os.path.join(self.dir, "config.toml"), "w") as f:
            f.write(config)
        self._launch()

    def _drain(self, proc):
        for line in proc.stderr:
            self.log.write(line)
            self.log.flush()

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def containers(self, user=None, all=True):
        args = ["ps", "-q", "--no-trunc", "--filter", f"label=berth.node={self.name}"]
        if all:
            args.insert(1, "-a")
        if user is not None:
            args += ["--filter", f"label=berth.user={user}"]
        return [c for c in docker(*args, host=self.docker_host).split() if c]

    def admin(self, method, reason=""):
        import grpc
        from berthspawner._proto.berth.v1 import admin_pb2, admin_pb2_grpc

        # grpc-python would send the socket path as :authority, which HTTP/2 servers refuse.
        opts = [("grpc.default_authority", "localhost")]
        with grpc.insecure_channel(f"unix://{self.admin_socket}", options=opts) as ch:
            getattr(admin_pb2_grpc.AdminStub(ch), method)(admin_pb2.DrainRequest(reason=reason), timeout=10)

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        ids = self.containers()
        if ids:
            docker("rm", "-f", *ids, host=self.docker_host)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class Hub:
    """A JupyterHub process with berthspawner, the dummy authenticator and the proxy."""

    def __init__(self, workdir, nodes, extra="", hub_port=None, token=None, port=None, hub_ip=None):
        """`hub_ip`: where the hub listens for the servers (default: the host engine's bridge
        gateway, which its containers reach)."""
        self.dir = os.path.join(workdir, "hub")
        os.makedirs(self.dir, exist_ok=True)
        self.port = port or free_port()
        self.hub_port = hub_port or free_port()
        self.api_port = free_port()
        self.token = token or secrets.token_hex(24)
        self.url = f"http://127.0.0.1:{self.port}"
        self.bridge = hub_ip or bridge_ip()
        node_list = ",\n".join("    " + repr({"name": n.name, "address": n.address, **n.client}) for n in nodes)
        self.config = os.path.join(self.dir, "jupyterhub_config.py")
        with open(self.config, "w") as f:
            f.write(f'''
c.JupyterHub.spawner_class = "berth"
c.BerthSpawner.nodes = [
{node_list}
]
c.BerthSpawner.image = "{IMAGE}"
c.BerthSpawner.allowed_images = ["{IMAGE}", "{TINY}"]
c.BerthSpawner.remove = True
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {self.port}
c.JupyterHub.hub_ip = "{self.bridge}"
c.JupyterHub.hub_port = {self.hub_port}
c.JupyterHub.hub_connect_url = "http://{self.bridge}:{self.hub_port}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.api_port}"
c.JupyterHub.cleanup_servers = False
c.JupyterHub.allow_named_servers = True
c.JupyterHub.db_url = "sqlite:///{self.dir}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{self.dir}/cookie_secret"
c.JupyterHub.pid_file = "{self.dir}/hub.pid"
c.ConfigurableHTTPProxy.pid_file = "{self.dir}/proxy.pid"
c.ConfigurableHTTPProxy.command = ["{CHP}"]
c.Spawner.start_timeout = 90
c.Spawner.http_timeout = 60
c.JupyterHub.services = [{{"name": "e2e", "api_token": "{self.token}"}}]
c.JupyterHub.load_roles = [{{"name": "e2e", "services": ["e2e"], "scopes": ["admin:users", "admin:servers", "access:servers", "users:activity", "read:users"]}}]
{extra}
''')
        self.log = open(os.path.join(self.dir, "hub.log"), "a")
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["jupyterhub", "-f", self.config],
            cwd=self.dir,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **CHP_ENV},
        )

        def up():
            try:
                return requests.get(f"{self.url}/hub/api", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        try:
            wait_for("the hub to answer", up, timeout=60)
        except AssertionError as e:
            self.stop()
            self.log.flush()
            with open(self.log.name) as f:
                tail = f.read()[-3000:]
            raise AssertionError(f"{e}; the hub's log ends:\n{tail}") from None

    def terminate(self):
        """A clean hub shutdown (servers keep running: cleanup_servers is False)."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)

    def kill(self):
        """SIGKILL the hub alone (the proxy, a separate process, keeps routing)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        # The proxy is the hub's child in its own session: end it by the pid the hub recorded.
        try:
            with open(os.path.join(self.dir, "proxy.pid")) as f:
                os.kill(int(f.read().strip()), signal.SIGTERM)
        except (OSError, ValueError):
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def api(self, method, path, timeout=30, **kw):
        return requests.request(
            method, f"{self.url}/hub/api{path}", headers={"Authorization": f"token {self.token}"}, timeout=timeout, **kw
        )

    def api_stream(self, path):
        """A streamed GET of a hub API path (server-sent events)."""
        return requests.get(
            f"{self.url}/hub/api{path}", headers={"Authorization": f"token {self.token}"}, stream=True, timeout=60
        )

    def server(self, user, name=""):
        r = self.api("GET", f"/users/{user}")
        if r.status_code != 200:
            return None
        return r.json().get("servers", {}).get(name)

    def spawn(self, user, name="", options=None, timeout=90):
        self.api("POST", "/users", json={"usernames": [user]})
        path = f"/users/{user}/servers/{name}" if name else f"/users/{user}/server"
        r = self.api("POST", path, json=options or {})
        assert r.status_code in (201, 202), f"spawn {user}/{name}: {r.status_code} {r.text}"
        return wait_for(f"{user}/{name} ready", lambda: (self.server(user, name) or {}).get("ready"), timeout)

    def get_as(self, session, path):
        """GET a single-user API path as a browser would: first open the server's root page,
        which needs a login and so sends the browser through the hub's OAuth flow, setting the
        server's cookie; then the API path."""
        prefix = path.split("/api/")[0] + "/"
        first = session.get(f"{self.url}{prefix}", timeout=30)
        r = session.get(f"{self.url}{path}", timeout=30)
        r.first_visit = first
        return r

    def login(self, user):
        """Logs in at the hub (dummy authenticator); the session holds the hub's cookie only,
        as the redirect after the login is not followed into the user's server."""
        s = requests.Session()
        s.get(f"{self.url}/hub/login", timeout=10)
        xsrf = s.cookies.get("_xsrf", "")
        r = s.post(
            f"{self.url}/hub/login",
            data={"username": user, "password": "x", "_xsrf": xsrf},
            timeout=30,
            allow_redirects=False,
        )
        assert r.status_code == 302, (r.status_code, r.text[:500])
        return s


# Per-user variations for the shared cluster: "keep*" users keep their stopped container
# (remove=False); "slow*" users run the tiny image with a server that answers after 3 s, so
# a test can watch the spawn's progress while it is pending.
CLUSTER_HOOK = f"""
def _per_user(spawner):
    name = spawner.user.name
    if name.startswith("keep"):
        spawner.remove = False
    if name.startswith("slow"):
        spawner.image = "{TINY}"
        spawner.cmd = ["sh", "-c", "sleep 3; exec httpd -f -p 8888 -h /www"]
c.Spawner.pre_spawn_hook = _per_user
"""


@pytest.fixture(scope="session")
def workdir():
    require_docker()
    d = tempfile.mkdtemp(prefix="berth-e2e-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(workdir):
    """Two unlimited nodes and a hub using them."""
    base = os.path.join(workdir, f"cluster-{secrets.token_hex(2)}")
    with Berthd("a", base) as a, Berthd("b", base) as b, Hub(base, [a, b], extra=CLUSTER_HOOK) as hub:
        yield hub, [a, b]


# Real other nodes (own netns, dockerd, berthd): the `net_nodes` session fixture.
pytest_plugins = ["netnode"]
