"""The paper's linear evaluation (its ``src/linear_eval.py``): SGD on a frozen encoder over augmented images.

This differs from :func:`aavae.evaluation.linear_probe` (L-BFGS on fixed features) in that
the linear layer sees a new augmented view of every training image in every epoch, batched
on the device: CIFAR-10 a reflect-padded random crop + flip, STL-10 a random resized crop +
flip, as the script's ``train_transforms`` say.

The script as released does not apply its STL-10 ``train_transforms``: it trains the probe
on ``dm.train_dataloader_labeled``, and that loader of its ``src/datamodules/stl10.py``
uses the *evaluation* transforms and ``shuffle=False``. So STL-10's probe was trained on
un-augmented, zoomed images (``Resize(105)`` + ``CenterCrop(96)``, a fixed 1.09x centre
zoom), in the same order every epoch. This project follows the script's intent instead:
``RandomResizedCrop`` + flip, reshuffled every epoch; test images are scored un-augmented.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aavae.common.batches import batch_shape
from aavae.common.progress import Progress
from aavae.evaluation.features import (
    ArrayLike,
    _as_uint8_batch,
    _channel_stats,
    _check_classes,
    _check_images,
    _class_name_list,
    _default_device,
    _flat_features,
    _labels,
    _module_device,
    extract_features,
)
from aavae.evaluation.scoring import ClassifierResult, _result
from aavae.views import ViewPolicy, apply_view_params, normalize, sample_view_params

logger = logging.getLogger(__name__)

# torchvision's RandomResizedCrop defaults plus a horizontal flip; no colour change.
_RESIZED_CROP = ViewPolicy(
    crop_scale=(0.08, 1.0), flip_p=0.5, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0
)


def paper_augmentation_for(image_size: int) -> str:
    """``crop`` for CIFAR-sized images (side <= 32), ``resized_crop`` for larger ones."""
    return "crop" if image_size <= 32 else "resized_crop"


def padded_random_crop(
    images: Tensor, generator: torch.Generator, padding: int = 4
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


def paper_train_views(images: Tensor, augmentation: str, generator: torch.Generator) -> Tensor:
    """The linear-eval training input: uint8 ``N x C x H x W`` -> float32 [0, 1] (channels_last
    but for ``none``); ``resized_crop`` is ``RandomResizedCrop(size)`` + ``RandomHorizontalFlip``."""
    if augmentation == "crop":
        return padded_random_crop(images, generator)
    if augmentation == "resized_crop":
        params = sample_view_params(len(images), *images.shape[2:], _RESIZED_CROP, generator, images.device)
        return apply_view_params(images, params, _RESIZED_CROP)
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
    original_resize: int | None = None,
    drop_last_test: bool = True,
) -> ClassifierResult:
    """The paper's linear evaluation (its ``src/linear_eval.py``) on uint8 ``N x H x W x C`` images.

    A linear layer on the frozen ``encoder`` (eval mode, no gradient: batch-norm statistics
    stay as pretrained) is trained with SGD, Nesterov momentum 0.9, no weight decay and
    learning rate ``0.1 * batch_size / 256`` decayed to zero by a per-step cosine, for
    ``epochs`` passes over the training images in shuffled full batches (the remainder is
    dropped each epoch, as the paper's loader does, unless there is less than one batch).
    Each batch is augmented on ``device``: ``crop`` = reflect-padded (4) random crop + flip
    (CIFAR-10), ``resized_crop`` = random resized crop + flip (STL-10); ``auto`` picks by the
    image side (<= 32: crop). Test images are scored un-augmented, zoomed as the recipe's
    originals when ``original_resize`` is given (the paper's STL-10: ``Resize(105)`` +
    ``CenterCrop(96)``; the module docstring says why its training images are not).

    The score is the paper's: its test loader (``drop_last=True``, unshuffled) scores full
    batches only, the first ``n - n % batch_size`` test images (CIFAR-10: 9,984 of 10,000;
    STL-10: 7,936 of 8,000), which ``drop_last_test`` (default) keeps; ``False`` scores all.

    One fix to the paper's script: its learning rate ``0.1 * int(batch_size / 256)`` is zero
    for batches under 256; here the ratio is not truncated. ``learning_rate`` overrides it.
    ``chosen`` records the settings, how many test images were scored and the mean training
    loss of every epoch.
    """
    _check_classes(num_classes, class_names)
    for name, images in (("train_images", train_images), ("test_images", test_images)):
        _check_images(images, name)
    mean_t, std_t = _channel_stats(mean, std, channels=train_images.shape[3])
    _check_paper_options(epochs, batch_size, learning_rate, momentum)
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
            mean_t, std_t = mean_t.to(dev), std_t.to(dev)

            def features(views: Tensor) -> Tensor:
                with torch.no_grad(), torch.autocast(dev.type, torch.bfloat16, enabled=autocast_bf16):
                    return _flat_features(encoder(normalize(views, mean_t, std_t)), len(views)).float()

            width = features(images[:2].permute(0, 3, 1, 2).float().div(255.0)).shape[1]
            with torch.random.fork_rng(devices=[]):  # PyTorch's initialisation, drawn from seed alone
                torch.manual_seed(seed)
                layer = nn.Linear(width, num_classes).to(dev)
            steps = epochs * batch_shape(len(images), batch_size)[0]
            with Progress("paper linear eval", steps, "steps") as shown:
                losses = _train_linear_layer(
                    layer, features, images, ytr, epochs, batch_size, lr, momentum, weight_decay,
                    augmentation, seed, shown,
                )
        test_features = extract_features(
            encoder, test_images, mean, std, batch_size=max(batch_size, 256), device=dev,
            autocast_bf16=autocast_bf16, original_resize=original_resize,
        )
    finally:
        encoder.to(home).train(was_training)
    scored = paper_test_count(len(test_features), batch_size) if drop_last_test else len(test_features)
    with torch.inference_mode():
        probabilities = torch.softmax(layer(torch.from_numpy(test_features[:scored]).to(dev)), dim=1)
    chosen = {
        "protocol": "paper", "epochs": epochs, "batch_size": batch_size, "learning_rate": lr,
        "momentum": momentum, "nesterov": momentum > 0, "weight_decay": weight_decay,
        "augmentation": augmentation, "test_images": scored, "train_loss": losses,
    }
    return _result(probabilities, yte[:scored], _class_name_list(num_classes, class_names), chosen)


def paper_test_count(count: int, batch_size: int) -> int:
    """How many of ``count`` test images the paper's loader scores: its full batches (all of
    them when there are fewer than one batch, where the paper's would score none)."""
    return math.prod(batch_shape(count, batch_size)) if count else 0


def _check_paper_options(epochs, batch_size, learning_rate, momentum):  # what torch's SGD lets through
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if learning_rate is not None and not learning_rate > 0:
        raise ValueError(
            f"learning_rate must be positive (or None: 0.1 * batch_size / 256), got {learning_rate}"
        )
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")


def _train_linear_layer(
    layer: nn.Linear, features, images: Tensor, labels: Tensor, epochs: int, batch_size: int,
    lr: float, momentum: float, weight_decay: float, augmentation: str, seed: int, shown: Progress,
) -> list[float]:
    """SGD on ``layer`` over augmented batches; returns the mean loss of every epoch."""
    n = len(images)
    steps_per_epoch, batch_size = batch_shape(n, batch_size)
    optimizer = torch.optim.SGD(
        layer.parameters(), lr=lr, momentum=momentum, nesterov=momentum > 0,
        weight_decay=weight_decay,
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
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
            shown.advance()
        losses.append(float(epoch_loss) / steps_per_epoch)  # one device sync per epoch
        shown.note(f"epoch {epoch + 1}/{epochs} done, train loss {losses[-1]:.4f}")
        if (epoch + 1) % max(1, epochs // 10) == 0 or epoch + 1 == epochs:
            logger.info("paper linear eval: epoch %d/%d, train loss %.4f", epoch + 1, epochs, losses[-1])
    layer.eval()
    return losses
