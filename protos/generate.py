"""Regenerate the Python code beside the .proto files (run from the repository root).

    python protos/generate.py            # rewrite protos/*_pb2*.py(i)
    python protos/generate.py --check    # exit 1 if the committed code differs

The generator is pinned (grpcio-tools==1.84.0, the `dev` extra) because generated code checks the
installed grpcio/protobuf at import: code from 1.84 runs on grpcio >= 1.84 and protobuf >= 7.35.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys
import tempfile

PROTOS = pathlib.Path(__file__).resolve().parent
FILES = ("model_config.proto", "grpc_service.proto", "surge_service.proto")


def generate(out: pathlib.Path) -> list[pathlib.Path]:
    """Run protoc on our .proto files; returns the generated files, written under `out`."""
    from grpc_tools import protoc  # a dev dependency only

    args = ["protoc", f"-Isurge/protos={PROTOS}", f"--python_out={out}", f"--grpc_python_out={out}", f"--pyi_out={out}"]
    args += [f"surge/protos/{name}" for name in FILES]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return sorted((out / "surge" / "protos").glob("*_pb2*.py*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed code instead of writing")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generated = generate(pathlib.Path(tmp))
        stale = [p.name for p in generated if not (PROTOS / p.name).exists() or (PROTOS / p.name).read_bytes() != p.read_bytes()]
        if opts.check:
            if stale:
                print(f"generated code is stale: {', '.join(stale)}; run python protos/generate.py", file=sys.stderr)
                return 1
            return 0
        for path in generated:
            shutil.copyfile(path, PROTOS / path.name)
    print(f"wrote {len(generated)} files into {PROTOS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
