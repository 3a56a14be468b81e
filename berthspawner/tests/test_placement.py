"""Placement logic, with made-up Capacity answers (no nodes needed)."""

from berthspawner.placement import Candidate, Demand, normalize_image, rank

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
    ]
    order, reasons = rank(cands, Demand(memory=4 * GIB, cpu=3, image="img:1"))
    # Only a has both 4 GiB and 3 cores free.
    assert [c.name for c in order] == ["a"]
    text = "; ".join(reasons)
    for needle in ["down: unreachable", "drain: draining", "full: full", "b: not enough cpu", "c: not enough memory"]:
        assert needle in text, (needle, text)


def test_nodes_holding_the_image_come_first_and_the_others_are_not_refused():
    cands = [
        Candidate(name="big", memory_free=64 * GIB, cpu_free=64, images=["other:1"]),
        Candidate(name="has", memory_free=4 * GIB, cpu_free=4, images=["ubuntu:latest", "x/y:2"]),
        Candidate(name="unknown", memory_free=32 * GIB, cpu_free=32),
    ]
    for policy in ("spread", "pack"):
        # Docker lists Docker Hub images by their short names; the hub may write either form.
        for image in ("ubuntu", "docker.io/library/ubuntu:latest", "index.docker.io/library/ubuntu"):
            order, reasons = rank(cands, Demand(memory=GIB, image=image), policy)
            assert order[0].name == "has", (policy, image, order)
            assert sorted(c.name for c in order) == ["big", "has", "unknown"] and reasons == []
    order, _ = rank(cands, Demand(memory=GIB, image="ubuntu:22.04"))
    assert [c.name for c in order] == ["big", "unknown", "has"], "no node has it: spread as usual"


def test_image_references_normalise_as_docker_resolves_them():
    cases = {
        "ubuntu": "docker.io/library/ubuntu:latest",
        "ubuntu:22.04": "docker.io/library/ubuntu:22.04",
        "jupyter/base-notebook": "docker.io/jupyter/base-notebook:latest",
        "index.docker.io/x/y:1": "docker.io/x/y:1",
        "quay.io/jupyter/base:2025": "quay.io/jupyter/base:2025",
        "127.0.0.1:5000/x": "127.0.0.1:5000/x:latest",
        "localhost/x:1": "localhost/x:1",
        "x@sha256:ab": "docker.io/library/x@sha256:ab",
        "x:1@sha256:ab": "docker.io/library/x:1@sha256:ab",
    }
    for given, full in cases.items():
        assert normalize_image(given) == full, given


def test_a_callable_policy_orders_the_fitting_nodes():
    order, _ = rank(nodes(), Demand(), lambda fits, demand: sorted(fits, key=lambda c: c.name, reverse=True))
    assert [c.name for c in order] == ["c", "b", "a"]


def gpu_nodes():
    return [
        Candidate(
            name="one",
            memory_free=64 * GIB,
            cpu_free=8,
            devices={"gpu": {"free": 1, "total": 1, "models": ["FakeGPU"]}},
        ),
        Candidate(
            name="two", memory_free=8 * GIB, cpu_free=8, devices={"gpu": {"free": 2, "total": 2, "models": ["FakeGPU"]}}
        ),
        Candidate(name="none", memory_free=64 * GIB, cpu_free=8),
    ]


def test_gpu_demands_skip_nodes_without_enough_free_devices_and_say_why():
    order, reasons = rank(gpu_nodes(), Demand(gpus=2))
    assert [c.name for c in order] == ["two"]
    text = "; ".join(reasons)
    assert "one: not enough gpu devices (2 asked, 1 free)" in text, text
    assert "none: no gpu devices" in text, text
    order, reasons = rank(gpu_nodes(), Demand(gpus=1, gpu_model="h100"))
    assert order == [] and "two: no gpu of model h100" in "; ".join(reasons)


def test_gpu_demands_rank_by_free_devices_and_count_starts_in_flight():
    order, _ = rank(gpu_nodes(), Demand(gpus=1, gpu_model="fakegpu"))
    assert [c.name for c in order] == ["two", "one"], "most free devices first, memory aside"
    order, _ = rank(gpu_nodes(), Demand(gpus=1), "pack")
    assert [c.name for c in order] == ["one", "two"]
    cands = gpu_nodes()
    cands[1].inflight_gpus = 2
    order, _ = rank(cands, Demand(gpus=1))
    assert [c.name for c in order] == ["one", "two"]
    # Without a GPU demand the devices do not matter.
    order, _ = rank(gpu_nodes(), Demand())
    assert [c.name for c in order][0] in ("one", "none")


def test_a_node_with_a_warm_server_of_the_image_comes_first_and_its_member_makes_room():
    warm = {(normalize_image("lab:1"), 8888): (1, GIB)}
    cands = [
        Candidate(name="roomy", memory_free=64 * GIB, cpu_free=64, images=["lab:1"]),
        # Full by count and memory, but one of its servers waits for exactly this start.
        Candidate(name="warm", memory_free=0, cpu_free=4, running=4, max_servers=4, images=["lab:1"], warm=warm),
    ]
    for policy in ("spread", "pack"):
        order, reasons = rank(cands, Demand(memory=GIB, image="lab:1", port=8888), policy)
        assert [c.name for c in order] == ["warm", "roomy"], (policy, reasons)
    # Another port, another image, or every member already taken by this hub's starts: cold.
    for demand in (Demand(memory=GIB, image="lab:1", port=9999), Demand(memory=GIB, image="lab:2", port=8888)):
        order, reasons = rank(cands, demand)
        assert [c.name for c in order] == ["roomy"] and "warm: full" in reasons[0], (demand, reasons)
    cands[1].inflight = 1
    order, _ = rank(cands, Demand(memory=GIB, image="lab:1", port=8888))
    assert [c.name for c in order] == ["roomy"]


def test_warm_sizes_are_parsed_from_image_equals_n():
    from berthspawner.warm import parse_sizes

    assert parse_sizes(["quay.io/jupyter/base:2024=10", "x=0"]) == {"quay.io/jupyter/base:2024": 10, "x": 0}
    for bad in ("x", "x=", "=3", "x=-1", "x=a"):
        try:
            parse_sizes([bad])
        except ValueError as e:
            assert bad in str(e)
        else:
            raise AssertionError(f"{bad} was accepted")
