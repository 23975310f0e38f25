"""The objective against closed forms and torch.distributions."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from aavae.objective import (
    Objective,
    bits_per_dim,
    gaussian_log_likelihood,
    kl_gaussians,
    kl_standard_normal,
    likelihood_scale,
    log_normal,
    mean_squared_error,
    posterior_std,
    sample_posterior,
)


@pytest.fixture
def posterior():
    torch.manual_seed(0)
    return torch.randn(5, 7), torch.randn(5, 7)


def test_kl_to_standard_normal_matches_closed_form(posterior):
    mu, logvar = posterior
    std = posterior_std(logvar)
    expected = 0.5 * (std**2 + mu**2 - 1 - 2 * torch.log(std)).sum(-1)
    torch.testing.assert_close(kl_standard_normal(mu, logvar), expected)
    reference = kl_divergence(Normal(mu, std), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(kl_standard_normal(mu, logvar), reference)


def test_kl_is_zero_only_at_the_prior():
    zeros = torch.zeros(3, 4)
    assert kl_standard_normal(zeros, zeros).abs().max() < 1e-5
    assert (kl_standard_normal(zeros + 0.5, zeros) > 0).all()


def test_kl_between_gaussians_matches_torch(posterior):
    mu_q, logvar_q = posterior
    mu_p, logvar_p = mu_q.flip(0), logvar_q.flip(1)
    reference = kl_divergence(
        Normal(mu_q, posterior_std(logvar_q)), Normal(mu_p, posterior_std(logvar_p))
    ).sum(-1)
    torch.testing.assert_close(kl_gaussians(mu_q, logvar_q, mu_p, logvar_p), reference)


@pytest.mark.parametrize("log_scale", [0.0, -1.3, 0.7])
def test_gaussian_log_likelihood_is_the_papers_with_log_scale_a_log_variance(log_scale):
    # The paper's vae.py: scale = exp(logscale / 2.) + 1e-6; Normal(mean, scale).log_prob(x)
    torch.manual_seed(1)
    mean, target = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    scale = math.exp(log_scale / 2) + 1e-6
    expected = (
        -0.5 * ((target - mean) / scale) ** 2 - math.log(scale) - 0.5 * math.log(2 * math.pi)
    ).sum(dim=(1, 2, 3))
    got = gaussian_log_likelihood(mean, torch.tensor([log_scale]), target)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got, Normal(mean, scale).log_prob(target).sum(dim=(1, 2, 3)))


def test_a_learned_log_scale_moves_the_std_at_the_papers_pace():
    # d std / d log_scale = std / 2 for a log-variance (it was std for a log-std).
    log_scale = torch.tensor([0.4], requires_grad=True)
    likelihood_scale(log_scale).sum().backward()
    assert log_scale.grad.item() == pytest.approx(math.exp(0.2) / 2)


def test_mean_squared_error_is_torchs_mse_loss():
    torch.manual_seed(2)
    reconstruction, target = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    expected = torch.nn.functional.mse_loss(reconstruction, target, reduction="mean")
    torch.testing.assert_close(mean_squared_error(reconstruction, target), expected)


def test_log_normal_and_sampling(posterior):
    mu, logvar = posterior
    std = posterior_std(logvar)
    noise = torch.randn_like(mu)
    z = sample_posterior(mu, logvar, noise)
    torch.testing.assert_close(z, mu + std * noise)
    torch.testing.assert_close(log_normal(z, mu, std), Normal(mu, std).log_prob(z).sum(-1))


def test_bits_per_dim_of_uniform_bytes():
    # A model assigning log p = -D * log(256) to D dims spends exactly 8 bits per dim.
    dims = 3 * 32 * 32
    assert bits_per_dim(torch.tensor(-dims * math.log(256)), dims).item() == pytest.approx(8.0)


def test_objectives():
    assert Objective("aavae").uses_augmented_input
    assert not Objective("vae", 0.1).uses_augmented_input
    assert not Objective("ae").uses_augmented_input, "the paper's AE reconstructs its own input"
    assert not Objective("ae").is_variational and Objective("aavae").is_variational
    with pytest.raises(ValueError, match="objective 'gan' is unknown"):
        Objective("gan")
