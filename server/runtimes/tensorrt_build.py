"""``surge build-trt``: build a serialized TensorRT engine (``model.plan``) from an ONNX model.

    surge build-trt model.onnx --output 1/model.plan [--fp16] [--max-batch-size 64] [--opt-batch-size N]
                               [--workspace-bytes N] [--instances K]

The network is parsed with TensorRT's ONNX parser; each dynamic (batch) input gets an optimization profile
of min 1 / opt / max = max batch size rows, repeated ``--instances`` times so that that many instances of
the model (``instance_group.count``) can run on one GPU at once (TensorRT gives each concurrently running
execution context its own profile). An engine only runs with the TensorRT version and GPU model that built
it: build it where it will be served, e.g. inside ``Dockerfile.gpu``'s image.

Written against TensorRT 10's documented Python API (``trt.Builder``, ``create_network``, ``OnnxParser``,
``create_optimization_profile``, ``build_serialized_network``); NOT executed on our machines, which have no
TensorRT. ``tests/gpu/test_tensorrt.py`` builds and serves an engine wherever TensorRT and a GPU are present.
The shape logic (``build_profile_shapes``) is unit-tested here.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import ConfigError
from .tensorrt_plan import build_profile_shapes

__all__ = ["build_engine"]

log = logging.getLogger("surge.tensorrt")


def build_engine(
    onnx_path: Path,
    output: Path,
    *,
    fp16: bool = False,
    max_batch_size: int = 64,
    opt_batch_size: int = 0,
    workspace_bytes: int = 0,
    instances: int = 1,
) -> Path:
    """Build and write the engine; returns ``output``. Blocking (seconds to minutes); needs a GPU.

    ``workspace_bytes`` 0 keeps TensorRT's default workspace limit. Raises ConfigError for bad arguments or
    an ONNX file the parser rejects (its errors in the message), RuntimeError when the build fails.
    """
    if workspace_bytes < 0:
        raise ConfigError(f"--workspace-bytes: expected an integer >= 0, got {workspace_bytes}")
    if instances < 1:
        raise ConfigError(f"--instances: expected an integer >= 1, got {instances}")
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ConfigError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")
    inputs = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
    shapes = build_profile_shapes(inputs, max_batch_size, opt_batch_size)
    config = builder.create_builder_config()
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    for _ in range(instances if shapes else 0):
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in shapes.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
    log.info("building a TensorRT %s engine from %s (inputs %s, %d profile(s))", trt.__version__, onnx_path, shapes or inputs, instances if shapes else 0)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build an engine from {onnx_path} (see its log above)")
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "wb") as f:
        f.write(serialized)
    return output
