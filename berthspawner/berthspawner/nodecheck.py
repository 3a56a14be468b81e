"""Checks `BerthSpawner.nodes` when the hub loads its configuration, so that a typo or an
unreadable certificate stops the hub at start-up, naming the node, not the first spawn."""

import functools

from traitlets import TraitError

NODE_KEYS = ("name", "address", "ca_file", "cert_file", "key_file", "token_file")
_FILES = ("ca_file", "cert_file", "key_file", "token_file")


def _readable(path):
    """Why the file cannot be read, or ''."""
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        return e.strerror or str(e)
    return ""


def _check_one(i, node):
    if not isinstance(node, dict):
        return f"BerthSpawner.nodes[{i}] must be a dict, not {type(node).__name__}"
    label = f"BerthSpawner.nodes[{i}]" + (f" ({node['name']!r})" if node.get("name") else "")
    unknown = sorted(set(node) - set(NODE_KEYS))
    if unknown:
        return f"{label}: unknown key {unknown[0]!r} (known: {', '.join(NODE_KEYS)})"
    for k, v in node.items():
        if not isinstance(v, str):
            return f"{label}: {k} must be a string, not {type(v).__name__}"
    address = node.get("address", "")
    if not address:
        return f"{label}: address is missing (host:port of its berthd)"
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"{label}: address {address!r} must be host:port"
    if bool(node.get("cert_file")) != bool(node.get("key_file")):
        return f"{label}: cert_file and key_file go together (mutual TLS)"
    for k in _FILES:
        if node.get(k):
            why = _readable(node[k])
            if why:
                return f"{label}: {k} {node[k]} cannot be read: {why}"
    return ""


def check(nodes):
    """The first problem with `nodes`, as a message naming the node, or ''."""
    if not isinstance(nodes, (list, tuple)):
        return f"BerthSpawner.nodes must be a list of dicts, not {type(nodes).__name__}"
    names = {}
    for i, node in enumerate(nodes):
        why = _check_one(i, node)
        if why:
            return why
        name = node.get("name") or node["address"]
        if name in names:
            return f"BerthSpawner.nodes[{i}]: name {name!r} is also nodes[{names[name]}]'s"
        names[name] = i
    return ""


def watch_hub_config():
    """Makes the hub check BerthSpawner.nodes right after it reads its configuration file, so a
    bad entry stops the hub at start-up instead of failing the first spawn.

    JupyterHub instantiates a spawner only to start or poll a server, so a traitlets validator
    alone would run at the first spawn. The hub imports its spawner classes while it is being
    constructed, before it reads its config file; this wraps its `load_config_file` (once) so
    the check runs on the loaded configuration. Outside a hub it changes nothing."""
    try:
        from jupyterhub.app import JupyterHub
    except ImportError:
        return
    if getattr(JupyterHub, "_berth_checks_nodes", False):
        return
    original = JupyterHub.load_config_file

    @functools.wraps(original)
    def load_config_file(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        cfg = self.config
        if "BerthSpawner" in cfg and "nodes" in cfg.BerthSpawner:
            why = check(cfg.BerthSpawner.nodes)
            if why:
                self.log.critical("berth: %s", why)
                raise TraitError(why)
        return result

    JupyterHub.load_config_file = load_config_file
    JupyterHub._berth_checks_nodes = True
