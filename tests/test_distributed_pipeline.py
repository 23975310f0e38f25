"""The real pipelines on two processes (CPU, gloo): spawned by the node, or by torchrun.

`kedro run --pipeline pretrain --params pretrain.devices=2` spawns two ranks inside the
training node; `torchrun --nproc-per-node 2 -m kedro run --pipeline train` starts two
`kedro run`s that Lightning joins. Either way: one MLflow run, one writer of each artifact,
and the weights of one process on the same global batch (tolerance: see test_distributed.py).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import copy_project, kedro, project_runs
from tests.helpers.interrupts import wait_for_new_checkpoint

pytestmark = pytest.mark.slow  # every test here starts processes or real kedro runs

# Few, large steps in fp32. Adam amplifies rounding: after two epochs of 21 steps at batch 64,
# two one-process runs that differ only in their thread count already differ by 19% (cosine
# 0.982), as much as one and two processes do, so a long run could not tell a sharding bug
# from rounding. After 6 steps of 448 both gaps are ~1.2% (cosine 0.99994); 6 steps here,
# so the kill after the first epoch leaves two to resume.
ONE = "pretrain.max_epochs=3,pretrain.sync_batchnorm=true,pretrain.precision=32-true,pretrain.batch_size=448"
TWO = ONE + ",pretrain.devices=2"



def _spawned_ranks(parent: int) -> dict[int, int]:
    """The processes ``parent`` started with multiprocessing's spawn (the training ranks), found by
    their parent PID, as PID -> a pidfd (it names that very process, even once its PID is reused)."""
    ranks = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields, command = stat.read_text(), (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue  # ended meanwhile
        if int(fields[fields.rindex(")") + 2:].split()[1]) == parent and b"spawn_main" in command:
            ranks[int(stat.parent.name)] = os.pidfd_open(int(stat.parent.name))
    return ranks


def _flat(path: Path) -> torch.Tensor:
    state = torch.load(path, weights_only=True)["state_dict"]
    return torch.cat([v.float().flatten() for k, v in sorted(state.items()) if v.is_floating_point()])


def test_two_spawned_ranks_train_like_one_process_and_resume_after_a_kill(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = copy_project(tmp_path / "one")
    kedro(one, "--pipeline", "pretrain", "--env", "test", "--params", ONE)
    two = copy_project(tmp_path / "two")
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    # Started as `nohup` or `&` start it, with SIGINT ignored: torch's own parent-death signal to
    # spawned ranks (SIGINT) then stops nothing, and only the node's SIGKILL on parent death does.
    first = subprocess.Popen([sys.executable, "-m", "kedro", "run", "--pipeline", "pretrain", "--env", "test",
                              "--params", TWO], cwd=two, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    folder = wait_for_new_checkpoint(two, first, after=0).parent
    ranks = _spawned_ranks(first.pid)
    assert len(ranks) == 2, f"the node spawned its two ranks: {sorted(ranks)}"
    written = sorted((path.name, path.stat().st_ino) for path in folder.glob("*.ckpt"))
    first.kill()  # SIGKILL the node's process: its spawned ranks must not train on
    first.wait(timeout=60)
    for pid, handle in ranks.items():  # a pidfd turns readable when its process ends
        assert select.select([handle], [], [], 60)[0], f"rank {pid} outlived the killed run"
        os.close(handle)
    # Killed with their parent: no rank trained on to write a checkpoint beside the rerun.
    assert sorted((path.name, path.stat().st_ino) for path in folder.glob("*.ckpt")) == written
    kedro(two, "--pipeline", "pretrain", "--env", "test", "--params", TWO)

    killed, finished = project_runs(two)[-2:]
    assert killed.info.status == "KILLED" and finished.info.status == "FINISHED"
    assert finished.data.tags["resumed_from_run"] == killed.info.run_id
    bundle = torch.load(two / "data/test/06_models/aavae_model.pt", weights_only=True)
    assert bundle["epochs"] == 3 and bundle["mlflow_run_id"] == finished.info.run_id
    expected, got = _flat(one / "data/test/06_models/aavae_model.pt"), _flat(two / "data/test/06_models/aavae_model.pt")
    first_epoch = torch.load(next((two / "data/test/06_models/checkpoints").glob("*/epoch0001.ckpt")), weights_only=True)
    assert (expected - got).norm() < 0.04 * expected.norm()
    assert torch.nn.functional.cosine_similarity(expected, got, dim=0) > 0.9995
    assert first_epoch["global_step"] == 2, "2 steps an epoch (1,219 training digits, batch 448), not 2 per rank"


def test_torchrun_starts_ranks_that_share_one_mlflow_run_and_one_writer(tmp_path):
    project = copy_project(tmp_path)
    kedro(project, "--pipeline", "prepare", "--env", "test")
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "kedro", "run",
         "--pipeline", "train", "--env", "test", "--params", "pretrain.max_epochs=1"],
        cwd=project, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Rank 0 of 2" in output and "Rank 1 of 2" in output
    runs = [run for run in project_runs(project) if run.info.run_name.split()[0] == "train"]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED", "rank 1 opens no MLflow run"
    assert "train_loss" in runs[0].data.metrics
    bundle = torch.load(project / "data/test/06_models/aavae_model.pt", weights_only=True)
    assert bundle["mlflow_run_id"] == runs[0].info.run_id
