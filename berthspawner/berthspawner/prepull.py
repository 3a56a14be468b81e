"""Warming the nodes: the images of this hub pulled onto every node at once (berthd's Prepull),
so the first spawns of a class do not wait for a pull.

At hub start-up, off by default: in jupyterhub_config.py, after the BerthSpawner settings,

    from berthspawner.prepull import prepull_at_start
    prepull_at_start(c)

pulls `c.BerthSpawner.prepull_images` (default: `image` and the images of `allowed_images`) onto
every node of `c.BerthSpawner.nodes`, in the background: the hub starts at once, each node logs
its progress and outcome, and a node that is down or refuses is logged and left alone.
"""

import asyncio
import logging
import time

import grpc

from ._proto.berth.v1 import spawner_pb2 as pb
from .nodes import node_for

log = logging.getLogger("berthspawner")

# A progress line per node and image at most this often.
LOG_EVERY = 10.0
# The longest a node's whole prepull may take.
TIMEOUT = 3600.0


def configured_images(image, allowed_images, prepull_images=()):
    """What to prepull: `prepull_images`, else `image` and the images `allowed_images` offers."""
    if prepull_images:
        return list(dict.fromkeys(prepull_images))
    offered = allowed_images.values() if isinstance(allowed_images, dict) else allowed_images
    return list(dict.fromkeys([i for i in [image, *offered] if i]))


async def prepull_node(node, images, timeout=TIMEOUT):
    """Pulls `images` onto `node`: {image: "" when it is there, else why not}."""
    outcome = {i: "no answer" for i in images}
    shown = 0.0
    try:
        stream = node.stub().Prepull(pb.PrepullRequest(images=images), metadata=node.metadata(), timeout=timeout)
        async for ev in stream:
            if ev.done:
                outcome[ev.image] = ""
                log.info("berth: prepull on %s: %s is there", node.name, ev.image)
            elif ev.error:
                outcome[ev.image] = ev.error
                log.warning("berth: prepull on %s: %s", node.name, ev.error)
            elif ev.HasField("progress") and time.monotonic() - shown > LOG_EVERY:
                shown = time.monotonic()
                log.info("berth: prepull on %s: %s", node.name, ev.progress.message)
    except grpc.aio.AioRpcError as e:
        why = e.details() or e.code().name
        log.warning("berth: prepull on %s failed: %s", node.name, why)
        outcome = {i: why if v == "no answer" else v for i, v in outcome.items()}
    return outcome


async def prepull_all(node_configs, images):
    """Pulls `images` onto every node at once: {node name: {image: "" or why not}}."""
    nodes = [node_for(n) for n in node_configs]
    results = await asyncio.gather(*(prepull_node(n, images) for n in nodes))
    return {n.name: r for n, r in zip(nodes, results)}


def prepull_at_start(c):
    """Starts pulling this hub's images onto every node in the background (JupyterHub reads its
    configuration file inside its event loop). Returns the task, or None when there is nothing
    to do or no running loop (a `jupyterhub` subcommand that only reads the configuration)."""
    cfg = c.BerthSpawner
    images = configured_images(cfg.get("image", ""), cfg.get("allowed_images", []), cfg.get("prepull_images", []))
    nodes = list(cfg.get("nodes", []))
    if not images or not nodes:
        return None
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    log.info("berth: prepulling %s onto %d nodes", ", ".join(images), len(nodes))
    return loop.create_task(prepull_all(nodes, images))
