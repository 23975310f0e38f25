"""A small pretraining module (or a bare TrainStep) on digits, and weight comparisons, shared by
the training tests."""

from __future__ import annotations

import torch

from aavae.config import PretrainConfig
from aavae.data.digits import read_digits
from aavae.models import ModelSpec, build_model
from aavae.objective import Objective
from aavae.training import PretrainModule, TrainingImages, ValidationViews
from aavae.training.data import epoch_order
from aavae.training.optim import build_optimizer
from aavae.training.step import StepSettings, TrainStep
from aavae.views import Preprocessing, ViewPolicy, channel_tensors


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
                          preprocessing=Preprocessing([0.3] * 3, [0.4] * 3), num_classes=10)


def small_step(objective: Objective, images: int = 256, batch: int = 128, probe: bool = True,
               warmup_steps: int = 2, autocast_dtype: torch.dtype | None = None) -> TrainStep:
    """A TrainStep over the first ``images`` digits in batches of ``batch``, as the module
    builds it, without a Trainer; its first epoch is started."""
    digits = read_digits(image_size=16)["train"]
    torch.manual_seed(0)
    net = build_model(ModelSpec(width=4, latent_dim=8, input_size=16, head="ae" if objective.kind == "ae" else "vae"))
    linear = torch.nn.Linear(net.encoder.out_dim, 10) if probe else None
    trained = torch.nn.ModuleList([net, linear]) if linear is not None else net
    optimizer = build_optimizer(trained, "adam", 1e-3, 0.0, False, capturable=False)
    settings = StepSettings(objective, ViewPolicy(), encode_original="every_step", online_probe=probe,
                            autocast_dtype=autocast_dtype)
    mean, std = channel_tensors([0.3] * 3, [0.4] * 3, "cpu")
    step = TrainStep(net, linear, optimizer, settings, torch.from_numpy(digits.images[:images]),
                     torch.from_numpy(digits.labels[:images]).long(), mean, std, (images // batch, batch),
                     torch.Generator().manual_seed(0), warmup_steps=warmup_steps, total_steps=10)
    step.start_epoch(epoch_order(images, batch, seed=0, epoch=0), 0, 0)
    return step


def weights_of(module: PretrainModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_weights(expected: dict, got: dict, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=rtol, atol=atol, msg=key)
