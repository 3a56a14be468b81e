"""Prepull at hub start-up, against fake nodes (real gRPC on loopback)."""

import asyncio

import grpc
from fakes import FakeNode
from traitlets.config import Config

from berthspawner import nodes as nodes_mod
from berthspawner.prepull import configured_images, prepull_all, prepull_at_start


def test_the_configured_images_are_prepulled_unless_a_list_is_given():
    assert configured_images("a:1", ["a:1", "b:2"]) == ["a:1", "b:2"]
    assert configured_images("a:1", {"small": "a:1", "big": "c:3"}) == ["a:1", "c:3"]
    assert configured_images("a:1", [], ["x:9"]) == ["x:9"]


def test_every_node_pulls_and_a_node_that_fails_is_reported_not_fatal():
    async def body():
        a, b = FakeNode("a"), FakeNode("b")
        for n in (a, b):
            await n.serve()
        b.fail["Prepull"] = (grpc.StatusCode.PERMISSION_DENIED, "image not allowed", "POLICY_DENIED")
        try:
            cfgs = [{"name": n.name, "address": n.address} for n in (a, b)]
            got = await prepull_all(cfgs, ["img:1", "img:missing"])
            assert got["a"] == {"img:1": "", "img:missing": "cannot pull image 'img:missing'"}
            assert got["b"] == {"img:1": "image not allowed", "img:missing": "image not allowed"}
            assert a.images == ["img:1"]
        finally:
            await nodes_mod.close_nodes()
            for n in (a, b):
                await n.close()

    asyncio.run(body())


def test_prepull_at_start_runs_in_the_background_of_the_hubs_loop():
    c = Config()
    assert prepull_at_start(c) is None, "nothing configured, nothing to do"

    async def body():
        a = FakeNode("a")
        await a.serve()
        try:
            c.BerthSpawner.nodes = [{"name": "a", "address": a.address}]
            c.BerthSpawner.image = "img:1"
            task = prepull_at_start(c)
            assert task is not None and not task.done(), "the hub does not wait for it"
            assert await task == {"a": {"img:1": ""}}
        finally:
            await nodes_mod.close_nodes()
            await a.close()

    asyncio.run(body())
    assert prepull_at_start(c) is None, "no running loop: a subcommand that only reads the config"
