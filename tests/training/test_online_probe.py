"""The online probe reports only what it learned from labels (issue 30): none is built where the
training images have no labels (STL-10's unlabeled split), and it is scored on validation
images only where they have labels. What it is beside the paper's OnlineFineTuner:
docs/differences.md."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aavae.config import PretrainConfig
from aavae.data.imageset import UNLABELED
from aavae.training import PretrainModule, TrainingImages, ValidationViews
from tests.helpers.training import small_module


def test_the_online_probe_is_not_built_where_the_training_images_have_no_labels():
    assert small_module(max_epochs=1).online_probe is not None
    unlabeled = small_module(max_epochs=1)
    config = unlabeled.config
    module = PretrainModule(unlabeled.net, unlabeled.objective, unlabeled.policy, config,
                            TrainingImages(np.asarray(unlabeled._train_source),
                                           np.full(len(unlabeled._train_source), UNLABELED)),
                            None, unlabeled.preprocessing, num_classes=10)
    assert module.online_probe is None and "probe_acc" not in module.settings.metric_keys()


@pytest.mark.parametrize("labelled", [True, False])
def test_the_probe_is_scored_on_validation_images_only_where_they_have_labels(labelled, monkeypatch):
    module = small_module(max_epochs=1, val_samples=1)
    images = np.asarray(module._train_source[:8])
    labels = np.arange(8) % 10 if labelled else np.full(8, UNLABELED)
    module = PretrainModule(module.net, module.objective, module.policy, module.config,
                            TrainingImages(np.asarray(module._train_source), module._train_labels_host),
                            ValidationViews(images, images, labels), module.preprocessing, num_classes=10).eval()
    module._val_tensors = tuple(torch.as_tensor(np.asarray(a)) for a in (images, images, labels))
    logged = {}
    monkeypatch.setattr(module, "log_dict", lambda metrics, **_: logged.update(metrics))
    with torch.no_grad():
        module.validation_step(torch.arange(8), 0)
    assert ("val_probe_acc" in logged) is labelled and "val_loss" in logged


def test_a_checkpoint_with_a_probe_resumes_a_run_that_has_none():
    with_probe = small_module(max_epochs=1)
    checkpoint = {"state_dict": with_probe.state_dict()}
    module = small_module(max_epochs=1, online_probe=False)
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"])  # strict: no online_probe.* left over
    assert PretrainConfig().online_probe, "on by default: declared in docs/differences.md"
