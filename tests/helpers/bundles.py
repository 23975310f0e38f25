"""Model bundles that look trained, for the serving tests."""

from __future__ import annotations

import torch

from aavae.models import ModelSpec, build_model

SPEC = ModelSpec(encoder="resnet18", width=8, latent_dim=16, input_size=16)


NORM = {"mean": [0.4, 0.5, 0.45], "std": [0.25, 0.2, 0.3]}


def trained_looking_bundle() -> dict:
    torch.manual_seed(3)
    net = build_model(SPEC).train()
    with torch.no_grad():  # batch-norm statistics away from their initial values
        net.posterior(torch.randn(8, 3, 16, 16))
    return {"state_dict": net.state_dict(), "spec": SPEC.to_dict(), "normalization": NORM,
            "mlflow_run_id": "run-7", "dataset": "imagefolder", "objective": "aavae"}
