"""Capacity pushed on Watch: placement reads the nodes' pushed answers (no Capacity call per
spawn), falls back to asking nodes that do not push or whose stream is down, and counts the
spawns it placed until a pushed answer shows them."""

import grpc
import pytest
from fakes import GIB, FakeNode, pb, spawner, wait_until
from berthspawner._compat import SpawnException
from test_spawner import run, up

from berthspawner import capcache


async def pushing(*fakes):
    """The fakes up, watched, and (those with `push`) pushing capacity to the hub."""
    for f in fakes:
        f.watch = True
    nodes = await up(*fakes)
    first = spawner(nodes, user="first")
    await first.start()
    await wait_until("every watch", lambda: all(first._node(f.name).watching for f in fakes))
    await wait_until(
        "every pushed answer", lambda: all(first._node(f.name).pushed() is not None for f in fakes if f.push)
    )
    return nodes


def capacity_calls(*fakes):
    return sum(f.calls.count("Capacity") for f in fakes)


@run
async def test_pushed_capacity_places_without_asking_the_nodes():
    a, b = FakeNode("a", memory_free=4 * GIB), FakeNode("b", memory_free=8 * GIB)
    a.push = b.push = True
    await pushing(a, b)
    assert all(r.capacity for r in a.watch_requests + b.watch_requests), "the hub asks for pushed capacity"
    n = capacity_calls(a, b)
    assert await spawner([a, b], user="second").start() == "http://b:1"
    # b pushes less free memory now: the next spawn follows the pushed answer.
    b.memory_free = 2 * GIB
    b.push_capacity()
    s = spawner([a, b], user="third")
    await wait_until("b's new answer", lambda: s._node("b").pushed().allocatable.memory_bytes == 2 * GIB)
    assert await s.start() == "http://a:1"
    assert capacity_calls(a, b) == n, "no Capacity call while both nodes push"


@run
async def test_a_node_that_does_not_push_is_asked_as_before():
    new, old = FakeNode("new", memory_free=4 * GIB), FakeNode("old", memory_free=8 * GIB)
    new.push = True
    await pushing(new, old)
    n_new, n_old = new.calls.count("Capacity"), old.calls.count("Capacity")
    # "first" went to old: its kept answer is stale, so it is asked again; new never is.
    assert await spawner([new, old], user="second", capacity_ttl=0).start() == "http://old:1"
    assert new.calls.count("Capacity") == n_new
    assert old.calls.count("Capacity") == n_old + 1


@run
async def test_a_node_whose_stream_is_down_is_asked():
    a, b = FakeNode("a"), FakeNode("b", memory_free=4 * GIB)
    a.push = b.push = True
    await pushing(a, b)
    s = spawner([a, b], user="second")
    n = a.calls.count("Capacity"), b.calls.count("Capacity")
    # a's stream ends and cannot come back.
    a.fail["Watch"] = (grpc.StatusCode.UNAVAILABLE, "watch down")
    a.events.put_nowait(None)
    await wait_until("a's stream lost", lambda: not s._node("a").watching)
    assert s._node("a").pushed() is None
    assert await s.start() == "http://a:1"
    assert a.calls.count("Capacity") == n[0] + 1, "the node without a stream was asked"
    assert b.calls.count("Capacity") == n[1], "the node that pushes was not"


@run
async def test_spawns_placed_count_until_a_pushed_answer_shows_them():
    a, b = FakeNode("a"), FakeNode("b")
    a.push = b.push = True
    await pushing(a, b)
    # The nodes' pushed answers stay as they are (no event after a Start): without counting
    # its own placements, the hub would put every spawn on the same node.
    a.auto_push = b.auto_push = False
    placed = [await spawner([a, b], user=f"u{i}").start() for i in range(4)]
    assert sorted(placed) == ["http://a:1", "http://a:1", "http://b:1", "http://b:1"], placed
    node_a = spawner([a, b])._node("a")
    assert len(node_a.unreflected()) == 2
    # A pushed answer that does not follow a status of the spawn does not clear it ...
    a.push_capacity()
    await wait_until("the answer", lambda: a.events.empty())
    assert len(node_a.unreflected()) == 2
    # ... one after the node showed the spawn does.
    for st in list(a.servers.values()):
        a.events.put_nowait(pb.WatchEvent(kind=pb.WatchEvent.STARTED, status=st))
    a.push_capacity()
    await wait_until("the placements shown", lambda: not node_a.unreflected())


@run
async def test_before_a_503_every_node_is_asked_afresh():
    a = FakeNode("a", max_servers=2)
    a.push = True
    await pushing(a, FakeNode("b", draining=True))
    node_a = spawner([a])._node("a")
    # a pushes that it is full; then room comes back without a push (as an older berthd's
    # config reload would): the spawn asks Capacity before saying no.
    a.max_servers = 1
    a.push_capacity()
    await wait_until("a full", lambda: node_a.pushed().max_servers == 1)
    a.max_servers = 2
    n = a.calls.count("Capacity")
    assert await spawner([a], user="second").start() == "http://a:1"
    assert a.calls.count("Capacity") == n + 1


@run
async def test_push_off_asks_capacity_and_does_not_ask_for_pushes():
    a = FakeNode("a")
    a.push = True
    a.watch = True
    (a,) = await up(a)
    s = spawner([a], capacity_push=False, capacity_ttl=0)
    await s.start()
    await wait_until("the watch", lambda: s._node("a").watching)
    n = a.calls.count("Capacity")
    await spawner([a], user="second", capacity_push=False, capacity_ttl=0).start()
    assert a.calls.count("Capacity") == n + 1
    assert not any(r.capacity for r in a.watch_requests)
    with pytest.raises(SpawnException):
        a.fail["Start"] = (grpc.StatusCode.RESOURCE_EXHAUSTED, "full")
        await spawner([a], user="third", capacity_push=False, capacity_ttl=0).start()


@run
async def test_a_node_known_unreachable_is_not_asked_at_every_spawn():
    a, b = FakeNode("a"), FakeNode("b", memory_free=4 * GIB)
    a.push = b.push = True
    await pushing(a, b)
    s = spawner([a, b], user="second")
    node_a = s._node("a")
    # a stops answering: its stream ends and every call fails.
    for m in ("Watch", "Capacity", "List", "Start"):
        a.fail[m] = (grpc.StatusCode.UNAVAILABLE, "gone")
    a.events.put_nowait(None)
    await wait_until("a's stream lost", lambda: not node_a.watching and node_a.unreachable_for() > 0)
    node_a._first_failure -= capcache.UNREACHABLE_SKIP
    n = a.calls.count("Capacity") + a.calls.count("List")
    assert await s.start() == "http://b:1"
    assert await spawner([a, b], user="third").start() == "http://b:1"
    assert a.calls.count("Capacity") + a.calls.count("List") == n, "no call to a node known gone"
