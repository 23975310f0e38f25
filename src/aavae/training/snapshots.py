"""Reconstructions of held-out images: the grid logged during and after pretraining."""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as pl
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from aavae.models import AAVAENet
from aavae.training.data import as_tensor
from aavae.views import Preprocessing


@torch.no_grad()
def reconstruct(
    net: AAVAENet, images_nhwc: np.ndarray | Tensor, preprocessing: Preprocessing, *, originals: bool = True,
) -> np.ndarray:
    """Decode the latent mean of each image; uint8 N x H x W x C back in pixel space.

    ``originals`` are preprocessed as the recipe presents them (its zoom included); views
    (``originals=False``) are only normalised.
    """
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    images = as_tensor(images_nhwc).to(device).permute(0, 3, 1, 2)
    x = preprocessing.apply(images) if originals else preprocessing.apply_to_views(images)
    x_hat = net.decode(net.latent_mean(net.encode(x))).float()
    m = torch.tensor(preprocessing.mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(preprocessing.std, device=device).view(1, -1, 1, 1)
    pixels = ((x_hat * s + m).clamp(0, 1) * 255).round().to(torch.uint8)
    net.train(was_training)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def reconstruction_grid(module, originals: np.ndarray, views: np.ndarray) -> Figure:
    """original | input view | reconstruction (AAVAE), or original | reconstruction."""
    from aavae.reporting.plots import image_grid

    if module.objective.uses_augmented_input:
        recon = reconstruct(module.net, views, module.preprocessing, originals=False)
    else:
        recon = reconstruct(module.net, originals, module.preprocessing)
    columns = [originals, views, recon] if module.objective.uses_augmented_input else [originals, recon]
    titles = ["original", "input view", "reconstruction"] if len(columns) == 3 else ["original", "reconstruction"]
    return image_grid(columns, titles, title=f"{module.objective.kind}: reconstructions of held-out images")


class ReconstructionSnapshots(pl.Callback):
    """Every N epochs, hand a grid of original | view | reconstruction to ``publish``."""

    def __init__(self, images: np.ndarray, views: np.ndarray, every_n_epochs: int,
                 publish: Callable[[Figure, int], None]) -> None:
        self.images, self.views = images, views
        self.every_n_epochs, self.publish = every_n_epochs, publish

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if self.every_n_epochs and epoch % self.every_n_epochs == 0 and trainer.is_global_zero:
            self.publish(reconstruction_grid(module, self.images, self.views), epoch)
