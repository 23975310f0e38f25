"""Batch-norm running statistics left alone during a side pass.

Training updates the running statistics from the batches the encoder sees: views only (this
project's default) or views and originals (the paper's clean pass on every step). Evaluation
then normalises clean images with them. Re-estimating them on un-augmented training images
(``recompute_bn_stats``) is torch's ``torch.optim.swa_utils.update_bn``: exact averages, as this
project's own pass computed them before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


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
