"""Building what a spawn asks of a node, from the spawner's configuration."""

import pytest
from fakes import spawner
from berthspawner._compat import SpawnException

from berthspawner import request


def test_the_user_may_choose_only_an_allowed_image():
    s = spawner([], image="base:1", allowed_images={"big": "big:2"})
    assert request.image(s) == "base:1"
    s.user_options = {"image": "big"}
    assert request.image(s) == "big:2"
    s.user_options = {"image": "evil:latest"}
    with pytest.raises(SpawnException) as e:
        request.image(s)
    assert e.value.status_code == 400


def test_pull_policy_is_dockerspawners_in_any_case():
    assert request.start_request(spawner([]), "i:1").pull_policy == request.pb.PULL_POLICY_IFNOTPRESENT
    for given, want in [
        ("Always", "PULL_POLICY_ALWAYS"),
        ("never", "PULL_POLICY_NEVER"),
        ("skip", "PULL_POLICY_NEVER"),
    ]:
        s = spawner([], pull_policy=given)
        assert request.start_request(s, "i:1").pull_policy == getattr(request.pb, want)
    with pytest.raises(Exception, match="pull_policy"):
        spawner([], pull_policy="sometimes")


def test_start_request_carries_resources_volumes_and_the_ready_path():
    s = spawner(
        [],
        name="gpu",
        mem_limit="2G",
        mem_guarantee="1G",
        cpu_limit=2.0,
        volumes={"home-{user}": "/home/jovyan", "data": {"bind": "/data", "mode": "ro"}},
    )
    s.spawn_id = "sp1"
    r = request.start_request(s, "img:1")
    assert (r.key.user, r.key.server_name, r.spawn_id, r.image, r.port) == ("alice", "gpu", "sp1", "img:1", 8888)
    assert r.resources.mem_limit_bytes == 2 << 30 and r.resources.mem_guarantee_bytes == 1 << 30
    assert r.resources.cpu_limit == 2.0
    assert [(v.source, v.target, v.read_only) for v in r.volumes] == [
        ("home-{user}", "/home/jovyan", False),
        ("data", "/data", True),
    ]
    assert r.ready_path == "/user/alice/gpu/api"
    assert r.env["JUPYTERHUB_API_TOKEN"] == "secret-token"
    assert request.demand(s, "img:1").memory == 1 << 30, "the guarantee, where one is set"


def test_gpus_reach_the_start_request_and_the_demand():
    s = spawner([], gpus=2, gpu_model="FakeGPU")
    s.spawn_id = "sp1"
    r = request.start_request(s, "img:1")
    assert (r.resources.gpus, r.resources.gpu_class, r.resources.gpu_model) == (2, "", "FakeGPU")
    d = request.demand(s, "img:1")
    assert (d.gpus, d.device_class, d.gpu_model) == (2, "gpu", "FakeGPU")
    assert request.start_request(spawner([]), "img:1").resources.gpus == 0


def test_the_image_cmd_is_used_unless_cmd_is_set_and_a_kept_server_is_resumable():
    s = spawner([])
    s.spawn_id = "sp1"
    r = request.start_request(s, "img:1")
    assert list(r.cmd) == [], "no cmd: the node runs the image's own CMD, as DockerSpawner does"
    assert r.resumable, "remove=False (the default) keeps the container to be resumed"
    s = spawner([], cmd=["start-notebook.sh"], remove=True)
    s.spawn_id = "sp2"
    r = request.start_request(s, "img:1")
    assert list(r.cmd) == ["start-notebook.sh"]
    assert not r.resumable
