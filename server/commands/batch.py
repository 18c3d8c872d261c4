"""``surge batch``: run a model (with its pipeline) over a dataset in-process, without gRPC.

    surge batch --model-repository R --model M --input FILE --output FILE [--chunk-rows N] [--version N]

``--chunk-rows`` defaults to about 8 MiB of input rows, a whole number of ``max_batch_size`` batches
(``default_chunk_rows``: 131,072 rows of 16 float32 features, 672 64x64x3 uint8 images at batch 32).

The model loads exactly as the server loads it (``ModelVersion``: runtime, pipeline, warm-up) and every row goes
through what a served batch goes through once the batcher has formed it: the instance thread's ``_Instance.run``
(pipeline kernels, runtime, post-processing) on batches of at most ``max_batch_size`` rows
(``ModelVersion.run_offline``). A chunk is split across the instances; the next chunk is read (and the previous
one written) while one computes. Skipping the batcher's per-request work keeps a small model near its own speed.

Formats (by extension): a folder of JPEG files (``*.jpg``, ``*.jpeg`` anywhere below it, one row per file in
the order of their sorted relative paths, for a model with one BYTES input such as a ``decode_jpeg`` pipeline's;
a file that is not a decodable JPEG stops the job with its path), ``.npy`` (one array: the model's single input), ``.npz`` (one array per input name),
``.parquet`` and ``.csv`` (pyarrow, ``pip install 'surge[parquet]'``: a column per input name, a list column for
a vector input, or, for a model with one 1-D input, every column in order as its features). Outputs: ``.npz`` (one
array per output), ``.parquet`` (a column per output; vectors as fixed-size lists), ``.csv`` (vectors as
``name_0``, ``name_1``, ... columns).

Bounded memory: ``.npy`` is memory-mapped, ``.npz`` members are read row range by row range, Parquet by batches,
CSV by blocks; about two chunks of input and outputs are in memory (the one computing, the one read or written).
Resumable. An ``.npz`` output from an input whose row count is known up front (.npy, .npz, Parquet) is written in
place: ``OUTPUT.parts/output.npz.partial`` is laid out (stored zip members, one per output, rows at fixed offsets;
the per-row dtype and shape of each output come from the first chunk and are kept in ``layout.json``), each finished
chunk's rows go straight to their offsets and then a ``chunk-NNNNNN.json`` marker appears (atomically), and the end
writes only the zip headers (CRCs kept running in row order, recomputed from the file after a resume) and moves the
file to OUTPUT: nothing is re-read or copied. Other outputs (Parquet, CSV, or a CSV input, whose row count is an
estimate) write each finished chunk to ``OUTPUT.parts/chunk-NNNNNN/`` (one raw ``.npy`` per output, the folder
renamed into place when complete) and assemble the final file chunk by chunk. Either way ``job.json`` names the
input (path, size, mtime), model, version, chunk size and output layout; a rerun of the same job skips the chunks
already marked done, and the parts folder is removed at the end.

The chunk loop runs in a thread of its own with plain futures (the event loop's thread waits on it): the next
chunk is submitted to the instances before the previous one is written, so the instances never wait on the
job's reading or writing, and there is no event-loop round trip per chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import os
import shutil
import struct
import sys
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from surge.protos.datatypes import numpy_dtype

from ..config import ModelConfig, TensorConfig, load_model_config
from ..errors import ConfigError, RowsRejected
from ..files import partial_path, replaced, write_atomic
from ..execution.model import ModelVersion, State

__all__ = ["BatchJobError", "Summary", "default_chunk_rows", "run_batch_job"]

FORMATS = (".npy", ".npz", ".parquet", ".csv")


class BatchJobError(Exception):
    """The job cannot run (input, output or model problem); the message says what to change."""


@dataclass(slots=True)
class Summary:
    """What a finished job did."""

    rows: int
    chunks: int
    chunks_skipped: int
    seconds: float
    output: Path

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


JPEG_SUFFIXES = (".jpg", ".jpeg")


def _suffix(path: Path, what: str) -> str:
    if what == "input" and path.is_dir():
        return "/"
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise BatchJobError(f"{what} {path}: unsupported format '{suffix}'; expected one of {', '.join(FORMATS)}")
    if suffix in (".parquet", ".csv"):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise BatchJobError(f"{what} {path}: Parquet and CSV need pyarrow: pip install 'surge[parquet]'") from None
    return suffix


# -- readers: (total rows or None, chunks of {input name: array}) ------------------------------------------


class _NpzMember:
    """One array of an .npz, read by row ranges (seeking in the member; no full load)."""

    def __init__(self, archive: zipfile.ZipFile, member: str) -> None:
        self.file: IO[bytes] = archive.open(member)
        version = np.lib.format.read_magic(self.file)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(self.file)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(self.file)
        else:
            raise BatchJobError(f"npz member {member}: .npy format version {version} is not supported (1.0 and 2.0 are)")
        if fortran or dtype.hasobject:
            raise BatchJobError(f"npz member {member}: Fortran-order or object arrays cannot be streamed; save it with np.savez (C order, numeric)")
        self.shape, self.dtype, self.offset = shape, dtype, self.file.tell()
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    def rows(self, start: int, stop: int) -> np.ndarray:
        self.file.seek(self.offset + start * self.row_bytes)
        data = self.file.read((stop - start) * self.row_bytes)
        return np.frombuffer(data, dtype=self.dtype).reshape((stop - start, *self.shape[1:]))


def _array_reader(path: Path, suffix: str, inputs: tuple[TensorConfig, ...], chunk_rows: int, skip_chunks: set[int]) -> tuple[int, Iterator[tuple[int, dict[str, np.ndarray]]]]:
    names = [t.name for t in inputs]
    if suffix == ".npy":
        if len(inputs) != 1:
            raise BatchJobError(f"input {path}: a .npy holds one array, but the model has inputs {names}; use .npz with one array per input")
        arrays: dict[str, Any] = {names[0]: np.load(path, mmap_mode="r")}
        read: Callable[[Any, int, int], np.ndarray] = lambda a, s, e: np.asarray(a[s:e])  # noqa: E731  # a view: the instance reads the mapped pages
    else:
        archive = zipfile.ZipFile(path)
        members = {Path(m).stem: m for m in archive.namelist() if m.endswith(".npy")}
        missing = [n for n in names if n not in members]
        if missing:
            raise BatchJobError(f"input {path}: no array for model input(s) {missing}; it has {sorted(members)}")
        arrays = {n: _NpzMember(archive, members[n]) for n in names}
        read = lambda a, s, e: a.rows(s, e)  # noqa: E731
    lengths = {n: a.shape[0] if a.shape else 0 for n, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise BatchJobError(f"input {path}: the arrays have different row counts {lengths}")
    total = next(iter(lengths.values()))

    def chunks() -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        for index in range(math.ceil(total / chunk_rows)):
            if index in skip_chunks:
                yield index, {}
                continue
            start = index * chunk_rows
            yield index, {n: read(a, start, min(total, start + chunk_rows)) for n, a in arrays.items()}

    return total, chunks()


def _jpeg_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.suffix.lower() in JPEG_SUFFIXES and p.is_file())


def _folder_reader(path: Path, suffix: str, inputs: tuple[TensorConfig, ...], chunk_rows: int, skip_chunks: set[int]) -> tuple[int, Iterator[tuple[int, dict[str, np.ndarray]]]]:
    """A folder of JPEG files: each file's bytes are one row of the model's single BYTES input."""
    if len(inputs) != 1 or inputs[0].datatype != "BYTES":
        raise BatchJobError(f"input {path}: a folder of JPEG files feeds a model with one BYTES input; the model has {[(t.name, t.datatype) for t in inputs]}")
    files = _jpeg_files(path)
    name, shape = inputs[0].name, tuple(1 if d < 0 else d for d in inputs[0].dims)

    def chunks() -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        for index in range(math.ceil(len(files) / chunk_rows)):
            if index in skip_chunks:
                yield index, {}
                continue
            part = files[index * chunk_rows : (index + 1) * chunk_rows]
            rows = np.empty(len(part), dtype=np.object_)
            rows[:] = [f.read_bytes() for f in part]
            yield index, {name: rows.reshape((len(part), *shape))}

    return len(files), chunks()


def _columns_to_inputs(table: Any, inputs: tuple[TensorConfig, ...], path: Path) -> dict[str, np.ndarray]:
    import pyarrow as pa

    rows = table.num_rows
    out: dict[str, np.ndarray] = {}
    for t in inputs:
        dtype = numpy_dtype(t.datatype)
        if t.name in table.column_names:
            column = table.column(t.name).combine_chunks()
            if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type) or pa.types.is_large_list(column.type):
                values = column.flatten().to_numpy(zero_copy_only=False)
            else:
                values = column.to_numpy(zero_copy_only=False)
            out[t.name] = values.astype(dtype, copy=False).reshape((rows, *(1 if d < 0 else d for d in t.dims)) if -1 not in t.dims else (rows, -1))
        elif len(inputs) == 1 and len(t.dims) == 1:
            width = table.num_columns
            if t.dims[0] not in (-1, width):
                raise BatchJobError(f"input {path}: model input '{t.name}' has {t.dims[0]} features but the file has {width} columns {table.column_names}")
            out[t.name] = np.stack([table.column(i).to_numpy(zero_copy_only=False) for i in range(width)], axis=1).astype(dtype)
        else:
            raise BatchJobError(f"input {path}: no column '{t.name}'; it has {table.column_names}")
    return out


def _table_reader(path: Path, suffix: str, inputs: tuple[TensorConfig, ...], chunk_rows: int, skip_chunks: set[int]) -> tuple[int | None, Iterator[tuple[int, dict[str, np.ndarray]]]]:
    import pyarrow as pa

    if suffix == ".parquet":
        import pyarrow.parquet as pq

        source = pq.ParquetFile(path)
        total: int | None = source.metadata.num_rows
        batches = source.iter_batches(batch_size=chunk_rows)
    else:
        import pyarrow.csv as pacsv

        with path.open("rb") as f:  # an estimate for the ETA (quoted newlines would overcount), read in blocks
            total = max(0, sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b"")) - 1)
        batches = iter(pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=1 << 22)))

    def chunks() -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        pending: list[Any] = []
        have, index = 0, 0
        for batch in batches:
            pending.append(batch)
            have += batch.num_rows
            while have >= chunk_rows:
                table = pa.Table.from_batches(pending).combine_chunks()
                head, rest = table.slice(0, chunk_rows), table.slice(chunk_rows)
                yield index, ({} if index in skip_chunks else _columns_to_inputs(head, inputs, path))
                index += 1
                pending, have = rest.to_batches(), rest.num_rows
        if have:
            table = pa.Table.from_batches(pending)
            yield index, ({} if index in skip_chunks else _columns_to_inputs(table, inputs, path))

    return total, chunks()


# -- output ---------------------------------------------------------------------------------------------


def _save_part(part: Path, outputs: dict[str, np.ndarray]) -> None:
    """One chunk's outputs as raw .npy files in a folder that appears under its final name only when complete."""
    with replaced(part) as tmp:  # not matched by chunk-*: a kill leaves no half chunk
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name, array in outputs.items():
            np.save(tmp / f"{name}.npy", array)


def _load_part(part: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {n: np.load(part / f"{n}.npy", mmap_mode="r") for n in names}


def _write_npz(final: Path, parts: list[Path], names: tuple[str, ...]) -> None:
    shapes: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    for part in parts:  # headers first: the final shapes
        for n, a in _load_part(part, names).items():
            shapes[n] = ((shapes[n][0][0] if n in shapes else 0) + a.shape[0], *a.shape[1:]), a.dtype
    with replaced(final) as tmp, zipfile.ZipFile(tmp, "w", allowZip64=True) as archive:
        for n in names:
            shape, dtype = shapes[n]
            with archive.open(f"{n}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_2_0(member, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
                for part in parts:
                    member.write(memoryview(np.ascontiguousarray(np.load(part / f"{n}.npy", mmap_mode="r"))).cast("B"))  # type: ignore[arg-type]  # numpy declares __buffer__ for 3.12+ only


class _InPlaceNpz:
    """The final ``.npz`` written in place while the job runs: each output is one stored (uncompressed) zip member
    whose rows sit at fixed offsets, so a finished chunk's outputs go straight to their rows (``os.pwrite``) and the
    end only writes the zip headers; no part is re-read. Used when the row count is known up front (.npy, .npz and
    Parquet inputs) and every output row has one shape. The layout (per output: dtype, row shape) comes from the
    first computed chunk and is kept in ``layout.json`` so a resumed job reopens the same file."""

    def __init__(self, path: Path, names: tuple[str, ...], total: int, layout: dict[str, tuple[str, list[int]]]) -> None:
        self.path, self.names, self.total, self.layout = path, names, total, layout
        self.members: list[tuple[str, bytes, int, int, int]] = []  # name, npy header, local header offset, data offset, size
        self.rows_at: dict[str, int] = {}  # per output: where its first row's bytes go
        offset = 0
        for n in names:
            descr, row_shape = layout[n]
            dtype = np.lib.format.descr_to_dtype(descr)  # type: ignore[arg-type]  # numpy's stubs omit the str form
            buf = io.BytesIO()
            np.lib.format.write_array_header_2_0(buf, {"descr": descr, "fortran_order": False, "shape": (total, *row_shape)})
            header = buf.getvalue()
            size = len(header) + total * int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
            local = 30 + len(f"{n}.npy".encode()) + 20
            self.members.append((n, header, offset, offset + local, size))
            self.rows_at[n] = offset + local + len(header)
            offset += local + size
        self.end = offset
        self.row_bytes = {n: int(np.prod(layout[n][1], dtype=np.int64)) * np.lib.format.descr_to_dtype(layout[n][0]).itemsize for n in names}  # type: ignore[arg-type]
        exists = path.is_file() and path.stat().st_size >= offset  # (a kill while closing leaves the directory past the end)
        self.fd = os.open(path, os.O_RDWR | (0 if exists else os.O_CREAT | os.O_TRUNC), 0o644)
        if not exists:
            os.ftruncate(self.fd, offset)
        for _, header, _, data, _ in self.members:
            os.pwrite(self.fd, header, data)
        self.crc = {n: zlib.crc32(h) for n, h, *_ in self.members}  # running, over the rows written in order
        self.in_order = True

    @staticmethod
    def layout_of(outputs: dict[str, np.ndarray], names: tuple[str, ...]) -> dict[str, tuple[str, list[int]]]:
        arrays = [outputs[n] for n in names]
        if any(a.dtype.hasobject for a in arrays):
            raise BatchJobError("an output holds Python objects (BYTES); write .parquet or .csv instead of .npz")
        return {n: (str(np.lib.format.dtype_to_descr(a.dtype)), list(a.shape[1:])) for n, a in zip(names, arrays)}

    def write(self, start: int, outputs: dict[str, np.ndarray]) -> None:
        """A chunk's outputs at rows ``start`` onwards (chunks arrive in row order within one run)."""
        for n in self.names:
            a = outputs[n]
            descr, row_shape = self.layout[n]
            if str(np.lib.format.dtype_to_descr(a.dtype)) != descr or list(a.shape[1:]) != row_shape:
                raise BatchJobError(f"output '{n}': a chunk gave rows of {a.dtype} {list(a.shape[1:])}, an earlier one {descr} {row_shape}; write .parquet instead")
            view = memoryview(np.ascontiguousarray(a)).cast("B")  # type: ignore[arg-type]
            os.pwrite(self.fd, view, self.rows_at[n] + start * self.row_bytes[n])
            self.crc[n] = zlib.crc32(view, self.crc[n])

    def skipped(self) -> None:
        """A chunk done in an earlier run: the running CRCs are recomputed from the file at the end."""
        self.in_order = False

    def close(self, final: Path) -> None:
        """Write the zip headers and central directory, then move the file to ``final``."""
        entries = []
        dostime, dosdate = 0, (1980 - 1980) << 9 | 1 << 5 | 1
        for n, _header, local, data, size in self.members:
            crc = self.crc[n]
            if not self.in_order:
                crc, pos, left = 0, data, size
                while left:
                    block = os.pread(self.fd, min(left, 1 << 24), pos)
                    crc, pos, left = zlib.crc32(block, crc), pos + len(block), left - len(block)
            name = f"{n}.npy".encode()
            flags = 0 if name.isascii() else 0x800  # UTF-8 name
            extra = struct.pack("<HHQQ", 1, 16, size, size)
            os.pwrite(self.fd, struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, flags, 0, dostime, dosdate, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(name), len(extra)) + name + extra, local)
            entries.append((name, flags, crc, size, local))
        directory = b""
        for name, flags, crc, size, local in entries:
            extra = struct.pack("<HHQQQ", 1, 24, size, size, local)
            directory += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, flags, 0, dostime, dosdate, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(name), len(extra), 0, 0, 0, 0, 0xFFFFFFFF) + name + extra
        count, start = len(entries), self.end
        eocd64 = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, len(directory), start)
        locator = struct.pack("<IIQI", 0x07064B50, 0, start + len(directory), 1)
        eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(directory), 0xFFFFFFFF, 0)
        os.pwrite(self.fd, directory + eocd64 + locator + eocd, start)
        os.ftruncate(self.fd, start + len(directory) + len(eocd64) + len(locator) + len(eocd))
        os.close(self.fd)
        os.replace(self.path, final)

    def abandon(self) -> None:
        os.close(self.fd)


def _table_of(data: Any, names: tuple[str, ...], csv: bool) -> Any:
    import pyarrow as pa

    columns: dict[str, Any] = {}
    for n in names:
        a = data[n]
        flat = a.reshape(a.shape[0], -1)
        if flat.shape[1] == 1:
            columns[n] = pa.array(flat[:, 0])
        elif csv:
            for i in range(flat.shape[1]):
                columns[f"{n}_{i}"] = pa.array(flat[:, i])
        else:
            columns[n] = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(flat).reshape(-1)), flat.shape[1])
    return pa.table(columns)


def _write_table(final: Path, parts: list[Path], names: tuple[str, ...], suffix: str) -> None:
    tmp = partial_path(final)
    writer: Any = None
    try:
        for part in parts:
            table = _table_of(_load_part(part, names), names, suffix == ".csv")
            if writer is None:
                if suffix == ".parquet":
                    import pyarrow.parquet as pq

                    writer = pq.ParquetWriter(tmp, table.schema)
                else:
                    import pyarrow.csv as pacsv

                    writer = pacsv.CSVWriter(str(tmp), table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    os.replace(tmp, final)


# -- the job --------------------------------------------------------------------------------------------


def _pick_version(model_dir: Path, version: int | None) -> int:
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()) if model_dir.is_dir() else []
    if not versions:
        raise BatchJobError(f"model folder {model_dir} has no numbered version folder")
    if version is None:
        return versions[-1]
    if version not in versions:
        raise BatchJobError(f"model {model_dir.name} has no version {version}; it has {versions}")
    return version


class _Progress:
    """One status line on a terminal (rows, rows/s, ETA), redrawn at most twice a second."""

    def __init__(self, stream: IO[str] | None, total: int | None) -> None:
        self.stream, self.total = stream, total
        self.started = time.perf_counter()
        self.last = 0.0

    def update(self, done: int, skipped_rows: int, *, final: bool = False) -> None:
        if self.stream is None:
            return
        now = time.perf_counter()
        if not final and now - self.last < 0.5:
            return
        self.last = now
        elapsed = now - self.started
        rate = (done - skipped_rows) / elapsed if elapsed > 0 else 0.0
        if self.total:
            left = max(0, self.total - done)
            eta = f"ETA {left / rate:6.1f} s" if rate > 0 else "ETA    ? s"
            text = f"{done}/{self.total} rows ({100 * done / self.total:5.1f}%)  {rate:,.0f} rows/s  {eta}"
        else:
            text = f"{done} rows  {rate:,.0f} rows/s"
        self.stream.write("\r" + text + ("\n" if final else ""))
        self.stream.flush()


CHUNK_BYTES = 8 << 20  # input bytes per chunk by default: few chunks (little per-chunk work), memory still small


def default_chunk_rows(config: ModelConfig) -> int:
    """About ``CHUNK_BYTES`` of input rows, a whole number of ``max_batch_size`` batches (4096 rows when a row's
    size is not fixed: a BYTES input or a variable dimension)."""
    batch = config.max_batch_size or 1
    if any(t.datatype == "BYTES" or any(d < 0 for d in t.dims) for t in config.inputs):
        return max(batch, 4096 // batch * batch)
    row = sum(int(np.prod(t.dims, dtype=np.int64)) * np.dtype(numpy_dtype(t.datatype)).itemsize for t in config.inputs)
    return max(batch, CHUNK_BYTES // max(1, row) // batch * batch)


def _job_key(input_path: Path, config: ModelConfig, version: int, chunk_rows: int) -> dict[str, Any]:
    if input_path.is_dir():  # a folder of JPEGs: the job is its files, their sizes and latest change
        stats = [f.stat() for f in _jpeg_files(input_path)]
        size, mtime_ns = sum(st.st_size for st in stats), max((st.st_mtime_ns for st in stats), default=0)
        size_key: Any = [len(stats), size]
    else:
        st = input_path.stat()
        size_key, mtime_ns = st.st_size, st.st_mtime_ns
    return {"input": str(input_path.resolve()), "size": size_key, "mtime_ns": mtime_ns, "model": config.name, "version": version, "chunk_rows": chunk_rows}


async def run_batch_job(
    model_repository: Path, model: str, input_path: Path, output_path: Path, *,
    chunk_rows: int | None = None, version: int | None = None, progress: IO[str] | None = sys.stderr,
) -> Summary:
    """Run ``model`` over ``input_path`` into ``output_path`` (see the module docstring). Raises BatchJobError."""
    in_suffix, out_suffix = _suffix(input_path, "input"), _suffix(output_path, "output")
    if out_suffix == ".npy":
        raise BatchJobError(f"output {output_path}: write .npz (one array per output), .parquet or .csv")
    if not input_path.is_file() and in_suffix != "/":
        raise BatchJobError(f"input {input_path} does not exist")
    if chunk_rows is not None and chunk_rows < 1:
        raise BatchJobError(f"--chunk-rows must be >= 1, got {chunk_rows}")
    model_dir = model_repository / model
    try:
        config = load_model_config(model_dir)
    except ConfigError as exc:
        raise BatchJobError(str(exc)) from None
    number = _pick_version(model_dir, version)
    served = ModelVersion(config, number, model_dir / str(number) / config.model_filename)
    await served.load()
    if served.state != State.READY:
        raise BatchJobError(f"model {model} version {number} failed to load: {served.reason}")
    started = time.perf_counter()
    try:
        config = served.config
        if not config.max_batch_size:
            raise BatchJobError(f"model {model} has no batch dimension (max_batch_size = 0): a batch job runs rows through a batchable model")
        if chunk_rows is None:
            chunk_rows = default_chunk_rows(config)
        names = tuple(t.name for t in config.outputs)
        parts_dir = output_path.with_name(output_path.name + ".parts")
        inplace = out_suffix == ".npz" and in_suffix != ".csv"  # the row count is known up front: write the .npz in place
        key = {**_job_key(input_path, config, number, chunk_rows), "output": "npz-in-place" if inplace else "parts"}
        job_file, layout_file, data_file = parts_dir / "job.json", parts_dir / "layout.json", parts_dir / "output.npz.partial"
        if parts_dir.is_dir() and job_file.is_file() and json.loads(job_file.read_text()) != key:
            shutil.rmtree(parts_dir)  # a different job (input changed, other model or chunk size): start over
        if inplace and parts_dir.is_dir() and not (layout_file.is_file() and data_file.is_file()):
            shutil.rmtree(parts_dir)  # chunk markers without the file they describe: start over
        parts_dir.mkdir(parents=True, exist_ok=True)
        job_file.write_text(json.dumps(key))
        done_chunks = {int(p.name.split("-")[1].split(".")[0]) for p in parts_dir.glob("chunk-*")}
        reader = {".npy": _array_reader, ".npz": _array_reader, "/": _folder_reader}.get(in_suffix, _table_reader)
        total, chunks = reader(input_path, in_suffix, config.inputs, chunk_rows, done_chunks)
        npz: _InPlaceNpz | None = None
        if inplace and layout_file.is_file():
            layout = {n: (d, list(shape)) for n, (d, shape) in json.loads(layout_file.read_text()).items()}
            npz = _InPlaceNpz(data_file, names, total or 0, layout)
        bar = _Progress(progress, total)
        stop = threading.Event()

        def finish(part: Path, start: int, n: int, futures: list[Future[Any]]) -> int:
            nonlocal npz
            try:
                results = [f.result()[0] for f in futures]
            except RowsRejected as exc:  # rows counted from the chunk's first
                files = _jpeg_files(input_path) if in_suffix == "/" else None
                where = [str(files[start + r].relative_to(input_path)) if files else f"row {start + r}" for r in exc.reasons]
                raise BatchJobError(f"input {input_path}: {', '.join(where[:3])}{' ...' if len(where) > 3 else ''}: {next(iter(exc.reasons.values()))}") from None
            outputs = {name: np.concatenate([r[name] for r in results]) if len(results) > 1 else results[0][name] for name in names}
            if not inplace:
                _save_part(part, outputs)
                return n
            for name in names:
                if outputs[name].shape[0] != n:
                    raise BatchJobError(f"output '{name}': {outputs[name].shape[0]} rows for a chunk of {n}; write .parquet instead of .npz")
            if npz is None:
                layout = _InPlaceNpz.layout_of(outputs, names)
                npz = _InPlaceNpz(data_file, names, total or 0, layout)
                write_atomic(layout_file, json.dumps(layout))
            npz.write(start, outputs)
            write_atomic(part, json.dumps({"rows": n}))  # the marker appears once the rows are written
            return n

        def drive() -> tuple[int, int, int]:
            """In a thread of its own, not the event loop's: read chunk k+1 and write chunk k-1 while the instances
            compute chunk k, with plain futures (no event-loop round trip per chunk, little GIL traffic)."""
            rows_done = skipped_rows = count = 0
            running: tuple[Path, int, int, list[Future[Any]]] | None = None  # the chunk in flight
            try:
                for index, inputs in chunks:
                    if stop.is_set():
                        raise asyncio.CancelledError
                    count += 1
                    part = parts_dir / (f"chunk-{index:06d}.json" if inplace else f"chunk-{index:06d}")
                    if not inputs:  # done in an earlier run
                        n = json.loads(part.read_text())["rows"] if inplace else _load_part(part, names[:1])[names[0]].shape[0]
                        if npz is not None:
                            npz.skipped()
                        rows_done += n
                        skipped_rows += n
                        continue
                    _check(config, inputs)
                    futures = served.run_offline(inputs, names)
                    if running is not None:
                        rows_done += finish(*running)
                        bar.update(rows_done, skipped_rows)
                    running = (part, index * chunk_rows, next(iter(inputs.values())).shape[0], futures)
                if running is not None:
                    job, running = running, None
                    rows_done += finish(*job)
            finally:
                if running is not None:
                    for f in running[3]:
                        f.cancel()
                    wait(running[3])
            return rows_done, skipped_rows, count

        driver = asyncio.ensure_future(asyncio.to_thread(drive))
        try:
            rows_done, skipped_rows, count = await asyncio.shield(driver)
        except BaseException:
            stop.set()  # a cancelled job: the driver stops at its next chunk; its file is closed once it has
            with contextlib.suppress(BaseException):
                await driver
            if npz is not None:
                npz.abandon()
            raise
        bar.update(rows_done, skipped_rows, final=True)
        if not count:
            raise BatchJobError(f"input {input_path} has no rows")
        if inplace:
            if npz is None or rows_done != total:
                if npz is not None:
                    npz.abandon()
                raise BatchJobError(f"input {input_path}: read {rows_done} rows, expected {total}")
            npz.close(output_path)
        else:
            parts = [parts_dir / f"chunk-{i:06d}" for i in range(count)]
            if out_suffix == ".npz":
                _write_npz(output_path, parts, names)
            else:
                _write_table(output_path, parts, names, out_suffix)
        shutil.rmtree(parts_dir)
        return Summary(rows=rows_done, chunks=count, chunks_skipped=len(done_chunks & set(range(count))), seconds=time.perf_counter() - started, output=output_path)
    finally:
        await served.aclose()


def _check(config: ModelConfig, inputs: dict[str, np.ndarray]) -> None:
    for t in config.inputs:
        if t.name not in inputs:
            if t.optional:
                continue
            raise BatchJobError(f"the input has no data for model input '{t.name}'")
        a = inputs[t.name]
        want = numpy_dtype(t.datatype)
        if a.dtype != want:
            raise BatchJobError(f"input '{t.name}': dtype {a.dtype}, the model takes {t.datatype} ({np.dtype(want)}); convert the data")
        if a.ndim != len(t.dims) + 1 or any(d != -1 and d != s for d, s in zip(t.dims, a.shape[1:])):
            raise BatchJobError(f"input '{t.name}': rows of shape {list(a.shape[1:])}, the model takes {list(t.dims)}")
