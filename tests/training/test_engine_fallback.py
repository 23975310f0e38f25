"""The step falls back from a failing engine (graph -> compiled -> eager), says so once, and a
run that fell back, or was stopped while compiling, still resumes to the uninterrupted weights.

Failures are forced on the CPU: ``torch.compile`` replaced by one that raises or returns a NaN
loss, and CUDA graphs by a warm-up and capture that run the step on the CPU (the real graph
path is checked on a card by ``tests/training/test_training.py``'s CUDA test and ``gpu_check.sh``).
Every run is compared with the same run on the eager step: a failed attempt leaves no trace.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import warnings

import pytest
import torch

from aavae.config import PretrainConfig
from aavae.data.digits import read_digits
from aavae.models import ModelSpec, build_model
from aavae.objective import Objective
from aavae.training import NonFiniteLoss, PretrainModule, TrainingImages, build_trainer, fit, pacing
from aavae.training.data import epoch_order
from aavae.training.fallback import FallbackStep
from aavae.training.optim import build_optimizer
from aavae.training.step import CudaGraphed, TrainStep
from aavae.views import Preprocessing, ViewPolicy
from tests.helpers.training import assert_same_weights, weights_of

pytestmark = pytest.mark.slow  # every test here starts processes or real kedro runs

FALLBACK_LOG = "aavae.training.fallback"
STEPS = 4  # 2 epochs of 2 steps


def _module(device_kind: str = "cpu", **settings) -> PretrainModule:
    digits = read_digits(image_size=16)["train"]
    torch.manual_seed(0)
    net = build_model(ModelSpec(width=4, latent_dim=8, input_size=16))
    # channels_last off: these tests are about engines, and PyTorch 2.14's CPU backward in
    # channels_last corrupts the heap on some CPUs (aavae.training.layout).
    options = dict(max_epochs=2, batch_size=128, precision="32-true", accelerator="cpu", warmup_epochs=1,
                   diagnostics_every_n_steps=3, compile=False, channels_last=False)
    config = PretrainConfig(objective="aavae", **(options | settings))
    return PretrainModule(net, Objective("aavae", 0.0), ViewPolicy(), config,
                          TrainingImages(digits.images[:256], digits.labels[:256]), None,
                          preprocessing=Preprocessing([0.3] * 3, [0.4] * 3), num_classes=10, device_kind=device_kind)


def _train(module: PretrainModule, folder, resume: bool = False, callbacks=()) -> PretrainModule:
    fit(module, build_trainer(module.config, folder, has_validation=False, callbacks=callbacks), folder,
        resume=resume)
    return module


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == FALLBACK_LOG and r.levelno >= logging.WARNING]


@pytest.fixture(scope="module")
def eager_weights(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The weights after the run on the eager step: what every fallen-back run must reach."""
    module = _train(_module(), tmp_path_factory.mktemp("eager"))
    assert module.engine == "eager" and module.global_step == STEPS
    return weights_of(module)


# -- ways to break the fast engines on a CPU ---------------------------------------------------


def compile_that_raises_at_once(monkeypatch) -> None:
    def refuse(fn, **kwargs):
        raise RuntimeError("Dynamo is not supported on this Python (forced by the test)")

    monkeypatch.setattr(torch, "compile", refuse)


def compile_that_fails_in_its_first_step(monkeypatch, error: BaseException | None = None) -> None:
    """Compiles lazily, as torch.compile does, and fails on the first call: after the forward
    ran, so batch-norm statistics moved and the step had drawn its views and noise."""

    def lazy(fn, **kwargs):
        def first_call(*args):
            fn(*args)
            raise error or RuntimeError("InductorError: C++ compile error (forced by the test)")
        return first_call

    monkeypatch.setattr(torch, "compile", lazy)


def compile_that_works(monkeypatch) -> None:
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)


def compile_with_a_non_finite_loss(monkeypatch) -> None:
    def miscompiled(fn, **kwargs):
        def nan_loss(*args):
            loss, metrics = fn(*args)
            return loss * float("nan"), metrics
        return nan_loss

    monkeypatch.setattr(torch, "compile", miscompiled)


class PoisonedReplay:
    """A 'graph' whose replay runs the step with a NaN decoder output: a replay gone wrong."""

    def __init__(self, step) -> None:
        self.step = step

    def replay(self) -> None:
        hook = self.step.net.decoder.register_forward_hook(lambda module, inputs, output: output * float("nan"))
        try:
            self.step()
        finally:
            hook.remove()


def graphs_on_the_cpu(monkeypatch, capture) -> None:
    monkeypatch.setattr(CudaGraphed, "_warm_up", lambda self: self.step())
    monkeypatch.setattr(CudaGraphed, "_capture", capture)


def capture_that_raises(self):
    raise RuntimeError("CUDA error: operation not permitted when stream is capturing (forced by the test)")


# -- falling back ------------------------------------------------------------------------------


def test_a_compiler_that_refuses_at_once_falls_back_to_eager_saying_so_once(tmp_path, monkeypatch, caplog,
                                                                            eager_weights):
    compile_that_raises_at_once(monkeypatch)
    module = _train(_module(compile=True), tmp_path)
    assert module.engine == "eager"
    assert module.engine_failures == ["torch.compile: RuntimeError: Dynamo is not supported on this Python "
                                      "(forced by the test)"]
    (warning,) = _warnings(caplog)
    assert "torch.compile failed (RuntimeError: Dynamo is not supported" in warning
    assert "engine=eager" in warning
    assert_same_weights(eager_weights, weights_of(module), rtol=1e-5, atol=1e-6)


def test_a_compile_failing_in_its_first_step_leaves_no_trace_and_the_run_resumes_exactly(tmp_path, monkeypatch,
                                                                                         caplog, eager_weights):
    compile_that_fails_in_its_first_step(monkeypatch)
    straight = _train(_module(compile=True), tmp_path / "straight")
    assert straight.engine == "eager"
    assert _warnings(caplog) == [
        "The compiled step (torch.compile) failed (RuntimeError: InductorError: C++ compile error (forced by "
        "the test)); training goes on with the eager step, slower but the same computation (the run records "
        "engine=eager)."]
    assert_same_weights(eager_weights, weights_of(straight), rtol=1e-5, atol=1e-6)

    # Stopped after the first epoch, then resumed: it falls back again and ends where the others did.
    first = _module(compile=True)
    trainer = build_trainer(first.config, tmp_path / "split", has_validation=False)
    trainer.fit_loop.max_epochs = 1
    fit(first, trainer, tmp_path / "split", resume=False)
    resumed = _train(_module(compile=True), tmp_path / "split", resume=True)
    assert resumed.engine == "eager" and resumed.global_step == STEPS
    assert_same_weights(eager_weights, weights_of(resumed), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("compiled", "engine_left"), [(False, "eager"), (True, "compiled")])
def test_a_capture_that_raises_falls_back_to_the_next_engine_down(tmp_path, monkeypatch, caplog, eager_weights,
                                                                  compiled: bool, engine_left: str):
    compile_that_works(monkeypatch)
    graphs_on_the_cpu(monkeypatch, capture_that_raises)
    module = _module(device_kind="cuda", compile=compiled)
    assert module.engine == "cuda_graph"
    _train(module, tmp_path)
    assert module.engine == engine_left
    (warning,) = _warnings(caplog)
    assert warning.startswith("The CUDA graph failed (RuntimeError: CUDA error: operation not permitted")
    assert f"engine={engine_left}" in warning
    assert_same_weights(eager_weights, weights_of(module), rtol=1e-5, atol=1e-6)


def test_a_replay_with_a_non_finite_loss_falls_back_where_the_eager_step_is_finite(tmp_path, monkeypatch, caplog,
                                                                                  eager_weights):
    graphs_on_the_cpu(monkeypatch, lambda self: PoisonedReplay(self.step))
    module = _train(_module(device_kind="cuda"), tmp_path)
    assert module.engine == "eager"
    (warning,) = _warnings(caplog)
    # Three eager warm-up steps (0-2), then the capture, replayed at step 3.
    assert warning.startswith("The CUDA graph gave a non-finite loss at step 3 where the eager step gives a "
                              "finite one")
    assert_same_weights(eager_weights, weights_of(module), rtol=1e-5, atol=1e-6)


def test_a_compiled_step_with_a_non_finite_loss_falls_back_to_eager(tmp_path, monkeypatch, caplog, eager_weights):
    compile_with_a_non_finite_loss(monkeypatch)
    module = _train(_module(compile=True), tmp_path)
    assert module.engine == "eager"
    (warning,) = _warnings(caplog)
    assert warning.startswith("The compiled step (torch.compile) gave a non-finite loss at step 0")
    assert_same_weights(eager_weights, weights_of(module), rtol=1e-5, atol=1e-6)


def test_a_loss_that_is_not_finite_on_every_engine_is_reported_as_divergence_not_blamed_on_the_engine(
        tmp_path, monkeypatch, caplog):
    compile_that_works(monkeypatch)
    module = _module(compile=True)
    module.net.decoder.register_forward_hook(lambda _module, _inputs, output: output * float("nan"))
    with pytest.raises(NonFiniteLoss, match="step 0"):
        _train(module, tmp_path)
    (warning,) = _warnings(caplog)
    assert "is not finite with the eager step either: the training itself diverged" in warning


def test_a_compiler_error_inside_a_graph_turns_off_the_compiling_and_keeps_the_graph(monkeypatch, caplog):
    from torch._dynamo.exc import TorchDynamoException

    compile_that_fails_in_its_first_step(monkeypatch, TorchDynamoException("backend failed (forced by the test)"))
    graphs_on_the_cpu(monkeypatch, lambda self: _CpuGraph(self.step))
    module = _module(device_kind="cuda", compile=True)
    step = _fresh_step(module)
    runner = FallbackStep(step, compiled=True, graph=True)
    for _ in range(5):
        runner()
        step.position.zero_()
    assert (runner.engine, runner.compiled, runner.graph) == ("cuda_graph", False, True)
    (warning,) = _warnings(caplog)
    assert "compiled step (torch.compile) failed (TorchDynamoException" in warning
    assert "training goes on with the eager step, replayed as a CUDA graph" in warning


class _CpuGraph:
    def __init__(self, step) -> None:
        self.step = step

    def replay(self) -> None:
        self.step()


def _fresh_step(module: PretrainModule):
    """The module's TrainStep, built as fit would, without a Trainer."""
    from aavae.views import channel_tensors

    modules = torch.nn.ModuleList([module.net, module.online_probe])
    optimizer = build_optimizer(modules, "adam", 1e-3, 0.0, False, capturable=False)
    mean, std = channel_tensors(module.preprocessing.mean, module.preprocessing.std, "cpu")
    images = torch.from_numpy(module._train_source)
    labels = torch.from_numpy(module._train_labels_host)
    step = TrainStep(module.net, module.online_probe, optimizer, module.settings, images, labels, mean, std,
                     module.batches, torch.Generator().manual_seed(0), warmup_steps=2, total_steps=10)
    step.start_epoch(epoch_order(256, 128, seed=0, epoch=0), 0, 0)
    return step


# -- interrupted while compiling -----------------------------------------------------------------


def _compile_at_step_3(monkeypatch) -> None:
    """compile=auto decides after the first steps (here at step 3, in the middle of the second
    epoch) and compiles whatever the timing says."""
    monkeypatch.setattr(pacing, "COMPILE_DECISION_STEPS", 2)
    monkeypatch.setattr(pacing, "AUTO_COMPILE_MINUTES", -1.0)


@pytest.mark.parametrize("how", ["ctrl_c", "sigterm"])
def test_an_interruption_while_compiling_stops_at_once_and_the_resume_equals_the_uninterrupted_run(
        tmp_path, monkeypatch, caplog, eager_weights, how: str):
    _compile_at_step_3(monkeypatch)

    def compiling_for_minutes(fn, **kwargs):
        def first_call(*args):
            fn(*args)  # the step has drawn its views and noise, and batch norm moved
            if how == "ctrl_c":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(120)  # what compiling looks like from here: minutes in native code and workers
        return first_call

    monkeypatch.setattr(torch, "compile", compiling_for_minutes)
    module = _module(compile="auto")
    started = time.monotonic()
    with pytest.raises(SystemExit) as stopped:
        _train(module, tmp_path)
    assert time.monotonic() - started < 60, "stopped at once, not after the compile"
    assert stopped.value.code == (143 if how == "sigterm" else 130), "the shell's status of the signal"
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 3, "the checkpoint of the last finished step"

    monkeypatch.undo()
    caplog.clear()
    # The filters in force (not pytest's recwarn, which shows every warning): what a run prints.
    with caplog.at_level(logging.INFO, logger="aavae.training.engine"), \
            warnings.catch_warnings(record=True) as shown:
        resumed = _train(_module(), tmp_path, resume=True)
    assert resumed.global_step == STEPS
    assert_same_weights(eager_weights, weights_of(resumed), rtol=1e-5, atol=1e-6)
    assert ("Resuming in the middle of epoch 2, after 1 of its 2 steps: the batches, views, noise and learning "
            "rate go on exactly as in the uninterrupted run") in caplog.text
    assert not [w for w in shown if "unreliable results" in str(w.message)], "Lightning's warning is replaced"


def test_lightnings_mid_epoch_warning_is_filtered_and_its_neighbours_are_not():
    from lightning.pytorch.utilities.warnings import PossibleUserWarning

    from aavae.training.engine import quiet_known_warnings

    with warnings.catch_warnings(record=True) as shown:
        quiet_known_warnings()  # as fit() does
        warnings.warn("You're resuming from a checkpoint that ended before the epoch ended and your dataloader "
                      "is not resumable. This can cause unreliable results if further training is done.",
                      PossibleUserWarning, stacklevel=1)
        warnings.warn("The dataloader does not have many workers", PossibleUserWarning, stacklevel=1)
    assert [str(w.message) for w in shown] == ["The dataloader does not have many workers"]
