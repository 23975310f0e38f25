"""Reconstructions of held-out images: the grid logged during and after pretraining."""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as pl
import numpy as np
import torch
from matplotlib.figure import Figure

from aavae.training.data import as_tensor


@torch.no_grad()
def reconstruction_grid(module, originals: np.ndarray, views: np.ndarray) -> Figure:
    """original | input view | reconstruction (AAVAE), or original | reconstruction: the decoded
    latent mean of what the network encodes (originals as the recipe presents them, its zoom
    included; views only normalised), back in pixels."""
    from aavae.reporting.plots import image_grid

    net, preprocessing, augmented = module.net, module.preprocessing, module.objective.uses_augmented_input
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    images = as_tensor(views if augmented else originals).to(device).permute(0, 3, 1, 2)
    x = preprocessing.apply_to_views(images) if augmented else preprocessing.apply(images)
    x_hat = net.decode(net.latent_mean(net.encode(x))).float()
    mean, std = (torch.tensor(v, device=device).view(1, -1, 1, 1) for v in (preprocessing.mean, preprocessing.std))
    recon = ((x_hat * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    net.train(was_training)
    if augmented:
        columns, titles = [originals, views, recon], ["original", "input view", "reconstruction"]
    else:
        columns, titles = [originals, recon], ["original", "reconstruction"]
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
