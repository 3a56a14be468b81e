"""Fewer RPCs per spawn: Capacity and the orphan search answered from the nodes' Watch streams."""

import asyncio

from fakes import GIB, FakeNode, State, spawner, wait_until
from test_spawner import run, up

from berthspawner._proto.berth.v1 import spawner_pb2 as pb


async def watched(*fakes):
    for f in fakes:
        f.watch = True
    nodes = await up(*fakes)
    first = spawner(nodes, user="first")
    await first.start()
    await wait_until("every watch", lambda: all(first._node(f.name).watching for f in fakes))
    # Answers taken before a Watch came up are not reused: this spawn takes them afresh.
    await spawner(nodes, user="warm").start()
    return nodes


@run
async def test_with_watch_up_an_unchanged_node_is_not_asked_again():
    a, b = await watched(FakeNode("a", memory_free=4 * GIB), FakeNode("b", memory_free=8 * GIB))
    # "warm" went to b (most free memory): b is asked again, a's answer still holds.
    before = (a.calls.count("Capacity"), b.calls.count("Capacity"))
    await spawner([a, b], user="second").start()
    assert a.calls.count("Capacity") == before[0], "a showed no change on Watch: its answer is reused"
    assert b.calls.count("Capacity") == before[1] + 1, "b started a server since: asked again"
    assert a.calls.count("List") == 1, "only the spawn before the Watch came up asked List"


@run
async def test_an_event_on_watch_makes_the_node_asked_again():
    a, b = await watched(FakeNode("a"), FakeNode("b", memory_free=4 * GIB))
    n = a.calls.count("Capacity")
    a.servers[("other", "")] = pb.ServerStatus(key=pb.ServerKey(user="other"), state=State.RUNNING)
    a.exit("other")
    s = spawner([a, b], user="second")
    await wait_until("the event", lambda: s._node("a").statuses.get(("other", "")) is not None)
    await s.start()
    assert a.calls.count("Capacity") == n + 1


@run
async def test_a_zero_ttl_asks_every_node_at_every_spawn():
    a, b = await watched(FakeNode("a"), FakeNode("b"))
    n = a.calls.count("Capacity") + b.calls.count("Capacity")
    await spawner([a, b], user="second", capacity_ttl=0).start()
    assert a.calls.count("Capacity") + b.calls.count("Capacity") == n + 2


@run
async def test_an_orphan_seen_on_watch_is_still_replaced():
    a, b = await watched(FakeNode("a"), FakeNode("b", memory_free=4 * GIB))
    a.servers[("bob", "")] = pb.ServerStatus(key=pb.ServerKey(user="bob"), state=State.RUNNING, container_id="old")
    a.events.put_nowait(pb.WatchEvent(kind=pb.WatchEvent.STARTED, status=a.servers[("bob", "")]))
    s = spawner([a, b], user="bob")
    await wait_until("the event", lambda: s._node("a").statuses.get(("bob", "")) is not None)
    await s.start()
    assert "Stop" in a.calls, "the orphan on a was stopped"


@run
async def test_concurrent_spawns_share_one_capacity_call_per_node():
    a, b = await up(FakeNode("a"), FakeNode("b"))
    await asyncio.gather(*(spawner([a, b], user=f"u{i}").start() for i in range(5)))
    assert a.calls.count("Capacity") <= 2 and b.calls.count("Capacity") <= 2
