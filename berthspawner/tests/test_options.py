"""Container options under DockerSpawner's names, typed, and refused when berth has no field."""

import asyncio

import pytest
from fakes import spawner
from traitlets import TraitError
from traitlets.config import Config


def options(s):
    return asyncio.run(s.container_options())


def test_dockerspawner_names_become_typed_options():
    s = spawner(
        [],
        network_name="lab-net",
        post_start_cmd="sh -c 'pip list > /tmp/pkgs'",
        extra_host_config={
            "shm_size": "1g",
            "pids_limit": 512,
            "extra_hosts": {"db": "10.0.0.5"},
            "dns": ["10.0.0.53"],
            "read_only": True,
            "tmpfs": {"/tmp": ""},
            "ulimits": [{"Name": "nofile", "Soft": 1024, "Hard": 4096}],
        },
        extra_create_kwargs={"user": "1000:100", "working_dir": "/home/jovyan", "labels": {"team": "x"}},
    )
    o, labels = options(s)
    assert o.network_name == "lab-net"
    assert list(o.post_start_cmd) == ["sh", "-c", "pip list > /tmp/pkgs"]
    assert (o.shm_size_bytes, o.pids_limit, o.user, o.working_dir) == (1 << 30, 512, "1000:100", "/home/jovyan")
    assert list(o.extra_hosts) == ["db:10.0.0.5"] and list(o.dns) == ["10.0.0.53"]
    assert o.read_only_rootfs and list(o.tmpfs) == ["/tmp"]
    assert [(u.name, u.soft, u.hard) for u in o.ulimits] == [("nofile", 1024, 4096)]
    assert labels == {"team": "x"}


def test_extra_container_options_win_and_may_be_a_per_spawn_callable():
    s = spawner(
        [],
        extra_host_config={"shm_size": "1g"},
        extra_container_options=lambda sp: {"shm_size": "2G", "group_add": ["users"]},
    )
    o, _ = options(s)
    assert o.shm_size_bytes == 2 << 30 and list(o.group_add) == ["users"]
    s = spawner([], network_name="bridge")
    o, _ = options(s)
    assert o.network_name == "", "DockerSpawner's default network is Docker's default"


@pytest.mark.parametrize(
    "trait,value,named",
    [
        ("extra_host_config", {"privileged": True}, "'privileged' not supported"),
        ("extra_host_config", {"binds": []}, "'binds' not supported"),
        ("extra_create_kwargs", {"entrypoint": "x"}, "'entrypoint' not supported"),
        ("extra_container_options", {"shm": 1}, "'shm' not supported"),
        ("extra_container_options", {"shm_size": "lots"}, "shm_size"),
    ],
)
def test_a_key_without_a_typed_field_is_refused_naming_it(trait, value, named):
    with pytest.raises(TraitError) as e:
        spawner([], **{trait: value})
    assert named in str(e.value)
    assert "no raw Docker options" in str(e.value) or "size" in str(e.value)


def test_a_dockerspawner_config_section_applies_and_berthspawner_wins():
    c = Config()
    c.DockerSpawner.image = "quay.io/jupyter/base-notebook:2025"
    c.DockerSpawner.network_name = "lab-net"
    c.DockerSpawner.remove = True
    c.BerthSpawner.remove = False
    s = spawner([], config=c)
    assert s.image == "quay.io/jupyter/base-notebook:2025"
    assert s.network_name == "lab-net"
    assert s.remove is False


@pytest.mark.parametrize(
    "host_config,create_kwargs,expected",
    [
        ({"mem_limit": "2G"}, {}, {"mem_limit": 2 << 30}),
        ({"memory": 1 << 30, "mem_reservation": "512M"}, {}, {"mem_limit": 1 << 30, "mem_guarantee": 512 << 20}),
        ({"nano_cpus": 1_500_000_000}, {}, {"cpu_limit": 1.5}),
        ({"cpu_quota": 50_000}, {}, {"cpu_limit": 0.5}),
        ({"cpu_quota": 200_000, "cpu_period": 50_000}, {}, {"cpu_limit": 4.0}),
        ({"device_requests": [{"Driver": "nvidia", "Count": 2, "Capabilities": [["gpu"]]}]}, {}, {"gpus": 2}),
        ({"device_requests": [{"count": 1}]}, {}, {"gpus": 1}),
        ({}, {"command": "jupyterhub-singleuser --debug"}, {"cmd": ["jupyterhub-singleuser", "--debug"]}),
        ({}, {"command": ["start.sh", "lab"]}, {"cmd": ["start.sh", "lab"]}),
    ],
)
def test_docker_keys_that_mean_a_spawner_option_are_read_as_it(host_config, create_kwargs, expected):
    from berthspawner import options as options_mod

    assert options_mod.trait_values(host_config, create_kwargs) == expected
    # Accepted at config load, and not typed container options.
    s = spawner([], extra_host_config=host_config, extra_create_kwargs=create_kwargs)
    o, _ = options(s)
    assert o == type(o)()


@pytest.mark.parametrize(
    "host_config,named",
    [
        ({"device_requests": [{"Count": -1, "Capabilities": [["gpu"]]}]}, "count -1"),
        ({"device_requests": [{"DeviceIDs": ["0"], "Capabilities": [["gpu"]]}]}, "device ids cannot be chosen"),
        ({"device_requests": [{"Count": 1, "Capabilities": [["compute"]]}]}, "are not GPUs"),
        ({"cpu_period": 100_000}, "cpu_period without cpu_quota"),
        ({"mem_limit": "lots"}, "mem_limit: 'lots' is not a size"),
        ({"environment": {"A": "1"}}, "'environment' is BerthSpawner.environment"),
        ({"binds": ["/srv:/srv"]}, "'binds' is BerthSpawner.volumes"),
    ],
)
def test_docker_keys_berth_cannot_read_are_refused_at_config_load_naming_why(host_config, named):
    with pytest.raises(TraitError) as e:
        spawner([], extra_host_config=host_config)
    assert named in str(e.value), str(e.value)
