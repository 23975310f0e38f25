"""scikit-learn's bundled handwritten digits (1,797 grey 8 x 8 images): real data that ships
with the install, scaled to 0-255, resized and repeated over three channels (RGB like the
other datasets), split stratified by the seed."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from aavae.data.imageset import ImageSet

SOURCE = "sklearn.datasets.load_digits"


def read_digits(image_size: int = 16, test_fraction: float = 0.25, seed: int = 0) -> dict[str, ImageSet]:
    """Return ``{"train": ImageSet, "test": ImageSet}`` of the digits at ``image_size``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    gray = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]  # N x 1 x 8 x 8
    if image_size != gray.shape[-1]:
        gray = F.interpolate(gray, size=(image_size, image_size), mode="bilinear", align_corners=False)
    pixels = (gray.clamp(0, 1) * 255).round().to(torch.uint8)
    images = pixels.permute(0, 2, 3, 1).repeat(1, 1, 1, 3).numpy()
    labels = digits.target.astype(np.int64)
    class_names = tuple(str(name) for name in digits.target_names)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels
    )
    return {
        split: ImageSet(np.ascontiguousarray(images[idx]), labels[idx], class_names, split)
        for split, idx in (("train", np.sort(train_idx)), ("test", np.sort(test_idx)))
    }
