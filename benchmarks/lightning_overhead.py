"""What Lightning's loop costs per training step, beside the step itself.

The same :class:`aavae.training.PretrainModule` step (ResNet-18, views, Adam, CIFAR-sized
random images) is timed two ways in one run: called in a plain Python loop, and driven by a
Lightning Trainer as the pipeline drives it (manual optimisation through the step-owning
optimizer facade, the epoch hooks, the progress counters; no logger, checkpoints or
validation). The difference is Lightning's per-step cost; the issue's threshold for owning
the loop instead is 10 % of a step.

    PYTHONPATH=src python benchmarks/lightning_overhead.py [--device cuda] [--batch-size 256]

Last line: ``lightning_overhead_ms: <ms per step> (<percent of a step>%)``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_throughput import (  # noqa: E402
    CIFAR_MEAN,
    CIFAR_STD,
    NUM_CLASSES,
    StepTimer,
    lightning_trainer,
    model_spec,
    synchronize,
)

from aavae.common.hardware import choose_accelerator, choose_precision  # noqa: E402
from aavae.config import PretrainConfig  # noqa: E402
from aavae.models import build_model  # noqa: E402
from aavae.objective import Objective  # noqa: E402
from aavae.training import PretrainModule, TrainingImages  # noqa: E402
from aavae.views import Preprocessing, ViewPolicy  # noqa: E402


def module(args, device: torch.device) -> PretrainModule:
    config = PretrainConfig(batch_size=args.batch_size, diagnostics_every_n_steps=10**9, max_epochs=1000,
                            compile=args.compile, cuda_graph=args.graph, online_probe=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, args.images)
    precision = choose_precision("auto", choose_accelerator(device.type))
    torch.manual_seed(0)
    return PretrainModule(build_model(model_spec(args.width)), Objective("aavae", 0.0), ViewPolicy(), config,
                          TrainingImages(images, labels), None, Preprocessing(CIFAR_MEAN, CIFAR_STD), NUM_CLASSES,
                          precision=precision, device_kind=device.type)


def through_lightning(args, device: torch.device) -> tuple[float, PretrainModule]:
    timed = module(args, device)
    timer = StepTimer(args.warmup, device)
    accelerator = choose_accelerator(device.type)
    lightning_trainer(accelerator, "32-true", args.warmup + args.steps, timer).fit(timed)
    return timer.seconds_per_step, timed


def plain_loop(args, device: torch.device, trained: PretrainModule) -> float:
    """The step the Trainer built, called directly: the same tensors, graph and compile."""
    run = trained._run_step
    for _ in range(args.warmup):
        trained.step_fn.position.zero_()  # stay inside the epoch's batch table
        run()
    synchronize(device)
    started = time.perf_counter()
    for index in range(args.steps):
        if index % trained.steps_per_epoch == 0:
            trained.step_fn.position.zero_()
        run()
    synchronize(device)
    return (time.perf_counter() - started) / args.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 on CUDA, 4 on CPU")
    parser.add_argument("--width", type=int, default=None, help="default 64 on CUDA, 4 on CPU")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", choices=("true", "false", "auto"), default="auto")
    parser.add_argument("--graph", choices=("true", "false", "auto"), default="auto")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    args.batch_size = args.batch_size or (256 if cuda else 4)
    args.width = args.width or (64 if cuda else 4)
    args.compile = {"true": True, "false": False}.get(args.compile, "auto")
    args.graph = {"true": True, "false": False}.get(args.graph, "auto")
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    print(f"device: {torch.cuda.get_device_name(device) if cuda else 'cpu'} | batch {args.batch_size} "
          f"width {args.width} | compile {args.compile} graph {args.graph} | torch {torch.__version__} "
          f"lightning {pl.__version__}", flush=True)
    with_lightning, plain = [], []
    for _ in range(args.rounds):
        seconds, trained = through_lightning(args, device)
        with_lightning.append(seconds)
        plain.append(plain_loop(args, device, trained))
    step, loop = statistics.median(with_lightning), statistics.median(plain)
    print(f"step through Lightning: {step * 1e3:.3f} ms | the same step in a plain loop: {loop * 1e3:.3f} ms")
    overhead = step - loop
    print(f"lightning_overhead_ms: {overhead * 1e3:.3f} ({100 * overhead / step:.1f}% of a step)")


if __name__ == "__main__":
    main()
