"""Models to evaluate: rebuild a model bundle, read a checkpoint file into one, the baselines.

A model bundle is what the pretrain node writes (``aavae_model.pt``): weights plus the plain
config needed to rebuild them. :func:`make_bundle` is the one function that assembles one and
:func:`model_from_bundle` the one that rebuilds its network.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aavae.common.provenance import CHECKPOINT_DATA, weights_sha256
from aavae.models import (
    AAVAENet,
    ModelSpec,
    build_model,
    count_parameters,
    load_paper_checkpoint,
    read_checkpoint,
)
from aavae.views import Preprocessing

log = logging.getLogger(__name__)

#: Where a bundle keeps its :class:`aavae.views.Preprocessing` (the name predates the zoom).
PREPROCESSING_KEY = "normalization"
BUNDLE_KEYS = ("state_dict", "spec", PREPROCESSING_KEY)


def make_bundle(net: AAVAENet, preprocessing: Preprocessing, **facts: Any) -> dict[str, Any]:
    """A model bundle of ``net``: its weights on the CPU and their fingerprint, its spec, how an
    image becomes its input (``preprocessing``), its parameter count, and ``facts`` about where
    it came from (dataset, the ``data`` it was trained on, objective, epochs, the MLflow run,
    ...; see :mod:`aavae.common.provenance`)."""
    state_dict = {key: value.detach().cpu() for key, value in net.state_dict().items()}
    return {
        "state_dict": state_dict,
        "weights_sha256": weights_sha256(state_dict),
        "spec": net.spec.to_dict(),
        PREPROCESSING_KEY: preprocessing.to_dict(),
        "num_parameters": count_parameters(net),
        **facts,
    }


def model_from_bundle(bundle: Mapping[str, Any], source: str = "the model bundle") -> AAVAENet:
    """Rebuild the network of a model bundle (what pretrain writes) in eval mode."""
    if not isinstance(bundle, Mapping) or any(key not in bundle for key in BUNDLE_KEYS):
        found = sorted(bundle) if isinstance(bundle, Mapping) else type(bundle).__name__
        raise ValueError(
            f"{source} is not a model bundle: expected a dict with {', '.join(BUNDLE_KEYS)}, "
            f"found {found}"
        )
    try:
        net = build_model(ModelSpec.from_dict(bundle["spec"]))
        net.load_state_dict(bundle["state_dict"])
    except (ValueError, RuntimeError, TypeError) as error:
        raise ValueError(f"{source} cannot be rebuilt: {error}") from error
    return net.eval()


def bundle_preprocessing(bundle: Mapping[str, Any], source: str = "the model bundle") -> Preprocessing:
    """How an image becomes the input of a bundle's network."""
    if not isinstance(bundle, Mapping) or PREPROCESSING_KEY not in bundle:
        raise ValueError(f"{source} is not a model bundle: it has no '{PREPROCESSING_KEY}' "
                         "(how images are normalised); rerun `kedro run --pipeline pretrain`")
    return Preprocessing.from_dict(bundle[PREPROCESSING_KEY], source=f"{source}'s {PREPROCESSING_KEY}")


def bundle_from_checkpoint(
    path: str | os.PathLike,
    spec: ModelSpec,
    preprocessing: Preprocessing,
    class_names: Sequence[str],
) -> dict[str, Any]:
    """A model bundle, in the format pretrain writes, of the checkpoint file at ``path``.

    A bundle of this project (``aavae_model.pt``) brings its own spec and normalisation (a
    warning says where they differ from ``spec``). A training checkpoint (this project's
    ``last.ckpt`` / ``epochNNNN.ckpt``, which records its data, the paper's Lightning ``.ckpt``
    or a bare state_dict) is read into ``spec``; it does not say how its images were
    normalised, so it gets ``preprocessing`` (the recipe's), as the paper's linear evaluation
    applies its recipe's constants. ``class_names`` are the classes it is evaluated on. The file
    is read once, by :func:`aavae.models.read_checkpoint`, which never runs code from it.
    """
    path = Path(path)
    content = read_checkpoint(path)
    if isinstance(content, Mapping) and all(key in content for key in BUNDLE_KEYS):
        net = model_from_bundle(content, source=f"model bundle {path}")
        bundle = dict(content)
        bundle["state_dict"] = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        _say_if_architecture_differs(path, net.spec, spec)
    else:
        data = content.get(CHECKPOINT_DATA) if isinstance(content, Mapping) else None  # ours record it
        if data and data.get("image_shape"):  # built at the size it was trained at, not this data's
            spec = replace(spec, input_size=int(data["image_shape"][0]))
        net = load_paper_checkpoint(path, spec, content=content)  # model.*, with the head the file holds
        epoch = content.get("epoch") if isinstance(content, Mapping) else None
        bundle = make_bundle(
            net, preprocessing, dataset=(data or {}).get("name"), data=data,
            objective="project checkpoint" if _is_project_checkpoint(content) else "paper checkpoint",
            epochs=int(epoch) + 1 if isinstance(epoch, int) else None, mlflow_run_id=None,
        )
    bundle["class_names"] = [str(name) for name in class_names]
    bundle["checkpoint"] = str(path)
    return bundle


def _say_if_architecture_differs(path: Path, found: ModelSpec, configured: ModelSpec) -> None:
    """A bundle brings its own architecture, which overrides ``model.*``: say so when they differ."""
    ours, theirs = configured.architecture(), found.architecture()
    ours.pop("head"), theirs.pop("head")  # the head follows the objective, not model.*
    differing = [f"{key} {theirs[key]} (model.* says {ours[key]})" for key in ours if ours[key] != theirs[key]]
    if differing:
        log.warning(
            "%s is a model bundle: it is evaluated with its own architecture and normalisation, "
            "not with model.*; they differ in %s.", path, ", ".join(differing),
        )


def _is_project_checkpoint(content: object) -> bool:
    """A Lightning checkpoint of this project's training module (its model under ``net.``)."""
    state = content.get("state_dict") if isinstance(content, Mapping) else None
    return isinstance(state, Mapping) and any(str(key).startswith("net.") for key in state)


def baseline_encoder(name: str, spec: ModelSpec, seed: int) -> nn.Module:
    """The encoder of a baseline: ``random_init`` (the architecture, untrained, drawn from
    ``seed``) or ``raw_pixels`` (the normalised pixels themselves)."""
    if name == "random_init":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model(spec).encoder.eval()
    if name == "raw_pixels":
        return nn.Flatten()
    raise ValueError(f"unknown baseline {name!r}; known: random_init, raw_pixels")
