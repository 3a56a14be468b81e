"""berthspawner talks to a node that requires mutual TLS and a bearer token."""

import os

from certs import Pki
from conftest import TINY, Berthd, Hub


def test_spawning_through_a_node_with_mutual_tls_and_a_token(workdir):
    d = os.path.join(workdir, "secure")
    pki = Pki(d)
    with (
        Berthd("secure", d, args=pki.node_args("node"), client=pki.client()) as node,
        Hub(d, [node], extra='c.BerthSpawner.cmd = ["httpd", "-f", "-p", "8888", "-h", "/www"]') as hub,
    ):
        hub.spawn("tls-user", options={"image": TINY})
        assert len(node.containers("tls-user")) == 1
        r = hub.api("DELETE", "/users/tls-user/server")
        assert r.status_code in (202, 204)
