"""The Trainer around the module: device and precision choice, checkpoints, resume, signals."""

from __future__ import annotations

import logging
import signal
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.exceptions import SIGTERMException

from aavae.common.hardware import Hardware, choose_hardware
from aavae.common.launch import launched_world_size, local_world_size
from aavae.common.progress import output_is_terminal
from aavae.common.weights import load_weights
from aavae.config import PretrainConfig
from aavae.training.checkpoints import (
    AtomicCheckpointIO,
    Checkpoints,
    newest_loadable_checkpoint,
)
from aavae.training.distributed import StepOwnsGradients
from aavae.training.module import FITTED_STEPS_KEY, PretrainModule
from aavae.training.progress import PlainProgress
from aavae.training.syncbn import PooledBatchNormSync

log = logging.getLogger(__name__)

def quiet_known_warnings() -> None:
    """Silence Lightning's warnings that do not apply here: on import, and in :func:`fit` again
    (a test runner resets filters between tests)."""
    # Harmless here: the checkpoint folder is ours and is meant to be reused for resuming.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # Lightning cannot see that the batches follow from the epoch and the step count, and warns
    # that a mid-epoch resume "can cause unreliable results"; fit() says what resume guarantees.
    warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")


quiet_known_warnings()


def build_trainer(
    config: PretrainConfig,
    checkpoint_dir: Path,
    loggers: Sequence[Any] = (),
    callbacks: Sequence[pl.Callback] = (),
    has_validation: bool = True,
) -> pl.Trainer:
    """Lightning's Trainer for the module: the module owns precision and gradient clipping
    (they live inside its step), the Trainer the loop, checkpoints and validation."""
    hardware = choose_hardware(config.accelerator, config.precision)
    log.info("Training on %s with %s precision", hardware.accelerator, hardware.precision)
    max_time = None if config.max_time_minutes is None else {"seconds": int(config.max_time_minutes * 60)}
    terminal = output_is_terminal()  # a bar redraws one line: nothing shows in a pipe or log
    devices, nodes, strategy = distribution(config, hardware)
    return pl.Trainer(
        accelerator=hardware.accelerator,
        devices=devices,
        num_nodes=nodes,
        strategy=strategy,
        # torch's SyncBatchNorm on GPUs, the gloo-capable PooledBatchNorm on CPUs
        sync_batchnorm=config.sync_batchnorm and (devices * nodes) > 1 and hardware.device_kind == "cuda",
        use_distributed_sampler=False,  # the step shards every global batch itself
        precision="32-true",  # bf16 autocast happens inside the module's step
        max_epochs=config.max_epochs,
        max_steps=config.max_steps or -1,
        max_time=max_time,
        logger=list(loggers) or False,
        callbacks=[Checkpoints(checkpoint_dir, config.checkpoint_every_n_epochs),
                   *([] if terminal else [PlainProgress()]), *callbacks],
        enable_progress_bar=terminal,
        enable_checkpointing=False,  # Checkpoints writes them
        plugins=[AtomicCheckpointIO(),
                 *([PooledBatchNormSync()] if config.sync_batchnorm and (devices * nodes) > 1
                   and hardware.device_kind != "cuda" else [])],
        log_every_n_steps=config.diagnostics_every_n_steps,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if has_validation else 0,
        enable_model_summary=False,
        deterministic=False,
        default_root_dir=str(checkpoint_dir),
    )


def distribution(config: PretrainConfig, hardware: Hardware) -> tuple[int, int, Any]:
    """(devices per node, nodes, strategy): the processes torchrun or SLURM started (each runs
    ``kedro run``, and Lightning joins them), or ``pretrain.devices`` ranks spawned inside the
    training node (which gets rank 0's weights back), or one."""
    world = launched_world_size()
    backend = "nccl" if hardware.device_kind == "cuda" else "gloo"
    if world > 1:
        per_node = local_world_size()
        return per_node, world // per_node, StepOwnsGradients(process_group_backend=backend)
    if config.devices > 1:
        return config.devices, 1, StepOwnsGradients(start_method="spawn", process_group_backend=backend)
    return 1, 1, "auto"


@dataclass(frozen=True)
class TrainedLength:
    """How far a run trained, as its last checkpoint records it, against how far its schedule went."""

    epochs: int  # begun, as Lightning counts them (an epoch cut short counts as one)
    steps: int
    planned_steps: int  # the steps the schedule spans: max_epochs or max_steps, or fitted to a time limit
    steps_per_epoch: int

    @classmethod
    def of_checkpoint(cls, content: dict[str, Any], module: PretrainModule) -> TrainedLength:
        """Read from a checkpoint's content: epoch e (0-based) saved at its end or cut short in it
        is e + 1 epochs, as Lightning counts."""
        fitted = content.get(FITTED_STEPS_KEY)
        return cls(int(content["epoch"]) + 1, int(content["global_step"]),
                   int(fitted or module.planned_steps()), module.steps_per_epoch)

    def cut_by_time_limit(self, max_time_minutes: float | None) -> dict[str, Any] | None:
        """What the records keep of a run that ``pretrain.max_time_minutes`` stopped before the
        end of its schedule; None for a run that trained all of it. Nothing else stops a run
        early and returns (a diverged or interrupted run raises)."""
        if max_time_minutes is None or self.steps >= self.planned_steps:
            return None
        return {"max_time_minutes": max_time_minutes, "planned_steps": self.planned_steps,
                "planned_epochs": round(self.planned_steps / self.steps_per_epoch, 3)}


def fit(module: PretrainModule, trainer: pl.Trainer, checkpoint_dir: Path, resume: bool = True) -> TrainedLength:
    """Train, continuing from the newest readable checkpoint in ``checkpoint_dir`` if asked;
    returns how far training got, as the last checkpoint records it (ranks spawned inside this
    process train where this Trainer never sees the loop)."""
    quiet_known_warnings()
    found = newest_loadable_checkpoint(checkpoint_dir) if resume else None
    if found is not None:
        log.info("Resuming pretraining from %s", found)
        epoch, done = divmod(int(load_weights(found, mmap=True).get("global_step", 0)), module.steps_per_epoch)
        if done:  # what resume guarantees, in place of Lightning's "unreliable results" warning
            log.info("Resuming in the middle of epoch %d, after %s of its %s steps: the batches, views, noise "
                     "and learning rate go on exactly as in the uninterrupted run, and so do the weights "
                     "(resume is exact; the test suite checks it).", epoch + 1, f"{done:,}",
                     f"{module.steps_per_epoch:,}")
    try:
        trainer.fit(module, ckpt_path=str(found) if found else None)
    except SIGTERMException as exc:
        # Lightning's SIGTERM exit carries status 0; a terminated run must not look successful.
        raise SystemExit(128 + signal.SIGTERM) from exc
    except SystemExit as exc:
        # Lightning answers Ctrl+C with sys.exit(1), the status of a failure; the shell's is 130.
        if isinstance(exc.__context__, KeyboardInterrupt):
            raise SystemExit(128 + signal.SIGINT) from exc
        raise
    last = newest_loadable_checkpoint(checkpoint_dir)
    content = load_weights(last, mmap=True) if last is not None else {
        "epoch": trainer.current_epoch - 1, "global_step": trainer.global_step}
    trained = TrainedLength.of_checkpoint(content, module)
    if cut := trained.cut_by_time_limit(module.config.max_time_minutes):
        log.warning("pretrain.max_time_minutes=%g stopped training at step %d of the %d its schedule "
                    "spans (%.2f of %.2f epochs), before the learning rate decayed to its end. The same "
                    "command with a larger max_time_minutes, or none, continues it.",
                    cut["max_time_minutes"], trained.steps, trained.planned_steps,
                    trained.steps / trained.steps_per_epoch, cut["planned_epochs"])
    return trained

