"""Checkpoints under faults: a full disk mid-save, a truncated last.ckpt at resume."""

from __future__ import annotations

import errno
import hashlib
import logging

import lightning.pytorch as pl
import pytest
import torch

from aavae.config import PretrainConfig
from aavae.data.digits import read_digits
from aavae.models import ModelSpec, build_model
from aavae.objective import Objective
from aavae.training import (
    PretrainModule,
    TrainingImages,
    ValidationViews,
    build_trainer,
    checkpoints,
    fit,
)
from aavae.views import Preprocessing, ViewPolicy
from tests.helpers.training import assert_same_weights, weights_of

pytestmark = pytest.mark.slow  # every test here starts processes or real kedro runs


def _module(max_epochs: int) -> PretrainModule:
    """Two steps an epoch on 256 digits: a real training run of a few seconds."""
    digits = read_digits(image_size=16)
    train, test = digits["train"], digits["test"]
    torch.manual_seed(0)
    net = build_model(ModelSpec(width=4, latent_dim=8, input_size=16))
    config = PretrainConfig(max_epochs=max_epochs, batch_size=128, precision="32-true", accelerator="cpu",
                            warmup_epochs=1, diagnostics_every_n_steps=3, compile=False,
                            checkpoint_every_n_epochs=1)
    val = ValidationViews(test.images[:64], test.images[:64], test.labels[:64])
    return PretrainModule(net, Objective("aavae", config.effective_kl_coeff), ViewPolicy(), config,
                          TrainingImages(train.images[:256], train.labels[:256]), val,
                          preprocessing=Preprocessing([0.3] * 3, [0.4] * 3), num_classes=10)



class DiskFullAfter:
    """``open`` for checkpoints.py whose files take ``budget`` bytes, then raise ENOSPC
    mid-write, as a full disk does; armed from the ``armed_on``-th file opened on."""

    def __init__(self, budget: int, armed_on: int) -> None:
        self.budget, self.armed_on, self.opened = budget, armed_on, 0

    def __call__(self, path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)  # noqa: SIM115 - closed by the caller's with
        self.opened += 1
        if "w" not in mode or self.opened < self.armed_on:
            return handle
        return _FillingFile(handle, self.budget)


class _FillingFile:
    def __init__(self, handle, budget: int) -> None:
        self._handle, self._left = handle, budget

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self._left:
            self._handle.write(data[: self._left])  # the part that fitted stays on disk
            self._left = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self._left -= len(data)
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()


def test_a_full_disk_mid_save_keeps_the_previous_checkpoint_and_fails_clearly(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    straight = _module(max_epochs=2)
    fit(straight, build_trainer(straight.config, tmp_path / "straight"), tmp_path / "straight", resume=False)

    # Epoch 1 saves last.ckpt; epoch 2's save runs out of disk 4 kB into the file.
    monkeypatch.setattr(checkpoints, "open", DiskFullAfter(budget=4096, armed_on=2), raising=False)
    first = _module(max_epochs=2)
    with pytest.raises(OSError) as failed:
        fit(first, build_trainer(first.config, folder), folder, resume=False)
    monkeypatch.undo()

    assert failed.value.errno == errno.ENOSPC
    message = str(failed.value)
    assert f"writing checkpoint {folder / 'last.ckpt'}" in message
    assert "previous last.ckpt is intact" in message and "rerun the same command to resume" in message
    assert sorted(p.name for p in folder.iterdir() if p.suffix != ".json") == ["epoch0001.ckpt", "last.ckpt"], \
        "no temporary file left behind"
    last = torch.load(folder / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2, "epoch 1's checkpoint, whole"
    assert hashlib.sha256((folder / "last.ckpt").read_bytes()).digest() == \
        hashlib.sha256((folder / "epoch0001.ckpt").read_bytes()).digest()

    # Space freed, the same command resumes from it to the uninterrupted weights.
    resumed = _module(max_epochs=2)
    trained = fit(resumed, build_trainer(resumed.config, folder), folder)
    assert (trained.epochs, trained.steps) == (2, 4)
    assert_same_weights(weights_of(straight), weights_of(resumed))


class StopAt(pl.Callback):
    """Ctrl+C after step 5 of 8: last.ckpt is written mid-epoch 3, epoch0002.ckpt at step 4."""

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == 5:
            raise KeyboardInterrupt


def test_a_truncated_last_checkpoint_resumes_from_the_intact_periodic_one(tmp_path, caplog):
    straight = _module(max_epochs=4)
    fit(straight, build_trainer(straight.config, tmp_path / "straight"), tmp_path / "straight", resume=False)

    folder = tmp_path / "run"
    first = _module(max_epochs=4)
    with pytest.raises(SystemExit):
        fit(first, build_trainer(first.config, folder, callbacks=[StopAt()]), folder, resume=False)
    last = folder / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 5
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # e.g. a copy cut short

    resumed = _module(max_epochs=4)
    with caplog.at_level(logging.WARNING, logger="aavae.training.checkpoints"):
        trained = fit(resumed, build_trainer(resumed.config, folder), folder)
        assert (trained.epochs, trained.steps) == (4, 8)

    assert "Using checkpoint epoch0002.ckpt (step 4) instead of the unreadable last.ckpt" in caplog.text
    assert_same_weights(weights_of(straight), weights_of(resumed))


def _dead_pid() -> int:
    import subprocess
    import sys

    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)


def test_the_next_run_removes_temporaries_of_a_killed_writer_and_names_them(tmp_path):
    """A kill mid-write leaves a temporary beside the intact file; the next `kedro run` removes
    it (a live writer's stays), and says so."""
    import os

    from aavae.common.liveness import temporary_prefix
    from tests.conftest import copy_project, kedro

    project = copy_project(tmp_path)
    dead, here = _dead_pid(), temporary_prefix("last.ckpt")
    folder = project / "data" / "06_models" / "checkpoints" / "0123456789ab"
    folder.mkdir(parents=True)
    killed = folder / here.replace(f"-{os.getpid()}-", f"-{dead}-")
    legacy = folder / f".last.ckpt.{dead}.tmp"  # how checkpoint writes were named before
    bundle_write = project / "data" / "06_models" / (temporary_prefix("aavae_model.pt").replace(
        f"-{os.getpid()}-", f"-{dead}-") + "x1y2z3")
    live = folder / f"{here}write"  # this test process is alive: its temporary must stay
    for path in (killed, legacy, bundle_write, live):
        path.write_bytes(b"half a file")

    result = kedro(project, "--pipeline", "ingest", "--env", "test")

    said = "".join((result.stdout + result.stderr).split())  # the log folds long paths
    for path in (killed, legacy, bundle_write):
        assert not path.exists() and path.name in said, path
    assert live.exists()
