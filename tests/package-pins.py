"""Host paths through the packaged units (tests/package runs this in the systemd container's
network namespace, with the wheel's venv): a Start that mounts a directory under the node's
allowed root works through the sandboxed berthd and berth-pin, its container sees the directory
through berth-pin's pin; while a racer swaps the directory for a link to /, every Start either
mounts the real directory or is refused, never the link's target. Then, with a warm pool of
the tiny image, a Start with a host path (read-only) and a named volume claims the waiting
container, and berth-pin grafts both into it while it runs: the sandboxed berthd cannot.

Arguments: the container's name, the node's token, the allowed root inside the container and
the inner engine's tiny image. Exits non-zero, saying why, on any violation."""

import subprocess
import sys
import time

import grpc
from berthspawner import errors
from berthspawner._proto.berth.v1 import spawner_pb2 as pb
from berthspawner._proto.berth.v1 import spawner_pb2_grpc

name, token, root, image = sys.argv[1:5]
STAGING = "/run/berth-pin/mounts/"
RACE_SECONDS = 20


def ct(*args, check=True):
    """A command in the systemd container; its stdout."""
    r = subprocess.run(["docker", "exec", name, *args], capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        sys.exit(f"package-pins: {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout.strip()


stub = spawner_pb2_grpc.SpawnerStub(grpc.insecure_channel("127.0.0.1:50051"))
meta = (("authorization", f"Bearer {token}"),)


def start(user, path, read_only=False, volume=None):
    req = pb.StartRequest(key=pb.ServerKey(user=user), spawn_id=f"{user}-1", image=image, ready_timeout_seconds=30)
    req.volumes.append(pb.Volume(source=path, target="/data", read_only=read_only))
    if volume:
        req.volumes.append(pb.Volume(source=volume, target="/home/work"))
    return stub.Start(req, metadata=meta, timeout=60)


def stop(user):
    stub.Stop(pb.StopRequest(key=pb.ServerKey(user=user), now=True, remove=True), metadata=meta, timeout=60)


def seen(container_id):
    """What the container sees at /data, and where the inner engine mounted it from."""
    listing = ct("docker", "exec", container_id, "ls", "/data")
    source = ct("docker", "inspect", "-f", "{{range .Mounts}}{{.Source}}{{end}}", container_id)
    return listing, source


# One Start, no race.
ct("sh", "-c", f"mkdir -p {root}/plain && echo checked > {root}/plain/marker")
r = start("pins-plain", f"{root}/plain")
listing, source = seen(r.container_id)
if listing != "marker" or not source.startswith(STAGING):
    sys.exit(f"package-pins: the container sees {listing!r} at /data, mounted from {source!r}")
stop("pins-plain")
print("package-pins: a host-path Start works through berth-pin", file=sys.stderr)

# The race: the path is the real directory, then a link to /, then the directory again.
ct("sh", "-c", f"mkdir -p {root}/race && echo checked > {root}/race/marker")
racer = subprocess.Popen(
    [
        "docker",
        "exec",
        name,
        "sh",
        "-c",
        f"cd {root} && end=$(( $(date +%s) + {RACE_SECONDS + 5} )); "
        "while [ $(date +%s) -lt $end ]; do mv race race.aside && ln -s / race; "
        "rm race && mv race.aside race; done",
    ],
)
mounted = refused = missing = n = 0
end = time.monotonic() + RACE_SECONDS
try:
    while time.monotonic() < end:
        n += 1
        user = f"pins-race-{n}"
        try:
            r = start(user, f"{root}/race")
        except grpc.RpcError as e:
            why, _ = errors.reason(e)
            if e.code() == grpc.StatusCode.PERMISSION_DENIED and "allowed_host_path_roots" in e.details():
                refused += 1
            elif why == "HOST_PATH_MISSING":
                missing += 1  # between the move and the link the path does not exist
            else:
                sys.exit(f"package-pins: spawn {n}: {e.code().name} {why}: {e.details()}")
        else:
            listing, source = seen(r.container_id)
            if listing != "marker":
                sys.exit(f"package-pins: spawn {n} saw {listing!r} at /data (mounted from {source!r})")
            if not source.startswith(STAGING):
                sys.exit(f"package-pins: spawn {n} mounted {source!r}, not a pin of berth-pin")
            mounted += 1
        stop(user)
finally:
    # It stops by itself, the directory back in place (killing `docker exec` would not stop it).
    racer.wait(timeout=60)
print(
    f"package-pins: race: {n} spawns, {mounted} mounted the directory, {refused} refused, {missing} found nothing",
    file=sys.stderr,
)
if not (mounted and refused):
    sys.exit("package-pins: the race was not exercised")
left = ct("docker", "ps", "-aq", "--filter", "label=berth.user")
if left:
    sys.exit(f"package-pins: containers left: {left}")

# Warm: the pool's container is claimed, and berth-pin mounts the user's directories into it.
ct(
    "sed",
    "-i",
    f's|^pools = \\[\\]$|pools = [{{ image = "{image}", size = 1, launcher = "shell", memory_bytes = "8M" }}]|',
    "/etc/berth/config.toml",
)
ct("grep", "-q", 'launcher = "shell"', "/etc/berth/config.toml")
ct("systemctl", "restart", "berthd")
stub = spawner_pb2_grpc.SpawnerStub(grpc.insecure_channel("127.0.0.1:50051"))
waiting = []
deadline = time.monotonic() + 90
while time.monotonic() < deadline:
    try:
        cap = stub.Capacity(pb.CapacityRequest(), metadata=meta, timeout=10)
    except grpc.RpcError:
        cap = None
    waiting = ct("docker", "ps", "-q", "--no-trunc", "--filter", "name=berthwarm-").split()
    if cap and any(w.ready == 1 for w in cap.warm) and len(waiting) == 1:
        break
    time.sleep(0.5)
else:
    sys.exit(f"package-pins: the warm pool never had a ready container ({waiting})")
ct("sh", "-c", f"mkdir -p {root}/warm && echo from-the-host > {root}/warm/marker")
ct("docker", "volume", "create", "pins-warm-vol")
ct("docker", "run", "--rm", "-v", "pins-warm-vol:/v", image, "sh", "-c", "echo from-the-volume > /v/f")
r = start("pins-warm", f"{root}/warm", read_only=True, volume="pins-warm-vol")
if r.container_id != waiting[0]:
    sys.exit(f"package-pins: the warm Start made {r.container_id}, not the waiting {waiting[0]}")
got = (ct("docker", "exec", r.container_id, "cat", "/data/marker", "/home/work/f")).split()
if got != ["from-the-host", "from-the-volume"]:
    sys.exit(f"package-pins: the claimed container sees {got} in its mounts")
wrote = subprocess.run(
    ["docker", "exec", name, "docker", "exec", r.container_id, "touch", "/data/written"], capture_output=True
)
if wrote.returncode == 0:
    sys.exit("package-pins: the read-only host path was writable in the claimed container")
ct("docker", "exec", r.container_id, "sh", "-c", "echo from-the-server > /home/work/g")
if ct("docker", "run", "--rm", "-v", "pins-warm-vol:/v", image, "cat", "/v/g") != "from-the-server":
    sys.exit("package-pins: a write in the claimed container did not reach the volume")
log = ct("journalctl", "-u", "berth-pin", "--no-pager", "-o", "cat")
if log.count("grafted") < 2:
    sys.exit(f"package-pins: berth-pin logged no graft: {log[-2000:]}")
stop("pins-warm")
ct("docker", "volume", "rm", "pins-warm-vol")
print("package-pins: a warm Start got its host path and volume through berth-pin", file=sys.stderr)
