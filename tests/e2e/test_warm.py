"""Warm start through the real hub, proxy, browser and single-user image: a node keeps servers
booted ahead ([[warm.pools]]); a user who clicks Start gets one, with the files of an earlier
cold start; and another user's warm server, searched from the inside, shows nothing of the
first user's token or files.

Screenshots and timings land in target/e2e-screenshots/warm-*.
"""

import os
import re
import secrets
import shutil
import subprocess

from conftest import IMAGE, REPO, Berthd, Hub, docker, wait_for
from test_browser import browser, element, hub_spawn_seconds, notebook_state, run_cell, start_to_lab, type_cell

__all__ = ["browser"]  # the fixture, used by name

SHOTS = os.path.join(REPO, "target", "e2e-screenshots")
POOL = f"""
[[warm.pools]]
image = "{IMAGE}"
size = 2
memory_bytes = "256M"
"""
HOME = "/home/jovyan/work"
EXTRA = f"""
c.Spawner.default_url = "/lab"
c.JupyterHub.redirect_to_server = False
c.BerthSpawner.allowed_images = ["{IMAGE}"]
c.BerthSpawner.volumes = {{"warmhome-{{username}}": "{HOME}"}}
"""


def container_of(user):
    """The user's container id, by its name (a claimed warm container carries the pool's
    labels, not the user's: berthd knows whose it is)."""
    out = docker("ps", "-q", "--no-trunc", "--filter", f"name=^/berth-{user}$")
    return out.strip()


def pool_label(cid):
    return docker("inspect", "-f", '{{index .Config.Labels "berth.pool"}}', cid).strip()


def warm_ready(node, n):
    """Waits until `n` warm containers of the node are ready (its log says so)."""

    def count():
        with open(node.log.name) as f:
            made = len(re.findall(r"warm container (?:ready|of an earlier run waits again)", f.read()))
        names = docker("ps", "--format", "{{.Names}}", "--filter", f"label=berth.node={node.name}")
        waiting = [n for n in names.split() if n.startswith("berthwarm-")]
        return made >= n and len(waiting) >= n

    wait_for(f"{n} warm containers", count, 240, 0.5)


# Run inside bob's server: reads alice's token and name from stdin, and reports every place it
# finds either (files, /proc environments and command lines, mounts); its own process excluded.
SEARCH = r"""
import os, sys
token, name = sys.stdin.read().split()
me = str(os.getpid())
hits, files = [], 0
for root, dirs, names in os.walk("/"):
    if root == "/":
        dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev")]
    for n in names:
        path = os.path.join(root, n)
        if n == "notes.txt":
            hits.append("FOUND file " + path)
        try:
            with open(path, "rb") as f:
                files += 1
                if token.encode() in f.read(1 << 22):
                    hits.append("FOUND token in " + path)
        except OSError:
            pass
for pid in os.listdir("/proc"):
    if not pid.isdigit() or pid == me:
        continue
    for part in ("environ", "cmdline"):
        try:
            with open(f"/proc/{pid}/{part}", "rb") as f:
                if token.encode() in f.read():
                    hits.append(f"FOUND token in /proc/{pid}/{part}")
        except OSError:
            pass
with open("/proc/self/mountinfo") as f:
    if name in f.read():
        hits.append("FOUND a mount naming " + name)
print("\n".join(hits))
print(f"searched {files} files")
"""


def progress_messages(node, user):
    """The messages of the user's newest spawn, as berthd replays them (its Progress stream)."""
    import grpc
    from berthspawner._proto.berth.v1 import spawner_pb2 as pb
    from berthspawner._proto.berth.v1 import spawner_pb2_grpc as pb_grpc

    with grpc.insecure_channel(node.address) as ch:
        req = pb.ProgressRequest(key=pb.ServerKey(user=user))
        return [ev.message for ev in pb_grpc.SpawnerStub(ch).Progress(req, timeout=30) if ev.message]


def shots_dir():
    os.makedirs(SHOTS, exist_ok=True)
    return SHOTS


def test_warm_start_in_the_browser_with_the_files_of_a_cold_start_and_nothing_of_another_user(workdir, browser):
    base = os.path.join(workdir, f"warm-{secrets.token_hex(2)}")
    alice, bob = f"wa{secrets.token_hex(3)}", f"wb{secrets.token_hex(3)}"  # container names: berth-<user>
    with Berthd("w", base) as node, Hub(base, [node], extra=EXTRA) as hub:
        shots = shots_dir()
        # A cold start (no pool yet) writes a file into alice's volume, then stops.
        hub.spawn(alice)
        cold = container_of(alice)
        assert cold and not pool_label(cold), "the first start is cold"
        r = subprocess.run(
            ["docker", "exec", "-u", "0", cold, "sh", "-c", f"echo written-by-the-cold-start > {HOME}/notes.txt"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert r.returncode == 0, f"the cold server writes into its volume: {r.stderr}"
        hub.api("DELETE", f"/users/{alice}/server")
        wait_for("alice stopped", lambda: not hub.server(alice), 60)

        node.restart_with_config(POOL)
        warm_ready(node, 2)
        before = {
            n: docker("inspect", "-f", "{{json .Config.Env}}|{{json .Mounts}}", n)
            for n in docker("ps", "-q", "--no-trunc", "--filter", f"label=berth.pool={IMAGE}").split()
        }
        assert len(before) >= 2
        for cid, seen in before.items():
            assert "JUPYTERHUB_API_TOKEN" not in seen and "warmhome" not in seen, f"a waiting {cid} holds nothing"

        # alice: login, Start, JupyterLab from a warm container.
        seen, event_log, lab_s = start_to_lab(browser, hub.url, alice)
        messages = [m for _, m, _, _ in seen if m] + event_log
        browser.save_screenshot(os.path.join(shots, "warm-lab-launcher.png"))
        warm = container_of(alice)
        assert warm in before, f"alice's server {warm} is one of the warm containers {list(before)}"
        assert pool_label(warm) == IMAGE
        # The spawn may end before the page has drawn a message (then the browser goes straight
        # to the server); berthd keeps the spawn's phases, which the page would have shown.
        phases = progress_messages(node, alice)
        print("spawn page:", messages, "berthd's phases:", phases)
        assert any("ready and waiting" in m for m in messages + phases), f"the page says the server waited: {phases}"

        seen = docker("exec", warm, "cat", f"{HOME}/notes.txt")
        assert seen == "written-by-the-cold-start", f"the warm server sees the cold start's file: {seen!r}"
        element(browser, '.jp-LauncherCard[data-category="Notebook"]').click()
        wait_for("the kernel to be idle", lambda: notebook_state(browser)["kernel"] == "idle", 180, 0.2)
        type_cell(browser, f"print(open('{HOME}/notes.txt').read().strip())")
        run_cell(browser)
        try:
            wait_for(
                "the cell shows the cold start's file",
                lambda: notebook_state(browser)["output"] == "written-by-the-cold-start",
                120,
                0.2,
            )
        except AssertionError as e:
            raise AssertionError(f"{e}; the notebook: {notebook_state(browser)}") from None
        browser.save_screenshot(os.path.join(shots, "warm-cell.png"))
        hub_s = hub_spawn_seconds(hub, alice) or float("nan")
        timings = f"warm: click -> JupyterLab launcher rendered: {lab_s:.2f} s; hub's own spawn time: {hub_s:.2f} s\n"
        with open(os.path.join(shots, "warm-timings.txt"), "w") as f:
            f.write(timings)
        print(timings)

        # alice's token, as her own code reads it.
        type_cell(browser, "import os; print(os.environ['JUPYTERHUB_API_TOKEN'])")
        run_cell(browser)
        wait_for(
            "the token printed",
            lambda: re.fullmatch(r"[0-9a-f]{16,}", (notebook_state(browser)["output"] or "").strip()),
            60,
            0.2,
        )
        token = notebook_state(browser)["output"].strip()
        assert re.fullmatch(r"[0-9a-f]{16,}", token), f"a hub token: {token!r}"
        assert token not in docker("inspect", warm), "the token is in no container config"

        # bob: another warm server, which searches for alice's token and files.
        hub.spawn(bob)
        bobs = container_of(bob)
        assert bobs in before, "bob's server is warm too"
        # The search runs as bob's user with the token on its stdin (in no command line): every
        # file it can read, every process's environment and command line, its mounts.
        r = subprocess.run(
            ["docker", "exec", "-i", "-u", "jovyan", bobs, "python3", "-c", SEARCH],
            input=token + "\n" + alice,
            capture_output=True,
            text=True,
            timeout=300,
        )
        print("bob's search:\n" + r.stdout + r.stderr[-2000:])
        assert r.returncode == 0 and "searched" in r.stdout, r.stderr[-2000:]
        assert "FOUND" not in r.stdout, f"bob found alice's things: {r.stdout}"
        assert docker("exec", bobs, "sh", "-c", f"ls {HOME}").strip() == "", "bob's own volume is empty"
        shutil.copy(node.log.name, os.path.join(shots, "warm-berthd.log"))
