# An example jupyterhub_config.py for berthspawner: every user's server runs in a Docker
# container on one of the berthd nodes below. Copy it next to your hub and adapt the marked
# values. Everything else is ordinary JupyterHub configuration.

c = get_config()  # noqa: F821 (provided by JupyterHub)

# --- The spawner ------------------------------------------------------------------------------
c.JupyterHub.spawner_class = "berth"

# The nodes. Each runs berthd (see systemd/berthd.service). In production give every node TLS
# with a client CA (mutual TLS) and/or a bearer token; the files are read on the hub.
c.BerthSpawner.nodes = [
    {
        "name": "node-1",  # as in the node's berthd config (node_id)
        "address": "node-1.example.org:50051",  # CHANGE ME
        "ca_file": "/etc/jupyterhub/berth/ca.pem",  # CA of the nodes' server certificates
        "cert_file": "/etc/jupyterhub/berth/hub.pem",  # this hub's client certificate
        "key_file": "/etc/jupyterhub/berth/hub.key",
        "token_file": "/etc/jupyterhub/berth/token",  # same token as the node's token_file
    },
    {
        "name": "node-2",
        "address": "node-2.example.org:50051",  # CHANGE ME
        "ca_file": "/etc/jupyterhub/berth/ca.pem",
        "cert_file": "/etc/jupyterhub/berth/hub.pem",
        "key_file": "/etc/jupyterhub/berth/hub.key",
        "token_file": "/etc/jupyterhub/berth/token",
    },
]

# Where new servers go: "spread" (most free memory first, the default), "pack" (fill one node
# first), or a callable(candidates, demand) returning the candidates in the order to try.
c.BerthSpawner.placement = "spread"
# A callable gets the fitting nodes (berthspawner.placement.Candidate: name, memory_free,
# cpu_free, running, max_servers, ...) and the demand (memory, cpu, image), e.g. to keep GPU
# nodes for last:
# c.BerthSpawner.placement = lambda fits, demand: sorted(fits, key=lambda c: c.name.startswith("gpu-"))

# A node that stops answering keeps its servers for this long before the hub is told they are
# gone (a berthd restart or a network cut must not end live sessions).
c.BerthSpawner.unreachable_grace = 120
# Deadline of the short calls (Capacity, Poll, List); SIGTERM-to-SIGKILL time on stop.
c.BerthSpawner.rpc_timeout = 15
c.BerthSpawner.stop_grace = 10

# --- What a server is ----------------------------------------------------------------------
# A node pulls the image when it lacks it (pull_policy "ifnotpresent"; or "always", "never",
# as DockerSpawner's); the spawn page shows the pull's bytes. Registry credentials live on the
# nodes ([images] registry_auth_file in berthd's config), never here.
c.BerthSpawner.image = "quay.io/jupyter/base-notebook:2025-01-06"  # CHANGE ME
c.BerthSpawner.pull_policy = "ifnotpresent"
# Images users may choose with user_options {"image": ...} (a list, or a dict name -> image).
c.BerthSpawner.allowed_images = []
# Resources, enforced by Docker on the node; guarantees are what placement reserves.
c.BerthSpawner.mem_limit = "2G"
c.BerthSpawner.mem_guarantee = "1G"
c.BerthSpawner.cpu_limit = 2.0
c.BerthSpawner.cpu_guarantee = 0.5
# Named volumes; {user} and {server} expand (escaped) on the node. Volumes named with {user}
# are removed with the user (delete_forever), {server} ones with a named server.
c.BerthSpawner.volumes = {"jupyterhub-user-{user}": "/home/jovyan/work"}
# Delete the container when the server stops (the volume stays).
c.BerthSpawner.remove = True
c.Spawner.start_timeout = 120

# --- Reaching the hub from the containers ---------------------------------------------------
# Servers run on other machines: they must reach the hub API at an address they can route to.
c.JupyterHub.hub_ip = "0.0.0.0"
c.JupyterHub.hub_connect_url = "http://hub.example.org:8081"  # CHANGE ME
# The nodes publish each server's port on their berthd `publish_host_ip`; the proxy must reach it.

# --- Hub restarts ---------------------------------------------------------------------------
# Servers live on the nodes, not in the hub: keep them running across hub restarts.
c.JupyterHub.cleanup_servers = False

# Named servers work as usual.
c.JupyterHub.allow_named_servers = True

# --- Activity for the idle culler -----------------------------------------------------------
# berthd can report container activity (network, CPU) for servers that do not report their own.
# Register a service whose token the nodes use (their [activity] token_file), allowed only to
# post activity:
# c.JupyterHub.services = [{"name": "berth-activity", "api_token": "<the nodes' activity token>"}]
# c.JupyterHub.load_roles = [
#     {"name": "berth-activity", "scopes": ["users:activity"], "services": ["berth-activity"]}
# ]

# Pull the images (image and allowed_images, or c.BerthSpawner.prepull_images) onto every node
# when the hub starts, in the background, so the first spawns do not wait (off unless called).
# from berthspawner.prepull import prepull_at_start
# prepull_at_start(c)

# The cluster page for the hub's admins at /services/berth/ (README: "The cluster page"): every
# node, its servers and volumes, drain (through each node's Admin socket, when the hub's machine
# reaches it) and volume moves. After any `c.JupyterHub.services = [...]` above.
# from berthspawner.cluster import cluster_page
# cluster_page(c, admin_sockets={"node-1": "/run/berth/node-1-admin.sock"})
