"""Optimizers the training step can run without a host round trip, built with the schema's
learning rate; the step makes each group's ``lr`` one device tensor (:class:`TrainStep`), so no
host number is baked into a compiled step or a CUDA graph. Adam is torch's fused (on CUDA,
capturable) one; LAMB is written here in tensor arithmetic only, one parameter at a time:
slower on the host than fused Adam, as fast as any kernel once graph-replayed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn


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
    """LAMB (You et al., 2019): Adam moments with a per-layer trust ratio ||w|| / ||update||.
    Every quantity, the step count and the trust ratio included, stays a tensor on the device
    (no wait, nothing baked into a captured graph); ``lr`` may be a float or a 0-dim tensor."""

    def __init__(self, params, lr: float | Tensor = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      exclude_from_layer_adaptation=False))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), device=p.device, dtype=torch.float32)
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
                if group["exclude_from_layer_adaptation"]:
                    scale = torch.as_tensor(group["lr"], device=p.device)
                else:
                    w_norm, u_norm = p.norm(), update.norm()
                    usable = (w_norm > 0) & (u_norm > 0)
                    trust = torch.where(usable, w_norm / u_norm.clamp(min=1e-30), torch.ones_like(w_norm))
                    scale = trust * group["lr"]
                p.sub_(update * scale)
        return loss


def build_optimizer(
    module: nn.Module, name: str, learning_rate: float, weight_decay: float, exclude_bn_bias: bool,
    capturable: bool,
) -> torch.optim.Optimizer:
    """Adam (fused where torch has it for the device) or LAMB at ``learning_rate``, the peak of
    the schedule. ``capturable`` keeps Adam's step counts on the device, which a CUDA graph needs."""
    groups = parameter_groups(module, weight_decay, exclude_bn_bias)
    if name == "lamb":
        return Lamb(groups, lr=learning_rate, weight_decay=weight_decay)
    for group in groups:
        group.pop("exclude_from_layer_adaptation", None)
    device = next(module.parameters()).device
    return torch.optim.Adam(groups, lr=learning_rate, weight_decay=weight_decay,
                            fused=device.type in ("cuda", "cpu"), capturable=capturable and device.type == "cuda")


class WholeStepOptimizer:
    """The optimizer as Lightning sees it: the real one (groups, state, ``state_dict``), except a
    ``step`` that only runs its closure, the whole training step. Handed the real one, Lightning
    would run the update after the closure, outside the step a CUDA graph captures; through this
    it still counts steps and checkpoints the real optimizer's state."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def __getattr__(self, name: str) -> Any:
        if name == "optimizer":  # not set yet: an object being copied or unpickled
            raise AttributeError(name)
        return getattr(self.optimizer, name)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        return closure() if closure is not None else None
