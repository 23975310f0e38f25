"""Typed parameter schemas: validate once where parameters enter, fail with a clear message.

Parameters are grouped by concern (``dataset``, ``views``, ``model``, ``pretrain``,
``evaluate``), one schema each. An unknown key or a wrong type stops the run with a message
naming the dotted key (``pretrain.learning_rate``) and what was expected.
"""

from __future__ import annotations

import difflib
from dataclasses import fields
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, get_type_hints

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from aavae.views.policy import (
    ViewPolicy,
    bounds_text,
    check_view_field,
    view_field_description,
    view_field_names,
)

if TYPE_CHECKING:
    from aavae.models import ModelSpec
    from aavae.objective import Objective


class ConfigError(ValueError):
    """A parameter that does not fit its schema."""


class _Schema(BaseModel):
    # NaN and infinity are never a setting here (no limit, no clipping: null); refused by name
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DatasetConfig(_Schema):
    name: Literal["digits", "cifar10", "stl10", "imagefolder"] = Field(
        "digits", description="digits (scikit-learn's, bundled), cifar10, stl10, imagefolder (your images)"
    )
    path: str | None = Field(None, description="file or folder holding the dataset")
    download: bool = Field(False, description="fetch the official archive when path holds none")
    image_size: int | None = Field(
        16, gt=0, description="side length images are brought to (digits, imagefolder; null: "
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
    val_holdout: int = Field(
        0, ge=0, description="cifar10, stl10: training images held out as the paper's data "
        "modules hold them out (random_split, seed 42) into a 'val' split that neither "
        "pretraining nor evaluation trains on; the paper's CIFAR-10: 5000, STL-10: 500",
    )
    test_fraction: float = Field(0.25, gt=0, lt=1, description="digits: held-out share")
    seed: int = Field(0, description="digits: the seed of the train/test split")

    @model_validator(mode="after")
    def _holdout_of_a_paper_dataset(self) -> DatasetConfig:
        if self.val_holdout and self.name not in ("cifar10", "stl10"):
            raise ValueError(
                f"dataset.val_holdout holds out training images as the paper's CIFAR-10 and STL-10 "
                f"data modules do; dataset.name={self.name} has its own held-out images (digits: "
                f"dataset.test_fraction; imagefolder: a test/ or val/ folder). Set val_holdout to 0"
            )
        return self

    def require_path(self) -> None:
        """Ingesting an image folder needs its path; nothing after ingest does (evaluate and
        embed read the ingested images), so this is checked where the folder is read."""
        if self.name == "imagefolder" and not self.path:
            raise ConfigError(
                "dataset.path is required to ingest dataset.name=imagefolder: give a folder or "
                ".tar/.tar.gz/.zip holding <split>/<class>/<image> files (--params "
                "dataset.path=<it>). Evaluate reads the images ingest stored and needs none."
            )


def _view_policy_fields() -> dict[str, Any]:
    """ViewPolicy's fields as pydantic fields: the same types, defaults, meanings and bounds
    (checked by the policy's own rule, so a value one accepts the other accepts)."""
    hints = get_type_hints(ViewPolicy)
    return {
        f.name: (hints[f.name], Field(f.default, description=view_field_description(f.name),
                                      json_schema_extra={"bounds": bounds_text(f.name)}))
        for f in fields(ViewPolicy)
    }


def _check_view_field(cls: type, value: Any, info: ValidationInfo) -> Any:
    return check_view_field(info.field_name, value)


#: The views group's augmentation fields, generated from :class:`aavae.views.ViewPolicy`.
_ViewPolicyFields = create_model(
    "_ViewPolicyFields", __base__=_Schema,
    __validators__={"_policy_bounds": field_validator(*view_field_names())(_check_view_field)},
    **_view_policy_fields(),
)


class ViewsConfig(_ViewPolicyFields):  # type: ignore[misc, valid-type]
    """The augmentation policy (the fields of `aavae.views.ViewPolicy`, generated from it), the
    preview and validation views, and the preprocessing of originals."""

    preview_count: int = Field(8, ge=1, description="images in view_preview.png")
    preview_views: int = Field(4, ge=1, description="views shown per image in the preview")
    val_count: int = Field(256, ge=1, description="held-out images in the fixed validation views")
    seed: int = Field(0, description="seed of the validation views and the preview")
    mean: tuple[float, float, float] | None = Field(
        None, description="per-channel normalisation mean in [0, 1]; null: computed from the "
        "training images (the paper's recipes fix their datasets' constants)",
    )
    std: tuple[float, float, float] | None = Field(None, description="as mean; null: computed")
    original_resize: int | None = Field(
        None, gt=0, description="reconstruct (and evaluate on) Resize(original_resize) + "
        "CenterCrop back to the image size of the original; the paper's STL-10: 105 for 96",
    )

    @model_validator(mode="after")
    def _mean_and_std_together(self) -> ViewsConfig:
        if (self.mean is None) != (self.std is None):
            raise ValueError("views.mean and views.std go together: give both, or neither")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"views.std must be positive, got {list(self.std)}")
        return self

    def policy_fields(self) -> dict[str, Any]:
        """The augmentation policy's fields, for :class:`aavae.views.ViewPolicy`."""
        return {name: getattr(self, name) for name in view_field_names()}


class ModelConfig(_Schema):
    encoder: Literal["resnet18", "resnet34", "resnet50", "resnet50w2", "resnet50w4"] = Field(
        "resnet18", description="the encoder; the decoder mirrors it"
    )
    stem: Literal["cifar", "stl10", "imagenet"] = Field(
        "cifar", description="cifar: 3x3 conv, no max-pool; stl10: 7x7, no max-pool; imagenet: 7x7 "
        "and max-pool"
    )
    width: int = Field(32, ge=1, description="base channel count; the paper's is 64")
    h_dim: int | None = Field(None, ge=1, description="projection hidden size; null: the encoder's "
                              "output size")
    latent_dim: int = Field(64, ge=1, description="size of the latent z")

    def spec(self, input_size: int, **pretraining: Any) -> ModelSpec:
        """The network these parameters name, for images ``input_size`` pixels on a side;
        ``pretraining`` sets what only training decides (``log_scale``, ``learn_scale``, ``head``)."""
        from aavae.models import ModelSpec  # torch is imported only when a network is built

        return ModelSpec(encoder=self.encoder, stem=self.stem, width=self.width, h_dim=self.h_dim,
                         latent_dim=self.latent_dim, input_size=input_size, **pretraining)


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
    log_scale: float = Field(0.0, description="log-variance of the Gaussian likelihood (scale = "
                             "exp(log_scale / 2), the paper's convention)")
    learn_scale: bool = Field(False, description="learn log_scale instead of keeping it fixed")
    val_samples: int = Field(1, ge=1, description="importance samples for val log p(x)")
    max_epochs: int = Field(30, ge=1, description="length of pretraining in epochs")
    max_steps: int | None = Field(
        None, ge=1, description="stop after this many optimisation steps (the schedule spans "
        "them); null: max_epochs decides",
    )
    batch_size: int = Field(128, ge=1, description="the global batch (over all devices)")
    optimizer: Literal["adam", "lamb"] = Field("adam", description="adam (fused) or lamb")
    learning_rate: float = Field(0.002, gt=0, description="peak learning rate (after warm-up)")
    weight_decay: float | None = Field(
        None, ge=0, description="None: 1e-6 for ae (the paper's ae.py default), 0 otherwise"
    )
    exclude_bn_bias: bool = Field(False, description="no weight decay on norm layers and biases")
    warmup_epochs: int = Field(2, ge=0, description="per-step linear warm-up, in epochs")
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
    devices: int = Field(1, ge=1, description="devices on this machine; pretrain.batch_size is the global batch over all of them")
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
    seed: int = Field(0, description="seed of initialisation, batches, views and noise")
    resume: bool = Field(True, description="continue from the last checkpoint of this config")
    checkpoint_every_n_epochs: int = Field(10, ge=1, description="keep an epoch checkpoint this often "
                                           "(last.ckpt is written on top of it)")
    reconstruction_every_n_epochs: int = Field(10, ge=0, description="log a reconstruction grid this "
                                               "often; 0: only at the end")
    diagnostics_every_n_steps: int = Field(10, ge=1, description="how often cos_sim and "
                                           "kl_augmentation are computed and logged")
    online_probe: bool = Field(True, description="train a linear probe on detached features during "
                               "pretraining (probe_acc)")
    training_split: Literal["auto", "train", "unlabeled", "unlabeled+train"] = Field(
        "auto", description="the images pretraining sees; auto: unlabeled + train when the "
        "unlabeled split was ingested (STL-10), else train. The paper's STL-10: unlabeled",
    )
    unlabeled_holdout: int = Field(
        0, ge=0, description="unlabeled images held out of pretraining (a fixed seeded "
        "choice); the paper's STL-10 holds out 5,000 of the 100,000 for validation",
    )
    max_time_minutes: float | None = Field(
        None, gt=0, description="stop after this wall time, a cap on top of the steps; a run it "
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

    def training_objective(self) -> Objective:
        """The objective these parameters name (kind, KL weight, denoising): one place builds it."""
        from aavae.objective import Objective  # torch is imported only when training

        return Objective(self.objective, self.effective_kl_coeff, self.denoising)

    @model_validator(mode="after")
    def _denoising_is_the_aes(self) -> PretrainConfig:
        if self.denoising and self.objective != "ae":
            raise ValueError(
                f"pretrain.denoising is the paper's ae.py --denoising and needs pretrain.objective=ae "
                f"(got {self.objective}); its vae.py --denoising is objective=aavae (views in, the "
                f"original out), with kl_coeff for a KL term"
            )
        return self

    @model_validator(mode="after")
    def _batch_splits_over_devices(self) -> PretrainConfig:
        if self.batch_size % self.devices:
            raise ValueError(
                f"pretrain.batch_size={self.batch_size} is the global batch and must split evenly "
                f"over pretrain.devices={self.devices}; use a multiple of {self.devices}"
            )
        return self

    @model_validator(mode="after")
    def _time_fit_needs_a_limit(self) -> PretrainConfig:
        if self.schedule_to_time_limit and (self.max_time_minutes is None or self.max_steps):
            raise ValueError(
                "pretrain.schedule_to_time_limit fits the schedule to pretrain.max_time_minutes: "
                "set max_time_minutes (and leave max_steps null)"
            )
        return self

    @model_validator(mode="after")
    def _holdout_needs_unlabeled(self) -> PretrainConfig:
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
    batch_size: int = Field(512, ge=1, description="images a batch when extracting features")
    probe_val_fraction: float = Field(0.1, gt=0, lt=1, description="the linear probe picks its "
                                      "weight decay on this share of the training split, never on test")
    probe_weight_decays: tuple[Annotated[float, Field(ge=0)], ...] = Field(
        (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1), min_length=1,
        description="the L2 grid the probe chooses from (at least one)")
    few_labels: tuple[Annotated[int, Field(ge=1)], ...] = Field(
        (1, 5, 10), description="labels per class of the few-label linear probe (every count is "
        "drawn few_label_draws times, the table leads with the smallest); [] turns it off",
    )
    few_label_draws: int = Field(20, ge=1, description="draws of the labelled images per count")
    knn_k: int = Field(200, ge=1, description="kNN: neighbours by cosine similarity")
    knn_temperature: float = Field(0.1, gt=0, description="kNN: votes weighted exp(similarity / t)")
    baselines: tuple[Literal["random_init", "raw_pixels"], ...] = Field(
        ("random_init", "raw_pixels"), description="scored beside the model: the same network "
        "untrained, and the pixels; [] for none"
    )
    seed: int = Field(0, description="seed of the probe's split, the few-label draws and random init")
    protocol: Literal["frozen_features", "paper"] = Field(
        "frozen_features",
        description="frozen_features: L-BFGS probe on fixed features; paper: SGD linear layer "
        "on the frozen encoder over augmented images (the paper's linear_eval.py)",
    )
    paper_epochs: int = Field(90, ge=1, description="epochs of the paper protocol")
    paper_batch_size: int = Field(256, ge=1, description="paper protocol; lr = 0.1 * batch / 256")
    checkpoint: str | None = Field(
        None, description="evaluate this file (a model bundle or a paper checkpoint) instead "
        "of the trained aavae_model",
    )
    embedding_method: Literal["tsne", "pca"] = Field(
        "tsne", description="embedding.png: tsne (PCA to 50, then t-SNE) or pca"
    )
    embedding_points: int = Field(2000, ge=2, description="test points in embedding.png")
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
    max_image_side: int = Field(
        1024, ge=1, description="the registered model refuses images with a longer side, before "
        "decoding any (it brings every image to the training size; send smaller images)",
    )
    max_batch_size: int = Field(
        512, ge=1, description="the registered model refuses more images a call (512: the "
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
    batch_size: int = Field(512, ge=1, description="images decoded and encoded at a time")
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
    schema = schema or SCHEMAS[group]  # type: ignore[assignment]
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"parameters '{group}' must be a mapping, got {type(values).__name__}")
    try:
        return schema.model_validate(values or {})  # type: ignore[return-value, union-attr]
    except ValidationError as exc:
        lines = [_describe(err, group) for err in exc.errors()]
        raise ConfigError(
            "Invalid parameters:\n  - " + "\n  - ".join(lines)
            + "\nFix them in conf/<env>/parameters*.yml or in --params."
        ) from None


def _unknown_group(group: str) -> str:
    """A misspelt group (``pretrian.max_epochs=1``) gets the same hint a misspelt key gets."""
    close = difflib.get_close_matches(group, list(SCHEMAS), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"'{group}': unknown parameter group{hint} (known groups: {', '.join(SCHEMAS)})"


def validate_all(params: dict[str, Any]) -> dict[str, _Schema]:
    """Validate every group at once, so a run fails before any work is done."""
    problems = [_unknown_group(group) for group in sorted(set(params) - set(SCHEMAS))]
    parsed: dict[str, _Schema] = {}
    for group in SCHEMAS:
        try:
            parsed[group] = parse(group, params.get(group))
        except ConfigError as exc:
            problems.extend(line[4:] for line in str(exc).splitlines()[1:-1])
    if "dataset" in parsed and "model" in parsed:
        problems.extend(_model_fits_the_images(parsed["dataset"], parsed["model"]))  # type: ignore[arg-type]
    if problems:
        raise ConfigError(
            "Invalid parameters:\n  - " + "\n  - ".join(problems)
            + "\nFix them in conf/<env>/parameters*.yml or in --params."
        )
    return parsed


def _model_fits_the_images(dataset: DatasetConfig, model: ModelConfig) -> list[str]:
    """A stem that cannot rebuild the images' size stops the run before ingest, not after."""
    from aavae.data import image_side
    from aavae.models.decoder import check_input_size

    side = image_side(dataset)
    if side is None:
        return []
    try:
        check_input_size(side, model.stem)
    except ValueError as error:
        given = f"dataset.image_size={side}" if dataset.image_size == side else f"{dataset.name} images are {side} px"
        return [f"'model.stem': {error} ({given}, model.stem={model.stem})"]
    return []
