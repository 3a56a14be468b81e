"""The hub's cluster page: a JupyterHub service at /services/berth/ showing every berthd node
(capacity, conditions, labels, devices, servers, images, user volumes; a node that does not
answer as down), with drain / undrain and volume moves, for the hub's admins.

    from berthspawner.cluster import cluster_page
    cluster_page(c)   # after c.BerthSpawner.nodes and any c.JupyterHub.services = [...]

The hub starts the service (`python -m berthspawner.cluster`) and routes the page to it; users
log in with the hub's OAuth. Who may open it: holders of `access:services!service=berth`
(the hub's admins have it) whose token also carries `admin-ui` (the service asks for it; admins
have it): anyone else gets 403. The service reads the same node files (CA, certificate, key,
token) as the spawner, so it runs as the hub's user.

Where the parts are: `config` (what the hub hands the service, checked), `poller` (asks each
node every few seconds while a page is open), `view` (a node's answers as the page shows them:
pure), `actions` (drain over a node's Admin socket, volume moves), `web` (the tornado service).
"""

import json
import sys

from .config import ENV, DEFAULT_URL, SCOPE, ServiceConfig

__all__ = ["cluster_page", "service"]


def service(nodes, admin_sockets=None, name="berth", url=DEFAULT_URL, python=None):
    """The `c.JupyterHub.services` entry of the cluster page.

    `nodes`: `BerthSpawner.nodes` as configured (the same dicts: address, TLS files, token
    file). `admin_sockets`: node name -> path of that node's berthd Admin socket, reachable
    from the hub's machine (berthd serves Drain only there); a node without one is shown
    without drain buttons. `url`: where the service listens (the hub's proxy routes
    /services/<name>/ to it)."""
    cfg = ServiceConfig.parse({"nodes": list(nodes), "admin_sockets": dict(admin_sockets or {})})
    return {
        "name": name,
        "url": url,
        "command": [python or sys.executable, "-m", "berthspawner.cluster"],
        # File paths only: the node's credentials stay in their files.
        "environment": {ENV: json.dumps(cfg.to_json())},
        # Tokens for the page carry admin-ui when the user has it (admins do); the page
        # refuses a token without it.
        "oauth_client_allowed_scopes": [SCOPE],
        # The hub's own admin page: no "authorize this service?" step.
        "oauth_no_confirm": True,
    }


def cluster_page(c, nodes=None, admin_sockets=None, name="berth", url=DEFAULT_URL):
    """Adds the cluster page to a hub configuration `c` (in jupyterhub_config.py), for the
    nodes of `c.BerthSpawner.nodes` unless `nodes` is given. Call it after any
    `c.JupyterHub.services = [...]`, which would replace it."""
    if nodes is None:
        if "BerthSpawner" not in c or "nodes" not in c.BerthSpawner:
            raise ValueError("cluster_page: set c.BerthSpawner.nodes first, or pass nodes=")
        nodes = c.BerthSpawner.nodes
    c.JupyterHub.services.append(service(nodes, admin_sockets, name, url))
