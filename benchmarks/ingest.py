"""Benchmark the ingest node on an image folder: wall time and peak memory, then loading back.

By default it reads the shared CIFAR-10 JPEG tree (``../shared/datasets/cifar10_jpeg.tar.gz``
relative to the project root: 60,000 JPEGs of 32 x 32) straight from the .tar.gz. With
``--generate N --side S`` it first writes N random JPEGs of S x S pixels (smooth noise, in
``--classes`` class folders, a ``--test-fraction`` of them in test/) into a folder, in child
processes, and ingests that folder: the scale-out check that peak memory does not grow with
the number of images.

    python benchmarks/ingest.py [--path other.tar.gz] [--workers N]
    python benchmarks/ingest.py --generate 200000 --side 96

What runs is what ``kedro run --pipeline ingest --env imagefolder`` runs: the ingest node
(``aavae.pipelines.ingest.nodes.ingest``) with ``params:dataset``, then the catalog's
``ImageSetDataset`` saving images_train, images_test, images_unlabeled and images_val, in a throw-away
project folder (``data/02_intermediate`` where the reader stages, ``data/03_primary`` where
the catalog writes) made under ``--workdir`` and deleted at the end. It is not under /tmp by
default: a RAM-backed /tmp would hold the staged images in memory and hide them from the
figure.

Peak memory is the peak resident set size of this process above the baseline taken after all
imports and after generating: the kernel's high-water mark (VmHWM) is reset to the current RSS
at the baseline by writing 5 to ``/proc/self/clear_refs``, so earlier peaks do not count;
where that is not allowed the mark since process start is used (and the output says so).
Decoding runs in threads of this process and generating in other processes, so the mark
covers the ingest and nothing else; it is read before the sets are loaded back. The last
line is exactly ``seconds: <wall seconds of the ingest node and the catalog saves> peak_mb:
<peak RSS above baseline in MB>``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PATH = ROOT.parent / "shared" / "datasets" / "cifar10_jpeg.tar.gz"
DEFAULT_WORKDIR = ROOT / "data" / "02_intermediate"
SPLITS = ("train", "test", "unlabeled", "val")

try:
    import aavae  # noqa: F401
except ImportError:  # run from a checkout without an install
    sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from aavae.data import imagefolder  # noqa: E402
from aavae.data.imageset import load_imageset  # noqa: E402
from aavae.kedro_ext.datasets import ImageSetDataset  # noqa: E402
from aavae.pipelines.ingest.nodes import ingest  # noqa: E402

MB = 1024**2
GENERATE_CHUNK = 1_000  # images one generating task writes


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


# -- generating a folder --------------------------------------------------------------------


def image_path(root: Path, index: int, count: int, classes: int, test_fraction: float) -> Path:
    """Where image ``index`` of ``count`` goes: the last ``test_fraction`` of them is test/."""
    split = "test" if index >= count - round(count * test_fraction) else "train"
    return root / split / f"class_{index % classes:02d}" / f"{index:07d}.jpg"


def write_images(
    root: Path, start: int, stop: int, count: int, side: int, classes: int, test_fraction: float
) -> int:
    """Write images ``start..stop``: smooth noise (a random 1/8-size image scaled up), which
    compresses like a photo (3 KB at 96 px) where pixel noise would not; returns bytes written."""
    rng = np.random.default_rng(start)
    small = max(2, side // 8)
    written = 0
    for index in range(start, stop):
        path = image_path(root, index, count, classes, test_fraction)
        coarse = rng.integers(0, 256, (small, small, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((side, side), Image.Resampling.BILINEAR).save(
            path, format="JPEG", quality=90
        )
        written += path.stat().st_size
    return written


def generate(root: Path, count: int, side: int, classes: int, test_fraction: float) -> int:
    """Write the folder with one process per CPU; returns its size in bytes."""
    for split in ("train", "test"):
        for label in range(classes):
            (root / split / f"class_{label:02d}").mkdir(parents=True, exist_ok=True)
    starts = range(0, count, GENERATE_CHUNK)
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        sizes = pool.map(
            write_images,
            *zip(
                *[
                    (root, start, min(start + GENERATE_CHUNK, count), count, side, classes,
                     test_fraction)
                    for start in starts
                ],
                strict=True,
            ),
        )
        return sum(sizes)


# -- main ------------------------------------------------------------------------------------


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--path", type=Path, default=DEFAULT_PATH, help="image folder archive or folder"
    )
    parser.add_argument(
        "--generate", type=int, metavar="N", help="ingest N generated images instead of --path"
    )
    parser.add_argument("--side", type=int, default=96, help="side of generated images (px)")
    parser.add_argument("--classes", type=int, default=10, help="class folders to generate")
    parser.add_argument(
        "--test-fraction", type=float, default=0.2, help="share of generated images in test/"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="decoding threads (default: all CPUs)"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help="where the throw-away project folder is made (default: data/02_intermediate)",
    )
    args = parser.parse_args()
    if args.generate is not None and (args.generate < 2 * args.classes or args.side < 1):
        parser.error("--generate needs at least 2 images per class (train and test) and --side >= 1")
    if not 0 < args.test_fraction < 1:
        parser.error("--test-fraction must lie strictly between 0 and 1")
    return args


def main() -> int:
    args = parse_arguments()
    if args.generate is None and not args.path.exists():
        print(
            f"skipped: {args.path} is absent (the shared CIFAR-10 JPEG tree; pass --path to use another copy)"
        )
        return 0
    if args.workers is not None:  # the node decodes on every CPU it may use: show it fewer
        imagefolder._available_cpus = lambda: args.workers

    args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="aavae-ingest-bench-", dir=args.workdir)).resolve()
    here = Path.cwd()
    try:
        if args.generate is not None:
            source = work / "source"
            start = time.perf_counter()
            size = generate(source, args.generate, args.side, args.classes, args.test_fraction)
            print(
                f"generate: {args.generate:,} JPEGs of {args.side}x{args.side} "
                f"({size / MB:,.0f} MB) in {time.perf_counter() - start:.1f} s"
            )
            params = {"name": "imagefolder", "path": str(source), "image_size": args.side}
        else:
            params = {"name": "imagefolder", "path": str(args.path.resolve())}
        project = work / "project"
        for layer in ("02_intermediate", "03_primary"):
            (project / "data" / layer).mkdir(parents=True)
        os.chdir(project)  # as under `kedro run`: the reader stages in ./data/02_intermediate
        catalog = {
            split: ImageSetDataset(f"data/03_primary/images_{split}") for split in SPLITS
        }

        peak_from_baseline = reset_peak_rss()
        baseline_kb = status_kb("VmRSS")
        start = time.perf_counter()
        *imagesets, card = ingest(params)
        read_s = time.perf_counter() - start
        for split, imageset in zip(SPLITS, imagesets, strict=True):
            catalog[split].save(imageset)
        ingest_s = time.perf_counter() - start
        peak_mb = (status_kb("VmHWM") - baseline_kb) / 1024

        count = sum(len(imageset) for imageset in imagesets)
        shapes = ", ".join(
            f"{imageset.split} {imageset.images.shape}" for imageset in imagesets if len(imageset)
        )
        print(f"read: {count:,} images in {read_s:.2f} s = {count / read_s:,.0f} images/s ({shapes})")
        print(f"save: {ingest_s - read_s:.2f} s (sha256 {card['sha256'][:16]}...)")
        leftovers = list((project / "data" / "02_intermediate").iterdir())
        if leftovers:
            print(f"warning: the staging folder still holds {[p.name for p in leftovers]}")
        del imagesets, imageset  # measure loading without the ingested sets alive

        folders = [project / "data" / "03_primary" / f"images_{split}" for split in SPLITS]
        start = time.perf_counter()
        mapped = [load_imageset(folder) for folder in folders]
        print(f"load (memory-mapped): {time.perf_counter() - start:.3f} s")
        if args.generate is None:  # a generated set may not fit in memory: the point of it
            start = time.perf_counter()
            loaded = [load_imageset(folder, mmap=False) for folder in folders]
            checksum = sum(int(imageset.images.sum(dtype=np.uint64)) for imageset in loaded)
            print(
                f"load into memory and read every pixel: {time.perf_counter() - start:.3f} s "
                f"(pixel sum {checksum})"
            )
            del loaded
        del mapped
    finally:
        os.chdir(here)
        shutil.rmtree(work, ignore_errors=True)

    if not peak_from_baseline:
        print("note: /proc/self/clear_refs is not writable: the peak counts from process start")
    print(f"baseline RSS after imports: {baseline_kb / 1024:.1f} MB")
    print(f"seconds: {ingest_s:.2f} peak_mb: {peak_mb:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
