"""Regenerate the Python code beside the .proto files (run from the repository root).

    python protos/generate.py            # rewrite protos/*_pb2*.py(i)
    python protos/generate.py --check    # exit 1 if the committed code differs

The generator is pinned to grpcio-tools 1.62.3 (protoc 25, protobuf 4.25.1 gencode), the newest whose code checks
neither the grpcio nor the protobuf runtime version at import: it runs on protobuf 4.25 to 7.x and grpcio 1.63 to
1.84+, so Surge's client installs beside any tritonclient >= 2.42 (newer generators stamp their own version as a
floor; docs/pages/dependencies.md has the matrix). That grpcio-tools requires protobuf < 5, which cannot share the
project's environment, so this script installs it alone (`pip install --no-deps --target`) under .cache/ and runs
its protoc in a subprocess. The generated modules register their files in ``surge.protos.pool.POOL``, not in
protobuf's default pool, so that they import beside tritonclient's (see protos/pool.py).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

PROTOS = pathlib.Path(__file__).resolve().parent
FILES = ("model_config.proto", "grpc_service.proto", "surge_service.proto")
GENERATOR = "grpcio-tools==1.62.3"
# Where the generator is installed; SURGE_GENERATOR_DIR overrides it (the tests point copies of protos/ at one place).
GENERATOR_DIR = pathlib.Path(os.environ.get("SURGE_GENERATOR_DIR") or PROTOS.parent / ".cache" / GENERATOR.replace("==", "-"))
# Generated modules add their file to Surge's own pool instead of protobuf's default one.
_DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
_SURGE_POOL = "DESCRIPTOR = _surge_pool.POOL.AddSerializedFile("
_IMPORTS = "# @@protoc_insertion_point(imports)\n"


def generator() -> pathlib.Path:
    """The folder holding the pinned grpcio-tools, installed there (from the package index) on first use."""
    if not (GENERATOR_DIR / "grpc_tools").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", "--target", str(GENERATOR_DIR), GENERATOR], check=True)
    return GENERATOR_DIR


def _use_surge_pool(path: pathlib.Path) -> None:
    text = path.read_text()
    if text.count(_DEFAULT_POOL) != 1 or text.count(_IMPORTS) != 1:
        raise RuntimeError(f"{path.name}: unexpected generated code (no single default-pool registration)")
    text = text.replace(_IMPORTS, _IMPORTS + "from surge.protos import pool as _surge_pool\n").replace(_DEFAULT_POOL, _SURGE_POOL)
    path.write_text(text)


def generate(out: pathlib.Path) -> list[pathlib.Path]:
    """Run the pinned protoc on our .proto files; returns the generated files, written under `out`."""
    args = [f"-Isurge/protos={PROTOS}", f"--python_out={out}", f"--grpc_python_out={out}", f"--pyi_out={out}"]
    args += [f"surge/protos/{name}" for name in FILES]
    env = {**os.environ, "PYTHONPATH": str(generator())}  # ahead of any other grpcio-tools installed here
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", *args], env=env, check=True)
    for path in (out / "surge" / "protos").glob("*_pb2.py"):
        _use_surge_pool(path)
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
