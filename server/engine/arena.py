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
"""

from __future__ import annotations

import bisect
import mmap
import os

import numpy as np

__all__ = ["ALIGN", "Allocator", "Arena"]

#: Every region starts on a 64-byte boundary (a cache line; numpy's and the runtimes' preferred alignment).
ALIGN = 64


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
