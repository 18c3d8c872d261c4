"""Micro-benchmarks: each CPU kernel (Numba) against its NumPy reference (pytest-benchmark; not part of the test suite).

    NUMBA_NUM_THREADS=2 taskset -c 0,1 .venv/bin/python -m pytest bench/micro/test_kernels.py --benchmark-only \\
        --benchmark-json=/tmp/kernels.json && .venv/bin/python -m bench.micro.speedup /tmp/kernels.json

Each kernel and its reference form one benchmark group; ``bench.micro.speedup`` prints reference median / kernel
median per group. Sizes are serving-shaped: a batch of 8 camera images (480x640 RGB, uint8) for the image kernels,
65,536 rows x 32 features for the tabular ones. The kernels are compiled (or loaded from Numba's cache) before timing.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from surge.kernels import image, tabular

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (8, 480, 640, 3), dtype=np.uint8)
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TABLE = RNG.standard_normal((65_536, 32)).astype(np.float32)
TABLE[RNG.random(TABLE.shape) < 0.05] = np.nan
IDS = RNG.integers(0, 1_000_000, (65_536, 8))
SMALL_IDS = RNG.integers(0, 16, (65_536, 4))

CASES: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
    "normalize 8x480x640": (lambda: image.normalize(IMAGES, MEAN, STD), lambda: image.normalize_ref(IMAGES, MEAN, STD)),
    "resize 8x480x640->224x224": (lambda: image.resize(IMAGES, (224, 224)), lambda: image.resize_ref(IMAGES, (224, 224))),
    "center_crop 8x480x640->224x224": (lambda: image.center_crop(IMAGES, (224, 224)), lambda: image.center_crop_ref(IMAGES, (224, 224))),
    "letterbox 8x480x640->640x640": (lambda: image.letterbox(IMAGES, (640, 640), pad_value=114), lambda: image.letterbox_ref(IMAGES, (640, 640), pad_value=114)),
    "resize_crop_normalize 8x480x640->256->224": (
        lambda: image.resize_crop_normalize(IMAGES, (256, 256), (224, 224), MEAN, STD),
        lambda: image.resize_crop_normalize_ref(IMAGES, (256, 256), (224, 224), MEAN, STD),
    ),
    "standardize 65536x32": (lambda: tabular.standardize(TABLE, 0.1, 2.0), lambda: tabular.standardize_ref(TABLE, 0.1, 2.0)),
    "clip 65536x32": (lambda: tabular.clip(TABLE, -1, 1), lambda: tabular.clip_ref(TABLE, -1, 1)),
    "fill_missing 65536x32": (lambda: tabular.fill_missing(TABLE, 0.0), lambda: tabular.fill_missing_ref(TABLE, 0.0)),
    "tabular_transform 65536x32": (
        lambda: tabular.tabular_transform(TABLE, fill=0.0, low=-2, high=2, mean=0.1, std=2.0),
        lambda: tabular.tabular_transform_ref(TABLE, fill=0.0, low=-2, high=2, mean=0.1, std=2.0),
    ),
    "bucketize 65536x32 (16 bounds)": (lambda: tabular.bucketize(TABLE, np.linspace(-2, 2, 16)), lambda: tabular.bucketize_ref(TABLE, np.linspace(-2, 2, 16))),
    "one_hot 65536x4 depth 16": (lambda: tabular.one_hot(SMALL_IDS, 16), lambda: tabular.one_hot_ref(SMALL_IDS, 16)),
    "hash_bucket 65536x8": (lambda: tabular.hash_bucket(IDS, 1000), lambda: tabular.hash_bucket_ref(IDS, 1000)),
}


@pytest.mark.parametrize("impl", ["kernel", "reference"])
@pytest.mark.parametrize("case", list(CASES))
def test_kernel(benchmark, case: str, impl: str) -> None:
    fn = CASES[case][0 if impl == "kernel" else 1]
    fn()  # compile / load from cache, touch the memory
    benchmark.group = case
    benchmark.pedantic(fn, rounds=15, iterations=1, warmup_rounds=1)
