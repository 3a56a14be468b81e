"""Reading berthd's ErrorInfo reasons from the status details, in the wire format."""

from types import SimpleNamespace

import grpc

from berthspawner import errors


def failed(code, trailer):
    return SimpleNamespace(code=lambda: code, trailing_metadata=lambda: trailer)


def test_a_reason_and_its_metadata_round_trip():
    details = errors.encode_details(9, "node n1 is draining", "NODE_DRAINING", {"node": "n1", "drain_reason": "é"})
    e = failed(grpc.StatusCode.FAILED_PRECONDITION, ((errors.DETAILS_KEY, details),))
    assert errors.reason(e) == ("NODE_DRAINING", {"node": "n1", "drain_reason": "é"})
    assert errors.try_another_node(e)


def test_no_reason_garbage_and_foreign_domains_are_no_reason():
    assert errors.reason(failed(grpc.StatusCode.UNAVAILABLE, None)) == ("", {})
    assert errors.reason(failed(grpc.StatusCode.UNAVAILABLE, ((errors.DETAILS_KEY, b"\xff\xff\xff"),))) == ("", {})
    foreign = errors.encode_details(9, "x", "NODE_DRAINING").replace(b"berth.v1", b"other.v1")
    assert errors.reason(failed(grpc.StatusCode.FAILED_PRECONDITION, ((errors.DETAILS_KEY, foreign),))) == ("", {})
    # Without any reason only an unreachable node is worth trying elsewhere.
    assert errors.try_another_node(failed(grpc.StatusCode.UNAVAILABLE, ()))
    assert not errors.try_another_node(failed(grpc.StatusCode.FAILED_PRECONDITION, ()))
    assert not errors.try_another_node(failed(grpc.StatusCode.RESOURCE_EXHAUSTED, ()))
