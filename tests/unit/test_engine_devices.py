"""Which engine owns which model (``engine/devices.py``): one engine per GPU, named by the model's first listed GPU."""

from __future__ import annotations

from pathlib import Path

from surge.server.engine.devices import device_of, devices_for


def _model(root: Path, name: str, body: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "config.toml").write_text(body)


def test_a_gpu_model_belongs_to_the_engine_of_its_first_listed_gpu(tmp_path: Path) -> None:
    _model(tmp_path, "on0", '[instance_group]\nkind = "gpu"\ngpus = [0]\n')
    _model(tmp_path, "on1", '[instance_group]\nkind = "gpu"\ngpus = [1]\n')
    _model(tmp_path, "on1and0", '[instance_group]\ncount = 2\nkind = "gpu"\ngpus = [1, 0]\n')
    _model(tmp_path, "unlisted", '[instance_group]\nkind = "gpu"\n')
    _model(tmp_path, "cpu", '[instance_group]\nkind = "cpu"\n')
    _model(tmp_path, "trt", 'backend = "tensorrt"\n')
    _model(tmp_path, "trt3", 'backend = "tensorrt"\n\n[instance_group]\ngpus = [3, 1]\n')
    _model(tmp_path, "broken", "max_batch_size = [\n")
    owners = {name: device_of(tmp_path, name) for name in ("on0", "on1", "on1and0", "unlisted", "cpu", "trt", "trt3", "broken")}
    assert owners == {"on0": "gpu0", "on1": "gpu1", "on1and0": "gpu1", "unlisted": "gpu0", "cpu": "cpu", "trt": "gpu0", "trt3": "gpu3",
                      "broken": "cpu"}  # fmt: skip
    assert devices_for(tmp_path) == ["cpu", "gpu0", "gpu1", "gpu3"]


def test_the_cpu_engine_is_always_started(tmp_path: Path) -> None:
    _model(tmp_path, "cpu", '[instance_group]\nkind = "cpu"\n')
    assert devices_for(tmp_path) == ["cpu"]
    assert devices_for(tmp_path / "missing") == ["cpu"]


def test_gpu_ids_order_numerically(tmp_path: Path) -> None:
    for gpu in (10, 2):
        _model(tmp_path, f"m{gpu}", f'[instance_group]\nkind = "gpu"\ngpus = [{gpu}]\n')
    assert devices_for(tmp_path) == ["cpu", "gpu2", "gpu10"]
