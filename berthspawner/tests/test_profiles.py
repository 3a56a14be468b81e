"""Profiles, the image picker, node selectors, DockerSpawner's volume template names and the
check of `nodes`: fake nodes over real gRPC, no hub, no Docker."""

import asyncio

import pytest
from fakes import GIB, FakeNode, spawner
from berthspawner._compat import SpawnException
from test_spawner import run, up
from traitlets import TraitError

from berthspawner import nodecheck, profiles, request, templates

PROFILES = [
    {"display_name": "Small", "description": "1 GB, any node", "berth_override": {"mem_limit": "1G"}},
    {
        "display_name": "GPU <A100>",
        "slug": "gpu",
        "description": "for <b>training</b>",
        "berth_override": {
            "image": "gpu-img:1",
            "mem_limit": "4G",
            "mem_guarantee": "2G",
            "cpu_limit": 2.0,
            "cpu_guarantee": 1.0,
            "node_selector": {"gpu": "a100"},
            "stop_grace": 33,
            "volumes": {"scratch-{username}": "/scratch"},
        },
        "profile_options": {
            "size": {
                "display_name": "Size",
                "choices": {
                    "s": {"display_name": "Small", "berth_override": {"cpu_limit": 1.0}},
                    "l": {"display_name": "Large", "default": True, "berth_override": {"cpu_limit": 4.0}},
                },
            }
        },
    },
    {"display_name": "H100", "slug": "h100", "berth_override": {"node_selector": {"gpu": "h100"}}},
]


# ---- the form -------------------------------------------------------------------------------


def test_the_image_picker_lists_the_allowed_images_with_the_configured_one_selected():
    s = spawner([], image="b:2", allowed_images={"Base": "b:1", "Big & <new>": "b:2"})
    html = asyncio.run(s.get_options_form())
    assert 'name="image"' in html
    assert '<option value="Base">Base</option>' in html
    assert '<option value="Big &amp; &lt;new&gt;" selected>Big &amp; &lt;new&gt;</option>' in html
    assert asyncio.run(spawner([], allowed_images=["only:1"]).get_options_form()) == "", "no choice, no form"
    assert spawner([]).options_form == "", "no form at all: the hub spawns at once"


def test_the_profile_form_lists_every_profile_escaped_with_the_default_checked_and_its_options():
    s = spawner([], profile_list=PROFILES)
    html = asyncio.run(s.get_options_form())
    assert html.count('type="radio" name="profile"') == 3
    assert 'value="small" checked>' in html, "the first profile is the default"
    assert "GPU &lt;A100&gt;" in html and "for &lt;b&gt;training&lt;/b&gt;" in html
    assert 'name="profile-option-gpu--size"' in html
    assert '<option value="l" selected>Large</option>' in html
    s.user_options = {"profile": "gpu", "size": "s"}
    html = asyncio.run(s.get_options_form())
    assert 'value="gpu" checked>' in html and 'value="small" checked' not in html, "the last choice"
    assert '<option value="s" selected>Small</option>' in html


def test_a_callable_and_async_profile_list_is_evaluated_with_the_spawner():
    async def per_user(sp):
        await asyncio.sleep(0)
        return PROFILES if sp.user.name == "alice" else PROFILES[:1]

    assert asyncio.run(spawner([], profile_list=per_user).get_options_form()).count('name="profile"') == 3
    assert asyncio.run(spawner([], user="bob", profile_list=per_user).get_options_form()).count('name="profile"') == 1


def test_form_data_becomes_user_options_of_the_chosen_profile_only():
    s = spawner([], profile_list=PROFILES)
    data = {
        "profile": ["gpu"],
        "profile-option-gpu--size": ["s"],
        "profile-option-other--size": ["x"],
        "image": ["Base"],
        "_xsrf": ["token"],
    }
    assert s.run_options_from_form(data) == {"profile": "gpu", "size": "s", "image": "Base"}


def test_an_image_from_the_form_no_longer_raises_a_type_error():
    # JupyterHub hands form data over as lists; `choice in allowed` with a list for a dict of
    # allowed images raised "TypeError: unhashable type: 'list'" before.
    s = spawner([], image="base:1", allowed_images={"big": "big:2"})
    s.user_options = s.run_options_from_form({"image": ["big"]})
    assert request.image(s) == "big:2"
    s.user_options = {"image": ["big"]}  # options_from_form = "passthrough"
    assert request.image(s) == "big:2"
    s.user_options = {"image": ["big", "base"]}
    with pytest.raises(SpawnException) as e:
        request.image(s)
    assert e.value.status_code == 400


def test_allowed_images_may_be_a_callable_or_any_and_a_bad_value_is_refused():
    s = spawner([], allowed_images=lambda sp: [f"{sp.user.name}-img:1"])
    s.user_options = {"image": "alice-img:1"}
    assert request.image(s) == "alice-img:1"
    s = spawner([], allowed_images="*")
    s.user_options = {"image": "any:1"}
    assert request.image(s) == "any:1"
    s = spawner([])
    s.user_options = {"image": "any:1"}
    with pytest.raises(SpawnException, match="not allowed here"):
        request.image(s)
    with pytest.raises(TraitError, match="allowed_images"):
        spawner([], allowed_images="some-image")


# ---- profiles at start ----------------------------------------------------------------------


@run
async def test_the_chosen_profile_sets_image_limits_selector_and_any_option_on_the_start():
    plain, gpu = await up(FakeNode("plain", memory_free=64 * GIB), FakeNode("gpu", labels={"gpu": "a100"}))
    s = spawner([plain, gpu], image="base:1", profile_list=PROFILES, volumes={"home-{username}": "/home/{username}"})
    s.user_options = {"profile": "gpu"}
    assert await s.start() == "http://gpu:1", "the selector beats the node with more memory"
    r = gpu.starts[-1]
    assert r.image == "gpu-img:1"
    assert (r.resources.mem_limit_bytes, r.resources.mem_guarantee_bytes) == (4 * GIB, 2 * GIB)
    assert (r.resources.cpu_limit, r.resources.cpu_guarantee) == (4.0, 1.0), "the option's default choice"
    assert s.stop_grace == 33, "any BerthSpawner option"
    assert sorted((v.source, v.target) for v in r.volumes) == [
        ("home-{user}", "/home/alice"),
        ("scratch-{user}", "/scratch"),
    ], "dicts are merged"


@run
async def test_a_profile_does_not_leak_into_the_next_start_with_another():
    (node,) = await up(FakeNode("n", labels={"gpu": "a100"}))
    s = spawner([node], image="base:1", profile_list=PROFILES)
    s.user_options = {"profile": "gpu", "size": "s"}
    await s.start()
    assert node.starts[-1].resources.cpu_limit == 1.0
    await s.stop()
    s.user_options = {"profile": "small"}
    await s.start()
    r = node.starts[-1]
    assert r.image == "base:1" and r.resources.mem_limit_bytes == GIB and r.resources.cpu_limit == 0
    assert s.node_selector == {} and s.stop_grace == 10 and len(r.volumes) == 0


@run
async def test_a_none_in_a_dict_override_removes_that_entry():
    (node,) = await up(FakeNode("n"))
    s = spawner(
        [node],
        volumes={"home-{user}": "/home/jovyan", "shared": "/shared"},
        profile_list=[{"display_name": "Alone", "berth_override": {"volumes": {"shared": None}}}],
    )
    await s.start()
    assert [v.source for v in node.starts[-1].volumes] == ["home-{user}"]
    assert list(s.volumes) == ["home-{user}"]
    await s.stop()
    s.profile_list = [{"display_name": "All"}]
    await s.start()
    assert [v.source for v in node.starts[-1].volumes] == ["home-{user}", "shared"], "restored"


@run
async def test_a_spawner_made_after_a_hub_restart_stops_its_server_as_the_profile_says():
    (node,) = await up(FakeNode("n"))
    keep = [{"display_name": "Throwaway", "slug": "tmp", "berth_override": {"remove": True, "stop_grace": 3}}]
    first = spawner([node], remove=False, profile_list=keep)
    first.user_options = {"profile": "tmp"}
    await first.start()
    again = spawner([node], remove=False, profile_list=keep)
    again.load_state(first.get_state())
    again.user_options = {"profile": "tmp"}
    assert await again.poll() is None and again.remove is True
    await again.stop()
    assert node.status("alice") is None, "removed, as the profile says"


@run
async def test_no_profile_chosen_is_the_default_profile():
    (node,) = await up(FakeNode("n"))
    s = spawner([node], profile_list=PROFILES)
    await s.start()
    assert node.starts[-1].resources.mem_limit_bytes == GIB


@run
async def test_an_unknown_profile_or_choice_is_a_400_naming_it_and_nothing_starts():
    (node,) = await up(FakeNode("n"))
    for opts, says in [
        ({"profile": "huge"}, "unknown profile 'huge'; choose one of: small, gpu, h100"),
        ({"profile": "gpu", "size": "xl"}, "unknown size 'xl'; choose one of: s, l"),
    ]:
        s = spawner([node], profile_list=PROFILES)
        s.user_options = opts
        with pytest.raises(SpawnException) as e:
            await s.start()
        assert e.value.status_code == 400 and says in str(e.value), str(e.value)
    assert not node.starts


@run
async def test_an_override_of_an_unknown_option_is_a_500_naming_it():
    (node,) = await up(FakeNode("n"))
    s = spawner([node], profile_list=[{"display_name": "X", "berth_override": {"mem_limt": "1G"}}])
    with pytest.raises(SpawnException) as e:
        await s.start()
    assert e.value.status_code == 500 and "'mem_limt'" in str(e.value), str(e.value)


def test_a_bad_profile_list_is_refused_when_configured_naming_the_profile():
    for bad, says in [
        ([{"display_name": "K", "kubespawner_override": {"tolerations": []}}], "key 'tolerations' has no meaning here"),
        ([{"slug": "x"}], "profile_list: entry 0: display_name is missing"),
        ([{"display_name": "A", "slug": "a"}, {"display_name": "B", "slug": "a"}], "slug 'a' is used twice"),
        ([{"display_name": "A", "profile_options": {"o": {"choices": {}}}}], "option 'o': choices must be"),
    ]:
        with pytest.raises(TraitError, match=says):
            spawner([], profile_list=bad)
    assert profiles.initialized([{"display_name": "Data Science!"}])[0]["slug"] == "data-science"


@run
async def test_a_selector_no_node_meets_is_a_503_naming_it():
    a, b = await up(FakeNode("a", labels={"gpu": "a100"}), FakeNode("b"))
    s = spawner([a, b], profile_list=PROFILES)
    s.user_options = {"profile": "h100"}
    with pytest.raises(SpawnException) as e:
        await s.start()
    assert e.value.status_code == 503 and "No node has labels gpu=h100" in str(e.value), str(e.value)
    assert not a.starts and not b.starts


@run
async def test_a_matching_node_that_is_full_is_named_with_the_others_reasons():
    a, b = await up(FakeNode("a", labels={"gpu": "a100"}, draining=True), FakeNode("b"))
    s = spawner([a, b], node_selector={"gpu": "a100"})
    with pytest.raises(SpawnException) as e:
        await s.start()
    msg = str(e.value)
    assert e.value.status_code == 503 and "a: draining" in msg and "b: lacks labels gpu=a100" in msg, msg


# ---- volume templates -----------------------------------------------------------------------


def test_dockerspawner_volume_names_mean_the_same_volumes():
    # DockerSpawner's default escape: [a-z0-9] stay, other bytes -XX, lowercased.
    assert templates.escape("Alice.B") == "-41lice-2e-42"
    assert templates.escape("jörg") == "j-c3-b6rg"
    src = templates.source
    assert src("jupyterhub-user-{username}") == "jupyterhub-user-{user}"
    assert src("home-{safe_username}-{servername}") == "home-{user}-{server}"
    assert src("/srv/{raw_username}", user="Alice") == "/srv/Alice"
    assert src("cache-{imagename}", image="quay.io/x:1") == "cache-quay.io-x-1"
    assert templates.target("/home/{username}/{servername}", user="Alice.B", server="gpu") == "/home/-41lice-2e-42/gpu"
    with pytest.raises(templates.TemplateError, match="unknown name {usr}"):
        src("home-{usr}")
    with pytest.raises(templates.TemplateError, match="not one path component"):
        src("/srv/{raw_username}", user="../root")


def test_a_volume_named_per_server_in_dockerspawners_words_blocks_a_rename():
    assert request.per_server("data-{servername}") and not request.per_server("data-{username}")
    assert request.node_local_volumes({"home-{username}": "/home/jovyan"})


# ---- nodes ----------------------------------------------------------------------------------


def test_nodes_are_checked_when_configured_each_error_naming_the_node(tmp_path):
    token = tmp_path / "token"
    token.write_text("t")
    good = {"name": "n1", "address": "n1:50051", "token_file": str(token)}
    assert nodecheck.check([good]) == ""
    for bad, says in [
        ([{**good, "adress": "x"}], "nodes[0] ('n1'): unknown key 'adress'"),
        ([{"name": "n2"}], "nodes[0] ('n2'): address is missing"),
        ([{"name": "n2", "address": "n2"}], "nodes[0] ('n2'): address 'n2' must be host:port"),
        ([good, {**good, "token_file": str(tmp_path / "gone")}], "nodes[1] ('n1'): token_file"),
        ([{**good, "cert_file": str(token)}], "cert_file and key_file go together"),
        ([good, good], "nodes[1]: name 'n1' is also nodes[0]'s"),
    ]:
        with pytest.raises(TraitError) as e:
            spawner(bad)
        assert says in str(e.value), str(e.value)


def test_the_hub_checks_nodes_when_it_reads_its_config_file(tmp_path):
    from jupyterhub.app import JupyterHub

    (tmp_path / "jupyterhub_config.py").write_text(
        'c.JupyterHub.spawner_class = "berth"\nc.BerthSpawner.nodes = [{"name": "bad", "adress": "x:1"}]\n'
    )
    app = JupyterHub()
    with pytest.raises(TraitError, match=r"nodes\[0\] \('bad'\): unknown key 'adress'"):
        app.load_config_file("jupyterhub_config.py", path=str(tmp_path))
    (tmp_path / "ok.py").write_text('c.BerthSpawner.nodes = [{"name": "n", "address": "n:1"}]\n')
    JupyterHub().load_config_file("ok.py", path=str(tmp_path))


# ---- coming from KubeSpawner ----------------------------------------------------------------

KUBE = [
    {
        "display_name": "Data science",
        "slug": "ds",
        "kubespawner_override": {"cpu_limit": 2, "mem_guarantee": "1G", "node_selector": {"zone": "a"}},
        "profile_options": {
            "image": {
                "display_name": "Image",
                "choices": {
                    "base": {"display_name": "Base", "kubespawner_override": {"image": "base:1"}},
                    "gpu": {
                        "display_name": "GPU",
                        "kubespawner_override": {"image": "gpu:1", "extra_resource_limits": {"nvidia.com/gpu": "1"}},
                    },
                },
                "unlisted_choice": {
                    "enabled": True,
                    "display_name": "Other image",
                    "validation_regex": "^quay\\.io/[a-z/]+:[0-9.]+$",
                    "validation_message": "an image of quay.io with a version tag",
                    "kubespawner_override": {"image": "{value}"},
                },
            }
        },
    }
]


def test_kubespawner_overrides_with_a_meaning_here_are_berths_overrides():
    (p,) = profiles.initialized(KUBE)
    assert p["berth_override"] == {"cpu_limit": 2, "mem_guarantee": "1G", "node_selector": {"zone": "a"}}
    assert p["profile_options"]["image"]["choices"]["gpu"]["berth_override"] == {"image": "gpu:1", "gpus": 1}
    overrides, _ = profiles.choose([p], {"profile": "ds", "image": "gpu"})
    assert [o for _, o in overrides] == [p["berth_override"], {"image": "gpu:1", "gpus": 1}]


@pytest.mark.parametrize(
    "override, refused",
    [
        ({"tolerations": []}, "kubespawner_override key 'tolerations' has no meaning here"),
        ({"extra_resource_limits": {"example.com/fpga": 1}}, "extra_resource_limits 'example.com/fpga' has no meaning"),
        ({"volume_mounts": []}, "key 'volume_mounts'"),
    ],
)
def test_kubespawner_overrides_without_a_meaning_here_are_refused_by_name_at_config_load(override, refused):
    with pytest.raises(TraitError, match=refused):
        spawner([], profile_list=[{"display_name": "K", "kubespawner_override": override}])


def test_an_unlisted_choice_is_checked_by_its_regex_and_put_where_the_override_says_value():
    (p,) = profiles.initialized(KUBE)
    for opts in (
        {"profile": "ds", "image": "unlisted-choice", "image--unlisted-choice": "quay.io/x/y:1.2"},
        {"profile": "ds", "image--unlisted-choice": "quay.io/x/y:1.2"},
    ):
        overrides, names = profiles.choose([p], opts)
        assert overrides[-1][1] == {"image": "quay.io/x/y:1.2"}
        assert "image--unlisted-choice" in names
    with pytest.raises(profiles.ProfileError, match="is not accepted: an image of quay.io with a version tag") as e:
        profiles.choose([p], {"profile": "ds", "image": "unlisted-choice", "image--unlisted-choice": "evil/x:latest"})
    assert e.value.user_error
    with pytest.raises(TraitError, match="validation_regex"):
        spawner(
            [],
            profile_list=[
                {
                    "display_name": "K",
                    "profile_options": {
                        "o": {"choices": {"a": {}}, "unlisted_choice": {"enabled": True, "validation_regex": "("}}
                    },
                }
            ],
        )


def test_the_form_offers_the_unlisted_choice_and_its_field_becomes_user_options():
    s = spawner([], profile_list=KUBE)
    html = asyncio.run(s.get_options_form())
    assert '<option value="unlisted-choice">Other image</option>' in html
    assert 'name="profile-option-ds--image--unlisted-choice"' in html
    data = {
        "profile": ["ds"],
        "profile-option-ds--image": ["unlisted-choice"],
        "profile-option-ds--image--unlisted-choice": ["quay.io/a/b:2"],
    }
    assert s.run_options_from_form(data) == {
        "profile": "ds",
        "image": "unlisted-choice",
        "image--unlisted-choice": "quay.io/a/b:2",
    }


@run
async def test_a_kubespawner_profile_with_a_typed_image_starts_that_image_with_its_limits():
    (node,) = await up(FakeNode("n", labels={"zone": "a"}))
    s = spawner([node], image="default:1", profile_list=KUBE)
    s.user_options = {"profile": "ds", "image": "unlisted-choice", "image--unlisted-choice": "quay.io/a/b:2"}
    await s.start()
    r = node.started
    assert (r.image, r.resources.cpu_limit, r.resources.mem_guarantee_bytes) == ("quay.io/a/b:2", 2.0, 1 << 30)
    assert s.image == "quay.io/a/b:2"
