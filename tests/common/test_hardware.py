"""aavae.common.hardware: bf16 where the CPU has bf16 matrix units, read from torch's CPU probe."""

from __future__ import annotations

import pytest
import torch

from aavae.common import hardware


@pytest.mark.parametrize(("capabilities", "fast"), [
    ({"architecture": "x86_64", "amx_bf16": True, "avx512_bf16": False}, True),
    ({"architecture": "x86_64", "amx_bf16": False, "avx512_bf16": True}, True),
    ({"architecture": "x86_64", "avx2": True, "avx512_f": True}, False),  # AVX-512 without bf16
    ({"architecture": "aarch64", "neon": True}, False),
])
def test_auto_picks_bf16_on_a_cpu_only_where_it_has_bf16_units(monkeypatch, capabilities, fast):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    assert hardware.cpu_has_fast_bf16() is fast
    assert hardware.choose_precision("auto", "cpu") == ("bf16-mixed" if fast else "32-true")
