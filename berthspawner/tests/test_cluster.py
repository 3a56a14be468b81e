"""The cluster page's own logic (berthspawner/cluster): its configuration and registration, the
view of a node's answers (sizes, ages, bars, conditions, CPU now), the poller against fake nodes
over real gRPC (up, then down within one round), drain over a real Unix socket, and volume
moves run by the page. The page in a browser, with a real hub and nodes, is
tests/e2e/test_cluster_page.py."""

import asyncio
import json
import os
import tempfile
import time

import grpc
import pytest
from fakes import GIB, FakeNode, pb, wait_until
from google.protobuf.timestamp_pb2 import Timestamp
from test_move import VolumeNode
from test_spawner import dead_address, run, up
from traitlets.config import Config

from berthspawner._proto.berth.v1 import admin_pb2, admin_pb2_grpc
from berthspawner.cluster import actions, cluster_page, config, service, view
from berthspawner.cluster.poller import NodePoller

State = pb.ServerStatus.State


def token_file(d, text="s3cret-token"):
    path = os.path.join(d, "token")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(text)
    return path


# ---- configuration and registration --------------------------------------------------------


def test_service_entry_runs_the_page_with_the_nodes_files_and_no_secret():
    with tempfile.TemporaryDirectory() as d:
        tok = token_file(d)
        nodes = [{"name": "n1", "address": "10.0.0.11:50051", "token_file": tok}, {"address": "10.0.0.12:50051"}]
        spec = service(nodes, admin_sockets={"n1": "/run/berth/n1.sock"}, url="http://127.0.0.1:9999")
        assert spec["name"] == "berth" and spec["url"] == "http://127.0.0.1:9999"
        assert spec["command"][1:] == ["-m", "berthspawner.cluster"]
        assert spec["oauth_client_allowed_scopes"] == ["admin-ui"] and spec["oauth_no_confirm"] is True
        raw = spec["environment"][config.ENV]
        assert "s3cret-token" not in raw, "the token's contents must stay in its file"
        cfg = config.ServiceConfig.from_env({config.ENV: raw})
        assert [n.name for n in cfg.nodes] == ["n1", "10.0.0.12:50051"]
        assert cfg.nodes[0].token_file == tok and cfg.nodes[0].admin_socket == "/run/berth/n1.sock"
        assert cfg.nodes[1].admin_socket == ""


def test_cluster_page_appends_the_service_for_the_spawners_nodes():
    c = Config()
    c.JupyterHub.services = [{"name": "other", "api_token": "x"}]
    c.BerthSpawner.nodes = [{"name": "a", "address": "a:1"}]
    cluster_page(c)
    names = [s["name"] for s in c.JupyterHub.services]
    assert names == ["other", "berth"]
    assert c.JupyterHub.services[1]["url"] == "http://127.0.0.1:8182", "the README's default"
    env = json.loads(c.JupyterHub.services[1]["environment"][config.ENV])
    assert env["nodes"] == [{"name": "a", "address": "a:1"}]


def test_the_hub_reads_the_page_from_a_config_that_set_no_services():
    from jupyterhub.app import JupyterHub

    c = Config()
    c.BerthSpawner.nodes = [{"name": "a", "address": "a:1"}]
    cluster_page(c)
    (spec,) = JupyterHub(config=c).services
    assert spec["name"] == "berth" and spec["command"][1:] == ["-m", "berthspawner.cluster"]


def test_cluster_page_without_nodes_says_so():
    with pytest.raises(ValueError, match="c.BerthSpawner.nodes"):
        cluster_page(Config())


@pytest.mark.parametrize(
    "raw, why",
    [
        ({"nodes": []}, "no nodes"),
        ({"nodes": [{"name": "a"}]}, "address is missing"),
        ({"nodes": [{"address": "a:1"}], "admin_sockets": {"b": "/x"}}, "'b' is not a node"),
        ({"nodes": [{"address": "a:1"}], "admin_sockets": {"a:1": ""}}, "must be a socket path"),
        ({"nodes": [{"address": "a:1"}], "interval": 0}, "interval"),
        ({"nodes": [{"address": "a:1"}], "colour": "red"}, "unknown key 'colour'"),
        ([], "JSON object"),
    ],
)
def test_a_bad_configuration_names_what_is_wrong(raw, why):
    with pytest.raises(config.ConfigError, match=why):
        config.ServiceConfig.parse(raw)


def test_the_service_without_its_variable_names_it():
    with pytest.raises(config.ConfigError, match=config.ENV):
        config.ServiceConfig.from_env({})


# ---- the view --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, text", [(-1, "?"), (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (4 * GIB, "4.0 GiB"), (3 << 40, "3.0 TiB")]
)
def test_sizes_read_as_berthctl_writes_them(n, text):
    assert view.size(n) == text


@pytest.mark.parametrize("s, text", [(-5, "0s"), (45, "45s"), (192, "3m 12s"), (7500, "2h 5m"), (273600, "3d 4h")])
def test_ages_keep_their_two_largest_units(s, text):
    assert view.age(s) == text


def ts(t):
    out = Timestamp()
    out.FromNanoseconds(int(t * 1e9))
    return out


def stats(cid, cpu_s, at, mem=0, limit=0):
    return pb.ServerStats(
        container_id=cid, cpu_ns=int(cpu_s * 1e9), time=ts(at), memory_bytes=mem, memory_limit_bytes=limit
    )


def test_cpu_now_is_the_cpu_time_used_between_two_answers():
    before = {"a": stats("a", 10, 1000), "b": stats("b", 50, 1000)}
    after = {"a": stats("a", 13, 1002), "b": stats("b", 1, 1002), "c": stats("c", 5, 1002)}
    rates = view.cpu_rates(before, after)
    # a: 3 s of CPU in 2 s; b's counter went back (restarted); c is new.
    assert rates == {"a": pytest.approx(1.5)}


def capacity(**kw):
    c = pb.NodeCapacity(
        node_id="n1",
        cpus=8,
        memory_total_bytes=16 * GIB,
        memory_available_bytes=12 * GIB,
        allocatable=pb.Allocation(cpu=7.5, memory_bytes=14 * GIB),
        committed=pb.Allocation(cpu=1.5, memory_bytes=7 * GIB),
        running_servers=3,
        images=["b:1", "a:1"],
        image_sizes={"a:1": 3 << 20},
        labels={"zone": "b", "gpu": "a100"},
    )
    for k, v in kw.items():
        if isinstance(v, list):
            getattr(c, k).extend(v)
        elif isinstance(v, pb.Allocation):
            getattr(c, k).CopyFrom(v)
        else:
            setattr(c, k, v)
    return c


def test_bars_fill_with_what_is_committed_of_what_is_allocatable():
    d = pb.DeviceClassCapacity(total=4, committed=3, models=["A100"])
    setattr(d, "class", "gpu")
    broken = pb.DeviceClassCapacity(total=1, discovery_error="nvidia-smi: not found")
    setattr(broken, "class", "fpga")
    bars = {b["label"]: b for b in view.bars(capacity(max_servers=4, devices=[d, broken]))}
    assert bars["Devices: fpga"]["text"] == "0 of 1 shares held; discovery failed: nvidia-smi: not found"
    assert bars["Memory committed"] == {"label": "Memory committed", "pct": 50.0, "text": "7.0 GiB of 14.0 GiB"}
    assert bars["CPU committed"]["pct"] == 20.0 and bars["CPU committed"]["text"] == "1.5 of 7.5 cores"
    assert bars["Memory in use"]["pct"] == 25.0 and "8 CPUs" in bars["Memory in use"]["text"]
    assert bars["Servers"] == {"label": "Servers", "pct": 75.0, "text": "3 of 4"}
    assert bars["Devices: gpu"] == {"label": "Devices: gpu", "pct": 75.0, "text": "3 of 4 shares held (A100)"}


def test_servers_without_a_limit_have_no_bar_to_fill_and_a_full_node_is_full():
    assert view.bars(capacity())[3] == {"label": "Servers", "pct": None, "text": "3 running (no limit)"}
    over = capacity(committed=pb.Allocation(cpu=9, memory_bytes=20 * GIB))
    assert {b["pct"] for b in view.bars(over)[:2]} == {100.0}


def test_a_condition_off_its_normal_status_is_marked():
    conds = [
        pb.Condition(type="Ready", status="True"),
        pb.Condition(type="Draining", status="True", reason="DrainedByOperator", message="docker upgrade"),
        pb.Condition(type="MemoryPressure", status="False"),
        pb.Condition(type="DockerDown", status="Unknown"),
    ]
    c = capacity(conditions=conds, draining=True)
    assert [(x["type"], x["bad"]) for x in view.conditions(c)] == [
        ("Ready", False),
        ("Draining", True),
        ("MemoryPressure", False),
        ("DockerDown", True),
    ]
    version = pb.VersionResponse(daemon_version="0.1.0", docker_version="27.5.1")
    out = view.node(view.NodeState("n1", "a:1", capacity=c, version=version, up=True), time.time())
    assert out["version"] == "berthd 0.1.0, Docker 27.5.1"
    assert out["fencing"] == ""
    fences = capacity(fence_after_seconds=315, stop_grace_seconds=10)
    assert view.fencing(fences) == "stops its servers 5m 15s after losing the hub (stop grace 10s)"
    assert out["draining"] is True and out["drain_reason"] == "docker upgrade"
    assert out["labels"] == {"gpu": "a100", "zone": "b"}


def server(user, state, cid, image="a:1", started=None, name=""):
    s = pb.ServerStatus(key=pb.ServerKey(user=user, server_name=name), state=state, container_id=cid, image=image)
    if started is not None:
        s.started_at.CopyFrom(ts(started))
    return s


def test_servers_show_age_cpu_and_memory_only_while_they_run():
    now = 10_000.0
    st = view.NodeState(
        "n1",
        "a:1",
        up=True,
        capacity=capacity(),
        servers=[
            server("zed", State.EXITED, "c3", started=now - 500),
            server("ann", State.RUNNING, "c1", started=now - 192, name="gpu"),
            server("ann", State.RUNNING, "c2", image="docker.io/library/b:1", started=now - 30),
        ],
        stats={"c1": stats("c1", 1, now, mem=512 << 20, limit=2 * GIB), "c3": stats("c3", 1, now, mem=1)},
        cpu={"c1": 0.25, "c3": 1.0},
    )
    rows = view.servers(st, now)
    assert [(r["user"], r["server"]) for r in rows] == [("ann", ""), ("ann", "gpu"), ("zed", "")]
    assert rows[1] == {
        "user": "ann",
        "server": "gpu",
        "state": "RUNNING",
        "image": "a:1",
        "age": "3m 12s",
        "cpu": "0.25",
        "memory": "512.0 MiB of 2.0 GiB",
        "reason": "",
    }
    assert (
        rows[0]["age"] == "30s"
        and rows[0]["image"] == "docker.io/library/b:1"
        and rows[0]["cpu"] == ""
        and rows[0]["memory"] == ""
    )
    assert rows[2]["age"] == rows[2]["cpu"] == rows[2]["memory"] == ""
    assert view.images(st) == [
        {"reference": "a:1", "size": "3.0 MiB", "servers": 1},
        {"reference": "b:1", "size": "?", "servers": 1},
    ]


def test_warm_pools_show_ready_of_kept_and_hide_empty_ones():
    c = capacity(
        warm=[
            pb.WarmPool(image="lab:1", port=8888, ready=3, size=10),
            pb.WarmPool(image="old:1", port=8888, ready=0, size=0),
        ]
    )
    assert view.warm(c) == [{"image": "lab:1", "port": 8888, "ready": 3, "size": 10}]
    out = view.node(view.NodeState("n1", "a:1", up=True, capacity=c), 1.0)
    assert out["warm"] == view.warm(c)


def test_a_node_that_does_not_answer_reads_down_with_its_error_and_since_when():
    st = view.NodeState("n2", "b:1", up=False, error="UNAVAILABLE: connection refused", down_since=100.0)
    out = view.node(st, 107.0)
    assert (out["state"], out["error"], out["down_for"]) == ("down", "UNAVAILABLE: connection refused", "7s")
    assert view.node(view.NodeState("n3", "c:1"), 0)["state"] == "waiting"


# ---- the poller against fake nodes -----------------------------------------------------------


def node_cfg(address, **kw):
    return config.NodeConfig(name=kw.pop("name", "n"), address=address, **kw)


class StatsNode(FakeNode):
    """A fake node that also answers Stats and ListVolumes."""

    async def Stats(self, request, context):
        await self._enter("Stats", context)
        t = time.time()
        self.cpu_s = getattr(self, "cpu_s", 0.0) + 1.0
        return pb.StatsResponse(servers=[stats("c1", self.cpu_s, t, mem=GIB, limit=2 * GIB)])

    async def ListVolumes(self, request, context):
        await self._enter("ListVolumes", context)
        v = pb.UserVolume(name="home-ann", owner=pb.ServerKey(user="ann"), driver="local", size_bytes=2048)
        v.last_used.CopyFrom(ts(time.time() - 120))
        return pb.ListVolumesResponse(node_id=self.name, volumes=[v])


@run
async def test_the_poller_shows_a_node_up_with_its_volumes_then_down_after_one_failed_round():
    with tempfile.TemporaryDirectory() as d:
        (fake,) = await up(StatsNode("n1", labels={"zone": "a"}))
        p = NodePoller(node_cfg(fake.address, name="n1", token_file=token_file(d, "tok")))
        await p.poll()
        await p.poll()
        st = p.state
        assert st.up is True and st.capacity.labels["zone"] == "a"
        assert view.node(st, time.time())["can_drain"] is False, "no Admin socket given: no drain button"
        assert st.volumes[0].name == "home-ann" and "c1" in st.cpu
        assert fake.metadata[-1]["authorization"] == "Bearer tok", "the spawner's token, from its file"
        await fake.close()
        t0 = time.monotonic()
        await p.poll()
        assert time.monotonic() - t0 < 5
        out = view.node(st, time.time())
        assert out["state"] == "down" and out["error"].startswith("UNAVAILABLE"), out
        assert out["labels"] == {"zone": "a"}, "the last answer is kept, marked as from then"
        (vol,) = out["volumes"]
        assert (vol["name"], vol["user"], vol["size"]) == ("home-ann", "ann", "2.0 KiB")
        assert vol["last_used"].startswith("2m ") and vol["last_used"].endswith(" ago"), vol
        await p.close()


@run
async def test_a_node_nobody_reaches_is_down_from_its_first_round():
    p = NodePoller(node_cfg(dead_address()))
    await p.poll()
    assert p.state.up is False and p.state.down_since is not None
    await p.close()


# ---- drain over the Admin socket -------------------------------------------------------------


class FakeAdmin(admin_pb2_grpc.AdminServicer):
    def __init__(self):
        self.calls = []

    async def Drain(self, request, context):
        self.calls.append(("Drain", request.reason))
        return admin_pb2.DrainResponse(draining=True)

    async def Undrain(self, request, context):
        self.calls.append(("Undrain", request.reason))
        return admin_pb2.DrainResponse(draining=False)


@run
async def test_drain_and_undrain_go_to_the_nodes_admin_socket():
    with tempfile.TemporaryDirectory() as d:
        sock = os.path.join(d, "admin.sock")
        admin = FakeAdmin()
        server = grpc.aio.server()
        admin_pb2_grpc.add_AdminServicer_to_server(admin, server)
        server.add_insecure_port(f"unix:{sock}")
        await server.start()
        try:
            n = node_cfg("x:1", admin_socket=sock)
            assert await actions.set_draining(n, True, "disk swap") is True
            assert await actions.set_draining(n, False) is False
            assert admin.calls == [("Drain", "disk swap"), ("Undrain", "")]
        finally:
            await server.stop(0)
        with pytest.raises(actions.ActionError) as e:
            await actions.set_draining(n, True)
        assert e.value.status == 502 and "UNAVAILABLE" in e.value.message


@run
async def test_a_node_without_an_admin_socket_cannot_be_drained_from_the_page():
    with pytest.raises(actions.ActionError) as e:
        await actions.set_draining(node_cfg("x:1", name="n2"), True)
    assert e.value.status == 409 and "berthctl drain" in e.value.message


# ---- volume moves ----------------------------------------------------------------------------


def wait(what, check, timeout=10):
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def two_nodes(src, dst):
    raw = {"nodes": [{"name": "src", "address": src.address}, {"name": "dst", "address": dst.address}]}
    return config.ServiceConfig.parse(raw)


def test_a_move_from_the_page_moves_the_users_volumes_and_reports_its_progress():
    data = os.urandom(3 << 20)
    src = VolumeNode("src", {"home-ann": ("ann", "", data), "home-bob": ("bob", "", b"x")})
    dst = VolumeNode("dst")
    ended = []
    try:
        moves = actions.Moves(two_nodes(src, dst), on_end=lambda *names: ended.append(names))
        m = moves.start("ann", "", "src", "dst")
        wait("the move to end", lambda: m.state != "running")
        assert m.state == "done", m.error
        assert dst.volumes["home-ann"][2] == data and "home-ann" not in src.volumes
        assert "home-bob" in src.volumes, "another user's volume stays"
        out = moves.to_json()[0]
        assert (out["user"], out["from"], out["to"], out["state"]) == ("ann", "src", "dst", "done")
        assert out["progress"] == "1 of 1 volume(s) moved" and m.bytes >= len(data)
        assert ended == [("src", "dst")]
    finally:
        src.server.stop(0)
        dst.server.stop(0)


def test_a_move_while_the_server_runs_fails_with_the_reason_and_keeps_the_volume():
    src = VolumeNode("src", {"home-ann": ("ann", "", b"data")}, running=[("ann", "")])
    dst = VolumeNode("dst")
    try:
        m = actions.Moves(two_nodes(src, dst)).start("ann", "", "src", "dst")
        wait("the move to end", lambda: m.state != "running")
        assert m.state == "failed" and "stop it first" in m.error
        assert "home-ann" in src.volumes and not dst.volumes
    finally:
        src.server.stop(0)
        dst.server.stop(0)


@pytest.mark.parametrize(
    "args, status, why",
    [
        (("ann", "", "src", "src"), 400, "already on src"),
        (("ann", "", "src", "elsewhere"), 400, "'elsewhere' is not one of the hub's nodes"),
        (("", "", "src", "dst"), 400, "user"),
        (("ann", None, "src", "dst"), 400, "server"),
    ],
)
def test_a_move_the_page_cannot_start_says_why(args, status, why):
    cfg = config.ServiceConfig.parse({"nodes": [{"name": "src", "address": "a:1"}, {"name": "dst", "address": "b:1"}]})
    with pytest.raises(actions.ActionError) as e:
        actions.Moves(cfg).start(*args)
    assert e.value.status == status and why in e.value.message


def test_poller_refresh_is_harmless_for_an_unknown_node():
    from berthspawner.cluster.poller import Poller

    p = Poller(config.ServiceConfig.parse({"nodes": [{"address": "a:1"}]}))
    asyncio.run(p.refresh("nope"))
    assert p.view()[0]["state"] == "waiting"


def test_a_move_under_way_says_which_volume_and_how_much_is_copied():
    m = actions.Move(1, "ann", "", "src", "dst", time.time)
    assert m.to_json()["progress"] == "checking the nodes"
    m.listed([pb.UserVolume(name="home-ann"), pb.UserVolume(name="scratch-ann")])
    m.copied("home-ann", 3 << 20)
    assert m.to_json()["progress"] == "volume 1 of 2: home-ann, 3.0 MiB copied"
    m.note("move: home-ann: removed from src")
    m.copied("scratch-ann", 1 << 19)
    assert m.to_json()["progress"] == "volume 2 of 2: scratch-ann, 0.5 MiB copied"
    assert m.to_json()["lines"] == ["move: home-ann: removed from src"]


@run
async def test_the_poller_calls_the_nodes_only_while_a_page_asks():
    from berthspawner.cluster import poller

    (fake,) = await up(FakeNode("n1"))
    p = poller.Poller(config.ServiceConfig.parse({"nodes": [{"name": "n1", "address": fake.address}], "interval": 0.2}))
    active = poller.ACTIVE_SECONDS
    poller.ACTIVE_SECONDS = 1.0
    task = asyncio.ensure_future(p.run())
    try:
        await asyncio.sleep(0.5)
        assert "Capacity" not in fake.calls, "no page asked: no calls"
        p.asked()
        await wait_until("rounds while a page asks", lambda: fake.calls.count("Capacity") >= 3)
        await asyncio.sleep(1.2)
        calls = fake.calls.count("Capacity")
        await asyncio.sleep(0.6)
        assert fake.calls.count("Capacity") == calls, "the page stopped asking: the calls stop"
        p.asked()
        await wait_until("rounds again", lambda: fake.calls.count("Capacity") > calls, timeout=1.0)
    finally:
        poller.ACTIVE_SECONDS = active
        task.cancel()
        await p.close()


def test_the_service_exits_when_the_hub_that_started_it_is_gone():
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        config.ENV: json.dumps({"nodes": [{"address": dead_address()}]}),
        "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}",
        "JUPYTERHUB_SERVICE_PREFIX": "/services/berth/",
    }
    # The "hub": starts the service, waits until it listens, prints its pid and dies.
    hub = f"""
import socket, subprocess, sys, time
p = subprocess.Popen([sys.executable, "-m", "berthspawner.cluster"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(200):
    try:
        socket.create_connection(("127.0.0.1", {port}), 0.1).close()
        break
    except OSError:
        time.sleep(0.05)
print(p.pid)
"""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", hub], env=env, cwd=here, capture_output=True, text=True, timeout=60)
    pid = int(out.stdout)

    def gone():
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return True

    try:
        wait("the orphaned service to exit", gone, timeout=10)
    finally:
        if not gone():
            os.kill(pid, 9)
