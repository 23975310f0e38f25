"""Checkpoints that survive kills and full disks, one folder per configuration, and resume
from the newest one that loads. Each is written to a temporary in its own folder, fsynced and
renamed into place (one in /tmp, as fsspec's transaction uses, is *copied* across filesystems),
so a kill or a full disk leaves the previous file whole; each records the data it trained on.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from aavae.common.atomic import replaced_atomically
from aavae.common.provenance import CHECKPOINT_DATA
from aavae.common.weights import load_weights

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.ckpt"
RUN_MARKER = "mlflow_run.json"  # the MLflow run that trains into a checkpoint folder
PERIODIC = re.compile(r"epoch(\d+)\.ckpt")
# Settings that do not change what is learned, so they do not start a new checkpoint line.
NOT_IN_CHECKPOINT_KEY = frozenset({
    "resume", "max_time_minutes", "checkpoint_every_n_epochs", "reconstruction_every_n_epochs",
    "diagnostics_every_n_steps", "accelerator", "devices", "compile", "cuda_graph",
})


# Parameters added after checkpoint folders were first keyed, at the value that reproduces the
# behaviour before them: left out of the key at that value, so existing checkpoints still resume.
ADDED_LATER = {"denoising": False}


def checkpoint_dir_for(root: Path, dataset_card: dict[str, Any], spec: dict[str, Any],
                       pretrain: dict[str, Any], view_policy: dict[str, Any]) -> Path:
    """The folder under ``root`` of one configuration's checkpoints: a hash of what decides what
    is learned (the dataset's identity, the architecture, the ``pretrain`` parameters less
    :data:`NOT_IN_CHECKPOINT_KEY`, the view policy), so resume never crosses configurations."""
    dataset = {key: dataset_card.get(key) for key in ("name", "sha256", "splits")}
    dataset["dataset"] = dataset.pop("name")  # the key's historical spelling: old folders still match
    learned = {key: value for key, value in pretrain.items() if key not in NOT_IN_CHECKPOINT_KEY
               and not (key in ADDED_LATER and value == ADDED_LATER[key])}
    blob = json.dumps((dataset, spec, learned, view_policy), sort_keys=True, default=str)
    return root / hashlib.sha1(blob.encode()).hexdigest()[:12]


def previous_run(checkpoint_dir: Path) -> str | None:
    """The MLflow run that last trained into ``checkpoint_dir``, if one did."""
    marker = checkpoint_dir / RUN_MARKER
    return json.loads(marker.read_text()).get("run_id") if marker.is_file() else None


def remember_run(checkpoint_dir: Path, run_id: str | None) -> None:
    """Mark ``checkpoint_dir`` as trained into by MLflow run ``run_id`` (nothing without a run)."""
    if run_id:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        (checkpoint_dir / RUN_MARKER).write_text(json.dumps({"run_id": run_id}))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer: ``torch.save`` to a temporary beside the file, fsync, rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        try:
            with replaced_atomically(path, durable=True) as temporary, open(temporary, "wb") as handle:
                torch.save(checkpoint, handle)
        except BaseException as error:  # the temporary is gone: a full disk leaves no debris
            if (full := _disk_full(error)) is not None:
                kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
                raise OSError(full.errno, f"{full.strerror} while writing checkpoint {path}: {kept}. "
                              "Free space on that disk, then rerun the same command to resume") from error
            raise


def _disk_full(error: BaseException) -> OSError | None:
    """The ENOSPC / EDQUOT error behind ``error``, if any. torch.save's zip writer reports a
    failed write as a RuntimeError ("unexpected pos ...") raised while handling the OSError."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class Checkpoints(pl.Callback):
    """``last.ckpt`` after every epoch (Lightning's ModelCheckpoint, 2.6, writes it only on
    epochs where it keeps a top-k file: an interruption could lose ``every_n_epochs``), the
    module's metrics checked first so a diverged model is never saved; ``epochNNNN.ckpt`` every
    ``every_n_epochs``; and on SIGTERM or Ctrl+C, ``last.ckpt`` mid-epoch for the rerun to resume
    (a crash, NaN weights or a bug, must not replace the last good one: no other exception does)."""

    def __init__(self, checkpoint_dir: Path, every_n_epochs: int) -> None:
        self.last, self.every_n_epochs = Path(checkpoint_dir) / LAST_CHECKPOINT, every_n_epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        finish = getattr(module, "finish_epoch", None)
        if finish is not None:
            finish()  # raises on a non-finite loss, before anything is written
        # An epoch the time limit (or max_steps) ended early is saved as an interrupted one is, in
        # the middle: Lightning's epoch-end state would resume at the next epoch and skip the rest.
        cut = trainer.fit_loop.epoch_loop.batch_progress.current.completed < trainer.num_training_batches
        epochs = trainer.fit_loop.epoch_progress
        epochs.current.processed -= cut
        epochs.total.processed -= cut
        try:
            trainer.save_checkpoint(self.last, weights_only=False)
        finally:
            epochs.current.processed += cut
            epochs.total.processed += cut
        epoch = trainer.current_epoch + 1
        if epoch % self.every_n_epochs == 0 and trainer.is_global_zero:
            # Same content: a hard link costs no disk (a copy where links are refused).
            with replaced_atomically(self.last.with_name(f"epoch{epoch:04d}.ckpt")) as temporary:
                try:
                    os.link(self.last, temporary)
                except OSError:
                    shutil.copy2(self.last, temporary)

    def on_exception(self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            trainer.save_checkpoint(self.last, weights_only=False)
            log.warning("Interrupted: checkpoint written to %s; rerun the same command to resume.", self.last)


class RecordTrainingData(pl.Callback):
    """Every checkpoint written (each epoch's, an interrupted run's) holds ``data``, the
    :func:`aavae.common.provenance.data_identity` of its training images."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def on_save_checkpoint(self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_DATA] = self.data


def newest_loadable_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest checkpoint torch can read as a training checkpoint: ``last.ckpt``, else the
    periodic ones, newest epoch first. A damaged file (truncated by a kill or a full disk) is
    named in a warning and skipped; the one taken instead is named beside those passed over."""
    last = checkpoint_dir / LAST_CHECKPOINT
    periodic = sorted((p for p in checkpoint_dir.glob("epoch*.ckpt") if PERIODIC.fullmatch(p.name)),
                      key=lambda p: int(PERIODIC.fullmatch(p.name).group(1)), reverse=True)  # type: ignore[union-attr]
    passed_over = []
    for path in ([last] if last.is_file() else []) + periodic:
        try:
            content = load_weights(path, mmap=True)
            if not isinstance(content, dict) or "state_dict" not in content or "loops" not in content:
                raise ValueError("not a Lightning training checkpoint (no state_dict or loop state)")
        except Exception as error:  # noqa: BLE001 - any unreadable file is passed over, with the reason
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            log.warning("Checkpoint %s cannot be read (%s); trying the next newest.", path, reason)
            passed_over.append(path.name)
            continue
        if passed_over:
            log.warning("Using checkpoint %s (step %s) instead of the unreadable %s in %s.", path.name,
                        int(content.get("global_step", 0)), ", ".join(passed_over), checkpoint_dir)
        return path
    return None


def finished_training(
    checkpoint: Path, planned_steps: int, max_time_minutes: float | None
) -> dict[str, Any] | None:
    """The checkpoint's content if its run already trained to the end (the planned step count,
    the one a time-limited schedule was fitted to, or the time limit as Lightning's timer
    recorded it), else None."""
    content = load_weights(checkpoint)
    steps = int(content.get("global_step", 0))
    fitted = content.get("aavae_fitted_steps")
    if steps >= planned_steps or (fitted is not None and steps >= fitted):
        return content
    if max_time_minutes is not None:
        for name, state in content.get("callbacks", {}).items():
            elapsed = state.get("time_elapsed", {}).get("train") if name.startswith("Timer") else None
            if elapsed is not None and elapsed >= max_time_minutes * 60:
                return content
    return None


def set_aside_checkpoints(checkpoint_dir: Path) -> Path | None:
    """Move an earlier run's checkpoints (which the next resume would pick up) to a sibling
    ``<folder>.replaced-<UTC time>``, not deleted: a new run must not destroy them. Returns that
    folder, or None when there was nothing to move."""
    stale = sorted(checkpoint_dir.glob("*.ckpt"))
    if not stale:
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    archive = checkpoint_dir.with_name(f"{checkpoint_dir.name}.replaced-{stamp}")
    archive.mkdir(parents=True)
    marker = checkpoint_dir / RUN_MARKER
    if marker.is_file():  # which MLflow run wrote them
        shutil.copy2(marker, archive / RUN_MARKER)
    for path in stale:
        path.rename(archive / path.name)
    return archive
