"""CUDA kernels' achieved bandwidth against the device's own copy bandwidth (issue 8), one short table.

    python -m bench.gpu.bench_kernels [--json FILE]

For each kernel at a serving-sized input: the median time of 20 launches (CUDA events, after a compile launch),
the bytes it must move (input read once + output written once), GB/s, and that as a share of a device-to-device
copy of 1 GiB measured the same way (read + write counted). Memory-bound kernels should come near the copy; the
bilinear ones read some source pixels more than once (counted once here), so their share is a lower bound.
Exits 2 (and prints why) where numba.cuda cannot start.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import numpy as np


def _time(fn, cuda, repeats: int = 20) -> float:
    """Median seconds of ``fn`` (CUDA events on the default stream), after one untimed launch (compiles)."""
    fn()
    cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, stop = cuda.event(), cuda.event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)  # milliseconds
    return max(statistics.median(times), 1e-9)  # the simulator times everything as 0


def _device_name(cuda) -> str:
    try:
        name = cuda.get_current_device().name
    except AttributeError:  # the simulator
        return "numba CUDA simulator"
    return name.decode() if isinstance(name, bytes) else str(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--repeats", type=int, default=20, help="timed launches per kernel (median)")
    parser.add_argument("--scale", type=int, default=1, help="divide every size by this (a quick check on numba's CUDA simulator)")
    args = parser.parse_args()
    from surge.kernels import cuda as kc

    reason = kc.why_unavailable()
    if reason:
        print(f"{reason}: no kernel bandwidth table")
        return 2
    from numba import cuda

    k = args.scale
    copy_bytes = (1 << 30) // k**2
    src, dst = cuda.device_array(copy_bytes, dtype=np.uint8), cuda.device_array(copy_bytes, dtype=np.uint8)
    copy_s = _time(lambda: dst.copy_to_device(src), cuda, args.repeats)
    copy_gbs = 2 * copy_bytes / copy_s / 1e9
    rng = np.random.default_rng(0)
    n, h, w, rows = max(1, 64 // k), 480 // k, 640 // k, 4_194_304 // k**3
    side, crop, box = 224 // k, 224 // k, 640 // k
    images = cuda.to_device(rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8))
    table = cuda.to_device(rng.standard_normal((rows, 32)).astype(np.float32))
    ids = cuda.to_device(rng.integers(0, 1_000_000, (rows, 8)))
    small_ids = cuda.to_device(rng.integers(0, 16, (rows, 4)))
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    img_in = images.nbytes
    cases = [
        (f"normalize {n}x{h}x{w}x3 u8 -> f32 CHW", lambda: kc.normalize(images, mean, std), img_in + img_in * 4),
        (f"resize {n}x{h}x{w} -> {side}x{side} f32", lambda: kc.resize(images, (side, side)), img_in + n * side * side * 3 * 4),
        (f"center_crop {n}x{h}x{w} -> {crop}x{crop} u8", lambda: kc.center_crop(images, (crop, crop)), 2 * n * crop * crop * 3),
        (f"letterbox {n}x{h}x{w} -> {box}x{box} f32", lambda: kc.letterbox(images, (box, box), pad_value=114.0), img_in + n * box * box * 3 * 4),
        (f"resize_crop_normalize {n}x{h}x{w} -> {256 // k} -> {crop}", lambda: kc.resize_crop_normalize(images, (256 // k, 256 // k), (crop, crop), mean, std),
         img_in + n * 3 * crop * crop * 4),
        (f"tabular_transform {rows}x32 f32", lambda: kc.tabular_transform(table, fill=0.0, low=-2.0, high=2.0, mean=0.1, std=2.0), 2 * table.nbytes),
        (f"bucketize {rows}x32 f32 -> i64 (16 bounds)", lambda: kc.bucketize(table, np.linspace(-2, 2, 16)), table.nbytes * 3),
        (f"one_hot {rows}x4 depth 16 -> f32", lambda: kc.one_hot(small_ids, 16), small_ids.nbytes + rows * 64 * 4),
        (f"hash_bucket {rows}x8 i64", lambda: kc.hash_bucket(ids, 1000), 2 * ids.nbytes),
    ]
    results = [{"kernel": f"device-to-device copy {copy_bytes / 2**20:.0f} MiB", "ms": round(copy_s * 1e3, 3), "GB_per_s": round(copy_gbs, 1), "share_of_copy": 1.0}]
    for name, fn, nbytes in cases:
        seconds = _time(fn, cuda, args.repeats)
        gbs = nbytes / seconds / 1e9
        results.append({"kernel": name, "ms": round(seconds * 1e3, 3), "GB_per_s": round(gbs, 1), "share_of_copy": round(gbs / copy_gbs, 3)})
    print(f"{'kernel':<52} {'ms':>9} {'GB/s':>8} {'of copy':>8}")
    for r in results:
        print(f"{r['kernel']:<52} {r['ms']:>9.3f} {r['GB_per_s']:>8.1f} {100 * r['share_of_copy']:>7.1f}%")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"device": _device_name(cuda), "rows": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
