"""The pretraining engine: schedule, optimizers, the step (eager, compiled), exact resume."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch

from aavae.common.batches import batch_shape
from aavae.models import ModelSpec, build_model
from aavae.objective import Objective
from aavae.training import NonFiniteLoss, build_trainer, fit
from aavae.training.checkpoints import checkpoint_dir_for
from aavae.training.data import epoch_order
from aavae.training.module import resolve_switch
from aavae.training.optim import Lamb, build_optimizer, parameter_groups
from aavae.training.schedule import schedule_factor
from aavae.training.step import CudaGraphed, TrainStep, frozen_batchnorm_statistics
from tests.helpers.interrupts import InterruptAt
from tests.helpers.training import assert_same_weights, small_module, small_step, weights_of


def test_warmup_then_cosine():
    def factor(step: int, warmup: int = 10, total: int = 110, schedule: str = "cosine") -> float:
        return schedule_factor(torch.tensor(step), torch.tensor(warmup), torch.tensor(total), schedule).item()

    assert factor(0) == 0.0  # the paper's step / W: the first step trains at rate 0
    assert factor(9) == pytest.approx(0.9)
    assert factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.5)
    assert factor(110) == pytest.approx(0.0)
    assert factor(50, 0, 100, "linear") == pytest.approx(0.5)
    assert factor(80, 5, 100, "constant") == 1.0


def test_epoch_order_is_full_batches_of_a_seeded_permutation():
    first, again = epoch_order(10, 4, seed=3, epoch=2), epoch_order(10, 4, seed=3, epoch=2)
    assert first.shape == (2, 4) and torch.equal(first, again)
    assert len(set(first.flatten().tolist())) == 8, "no image twice in an epoch"
    assert not torch.equal(first, epoch_order(10, 4, seed=3, epoch=3))
    assert batch_shape(3, 8) == (1, 3), "fewer images than a batch: one batch of all"


def test_exclude_bn_bias_from_weight_decay():
    net = build_model(ModelSpec(width=4, latent_dim=8, input_size=16))
    decayed, excluded = parameter_groups(net, 0.1, exclude_bn_bias=True)
    assert all(p.ndim > 1 for p in decayed["params"])
    assert excluded["weight_decay"] == 0.0
    assert any(p.ndim == 1 for p in excluded["params"])
    assert len(decayed["params"]) + len(excluded["params"]) == sum(1 for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize("lr", [0.05, torch.tensor(0.05)])
def test_lamb_reduces_a_quadratic(lr):
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(8, 8))
    optimizer = Lamb([weight], lr=lr)
    start = weight.square().sum().item()
    for _ in range(50):
        optimizer.zero_grad()
        weight.square().sum().backward()
        optimizer.step()
    assert weight.square().sum().item() < 0.5 * start
    assert isinstance(optimizer.state[weight]["step"], torch.Tensor), "the step count stays on the device"


def test_lamb_trust_ratio_is_one_for_a_zero_weight():
    weight = torch.nn.Parameter(torch.zeros(3))
    optimizer = Lamb([weight], lr=0.1)
    weight.grad = torch.ones(3)
    optimizer.step()
    # Adam's first update is lr * sign(grad) here; a zero weight norm keeps trust 1.
    torch.testing.assert_close(weight.detach(), torch.full((3,), -0.1), atol=1e-4, rtol=0)


def test_the_update_reads_the_scheduled_rate_not_the_rate_the_optimizer_was_built_with():
    """A warm-up of two steps: step 0 trains at rate 0 (Adam's moments still take its gradient),
    step 1 at half the peak, which is ``pretrain.learning_rate`` as the optimizer was built with it."""
    step = small_step(Objective("aavae", 0.0), warmup_steps=2, probe=False)
    weights = lambda: torch.cat([p.detach().flatten() for p in step.params])  # noqa: E731
    before = weights()
    step()
    assert torch.equal(weights(), before), "the first step of the warm-up trains at rate 0"
    step()
    assert not torch.equal(weights(), before)
    assert step.lr.item() == pytest.approx(0.5 * step.optimizer.defaults["lr"])


def test_frozen_batchnorm_statistics_leave_running_statistics_alone():
    net = build_model(ModelSpec(width=4, latent_dim=8, input_size=16)).train()
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "tracked" in k}
    with frozen_batchnorm_statistics(net), torch.no_grad():
        net.encode(torch.randn(8, 3, 16, 16))
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        net.encode(torch.randn(8, 3, 16, 16))
    assert not torch.equal(before["encoder.bn1.running_mean"], net.state_dict()["encoder.bn1.running_mean"])


def test_switches_resolve_per_device():
    assert resolve_switch("auto", "cuda") is True
    assert resolve_switch("auto", "cpu") == "decide", "on CPU, compile=auto times a few steps first"
    assert resolve_switch(False, "cuda") is False


class CountSteps(pl.Callback):
    def __init__(self) -> None:
        self.steps = 0

    def on_train_batch_end(self, *args, **kwargs) -> None:
        self.steps += 1


def test_resume_equals_an_uninterrupted_run(tmp_path):
    straight = small_module(max_epochs=2)
    fit(straight, build_trainer(straight.config, tmp_path / "straight"), tmp_path / "straight", resume=False)

    first = small_module(max_epochs=2)
    trainer = build_trainer(first.config, tmp_path / "split")
    trainer.fit_loop.max_epochs = 1  # the "interruption": stop after one of two epochs
    fit(first, trainer, tmp_path / "split", resume=False)
    assert (tmp_path / "split" / "last.ckpt").is_file()

    resumed = small_module(max_epochs=2)
    counter = CountSteps()
    trainer = build_trainer(resumed.config, tmp_path / "split", callbacks=[counter])
    trained = fit(resumed, trainer, tmp_path / "split", resume=True)
    assert (trained.epochs, trained.steps) == (2, 2 * len(resumed.train_dataloader()))
    assert counter.steps == len(resumed.train_dataloader()), "only the second epoch ran again"
    assert_same_weights(weights_of(straight), weights_of(resumed))
    # and training did change the weights
    fresh = weights_of(small_module(max_epochs=2))
    assert any(not torch.allclose(fresh[k].float(), v.float()) for k, v in weights_of(resumed).items()
               if v.is_floating_point())


def test_a_mid_epoch_interruption_resumes_to_the_uninterrupted_weights(tmp_path):
    # 4 epochs of 2 steps: interrupted after step 5, in the middle of the third epoch.
    straight = small_module(max_epochs=4)
    fit(straight, build_trainer(straight.config, tmp_path / "straight"), tmp_path / "straight", resume=False)

    first = small_module(max_epochs=4)
    trainer = build_trainer(first.config, tmp_path / "split", callbacks=[InterruptAt(5)])
    with pytest.raises(SystemExit):  # Lightning exits on Ctrl+C, after last.ckpt is written
        trainer.fit(first)
    assert torch.load(tmp_path / "split" / "last.ckpt", weights_only=True)["global_step"] == 5

    resumed = small_module(max_epochs=4)
    counter = CountSteps()
    fit(resumed, build_trainer(resumed.config, tmp_path / "split", callbacks=[counter]), tmp_path / "split")
    assert counter.steps == 3, "the rest of the third epoch and the fourth"
    assert_same_weights(weights_of(straight), weights_of(resumed))


def test_a_run_the_time_limit_cut_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    # 4 epochs of 2 steps; Lightning's timer reads one minute a step, so a 3-minute limit stops
    # the run after step 3, in the middle of the second epoch. Resumed without the limit, it
    # trains the rest of that epoch and the last two, as the uninterrupted run did.
    from lightning.pytorch.callbacks import Timer

    straight = small_module(max_epochs=4)
    fit(straight, build_trainer(straight.config, tmp_path / "straight"), tmp_path / "straight", resume=False)

    first = small_module(max_epochs=4, max_time_minutes=3.0)
    monkeypatch.setattr(Timer, "time_elapsed", lambda self, stage="train": 60.0 * first.global_step)
    assert fit(first, build_trainer(first.config, tmp_path / "split"), tmp_path / "split", resume=False).steps == 3

    resumed = small_module(max_epochs=4)
    counter = CountSteps()
    trained = fit(resumed, build_trainer(resumed.config, tmp_path / "split", callbacks=[counter]), tmp_path / "split")
    assert (trained.steps, counter.steps) == (8, 5), "the rest of the second epoch, then the third and fourth"
    assert_same_weights(weights_of(straight), weights_of(resumed))


@pytest.mark.parametrize("objective", ["aavae", "vae", "ae"])
def test_every_objective_trains_and_reports_its_metrics(tmp_path, objective: str):
    module = small_module(max_epochs=1, objective=objective, encode_original="every_step")
    fit(module, build_trainer(module.config, tmp_path), tmp_path, resume=False)
    metrics = module.epoch_metrics
    expected = {"loss", "probe_acc", "cos_sim"} | ({"mse"} if objective == "ae" else {"kl", "log_px", "bpd"})
    assert expected <= set(metrics), metrics
    assert all(math.isfinite(v) for v in metrics.values())
    if objective == "ae":
        assert metrics["cos_sim"] == pytest.approx(1.0, abs=1e-4), "the AE's input is the original"


def test_the_paper_original_pass_moves_batchnorm_statistics_and_the_diagnostic_one_does_not(tmp_path):
    runs = {}
    for mode in ("every_step", "diagnostic_steps"):
        module = small_module(max_epochs=1, encode_original=mode, diagnostics_every_n_steps=1, online_probe=False)
        fit(module, build_trainer(module.config, tmp_path / mode, has_validation=False), tmp_path / mode,
            resume=False)
        runs[mode] = module.net.encoder.bn1.num_batches_tracked.item()
    assert runs == {"every_step": 4, "diagnostic_steps": 2}, "two steps: views (+ originals) each"


def test_a_diverging_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    module = small_module(max_epochs=3)
    poisoned = {"on": False}

    def poison(small_module, _inputs, output):
        return output * float("nan") if poisoned["on"] else output

    module.net.decoder.register_forward_hook(poison)

    class PoisonAfterFirstEpoch(pl.Callback):
        def on_train_epoch_end(self, trainer, *args) -> None:
            poisoned["on"] = True

    trainer = build_trainer(module.config, tmp_path, callbacks=[PoisonAfterFirstEpoch()])
    with pytest.raises(NonFiniteLoss, match=r"loss.* became NaN or infinite at step 2\b"):
        fit(module, trainer, tmp_path, resume=False)
    kept = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert kept["global_step"] == 2, "the checkpoint of the last good epoch"
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())


def _step(objective: str, autocast_dtype=None) -> TrainStep:
    """A TrainStep over 256 digits in two batches, with the online probe."""
    return small_step(Objective(objective, 0.1 if objective == "vae" else 0.0), autocast_dtype=autocast_dtype)


def _compile_without_inductor(monkeypatch) -> None:
    """torch.compile traces with dynamo and AOT autograd as always, then runs the graph eagerly
    (backend "aot_eager"): what a test of the graph, its guards and the checkpoints needs, without
    the minute of kernel code generation Inductor spends per graph on a CPU (the Inductor case
    below pays it once)."""
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda function, dynamic=None, **_inductor_options:
                        real_compile(function, backend="aot_eager", dynamic=dynamic))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("objective", "precision", "backend"),
    # Inductor's kernels once, on the CPU's default path; autocast and the ae objective as graphs
    # (vae: aavae's graph, other constants); each Inductor case costs a minute of code generation
    [("aavae", "32-true", "inductor"), ("aavae", "bf16-mixed", "aot_eager"), ("ae", "32-true", "aot_eager")],
)
def test_the_compiled_step_gives_the_eager_loss_and_gradients(objective: str, precision: str, backend: str,
                                                               monkeypatch):
    """Tolerances: fp32 1e-4 relative; under bf16 autocast 2e-2 on the loss and metrics and a
    gradient cosine of 0.99 (fused kernels round bf16 intermediates at other places)."""
    autocast = torch.bfloat16 if precision == "bf16-mixed" else None
    step = _step(objective, autocast)
    images, labels = step.images[step.order[0]], step.labels[step.order[0]]
    target = step.to_input(images)
    x_in = step.views(images) if objective == "aavae" else target
    noise = torch.randn((2, 128, 8), generator=torch.Generator().manual_seed(1))
    modules = torch.nn.ModuleList([step.net, step.probe])
    initial = {k: v.clone() for k, v in modules.state_dict().items()}

    def loss_and_grads(fn):
        modules.load_state_dict(initial)  # each pass moves batch-norm statistics
        modules.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast is not None):
            loss, metrics = fn(x_in, target, labels, noise)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in modules.parameters() if p.grad is not None])
        return loss.detach(), metrics, grads

    eager = loss_and_grads(step.loss_and_metrics)
    if backend == "aot_eager":
        _compile_without_inductor(monkeypatch)
    step.compile()
    compiled = loss_and_grads(step.loss_fn)
    tolerance = 1e-4 if autocast is None else 2e-2
    torch.testing.assert_close(compiled[0], eager[0], rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(compiled[1], eager[1], rtol=tolerance, atol=tolerance)
    cosine = torch.nn.functional.cosine_similarity(compiled[2], eager[2], dim=0).item()
    assert cosine > (0.9999 if autocast is None else 0.99), cosine


@pytest.mark.slow
def test_a_run_with_the_compiled_step_resumes_exactly_and_never_recompiles(tmp_path, monkeypatch):
    """The compiled engine's checkpoints resume to the uninterrupted weights; validation,
    diagnostics and new epochs never trigger a recompilation (shapes are constant): dynamo's
    guards and the engine's checkpoints, whichever backend runs the graph."""
    import torch._dynamo

    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    _compile_without_inductor(monkeypatch)
    straight = small_module(max_epochs=2, compile=True)
    fit(straight, build_trainer(straight.config, tmp_path / "straight"), tmp_path / "straight", resume=False)
    first = small_module(max_epochs=2, compile=True)
    trainer = build_trainer(first.config, tmp_path / "split")
    trainer.fit_loop.max_epochs = 1
    fit(first, trainer, tmp_path / "split", resume=False)
    resumed = small_module(max_epochs=2, compile=True)
    fit(resumed, build_trainer(resumed.config, tmp_path / "split"), tmp_path / "split", resume=True)
    assert_same_weights(weights_of(straight), weights_of(resumed))


def test_the_cuda_graph_switch_is_off_on_the_cpu(tmp_path):
    """Asking for CUDA graphs on the CPU trains exactly what the eager step trains."""
    trained = {}
    for switch in (True, False):
        module = small_module(max_epochs=1, cuda_graph=switch)
        fit(module, build_trainer(module.config, tmp_path / str(switch)), tmp_path / str(switch), resume=False)
        assert module.engine == "eager", "graphs are CUDA only; the CPU runs the same step eagerly"
        trained[switch] = weights_of(module)
    for key, value in trained[False].items():
        assert torch.equal(trained[True][key], value), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_graph_replayed_steps_equal_eager_steps_and_never_sync():
    """N graphed steps give N eager steps' weights; the replay never waits for the host."""
    results = {}
    for graphed in (False, True):
        step = _step("aavae")
        step.net.cuda()
        step.probe.cuda()
        device_step = TrainStep(
            step.net, step.probe, build_optimizer(torch.nn.ModuleList([step.net, step.probe]), "adam",
                                                  1e-3, 0.0, False, capturable=True),
            step.settings, step.images.cuda(), step.labels.cuda(), step.mean.cuda(), step.std.cuda(),
            (2, 128), torch.Generator(device="cuda").manual_seed(0), 2, 10)
        device_step.start_epoch(epoch_order(256, 128, 0, 0).cuda(), 0, 0)
        run = CudaGraphed(device_step, device_step.generator) if graphed else device_step
        for index in range(6):
            if index == 2:
                device_step.position.fill_(0)
            if graphed and index == 5:
                torch.cuda.set_sync_debug_mode("error")
            run()
        torch.cuda.set_sync_debug_mode(0)
        results[graphed] = torch.cat([p.detach().flatten() for p in step.net.parameters()]).cpu()
    torch.testing.assert_close(results[True], results[False], rtol=1e-4, atol=1e-5)


def test_recomputed_batchnorm_statistics_are_those_of_clean_training_images():
    module = small_module(max_epochs=1, batch_size=256)
    used = module.recompute_encoder_statistics(max_images=256)
    assert used == 256
    encoder = module.net.encoder.eval()

    images = torch.from_numpy(module._train_source)  # not fitted: the images are still on the host
    x = module.preprocessing.apply(images.permute(0, 3, 1, 2))
    with torch.no_grad():
        first_conv = encoder.conv1(x)
    torch.testing.assert_close(encoder.bn1.running_mean, first_conv.mean(dim=(0, 2, 3)), atol=1e-4, rtol=1e-4)
    assert encoder.bn1.momentum == 0.1, "momentum restored"


def _six_minutes_a_step(monkeypatch) -> None:
    """Fake the step clock (once it has timed its steps, each reads 360 s), so a test of the
    time-fitted schedule does not depend on how busy the machine is."""
    from aavae.training.pacing import StepClock

    real = StepClock.seconds_per_step
    monkeypatch.setattr(StepClock, "seconds_per_step",
                        lambda self, skip, steps: None if real(self, skip, steps) is None else 360.0)


def test_a_time_limited_run_fits_its_cosine_schedule_to_the_limit_and_ends_it(tmp_path, monkeypatch):
    # Each step "takes" 6 minutes of a 60-minute limit: about 9 more steps fit after the timed ones.
    _six_minutes_a_step(monkeypatch)
    module = small_module(max_epochs=10_000, schedule="cosine", max_time_minutes=60.0,
                     schedule_to_time_limit=True, warmup_fraction=0.1)
    trainer = build_trainer(module.config, tmp_path, has_validation=False)
    fit(module, trainer, tmp_path, resume=False)
    fitted = module._fitted_steps
    # Fitted at the start of step 7 (two ticks skipped, five steps timed): 0.97 of the
    # ~3,600 s left at 360 s a step is 9 more steps.
    assert fitted == 7 + 9
    assert trainer.global_step == fitted, "training ended with the fitted schedule, not by the clock"
    assert int(module.step_fn.warmup_steps) == round(0.1 * fitted)
    assert int(module.step_fn.total_steps) == fitted, "the cosine spans exactly the steps run"
    last_factor = schedule_factor(torch.tensor(fitted - 1), module.step_fn.warmup_steps,
                                  module.step_fn.total_steps, "cosine")
    assert module.step_fn.lr.item() == pytest.approx(module.config.learning_rate * last_factor.item())


def test_a_resumed_run_keeps_the_warm_up_of_its_first_fit_after_a_refit(tmp_path, monkeypatch):
    from aavae.training.pacing import ScheduleFit

    _six_minutes_a_step(monkeypatch)
    settings = dict(max_epochs=10_000, schedule="cosine", max_time_minutes=60.0,
                    schedule_to_time_limit=True, warmup_fraction=0.1)
    module = small_module(**settings)
    fit(module, build_trainer(module.config, tmp_path, has_validation=False), tmp_path, resume=False)
    first_warmup = int(module.step_fn.warmup_steps)
    module._fit_schedule(ScheduleFit(160, 36.0, refined=True))  # a refit ten times longer
    assert int(module.step_fn.warmup_steps) == first_warmup, "a refit leaves the warm-up alone"
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)

    resumed = small_module(**settings)
    resumed.on_load_checkpoint(checkpoint)
    assert resumed.schedule_lengths() == (160, first_warmup)
    assert resumed.warmup_for(160) != first_warmup, "the test would not tell the two apart"


def test_max_steps_ends_training_and_the_schedule_together(tmp_path):
    module = small_module(max_epochs=100, max_steps=5, schedule="linear")
    trainer = build_trainer(module.config, tmp_path, has_validation=False)
    fit(module, trainer, tmp_path, resume=False)
    assert trainer.global_step == 5 and int(module.step_fn.total_steps) == 5


@pytest.mark.parametrize(("limit_minutes", "max_steps", "cut_at"),
                         [(3.0, 8, 3), (3.0, 2, None), (None, 8, None), (3.0, 3, None)])
def test_a_run_the_time_limit_cut_short_says_so_and_one_that_ended_its_schedule_does_not(
        tmp_path, monkeypatch, caplog, limit_minutes, max_steps, cut_at):
    # Lightning's timer reads a faked clock: one minute a step, so a 3-minute limit stops step 3.
    from lightning.pytorch.callbacks import Timer

    module = small_module(max_epochs=100, max_steps=max_steps, max_time_minutes=limit_minutes)
    monkeypatch.setattr(Timer, "time_elapsed", lambda self, stage="train": 60.0 * module.global_step)
    with caplog.at_level("WARNING", logger="aavae.training.engine"):
        trained = fit(module, build_trainer(module.config, tmp_path, has_validation=False), tmp_path, resume=False)
    assert trained.steps == (cut_at or max_steps) and trained.planned_steps == max_steps
    cut = trained.cut_by_time_limit(limit_minutes)
    if cut_at is None:
        assert cut is None and not caplog.messages
        return
    assert cut == {"max_time_minutes": 3.0, "planned_steps": 8, "planned_epochs": 4.0}
    assert caplog.messages == ["pretrain.max_time_minutes=3 stopped training at step 3 of the 8 its schedule "
                               "spans (1.50 of 4.00 epochs), before the learning rate decayed to its end. The "
                               "same command with a larger max_time_minutes, or none, continues it."]


def test_the_checkpoint_folder_is_keyed_by_what_is_learned_and_keeps_its_old_name(tmp_path):
    card = {"name": "digits", "sha256": "ab12", "splits": {"train": {"count": 10}}, "source": "anywhere"}
    spec, policy = {"width": 8}, {"flip_p": 0.5}
    folder = checkpoint_dir_for(tmp_path, card, spec, {"learning_rate": 1e-3, "resume": True}, policy)
    # Pinned: the name earlier versions gave this configuration, so their checkpoints still resume.
    assert folder == tmp_path / "55ece8129dc3"
    assert checkpoint_dir_for(tmp_path, card, spec, {"learning_rate": 1e-3, "devices": 2}, policy) == folder
    assert checkpoint_dir_for(tmp_path, card, spec, {"learning_rate": 2e-3}, policy) != folder
    assert checkpoint_dir_for(tmp_path, {**card, "sha256": "cd34"}, spec, {"learning_rate": 1e-3}, policy) != folder
