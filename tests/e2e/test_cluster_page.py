"""The hub's cluster page (berthspawner.cluster) in a real browser: headless Chromium through
the real proxy to the real hub, its OAuth and the page's service, which calls two real nodes
(each its own network namespace, Docker engine and berthd, over mutual TLS with the hub's
certificate and token) and drains through their Admin sockets.

An admin logs in and opens /services/berth/: both nodes, the user's server on the node it runs
on (and not on the other); drain on one node shows it draining and berthd's Capacity says so;
undrain; the user's volume moved from the page to the other node (the page shows the move
done, both engines agree); that node's berthd killed shows it down within seconds, and up again
once it is back. A user who is not an admin gets 403, unless a role gives them the page's
scopes. Screenshots: target/e2e-screenshots/cluster-*.png.
"""

import glob
import os
import secrets
import shutil
import time

import grpc
import pytest
import requests
from conftest import REPO, TINY, Hub, docker, free_port, wait_for
from netnode import HUB_IP
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select
from test_browser import browser  # noqa: F401 - the fixture
from test_browser import element
from test_two_engines import spawn_on

from berthspawner._proto.berth.v1 import spawner_pb2 as pb
from berthspawner._proto.berth.v1 import spawner_pb2_grpc as pb_grpc

SHOTS = os.path.join(REPO, "target", "e2e-screenshots")
ADMIN = "boss"
# Not an admin, given the page's two scopes by a role, as berthspawner/README.md shows.
OPERATOR = "carol"
# Given access to the service but not admin-ui: the page itself refuses them.
VIEWER = "dave"
# The page must show a node down within this long of its berthd dying (a round is 2 s, a
# call's deadline 2.5 s; the browser asks every 2 s).
DOWN_WITHIN = 10


def node_capacity(node):
    """The node's own Capacity answer, over its Admin socket (not through the page)."""
    opts = [("grpc.default_authority", "localhost")]
    with grpc.insecure_channel(f"unix://{node.admin_socket}", options=opts) as ch:
        return pb_grpc.SpawnerStub(ch).Capacity(pb.CapacityRequest(), timeout=10)


@pytest.fixture(scope="module")
def page_hub(workdir, net_nodes):
    """A hub with both real nodes and the cluster page, registered as the README says, with
    the nodes' Admin sockets (files reachable from the hub's machine)."""
    base = os.path.join(workdir, f"cluster-page-{secrets.token_hex(2)}")
    sockets = {n.berthd.name: n.admin_socket for n in net_nodes}
    extra = f"""
c.BerthSpawner.image = "{TINY}"
c.BerthSpawner.cmd = ["httpd", "-f", "-p", "8888", "-h", "/www"]
c.BerthSpawner.volumes = {{"berth-e2e-cp-{{user}}": "/home/data"}}
c.Authenticator.admin_users = {{"{ADMIN}"}}
from berthspawner.cluster import cluster_page
cluster_page(c, admin_sockets={sockets!r}, url="http://127.0.0.1:{free_port()}")
c.JupyterHub.load_roles.append({{"name": "berth-operators", "users": ["{OPERATOR}"],
                                "scopes": ["access:services!service=berth", "admin-ui"]}})
c.JupyterHub.load_roles.append({{"name": "berth-viewers", "users": ["{VIEWER}"],
                                "scopes": ["access:services!service=berth"]}})
"""
    with Hub(base, [n.berthd for n in net_nodes], hub_ip=HUB_IP, extra=extra) as hub:
        yield hub


class Shots:
    def __init__(self, driver):
        os.makedirs(SHOTS, exist_ok=True)
        for old in glob.glob(os.path.join(SHOTS, "cluster-*")):
            os.remove(old)
        self.driver, self.n = driver, 0

    def take(self, name):
        self.n += 1
        self.driver.save_screenshot(os.path.join(SHOTS, f"cluster-{self.n:02d}-{name}.png"))


SECTION_JS = """
const s = document.querySelector(arguments[0]);
const rows = (css) => Array.from(s.querySelectorAll(css), r => Array.from(r.cells, c => c.innerText));
return {servers: rows('tr.server'), images: rows('tr.image'),
        bars: Array.from(s.querySelectorAll('.bar'), b => b.dataset.bar)};
"""
MOVES_JS = """
return Array.from(document.querySelectorAll('#moves tr.move-row'))
  .filter(r => r.dataset.user === arguments[0])
  .map(r => [r.dataset.state, r.cells[5].innerText]);
"""


def volumes_of(node, user):
    return docker("volume", "ls", "-q", "--filter", f"label=berth.user={user}", host=node.docker_host).split()


def section(driver, node):
    return f'section.node[data-node="{node.berthd.name}"]'


def attr(driver, css, name):
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].get_attribute(name) if found else None


def text_of(driver, css, timeout=10):
    """The first match's text, read in one script (the page redraws every 2 s)."""
    js = "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;"
    return wait_for(f"{css} on the page", lambda: driver.execute_script(js, css), timeout, 0.1)


def act(driver, css, action, timeout=10):
    """`action(element)` on the first match, again if the page redrew it in between."""

    def go():
        try:
            action(element(driver, css, timeout))
            return True
        except StaleElementReferenceException:
            return False

    wait_for(f"{css} to take the action", go, timeout, 0.1)


def login(driver, hub, user):
    driver.get(f"{hub.url}/hub/login")
    element(driver, "#username_input").send_keys(user)
    element(driver, "#password_input").send_keys("any")
    element(driver, "#login_submit").click()
    wait_for(f"{user} to be logged in", lambda: "/hub/login" not in driver.current_url, 30, 0.1)


def test_cluster_page_nodes_servers_drain_down_and_admins_only(page_hub, net_nodes, browser):  # noqa: F811
    hub, (n1, n2) = page_hub, net_nodes
    user = f"cp-{secrets.token_hex(2)}"
    spawn_on(hub, net_nodes, n2, user)
    assert n2.berthd.containers(user) and not n1.berthd.containers(user)
    shots = Shots(browser)
    try:
        # The admin: through the hub's login and the service's OAuth to the page.
        login(browser, hub, ADMIN)
        browser.get(f"{hub.url}/services/berth/")
        for n in net_nodes:
            element(browser, section(browser, n) + '[data-state="up"]', timeout=30)
        row = section(browser, n2) + f' tr.server[data-user="{user}"]'
        element(browser, row + '[data-state="RUNNING"]', timeout=15)
        assert not browser.find_elements(By.CSS_SELECTOR, section(browser, n1) + f' tr.server[data-user="{user}"]')
        # One read of each section (the page redraws every 2 s).
        far, near = (browser.execute_script(SECTION_JS, section(browser, n)) for n in (n2, n1))
        (cells,) = [r for r in far["servers"] if r[0] == user]
        # berthd names images in full (docker.io/...).
        assert cells[3].endswith(TINY) and cells[4], f"image and age of the server: {cells}"
        assert {"Memory committed", "CPU committed", "Servers"} <= set(far["bars"]), far["bars"]
        assert any(i.endswith(TINY) for i, _, _ in near["images"]), f"n1's images: {near['images']}"
        # Each image with its size (the tiny one: about 2 MiB) and the servers running it
        # (other tests' servers may run there too).
        assert all(size.endswith("MiB") for i, size, _ in far["images"] if i.endswith(TINY)), far["images"]
        runs_tiny = sum(1 for r in far["servers"] if r[3].endswith(TINY) and r[2] == "RUNNING")
        assert [n for i, _, n in far["images"] if i.endswith(TINY)] == [str(runs_tiny)], far
        ready = text_of(browser, section(browser, n1) + ' .cond[data-type="Ready"]')
        assert ready.startswith("Ready=True"), ready
        shots.take("nodes")

        # Drain n1 with a reason: the page shows it, and berthd says so itself.
        act(browser, section(browser, n1) + " input.reason", lambda e: e.send_keys("e2e: drained from the page"))
        act(browser, section(browser, n1) + " button.drain", lambda e: e.click())
        element(browser, section(browser, n1) + '[data-draining="true"]', timeout=10)
        cap = node_capacity(n1)
        assert cap.draining, "berthd does not report the drain the page made"
        assert any(c.type == "Draining" and c.status == "True" for c in cap.conditions)
        reason = text_of(browser, section(browser, n1) + " .drain-reason")
        assert "e2e: drained from the page" in reason, reason
        assert not node_capacity(n2).draining
        shots.take("drained")
        act(browser, section(browser, n1) + " button.undrain", lambda e: e.click())
        element(browser, section(browser, n1) + '[data-draining="false"]', timeout=10)
        assert not node_capacity(n1).draining
        shots.take("undrained")

        # Move the user's volume from n2 to n1 from the page, once the server is stopped.
        (cid,) = n2.berthd.containers(user)
        n2.engine.docker("exec", cid, "sh", "-c", "dd if=/dev/urandom of=/home/data/d.bin bs=1M count=64 2>/dev/null")
        hub.api("DELETE", f"/users/{user}/server")
        wait_for(f"{user}'s server to stop", lambda: not n2.berthd.containers(user), 30)
        (volume,) = volumes_of(n2, user)
        vrow = f' tr.volume[data-volume="{volume}"]'
        element(browser, section(browser, n2) + vrow + " button.move", timeout=15)
        pick = n1.berthd.name
        act(browser, section(browser, n2) + vrow + " select.move-to", lambda e: Select(e).select_by_value(pick))
        act(browser, section(browser, n2) + vrow + " button.move", lambda e: e.click())
        seen = set()

        def moved():
            # One read: the table is redrawn every 2 s.
            rows = browser.execute_script(MOVES_JS, user)
            seen.update(map(tuple, rows))
            return next((state for state, _ in rows if state != "running"), None)

        assert wait_for("the move to end", moved, 60, 0.1) == "done", seen
        print(f"cluster page: the move as the page showed it: {sorted(seen)}")
        assert any(state == "running" for state, _ in seen), f"the page never showed the move under way: {seen}"
        assert any(state == "done" and "1 of 1 volume(s) moved" in text for state, text in seen), seen
        assert volumes_of(n1, user) == [volume] and not volumes_of(n2, user), "the volume is on n1 only"
        element(browser, section(browser, n1) + vrow, timeout=20)
        wait_for(
            "n2 to list it no more", lambda: not browser.find_elements(By.CSS_SELECTOR, section(browser, n2) + vrow)
        )
        shots.take("moved")

        # n1's berthd dies: shown down within seconds, its error said; back up once restarted.
        t0 = time.monotonic()
        n1.berthd.kill_daemon()
        try:
            element(browser, section(browser, n1) + '[data-state="down"]', timeout=DOWN_WITHIN + 5)
            took = time.monotonic() - t0
            print(f"cluster page: n1 shown down {took:.1f} s after its berthd was killed")
            assert took < DOWN_WITHIN, f"shown down only after {took:.1f} s"
            assert attr(browser, section(browser, n2), "data-state") == "up"
            error = text_of(browser, section(browser, n1) + " p.error")
            assert "UNAVAILABLE" in error, error
            shots.take("node-down")
        finally:
            n1.berthd.restart()
        element(browser, section(browser, n1) + '[data-state="up"]', timeout=30)
        shots.take("node-back")

        # A user who is not an admin: 403, from the hub's authorisation or the page itself.
        s = hub.login("pleb")
        r = s.get(f"{hub.url}/services/berth/", timeout=30)
        assert r.status_code == 403, (r.status_code, r.url, r.text[:300])
        r = s.get(f"{hub.url}/services/berth/api/state", timeout=30)
        assert r.status_code == 403, (r.status_code, r.text[:300])
        assert requests.get(f"{hub.url}/services/berth/api/state", timeout=30).status_code == 403
        # Let through the hub's OAuth (access to the service) without admin-ui: the page says 403.
        s = hub.login(VIEWER)
        r = s.get(f"{hub.url}/services/berth/", timeout=30)
        assert r.status_code == 403 and "/services/berth/" in r.url, (r.status_code, r.url, r.text[:300])
        assert s.get(f"{hub.url}/services/berth/api/state", timeout=30).status_code == 403
        # Not an admin, but given the page's scopes by a role: let in, the nodes' state as JSON.
        s = hub.login(OPERATOR)
        r = s.get(f"{hub.url}/services/berth/", timeout=30)
        assert r.status_code == 200 and "the hub's nodes" in r.text, (r.status_code, r.text[:300])
        r = s.get(f"{hub.url}/services/berth/api/state", timeout=30)
        assert r.status_code == 200, (r.status_code, r.text[:300])
        assert {n["name"]: n["state"] for n in r.json()["nodes"]} == {n.berthd.name: "up" for n in net_nodes}
        browser.get(f"{hub.url}/hub/logout")
        login(browser, hub, "pleb")
        browser.get(f"{hub.url}/services/berth/")
        wait_for("the 403 page", lambda: "403" in browser.find_element(By.TAG_NAME, "body").text, 30, 0.2)
        assert not browser.find_elements(By.CSS_SELECTOR, "section.node")
        shots.take("not-admin-403")
    except BaseException:
        shots.take("failed")
        for log in (os.path.join(hub.dir, "hub.log"), n1.berthd.log.name, n2.berthd.log.name):
            shutil.copy(log, os.path.join(SHOTS, "cluster-" + os.path.basename(os.path.dirname(log)) + ".log"))
        raise
    finally:
        hub.api("DELETE", f"/users/{user}/server")
        for n in net_nodes:
            for v in volumes_of(n, user):
                docker("volume", "rm", "-f", v, host=n.docker_host)
