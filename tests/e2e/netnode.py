"""Nodes that are other machines as far as berth can tell: each has its own network namespace,
its own Docker engine and its own berthd, and the hub reaches it over a veth link.

  root namespace: bridge berthe2e0 10.213.0.1/24 (the hub listens here)
      |-- veth be2e-n1-h  <->  be2e-n1-c 10.213.0.11 in netns be2e-n1: dockerd, berthd, containers
      `-- veth be2e-n2-h  <->  be2e-n2-c 10.213.0.12 in netns be2e-n2: ...

Everything made here is named with the prefix `be2e` (links, namespaces, cgroup parents,
containerd namespaces) or lives under RUN_DIR / DATA_DIR, so that `sweep()` can remove the
leftovers of an interrupted run by name. One run at a time holds LOCK_FILE.

Use the session fixture `net_nodes` (imported by conftest.py): a list of NetNode.
"""

import atexit
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from certs import Pki
from conftest import IMAGE, TINY, Berthd, wait_for

PREFIX = "be2e"
BRIDGE = "berthe2e0"
NET = "10.213.0"
HUB_IP = f"{NET}.1"
# Exec roots and engine sockets: short paths (a unix socket path holds at most 107 bytes).
RUN_DIR = f"/run/{PREFIX}"
# Engine data roots and the image tarballs.
DATA_DIR = "/var/lib/berth-e2e"
# A tmpfs, about 0.55 GB per node with the test images, plus their tarballs while loading.
DATA_SIZE = "4g"
LOCK_FILE = "/run/berth-e2e.lock"
NODES = 2
IMAGES = (TINY, IMAGE)
ENGINE_TIMEOUT = 60
STOP_TIMEOUT = 30


class SetupError(AssertionError):
    """The harness could not build a node: a failure, never a skip."""


def sh(*cmd, timeout=120, input=None):
    """Runs a command that must succeed; its stderr is in the error."""
    try:
        r = subprocess.run(
            cmd,
            capture_output=True,
            text=input is None or isinstance(input, str),
            timeout=timeout,
            input=input,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise SetupError(f"{' '.join(cmd)}: no answer after {timeout}s") from None
    if r.returncode != 0:
        raise SetupError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr}")
    return r.stdout


def quiet(*cmd, timeout=30):
    """Runs a clean-up command whose failure (already gone) does not matter."""
    try:
        subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        pass


def log(msg):
    """To the terminal even under pytest's capture: set-up times are worth seeing."""
    print(f"netnode: {msg}", file=sys.__stderr__, flush=True)


# --- the janitor: leftovers by name -------------------------------------------------------


def _netns_names():
    return sorted(n for n in os.listdir("/run/netns") if n.startswith(PREFIX)) if os.path.isdir("/run/netns") else []


def _pids_in_netns(ns):
    """Processes whose network namespace is /run/netns/<ns>: the node's dockerd, containerd,
    shims, docker-proxy, fuse-overlayfs and berthd."""
    try:
        want = os.stat(f"/run/netns/{ns}").st_ino
    except OSError:
        return []
    pids = []
    for p in os.listdir("/proc"):
        if p.isdigit() and int(p) != os.getpid():
            try:
                if os.stat(f"/proc/{p}/ns/net").st_ino == want:
                    pids.append(int(p))
            except OSError:
                pass
    return pids


def _cgroup_dirs(node=None):
    """The cgroup parents the node engines put their containers under, deepest first."""
    pattern = f"{PREFIX}-{node}" if node else f"{PREFIX}-"
    roots = ["/sys/fs/cgroup"] + [os.path.join("/sys/fs/cgroup", d) for d in os.listdir("/sys/fs/cgroup")]
    found = []
    for root in roots:
        if not os.path.isdir(root):
            continue
        for d in os.listdir(root):
            if d.startswith(pattern) and os.path.isdir(os.path.join(root, d)):
                for here, _, _ in os.walk(os.path.join(root, d)):
                    found.append(here)
    return sorted(found, key=len, reverse=True)


def _container_pids(node=None):
    pids = set()
    for d in _cgroup_dirs(node):
        try:
            with open(os.path.join(d, "cgroup.procs")) as f:
                pids.update(int(x) for x in f.read().split())
        except OSError:
            pass
    return pids


def _kill(pids, what, timeout=15):
    """SIGKILL and wait until they are gone (or zombies). Leftovers need no grace: what they
    held (mounts, cgroups, the netns) is removed after them; and a container's pid 1 ignores
    SIGTERM unless it handles it."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        wait_for(f"{what} to exit", lambda: all(_zombie(p) for p in pids), timeout=timeout)
    except AssertionError:
        raise SetupError(f"{what} (pids {sorted(pids)}) survive SIGKILL after {timeout}s") from None


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _unescape(path):
    return path.encode().decode("unicode_escape")


def _mounts_under(*dirs):
    """Mount points under `dirs`, deepest first (mountinfo escapes spaces as octal)."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = _unescape(line.split()[4])
            if any(mp == d or mp.startswith(d.rstrip("/") + "/") for d in dirs):
                out.append(mp)
    return sorted(set(out), key=len, reverse=True)


def _unmount(*dirs):
    for mp in _mounts_under(*dirs):
        quiet("umount", "-l", mp)


def _links():
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=False).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]
    return [n for n in names if n.startswith(PREFIX) or n == BRIDGE]


def sweep_node(name):
    """Removes everything of node `name`: its containers, processes, mounts, namespace, link,
    cgroups and directories, whoever made them (after a clean Engine.stop little is left)."""
    ns = f"{PREFIX}-{name}"
    run, data = os.path.join(RUN_DIR, name), os.path.join(DATA_DIR, name)
    steps = [
        ("kill containers", lambda: _kill(_container_pids(name), f"containers of {ns}")),
        ("kill processes", lambda: _kill(_pids_in_netns(ns), f"processes in netns {ns}")),
        ("unmount", lambda: _unmount(run, data, f"/run/netns/{ns}")),
        ("delete netns", lambda: quiet("ip", "netns", "delete", ns)),
        ("delete link", lambda: quiet("ip", "link", "delete", f"{ns}-h")),
        ("remove cgroups", lambda: _rmdirs(_cgroup_dirs(name))),
        (
            "remove directories",
            lambda: (shutil.rmtree(run, ignore_errors=True), shutil.rmtree(data, ignore_errors=True)),
        ),
    ]
    for what, step in steps:
        t0 = time.monotonic()
        step()
        if time.monotonic() - t0 > 3:
            log(f"{name}: {what} took {time.monotonic() - t0:.1f}s")


def _rmdirs(dirs):
    for d in dirs:
        try:
            os.rmdir(d)
        except OSError:
            pass


def sweep():
    """Removes everything the harness makes, including what an interrupted run left behind."""
    names = {ns[len(PREFIX) + 1 :] for ns in _netns_names()}
    for base in (RUN_DIR, DATA_DIR):
        if os.path.isdir(base):
            names.update(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)) and d != "pki")
    for name in sorted(names):
        sweep_node(name)
    _kill(_container_pids(), "containers of earlier e2e engines")
    for link in _links():
        quiet("ip", "link", "delete", link)
    _unmount(RUN_DIR, DATA_DIR)
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    shutil.rmtree(DATA_DIR, ignore_errors=True)
    left = _links() + _netns_names() + _mounts_under(RUN_DIR, DATA_DIR)
    if left:
        raise SetupError(f"could not remove earlier e2e leftovers: {left}")


# --- building nodes ------------------------------------------------------------------------


def mount_data_dir():
    """The engines' data roots in memory: loading the images and removing them afterwards
    then cost no disk I/O (the machine's disk is shared and slow under load)."""
    os.makedirs(DATA_DIR, mode=0o700, exist_ok=True)
    sh("mount", "-t", "tmpfs", "-o", f"size={DATA_SIZE},mode=0700", "berth-e2e", DATA_DIR)


def make_bridge():
    """The hub's side of the links: a bridge holding HUB_IP."""
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "addr", "add", f"{HUB_IP}/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")


def make_netns(name, ip):
    """A namespace reached from the root namespace over a veth pair on the bridge."""
    ns, host_end, inside = f"{PREFIX}-{name}", f"{PREFIX}-{name}-h", f"{PREFIX}-{name}-c"
    sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", inside)
    sh("ip", "link", "set", host_end, "master", BRIDGE, "up")
    sh("ip", "link", "set", inside, "netns", ns)
    sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", inside)
    sh("ip", "-n", ns, "link", "set", inside, "up")
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", ns, "route", "add", "default", "via", HUB_IP)
    return ns


class Engine:
    """A dockerd inside a node's namespace. `nsenter --net` and not `ip netns exec`: the latter
    remounts /sys for the namespace and hides the cgroup hierarchy dockerd needs. The empty
    config file keeps the machine's /etc/docker/daemon.json (which sets what the flags set)
    out of it."""

    def __init__(self, name, ns, index, driver):
        self.name = name
        self.run = os.path.join(RUN_DIR, name)
        self.data = os.path.join(DATA_DIR, name)
        os.makedirs(self.run, exist_ok=True)
        os.makedirs(self.data, exist_ok=True)
        self.host = f"unix://{self.run}/d.sock"
        cfg = os.path.join(self.run, "daemon.json")
        with open(cfg, "w") as f:
            json.dump({}, f)
        self.log = os.path.join(self.data, "dockerd.log")
        cmd = [
            "nsenter",
            f"--net=/run/netns/{ns}",
            "dockerd",
            "--config-file",
            cfg,
            "--data-root",
            os.path.join(self.data, "root"),
            "--exec-root",
            os.path.join(self.run, "x"),
            "--pidfile",
            os.path.join(self.run, "dockerd.pid"),
            "-H",
            self.host,
            # Its own bridge subnet: 172.17/16 is the host engine's.
            "--bip",
            f"172.31.{index}.1/24",
            "--storage-driver",
            driver,
            # Names the janitor finds: the containers' cgroups and containerd namespaces
            # (should the machine run a shared containerd).
            "--cgroup-parent",
            f"{PREFIX}-{name}",
            "--containerd-namespace",
            f"{PREFIX}-{name}",
            "--containerd-plugins-namespace",
            f"{PREFIX}-{name}-p",
        ]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(f"dockerd of {name} to answer at {self.host}", self._answers, ENGINE_TIMEOUT, 0.3)
        except AssertionError as e:
            raise SetupError(f"{e}; its log {self.log}:\n{self._tail()}") from None

    def _answers(self):
        if self.proc.poll() is not None:
            raise SetupError(f"dockerd of {self.name} exited {self.proc.returncode}:\n{self._tail()}")
        try:
            r = subprocess.run(["docker", "-H", self.host, "info"], capture_output=True, timeout=10)
        except subprocess.TimeoutExpired:
            return False
        return r.returncode == 0

    def _tail(self):
        with open(self.log) as f:
            return "".join(f.readlines()[-15:])

    def docker(self, *args, timeout=120):
        return sh("docker", "-H", self.host, *args, timeout=timeout).strip()

    def load(self, tarball):
        sh("docker", "-H", self.host, "load", "-i", tarball, timeout=300)

    def stop(self):
        """Removes its containers, then a clean dockerd shutdown (it unmounts its layers)."""
        if self.proc.poll() is None:
            ids = subprocess.run(
                ["docker", "-H", self.host, "ps", "-aq"], capture_output=True, text=True, timeout=30, check=False
            ).stdout.split()
            if ids:
                quiet("docker", "-H", self.host, "rm", "-f", *ids, timeout=60)
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class NetNode:
    """One node: name, ip, netns, its engine (`docker_host`, `engine.docker(...)`) and its
    berthd (`berthd`: a conftest.Berthd with address, admin_socket, containers(), admin(), and
    `client`, the TLS and token keys of its BerthSpawner.nodes entry)."""

    def __init__(self, name, index, driver, pki):
        self.name = name
        self.ip = f"{NET}.{10 + index}"
        self.netns = make_netns(name, self.ip)
        self.engine = Engine(name, self.netns, index, driver)
        self.docker_host = self.engine.host
        self.pki = pki
        self.berthd = None

    def start_berthd(self):
        """berthd in the node's namespace on the node's address, publishing servers there.
        Mutual TLS and a token, as a node on a network must have: this also runs the
        non-loopback path of berthd's security checks."""
        self.berthd = Berthd(
            self.name,
            self.engine.data,
            netns=self.netns,
            listen=f"{self.ip}:0",
            docker_host=self.docker_host,
            args=[*self.pki.node_args(self.name, [self.ip]), "--publish-host-ip", self.ip],
            client=self.pki.client(),
        )

    @property
    def address(self):
        return self.berthd.address

    @property
    def admin_socket(self):
        return self.berthd.admin_socket

    def close(self):
        t0 = time.monotonic()
        if self.berthd:
            self.berthd.proc.kill()
            self.berthd.proc.wait()
        self.engine.stop()
        t1 = time.monotonic()
        sweep_node(self.name)
        log(f"{self.name}: engine stopped in {t1 - t0:.1f}s, swept in {time.monotonic() - t1:.1f}s")


class Cluster:
    """The bridge and N nodes with their images loaded; `close()` undoes all of it."""

    def __init__(self, n=NODES):
        self.nodes = []
        self._lock = _take_lock()
        self._closed = False
        atexit.register(self.close)
        try:
            self._build(n)
        except BaseException:
            self.close()
            raise

    def _build(self, n):
        t0 = time.monotonic()
        sweep()
        for cmd in ("ip", "nsenter", "dockerd", "docker"):
            if not shutil.which(cmd):
                raise SetupError(f"{cmd} is not installed (tests/e2e/setup installs it)")
        driver = sh("docker", "info", "-f", "{{.Driver}}").strip()
        mount_data_dir()
        make_bridge()
        pki = Pki(os.path.join(DATA_DIR, "pki"))
        for i in range(1, n + 1):
            self.nodes.append(NetNode(f"n{i}", i, driver, pki))
        t1 = time.monotonic()
        log(f"{n} engines up in {t1 - t0:.1f}s (storage driver {driver})")
        self._load_images()
        t2 = time.monotonic()
        log(f"images {', '.join(IMAGES)} loaded into {n} engines in {t2 - t1:.1f}s")
        for node in self.nodes:
            node.start_berthd()
        log(f"nodes ready in {time.monotonic() - t0:.1f}s")

    def _load_images(self):
        """Saves each test image once, loads it into every engine (in parallel)."""
        t0 = time.monotonic()
        tarballs = []
        for image in IMAGES:
            path = os.path.join(DATA_DIR, image.replace("/", "_").replace(":", "_") + ".tar")
            sh("docker", "save", "-o", path, image, timeout=300)
            tarballs.append(path)
        log(f"images saved in {time.monotonic() - t0:.1f}s")
        errors = []

        def load(node):
            try:
                for t in tarballs:
                    node.engine.load(t)
            except Exception as e:  # reported below, in the test's thread
                errors.append(e)

        threads = [threading.Thread(target=load, args=(n,)) for n in self.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        for tarball in tarballs:
            os.remove(tarball)

    def close(self):
        """Idempotent: from the fixture's finalizer, atexit, or a failed set-up."""
        if self._closed:
            return
        self._closed = True
        t0 = time.monotonic()
        errors = []
        for node in self.nodes:
            try:
                node.close()
            except Exception as e:
                errors.append(e)
        try:
            sweep()
        finally:
            self._lock.close()
        log(f"{len(self.nodes)} nodes removed in {time.monotonic() - t0:.1f}s")
        if errors:
            raise errors[0]


def _take_lock():
    """One harness at a time: the bridge, addresses and names are fixed, and the janitor
    would tear down another run's nodes."""
    f = open(LOCK_FILE, "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise SetupError(f"another e2e run holds {LOCK_FILE}: its network nodes are in use") from None
    return f


def _sigterm_as_interrupt(signum, frame):
    """A SIGTERM (a CI timeout) then unwinds like Ctrl-C, so the finalizers run."""
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def net_nodes():
    """NODES real nodes (each its own netns, dockerd and berthd over mutual TLS); the hub must
    listen on HUB_IP for their containers to reach it."""
    if os.geteuid() != 0:
        raise SetupError("network nodes need root (namespaces, links, dockerd)")
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    cluster = Cluster()
    try:
        yield cluster.nodes
    finally:
        cluster.close()
        signal.signal(signal.SIGTERM, previous)
