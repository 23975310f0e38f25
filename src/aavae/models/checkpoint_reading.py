"""Checkpoint files read without running their code, whoever wrote them: this project, the paper, any Lightning.

``weights_only=True`` alone cannot read the paper's released checkpoints: Lightning 1.x keyed
callback states by the callback *class* (a ``GLOBAL`` in the pickle) and saved hyper-parameters
as an ``AttributeDict`` or ``argparse.Namespace``. So the weights-only reader
(:func:`aavae.common.weights.load_weights`) is allowed, for that read alone, the classes such
checkpoints are known to name (:data:`KNOWN_CLASSES`), each as an inert stand-in
(:class:`ForeignObject`; an ``AttributeDict`` as a dict): nothing of Lightning 1.x or the
paper is imported, and any other name is refused by name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor

from aavae.common.weights import WeightsError, load_weights

from .net import LOG_SCALE_KEY, MODEL_PREFIXES, AAVAENet, ModelSpec, build_model

MAX_KEYS_LISTED = 10

#: Class references a Lightning or a paper checkpoint is known to hold, and why.
KNOWN_CLASSES: dict[str, str] = {
    **{
        f"pytorch_lightning.callbacks.{module}.{name}": "Lightning 1.0-1.4 keys callback states by class"
        for module, name in (
            ("model_checkpoint", "ModelCheckpoint"),
            ("early_stopping", "EarlyStopping"),
            ("lr_monitor", "LearningRateMonitor"),
            ("progress", "ProgressBar"),
            ("progress", "ProgressBarBase"),
            ("gpu_stats_monitor", "GPUStatsMonitor"),
            ("gradient_accumulation_scheduler", "GradientAccumulationScheduler"),
            ("stochastic_weight_avg", "StochasticWeightAveraging"),
            ("finetuning", "BaseFinetuning"),
            ("finetuning", "BackboneFinetuning"),
            ("pruning", "ModelPruning"),
            ("quantization", "QuantizationAwareTraining"),
            ("lambda_function", "LambdaCallback"),
            ("base", "Callback"),
        )
    },
    "src.callbacks.online_eval.OnlineFineTuner": "the paper's online probe callback (src/callbacks)",
    "src.callbacks.early_stopping.EarlyStopping": "the paper's two-metric early stopping (src/callbacks)",
    "argparse.Namespace": "hyper-parameters of scripts that pass their parsed arguments",
    "pathlib.PosixPath": "checkpoint folders saved as paths",
    "pathlib.WindowsPath": "checkpoint folders saved as paths",
}
#: ``AttributeDict`` under Lightning's names for it (``hyper_parameters`` of 1.x files where
#: omegaconf was installed), read as a plain dict.
ATTRIBUTE_DICTS = (
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning.pytorch.utilities.parsing.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "lightning.fabric.utilities.data.AttributeDict",
)


class ForeignObject:
    """An inert stand-in for an object of a class a checkpoint names (one subclass per name in
    :data:`KNOWN_CLASSES`), keeping what the file gave it as data: ``args`` and ``state``."""

    qualified_name: ClassVar[str] = ""

    def __new__(cls, *args: Any) -> ForeignObject:
        instance = super().__new__(cls)
        instance.args, instance.state = args, None
        return instance

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.qualified_name} stand-in, not loaded>"


def _stand_in(qualified_name: str) -> type[ForeignObject]:
    name = qualified_name.rsplit(".", 1)[1]
    return type(name, (ForeignObject,), {"qualified_name": qualified_name, "__module__": __name__,
                                         "__qualname__": f"ForeignObject[{qualified_name}]"})


STAND_INS: dict[str, type[ForeignObject]] = {name: _stand_in(name) for name in KNOWN_CLASSES}
_ALLOWED: dict[str, Any] = {**STAND_INS, **dict.fromkeys(ATTRIBUTE_DICTS, dict)}


def read_checkpoint(path: str | os.PathLike) -> Any:
    """Everything a checkpoint file holds, its known Python objects as inert stand-ins; a
    ValueError naming the file for one that is damaged, no torch file, asks for more than it
    may (:mod:`aavae.common.weights`) or names a class outside :data:`KNOWN_CLASSES`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (or is not a file)")
    try:
        return load_weights(path, allowed=_ALLOWED)
    except WeightsError as error:
        advice = "" if error.refused is None else (
            f". If you trust this file, extract its weights once where {error.refused} can be imported, "
            f"with torch.save(torch.load(path, weights_only=False)['state_dict'], 'weights.pt'), and "
            f"give weights.pt instead")
        raise WeightsError(f"checkpoint {error}{advice}", error.refused) from error


def state_dict_of(content: Any, path: str | os.PathLike) -> Mapping[str, Any]:
    """A Lightning checkpoint's ``state_dict``, or the content itself if it is a state_dict."""
    if isinstance(content, Mapping) and isinstance(content.get("state_dict"), Mapping):
        content = content["state_dict"]
    if not isinstance(content, Mapping) or not all(isinstance(k, str) for k in content):
        raise ValueError(
            f"checkpoint {path} is neither a Lightning checkpoint (a dict with 'state_dict') "
            f"nor a state_dict (a dict of name -> tensor)"
        )
    return content


def _is_model_key(key: str) -> bool:
    return key == LOG_SCALE_KEY or key.startswith(MODEL_PREFIXES)


def model_entries(state: Mapping[str, Any], path: Path) -> tuple[dict[str, Any], str]:
    """The model's entries of a checkpoint's state_dict without their prefix, and the prefix:
    the one most model keys sit under (none for the paper's, ``net.`` for this project's
    training module, ``module.`` for wrappers). A file with none is refused as what it is."""
    counts: dict[str, int] = {}
    for key in state:
        for part in (LOG_SCALE_KEY, *MODEL_PREFIXES):
            at = key.find(part)
            if at >= 0 and key.endswith(LOG_SCALE_KEY) == (part == LOG_SCALE_KEY) \
                    and (at == 0 or key[at - 1] == "."):
                counts[key[:at]] = counts.get(key[:at], 0) + 1
                break
    if not counts:
        tops = sorted({key.split(".")[0] + ("." if "." in key else "") for key in state})
        raise ValueError(
            f"checkpoint {path} holds no weights of an AAVAE model: none of its keys is "
            f"{LOG_SCALE_KEY} or starts with {', '.join(MODEL_PREFIXES)} (under any prefix); its "
            f"keys start with {_list_keys(tops)}. Give a checkpoint of this project "
            f"(aavae_model.pt, data/06_models/checkpoints/*/*.ckpt) or of the paper's code"
        )
    prefix = max(counts, key=lambda p: (counts[p], -len(p)))
    return {key[len(prefix):]: value for key, value in state.items()
            if key.startswith(prefix) and _is_model_key(key[len(prefix):])}, prefix


def head_of(state: Mapping[str, Any]) -> str | None:
    """``ae`` or ``vae``, as the projection keys of a model's state_dict say; None if neither."""
    if any(key.startswith("projection.projection_head.") for key in state):
        return "ae"
    if "projection.mu.weight" in state:
        return "vae"
    return None


def _list_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_KEYS_LISTED])
    more = f", ... ({len(keys) - MAX_KEYS_LISTED} more)" if len(keys) > MAX_KEYS_LISTED else ""
    return f"{len(keys)}: {shown}{more}"


def _describe(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, Tensor) else f"<{type(value).__name__}>"


def _mismatches(expected: Mapping[str, Tensor], found: Mapping[str, Any]) -> list[str]:
    """Human-readable lines for missing, unexpected and wrongly shaped keys (empty: all fit)."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    wrong_shape = [
        f"{key} {_describe(found[key])} vs {tuple(expected[key].shape)}"
        for key in expected
        if key in found
        and (not isinstance(found[key], Tensor) or found[key].shape != expected[key].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_list_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_list_keys(unexpected)}")
    if wrong_shape:
        problems.append(f"wrong shapes (checkpoint vs model) {_list_keys(wrong_shape)}")
    return problems


def load_paper_checkpoint(path: str | os.PathLike, spec: ModelSpec, *, content: Any = None) -> AAVAENet:
    """An AAVAENet of ``spec`` holding a checkpoint's model weights (:func:`model_entries`),
    the paper's or this project's; the head is the file's (it follows from the objective, not
    from ``model.*``). A ValueError lists the keys that do not fit ``spec``. ``content``: what
    :func:`read_checkpoint` returned for ``path``, if the caller read it already."""
    path = Path(path)
    if content is None:
        content = read_checkpoint(path)
    state, prefix = model_entries(state_dict_of(content, path), path)
    head = head_of(state)
    if head is not None and head != spec.head:
        spec = replace(spec, head=head)
    model = build_model(spec)
    problems = _mismatches(model.state_dict(), state)
    if problems:
        under = f" (its model keys read under the prefix {prefix!r})" if prefix else ""
        raise ValueError(
            f"checkpoint {path}{under} does not fit {spec}: " + "; ".join(problems) + ". "
            "Check the spec's encoder, stem, width, h_dim and latent_dim against the "
            "settings the checkpoint was trained with" + _trained_with(content)
        )
    model.load_state_dict(state)
    return model


def _trained_with(content: Any) -> str:
    """What a Lightning checkpoint's hyper-parameters say about its architecture, if anything."""
    hparams = content.get("hyper_parameters") if isinstance(content, Mapping) else None
    if isinstance(hparams, ForeignObject):  # an argparse.Namespace
        hparams = hparams.state
    if not isinstance(hparams, Mapping):
        return ""
    said = [f"{key}={hparams[key]!r}" for key in ("encoder_name", "h_dim", "latent_dim", "first_conv3x3",
                                                  "remove_first_maxpool", "input_height") if key in hparams]
    return f" (its hyper_parameters say {', '.join(said)})" if said else ""
