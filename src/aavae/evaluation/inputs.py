"""Checks of the feature matrices, labels and class lists the classifiers are given.

Each check names the argument, what was expected and what was found, so a shape or label
mistake in a notebook is explained where it enters rather than deep inside a solver.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from aavae.common.hardware import choose_device
from aavae.evaluation.features import ArrayLike


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
