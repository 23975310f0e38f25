"""Benchmark ingesting an image folder archive, persisting it and loading it back.

By default it reads the shared CIFAR-10 JPEG tree (``../shared/datasets/cifar10_jpeg.tar.gz``
relative to the project root: 60,000 JPEGs of 32 x 32) straight from the .tar.gz, saves each
split with ``save_imageset`` into a temporary folder and times ``load_imageset``.

    python benchmarks/ingest.py [--path other.tar.gz] [--workers N]

Peak memory is the peak resident set size above the baseline taken after all imports: the
kernel's high-water mark (VmHWM) is reset to the current RSS at the baseline by writing 5 to
``/proc/self/clear_refs``, so import-time peaks do not count; where that is not allowed the
mark since process start is used (and the output says so). Decoding runs in threads of
this process, so the process's own mark covers it. The last line is exactly
``seconds: <ingest wall seconds> peak_mb: <peak RSS above baseline in MB>``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PATH = ROOT.parent / "shared" / "datasets" / "cifar10_jpeg.tar.gz"

try:
    import aavae  # noqa: F401
except ImportError:  # run from a checkout without an install
    sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402

from aavae.data.imagefolder import read_imagefolder  # noqa: E402
from aavae.data.imageset import load_imageset, save_imageset  # noqa: E402

MB = 1024**2


def status_kb(field: str) -> int:
    """A memory field of /proc/self/status (``VmRSS``, ``VmHWM``) in kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False if not permitted."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--path", type=Path, default=DEFAULT_PATH, help="image folder archive or folder"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="decoding threads (default: all CPUs)"
    )
    args = parser.parse_args()
    if not args.path.exists():
        print(
            f"skipped: {args.path} is absent (the shared CIFAR-10 JPEG tree; pass --path to use another copy)"
        )
        return 0

    peak_from_baseline = reset_peak_rss()
    baseline_kb = status_kb("VmRSS")

    start = time.perf_counter()
    result = read_imagefolder(args.path, workers=args.workers)
    ingest_s = time.perf_counter() - start
    count = sum(len(imageset) for imageset in result.splits.values())
    shapes = ", ".join(
        f"{name} {imageset.images.shape}" for name, imageset in result.splits.items()
    )
    print(
        f"ingest: {count:,} images in {ingest_s:.2f} s = {count / ingest_s:,.0f} images/s ({shapes})"
    )

    with tempfile.TemporaryDirectory(prefix="aavae-ingest-") as folder:
        start = time.perf_counter()
        for name, imageset in result.splits.items():
            save_imageset(imageset, Path(folder) / name)
        print(f"save: {time.perf_counter() - start:.2f} s")
        names = list(result.splits)
        del result, imageset  # measure loading without the ingested arrays alive

        start = time.perf_counter()
        mapped = [load_imageset(Path(folder) / name) for name in names]
        print(f"load (memory-mapped): {time.perf_counter() - start:.3f} s")
        start = time.perf_counter()
        loaded = [load_imageset(Path(folder) / name, mmap=False) for name in names]
        checksum = sum(int(imageset.images.sum(dtype=np.uint64)) for imageset in loaded)
        print(
            f"load into memory and read every pixel: {time.perf_counter() - start:.3f} s (pixel sum {checksum})"
        )
        del mapped, loaded

    peak_mb = (status_kb("VmHWM") - baseline_kb) / 1024
    if not peak_from_baseline:
        print("note: /proc/self/clear_refs is not writable: the peak counts from process start")
    print(f"baseline RSS after imports: {baseline_kb / 1024:.1f} MB")
    print(f"seconds: {ingest_s:.2f} peak_mb: {peak_mb:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
