"""Every CPU kernel equals its NumPy reference on random inputs of random sizes (hypothesis), edge shapes included.

Sizes go down to 1 pixel / 1 row, odd sizes, and non-contiguous inputs (strided views, Fortran order). Kernels and
references use the same float32 arithmetic, so the tolerance is tight (1e-5 relative, 1e-5 absolute). Every example
runs both twins of a kernel: the serial one and the parallel (``prange``) one.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from surge.kernels import KernelInputError, _common, image, postprocess, tabular

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def both_twins(test):
    """Run the test body with the serial kernels, then with the parallel ones (small inputs pick serial otherwise)."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        saved = _common.PARALLEL_MIN_ELEMENTS
        try:
            for threshold in (1 << 62, 0):
                _common.PARALLEL_MIN_ELEMENTS = threshold
                test(*args, **kwargs)
        finally:
            _common.PARALLEL_MIN_ELEMENTS = saved

    return run


def _layout(base: np.ndarray, layout: str) -> np.ndarray:
    """``base`` as C order, a strided view with the same values, or Fortran order."""
    if layout == "strided":
        wide = np.zeros((*base.shape[:-1], base.shape[-1] * 2), dtype=base.dtype)
        wide[..., ::2] = base
        view = wide[..., ::2]
        assert not view.flags.c_contiguous or view.shape[-1] == 1
        return view
    if layout == "fortran":
        return np.asfortranarray(base)
    return base


@st.composite
def images(draw: st.DrawFn, *, max_side: int = 19) -> np.ndarray:
    n = draw(st.integers(1, 3))
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    c = draw(st.sampled_from([1, 3, 4]))
    dtype = draw(st.sampled_from([np.uint8, np.float32]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8) if dtype == np.uint8 else rng.uniform(-2, 300, (n, h, w, c)).astype(np.float32)
    array = _layout(base, draw(st.sampled_from(["c", "strided", "fortran"])))
    return array[0] if draw(st.booleans()) else array  # HWC as well as NHWC


sizes = st.tuples(st.integers(1, 23), st.integers(1, 23))


def _params(c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, c).astype(np.float32), rng.uniform(0.1, 2, c).astype(np.float32)


def _close(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(images(), st.integers(0, 100), st.floats(0.001, 2.0))
@both_twins
def test_normalize(x: np.ndarray, seed: int, scale: float) -> None:
    mean, std = _params(x.shape[-1], seed)
    _close(image.normalize(x, mean, std, scale=scale), image.normalize_ref(x, mean, std, scale=scale))


@SETTINGS
@given(images(), sizes)
@both_twins
def test_resize(x: np.ndarray, size: tuple[int, int]) -> None:
    _close(image.resize(x, size), image.resize_ref(x, size))


@SETTINGS
@given(images(), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
@both_twins
def test_center_crop(x: np.ndarray, fh: float, fw: float) -> None:
    h, w = x.shape[-3], x.shape[-2]
    size = (max(1, round(h * fh)), max(1, round(w * fw)))
    out = image.center_crop(x, size)
    np.testing.assert_array_equal(out, image.center_crop_ref(x, size))
    assert out.dtype == x.dtype


@SETTINGS
@given(images(), sizes, st.floats(0, 255))
@both_twins
def test_letterbox(x: np.ndarray, size: tuple[int, int], pad: float) -> None:
    _close(image.letterbox(x, size, pad_value=pad), image.letterbox_ref(x, size, pad_value=pad))


@SETTINGS
@given(images(), sizes, st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.integers(0, 100))
@both_twins
def test_resize_crop_normalize(x: np.ndarray, resize_to: tuple[int, int], fh: float, fw: float, seed: int) -> None:
    crop = (max(1, round(resize_to[0] * fh)), max(1, round(resize_to[1] * fw)))
    mean, std = _params(x.shape[-1], seed)
    fused = image.resize_crop_normalize(x, resize_to, crop, mean, std)
    _close(fused, image.resize_crop_normalize_ref(x, resize_to, crop, mean, std))
    # and the reference chain is what it says: the three references in a row
    _close(fused, image.normalize_ref(image.center_crop_ref(image.resize_ref(x, resize_to), crop), mean, std))


def test_resize_identity_and_known_values() -> None:
    x = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    np.testing.assert_array_equal(image.resize(x, (2, 2)), x.astype(np.float32))
    up = image.resize(np.array([[[0], [100]]], dtype=np.uint8), (1, 4))  # half-pixel centres: 0, 25, 75, 100
    np.testing.assert_allclose(up[0, :, 0], [0, 25, 75, 100])


@st.composite
def tables(draw: st.DrawFn, *, kinds: str = "f") -> np.ndarray:
    rows = draw(st.integers(1, 40))
    features = draw(st.integers(1, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kinds == "f":
        dtype = draw(st.sampled_from([np.float32, np.float64]))
        base = rng.standard_normal((rows, features)).astype(dtype) * 3
        base[rng.random((rows, features)) < 0.2] = np.nan
    else:
        dtype = draw(st.sampled_from([np.int32, np.int64]))
        base = rng.integers(-5, 40, (rows, features)).astype(dtype)
    array = _layout(base, draw(st.sampled_from(["c", "strided", "fortran"])))
    return array[:, 0] if features == 1 and draw(st.booleans()) else array


def _features(x: np.ndarray) -> int:
    return 1 if x.ndim == 1 else x.shape[1]


@SETTINGS
@given(tables(), st.integers(0, 100))
@both_twins
def test_standardize(x: np.ndarray, seed: int) -> None:
    mean, std = _params(_features(x), seed)
    _close(tabular.standardize(x, mean, std), tabular.standardize_ref(x, mean, std))


@SETTINGS
@given(tables(), st.floats(-3, 0), st.floats(0, 3))
@both_twins
def test_clip(x: np.ndarray, low: float, high: float) -> None:
    _close(tabular.clip(x, low, high), tabular.clip_ref(x, low, high))


@SETTINGS
@given(tables(), st.integers(0, 100))
@both_twins
def test_fill_missing(x: np.ndarray, seed: int) -> None:
    values, _ = _params(_features(x), seed)
    out = tabular.fill_missing(x, values)
    _close(out, tabular.fill_missing_ref(x, values))
    assert not np.isnan(out).any()


@SETTINGS
@given(tables(), st.integers(0, 100))
@both_twins
def test_tabular_transform(x: np.ndarray, seed: int) -> None:
    mean, std = _params(_features(x), seed)
    kw = dict(fill=0.5, low=-2.0, high=2.5, mean=mean, std=std)
    _close(tabular.tabular_transform(x, **kw), tabular.tabular_transform_ref(x, **kw))


@SETTINGS
@given(tables(), st.lists(st.floats(-4, 4), min_size=1, max_size=12, unique=True))
@both_twins
def test_bucketize(x: np.ndarray, bounds: list[float]) -> None:
    bounds = sorted(bounds)
    np.testing.assert_array_equal(tabular.bucketize(x, bounds), tabular.bucketize_ref(x, bounds))


@SETTINGS
@given(tables(kinds="i"), st.integers(1, 40))
@both_twins
def test_one_hot(ids: np.ndarray, depth: int) -> None:
    np.testing.assert_array_equal(tabular.one_hot(ids, depth), tabular.one_hot_ref(ids, depth))


@SETTINGS
@given(tables(kinds="i"), st.integers(1, 10_000), st.integers(0, 2**63 - 1))
@both_twins
def test_hash_bucket(ids: np.ndarray, buckets: int, seed: int) -> None:
    out = tabular.hash_bucket(ids, buckets, seed=seed)
    np.testing.assert_array_equal(out, tabular.hash_bucket_ref(ids, buckets, seed=seed))
    assert out.min() >= 0 and out.max() < buckets


def test_hash_is_stable() -> None:
    """The bucket of an id never changes between versions (a model trained on it depends on that)."""
    np.testing.assert_array_equal(tabular.hash_bucket(np.array([0, 1, 42, -7]), 1000), [535, 465, 413, 752])  # splitmix64 in Python ints


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: image.normalize(np.zeros((4, 4), np.uint8), 0, 1), "expected 3 or 4 dimensions"),
        (lambda: image.normalize(np.zeros((4, 4, 3), np.int16), 0, 1), "integer images must be uint8"),
        (lambda: image.normalize(np.zeros((4, 4, 3), np.float64), 0, 1), "float images must be float32"),
        (lambda: image.normalize(np.zeros((4, 4, 3), np.uint8), [0, 0], 1), "expected 3 values"),
        (lambda: image.normalize(np.zeros((4, 4, 3), np.uint8), 0, 0), "std: must not contain 0"),
        (lambda: image.normalize([[1]], 0, 1), "expected a numpy array"),
        (lambda: image.resize(np.zeros((4, 4, 3), np.uint8), (0, 3)), "size: expected an integer >= 1"),
        (lambda: image.center_crop(np.zeros((4, 4, 3), np.uint8), (5, 2)), "does not fit"),
        (lambda: tabular.standardize(np.zeros((2, 2, 2)), 0, 1), "expected 1 or 2 dimensions"),
        (lambda: tabular.one_hot(np.zeros((2, 2)), 3), "dtype float64 is not supported"),
        (lambda: tabular.bucketize(np.zeros((2, 2)), [1, 0]), "strictly increasing"),
        (lambda: tabular.clip(np.zeros((2, 2)), 1, 0), "exceeds high"),
        (lambda: postprocess.topk(np.zeros((2, 3), np.float32), 4), "k: expected an integer in 1..3"),
    ],
)
def test_invalid_inputs(call, message: str) -> None:
    with pytest.raises(KernelInputError, match=message):
        call()


def test_postprocess() -> None:
    x = np.array([[1.0, 3.0, 2.0, 3.0], [0.0, -1.0, 5.0, 1.0]], dtype=np.float32)
    p = postprocess.softmax(x)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    assert p.dtype == np.float32
    values, indices = postprocess.topk(x, 2)
    np.testing.assert_array_equal(indices, [[1, 3], [2, 3]])  # ties: lower index first
    np.testing.assert_array_equal(values, [[3, 3], [5, 1]])
    np.testing.assert_array_equal(postprocess.argmax(x), [1, 2])
    np.testing.assert_array_equal(postprocess.threshold(x, 2.0), x >= 2)
