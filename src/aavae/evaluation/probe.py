"""The linear probe: multinomial logistic regression on frozen features, tuned without the test split.

The fit is full-batch L-BFGS on standardised features (:func:`_fit_softmax_regression`);
the L2 strength is chosen on a stratified validation part of the training split
(:func:`stratified_split`), the model is refit on the whole training split, and the test
split is touched exactly once, for the final prediction.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from aavae.evaluation.features import ArrayLike
from aavae.evaluation.inputs import _checked_inputs, _default_device
from aavae.evaluation.scoring import ClassifierResult, _result

logger = logging.getLogger(__name__)

#: The default L2 grid of the linear probe (a penalty ``0.5 * wd * ||W||^2`` on the mean loss).
DEFAULT_WEIGHT_DECAYS: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


def linear_probe(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    *,
    val_fraction: float = 0.1,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    max_iter: int = 1000,
    tolerance: float = 1e-4,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> ClassifierResult:
    """Multinomial logistic regression on frozen features; the test split never tunes it.

    1. Split the training set into a fit part and a stratified validation part
       (``val_fraction`` of every class, drawn with ``seed``).
    2. For every weight decay, from the strongest to the weakest (each fit warm-starts the
       next), fit on the standardised fit part (mean/std of the fit part only) and measure
       validation top-1. The best wins; ties go to the stronger regularisation.
    3. Refit on the whole training split (standardised with its own mean/std) and predict the
       test split once.

    Each fit minimises ``mean cross-entropy + 0.5 * wd * ||W||^2`` (bias unpenalised) with
    full-batch L-BFGS in float32 until the largest gradient entry is below ``tolerance * wd``
    (scikit-learn's ``tol`` on its equivalent objective with ``C = 1 / (wd * n)``), the loss
    stops changing at float32 resolution, or ``max_iter`` iterations pass. With a single
    weight decay there is nothing to choose: step 2 is skipped.
    """
    dev = _default_device(device)
    xtr, ytr, xte, yte, names = _checked_inputs(
        train_x, train_y, test_x, test_y, num_classes, class_names, dev
    )
    grid = _weight_decay_grid(weight_decays)

    # The caller may sit under no_grad or inference_mode (a notebook, a pipeline node); the
    # fit needs autograd, and autograd refuses tensors created in inference mode.
    with torch.inference_mode(False), torch.enable_grad():
        xtr, ytr = (t.clone() if t.is_inference() else t for t in (xtr, ytr))
        chosen: dict = {"weight_decay": grid[0]}
        warm: tuple[Tensor, Tensor] | None = None
        if len(grid) > 1:
            fit_idx, val_idx = stratified_split(ytr.cpu().numpy(), val_fraction, seed)
            best_wd, val_top1, warm = _select_weight_decay(
                xtr, ytr, fit_idx, val_idx, num_classes, grid, max_iter, tolerance
            )
            chosen = {"weight_decay": best_wd, "validation_top1": val_top1}
            if len(grid) > 2 and best_wd in (grid[0], grid[-1]):
                logger.warning(
                    "linear_probe chose weight_decay=%g at the edge of the grid %s; "
                    "the best value may lie beyond it: consider widening weight_decays",
                    best_wd,
                    grid,
                )

        scaler = _Standardizer.fit(xtr)
        weight, bias = _fit_softmax_regression(
            scaler(xtr), ytr, num_classes, chosen["weight_decay"], warm, max_iter, tolerance
        )
    with torch.inference_mode():
        probabilities = torch.softmax(torch.addmm(bias, scaler(xte), weight.T), dim=1)
    return _result(probabilities, yte, names, chosen)


def _weight_decay_grid(weight_decays: Sequence[float]) -> list[float]:
    grid = sorted({float(wd) for wd in weight_decays}, reverse=True)
    if not grid:
        raise ValueError("weight_decays is empty: give at least one L2 strength")
    if any(not math.isfinite(wd) or wd < 0 for wd in grid):
        raise ValueError(
            f"weight_decays must be finite and non-negative, got {list(weight_decays)}"
        )
    return grid


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(fit, val)``: ``val_fraction`` of every class (rounded) goes to ``val``.

    A class keeps at least one sample in ``fit``. Both index arrays are sorted.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(
            f"val_fraction must be in (0, 1) to choose a weight decay, got {val_fraction}; "
            "pass a single value in weight_decays to skip the choice"
        )
    rng = np.random.default_rng(seed)
    val_parts = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        n_val = min(int(round(val_fraction * len(members))), len(members) - 1)
        val_parts.append(rng.permutation(members)[:n_val])
    val_idx = np.sort(np.concatenate(val_parts)).astype(np.int64)
    if len(val_idx) == 0:
        raise ValueError(
            f"val_fraction={val_fraction} of {len(labels)} training samples leaves an empty "
            "validation part; raise val_fraction or give more training samples"
        )
    fit_mask = np.ones(len(labels), dtype=bool)
    fit_mask[val_idx] = False
    return np.flatnonzero(fit_mask), val_idx


def _select_weight_decay(xtr, ytr, fit_idx, val_idx, num_classes, grid, max_iter, tolerance):
    fit_t = torch.as_tensor(fit_idx, device=xtr.device)
    val_t = torch.as_tensor(val_idx, device=xtr.device)
    scaler = _Standardizer.fit(xtr[fit_t])
    x_fit, y_fit = scaler(xtr[fit_t]), ytr[fit_t]
    x_val, y_val = scaler(xtr[val_t]), ytr[val_t]

    val_top1: dict[str, float] = {}
    best: tuple[float, float, tuple[Tensor, Tensor]] | None = None
    params = None
    for wd in grid:  # strongest first: each solution is a good start for the next, weaker one
        params = _fit_softmax_regression(x_fit, y_fit, num_classes, wd, params, max_iter, tolerance)
        with torch.no_grad():
            accuracy = float(
                (torch.addmm(params[1], x_val, params[0].T).argmax(1) == y_val).float().mean()
            )
        val_top1[repr(wd)] = accuracy
        if best is None or accuracy > best[1]:  # strict: ties keep the stronger regularisation
            best = (wd, accuracy, params)
    assert best is not None
    return best[0], val_top1, best[2]


@dataclass(frozen=True)
class _Standardizer:
    mean: Tensor
    std: Tensor

    @classmethod
    def fit(cls, x: Tensor) -> _Standardizer:
        mean = x.mean(0)
        std = x.std(0, unbiased=False)
        # A constant column carries no information; dividing by 1 maps it to zero.
        std = torch.where(std > 1e-6 * std.max().clamp_min(1e-12), std, torch.ones_like(std))
        return cls(mean, std)

    def __call__(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def _fit_softmax_regression(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    weight_decay: float,
    init: tuple[Tensor, Tensor] | None = None,
    max_iter: int = 1000,
    tolerance: float = 1e-4,
) -> tuple[Tensor, Tensor]:
    """Minimise ``mean CE(x W^T + b, y) + 0.5 * weight_decay * ||W||^2`` with full-batch L-BFGS.

    The gradient tolerance scales with ``weight_decay``: the distance to the optimum is about
    gradient / curvature, and the penalty's curvature is ``weight_decay``.
    """
    if init is None:
        weight = torch.zeros(num_classes, x.shape[1], device=x.device)
        bias = torch.zeros(num_classes, device=x.device)
    else:
        weight, bias = init[0].detach().clone(), init[1].detach().clone()
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        max_eval=max_iter * 2,
        tolerance_grad=max(tolerance * weight_decay, 1e-9),
        tolerance_change=1e-10,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def objective() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(torch.addmm(bias, x, weight.T), y)
        loss = loss + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(objective)
    return weight.detach(), bias.detach()
