"""Activity reported by berthd to a real JupyterHub, and the real idle culler acting on it."""

import contextlib
import datetime
import os
import secrets
import subprocess
import sys
import threading
import time

import requests
from conftest import TINY, Berthd, Hub, bridge_ip, docker, free_port, wait_for
from prometheus_client.parser import text_string_to_metric_families

INTERVAL = 2


def parse(ts):
    return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00"))


class Traffic:
    """Requests to a URL in a loop, in a thread, until stopped."""

    def __init__(self, url):
        self.url, self.stop_flag, self.count = url, threading.Event(), 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop_flag.is_set():
            try:
                requests.get(self.url, timeout=2)
                self.count += 1
            except requests.RequestException:
                pass
            time.sleep(0.05)

    def stop(self):
        self.stop_flag.set()
        self.thread.join()


def direct_url(node, user):
    (cid,) = node.containers(user, all=False)
    port = docker("port", cid, "8888").split(":")[-1]
    return f"http://127.0.0.1:{port}/"


def activity_reports(port):
    """berthd_activity_reports_total by result, from berthd's /metrics."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        s.labels["result"]: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "berthd_activity_reports_total"
    }


def test_activity_culling_and_a_hub_outage(workdir):
    base = os.path.join(workdir, "activity")
    os.makedirs(base, exist_ok=True)
    hub_port, token, metrics_port = free_port(), secrets.token_hex(24), free_port()
    token_file = os.path.join(base, "activity-token")
    # Mode 0600: berthd refuses a token file others can read.
    with open(os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(token)
    with contextlib.ExitStack() as cleanup:
        node = cleanup.enter_context(
            Berthd(
                "act",
                base,
                f'[activity]\nenabled = true\nhub_api_url = "http://{bridge_ip()}:{hub_port}/hub/api"\n'
                f'token_file = "{token_file}"\ninterval_seconds = {INTERVAL}\n'
                "network_bytes_threshold = 2000\ncpu_threshold = 0.5\n"
                f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n',
            )
        )
        # A plain HTTP server (the tiny image) reports no activity of its own.
        # activity_resolution: the hub ignores activity newer by less than this (default 30 s);
        # lowered so a test of a few seconds can see last_activity move.
        extra = 'c.BerthSpawner.cmd = ["httpd", "-f", "-p", "8888", "-h", "/www"]\nc.JupyterHub.activity_resolution = 1'
        hub = cleanup.enter_context(Hub(base, [node], extra=extra, hub_port=hub_port, token=token))
        culler = None
        try:
            for user in ("busy", "idle"):
                hub.spawn(user, options={"image": TINY})
            start = {u: parse(hub.server(u)["last_activity"]) for u in ("busy", "idle")}
            busy = Traffic(f"{hub.url}/user/busy/")
            time.sleep(3 * INTERVAL + 2)
            advanced = parse(hub.server("busy")["last_activity"])
            assert advanced > start["busy"], "busy server's last_activity advanced through berthd"
            assert parse(hub.server("idle")["last_activity"]) == start["idle"], "idle server's did not"
            assert activity_reports(metrics_port)["sent"] >= 1

            # The real idle culler, with a short timeout: culls the idle server, spares the busy one.
            culler = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "jupyterhub_idle_culler",
                    f"--url={hub.url}/hub/api",
                    "--timeout=10",
                    "--cull-every=2",
                ],
                env={**os.environ, "JUPYTERHUB_API_TOKEN": token},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_for("the idle server to be culled", lambda: hub.server("idle") is None, 40)
            wait_for("its container to be stopped", lambda: not node.containers("idle", all=False), 20)
            assert hub.server("busy") is not None and node.containers("busy", all=False), "busy spared"
            culler.terminate()
            culler.wait(10)
            culler = None

            # The hub goes away for 2 minutes while the server stays busy (straight to its port).
            busy.stop()
            direct = Traffic(direct_url(node, "busy"))
            hub.terminate()
            rss = []
            for _ in range(24):
                time.sleep(5)
                rss.append(node.rss_kib())
            assert node.containers("busy", all=False), "berthd kept the server running"
            assert max(rss) - min(rss) < 4096, f"memory stays bounded during the outage: {rss}"
            assert activity_reports(metrics_port)["failed"] >= 1, "the outage's failed sends are counted"
            last_traffic = time.time()
            direct.stop()
            hub.start()
            back = time.monotonic()
            got = wait_for(
                "the newest activity after the hub's return",
                lambda: (
                    (s := hub.server("busy")) and parse(s["last_activity"]).timestamp() >= last_traffic - 2 * INTERVAL
                ),
                3 * INTERVAL + 5,
            )
            assert got
            print(f"newest activity delivered {time.monotonic() - back:.1f}s after the hub returned; RSS {rss}")
        finally:
            if culler:
                culler.kill()
