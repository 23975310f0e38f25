"""Time the linear probe and kNN on CIFAR-10-sized synthetic features, on the CPU.

The features imitate a ResNet-18 representation of CIFAR-10: 50,000 train and 10,000 test
rows of 512 non-negative values (ReLU of noisy class centres with per-feature scales), ten
classes overlapping enough that accuracy lands between 70% and 90%. Seeded, so every run
sees the same data.

    PYTHONPATH=src python benchmarks/evaluate.py [--train 50000] [--test 10000] [--threads N]

The last line is ``seconds: <wall seconds of the whole run>``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from aavae.evaluation import knn_classify, linear_probe


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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    train_x, train_y, test_x, test_y = synthetic_features(
        args.train, args.test, args.dim, args.classes, args.separation, args.seed
    )
    print(
        f"data: train {train_x.shape}, test {test_x.shape}, {time.perf_counter() - start:.1f} s",
        flush=True,
    )
    print(f"torch threads: {torch.get_num_threads()}", flush=True)

    tic = time.perf_counter()
    probe = linear_probe(train_x, train_y, test_x, test_y, args.classes, device="cpu")
    probe_s = time.perf_counter() - tic
    print(
        f"linear probe: top1 {probe.top1:.4f} top5 {probe.top5:.4f} "
        f"weight_decay {probe.chosen['weight_decay']:g}  {probe_s:.1f} s",
        flush=True,
    )
    print(f"  validation top1 per weight decay: {probe.chosen['validation_top1']}", flush=True)

    tic = time.perf_counter()
    knn = knn_classify(train_x, train_y, test_x, test_y, args.classes, device="cpu")
    knn_s = time.perf_counter() - tic
    print(
        f"knn (k={knn.chosen['k']}, t={knn.chosen['temperature']}): "
        f"top1 {knn.top1:.4f} top5 {knn.top5:.4f}  {knn_s:.1f} s",
        flush=True,
    )

    print(f"seconds: {time.perf_counter() - start:.1f}", flush=True)


if __name__ == "__main__":
    main()
