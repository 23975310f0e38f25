"""Measure learned representations: feature extraction, a linear probe and a kNN classifier.

Everything here is plain PyTorch/NumPy and works on features from any frozen encoder:

* :func:`extract_features` runs a frozen encoder over uint8 images in batches.
* :func:`linear_probe` fits a multinomial logistic regression on standardised features with
  full-batch L-BFGS. The L2 strength is chosen on a stratified validation part of the
  *training* split, the model is refit on the whole training split, and the test split is
  touched exactly once, for the final prediction.
* :func:`knn_classify` is the weighted cosine kNN of InstDisc/DINO/solo-learn.
* :func:`paper_linear_eval` is the paper's protocol instead: a linear layer trained by SGD
  on a frozen encoder over augmented images (batched on the device).
* :func:`accuracy_report` turns a :class:`ClassifierResult` into a JSON-able dict.
* :func:`bundle_from_checkpoint` turns a checkpoint file (this project's model bundle or the
  paper's Lightning checkpoint) into a model bundle; :func:`model_from_bundle` rebuilds its
  network; :func:`baseline_encoder` gives the baselines' encoders.
* :func:`embed_2d` maps features to 2-D (PCA + t-SNE) and :func:`nearest_neighbours` finds
  the most cosine-similar rows, for looking at what was learned.

Accuracies are fractions in ``[0, 1]``. "top-5" means top-``min(5, num_classes)``, so with
fewer than five classes it is always 1. Rankings break ties by the lower class index, the same
rule ``argmax`` uses for the prediction, so top-5 is never below top-1.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aavae.models import AAVAENet, ModelSpec, build_model, load_paper_checkpoint
from aavae.views import ViewPolicy, apply_view_params, channel_stats, sample_view_params

ArrayLike = np.ndarray | Tensor
logger = logging.getLogger(__name__)

#: The default L2 grid of the linear probe (a penalty ``0.5 * wd * ||W||^2`` on the mean loss).
DEFAULT_WEIGHT_DECAYS: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
TOP_K = 5


@dataclass
class ClassifierResult:
    """What a classifier scored on the test split.

    ``per_class`` is the recall of each class (``nan`` for a class absent from the test split),
    keyed by class name. ``confusion`` counts test samples with rows = true class and
    columns = predicted class. ``chosen`` holds the hyper-parameters the method used (for the
    linear probe: the selected weight decay and the validation accuracy of every candidate).
    ``scores`` holds the per-class scores the ranking came from (probabilities for the probe,
    summed vote weights for kNN).
    """

    top1: float
    top5: float
    per_class: dict[str, float]
    confusion: np.ndarray
    chosen: dict = field(default_factory=dict)
    predictions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    scores: np.ndarray | None = None


# --------------------------------------------------------------------------- features


def extract_features(
    encoder: nn.Module,
    images: ArrayLike,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 512,
    device: str | torch.device | None = None,
    channels_last: bool = True,
    autocast_bf16: bool | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Run a frozen ``encoder`` over uint8 ``N x H x W x C`` images; return float32 ``(N, D)``.

    Pixels are scaled to ``[0, 1]`` and normalised per channel by ``mean``/``std`` (given on
    that ``[0, 1]`` scale). ``images`` may be a read-only ``np.memmap``: only one batch at a time
    is copied into memory. ``device`` defaults to where the encoder's parameters are; the
    encoder is moved there for the call and moved back, and its train/eval mode is restored.
    ``autocast_bf16=None`` uses bf16 autocast on a CUDA device that supports it, never on CPU.
    """
    _check_images(images)
    mean_t, std_t = _channel_stats(mean, std, channels=images.shape[3])
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")

    home = _module_device(encoder)
    target = torch.device(device) if device is not None else home
    if autocast_bf16 is None:
        autocast_bf16 = target.type == "cuda" and torch.cuda.is_bf16_supported()
    mean_t = mean_t.to(target).view(1, -1, 1, 1)
    std_t = std_t.to(target).view(1, -1, 1, 1)

    was_training = encoder.training
    encoder.to(target).eval()
    chunks: list[np.ndarray] = []
    try:
        with torch.inference_mode(), _progress_bar(len(images), progress) as bar:
            for start in range(0, len(images), batch_size):
                batch = _as_uint8_batch(images, start, start + batch_size).to(target)
                # NHWC -> NCHW as a view is exactly the channels_last layout; no copy needed.
                x = batch.permute(0, 3, 1, 2)
                if not channels_last:
                    x = x.contiguous()
                x = (x.float().div_(255.0) - mean_t) / std_t
                with torch.autocast(target.type, dtype=torch.bfloat16, enabled=autocast_bf16):
                    out = encoder(x)
                chunks.append(_flat_features(out, len(batch)))
                bar.update(len(batch))
    finally:
        encoder.to(home).train(was_training)
    return np.concatenate(chunks, axis=0)


def _check_images(images: ArrayLike) -> None:
    if not isinstance(images, (np.ndarray, Tensor)):
        raise TypeError(
            f"images must be a numpy array or torch tensor, got {type(images).__name__}"
        )
    if images.dtype not in (np.uint8, torch.uint8) or images.ndim != 4:
        raise ValueError(
            f"images must be uint8 N x H x W x C (channels last), got {images.dtype} "
            f"with shape {tuple(images.shape)}"
        )
    if len(images) == 0:
        raise ValueError("images is empty: there is nothing to extract features from")


def _channel_stats(
    mean: Sequence[float], std: Sequence[float], channels: int
) -> tuple[Tensor, Tensor]:
    mean_t = torch.as_tensor(np.asarray(mean, dtype=np.float32)).flatten()
    std_t = torch.as_tensor(np.asarray(std, dtype=np.float32)).flatten()
    for name, values in (("mean", mean_t), ("std", std_t)):
        if values.numel() != channels:
            raise ValueError(
                f"{name} must have one value per image channel ({channels}), got {values.numel()}"
            )
    if not bool((std_t > 0).all()):
        raise ValueError(f"std must be positive in every channel, got {std_t.tolist()}")
    if bool((mean_t.abs() > 1).any()):
        raise ValueError(
            f"mean {mean_t.tolist()} looks like it is on the 0-255 scale; give mean and std "
            "on the [0, 1] scale (divide by 255)"
        )
    return mean_t, std_t


def _module_device(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def _as_uint8_batch(images: ArrayLike, start: int, stop: int) -> Tensor:
    if isinstance(images, Tensor):
        return images[start:stop]
    # np.array copies, which both materialises a memmap slice and makes it writable.
    return torch.from_numpy(np.array(images[start:stop], copy=True))


def _flat_features(out: object, batch_len: int) -> np.ndarray:
    if not isinstance(out, Tensor):
        raise TypeError(
            f"the encoder must return a tensor of features, got {type(out).__name__}; "
            "wrap it so that forward returns the representation only"
        )
    if out.shape[0] != batch_len:
        raise ValueError(
            f"the encoder returned {out.shape[0]} rows for a batch of {batch_len} images"
        )
    return out.reshape(batch_len, -1).float().cpu().numpy()


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the bar is a convenience, never a requirement
        return _NoBar()
    return tqdm(total=total, desc="features", unit="img")


# --------------------------------------------------------------------------- input checks


def _default_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _features(x: ArrayLike, name: str, device: torch.device) -> Tensor:
    tensor = torch.as_tensor(x).detach()
    if tensor.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D (samples x features) array, got shape {tuple(tensor.shape)}"
        )
    if tensor.shape[0] == 0:
        raise ValueError(f"{name} is empty: it needs at least one sample")
    if tensor.shape[1] == 0:
        raise ValueError(f"{name} has zero feature columns")
    tensor = tensor.to(device=device, dtype=torch.float32)
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or infinite values; check the feature extraction")
    return tensor


def _labels(
    y: ArrayLike, name: str, rows: int, rows_name: str, num_classes: int, device: torch.device
) -> Tensor:
    tensor = torch.as_tensor(y).detach()
    if tensor.ndim != 1 or tensor.shape[0] != rows:
        raise ValueError(
            f"{name} must be 1-D with one label per row of {rows_name} ({rows}), "
            f"got shape {tuple(tensor.shape)}"
        )
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices, got dtype {tensor.dtype}")
    tensor = tensor.to(device=device, dtype=torch.int64)
    low, high = int(tensor.min()), int(tensor.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"{name} must lie in [0, num_classes) = [0, {num_classes}), "
            f"got values from {low} to {high}"
        )
    return tensor


def _check_classes(num_classes: int, class_names: Sequence[str] | None) -> None:
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(
            f"class_names has {len(class_names)} names but num_classes is {num_classes}"
        )
    if class_names is not None and len(set(map(str, class_names))) != num_classes:
        raise ValueError(f"class_names must be distinct, got {list(class_names)}")


def _checked_inputs(train_x, train_y, test_x, test_y, num_classes, class_names, device):
    _check_classes(num_classes, class_names)
    xtr = _features(train_x, "train_x", device)
    xte = _features(test_x, "test_x", device)
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(
            f"train_x has {xtr.shape[1]} feature columns but test_x has {xte.shape[1]}; "
            "both must come from the same encoder"
        )
    ytr = _labels(train_y, "train_y", len(xtr), "train_x", num_classes, device)
    yte = _labels(test_y, "test_y", len(xte), "test_x", num_classes, device)
    return xtr, ytr, xte, yte, _class_name_list(num_classes, class_names)


def _class_name_list(num_classes: int, class_names: Sequence[str] | None) -> list[str]:
    if class_names is not None:
        return [str(n) for n in class_names]
    return [str(i) for i in range(num_classes)]


# --------------------------------------------------------------------------- scoring


def _result(
    scores: Tensor, labels: Tensor, class_names: list[str], chosen: dict
) -> ClassifierResult:
    """Score a ``(N, C)`` ranking against true labels."""
    num_classes = scores.shape[1]
    predictions = scores.argmax(dim=1)  # first maximum: ties go to the lower class index
    true_score = scores.gather(1, labels[:, None])
    class_index = torch.arange(num_classes, device=scores.device)
    ranked_ahead = (scores > true_score).sum(1) + (
        (scores == true_score) & (class_index[None, :] < labels[:, None])
    ).sum(1)
    top1 = float((predictions == labels).float().mean())
    top5 = float((ranked_ahead < min(TOP_K, num_classes)).float().mean())

    y_true = labels.cpu().numpy()
    y_pred = predictions.cpu().numpy()
    confusion = np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.diag(confusion) / support
    per_class = {name: float(value) for name, value in zip(class_names, recall, strict=True)}
    return ClassifierResult(
        top1=top1,
        top5=top5,
        per_class=per_class,
        confusion=confusion,
        chosen=chosen,
        predictions=y_pred.astype(np.int64),
        scores=scores.float().cpu().numpy(),
    )


def accuracy_report(result: ClassifierResult) -> dict:
    """A plain JSON-able dict: top1, top5, per_class (``None`` where undefined), chosen."""

    def plain(value):
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, (float, np.floating)):
            return None if math.isnan(value) else float(value)
        if isinstance(value, np.integer):
            return int(value)
        return value

    return {
        "top1": float(result.top1),
        "top5": float(result.top5),
        "per_class": plain(result.per_class),
        "chosen": plain(result.chosen),
    }


# --------------------------------------------------------------------------- linear probe


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


# --------------------------------------------------------------------------- kNN


def knn_classify(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    k: int = 200,
    temperature: float = 0.1,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> ClassifierResult:
    """Weighted kNN on cosine similarity (the InstDisc/DINO/solo-learn convention).

    Features are L2-normalised; each test row takes its ``k`` most similar training rows
    (``k`` capped at the training size), and each neighbour votes ``exp(similarity /
    temperature)`` for its class. The summed votes are the class scores. Test rows are
    processed ``batch_size`` at a time so memory stays at ``batch_size x len(train_x)``.
    """
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    dev = _default_device(device)
    xtr, ytr, xte, yte, names = _checked_inputs(
        train_x, train_y, test_x, test_y, num_classes, class_names, dev
    )
    k = min(k, len(xtr))

    with torch.inference_mode():
        bank = F.normalize(xtr, dim=1)
        score_chunks = []
        for start in range(0, len(xte), batch_size):
            query = F.normalize(xte[start : start + batch_size], dim=1)
            similarity, neighbour = (query @ bank.T).topk(k, dim=1)
            votes = torch.zeros(len(query), num_classes, device=dev)
            votes.scatter_add_(1, ytr[neighbour], (similarity / temperature).exp())
            score_chunks.append(votes)
        scores = torch.cat(score_chunks)
    return _result(scores, yte, names, {"k": k, "temperature": float(temperature)})


# --------------------------------------------------------------------------- nearest neighbours


def nearest_neighbours(
    bank: ArrayLike, queries: ArrayLike, k: int = 5, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``bank`` most cosine-similar to each query: ``(indices, similarities)``.

    Both are ``(len(queries), k)``, most similar first; ``k`` is capped at ``len(bank)``.
    """
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    cpu = torch.device("cpu")
    bank_t = F.normalize(_features(bank, "bank", cpu), dim=1)
    query_t = F.normalize(_features(queries, "queries", cpu), dim=1)
    if bank_t.shape[1] != query_t.shape[1]:
        raise ValueError(
            f"bank has {bank_t.shape[1]} feature columns but queries have {query_t.shape[1]}"
        )
    k = min(k, len(bank_t))
    indices, similarities = [], []
    with torch.inference_mode():
        for start in range(0, len(query_t), batch_size):
            similarity, index = (query_t[start : start + batch_size] @ bank_t.T).topk(k, dim=1)
            indices.append(index)
            similarities.append(similarity)
    return torch.cat(indices).numpy(), torch.cat(similarities).numpy()


# --------------------------------------------------------------------------- the paper's linear eval

#: Images up to this side get the paper's CIFAR-10 augmentation (reflect-padded random crop);
#: larger ones its STL-10 augmentation (random resized crop).
PAPER_CROP_MAX_SIZE = 32
PAPER_CROP_PADDING = 4
PAPER_AUGMENTATIONS = ("auto", "crop", "resized_crop", "none")
# torchvision's RandomResizedCrop defaults plus a horizontal flip; no colour change.
_RESIZED_CROP = ViewPolicy(
    crop_scale=(0.08, 1.0), flip_p=0.5, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0
)


def paper_augmentation_for(image_size: int) -> str:
    """``crop`` for CIFAR-sized images (side <= 32), ``resized_crop`` for larger ones."""
    return "crop" if image_size <= PAPER_CROP_MAX_SIZE else "resized_crop"


def padded_random_crop(
    images: Tensor, generator: torch.Generator, padding: int = PAPER_CROP_PADDING
) -> Tensor:
    """``RandomCrop(size, padding, padding_mode="reflect")`` + ``RandomHorizontalFlip``, batched.

    ``images`` is uint8 ``N x C x H x W`` on any device; each image gets its own offset and
    flip, drawn from ``generator`` (a CPU generator gives the same crops on every device).
    Returns float32 in [0, 1], ``N x C x H x W`` in channels_last layout.
    """
    n, _, height, width = images.shape
    if not 0 <= padding < min(height, width):
        raise ValueError(
            f"padding must be in [0, {min(height, width)}) for {height}x{width} images "
            f"(reflect padding needs a border that wide), got {padding}"
        )
    device = images.device
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator).to(device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(device)
    padded = F.pad(images.float().div_(255.0), (padding,) * 4, mode="reflect")
    rows = offsets[0, :, None] + torch.arange(height, device=device)  # (N, H)
    cols = offsets[1, :, None] + torch.arange(width, device=device)  # (N, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=device)[:, None, None]
    crops = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # N x H x W x C
    return crops.permute(0, 3, 1, 2)


def random_resized_crop(images: Tensor, generator: torch.Generator) -> Tensor:
    """``RandomResizedCrop(size)`` + ``RandomHorizontalFlip`` of uint8 ``N x 3 x H x W``, batched.

    Returns float32 in [0, 1], channels_last (see :mod:`aavae.views`).
    """
    n, _, height, width = images.shape
    params = sample_view_params(n, height, width, _RESIZED_CROP, generator, images.device)
    return apply_view_params(images, params, _RESIZED_CROP)


def paper_train_views(images: Tensor, augmentation: str, generator: torch.Generator) -> Tensor:
    """The linear-eval training input: uint8 ``N x C x H x W`` -> float32 [0, 1]."""
    if augmentation == "crop":
        return padded_random_crop(images, generator)
    if augmentation == "resized_crop":
        return random_resized_crop(images, generator)
    if augmentation == "none":
        return images.float().div(255.0)
    raise ValueError(
        f"augmentation must be one of crop, resized_crop, none (or auto), got {augmentation!r}"
    )


def paper_linear_eval(
    encoder: nn.Module,
    train_images: ArrayLike,
    train_labels: ArrayLike,
    test_images: ArrayLike,
    test_labels: ArrayLike,
    mean: Sequence[float],
    std: Sequence[float],
    num_classes: int,
    class_names: Sequence[str] | None = None,
    *,
    epochs: int = 90,
    batch_size: int = 256,
    learning_rate: float | None = None,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    augmentation: str = "auto",
    seed: int = 0,
    device: str | torch.device | None = None,
    autocast_bf16: bool | None = None,
) -> ClassifierResult:
    """The paper's linear evaluation (its ``src/linear_eval.py``) on uint8 ``N x H x W x C`` images.

    A linear layer on the frozen ``encoder`` (eval mode, no gradient: batch-norm statistics
    stay as pretrained) is trained with SGD, Nesterov momentum 0.9, no weight decay and
    learning rate ``0.1 * batch_size / 256`` decayed to zero by a per-step cosine, for
    ``epochs`` passes over the training images in shuffled full batches (the remainder is
    dropped each epoch, as the paper's loader does, unless there is less than one batch).
    Each batch is augmented on ``device``: ``crop`` = reflect-padded (4) random crop + flip
    (CIFAR-10), ``resized_crop`` = random resized crop + flip (STL-10); ``auto`` picks by the
    image side (<= 32: crop). Test images are scored un-augmented. (The paper's STL-10
    script resizes test images to 1.1x and centre-crops them back; that zoom is left out.)

    One fix to the paper's script: its learning rate ``0.1 * int(batch_size / 256)`` is zero
    for batches under 256; here the ratio is not truncated. ``learning_rate`` overrides it.
    ``chosen`` records the settings and the mean training loss of every epoch.
    """
    _check_classes(num_classes, class_names)
    for name, images in (("train_images", train_images), ("test_images", test_images)):
        _check_image_argument(images, name)
    mean_t, std_t = _channel_stats(mean, std, channels=train_images.shape[3])
    _check_paper_options(epochs, batch_size, learning_rate, momentum, weight_decay, augmentation)
    dev = _default_device(device)
    ytr = _labels(train_labels, "train_labels", len(train_images), "train_images", num_classes, dev)
    yte = _labels(test_labels, "test_labels", len(test_images), "test_images", num_classes, dev)
    if autocast_bf16 is None:
        autocast_bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()
    lr = 0.1 * batch_size / 256 if learning_rate is None else float(learning_rate)
    if augmentation == "auto":
        augmentation = paper_augmentation_for(min(train_images.shape[1:3]))

    home, was_training = _module_device(encoder), encoder.training
    encoder.to(dev).eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            images = _as_uint8_batch(train_images, 0, len(train_images)).to(dev)
            normalise = _Normaliser(mean_t.to(dev).view(1, -1, 1, 1), std_t.to(dev).view(1, -1, 1, 1))

            def features(views: Tensor) -> Tensor:
                with torch.no_grad(), torch.autocast(dev.type, torch.bfloat16, enabled=autocast_bf16):
                    out = encoder(normalise(views))
                return _as_feature_tensor(out, len(views)).float()

            probe_input = images[:2].permute(0, 3, 1, 2).float().div(255.0)
            layer = _seeded_linear(features(probe_input).shape[1], num_classes, seed).to(dev)
            losses = _train_linear_layer(
                layer, features, images, ytr, epochs, batch_size, lr, momentum, weight_decay,
                augmentation, seed,
            )
        test_features = extract_features(
            encoder, test_images, mean, std, batch_size=max(batch_size, 256), device=dev,
            autocast_bf16=autocast_bf16,
        )
    finally:
        encoder.to(home).train(was_training)
    with torch.inference_mode():
        logits = layer(torch.from_numpy(test_features).to(dev))
        probabilities = torch.softmax(logits, dim=1)
    chosen = {
        "protocol": "paper", "epochs": epochs, "batch_size": batch_size, "learning_rate": lr,
        "momentum": momentum, "nesterov": momentum > 0, "weight_decay": weight_decay,
        "augmentation": augmentation, "train_loss": losses,
    }
    return _result(probabilities, yte, _class_name_list(num_classes, class_names), chosen)


def _check_image_argument(images: ArrayLike, name: str) -> None:
    try:
        _check_images(images)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{name}: {error}") from None


def _check_paper_options(epochs, batch_size, learning_rate, momentum, weight_decay, augmentation):
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if learning_rate is not None and not learning_rate > 0:
        raise ValueError(
            f"learning_rate must be positive (or None: 0.1 * batch_size / 256), got {learning_rate}"
        )
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be non-negative, got {weight_decay}")
    if augmentation not in PAPER_AUGMENTATIONS:
        raise ValueError(
            f"augmentation must be one of {', '.join(PAPER_AUGMENTATIONS)}, got {augmentation!r}"
        )


@dataclass(frozen=True)
class _Normaliser:
    mean: Tensor
    std: Tensor

    def __call__(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def _as_feature_tensor(out: object, batch_len: int) -> Tensor:
    if not isinstance(out, Tensor) or out.shape[0] != batch_len:
        _flat_features(out, batch_len)  # raises the explanatory error
    return out.reshape(batch_len, -1)


def _seeded_linear(in_features: int, num_classes: int, seed: int) -> nn.Linear:
    """PyTorch's default initialisation, drawn from ``seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Linear(in_features, num_classes)


def _train_linear_layer(
    layer: nn.Linear, features, images: Tensor, labels: Tensor, epochs: int, batch_size: int,
    lr: float, momentum: float, weight_decay: float, augmentation: str, seed: int,
) -> list[float]:
    """SGD on ``layer`` over augmented batches; returns the mean loss of every epoch."""
    n = len(images)
    steps_per_epoch = max(1, n // batch_size)
    total_steps = epochs * steps_per_epoch
    optimizer = torch.optim.SGD(
        layer.parameters(), lr=lr, momentum=momentum, nesterov=momentum > 0,
        weight_decay=weight_decay,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
    )
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    layer.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator).to(images.device)
        epoch_loss = torch.zeros((), device=images.device)
        for step in range(steps_per_epoch):
            index = order[step * batch_size : (step + 1) * batch_size]
            views = paper_train_views(images[index].permute(0, 3, 1, 2), augmentation, generator)
            loss = F.cross_entropy(layer(features(views)), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            epoch_loss += loss.detach()
        losses.append(float(epoch_loss) / steps_per_epoch)  # one device sync per epoch
        if (epoch + 1) % max(1, epochs // 10) == 0 or epoch + 1 == epochs:
            logger.info("paper linear eval: epoch %d/%d, train loss %.4f", epoch + 1, epochs, losses[-1])
    layer.eval()
    return losses


# --------------------------------------------------------------------------- models to evaluate

BUNDLE_KEYS = ("state_dict", "spec", "normalization")


def model_from_bundle(bundle: Mapping[str, Any], source: str = "the model bundle") -> AAVAENet:
    """Rebuild the network of a model bundle (what pretrain writes) in eval mode."""
    if not isinstance(bundle, Mapping) or any(key not in bundle for key in BUNDLE_KEYS):
        found = sorted(bundle) if isinstance(bundle, Mapping) else type(bundle).__name__
        raise ValueError(
            f"{source} is not a model bundle: expected a dict with {', '.join(BUNDLE_KEYS)}, "
            f"found {found}"
        )
    try:
        net = build_model(ModelSpec.from_dict(bundle["spec"]))
        net.load_state_dict(bundle["state_dict"])
    except (ValueError, RuntimeError, TypeError) as error:
        raise ValueError(f"{source} cannot be rebuilt: {error}") from error
    return net.eval()


def bundle_from_checkpoint(
    path: str | os.PathLike,
    spec: ModelSpec,
    train_images: ArrayLike,
    class_names: Sequence[str],
) -> dict[str, Any]:
    """A model bundle, in the format pretrain writes, for a checkpoint file given by path.

    ``path`` holds either a bundle of this project (``aavae_model.pt``; its own spec and
    normalisation are used) or a checkpoint of the paper's code (a Lightning ``.ckpt`` or a
    bare state_dict), read with :func:`aavae.models.load_paper_checkpoint` into ``spec``; the
    normalisation is then the channel mean/std of ``train_images``. ``class_names`` are the
    classes it is evaluated on. Files load with ``weights_only=True``: never runs their code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (or is not a file)")
    content = _load_tensors_only(path)
    if isinstance(content, Mapping) and all(key in content for key in BUNDLE_KEYS):
        net = model_from_bundle(content, source=f"model bundle {path}")
        bundle = dict(content)
        bundle["state_dict"] = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    else:
        net = load_paper_checkpoint(path, spec)
        mean, std = channel_stats(np.asarray(train_images))
        epoch = content.get("epoch") if isinstance(content, Mapping) else None
        bundle = {
            "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "spec": spec.to_dict(),
            "normalization": {"mean": list(mean), "std": list(std)},
            "dataset": None,
            "objective": "paper checkpoint",
            "epochs": int(epoch) + 1 if isinstance(epoch, int) else None,
            "num_parameters": sum(p.numel() for p in net.parameters()),
            "mlflow_run_id": None,
        }
    bundle["class_names"] = [str(name) for name in class_names]
    bundle["checkpoint"] = str(path)
    return bundle


def _load_tensors_only(path: Path) -> object:
    """The file's content, or None when ``weights_only`` loading refuses it (the paper loader
    then explains why)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - load_paper_checkpoint reports the precise reason
        return None


def baseline_encoder(name: str, spec: ModelSpec, seed: int) -> nn.Module:
    """The encoder of a baseline: ``random_init`` (the architecture, untrained, drawn from
    ``seed``) or ``raw_pixels`` (the normalised pixels themselves)."""
    if name == "random_init":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model(spec).encoder.eval()
    if name == "raw_pixels":
        return nn.Flatten()
    raise ValueError(f"unknown baseline {name!r}; known: random_init, raw_pixels")


# --------------------------------------------------------------------------- 2-D embedding

EMBEDDING_METHODS = ("tsne", "pca")


def embed_2d(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    method: str = "tsne",
    max_points: int = 2000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 2-D map of feature rows: ``(coordinates (M, 2), labels (M,), row indices (M,))``.

    At most ``max_points`` rows are used (a seeded random subset, in row order). ``tsne``
    first reduces to 50 dimensions with PCA (the usual denoising step), then runs
    scikit-learn's t-SNE with PCA initialisation; ``pca`` keeps the first two components.
    """
    if method not in EMBEDDING_METHODS:
        raise ValueError(f"method must be one of {', '.join(EMBEDDING_METHODS)}, got {method!r}")
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    x = _features(features, "features", torch.device("cpu")).numpy().astype(np.float64)
    y = np.asarray(labels)
    if y.shape != (len(x),):
        raise ValueError(f"labels must be 1-D with one label per feature row ({len(x)}), got {y.shape}")
    if len(x) < 2:
        raise ValueError("features needs at least two rows to embed")
    rows = np.arange(len(x))
    if len(x) > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(len(x), max_points, replace=False))
    x, y = x[rows], y[rows]

    from sklearn.decomposition import PCA  # scikit-learn is only needed for this map

    components = min(50 if method == "tsne" else 2, x.shape[1], len(x))
    reduced = PCA(n_components=components, random_state=seed).fit_transform(x)
    if method == "tsne" and len(x) > 4:
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (len(x) - 1) / 3)
        reduced = TSNE(
            n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
            random_state=seed,
        ).fit_transform(reduced)
    coords = np.zeros((len(x), 2), np.float32)
    coords[:, : min(2, reduced.shape[1])] = reduced[:, :2]
    return coords, y, rows
