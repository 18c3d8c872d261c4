"""CUDA kernels (``surge.kernels.cuda``) equal the NumPy references: edge shapes, odd sizes, strided device views.

Marked ``gpu``: skipped without a GPU (tests/conftest.py), and skipped with numba's reason when numba.cuda cannot
start. The same cases run on numba's CUDA *simulator* (``python -m tests.gpu.test_kernels_cuda`` with
``NUMBA_ENABLE_CUDASIM=1``, from tests/unit/test_kernels_cudasim.py): that checks the kernels' indexing logic on
the CPU; it is not a GPU and says nothing about speed or the CUDA compiler.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from surge.kernels import image, tabular

# small grids on purpose (1 pixel): numba's low-occupancy hint is not a failure
pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore::numba.core.errors.NumbaPerformanceWarning")]

# (n, h, w, c, dtype, strided): 1 pixel, 1 row/column, odd sizes, a batch, a strided (non-contiguous) device view
IMAGE_CASES = [
    (1, 1, 1, 3, np.uint8, False),
    (1, 1, 7, 1, np.uint8, False),
    (2, 13, 9, 3, np.uint8, True),
    (3, 32, 47, 4, np.float32, False),
    (2, 17, 5, 3, np.float32, True),
]
SIZES = [(1, 1), (5, 11), (24, 24)]
TABLE_CASES = [(1, 1, False), (7, 3, True), (33, 5, False)]


def _cuda():
    from surge.kernels import cuda as kc

    reason = kc.why_unavailable()
    if reason:
        pytest.skip(reason)
    return kc


def _image(case: tuple, seed: int = 0):
    kc = _cuda()
    from numba import cuda

    n, h, w, c, dtype, strided = case
    rng = np.random.default_rng(seed)
    host = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8) if dtype == np.uint8 else rng.uniform(-2, 300, (n, h, w, c)).astype(np.float32)
    if not strided:
        return kc, host, kc.as_device(host)
    wide = np.zeros((n, h, w * 2, c), dtype=host.dtype)
    wide[:, :, ::2] = host
    return kc, host, cuda.to_device(wide)[:, :, ::2]  # a strided device view


def _close(device, expected: np.ndarray) -> None:
    got = device.copy_to_host()
    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)  # FMA contraction on the GPU


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_normalize(case: tuple) -> None:
    kc, host, dev = _image(case)
    mean, std = np.linspace(0.3, 0.6, host.shape[3]), np.linspace(0.2, 0.3, host.shape[3])
    _close(kc.normalize(dev, mean, std), image.normalize_ref(host, mean, std))


@pytest.mark.parametrize(("case", "size"), list(itertools.product(IMAGE_CASES, SIZES)))
def test_resize_and_letterbox(case: tuple, size: tuple[int, int]) -> None:
    kc, host, dev = _image(case)
    _close(kc.resize(dev, size), image.resize_ref(host, size))
    _close(kc.letterbox(dev, size, pad_value=114.0), image.letterbox_ref(host, size, pad_value=114.0))


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_center_crop(case: tuple) -> None:
    kc, host, dev = _image(case)
    size = (max(1, host.shape[1] // 2 + 1), max(1, host.shape[2] - 1))
    np.testing.assert_array_equal(kc.center_crop(dev, size).copy_to_host(), image.center_crop_ref(host, size))


@pytest.mark.parametrize(("case", "size"), list(itertools.product(IMAGE_CASES, SIZES)))
def test_resize_crop_normalize(case: tuple, size: tuple[int, int]) -> None:
    kc, host, dev = _image(case)
    resize_to = (size[0] + 2, size[1] + 3)
    mean, std = 0.45, 0.225
    _close(kc.resize_crop_normalize(dev, resize_to, size, mean, std), image.resize_crop_normalize_ref(host, resize_to, size, mean, std))


def test_three_dimensional_image() -> None:
    kc, host, _ = _image((1, 9, 6, 3, np.uint8, False))
    _close(kc.resize_crop_normalize(host[0], (8, 8), (6, 6), 0.5, 0.25), image.resize_crop_normalize_ref(host[0], (8, 8), (6, 6), 0.5, 0.25))


def _table(case: tuple, kind: str):
    kc = _cuda()
    from numba import cuda

    rows, features, strided = case
    rng = np.random.default_rng(rows * 31 + features)
    if kind == "f":
        host = rng.standard_normal((rows, features)) * 3
        host[rng.random((rows, features)) < 0.2] = np.nan
    else:
        host = rng.integers(-5, 40, (rows, features)).astype(np.int64)
    if not strided:
        return kc, host, kc.as_device(host)
    wide = np.zeros((rows, features * 2), dtype=host.dtype)
    wide[:, ::2] = host
    return kc, host, cuda.to_device(wide)[:, ::2]


@pytest.mark.parametrize("case", TABLE_CASES)
def test_tabular_transform_and_bucketize(case: tuple) -> None:
    kc, host, dev = _table(case, "f")
    kw = dict(fill=0.5, low=-2.0, high=2.5, mean=0.25, std=1.5)
    _close(kc.tabular_transform(dev, **kw), tabular.tabular_transform_ref(host, **kw))
    np.testing.assert_array_equal(kc.bucketize(dev, [-1.0, 0.0, 0.5, 2.0]).copy_to_host(), tabular.bucketize_ref(host, [-1.0, 0.0, 0.5, 2.0]))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the simulator's numpy scalars; wrapping is intended
@pytest.mark.parametrize("case", TABLE_CASES)
def test_one_hot_and_hash(case: tuple) -> None:
    kc, host, dev = _table(case, "i")
    np.testing.assert_array_equal(kc.one_hot(dev, 17).copy_to_host(), tabular.one_hot_ref(host, 17))
    np.testing.assert_array_equal(kc.hash_bucket(dev, 101, seed=7).copy_to_host(), tabular.hash_bucket_ref(host, 101, seed=7))


def _run_all() -> int:
    """Run every case in this process (for the simulator); returns the number of checks."""
    import warnings

    warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)
    count = 0
    for case in IMAGE_CASES:
        test_normalize(case)
        test_center_crop(case)
        for size in SIZES[:2]:
            test_resize_and_letterbox(case, size)
            test_resize_crop_normalize(case, size)
            count += 2
        count += 2
    test_three_dimensional_image()
    for case in TABLE_CASES:
        test_tabular_transform_and_bucketize(case)
        test_one_hot_and_hash(case)
        count += 2
    return count + 1


if __name__ == "__main__":
    print(f"{_run_all()} CUDA kernel checks passed")
