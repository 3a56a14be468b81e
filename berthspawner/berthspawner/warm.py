"""Warm servers before a class: each node keeps N servers of an image booted ahead (berthd's
Warm), so that when a class clicks Start at once every student gets one in about a second.

From jupyterhub_config.py, after the BerthSpawner settings (at hub start-up, in the background):

    from berthspawner.warm import warm_at_start
    warm_at_start(c, {"quay.io/jupyter/scipy-notebook:2024-12-09": 10})

or before a class, from a shell on the hub with its config:

    python -m berthspawner.warm -f /etc/jupyterhub/jupyterhub_config.py IMAGE=N [IMAGE=N ...]

Each node then keeps N waiting servers of the image (0 = none), kept across the node's
restarts; the waiting servers count against its capacity. A node that is down or refuses (the
image not allowed by its policy) is logged and left alone. berthspawner then prefers a node with
a waiting server of the image.
"""

import argparse
import asyncio
import logging
import sys

import grpc

from ._proto.berth.v1 import spawner_pb2 as pb
from .nodes import node_for

log = logging.getLogger("berthspawner")

CALL_TIMEOUT = 30.0


def parse_sizes(items):
    """{image: size} from ["image=N", ...]; ValueError naming the item otherwise."""
    sizes = {}
    for item in items:
        image, sep, n = item.rpartition("=")
        if not sep or not image or not n.isdigit():
            raise ValueError(f"{item!r}: expected IMAGE=N")
        sizes[image] = int(n)
    return sizes


async def warm_node(node, sizes, port=8888, memory_bytes=0):
    """Asks `node` to keep `sizes` ({image: N}) warm: {image: the pool as the node answers it,
    or why not (a string)}."""
    out = {}
    for image, size in sizes.items():
        req = pb.WarmRequest(image=image, size=size, port=port, memory_bytes=memory_bytes)
        try:
            out[image] = await node.call("Warm", req, CALL_TIMEOUT)
            log.info("berth: %s keeps %d servers of %s warm", node.name, size, image)
        except grpc.aio.AioRpcError as e:
            out[image] = e.details() or e.code().name
            log.warning("berth: warm %s on %s: %s", image, node.name, out[image])
    return out


async def warm_all(node_configs, sizes, port=8888, memory_bytes=0):
    """Asks every node at once: {node name: warm_node's answer}."""
    nodes = [node_for(n) for n in node_configs]
    results = await asyncio.gather(*(warm_node(n, sizes, port, memory_bytes) for n in nodes))
    return {n.name: r for n, r in zip(nodes, results)}


def warm_at_start(c, sizes, memory_bytes=0):
    """Asks every node of `c.BerthSpawner.nodes` to keep `sizes` ({image: N}) warm, in the
    background of the hub's start-up. Returns the task, or None with nothing to do or no running
    loop (a `jupyterhub` subcommand that only reads the configuration)."""
    cfg = c.BerthSpawner
    nodes = list(cfg.get("nodes", []))
    if not sizes or not nodes:
        return None
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    port = int(cfg.get("container_port", 8888) or 8888)
    return loop.create_task(warm_all(nodes, sizes, port, memory_bytes))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m berthspawner.warm", description=__doc__.split("\n\n")[0])
    ap.add_argument("-f", "--config", required=True, help="the hub's jupyterhub_config.py (its BerthSpawner.nodes)")
    ap.add_argument("--memory-bytes", type=int, default=0, help="what each waiting server holds of a node's memory")
    ap.add_argument("sizes", nargs="+", metavar="IMAGE=N")
    args = ap.parse_args(argv)
    try:
        sizes = parse_sizes(args.sizes)
    except ValueError as e:
        ap.error(str(e))
    from traitlets.config import PyFileConfigLoader

    c = PyFileConfigLoader(args.config).load_config()
    nodes = list(c.BerthSpawner.get("nodes", []))
    if not nodes:
        ap.error(f"{args.config} names no BerthSpawner.nodes")
    port = int(c.BerthSpawner.get("container_port", 8888) or 8888)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = asyncio.run(warm_all(nodes, sizes, port, args.memory_bytes))
    failed = 0
    for node, answers in results.items():
        for image, answer in answers.items():
            if isinstance(answer, str):
                failed += 1
                print(f"{node}: {image}: {answer}")
            else:
                print(f"{node}: {image}: {answer.ready} of {answer.size} ready")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
