"""Frozen-encoder features of uint8 images, the checks of everything an evaluation is given, and
a 2-D map of features (PCA, t-SNE) for looking at what was learned.

:func:`extract_features` is the one place images become features for evaluation: the
features pipeline, the paper protocol's test split, the embed pipeline and the MLflow model
all call it, so they normalise and batch the same way. Each check (images, feature matrices,
labels, class lists) names the argument, what was expected and what was found, so a shape or
label mistake in a notebook is explained where it enters rather than deep inside a solver.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from aavae.common.hardware import choose_device
from aavae.common.progress import Progress
from aavae.views import normalize, original_view

ArrayLike = np.ndarray | Tensor


def extract_features(
    encoder: nn.Module,
    images: ArrayLike,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 512,
    device: str | torch.device | None = None,
    channels_last: bool = True,
    autocast_bf16: bool | None = None,
    progress: bool = True,
    original_resize: int | None = None,
) -> np.ndarray:
    """Run a frozen ``encoder`` over uint8 ``N x H x W x C`` images; return float32 ``(N, D)``.

    Pixels are scaled to ``[0, 1]`` and normalised per channel by ``mean``/``std`` (given on
    that ``[0, 1]`` scale). ``images`` may be a read-only ``np.memmap``: only one batch at a time
    is copied into memory. ``device`` defaults to where the encoder's parameters are; the
    encoder is moved there for the call and moved back, and its train/eval mode is restored.
    ``autocast_bf16=None`` uses bf16 autocast on a CUDA device that supports it, never on CPU.
    ``original_resize`` zooms each image first as the recipe's originals were (the paper's
    STL-10: Resize(105) + CenterCrop(96); a bundle's ``normalization.original_resize``).
    ``progress`` shows how many images are done (:class:`aavae.common.progress.Progress`: nothing
    for a call that ends within seconds).
    """
    _check_images(images)
    home = _module_device(encoder)
    target = torch.device(device) if device is not None else home
    mean_t, std_t = (t.to(target) for t in _channel_stats(mean, std, channels=images.shape[3]))
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if autocast_bf16 is None:
        autocast_bf16 = target.type == "cuda" and torch.cuda.is_bf16_supported()

    was_training = encoder.training
    encoder.to(target).eval()
    chunks: list[np.ndarray] = []
    try:
        with torch.inference_mode(), Progress("features", len(images), "images", enabled=progress) as bar:
            for start in range(0, len(images), batch_size):
                batch = _as_uint8_batch(images, start, start + batch_size).to(target)
                # NHWC -> NCHW as a view is exactly the channels_last layout; no copy needed.
                x = original_view(batch.permute(0, 3, 1, 2), original_resize)
                if not channels_last:
                    x = x.contiguous()
                with torch.autocast(target.type, dtype=torch.bfloat16, enabled=autocast_bf16):
                    out = encoder(normalize(x, mean_t, std_t))
                chunks.append(_flat_features(out, len(batch)).float().cpu().numpy())
                bar.advance(len(batch))
    finally:
        encoder.to(home).train(was_training)
    return np.concatenate(chunks, axis=0)


def _check_images(images: ArrayLike, name: str = "images") -> None:
    if not isinstance(images, (np.ndarray, Tensor)):
        raise TypeError(
            f"{name} must be a numpy array or torch tensor, got {type(images).__name__}"
        )
    if images.dtype not in (np.uint8, torch.uint8) or images.ndim != 4:
        raise ValueError(
            f"{name} must be uint8 N x H x W x C (channels last), got {images.dtype} "
            f"with shape {tuple(images.shape)}"
        )
    if len(images) == 0:
        raise ValueError(f"{name} is empty: there is nothing to extract features from")


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


def _flat_features(out: object, batch_len: int) -> Tensor:
    if not isinstance(out, Tensor):
        raise TypeError(
            f"the encoder must return a tensor of features, got {type(out).__name__}; "
            "wrap it so that forward returns the representation only"
        )
    if out.shape[0] != batch_len:
        raise ValueError(
            f"the encoder returned {out.shape[0]} rows for a batch of {batch_len} images"
        )
    return out.reshape(batch_len, -1)


def _default_device(device: str | torch.device | None) -> torch.device:
    return choose_device("auto") if device is None else torch.device(device)


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
    return [str(name) for name in (range(num_classes) if class_names is None else class_names)]


def embed_2d(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    method: str = "tsne",
    max_points: int = 2000,
    seed: int = 0,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 2-D map of feature rows: ``(coordinates (M, 2), labels (M,), row indices (M,))``.

    At most ``max_points`` rows are used (a seeded random subset, in row order). ``tsne``
    first reduces to 50 dimensions with PCA (the usual denoising step), then runs
    scikit-learn's t-SNE with PCA initialisation; ``pca`` keeps the first two components.
    scikit-learn reports nothing while it works, so ``progress`` shows the time elapsed
    (t-SNE of 2,000 points: tens of seconds on a small CPU).
    """
    if method not in ("tsne", "pca"):
        raise ValueError(f"method must be one of tsne, pca, got {method!r}")
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

    from sklearn.decomposition import PCA  # loaded for this map only: 0.1 s per import

    components = min(50 if method == "tsne" else 2, x.shape[1], len(x))
    name = "t-SNE" if method == "tsne" else "PCA"
    with Progress(f"{name} of {len(x):,} points", enabled=progress):
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
