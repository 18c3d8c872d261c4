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
    fn()
    cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, stop = cuda.event(), cuda.event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cuda.event_elapsed_time(start, stop) / 1e3)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    from surge.kernels import cuda as kc

    if not kc.is_available():
        from numba import cuda

        try:
            cuda.detect()
        except Exception as exc:
            print(f"numba.cuda cannot start: {exc}")
        print("no usable GPU for numba.cuda: no kernel bandwidth table")
        return 2
    from numba import cuda

    copy_bytes = 1 << 30
    src, dst = cuda.device_array(copy_bytes, dtype=np.uint8), cuda.device_array(copy_bytes, dtype=np.uint8)
    copy_s = _time(lambda: dst.copy_to_device(src), cuda)
    copy_gbs = 2 * copy_bytes / copy_s / 1e9
    rng = np.random.default_rng(0)
    images = cuda.to_device(rng.integers(0, 256, (64, 480, 640, 3), dtype=np.uint8))
    table = cuda.to_device(rng.standard_normal((4_194_304, 32)).astype(np.float32))
    ids = cuda.to_device(rng.integers(0, 1_000_000, (4_194_304, 8)))
    small_ids = cuda.to_device(rng.integers(0, 16, (4_194_304, 4)))
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    img_in = images.nbytes
    cases = [
        ("normalize 64x480x640x3 u8 -> f32 CHW", lambda: kc.normalize(images, mean, std), img_in + img_in * 4),
        ("resize 64x480x640 -> 224x224 f32", lambda: kc.resize(images, (224, 224)), img_in + 64 * 224 * 224 * 3 * 4),
        ("center_crop 64x480x640 -> 224x224 u8", lambda: kc.center_crop(images, (224, 224)), 2 * 64 * 224 * 224 * 3),
        ("letterbox 64x480x640 -> 640x640 f32", lambda: kc.letterbox(images, (640, 640), pad_value=114.0), img_in + 64 * 640 * 640 * 3 * 4),
        ("resize_crop_normalize 64x480x640 -> 256 -> 224", lambda: kc.resize_crop_normalize(images, (256, 256), (224, 224), mean, std), img_in + 64 * 3 * 224 * 224 * 4),
        ("tabular_transform 4Mx32 f32", lambda: kc.tabular_transform(table, fill=0.0, low=-2.0, high=2.0, mean=0.1, std=2.0), 2 * table.nbytes),
        ("bucketize 4Mx32 f32 -> i64 (16 bounds)", lambda: kc.bucketize(table, np.linspace(-2, 2, 16)), table.nbytes * 3),
        ("one_hot 4Mx4 depth 16 -> f32", lambda: kc.one_hot(small_ids, 16), small_ids.nbytes + 4_194_304 * 64 * 4),
        ("hash_bucket 4Mx8 i64", lambda: kc.hash_bucket(ids, 1000), 2 * ids.nbytes),
    ]
    rows = [{"kernel": "device-to-device copy 1 GiB", "ms": round(copy_s * 1e3, 3), "GB_per_s": round(copy_gbs, 1), "share_of_copy": 1.0}]
    for name, fn, nbytes in cases:
        seconds = _time(fn, cuda)
        gbs = nbytes / seconds / 1e9
        rows.append({"kernel": name, "ms": round(seconds * 1e3, 3), "GB_per_s": round(gbs, 1), "share_of_copy": round(gbs / copy_gbs, 3)})
    print(f"{'kernel':<52} {'ms':>9} {'GB/s':>8} {'of copy':>8}")
    for r in rows:
        print(f"{r['kernel']:<52} {r['ms']:>9.3f} {r['GB_per_s']:>8.1f} {100 * r['share_of_copy']:>7.1f}%")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"device": cuda.get_current_device().name.decode() if isinstance(cuda.get_current_device().name, bytes) else str(cuda.get_current_device().name), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
