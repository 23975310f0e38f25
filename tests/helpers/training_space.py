"""Training steps over the space of batch sizes, set sizes, image sizes, layouts and precisions.

Run as a script, in a process of its own (``tests/training/test_native_abort.py`` starts it): a native
abort inside PyTorch (heap corruption in a CPU kernel) kills this process, not the test suite,
and the parent names the configuration that was running from the last ``trying`` line printed.

Widths 4 and 8 give the ResNet's strided 1 x 1 shortcut fewer than 16 input channels, where
channels_last corrupts the heap on the CPU (aavae.training.layout); one thread shows it as an
abort, two as weights that differ from run to run. For every configuration hypothesis draws,
three short trainings run: three optimisation steps
straight; the same interrupted by Ctrl+C after a step; then resumed from the checkpoint that
interruption wrote. The resumed weights must equal the straight ones (resume is exact), and a
configuration the step cannot train must be refused by name (a ValueError naming what to change),
never die inside PyTorch.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aavae.config import PretrainConfig
from aavae.models import ModelSpec, build_model
from aavae.objective import Objective
from aavae.training import PretrainModule, TrainingImages, ValidationViews, build_trainer, fit
from aavae.views import Preprocessing, ViewPolicy
from tests.helpers.interrupts import InterruptAt

STEPS = 3


def _module(case: dict) -> PretrainModule:
    rng = np.random.default_rng(case["set_size"])
    side = case["image_size"]
    images = rng.integers(0, 256, (case["set_size"], side, side, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, case["set_size"]).astype(np.int64)
    torch.manual_seed(0)
    net = build_model(ModelSpec(width=case.get("width", 4), latent_dim=8, input_size=side))
    config = PretrainConfig(batch_size=case["batch_size"], max_epochs=10_000, max_steps=STEPS,
                            precision=case["precision"], channels_last=case["channels_last"],
                            accelerator="cpu", compile=False, diagnostics_every_n_steps=2,
                            warmup_epochs=0, checkpoint_every_n_epochs=10_000)
    val = ValidationViews(images[:5], images[:5], labels[:5])
    precision = "bf16-mixed" if case["precision"] == "auto" and _fast_bf16() else "32-true"
    return PretrainModule(net, Objective("aavae", 0.0), ViewPolicy(), config,
                          TrainingImages(images, labels), val, preprocessing=Preprocessing([0.5] * 3, [0.25] * 3),
                          num_classes=3, precision=precision)


def _fast_bf16() -> bool:
    from aavae.common.hardware import cpu_has_fast_bf16

    return cpu_has_fast_bf16()


def _weights(module: PretrainModule) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def check(case: dict) -> None:
    """Straight, interrupted and resumed trainings of one configuration (see the docstring)."""
    print("trying", json.dumps(case, sort_keys=True), flush=True)
    torch.set_num_threads(case.get("threads", 2))
    with tempfile.TemporaryDirectory() as folder:
        straight_dir, split_dir = Path(folder, "straight"), Path(folder, "split")
        straight = _module(case)
        try:
            fit(straight, build_trainer(straight.config, straight_dir), straight_dir, resume=False)
        except ValueError as refusal:  # a configuration the step cannot train: named, not a crash
            assert "batch norm" in str(refusal) and "pretrain.batch_size" in str(refusal), refusal
            print("refused", json.dumps(case, sort_keys=True), flush=True)
            return
        first = _module(case)
        trainer = build_trainer(first.config, split_dir, callbacks=[InterruptAt(1)])
        try:
            trainer.fit(first)
        except SystemExit:  # Lightning exits on Ctrl+C, after it wrote last.ckpt
            pass
        resumed = _module(case)
        fit(resumed, build_trainer(resumed.config, split_dir), split_dir, resume=True)
        expected, got = _weights(straight), _weights(resumed)
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)
    print("ok", json.dumps(case, sort_keys=True), flush=True)


cases = st.fixed_dictionaries({
    "batch_size": st.one_of(st.sampled_from([1, 2, 63, 64, 127, 131]), st.integers(1, 300)),
    "set_size": st.one_of(st.sampled_from([1, 2, 3, 63, 65]), st.integers(1, 301)),
    "image_size": st.sampled_from([8, 16, 24]),
    "channels_last": st.booleans(),
    "precision": st.sampled_from(["auto", "32-true"]),
    "width": st.sampled_from([4, 8, 16]),
    "threads": st.sampled_from([1, 2]),
})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case", help="one configuration as JSON, instead of drawn ones")
    args = parser.parse_args()
    if args.case:
        check(json.loads(args.case))
        return

    @settings(max_examples=args.examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(case=cases)
    def run(case: dict) -> None:
        check(case)

    from hypothesis import seed

    seed(args.seed)(run)()
    print("done", flush=True)


if __name__ == "__main__":
    sys.exit(main())
