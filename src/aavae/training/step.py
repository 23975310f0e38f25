"""One training step, wholly on the device: gather, views, forward, loss, backward, update.

The step reads every input from device tensors it owns and writes every output into them (the
epoch's batch table and position, the step count that drives the learning rate, the metric
sums): nothing waits for the host and no shape depends on the data, so the same body runs
eagerly, with its loss function compiled (views, noise and the update stay eager: they draw
from the step's generator or are its optimizer), or captured once as a CUDA graph and replayed
(:class:`CudaGraphed`); :mod:`aavae.training.fallback` picks the fastest that works. Random
numbers come from one generator per run, saved in checkpoints (and registered with the graph),
so a resumed run draws what the uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch._dynamo
import torch.nn.functional as F
from torch import Tensor, nn

from aavae.models import AAVAENet
from aavae.objective import (
    Objective,
    autoencoder_terms,
    original_terms,
    reconstruction_terms,
    sample_posterior,
)
from aavae.training.distributed import all_reduce_mean
from aavae.training.layout import use_channels_last
from aavae.training.schedule import schedule_factor
from aavae.views import ViewPolicy, apply_view_params, normalize, original_view, sample_view_params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepSettings:
    """What a step does, fixed for a run (a compiled step or a graph bakes it in)."""

    objective: Objective
    policy: ViewPolicy
    encode_original: str = "diagnostic_steps"
    online_probe: bool = True
    autocast_dtype: torch.dtype | None = None
    gradient_clip_val: float | None = None
    channels_last: bool = True
    schedule: str = "constant"
    original_resize: int | None = None  # the paper's STL-10 zoom of originals (views.original_resize)

    def metric_keys(self) -> tuple[str, ...]:
        """Names of the per-step metrics, in the order the step sums them."""
        if self.objective.is_variational:
            keys = ["loss", "elbo", "kl", "log_pxz", "log_px", "bpd", "log_scale"]
        else:
            keys = ["loss", "mse"]
        keys += self.original_keys() if self.encode_original == "every_step" else []
        return (*keys, *(["probe_acc"] if self.online_probe else []))

    def original_keys(self) -> list[str]:
        """Metrics of the un-augmented pass: cos_sim of the latents (and kl_augmentation)."""
        return ["cos_sim", "kl_augmentation"] if self.objective.is_variational else ["cos_sim"]


def probe_terms(probe: nn.Module, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Online linear probe loss and accuracy over labelled images (-1 = unlabeled), without
    data-dependent branches, so it never waits on the device."""
    logits = probe(features)
    known = (labels >= 0).float()
    count = known.sum().clamp(min=1)
    loss = F.cross_entropy(logits, labels.clamp(min=0), reduction="none").mul(known).sum() / count
    accuracy = ((logits.argmax(1) == labels).float() * known).sum() / count
    return loss, accuracy.detach()


@contextlib.contextmanager
def frozen_batchnorm_statistics(module: nn.Module) -> Iterator[None]:
    """Batch statistics as in training, the running ones left alone: a side pass (the
    diagnostics) must not move the statistics evaluation normalises clean images with."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved, strict=True):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)


class TrainStep:
    """The whole training step over device-resident state; call it once per step. ``optimizer``
    was built with the peak learning rate; each call writes the scheduled rate into :attr:`lr`,
    the one device tensor every group's ``lr`` is."""

    def __init__(
        self,
        net: AAVAENet,
        probe: nn.Module | None,
        optimizer: torch.optim.Optimizer,
        settings: StepSettings,
        images: Tensor | None,
        labels: Tensor | None,
        mean: Tensor,
        std: Tensor,
        batches: tuple[int, int],
        generator: torch.Generator,
        warmup_steps: int,
        total_steps: int,
        shard: tuple[int, int] = (0, 1),
        staged: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        """``batches`` is (steps per epoch, global batch); ``shard`` is (rank, world): this
        process trains on its contiguous share of every global batch and averages the gradients
        with the others. ``staged`` replaces ``images``/``labels`` (on the device) when batches
        are streamed from the host: buffers filled with this rank's batch before each step."""
        device = mean.device
        self.net, self.probe, self.optimizer = net, probe, optimizer
        self.settings, self.generator = settings, generator
        self.images, self.labels, self.mean, self.std = images, labels, mean, std
        self.staged = staged
        self.device = device
        self.peak_lr = optimizer.defaults["lr"]
        # The groups' lr is this tensor from now on (fixed, as a captured graph needs). The step is
        # built after Lightning restores a checkpoint, whose groups come back with CPU copies.
        self.lr = torch.zeros((), device=device)
        for group in optimizer.param_groups:
            group["lr"] = self.lr
        rank, world = shard
        self.distributed = world > 1
        if batches[1] % world:
            raise ValueError(f"a global batch of {batches[1]} images does not split over {world} processes")
        self.global_batch = batches[1]
        self.local = slice(rank * batches[1] // world, (rank + 1) * batches[1] // world)
        # channels_last only where PyTorch's CPU kernels are safe in it (see training/layout.py)
        self.channels_last = use_channels_last(settings.channels_last, device.type, batches[1] // world, net)
        self.keys = settings.metric_keys()
        long = {"dtype": torch.long, "device": device}
        self.order = torch.zeros(batches, **long)  # this epoch's batches of image indices
        self.position = torch.zeros((), **long)  # the next row of ``order``
        self.step = torch.zeros((), **long)  # optimisation steps done: drives the schedule
        self.warmup_steps = torch.tensor(warmup_steps, **long)
        self.total_steps = torch.tensor(total_steps, **long)
        self.sums = torch.zeros(len(self.keys), device=device)
        self.first_bad_step = torch.full((), -1, **long)  # first step whose loss was not finite
        self.last_input: Tensor | None = None  # this step's encoder input and target, for
        self.last_target: Tensor | None = None  # the diagnostics that follow some steps
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.loss_fn: Callable[..., tuple[Tensor, Tensor]] = self.loss_and_metrics

    # -- the hot path ------------------------------------------------------------------------
    def __call__(self) -> None:
        """One optimisation step: no host round trip, no data-dependent shape."""
        settings, device = self.settings, self.device
        self.optimizer.zero_grad(set_to_none=True)
        images, labels = self.batch()
        target = self.to_input(images)
        x_in = self.views(images) if settings.objective.uses_augmented_input else target
        # Random numbers are drawn for the whole global batch on every rank, each rank
        # keeping its share: the result does not depend on the number of processes.
        noise = torch.randn((2, self.global_batch, self.net.spec.latent_dim), generator=self.generator,
                            device=device)[:, self.local]
        with torch.autocast(device.type, dtype=settings.autocast_dtype or torch.bfloat16,
                            enabled=settings.autocast_dtype is not None, cache_enabled=False):
            loss, metrics = self.loss_fn(x_in, target, labels, noise)
        loss.backward()
        if self.distributed:
            all_reduce_mean([p.grad for p in self.params if p.grad is not None])
        if settings.gradient_clip_val is not None:
            torch.nn.utils.clip_grad_norm_(self.params, settings.gradient_clip_val, foreach=True)
        factor = schedule_factor(self.step, self.warmup_steps, self.total_steps, settings.schedule)
        self.lr.copy_(factor * self.peak_lr)
        self.optimizer.step()
        self.sums += metrics
        bad = ~torch.isfinite(loss.detach()) & (self.first_bad_step < 0)
        self.first_bad_step.copy_(torch.where(bad, self.step, self.first_bad_step))
        self.position += 1
        self.step += 1
        self.last_input, self.last_target = x_in, target

    def loss_and_metrics(self, x_in: Tensor, target: Tensor, labels: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """The loss to minimise and the step's metrics as one vector (the compiled part)."""
        settings, net = self.settings, self.net
        original_features = None
        if settings.encode_original == "every_step":
            # The paper encodes the original on every step, in train mode: its batch-norm
            # statistics see clean images as well as views.
            with torch.no_grad():
                original_features = net.encode(target)
        features = net.encode(x_in)
        if settings.objective.is_variational:
            loss, metrics, latent = reconstruction_terms(
                net, features, target, noise[:1], settings.objective.kl_coeff)
        else:
            loss, metrics, latent = autoencoder_terms(net, features, x_in)  # the AE reconstructs its input
        if original_features is not None:
            with torch.no_grad():
                metrics.update(original_terms(settings.objective, net, original_features, latent, noise[1]))
        total = loss
        if self.probe is not None:
            probe_loss, metrics["probe_acc"] = probe_terms(self.probe, features.detach().float(), labels)
            total = total + probe_loss
        return total, torch.stack([metrics[key].detach().float() for key in self.keys])

    def batch(self) -> tuple[Tensor, Tensor]:
        """This rank's images and labels of the step: by the epoch's order, or as staged."""
        if self.staged is not None:
            return self.staged
        assert self.images is not None and self.labels is not None
        index = self.order[self.position, self.local]
        return self.images[index], self.labels[index]

    def to_input(self, images_nhwc: Tensor) -> Tensor:
        """uint8 N x H x W x C -> the normalised original, float N x C x H x W."""
        original = original_view(images_nhwc.permute(0, 3, 1, 2), self.settings.original_resize)
        return self._memory_format(normalize(original, self.mean, self.std))

    def views(self, images_nhwc: Tensor) -> Tensor:
        """This rank's views: parameters drawn for the global batch, applied to its share.
        Pixel work in fp32 whatever the model's precision."""
        height, width = images_nhwc.shape[1:3]
        params = sample_view_params(self.global_batch, height, width, self.settings.policy,
                                    self.generator, self.device)
        views = apply_view_params(images_nhwc.permute(0, 3, 1, 2), params.slice(self.local.start, self.local.stop),
                                  self.settings.policy)
        return self._memory_format(normalize(views, self.mean, self.std))

    def _memory_format(self, x: Tensor) -> Tensor:
        if self.channels_last:
            return x.contiguous(memory_format=torch.channels_last)
        return x.contiguous()

    # -- around the hot path -----------------------------------------------------------------
    def start_epoch(self, order: Tensor, steps_done: int, position: int) -> None:
        """Load the epoch's batch table and where to start in it (not 0 after a mid-epoch resume)."""
        self.order.copy_(order)  # one host-to-device copy per epoch
        self.step.fill_(steps_done)
        self.position.fill_(position)
        self.sums.zero_()

    def compile(self) -> None:
        """Compile the loss function (forward, loss, and through autograd its backward). Dynamo
        caches per function, not per step object: a process that trains one model after another
        (a benchmark, a notebook) would pile up entries until dynamo's limit silently sent the
        step back to eager, so the cache is cleared first (one training at a time compiles)."""
        torch._dynamo.reset()
        # Inductor picks channels_last for convolutions by itself ("layout optimization"): where
        # the guard chose the contiguous layout, it must not, or the compiled backward meets the
        # same native fault (it hung on two threads: aavae.training.layout).
        options = None if self.channels_last or self.device.type != "cpu" else {"layout_optimization": False}
        self.loss_fn = torch.compile(self.loss_and_metrics, dynamic=False, options=options)

    @torch.no_grad()
    def diagnostics(self, seed: int) -> Tensor:
        """cos_sim (and kl_augmentation) of the last step's input and its original: the side pass
        of ``diagnostic_steps``, running statistics untouched, with its own seeded noise (so its
        cadence does not change what training draws)."""
        assert self.last_input is not None and self.last_target is not None
        settings, net, device = self.settings, self.net, self.device
        generator = torch.Generator(device=device).manual_seed(seed)
        noise = torch.randn((2, len(self.last_input), net.spec.latent_dim), generator=generator, device=device)
        with frozen_batchnorm_statistics(net), torch.autocast(
                device.type, dtype=settings.autocast_dtype or torch.bfloat16,
                enabled=settings.autocast_dtype is not None):
            features = net.encode(self.last_input)
            original_features = net.encode(self.last_target)
            if settings.objective.is_variational:
                mu, logvar = (t.float() for t in net.projection(features))
                latent: tuple[Tensor, ...] | Tensor = (mu, logvar, sample_posterior(mu, logvar, noise[0]))
            else:
                latent = net.projection(features).float()
            terms = original_terms(settings.objective, net, original_features, latent, noise[1])
        return torch.stack([terms[key].float() for key in settings.original_keys()])


class CudaGraphed:
    """Run ``step`` eagerly for ``warmup`` calls on a side stream (cuDNN chooses its algorithms,
    the optimizer creates its state), then capture it as one CUDA graph and replay that
    (PyTorch's whole-network capture recipe). ``generator`` is registered with the graph, so
    each replay draws fresh numbers."""

    def __init__(self, step: Callable[[], None], generator: torch.Generator, warmup: int = 3) -> None:
        self.step, self.generator, self.warmup = step, generator, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.calls = 0

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
            return
        if self.calls < self.warmup:
            self._warm_up()
            self.calls += 1
            return
        self.graph = self._capture()
        self.graph.replay()  # capturing records the step; replaying runs it

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def _warm_up(self) -> None:
        """One eager call on a side stream, as capture wants everything it records run once."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.step()
        torch.cuda.current_stream().wait_stream(side)

    def _capture(self) -> torch.cuda.CUDAGraph:
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(self.generator)
        with torch.cuda.graph(graph):
            self.step()
        return graph
