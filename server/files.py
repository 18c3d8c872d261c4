"""Files that appear whole or not at all: written under a sibling name, then renamed (``os.replace`` is atomic
within a file system), so a reader, a crash or a kill never sees half a file."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["partial_path", "replaced", "write_atomic"]


def partial_path(path: Path) -> Path:
    """Where ``path`` is written before it appears: ``partial-<name>`` beside it (matched by no ``name*`` glob)."""
    return path.with_name("partial-" + path.name)


@contextlib.contextmanager
def replaced(path: Path) -> Iterator[Path]:
    """Yield the partial path to write (a file or a folder); when the block ends without an error it becomes ``path``."""
    tmp = partial_path(path)
    yield tmp
    os.replace(tmp, path)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically."""
    with replaced(path) as tmp, open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename, so a crash leaves the old file or the new one
