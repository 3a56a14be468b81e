"""Runs the local demo: two berthd nodes and a JupyterHub on 127.0.0.1, until Ctrl-C."""

import os
import shutil
import signal
import socket
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
from conftest import Berthd, Hub  # noqa: E402  (the e2e suite's process helpers)

PREFERRED_PORT = 8000


def public_port():
    """8000 when it is free (easy to remember), else any free port."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", PREFERRED_PORT))
        except OSError:
            return None
    return PREFERRED_PORT


def main():
    work = tempfile.mkdtemp(prefix="berth-demo-")
    # Ctrl-C or a plain kill: stop everything the demo started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    nodes, hub = [], None
    try:
        nodes = [Berthd("node-1", work), Berthd("node-2", work)]
        hub = Hub(work, nodes, port=public_port(), extra='c.Spawner.default_url = "/lab"')
        print(f"\nJupyterHub with berth is up: {hub.url}/hub/login")
        print("Log in with any name and password; your server starts in a container on one of two nodes.")
        for n in nodes:
            print(f"  {n.name} at {n.address} (log {n.dir}/berthd.log)")
        print(f"  hub log {hub.dir}/hub.log\nCtrl-C stops the hub and the nodes and removes the demo's containers.")
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        if hub is not None:
            hub.stop()
        for n in nodes:
            n.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
