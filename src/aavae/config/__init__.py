"""Typed parameter schemas: validate once where parameters enter, fail with a clear message.

Parameters are grouped by concern (``dataset``, ``views``, ``model``, ``pretrain``,
``evaluate``), one schema each. An unknown key or a wrong type stops the run with a message
naming the dotted key (``pretrain.learning_rate``) and what was expected.
"""

from __future__ import annotations

import difflib
import reprlib
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from aavae.common.records import STRICT
from aavae.models.net import (
    MAX_IMAGE_SIDE,
    EncoderName,
    HiddenDim,
    ImageSide,
    LatentDim,
    LogScale,
    StemName,
    Width,
    check_architecture,
)
from aavae.views.policy import ViewPolicy


class ConfigError(ValueError):
    """A parameter that does not fit its schema."""


class _Schema(BaseModel):
    # Strict: true is not 1 and "3" is not 3 (a tuple parameter says strict=False: YAML's list
    # is taken for it, its items stay strict). NaN and infinity are never a setting here (no
    # limit, no clipping: null); refused by name.
    model_config = STRICT


#: Counts and sizes reach numpy and torch as int64 and are multiplied together (steps = epochs
#: x batches per epoch): under 2**31 each, a product of two stays in range.
MAX_COUNT = 2**31 - 1
Count = Annotated[int, Field(ge=1, le=MAX_COUNT)]
CountOrZero = Annotated[int, Field(ge=0, le=MAX_COUNT)]
#: The seed range of numpy, scikit-learn and Lightning.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


class DatasetConfig(_Schema):
    name: Literal["digits", "cifar10", "stl10", "imagefolder"] = Field(
        "digits", description="digits (scikit-learn's, bundled), cifar10, stl10, imagefolder (your images)"
    )
    path: str | None = Field(None, description="file or folder holding the dataset")
    download: bool = Field(False, description="fetch the official archive when path holds none")
    image_size: ImageSide | None = Field(
        16, description="side length images are brought to (digits, imagefolder; null: "
        "digits 16, a folder's own); CIFAR-10 (32) and STL-10 (96) are read at their own size "
        "and ingest warns when this says otherwise",
    )
    resize: Literal["resize_crop", "resize"] = Field(
        "resize_crop", description="resize_crop: shorter side resized, then centre-cropped; resize: "
        "stretched to a square"
    )
    on_bad_image: Literal["error", "skip"] = Field(
        "error", description="an undecodable image file: stop naming it, or skip it (listed in the "
        "dataset card)"
    )
    unlabeled: bool = Field(False, description="STL-10: also ingest the 100,000 unlabeled images")
    val_holdout: CountOrZero = Field(
        128, description="training images held out to validate pretraining, drawn as the "
        "paper's data modules draw them (random_split, seed 42), where the dataset has no "
        "validation split of its own (an image folder's val/ beside test/); nothing trains on "
        "them; at most a tenth of the training images; the paper's CIFAR-10: 5000, STL-10: 500",
    )
    test_fraction: float = Field(0.25, gt=0, lt=1, description="digits: held-out share")
    seed: Seed = Field(0, description="digits: the seed of the train/test split")

    def require_path(self) -> None:
        """Ingesting an image folder needs its path; nothing after ingest does (evaluate and
        embed read the ingested images), so this is checked where the folder is read."""
        if self.name == "imagefolder" and not self.path:
            raise ConfigError(
                "dataset.path is required to ingest dataset.name=imagefolder: give a folder or "
                ".tar/.tar.gz/.zip holding <split>/<class>/<image> files (--params "
                "dataset.path=<it>). Evaluate reads the images ingest stored and needs none."
            )


Share = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[float, Field(gt=0.0)]


class ViewsConfig(ViewPolicy, _Schema):
    """The augmentation policy (the fields of `aavae.views.ViewPolicy`, which this extends), the
    preview and validation views, and the preprocessing of originals."""

    preview_count: int = Field(8, ge=1, le=64, description="images in view_preview.png (a row each)")
    preview_views: int = Field(4, ge=1, le=16, description="views shown per image in the preview")
    val_count: Count = Field(256, description="held-out images in the fixed validation views")
    seed: Seed = Field(0, description="seed of the validation views and the preview")
    mean: tuple[Share, Share, Share] | None = Field(
        None, strict=False, description="per-channel normalisation mean; null: computed from the "
        "training images (the paper's recipes fix their datasets' constants)",
    )
    std: tuple[Positive, Positive, Positive] | None = Field(
        None, strict=False, description="as mean; null: computed")
    original_resize: Annotated[int, Field(ge=1, le=2 * MAX_IMAGE_SIDE)] | None = Field(
        None, description="reconstruct (and evaluate on) Resize(original_resize) + CenterCrop "
        "back to the image size of the original (so at least that size); the paper's STL-10: 105 for 96",
    )

    @model_validator(mode="after")
    def _mean_and_std_together(self) -> ViewsConfig:
        if (self.mean is None) != (self.std is None):
            raise ValueError("views.mean and views.std go together: give both, or neither")
        return self

    def policy_fields(self) -> dict[str, Any]:
        """The augmentation policy's fields, for :class:`aavae.views.ViewPolicy`."""
        return {name: getattr(self, name) for name in ViewPolicy.model_fields}


class ModelConfig(_Schema):
    """The network: `aavae.models.ModelSpec`'s architecture fields, with its bounds. A network
    whose parameters would take over 8 GiB (in float32) is refused with its size."""

    encoder: EncoderName = Field("resnet18", description="the encoder; the decoder mirrors it")
    stem: StemName = Field(
        "cifar", description="cifar: 3x3 conv, no max-pool; stl10: 7x7, no max-pool; imagenet: 7x7 "
        "and max-pool"
    )
    width: Width = Field(32, description="base channel count; the paper's is 64")
    h_dim: HiddenDim | None = Field(None, description="projection hidden size, a multiple of 16 (the "
                                    "decoder views it as h_dim/16 x 4 x 4); null: the encoder's output size")
    latent_dim: LatentDim = Field(64, description="size of the latent z")

    @model_validator(mode="after")
    def _fits(self) -> ModelConfig:
        check_architecture(self.encoder, self.stem, self.width, self.h_dim, self.latent_dim)
        return self


class PretrainConfig(_Schema):
    objective: Literal["aavae", "vae", "ae"] = Field(
        "aavae", description="aavae: an augmented view in, the original out; vae and ae: the "
        "paper's baselines"
    )
    denoising: bool = Field(
        False, description="ae only: the paper's ae.py --denoising, an augmented view in and "
        "that same view reconstructed (aavae is its vae.py --denoising)",
    )
    kl_coeff: float | None = Field(
        None, ge=0, description="None: 0 for aavae and ae, 0.1 (the paper's default) for vae"
    )
    log_scale: LogScale = Field(0.0, description="log-variance of the Gaussian likelihood (scale = "
                             "exp(log_scale / 2), the paper's convention)")
    learn_scale: bool = Field(False, description="learn log_scale instead of keeping it fixed")
    val_samples: int = Field(1, ge=1, le=1000, description="importance samples for val log p(x) "
                             "(each a decoder pass over the validation batch)")
    max_epochs: Count = Field(30, description="length of pretraining in epochs")
    max_steps: Count | None = Field(
        None, description="stop after this many optimisation steps (the schedule spans "
        "them); null: max_epochs decides",
    )
    batch_size: Count = Field(128, description="the global batch (over all devices)")
    optimizer: Literal["adam", "lamb"] = Field("adam", description="adam (fused) or lamb")
    learning_rate: float = Field(0.002, gt=0, description="peak learning rate (after warm-up)")
    weight_decay: float | None = Field(
        None, ge=0, description="None: 1e-6 for ae (the paper's ae.py default), 0 otherwise"
    )
    exclude_bn_bias: bool = Field(False, description="no weight decay on norm layers and biases")
    warmup_epochs: CountOrZero = Field(5, description="per-step linear warm-up, in epochs")
    warmup_fraction: float | None = Field(
        None, ge=0, lt=1, description="warm-up as a share of all steps (replaces warmup_epochs); "
        "what a run fitted to a time limit needs",
    )
    schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="the learning rate after warm-up, down to zero at the end (or constant)"
    )
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = Field(
        "auto", description="where training runs; auto: the GPU when there is one"
    )
    precision: Literal["auto", "32-true", "bf16-mixed"] = Field(
        "auto", description="auto: bf16-mixed where the hardware has fast bf16, else 32-true"
    )
    devices: Count = Field(1, description="devices on this machine; pretrain.batch_size is the global batch over all of them")
    gradient_clip_val: float | None = Field(None, gt=0, description="clip the gradient norm to this")
    compile: bool | Literal["auto"] = Field(
        "auto", description="torch.compile the step; auto: on CUDA, and on CPU when eager "
        "training would last more than 31 minutes, past which compiling pays (decided on the "
        "steady time of its first steps)",
    )
    cuda_graph: bool | Literal["auto"] = Field(
        "auto", description="replay the whole step as one CUDA graph; auto: on CUDA"
    )
    channels_last: bool = Field(True, description="train in channels-last memory layout (a CPU "
                                "step falls back to contiguous where that layout faults natively)")
    data_on_device: bool | Literal["auto"] = Field(
        "auto", description="keep the training images on the device (gathered there each step) "
        "or stream batches from host memory; auto: on the device when they take under half of "
        "its free memory (a quarter of free RAM on a CPU)",
    )
    sync_batchnorm: bool = Field(
        False, description="with several devices, pool batch-norm statistics over them "
        "(then the result equals one device's on the same global batch)",
    )
    recompute_bn_stats: bool = Field(
        False, description="after pretraining, re-estimate the encoder's batch-norm "
        "statistics on up to 10,000 un-augmented training images (what evaluation sees)",
    )
    encode_original: Literal["every_step", "diagnostic_steps"] = Field(
        "diagnostic_steps",
        description="every_step: the paper's no-grad pass of the original image on every step "
        "(its batch-norm statistics then mix originals and views); diagnostic_steps: only "
        "every diagnostics_every_n_steps, with running statistics untouched",
    )
    seed: Seed = Field(0, description="seed of initialisation, batches, views and noise")
    resume: bool = Field(True, description="continue from the last checkpoint of this config")
    checkpoint_every_n_epochs: Count = Field(10, description="keep an epoch checkpoint this often "
                                           "(last.ckpt is written on top of it)")
    reconstruction_every_n_epochs: CountOrZero = Field(10, description="log a reconstruction grid this "
                                               "often; 0: only at the end")
    diagnostics_every_n_steps: Count = Field(10, description="how often cos_sim and "
                                           "kl_augmentation are computed and logged")
    online_probe: bool = Field(True, description="train a linear probe on detached features during "
                               "pretraining (probe_acc)")
    training_split: Literal["auto", "train", "unlabeled", "unlabeled+train"] = Field(
        "auto", description="the images pretraining sees; auto: unlabeled + train when the "
        "unlabeled split was ingested (STL-10), else train. The paper's STL-10: unlabeled",
    )
    unlabeled_holdout: CountOrZero = Field(
        0, description="unlabeled images held out of pretraining (a fixed seeded "
        "choice); the paper's STL-10 holds out 5,000 of the 100,000 for validation",
    )
    max_time_minutes: float | None = Field(
        None, gt=0, le=525_600, description="stop after this wall time (at most a year), a cap on top of the steps; a run it "
        "stops before its schedule ends says so (cut_by_time_limit in the model bundle and metrics)",
    )
    schedule_to_time_limit: bool = Field(
        False, description="with max_time_minutes: time the first steps, then end the schedule "
        "(and training) at the step count that fills the time limit, so a decay is not cut off",
    )

    @property
    def effective_kl_coeff(self) -> float:
        if self.kl_coeff is not None:
            return self.kl_coeff
        return 0.1 if self.objective == "vae" else 0.0

    @model_validator(mode="after")
    def _consistent(self) -> PretrainConfig:
        if self.denoising and self.objective != "ae":
            raise ValueError(
                f"pretrain.denoising is the paper's ae.py --denoising and needs pretrain.objective=ae "
                f"(got {self.objective}); its vae.py --denoising is objective=aavae (views in, the "
                f"original out), with kl_coeff for a KL term"
            )
        if self.batch_size % self.devices:
            raise ValueError(
                f"pretrain.batch_size={self.batch_size} is the global batch and must split evenly "
                f"over pretrain.devices={self.devices}; use a multiple of {self.devices}"
            )
        if self.schedule_to_time_limit and (self.max_time_minutes is None or self.max_steps):
            raise ValueError(
                "pretrain.schedule_to_time_limit fits the schedule to pretrain.max_time_minutes: "
                "set max_time_minutes (and leave max_steps null)"
            )
        if self.unlabeled_holdout and self.training_split == "train":
            raise ValueError(
                "pretrain.unlabeled_holdout holds out unlabeled images, but "
                "pretrain.training_split=train uses none; set training_split to unlabeled "
                "or unlabeled+train, or unlabeled_holdout to 0"
            )
        return self

    @property
    def effective_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return 1e-6 if self.objective == "ae" else 0.0


class EvaluateConfig(_Schema):
    batch_size: Count = Field(512, description="images a batch when extracting features")
    probe_val_fraction: float = Field(0.1, gt=0, lt=1, description="the linear probe picks its "
                                      "weight decay on this share of the training split, never on test")
    probe_weight_decays: tuple[Annotated[float, Field(ge=0)], ...] = Field(
        (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1), min_length=1, strict=False,
        description="the L2 grid the probe chooses from (at least one)")
    few_labels: tuple[Count, ...] = Field(
        (1, 5, 10), strict=False, description="labels per class of the few-label linear probe (every count is "
        "drawn few_label_draws times, the table leads with the smallest); [] turns it off",
    )
    few_label_draws: Count = Field(20, description="draws of the labelled images per count")
    knn_k: Count = Field(200, description="kNN: neighbours by cosine similarity")
    knn_temperature: float = Field(0.1, gt=0, description="kNN: votes weighted exp(similarity / t)")
    baselines: tuple[Literal["random_init", "raw_pixels"], ...] = Field(
        ("random_init", "raw_pixels"), strict=False, description="scored beside the model: the same network "
        "untrained, and the pixels; [] for none"
    )
    seed: Seed = Field(0, description="seed of the probe's split, the few-label draws and random init")
    protocol: Literal["frozen_features", "paper"] = Field(
        "frozen_features",
        description="frozen_features: L-BFGS probe on fixed features; paper: SGD linear layer "
        "on the frozen encoder over augmented images (the paper's linear_eval.py)",
    )
    paper_epochs: Count = Field(90, description="epochs of the paper protocol")
    paper_batch_size: Count = Field(256, description="paper protocol; lr = 0.1 * batch / 256")
    checkpoint: str | None = Field(
        None, description="evaluate this file (a model bundle or a paper checkpoint) instead "
        "of the trained aavae_model",
    )
    embedding_method: Literal["tsne", "pca"] = Field(
        "tsne", description="embedding.png: tsne (PCA to 50, then t-SNE) or pca"
    )
    embedding_points: int = Field(2000, ge=2, le=MAX_COUNT, description="test points in embedding.png")
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = Field(
        "auto", description="where networks run during evaluation; auto: the GPU when there is one"
    )
    precision: Literal["auto", "32-true", "bf16-mixed"] = Field(
        "auto", description="networks in evaluation (features, baselines, the paper protocol); "
        "auto: bf16-mixed on a GPU with bf16 or a CPU with fast bf16 (AMX, AVX512-BF16), 2.5x "
        "faster there with features 0.35 % from 32-true's; else 32-true",
    )
    recompute_bn_stats: bool = Field(
        False, description="re-estimate the evaluated encoder's batch-norm statistics on up to "
        "10,000 un-augmented training images before extracting features",
    )

    @field_validator("few_labels", "baselines", "probe_weight_decays")
    @classmethod
    def _each_once(cls, values: tuple[Any, ...], info: ValidationInfo) -> tuple[Any, ...]:
        repeated = sorted({value for value in values if values.count(value) > 1}, key=str)
        if repeated:
            raise ValueError(f"{info.field_name} lists {', '.join(map(str, repeated))} more than once, got {list(values)}")
        return values


class RegistryConfig(_Schema):
    """The trained encoder as a registered MLflow model: one version per training run."""

    enabled: bool = Field(True, description="log the encoder as an MLflow model and register it")
    model_name: str = Field(
        "{dataset}-{objective}-encoder",
        pattern=r"^([A-Za-z0-9_.-]|\{dataset\}|\{objective\})+$",
        description="registered model name: letters, digits, '_', '.', '-'; {dataset} and "
        "{objective} are filled in from the trained model, so recipes do not share a name",
    )
    max_image_side: Count = Field(
        1024, description="the registered model refuses images with a longer side, before "
        "decoding any (it brings every image to the training size; send smaller images)",
    )
    max_batch_size: Count = Field(
        512, description="the registered model refuses more images a call (512: the "
        "features and embed batch); with max_image_side it bounds one call's pixels",
    )


class EmbedConfig(_Schema):
    """``kedro run --pipeline embed``: embed every image of a folder, list neighbours of a query."""

    path: str | None = Field(
        None, description="folder, .tar, .tar.gz or .zip of images to embed, any layout"
    )
    model_uri: str | None = Field(
        None, description="an MLflow model (models:/<name>/<version>, runs:/<run id>/<path>); "
        "None: the trained data/06_models/aavae_model.pt",
    )
    query: str | None = Field(
        None, description="an image file, or a path of the table, whose nearest neighbours to "
        "list; None: a few images of the folder itself",
    )
    neighbours: int = Field(8, ge=1, le=100, description="neighbours listed per query")
    batch_size: Count = Field(512, description="images decoded and encoded at a time")
    on_bad_image: Literal["error", "skip"] = Field(
        "error", description="an undecodable image: stop naming it, or skip it"
    )
    precision: Literal["auto", "32-true", "bf16-mixed"] = Field(
        "auto", description="auto: bf16-mixed on a CPU with fast bf16 (AMX, AVX512-BF16), about "
        "2.5x faster and within ~1% of 32-true; the same rule as evaluate.precision",
    )


SCHEMAS: dict[str, type[_Schema]] = {
    "dataset": DatasetConfig,
    "views": ViewsConfig,
    "model": ModelConfig,
    "pretrain": PretrainConfig,
    "evaluate": EvaluateConfig,
    "registry": RegistryConfig,
    "embed": EmbedConfig,
}

S = TypeVar("S", bound=_Schema)


def _describe(error: dict[str, Any], group: str) -> str:
    key = ".".join([group, *(str(part) for part in error["loc"])]) if error["loc"] else group
    if error["type"] == "extra_forbidden":
        schema = SCHEMAS[group]
        allowed = ", ".join(schema.model_fields)
        close = difflib.get_close_matches(str(error["loc"][-1]), schema.model_fields, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        return f"'{key}': unknown parameter{hint} (known keys of '{group}': {allowed})"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "value_error" and ", got " in message:  # it names the value already
        return f"'{key}': {message}"
    return f"'{key}': {message} (got {error.get('input')!r})"


def parse(group: str, values: dict[str, Any] | None, schema: type[S] | None = None) -> S:
    """Validate one parameter group; raise :class:`ConfigError` naming each bad key."""
    parsed, problems = _validate(group, values, schema or SCHEMAS[group])  # type: ignore[arg-type]
    if problems:
        raise ConfigError(_invalid(problems))
    return parsed  # type: ignore[return-value]


def _validate(group: str, values: Any, schema: type[S]) -> tuple[S | None, list[str]]:
    """The group's schema and no problems, or None and a line for each problem."""
    if values is not None and not isinstance(values, dict):  # --params pretrain=5
        return None, [f"'{group}': a parameter group is a mapping of its keys (--params {group}.<key>=<value>), "
                      f"got {type(values).__name__} {reprlib.repr(values)}"]
    try:
        return schema.model_validate(values or {}), []
    except ValidationError as exc:
        return None, [_describe(err, group) for err in exc.errors()]


def _invalid(problems: list[str]) -> str:
    return ("Invalid parameters:\n  - " + "\n  - ".join(problems)
            + "\nFix them in conf/<env>/parameters*.yml or in --params.")


def validate_all(params: dict[str, Any]) -> dict[str, _Schema]:
    """Validate every group at once, so a run fails before any work is done."""
    problems = []
    for group in sorted(set(params) - set(SCHEMAS)):  # pretrian.max_epochs=1 gets a misspelt key's hint
        close = difflib.get_close_matches(group, list(SCHEMAS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        problems.append(f"'{group}': unknown parameter group{hint} (known groups: {', '.join(SCHEMAS)})")
    parsed: dict[str, _Schema] = {}
    for group, schema in SCHEMAS.items():
        config, group_problems = _validate(group, params.get(group), schema)
        if config is None:
            problems += group_problems
        else:
            parsed[group] = config
    if {"dataset", "model", "views"} <= set(parsed):
        problems.extend(_model_fits_the_images(parsed["dataset"], parsed["model"], parsed["views"]))  # type: ignore[arg-type]
    if problems:
        raise ConfigError(_invalid(problems))
    return parsed


def _model_fits_the_images(dataset: DatasetConfig, model: ModelConfig, views: ViewsConfig) -> list[str]:
    """A stem that cannot rebuild the images' size, or a zoom of originals smaller than they
    are, stops the run before ingest, not after."""
    from aavae.data import image_side
    from aavae.models.decoder import check_input_size

    side = image_side(dataset)
    if side is None:
        return []
    given = f"dataset.image_size={side}" if dataset.image_size == side else f"{dataset.name} images are {side} px"
    problems = []
    try:
        check_input_size(side, model.stem)
    except ValueError as error:
        problems.append(f"'model.stem': {error} ({given}, model.stem={model.stem})")
    if views.original_resize is not None and views.original_resize < side:
        problems.append(f"'views.original_resize': zooms originals in, so it is at least the image side ({given}), "
                        f"got {views.original_resize}")
    return problems
