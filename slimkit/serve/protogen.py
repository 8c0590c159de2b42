"""Generate the gRPC Python code in slimkit/serve/_proto/ from slimkit/serve/scorer.proto.

    python -m slimkit.serve.protogen            # what `make proto` runs; writes into the source tree
    python -m slimkit.serve.protogen OUT_ROOT   # writes OUT_ROOT/slimkit/serve/_proto/... (tests compare)

The proto is mapped to the virtual path slimkit/serve/_proto/scorer.proto so that the generated
modules import each other as `slimkit.serve._proto.*`.
"""

from __future__ import annotations

import sys
from pathlib import Path

SERVE = Path(__file__).resolve().parent
GENERATED = ("scorer_pb2.py", "scorer_pb2_grpc.py", "scorer_pb2.pyi")


def generate(out_root: str | Path) -> Path:
    """Run grpc_tools.protoc; return the directory that holds the generated files."""
    from grpc_tools import protoc

    out_root = Path(out_root)
    (out_root / "slimkit/serve/_proto").mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-Islimkit/serve/_proto={SERVE}", f"-I{include}", f"--python_out={out_root}",
            f"--grpc_python_out={out_root}", f"--pyi_out={out_root}", "slimkit/serve/_proto/scorer.proto"]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + str(SERVE / "scorer.proto"))
    return out_root / "slimkit/serve/_proto"


if __name__ == "__main__":
    generate(sys.argv[1] if len(sys.argv) > 1 else SERVE.parent.parent)
