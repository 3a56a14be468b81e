"""Placement follows the user's files: volume_affinity over fake nodes (real gRPC, no Docker)."""

import json

import pytest
from fakes import GIB, FakeNode, spawner
from berthspawner._compat import SpawnException
from test_spawner import run, up

from berthspawner import request

HOME = {"jupyterhub-user-{user}": "/home/jovyan"}


def local_first(fits, demand):
    """A placement that would always pick node "b": the files must win over it."""
    return sorted(fits, key=lambda c: c.name != "b")


@run
async def test_the_user_goes_back_to_the_node_with_their_files_every_time():
    a, b = await up(FakeNode("a"), FakeNode("b"))
    s = spawner([a, b], volumes=HOME, placement=local_first)
    assert await s.start() == "http://b:1"
    assert s.home_node == "b"
    await s.stop()
    s.clear_state()
    assert s.get_state() == {"home_node": "b"}, "where the files are outlives the stop"
    # Another node is now the placement's choice; the files keep the user on b.
    s.placement = lambda fits, demand: sorted(fits, key=lambda c: c.name != "a")
    for _ in range(3):
        assert await s.start() == "http://b:1"
        await s.stop()
        s.clear_state()
    assert "Start" not in a.calls


@run
async def test_required_home_node_draining_is_a_503_naming_it_and_nothing_starts():
    a, b = await up(FakeNode("a"), FakeNode("b", draining=True))
    b.volumes["jupyterhub-user-alice"] = ("alice", "", 1)
    s = spawner([a, b], volumes=HOME)
    s.home_node = "b"
    with pytest.raises(SpawnException) as e:
        await s.start()
    assert e.value.status_code == 503
    assert "Your files are on b" in str(e.value) and "draining" in str(e.value), str(e.value)
    assert "Start" not in a.calls and "Start" not in b.calls


@run
async def test_preferred_starts_elsewhere_and_says_the_volume_is_fresh():
    a, b = await up(FakeNode("a"), FakeNode("b", draining=True))
    b.volumes["jupyterhub-user-alice"] = ("alice", "", 1)
    s = spawner([a, b], volumes=HOME, volume_affinity="preferred")
    s.home_node = "b"
    assert await s.start() == "http://a:1"
    assert "fresh, empty volume" in s._notice and "Your files are on b" in s._notice
    messages = []
    async for ev in s.progress():
        messages.append(ev["message"])
        if len(messages) >= 2:
            break
    assert any("fresh, empty volume" in m for m in messages), messages
    assert s.home_node == "b", "the files are still on b: the next start tries b first"


@run
async def test_a_lost_hub_state_finds_the_home_node_by_asking_the_nodes():
    a, b = await up(FakeNode("a", memory_free=64 * GIB), FakeNode("b", memory_free=1 * GIB))
    first = spawner([a, b], volumes=HOME, placement=local_first)
    await first.start()
    assert first.home_node == "b"
    assert json.loads(b.blobs[("alice", "")][0])["home_node"] == "b"
    # A hub whose database was reset: a spawner with no state at all.
    fresh = spawner([a, b], volumes=HOME)
    await first.stop()
    assert await fresh.start() == "http://b:1", "spread would pick a (more memory)"
    assert fresh.home_node == "b"


@run
async def test_volumes_moved_by_an_operator_are_followed_to_their_new_node():
    a, b = await up(FakeNode("a"), FakeNode("b"))
    # The state says b, but an operator moved the volume to a (python -m berthspawner.move).
    a.volumes["jupyterhub-user-alice"] = ("alice", "", 1)
    s = spawner([a, b], volumes=HOME, placement=local_first)
    s.home_node = "b"
    assert await s.start() == "http://a:1"
    assert s.home_node == "a"
    assert "Start" not in b.calls


@run
async def test_no_affinity_for_shared_storage_and_a_new_user_is_placed_normally():
    a, b = await up(FakeNode("a", memory_free=64 * GIB), FakeNode("b", memory_free=1 * GIB))
    shared = {"/srv/homes/{user}": "/home/jovyan"}
    assert not request.node_local_volumes(shared)
    nfs = {"home-{user}": {"bind": "/home/jovyan", "driver": "local", "driver_opts": {"type": "nfs"}}}
    assert not request.node_local_volumes(nfs)
    assert request.node_local_volumes(HOME)
    s = spawner([a, b], volumes=shared)
    s.home_node = "b"
    assert await s.start() == "http://a:1", "none: any node will do"
    new = spawner([a, b], user="newbie", volumes=HOME)
    assert await new.start() == "http://a:1", "no data yet: the normal policy"
    assert new.home_node == "a"


@run
async def test_a_placement_callable_may_take_the_spawner():
    a, b = await up(FakeNode("a"), FakeNode("b"))
    seen = []

    def by_group(fits, demand, spawner):
        seen.append((spawner.user.name, spawner.user_options))
        return sorted(fits, key=lambda c: c.name != spawner.user_options.get("node"))

    s = spawner([a, b], placement=by_group)
    s.user_options = {"node": "a"}
    assert await s.start() == "http://a:1"
    assert seen == [("alice", {"node": "a"})]
