"""Moving a user's files between two real nodes (two Docker engines in two network namespaces)
with `python -m berthspawner.move`: byte for byte, refused while mounted, safe to interrupt and
retry, and the user's next server starts on the new node with their files."""

import hashlib
import os
import re
import secrets
import subprocess
import sys
import time

from conftest import Hub, docker, wait_for
from netnode import HUB_IP

TINY = "berth-test/tiny:latest"


def creds(node):
    """The move command's flags for a node: mutual TLS and the token, as the hub has them."""
    c = node.berthd.client
    return ["--ca-file", c["ca_file"], "--cert-file", c["cert_file"], "--key-file", c["key_file"],
            "--token-file", c["token_file"]]  # fmt: skip


def move_cmd(a, b, user):
    return [sys.executable, "-m", "berthspawner.move", "--from", a.address, "--to", b.address, "--user", user,
            *creds(a)]  # fmt: skip


def move(a, b, user):
    r = subprocess.run(move_cmd(a, b, user), capture_output=True, text=True, timeout=600)
    return r.returncode, r.stderr


def mountpoint(node, name):
    return docker("volume", "inspect", "-f", "{{.Mountpoint}}", name, host=node.docker_host)


def volumes_of(node, user):
    return docker("volume", "ls", "-q", "--filter", f"label=berth.user={user}", host=node.docker_host).split()


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
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
    return h.hexdigest()


def user_volume(node, user):
    """A user volume labelled as berthd labels its own, filled with a varied tree."""
    name = f"berth-e2e-move-{secrets.token_hex(4)}"
    labels = {"berth.managed": "true", "berth.node": node.berthd.name, "berth.user": user,
              "berth.volume-scope": "user"}  # fmt: skip
    docker("volume", "create", *[f"--label={k}={v}" for k, v in labels.items()], name, host=node.docker_host)
    root = mountpoint(node, name)
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


def test_a_volume_moves_byte_for_byte_and_not_while_a_container_mounts_it(net_nodes):
    a, b = net_nodes
    user = f"mover-{secrets.token_hex(3)}"
    name, root = user_volume(a, user)
    before = tree(root)
    running = a.engine.docker("run", "-d", "--rm", "--network", "none", "-v", f"{name}:/data", TINY)
    try:
        code, log = move(a, b, user)
        assert code == 1 and "VOLUME_IN_USE" in log, log
        assert not volumes_of(b, user)
    finally:
        a.engine.docker("rm", "-f", running)
    code, log = move(a, b, user)
    assert code == 0, log
    assert re.search(rf"{name}: 20\.\d MiB verified on {b.berthd.name}", log), log
    assert tree(mountpoint(b, name)) == before, "the same tree on the target"
    assert not volumes_of(a, user), "the source was removed after the copy was verified"
    code, log = move(a, b, user)
    assert code == 0 and "nothing to move" in log, log
    b.engine.docker("volume", "rm", name)


def test_200_mb_move_survives_a_killed_client_and_the_server_then_starts_on_the_new_node(workdir, net_nodes):
    n1, n2 = net_nodes
    extra = "\n".join([
        'c.BerthSpawner.cmd = ["httpd", "-f", "-p", "8888", "-h", "/www"]',
        'c.BerthSpawner.volumes = {"berth-e2e-home-{user}": "/home/data"}',
        'c.BerthSpawner.volume_affinity = "required"',
    ])  # fmt: skip
    base = os.path.join(workdir, f"move-{secrets.token_hex(2)}")
    user, tiny = "moving", {"image": TINY}
    with Hub(base, [n.berthd for n in net_nodes], hub_ip=HUB_IP, extra=extra) as hub:
        n2.berthd.admin("Drain", "e2e: the user starts on n1")
        try:
            hub.spawn(user, options=tiny)
        finally:
            n2.berthd.admin("Undrain")
        (cid,) = n1.berthd.containers(user)
        n1.engine.docker("exec", cid, "sh", "-c",
                         "dd if=/dev/urandom of=/home/data/data.bin bs=1M count=200 2>/dev/null; "
                         "echo thesis > /home/data/thesis.tex")  # fmt: skip
        hub.api("DELETE", f"/users/{user}/server")
        wait_for(f"{user}'s server to stop", lambda: hub.server(user) is None, 30)
        (name,) = volumes_of(n1, user)
        before = tree(mountpoint(n1, name))

        # Kill the client half-way: the source stays as it was, the target keeps nothing.
        proc = subprocess.Popen(move_cmd(n1, n2, user), stderr=subprocess.PIPE, text=True)
        for line in proc.stderr:
            copied = re.search(r"([\d.]+) MiB copied", line)
            if copied and float(copied.group(1)) >= 20:
                break
        proc.kill()
        proc.wait()
        assert tree(mountpoint(n1, name)) == before, "the source is untouched"
        wait_for("the target to drop the unfinished copy", lambda: not volumes_of(n2, user), 30)

        started = time.monotonic()
        code, log = move(n1, n2, user)
        took = time.monotonic() - started
        assert code == 0, log
        print(f"moved {name} (200 MiB) in {took:.1f}s")
        assert tree(mountpoint(n2, name)) == before, "identical on the new node"
        assert not volumes_of(n1, user)

        # The hub's state still names n1: the spawner finds the files on n2.
        hub.spawn(user, options=tiny)
        (cid,) = n2.berthd.containers(user)
        assert not n1.berthd.containers(user)
        assert n2.engine.docker("exec", cid, "cat", "/home/data/thesis.tex") == "thesis"
        assert n2.engine.docker("exec", cid, "wc", "-c", "/home/data/data.bin").split()[0] == str(200 << 20)
