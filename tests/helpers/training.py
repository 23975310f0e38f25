"""A small pretraining module on 256 digits, and weight comparisons, shared by the training tests."""

from __future__ import annotations

import torch

from aavae.config import PretrainConfig
from aavae.data.digits import read_digits
from aavae.models import ModelSpec, build_model
from aavae.objective import Objective
from aavae.training import (
    PretrainModule,
    TrainingImages,
    ValidationViews,
)
from aavae.views import ViewPolicy


def small_module(max_epochs: int, objective: str = "aavae", **settings) -> PretrainModule:
    digits = read_digits(image_size=16)
    train, test = digits["train"], digits["test"]
    torch.manual_seed(0)
    net = build_model(ModelSpec(width=4, latent_dim=8, input_size=16, head="ae" if objective == "ae" else "vae"))
    options = dict(max_epochs=max_epochs, batch_size=128, precision="32-true", accelerator="cpu",
                   warmup_epochs=1, diagnostics_every_n_steps=3, compile=False)
    config = PretrainConfig(objective=objective, **(options | settings))
    val = ValidationViews(test.images[:64], test.images[:64], test.labels[:64])
    return PretrainModule(net, Objective(objective, config.effective_kl_coeff), ViewPolicy(), config,
                          TrainingImages(train.images[:256], train.labels[:256]), val,
                          mean=[0.3] * 3, std=[0.4] * 3, num_classes=10)


def weights_of(module: PretrainModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_weights(expected: dict, got: dict, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=rtol, atol=atol, msg=key)
