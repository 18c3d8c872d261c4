"""The child process of a Python-model instance: ``python -m surge.server.runtimes.python_stub SOCK MEMFD SIZE PARENT LABEL``.

Started by ``python.PythonRuntime`` with the socket of its control channel and the memfd of its arena as
inherited file descriptors. Answers, in order, ``("load", model_path, config, instance_index)``, then any
number of ``("infer", placed, inline, output_names, offset)``, then ``("close",)``, each with ``(True,
result)`` or ``(False, error)``: an ``InferenceServerError`` or builtin exception the model raised as itself,
anything else as a RuntimeError naming it; the traceback rides along as a note. Exits when the server does
(``PR_SET_PDEATHSIG``, or EOF on the socket).
"""

from __future__ import annotations

import ctypes
import importlib.util
import mmap
import os
import pickle
import signal
import sys
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any


from ..errors import ConfigError, InferenceServerError
from .python import put_arrays, view_arrays

_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> None:
    """SIGKILL this process when the server exits (Linux), even while the model loops holding the GIL."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: EOF on the socket still ends an idle child
        pass
    if os.getppid() != parent:  # the server died before prctl took effect
        os._exit(0)


def _load(model_path: str, config: Any, instance_index: int) -> Any:
    path = Path(model_path)
    module_name = f"surge_model_{config.name}_{path.parent.name}_{instance_index}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {path.name} of model '{config.name}'")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    cls = getattr(module, "Model", None)
    if cls is None:
        raise ConfigError(f"{path.name} of model '{config.name}' defines no class Model")
    model = cls()
    if hasattr(model, "load"):
        model.load(path.parent, config)
    return model


class _Memory:
    """This process's anonymous resident memory (RSS less file-backed and shared pages), from /proc/self/statm."""

    def __init__(self) -> None:
        self._fd = os.open("/proc/self/statm", os.O_RDONLY)
        self._page = os.sysconf("SC_PAGE_SIZE")

    def anonymous_bytes(self) -> int:
        fields = os.pread(self._fd, 128, 0).split()
        return (int(fields[1]) - int(fields[2])) * self._page


def main(argv: list[str]) -> None:
    sock_fd, memfd, size, parent = (int(a) for a in argv[:4])  # argv[4]: model/version/instance, for ps
    _die_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when its models stop
    conn = Connection(sock_fd)
    arena = mmap.mmap(memfd, size)
    os.close(memfd)
    memory = _Memory()
    model: Any = None
    measure = False
    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except EOFError:  # the server is gone
            os._exit(0)
        op = message[0]
        try:
            if op == "infer":
                _, placed, inline, output_names, offset = message
                results = model.infer(view_arrays(arena, placed, inline), output_names)
                # what is missing or malformed is named by the server's one output check (ModelVersion._check_outputs)
                out_placed, out_inline, end = put_arrays(arena, offset, {name: results[name] for name in output_names if name in results})
                del results
                reply: tuple[bool, Any] = (True, (out_placed, out_inline, end, memory.anonymous_bytes() if measure else 0))
            elif op == "load":
                model = _load(*message[1:])
                measure = message[2].max_memory_bytes > 0  # the server restarts this process above it
                reply = (True, None)
            else:  # close
                if model is not None and hasattr(model, "close"):
                    model.close()
                conn.send_bytes(pickle.dumps((True, None)))
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(0)
        except InferenceServerError as exc:
            reply = (False, exc)
        except BaseException as exc:
            reply = (False, _portable(exc))
        try:
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # an output or exception that cannot be pickled (an object array of arbitrary objects)
            data = pickle.dumps((False, _portable(exc)))
        conn.send_bytes(data)


def _portable(exc: BaseException) -> Exception:
    """The exception as the server can unpickle it (a builtin one as itself, others as RuntimeError), with this
    process's traceback as a note for the server's log."""
    if not (isinstance(exc, Exception) and type(exc).__module__ == "builtins"):
        exc = RuntimeError(f"{type(exc).__name__}: {exc}")
    exc.add_note("traceback in the model's process:\n" + traceback.format_exc().rstrip())
    return exc


if __name__ == "__main__":
    main(sys.argv[1:])
