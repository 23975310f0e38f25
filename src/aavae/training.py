"""The pretraining engine: a Lightning module over images that live on the training device.

The training images are one uint8 tensor on the device; a batch is an index gather, views
are made for the whole batch at once (views.py), and the un-augmented encoder pass that only
feeds the augmentation diagnostics runs on the steps where they are logged. Lightning owns
the loop: devices, precision, checkpoints and resume, gradient clipping, the progress bar.
"""

from __future__ import annotations

import logging
import math
import shutil
import signal
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor, nn

from aavae.config import PretrainConfig
from aavae.models import AAVAENet
from aavae.objective import (
    Objective,
    bits_per_dim,
    gaussian_log_likelihood,
    kl_gaussians,
    kl_standard_normal,
    log_normal,
    posterior_std,
)
from aavae.views import ViewPolicy, make_views, normalize, to_float

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.ckpt"
RUN_MARKER = "mlflow_run.json"  # the MLflow run that trains into a checkpoint folder


@dataclass(frozen=True)
class TrainingImages:
    """What the engine trains on: uint8 N x H x W x C images with labels (-1 = none)."""

    images: np.ndarray | Tensor
    labels: np.ndarray | Tensor


@dataclass(frozen=True)
class ValidationViews:
    """A fixed, seeded set of views of held-out images, so val loss compares across runs."""

    views: np.ndarray | Tensor  # uint8 N x H x W x C
    originals: np.ndarray | Tensor  # uint8 N x H x W x C
    labels: np.ndarray | Tensor


def _as_tensor(array: np.ndarray | Tensor) -> Tensor:
    if isinstance(array, Tensor):
        return array
    return torch.from_numpy(np.ascontiguousarray(array))


class EpochShuffledBatches(torch.utils.data.Sampler):
    """Index batches of a fresh permutation each epoch, derived from (seed, epoch) only.

    Deriving the order from the epoch number (Lightning calls ``set_epoch``) makes a resumed
    run see exactly the batches an uninterrupted one would.
    """

    def __init__(self, size: int, batch_size: int, seed: int, drop_last: bool = True) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.drop_last = drop_last and size >= batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.size // self.batch_size
        return math.ceil(self.size / self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield order[start : start + self.batch_size]


def _index_loader(size: int, batches: torch.utils.data.Sampler) -> torch.utils.data.DataLoader:
    # The dataset is the identity on indices: images are gathered on the device in the step.
    return torch.utils.data.DataLoader(
        range(size), batch_sampler=batches, collate_fn=lambda idx: torch.as_tensor(idx)
    )


def warmup_then_decay(warmup_steps: int, total_steps: int, schedule: str):
    """Per-step learning-rate factor: linear warm-up, then cosine, linear or constant."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0 - progress

    return factor


def parameter_groups(
    module: nn.Module, weight_decay: float, exclude_bn_bias: bool
) -> list[dict[str, Any]]:
    """Weight decay on weights only, not on norm layers or biases, when asked."""
    if not exclude_bn_bias:
        return [{"params": [p for p in module.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decayed, excluded = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        is_norm = param.ndim <= 1  # biases, norm scales and shifts, the log-scale
        (excluded if is_norm or name.endswith(".bias") else decayed).append(param)
    return [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": excluded, "weight_decay": 0.0, "exclude_from_layer_adaptation": True},
    ]


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al., 2019): Adam moments with a per-layer trust ratio ||w|| / ||update||."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      exclude_from_layer_adaptation=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                state["step"] += 1
                m, v = state["m"], state["v"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                m_hat = m / (1 - beta1 ** state["step"])
                v_hat = v / (1 - beta2 ** state["step"])
                update = m_hat / (v_hat.sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                trust = 1.0
                if not group["exclude_from_layer_adaptation"]:
                    w_norm, u_norm = p.norm(), update.norm()
                    if w_norm > 0 and u_norm > 0:
                        trust = (w_norm / u_norm).item()
                p.add_(update, alpha=-group["lr"] * trust)
        return loss


class PretrainModule(pl.LightningModule):
    """AAVAE pretraining with the paper's metrics and an online linear probe."""

    def __init__(
        self,
        net: AAVAENet,
        objective: Objective,
        policy: ViewPolicy,
        config: PretrainConfig,
        train: TrainingImages,
        val: ValidationViews | None,
        mean: Sequence[float],
        std: Sequence[float],
        num_classes: int,
    ) -> None:
        super().__init__()
        self.net = net
        self.objective = objective
        self.policy = policy
        self.config = config
        self.mean, self.std = tuple(mean), tuple(std)
        self.num_classes = num_classes
        self.online_probe = nn.Linear(net.encoder.out_dim, num_classes) if config.online_probe else None
        # Kept out of the state dict: checkpoints hold weights, not the dataset.
        self._train_images = _as_tensor(train.images)
        self._train_labels = _as_tensor(train.labels).long()
        self._val = val
        self._val_tensors: tuple[Tensor, Tensor, Tensor] | None = None
        self._epoch_keys: tuple[str, ...] = ()
        self._epoch_sums: Tensor | None = None
        self._epoch_steps = 0

    # -- data: indices only; images are gathered on the device -------------------------------
    def setup(self, stage: str) -> None:
        self._train_images = self._train_images.to(self.device)
        self._train_labels = self._train_labels.to(self.device)
        if self._val is not None:
            self._val_tensors = tuple(
                _as_tensor(a).to(self.device) for a in (self._val.views, self._val.originals, self._val.labels)
            )  # type: ignore[assignment]

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        size = len(self._train_images)
        batches = EpochShuffledBatches(size, self.config.batch_size, self.config.seed)
        return _index_loader(size, batches)

    def val_dataloader(self) -> torch.utils.data.DataLoader | list:
        if self._val is None:
            return []
        size = len(self._val.views)
        batches = torch.utils.data.BatchSampler(
            torch.utils.data.SequentialSampler(range(size)), self.config.batch_size, drop_last=False
        )
        return _index_loader(size, batches)

    # -- helpers --------------------------------------------------------------------------
    def _to_input(self, images_nhwc: Tensor) -> Tensor:
        """uint8 N x H x W x C -> normalised float N x C x H x W (channels_last in memory)."""
        x = normalize(to_float(images_nhwc.permute(0, 3, 1, 2)), self.mean, self.std)
        return x.contiguous(memory_format=torch.channels_last) if self.config.channels_last else x.contiguous()

    def _step_generator(self, salt: int = 0) -> torch.Generator:
        # Seeded by the global step, so a resumed run draws the same views and noise; on the
        # training device, so drawing them needs no host round trip.
        seed = self.config.seed * 1_000_003 + self.global_step * 7 + salt
        return torch.Generator(device=self.device).manual_seed(seed)

    def _views(self, images_nhwc: Tensor, generator: torch.Generator) -> Tensor:
        # Views are pixel work in fp32 whatever the model's precision.
        with torch.autocast(self.device.type, enabled=False):
            views = make_views(images_nhwc.permute(0, 3, 1, 2), self.policy, generator)
        x = normalize(views, self.mean, self.std)
        return x.contiguous(memory_format=torch.channels_last) if self.config.channels_last else x

    def _noise(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        return torch.randn(shape, generator=generator, device=self.device)

    def _reconstruction_terms(
        self, x_in: Tensor, target: Tensor, generator: torch.Generator, samples: int = 1
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        features = self.net.encode(x_in)
        mu, logvar = self.net.projection(features)
        mu, logvar = mu.float(), logvar.float()
        std = posterior_std(logvar)
        kl = kl_standard_normal(mu, logvar)
        log_pxz_all, log_w = [], []
        for _ in range(samples):
            z = mu + std * self._noise(tuple(mu.shape), generator)
            x_hat = self.net.decode(z).float()
            log_pxz = gaussian_log_likelihood(x_hat, self.net.log_scale, target)
            log_pz = log_normal(z, torch.zeros_like(z), torch.ones_like(z))
            log_qz = log_normal(z, mu, std)
            log_pxz_all.append(log_pxz)
            log_w.append(log_pxz + log_pz - log_qz)
        log_pxz = torch.stack(log_pxz_all, dim=1)
        log_px = torch.logsumexp(torch.stack(log_w, dim=1), dim=1) - math.log(samples)
        loss = (self.objective.kl_coeff * kl - log_pxz.mean(dim=1)).mean()
        dims = target[0].numel()
        metrics = {
            "loss": loss.detach(),
            "elbo": (kl - log_pxz.mean(dim=1)).mean().detach(),  # the negative ELBO, as the paper logs it
            "kl": kl.mean().detach(),
            "log_pxz": log_pxz.mean().detach(),
            "log_px": log_px.mean().detach(),
            "bpd": bits_per_dim(log_px.mean(), dims).detach(),
        }
        return loss, metrics, features

    @torch.no_grad()
    def _augmentation_diagnostics(self, augmented: Tensor, original: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Cosine similarity of z and KL between posteriors of a view and its original."""
        mu_a, logvar_a = (t.float() for t in self.net.projection(self.net.encode(augmented)))
        mu_o, logvar_o = (t.float() for t in self.net.projection(self.net.encode(original)))
        z_a = mu_a + posterior_std(logvar_a) * self._noise(tuple(mu_a.shape), generator)
        z_o = mu_o + posterior_std(logvar_o) * self._noise(tuple(mu_o.shape), generator)
        return {
            "cos_sim": F.cosine_similarity(z_a, z_o, dim=1, eps=1e-6).mean(),
            "kl_augmentation": kl_gaussians(mu_a, logvar_a, mu_o, logvar_o).mean(),
        }

    def _probe(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Online linear probe loss and accuracy over labelled images (-1 = unlabeled).

        Written without data-dependent branches, so it never waits on the device.
        """
        assert self.online_probe is not None
        logits = self.online_probe(features)
        known = (labels >= 0).float()
        count = known.sum().clamp(min=1)
        loss = F.cross_entropy(logits, labels.clamp(min=0), reduction="none").mul(known).sum() / count
        accuracy = ((logits.argmax(1) == labels).float() * known).sum() / count
        return loss, accuracy.detach()

    def _accumulate(self, metrics: dict[str, Tensor]) -> None:
        """Sum the step's metrics on the device; they are logged once per epoch.

        One stacked add per step instead of a logging call per metric keeps the host free.
        """
        values = torch.stack([v.detach().float() for v in metrics.values()])
        if self._epoch_sums is None or self._epoch_keys != tuple(metrics):
            self._epoch_keys, self._epoch_sums, self._epoch_steps = tuple(metrics), torch.zeros_like(values), 0
        self._epoch_sums += values
        self._epoch_steps += 1

    def on_train_epoch_end(self) -> None:
        if self._epoch_sums is None or not self._epoch_steps:
            return
        means = (self._epoch_sums / self._epoch_steps).tolist()
        self.log_dict({f"train_{k}": v for k, v in zip(self._epoch_keys, means, strict=True)})
        self.log("loss", means[self._epoch_keys.index("loss")], prog_bar=True, logger=False)
        self._epoch_sums, self._epoch_steps = None, 0

    # -- steps ----------------------------------------------------------------------------
    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        images = self._train_images[batch]
        labels = self._train_labels[batch]
        generator = self._step_generator()
        original = self._to_input(images)
        augmented = self._views(images, generator) if self.objective.uses_augmented_input else None
        x_in = augmented if augmented is not None else original
        loss, metrics, features = self._reconstruction_terms(x_in, original, generator)
        metrics["log_scale"] = self.net.log_scale.detach().float().squeeze()
        total = loss
        if self.online_probe is not None:
            probe_loss, metrics["probe_acc"] = self._probe(features.detach().float(), labels)
            total = total + probe_loss
        self._accumulate(metrics)
        if self.global_step % self.config.diagnostics_every_n_steps == 0:
            if augmented is None:
                augmented = self._views(images, generator)
            diag = self._augmentation_diagnostics(augmented, original, generator)
            self.log_dict({f"train_{k}": v for k, v in diag.items()}, on_step=True, on_epoch=False)
        return total

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        assert self._val_tensors is not None
        views, originals, labels = (t[batch] for t in self._val_tensors)
        generator = torch.Generator(device=self.device).manual_seed(self.config.seed + batch_idx)
        original = self._to_input(originals)
        augmented = self._to_input(views)
        x_in = augmented if self.objective.uses_augmented_input else original
        _, metrics, _ = self._reconstruction_terms(x_in, original, generator, samples=self.config.val_samples)
        metrics.update(self._augmentation_diagnostics(augmented, original, generator))
        if self.online_probe is not None:
            _, metrics["probe_acc"] = self._probe(self.net.encode(original).float(), labels)
        self.log_dict({f"val_{k}": v for k, v in metrics.items()}, on_epoch=True, batch_size=len(batch))

    # -- optimisation ---------------------------------------------------------------------
    def configure_optimizers(self):
        cfg = self.config
        groups = parameter_groups(self, cfg.weight_decay, cfg.exclude_bn_bias)
        if cfg.optimizer == "lamb":
            optimizer: torch.optim.Optimizer = Lamb(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        else:
            for group in groups:
                group.pop("exclude_from_layer_adaptation", None)
            optimizer = torch.optim.Adam(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        steps_per_epoch = len(self.train_dataloader())
        schedule = warmup_then_decay(
            steps_per_epoch * cfg.warmup_epochs, steps_per_epoch * cfg.max_epochs, cfg.schedule
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return [optimizer], [{"scheduler": scheduler, "interval": "step", "frequency": 1}]


class CheckpointOnInterrupt(pl.Callback):
    """On SIGTERM or Ctrl+C, write last.ckpt mid-epoch so a rerun resumes from there.

    Other exceptions leave last.ckpt alone: a crash (NaN weights, a bug) must not replace
    the last good checkpoint.
    """

    def __init__(self, checkpoint_dir: Path) -> None:
        self.path = Path(checkpoint_dir) / LAST_CHECKPOINT

    def on_exception(self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            trainer.save_checkpoint(self.path)
            log.warning("Interrupted: checkpoint written to %s; rerun the same command to resume.", self.path)


def choose_accelerator(requested: str) -> str:
    if requested != "auto":
        return "gpu" if requested == "cuda" else requested
    return "gpu" if torch.cuda.is_available() else "cpu"


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with bf16 matrix instructions (AMX or AVX512-BF16), where oneDNN runs
    bf16 convolutions faster than fp32."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line for line in info if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def choose_precision(requested: str, accelerator: str) -> str:
    """bf16 mixed where the hardware has fast bf16, fp32 otherwise."""
    if requested != "auto":
        return requested
    if accelerator == "gpu":
        fast = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        fast = accelerator == "cpu" and cpu_has_fast_bf16()
    return "bf16-mixed" if fast else "32-true"


# Harmless here: the checkpoint folder is ours and is meant to be reused for resuming.
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def build_trainer(
    config: PretrainConfig,
    checkpoint_dir: Path,
    loggers: Sequence[Any] = (),
    callbacks: Sequence[pl.Callback] = (),
    has_validation: bool = True,
) -> pl.Trainer:
    accelerator = choose_accelerator(config.accelerator)
    periodic = pl.callbacks.ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="epoch{epoch:04d}",
        auto_insert_metric_name=False,
        every_n_epochs=config.checkpoint_every_n_epochs,
        save_top_k=-1,
        save_last=config.checkpoint_every_n_epochs == 1,
    )
    checkpointing = [periodic]
    if config.checkpoint_every_n_epochs > 1:
        # last.ckpt after every epoch, so an interruption loses at most one epoch.
        checkpointing.append(pl.callbacks.ModelCheckpoint(
            dirpath=checkpoint_dir, every_n_epochs=1, save_top_k=0, save_last=True))
    precision = choose_precision(config.precision, accelerator)
    log.info("Training on %s with %s precision", accelerator, precision)
    max_time = None
    if config.max_time_minutes is not None:
        max_time = {"seconds": int(config.max_time_minutes * 60)}
    return pl.Trainer(
        accelerator=accelerator,
        devices=config.devices,
        strategy="ddp_spawn" if config.devices > 1 else "auto",
        precision=precision,
        max_epochs=config.max_epochs,
        max_time=max_time,
        gradient_clip_val=config.gradient_clip_val,
        logger=list(loggers) or False,
        callbacks=[*checkpointing, CheckpointOnInterrupt(checkpoint_dir), *callbacks],
        # Each logger call is a round trip to the tracking store: log on diagnostic steps only.
        log_every_n_steps=config.diagnostics_every_n_steps,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if has_validation else 0,
        enable_model_summary=False,
        deterministic=False,
        default_root_dir=str(checkpoint_dir),
    )


def set_aside_checkpoints(checkpoint_dir: Path) -> Path | None:
    """Move an earlier run's checkpoints out of ``checkpoint_dir`` before a run that starts over.

    Left in place, Lightning would write the new run's beside them under versioned names
    (``last-v1.ckpt``), and the next resume would pick up the stale ``last.ckpt``. Moved to a
    sibling ``<folder>.replaced-<UTC time>`` rather than deleted: a new run must not destroy
    earlier checkpoints. Returns that folder, or None when there was nothing to move.
    """
    stale = sorted(checkpoint_dir.glob("*.ckpt"))
    if not stale:
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    archive = checkpoint_dir.with_name(f"{checkpoint_dir.name}.replaced-{stamp}")
    archive.mkdir(parents=True)
    marker = checkpoint_dir / RUN_MARKER
    if marker.is_file():  # which MLflow run wrote them
        shutil.copy2(marker, archive / RUN_MARKER)
    for path in stale:
        path.rename(archive / path.name)
    return archive


def fit(
    module: PretrainModule,
    trainer: pl.Trainer,
    checkpoint_dir: Path,
    resume: bool = True,
) -> int:
    """Train, continuing from ``last.ckpt`` in ``checkpoint_dir`` when there is one.

    Returns the number of epochs completed in total.
    """
    last = checkpoint_dir / LAST_CHECKPOINT
    ckpt_path = str(last) if resume and last.is_file() else None
    if ckpt_path:
        log.info("Resuming pretraining from %s", ckpt_path)
    if module.config.compile:
        # In-place compile keeps the state-dict keys, so checkpoints stay loadable.
        module.net.encoder.compile()
        module.net.decoder.compile()
    try:
        trainer.fit(module, ckpt_path=ckpt_path)
    except SIGTERMException as exc:
        # Lightning's SIGTERM exit carries status 0; a terminated run must not look successful.
        raise SystemExit(128 + signal.SIGTERM) from exc
    return trainer.current_epoch


@torch.no_grad()
def reconstruct(
    net: AAVAENet, images_nhwc: np.ndarray | Tensor, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """Decode the posterior mean of each image; uint8 N x H x W x C back in pixel space."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    x = normalize(to_float(_as_tensor(images_nhwc).to(device).permute(0, 3, 1, 2)), mean, std)
    mu, _ = net.projection(net.encode(x))
    x_hat = net.decode(mu).float()
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    pixels = ((x_hat * s + m).clamp(0, 1) * 255).round().to(torch.uint8)
    net.train(was_training)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


class ReconstructionSnapshots(pl.Callback):
    """Every N epochs, hand a grid of original | view | reconstruction to ``publish``."""

    def __init__(self, images: np.ndarray, views: np.ndarray, every_n_epochs: int, publish) -> None:
        self.images, self.views = images, views
        self.every_n_epochs, self.publish = every_n_epochs, publish

    def on_train_epoch_end(self, trainer: pl.Trainer, module: PretrainModule) -> None:
        epoch = trainer.current_epoch + 1
        if self.every_n_epochs and epoch % self.every_n_epochs == 0 and trainer.is_global_zero:
            self.publish(reconstruction_grid(module, self.images, self.views), epoch)


def reconstruction_grid(module: PretrainModule, originals: np.ndarray, views: np.ndarray):
    from aavae.plots import image_grid

    shown_input = views if module.objective.uses_augmented_input else originals
    recon = reconstruct(module.net, shown_input, module.mean, module.std)
    columns = [originals, views, recon] if module.objective.uses_augmented_input else [originals, recon]
    titles = ["original", "input view", "reconstruction"] if len(columns) == 3 else ["original", "reconstruction"]
    return image_grid(columns, titles, title=f"{module.objective.kind}: reconstructions of held-out images")
