"""`python -m berthspawner.move` against two fake nodes (real gRPC servers on 127.0.0.1 that
keep volumes as bytes and check checksums as berthd does): what is moved, verified, removed or
kept, and how refusals end the command. The daemon side is tested against real Docker in
daemon/tests/volume_move.rs."""

import hashlib
from concurrent import futures

import grpc
import pytest

from berthspawner import errors, move
from berthspawner._proto.berth.v1 import spawner_pb2 as pb
from berthspawner._proto.berth.v1 import spawner_pb2_grpc as pb_grpc

CHUNK = 1 << 20


def refuse(context, code, message, why):
    details = errors.encode_details(code.value[0], message, why)
    context.set_trailing_metadata(((errors.DETAILS_KEY, details),))
    context.abort(code, message)


class VolumeNode(pb_grpc.SpawnerServicer):
    """A node holding volumes: name -> (user, server, data)."""

    def __init__(self, node_id, volumes=None, running=()):
        self.node_id = node_id
        self.volumes = dict(volumes or {})
        self.running = list(running)
        self.tamper = False
        self.tokens = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_SpawnerServicer_to_server(self, self.server)
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def _note(self, context):
        self.tokens.append(dict(context.invocation_metadata()).get("authorization"))

    def Version(self, request, context):
        self._note(context)
        return pb.VersionResponse(node_id=self.node_id, daemon_version="test", features=["volume-move"])

    def List(self, request, context):
        return pb.ListResponse(
            servers=[
                pb.ServerStatus(key=pb.ServerKey(user=request.user, server_name=s), state=pb.ServerStatus.RUNNING)
                for u, s in self.running
                if u == request.user
            ]
        )

    def ListVolumes(self, request, context):
        return pb.ListVolumesResponse(
            node_id=self.node_id,
            volumes=[
                pb.UserVolume(name=n, owner=pb.ServerKey(user=u, server_name=s), driver="local", size_bytes=-1)
                for n, (u, s, _) in sorted(self.volumes.items())
                if u == request.user
            ],
        )

    def ExportVolume(self, request, context):
        user, server, data = self.volumes[request.name]
        yield pb.VolumeChunk(
            header=pb.VolumeHeader(
                name=request.name,
                owner=pb.ServerKey(user=user, server_name=server),
                scope="server" if server else "user",
                driver="local",
                source_node=self.node_id,
            )
        )
        for i in range(0, len(data), CHUNK):
            yield pb.VolumeChunk(data=data[i : i + CHUNK])
        sha = hashlib.sha256(data).hexdigest()
        if self.tamper:
            sha = "0" * 64
        yield pb.VolumeChunk(trailer=pb.VolumeTrailer(sha256=sha, bytes=len(data)))

    def ImportVolume(self, request_iterator, context):
        self._note(context)
        header = next(request_iterator).header
        if header.name in self.volumes:
            refuse(context, grpc.StatusCode.ALREADY_EXISTS, f"volume {header.name} exists", "VOLUME_EXISTS")
        data, trailer = b"", None
        for chunk in request_iterator:
            if chunk.WhichOneof("part") == "data":
                data += chunk.data
            else:
                trailer = chunk.trailer
        sha = hashlib.sha256(data).hexdigest()
        if trailer is None or trailer.sha256 != sha:
            refuse(context, grpc.StatusCode.DATA_LOSS, "did not verify", "CHECKSUM_MISMATCH")
        self.volumes[header.name] = (header.owner.user, header.owner.server_name, data)
        return pb.ImportVolumeResponse(node_id=self.node_id, name=header.name, sha256=sha, bytes=len(data))

    def RemoveVolume(self, request, context):
        self._note(context)
        removed = self.volumes.pop(request.name, None) is not None
        return pb.RemoveVolumeResponse(removed=removed)


@pytest.fixture
def nodes():
    home = b"".join(bytes([i % 251]) for i in range(3 * CHUNK + 123))
    a = VolumeNode(
        "node-a",
        {
            "home-alice": ("alice", "", home),
            "scratch-alice-gpu": ("alice", "gpu", b"scratch"),
            "home-bob": ("bob", "", b"bob's"),
        },
    )
    b = VolumeNode("node-b")
    yield a, b
    a.server.stop(0)
    b.server.stop(0)


def run(a, b, *extra):
    lines = []
    code = move.main(["--from", a.address, "--to", b.address, *extra], log=lines.append)
    return code, "\n".join(lines)


def test_every_volume_of_the_user_moves_verified_and_the_sources_are_removed(nodes):
    a, b = nodes
    home = a.volumes["home-alice"]
    code, log = run(a, b, "--user", "alice")
    assert code == 0, log
    assert b.volumes == {"home-alice": home, "scratch-alice-gpu": ("alice", "gpu", b"scratch")}
    assert list(a.volumes) == ["home-bob"], "only the user's volumes left the source"
    assert "home-alice: 3.0 MiB verified on node-b" in log
    assert "removed from node-a" in log


def test_server_and_keep_source_narrow_what_happens(nodes):
    a, b = nodes
    code, log = run(a, b, "--user", "alice", "--server", "gpu", "--keep-source")
    assert code == 0, log
    assert list(b.volumes) == ["scratch-alice-gpu"]
    assert "scratch-alice-gpu" in a.volumes, "--keep-source keeps the source"
    assert "kept on node-a" in log


def test_a_running_server_refuses_the_move_before_anything_is_copied(nodes):
    a, b = nodes
    a.running = [("alice", "")]
    code, log = run(a, b, "--user", "alice")
    assert code == 1
    assert "runs on node-a" in log and "stop it first" in log, log
    assert not b.volumes and len(a.volumes) == 3


def test_a_different_volume_already_on_the_target_is_refused_and_both_kept(nodes):
    a, b = nodes
    b.volumes["home-alice"] = ("alice", "", b"other")
    code, log = run(a, b, "--user", "alice")
    assert code == 1
    assert "VOLUME_EXISTS" in log and "home-alice" in log and "both copies are kept" in log, log
    assert "home-alice" in a.volumes
    assert b.volumes["home-alice"][2] == b"other"


def test_a_rerun_completes_a_move_whose_copy_was_made_but_source_not_removed(nodes):
    a, b = nodes
    b.volumes["home-alice"] = a.volumes["home-alice"]
    code, log = run(a, b, "--user", "alice")
    assert code == 0, log
    assert "is identical (an earlier run made it)" in log
    assert list(a.volumes) == ["home-bob"]


def test_a_bad_checksum_fails_and_keeps_the_source(nodes):
    a, b = nodes
    a.tamper = True
    code, log = run(a, b, "--user", "alice")
    assert code == 1
    assert "CHECKSUM_MISMATCH" in log, log
    assert len(a.volumes) == 3 and not b.volumes


def test_nothing_to_move_is_not_an_error_and_the_token_goes_to_both_nodes(nodes, tmp_path):
    a, b = nodes
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    code, log = run(a, b, "--user", "carol", "--token-file", str(token))
    assert code == 0
    assert "nothing to move" in log
    assert a.tokens[0] == b.tokens[0] == "Bearer s3cret"


@pytest.mark.parametrize(
    "args",
    [
        ["--from", "x:1", "--to", "y:1"],
        ["--from", "x:1", "--to", "x:1", "--user", "u"],
        ["--from", "x:1", "--to", "y:1", "--user", "u", "--cert-file", "c.pem"],
    ],
)
def test_bad_arguments_exit_2(args):
    with pytest.raises(SystemExit) as e:
        move.parse(args)
    assert e.value.code == 2
