"""berthspawner end to end: a real JupyterHub drives real berthd nodes and real containers."""

import os
import time

from conftest import Berthd, Hub, docker, wait_for


def all_containers(nodes, user):
    return [c for n in nodes for c in n.containers(user)]


def test_login_goes_through_oauth_into_the_users_own_server(cluster):
    hub, nodes = cluster
    hub.spawn("alice")
    ids = all_containers(nodes, "alice")
    assert len(ids) == 1, "the server runs in one berthd container"
    s = hub.login("alice")
    r = hub.get_as(s, "/user/alice/api/status")
    assert r.status_code == 200, r.text[:300]
    assert "started" in r.json()
    visited = " ".join(h.url for h in r.first_visit.history)
    assert "/hub/api/oauth2/authorize" in visited and "oauth_callback" in visited, visited
    assert r.first_visit.url.startswith(f"{hub.url}/user/alice/"), "landed in alice's own server"
    # Another user's cookie does not open alice's server.
    other = hub.login("mallory")
    r = hub.get_as(other, "/user/alice/api/status")
    assert r.status_code != 200, "mallory's cookie must not open alice's server"


def test_stopping_through_the_hub_removes_the_container(cluster):
    hub, nodes = cluster
    hub.spawn("bob")
    assert len(all_containers(nodes, "bob")) == 1
    r = hub.api("DELETE", "/users/bob/server")
    assert r.status_code in (202, 204)
    wait_for("bob's server to stop", lambda: hub.server("bob") is None, 30)
    wait_for("bob's container to be removed", lambda: not all_containers(nodes, "bob"), 30)


def test_stopping_with_remove_false_keeps_the_stopped_container_and_starts_again(cluster):
    hub, nodes = cluster
    hub.spawn("keeper")
    (cid,) = all_containers(nodes, "keeper")
    r = hub.api("DELETE", "/users/keeper/server")
    assert r.status_code in (202, 204)
    wait_for("keeper's server to stop", lambda: hub.server("keeper") is None, 30)
    assert all_containers(nodes, "keeper") == [cid], "remove=False keeps the container"
    assert docker("inspect", "-f", "{{.State.Running}}", cid) == "false", "and it is stopped"
    hub.spawn("keeper")
    ids = all_containers(nodes, "keeper")
    running = [c for c in ids if docker("inspect", "-f", "{{.State.Running}}", c) == "true"]
    assert len(running) == 1, f"one running server after the restart: {ids}"
    s = hub.login("keeper")
    assert hub.get_as(s, "/user/keeper/api/status").status_code == 200


def test_the_progress_bar_shows_the_nodes_phases(cluster):
    import json
    import threading

    hub, nodes = cluster
    hub.api("POST", "/users", json={"usernames": ["slowpoke"]})
    posted = threading.Thread(target=hub.api, args=("POST", "/users/slowpoke/server"), daemon=True)
    posted.start()

    def pending():
        return (hub.server("slowpoke") or {}).get("pending") == "spawn"

    wait_for("the spawn to be pending", pending, 10, 0.05)
    events = []
    with hub.api_stream("/users/slowpoke/server/progress") as r:
        assert r.status_code == 200, r.text
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
                if events[-1].get("ready") or events[-1].get("failed"):
                    break
    posted.join(30)
    messages = [e.get("message", "") for e in events]
    assert events[-1].get("ready"), messages
    assert "Starting your server." in messages, messages
    for m in messages:
        assert "127.0.0.1" not in m and "http://" not in m, f"an internal address reaches the user: {m}"
    assert [e["progress"] for e in events if "progress" in e] == sorted(
        e["progress"] for e in events if "progress" in e
    ), "the bar only moves forward"


def test_a_container_killed_outside_is_seen_by_the_hub_within_5_seconds(cluster):
    hub, nodes = cluster
    hub.spawn("carl")
    (cid,) = all_containers(nodes, "carl")
    t0 = time.monotonic()
    docker("kill", cid)
    wait_for("the hub to see carl's server stopped", lambda: hub.server("carl") is None, 5, 0.1)
    print(f"hub saw the death after {time.monotonic() - t0:.2f}s")
    assert not all_containers(nodes, "carl"), "remove=True: the dead container is removed too"


def test_a_restarted_hub_finds_its_running_servers(cluster):
    hub, nodes = cluster
    hub.spawn("dora")
    before = all_containers(nodes, "dora")
    session = hub.login("dora")
    assert hub.get_as(session, "/user/dora/api/status").status_code == 200
    hub.kill()
    hub.start()
    wait_for("dora still ready after the restart", lambda: (hub.server("dora") or {}).get("ready"), 30)
    r = hub.get_as(session, "/user/dora/api/status")
    assert r.status_code == 200, r.text[:300]
    assert all_containers(nodes, "dora") == before, "the same container, no second one"


def test_a_node_that_stops_answering_does_not_end_its_servers(workdir):
    base = os.path.join(workdir, "outage")
    # The hub polls every second here, so that many missed polls happen in a few seconds.
    with Berthd("r", base) as node, Hub(base, [node], extra="c.Spawner.poll_interval = 1") as hub:
        hub.spawn("rita")
        (cid,) = node.containers("rita")
        session = hub.login("rita")
        assert hub.get_as(session, "/user/rita/api/status").status_code == 200
        node.kill_daemon()

        def missed_polls():
            with open(os.path.join(hub.dir, "hub.log")) as f:
                return f.read().count("unreachable for") >= 3

        wait_for("three hub polls that found the node unreachable", missed_polls, 30)
        assert (hub.server("rita") or {}).get("ready"), "the hub still counts rita's server as running"
        node.restart()
        r = hub.get_as(session, "/user/rita/api/status")
        assert r.status_code == 200, r.text[:300]
        assert node.containers("rita") == [cid], "the same container, never stopped"


def test_a_server_the_hub_lost_track_of_is_found_and_replaced(cluster):
    import sqlite3

    hub, nodes = cluster
    hub.spawn("olga")
    (orphan,) = all_containers(nodes, "olga")
    # The hub dies and comes back without the server's state (as after a crash mid-start).
    hub.kill()
    db = sqlite3.connect(os.path.join(hub.dir, "jupyterhub.sqlite"))
    db.execute("UPDATE spawners SET state = '{}' WHERE user_id = (SELECT id FROM users WHERE name = 'olga')")
    db.commit()
    db.close()
    hub.start()
    wait_for("the hub to drop the server it cannot see", lambda: hub.server("olga") is None, 60)
    hub.spawn("olga")
    ids = all_containers(nodes, "olga")
    assert len(ids) == 1 and ids != [orphan], "the orphan was replaced, not doubled"
    s = hub.login("olga")
    assert hub.get_as(s, "/user/olga/api/status").status_code == 200


def test_named_servers_run_side_by_side(cluster):
    hub, nodes = cluster
    hub.spawn("erin", "one")
    hub.spawn("erin", "two")
    assert len(all_containers(nodes, "erin")) == 2
    s = hub.login("erin")
    for name in ("one", "two"):
        r = hub.get_as(s, f"/user/erin/{name}/api/status")
        assert r.status_code == 200, (name, r.text[:300])


def test_placement_spreads_skips_draining_and_full_nodes_and_says_503_when_no_room(workdir):
    base = os.path.join(workdir, "placement")
    # The tiny image runs its own command (an HTTP server), not jupyterhub-singleuser.
    tiny_cmd = 'c.BerthSpawner.cmd = ["httpd", "-f", "-p", "8888", "-h", "/www"]'
    with (
        Berthd("a", base, "[capacity]\nmax_servers = 4\n") as a,
        Berthd("b", base, "[capacity]\nmax_servers = 4\n") as b,
        Hub(base, [a, b], extra=tiny_cmd) as hub,
    ):
        tiny = {"image": "berth-test/tiny:latest"}
        for i in range(6):
            hub.spawn(f"u{i}", options=tiny)
        on_a, on_b = len(a.containers()), len(b.containers())
        assert (on_a, on_b) == (3, 3), f"spread over both nodes: {on_a}/{on_b}"

        b.admin("Drain", "maintenance")
        hub.spawn("u6", options=tiny)
        assert len(b.containers()) == 3, "a draining node receives no new server"
        assert len(a.containers()) == 4

        # a is full (4 of 4) and b drains: no room anywhere.
        hub.api("POST", "/users", json={"usernames": ["u7"]})
        r = hub.api("POST", "/users/u7/server", json=tiny)
        assert r.status_code == 503, (r.status_code, r.text)
        # The user reads one sentence; the operator finds each node's reason in the hub's log.
        msg = r.json()["message"]
        assert msg.startswith("There is no room for your server right now"), msg
        assert a.name not in msg and "draining" not in msg, msg
        log = open(hub.log.name).read()
        assert "No node has room" in log, log[-3000:]
        assert f"{a.name}: full (4 of 4 servers)" in log and f"{b.name}: draining" in log, log[-3000:]
        assert hub.server("u7") is None, "no server for u7"
        assert len(a.containers()) == 4 and len(b.containers()) == 3

        b.admin("Undrain")
        hub.spawn("u8", options=tiny)
        assert len(b.containers()) == 4, "the full node was skipped for the one with room"
