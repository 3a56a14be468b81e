# A DockerSpawner deployment's jupyterhub_config.py, moved to berth. Only the two lines marked
# "berth:" differ from the DockerSpawner original; every c.DockerSpawner setting is read by
# BerthSpawner as written. (The e2e suite loads this after its own hub settings:
# tests/e2e/test_compat.py.)
import os

c = get_config()  # noqa: F821  (JupyterHub's config loader provides it)

# berth: was c.JupyterHub.spawner_class = "docker"
c.JupyterHub.spawner_class = "berth"
# berth: the nodes that run the containers (DockerSpawner talked to the local dockerd)
c.BerthSpawner.nodes = [{"name": "node", "address": os.environ["BERTH_E2E_NODE"]}]

c.DockerSpawner.image = "berth-test/singleuser:latest"
c.DockerSpawner.remove = False
c.DockerSpawner.network_name = os.environ.get("BERTH_E2E_NETWORK", "jupyterhub-users")
c.DockerSpawner.post_start_cmd = "sh -c 'echo post-start ran > /tmp/post-start'"
c.DockerSpawner.extra_host_config = {
    "shm_size": "256m",
    "pids_limit": 400,
    "extra_hosts": {"db.example": "10.1.2.3"},
    "ulimits": [{"Name": "nofile", "Soft": 4096, "Hard": 8192}],
}
c.DockerSpawner.extra_create_kwargs = {"working_dir": "/home/jovyan", "labels": {"team": "physics"}}
c.DockerSpawner.mem_limit = "512M"
c.DockerSpawner.cpu_limit = 1.0
c.DockerSpawner.environment = {"SITE": "e2e"}
c.DockerSpawner.http_timeout = 60
c.DockerSpawner.start_timeout = 90
