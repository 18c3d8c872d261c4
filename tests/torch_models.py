"""PyTorch models for tests and GPU benchmarks, generated in code (seeded; TorchScript and torch.export files)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

__all__ = ["TinyCNN", "make_mlp", "write_torch_model"]


def make_mlp(sizes: tuple[int, ...] = (256, 1024, 1024, 16), seed: int = 0) -> nn.Module:
    """A ReLU MLP with the given layer widths (the benchmark MLP is 256 -> 1024 -> 1024 -> 16)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


class TinyCNN(nn.Module):
    """A small CNN over 3x32x32 images -> 10 scores."""

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def write_torch_model(folder: Path, module: nn.Module, example: torch.Tensor, *, kind: str, config: str) -> Path:
    """Write ``folder/1/model.pt`` (TorchScript, kind "script") or ``model.pt2`` (torch.export, kind "export")."""
    version = folder / "1"
    version.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    if kind == "script":
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; Surge still serves existing archives
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(torch.jit.trace(module, example), str(version / "model.pt"))
    else:
        batch = torch.export.Dim("batch", min=1, max=1024)
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(version / "model.pt2"))
    (folder / "config.toml").write_text(config)
    return folder
