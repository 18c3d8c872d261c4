"""Shared-memory arenas for tensor bytes between a front end and an engine (``surge serve --workers N``).

One arena is one ``memfd`` (no name in /dev/shm, so no resource tracker and no 64 MB Docker /dev/shm limit),
mapped by both processes; its file descriptor travels once over the pair's Unix socket (``socket.send_fds``).
Each arena has exactly one allocating side: the front end owns the request arena (it writes a request's input
bytes there), the engine owns the response arena (it writes outputs there). The other side only reads views.

A region is freed when the last numpy view on it dies (``weakref.finalize`` on the region's base array):
in the allocating process that frees it at once; in the reading process it sends a release message, and the
owner frees it when the message arrives. So a view kept longer than the request (a drift sample, a feedback
index, a shadow comparison) stays valid, and nothing is freed while anyone can still read it.

Allocation is first fit over a free list of (offset, size) holes kept sorted by offset, in 64-byte aligned
units; bounded by the arena's size: when no hole fits, ``allocate`` returns -1 and the caller refuses the
request (UNAVAILABLE: retry), rather than growing.

Copying tensor bytes into a region (``copy_into``) takes time that scales with their size, so from
COPY_IN_THREAD_BYTES on the callers run it in a worker thread (``copy_in_thread``: numpy's copy releases the GIL)
and the event loop keeps serving; smaller copies run inline, cheaper than the hop to a thread.
"""

from __future__ import annotations

import asyncio
import bisect
import mmap
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["ALIGN", "COPY_IN_THREAD_BYTES", "Allocator", "Arena", "copy_in_thread", "copy_into"]

#: Every region starts on a 64-byte boundary (a cache line; numpy's and the runtimes' preferred alignment).
ALIGN = 64
#: A region of this many bytes or more is filled in a worker thread, not on the event loop. The same value as
#: ``edge.wire.LARGE_MESSAGE_BYTES`` (the edges' threshold for the same trade); engine code does not import the edges.
COPY_IN_THREAD_BYTES = 1 << 20


def aligned(nbytes: int) -> int:
    """``nbytes`` rounded up to a multiple of ALIGN (at least ALIGN: empty tensors still get a distinct region)."""
    return max(ALIGN, (nbytes + ALIGN - 1) & ~(ALIGN - 1))


class Allocator:
    """First-fit allocator of aligned regions of ``[0, size)``; single-threaded (the event loop)."""

    __slots__ = ("_holes", "_offsets", "_used", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._offsets: list[int] = [0]  # hole starts, ascending
        self._holes: dict[int, int] = {0: size}  # hole start -> hole size
        self._used: dict[int, int] = {}  # region start -> region size

    @property
    def used_bytes(self) -> int:
        return sum(self._used.values())

    def allocate(self, nbytes: int) -> int:
        """The offset of a fresh region of at least ``nbytes`` bytes, or -1 when no hole is large enough."""
        need = aligned(nbytes)
        holes = self._holes
        for i, start in enumerate(self._offsets):
            size = holes[start]
            if size >= need:
                del holes[start]
                if size > need:
                    holes[start + need] = size - need
                    self._offsets[i] = start + need
                else:
                    del self._offsets[i]
                self._used[start] = need
                return start
        return -1

    def free(self, offset: int) -> None:
        """Give a region back (merging it with the holes beside it); unknown offsets are ignored."""
        size = self._used.pop(offset, None)
        if size is None:
            return
        offsets, holes = self._offsets, self._holes
        i = bisect.bisect_left(offsets, offset)
        if i < len(offsets) and offsets[i] == offset + size:  # merge with the hole after
            size += holes.pop(offsets[i])
            del offsets[i]
        if i > 0 and offsets[i - 1] + holes[offsets[i - 1]] == offset:  # merge with the hole before
            holes[offsets[i - 1]] += size
        else:
            offsets.insert(i, offset)
            holes[offset] = size


class Arena:
    """A memfd of ``size`` bytes mapped read-write; ``create`` makes one, ``attach`` maps one received by fd."""

    __slots__ = ("fd", "map", "size")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.map = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)

    @classmethod
    def create(cls, name: str, size: int) -> Arena:
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            return cls(fd, size)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def attach(cls, fd: int) -> Arena:
        return cls(fd, os.fstat(fd).st_size)

    def region(self, offset: int, nbytes: int) -> np.ndarray:
        """A uint8 view of ``[offset, offset + nbytes)``: the base array of a request's or response's tensors.

        Made from the mapping itself (not sliced from a whole-arena array), so numpy keeps it as the ``base`` of
        every view taken from it and a ``weakref.finalize`` on it fires only when the last of them dies."""
        return np.frombuffer(self.map, np.uint8, nbytes, offset)

    def close(self) -> None:
        """Close the descriptor; the mapping goes when the last view on it does (closing it under views would fail)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def copy_into(base: np.ndarray, specs: Sequence[tuple[Any, ...]], arrays: Iterable[np.ndarray]) -> None:
    """Copy each array into its place in region ``base``: ``specs`` are ``(name, dtype, shape, offset in the region,
    nbytes, inline)`` tuples in the arrays' order; an array sent inline (``inline`` not None: BYTES) is skipped."""
    for (_, dtype, shape, rel, nbytes, inline), array in zip(specs, arrays, strict=True):
        if inline is None:
            np.copyto(base[rel : rel + nbytes].view(dtype).reshape(shape), array, casting="no")


async def copy_in_thread(allocator: Allocator, offset: int, base: np.ndarray, specs: Sequence[tuple[Any, ...]], arrays: Sequence[np.ndarray]) -> None:
    """``copy_into`` in a worker thread (for regions of COPY_IN_THREAD_BYTES or more), the event loop free meanwhile.

    The region (``offset`` of ``allocator``) is freed if the copy fails, or, when the caller is cancelled, once the
    thread has finished writing it (never while it still does)."""
    copy = asyncio.get_running_loop().run_in_executor(None, copy_into, base, specs, arrays)
    try:
        await asyncio.shield(copy)
    except asyncio.CancelledError:
        copy.add_done_callback(lambda done: _free_after(done, allocator, offset))
        raise
    except Exception:
        allocator.free(offset)
        raise


def _free_after(copy: asyncio.Future[None], allocator: Allocator, offset: int) -> None:
    if not copy.cancelled():
        copy.exception()  # retrieved: nobody waits for it any more
    allocator.free(offset)
