"""BerthSpawner's own logic against fake nodes (real gRPC on loopback, no hub, no Docker)."""

import asyncio
import functools
import socket
from types import SimpleNamespace

import grpc
import pytest
from fakes import GIB, FakeNode, State, spawner, wait_until
from berthspawner._compat import SpawnException

from berthspawner import fencing
from berthspawner import nodes as nodes_mod
from berthspawner._proto.berth.v1 import spawner_pb2 as pb


_serving = []


def run(test):
    """Runs an async test in a fresh loop, then closes its fake nodes and shared nodes."""

    async def body(*args, **kwargs):
        try:
            await asyncio.wait_for(test(*args, **kwargs), 30)
        finally:
            await nodes_mod.close_nodes()
            while _serving:
                await _serving.pop().close()

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        asyncio.run(body(*args, **kwargs))

    return wrapper


async def up(*fakes):
    _serving.extend(fakes)
    return [await f.serve() for f in fakes]


def dead_address():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@run
async def test_start_picks_the_node_with_most_free_memory_and_returns_its_url():
    a, b = await up(FakeNode("a", memory_free=4 * GIB), FakeNode("b", memory_free=8 * GIB))
    s = spawner([a, b])
    url = await s.start()
    assert url == "http://b:1"
    assert s.get_state() == {"node": "b", "spawn_id": s.spawn_id, "container_id": s.container_id}
    assert "Start" in b.calls and "Start" not in a.calls


@run
async def test_no_room_anywhere_is_a_503_that_names_each_nodes_reason():
    full, draining = await up(FakeNode("full", max_servers=2, running=2), FakeNode("drain", draining=True))
    s = spawner([full, draining, {"name": "gone", "address": dead_address()}], rpc_timeout=3)
    with pytest.raises(SpawnException) as e:
        await s.start()
    assert e.value.status_code == 503 and e.value.reason == "capacity"
    msg = str(e.value)
    for why in ["full: full (2 of 2 servers)", "drain: draining", "gone: unreachable (UNAVAILABLE)"]:
        assert why in msg, msg
    assert s.get_state() == {}, "a failed spawn leaves no state"


@run
async def test_a_node_without_capacity_reporting_is_assumed_to_fit_but_tried_last():
    old, new = await up(FakeNode("old", memory_free=64 * GIB), FakeNode("new", memory_free=1 * GIB))
    old.fail["Capacity"] = (grpc.StatusCode.UNIMPLEMENTED, "")
    assert await spawner([old, new]).start() == "http://new:1"
    new.draining = True
    assert await spawner([old, new], user="bob").start() == "http://old:1"


@run
async def test_a_node_that_refuses_at_start_hands_the_spawn_to_the_next():
    a, b = await up(FakeNode("a", memory_free=8 * GIB), FakeNode("b", memory_free=4 * GIB))
    a.fail["Start"] = (grpc.StatusCode.RESOURCE_EXHAUSTED, "not enough memory on node a", "INSUFFICIENT_MEMORY")
    s = spawner([a, b])
    assert await s.start() == "http://b:1"
    assert s.node_name == "b"


@run
async def test_a_node_that_started_draining_after_capacity_hands_the_spawn_on_by_its_reason():
    a, b = await up(FakeNode("a", memory_free=8 * GIB), FakeNode("b", memory_free=4 * GIB))
    a.fail["Start"] = (grpc.StatusCode.FAILED_PRECONDITION, "node a is busy", "NODE_DRAINING", {"node": "a"})
    s = spawner([a, b])
    assert await s.start() == "http://b:1"


@run
async def test_decisions_follow_the_reason_never_the_message():
    # A crash whose output happens to say "is draining" is still a crash: not retried elsewhere.
    a, b = await up(FakeNode("a", memory_free=8 * GIB), FakeNode("b"))
    a.fail["Start"] = (
        grpc.StatusCode.FAILED_PRECONDITION,
        "server exited during start; last output: node is draining",
        "EXITED_DURING_START",
    )
    with pytest.raises(SpawnException):
        await spawner([a, b]).start()
    assert "Start" not in b.calls
    # A policy refusal would fail anywhere, even with a resource-exhausted code.
    c, d = await up(FakeNode("c", memory_free=8 * GIB), FakeNode("d"))
    c.fail["Start"] = (grpc.StatusCode.PERMISSION_DENIED, "node policy allowed_images", "POLICY_DENIED")
    with pytest.raises(SpawnException):
        await spawner([c, d]).start()
    assert "Start" not in d.calls


@run
async def test_a_server_that_fails_to_start_is_not_retried_elsewhere_and_is_cleaned_up():
    a, b = await up(FakeNode("a", memory_free=8 * GIB), FakeNode("b"))
    a.fail["Start"] = (
        grpc.StatusCode.FAILED_PRECONDITION,
        "server exited during start with exit code 1",
        "EXITED_DURING_START",
    )
    s = spawner([a, b], remove=True)
    with pytest.raises(SpawnException) as e:
        await s.start()
    # The user reads what to do; the exit code is for the hub's log.
    page = e.value.jupyterhub_message
    assert e.value.status_code == 500 and "try again" in page and "exit code" not in page, page
    assert "exit code 1" in str(e.value), "the hub's log has the detail"
    assert "Start" not in b.calls
    assert a.calls[-1] == "Stop", "the failed container is handed to Stop (remove) at once"
    assert await s.poll() == 0


@run
async def test_a_failed_pull_fails_at_once_and_is_not_a_lack_of_room():
    a, b = await up(FakeNode("a", memory_free=8 * GIB), FakeNode("b"))
    a.fail["Start"] = (
        grpc.StatusCode.FAILED_PRECONDITION,
        'cannot pull image "r.example/x:1" on node "a": the registry refused access: denied',
        "IMAGE_PULL_FAILED",
        {"image": "r.example/x:1", "cause": "unauthorized"},
    )
    s = spawner([a, b], pull_policy="always")
    with pytest.raises(SpawnException) as e:
        await s.start()
    assert e.value.status_code == 500 and "could not be pulled" in str(e.value) and "denied" in str(e.value)
    assert "room" not in str(e.value)
    assert "Start" not in b.calls, "another node would fail the same way"
    assert a.started.pull_policy == pb.PULL_POLICY_ALWAYS


@run
async def test_an_image_on_no_node_with_pull_policy_never_is_not_a_lack_of_room():
    a, b = await up(FakeNode("a"), FakeNode("b"))
    for n in (a, b):
        n.fail["Start"] = (
            grpc.StatusCode.NOT_FOUND,
            f'image "x:1" is not present on node "{n.name}"',
            "IMAGE_NOT_FOUND",
        )
    with pytest.raises(SpawnException) as e:
        await spawner([a, b], pull_policy="never").start()
    assert e.value.status_code == 500 and "room" not in str(e.value), str(e.value)
    assert "pull policy is 'never'" in str(e.value) and "not present" in str(e.value)
    assert "Start" in a.calls and "Start" in b.calls, "each node was asked: one may have had it"


@run
async def test_a_node_holding_the_image_is_tried_first():
    a, b = await up(FakeNode("a", memory_free=16 * GIB), FakeNode("b", memory_free=2 * GIB))
    b.images = ["berth-test/singleuser:latest"]
    s = spawner([a, b], image="docker.io/berth-test/singleuser")
    assert await s.start() == "http://b:1"


@run
async def test_pull_progress_reaches_the_hub_with_its_bytes():
    (a,) = await up(FakeNode("a", start_delay=0.5))
    a.progress_first = [
        pb.ProgressEvent(
            progress=11,
            phase=pb.ProgressEvent.PULLING,
            message="Pulling r/x:1: 4.2 MB of 9.4 MB (1 of 3 layers)",
            image="r/x:1",
            bytes_done=4_200_000,
            bytes_total=9_400_000,
            layers_done=1,
            layers_total=3,
        )
    ]
    s = spawner([a])
    start = asyncio.ensure_future(s.start())
    events = []
    async for ev in s.progress():
        events.append(ev)
        if len(events) == 1:
            break
    await start
    # The first event: a first attempt says no node name.
    assert events[0] == {
        "message": "Pulling r/x:1: 4.2 MB of 9.4 MB (1 of 3 layers)",
        "progress": 11,
        "raw_event": {
            "phase": "pulling",
            "image": "r/x:1",
            "bytes_done": 4_200_000,
            "bytes_total": 9_400_000,
            "layers_done": 1,
            "layers_total": 3,
        },
    }


@run
async def test_concurrent_spawns_are_spread_by_what_this_hub_has_in_flight():
    a, b = await up(FakeNode("a", start_delay=0.3), FakeNode("b", start_delay=0.3))
    spawners = [spawner([a, b], user=f"u{i}") for i in range(4)]
    await asyncio.gather(*(s.start() for s in spawners))
    assert sorted(s.node_name for s in spawners) == ["a", "a", "b", "b"]


@run
async def test_poll_answers_none_while_running_and_the_exit_code_after():
    (a,) = await up(FakeNode("a"))
    s = spawner([a])
    assert await s.poll() == 0, "never started: 0"
    await s.start()
    assert await s.poll() is None
    a.servers[("alice", "")].state = State.EXITED
    a.servers[("alice", "")].exit_code = 3
    assert await s.poll() == 3
    a.servers.clear()
    assert await s.poll() == 0


@run
async def test_poll_after_load_state_finds_the_server_and_a_newer_container_is_not_ours():
    (a,) = await up(FakeNode("a"))
    first = spawner([a])
    await first.start()
    restarted = spawner([a])
    restarted.load_state(first.get_state())
    assert await restarted.poll() is None
    a.servers[("alice", "")].container_id = "someone-else"
    assert await restarted.poll() == 0


@run
async def test_a_renamed_node_is_found_again_through_list():
    (a,) = await up(FakeNode("a"))
    first = spawner([a])
    await first.start()
    renamed = spawner([{"name": "a-renamed", "address": a.address}])
    renamed.load_state(first.get_state())
    assert await renamed.poll() is None
    assert renamed.node_name == "a-renamed"


@run
async def test_an_unreachable_node_keeps_its_servers_for_the_grace_then_not():
    (a,) = await up(FakeNode("a"))
    s = spawner([a], unreachable_grace=60, rpc_timeout=2)
    await s.start()
    await a.close()
    assert await s.poll() is None, "one missed call is not a death"
    node = s._node("a")
    node._first_failure -= 61  # as if the node had been silent for longer than the grace
    assert await s.poll() == 1


async def lose(s, node_name):
    """As the hub does with a server whose node stopped answering past the grace."""
    node = s._node(node_name)
    assert await s.poll() is None
    node._first_failure -= 61
    assert await s.poll() == 1
    await s.stop()
    s.clear_state()
    s.orm_spawner = None
    return node


@run
async def test_a_server_lost_with_its_node_is_not_started_twice_until_released():
    fencing._released.clear()
    a, b = await up(FakeNode("a", memory_free=8 * GIB), FakeNode("b"))
    s = spawner([a, b], unreachable_grace=60, rpc_timeout=2)
    assert await s.start() == "http://a:1"
    await a.close()
    node = await lose(s, "a")
    node.fence_after = 0  # a does not fence: only an operator can release it
    assert s.get_state()["lost"]["node"] == "a", "kept across the stop, in the hub's database"
    with pytest.raises(SpawnException) as refused:
        await s.start()
    assert "still on a" in refused.value.jupyterhub_message and "administrator" in refused.value.jupyterhub_message
    assert "Start" not in b.calls, "no second server while the first may run"
    # The hub restarts: the state it kept refuses as well.
    again = spawner([a, b], unreachable_grace=60, rpc_timeout=2)
    again.load_state(s.get_state())
    with pytest.raises(SpawnException):
        await again.start()
    fencing.release("a")
    assert await again.start() == "http://b:1"
    assert again.lost is None


@run
async def test_a_fencing_node_releases_its_lost_server_after_its_fence_time():
    fencing._released.clear()  # an earlier test released a node of the same name
    a, b = await up(FakeNode("a", memory_free=8 * GIB), FakeNode("b"))
    s = spawner([a, b], unreachable_grace=60, rpc_timeout=2, stop_grace=5)
    await s.start()
    s._node("a").fence_after, s._node("a").stop_grace = 75, 5
    await a.close()
    await lose(s, "a")
    lost = s.lost
    assert lost["until"] == pytest.approx(lost["since"] + 75 + 5 + fencing.MARGIN)
    with pytest.raises(SpawnException) as refused:
        await s.start()
    # Lost 61 s ago, fenced 90 s after: within the minute.
    assert "will be stopped there in 1 minute," in refused.value.jupyterhub_message
    lost["until"] = lost["since"]  # as if the fence time had passed
    assert await s.start() == "http://b:1"


def test_a_servers_own_fence_time_and_never_fence_win_over_the_nodes():
    node = SimpleNamespace(fence_after=75)
    assert fencing.fence_seconds(SimpleNamespace(never_fence=True, fence_after=30), node) == 0
    assert fencing.fence_seconds(SimpleNamespace(never_fence=False, fence_after=30), node) == 45
    assert fencing.fence_seconds(SimpleNamespace(never_fence=False, fence_after=0), node) == 75
    assert fencing.release_at(100.0, 0, 10) is None
    assert "cannot reach" in fencing.refusal("node-3", None)


@run
async def test_an_exit_on_watch_triggers_the_hubs_poll_and_notify():
    (a,) = await up(FakeNode("a"))
    a.watch = True
    s = spawner([a])
    await s.start()
    notified = []

    async def poll_and_notify():
        notified.append(await s.poll())

    s.poll_and_notify = poll_and_notify
    node = s._node("a")
    await wait_until("the watch snapshot", lambda: node.watching)
    a.exit("alice", code=137)
    await wait_until("poll_and_notify", lambda: notified)
    assert notified == [137]
    assert a.calls.count("Poll") == 0, "the exit came from the Watch cache, no Poll"


@run
async def test_without_watch_poll_asks_the_node():
    (a,) = await up(FakeNode("a"))
    s = spawner([a])
    await s.start()
    assert await s.poll() is None
    await wait_until("the watch attempt", lambda: "Watch" in a.calls)
    assert await s.poll() is None
    assert a.calls.count("Poll") == 2


@run
async def test_a_new_start_replaces_a_server_the_hub_lost_track_of():
    (a,) = await up(FakeNode("a"))
    await spawner([a]).start()
    orphan = a.servers[("alice", "")].container_id
    s = spawner([a])  # fresh state, as after a hub crash mid-start
    await s.start()
    assert "Stop" in a.calls
    assert s.container_id != orphan


@run
async def test_progress_relays_the_node_and_leaves_ready_to_the_hub():
    (a,) = await up(FakeNode("a", start_delay=0.5))
    s = spawner([a])
    start = asyncio.ensure_future(s.start())
    events = []
    async for ev in s.progress():
        events.append(ev)
        if len(events) == 2:
            break
    await start
    # No node name on a first attempt: it means nothing to the user.
    assert events == [
        {"message": "creating", "progress": 20},
        {"message": "waiting for HTTP", "progress": 60},
    ]


@run
async def test_the_token_goes_in_metadata(tmp_path):
    (a,) = await up(FakeNode("a"))
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    await spawner([{"name": "a", "address": a.address, "token_file": str(token)}]).start()
    assert a.metadata and all(m.get("authorization") == "Bearer s3cret" for m in a.metadata)


@run
async def test_named_servers_of_one_user_are_separate_keys():
    (a,) = await up(FakeNode("a"))
    one, two = spawner([a], name="one"), spawner([a], name="two")
    await one.start()
    await two.start()
    assert set(a.servers) == {("alice", "one"), ("alice", "two")}
    await one.stop()
    assert ("alice", "one") in a.servers and a.servers[("alice", "one")].state == State.EXITED
    assert await one.poll() == 0 and await two.poll() is None


def test_an_unknown_placement_policy_is_refused():
    from traitlets import TraitError

    with pytest.raises(TraitError):
        spawner([], placement="random")
    spawner([], placement="pack")
    spawner([], placement=lambda fits, demand: fits)


def test_state_round_trips_and_clears():
    s = spawner([])
    s.load_state({"node": "n", "spawn_id": "sp", "container_id": "c"})
    assert s.get_state() == {"node": "n", "spawn_id": "sp", "container_id": "c"}
    s.clear_state()
    assert s.get_state() == {}


@run
async def test_a_server_that_died_is_removed_when_remove_is_set():
    (a,) = await up(FakeNode("a"))
    s = spawner([a], remove=True)
    await s.start()
    a.servers[("alice", "")].state = State.EXITED
    assert await s.poll() == 0
    assert ("alice", "") not in a.servers, "its container went with Stop(remove)"
    kept = spawner([a], user="bob", remove=False)
    await kept.start()
    a.servers[("bob", "")].state = State.EXITED
    assert await kept.poll() == 0
    assert ("bob", "") in a.servers, "remove=False keeps it"


@run
async def test_all_spawners_of_the_hub_share_one_watch_per_node():
    a, b = await up(FakeNode("a"), FakeNode("b"))
    a.watch = b.watch = True
    spawners = [spawner([a, b], user=f"u{i}") for i in range(4)]
    await asyncio.gather(*(s.start() for s in spawners))
    for s in spawners:
        assert await s.poll() is None
    await wait_until("both watches", lambda: all(s._node(n).watching for s in spawners for n in "ab"))
    assert a.calls.count("Watch") == 1 and b.calls.count("Watch") == 1


@run
async def test_rename_cleans_the_old_name_and_refuses_per_server_volumes():
    (a,) = await up(FakeNode("a"))
    s = spawner([a], name="old", remove=False)
    await s.start()
    await s.stop()
    assert ("alice", "old") in a.servers
    await s.rename("old", "new")
    assert ("alice", "old") not in a.servers, "the kept container of the old name is removed"
    with pytest.raises(SpawnException) as e:
        await spawner([a], name="x", volumes={"data-{user}-{server}": "/data"}).rename("x", "y")
    assert e.value.status_code == 400


@run
async def test_internal_ssl_sends_the_hubs_trust_bundle_for_the_nodes_probe():
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp())
    files = {}
    for k, text in {"keyfile": "KEY", "certfile": "CERT", "cafile": "NOTEBOOKS-TRUST"}.items():
        files[k] = str(d / k)
        Path(files[k]).write_text(f"-----BEGIN {text}-----\n")
    hub_trust = d / "hub-ca_trust.crt"
    hub_trust.write_text("-----BEGIN HUB-TRUST-----\n")
    node = [{"name": "a", "address": dead_address()}]
    s = spawner(node, internal_trust_bundles={"hub-ca": str(hub_trust)})
    paths = await s.move_certs(files)
    assert paths["cafile"] == "/.berth/certs/ca.crt"
    assert s._certs.ca == b"-----BEGIN NOTEBOOKS-TRUST-----\n"
    assert s._certs.server_ca == b"-----BEGIN HUB-TRUST-----\n", "the probe checks what the hub checks"
    # No trust bundles (a hub without internal_ssl authorities): none sent, the node only sees TLS.
    s2 = spawner(node)
    await s2.move_certs(files)
    assert s2._certs.server_ca == b""


@run
async def test_extra_host_config_limits_and_gpus_reach_the_request_and_go_back_at_the_next_start():
    (a,) = await up(FakeNode("a", memory_free=8 * GIB))
    kwargs = {"mem_limit": "1G", "nano_cpus": 2_000_000_000}
    s = spawner(
        [a], mem_limit=4 * GIB, extra_host_config=lambda sp: kwargs, extra_create_kwargs={"command": "start.sh lab"}
    )
    await s.start()
    r = a.starts[-1].resources
    assert (r.mem_limit_bytes, r.cpu_limit) == (1 * GIB, 2.0), "DockerSpawner's host config wins"
    assert list(a.starts[-1].cmd) == ["start.sh", "lab"]
    assert s.mem_limit == 1 * GIB, "the spawner shows what this start asked"
    await s.stop()
    kwargs.clear()
    await s.start()
    assert a.starts[-1].resources.mem_limit_bytes == 4 * GIB, "put back once the callable no longer sets it"


@run
async def test_a_failure_waits_for_a_following_page_to_relay_the_attempt_and_not_for_nobody():
    (a,) = await up(FakeNode("a"))
    s = spawner([a])
    s._attempt = 1
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await s._failure_relayed(timeout=2.0, join=0.3)
    assert 0.25 < loop.time() - t0 < 0.6, "no page follows: only the time a page has to connect"
    loop.call_later(0.1, lambda: setattr(s, "_following", True))
    ended = asyncio.Event()
    s._attempt_ended = (0, asyncio.Event())  # an earlier attempt's stream: not this one's
    loop.call_later(0.3, lambda: setattr(s, "_attempt_ended", (1, ended)))
    loop.call_later(0.5, ended.set)
    t0 = loop.time()
    await s._failure_relayed(timeout=2.0, join=1.0)
    waited = loop.time() - t0
    assert 0.45 < waited < 1.5, f"waited for the page, then for this attempt's stream to end: {waited:.2f} s"
