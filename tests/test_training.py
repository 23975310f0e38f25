"""The pretraining engine: learning-rate schedule, optimizers, and exact resume."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from aavae.config import PretrainConfig
from aavae.data.digits import read_digits
from aavae.models import ModelSpec, build_model
from aavae.objective import Objective
from aavae.training import (
    Lamb,
    PretrainModule,
    TrainingImages,
    ValidationViews,
    build_trainer,
    fit,
    parameter_groups,
    warmup_then_decay,
)
from aavae.views import ViewPolicy


def test_warmup_then_cosine():
    factor = warmup_then_decay(warmup_steps=10, total_steps=110, schedule="cosine")
    assert factor(0) == pytest.approx(0.1)
    assert factor(9) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.5)
    assert factor(110) == pytest.approx(0.0)
    linear = warmup_then_decay(0, 100, "linear")
    assert linear(50) == pytest.approx(0.5)
    assert warmup_then_decay(5, 100, "constant")(80) == 1.0


def test_exclude_bn_bias_from_weight_decay():
    net = build_model(ModelSpec(width=4, latent_dim=8, input_size=16))
    decayed, excluded = parameter_groups(net, 0.1, exclude_bn_bias=True)
    assert all(p.ndim > 1 for p in decayed["params"])
    assert excluded["weight_decay"] == 0.0
    assert any(p.ndim == 1 for p in excluded["params"])
    assert len(decayed["params"]) + len(excluded["params"]) == sum(1 for p in net.parameters() if p.requires_grad)


def test_lamb_reduces_a_quadratic():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(8, 8))
    optimizer = Lamb([weight], lr=0.05)
    start = weight.square().sum().item()
    for _ in range(50):
        optimizer.zero_grad()
        weight.square().sum().backward()
        optimizer.step()
    assert weight.square().sum().item() < 0.5 * start


class CountSteps(pl.Callback):
    def __init__(self) -> None:
        self.steps = 0

    def on_train_batch_end(self, *args, **kwargs) -> None:
        self.steps += 1


def _module(max_epochs: int) -> PretrainModule:
    digits = read_digits(image_size=16)
    train, test = digits["train"], digits["test"]
    torch.manual_seed(0)
    net = build_model(ModelSpec(width=4, latent_dim=8, input_size=16))
    config = PretrainConfig(max_epochs=max_epochs, batch_size=128, precision="32-true",
                            accelerator="cpu", warmup_epochs=1, diagnostics_every_n_steps=3)
    val = ValidationViews(test.images[:64], test.images[:64], test.labels[:64])
    return PretrainModule(net, Objective("aavae", 0.0), ViewPolicy(), config,
                          TrainingImages(train.images[:256], train.labels[:256]), val,
                          mean=[0.3] * 3, std=[0.4] * 3, num_classes=10)


def _weights(module: PretrainModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_resume_equals_an_uninterrupted_run(tmp_path):
    straight = _module(max_epochs=2)
    fit(straight, build_trainer(straight.config, tmp_path / "straight"), tmp_path / "straight", resume=False)

    first = _module(max_epochs=2)
    trainer = build_trainer(first.config, tmp_path / "split")
    trainer.fit_loop.max_epochs = 1  # the "interruption": stop after one of two epochs
    fit(first, trainer, tmp_path / "split", resume=False)
    assert (tmp_path / "split" / "last.ckpt").is_file()

    resumed = _module(max_epochs=2)
    counter = CountSteps()
    trainer = build_trainer(resumed.config, tmp_path / "split", callbacks=[counter])
    epochs = fit(resumed, trainer, tmp_path / "split", resume=True)
    assert epochs == 2
    assert counter.steps == len(resumed.train_dataloader()), "only the second epoch ran again"
    expected, got = _weights(straight), _weights(resumed)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)
    # and training did change the weights
    fresh = _weights(_module(max_epochs=2))
    assert any(not torch.allclose(fresh[k].float(), got[k].float()) for k in got if got[k].is_floating_point())
