"""``surge.server.runtimes.tensorrt_plan``: TensorRT's decisions over plain data (no TensorRT here).

Engines are described the way the runtime reads them (``IOTensor`` per ``get_tensor_*`` call, ``Profile``
per ``get_tensor_profile_shape``); ``tests/gpu/test_tensorrt.py`` runs the real thing where TensorRT exists.
"""

from __future__ import annotations

import pytest

from surge.server.config import TensorConfig
from surge.server.errors import ConfigError, InvalidInput
from surge.server.runtimes.tensorrt_plan import (
    TRT_DATATYPES,
    IOTensor,
    Profile,
    assign_profiles,
    batch_coverage,
    buffer_shapes,
    build_profile_shapes,
    engine_signature,
    select_profile,
)


def _profile(index: int, low: int, high: int, opt: int | None = None, inner: tuple[int, ...] = (16,)) -> Profile:
    return Profile(index, {"x": ((low, *inner), (opt or high, *inner), (high, *inner))})


# -- engine I/O -> signature ---------------------------------------------------------------------


def test_engine_signature_maps_names_modes_dtypes_and_shapes() -> None:
    tensors = [
        IOTensor("x", True, "FLOAT", (-1, 16)),
        IOTensor("ids", True, "INT64", (-1, 8)),
        IOTensor("probabilities", False, "HALF", (-1, 4)),
        IOTensor("flags", False, "BOOL", (-1,)),
    ]
    inputs, outputs = engine_signature(tensors)
    assert inputs == (TensorConfig(name="x", datatype="FP32", dims=(-1, 16)), TensorConfig(name="ids", datatype="INT64", dims=(-1, 8)))
    assert outputs == (TensorConfig(name="probabilities", datatype="FP16", dims=(-1, 4)), TensorConfig(name="flags", datatype="BOOL", dims=(-1,)))


def test_every_trt_datatype_maps_to_a_protocol_datatype() -> None:
    from surge.protos.datatypes import DATATYPES

    assert set(TRT_DATATYPES.values()) <= DATATYPES
    assert TRT_DATATYPES["BF16"] == "BF16" and TRT_DATATYPES["FLOAT"] == "FP32"


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (IOTensor("q", True, "FP8", (-1, 4)), "engine input 'q' has TensorRT type FP8, which has no protocol datatype"),
        (IOTensor("q", True, "INT4", (-1, 4)), "TensorRT type INT4"),
        (IOTensor("q", True, "INT32", (2,), shape_tensor=True), "engine input 'q' is a shape tensor"),
        (IOTensor("q", True, "FLOAT", (-1, 4), on_host=True), "engine input 'q' lives in host memory"),
        (IOTensor("q", True, "FLOAT", (-1, 0)), "engine input 'q' has shape [-1, 0]"),
    ],
)
def test_unservable_tensors_are_named(tensor: IOTensor, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        engine_signature([tensor, IOTensor("y", False, "FLOAT", (-1, 4))])
    assert message in str(info.value)


def test_an_engine_needs_inputs_and_outputs() -> None:
    with pytest.raises(ConfigError, match="the engine has 1 input\\(s\\) and 0 output\\(s\\)"):
        engine_signature([IOTensor("x", True, "FLOAT", (4,))])


# -- profiles for instances ------------------------------------------------------------------------


def test_static_engines_share_profile_zero() -> None:
    assert [assign_profiles(1, False, [0, 0, 0], i) for i in range(3)] == [(0,), (0,), (0,)]


def test_instances_on_one_gpu_split_the_profiles() -> None:
    assert [assign_profiles(4, True, [0, 0], i) for i in range(2)] == [(0, 2), (1, 3)]
    assert [assign_profiles(3, True, [0, 0, 0], i) for i in range(3)] == [(0,), (1,), (2,)]


def test_instances_on_different_gpus_each_own_all_profiles_of_their_engine() -> None:
    # instance_group.gpus = [0, 1] with count 4: devices 0, 1, 0, 1; each GPU deserializes its own engine
    devices = [0, 1, 0, 1]
    assert [assign_profiles(2, True, devices, i) for i in range(4)] == [(0,), (0,), (1,), (1,)]
    assert assign_profiles(1, True, [0, 1], 1) == (0,)


def test_too_few_profiles_for_the_instances_is_a_load_error() -> None:
    with pytest.raises(ConfigError) as info:
        assign_profiles(1, True, [0, 0], 1)
    assert "1 optimization profile(s) but 2 instances share GPU 0" in str(info.value)
    assert "surge build-trt --instances 2" in str(info.value)


# -- batch coverage and the model's max batch ---------------------------------------------------------


@pytest.mark.parametrize(
    ("ranges", "owned", "expected"),
    [
        ([(1, 64)], [0], 64),
        ([(1, 8), (9, 64)], [0, 1], 64),  # adjacent ranges join
        ([(1, 8), (4, 32)], [0, 1], 32),  # overlapping ranges join
        ([(1, 8), (16, 64)], [0, 1], 8),  # a gap: 9..15 rows would fit nothing
        ([(2, 8)], [0], 0),  # not even one row
        ([(1, 8), (1, 64)], [0], 8),  # only owned profiles count
        ([(9, 64), (1, 8)], [0, 1], 64),  # order does not matter
    ],
)
def test_batch_coverage(ranges: list[tuple[int, int]], owned: list[int], expected: int) -> None:
    profiles = [_profile(i, low, high) for i, (low, high) in enumerate(ranges)]
    assert batch_coverage(profiles, owned) == expected


def test_batch_range_is_what_every_input_accepts() -> None:
    profile = Profile(0, {"a": ((1, 4), (8, 4), (32, 4)), "b": ((2, 3), (8, 3), (16, 3))})
    assert profile.batch_range() == (2, 16)


# -- choosing a profile per batch ---------------------------------------------------------------------


def test_the_tightest_fitting_profile_is_chosen() -> None:
    profiles = [_profile(0, 1, 64), _profile(1, 1, 8), _profile(2, 9, 32)]
    owned = [0, 1, 2]
    assert select_profile(profiles, owned, {"x": (4, 16)}) == 1
    assert select_profile(profiles, owned, {"x": (20, 16)}) == 2
    assert select_profile(profiles, owned, {"x": (40, 16)}) == 0


def test_the_current_profile_is_kept_when_it_fits() -> None:
    profiles = [_profile(0, 1, 64), _profile(1, 1, 8)]
    assert select_profile(profiles, [0, 1], {"x": (4, 16)}, current=0) == 0
    assert select_profile(profiles, [0, 1], {"x": (40, 16)}, current=1) == 0


def test_only_owned_profiles_are_chosen() -> None:
    profiles = [_profile(0, 1, 8), _profile(1, 1, 8)]
    assert select_profile(profiles, [1], {"x": (2, 16)}) == 1


def test_every_dimension_is_checked() -> None:
    profile = Profile(0, {"x": ((1, 8), (4, 64), (8, 128))})
    assert profile.accepts({"x": (4, 100)})
    assert not profile.accepts({"x": (4, 129)})
    assert not profile.accepts({"x": (4, 100, 1)})  # rank differs
    assert profile.accepts({"other": (3,)})  # static inputs are not the profile's business


def test_a_batch_no_profile_fits_names_the_shapes_and_the_profiles() -> None:
    profiles = [_profile(0, 1, 8), _profile(1, 9, 32)]
    with pytest.raises(InvalidInput) as info:
        select_profile(profiles, [0, 1], {"x": (40, 16)})
    assert str(info.value) == (
        "input shapes x [40, 16] fit none of the engine's optimization profiles for this instance "
        "(profile 0: x [1, 16]..[8, 16]; profile 1: x [9, 16]..[32, 16])"
    )


# -- buffer sizes -------------------------------------------------------------------------------------


def test_buffers_hold_the_largest_shape_of_the_owned_profiles() -> None:
    profiles = [Profile(0, {"x": ((1, 8), (4, 64), (8, 128))}), Profile(1, {"x": ((1, 8), (32, 16), (64, 16))}), _profile(2, 1, 1024)]
    inputs = [TensorConfig(name="x", datatype="FP32", dims=(-1, -1)), TensorConfig(name="scale", datatype="FP32", dims=(4,))]
    assert buffer_shapes(profiles, [0, 1], inputs) == {"x": (64, 128), "scale": (4,)}


def test_a_dynamic_input_without_profile_bounds_is_an_error() -> None:
    with pytest.raises(ConfigError, match="engine input 'y' is dynamic \\[-1\\] but no optimization profile bounds it"):
        buffer_shapes([_profile(0, 1, 8)], [0], [TensorConfig(name="y", datatype="FP32", dims=(-1,))])


# -- surge build-trt profiles ---------------------------------------------------------------------------


def test_build_profiles_span_one_to_max_rows() -> None:
    assert build_profile_shapes({"x": (-1, 16), "mask": (-1, 4, 2)}, 64, 16) == {
        "x": ((1, 16), (16, 16), (64, 16)),
        "mask": ((1, 4, 2), (16, 4, 2), (64, 4, 2)),
    }
    assert build_profile_shapes({"x": (-1, 16)}, 8)["x"][1] == (8, 16)  # opt defaults to the max


def test_static_inputs_need_no_profile() -> None:
    assert build_profile_shapes({"x": (2, 3)}, 8) == {}


@pytest.mark.parametrize(
    ("inputs", "max_rows", "opt", "message"),
    [
        ({"x": (-1, -1)}, 8, 0, "network input 'x' has shape [-1, -1]: surge build-trt supports a dynamic first (batch) dimension only"),
        ({"x": (4, -1)}, 8, 0, "network input 'x' has shape [4, -1]"),
        ({"x": (-1, 4)}, 0, 0, "--max-batch-size: expected an integer >= 1, got 0"),
        ({"x": (-1, 4)}, 8, 9, "--opt-batch-size: expected 1..8 (the max batch size), got 9"),
    ],
)
def test_build_profile_errors(inputs: dict[str, tuple[int, ...]], max_rows: int, opt: int, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_profile_shapes(inputs, max_rows, opt)
    assert message in str(info.value)
