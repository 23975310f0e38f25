"""Find the smallest reproduction of PyTorch's native abort on odd channels_last batches.

On CPUs with AVX-512, training this project's ResNet with an odd batch in channels_last died in
``loss.backward()`` with ``free(): invalid next size`` (see ``aavae.training.layout``). This
script runs the reproduction and its parts, each configuration in a subprocess of its own (an
abort kills only that one), and prints a table of which survive and which die, and how:

    PYTHONPATH=src python benchmarks/native_abort.py            # the whole grid, ~2 minutes
    PYTHONPATH=src python benchmarks/native_abort.py --batches 63 64 --precisions fp32

Parts: ``encoder`` (the issue's reproduction: ResNet-18 encoder, CIFAR stem, width 8, three
backward passes), ``conv`` (one 3x3 convolution), ``conv_stride2`` (the downsampling 3x3 and its
1x1 shortcut), ``batchnorm``, ``avgpool`` (the adaptive average pool), ``block`` (one residual
block). A part that dies where ``encoder`` dies, and is the smallest such, names the kernel.
It prints the CPU's flags that matter (AVX-512, AMX) first: on an AVX2-only CPU every row is
expected to survive.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import subprocess
import sys
import textwrap

PART_CODE = {
    "encoder": """
        from aavae.models import ModelSpec, build_model
        module = build_model(ModelSpec(encoder="resnet18", stem="cifar", width=WIDTH, latent_dim=16,
                                       input_size=SIDE)).encoder
        x = torch.rand(BATCH, 3, SIDE, SIDE)
    """,
    "model": """
        from aavae.models import ModelSpec, build_model
        net = build_model(ModelSpec(encoder="resnet18", stem="cifar", width=WIDTH, latent_dim=16,
                                    input_size=SIDE))
        class Model(torch.nn.Module):  # encoder -> posterior mean -> decoder, as a training step
            def __init__(self):
                super().__init__()
                self.net = net
            def forward(self, x):
                return self.net.decode(self.net.latent_mean(self.net.encoder(x)))
        module = Model()
        x = torch.rand(BATCH, 3, SIDE, SIDE)
    """,
    "decoder": """
        from aavae.models import ModelSpec, build_model
        module = build_model(ModelSpec(encoder="resnet18", stem="cifar", width=WIDTH, latent_dim=16,
                                       input_size=SIDE)).decoder
        x = torch.rand(BATCH, 16)
    """,
    "conv": """
        module = torch.nn.Conv2d(WIDTH, WIDTH, 3, padding=1, bias=False)
        x = torch.rand(BATCH, WIDTH, SIDE, SIDE)
    """,
    "conv_stride2": """
        module = torch.nn.Sequential(torch.nn.Conv2d(WIDTH, 2 * WIDTH, 3, stride=2, padding=1, bias=False),
                                     torch.nn.Conv2d(2 * WIDTH, 2 * WIDTH, 1, bias=False))
        x = torch.rand(BATCH, WIDTH, SIDE, SIDE)
    """,
    "batchnorm": """
        module = torch.nn.BatchNorm2d(WIDTH)
        x = torch.rand(BATCH, WIDTH, SIDE, SIDE)
    """,
    "avgpool": """
        module = torch.nn.AdaptiveAvgPool2d(1)
        x = torch.rand(BATCH, WIDTH, SIDE, SIDE)
    """,
    "block": """
        from aavae.models.encoder import build_encoder
        module = build_encoder("resnet18", "cifar", WIDTH).layer2
        x = torch.rand(BATCH, WIDTH, SIDE, SIDE)
    """,
}

SMALLEST_FIRST = ["conv", "batchnorm", "avgpool", "conv_stride2", "block", "encoder", "decoder", "model"]

TEMPLATE = """
import torch
torch.manual_seed(0)
{part}
module.train()
if LAYOUT == "channels_last" and x.ndim == 4:
    module = module.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
x.requires_grad_(True)
for _ in range(3):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=PRECISION == "bf16"):
        out = module(x)
    out.float().square().mean().backward()
print("survived")
"""


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            line = next((row for row in info if row.startswith("flags")), "")
        with open("/proc/cpuinfo") as info:
            model = next((row.split(":", 1)[1].strip() for row in info if row.startswith("model name")), "?")
    except OSError:
        return "unknown CPU"
    wanted = [flag for flag in line.split() if flag.startswith(("avx512", "amx"))]
    return f"{model}; {' '.join(wanted) or 'no AVX-512, no AMX'}"


def run_one(part: str, batch: int, side: int, layout: str, precision: str, timeout: int,
            width: int = 8) -> str:
    code = TEMPLATE.format(part=textwrap.dedent(PART_CODE[part]))
    code = (f"BATCH, SIDE, LAYOUT, PRECISION, WIDTH = {batch}, {side}, {layout!r}, {precision!r}, {width}\n"
            + code)
    try:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                timeout=timeout, env={**os.environ})
    except subprocess.TimeoutExpired:
        return "timed out"
    if result.returncode == 0 and "survived" in result.stdout:
        return "ok"
    if result.returncode < 0:
        last = (result.stderr.strip().splitlines() or ["?"])[-1][:60]
        return f"DIED {signal.Signals(-result.returncode).name} ({last})"
    last = (result.stderr.strip().splitlines() or ["?"])[-1][:60]
    return f"error {result.returncode} ({last})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=list(PART_CODE), choices=list(PART_CODE))
    parser.add_argument("--batches", nargs="+", type=int, default=[63, 64])
    parser.add_argument("--sides", nargs="+", type=int, default=[16])
    parser.add_argument("--widths", nargs="+", type=int, default=[4, 8], help="ResNet base width")
    parser.add_argument("--layouts", nargs="+", default=["channels_last", "contiguous"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--timeout", type=int, default=300)
    args = parser.parse_args()
    import torch

    print(f"CPU: {cpu_flags()}; torch {torch.__version__}")
    print(f"{'part':<13} {'width':>5} {'batch':>5} {'side':>4} {'layout':<14} {'prec':<5} result")
    died = []
    for part, width, batch, side, layout, precision in itertools.product(
            args.parts, args.widths, args.batches, args.sides, args.layouts, args.precisions):
        outcome = run_one(part, batch, side, layout, precision, args.timeout, width)
        print(f"{part:<13} {width:>5} {batch:>5} {side:>4} {layout:<14} {precision:<5} {outcome}", flush=True)
        if outcome.startswith("DIED"):
            died.append((part, batch, side, layout, precision, width))
    if not died:
        print("no configuration died on this CPU")
    else:
        smallest = min(died, key=lambda row: SMALLEST_FIRST.index(row[0]))
        print(f"died: {len(died)} configurations; the smallest part that died: {smallest[0]} "
              f"(width {smallest[5]}, batch {smallest[1]}, {smallest[2]} px, {smallest[3]}, {smallest[4]})")


if __name__ == "__main__":
    main()
