"""Triton's shared-memory extensions: regions a client registers, and tensors read from and written into them.

A client on the same host puts tensor bytes in memory it shares with the server and sends only where they are
(``shared_memory_region``, ``shared_memory_byte_size``, ``shared_memory_offset`` on an input or a requested
output), as tritonclient's ``utils.shared_memory`` / ``utils.cuda_shared_memory`` and ``perf_analyzer
--shared-memory system|cuda`` do. One ``SharedMemoryRegistry`` per server serves both edges (through the data
plane, ``server/dataplane.py``); ``codec`` reads inputs and writes outputs through a ``RequestRegions``.

- **System regions** (``SystemSharedMemoryRegister{name, key, offset, byte_size}``): ``key`` is a POSIX
  ``shm_open`` name (``/dev/shm/<key>``); the segment is opened and mapped once, at registration, and an input
  is a read-only numpy view over the mapping (no copy). The client can still write the region while the
  server reads it: what a model sees is whatever is there when it runs, as with Triton, so a client must not
  change a region until its request is answered.
- **CUDA regions** (``CudaSharedMemoryRegister{name, raw_handle, device_id, byte_size}``): the raw
  ``cudaIpcMemHandle_t`` is opened once, at registration, with CuPy. Inputs are copied to host memory and
  outputs back to the device (one copy each). Without CuPy or a GPU, registering answers UNIMPLEMENTED.
- **Ownership.** With bearer tokens configured, a region belongs to the token that registered it: other callers
  neither see nor use it (their requests name an unknown region), and names are per caller. Without tokens
  every caller of this server shares one set of regions, as with Triton.
- **Lifetime.** Each region counts the requests using it. Unregistering removes the name at once (new requests
  are refused) and unmaps the memory only when the last request using it has finished; a numpy view that
  outlives even that keeps the mapping alive (Python's mmap refuses to close under a live export), so freed
  memory is never read.
- **Bounds.** At most ``max_regions`` regions and ``max_bytes`` mapped bytes per server (RESOURCE_EXHAUSTED
  past either). Every check (name, key, size, offset, bounds, datatype and shape against the byte size) is
  INVALID_ARGUMENT with the reason, never a server path.
"""

from __future__ import annotations

import hashlib
import math
import mmap
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from surge.protos import grpc_service_pb2 as pb
from surge.protos.datatypes import ElementTooLarge, deserialize_bytes_tensor, serialize_bytes_tensor

from ..errors import InvalidInput, LimitExceeded, Unsupported
from .extensions import nonnegative_int

__all__ = ["RequestRegions", "SharedMemoryRegistry", "Target", "owner_of"]

#: Where Linux keeps POSIX shared-memory objects (``shm_open(key)`` opens ``/dev/shm/<key>``).
SHM_DIR = "/dev/shm"
_NAME_MAX = 255
DEFAULT_MAX_REGIONS = 256
DEFAULT_MAX_BYTES = 64 * 2**30


def owner_of(metadata: Iterable[tuple[str, Any]] | None, scoped: bool) -> str:
    """The caller a region belongs to: a digest of its ``authorization`` value when tokens are on, else everyone ("")."""
    if not scoped:
        return ""
    for key, value in metadata or ():
        if key == "authorization":
            raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "replace")
            return hashlib.sha256(raw.strip()).hexdigest()
    return ""


@dataclass(eq=False, slots=True)
class Region:
    """A registered region: its memory, and the requests using it (``users``)."""

    name: str
    kind: str  # "system" or "cuda"
    byte_size: int
    key: str = ""
    offset: int = 0
    device_id: int = 0
    buffer: memoryview | None = None  # system: the region's bytes
    device: Any = None  # cuda: the opened device memory (a CuPy array of uint8)
    users: int = 0
    retired: bool = False
    _mapping: Any = field(default=None, repr=False)

    def close(self) -> None:
        """Unmap (called once, when retired and unused); a numpy view still alive keeps the mapping until it dies."""
        buffer, mapping, self.buffer, self._mapping, self.device = self.buffer, self._mapping, None, None, None
        if buffer is not None:
            try:
                buffer.release()
                mapping.close()
            except BufferError:
                pass  # a view is still alive: the mapping goes with the last reference to it
        if mapping is not None and self.kind == "cuda":
            mapping()


class SharedMemoryRegistry:
    """The server's registered regions, for both edges (module docstring). Event-loop only: no locks."""

    def __init__(self, *, scoped: bool = False, max_regions: int = DEFAULT_MAX_REGIONS, max_bytes: int = DEFAULT_MAX_BYTES,
                 disabled: str = "") -> None:
        """``scoped``: regions belong to the bearer token that registered them; ``disabled``: when not empty, why
        shared memory is refused (e.g. in a ``--workers`` worker, whose siblings would not see its regions)."""
        self.scoped = scoped
        self.max_regions = max_regions
        self.max_bytes = max_bytes
        self.disabled = disabled
        self._regions: dict[tuple[str, str], Region] = {}
        self._mapped = 0  # bytes of regions not yet closed (including retired ones still in use)
        self._count = 0

    # -- what the server offers ---------------------------------------------------------------

    @staticmethod
    def cuda_usable() -> bool:
        """Whether CUDA regions can be opened here (CuPy and a GPU)."""
        try:
            import cupy

            return bool(cupy.cuda.runtime.getDeviceCount() > 0)
        except Exception:
            return False

    def extensions(self) -> tuple[str, ...]:
        if self.disabled:
            return ()
        return ("system_shared_memory", "cuda_shared_memory") if self.cuda_usable() else ("system_shared_memory",)

    # -- the RPCs -----------------------------------------------------------------------------

    def register_system(self, owner: str, name: str, key: str, offset: int, size: int) -> None:
        self._check_new(owner, name, size)
        path = _shm_path(key)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise InvalidInput(f"cannot open shared memory key '{key}' for region '{name}': {exc.strerror or exc}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidInput(f"shared memory key '{key}' for region '{name}' is not a shared-memory object")
            if offset + size > info.st_size:
                raise InvalidInput(
                    f"region '{name}': offset {offset} + byte_size {size} = {offset + size} is past the end of key '{key}' ({info.st_size} bytes)"
                )
            start = offset - offset % mmap.ALLOCATIONGRANULARITY  # mmap's offset must be page-aligned
            mapping = mmap.mmap(fd, offset + size - start, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=start)
        except OSError as exc:
            raise InvalidInput(f"cannot map shared memory key '{key}' for region '{name}': {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        region = Region(name, "system", size, key=key, offset=offset, buffer=memoryview(mapping)[offset - start :], _mapping=mapping)
        self._add(owner, region)

    def register_cuda(self, owner: str, name: str, raw_handle: bytes, device_id: int, size: int) -> None:
        self._check_new(owner, name, size)
        if not self.cuda_usable():
            raise Unsupported(f"region '{name}': CUDA shared memory needs CuPy and a GPU on the server, and this server has none; use system shared memory")
        if len(raw_handle) != 64:
            raise InvalidInput(f"region '{name}': raw_handle must be a 64-byte cudaIpcMemHandle_t, got {len(raw_handle)} bytes")
        import cupy

        try:
            with cupy.cuda.Device(device_id):
                pointer = cupy.cuda.runtime.ipcOpenMemHandle(raw_handle)
                memory = cupy.cuda.UnownedMemory(pointer, size, owner=None, device_id=device_id)
                device = cupy.ndarray((size,), dtype=cupy.uint8, memptr=cupy.cuda.MemoryPointer(memory, 0))
        except Exception as exc:
            raise InvalidInput(f"region '{name}': cannot open the CUDA IPC handle on device {device_id}: {exc}") from None

        def close_handle() -> None:
            with cupy.cuda.Device(device_id):
                cupy.cuda.runtime.ipcCloseMemHandle(pointer)

        self._add(owner, Region(name, "cuda", size, device_id=device_id, device=device, _mapping=close_handle))

    def unregister(self, owner: str, name: str, kind: str) -> None:
        """Forget ``name`` (empty: every region of this kind the caller owns); unknown names are no error (as Triton)."""
        keys = [k for k, r in self._regions.items() if k[0] == owner and r.kind == kind and (not name or k[1] == name)]
        for k in keys:
            region = self._regions.pop(k)
            self._count -= 1
            region.retired = True
            if region.users == 0:
                self._close(region)

    def status(self, owner: str, name: str, kind: str) -> list[Region]:
        if name:
            region = self._regions.get((owner, name))
            if region is None or region.kind != kind:
                raise InvalidInput(f"no {kind} shared memory region named '{name}' is registered")
            return [region]
        return [r for (o, _), r in self._regions.items() if o == owner and r.kind == kind]

    # -- requests -----------------------------------------------------------------------------

    def acquire(self, owner: str, name: str, tensor: str) -> Region:
        region = self._regions.get((owner, name))
        if region is None:
            if self.disabled:
                raise Unsupported(f"{tensor} asks for shared memory, which is not available: {self.disabled}")
            raise InvalidInput(f"{tensor}: no shared memory region named '{name}' is registered; register it first")
        region.users += 1
        return region

    def release(self, region: Region) -> None:
        region.users -= 1
        if region.retired and region.users == 0:
            self._close(region)

    # -- internals ----------------------------------------------------------------------------

    def _check_new(self, owner: str, name: str, size: int) -> None:
        if self.disabled:
            raise Unsupported(f"shared memory registration is not available: {self.disabled}")
        if not name:
            raise InvalidInput("a shared memory region needs a name")
        if len(name) > _NAME_MAX:
            raise InvalidInput(f"a shared memory region name is at most {_NAME_MAX} characters")
        if (owner, name) in self._regions:
            raise InvalidInput(f"a shared memory region named '{name}' is already registered; unregister it first")
        if size <= 0:
            raise InvalidInput(f"region '{name}': byte_size must be positive")
        if self._count >= self.max_regions:
            raise LimitExceeded(f"the server holds {self._count} shared memory regions, its limit; unregister some first")
        if self._mapped + size > self.max_bytes:
            raise LimitExceeded(
                f"registering region '{name}' ({size} bytes) would map {self._mapped + size} bytes, above the server's limit of {self.max_bytes}"
            )

    def _add(self, owner: str, region: Region) -> None:
        self._regions[(owner, region.name)] = region
        self._count += 1
        self._mapped += region.byte_size

    def _close(self, region: Region) -> None:
        self._mapped -= region.byte_size
        region.close()

    def close(self) -> None:
        """Unregister everything (server shutdown)."""
        for owner, name in list(self._regions):
            region = self._regions[(owner, name)]
            self.unregister(owner, name, region.kind)


def _shm_path(key: str) -> str:
    """``/dev/shm/<key>`` for a POSIX shm name (``/name`` or ``name``: one component, as ``shm_open`` takes it)."""
    name = key[1:] if key.startswith("/") else key
    if not name or "/" in name or name in (".", "..") or "\0" in name or len(name) > _NAME_MAX:
        raise InvalidInput(f"shared memory key '{key}' is not a POSIX shared memory name ('/name': one component, no other '/')")
    return os.path.join(SHM_DIR, name)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a requested output goes: a region, and the bytes of it at ``offset``."""

    region: Region
    offset: int
    byte_size: int


def _int_param(params: Mapping[str, pb.InferParameter], key: str, what: str) -> int:
    param = params.get(key)
    if param is None:
        return 0
    value = nonnegative_int(param)
    if value is None:
        raise InvalidInput(f"{what}: parameter '{key}' must be a non-negative integer")
    return value


class RequestRegions:
    """One request's use of registered regions: resolves parameters, counts the request as a user of each region
    it touches, and lets them go (``release``) when the request is answered or fails."""

    __slots__ = ("_registry", "_metadata", "_owner", "_held")

    def __init__(self, registry: SharedMemoryRegistry, metadata: Any) -> None:
        self._registry = registry
        self._metadata = metadata  # read only when the request names a region
        self._owner: str | None = None
        self._held: list[Region] = []

    def _locate(self, params: Mapping[str, pb.InferParameter], what: str) -> tuple[Region, int, int]:
        param = params.get("shared_memory_region")
        if param is None or param.WhichOneof("parameter_choice") != "string_param" or not param.string_param:
            raise InvalidInput(f"{what}: shared memory needs the 'shared_memory_region' parameter (a region name)")
        if "shared_memory_byte_size" not in params:
            raise InvalidInput(f"{what}: shared memory needs the 'shared_memory_byte_size' parameter")
        size = _int_param(params, "shared_memory_byte_size", what)
        offset = _int_param(params, "shared_memory_offset", what)
        if self._owner is None:
            self._owner = owner_of(self._metadata() if callable(self._metadata) else self._metadata, self._registry.scoped)
        region = self._registry.acquire(self._owner, param.string_param, what)
        self._held.append(region)
        if offset + size > region.byte_size:
            raise InvalidInput(
                f"{what}: offset {offset} + byte_size {size} = {offset + size} is past the end of region '{region.name}' ({region.byte_size} bytes)"
            )
        return region, offset, size

    def input(self, name: str, params: Mapping[str, pb.InferParameter], datatype: str, dtype: np.dtype, itemsize: int,
              shape: tuple[int, ...], max_bytes_element: int) -> np.ndarray:
        """The input's tensor: a read-only view over a system region (no copy), or a host copy of a CUDA one."""
        what = f"input '{name}'"
        region, offset, size = self._locate(params, what)
        count = math.prod(shape)
        if datatype != "BYTES" and size != count * itemsize:
            raise InvalidInput(f"{what}: shared_memory_byte_size is {size} but shape {list(shape)} of {datatype} needs {count * itemsize} bytes")
        if region.kind == "cuda":
            data: Any = region.device[offset : offset + size].get().data
        else:
            assert region.buffer is not None  # a system region holds its mapping until it is unregistered
            data = region.buffer[offset : offset + size]
        if datatype == "BYTES":
            try:
                return deserialize_bytes_tensor(bytes(data), count, max_bytes_element).reshape(shape)
            except ElementTooLarge as exc:
                raise LimitExceeded(f"{what}: {exc} (the server's max_bytes_element)") from None
            except ValueError as exc:
                raise InvalidInput(f"{what}: {exc}") from None
        array = np.frombuffer(data, dtype=dtype).reshape(shape)
        array.flags.writeable = False
        return array

    def output(self, name: str, params: Mapping[str, pb.InferParameter]) -> Target:
        """Where a requested output goes (checked before the model runs)."""
        region, offset, size = self._locate(params, f"output '{name}'")
        return Target(region, offset, size)

    def release(self) -> None:
        if not self._held:  # the common case: no region was touched
            return
        held, self._held = self._held, []
        for region in held:
            self._registry.release(region)


def write_output(name: str, target: Target, array: np.ndarray, datatype: str) -> None:
    """Copy an output into its region; INVALID_ARGUMENT when it does not fit the bytes the request gave it."""
    data = serialize_bytes_tensor(array) if datatype == "BYTES" else None
    nbytes = len(data) if data is not None else array.nbytes
    if nbytes > target.byte_size:
        raise InvalidInput(
            f"output '{name}' has {nbytes} bytes (shape {list(array.shape)} of {datatype}) but its shared_memory_byte_size is {target.byte_size}"
        )
    region = target.region
    if region.kind == "cuda":
        source = np.frombuffer(data, dtype=np.uint8) if data is not None else np.ascontiguousarray(array).view(np.uint8).reshape(-1)
        region.device[target.offset : target.offset + nbytes].set(source)
        return
    assert region.buffer is not None
    destination = region.buffer[target.offset : target.offset + nbytes]
    if data is not None:
        destination[:] = data
    else:
        np.copyto(np.frombuffer(destination, dtype=array.dtype).reshape(array.shape), array, casting="no")


# -- the register request's body over REST ------------------------------------------------------


def register_from_json(kind: str, name: str, doc: Any) -> dict[str, Any]:
    """The register arguments (``DataPlane.register_*_shared_memory``) of a REST body: system ``{"key", "offset", "byte_size"}``, CUDA ``{"raw_handle": {"b64"},
    "device_id", "byte_size"}``; INVALID_ARGUMENT for anything else."""
    if not isinstance(doc, dict):
        raise InvalidInput("a shared memory register request body must be a JSON object")

    def number(field_name: str, required: bool = True) -> int:
        value = doc.get(field_name)
        if value is None and not required:
            return 0
        if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value >= 2**63:
            raise InvalidInput(f"register '{name}': '{field_name}' must be a non-negative integer")
        return value

    if kind == "system":
        key = doc.get("key")
        if not isinstance(key, str) or not key:
            raise InvalidInput(f"register '{name}': 'key' must be the shared memory key (a string)")
        return {"name": name, "key": key, "offset": number("offset", False), "byte_size": number("byte_size")}
    handle = doc.get("raw_handle")
    encoded = handle.get("b64") if isinstance(handle, dict) else None
    if not isinstance(encoded, str):
        raise InvalidInput(f"register '{name}': 'raw_handle' must be {{\"b64\": <base64 of the cudaIpcMemHandle_t>}}")
    import base64
    import binascii

    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"register '{name}': 'raw_handle.b64' is not base64") from None
    return {"name": name, "raw_handle": raw, "device_id": number("device_id", False), "byte_size": number("byte_size")}
