"""The committed gRPC stubs must be what proto/ generates: regenerate and compare."""

import filecmp
import importlib.util
import os
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = os.path.join(os.path.dirname(HERE), "berthspawner")


def test_stubs_match_the_proto_files():
    spec = importlib.util.spec_from_file_location("gen_proto", os.path.join(PKG, "gen_proto.py"))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    with tempfile.TemporaryDirectory() as out:
        gen.generate(out)
        fresh = os.path.join(out, "berthspawner", "_proto", "berth", "v1")
        committed = os.path.join(PKG, "_proto", "berth", "v1")
        names = sorted(n for n in os.listdir(fresh) if n.endswith(".py"))
        assert names, "nothing generated"
        match, mismatch, errors = filecmp.cmpfiles(fresh, committed, names, shallow=False)
        assert not mismatch and not errors, (
            f"stubs drifted from proto/: {mismatch + errors}; run python berthspawner/berthspawner/gen_proto.py"
        )
