"""The example jupyterhub_config.py loads and every BerthSpawner value in it is accepted."""

import os

import pytest
from fakes import spawner
from traitlets import TraitError
from traitlets.config import PyFileConfigLoader

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jupyterhub_config.py")


def test_the_example_config_is_accepted_by_the_spawner(tmp_path):
    cfg = PyFileConfigLoader(os.path.basename(EXAMPLE), os.path.dirname(EXAMPLE)).load_config()
    assert cfg.JupyterHub.spawner_class == "berth"
    # Its credential files are the operator's: missing here, which the spawner refuses.
    with pytest.raises(
        TraitError, match=r"nodes\[0\] \('node-1'\): ca_file /etc/jupyterhub/berth/ca.pem cannot be read"
    ):
        spawner(None, config=cfg)
    for node in cfg.BerthSpawner.nodes:
        for k in ("ca_file", "cert_file", "key_file", "token_file"):
            path = tmp_path / os.path.basename(node[k])
            path.write_text("x")
            node[k] = str(path)
    s = spawner(None, config=cfg)
    assert [n["name"] for n in s.nodes] == ["node-1", "node-2"]
    assert s.placement == "spread" and s.remove is True
    assert s.mem_limit == 2 * 1024**3 and s.cpu_guarantee == 0.5
    assert s.unreachable_grace == 120
    assert s.pull_policy == "ifnotpresent"
