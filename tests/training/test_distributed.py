"""Scale-out: batches streamed from the host, several processes.

Two processes on the CPU (gloo), as the paper's several GPUs would run, against one process
on the same global batch. Tolerance: after 4 Adam steps the two updates agree to a cosine of
0.9999 and differ by under 1% of the update's norm. Not bit-exact: a sum of two half-batch
gradients rounds differently from one full-batch gradient, and Adam's first steps move every
weight by about the learning rate whatever its gradient's size, so a near-zero gradient whose
sign rounding flips moves its weight the other way.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from aavae.training import build_trainer, fit
from aavae.training.data import to_device
from aavae.training.streaming import HostBatches
from tests.helpers.training import assert_same_weights, small_module, weights_of

pytestmark = pytest.mark.slow  # every test here starts processes or real kedro runs


def test_images_reach_the_device_a_chunk_at_a_time_whole_and_in_order():
    images = np.arange(9 * 3, dtype=np.uint8).reshape(9, 1, 1, 3)
    images.flags.writeable = False  # as a memory-mapped .npy file opens
    assert torch.equal(to_device(images, torch.device("cpu"), chunk=4), torch.from_numpy(images.copy()))


def test_host_streamed_batches_train_exactly_as_device_resident_ones(tmp_path):
    runs = {}
    for on_device in (True, False):
        module = small_module(max_epochs=2, data_on_device=on_device)
        fit(module, build_trainer(module.config, tmp_path / str(on_device)), tmp_path / str(on_device),
            resume=False)
        assert (module._host is None) is on_device
        runs[on_device] = (weights_of(module), module.epoch_metrics)
    assert_same_weights(runs[True][0], runs[False][0])
    assert runs[True][1] == pytest.approx(runs[False][1], rel=1e-5)


class _Unreadable(np.ndarray):
    def __getitem__(self, index):
        raise OSError("Input/output error (forced by the test)")


def test_a_host_batch_that_cannot_be_read_stops_the_step_with_its_error():
    """The gathering thread's error reaches the step (it used to die alone, the step waiting forever)."""
    images = np.zeros((8, 2, 2, 3), np.uint8).view(_Unreadable)
    batches = HostBatches(images, np.zeros(8, np.int64), slice(0, 4), (4, 2, 2, 3), torch.device("cpu"))
    batches.start_epoch(torch.arange(8).view(2, 4), 0)
    raised: list[BaseException] = []

    def step() -> None:
        try:
            batches.next()
        except BaseException as error:  # noqa: BLE001 - what the step sees
            raised.append(error)

    waiting = threading.Thread(target=step, daemon=True)
    waiting.start()
    waiting.join(timeout=60)
    assert not waiting.is_alive(), "the step still waits for a batch that will never come"
    assert "Input/output error" in str(raised[0])


def _flat(weights: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.float().flatten() for v in weights.values() if v.is_floating_point()])


def test_two_processes_give_one_process_weights_on_the_same_global_batch(tmp_path):
    initial = _flat(weights_of(small_module(max_epochs=2)))
    single = small_module(max_epochs=2, sync_batchnorm=True)
    fit(single, build_trainer(single.config, tmp_path / "one"), tmp_path / "one", resume=False)
    double = small_module(max_epochs=2, sync_batchnorm=True, devices=2)
    trainer = build_trainer(double.config, tmp_path / "two")
    fit(double, trainer, tmp_path / "two", resume=False)
    assert trainer.world_size == 2
    # ddp_spawn hands rank 0's weights back; batch-norm statistics are pooled over the ranks.
    one, two = _flat(weights_of(single)), _flat(weights_of(double))
    update_one, update_two = one - initial, two - initial
    assert torch.nn.functional.cosine_similarity(update_one, update_two, dim=0) > 0.9999
    assert (one - two).norm() < 0.01 * update_one.norm()
    checkpoint = torch.load(tmp_path / "two" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4, "two epochs of two steps: the steps are not split per rank"


def test_the_launcher_decides_ranks_nodes_and_devices(monkeypatch):
    from aavae.common.launch import launched_rank, launched_world_size, local_world_size

    for name in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_NNODES"):
        monkeypatch.delenv(name, raising=False)
    assert (launched_rank(), launched_world_size(), local_world_size()) == (0, 1, 1), "a plain run"
    monkeypatch.setenv("SLURM_PROCID", "9")
    monkeypatch.setenv("SLURM_NTASKS", "16")
    monkeypatch.setenv("SLURM_NNODES", "2")
    assert (launched_rank(), launched_world_size(), local_world_size()) == (9, 16, 8), "srun, 2 x 8"
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert (launched_rank(), launched_world_size(), local_world_size()) == (3, 4, 2), "torchrun first"
