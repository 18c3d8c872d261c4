"""Arena copies (``engine/arena.py``): a large copy runs off the event loop; its region is freed only once written."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from surge.server.engine.arena import COPY_IN_THREAD_BYTES, Allocator, Arena, aligned, copy_in_thread

_SIZE = 64 * 2**20  # large enough that the copy takes many event-loop turns


def _spec(array: np.ndarray) -> tuple[object, ...]:
    return ("x", array.dtype.str, array.shape, 0, array.nbytes, None)


@pytest.fixture
def arena():
    arena = Arena.create("surge-test", aligned(_SIZE))
    yield arena
    arena.close()


def test_a_large_copy_leaves_the_event_loop_free_and_is_exact(arena: Arena) -> None:
    assert _SIZE >= COPY_IN_THREAD_BYTES
    array = np.random.default_rng(1).integers(0, 2**31, _SIZE // 4, dtype=np.int32)
    allocator = Allocator(arena.size)
    offset = allocator.allocate(array.nbytes)
    base = arena.region(offset, array.nbytes)

    async def main() -> int:
        copy = asyncio.ensure_future(copy_in_thread(allocator, offset, base, [_spec(array)], [array]))
        turns = 0
        while not copy.done():
            await asyncio.sleep(0)
            turns += 1
        await copy
        return turns

    turns = asyncio.run(main())
    assert turns >= 3  # the loop kept turning while the thread copied (inline, the copy would take one turn)
    assert base.view(np.int32).tobytes() == array.tobytes()
    assert allocator.used_bytes == aligned(array.nbytes)  # the caller frees it, later


def test_a_cancelled_copy_frees_its_region_only_once_the_thread_is_done(arena: Arena) -> None:
    array = np.ones(_SIZE // 4, np.float32)
    allocator = Allocator(arena.size)
    offset = allocator.allocate(array.nbytes)
    base = arena.region(offset, array.nbytes)

    async def main() -> tuple[int, int]:
        copy = asyncio.ensure_future(copy_in_thread(allocator, offset, base, [_spec(array)], [array]))
        await asyncio.sleep(0)
        copy.cancel()
        with pytest.raises(asyncio.CancelledError):
            await copy
        held = allocator.used_bytes  # the thread may still be writing: the region is not free yet
        for _ in range(500):
            if not allocator.used_bytes:
                break
            await asyncio.sleep(0.01)
        return held, allocator.used_bytes

    held, after = asyncio.run(main())
    assert held == aligned(array.nbytes) and after == 0


def test_a_failed_copy_frees_its_region(arena: Arena) -> None:
    array = np.ones(_SIZE // 4, np.float32)
    allocator = Allocator(arena.size)
    offset = allocator.allocate(array.nbytes)
    base = arena.region(offset, array.nbytes)
    wrong = ("x", np.dtype(np.float64).str, (array.size // 2,), 0, array.nbytes, None)  # casting="no" refuses float32 -> float64
    with pytest.raises(TypeError):
        asyncio.run(copy_in_thread(allocator, offset, base, [wrong], [array]))
    assert allocator.used_bytes == 0
