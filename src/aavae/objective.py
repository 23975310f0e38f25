"""The (AA)VAE objective and its metrics, as in the paper.

loss = kl_coeff * KL(q(z | x_in) || N(0, I)) - log p(x_target | z)

with x_in the augmented image and x_target the original for AAVAE, and both the original
for the VAE. p(x | z) is a Gaussian with mean the decoder output and a (fixed or learned)
``log_scale``, which is a log-*variance* as in the paper's code (scale = exp(log_scale / 2)
+ 1e-6); the KL is analytic. The AE baseline is the paper's ``ae.py``: a deterministic latent
and the mean squared error against its own input: the original, or with ``denoising`` (its
``--denoising``) an augmented view, reconstructed as that same view (``ae.py`` computes
``F.mse_loss(x_hat, x)`` with ``x`` the view; the original only feeds its cos_sim).
Everything here is per batch and plain PyTorch: the training engine decides when to compute
which metric. The terms of one step (:func:`reconstruction_terms`, :func:`autoencoder_terms`,
:func:`original_terms`) live here too, so the compiled step and the validation pass compute
the same loss from one definition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:  # the terms take the network; the network does not need the objective
    from aavae.config import PretrainConfig
    from aavae.models import AAVAENet

OBJECTIVES = ("aavae", "vae", "ae")
STD_EPS = 1e-6  # keeps the posterior and likelihood scales away from zero, as the paper does


@dataclass(frozen=True)
class Objective:
    """Which input the encoder sees, what is reconstructed and how much the KL term weighs.

    ``denoising`` is the paper's ``ae.py --denoising`` (``ae`` only: for ``vae.py
    --denoising``, the variational model on views, use ``aavae``, with ``kl_coeff`` for a KL).
    """

    kind: str = "aavae"
    kl_coeff: float = 0.0
    denoising: bool = False

    def __post_init__(self) -> None:
        if self.kind not in OBJECTIVES:
            raise ValueError(f"objective '{self.kind}' is unknown; choose one of {OBJECTIVES}")
        if self.denoising and self.kind != "ae":
            raise ValueError(
                f"denoising is the paper's ae.py --denoising and applies to the ae objective, not "
                f"{self.kind!r}: its vae.py --denoising (views in, the original out) is aavae, "
                f"with kl_coeff for a KL term"
            )

    @classmethod
    def from_config(cls, pretrain: PretrainConfig) -> Objective:
        """The objective the ``pretrain`` parameters name (kind, KL weight, denoising)."""
        return cls(pretrain.objective, pretrain.effective_kl_coeff, pretrain.denoising)

    @property
    def head(self) -> str:
        """The model head it trains: the VAE family's posterior, or the AE's latent."""
        return "vae" if self.is_variational else "ae"

    @property
    def uses_augmented_input(self) -> bool:
        return self.kind == "aavae" or self.denoising

    @property
    def reconstructs_its_input(self) -> bool:
        """The AE's target is what it was given (a view, with denoising); the VAE family's the original."""
        return self.kind == "ae"

    @property
    def name(self) -> str:
        """How runs, bundles and registered models name it: ``ae-denoising`` apart from ``ae``."""
        return f"{self.kind}-denoising" if self.denoising else self.kind

    @property
    def is_variational(self) -> bool:
        """False for the paper's AE: a deterministic latent, no sampling, no KL term."""
        return self.kind != "ae"


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


def likelihood_scale(log_scale: Tensor) -> Tensor:
    """The Gaussian likelihood's standard deviation: ``log_scale`` is a log-variance.

    The paper's ``gaussian_likelihood`` uses ``exp(log_scale / 2) + 1e-6``; keeping its
    convention means a learned scale moves at the paper's pace and a paper checkpoint's
    ``log_scale`` means the same here.
    """
    return torch.exp(log_scale / 2) + STD_EPS


def gaussian_log_likelihood(mean: Tensor, log_scale: Tensor, target: Tensor) -> Tensor:
    """log N(target | mean, likelihood_scale(log_scale)^2) summed over C, H, W, per sample."""
    scale = likelihood_scale(log_scale.to(mean.dtype))
    diff = (target - mean) / scale
    per_pixel = -0.5 * diff.square() - torch.log(scale) - 0.5 * math.log(2 * math.pi)
    return per_pixel.flatten(1).sum(dim=1)


def mean_squared_error(reconstruction: Tensor, target: Tensor) -> Tensor:
    """The paper's AE loss: ``F.mse_loss(x_hat, x)``, averaged over every pixel and image."""
    return (reconstruction - target).square().mean()


def log_normal(z: Tensor, mu: Tensor, std: Tensor) -> Tensor:
    """log N(z | mu, std^2) summed over the last dim."""
    return (-0.5 * ((z - mu) / std).square() - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)


def bits_per_dim(log_px: Tensor, dims: int) -> Tensor:
    return -log_px / (dims * math.log(2))


# -- the loss terms of one step (the paper's VAE.step and AE.step) -----------------------------
def reconstruction_terms(
    net: AAVAENet, features: Tensor, target: Tensor, noise: Tensor, kl_coeff: float
) -> tuple[Tensor, dict[str, Tensor], tuple[Tensor, Tensor, Tensor]]:
    """The paper's VAE.step for the samples in ``noise`` (S x N x latent standard normals).

    Returns the loss, its metrics and (mu, logvar, the first sample of z).
    """
    mu, logvar = (t.float() for t in net.projection(features))
    std = posterior_std(logvar)
    kl = kl_standard_normal(mu, logvar)
    log_pxz_all, log_w = [], []
    first_z = mu
    for sample in range(noise.shape[0]):
        z = sample_posterior(mu, logvar, noise[sample])
        first_z = z if sample == 0 else first_z
        log_pxz = gaussian_log_likelihood(net.decode(z).float(), net.log_scale, target)
        log_pz = log_normal(z, torch.zeros_like(z), torch.ones_like(z))
        log_qz = log_normal(z, mu, std)
        log_pxz_all.append(log_pxz)
        log_w.append(log_pxz + log_pz - log_qz)
    log_pxz = torch.stack(log_pxz_all, dim=1)
    log_px = torch.logsumexp(torch.stack(log_w, dim=1), dim=1) - math.log(noise.shape[0])
    loss = (kl_coeff * kl - log_pxz.mean(dim=1)).mean()
    metrics = {
        "loss": loss,
        "elbo": (kl - log_pxz.mean(dim=1)).mean(),  # the negative ELBO, as the paper logs it
        "kl": kl.mean(),
        "log_pxz": log_pxz.mean(),
        "log_px": log_px.mean(),
        "bpd": bits_per_dim(log_px.mean(), target[0].numel()),
        "log_scale": net.log_scale.float().reshape(()),
    }
    return loss, metrics, (mu, logvar, first_z)


def autoencoder_terms(net: AAVAENet, features: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """The paper's AE.step: a deterministic latent, the mean squared error against ``target``,
    which is the encoder's own input (the view, with ``denoising``: ``ae.py`` reconstructs x)."""
    z = net.projection(features).float()
    loss = mean_squared_error(net.decode(z).float(), target)
    return loss, {"loss": loss, "mse": loss}, z


def original_terms(
    objective: Objective, net: AAVAENet, original_features: Tensor, latent: tuple[Tensor, ...] | Tensor,
    original_noise: Tensor,
) -> dict[str, Tensor]:
    """cos_sim between the latents of the encoder's input and of the original (the paper's
    diagnostics), and for a VAE the KL between their posteriors (kl_augmentation)."""
    if not objective.is_variational:
        z_original = net.projection(original_features).float()
        return {"cos_sim": F.cosine_similarity(z_original, latent, dim=1, eps=1e-6).mean()}
    mu, logvar, z = latent
    mu_o, logvar_o = (t.float() for t in net.projection(original_features))
    z_original = sample_posterior(mu_o, logvar_o, original_noise)
    return {
        "cos_sim": F.cosine_similarity(z_original, z, dim=1, eps=1e-6).mean(),
        "kl_augmentation": kl_gaussians(mu, logvar, mu_o, logvar_o).mean(),
    }
