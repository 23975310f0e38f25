"""One pretraining run, owned whole (what the pretrain node calls), from the catalog's inputs
(checked to be of one ingest) to the model bundle: the configuration's checkpoint folder, resume
(refused from a checkpoint of other data) or the earlier checkpoints set aside, the MLflow run a
killed run left RUNNING closed, this run's tags, training, and what a time limit cut.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from matplotlib.figure import Figure

from aavae import tracking
from aavae.common import provenance
from aavae.common.hardware import choose_hardware
from aavae.common.weights import load_weights
from aavae.config import ModelConfig, PretrainConfig, parse
from aavae.data.imageset import ImageSet
from aavae.evaluation import make_bundle
from aavae.models import ModelSpec, build_model, count_parameters
from aavae.objective import Objective
from aavae.tracking.live import FigureToRun, live_logger
from aavae.training import checkpoints
from aavae.training.checkpoints import RecordTrainingData, finished_training
from aavae.training.data import ValidationViews, training_images
from aavae.training.engine import TrainedLength, build_trainer, fit
from aavae.training.module import PretrainModule
from aavae.training.snapshots import ReconstructionSnapshots, reconstruction_grid
from aavae.views import POLICY_FILE, PROVENANCE_KEYS, split_view_policy

log = logging.getLogger(__name__)

CHECKPOINTS = "06_models/checkpoints"  # under the environment's artifact_root: one folder per configuration
COMPILE_CACHE = Path("data/02_intermediate/inductor_cache")  # relative to the project, as kedro runs
SHOWN = slice(0, 8)  # the validation images the reconstruction grids show


def train(
    images_train: ImageSet,
    images_unlabeled: ImageSet,
    val_views: dict[str, np.ndarray],
    view_policy: dict[str, Any],
    dataset_card: dict[str, Any],
    model: dict[str, Any],
    pretrain: dict[str, Any],
    artifact_root: str,
) -> tuple[dict[str, Any], Figure]:
    """Train (or, when this configuration already finished, rebuild from its checkpoint) and
    return the model bundle and a reconstruction grid; checkpoints go under ``artifact_root``."""
    check_inputs_belong_together(images_train, images_unlabeled, val_views, view_policy, dataset_card, artifact_root)
    policy, preprocessing = split_view_policy(view_policy, f"{artifact_root}/{POLICY_FILE}")
    cfg = parse("pretrain", pretrain, PretrainConfig)
    objective = Objective.from_config(cfg)
    spec = ModelSpec(**parse("model", model, ModelConfig).model_dump(), input_size=images_train.image_shape[0],
                     log_scale=cfg.log_scale, learn_scale=cfg.learn_scale, head=objective.head)
    pl.seed_everything(cfg.seed, workers=False, verbose=False)
    net = build_model(spec)
    num_parameters = count_parameters(net)
    tracking.log_params_once({"model.num_parameters": num_parameters})
    learned_views = {key: value for key, value in view_policy.items() if key not in PROVENANCE_KEYS}
    checkpoint_dir = checkpoints.checkpoint_dir_for(Path(artifact_root) / CHECKPOINTS, dataset_card, spec.to_dict(),
                                                    cfg.model_dump(), learned_views)
    previous = checkpoints.previous_run(checkpoint_dir)
    tracking.close_if_stale(previous)
    resume_from = _resume_point(checkpoint_dir, cfg.resume, dataset_card)
    val = ValidationViews(val_views["views"], val_views["originals"], val_views["labels"])
    hardware = choose_hardware(cfg.accelerator, cfg.precision)
    module = PretrainModule(
        net, objective, policy, cfg,
        training_images(images_train, images_unlabeled, cfg.training_split, cfg.unlabeled_holdout),
        val, preprocessing, num_classes=len(images_train.class_names),
        precision=hardware.precision, device_kind=hardware.device_kind,
    )
    # what the MLflow run records of the data it trains on, and of the split it validates on
    tags = {"checkpoint_dir": checkpoint_dir, **{f"data.{key}": dataset_card.get(key) for key in ("name", "sha256", "source")},
            "data.validation_split": (provenance.stamp_of(val_views) or {}).get("validation_split", "unrecorded")}
    if done := resume_from and finished_training(resume_from, module.planned_steps(), cfg.max_time_minutes):
        # Nothing to train: the bundle (and the evaluation after it) points at the run that
        # trained these weights, not at this empty one.
        log.warning("Already trained: this configuration finished in MLflow run %s (%s). "
                    "Nothing to train; the model bundle is rewritten from that checkpoint. "
                    "pretrain.resume=false trains again from scratch.", previous or "?", resume_from)
        tracking.set_tags({"already_trained_in_run": previous or "unknown", **tags})
        module.load_state_dict(done["state_dict"])
        return _finish(module, images_train, dataset_card, val, TrainedLength.of_checkpoint(done, module),
                       run_id=previous)
    checkpoints.remember_run(checkpoint_dir, tracking.active_run_id())
    tracking.set_tags({**tags, "objective": objective.name, "seed": cfg.seed,
                       **({"resumed_from_run": previous} if resume_from and previous else {})})
    log.info("%s %s/%s: %s parameters; checkpoints in %s", objective.name, spec.encoder, spec.stem,
             f"{num_parameters:,}", checkpoint_dir)
    trained = _fit_in_run(module, checkpoint_dir, val, dataset_card)
    return _finish(module, images_train, dataset_card, val, trained, run_id=tracking.active_run_id())


def _resume_point(checkpoint_dir: Path, resume: bool, dataset_card: dict[str, Any]) -> Path | None:
    """The checkpoint to resume from, checked to be of this data; or None, the earlier
    checkpoints moved aside so that no later resume picks them up."""
    found = checkpoints.newest_loadable_checkpoint(checkpoint_dir) if resume else None
    if found:  # the folder is keyed by the data: a checkpoint of other data was copied in
        trained_on = load_weights(found, mmap=True).get(provenance.CHECKPOINT_DATA) or {}
        provenance.check_data(str(found), trained_on.get("sha256"), dataset_card.get("sha256"),
                              f"Move it out of {checkpoint_dir}, whose name is a hash of the data it trains on.")
    elif moved := checkpoints.set_aside_checkpoints(checkpoint_dir):
        log.warning("Not resuming: the earlier checkpoints of this configuration were moved to %s", moved)
    return found


def _fit_in_run(module: PretrainModule, checkpoint_dir: Path, val: ValidationViews,
                dataset_card: dict[str, Any]) -> TrainedLength:
    """Fit, logging to the active MLflow run; tag it with the engine that trained."""
    cfg = module.config
    logger = live_logger()
    callbacks: list[pl.Callback] = [RecordTrainingData(provenance.data_identity(dataset_card))]
    if logger is not None and cfg.reconstruction_every_n_epochs:
        callbacks.append(ReconstructionSnapshots(val.originals[SHOWN], val.views[SHOWN],
                                                 cfg.reconstruction_every_n_epochs, FigureToRun(logger)))
    trainer = build_trainer(cfg, checkpoint_dir, [logger] if logger else [], callbacks)
    if cfg.compile is not False:
        use_compile_cache(COMPILE_CACHE)
    try:
        trained = fit(module, trainer, checkpoint_dir, resume=cfg.resume)
    except Exception:
        raise  # kedro-mlflow marks the run FAILED
    except BaseException:
        tracking.end_active_run_killed()  # SIGTERM / Ctrl+C: the run must not stay RUNNING
        raise
    # which engine trained (after any fall back), so a run says what its speed came from
    failures = {"training.engine_failures": " | ".join(module.engine_failures)} if module.engine_failures else {}
    tracking.set_tags({"training.engine": module.engine, **failures})
    return trained


def _finish(module: PretrainModule, images_train: ImageSet, dataset_card: dict[str, Any],
            val: ValidationViews, trained: TrainedLength, run_id: str | None) -> tuple[dict[str, Any], Figure]:
    cfg = module.config
    if cfg.recompute_bn_stats:
        used = module.recompute_encoder_statistics()
        log.info("Re-estimated the encoder's batch-norm statistics on %d un-augmented training images", used)
    if cut := trained.cut_by_time_limit(cfg.max_time_minutes):
        tracking.set_tags({"training.cut_by_time_limit": f"{trained.steps} of {cut['planned_steps']} steps"})
    net = module.net.cpu().eval()
    figure = reconstruction_grid(module, val.originals[SHOWN], val.views[SHOWN])
    bundle = make_bundle(
        net, module.preprocessing, class_names=list(images_train.class_names), dataset=dataset_card.get("name"),
        data=provenance.data_identity(dataset_card),
        objective=module.objective.name, kl_coeff=module.objective.kl_coeff,
        # the epochs actually trained, as a fraction (Lightning counts an epoch cut short by
        # max_time_minutes as done: 0.44 of an epoch would read "1")
        epochs=round(trained.steps / module.steps_per_epoch, 3) if trained.steps else trained.epochs,
        steps=trained.steps, mlflow_run_id=run_id,  # the run that trained these weights
        cut_by_time_limit=cut,  # None, or the limit and the steps and epochs the schedule spanned
    )
    return bundle, figure


def check_inputs_belong_together(images_train: ImageSet, images_unlabeled: ImageSet, val_views: dict[str, Any],
                                 view_policy: dict[str, Any], dataset_card: dict[str, Any], root: str) -> None:
    """Refuse to train on images, views and a policy of different ingests (say, a re-ingest
    followed by ``--pipeline train`` without ``prepare``)."""
    fix = ("Run `kedro run --pipeline pretrain` (ingest + views + pretrain), or "
           "`kedro run --pipeline prepare` before `--pipeline train`, with the same --env and --params.")
    stamp = provenance.stamp_of(val_views) or {}
    for path, made_from in [*((f"03_primary/images_{s.split}", s.fingerprint) for s in (images_train, images_unlabeled)),
                            (POLICY_FILE, view_policy.get(provenance.DATA_SHA256)),
                            ("05_model_input/val_views.npz", stamp.get(provenance.DATA_SHA256))]:
        provenance.check_data(f"{root}/{path}", made_from, dataset_card.get("sha256"), fix)
    if "validation_split" not in stamp:  # written when validation views were drawn from the test split
        raise provenance.ProvenanceError(
            f"{root}/05_model_input/val_views.npz records no validation split: it was made by an "
            "older version, from the test images. Run `kedro run --pipeline views` to draw it "
            "from the validation split.")


def use_compile_cache(folder: Path) -> None:
    """Keep torch.compile's caches in ``folder`` (one for every configuration: entries are keyed by
    graph, torch and machine), so a resumed or repeated run loads in seconds what an earlier one
    compiled in minutes, whether or not /tmp survived. Set before anything compiles (Inductor's
    workers and spawned ranks inherit it); a ``TORCHINDUCTOR_CACHE_DIR`` the user set is kept."""
    if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        folder.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder.absolute())
