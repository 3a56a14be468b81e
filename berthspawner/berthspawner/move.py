"""Moves a user's volumes from one berthd node to another (a drain, a retired node, rebalancing).

    python -m berthspawner.move --from ADDR --to ADDR --user NAME [--server NAME]
        [--token-file F] [--ca-file F] [--cert-file F --key-file F] [--keep-source]

The contents stream through this process, never from node to node: ExportVolume on the source,
each message forwarded as it comes to ImportVolume on the target, which verifies the SHA-256 of
the whole stream; this process checks the same checksum on the bytes it forwarded. Only then is
the source volume removed (RemoveVolume), unless --keep-source. Refused while a server of the
user runs on the source (VOLUME_IN_USE). Safe to run again after an interruption: an unfinished
import of the same move is wiped and started over; volumes already moved are no longer listed
on the source; a volume copied by a run that failed before removing the source is found
identical on the target (same checksum) and its move completed.

Exit status: 0 moved (or nothing to move), 1 refused or failed (the message says which volume
and why; a source volume is never removed unless its copy was verified), 2 bad arguments.
"""

import argparse
import hashlib
import sys
import time

import grpc

from . import errors
from ._proto.berth.v1 import spawner_pb2 as pb
from ._proto.berth.v1 import spawner_pb2_grpc as pb_grpc
from .nodes import bearer, tls_credentials

FEATURE = "volume-move"
# A progress line at most this often, and once per volume at its end.
PROGRESS_SECONDS = 2.0
# Calls other than the transfer itself.
CALL_TIMEOUT = 60.0
# A message is at most 1 MiB of data; leave room for the envelope.
MAX_MESSAGE = 8 * 1024 * 1024
ACTIVE = frozenset({pb.ServerStatus.STARTING, pb.ServerStatus.RUNNING, pb.ServerStatus.STOPPING})


class MoveError(Exception):
    """A refusal or failure, with the message for the operator."""


class Node:
    """One berthd, reached with the operator's credentials (the file paths of a
    `BerthSpawner.nodes` entry)."""

    def __init__(self, address, token_file="", ca_file="", cert_file="", key_file=""):
        self.address = address
        self.token_file = token_file
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ]
        if ca_file or cert_file:
            creds = tls_credentials(ca_file, cert_file, key_file)
            self.channel = grpc.secure_channel(address, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(address, options=options)
        self.stub = pb_grpc.SpawnerStub(self.channel)
        self.node_id = address

    def metadata(self):
        return bearer(self.token_file)

    def close(self):
        self.channel.close()

    def call(self, method, request, what):
        try:
            return getattr(self.stub, method)(request, metadata=self.metadata(), timeout=CALL_TIMEOUT)
        except grpc.RpcError as e:
            raise MoveError(f"{what}: {describe(self, e)}") from e


def describe(node, e):
    """`<node> refused (REASON): message` for an error from berthd."""
    why, _ = errors.reason(e)
    details = e.details() if hasattr(e, "details") else str(e)
    code = e.code().name if hasattr(e, "code") and e.code() else "ERROR"
    return f"{node.node_id} ({node.address}) answered {why or code}: {details}"


def mib(n):
    return f"{n / (1 << 20):.1f} MiB"


class Forward:
    """The export's messages, forwarded to the import: counts and hashes the data, remembers
    the trailer, reports progress, and keeps an export failure to report it as such."""

    def __init__(self, name, export, log, copied=None):
        self.name, self.export, self.log = name, export, log
        # Called with (volume, bytes so far) at every data message (the cluster page's bar).
        self.copied = copied
        self.hash = hashlib.sha256()
        self.bytes = 0
        self.trailer = None
        self.header = None
        self.error = None
        self._shown = time.monotonic()

    def __iter__(self):
        try:
            for chunk in self.export:
                part = chunk.WhichOneof("part")
                if part == "header":
                    self.header = chunk.header
                elif part == "data":
                    self.hash.update(chunk.data)
                    self.bytes += len(chunk.data)
                    if self.copied is not None:
                        self.copied(self.name, self.bytes)
                    if time.monotonic() - self._shown >= PROGRESS_SECONDS:
                        self._shown = time.monotonic()
                        self.log(f"move: {self.name}: {mib(self.bytes)} copied")
                elif part == "trailer":
                    self.trailer = chunk.trailer
                yield chunk
        except grpc.RpcError as e:
            # Ending the stream without its trailer makes the target drop the partial import.
            self.error = e


def volumes_to_move(source, user, server):
    listed = source.call("ListVolumes", pb.ListVolumesRequest(user=user), "ListVolumes on the source").volumes
    if server is not None:
        listed = [v for v in listed if v.owner.server_name == server]
    return list(listed)


def check_nodes(source, target):
    for node, role in ((source, "source"), (target, "target")):
        v = node.call("Version", pb.VersionRequest(), f"Version of the {role}")
        node.node_id = v.node_id
        if FEATURE not in v.features:
            raise MoveError(
                f"the {role} {v.node_id} ({node.address}) runs berthd {v.daemon_version}, which cannot move volumes; upgrade it"
            )
    if source.node_id == target.node_id:
        raise MoveError(f"--from and --to are the same node ({source.node_id})")


def check_not_running(source, user, server):
    servers = source.call("List", pb.ListRequest(user=user), "List on the source").servers
    for s in servers:
        if s.state in ACTIVE and (server is None or s.key.server_name == server):
            label = f"{user}/{s.key.server_name}" if s.key.server_name else user
            raise MoveError(
                f"the server {label!r} runs on {source.node_id} ({pb.ServerStatus.State.Name(s.state)}); "
                "stop it first (its volumes are in use)"
            )


def checksum(node, name, log):
    """The trailer of a whole export of `name` from `node`, after checking it."""
    export = node.stub.ExportVolume(pb.ExportVolumeRequest(name=name), metadata=node.metadata())
    forward = Forward(name, export, log)
    for _ in forward:
        pass
    if forward.error is not None:
        raise MoveError(f"{name}: export failed: {describe(node, forward.error)}")
    sent = forward.trailer
    if sent is None or sent.sha256 != forward.hash.hexdigest() or sent.bytes != forward.bytes:
        raise MoveError(f"{name}: the export from {node.node_id} did not verify")
    return sent


def earlier_copy(source, target, name, log):
    """The target already holds `name`: an earlier run that copied it and failed before removing
    the source, if both export to the same bytes (the stream is a function of the tree);
    anything else is refused, both copies kept."""
    log(f"move: {name}: already on {target.node_id}; comparing it with the source")
    theirs = checksum(target, name, log)
    ours = checksum(source, name, log)
    if (theirs.sha256, theirs.bytes) != (ours.sha256, ours.bytes):
        raise MoveError(
            f"{name}: a different volume of that name is already on {target.node_id} (VOLUME_EXISTS); "
            "both copies are kept: decide which is current and remove the other"
        )
    log(f"move: {name}: the copy on {target.node_id} is identical (an earlier run made it)")
    return pb.ImportVolumeResponse(node_id=target.node_id, name=name, sha256=theirs.sha256, bytes=theirs.bytes)


def move_one(source, target, name, keep_source, log, copied=None):
    export = source.stub.ExportVolume(pb.ExportVolumeRequest(name=name), metadata=source.metadata())
    forward = Forward(name, export, log, copied)
    try:
        done = target.stub.ImportVolume(iter(forward), metadata=target.metadata())
    except grpc.RpcError as e:
        export.cancel()
        if forward.error is not None:
            raise MoveError(f"{name}: export failed: {describe(source, forward.error)}") from e
        why, _ = errors.reason(e)
        if why != "VOLUME_EXISTS":
            raise MoveError(f"{name}: import failed: {describe(target, e)}") from e
        done = earlier_copy(source, target, name, log)
    else:
        ours = forward.hash.hexdigest()
        sent = forward.trailer
        if sent is None or not (ours == sent.sha256 == done.sha256 and forward.bytes == sent.bytes == done.bytes):
            raise MoveError(
                f"{name}: checksums differ (source {sent.sha256 if sent else 'none'}, forwarded {ours},"
                f" target {done.sha256}); the source is kept, remove the target copy before trying again"
            )
    log(f"move: {name}: {mib(done.bytes)} verified on {target.node_id} (sha256 {done.sha256})")
    if keep_source:
        log(f"move: {name}: kept on {source.node_id} (--keep-source)")
        return
    source.call("RemoveVolume", pb.RemoveVolumeRequest(name=name), f"{name}: removing the source copy")
    log(f"move: {name}: removed from {source.node_id}")


def parse(argv):
    p = argparse.ArgumentParser(
        prog="python -m berthspawner.move",
        description="Move a user's volumes from one berthd node to another, through this machine.",
    )
    p.add_argument("--from", dest="source", required=True, metavar="ADDR", help="source node, host:port")
    p.add_argument("--to", dest="target", required=True, metavar="ADDR", help="target node, host:port")
    p.add_argument("--user", required=True, help="the JupyterHub user name, exactly")
    p.add_argument("--server", default=None, help='only the volumes of this named server ("" = the default server\'s)')
    p.add_argument("--token-file", default="", help="bearer token of the nodes")
    p.add_argument("--ca-file", default="", help="TLS: the nodes' CA")
    p.add_argument("--cert-file", default="", help="mutual TLS: this client's certificate")
    p.add_argument("--key-file", default="", help="mutual TLS: this client's key")
    p.add_argument("--keep-source", action="store_true", help="copy only: keep the source volumes")
    args = p.parse_args(argv)
    if bool(args.cert_file) != bool(args.key_file):
        p.error("--cert-file and --key-file go together")
    if args.source == args.target:
        p.error("--from and --to name the same address")
    return args


def move_user(source, target, user, server, keep_source, log, copied=None, listed=None):
    """Moves the volumes of `user` (of the named `server` only, unless None) from `source` to
    `target` (both `Node`s). Returns how many were moved; raises MoveError when refused or
    failed. `listed(volumes)` is told what will move before the first copy."""
    check_nodes(source, target)
    check_not_running(source, user, server)
    volumes = volumes_to_move(source, user, server)
    if listed is not None:
        listed(volumes)
    if not volumes:
        log(f"move: no volumes of user {user!r} on {source.node_id}; nothing to move")
        return 0
    for v in volumes:
        move_one(source, target, v.name, keep_source, log, copied)
    log(f"move: {len(volumes)} volume(s) of {user!r} moved from {source.node_id} to {target.node_id}")
    return len(volumes)


def main(argv=None, log=None):
    args = parse(argv)
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    creds = {k: getattr(args, k) for k in ("token_file", "ca_file", "cert_file", "key_file")}
    source, target = Node(args.source, **creds), Node(args.target, **creds)
    try:
        move_user(source, target, args.user, args.server, args.keep_source, log)
        return 0
    except MoveError as e:
        log(f"move: refused or failed: {e}")
        return 1
    finally:
        source.close()
        target.close()


if __name__ == "__main__":
    sys.exit(main())
