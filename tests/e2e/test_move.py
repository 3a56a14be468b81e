"""`python -m berthspawner.move` end to end, without a hub: two real berthd nodes, each on its own
real Docker engine (the host's, and a second dockerd this module starts with its own data root and
network namespace, for volumes only), a volume with nested directories, links, modes, owners, times and 20 MB of
random data moved from one to the other, byte for byte, and the refusal while a container
mounts it."""

import hashlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BERTHD = os.environ.get("BERTHD", os.path.join(REPO, "target", "debug", "berthd"))
TINY = "berth-test/tiny:latest"


def docker(*args, host=None):
    cmd = ["docker", *(["-H", host] if host else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()


def wait_for(what, check, timeout=30):
    end = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return result


@pytest.fixture(scope="module")
def engine2():
    """A second Docker engine on this host: its own data root, socket and containerd namespace."""
    assert shutil.which("dockerd"), "dockerd is needed to run a second engine"
    d = tempfile.mkdtemp(prefix="berth-engine2-")
    with open(os.path.join(d, "daemon.json"), "w") as f:
        f.write("{}")
    sock = f"unix://{d}/docker.sock"
    log = open(os.path.join(d, "dockerd.log"), "w")
    # In a network namespace of its own: a dockerd manages the bridge `docker0` and would take
    # the host engine's (with --bridge=none it deletes it). Its socket is a file, reachable.
    proc = subprocess.Popen(
        ["unshare", "--net", "dockerd", "--config-file", f"{d}/daemon.json", "--data-root", f"{d}/root",
         "--exec-root", f"{d}/exec", "--pidfile", f"{d}/pid", "-H", sock, "--iptables=false", "--ip-masq=false",
         "--containerd-namespace", f"berth-e2{secrets.token_hex(2)}",
         "--containerd-plugins-namespace", f"berth-e2p{secrets.token_hex(2)}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for("the second Docker engine", lambda: docker("info", "--format", "{{.ServerVersion}}", host=sock))
        yield sock
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        shutil.rmtree(d, ignore_errors=True)


class Node:
    """A berthd on `docker_host`, listening on a free loopback port."""

    def __init__(self, docker_host, workdir):
        self.node_id = f"e2e-move-{secrets.token_hex(3)}"
        self.docker_host = docker_host
        state = os.path.join(workdir, self.node_id)
        self.proc = subprocess.Popen(
            [BERTHD, "serve", "--listen", "127.0.0.1:0", "--node-id", self.node_id, "--state-dir", state,
             "--admin-socket", os.path.join(workdir, f"{self.node_id}.sock"), "--docker-host", docker_host],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        found = {}

        def read():
            for line in self.proc.stderr:
                m = re.search(r"berthd listening.*addr=(\S+)", line)
                if m and "addr" not in found:
                    found["addr"] = m.group(1)

        threading.Thread(target=read, daemon=True).start()
        self.address = wait_for(f"berthd {self.node_id}", lambda: found.get("addr"))

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture
def nodes(engine2):
    assert os.path.exists(BERTHD), f"{BERTHD} missing: cargo build -p berthd"
    work = tempfile.mkdtemp(prefix="berth-move-")
    a = Node("unix:///var/run/docker.sock", work)
    b = Node(engine2, work)
    yield a, b
    a.close()
    b.close()
    shutil.rmtree(work, ignore_errors=True)


def user_volume(node, user):
    """A user volume as berthd makes it from a `{user}` template, filled with a varied tree."""
    name = f"berth-e2e-move-{secrets.token_hex(4)}"
    labels = {"berth.managed": "true", "berth.node": node.node_id, "berth.user": user, "berth.volume-scope": "user"}
    docker("volume", "create", *[f"--label={k}={v}" for k, v in labels.items()], name, host=node.docker_host)
    root = docker("volume", "inspect", "-f", "{{.Mountpoint}}", name, host=node.docker_host)
    os.makedirs(f"{root}/work/a/b")
    with open(f"{root}/work/a/b/notes.txt", "w") as f:
        f.write("deep\n")
    with open(f"{root}/work/random.bin", "wb") as f:
        f.write(os.urandom(20 * 1024 * 1024))
    os.symlink("a/b/notes.txt", f"{root}/work/link")
    os.chmod(f"{root}/work/a", 0o750)
    os.chown(f"{root}/work/a/b/notes.txt", 1000, 100)
    os.utime(f"{root}/work/a/b", (1_500_000_000, 1_500_000_000))
    return name, root


def tree(root):
    """A digest of every path under `root` with its kind, mode, owner, mtime and contents."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for n in sorted(dirnames + filenames):
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            h.update(f"{os.path.relpath(p, root)} {st.st_mode:o} {st.st_uid} {st.st_gid} {int(st.st_mtime)}".encode())
            if os.path.islink(p):
                h.update(os.readlink(p).encode())
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()


def move(a, b, user, *extra):
    r = subprocess.run(
        [sys.executable, "-m", "berthspawner.move", "--from", a.address, "--to", b.address, "--user", user, *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return r.returncode, r.stderr


def test_a_users_volume_moves_between_two_engines_and_is_refused_while_mounted(nodes):
    a, b = nodes
    user = f"e2e-mover-{secrets.token_hex(3)}"
    name, root = user_volume(a, user)
    before = tree(root)

    running = docker("run", "-d", "--rm", "--network", "none", "-v", f"{name}:/data", TINY)
    assert running, f"{TINY} missing: run tests/images/build-tiny.sh"
    assert docker("inspect", "-f", "{{.State.Running}}", running) == "true"
    try:
        code, log = move(a, b, user)
        assert code == 1, log
        assert "VOLUME_IN_USE" in log, log
        assert not docker("volume", "ls", "-q", "--filter", f"name={name}", host=b.docker_host)
    finally:
        docker("rm", "-f", running)

    started = time.monotonic()
    code, log = move(a, b, user)
    assert code == 0, log
    print(f"moved 20 MB in {time.monotonic() - started:.1f}s:\n{log}")
    assert re.search(rf"{name}: 20\.\d MiB verified on {b.node_id}", log), log
    moved = docker("volume", "inspect", "-f", "{{.Mountpoint}}", name, host=b.docker_host)
    assert tree(moved) == before, "the same tree on the target"
    labels = docker("volume", "inspect", "-f", "{{json .Labels}}", name, host=b.docker_host)
    assert f'"berth.node":"{b.node_id}"' in labels and f'"berth.user":"{user}"' in labels, labels
    assert not docker("volume", "ls", "-q", "--filter", f"name={name}"), "the source was removed"

    code, log = move(a, b, user)
    assert code == 0 and "nothing to move" in log, log
    docker("volume", "rm", name, host=b.docker_host)
