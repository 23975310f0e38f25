"""The heads from encoder features to the latent: the paper's ``ProjectionHeadVAE`` (a Gaussian
posterior) and ``ProjectionHeadAE`` (a deterministic latent), named as its code names them."""

from __future__ import annotations

from torch import Tensor, nn


class ProjectionHead(nn.Module):
    """Linear -> BatchNorm -> ReLU, then separate bias-free Linear maps to mu and log-variance."""

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


class AEProjectionHead(nn.Module):
    """Linear -> BatchNorm -> ReLU -> bias-free Linear to the latent: the paper's AE head."""

    def __init__(self, input_dim: int, hidden_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.projection_head = nn.Sequential(
            nn.Linear(input_dim, hidden_dim, bias=True),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, latent_dim, bias=False),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.projection_head(features)


HEADS: dict[str, type[nn.Module]] = {"vae": ProjectionHead, "ae": AEProjectionHead}
