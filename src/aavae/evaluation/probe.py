"""The linear probes: multinomial logistic regression on frozen features, tuned without the
test split (:func:`linear_probe`) or fitted on a few labels per class (:func:`few_label_probe`).

Preconditioned: correlated features (raw pixels above all: neighbouring pixels move
together) make the problem ill-conditioned, and plain L-BFGS then spent its whole
``max_iter`` on every weak weight decay without converging. CIFAR-10's raw-pixel baseline
(3,072 features) took 7 fits of 1,000 to 2,000 evaluations of 50,000 x 3,072 products: the
20 silent minutes of issue #24. The fit now runs in coordinates where the penalised
problem's curvature is about the identity (:func:`_preconditioner`: a Cholesky factor of
``CURVATURE * covariance + weight_decay``, a linear change of variables, so the optimum is
the same one), which it reaches in about a tenth of the evaluations.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch import Tensor

from aavae.common.progress import Progress
from aavae.evaluation.features import ArrayLike, _checked_inputs, _default_device
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
    precondition: bool = True,
    progress: bool = True,
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
    full-batch L-BFGS in float32 to ``tolerance`` (scikit-learn's ``tol`` on its equivalent
    objective with ``C = 1 / (wd * n)``) or ``max_iter`` iterations. With a single weight
    decay there is nothing to choose: step 2 is skipped.

    ``precondition`` (default) solves in well-conditioned coordinates (see the module
    docstring): the same optimum in a tenth of the evaluations on correlated features, up to
    :data:`MAX_PRECONDITIONED_FEATURES` columns. ``False`` is the plain L-BFGS of earlier
    versions, kept for comparison (``benchmarks/evaluate.py --raw-pixels``). ``progress``
    shows the fits (:class:`aavae.common.progress.Progress`).
    """
    dev = _default_device(device)
    xtr, ytr, xte, yte, names = _checked_inputs(
        train_x, train_y, test_x, test_y, num_classes, class_names, dev
    )
    grid = sorted({float(wd) for wd in weight_decays}, reverse=True)
    if not grid:
        raise ValueError("weight_decays is empty: give at least one L2 strength")
    if any(not math.isfinite(wd) or wd < 0 for wd in grid):
        raise ValueError(
            f"weight_decays must be finite and non-negative, got {list(weight_decays)}"
        )
    fits = len(grid) + 1 if len(grid) > 1 else 1
    precondition = precondition and xtr.shape[1] <= MAX_PRECONDITIONED_FEATURES
    shown = Progress("linear probe", fits, "fits", enabled=progress)

    # The caller may sit under no_grad or inference_mode (a notebook, a pipeline node); the
    # fit needs autograd, and autograd refuses tensors created in inference mode.
    with torch.inference_mode(False), torch.enable_grad(), shown:
        xtr, ytr = (t.clone() if t.is_inference() else t for t in (xtr, ytr))
        chosen: dict = {"weight_decay": grid[0]}
        warm: tuple[Tensor, Tensor] | None = None
        if len(grid) > 1:
            split = stratified_split(ytr.cpu().numpy(), val_fraction, seed)
            best_wd, val_top1, warm = _select_weight_decay(
                xtr, ytr, split, num_classes, grid, max_iter, tolerance, precondition, shown
            )
            chosen = {"weight_decay": best_wd, "validation_top1": val_top1}
            if len(grid) > 2 and best_wd in (grid[0], grid[-1]):
                logger.warning(
                    "linear_probe chose weight_decay=%g at the edge of the grid %s; "
                    "the best value may lie beyond it: consider widening weight_decays",
                    best_wd,
                    grid,
                )

        scaler = _standardizer(xtr)
        x_all = scaler(xtr)
        weight, bias = _fit_softmax_regression(
            x_all, ytr, num_classes, chosen["weight_decay"], warm, max_iter, tolerance,
            _preconditioner(x_all) if precondition else None,
            _noting(shown, f"refit on all training rows {fits}/{fits}" if fits > 1 else "fit 1/1",
                    chosen["weight_decay"]),
        )
        shown.advance()
    with torch.inference_mode():
        probabilities = torch.softmax(torch.addmm(bias, scaler(xte), weight.T), dim=1)
    return _result(probabilities, yte, names, chosen)


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(fit, val)``, both sorted: ``val_fraction`` of the samples go to ``val``, every
    class in proportion (scikit-learn's stratified ``train_test_split``). A class of a single
    sample cannot be split, and stays in ``fit`` (an image folder may have one).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(
            f"val_fraction must be in (0, 1) to choose a weight decay, got {val_fraction}; "
            "pass a single value in weight_decays to skip the choice"
        )
    rows = np.arange(len(labels))
    shared = np.bincount(labels)[labels] > 1
    try:
        fit, val = train_test_split(rows[shared], test_size=val_fraction, random_state=seed,
                                    stratify=labels[shared])
    except ValueError as error:
        raise ValueError(
            f"val_fraction={val_fraction} of {len(labels)} training samples cannot give every class "
            f"a validation sample ({error}); raise val_fraction or give more training samples"
        ) from error
    return np.sort(np.concatenate([fit, rows[~shared]])), np.sort(val)


def _select_weight_decay(xtr, ytr, split, num_classes, grid, max_iter, tolerance, precondition, shown):
    fit_t, val_t = (torch.as_tensor(rows, device=xtr.device) for rows in split)
    scaler = _standardizer(xtr[fit_t])
    x_fit, y_fit = scaler(xtr[fit_t]), ytr[fit_t]
    x_val, y_val = scaler(xtr[val_t]), ytr[val_t]
    preconditioner = _preconditioner(x_fit) if precondition else None
    fits, params = {}, None
    for number, wd in enumerate(grid, 1):  # strongest first: each solution starts the next, weaker one
        params = _fit_softmax_regression(x_fit, y_fit, num_classes, wd, params, max_iter, tolerance,
                                         preconditioner, _noting(shown, f"fit {number}/{len(grid) + 1}", wd))
        shown.advance()
        fits[wd] = (_top1(params, x_val, y_val), params)
    best = max(fits, key=lambda wd: fits[wd][0])  # the first maximum: ties keep the stronger regularisation
    return best, {repr(wd): accuracy for wd, (accuracy, _) in fits.items()}, fits[best][1]


def _top1(params: tuple[Tensor, Tensor], x: Tensor, y: Tensor) -> float:
    """The top-1 accuracy of the softmax regression ``params = (weight, bias)`` on rows ``x``."""
    with torch.no_grad():
        return float((torch.addmm(params[1], x, params[0].T).argmax(1) == y).float().mean())


def _standardizer(x: Tensor) -> Callable[[Tensor], Tensor]:
    """Standardise rows with the mean and (population) std of the columns of ``x``."""
    mean, std = x.mean(0), x.std(0, unbiased=False)
    # A constant column carries no information; dividing by 1 maps it to zero.
    std = torch.where(std > 1e-6 * std.max().clamp_min(1e-12), std, torch.ones_like(std))
    return lambda rows: (rows - mean) / std


#: The Hessian of the mean cross-entropy in ``W`` is about ``CURVATURE * covariance`` of the
#: (standardised) features: the softmax's curvature ``p (1 - p)`` is ``(C - 1) / C**2`` at
#: the uniform start and smaller once classes separate; 0.1 converged fastest on CIFAR-10's
#: raw pixels (113 evaluations against 123 at 0.5 and 144 at 0.02, 10,000 images).
CURVATURE = 0.1
#: Above this many feature columns the ``d x d`` covariance and its Cholesky factor (cubic
#: in ``d``) cost more than they save: STL-10's 27,648 raw pixels are fitted plainly.
MAX_PRECONDITIONED_FEATURES = 4096
#: Rows (evenly spaced) that estimate the covariance: an approximate preconditioner changes
#: how fast the fit converges, never where to.
COVARIANCE_ROWS = 10_000


def _preconditioner(x: Tensor) -> Callable[[float], Tensor]:
    """``weight_decay -> L`` (lower triangular, float32) with ``L L^T = CURVATURE * cov(x) + weight_decay I``,
    about the penalised objective's Hessian in ``W``: in ``W' = W L`` it is about the identity. Any
    ``L`` leaves the optimum where it is, so an estimate of the covariance is enough; a small
    floor keeps ``L`` defined at ``weight_decay=0``."""
    rows = x[:: max(1, len(x) // COVARIANCE_ROWS)]
    with torch.no_grad():
        covariance = (rows.T @ rows).double() / len(rows)
    eye = torch.eye(len(covariance), dtype=torch.float64, device=covariance.device)
    floor = 1e-6 * float(covariance.diagonal().mean().clamp_min(1e-12))

    def factor(weight_decay: float) -> Tensor:
        factor, info = torch.linalg.cholesky_ex(CURVATURE * covariance + max(weight_decay, floor) * eye)
        return eye.float() if int(info) else factor.float()  # not positive definite: give up preconditioning, not the fit

    return factor


def _noting(shown: Progress, fit: str, weight_decay: float) -> Callable[[int], None]:
    """Say which fit of how many runs, at which weight decay, and how many evaluations in."""
    return lambda count: shown.note(f"{fit}, weight decay {weight_decay:g}, evaluation {count}")


def _fit_softmax_regression(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    weight_decay: float,
    init: tuple[Tensor, Tensor] | None = None,
    max_iter: int = 1000,
    tolerance: float = 1e-4,
    preconditioner: Callable[[float], Tensor] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """Minimise ``mean CE(x W^T + b, y) + 0.5 * weight_decay * ||W||^2`` with full-batch L-BFGS.

    The gradient tolerance scales with ``weight_decay``: the distance to the optimum is about
    gradient / curvature, and the penalty's curvature is ``weight_decay``. With a
    ``preconditioner`` L-BFGS moves ``W' = W L`` instead, where the curvature is about 1 and
    ``W``'s distance is at most ``W'``'s divided by ``sqrt(weight_decay)``: the tolerance on
    the gradient in ``W'`` is ``tolerance * sqrt(weight_decay)``, the same bound on ``W``.
    """
    zeros = (torch.zeros(num_classes, x.shape[1], device=x.device), torch.zeros(num_classes, device=x.device))
    weight, bias = (t.detach().clone() for t in init or zeros)
    factor = preconditioner(weight_decay) if preconditioner is not None else None
    if factor is None:
        moved, tolerance_grad = weight, tolerance * weight_decay
    else:
        moved, tolerance_grad = weight @ factor, tolerance * math.sqrt(weight_decay)
    moved.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [moved, bias],
        lr=1.0,
        max_iter=max_iter,
        max_eval=max_iter * 2,
        tolerance_grad=max(tolerance_grad, 1e-9),
        tolerance_change=1e-10,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def weights() -> Tensor:
        if factor is None:
            return moved
        return torch.linalg.solve_triangular(factor.T, moved.T, upper=True).T  # W = W' L^-1

    evaluations = 0

    def objective() -> Tensor:
        nonlocal evaluations
        optimizer.zero_grad()
        w = weights()
        loss = F.cross_entropy(torch.addmm(bias, x, w.T), y)
        loss = loss + 0.5 * weight_decay * w.pow(2).sum()
        loss.backward()
        evaluations += 1
        if progress is not None:
            progress(evaluations)
        return loss

    optimizer.step(objective)
    with torch.no_grad():
        return weights().detach(), bias.detach()


#: Labels per class of the default table (the digits' training split has ~134 per class).
DEFAULT_LABELS_PER_CLASS: tuple[int, ...] = (1, 5, 10)
#: Draws per count: the spread of one label per class is several points, 20 draws put the
#: standard error of the mean near one point.
DEFAULT_DRAWS = 20


@dataclass(frozen=True)
class FewLabelScore:
    """Test top-1 of the probe over ``draws`` draws of ``labels_per_class`` labels per class."""

    labels_per_class: int
    mean: float
    sd: float
    draws: int


def labelled_draw(labels: np.ndarray, labels_per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``labels_per_class`` rows of every class (sorted), drawn without replacement."""
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == label), labels_per_class, replace=False)
                                   for label in np.unique(labels)]))


def few_label_probe(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    num_classes: int,
    *,
    labels_per_class: Sequence[int] = DEFAULT_LABELS_PER_CLASS,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
    progress: bool = True,
) -> list[FewLabelScore]:
    """Mean and sd of test top-1 over ``draws`` few-label fits per count: what a representation
    is worth when labels are scarce.

    Self-supervised papers report linear evaluation with 1 %, 10 % or a handful of labels per
    class beside the full-label figure, because that is where a representation earns its keep:
    with every label, a linear classifier on raw pixels is already strong on easy data (digits),
    and the full-label figure cannot separate a learned representation from the pixels. With one
    label per class it can.

    For each count ``k`` in ``labels_per_class`` and each of ``draws`` draws, ``k`` training
    images of every class are drawn (the same draws for every feature set scored with the same
    ``seed``, so rows of one table compare like with like), a multinomial logistic regression is
    fitted on them alone and scored on the whole test split. A count larger than the smallest
    class's training images is skipped with a warning (an image folder may have a class of three).

    No hyper-parameter is tuned: with one label per class there is nothing to validate on. The
    L2 strength is scikit-learn's default (``C = 1``, that is ``weight_decay = 1 / n`` on the
    mean loss for ``n`` labelled images). Features are standardised with the mean and standard
    deviation of *all* training features: those are unlabelled images, which a few-label setting
    has, and ten rows could not estimate them.
    """
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    if any(int(k) < 1 for k in labels_per_class):
        raise ValueError(f"labels_per_class must be positive counts, got {list(labels_per_class)}")
    xtr, ytr, xte, yte, _ = _checked_inputs(train_x, train_y, test_x, test_y, num_classes, None, "cpu")
    labels = ytr.numpy()
    smallest = int(np.bincount(labels)[np.unique(labels)].min())
    too_many = sorted({int(k) for k in labels_per_class if int(k) > smallest})
    if too_many:
        logger.warning("few-label probe: the smallest class has %d training images, so %s labels per "
                       "class cannot be drawn; skipped", smallest, too_many)
    counts = [int(k) for k in labels_per_class if int(k) <= smallest]
    scaler = _standardizer(xtr)
    xtr, xte = scaler(xtr), scaler(xte)
    scores = []
    shown = Progress("few-label probe", len(counts) * draws, "fits", enabled=progress)
    with torch.inference_mode(False), torch.enable_grad(), shown:
        xtr, xte, ytr, yte = (t.clone() if t.is_inference() else t for t in (xtr, xte, ytr, yte))
        for k in counts:
            # One generator per count: adding a count leaves the other counts' draws alone.
            rng = np.random.default_rng([seed, k])
            accuracies = []
            for _ in range(draws):
                rows = torch.from_numpy(labelled_draw(labels, k, rng))
                params = _fit_softmax_regression(xtr[rows], ytr[rows], num_classes,
                                                 weight_decay=1.0 / len(rows), max_iter=500)
                accuracies.append(_top1(params, xte, yte))
                shown.advance()
            scores.append(FewLabelScore(k, float(np.mean(accuracies)), float(np.std(accuracies)), draws))
    return scores
