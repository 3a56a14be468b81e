"""DockerSpawner's settings mean under berth what they mean there: callable limits, the
deprecated image_whitelist, multi-value form fields, the user's image as `spawner.image`, and
DockerSpawner's public methods (check_allowed, get_object)."""

import logging
import re
import types

import pytest
from fakes import GIB, FakeNode
from test_spawner import run, up
from traitlets import TraitError
from traitlets.config import Config

from berthspawner import BerthSpawner
from berthspawner._compat import SpawnException


def made(config, user="alice"):
    return BerthSpawner(config=config, user=types.SimpleNamespace(name=user, url=f"/user/{user}/"))


@pytest.mark.parametrize(
    "mem_limit, expected",
    [
        ("1G", GIB),
        (1_000_000, 1_000_000),
        (None, None),
        (lambda s: None, None),
        (lambda s: "2G", 2 * GIB),
        (lambda s: 1_000_000, 1_000_000),
    ],
)
def test_mem_limit_takes_a_callable_of_the_spawner_evaluated_to_bytes(mem_limit, expected):
    assert BerthSpawner(mem_limit=mem_limit).mem_limit == expected


@pytest.mark.parametrize(
    "cpu_limit, expected", [(1, 1), (None, None), (1.5, 1.5), (lambda s: None, None), (lambda s: 2, 2)]
)
def test_cpu_limit_takes_a_callable_of_the_spawner(cpu_limit, expected):
    assert BerthSpawner(cpu_limit=cpu_limit).cpu_limit == expected


def test_a_callable_limit_sees_the_user_and_a_failing_one_fails_only_its_own_spawner():
    c = Config()
    c.DockerSpawner.mem_limit = lambda s: {"alice": "4G", "bob": "1G"}[s.user.name]
    c.DockerSpawner.cpu_limit = lambda s: {"alice": 2.5}.get(s.user.name, 1)
    a = made(c, "alice")
    assert (a.mem_limit, a.cpu_limit) == (4 * GIB, 2.5)
    with pytest.raises(
        TraitError, match=r"BerthSpawner.mem_limit: the callable raised KeyError\('carol'\) for user 'carol'"
    ):
        made(c, "carol")
    # The same config still makes the next user's spawner.
    b = made(c, "bob")
    assert (b.mem_limit, b.cpu_limit) == (GIB, 1)
    c.DockerSpawner.mem_limit = lambda s: "lots"
    with pytest.raises(TraitError, match=r"BerthSpawner.mem_limit: the callable returned 'lots' for user 'alice'"):
        made(c, "alice")
    c.DockerSpawner.mem_limit = "1G"
    assert made(c, "alice").mem_limit == GIB


def test_image_whitelist_is_allowed_images_with_dockerspawners_warning(caplog):
    c = Config()
    c.DockerSpawner.image_whitelist = {"1.0": "jupyterhub/singleuser:1.0"}
    log = logging.getLogger("berth-test-whitelist")
    s = BerthSpawner(config=c, log=log)
    assert caplog.record_tuples == [
        (
            log.name,
            logging.WARNING,
            "DockerSpawner.image_whitelist is deprecated in DockerSpawner 12.0, use DockerSpawner.allowed_images instead",
        )
    ]
    assert s.allowed_images == {"1.0": "jupyterhub/singleuser:1.0"}
    caplog.clear()
    c.DockerSpawner.allowed_images = {"1.0": "jupyterhub/singleuser:1.0"}
    BerthSpawner(config=c, log=log)
    assert caplog.record_tuples == [], "no warning when both names say the same"


def test_the_older_deprecated_names_set_remove_and_image():
    s = BerthSpawner(image="base:1")
    s.remove_containers = True
    s.container_image = "other:2"
    assert (s.remove, s.image) == (True, "other:2")


def test_options_from_form_takes_the_first_value_of_a_field_sent_twice():
    s = BerthSpawner()
    assert s.options_from_form({"image": ["1.0", "1.1"]}) == {"image": "1.0"}
    c = Config()
    c.DockerSpawner.options_from_form = lambda formdata: {"ok": True}
    assert BerthSpawner(config=c).options_from_form({"image": ["1.0"]}) == {"ok": True}


@run
async def test_check_allowed_resolves_a_choice_and_refuses_others_and_the_old_name_still_works():
    s = BerthSpawner(allowed_images={"1.0": "jupyterhub/singleuser:1.0"})
    assert await s.check_allowed("1.0") == "jupyterhub/singleuser:1.0"
    with pytest.raises(SpawnException) as e:
        await s.check_allowed("2.0")
    assert e.value.status_code == 400
    with pytest.deprecated_call():
        assert await s.check_image_whitelist("1.0") == "jupyterhub/singleuser:1.0"


@run
async def test_the_users_image_is_spawner_image_for_that_start_and_get_object_shows_it():
    from fakes import spawner

    (a,) = await up(FakeNode("a"))
    s = spawner([a], image="base:1", allowed_images={"big": "big:2", "base": "base:1"})
    assert await s.get_object() is None
    s.user_options = {"image": "big"}
    await s.start()
    assert s.image == "big:2", "hooks, the admin API and the logs see the user's image"
    assert a.started.image == "big:2"
    assert (await s.get_object())["Config"]["Image"] == "big:2"
    assert s.user_options == {"image": "big"}
    await s.stop()
    s.clear_state()
    s.user_options = {}
    await s.start()
    assert (s.image, a.started.image) == ("base:1", "base:1"), "the next start without a pick has the default"


def test_raw_username_goes_into_a_path_as_is_and_into_a_volume_name_only_when_docker_can_hold_it():
    from berthspawner import templates

    assert templates.source("/home/{raw_username}", user="alice@example.org") == "/home/alice@example.org"
    assert templates.target("/data/{raw_username}", user="alice@example.org") == "/data/alice@example.org"
    assert templates.source("home-{raw_username}", user="Alice.B") == "home-Alice.B"
    with pytest.raises(templates.TemplateError, match="characters a Docker volume name cannot hold"):
        templates.source("home-{raw_username}", user="alice@example.org")
    for bad in ("..", "a/b"):
        with pytest.raises(templates.TemplateError, match="not one path component"):
            templates.source("/home/{raw_username}", user=bad)


@pytest.mark.parametrize(
    "target, refused",
    [
        ({"bind": "/data", "mode": "z"}, "mode 'z' is not supported: SELinux"),
        ({"bind": "/data", "mode": "ro,Z"}, "mode 'Z' is not supported: SELinux"),
        (
            {"bind": "/data", "mode": "rslave"},
            "mode 'rslave' is not supported: a host path is mounted through a private pin",
        ),
        (
            {"bind": "/data", "propagation": "rshared"},
            "mode 'rshared' is not supported: .* berth's mounts are rprivate",
        ),
        ({"bind": "/data", "ro": "yes"}, "ro must be True or False"),
        ({"bind": "/data", "mode": "nocopy"}, "mode 'nocopy' is not supported: berth's nodes always copy"),
        ({"mode": "ro"}, "has no bind"),
    ],
)
def test_volume_modes_berth_cannot_honour_are_refused_by_name_at_config_load(target, refused):
    c = Config()
    c.DockerSpawner.volumes = {"data-{username}": target}
    with pytest.raises(
        TraitError, match=r"BerthSpawner.volumes\['data-\{username\}'\]: " + refused.replace("(", r"\(")
    ):
        made(c)
    c = Config()
    c.DockerSpawner.read_only_volumes = {"/srv/shared": target}
    with pytest.raises(TraitError, match=r"BerthSpawner.read_only_volumes"):
        made(c)


def test_volume_modes_ro_and_rw_are_the_read_only_flag():
    from berthspawner import request

    s = BerthSpawner(
        volumes={
            "a": {"bind": "/a", "mode": "ro"},
            "b": {"bind": "/b", "mode": "rw"},
            "c": "/c",
            "d": {"bind": "/d", "ro": True},
            "e": {"bind": "/e", "mode": "ro,rprivate"},
            "f": {"bind": "/f", "propagation": "private"},
        }
    )
    assert [(v.source, v.target, v.read_only) for v in request.volumes(s.volumes)] == [
        ("a", "/a", True),
        ("b", "/b", False),
        ("c", "/c", False),
        ("d", "/d", True),
        ("e", "/e", True),
        ("f", "/f", False),
    ], "docker-py's ro key; private propagation is what berth's mounts have"


def test_spawn_exception_carries_status_reason_and_the_users_message_on_every_hub():
    e = SpawnException("No node has room", reason="capacity", status_code=503, log_message="detail for the log")
    assert (e.status_code, e.reason) == (503, "capacity")
    assert "detail for the log" in str(e)
    # What a hub before 6 shows (pages, progress and the REST API's message).
    assert getattr(e, "jupyterhub_message", e.message) == "No node has room"
    assert getattr(e, "jupyterhub_message", None) is None or e.log_message == "No node has room"


def test_a_docker_key_berth_has_under_another_option_is_refused_naming_that_option():
    for trait, value, says in [
        (
            "extra_host_config",
            {"binds": ["/srv:/srv"], "cpu_shares": 512},
            "'binds' is BerthSpawner.volumes; 'cpu_shares' is BerthSpawner.cpu_guarantee",
        ),
        ("extra_create_kwargs", {"environment": {"A": "1"}}, "'environment' is BerthSpawner.environment"),
    ]:
        c = Config()
        c.DockerSpawner[trait] = value
        with pytest.raises(TraitError, match=f"BerthSpawner.{trait}: .* not supported " + re.escape(f"({says})")):
            made(c)


def test_docker_keys_berth_reads_as_its_own_options_load_from_a_dockerspawner_config():
    c = Config()
    c.DockerSpawner.extra_host_config = {"mem_limit": "1G", "cpu_quota": 50000, "device_requests": []}
    c.DockerSpawner.extra_create_kwargs = {"command": "start.sh"}
    s = made(c)
    assert s.extra_host_config["mem_limit"] == "1G" and s.extra_create_kwargs == {"command": "start.sh"}
