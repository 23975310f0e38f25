"""The paper's recipes (conf/cifar10, conf/stl10) resolve to what its code trains, item by item."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from kedro.config import OmegaConfigLoader

from aavae.config import ConfigError, PretrainConfig, validate_all
from aavae.data.imageset import UNLABELED, ImageSet
from aavae.training import training_images

CONF = Path(__file__).resolve().parents[1] / "conf"


def recipe(env: str) -> dict:
    """Parameters of an environment over base, merged as the project's settings.py does."""
    loader = OmegaConfigLoader(str(CONF), base_env="base", default_run_env=env,
                               merge_strategy={"parameters": "soft"})
    return validate_all(loader["parameters"])


def test_cifar10_recipe_is_the_papers_command_with_denoising():
    params = recipe("cifar10")
    views, model, pretrain = params["views"], params["model"], params["pretrain"]
    # cifar10_normalization(): mean (125.3, 123.0, 113.9) / 255, std (63.0, 62.1, 66.7) / 255
    assert views.mean == pytest.approx([v / 255 for v in (125.3, 123.0, 113.9)], abs=1e-7)
    assert views.std == pytest.approx([v / 255 for v in (63.0, 62.1, 66.7)], abs=1e-7)
    assert (views.jitter_strength, views.blur_p, views.crop_scale) == (0.5, 0.0, (0.08, 1.0))
    assert (model.encoder, model.stem, model.width, model.latent_dim) == ("resnet50", "cifar", 64, 128)
    assert pretrain.objective == "aavae", "--denoising: the encoder sees views"
    assert (pretrain.kl_coeff, pretrain.log_scale, pretrain.learn_scale) == (0.0, 0.0, False)
    assert (pretrain.batch_size, pretrain.learning_rate, pretrain.warmup_epochs) == (256, 2.5e-4, 10)
    assert (pretrain.max_epochs, pretrain.schedule, pretrain.val_samples) == (3200, "constant", 16)
    assert pretrain.effective_weight_decay == 0.0 and pretrain.training_split == "train"


def test_stl10_recipe_trains_on_unlabeled_less_5000_and_reconstructs_the_zoomed_original():
    params = recipe("stl10")
    views, model, pretrain = params["views"], params["model"], params["pretrain"]
    assert views.mean == (0.43, 0.42, 0.39) and views.std == (0.27, 0.26, 0.27)  # stl10_normalization()
    assert views.original_resize == int(96 * 1.1), "OriginalTransform: Resize(105) + CenterCrop(96)"
    assert (views.jitter_strength, views.blur_p, views.blur_kernel_fraction) == (1.0, 0.5, 0.1)
    assert (model.stem, params["dataset"].unlabeled) == ("stl10", True)
    assert (pretrain.training_split, pretrain.unlabeled_holdout) == ("unlabeled", 5000)


def test_the_ae_objective_defaults_to_the_papers_weight_decay():
    assert PretrainConfig(objective="ae").effective_weight_decay == 1e-6  # ae.py's default
    assert PretrainConfig(objective="aavae").effective_weight_decay == 0.0
    assert PretrainConfig(objective="ae", weight_decay=0.0).effective_weight_decay == 0.0


def _images(count: int, label: int) -> ImageSet:
    images = np.arange(count, dtype=np.uint8).reshape(count, 1, 1, 1).repeat(3, axis=3)
    return ImageSet(images, np.full(count, label, dtype=np.int64), ("a", "b"), "unlabeled" if label < 0 else "train")


def test_the_unlabeled_holdout_is_a_fixed_subset_left_out_of_pretraining():
    train, unlabeled = _images(4, 1), _images(50, UNLABELED)
    chosen = training_images(train, unlabeled, "unlabeled", holdout=10)
    assert len(chosen.images) == 40 and (chosen.labels == UNLABELED).all()
    again = training_images(train, unlabeled, "unlabeled", holdout=10)
    assert np.array_equal(chosen.images, again.images), "the same images in every run"
    both = training_images(train, unlabeled, "unlabeled+train", holdout=10)
    assert len(both.images) == 44
    assert len(training_images(train, unlabeled, "auto", holdout=0).images) == 54
    assert len(training_images(train, _images(0, UNLABELED), "auto", holdout=0).images) == 4
    with pytest.raises(ValueError, match="needs the unlabeled split"):
        training_images(train, _images(0, UNLABELED), "unlabeled", holdout=0)
    with pytest.raises(ConfigError, match="unlabeled_holdout"):
        validate_all({"pretrain": {"training_split": "train", "unlabeled_holdout": 5}})
