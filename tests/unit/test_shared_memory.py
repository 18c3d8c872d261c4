"""The shared-memory registry's lifetime rules on real POSIX shared memory (``/dev/shm``): user counts, deferred
unmapping, views that outlive their region, bounds and ownership. (Over the wire: tests/triton/test_shared_memory.py.)"""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from surge.protos import grpc_service_pb2 as pb
from surge.server.edge.shared_memory import SHM_DIR, RequestRegions, SharedMemoryRegistry, owner_of
from surge.server.errors import InvalidInput, LimitExceeded, Unsupported

pytestmark = pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason="no /dev/shm on this system")


@pytest.fixture
def key() -> Iterator[str]:
    """A 1 MiB POSIX shared-memory object holding 0, 1, 2, ... as FP32."""
    name = f"surge-unit-{uuid.uuid4().hex[:12]}"
    path = os.path.join(SHM_DIR, name)
    with open(path, "wb") as f:
        f.write(np.arange(2**18, dtype=np.float32).tobytes())
    yield "/" + name
    os.unlink(path)


def _input(regions: RequestRegions, region: str, count: int, offset: int = 0) -> np.ndarray:
    params = pb.InferParameter
    parameters = {"shared_memory_region": params(string_param=region), "shared_memory_byte_size": params(int64_param=4 * count),
                  "shared_memory_offset": params(int64_param=offset)}  # fmt: skip
    return regions.input("x", parameters, "FP32", np.dtype(np.float32), 4, (1, count), 2**20)


def test_an_input_is_a_read_only_view_over_the_region(key: str) -> None:
    registry = SharedMemoryRegistry()
    registry.register_system("", "r", key, 4096 + 8, 4096)
    regions = RequestRegions(registry, ())
    view = _input(regions, "r", 4, offset=8)
    assert view.tolist() == [[1028.0, 1029.0, 1030.0, 1031.0]]  # byte 4096 + 8 + 8 of the object: element 1028
    assert not view.flags.writeable and not view.flags.owndata
    with open(os.path.join(SHM_DIR, key[1:]), "r+b") as f:  # the client writes: the view sees it (no copy was made)
        f.seek(4096 + 16)
        f.write(np.float32(-1).tobytes())
    assert view[0, 0] == -1.0
    regions.release()


def test_unregister_in_use_defers_the_unmapping_to_the_last_user(key: str) -> None:
    registry = SharedMemoryRegistry()
    registry.register_system("", "r", key, 0, 2**20)
    first, second = RequestRegions(registry, ()), RequestRegions(registry, ())
    a, b = _input(first, "r", 8), _input(second, "r", 8)
    registry.unregister("", "r", "system")
    assert registry.status("", "", "system") == []
    with pytest.raises(InvalidInput, match="no shared memory region named 'r'"):
        _input(RequestRegions(registry, ()), "r", 8)
    first.release()
    assert registry._mapped == 2**20 and a.sum() == 28.0  # one user left: still mapped
    second.release()
    assert registry._mapped == 0  # counted as unmapped; the views below still hold the mapping itself
    assert a.tolist() == b.tolist() == [list(map(float, range(8)))]  # never freed under a live view
    del a, b
    gc.collect()


def test_bounds_count_regions_and_mapped_bytes(key: str) -> None:
    registry = SharedMemoryRegistry(max_regions=2, max_bytes=3 * 4096)
    register = registry.register_system
    register("", "a", key, 0, 4096)
    with pytest.raises(LimitExceeded, match="above the server's limit of 12288"):
        register("", "b", key, 0, 3 * 4096)
    register("", "b", key, 0, 4096)
    with pytest.raises(LimitExceeded, match="2 shared memory regions, its limit"):
        register("", "c", key, 0, 4096)
    held = RequestRegions(registry, ())
    _input(held, "a", 4)
    registry.unregister("", "", "system")  # all; "a" stays mapped (and counted) while in use
    with pytest.raises(LimitExceeded, match="would map 16384 bytes"):
        register("", "c", key, 0, 3 * 4096)
    held.release()
    register("", "c", key, 0, 3 * 4096)
    registry.close()
    assert registry._mapped == 0


def test_owners_are_tokens_only_when_scoped(key: str) -> None:
    a, b = (("authorization", "Bearer " + "a" * 20),), (("authorization", "Bearer " + "b" * 20),)
    assert owner_of(a, scoped=False) == owner_of(b, scoped=False) == ""
    assert owner_of(a, scoped=True) != owner_of(b, scoped=True)
    registry = SharedMemoryRegistry(scoped=True)
    registry.register_system(owner_of(a, True), "r", key, 0, 64)
    with pytest.raises(InvalidInput, match="no shared memory region named 'r'"):
        _input(RequestRegions(registry, b), "r", 4)
    assert _input(RequestRegions(registry, lambda: a), "r", 4).shape == (1, 4)  # metadata read lazily (a callable)


def test_disabled_registry_says_why(key: str) -> None:
    registry = SharedMemoryRegistry(disabled="one worker only")
    assert registry.extensions() == ()
    with pytest.raises(Unsupported, match="one worker only"):
        registry.register_system("", "r", key, 0, 64)
    with pytest.raises(Unsupported, match="one worker only"):
        _input(RequestRegions(registry, ()), "r", 4)
