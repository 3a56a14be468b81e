"""Runs the local demo: two berthd nodes and a JupyterHub, until Ctrl-C."""

import os
import signal
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
from conftest import Berthd, Hub  # noqa: E402  (the e2e suite's process helpers)


def main():
    work = tempfile.mkdtemp(prefix="berth-demo-")
    nodes = [Berthd("node-1", work), Berthd("node-2", work)]
    hub = Hub(work, nodes)
    print(f"\nJupyterHub with berth is up: {hub.url}/hub/login")
    print("Log in with any name and password; your server starts on one of two berthd nodes.")
    for n in nodes:
        print(f"  {n.name} at {n.address} (log {n.dir}/berthd.log)")
    print(f"  hub log {hub.dir}/hub.log\nCtrl-C to stop.")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()
        for n in nodes:
            n.stop()


if __name__ == "__main__":
    main()
