"""Why a validation epoch spikes while training does not: stale batch-norm running statistics.

Scores the fixed validation views with the weights of each epoch checkpoint three ways: in
eval mode with the running statistics the checkpoint holds (what ``val_loss`` logs), with the
batch's own statistics (train-mode batch norm, what ``train_loss`` sees), and in eval mode
after re-estimating the running statistics on the same views. Where the first is far above the
other two, the weights are fine and only the running averages lag them.

Needs a run with a checkpoint every epoch, e.g. the default digits run (seed 0 spikes at its
third epoch, right after the warm-up, when the learning rate peaks):

    .venv/bin/kedro run --pipeline pretrain --params pretrain.checkpoint_every_n_epochs=1,pretrain.resume=false,registry.enabled=false
    PYTHONPATH=src .venv/bin/python benchmarks/validation_spike.py [--root data/<env>] [--checkpoints <root>/06_models/checkpoints/<hash>] [--epochs 1 2 3 4 5]

Prints one line per epoch: the three losses and the KL of the posterior (large when the
latent means and variances blow up under the stale statistics).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import update_bn

from aavae.common.weights import load_weights
from aavae.models import ModelSpec, build_model
from aavae.objective import reconstruction_terms
from aavae.views import POLICY_FILE, split_view_policy


class WholePass(torch.nn.Module):
    """The whole network as one module, so update_bn re-estimates the decoder's norms too."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net.decode(self.net.projection(self.net.encode(batch))[0])


def newest_per_epoch_folder(root: Path) -> Path:
    folders = [f for f in root.iterdir() if (f / "epoch0002.ckpt").is_file()]
    if not folders:
        raise SystemExit(f"no checkpoint folder under {root} holds epoch0002.ckpt: train with "
                         "pretrain.checkpoint_every_n_epochs=1 first (see this script's doc)")
    return max(folders, key=lambda f: f.stat().st_mtime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=Path, default=None)
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--root", type=Path, default=Path("data"),
                        help="the environment's artifact root: data for base, data/<env> otherwise")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="the run's model bundle, the architecture the checkpoints hold "
                             "(default <root>/06_models/aavae_model.pt)")
    args = parser.parse_args()
    folder = args.checkpoints or newest_per_epoch_folder(args.root / "06_models/checkpoints")
    val = np.load(args.root / "05_model_input/val_views.npz")
    policy_file = args.root / POLICY_FILE
    _, preprocessing = split_view_policy(json.loads(policy_file.read_text()), str(policy_file))
    views = preprocessing.apply_to_views(torch.from_numpy(val["views"]).permute(0, 3, 1, 2))
    originals = preprocessing.apply(torch.from_numpy(val["originals"]).permute(0, 3, 1, 2))
    spec = ModelSpec.from_dict(load_weights(args.bundle or args.root / "06_models/aavae_model.pt")["spec"])
    noise = torch.randn(1, len(views), spec.latent_dim, generator=torch.Generator().manual_seed(0))
    print(f"checkpoints: {folder}; {len(views)} validation views")
    print("epoch | eval, running stats | batch stats | eval, stats re-estimated | KL (running stats)")
    for epoch in args.epochs:
        checkpoint = load_weights(folder / f"epoch{epoch:04d}.ckpt")
        state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
        losses, kl = [], float("nan")
        with torch.no_grad():
            for mode in ("running", "batch", "re-estimated"):
                net = build_model(spec)
                net.load_state_dict(state)
                if mode == "re-estimated":
                    update_bn(views.split(64), WholePass(net))
                net.train(mode == "batch")
                loss, metrics, _ = reconstruction_terms(net, net.encode(views), originals, noise, 0.0)
                losses.append(float(loss))
                if mode == "running":
                    kl = float(metrics["kl"])
        print(f"{epoch:5d} | {losses[0]:19,.0f} | {losses[1]:11,.0f} | {losses[2]:24,.0f} | {kl:,.0f}")


if __name__ == "__main__":
    main()
