"""Only the edges know their wire: no module below them imports grpc or aiohttp.

The data plane (``server/dataplane.py``) and everything it calls take plain Python values; gRPC and HTTP are
the business of ``server/edge/``, the wiring (``app``, ``cli``), the ``--workers`` supervisor and its sibling
client (``workers``, ``peers``) and the command-line clients (``commands/``). The engine processes
(``engine/``) hold no edge: they talk to front ends over their own channel. Checked two ways: every import statement in the source (``ast``, so one inside a function
counts too), and what importing the data plane really loads.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

SERVER = Path(__file__).resolve().parents[2] / "server"
#: Where grpc and aiohttp may be imported, relative to server/ (a folder ends with "/").
ALLOWED = ("edge/", "commands/", "app.py", "cli.py", "workers.py", "peers.py")


def _wire_module(name: str) -> bool:
    top = name.split(".")[0]
    return top.startswith("grpc") or top == "aiohttp" or name.endswith("_pb2_grpc")


def wire_imports(source: str) -> list[str]:
    """The modules of grpc (grpc, grpc_health, ...), aiohttp and generated gRPC stubs that ``source`` imports."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if _wire_module(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found += [n for n in names if _wire_module(n)][:1]
    return found


def test_the_check_sees_every_form_of_import() -> None:
    source = "import grpc\ndef f():\n    from aiohttp import web\nfrom surge.protos import grpc_service_pb2_grpc\nimport grpc_health.v1\nimport numpy\n"
    assert sorted(wire_imports(source)) == ["aiohttp", "grpc", "grpc_health.v1", "surge.protos.grpc_service_pb2_grpc"]
    assert wire_imports("from surge.protos import grpc_service_pb2 as pb\nimport grpcio_tools_like_name_is_not_ours\n") == [
        "grpcio_tools_like_name_is_not_ours"
    ]  # any grpc* package counts


def test_no_module_below_the_edges_imports_grpc_or_aiohttp() -> None:
    offenders = {}
    for path in sorted(SERVER.rglob("*.py")):
        relative = path.relative_to(SERVER).as_posix()
        if relative.startswith(ALLOWED):
            continue
        found = wire_imports(path.read_text())
        if found:
            offenders[relative] = found
    assert not offenders, f"only the edges may import grpc or aiohttp: {offenders}"
    assert (SERVER / "dataplane.py").exists()


def test_importing_the_data_plane_loads_no_wire_library() -> None:
    code = (
        "import json, sys\n"
        "import surge.server.dataplane, surge.server.repository, surge.server.execution.model, surge.server.traffic.traffic\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'aiohttp') or m.endswith('_pb2_grpc'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []
