"""Views per second: batched ``make_views`` against torchvision v2 applied image by image.

Both engines run the same policy on the same uint8 images (CIFAR-sized by default) and
return float32 views in [0, 1]. torchvision gets what a DataLoader worker does: one
``Compose`` call per image, then a stack. After a warm-up the engines alternate for a few
rounds (so drifting machine load hits both) and the best round of each is reported.

    python benchmarks/views_throughput.py [--device cpu|cuda] [--size 32] [--images 4096] [--blur]

The last line is ``ratio: <ours / torchvision>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch
from torchvision.transforms import v2

from aavae.views import ViewPolicy, make_views


def torchvision_pipeline(policy: ViewPolicy, size: int) -> v2.Compose:
    """The policy as the paper's per-image torchvision transforms."""
    brightness, contrast, saturation, hue = policy.jitter_ranges()
    steps: list[torch.nn.Module] = [
        v2.RandomResizedCrop(
            size, scale=policy.crop_scale, ratio=policy.crop_ratio, antialias=True
        ),
        v2.RandomHorizontalFlip(policy.flip_p),
        v2.RandomApply([v2.ColorJitter(brightness, contrast, saturation, hue)], p=policy.jitter_p),
        v2.RandomGrayscale(policy.grayscale_p),
    ]
    if policy.blur_p > 0:
        kernel = policy.blur_kernel_size(size)
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, policy.blur_sigma)], p=policy.blur_p))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)


def per_image_engine(policy: ViewPolicy, size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    pipeline = torchvision_pipeline(policy, size)
    return lambda batch: torch.stack([pipeline(image) for image in batch])


def batched_engine(policy: ViewPolicy) -> Callable[[torch.Tensor], torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return lambda batch: make_views(batch, policy, generator)


def views_per_second(
    engine: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch: int
) -> float:
    synchronize(images.device)
    start = time.perf_counter()
    for first in range(0, len(images), batch):
        engine(images[first : first + batch])
    synchronize(images.device)
    return len(images) / (time.perf_counter() - start)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--size", type=int, default=32, help="image height = width (default 32, CIFAR)"
    )
    parser.add_argument("--images", type=int, default=4096, help="images per round (default 4096)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--blur", action="store_true", help="Gaussian blur with p = 0.5 (STL-10 recipe)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's own)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    # the paper's CIFAR-10 policy (conf/cifar10); --blur: its STL-10 one (conf/stl10)
    policy = ViewPolicy(crop_scale=(0.08, 1.0), flip_p=0.5)
    if args.blur:
        policy = dataclasses.replace(policy, jitter_strength=1.0, blur_p=0.5)
    torch.manual_seed(0)
    # NHWC storage viewed as NCHW, as the training images are held
    images = torch.randint(0, 256, (args.images, args.size, args.size, 3), dtype=torch.uint8)
    images = images.to(device).permute(0, 3, 1, 2)
    engines = {
        "aavae.views.make_views": batched_engine(policy),
        "torchvision.v2 per image": per_image_engine(policy, args.size),
    }

    for engine in engines.values():  # warm-up: allocations, kernels, lazy imports
        views_per_second(engine, images[: 2 * args.batch], args.batch)
    rates: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(args.rounds):
        for name, engine in engines.items():
            rates[name].append(views_per_second(engine, images, args.batch))

    print(
        f"device={device} size={args.size} images={args.images} batch={args.batch} "
        f"blur={args.blur} threads={torch.get_num_threads()}"
    )
    print(f"{'engine':<28}{'best views/s':>14}{'median views/s':>16}")
    for name, values in rates.items():
        print(f"{name:<28}{max(values):>14.0f}{statistics.median(values):>16.0f}")
    ours, theirs = (max(values) for values in rates.values())
    print(f"ratio: {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
