"""Placement logic, with made-up Capacity answers (no nodes needed)."""

from berthspawner.placement import Candidate, Demand, rank

GIB = 1 << 30


def nodes():
    return [
        Candidate(name="a", memory_free=8 * GIB, cpu_free=4, running=2),
        Candidate(name="b", memory_free=16 * GIB, cpu_free=2, running=5),
        Candidate(name="c", memory_free=2 * GIB, cpu_free=8, running=1),
    ]


def test_spread_prefers_free_memory_and_pack_the_opposite():
    order, reasons = rank(nodes(), Demand(memory=GIB))
    assert [c.name for c in order] == ["b", "a", "c"]
    assert reasons == []
    order, _ = rank(nodes(), Demand(memory=GIB), "pack")
    assert [c.name for c in order] == ["c", "a", "b"]


def test_nodes_that_cannot_take_it_are_skipped_with_a_reason():
    cands = nodes() + [
        Candidate(name="down", error="UNAVAILABLE"),
        Candidate(name="drain", draining=True, memory_free=64 * GIB, cpu_free=64),
        Candidate(name="full", max_servers=3, running=3, memory_free=64 * GIB, cpu_free=64),
        Candidate(name="noimg", memory_free=64 * GIB, cpu_free=64, images=["other:1"]),
    ]
    order, reasons = rank(cands, Demand(memory=4 * GIB, cpu=3, image="img:1"))
    # Only a has both 4 GiB and 3 cores free (and images are unknown for it, so not refused).
    assert [c.name for c in order] == ["a"]
    text = "; ".join(reasons)
    for needle in ["down: unreachable", "drain: draining", "full: full", "noimg: image", "b: not enough cpu", "c: not enough memory"]:
        assert needle in text, (needle, text)


def test_a_callable_policy_orders_the_fitting_nodes():
    order, _ = rank(nodes(), Demand(), lambda fits, demand: sorted(fits, key=lambda c: c.name, reverse=True))
    assert [c.name for c in order] == ["c", "b", "a"]
