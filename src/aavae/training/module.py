"""The Lightning module: Lightning runs the loop (devices, checkpoints and resume, validation,
loggers, progress, the time limit); the step (:class:`aavae.training.step.TrainStep`) owns the
optimisation, update included, so it can be compiled and captured whole, driven through
:class:`aavae.training.optim.WholeStepOptimizer` in manual optimisation (which still counts
steps and saves the real optimizer's state). Metrics are summed on the device, read once an epoch.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import update_bn

from aavae.config import PretrainConfig
from aavae.models import AAVAENet
from aavae.objective import (
    Objective,
    autoencoder_terms,
    original_terms,
    reconstruction_terms,
    sample_posterior,
)
from aavae.training.data import (
    TrainingImages,
    ValidationViews,
    as_tensor,
    batch_shape,
    epoch_order,
    fits_on_device,
    to_device,
)
from aavae.training.distributed import all_reduce_mean, die_with_parent
from aavae.training.fallback import FallbackStep
from aavae.training.layout import check_batch_norm_values
from aavae.training.optim import WholeStepOptimizer, build_optimizer
from aavae.training.pacing import CompileDecision, Pacer, ScheduleFit
from aavae.training.step import StepSettings, TrainStep, probe_terms
from aavae.training.streaming import HostBatches
from aavae.views import Preprocessing, ViewPolicy, channel_tensors

log = logging.getLogger(__name__)

GENERATOR_KEY = "aavae_generator_state"  # where checkpoints keep the step's random stream
FITTED_STEPS_KEY = "aavae_fitted_steps"  # the step count a time-limited schedule was fitted to
FITTED_WARMUP_KEY = "aavae_fitted_warmup"  # its warm-up, which a refit leaves as the first fit set it
UNFITTED_STEPS = 10**9  # warm-up/total until fitted: learning rate near 0, no decay


class NonFiniteLoss(RuntimeError):
    """The loss or a metric became NaN or infinite: training stops before saving it."""


class PretrainModule(pl.LightningModule):
    """AAVAE pretraining (or the paper's VAE and AE baselines) with an online linear probe."""

    def __init__(
        self,
        net: AAVAENet,
        objective: Objective,
        policy: ViewPolicy,
        config: PretrainConfig,
        train: TrainingImages,
        val: ValidationViews | None,
        preprocessing: Preprocessing,
        num_classes: int,
        precision: str = "32-true",
        device_kind: str = "cpu",
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net = net
        self.objective = objective
        self.policy = policy
        self.config = config
        self.preprocessing = preprocessing  # how an original becomes the network's input
        self._train_labels_host = np.asarray(train.labels, dtype=np.int64)
        # the online probe (docs/differences.md): reported only where it has labels to learn from
        labelled = bool((self._train_labels_host >= 0).any())
        if config.online_probe and not labelled:
            log.info("No online probe: the training images have no labels (pretrain.training_split "
                     "unlabeled), so it would learn nothing and report nothing true")
        self.online_probe = nn.Linear(net.encoder.out_dim, num_classes) if config.online_probe and labelled else None
        self.autocast_dtype = torch.bfloat16 if precision == "bf16-mixed" else None
        self.compile_mode = resolve_switch(config.compile, device_kind)
        self.graph_mode = device_kind == "cuda" and resolve_switch(config.cuda_graph, device_kind) is True
        # Kept out of the state dict: checkpoints hold weights, not the dataset. The images stay
        # where the catalog put them (often a memory map) until fit decides where they live.
        self._train_source = train.images
        self._train_images: Tensor | None = None  # on the device, when they live there
        self._train_labels: Tensor | None = None
        self._host: HostBatches | None = None  # else: batches streamed from the host
        self._val = val
        self._val_tensors: tuple[Tensor, Tensor, Tensor] | None = None
        # the probe is scored on the validation images only where they have labels
        self._val_probe = self.online_probe is not None and val is not None and bool((np.asarray(val.labels) >= 0).any())
        self.batches = batch_shape(len(self._train_source), config.batch_size)
        self.rank, self.world = 0, 1
        self.step_fn: TrainStep | None = None
        self._run_step: FallbackStep | None = None
        self.generator: torch.Generator | None = None
        self._restored_generator: Tensor | None = None
        self._pacer: Pacer | None = None
        self._fitted_steps: int | None = None
        self._fitted_warmup: int | None = None
        self._diagnostic_sums: Tensor | None = None
        self._diagnostic_steps = 0
        self.epoch_metrics: dict[str, float] = {}
        self._epoch_read = False
        self._epoch_steps_run = 0
        self._started_epoch = -1

    @property
    def steps_per_epoch(self) -> int:
        return self.batches[0]

    @property
    def engine(self) -> str:
        """What trains the step: "cuda_graph", "compiled" or "eager" (after any fall back)."""
        if self._run_step is not None:
            return self._run_step.engine
        return "cuda_graph" if self.graph_mode else "compiled" if self.compile_mode is True else "eager"

    @property
    def engine_failures(self) -> list[str]:
        """What failed and made the step fall back, in order (empty: nothing did)."""
        return list(self._run_step.failures) if self._run_step is not None else []

    @property
    def engine_setup_seconds(self) -> float:
        """Seconds the step spent compiling and capturing, which are not its rate."""
        return self._run_step.setup_seconds if self._run_step is not None else 0.0

    @property
    def settings(self) -> StepSettings:
        cfg = self.config
        return StepSettings(
            objective=self.objective, policy=self.policy, encode_original=cfg.encode_original,
            online_probe=self.online_probe is not None, autocast_dtype=self.autocast_dtype,
            gradient_clip_val=cfg.gradient_clip_val, channels_last=cfg.channels_last,
            schedule=cfg.schedule,
            original_resize=self.preprocessing.original_resize,
        )

    # -- data on the device -------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if multiprocessing.parent_process() is not None:
            die_with_parent()  # a rank spawned inside the node must not outlive a killed run

    def on_fit_start(self) -> None:
        self.rank, self.world = self.trainer.global_rank, self.trainer.world_size
        share = self.batches[1] // self.world  # the images this device trains on per step
        check_batch_norm_values(share)
        if self.world > 1:
            log.info("Rank %d of %d trains on its %d images of every global batch of %d",
                     self.rank, self.world, share, self.batches[1])
        wanted = self.config.data_on_device
        if fits_on_device(self._train_source, self.device) if wanted == "auto" else wanted:
            self._train_images = to_device(self._train_source, self.device)
            self._train_labels = torch.from_numpy(self._train_labels_host).to(self.device)
        else:
            self._host = HostBatches(self._train_source, self._train_labels_host,
                                     slice(self.rank * share, (self.rank + 1) * share),
                                     (share, *self._train_source.shape[1:]), self.device)
            log.info("Training images (%.1f GB) stay in host memory; batches are streamed to %s",
                     self._train_source.nbytes / 1e9, self.device)
        if self._val is not None:
            self._val_tensors = tuple(  # type: ignore[assignment]
                as_tensor(a).to(self.device) for a in (self._val.views, self._val.originals, self._val.labels)
            )
        self.generator = torch.Generator(device=self.device).manual_seed(self.config.seed)
        if self._restored_generator is not None:
            self.generator.set_state(self._restored_generator)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        # One empty item per step: the step gathers its batch by the epoch's order on the device
        # (indices made on the host would cost a host-to-device copy every step).
        return torch.utils.data.DataLoader(range(self.steps_per_epoch), batch_size=None)

    def val_dataloader(self) -> torch.utils.data.DataLoader | list:
        if self._val is None:
            return []
        return torch.utils.data.DataLoader(range(len(self._val.views)), batch_size=self.config.batch_size,
                                           collate_fn=torch.as_tensor)

    # -- optimisation ---------------------------------------------------------------------
    def configure_optimizers(self) -> WholeStepOptimizer:
        cfg = self.config
        return WholeStepOptimizer(build_optimizer(self, cfg.optimizer, cfg.learning_rate, cfg.effective_weight_decay,
                                                  cfg.exclude_bn_bias, capturable=self.graph_mode))

    def planned_steps(self) -> int:
        """The step count the schedule spans: max_steps, or max_epochs of full batches."""
        by_epochs = self.steps_per_epoch * self.config.max_epochs
        return min(self.config.max_steps, by_epochs) if self.config.max_steps else by_epochs

    def warmup_for(self, total_steps: int) -> int:
        cfg = self.config
        if cfg.warmup_fraction is not None:
            return round(cfg.warmup_fraction * total_steps)
        return self.steps_per_epoch * cfg.warmup_epochs

    def schedule_lengths(self) -> tuple[int, int]:
        """Total and warm-up steps of the schedule: fitted to the time limit if it was (a resumed
        run keeps both, so it follows the schedule the interrupted run followed), else planned."""
        total = self._fitted_steps or self.planned_steps()
        warmup = self._fitted_warmup if self._fitted_warmup is not None else self.warmup_for(total)
        return total, warmup

    def _build_step(self) -> TrainStep:
        mean, std = channel_tensors(self.preprocessing.mean, self.preprocessing.std, self.device)
        facade: WholeStepOptimizer = self.optimizers().optimizer  # type: ignore[assignment]
        total, warmup = self.schedule_lengths()
        if self._pacer is not None and self._pacer.fitting:
            # Until the step rate is known, hold the start of the warm-up (a few steps at a
            # learning rate near 0) and keep the decay far away.
            total, warmup = UNFITTED_STEPS, UNFITTED_STEPS if self.config.warmup_fraction else warmup
        step = TrainStep(
            self.net, self.online_probe, facade.optimizer, self.settings,
            self._train_images, self._train_labels, mean, std, self.batches, self.generator,
            warmup_steps=warmup, total_steps=total, shard=(self.rank, self.world),
            staged=(self._host.images, self._host.labels) if self._host is not None else None,
        )
        # Graph, compiled or eager: the best that works (a failure falls back, and says so).
        self._run_step = FallbackStep(step, compiled=self.compile_mode is True, graph=self.graph_mode)
        log.info("Training step: %s", self._run_step.describe())
        return step

    def on_train_start(self) -> None:
        cfg = self.config
        self._pacer = Pacer(self.device, decide_compile=self.compile_mode == "decide",
                            fit_schedule=cfg.schedule_to_time_limit and self._fitted_steps is None,
                            time_limit_minutes=cfg.max_time_minutes, planned_steps=self.planned_steps())

    def _start_epoch(self) -> None:
        """Load this epoch's batches, at its first step (Lightning skips the epoch-start hook when
        it resumes a checkpoint written mid-epoch)."""
        if self.step_fn is None:
            self.step_fn = self._build_step()
        epoch, steps_done = self.current_epoch, self.global_step
        self._started_epoch = epoch
        position = max(0, steps_done - epoch * self.steps_per_epoch)  # > 0 after a mid-epoch resume
        order = epoch_order(len(self._train_source), self.config.batch_size, self.config.seed, epoch)
        self.step_fn.start_epoch(order.to(self.device), steps_done, position)
        if self._host is not None:
            self._host.start_epoch(order, position)
        self._diagnostic_sums, self._diagnostic_steps = None, 0
        self._epoch_read, self._epoch_steps_run = False, 0

    def training_step(self, batch: Any, batch_idx: int) -> None:
        if self.step_fn is None or self._started_epoch != self.current_epoch:
            self._start_epoch()
        assert self.step_fn is not None
        step_number = self.global_step
        self._pace(step_number)
        if self._host is not None:
            self._host.next()  # this step's batch into the device buffers the step reads
        self.optimizers().step(closure=self._run_step)
        self._epoch_steps_run += 1
        if (self.config.encode_original == "diagnostic_steps"
                and step_number % self.config.diagnostics_every_n_steps == 0):
            values = self.step_fn.diagnostics(seed=self.config.seed * 1_000_003 + step_number)
            self._diagnostic_sums = values if self._diagnostic_sums is None else self._diagnostic_sums + values
            self._diagnostic_steps += 1
        if self.global_step >= (self.current_epoch + 1) * self.steps_per_epoch:
            self._read_epoch_metrics()  # before validation, so no checkpoint saves a diverged model

    def _pace(self, step_number: int) -> None:
        decision = self._pacer.before_step(step_number) if self._pacer is not None else None
        if isinstance(decision, CompileDecision):
            log.info(decision.describe())
            if decision.compile:
                assert self._run_step is not None
                self._run_step.use_compiled()
        elif isinstance(decision, ScheduleFit):
            self._fit_schedule(decision)

    def _fit_schedule(self, fit: ScheduleFit) -> None:
        """End warm-up, decay and training at the step count that fills the time limit; a
        refined fit moves only the end (the warm-up stays as the first fit set it)."""
        assert self.step_fn is not None
        total = self._fitted_steps = fit.total_steps
        self.step_fn.total_steps.fill_(total)
        if not fit.refined:
            self._fitted_warmup = self.warmup_for(total)
            self.step_fn.warmup_steps.fill_(self._fitted_warmup)
        self.trainer.fit_loop.epoch_loop.max_steps = total
        log.info("Schedule %s to the %.1f-minute limit: %.3f s per step, %d steps in all "
                 "(%d of warm-up), %.1f epochs", "refitted" if fit.refined else "fitted",
                 self.config.max_time_minutes, fit.seconds_per_step, total,
                 int(self.step_fn.warmup_steps), total / self.steps_per_epoch)

    def _read_epoch_metrics(self) -> None:
        """Epoch means of the step's sums, the one device-to-host read of an epoch; raises
        :class:`NonFiniteLoss` if the loss or a metric stopped being finite, naming the first
        step where the loss did."""
        step = self.step_fn
        assert step is not None
        self._epoch_read = True
        count, diagnostics = len(step.keys), self._diagnostic_sums
        vector = torch.cat([step.sums, step.first_bad_step.float().view(1), *([] if diagnostics is None else [diagnostics])])
        if self.world > 1:
            first_bad = vector[count].clone()
            all_reduce_mean([vector])  # every rank's sums: the epoch's means over all of them
            vector[count] = first_bad
        values = vector.tolist()  # host sync, once per epoch
        means = {key: value / max(1, self._epoch_steps_run) for key, value in zip(step.keys, values, strict=False)}
        if diagnostics is not None:
            means.update({key: value / self._diagnostic_steps
                          for key, value in zip(self.settings.original_keys(), values[count + 1:], strict=True)})
        first_bad = int(values[count])
        bad = sorted(key for key, value in means.items() if not math.isfinite(value))
        if bad or first_bad >= 0:
            where = f"step {first_bad}" if first_bad >= 0 else f"epoch {self.current_epoch}"
            raise NonFiniteLoss(
                f"Pretraining diverged: {', '.join(bad) or 'the loss'} became NaN or infinite at "
                f"{where}. The last good checkpoint is kept and nothing of this epoch is saved. "
                "Lower pretrain.learning_rate, set pretrain.gradient_clip_val, or check the data."
            )
        self.epoch_metrics = means

    def finish_epoch(self) -> None:
        """Read the epoch's metrics if the last step has not (an epoch cut short by the time
        limit); the checkpoint callback calls this before it writes anything."""
        if not self._epoch_read and self.step_fn is not None and self._epoch_steps_run:
            self._read_epoch_metrics()

    def on_train_epoch_end(self) -> None:
        self.finish_epoch()
        if not self.epoch_metrics:
            return
        self.log_dict({f"train_{k}": v for k, v in self.epoch_metrics.items()})
        self.log("loss", self.epoch_metrics["loss"], prog_bar=True, logger=False)

    def recompute_encoder_statistics(self, max_images: int = 10_000) -> int:
        """Re-estimate the encoder's batch-norm statistics on a seeded subset of at most
        ``max_images`` un-augmented training images; returns how many were used."""
        chosen = torch.randperm(len(self._train_source), generator=torch.Generator().manual_seed(self.config.seed))
        images = self._train_images if self._train_images is not None else self._train_source
        return reestimate_batchnorm(self.net.encoder, images, chosen[:max_images].sort().values.numpy(),
                                    self.preprocessing, self.config.batch_size, self.device, self.autocast_dtype)

    # -- checkpoints carry the random stream ----------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.generator is not None:
            checkpoint[GENERATOR_KEY] = self.generator.get_state()
        if self._fitted_steps is not None:
            checkpoint[FITTED_STEPS_KEY] = self._fitted_steps
            checkpoint[FITTED_WARMUP_KEY] = self._fitted_warmup

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.online_probe is None:  # a checkpoint of a run whose probe trained on no labels
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                        if not k.startswith("online_probe.")}
        self._restored_generator = checkpoint.get(GENERATOR_KEY)
        self._fitted_steps = checkpoint.get(FITTED_STEPS_KEY)  # a resumed run keeps its schedule
        self._fitted_warmup = checkpoint.get(FITTED_WARMUP_KEY)  # (None from older checkpoints)

    # -- validation ----------------------------------------------------------------------
    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        """The paper's validation: ``val_samples`` importance samples of log p(x), the
        augmentation diagnostics (cos_sim over all samples, as its ``VAE.step``) and the probe,
        on the fixed views of held-out images."""
        assert self._val_tensors is not None
        views, originals, labels = (t[batch] for t in self._val_tensors)
        original = self.preprocessing.apply(originals.permute(0, 3, 1, 2))
        augmented = self.preprocessing.apply_to_views(views.permute(0, 3, 1, 2))
        x_in = augmented if self.objective.uses_augmented_input else original
        generator = torch.Generator(device=self.device).manual_seed(self.config.seed + batch_idx)
        samples = self.config.val_samples if self.objective.is_variational else 1
        # a standard normal draw per importance sample for the view, and one for the original
        noise = torch.randn((2 * samples, len(batch), self.net.spec.latent_dim),
                            generator=generator, device=self.device)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None):
            features, original_features = self.net.encode(x_in), self.net.encode(original)
            if self.objective.is_variational:
                _, metrics, latent = reconstruction_terms(
                    self.net, features, original, noise[:samples], self.objective.kl_coeff)
            else:
                _, metrics, latent = autoencoder_terms(self.net, features, x_in)  # its input, as in ae.py
            metrics.update(original_terms(self.objective, self.net, original_features, latent, noise[samples]))
            if self.objective.is_variational:
                metrics["cos_sim"] = cos_sim_over_samples(
                    self.net, original_features, latent, noise[:samples], noise[samples:])
            if self._val_probe:
                _, metrics["probe_acc"] = probe_terms(self.online_probe, original_features.float(), labels)
        self.log_dict({f"val_{k}": v for k, v in metrics.items()}, on_epoch=True, batch_size=len(batch),
                      sync_dist=self.world > 1)

    def on_train_end(self) -> None:
        if self._host is not None:
            self._host.stop()

    def on_exception(self, exception: BaseException) -> None:
        self.on_train_end()


@torch.no_grad()
def reestimate_batchnorm(encoder: nn.Module, images: np.ndarray | Tensor, rows: np.ndarray,
                         preprocessing: Preprocessing, batch_size: int, device: torch.device,
                         autocast_dtype: torch.dtype | None = None) -> int:
    """``update_bn`` of ``encoder`` over the un-augmented ``images`` at ``rows`` (host arrays, or
    a tensor already on ``device``), in batches of ``batch_size``; returns how many were used."""
    def batches():
        for start in range(0, len(rows), batch_size):
            chosen = rows[start:start + batch_size]
            if isinstance(images, Tensor):
                raw = images[torch.from_numpy(chosen).to(images.device)]
            else:
                raw = torch.from_numpy(np.asarray(images[chosen]))
            yield preprocessing.apply(raw.to(device).permute(0, 3, 1, 2))

    with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        update_bn(batches(), encoder)
    return len(rows)


def cos_sim_over_samples(net: AAVAENet, original_features: Tensor, latent: tuple[Tensor, ...],
                         noise: Tensor, original_noise: Tensor) -> Tensor:
    """The paper's validation cos_sim (its ``VAE.step``): cos(z', z) averaged over S importance
    samples and the images, z from q(z | view) (``latent``: the view's mu, logvar; ``noise``: S x N
    x latent, the log p(x) estimate's) and z' from q(z | original); with S = 1, training's cos_sim."""
    mu, logvar = latent[0], latent[1]
    mu_o, logvar_o = (t.float() for t in net.projection(original_features))
    z = sample_posterior(mu, logvar, noise)
    z_original = sample_posterior(mu_o, logvar_o, original_noise)
    return torch.nn.functional.cosine_similarity(z_original, z, dim=-1, eps=1e-6).mean()


def resolve_switch(value: bool | str, device_kind: str) -> bool | str:
    """``auto`` for compile/cuda_graph: on for CUDA; on CPU, compile is decided by timing."""
    if value != "auto":
        return bool(value)
    return True if device_kind == "cuda" else "decide"

