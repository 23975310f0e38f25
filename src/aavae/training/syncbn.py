"""Batch norm with statistics pooled over all processes, on any device: torch's SyncBatchNorm
(N processes compute one process's batch statistics) runs on GPUs only. :class:`PooledBatchNorm`
does the same with two all-reduces and torch's formulas, on the CPU's gloo backend too;
:class:`PooledBatchNormSync` is the Lightning plugin that swaps it in (``sync_batchnorm`` on a CPU).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightning.pytorch.plugins.layer_sync import LayerSync
from torch import Tensor, nn

from aavae.training.distributed import in_several_processes


class _PooledBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor, running_var: Tensor,
                eps: float, momentum: float) -> Tensor:
        dims = [0, *range(2, x.ndim)]
        xf = x.float()
        local_count = xf.numel() // xf.shape[1]
        stats = torch.cat([xf.sum(dims), xf.square().sum(dims), xf.new_tensor([local_count])])
        dist.all_reduce(stats)
        channels = xf.shape[1]
        count = stats[-1]
        mean = stats[:channels] / count
        var = (stats[channels:2 * channels] / count - mean.square()).clamp(min=0)
        invstd = torch.rsqrt(var + eps)
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
            running_var.mul_(1 - momentum).add_(var * count / (count - 1).clamp(min=1), alpha=momentum)
        shape = (1, -1, *([1] * (x.ndim - 2)))
        xhat = (xf - mean.view(shape)) * invstd.view(shape)
        ctx.save_for_backward(xhat, weight, invstd, count)
        return (xhat * weight.view(shape) + bias.view(shape)).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        xhat, weight, invstd, count = ctx.saved_tensors
        dims = [0, *range(2, xhat.ndim)]
        shape = (1, -1, *([1] * (xhat.ndim - 2)))
        gy = grad_output.float()
        sum_dy, sum_dy_xhat = gy.sum(dims), (gy * xhat).sum(dims)
        grad_weight, grad_bias = sum_dy_xhat.clone(), sum_dy.clone()  # local: the step averages them
        pooled = torch.cat([sum_dy, sum_dy_xhat])
        dist.all_reduce(pooled)
        sum_dy, sum_dy_xhat = pooled.chunk(2)
        grad_input = (gy - (sum_dy / count).view(shape) - xhat * (sum_dy_xhat / count).view(shape)) \
            * (invstd * weight.float()).view(shape)
        return grad_input.to(grad_output.dtype), grad_weight.to(weight.dtype), grad_bias.to(weight.dtype), \
            None, None, None, None


class PooledBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A batch norm whose training statistics are those of the global batch."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and in_several_processes()):
            return super().forward(x)
        self.num_batches_tracked.add_(1)
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        return _PooledBatchNorm.apply(x, self.weight, self.bias, self.running_mean, self.running_var,
                                      self.eps, momentum)


def _converted(module: nn.Module, kinds: tuple[type, ...], into: type) -> nn.Module:
    if isinstance(module, kinds):
        new = into(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new.to(module.weight.device) if module.affine else new
    for name, child in module.named_children():
        setattr(module, name, _converted(child, kinds, into))
    return module


class PooledBatchNormSync(LayerSync):
    """Lightning's layer-sync plugin for :class:`PooledBatchNorm` (what sync_batchnorm is on GPUs)."""

    def apply(self, model: nn.Module) -> nn.Module:
        return _converted(model, (nn.BatchNorm1d, nn.BatchNorm2d), PooledBatchNorm)

    def revert(self, model: nn.Module) -> nn.Module:
        return _converted(model, (PooledBatchNorm,), nn.BatchNorm2d)  # the 1-d and 2-d norms hold the same state
