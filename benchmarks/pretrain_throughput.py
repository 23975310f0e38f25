"""Pretraining images/s: this project's engine against the paper's recipe, same model and batch.

Every engine runs full training steps (data, views, forward, backward, Adam) of the same
AAVAE network (ResNet-18 encoder, mirror decoder, CIFAR stem, latent 128) on the same
32 x 32 images, each under a Lightning Trainer with no logger, checkpoints or validation:

* ``aavae``: the real :class:`aavae.training.PretrainModule` with its step run eagerly.
  Images live as one uint8 tensor on the device, a batch is an index gather from the epoch's
  batch table on the device, views are made for the whole batch at once, precision from
  ``choose_precision("auto", ...)`` (bf16 mixed where the hardware has it), channels_last,
  fused Adam, the original-image encoder pass only every 50 steps (diagnostics).
* ``aavae-compiled``: the same step with its loss function compiled by ``torch.compile``
  (compile time reported on its own line, not in the timed steps).
* ``aavae-graphed`` / ``aavae-compiled-graphed`` (CUDA only): the step captured once as a
  CUDA graph and replayed, eager or compiled inside.
* ``paper``: the paper's recipe (Lightning-Universe/paper-AAVAE ``src/vae.py`` with its CIFAR-10
  transforms), rebuilt as a LightningModule: a Dataset of PIL images transformed one image at
  a time by torchvision in DataLoader workers (RandomResizedCrop, flip, colour jitter of
  strength 0.5 with p 0.8, grayscale 0.2, ToTensor, Normalize; the original image too),
  fp32, contiguous memory, and the original image through the encoder on every step.

The baseline's DataLoader epoch is CIFAR-10's 50,000 items (cycling through the images read)
and its workers are persistent (the paper's were not: over a real epoch their start-up is
amortised, over a short timed window it would not be), so it stalls at epoch ends no more
often than in a real run. After ``--warmup`` steps, ``--steps`` steps are timed; the engines
alternate for ``--rounds`` rounds (so drifting machine load hits both) and the median round
of each is reported. On CUDA the rows add the model FLOP utilisation: FLOPs of one step's
encode/decode forward and backward (FlopCounterMode) per second over the card's dense bf16 peak.

On any device (CPU too) the same run also measures the machine's own dense matrix-multiply
rate, in bf16 and fp32 (large ``torch.matmul``, timed after a warm-up in every round, beside
the engines, median of the rounds: :func:`matmul_gflops`), and prints each engine's model
FLOP rate (images/s x model FLOPs per image) as a share of both: a physical limit measured
where and when the benchmark runs, not a table of peaks. A step that
convolves small images, normalises, draws views and updates weights cannot reach a large
matmul's rate; the share says how close it gets. (Where bf16 has no fast path, as on CPUs
without AVX512-BF16 or AMX, its rate is far below fp32's and ``auto`` trains in fp32.)

    PYTHONPATH=src python benchmarks/pretrain_throughput.py [--device cpu|cuda] [--width 64]

On a small machine whose cores other jobs keep busy, pass ``--threads 1``: two OpenMP threads
that keep losing their core to other processes wait on each other at every operator (seen on
a shared two-core machine: the same step 100 times slower than with one thread).

Output: a header, one ``engine: <name> images_per_s: <x> step_ms: <y>`` row per engine
(with the model FLOP utilisation on CUDA), a ``compile_s`` line per compiled engine, a
``matmul:`` line (the dense rates) and one ``flop_share <engine>:`` line per engine (its model
FLOP rate as a share of them), and as the last line ``ratio: <fastest aavae engine / paper>``
(one ``ratio <engine>:`` line for each engine before it). ``--no-matmul`` skips the
matrix-multiply timing.

``--engines`` picks them (default: ``aavae,aavae-compiled,paper`` on CPU;
``aavae,aavae-graphed,aavae-compiled-graphed,paper`` on CUDA).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import platform
import re
import statistics
import sys
import tarfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms as T

from aavae.common.hardware import choose_accelerator, choose_precision
from aavae.config import PretrainConfig
from aavae.models import AAVAENet, ModelSpec, build_model
from aavae.objective import (
    Objective,
    bits_per_dim,
    gaussian_log_likelihood,
    kl_standard_normal,
    log_normal,
    posterior_std,
)
from aavae.training import PretrainModule, TrainingImages
from aavae.training.schedule import schedule_factor
from aavae.views import Preprocessing, ViewPolicy

PAPER_CIFAR10_VIEWS = ViewPolicy(crop_scale=(0.08, 1.0), flip_p=0.5)  # conf/cifar10

AAVAE_ENGINES = {  # name: (compile, cuda_graph)
    "aavae": (False, False),
    "aavae-compiled": (True, False),
    "aavae-graphed": (False, True),
    "aavae-compiled-graphed": (True, True),
}

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CIFAR_ARCHIVE = PROJECT_ROOT.parent / "shared" / "datasets" / "cifar10_jpeg.tar.gz"
# The CIFAR-10 normalisation of the paper's data modules (pl_bolts), in [0, 1] units.
CIFAR_MEAN = tuple(v / 255.0 for v in (125.3, 123.0, 113.9))
CIFAR_STD = tuple(v / 255.0 for v in (63.0, 62.1, 66.7))
IMAGE_SIZE = 32
NUM_CLASSES = 10
CIFAR_TRAIN_IMAGES = 50_000
DIAGNOSTICS_EVERY_N_STEPS = 50
MAX_MEMBER_BYTES = 1 << 20  # a 32 x 32 JPEG is about 1 kB; anything near 1 MB is not one
# Dense bf16 tensor-core peaks in TFLOP/s, by a pattern of torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = (
    (r"H100.*PCIe", 756.0),
    (r"H100.*NVL", 835.0),
    (r"H100", 989.0),
    (r"H200", 989.0),
    (r"A100", 312.0),
    (r"\bL4\b", 121.0),
)


# -- data ------------------------------------------------------------------------------------


def read_cifar_subset(archive: Path, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random training images (uint8 N x 32 x 32 x 3) and labels of the JPEG archive.

    Members are read in memory, never extracted; only regular ``train/<class>/*.jpg`` files
    of a plausible size are considered.
    """
    encoded: list[tuple[bytes, str]] = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not (member.isfile() and member.size <= MAX_MEMBER_BYTES and len(parts) >= 3):
                continue
            if parts[-3] != "train" or not parts[-1].lower().endswith((".jpg", ".jpeg")):
                continue
            data = tar.extractfile(member)
            if data is not None:
                encoded.append((data.read(), parts[-2]))
    if len(encoded) < count:
        raise SystemExit(
            f"{archive} holds {len(encoded)} train/<class>/*.jpg images, fewer than --images "
            f"{count}; lower --images or pass --data random"
        )
    classes = sorted({name for _, name in encoded})
    chosen = np.random.default_rng(seed).choice(len(encoded), size=count, replace=False)
    images = np.empty((count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    labels = np.empty(count, dtype=np.int64)
    for row, index in enumerate(chosen):
        data, name = encoded[index]
        image = Image.open(io.BytesIO(data)).convert("RGB")
        if image.size != (IMAGE_SIZE, IMAGE_SIZE):
            raise SystemExit(f"{archive}: a training image is {image.size}, expected 32 x 32")
        images[row] = np.asarray(image)
        labels[row] = classes.index(name)
    return images, labels


def random_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    return images, rng.integers(0, NUM_CLASSES, count)


def load_images(source: str, archive: Path, count: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Images, labels and a description of where they came from."""
    if source == "cifar10" or (source == "auto" and archive.is_file()):
        if not archive.is_file():
            raise SystemExit(
                f"--data cifar10: {archive} does not exist; pass --archive or --data random"
            )
        images, labels = read_cifar_subset(archive, count, seed=0)
        return images, labels, f"CIFAR-10 JPEG, {count} random train images of {archive.name}"
    reason = "asked for" if source == "random" else f"no {archive}"
    images, labels = random_images(count, seed=0)
    return images, labels, f"random uint8, {count} images ({reason})"


# -- the paper's recipe ----------------------------------------------------------------------


class PilImages(torch.utils.data.Dataset):
    """What torchvision's CIFAR10 dataset does: uint8 arrays, a PIL image per item, a transform.

    An epoch is at least CIFAR-10's 50,000 items (cycling through the images read), so the
    workers' pipeline drains at epoch ends as rarely as in a real run: with a few thousand
    images, big batches and many workers, the epoch-end stalls would otherwise dominate.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return max(len(self.images), CIFAR_TRAIN_IMAGES)

    def __getitem__(self, index: int):
        index %= len(self.images)
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


class PaperTransform:
    """The paper's CIFAR-10 training transform: (augmented view, original), both normalised."""

    def __init__(self, policy: ViewPolicy) -> None:
        brightness, contrast, saturation, hue = policy.jitter_ranges()
        normalize = T.Normalize(CIFAR_MEAN, CIFAR_STD)
        self.augment = T.Compose(
            [
                T.RandomResizedCrop(IMAGE_SIZE, scale=policy.crop_scale, ratio=policy.crop_ratio),
                T.RandomHorizontalFlip(policy.flip_p),
                T.RandomApply(
                    [T.ColorJitter(brightness, contrast, saturation, hue)], p=policy.jitter_p
                ),
                T.RandomGrayscale(policy.grayscale_p),
                T.ToTensor(),
                normalize,
            ]
        )
        self.original = T.Compose([T.ToTensor(), normalize])

    def __call__(self, image: Image.Image) -> tuple[Tensor, Tensor]:
        return self.augment(image), self.original(image)


class PaperRecipe(pl.LightningModule):
    """The training step of the paper's ``VAE.step`` (samples = 1), on the same network."""

    def __init__(
        self,
        net: AAVAENet,
        objective: Objective,
        config: PretrainConfig,
        dataset: PilImages,
        workers: int,
    ) -> None:
        super().__init__()
        self.net, self.objective, self.config = net, objective, config
        self.dataset, self.workers = dataset, workers

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.config.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.workers > 0,
        )

    def training_step(self, batch, batch_idx: int) -> Tensor:
        (x, original), _ = batch
        with torch.no_grad():  # the paper encodes the original on every step, for cos_sim only
            mu_orig, logvar_orig = self.net.projection(self.net.encode(original))
        mu, logvar = self.net.projection(self.net.encode(x))
        std = posterior_std(logvar)
        z = mu + std * torch.randn_like(mu)
        with torch.no_grad():
            z_orig = mu_orig + posterior_std(logvar_orig) * torch.randn_like(mu_orig)
        kl = kl_standard_normal(mu, logvar)
        log_pz = log_normal(z, torch.zeros_like(z), torch.ones_like(z))
        log_qz = log_normal(z, mu, std)
        log_pxz = gaussian_log_likelihood(self.net.decode(z), self.net.log_scale, original)
        loss = (self.objective.kl_coeff * kl - log_pxz).mean()
        log_px = (log_pxz + log_pz - log_qz).mean()
        self.log_dict(
            {
                "train_loss": loss,
                "train_kl": kl.mean(),
                "train_elbo": (kl - log_pxz).mean(),
                "train_bpd": bits_per_dim(log_px, original[0].numel()),
                "train_log_pxz": log_pxz.mean(),
                "train_cos_sim": torch.cosine_similarity(z_orig, z, dim=1, eps=1e-6).mean(),
                "train_log_scale": self.net.log_scale.item(),  # a host sync every step, as the paper's
            }
        )
        return loss

    def configure_optimizers(self):
        cfg = self.config
        optimizer = torch.optim.Adam(
            self.parameters(), lr=cfg.learning_rate, weight_decay=cfg.effective_weight_decay
        )
        total = torch.tensor(len(self.dataset) // cfg.batch_size * cfg.max_epochs)
        scheduler = torch.optim.lr_scheduler.LambdaLR(  # the same schedule, computed on the host
            optimizer, lambda step: schedule_factor(torch.tensor(step), torch.tensor(0), total, cfg.schedule).item())
        return [optimizer], [{"scheduler": scheduler, "interval": "step", "frequency": 1}]


# -- timing ----------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(pl.Callback):
    """Wall time of the optimizer steps after the warm-up, data loading included."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device = warmup, device
        self.start: float | None = None
        self.end: float | None = None
        self.steps = 0

    def on_train_batch_start(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step == 0:
            self.first_start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        # global_step counts finished optimizer steps: after step k it reads k.
        if trainer.global_step == 1:
            synchronize(self.device)
            self.first_step_s = time.perf_counter() - self.first_start
        if trainer.global_step == self.warmup:
            synchronize(self.device)
            self.start = time.perf_counter()
        elif trainer.global_step > self.warmup:
            synchronize(self.device)
            self.end = time.perf_counter()
            self.steps = trainer.global_step - self.warmup

    @property
    def seconds_per_step(self) -> float:
        if self.start is None or self.end is None or not self.steps:
            raise RuntimeError("no timed steps: the run stopped during the warm-up")
        return (self.end - self.start) / self.steps


def lightning_trainer(
    accelerator: str, precision: str, max_steps: int, timer: StepTimer
) -> pl.Trainer:
    """The pipeline's Trainer without logger, checkpoints, validation or progress bar."""
    return pl.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        max_steps=max_steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=DIAGNOSTICS_EVERY_N_STEPS,
        callbacks=[timer],
    )


# -- engines ---------------------------------------------------------------------------------


def model_spec(width: int) -> ModelSpec:
    # h_dim = the encoder's output size (512 at width 64), as the paper's CIFAR-10 recipe.
    return ModelSpec(
        encoder="resnet18", stem="cifar", width=width, latent_dim=128, input_size=IMAGE_SIZE
    )


def pretrain_config(args: argparse.Namespace, compile: bool = False, graph: bool = False) -> PretrainConfig:
    return PretrainConfig(
        data_on_device=args.data_on_device,
        objective="aavae",
        batch_size=args.batch_size,
        optimizer="adam",
        precision="auto",
        channels_last=True,
        diagnostics_every_n_steps=DIAGNOSTICS_EVERY_N_STEPS,
        max_epochs=100,
        compile=compile,
        cuda_graph=graph,
    )


def run_aavae(
    args, images: np.ndarray, labels: np.ndarray, accelerator: str, device: torch.device,
    engine: str = "aavae",
) -> tuple[float, float]:
    """Seconds per step of this project's engine, and seconds of its first step."""
    compile, graph = AAVAE_ENGINES[engine]
    config = pretrain_config(args, compile, graph)
    torch.manual_seed(0)
    precision = choose_precision(config.precision, accelerator)
    module = PretrainModule(
        build_model(model_spec(args.width)),
        Objective("aavae", 0.0),
        PAPER_CIFAR10_VIEWS,
        config,
        TrainingImages(images, labels),
        None,
        Preprocessing(CIFAR_MEAN, CIFAR_STD),
        NUM_CLASSES,
        precision=precision,
        device_kind=device.type,
    )
    timer = StepTimer(args.warmup, device)
    lightning_trainer(accelerator, "32-true", args.warmup + args.steps, timer).fit(module)
    return timer.seconds_per_step, timer.first_step_s


def run_paper(
    args, images: np.ndarray, labels: np.ndarray, accelerator: str, device: torch.device
) -> float:
    """Seconds per step of the paper's recipe."""
    torch.manual_seed(0)
    dataset = PilImages(images, labels, PaperTransform(PAPER_CIFAR10_VIEWS))
    module = PaperRecipe(
        build_model(model_spec(args.width)),
        Objective("aavae", 0.0),
        pretrain_config(args),
        dataset,
        args.workers,
    )
    timer = StepTimer(args.warmup, device)
    lightning_trainer(accelerator, "32-true", args.warmup + args.steps, timer).fit(module)
    return timer.seconds_per_step, timer.first_step_s


def run_engine(name: str, args, images, labels, accelerator, device) -> tuple[float, float]:
    if name == "paper":
        return run_paper(args, images, labels, accelerator, device)
    return run_aavae(args, images, labels, accelerator, device, engine=name)


# -- FLOPs and the machine -------------------------------------------------------------------


def model_flops_per_step(width: int, batch_size: int, device: torch.device) -> float:
    """FLOPs of one training step's model work: encode, project, decode, forward and backward.

    The paper's extra no-grad encoder pass is not model work and is not counted.
    """
    net = build_model(model_spec(width)).to(device)
    x = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)
    with FlopCounterMode(display=False) as counter:
        mu, logvar = net.projection(net.encode(x))
        z = mu + posterior_std(logvar) * torch.randn_like(mu)
        loss = -gaussian_log_likelihood(net.decode(z), net.log_scale, x).mean()
        loss.backward()
    return float(counter.get_total_flops())


def _square_operands(device: torch.device, dtype: torch.dtype, size: int) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, generator=generator).to(dtype)
    b = torch.randn(size, size, device=device, generator=generator).to(dtype)
    return a, b, torch.empty(size, size, device=device, dtype=dtype)


def matmul_size(device: torch.device, dtype: torch.dtype, max_size: int, min_seconds: float) -> int:
    """``max_size``, halved while one product would take longer than ``min_seconds`` (judged
    from a 512-square one): bf16 without a fast path runs ~10-100x slower than fp32 on a CPU,
    where a 2048-square product would take minutes."""
    a, b, out = _square_operands(device, dtype, 512)
    torch.matmul(a, b, out=out)
    synchronize(device)
    started = time.perf_counter()
    torch.matmul(a, b, out=out)
    synchronize(device)
    rate = 2 * 512**3 / max(time.perf_counter() - started, 1e-9)  # FLOP/s
    size = max_size
    while size > 512 and 2 * size**3 / rate > min_seconds:
        size //= 2
    return size


def matmul_gflops(device: torch.device, dtype: torch.dtype, size: int, min_seconds: float) -> float:
    """The dense matrix-multiply rate of ``device`` in ``dtype``: GFLOP/s of ``size``-square
    products (2 size^3 FLOPs each), repeated for at least ``min_seconds`` (and 3 products)
    after a warm-up product that lets oneDNN/cuBLAS pick their kernels and the clocks rise."""
    a, b, out = _square_operands(device, dtype, size)
    torch.matmul(a, b, out=out)
    synchronize(device)
    products, started = 0, time.perf_counter()
    while products < 3 or time.perf_counter() - started < min_seconds:
        torch.matmul(a, b, out=out)
        products += 1
        if products % 8 == 0:
            synchronize(device)  # on a GPU, wait now and then so the clock reads finished work
    synchronize(device)
    return 2 * size**3 * products / (time.perf_counter() - started) / 1e9


MATMUL_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def matmul_sizes(device: torch.device) -> dict[str, int]:
    max_size, seconds = (8192, 0.5) if device.type == "cuda" else (2048, 2.0)
    return {name: matmul_size(device, dtype, max_size, seconds) for name, dtype in MATMUL_DTYPES.items()}


def matmul_rates(device: torch.device, sizes: dict[str, int]) -> dict[str, float]:
    """GFLOP/s of dense bf16 and fp32 products on ``device`` (:func:`matmul_gflops`)."""
    seconds = 1.0 if device.type == "cuda" else 2.0
    return {name: matmul_gflops(device, dtype, sizes[name], seconds) for name, dtype in MATMUL_DTYPES.items()}


def peak_bf16_tflops(card: str, override: float | None) -> float | None:
    if override is not None:
        return override
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, card):
            return tflops
    return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as info:
            model = next(
                (line.split(":", 1)[1].strip() for line in info if line.startswith("model name")),
                None,
            )
    except OSError:
        model = None
    return f"{model or platform.processor() or 'CPU'} ({os.cpu_count()} cores)"


def quiet_lightning() -> None:
    """Keep the output to the report: no Trainer banners or advice about workers."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"lightning\..*")
    warnings.filterwarnings(
        "ignore", message=r".*(num_workers|bottleneck|LeafSpec|TF32|float32_matmul).*"
    )


# -- main ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cuda = torch.cuda.is_available()
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if cuda else "cpu")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default 256 on CUDA, 128 on CPU"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per round (default 50 CUDA, 5 CPU)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps first (default 5 CUDA, 2 CPU)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--data-on-device",
        choices=("true", "false", "auto"),
        default="true",
        help="our engine's images on the device (true), or batches streamed from host memory "
        "by a background thread (false), as pretrain.data_on_device",
    )
    parser.add_argument(
        "--engines",
        default=None,
        help="comma-separated, timed in this order each round: aavae, aavae-compiled, "
        "aavae-graphed, aavae-compiled-graphed (CUDA), paper (default: aavae,aavae-compiled,paper "
        "on CPU; aavae,aavae-graphed,aavae-compiled-graphed,paper on CUDA)",
    )
    parser.add_argument("--width", type=int, default=64, help="ResNet base width (the paper's: 64)")
    parser.add_argument("--images", type=int, default=4096, help="training images (default 4096)")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="DataLoader workers of the paper's recipe (default: CPU cores)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads of the training process (default: torch's own); "
        "1 on a machine whose cores other jobs keep busy",
    )
    parser.add_argument(
        "--archive",
        type=Path,
        default=CIFAR_ARCHIVE,
        help="CIFAR-10 JPEG archive (default ../shared/datasets/cifar10_jpeg.tar.gz)",
    )
    parser.add_argument(
        "--data",
        choices=("auto", "cifar10", "random"),
        default="auto",
        help="auto: CIFAR-10 JPEGs from ../shared/datasets if present, else random",
    )
    parser.add_argument(
        "--no-matmul",
        action="store_true",
        help="skip timing the device's dense bf16/fp32 matrix multiply (and the FLOP shares)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the card's dense bf16 peak, where it is not in the built-in table",
    )
    args = parser.parse_args()
    on_cuda = args.device == "cuda"
    if on_cuda and not cuda:
        parser.error("--device cuda: torch sees no CUDA device; use --device cpu")
    args.batch_size = args.batch_size or (256 if on_cuda else 128)
    args.data_on_device = {"true": True, "false": False}.get(args.data_on_device, "auto")
    default_engines = ("aavae,aavae-graphed,aavae-compiled-graphed,paper" if on_cuda
                       else "aavae,aavae-compiled,paper")
    args.engines = [e.strip() for e in (args.engines or default_engines).split(",") if e.strip()]
    known = (*AAVAE_ENGINES, "paper")
    for engine in args.engines:
        if engine not in known:
            parser.error(f"--engines: unknown engine {engine!r}; choose from {', '.join(known)}")
        if "graphed" in engine and not on_cuda:
            parser.error(f"--engines {engine}: CUDA graphs need --device cuda")
    if not args.engines:
        parser.error("--engines: name at least one engine")
    args.steps = args.steps or (50 if on_cuda else 5)
    args.warmup = (5 if on_cuda else 2) if args.warmup is None else args.warmup
    for name in ("batch_size", "steps", "warmup", "rounds", "images"):
        if getattr(args, name) < 1:
            parser.error(
                f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}"
            )
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.workers < 0:
        parser.error(f"--workers must be 0 or more, got {args.workers}")
    if args.images < args.batch_size:
        parser.error(
            f"--images ({args.images}) must hold at least one batch (--batch-size {args.batch_size})"
        )
    return args


def main() -> None:
    args = parse_args()
    quiet_lightning()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    accelerator = choose_accelerator(args.device)
    images, labels, data = load_images(args.data, args.archive, args.images)
    card = device_name(device)
    print(
        f"device: {card} | torch {torch.__version__} | lightning {pl.__version__} | "
        f"precision aavae: {choose_precision('auto', accelerator)}, paper: 32-true | threads "
        f"{torch.get_num_threads()} | load {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    print(
        f"data: {data} | width {args.width} batch {args.batch_size} steps {args.steps} "
        f"warmup {args.warmup} rounds {args.rounds} paper workers {args.workers} | "
        f"aavae diagnostics every {DIAGNOSTICS_EVERY_N_STEPS} steps, data on device "
        f"{args.data_on_device}",
        flush=True,
    )
    seconds: dict[str, list[float]] = {name: [] for name in args.engines}
    first_steps: dict[str, list[float]] = {name: [] for name in args.engines}
    # The dense matmul rates are timed in every round too, so drifting load hits them as well.
    sizes = {} if args.no_matmul else matmul_sizes(device)
    matmul_samples: dict[str, list[float]] = {name: [] for name in sizes}
    for _ in range(args.rounds):
        for name in args.engines:
            step_s, first_s = run_engine(name, args, images, labels, accelerator, device)
            seconds[name].append(step_s)
            first_steps[name].append(first_s)
            print(
                f"round {len(seconds[name])} {name}: {args.batch_size / step_s:.1f} images/s",
                file=sys.stderr,
                flush=True,
            )
        for name, rate in (matmul_rates(device, sizes) if sizes else {}).items():
            matmul_samples[name].append(rate)
            print(f"round {len(matmul_samples[name])} matmul {name}: {rate:.1f} GFLOP/s",
                  file=sys.stderr, flush=True)

    flops = peak = None
    if device.type == "cuda":
        flops = model_flops_per_step(args.width, args.batch_size, device)
        peak = peak_bf16_tflops(card, args.peak_tflops)
        print(
            f"model FLOPs per step: {flops / 1e9:.1f} G | bf16 dense peak: "
            f"{f'{peak:.0f} TFLOP/s' if peak else 'unknown (pass --peak-tflops)'}"
        )
    matmul = {name: statistics.median(values) for name, values in matmul_samples.items()}
    per_image = None
    if matmul:
        # Counted on a few images (FLOPs grow with the batch, one image's are the same).
        sample = min(args.batch_size, 16)
        per_image = (flops / args.batch_size if flops
                     else model_flops_per_step(args.width, sample, device) / sample)
    rates = {}
    for name, values in seconds.items():
        step = statistics.median(values)
        rates[name] = args.batch_size / step
        row = f"engine: {name} images_per_s: {rates[name]:.1f} step_ms: {step * 1e3:.1f}"
        if flops and peak:
            row += f" mfu: {100 * flops / step / (peak * 1e12):.2f}%"
        print(
            row + f" (rounds: {', '.join(f'{args.batch_size / s:.1f}' for s in values)} images/s)"
        )
    if matmul and per_image:
        bf16, fp32 = matmul["bf16"], matmul["fp32"]
        print(f"matmul: bf16 {bf16:.1f} GFLOP/s ({sizes['bf16']}-square), fp32 {fp32:.1f} GFLOP/s "
              f"({sizes['fp32']}-square): dense torch.matmul, median of this run's rounds | model "
              f"FLOPs per image: {per_image / 1e9:.2f} G")
        for name, rate in rates.items():
            model_rate = rate * per_image / 1e9
            precision = "32-true" if name == "paper" else choose_precision("auto", accelerator)
            print(f"flop_share {name}: {model_rate:.1f} GFLOP/s = {100 * model_rate / bf16:.1f}% "
                  f"of bf16 matmul, {100 * model_rate / fp32:.1f}% of fp32 matmul (trains in {precision})")
    for name in args.engines:
        if "compiled" in name:
            # The first step of a compiled engine compiles it; the first round's is a cold
            # compile, later rounds may hit torch's on-disk cache.
            print(f"compile_s {name}: first step {first_steps[name][0]:.1f} s "
                  f"(later rounds: {', '.join(f'{v:.1f}' for v in first_steps[name][1:]) or '-'})")
    ours = [name for name in args.engines if name != "paper"]
    if "paper" in rates:
        for name in ours[:-1] if len(ours) > 1 else []:
            print(f"ratio {name}: {rates[name] / rates['paper']:.2f}")
        if len(ours) > 1:
            print(f"ratio {ours[-1]}: {rates[ours[-1]] / rates['paper']:.2f}")
        best = max(ours, key=rates.__getitem__)
        print(f"ratio: {rates[best] / rates['paper']:.2f}")

if __name__ == "__main__":
    main()
