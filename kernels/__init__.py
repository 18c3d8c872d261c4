"""Preprocessing kernels: plain importable functions, the same code in a notebook, a batch job and the server.

Each kernel comes three ways, with the same name in three places:

- ``surge.kernels.image.normalize`` (and friends): the CPU kernel, compiled by Numba
  (``@njit(nogil=True, cache=True)``, ``parallel=True`` where it pays), behind a wrapper that validates its input;
- ``surge.kernels.image.normalize_ref``: the plain NumPy reference the kernel is tested against;
- ``surge.kernels.cuda.normalize``: the ``numba.cuda`` version (device arrays in and out).

Image kernels take uint8 (or float) ``HWC`` images or ``NHWC`` batches; tabular kernels take ``(rows, features)``.
Post-processing (softmax, top-k, argmax, threshold) lives in ``postprocess`` (NumPy: it is cheap).

Importing this package sets up Numba before Numba is imported (``_numba_env``): a writable cache folder when the
installed package folder is read-only, and a thread-safe threading layer (the server calls kernels from several
instance threads at once; Numba's fallback ``workqueue`` layer aborts on concurrent use).
"""

from ._common import KernelInputError
from ._numba_env import configure as _configure

_configure()

__all__ = ["KernelInputError"]
