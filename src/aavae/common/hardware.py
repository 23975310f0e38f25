"""Every ``auto`` choice of hardware, so ``auto`` means the same everywhere: the GPU when torch
sees one; bf16 mixed precision where it runs fast (a CUDA GPU with bf16, a CPU with AMX or
AVX512-BF16: without them a bf16 convolution is about a hundred times slower than fp32)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEVICE_KIND = {"gpu": "cuda", "cuda": "cuda", "cpu": "cpu", "mps": "mps"}


@dataclass(frozen=True)
class Hardware:
    """Where and how a run trains."""

    accelerator: str  # "cpu", "gpu", "mps"
    device_kind: str  # "cpu", "cuda", "mps"
    precision: str  # "bf16-mixed" or "32-true"


def choose_accelerator(requested: str) -> str:
    """Lightning's accelerator name for ``auto``, ``cpu``, ``gpu``, ``cuda`` or ``mps``."""
    if requested != "auto":
        return "gpu" if requested == "cuda" else requested
    return "gpu" if torch.cuda.is_available() else "cpu"


def choose_device(requested: str) -> torch.device:
    """The torch device an ``accelerator`` parameter names (``auto``: the GPU when there is one)."""
    return torch.device(DEVICE_KIND[choose_accelerator(requested)])


def cpu_has_fast_bf16() -> bool:
    """A CPU with AMX or AVX512-BF16, where oneDNN runs bf16 convolutions faster than fp32."""
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("amx_bf16") or capabilities.get("avx512_bf16"))


def choose_precision(requested: str, where: str | torch.device = "cpu") -> str:
    """``auto``: bf16 mixed where ``where`` (an accelerator name or a device) has fast bf16,
    else 32-true; other values as they are."""
    if requested != "auto":
        return requested
    kind = where.type if isinstance(where, torch.device) else DEVICE_KIND.get(where, where)
    if kind == "cuda":
        fast = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        fast = kind == "cpu" and cpu_has_fast_bf16()
    return "bf16-mixed" if fast else "32-true"


def choose_hardware(accelerator: str, precision: str) -> Hardware:
    """Accelerator, device kind and precision for the ``accelerator`` and ``precision`` parameters."""
    chosen = choose_accelerator(accelerator)
    return Hardware(chosen, DEVICE_KIND[chosen], choose_precision(precision, chosen))


def runs_in_bf16(precision: str, accelerator: str) -> bool:
    """Whether networks run under bf16 autocast for these ``precision``/``accelerator`` parameters."""
    return choose_precision(precision, choose_device(accelerator)) == "bf16-mixed"
