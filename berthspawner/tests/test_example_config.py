"""The example jupyterhub_config.py loads and every BerthSpawner value in it is accepted."""

import os

from fakes import spawner
from traitlets.config import PyFileConfigLoader

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jupyterhub_config.py")


def test_the_example_config_is_accepted_by_the_spawner():
    cfg = PyFileConfigLoader(os.path.basename(EXAMPLE), os.path.dirname(EXAMPLE)).load_config()
    assert cfg.JupyterHub.spawner_class == "berth"
    s = spawner(None, config=cfg)
    assert [n["name"] for n in s.nodes] == ["node-1", "node-2"]
    assert s.placement == "spread" and s.remove is True
    assert s.mem_limit == 2 * 1024**3 and s.cpu_guarantee == 0.5
    assert s.unreachable_grace == 120
    assert s.pull_policy == "ifnotpresent"
