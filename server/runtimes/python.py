"""Python backend: a model written as plain Python, in ``<version>/model.py``, run in a process of its own.

The file defines a class ``Model``::

    class Model:
        def load(self, version_dir: pathlib.Path, config: surge.server.config.ModelConfig) -> None: ...  # optional
        def infer(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]: ...
        def close(self) -> None: ...  # optional

The signature cannot be read from Python code, so the model's config.toml must declare its inputs and
outputs. Errors ``infer`` raises fail only the requests of that call.

Isolation (like Triton's Python-backend stub): every instance runs its ``Model`` in a child interpreter
(``python -m surge.server.runtimes.python_stub``, started with fork+exec, never a bare fork of the server)
that the instance's executor thread drives. Tensor bytes travel through one shared-memory arena per instance
(an ``os.memfd_create`` file both processes map; no name, so no resource tracker and no /dev/shm size limit):
the server writes the call's inputs from offset 0, the child hands the model numpy views over them (zero
copy, valid for the call), writes the outputs after them, and the server copies the outputs out before the
next call reuses the space. Only small pickled control messages ((name, dtype, shape, offset) per tensor;
BYTES tensors, which are object arrays, travel pickled inside them) cross the socket pair between the two.
The arena has a fixed virtual size (``ARENA_BYTES``; pages cost memory only once touched, and the server
gives back what a call used beyond ``ARENA_KEEP_BYTES``); a call that does not fit fails with
RESOURCE_EXHAUSTED.

Faults stay in the child: ``kill()`` (the serving core calls it when a call runs past
``execution_timeout_s``) SIGKILLs it; a child that exits or is killed while a call runs fails that call
with ``InstanceCrashed`` (UNAVAILABLE); ``exit_fd`` (a pidfd) becomes readable when the child is gone, so
the serving core notices a death between calls too. After each call the child reports its anonymous
memory (RSS less file and shared pages: what a leak grows); past ``max_memory_bytes`` the call is
answered and ``retire_reason`` asks the serving core to restart the instance. The child dies with the
server (``PR_SET_PDEATHSIG`` plus EOF on the socket).
"""

from __future__ import annotations

import mmap
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ModelConfig, TensorConfig
from ..errors import ConfigError, InstanceCrashed, LimitExceeded
from .base import Signature

__all__ = ["ARENA_BYTES", "PythonRuntime", "put_arrays", "view_arrays"]

ARENA_BYTES = 1 << 30
"""Virtual size of an instance's shared-memory arena: one call's inputs and outputs together must fit."""
ARENA_KEEP_BYTES = 64 << 20
"""Arena pages beyond this are given back to the system after each call that touched them."""
_ALIGN = 64
_STOP_WAIT_S = 5.0  # how long close() waits for the model's close() before it kills the child


_WIRE_DTYPES: dict[np.dtype, Any] = {}


def _wire_dtype(dtype: np.dtype) -> Any:
    """How a dtype travels: its string (a pickled np.dtype costs about 10 us each way), or itself where the string
    loses it (ml_dtypes' bfloat16 reads '<V2')."""
    wire = _WIRE_DTYPES.get(dtype)
    if wire is None:
        wire = _WIRE_DTYPES[dtype] = dtype.str if np.dtype(dtype.str) == dtype else dtype
    return wire


def put_arrays(arena: mmap.mmap, offset: int, arrays: Mapping[str, Any]) -> tuple[list[tuple[str, Any, tuple[int, ...], int]], list[tuple[str, np.ndarray]], int]:
    """Copy ``arrays`` into ``arena`` from ``offset`` (64-byte aligned each). Returns (placed, inline, end):
    ``placed`` is (name, dtype, shape, offset) per tensor in the arena, ``inline`` the object (BYTES) arrays,
    which travel pickled instead. Raises LimitExceeded when they do not fit."""
    placed, inline = [], []
    for name, value in arrays.items():
        array = np.asarray(value)
        if array.dtype.hasobject:
            inline.append((name, array))
            continue
        offset = -(-offset // _ALIGN) * _ALIGN
        end = offset + array.nbytes
        if end > len(arena):
            raise LimitExceeded(
                f"tensor '{name}' ({array.nbytes} bytes) does not fit the python model's {len(arena) >> 20} MiB shared-memory arena "
                f"after {offset} bytes of other tensors of the same call"
            )
        if not array.nbytes:
            pass
        elif array.flags.c_contiguous and array.dtype.isbuiltin == 1:
            arena[offset:end] = array.data.cast("B")  # a plain memory copy, without building an array over the arena
        else:  # strided, or a dtype without a buffer format (bfloat16)
            np.copyto(np.ndarray(array.shape, array.dtype, buffer=arena, offset=offset), array, casting="no")
        placed.append((name, _wire_dtype(array.dtype), array.shape, offset))
        offset = end
    return placed, inline, offset


def view_arrays(arena: mmap.mmap, placed: Sequence[tuple[str, Any, tuple[int, ...], int]], inline: Sequence[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """numpy views over the arena for ``placed`` tensors (zero copy), plus the ``inline`` ones."""
    arrays = {
        name: np.ndarray(shape, dtype, buffer=arena, offset=offset) if 0 not in shape else np.empty(shape, dtype)
        for name, dtype, shape, offset in placed
    }
    arrays.update(inline)
    return arrays


def exit_reason(code: int | None) -> str:
    """How a child process ended, in words."""
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class PythonRuntime:
    """Runs a user's ``model.py`` ``Model`` class in a child process, behind the Runtime interface."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._arena: mmap.mmap | None = None
        self._name = ""
        self._max_memory = 0
        self._backstop_s: float | None = None
        self._poller = select.poll()
        self.exit_fd: int | None = None
        """A pidfd of the child: readable once it has exited (the serving core watches it on its loop)."""
        self.retire_reason = ""
        """Why this instance must be restarted, once it must: its process died or was killed, or a call left it
        above ``max_memory_bytes`` (that call is answered). The serving core reads it after each batch."""

    def load(self, model_path: Path, config: ModelConfig, instance_index: int) -> Signature:
        """Start the child, which imports ``model.py`` under a private module name and instantiates its ``Model``."""
        if not config.inputs or not config.outputs:
            raise ConfigError("a python model must declare its [[input]] and [[output]] tensors in config.toml")
        self._name = f"model '{config.name}' version {model_path.parent.name}"
        self._max_memory = config.max_memory_bytes
        # The serving core fails a call at execution_timeout_s and kills the child; this backstop bounds the
        # calls it does not time (warm-up): past it the child is killed here.
        self._backstop_s = 2 * config.execution_timeout_s + 1 if config.execution_timeout_s else None
        self._start(f"{config.name}/{model_path.parent.name}/{instance_index}")
        self._call(("load", str(model_path), config, instance_index), timeout=None)
        batch = (-1,) if config.max_batch_size else ()
        return Signature(
            inputs=tuple(TensorConfig(name=t.name, datatype=t.datatype, dims=batch + t.dims, optional=t.optional) for t in config.inputs),
            outputs=tuple(TensorConfig(name=t.name, datatype=t.datatype, dims=batch + t.dims) for t in config.outputs),
        )

    def _start(self, label: str) -> None:
        """Start the child; ``label`` (model/version/instance) is its last argument, so that ``ps`` says whose it is."""
        memfd = os.memfd_create("surge-python-model", os.MFD_CLOEXEC)
        ours, theirs = socket.socketpair()
        try:
            os.ftruncate(memfd, ARENA_BYTES)
            self._arena = mmap.mmap(memfd, ARENA_BYTES)
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "surge.server.runtimes.python_stub", str(theirs.fileno()), str(memfd), str(ARENA_BYTES), str(os.getpid()), label],
                pass_fds=(theirs.fileno(), memfd), start_new_session=True,  # a terminal's Ctrl-C goes to the server only
            )
        finally:
            os.close(memfd)  # the mapping and the child keep the memory alive
            theirs.close()
        self._conn = Connection(ours.detach())
        self._poller = select.poll()
        self._poller.register(self._conn.fileno(), select.POLLIN)
        self.exit_fd = os.pidfd_open(self._proc.pid)

    def infer(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        """Run the user's ``infer`` in the child; returns copies of the requested outputs."""
        arena = self._arena
        assert arena is not None
        placed, inline, end = put_arrays(arena, 0, inputs)
        out_placed, out_inline, out_end, memory = self._call(("infer", placed, inline, list(output_names), end), timeout=self._backstop_s)
        outputs = {name: np.array(array) for name, array in view_arrays(arena, out_placed, out_inline).items()}
        if max(end, out_end) > ARENA_KEEP_BYTES:  # a large call: give its pages back
            arena.madvise(mmap.MADV_REMOVE, ARENA_KEEP_BYTES, ARENA_BYTES - ARENA_KEEP_BYTES)
        if self._max_memory and memory > self._max_memory:
            self.retire_reason = f"its process used {memory >> 20} MiB, above max_memory_bytes = {self._max_memory}"
        return outputs

    def _call(self, message: tuple[Any, ...], timeout: float | None) -> Any:
        """Send one request to the child and wait for its answer; raise what the model raised."""
        conn = self._conn
        assert conn is not None
        try:
            conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
            if timeout is not None and not self._poller.poll(timeout * 1000):  # one poll object: Connection.poll builds a selector per call
                self.kill()
                self.retire_reason = f"a call running past {timeout:g} s (twice execution_timeout_s, plus 1 s)"
                raise InstanceCrashed(f"{self._name}: {self.retire_reason}: its process was killed")
            ok, payload = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            self.retire_reason = f"its process {self._exit_reason()}"
            raise InstanceCrashed(f"{self._name}: {self.retire_reason} during the call; the instance restarts") from None
        if ok:
            return payload
        raise payload  # what the model raised (the traceback in its process is a note on it, for the log)

    def _exit_reason(self) -> str:
        assert self._proc is not None
        try:
            return exit_reason(self._proc.wait(timeout=_STOP_WAIT_S))
        except subprocess.TimeoutExpired:
            self.kill()
            return exit_reason(None)

    def exited(self) -> str:
        """Once ``exit_fd`` is readable (on the loop): why the child is gone; also sets ``retire_reason``."""
        self.retire_reason = f"its process {exit_reason(self._proc.poll() if self._proc is not None else None)}"
        return self.retire_reason

    def kill(self) -> None:
        """SIGKILL the child (any thread); a call waiting for it fails with InstanceCrashed."""
        if self._proc is not None and self._proc.returncode is None:
            try:
                os.kill(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        """Ask the child to call the user's ``close`` and exit; kill it if it does not; free the arena."""
        if self._proc is not None and self._conn is not None:
            try:
                if self._proc.poll() is None:
                    self._call(("close",), timeout=_STOP_WAIT_S)
            except Exception:  # a crashed or stuck child is killed below; nothing to report at close
                pass
            try:
                self._proc.wait(timeout=_STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self.kill()
                self._proc.wait()
            self._conn.close()
        if self.exit_fd is not None:
            os.close(self.exit_fd)
            self.exit_fd = None
        if self._arena is not None:
            self._arena.close()
            self._arena = None
        self._proc = self._conn = None
