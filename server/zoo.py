"""Real architectures as model repository entries, generated in code (seeded random weights, nothing downloaded).

    resnet     torchvision's ResNet-50 layout (Bottleneck blocks [3, 4, 6, 3], width 64; the same parameter names,
               so a torchvision state dict loads), wrapped so the program ends in softmax + top-5. Served as
               JPEG bytes in, classes out: decode_jpeg -> resize_crop_normalize (Numba kernels) -> the model,
               whose top-5 runs where the model runs (inside its CUDA graph on a GPU): only
               classes[batch, 5] (INT64) and scores[batch, 5] (FP32) leave the device.
    bert       the BERT encoder (transformers' BertModel layout and parameter names: embeddings, post-norm layers,
               exact GELU; no pooler) with a masked mean over the sequence: input_ids and attention_mask
               (INT64 [batch, length], any length up to max_length) -> embedding[batch, hidden] (FP32). Clients
               send token ids (tokenising stays with the client, e.g. the ``tokenizers`` library and the model's
               own vocabulary). On a GPU the torch runtime pads the length to the next ``sequence_buckets`` entry
               and replays one CUDA graph per (batch, length) bucket.

Presets: ``RESNET50`` and ``BERT_BASE`` are the true sizes (the GPU benchmark serves them, fp16); ``RESNET_SMALL``
(the same depth at width 8) and ``BERT_TINY`` keep tests on a CPU fast. Both programs are ``torch.export``
files (``model.pt2``) with a dynamic batch dimension (and length, for BERT).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BERT_BASE", "BERT_TINY", "RESNET50", "RESNET_SMALL", "BertSpec", "ResNetSpec",
    "bert_encoder", "default_buckets", "resnet_classifier", "write_bert_entry", "write_resnet_entry",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ResNetSpec:
    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    width: int = 64
    classes: int = 1000
    crop: int = 224
    resize: int = 256
    k: int = 5


@dataclass(frozen=True)
class BertSpec:
    vocab_size: int = 30522
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    max_length: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12


RESNET50 = ResNetSpec()
RESNET_SMALL = ResNetSpec(width=8, classes=100, crop=64, resize=72)
BERT_BASE = BertSpec()
BERT_TINY = BertSpec(vocab_size=1000, hidden=32, layers=2, heads=2, intermediate=64, max_length=128)


def _nn() -> tuple[Any, Any]:
    import torch
    from torch import nn

    return torch, nn


def resnet_classifier(spec: ResNetSpec = RESNET50, seed: int = 0) -> Any:
    """``torch.nn.Module``: float32 images [N, 3, crop, crop] -> (classes INT64 [N, k], scores FP32 [N, k])."""
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, inplanes: int, planes: int, stride: int, downsample: Any) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)  # stride here: ResNet v1.5
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = downsample

        def forward(self, x: Any) -> Any:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            return self.relu(self.bn3(self.conv3(out)) + identity)

    class ResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = spec.width
            self.inplanes = w
            self.conv1 = nn.Conv2d(3, w, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(w)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            self.layer1 = self._layer(w, spec.layers[0], 1)
            self.layer2 = self._layer(w * 2, spec.layers[1], 2)
            self.layer3 = self._layer(w * 4, spec.layers[2], 2)
            self.layer4 = self._layer(w * 8, spec.layers[3], 2)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(w * 8 * 4, spec.classes)
            for m in self.modules():  # torchvision's initialisation
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

        def _layer(self, planes: int, blocks: int, stride: int) -> Any:
            downsample = None
            if stride != 1 or self.inplanes != planes * 4:
                downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4))
            layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes * 4
            layers += [Bottleneck(self.inplanes, planes, 1, None) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def forward(self, x: Any) -> Any:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    class TopK(nn.Module):
        """The network, then softmax and top-k where the network runs."""

        def __init__(self) -> None:
            super().__init__()
            self.net = ResNet()

        def forward(self, images: Any) -> tuple[Any, Any]:
            # no dtype or device conversion here: torch.export would bake them in as checks (fp32, CPU)
            scores, classes = torch.topk(torch.softmax(self.net(images), dim=-1), spec.k, dim=-1)
            return classes, scores

    torch.manual_seed(seed)
    return TopK().eval()


def bert_encoder(spec: BertSpec = BERT_BASE, seed: int = 0) -> Any:
    """``torch.nn.Module``: (input_ids, attention_mask) INT64 [N, L] -> mean-pooled embedding FP32 [N, hidden]."""
    import torch
    from torch import nn
    functional = torch.nn.functional
    head_dim = spec.hidden // spec.heads

    class Embeddings(nn.Module):
        position_ids: torch.Tensor  # a registered buffer

        def __init__(self) -> None:
            super().__init__()
            self.word_embeddings = nn.Embedding(spec.vocab_size, spec.hidden, padding_idx=0)
            self.position_embeddings = nn.Embedding(spec.max_length, spec.hidden)
            self.token_type_embeddings = nn.Embedding(spec.type_vocab_size, spec.hidden)
            self.LayerNorm = nn.LayerNorm(spec.hidden, eps=spec.layer_norm_eps)
            # a buffer, not torch.arange(device=...): torch.export would bake the device in; it moves with the module
            self.register_buffer("position_ids", torch.arange(spec.max_length), persistent=False)

        def forward(self, ids: Any) -> Any:
            x = self.word_embeddings(ids) + self.position_embeddings(self.position_ids[: ids.shape[1]]) + self.token_type_embeddings.weight[0]
            return self.LayerNorm(x)

    class SelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.query, self.key, self.value = (nn.Linear(spec.hidden, spec.hidden) for _ in range(3))

        def forward(self, x: Any, mask: Any) -> Any:
            n, length, _ = x.shape
            q, k, v = (f(x).view(n, length, spec.heads, head_dim).transpose(1, 2) for f in (self.query, self.key, self.value))
            return functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(n, length, spec.hidden)

    class DenseNorm(nn.Module):  # BertSelfOutput / BertOutput: dense, then LayerNorm of (it + the residual)
        def __init__(self, width: int) -> None:
            super().__init__()
            self.dense = nn.Linear(width, spec.hidden)
            self.LayerNorm = nn.LayerNorm(spec.hidden, eps=spec.layer_norm_eps)

        def forward(self, x: Any, residual: Any) -> Any:
            return self.LayerNorm(self.dense(x) + residual)

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.self = SelfAttention()
            self.output = DenseNorm(spec.hidden)

    class Intermediate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dense = nn.Linear(spec.hidden, spec.intermediate)

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = Attention()
            self.intermediate = Intermediate()
            self.output = DenseNorm(spec.intermediate)

        def forward(self, x: Any, mask: Any) -> Any:
            a = self.attention.output(self.attention.self(x, mask), x)
            return self.output(functional.gelu(self.intermediate.dense(a)), a)

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.ModuleList(Layer() for _ in range(spec.layers))

    class MeanPooledBert(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embeddings = Embeddings()
            self.encoder = Encoder()
            for m in self.modules():  # BERT's initialisation: N(0, 0.02), zero biases
                if isinstance(m, nn.Linear | nn.Embedding):
                    nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear):
                    nn.init.zeros_(m.bias)

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            # no dtype or device conversion here: torch.export would bake them in (fp32, CPU); the runtime makes the
            # output FP32 whatever precision the module runs in
            keep = attention_mask > 0
            x = self.embeddings(input_ids)
            mask = keep[:, None, None, :]  # attend to the real tokens only
            for layer in self.encoder.layer:
                x = layer(x, mask)
            total = torch.where(keep[..., None], x, torch.zeros_like(x)).sum(1)
            return total / keep.sum(1, keepdim=True).clamp(min=1)

    torch.manual_seed(seed)
    return MeanPooledBert().eval()


def _export(module: Any, example: tuple[Any, ...], dynamic: tuple[dict[int, Any], ...], path: Path) -> None:
    torch, _ = _nn()
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.export.export(module, example, dynamic_shapes=dynamic)
    torch.export.save(program, str(path))


def _floats(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(repr(v) for v in values) + "]"


def write_resnet_entry(
    root: Path, name: str = "resnet50", *, spec: ResNetSpec = RESNET50, max_batch_size: int = 64, precision: str = "fp32",
    kind: str = "auto", max_queue_delay_s: float = 0.002, seed: int = 0,
) -> Path:
    """Write ``root/name`` (config.toml and 1/model.pt2): JPEG bytes in, top-5 classes and scores out."""
    torch, _ = _nn()
    folder = root / name
    example = torch.zeros(2, 3, spec.crop, spec.crop)
    batch = torch.export.Dim("batch", min=1, max=max(max_batch_size, 2))
    _export(resnet_classifier(spec, seed), (example,), ({0: batch},), folder / "1" / "model.pt2")
    (folder / "config.toml").write_text(f"""\
# {name}: JPEG bytes in (one image per row), the top {spec.k} classes out. ResNet ({list(spec.layers)} blocks, width
# {spec.width}) with random weights, generated by surge.server.zoo. Decoded (nvJPEG on a GPU with torchvision, else
# Pillow), resized to {spec.resize}, centre-cropped to {spec.crop} and normalised by Surge's kernels, then the network
# and its top-{spec.k} (one torch.export program; CUDA graphs per batch bucket on a GPU).
backend = "torch"
max_batch_size = {max_batch_size}

[dynamic_batching]
max_queue_delay_s = {max_queue_delay_s}

[instance_group]
kind = "{kind}"

[[input]]
name = "images"
datatype = "FP32"
dims = [3, {spec.crop}, {spec.crop}]

[[output]]
name = "classes"
datatype = "INT64"
dims = [{spec.k}]

[[output]]
name = "scores"
datatype = "FP32"
dims = [{spec.k}]

[[preprocess]]
op = "decode_jpeg"
input = "jpeg"
output = "image"

[[preprocess]]
op = "resize_crop_normalize"
input = "image"
output = "images"
resize = [{spec.resize}, {spec.resize}]
crop = [{spec.crop}, {spec.crop}]
mean = {_floats(IMAGENET_MEAN)}
std = {_floats(IMAGENET_STD)}

[parameters]
precision = "{precision}"
""", encoding="utf-8")
    return folder


def default_buckets(max_length: int) -> list[int]:
    """Sequence-length buckets: powers of two from 16 up to ``max_length`` (which is always one)."""
    return sorted({1 << i for i in range(4, max_length.bit_length()) if 1 << i < max_length} | {max_length})


def write_bert_entry(
    root: Path, name: str = "bert", *, spec: BertSpec = BERT_BASE, max_length: int = 128, max_batch_size: int = 64,
    precision: str = "fp32", kind: str = "auto", max_queue_delay_s: float = 0.002, sequence_buckets: list[int] | None = None,
    seed: int = 0,
) -> Path:
    """Write ``root/name`` (config.toml and 1/model.pt2): token ids in, a mean-pooled embedding out."""
    torch, _ = _nn()
    if not 2 <= max_length <= spec.max_length:
        raise ValueError(f"max_length {max_length} must lie in 2..{spec.max_length} (the model's positions)")
    folder = root / name
    example = (torch.ones(2, 8, dtype=torch.int64), torch.ones(2, 8, dtype=torch.int64))
    batch = torch.export.Dim("batch", min=1, max=max(max_batch_size, 2))
    length = torch.export.Dim("length", min=1, max=max_length)
    _export(bert_encoder(spec, seed), example, ({0: batch, 1: length}, {0: batch, 1: length}), folder / "1" / "model.pt2")
    buckets = sequence_buckets or default_buckets(max_length)
    (folder / "config.toml").write_text(f"""\
# {name}: a BERT encoder ({spec.layers} layers, hidden {spec.hidden}, {spec.heads} heads) with random weights, generated by
# surge.server.zoo. Clients send token ids and the attention mask (INT64 [batch, length], length <= {max_length}; 0 in
# the mask marks padding) and get the mean of the last layer over the real tokens. Requests batch together when
# their lengths are equal: pad to one of the sequence buckets to share batches. On a GPU each batch is padded to
# the next bucket and replays that (batch, length) bucket's CUDA graph.
backend = "torch"
max_batch_size = {max_batch_size}

[dynamic_batching]
max_queue_delay_s = {max_queue_delay_s}

[instance_group]
kind = "{kind}"

[[input]]
name = "input_ids"
datatype = "INT64"
dims = [-1]

[[input]]
name = "attention_mask"
datatype = "INT64"
dims = [-1]

[[output]]
name = "embedding"
datatype = "FP32"
dims = [{spec.hidden}]

[parameters]
precision = "{precision}"
sequence_buckets = {buckets}
""", encoding="utf-8")
    return folder
