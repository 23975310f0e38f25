"""Batch-norm running statistics: leave them alone for a side pass, or re-estimate them.

Training updates the running statistics from the batches the encoder sees: views only (this
project's default) or views and originals (the paper's clean pass on every step). Evaluation
then normalises clean images with them. :func:`recompute_batchnorm_statistics` replaces them
with exact averages over un-augmented training images, the statistics evaluation meets.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn


def _batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@contextlib.contextmanager
def frozen_batchnorm_statistics(module: nn.Module) -> Iterator[None]:
    """Batch statistics as in training, but the running statistics left as they are.

    A side pass (the diagnostics) must not move the statistics that evaluation will use.
    """
    norms = _batchnorms(module)
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved, strict=True):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)


@torch.no_grad()
def recompute_batchnorm_statistics(
    module: nn.Module, batches: Iterator[Tensor], forward: Callable[[Tensor], object] | None = None
) -> int:
    """Replace the running statistics of ``module``'s batch norms by their average over
    ``batches`` (inputs ready for ``forward``, by default ``module`` itself).

    Momentum ``None`` makes torch keep a cumulative average; train mode for the pass, the
    module's mode and momenta restored afterwards. Returns the number of batches seen.
    """
    norms = _batchnorms(module)
    saved = [m.momentum for m in norms]
    was_training = module.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    module.train()
    seen = 0
    try:
        for batch in batches:
            (forward or module)(batch)
            seen += 1
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum
        module.train(was_training)
    return seen
