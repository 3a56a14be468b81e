"""berthd's typed refusal reasons, read by berthspawner's decoder from a real berthd."""

import os

import grpc
from conftest import TINY, Berthd

from berthspawner import errors
from berthspawner._proto.berth.v1 import spawner_pb2 as pb
from berthspawner._proto.berth.v1 import spawner_pb2_grpc as pb_grpc


def start(node, **fields):
    with grpc.insecure_channel(node.address) as ch:
        try:
            pb_grpc.SpawnerStub(ch).Start(
                pb.StartRequest(key=pb.ServerKey(user="reasons"), spawn_id="s1", **fields), timeout=30
            )
        except grpc.RpcError as e:
            return e
    raise AssertionError("the Start was expected to be refused")


def test_a_real_berthd_refusal_carries_a_reason_berthspawner_reads(workdir):
    with Berthd("reasons", os.path.join(workdir, "reasons")) as node:
        node.admin("Drain", reason="maintenance window")
        e = start(node, image=TINY)
        why, meta = errors.reason(e)
        assert (e.code(), why) == (grpc.StatusCode.FAILED_PRECONDITION, "NODE_DRAINING"), e.details()
        assert meta == {"node": node.name, "drain_reason": "maintenance window"}
        assert errors.try_another_node(e)
        node.admin("Undrain")
        e = start(node, image="berth-test/no-such-image:1", pull_policy=pb.PULL_POLICY_NEVER)
        assert errors.reason(e)[0] == "IMAGE_NOT_FOUND" and errors.try_another_node(e)
        e = start(node, image="NOT A REFERENCE")
        assert errors.reason(e) == ("INVALID_ARGUMENT", {"field": "image"})
        assert not errors.try_another_node(e)
        assert node.containers() == []
