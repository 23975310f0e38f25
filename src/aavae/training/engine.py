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
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from aavae.config import PretrainConfig
from aavae.training.checkpoints import (
    AtomicCheckpointIO,
    CheckpointOnInterrupt,
    EpochCheckpoints,
    newest_loadable_checkpoint,
)
from aavae.training.distributed import StepOwnsGradients, launched_world_size, local_world_size
from aavae.training.progress import PlainProgress, output_is_terminal
from aavae.training.syncbn import PooledBatchNormSync

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Hardware:
    """Where and how a run trains: Lightning's accelerator name, the device kind, precision."""

    accelerator: str  # "cpu", "gpu", "mps"
    device_kind: str  # "cpu", "cuda", "mps"
    precision: str  # "bf16-mixed" or "32-true"


def choose_accelerator(requested: str) -> str:
    if requested != "auto":
        return "gpu" if requested == "cuda" else requested
    return "gpu" if torch.cuda.is_available() else "cpu"


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with bf16 matrix instructions (AMX or AVX512-BF16), where oneDNN runs
    bf16 convolutions faster than fp32."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line for line in info if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def choose_precision(requested: str, accelerator: str) -> str:
    """bf16 mixed where the hardware has fast bf16, fp32 otherwise."""
    if requested != "auto":
        return requested
    if accelerator == "gpu":
        fast = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        fast = accelerator == "cpu" and cpu_has_fast_bf16()
    return "bf16-mixed" if fast else "32-true"


def choose_hardware(config: PretrainConfig) -> Hardware:
    accelerator = choose_accelerator(config.accelerator)
    kind = {"gpu": "cuda"}.get(accelerator, accelerator)
    return Hardware(accelerator, kind, choose_precision(config.precision, accelerator))


# Harmless here: the checkpoint folder is ours and is meant to be reused for resuming.
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def build_trainer(
    config: PretrainConfig,
    checkpoint_dir: Path,
    loggers: Sequence[Any] = (),
    callbacks: Sequence[pl.Callback] = (),
    has_validation: bool = True,
) -> pl.Trainer:
    """Lightning's Trainer for the module: the module owns precision and gradient clipping
    (they live inside its step), the Trainer the loop, checkpoints and validation."""
    hardware = choose_hardware(config)
    log.info("Training on %s with %s precision", hardware.accelerator, hardware.precision)
    max_time = None
    if config.max_time_minutes is not None:
        max_time = {"seconds": int(config.max_time_minutes * 60)}
    terminal = output_is_terminal()
    progress = [] if terminal else [PlainProgress()]
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
        callbacks=[EpochCheckpoints(checkpoint_dir, config.checkpoint_every_n_epochs),
                   CheckpointOnInterrupt(checkpoint_dir), *progress, *callbacks],
        enable_progress_bar=terminal,  # a bar redraws one line: nothing shows in a pipe or log
        enable_checkpointing=False,  # EpochCheckpoints writes them
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
    """(devices per node, nodes, strategy): the processes torchrun or SLURM started, or
    ``pretrain.devices`` processes spawned here, or one.

    Under torchrun/srun every process runs ``kedro run`` itself and Lightning joins them
    (it detects the cluster environment and does not launch more); ``pretrain.devices > 1``
    alone spawns that many ranks inside the training node, which gets rank 0's weights back.
    """
    world = launched_world_size()
    backend = "nccl" if hardware.device_kind == "cuda" else "gloo"
    if world > 1:
        per_node = local_world_size()
        return per_node, world // per_node, StepOwnsGradients(process_group_backend=backend)
    if config.devices > 1:
        return config.devices, 1, StepOwnsGradients(start_method="spawn", process_group_backend=backend)
    return 1, 1, "auto"


def fit(
    module: pl.LightningModule,
    trainer: pl.Trainer,
    checkpoint_dir: Path,
    resume: bool = True,
) -> tuple[int, int]:
    """Train, continuing from the newest readable checkpoint in ``checkpoint_dir`` if asked.

    Returns (epochs, optimisation steps) completed in total, as the last checkpoint records
    them: with ranks spawned inside this process, the Trainer here never sees the loop.
    """
    found = newest_loadable_checkpoint(checkpoint_dir) if resume else None
    ckpt_path = str(found) if found else None
    if ckpt_path:
        log.info("Resuming pretraining from %s", ckpt_path)
    try:
        trainer.fit(module, ckpt_path=ckpt_path)
    except SIGTERMException as exc:
        # Lightning's SIGTERM exit carries status 0; a terminated run must not look successful.
        raise SystemExit(128 + signal.SIGTERM) from exc
    last = newest_loadable_checkpoint(checkpoint_dir)
    if last is None:
        return trainer.current_epoch, trainer.global_step
    content = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    # Saved at the end of epoch e (0-based), or cut short in it: e + 1 epochs, as Lightning counts.
    return int(content["epoch"]) + 1, int(content["global_step"])
