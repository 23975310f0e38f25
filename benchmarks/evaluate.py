"""Time evaluation on CIFAR-10 sizes: feature extraction, the linear probe and kNN.

Feature extraction runs the project's :func:`aavae.evaluation.extract_features` with a
ResNet-18 encoder (CIFAR stem, ``--width``) over ``--images`` random 32 x 32 images (60,000
is CIFAR-10's train + test; 0 skips it), in fp32 and at what ``evaluate.precision: auto``
picks on ``--device`` (bf16 on a GPU or a CPU with AMX/AVX512-BF16), both timed in the run,
with how far the two sets of features lie apart. The probe and kNN run on synthetic features that
imitate a ResNet-18 representation of CIFAR-10: 50,000 train and 10,000 test rows of 512
non-negative values (ReLU of noisy class centres with per-feature scales), ten classes
overlapping enough that accuracy lands between 70% and 90%. Seeded, so every run sees the
same data. Everything runs on ``--device`` (default: CUDA when there is one).

``--raw-pixels PATH`` times the raw-pixel baseline on real images instead of the synthetic
features' probe: an image-folder tree or archive (``train/<class>/...``, ``test/<class>/...``;
the shared CIFAR-10 JPEG copy gives 50,000 x 3,072 features), normalised per channel as the
evaluate pipeline's ``raw_pixels`` baseline is, then the linear probe (preconditioned, the
default) and kNN. ``--plain`` also runs the probe's earlier plain L-BFGS on the same
features, for the before/after in one run (minutes to an hour on 2 cores).

    PYTHONPATH=src python benchmarks/evaluate.py [--device cuda] [--images 60000] [--threads N]
    PYTHONPATH=src python benchmarks/evaluate.py --raw-pixels ../shared/datasets/cifar10_jpeg.tar.gz [--plain]

The last line is ``seconds: <wall seconds of the whole run>``.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from aavae.common.hardware import choose_precision
from aavae.data.imagefolder import read_imagefolder
from aavae.evaluation import baseline_encoder, extract_features, knn_classify, linear_probe
from aavae.models import ModelSpec, build_model
from aavae.views import channel_stats


def synthetic_features(
    n_train: int, n_test: int, dim: int, num_classes: int, separation: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = (separation * rng.standard_normal((num_classes, dim))).astype(np.float32)
    scales = rng.lognormal(0.0, 0.3, dim).astype(np.float32)  # features differ in spread

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, num_classes, n)
        noise = rng.standard_normal((n, dim), dtype=np.float32) * scales
        return np.maximum(
            centres[labels] + noise, 0.0
        ), labels  # post-ReLU, like pooled CNN features

    return (*sample(n_train), *sample(n_test))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--separation", type=float, default=0.15)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=0,
                        help="images for the feature-extraction timing (60000: CIFAR-10; 0: skip)")
    parser.add_argument("--width", type=int, default=64, help="encoder width for feature extraction")
    parser.add_argument("--raw-pixels", default=None, metavar="PATH",
                        help="time the raw-pixel baseline on this image-folder tree or archive")
    parser.add_argument("--plain", action="store_true",
                        help="with --raw-pixels: also the plain (unpreconditioned) L-BFGS probe")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}", flush=True)

    start = time.perf_counter()
    if args.images:
        encoder = build_model(ModelSpec(encoder="resnet18", stem="cifar", width=args.width)).encoder
        images = torch.randint(0, 256, (args.images, 32, 32, 3), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(args.seed)).numpy()
        # The baseline is the same extraction in fp32; the figure is evaluate.precision=auto's.
        precision = choose_precision("auto", device)
        rates, features_by = {}, {}
        for name in dict.fromkeys(("32-true", precision)):
            bf16 = name == "bf16-mixed"
            extract_features(encoder, images[:512], [0.5] * 3, [0.25] * 3, device=device,
                             autocast_bf16=bf16)  # warm-up
            sync(device)
            tic = time.perf_counter()
            features = extract_features(encoder, images, [0.5] * 3, [0.25] * 3, device=device,
                                        autocast_bf16=bf16)
            sync(device)
            seconds = time.perf_counter() - tic
            rates[name], features_by[name] = len(features) / seconds, features
            print(f"features ({name}): {len(features)} images x {features.shape[1]} in {seconds:.1f} s "
                  f"({rates[name]:,.0f} images/s, resnet18 width {args.width})", flush=True)
        print(f"features: {len(images)} images at evaluate.precision=auto ({precision}): "
              f"{rates[precision]:,.0f} images/s, {rates[precision] / rates['32-true']:.2f}x fp32", flush=True)
        exact, used = features_by["32-true"], features_by[precision]
        print(f"features: relative difference from fp32 {np.linalg.norm(used - exact) / np.linalg.norm(exact):.2%}",
              flush=True)

    if args.raw_pixels:
        train_x, train_y, test_x, test_y, args.classes = raw_pixel_features(args.raw_pixels)
        what = "raw pixels"
    else:
        train_x, train_y, test_x, test_y = synthetic_features(
            args.train, args.test, args.dim, args.classes, args.separation, args.seed
        )
        what = "synthetic features"
    print(
        f"data ({what}): train {train_x.shape}, test {test_x.shape}, {time.perf_counter() - start:.1f} s",
        flush=True,
    )
    print(f"torch threads: {torch.get_num_threads()}", flush=True)

    solvers = {"preconditioned": True, **({"plain": False} if args.raw_pixels and args.plain else {})}
    for solver, precondition in solvers.items():
        tic = time.perf_counter()
        probe = linear_probe(train_x, train_y, test_x, test_y, args.classes, device=device,
                             precondition=precondition)
        probe_s = time.perf_counter() - tic
        print(
            f"linear probe ({solver} L-BFGS): top1 {probe.top1:.4f} top5 {probe.top5:.4f} "
            f"weight_decay {probe.chosen['weight_decay']:g}  {probe_s:.1f} s",
            flush=True,
        )
        print(f"  validation top1 per weight decay: {probe.chosen['validation_top1']}", flush=True)

    tic = time.perf_counter()
    knn = knn_classify(train_x, train_y, test_x, test_y, args.classes, device=device)
    knn_s = time.perf_counter() - tic
    print(
        f"knn (k={knn.chosen['k']}, t={knn.chosen['temperature']}): "
        f"top1 {knn.top1:.4f} top5 {knn.top5:.4f}  {knn_s:.1f} s",
        flush=True,
    )

    print(f"seconds: {time.perf_counter() - start:.1f}", flush=True)


def raw_pixel_features(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """The evaluate pipeline's ``raw_pixels`` baseline features of an image-folder tree: pixels
    normalised by the training split's per-channel mean and std, flattened."""
    with tempfile.TemporaryDirectory() as staging:
        splits = read_imagefolder(path, staging=staging).splits
        train, test = splits["train"], splits.get("test") or splits["val"]
        mean, std = channel_stats(train.images)
        flatten = baseline_encoder("raw_pixels", None, 0)  # type: ignore[arg-type]  # needs no spec
        features = [extract_features(flatten, split.images, mean, std, device="cpu") for split in (train, test)]
        return features[0], train.labels, features[1], test.labels, len(train.class_names)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
