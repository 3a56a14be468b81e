"""Fewer RPCs per spawn: a node's Capacity answer and its servers are taken from what its Watch
stream already told this hub, instead of asking every node at every spawn.

A node whose Watch stream is up and pushes its capacity (berthd with "watch-capacity") is
never asked: its newest pushed answer is the answer, kept current by the node itself. For the
other nodes (an older berthd, or the stream down), a Capacity answer is reused while the node's Watch stream is up and has carried no event since
the answer (any server starting, stopping or dying on the node changes its capacity, and shows
on Watch), and for at most `ttl` seconds (what Watch does not carry, such as a drain or a
config reload, is picked up by then; a node that refuses a Start hands the spawn on anyway).
Concurrent spawns that find no usable answer share one Capacity call per node.
"""

import asyncio
import dataclasses
import time

from . import placement
from .nodes import State


class CapacityCache:
    """Per node: (answer, the node's Watch generation then, when asked), and the call in flight."""

    def __init__(self):
        self._answers = {}
        self._asking = {}

    def forget(self, node):
        """The node's answer is stale (this hub just started or failed a server there)."""
        self._answers.pop(node, None)

    async def get(self, node, ask, ttl, pushed=True):
        """The node's Candidate: its pushed capacity (with `pushed`), or an answer reused when
        still vouched for, else `await ask(node)` (shared by concurrent callers). A copy, as the
        caller writes its in-flight counts into it."""
        c = node.pushed() if pushed else None
        if c is not None:
            return placement.from_capacity(node.name, c, pushed=True)
        if ttl > 0 and node.watching:
            kept = self._answers.get(node)
            if kept and kept[1] == node.generation and time.monotonic() - kept[2] < ttl:
                return dataclasses.replace(kept[0])
        pending = self._asking.get(node)
        if pending is None:
            generation = node.generation
            pending = asyncio.ensure_future(ask(node))
            self._asking[node] = pending
            try:
                answer = await pending
            finally:
                self._asking.pop(node, None)
            # Only a full answer is kept; an unreachable node is asked again next time.
            if not answer.error and answer.known:
                self._answers[node] = (answer, generation, time.monotonic())
            return dataclasses.replace(answer)
        return dataclasses.replace(await asyncio.shield(pending))


CACHE = CapacityCache()


# A node that has not answered for this long (its Watch stream down and failing) is not asked
# at each spawn: it would fail again, at one RPC and one warning per spawn.
UNREACHABLE_SKIP = 5.0


def gone(node):
    """Whether the node is known unreachable (see UNREACHABLE_SKIP)."""
    return not node.watching and node.unreachable_for() > UNREACHABLE_SKIP


def live_servers_seen(node, user, server):
    """The node's live servers of this key as its Watch stream shows them, or None when the node
    is not watched (then only List can tell). A node known unreachable shows none: List would
    fail, and a server there could not be stopped anyway."""
    if gone(node):
        return []
    if not node.watching:
        return None
    st = node.statuses.get((user, server))
    return [st] if st is not None and st.state in (State.RUNNING, State.STARTING) else []
