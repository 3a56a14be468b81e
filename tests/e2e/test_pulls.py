"""Image pulls through a real JupyterHub: the spawn page's progress bar shows the pull's bytes,
and a failed pull is reported as one, not as a lack of room. The image is pulled from a real
registry on 127.0.0.1 (Debian's docker-registry) through a slow proxy, so the pull lasts a few
seconds on loopback."""

import ipaddress
import json
import os
import threading
import time

from conftest import IMAGE, Berthd, Hub, docker, wait_for
from registry import Registry, SlowProxy, push_image


def hub_ip():
    """The bridge gateway containers reach the hub at: Docker's IPAM answer, or (an engine that
    leaves the gateway out of it) the first address of the bridge's subnet."""
    ip = docker("network", "inspect", "bridge", "-f", "{{(index .IPAM.Config 0).Gateway}}")
    if ip:
        return ip
    subnet = docker("network", "inspect", "bridge", "-f", "{{(index .IPAM.Config 0).Subnet}}")
    return str(next(ipaddress.ip_network(subnet).hosts()))


def spawn_and_follow(hub, user, options=None):
    """Asks the hub to spawn `user`'s server and returns the progress events until it ends."""
    hub.api("POST", "/users", json={"usernames": [user]})
    posted = threading.Thread(
        target=hub.api, args=("POST", f"/users/{user}/server"), kwargs={"json": options or {}}, daemon=True
    )
    posted.start()
    wait_for("the spawn to be pending", lambda: (hub.server(user) or {}).get("pending") == "spawn", 20, 0.05)
    events = []
    # As the spawn page's EventSource does, a stream the proxy or a busy hub answers with a 5xx
    # is asked again (events already seen are sent again: the node replays them).
    for _ in range(20):
        with hub.api_stream(f"/users/{user}/server/progress") as r:
            if r.status_code >= 500:
                time.sleep(0.1)
                continue
            assert r.status_code == 200, (r.status_code, r.text[-300:])
            for line in r.iter_lines(decode_unicode=True):
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
                    if events[-1].get("ready") or events[-1].get("failed"):
                        break
            break
    posted.join(30)
    return events


def test_the_progress_bar_shows_the_pull_and_a_failed_pull_is_not_a_lack_of_room(workdir):
    base = os.path.join(workdir, "pulls")
    with Registry() as reg:
        _, repo, sizes = push_image(reg, IMAGE, layers=3, mib=3)
        proxy = SlowProxy(reg.port, 4_000_000)
        image = f"127.0.0.1:{proxy.port}/{repo}:1"
        missing = f"127.0.0.1:{proxy.port}/{repo}:no-such-tag"
        extra = f'''
c.BerthSpawner.image = "{image}"
c.BerthSpawner.pull_policy = "always"
c.BerthSpawner.allowed_images = ["{image}", "{missing}"]
'''
        try:
            with Berthd("puller", base) as node, Hub(base, [node], extra=extra, hub_ip=hub_ip()) as hub:
                events = spawn_and_follow(hub, "pia")
                assert events[-1].get("ready"), events
                pulls = [e for e in events if (e.get("raw_event") or {}).get("phase") == "pulling"]
                done = [e["raw_event"]["bytes_done"] for e in pulls]
                assert done == sorted(done), done
                assert done[-1] == sum(sizes), (done, sizes)
                assert len({b for b in done if 0 < b < sum(sizes)}) >= 2, f"the bytes rise in steps: {done}"
                # Words only when new (the first, then one per 5 s); the other events move the bar.
                worded = [e["message"] for e in pulls if "message" in e]
                assert worded and all(m.startswith(f"Pulling {image}") for m in worded), worded
                assert len(worded) < len(pulls) and len(worded) <= 3, worded
                pull_bar = [e["progress"] for e in pulls if "progress" in e]
                assert max(pull_bar) - min(pull_bar) >= 20, f"the pull fills a fair share of the bar: {pull_bar}"
                bar = [e["progress"] for e in events if "progress" in e]
                assert bar == sorted(bar), "the bar only moves forward"
                print("pull messages:", worded)

                t0 = time.monotonic()
                events = spawn_and_follow(hub, "pim", options={"image": missing})
                took = time.monotonic() - t0
                assert events[-1].get("failed"), events
                text = events[-1].get("message", "")
                # One sentence for the user; Docker's words are for the Event log and the logs.
                assert "could not be downloaded" in text and missing not in text, text
                assert "room" not in text, text
                assert any(missing in e.get("message", "") for e in events), "the detail, for admins"
                assert took < 15, took
                assert node.containers("pim") == []
        finally:
            proxy.close()
            docker("rmi", "-f", image)
