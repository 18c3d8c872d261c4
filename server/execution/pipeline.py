"""Model pipelines: ``[[preprocess]]`` kernels before the model and ``[[postprocess]]`` steps after it.

A model's config.toml lists the steps (``config.StepConfig``); ``Pipeline(config)`` validates them against the
model's completed signature at load and derives the pipeline's own signature, which is what clients see
(ModelMetadata, ModelConfig, the codec's checks). The steps run batched, after the batcher has formed a batch,
in the instance's executor thread (``_Instance.run`` in model.py calls ``PipelineInstance.run``): preprocess
kernels, the runtime, postprocess steps. The warm-up runs synthetic batches through the same path, so every kernel
is compiled (or loaded from Numba's cache) before the version is READY.

Preprocess steps (one pipeline input -> one model input each; the fused ops cover the usual chains)::

    op                     pipeline input            model input     parameters
    decode_jpeg            BYTES [1] (one JPEG)      (a later image step's input: UINT8 [-1, -1, C])
                                                                     channels (3: RGB | 1: grey), max_pixels (8192*8192)
    normalize              UINT8 [H, W, C]           FP32 [C, H, W]  mean, std, scale (1/255), datatype ("UINT8"|"FP32")
    resize                 UINT8 [-1, -1, C]         FP32 [h, w, C]  size (default: the model's h, w)
    letterbox              UINT8 [-1, -1, C]         FP32 [h, w, C]  size, pad_value (0)
    center_crop            UINT8 [-1, -1, C]         UINT8 [h, w, C] size
    resize_crop_normalize  UINT8 [-1, -1, C]         FP32 [C, h, w]  resize, crop (default: the model's h, w), mean, std, scale
    tabular_transform      FP32 [F]                  FP32 [F]        fill, low, high, mean, std (each optional)
    standardize            FP32 [F]                  FP32 [F]        mean, std
    clip                   FP32 [F]                  FP32 [F]        low, high
    fill_missing           FP32 [F]                  FP32 [F]        values
    bucketize              FP32 [F]                  INT64 [F]       boundaries
    one_hot                INT64 [F]                 FP32 [F*depth]  depth
    hash_bucket            INT64 [F]                 INT64 [F]       num_buckets, seed (0)

A ``decode_jpeg`` step (decode.py) feeds a later image step (resize, letterbox, center_crop,
resize_crop_normalize) rather than a model input; its images may differ in size, and that step runs once per group
of equally sized images. A row that is not a decodable JPEG fails only the request that sent it (INVALID_ARGUMENT
naming the row). Needs a batched model (max_batch_size > 0).

Postprocess steps (read a model output or an earlier step's output; outputs are added to what the model returns,
or replace it when ``output`` reuses its name)::

    softmax    FP32 [..., K] -> FP32 [..., K]
    argmax     [..., K]      -> INT64 [..., 1]
    topk       [..., K]      -> INT64 [..., k] indices as ``output``; ``values_output`` (optional) gets the values
    threshold  [..., K]      -> BOOL [..., K]  (``value``)

On a GPU instance of the torch runtime, preprocessing runs the CUDA kernels (``surge.kernels.cuda``) on the
instance's own CUDA stream and hands the result to the runtime as a torch CUDA tensor (``__cuda_array_interface__``,
no copy, no host round trip). Where numba.cuda cannot start, the CPU kernels run instead (logged once). With
torchvision present, ``decode_jpeg`` decodes the batch on that GPU too (nvJPEG); else on the CPU with Pillow.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import numpy as np

from surge.protos.datatypes import numpy_dtype

from ..config import ModelConfig, StepConfig, TensorConfig
from ..config_schema import MAX_IMAGE_SIDE, POST_OPS, PRE_OPS
from ..errors import ConfigError, InvalidInput, RowsRejected

__all__ = ["PRE_OPS", "POST_OPS", "Pipeline", "PipelineInstance"]

log = logging.getLogger("surge.pipeline")

_IMAGE_DTYPES = ("UINT8", "FP32")


class _Params:
    """A step's parameters as the schema validated them (types, bounds, finite numbers, unknown keys: see
    config_schema.py), with the defaults and checks that depend on the model's signature; errors name
    ``preprocess[i].key``."""

    def __init__(self, step: StepConfig) -> None:
        self.step = step
        self.used: set[str] = set()

    def _get(self, key: str, default: Any) -> Any:
        self.used.add(key)
        value = self.step.params.get(key, default)
        if value is _REQUIRED:
            raise ConfigError(f"{self.step.where}.{key}: required by op '{self.step.op}'")
        return value

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.step.where}.{key}: {message}")

    def floats(self, key: str, default: Any, count: int) -> np.ndarray | None:
        """Per-channel/feature values, prepared once as the float32 array the kernels take."""
        value = self._get(key, default)
        if value is None:
            return None
        values = value if isinstance(value, list) else [value] * count
        if len(values) != count or any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
            raise self.error(key, f"expected a number or a list of {count} numbers, got {value!r}")
        return np.asarray(values, dtype=np.float32)

    def number(self, key: str, default: Any) -> float:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"expected a number, got {value!r}")
        return float(value)

    def integer(self, key: str, default: Any, minimum: int) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(key, f"expected an integer >= {minimum}, got {value!r}")
        return value

    def size(self, key: str, default: tuple[int, int] | None) -> tuple[int, int]:
        value = self._get(key, list(default) if default and min(default) > 0 else _REQUIRED)
        pair = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(pair, list) or len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_IMAGE_SIDE for v in pair):
            raise self.error(key, f"expected [height, width] of integers from 1 to {MAX_IMAGE_SIDE}, got {value!r}")
        return pair[0], pair[1]

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        value = self._get(key, default)
        if value not in choices:
            raise self.error(key, f"expected one of {', '.join(choices)}; got {value!r}")
        return str(value)

    def check_no_unknown(self) -> None:
        unknown = sorted(set(self.step.params) - self.used)
        if unknown:
            raise ConfigError(f"{self.step.where}: unknown key(s) {', '.join(unknown)} for op '{self.step.op}'; valid: {', '.join(sorted(self.used)) or 'none'}")


_REQUIRED: Any = object()


@dataclasses.dataclass(slots=True)
class _PreStep:
    step: StepConfig
    input: TensorConfig
    cpu: Callable[[np.ndarray], np.ndarray]
    gpu: Callable[..., Any]  # (device array, stream=) -> device array, from surge.kernels.cuda
    warm_dims: tuple[int, ...] = ()  # the input's dims for warm-up batches (variable ones made concrete)
    decoder: Any = None  # decode_jpeg: its JpegDecoder (the step makes a list of images, not an array)
    ragged: bool = False  # fed by decode_jpeg: its input is a list of images that may differ in size


@dataclasses.dataclass(slots=True)
class _PostStep:
    step: StepConfig
    outputs: tuple[TensorConfig, ...]
    run: Callable[[np.ndarray], dict[str, np.ndarray]]


def _kernels() -> tuple[Any, Any]:
    try:
        from surge.kernels import image, tabular
    except ImportError as exc:
        raise ConfigError(f"[[preprocess]] steps need Numba: pip install 'surge[kernels]' ({exc})") from None
    return image, tabular


def _image_model_input(p: _Params, model_input: TensorConfig, layout: str) -> tuple[int, int, int]:
    """(channels, h, w) of a model input in ``layout`` "chw" (FP32) or "hwc"; -1 where variable."""
    if len(model_input.dims) != 3:
        raise ConfigError(f"{p.step.where}: op '{p.step.op}' feeds model input '{model_input.name}', which must be 3-D ({layout.upper()}), got dims {list(model_input.dims)}")
    c, h, w = model_input.dims if layout == "chw" else (model_input.dims[2], model_input.dims[0], model_input.dims[1])
    if c < 1:
        raise ConfigError(f"{p.step.where}: model input '{model_input.name}' needs a fixed channel count, got dims {list(model_input.dims)}")
    return c, h, w


def _expect_dtype(p: _Params, model_input: TensorConfig, datatype: str) -> None:
    if model_input.datatype != datatype:
        raise ConfigError(f"{p.step.where}: op '{p.step.op}' makes {datatype}, but model input '{model_input.name}' is {model_input.datatype}")


def _pre_step(step: StepConfig, model_input: TensorConfig) -> _PreStep:
    """Validate one preprocess step against the model input it feeds; returns its kernels and pipeline input."""
    image, tabular = _kernels()
    p = _Params(step)
    op = step.op
    name = step.input
    if op in ("normalize", "resize_crop_normalize"):
        _expect_dtype(p, model_input, "FP32")
        c, h, w = _image_model_input(p, model_input, "chw")
        mean, std = p.floats("mean", _REQUIRED, c), p.floats("std", _REQUIRED, c)
        if not np.all(std):
            raise p.error("std", f"must not contain 0, got {std.tolist()}")  # type: ignore[union-attr]
        scale = p.number("scale", 1.0 / 255.0)
        datatype = p.choice("datatype", "UINT8", _IMAGE_DTYPES)
        if op == "normalize":
            tensor = TensorConfig(name=name, datatype=datatype, dims=(h, w, c))
            cpu = lambda x: image.normalize(x, mean, std, scale=scale)  # noqa: E731
            gpu = lambda kc, x, stream: kc.normalize(x, mean, std, scale=scale, stream=stream)  # noqa: E731
        else:
            crop = p.size("crop", (h, w))
            if (h > 0 and crop[0] != h) or (w > 0 and crop[1] != w):
                raise p.error("crop", f"{list(crop)} does not match model input '{model_input.name}' dims {list(model_input.dims)}")
            resize_to = p.size("resize", None)
            if resize_to[0] < crop[0] or resize_to[1] < crop[1]:
                raise p.error("resize", f"{list(resize_to)} is smaller than the crop {list(crop)}")
            tensor = TensorConfig(name=name, datatype=datatype, dims=(-1, -1, c))
            cpu = lambda x: image.resize_crop_normalize(x, resize_to, crop, mean, std, scale=scale)  # noqa: E731
            gpu = lambda kc, x, stream: kc.resize_crop_normalize(x, resize_to, crop, mean, std, scale=scale, stream=stream)  # noqa: E731
    elif op in ("resize", "letterbox", "center_crop"):
        datatype = p.choice("datatype", "UINT8", _IMAGE_DTYPES)
        _expect_dtype(p, model_input, datatype if op == "center_crop" else "FP32")
        c, h, w = _image_model_input(p, model_input, "hwc")
        size = p.size("size", (h, w))
        if (h > 0 and size[0] != h) or (w > 0 and size[1] != w):
            raise p.error("size", f"{list(size)} does not match model input '{model_input.name}' dims {list(model_input.dims)}")
        tensor = TensorConfig(name=name, datatype=datatype, dims=(-1, -1, c))
        if op == "letterbox":
            pad = p.number("pad_value", 0.0)
            cpu = lambda x: image.letterbox(x, size, pad_value=pad)  # noqa: E731
            gpu = lambda kc, x, stream: kc.letterbox(x, size, pad_value=pad, stream=stream)  # noqa: E731
        else:
            fn = getattr(image, op)
            cpu = lambda x: fn(x, size)  # noqa: E731
            gpu = lambda kc, x, stream: getattr(kc, op)(x, size, stream=stream)  # noqa: E731
    else:
        if len(model_input.dims) != 1:
            raise ConfigError(f"{step.where}: op '{op}' feeds model input '{model_input.name}', which must be 1-D [features], got dims {list(model_input.dims)}")
        f = model_input.dims[0]
        if op == "one_hot":
            _expect_dtype(p, model_input, "FP32")
            depth = p.integer("depth", _REQUIRED, 1)
            if f > 0 and f % depth:
                raise p.error("depth", f"{depth} does not divide model input '{model_input.name}' width {f}")
            tensor = TensorConfig(name=name, datatype="INT64", dims=(f // depth if f > 0 else -1,))
            cpu = lambda x: tabular.one_hot(x, depth)  # noqa: E731
            gpu = lambda kc, x, stream: kc.one_hot(x, depth, stream=stream)  # noqa: E731
        elif op == "hash_bucket":
            _expect_dtype(p, model_input, "INT64")
            buckets, seed = p.integer("num_buckets", _REQUIRED, 1), p.integer("seed", 0, 0)
            tensor = TensorConfig(name=name, datatype="INT64", dims=(f,))
            cpu = lambda x: tabular.hash_bucket(x, buckets, seed=seed)  # noqa: E731
            gpu = lambda kc, x, stream: kc.hash_bucket(x, buckets, seed=seed, stream=stream)  # noqa: E731
        elif op == "bucketize":
            _expect_dtype(p, model_input, "INT64")
            bounds = p._get("boundaries", _REQUIRED)
            if not isinstance(bounds, list) or not bounds or any(isinstance(v, bool) or not isinstance(v, int | float) for v in bounds) or any(a >= b for a, b in zip(bounds, bounds[1:])):
                raise p.error("boundaries", f"expected a non-empty, strictly increasing list of numbers, got {bounds!r}")
            tensor = TensorConfig(name=name, datatype="FP32", dims=(f,))
            cpu = lambda x: tabular.bucketize(x, bounds)  # noqa: E731
            gpu = lambda kc, x, stream: kc.bucketize(x, bounds, stream=stream)  # noqa: E731
        elif op in ("tabular_transform", "standardize", "clip", "fill_missing"):
            _expect_dtype(p, model_input, "FP32")
            keys = {"tabular_transform": ("fill", "low", "high", "mean", "std"), "standardize": ("mean", "std"), "clip": ("low", "high"), "fill_missing": ("values",)}[op]
            widths = {len(v) for k in keys if isinstance(v := step.params.get(k), list)}
            if f < 0 and not widths:
                raise ConfigError(f"{step.where}: model input '{model_input.name}' has a variable width; give the parameters as per-feature lists")
            width = f if f > 0 else widths.pop()
            required = _REQUIRED if op != "tabular_transform" else None
            kw = {k: p.floats(k, required, width) for k in keys}
            if "values" in kw:
                kw = {"fill": kw.pop("values")}
            if (std := kw.get("std")) is not None and not np.all(std):
                raise p.error("std", f"must not contain 0, got {std.tolist()}")
            if (low := kw.get("low")) is not None and (high := kw.get("high")) is not None and np.any(low > high):
                raise p.error("low", f"{low.tolist()} exceeds high {high.tolist()}")
            tensor = TensorConfig(name=name, datatype="FP32", dims=(width,))
            cpu = lambda x: tabular.tabular_transform(x, **kw)  # noqa: E731
            gpu = lambda kc, x, stream: kc.tabular_transform(x, stream=stream, **kw)  # noqa: E731
        else:  # pragma: no cover - op names are checked before
            raise AssertionError(op)
    p.check_no_unknown()
    warm = {"resize_crop_normalize": lambda: (*resize_to, c), "center_crop": lambda: (*size, c)}.get(op, lambda: tensor.dims)()
    return _PreStep(step, tensor, cpu, gpu, tuple(1 if d < 0 else d for d in warm))


def _post_step(step: StepConfig, source: TensorConfig) -> _PostStep:
    from surge.kernels import postprocess as post

    p = _Params(step)
    if not source.dims:
        raise ConfigError(f"{step.where}: op '{step.op}' needs a last axis, but '{source.name}' has dims []")
    head = source.dims[:-1]
    out = step.output
    if step.op == "softmax":
        if source.datatype not in ("FP32", "FP64"):
            raise ConfigError(f"{step.where}: softmax needs FP32 or FP64, '{source.name}' is {source.datatype}")
        tensors: tuple[TensorConfig, ...] = (dataclasses.replace(source, name=out),)
        run = lambda x: {out: post.softmax(x)}  # noqa: E731
    elif step.op == "argmax":
        tensors = (TensorConfig(name=out, datatype="INT64", dims=(*head, 1)),)
        run = lambda x: {out: post.argmax(x)[..., None]}  # noqa: E731
    elif step.op == "threshold":
        value = p.number("value", _REQUIRED)
        tensors = (TensorConfig(name=out, datatype="BOOL", dims=source.dims),)
        run = lambda x: {out: post.threshold(x, value)}  # noqa: E731
    else:
        width = source.dims[-1]
        k = p.integer("k", _REQUIRED, 1)
        if width > 0 and k > width:
            raise p.error("k", f"{k} exceeds the {width} values of '{source.name}'")
        values_name = p._get("values_output", None)
        if values_name is not None and (not isinstance(values_name, str) or not values_name or values_name == out):
            raise p.error("values_output", f"expected a tensor name other than '{out}', got {values_name!r}")
        tensors = (TensorConfig(name=out, datatype="INT64", dims=(*head, k)),)
        if values_name:
            tensors += (TensorConfig(name=values_name, datatype=source.datatype, dims=(*head, k)),)

        def run(x: np.ndarray) -> dict[str, np.ndarray]:
            values, indices = post.topk(x, k)
            return {out: indices, values_name: values} if values_name else {out: indices}

    p.check_no_unknown()
    return _PostStep(step, tensors, run)


_RAGGED_OPS = ("resize", "letterbox", "center_crop", "resize_crop_normalize")


def _decode_step(step: StepConfig, batched: bool) -> _PreStep:
    from .decode import DEFAULT_MAX_PIXELS, JpegDecoder

    p = _Params(step)
    channels = p.integer("channels", 3, 1)
    if channels not in (1, 3):
        raise p.error("channels", f"expected 3 (RGB) or 1 (grey), got {channels}")
    max_pixels = p.integer("max_pixels", DEFAULT_MAX_PIXELS, 1)
    p.check_no_unknown()
    if not batched:
        raise ConfigError(f"{step.where}: decode_jpeg needs a batched model (max_batch_size > 0)")
    tensor = TensorConfig(name=step.input, datatype="BYTES", dims=(1,))
    unused: Callable[..., Any] = lambda *a, **k: None  # noqa: E731  (PipelineInstance decodes with the decoder)
    return _PreStep(step, tensor, unused, unused, (1,), decoder=JpegDecoder(channels, max_pixels))


class Pipeline:
    """A model's validated pipeline; ``config`` is the completed config with the pipeline's signature."""

    def __init__(self, config: ModelConfig) -> None:
        """``config``: completed with the model's own signature (``complete_signature``). Raises ConfigError."""
        self.model_config = config
        self.batched = bool(config.max_batch_size)
        model_inputs = {t.name: t for t in config.inputs}
        self.pre: list[_PreStep] = []
        fed: set[str] = set()
        decoded: dict[str, _PreStep] = {}  # decode_jpeg output name -> its step, until a later step reads it
        for step in config.preprocess:
            if step.op not in PRE_OPS:
                raise ConfigError(f"{step.where}.op: unknown preprocess op {step.op!r}; expected one of {', '.join(PRE_OPS)}")
            if step.op == "decode_jpeg":
                if step.output in model_inputs:
                    raise ConfigError(f"{step.where}.output: decode_jpeg feeds an image step ({', '.join(_RAGGED_OPS)}), not model input '{step.output}'")
                decoded[step.output] = _decode_step(step, self.batched)
                self.pre.append(decoded[step.output])
                continue
            if step.output not in model_inputs:
                raise ConfigError(f"{step.where}.output: '{step.output}' is not a model input; the model has {sorted(model_inputs)}")
            if step.output in fed:
                raise ConfigError(f"{step.where}.output: model input '{step.output}' is already made by an earlier step")
            fed.add(step.output)
            pre = _pre_step(step, model_inputs[step.output])
            source = decoded.pop(step.input, None)
            if source is not None:
                channels = source.decoder.channels
                if step.op not in _RAGGED_OPS or pre.input.datatype != "UINT8" or pre.input.dims[-1] != channels:
                    raise ConfigError(
                        f"{step.where}: reads decode_jpeg's output '{step.input}' (UINT8 images of any size, {channels} channels), "
                        f"so it must be one of {', '.join(_RAGGED_OPS)} taking UINT8 with {channels} channels"
                    )
                pre.ragged = True
                source.warm_dims = pre.warm_dims  # warm-up JPEGs as large as the image step's warm-up images
            self.pre.append(pre)
        if decoded:
            name, pre = next(iter(decoded.items()))
            raise ConfigError(f"{pre.step.where}.output: no later preprocess step reads '{name}'")
        inputs = [t for t in config.inputs if t.name not in fed] + [s.input for s in self.pre if not s.ragged]
        _unique("input", [t.name for t in inputs], "preprocess")
        available = {t.name: t for t in config.outputs}
        self.post: list[_PostStep] = []
        for step in config.postprocess:
            if step.op not in POST_OPS:
                raise ConfigError(f"{step.where}.op: unknown postprocess op {step.op!r}; expected one of {', '.join(POST_OPS)}")
            if step.input not in available:
                raise ConfigError(f"{step.where}.input: '{step.input}' is neither a model output nor an earlier step's output; have {sorted(available)}")
            post = _post_step(step, available[step.input])
            self.post.append(post)
            available.update({t.name: t for t in post.outputs})
        self.config = config.with_signature(tuple(inputs), tuple(available.values()), config.max_batch_size or 0)
        self.model_outputs = tuple(t.name for t in config.outputs)

    def instance(self, runtime: Any, index: int) -> PipelineInstance:
        """The pipeline bound to one runtime instance (picks CUDA kernels on a torch GPU instance)."""
        return PipelineInstance(self, runtime, index)


def _unique(kind: str, names: list[str], where: str) -> None:
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{where}: the pipeline would have {kind}s named {dup} twice; rename a step's input")


class PipelineInstance:
    """Runs preprocess -> runtime -> postprocess for one instance, in that instance's thread."""

    def __init__(self, pipeline: Pipeline, runtime: Any, index: int) -> None:
        self.pipeline = pipeline
        self.runtime = runtime
        self.on_device = False  # preprocessing runs on the GPU and hands device tensors to the runtime
        self._torch: Any = None
        self._kc: Any = None
        self._decode_on_device = False  # decode_jpeg runs nvJPEG on the instance's GPU (torchvision present)
        self._warm_jpegs: dict[tuple[int, ...], bytes] = {}
        device = getattr(runtime, "_device", None)
        if pipeline.pre and device is not None and getattr(device, "type", "") == "cuda" and getattr(runtime, "_stream", None) is not None:
            try:
                from surge.kernels import cuda as kc

                reason = kc.why_unavailable()
                if reason:
                    raise RuntimeError(reason)
            except Exception as exc:
                log.warning("model %s: CUDA kernels unavailable (%s); preprocessing runs on the CPU", pipeline.config.name, exc)
            else:
                import torch

                self._torch, self._kc, self.on_device = torch, kc, True
                if any(pre.decoder is not None for pre in pipeline.pre):
                    try:
                        import torchvision.io  # noqa: F401
                    except Exception as exc:
                        log.warning("model %s: torchvision unavailable (%s); decode_jpeg decodes on the CPU with Pillow", pipeline.config.name, exc)
                    else:
                        self._decode_on_device = True

    def synthetic(self, tensor: TensorConfig, rows: int | None) -> np.ndarray:
        """A zero input for warm-up; a step's input gets dims the step accepts (e.g. an image as large as the crop)."""
        step = next((pre for pre in self.pipeline.pre if pre.input.name == tensor.name), None)
        if step is not None and step.decoder is not None:  # valid JPEGs as large as the image step's warm-up images
            h, w = step.warm_dims[:2]
            jpeg = self._warm_jpegs.get((h, w)) or self._warm_jpegs.setdefault((h, w), step.decoder.sample(h, w))
            return np.full((rows or 1, 1), jpeg, dtype=np.object_)
        dims = step.warm_dims if step is not None else tuple(1 if d < 0 else d for d in tensor.dims)
        if tensor.datatype == "BYTES":
            return np.full(((rows,) if rows is not None else ()) + dims, b"", dtype=np.object_)
        return np.zeros(((rows,) if rows is not None else ()) + dims, dtype=numpy_dtype(tensor.datatype))

    def run(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        """One batch through the pipeline. Raises InvalidInput when a kernel rejects its input."""
        p = self.pipeline
        x: dict[str, Any] = dict(inputs)
        for pre in p.pre:
            array = x.pop(pre.step.input)
            try:
                if pre.decoder is not None:
                    x[pre.step.output] = self._decode(pre, array)
                else:
                    x[pre.step.output] = self._pre_device(pre, array) if self.on_device else self._pre_cpu(pre, array)
            except ValueError as exc:  # KernelInputError: this batch's tensors do not fit the step
                raise InvalidInput(f"model '{p.config.name}' {pre.step.where} ({pre.step.op}) on input '{pre.step.input}': {exc}") from None
        if not p.post:
            return cast("dict[str, np.ndarray]", self.runtime.infer(x, output_names))
        outputs = self.runtime.infer(x, p.model_outputs)
        for post in p.post:
            source = outputs[post.step.input]
            outputs.update(post.run(source) if p.batched else {k: v[0] for k, v in post.run(source[None]).items()})
        return {name: outputs[name] for name in output_names}

    def _decode(self, pre: _PreStep, rows: np.ndarray) -> list[Any]:
        """decode_jpeg: the batch's images (numpy, or torch CUDA tensors on the instance's stream), or RowsRejected."""
        where = f"model '{self.pipeline.config.name}' {pre.step.where} (decode_jpeg) on input '{pre.step.input}'"
        reject = lambda reasons: RowsRejected(where, reasons)  # noqa: E731
        if not self._decode_on_device:
            return cast("list[Any]", pre.decoder.cpu(rows, reject))
        runtime = self.runtime
        with self._torch.cuda.stream(runtime._stream):
            return cast("list[Any]", pre.decoder.cuda(rows, runtime._device, reject))

    def _pre_cpu(self, pre: _PreStep, array: Any) -> np.ndarray:
        if pre.ragged:
            return cast(np.ndarray, self._per_shape(array, lambda group: pre.cpu(np.stack(group)), lambda shape, like: np.empty(shape, like.dtype)))
        return pre.cpu(array) if self.pipeline.batched else pre.cpu(array[None])[0]

    @staticmethod
    def _per_shape(images: list[Any], run: Callable[[list[Any]], Any], empty: Callable[[tuple[int, ...], Any], Any]) -> Any:
        """Run a batched step once per group of equally sized images; one output batch (``empty(shape, like)``) in row order."""
        from .decode import group_by_shape

        groups = group_by_shape(images)
        if len(groups) == 1:
            return run(images)
        out = None
        for _, indices in groups:
            part = run([images[i] for i in indices])
            if out is None:
                out = empty((len(images), *part.shape[1:]), part)
            out[indices] = part
        return out

    def _pre_device(self, pre: _PreStep, array: Any) -> Any:
        """Upload the raw batch, run the CUDA kernel on the runtime's stream, hand back a torch CUDA tensor (no copy)."""
        torch, kc, runtime = self._torch, self._kc, self.runtime
        from numba import cuda

        with cuda.gpus[runtime._device.index or 0]:
            stream = cuda.external_stream(runtime._stream.cuda_stream)  # the runtime's stream: ordered, no sync here
            if pre.ragged:  # decoded images (CUDA tensors from nvJPEG, or numpy from Pillow), grouped by size
                def run(group: list[Any]) -> Any:
                    with torch.cuda.stream(runtime._stream):
                        stacked = torch.stack(group) if isinstance(group[0], torch.Tensor) else np.stack(group)
                    return torch.as_tensor(pre.gpu(kc, kc.as_device(stacked, stream), stream), device=runtime._device)

                with torch.cuda.stream(runtime._stream):
                    return self._per_shape(array, run, lambda shape, like: torch.empty(shape, dtype=like.dtype, device=like.device))
            batch = array if self.pipeline.batched else array[None]
            device = kc.as_device(np.ascontiguousarray(batch), stream)
            out = pre.gpu(kc, device, stream)
            tensor = torch.as_tensor(out, device=runtime._device)
        return tensor if self.pipeline.batched else tensor[0]
