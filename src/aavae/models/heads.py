"""The projection head that turns encoder features into a Gaussian posterior q(z | x)."""

from __future__ import annotations

from torch import Tensor, nn


class ProjectionHead(nn.Module):
    """Linear -> BatchNorm -> ReLU, then separate bias-free Linear maps to mu and log-variance.

    Names (``first_layer``, ``mu``, ``logvar``) follow the paper's ``ProjectionHeadVAE``.
    """

    def __init__(self, input_dim: int, hidden_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.first_layer = nn.Sequential(
            nn.Linear(input_dim, hidden_dim, bias=True),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
        )
        self.mu = nn.Linear(hidden_dim, latent_dim, bias=False)
        self.logvar = nn.Linear(hidden_dim, latent_dim, bias=False)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.first_layer(features)
        return self.mu(hidden), self.logvar(hidden)
