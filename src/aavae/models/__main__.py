"""``python -m aavae.models``: a Markdown table of parameter counts for every encoder x stem, at
width 64, latent 128, the default h_dim and each stem's usual image size; the total leaves out
the one log-scale parameter, as the paper's count does."""

from __future__ import annotations

import torch

from . import ENCODERS, STEMS, ModelSpec, build_model, count_parameters

STEM_INPUT_SIZE = {"cifar": 32, "stl10": 96, "imagenet": 224}


def parameter_table() -> str:
    lines = [
        "| encoder | stem | input | h_dim | encoder params | decoder params | head params | total |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for encoder in ENCODERS:
        for stem in STEMS:
            spec = ModelSpec(encoder=encoder, stem=stem, input_size=STEM_INPUT_SIZE[stem])
            with torch.device("meta"):  # shapes only: no memory, no initialisation cost
                net = build_model(spec)
            parts = [count_parameters(m) for m in (net.encoder, net.decoder, net.projection)]
            cells = " | ".join(f"{n:,}" for n in (*parts, sum(parts)))
            lines.append(
                f"| {encoder} | {stem} | {spec.input_size} | {spec.resolved_h_dim} | {cells} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(parameter_table())
