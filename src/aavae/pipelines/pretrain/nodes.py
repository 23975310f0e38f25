"""Pretrain: fit AAVAE (or a VAE/AE baseline) on the ingested images, tracked in MLflow."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from matplotlib.figure import Figure

from aavae import tracking
from aavae.config import ModelConfig, PretrainConfig, parse
from aavae.data.imageset import ImageSet
from aavae.evaluation import make_bundle
from aavae.models import build_model, count_parameters
from aavae.objective import Objective
from aavae.training import (
    RUN_MARKER,
    PretrainModule,
    ReconstructionSnapshots,
    TrainingImages,
    ValidationViews,
    build_trainer,
    choose_hardware,
    finished_training,
    fit,
    newest_loadable_checkpoint,
    reconstruction_grid,
    set_aside_checkpoints,
)
from aavae.views import split_view_policy

log = logging.getLogger(__name__)

CHECKPOINT_ROOT = Path("data/06_models/checkpoints")
# Settings that do not change what is learned, so they do not start a new checkpoint line.
_NOT_IN_CHECKPOINT_KEY = {
    "resume", "max_time_minutes", "checkpoint_every_n_epochs", "reconstruction_every_n_epochs",
    "diagnostics_every_n_steps", "accelerator", "devices", "compile", "cuda_graph",
}


def checkpoint_key(*parts: dict[str, Any]) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


HOLDOUT_SEED = 0  # the same unlabeled images are held out in every run and every seed


def training_images(train: ImageSet, unlabeled: ImageSet, split: str, holdout: int) -> TrainingImages:
    """The images pretraining sees, as ``pretrain.training_split`` and ``unlabeled_holdout`` say."""
    if split == "auto":
        split = "unlabeled+train" if len(unlabeled) else "train"
    if split == "train":
        return TrainingImages(np.asarray(train.images), np.asarray(train.labels))
    if not len(unlabeled):
        raise ValueError(
            f"pretrain.training_split={split} needs the unlabeled split, which was not ingested: "
            "set dataset.unlabeled=true (STL-10) or pretrain.training_split=train"
        )
    if holdout >= len(unlabeled):
        raise ValueError(
            f"pretrain.unlabeled_holdout={holdout} leaves none of the {len(unlabeled)} unlabeled "
            "images to train on; hold out fewer"
        )
    kept = np.sort(np.random.default_rng(HOLDOUT_SEED).permutation(len(unlabeled))[holdout:])
    images = np.asarray(unlabeled.images)[kept] if holdout else np.asarray(unlabeled.images)
    labels = np.asarray(unlabeled.labels)[kept] if holdout else np.asarray(unlabeled.labels)
    if split == "unlabeled":
        return TrainingImages(images, labels)
    return TrainingImages(np.concatenate([images, np.asarray(train.images)]),
                          np.concatenate([labels, np.asarray(train.labels)]))


def pretrain(
    images_train: ImageSet,
    images_unlabeled: ImageSet,
    val_views: dict[str, np.ndarray],
    view_policy: dict[str, Any],
    dataset_card: dict[str, Any],
    model: dict[str, Any],
    pretrain: dict[str, Any],
) -> tuple[dict[str, Any], Figure]:
    """Train the model; return the model bundle and a reconstruction grid."""
    model_cfg = parse("model", model, ModelConfig)
    cfg = parse("pretrain", pretrain, PretrainConfig)
    spec = model_cfg.spec(input_size=images_train.image_shape[0], log_scale=cfg.log_scale, learn_scale=cfg.learn_scale,
                          head="ae" if cfg.objective == "ae" else "vae")
    pl.seed_everything(cfg.seed, workers=False, verbose=False)
    net = build_model(spec)
    num_parameters = count_parameters(net)
    objective = Objective(cfg.objective, cfg.effective_kl_coeff)
    policy, preprocessing = split_view_policy(view_policy)
    mean, std = preprocessing["mean"], preprocessing["std"]

    key_cfg = {k: v for k, v in cfg.model_dump().items() if k not in _NOT_IN_CHECKPOINT_KEY}
    checkpoint_dir = CHECKPOINT_ROOT / checkpoint_key(
        {"dataset": dataset_card.get("name"), "sha256": dataset_card.get("sha256"),
         "splits": dataset_card.get("splits")},
        spec.to_dict(), key_cfg, view_policy,
    )
    previous = _previous_run(checkpoint_dir)
    tracking.close_if_stale(previous)
    resume_from = newest_loadable_checkpoint(checkpoint_dir) if cfg.resume else None
    resumed_from = previous if resume_from else None
    if not resume_from and (moved := set_aside_checkpoints(checkpoint_dir)):
        log.warning("Not resuming: the earlier checkpoints of this configuration were moved to %s",
                    moved)

    val = ValidationViews(val_views["views"], val_views["originals"], val_views["labels"])
    hardware = choose_hardware(cfg)
    module = PretrainModule(
        net, objective, policy, cfg,
        training_images(images_train, images_unlabeled, cfg.training_split, cfg.unlabeled_holdout),
        val, mean, std, num_classes=len(images_train.class_names),
        precision=hardware.precision, device_kind=hardware.device_kind,
        original_resize=preprocessing["original_resize"],
    )
    done = resume_from and finished_training(resume_from, module.planned_steps(), cfg.max_time_minutes)
    tracking.log_params_once({"model.num_parameters": num_parameters})
    if done:
        # Nothing to train: rebuild the bundle from the finished run's checkpoint and point
        # it (and the evaluation after it) at the run that trained it, not at this empty one.
        log.warning("Already trained: this configuration finished in MLflow run %s (%s). "
                    "Nothing to train; the model bundle is rewritten from that checkpoint. "
                    "pretrain.resume=false trains again from scratch.", previous or "?", resume_from)
        tracking.set_tags({"already_trained_in_run": previous or "unknown", "checkpoint_dir": checkpoint_dir})
        module.load_state_dict(done["state_dict"])
        return _finish(module, cfg, preprocessing, images_train, dataset_card, val,
                       epochs=int(done["epoch"]) + 1, steps=int(done["global_step"]), run_id=previous)
    _remember_run(checkpoint_dir)
    tracking.set_tags({"checkpoint_dir": checkpoint_dir, "objective": cfg.objective, "seed": cfg.seed,
                       **({"resumed_from_run": resumed_from} if resumed_from else {})})
    log.info("%s %s/%s: %s parameters; checkpoints in %s", cfg.objective, spec.encoder, spec.stem,
             f"{num_parameters:,}", checkpoint_dir)
    logger = tracking.live_logger()
    shown = slice(0, 8)
    callbacks = []
    if logger is not None and cfg.reconstruction_every_n_epochs:
        callbacks.append(ReconstructionSnapshots(
            val.originals[shown], val.views[shown], cfg.reconstruction_every_n_epochs,
            tracking.FigureToRun(logger),
        ))
    trainer = build_trainer(cfg, checkpoint_dir, [logger] if logger else [], callbacks)
    try:
        epochs, steps = fit(module, trainer, checkpoint_dir, resume=cfg.resume)
    except Exception:
        raise  # kedro-mlflow marks the run FAILED
    except BaseException:
        tracking.end_active_run_killed()  # SIGTERM / Ctrl+C: the run must not stay RUNNING
        raise

    return _finish(module, cfg, preprocessing, images_train, dataset_card, val, epochs=epochs,
                   steps=steps, run_id=tracking.active_run_id())


def _finish(module, cfg, preprocessing, images_train, dataset_card, val, epochs, steps, run_id):
    """The model bundle and the final reconstruction grid of a trained module."""
    if cfg.recompute_bn_stats:
        used = module.recompute_encoder_statistics()
        log.info("Re-estimated the encoder's batch-norm statistics on %d un-augmented training images", used)
    net = module.net.cpu().eval()
    shown = slice(0, 8)
    figure = reconstruction_grid(module, val.originals[shown], val.views[shown])
    # how an image becomes the encoder's input: normalisation, and the paper's STL-10 zoom
    normalization = {"mean": list(preprocessing["mean"]), "std": list(preprocessing["std"]),
                     "original_resize": preprocessing["original_resize"]}
    bundle = make_bundle(
        net, normalization, class_names=list(images_train.class_names), dataset=dataset_card.get("name"),
        objective=cfg.objective, kl_coeff=module.objective.kl_coeff,
        epochs=epochs,  # Lightning counts an epoch cut short by max_time as done
        steps=steps, mlflow_run_id=run_id,  # the run that trained these weights
    )
    return bundle, figure


def _previous_run(checkpoint_dir: Path) -> str | None:
    """The MLflow run that last trained into this checkpoint folder."""
    marker = checkpoint_dir / RUN_MARKER
    return json.loads(marker.read_text()).get("run_id") if marker.is_file() else None


def _remember_run(checkpoint_dir: Path) -> None:
    run_id = tracking.active_run_id()
    if run_id:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        (checkpoint_dir / RUN_MARKER).write_text(json.dumps({"run_id": run_id}))
