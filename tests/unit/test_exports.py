"""Public names: every ``__all__`` entry exists, and the client package stays free of server-side imports."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap

import pytest

MODULES = [
    "surge.clients",
    "surge.server.errors",
    "surge.server.dataplane",
    "surge.server.config",
    "surge.server.observability.metrics",
    "surge.server.observability.drift",
    "surge.server.observability.edge",
    "surge.server.observability.exposition",
    "surge.server.edge.scrape",
    "surge.server.edge.metrics_http",
    "surge.server.observability.page_merge",
    "surge.server.traffic.routing",
    "surge.server.traffic.shadow",
    "surge.server.traffic.feedback",
    "surge.server.traffic.traffic",
    "surge.server.traffic.routing_metrics",
    "surge.server.traffic.ab",
    "surge.server.edge.surge_servicer",
    "surge.server.observability.gpu_metrics",
    "surge.server.runtimes.onnx_providers",
    "surge.server.runtimes.tensorrt_plan",
    "surge.server.runtimes.tensorrt",
    "surge.server.runtimes.tensorrt_build",
    "surge.kernels",
    "surge.kernels.image",
    "surge.kernels.tabular",
    "surge.kernels.postprocess",
    "surge.kernels.cuda",
    "surge.server.execution.pipeline",
    "surge.server.commands.batch",
    "surge.server.commands.top",
]


@pytest.mark.parametrize("module_name", MODULES)
def test_all_lists_only_names_that_exist(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = module.__all__
    assert exported, f"{module_name}.__all__ is empty"
    assert all(isinstance(name, str) for name in exported)
    assert len(set(exported)) == len(exported), f"{module_name}.__all__ has duplicates"
    missing = [name for name in exported if not hasattr(module, name)]
    assert missing == []


@pytest.mark.parametrize("module_name", MODULES)
def test_star_import_works(module_name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from {module_name} import *", namespace)  # noqa: S102 - the point is what * brings in
    module = importlib.import_module(module_name)
    assert set(module.__all__) <= set(namespace)


def test_server_errors_exports_every_error_class() -> None:
    errors = importlib.import_module("surge.server.errors")
    classes = {
        name for name, value in vars(errors).items() if isinstance(value, type) and issubclass(value, errors.InferenceServerError)
    }
    assert classes == set(errors.__all__)


_PROBE = textwrap.dedent(
    """
    import json, sys
    import surge.clients
    heavy = ("surge.server", "onnx", "onnxruntime")
    loaded = sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in heavy))
    print(json.dumps(loaded))
    """
)


def test_importing_clients_does_not_import_server_or_onnx() -> None:
    result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == []


_GPU_PROBE = textwrap.dedent(
    """
    import json, sys
    import surge.server.runtimes.tensorrt, surge.server.runtimes.tensorrt_build, surge.server.observability.gpu_metrics
    heavy = ("tensorrt", "torch", "pynvml", "onnxruntime")
    print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy)))
    """
)


def test_gpu_modules_import_their_libraries_only_when_used() -> None:
    result = subprocess.run([sys.executable, "-c", _GPU_PROBE], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_the_server_imports_numba_only_for_a_pipeline() -> None:
    """Serving models without [[preprocess]] steps needs no Numba (an extra: surge[kernels]) and pays no import."""
    code = "import sys, surge.server.app, surge.server.cli, surge.server.execution.pipeline, surge.kernels.postprocess; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
