"""The batch a device trains on per step (at least two images: :func:`check_batch_norm_values`),
and the memory layout it runs in. docs/performance.md's "Batch sizes" states all the batch rules.

channels_last is the layout oneDNN and cuDNN convolve fastest, and the step uses it by default
(``pretrain.channels_last``). PyTorch 2.14's CPU backward pass of a 1 x 1 convolution with
stride 2 (a ResNet stage's shortcut) corrupts the heap in channels_last when it has few input
channels: measured on a 2-core AMD EPYC with AVX2 (``benchmarks/native_abort.py``), with 2 to
6 input channels (``model.width`` 4) it aborts with ``free(): invalid next size`` or a
segmentation fault on one thread, and on two threads it hangs or, worse, finishes with weights
that differ from run to run (1e-4, silently); 1, 8, 12 and 16 channels ran. On an AMD EPYC with
AVX512-BF16 the ResNet-18 at width 8 (8 channels there) aborted on odd batches. The kernels
work in blocks of the CPU's vector width (8 floats for AVX2, 16 for AVX-512), so below 16 input
channels the step trains in the contiguous layout on the CPU, and odd batches too. The recipes'
widths (32, 64) keep channels_last; the forward pass (evaluation, serving) is unaffected.
"""

from __future__ import annotations

import logging

from torch import nn

log = logging.getLogger(__name__)

#: A strided 1 x 1 convolution with fewer input channels than this corrupts the heap in
#: channels_last on the CPU (16: AVX-512's vector width in floats).
MIN_SAFE_SHORTCUT_CHANNELS = 16


def use_channels_last(requested: bool, device_kind: str, batch: int, net: nn.Module) -> bool:
    """Whether the step runs in channels_last: as ``requested``, except on the CPU where it would
    corrupt the heap (a strided 1 x 1 convolution of under 16 input channels in ``net``, or an
    odd ``batch``: the images one device trains on per step)."""
    if not requested or device_kind != "cpu":
        return requested
    narrowest = min((module.in_channels for module in net.modules() if isinstance(module, nn.Conv2d)
                     and module.kernel_size == (1, 1) and module.stride != (1, 1)), default=None)
    reasons = []
    if narrowest is not None and narrowest < MIN_SAFE_SHORTCUT_CHANNELS:
        reasons.append(f"a strided 1 x 1 convolution has {narrowest} input channels (under "
                       f"{MIN_SAFE_SHORTCUT_CHANNELS}: a model.width of 16 or more avoids it)")
    if batch % 2:
        reasons.append(f"the batch is odd ({batch} images; an even pretrain.batch_size avoids it)")
    if reasons:
        log.info("Training in the contiguous memory layout, not channels_last: %s, where PyTorch's "
                 "CPU backward pass corrupts memory in channels_last (aavae.training.layout).",
                 " and ".join(reasons))
        return False
    return True


def check_batch_norm_values(batch: int) -> None:
    """Refuse a training batch of one image per device: the projection head's batch norm (1-D,
    one value per channel per image) would be left one value per channel, and training would
    stop deep inside PyTorch with "Expected more than 1 value per channel"."""
    if batch < 2:
        raise ValueError(
            f"A training batch of {batch} image per device leaves batch norm one value per channel "
            f"(the projection head normalises over the images of a batch), and training needs at "
            f"least two. Use pretrain.batch_size of at least 2 per device, and a training set of "
            f"at least 2 images."
        )
