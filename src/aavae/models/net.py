"""The whole AAVAE network (encoder, posterior head, decoder, likelihood scale) and its config.

``AAVAENet`` keeps the attribute names of the paper's Lightning module (``encoder``,
``decoder``, ``projection``, ``log_scale``), so the paper's checkpoints load with
:func:`load_paper_checkpoint` after dropping the entries that are not part of the model.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .decoder import ResNetDecoder, build_decoder, check_h_dim, check_input_size
from .encoder import (
    ResNetEncoder,
    build_encoder,
    check_width,
    encoder_out_dim,
    get_architecture,
    get_stem,
)
from .heads import HEADS, build_head

MODEL_PREFIXES = ("encoder.", "decoder.", "projection.")
LOG_SCALE_KEY = "log_scale"
MAX_KEYS_LISTED = 10


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"ModelSpec.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild an AAVAENet; persisted next to its weights.

    ``h_dim`` (projection hidden size and decoder width at the bottleneck) defaults to the
    encoder's feature size, as in the paper. ``input_size`` is the image side the decoder
    reconstructs. ``head`` is ``vae`` (a posterior mean and log-variance) or ``ae`` (the paper's
    deterministic AE latent). ``log_scale`` starts the Gaussian likelihood's log-variance,
    which is trained only when ``learn_scale`` is set.
    """

    encoder: str = "resnet18"
    stem: str = "cifar"
    width: int = 64
    h_dim: int | None = None
    latent_dim: int = 128
    input_size: int = 32
    log_scale: float = 0.0
    learn_scale: bool = False
    head: str = "vae"

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"ModelSpec.head must be one of {HEADS}, got {self.head!r}")
        get_architecture(self.encoder)
        get_stem(self.stem)
        check_width(self.width)
        _check_positive_int("latent_dim", self.latent_dim)
        check_input_size(self.input_size, self.stem)
        if self.h_dim is not None:
            _check_positive_int("h_dim", self.h_dim)
            check_h_dim(self.h_dim)
        elif self.feature_dim % 16:
            raise ValueError(
                f"ModelSpec: the default h_dim (the encoder's output size, {self.feature_dim} "
                f"for {self.encoder} at width {self.width}) is not a multiple of 16, which the "
                f"decoder needs; set h_dim to a multiple of 16 or raise width"
            )
        if isinstance(self.log_scale, bool) or not isinstance(self.log_scale, (int, float)):
            raise ValueError(f"ModelSpec.log_scale must be a number, got {self.log_scale!r}")
        object.__setattr__(self, "log_scale", float(self.log_scale))
        if not isinstance(self.learn_scale, bool):
            raise ValueError(
                f"ModelSpec.learn_scale must be true or false, got {self.learn_scale!r}"
            )

    @property
    def feature_dim(self) -> int:
        """Size of the encoder's output (the representation)."""
        return encoder_out_dim(self.encoder, self.width)

    @property
    def resolved_h_dim(self) -> int:
        return self.feature_dim if self.h_dim is None else self.h_dim

    def architecture(self) -> dict[str, Any]:
        """The fields that decide the network's shapes, ``h_dim`` resolved: what an evaluation
        compares against ``model.*`` and records as the architecture it evaluated."""
        return {"encoder": self.encoder, "stem": self.stem, "width": self.width,
                "h_dim": self.resolved_h_dim, "latent_dim": self.latent_dim,
                "input_size": self.input_size, "head": self.head}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (str, int, float, bool, None)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        if not isinstance(data, Mapping):
            raise ValueError(f"ModelSpec.from_dict expects a mapping, got {type(data).__name__}")
        known = [field.name for field in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(
                f"ModelSpec: unknown keys {unknown}; known keys are {', '.join(known)}"
            )
        return cls(**data)


class AAVAENet(nn.Module):
    """Encoder -> head (posterior mu, logvar; or the AE's latent); latent -> decoder -> image."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        h_dim = spec.resolved_h_dim
        self.encoder: ResNetEncoder = build_encoder(spec.encoder, spec.stem, spec.width)
        self.decoder: ResNetDecoder = build_decoder(
            spec.encoder, spec.stem, spec.input_size, spec.latent_dim, h_dim, spec.width
        )
        self.projection = build_head(spec.head, self.encoder.out_dim, h_dim, spec.latent_dim)
        self.log_scale = nn.Parameter(
            torch.tensor([spec.log_scale]), requires_grad=spec.learn_scale
        )

    def encode(self, x: Tensor) -> Tensor:
        """The representation: ``(N, 3, H, W) -> (N, feature_dim)``."""
        return self.encoder(x)

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z | x), each ``(N, latent_dim)`` (``vae`` head only)."""
        if self.spec.head != "vae":
            raise ValueError("posterior() needs the vae head; the ae head has a deterministic latent")
        return self.projection(self.encoder(x))

    def latent_mean(self, features: Tensor) -> Tensor:
        """The latent a reconstruction decodes: the posterior mean, or the AE's latent."""
        out = self.projection(features)
        return out[0] if isinstance(out, tuple) else out

    def decode(self, z: Tensor) -> Tensor:
        """Mean of p(x | z): ``(N, latent_dim) -> (N, 3, input_size, input_size)``."""
        return self.decoder(z)

    def forward(self, x: Tensor) -> Tensor:
        return self.encode(x)


def build_model(spec: ModelSpec) -> AAVAENet:
    return AAVAENet(spec)


def count_parameters(module: nn.Module) -> int:
    """All parameters, trainable or frozen (a fixed ``log_scale`` counts as one)."""
    return sum(parameter.numel() for parameter in module.parameters())


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6


def _looks_like_torch_file(head: bytes) -> bool:
    """A zip archive, or a pickle stream (protocol 2 to 5) as torch.save wrote before 1.6."""
    return head.startswith(ZIP_MAGIC) or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def _read_state_dict(path: Path) -> Mapping[str, Any]:
    """Tensors of a Lightning ``.ckpt`` (its ``state_dict`` entry) or of a bare state_dict."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (or is not a file)")
    with path.open("rb") as handle:
        head = handle.read(4)
    if not _looks_like_torch_file(head):
        found = "it is empty" if not head else f"it starts with the bytes {head!r}"
        raise ValueError(
            f"checkpoint {path} is not a checkpoint: torch.save writes a zip archive (a pickle "
            f"before torch 1.6), and {found}. Give the path of a .ckpt or .pt file written by "
            f"torch.save, such as data/06_models/aavae_model.pt or a last.ckpt"
        )
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" not in str(error):  # garbage after a pickle-like first byte
            raise ValueError(
                f"checkpoint {path} is damaged or not a checkpoint: torch could not unpickle it "
                f"({_unpickling_reason(error)})"
            ) from error
        raise ValueError(
            f"checkpoint {path} holds Python objects beyond tensors ({_refused_global(error)}), "
            f"which are not unpickled from files that may be untrusted. If you trust this "
            f"file, extract its weights once with torch.save(torch.load(path, "
            f"weights_only=False)['state_dict'], 'weights.pt') and load weights.pt instead"
        ) from error
    except Exception as error:  # truncated, or a zip that torch.save did not write
        raise ValueError(
            f"checkpoint {path} is damaged (truncated?) or a zip file torch.save did not write: "
            f"torch.load failed with {_first_line(error)}. Copy or download it again"
        ) from error
    if isinstance(content, Mapping) and isinstance(content.get("state_dict"), Mapping):
        content = content["state_dict"]
    if not isinstance(content, Mapping) or not all(isinstance(k, str) for k in content):
        raise ValueError(
            f"checkpoint {path} is neither a Lightning checkpoint (a dict with 'state_dict') "
            f"nor a state_dict (a dict of name -> tensor)"
        )
    return content


def _unpickling_reason(error: Exception) -> str:
    """What torch's weights-only unpickler tripped over, without its advice on weights_only."""
    found = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", str(error), re.DOTALL)
    return found.group(1) if found else _first_line(error)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _refused_global(error: Exception) -> str:
    """The 'Unsupported global: ...' part of torch's weights_only refusal, if it has one."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    return f"it refers to {found.group(1)}" if found else str(error).splitlines()[0]


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


def load_paper_checkpoint(path: str | os.PathLike, spec: ModelSpec) -> AAVAENet:
    """An AAVAENet built from ``spec`` holding the weights of a checkpoint file.

    Reads the paper's Lightning checkpoints and this project's own (``last.ckpt``,
    ``epochNNNN.ckpt``, whose model sits under ``net.``): the ``encoder.``, ``decoder.``,
    ``projection.`` and ``log_scale`` entries, under whichever prefix they are (see
    :func:`model_entries`); the rest (online probe, optimizer state, ...) is ignored. The head
    (``vae`` or ``ae``) is the one the file holds: it follows from the training objective,
    not from the ``model.*`` architecture. A checkpoint that does not fit ``spec`` raises a
    ValueError listing the mismatched keys.
    """
    path = Path(path)
    state, prefix = model_entries(_read_state_dict(path), path)
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
            "settings the checkpoint was trained with"
        )
    model.load_state_dict(state)
    return model
