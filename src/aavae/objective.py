"""The (AA)VAE objective and its metrics, as in the paper.

loss = kl_coeff * KL(q(z | x_in) || N(0, I)) - log p(x_target | z)

with x_in the augmented image and x_target the original for AAVAE, and both the original
for the VAE and AE baselines. p(x | z) is a Gaussian with mean the decoder output and a
(fixed or learned) log-scale; the KL is analytic. Everything here is per batch and plain
PyTorch: the training engine decides when to compute which metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

OBJECTIVES = ("aavae", "vae", "ae")
STD_EPS = 1e-6  # keeps the posterior scale away from zero, as the paper does


@dataclass(frozen=True)
class Objective:
    """Which input the encoder sees and how much the KL term weighs."""

    kind: str = "aavae"
    kl_coeff: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in OBJECTIVES:
            raise ValueError(f"objective '{self.kind}' is unknown; choose one of {OBJECTIVES}")

    @property
    def uses_augmented_input(self) -> bool:
        return self.kind == "aavae"


def posterior_std(logvar: Tensor) -> Tensor:
    return torch.exp(logvar / 2) + STD_EPS


def sample_posterior(mu: Tensor, logvar: Tensor, noise: Tensor | None = None) -> Tensor:
    """Reparameterised z ~ q(z | x) = N(mu, std^2); ``noise`` is a standard normal draw."""
    if noise is None:
        noise = torch.randn_like(mu)
    return mu + posterior_std(logvar) * noise


def kl_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """Analytic KL(N(mu, std^2) || N(0, I)) summed over latent dims, per sample."""
    std = posterior_std(logvar)
    return (-torch.log(std) + (std.square() + mu.square()) / 2 - 0.5).sum(dim=-1)


def kl_gaussians(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """Analytic KL(q || p) between diagonal Gaussians, summed over latent dims."""
    std_q, std_p = posterior_std(logvar_q), posterior_std(logvar_p)
    ratio = (std_q / std_p).square()
    return (0.5 * (ratio + ((mu_q - mu_p) / std_p).square() - 1) - torch.log(std_q / std_p)).sum(-1)


def gaussian_log_likelihood(mean: Tensor, log_scale: Tensor, target: Tensor) -> Tensor:
    """log N(target | mean, exp(log_scale)^2) summed over C, H, W, per sample."""
    log_scale = log_scale.to(mean.dtype)
    diff = (target - mean) * torch.exp(-log_scale)
    per_pixel = -0.5 * diff.square() - log_scale - 0.5 * math.log(2 * math.pi)
    return per_pixel.flatten(1).sum(dim=1)


def log_normal(z: Tensor, mu: Tensor, std: Tensor) -> Tensor:
    """log N(z | mu, std^2) summed over the last dim."""
    return (-0.5 * ((z - mu) / std).square() - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)


def bits_per_dim(log_px: Tensor, dims: int) -> Tensor:
    return -log_px / (dims * math.log(2))
