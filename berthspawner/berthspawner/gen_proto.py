"""Regenerates the gRPC stubs in berthspawner/_proto from the repository's proto/ files.

    python berthspawner/berthspawner/gen_proto.py [OUT_DIR]   (run as a file: no package import)

The .proto files are mapped under the virtual path berthspawner/_proto so the generated modules
import each other as berthspawner._proto.berth.v1.*, while the protobuf package stays berth.v1.
"""

import os
import sys

from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PROTO_DIR = os.path.join(REPO, "proto")
FILES = ["berth/v1/spawner.proto", "berth/v1/admin.proto"]


def generate(out_dir):
    """Writes the stubs under out_dir (which plays the role of the package root's parent)."""
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    args = [
        "grpc_tools.protoc",
        f"-Iberthspawner/_proto={PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
    ] + [f"berthspawner/_proto/{f}" for f in FILES]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for d in ["berthspawner/_proto/berth", "berthspawner/_proto/berth/v1"]:
        init = os.path.join(out_dir, d, "__init__.py")
        if not os.path.exists(init):
            with open(init, "w") as f:
                f.write("")


if __name__ == "__main__":
    generate(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(HERE))
