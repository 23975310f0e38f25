"""Checkpoint files read without running their code, whoever wrote them: this project, the paper, any Lightning.

``torch.load(weights_only=False)`` rebuilds a file's objects by importing and calling whatever
its pickle names, so a checkpoint from elsewhere could run any code; ``weights_only=True``
refuses every Python object beyond tensors and plain containers. Neither reads the paper's
released checkpoints as they were written: its code (torch 1.8, Lightning's master of spring
2021) saved with Lightning 1.x, which keyed callback states by the callback *class* (the
pickle holds ``GLOBAL pytorch_lightning.callbacks.model_checkpoint ModelCheckpoint`` as a
dict key), and whose hyper-parameters may be an ``AttributeDict`` or an ``argparse.Namespace``.

So files are read by torch's own weights-only unpickler with its allow-list extended, by
name, to the classes such checkpoints are known to name (:data:`KNOWN_CLASSES`). Each is
mapped to an inert stand-in: a class that remembers its name and what the file gave it and
does nothing else (:class:`ForeignObject`); an ``AttributeDict`` becomes a plain dict. Nothing
of Lightning 1.x or of the paper's package is imported, or needs to be installed. Any other
name is refused before anything is built from it, and the error names it. The stand-ins are
allowed for that read alone (:func:`aavae.common.weights.load_weights`, which also bounds what
the file may ask for): other reads of the process refuse them as before.

Both of torch's formats load: the zip archive ``torch.save`` writes since torch 1.6 and the
plain pickle stream before it. Lightning 2.x files (callback states under string keys) and this
project's own checkpoints hold nothing beyond tensors and need no stand-in.
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

#: Class references a Lightning or a paper checkpoint is known to hold, and why. They are
#: read as :class:`ForeignObject` stand-ins (``AttributeDict`` as a dict); nothing else is.
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
#: ``AttributeDict`` (a dict with attribute access) under the names Lightning gave it: Lightning
#: 1.x versions that saved ``model.hparams`` itself when omegaconf was installed wrote
#: ``hyper_parameters`` as one. Read as a plain dict.
ATTRIBUTE_DICTS = (
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning.pytorch.utilities.parsing.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "lightning.fabric.utilities.data.AttributeDict",
)


class ForeignObject:
    """An inert stand-in for an object of a class a checkpoint names but this project never imports.

    The class is made once per name in :data:`KNOWN_CLASSES` (``qualified_name``). An instance
    keeps what the file passed to it, as data: ``args`` (its constructor arguments) and
    ``state`` (what unpickling would have set on it). Used as a dict key (Lightning 1.x's
    callback states), the stand-in class itself is the key.
    """

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
    """Everything a checkpoint file holds, its known Python objects as inert stand-ins.

    Never runs code from the file (see the module docstring). Raises FileNotFoundError for a
    missing file and ValueError, naming the file, for one that is not a torch file, is
    damaged, asks for more than it may (:mod:`aavae.common.weights`), or names a class outside
    :data:`KNOWN_CLASSES` (the error names it).
    """
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
    """The tensors of a checkpoint's content: a Lightning checkpoint's ``state_dict`` entry, or
    the content itself when it is a bare state_dict."""
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
    """The model's entries of a checkpoint's state_dict, without their prefix; and the prefix.

    The paper's module holds the model's parts at the top (``encoder.``, ...); this project's
    training module under ``net.`` (beside ``online_probe.``); wrappers add others
    (``module.``). The prefix under which most model keys sit is taken; everything else
    (probes, optimiser state, ...) is left out. A file with no model keys under any prefix is
    refused as what it is, not as an architecture mismatch.
    """
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
    """An AAVAENet built from ``spec`` holding the weights of a checkpoint file.

    Reads the paper's Lightning checkpoints (any Lightning version, see the module docstring)
    and this project's own (``last.ckpt``, ``epochNNNN.ckpt``, whose model sits under
    ``net.``): the ``encoder.``, ``decoder.``, ``projection.`` and ``log_scale`` entries, under
    whichever prefix they are (see :func:`model_entries`); the rest (online probe, optimizer
    state, ...) is ignored. The head (``vae`` or ``ae``) is the one the file holds: it follows
    from the training objective, not from the ``model.*`` architecture. A checkpoint that does
    not fit ``spec`` raises a ValueError listing the mismatched keys. ``content`` is what
    :func:`read_checkpoint` returned for ``path``, when the caller has read it already.
    """
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
    """What a Lightning checkpoint's hyper-parameters say about its architecture, if anything
    (the paper's scripts save ``encoder_name``, ``h_dim``, ``latent_dim``, ``first_conv3x3``)."""
    hparams = content.get("hyper_parameters") if isinstance(content, Mapping) else None
    if isinstance(hparams, ForeignObject):  # an argparse.Namespace
        hparams = hparams.state
    if not isinstance(hparams, Mapping):
        return ""
    said = [f"{key}={hparams[key]!r}" for key in ("encoder_name", "h_dim", "latent_dim", "first_conv3x3",
                                                  "remove_first_maxpool", "input_height") if key in hparams]
    return f" (its hyper_parameters say {', '.join(said)})" if said else ""
