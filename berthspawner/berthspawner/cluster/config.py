"""What the hub hands the cluster page's service: the nodes and their Admin sockets, checked
once when the hub loads its configuration and again when the service starts."""

import dataclasses
import json
import os

from .. import nodecheck

# The environment variable holding the service's configuration (JSON; file paths, no secret).
ENV = "BERTH_CLUSTER_CONFIG"
# Where the service listens unless told otherwise.
DEFAULT_URL = "http://127.0.0.1:8182"
# The scope a user's token must carry to open the page (the hub's admins have it).
SCOPE = "admin-ui"
# Seconds between two rounds of calls to the nodes while a page is open.
DEFAULT_INTERVAL = 2.0


class ConfigError(ValueError):
    """A configuration the service cannot run with; the message names the key."""


@dataclasses.dataclass(frozen=True)
class NodeConfig:
    """One node: its `BerthSpawner.nodes` entry and, when reachable, its Admin socket."""

    name: str
    address: str
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    token_file: str = ""
    admin_socket: str = ""

    def credentials(self):
        """The file keys of a `move.Node`."""
        return {k: getattr(self, k) for k in ("token_file", "ca_file", "cert_file", "key_file")}


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    nodes: tuple
    interval: float = DEFAULT_INTERVAL

    @classmethod
    def parse(cls, raw):
        """From the JSON form; ConfigError naming what is wrong."""
        if not isinstance(raw, dict):
            raise ConfigError("the cluster page's configuration must be a JSON object")
        unknown = sorted(set(raw) - {"nodes", "admin_sockets", "interval"})
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r}")
        entries = raw.get("nodes") or []
        why = nodecheck.check(entries)
        if why:
            raise ConfigError(why)
        if not entries:
            raise ConfigError("no nodes: BerthSpawner.nodes is empty")
        sockets = raw.get("admin_sockets") or {}
        if not isinstance(sockets, dict):
            raise ConfigError("admin_sockets must map node names to socket paths")
        names = [n.get("name") or n["address"] for n in entries]
        for k, v in sockets.items():
            if k not in names:
                raise ConfigError(f"admin_sockets: {k!r} is not a node (nodes: {', '.join(names)})")
            if not isinstance(v, str) or not v:
                raise ConfigError(f"admin_sockets[{k!r}] must be a socket path")
        interval = raw.get("interval", DEFAULT_INTERVAL)
        if not isinstance(interval, (int, float)) or not 0.2 <= interval <= 60:
            raise ConfigError(f"interval must be 0.2 to 60 seconds, not {interval!r}")
        nodes = tuple(
            NodeConfig(
                name=name,
                address=e["address"],
                **{k: e.get(k, "") for k in ("ca_file", "cert_file", "key_file", "token_file")},
                admin_socket=sockets.get(name, ""),
            )
            for name, e in zip(names, entries)
        )
        return cls(nodes=nodes, interval=float(interval))

    @classmethod
    def from_env(cls, environ=None):
        raw = (os.environ if environ is None else environ).get(ENV)
        if not raw:
            raise ConfigError(f"${ENV} is not set: register the page with berthspawner.cluster.cluster_page(c)")
        try:
            return cls.parse(json.loads(raw))
        except json.JSONDecodeError as e:
            raise ConfigError(f"${ENV} is not JSON: {e}") from None

    def to_json(self):
        nodes = []
        for n in self.nodes:
            entry = {"name": n.name, "address": n.address}
            entry.update({k: v for k, v in n.credentials().items() if v})
            nodes.append(entry)
        sockets = {n.name: n.admin_socket for n in self.nodes if n.admin_socket}
        return {"nodes": nodes, "admin_sockets": sockets, "interval": self.interval}

    def node(self, name):
        for n in self.nodes:
            if n.name == name:
                return n
        return None
