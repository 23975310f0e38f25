"""Tests of aavae.evaluation.bundles: model bundles, checkpoints given by path, baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from aavae import evaluation as ev
from aavae.evaluation import extract_features
from aavae.evaluation.bundles import BUNDLE_KEYS
from aavae.models import AAVAENet, ModelSpec, build_model
from aavae.views import Preprocessing, channel_stats
from tests.evaluation.helpers import MEAN, STD, random_images

SPEC = ModelSpec(encoder="resnet18", width=8, latent_dim=16, input_size=16)
PREPROCESSING = Preprocessing(MEAN, STD)


def trained_looking_model(spec: ModelSpec = SPEC) -> AAVAENet:
    torch.manual_seed(1)
    net = build_model(spec).train()
    with torch.no_grad():  # move batch-norm statistics off their initial values
        net.posterior(torch.randn(4, 3, spec.input_size, spec.input_size))
    return net.eval()


def encoder_output(net: AAVAENet, images: np.ndarray, mean, std) -> np.ndarray:
    return extract_features(net.encoder, images, mean, std)


def test_make_bundle_holds_what_rebuilds_the_network_and_the_facts_given():
    net = trained_looking_model()
    bundle = ev.make_bundle(net, Preprocessing([0.2, 0.3, 0.4], [0.3, 0.3, 0.3]), objective="aavae", epochs=3)
    assert set(BUNDLE_KEYS) <= set(bundle) and bundle["spec"] == SPEC.to_dict()
    assert bundle["objective"] == "aavae" and bundle["epochs"] == 3
    assert bundle["num_parameters"] == sum(p.numel() for p in net.parameters())
    assert all(tensor.device.type == "cpu" and not tensor.requires_grad for tensor in bundle["state_dict"].values())
    images = random_images(6, 16)
    np.testing.assert_array_equal(encoder_output(ev.model_from_bundle(bundle), images, MEAN, STD),
                                  encoder_output(net, images, MEAN, STD))


def test_a_project_bundle_given_by_path_keeps_its_own_spec_and_normalisation(tmp_path):
    net = trained_looking_model()
    bundle = ev.make_bundle(net, Preprocessing([0.2, 0.3, 0.4], [0.3, 0.3, 0.3]), objective="aavae",
                            class_names=["old"], mlflow_run_id="abc", epochs=7)
    path = tmp_path / "aavae_model.pt"
    torch.save(bundle, path)
    images = random_images(6, 16)

    loaded = ev.bundle_from_checkpoint(path, ModelSpec(width=16), PREPROCESSING, ["a", "b"])

    assert loaded["spec"] == SPEC.to_dict()  # the file's spec, not the one passed for paper files
    assert loaded["normalization"] == bundle["normalization"]
    assert loaded["class_names"] == ["a", "b"] and loaded["checkpoint"] == str(path)
    assert loaded["mlflow_run_id"] == "abc" and loaded["epochs"] == 7
    rebuilt = ev.model_from_bundle(loaded)
    np.testing.assert_array_equal(encoder_output(rebuilt, images, MEAN, STD),
                                  encoder_output(net, images, MEAN, STD))


@pytest.mark.parametrize("recipe", [
    {"mean": None, "std": None, "original_resize": None},  # a recipe without fixed constants
    {"mean": (0.49, 0.48, 0.45), "std": (0.25, 0.24, 0.26), "original_resize": 18},  # the paper's kind
])
def test_a_paper_checkpoint_given_by_path_is_read_into_the_spec_with_the_recipes_preprocessing(tmp_path, recipe):
    from aavae.views import resolve_preprocessing

    net = trained_looking_model()
    state = dict(net.state_dict())
    state["online_finetuner.weight"] = torch.randn(10, 64)  # the paper's module holds more
    path = tmp_path / "last.ckpt"
    torch.save({"epoch": 4, "global_step": 50, "state_dict": state}, path)
    images = random_images(6, 16)
    preprocessing = resolve_preprocessing(recipe["mean"], recipe["std"], recipe["original_resize"], images)

    loaded = ev.bundle_from_checkpoint(path, SPEC, preprocessing, ["a", "b"])

    mean, std = recipe["mean"] or channel_stats(images)[0], recipe["std"] or channel_stats(images)[1]
    np.testing.assert_allclose(loaded["normalization"]["mean"], mean)
    np.testing.assert_allclose(loaded["normalization"]["std"], std)
    assert loaded["normalization"]["original_resize"] == recipe["original_resize"]
    assert loaded["epochs"] == 5 and loaded["objective"] == "paper checkpoint"
    assert loaded["mlflow_run_id"] is None and loaded["class_names"] == ["a", "b"]
    rebuilt = ev.model_from_bundle(loaded)
    np.testing.assert_array_equal(encoder_output(rebuilt, images, MEAN, STD),
                                  encoder_output(net, images, MEAN, STD))


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.ckpt does not exist"):
        ev.bundle_from_checkpoint(tmp_path / "absent.ckpt", SPEC, PREPROCESSING, ["a", "b"])
    wrong = tmp_path / "wide.ckpt"
    torch.save({"state_dict": build_model(ModelSpec(width=16, input_size=16)).state_dict()}, wrong)
    with pytest.raises(ValueError, match="wide.ckpt does not fit"):
        ev.bundle_from_checkpoint(wrong, SPEC, PREPROCESSING, ["a", "b"])
    broken_bundle = tmp_path / "bundle.pt"
    torch.save({"state_dict": {}, "spec": SPEC.to_dict(), "normalization": {}}, broken_bundle)
    with pytest.raises(ValueError, match="model bundle .*bundle.pt cannot be rebuilt"):
        ev.bundle_from_checkpoint(broken_bundle, SPEC, PREPROCESSING, ["a", "b"])


def test_model_from_bundle_names_missing_keys():
    with pytest.raises(ValueError, match="is not a model bundle: expected a dict with state_dict"):
        ev.model_from_bundle({"state_dict": {}})


def test_baseline_encoders_are_seeded_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = ev.baseline_encoder("random_init", SPEC, seed=0)
    assert torch.equal(torch.rand(1), expected_next)
    again = ev.baseline_encoder("random_init", SPEC, seed=0)
    other = ev.baseline_encoder("random_init", SPEC, seed=1)
    weight = "conv1.weight"
    assert torch.equal(first.state_dict()[weight], again.state_dict()[weight])
    assert not torch.equal(first.state_dict()[weight], other.state_dict()[weight])
    assert isinstance(ev.baseline_encoder("raw_pixels", SPEC, 0), nn.Flatten)
    with pytest.raises(ValueError, match="unknown baseline 'pixels'"):
        ev.baseline_encoder("pixels", SPEC, 0)


def test_resolve_model_node_reads_evaluate_checkpoint(tmp_path):
    from aavae.data.imageset import ImageSet
    from aavae.pipelines.features.nodes import resolve_model

    net = trained_looking_model()
    path = tmp_path / "paper.ckpt"
    torch.save({"state_dict": net.state_dict()}, path)
    train = ImageSet(random_images(6, 16), np.array([0, 1] * 3), ("a", "b"), "train", "f" * 64)
    test = ImageSet(random_images(4, 16), np.array([0, 1] * 2), ("a", "b"), "test", "f" * 64)
    card = {"name": "imagefolder", "sha256": "f" * 64, "image_shape": [16, 16, 3], "source": "here"}
    model_params = {"encoder": "resnet18", "width": 8, "latent_dim": 16}
    trained = ev.make_bundle(net, PREPROCESSING, data={**card})

    def resolve(bundle, evaluate):
        return resolve_model(bundle, train, test, card, {"name": "imagefolder"}, evaluate, model_params, {}, "data/env")

    same = resolve(trained, {})
    assert same["evaluated_on"]["kind"] == "same_data" and same["state_dict"] is trained["state_dict"]
    bundle = resolve(trained, {"checkpoint": str(path)})
    assert bundle["checkpoint"] == str(path) and bundle["spec"]["input_size"] == 16
    assert bundle["evaluated_on"]["kind"] == "data_unrecorded", "a paper checkpoint does not say"
    with pytest.raises(ValueError, match=r"evaluate.checkpoint='.*missing.ckpt': checkpoint"):
        resolve(trained, {"checkpoint": str(tmp_path / "missing.ckpt")})
    with pytest.raises(ValueError, match="No model to evaluate: data/env/06_models/aavae_model.pt does not exist"):
        resolve(None, {})


def _trained_checkpoints(folder, objective: str = "aavae"):
    """This project's training checkpoints (last.ckpt, epoch0001.ckpt) of one real epoch, and the net."""
    from aavae.config import PretrainConfig
    from aavae.data.digits import read_digits
    from aavae.objective import Objective
    from aavae.training import PretrainModule, TrainingImages, ValidationViews, build_trainer, fit
    from aavae.training.checkpoints import RecordTrainingData
    from aavae.views import ViewPolicy

    digits = read_digits(image_size=16)
    train, test = digits["train"], digits["test"]
    torch.manual_seed(0)
    head = "ae" if objective == "ae" else "vae"
    net = build_model(ModelSpec(encoder="resnet18", width=4, latent_dim=8, input_size=16, head=head))
    config = PretrainConfig(objective=objective, max_epochs=1, batch_size=128, precision="32-true",
                            accelerator="cpu", warmup_epochs=0, compile=False, online_probe=True,
                            checkpoint_every_n_epochs=1)
    val = ValidationViews(test.images[:64], test.images[:64], test.labels[:64])
    module = PretrainModule(net, Objective(objective, config.effective_kl_coeff), ViewPolicy(), config,
                            TrainingImages(train.images[:256], train.labels[:256]), val,
                            preprocessing=Preprocessing([0.3] * 3, [0.4] * 3), num_classes=10)
    fit(module, build_trainer(config, folder, callbacks=[RecordTrainingData(TRAINED_ON)]), folder, resume=False)
    return module.net.eval(), train.images[:64]


TRAINED_ON = {"name": "digits", "source": "sklearn", "image_shape": [16, 16, 3], "resize": "resize_crop",
              "sha256": "d" * 64}


@pytest.mark.parametrize("objective", ["aavae", "ae"])
def test_this_projects_own_training_checkpoints_are_evaluable(tmp_path, objective):
    net, images = _trained_checkpoints(tmp_path, objective)
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]
    assert any(k.startswith("online_probe.") for k in state) and all(
        k.startswith(("net.", "online_probe.")) for k in state), "what the loader must cope with"
    model_params = ModelSpec(encoder="resnet18", width=4, latent_dim=8, input_size=16)  # no head: vae

    for name in ("last.ckpt", "epoch0001.ckpt"):
        loaded = ev.bundle_from_checkpoint(tmp_path / name, model_params, PREPROCESSING, [str(i) for i in range(10)])
        assert loaded["objective"] == "project checkpoint" and loaded["epochs"] == 1
        assert loaded["data"] == TRAINED_ON and loaded["dataset"] == "digits", "it knows its data"
        assert loaded["spec"]["head"] == ("ae" if objective == "ae" else "vae")
        rebuilt = ev.model_from_bundle(loaded)
        np.testing.assert_array_equal(encoder_output(rebuilt, images, MEAN, STD),
                                      encoder_output(net, images, MEAN, STD))


def test_a_bundle_that_overrides_model_params_says_so(tmp_path, caplog):
    net = trained_looking_model()
    path = tmp_path / "aavae_model.pt"
    torch.save({"state_dict": net.state_dict(), "spec": SPEC.to_dict(),
                "normalization": {"mean": MEAN, "std": STD}}, path)

    with caplog.at_level("WARNING", logger="aavae.evaluation.bundles"):
        ev.bundle_from_checkpoint(path, SPEC, PREPROCESSING, ["a", "b"])
    assert caplog.text == "", "nothing to say when the bundle is what model.* describes"

    with caplog.at_level("WARNING", logger="aavae.evaluation.bundles"):
        ev.bundle_from_checkpoint(path, ModelSpec(encoder="resnet34", width=16, latent_dim=16, input_size=16),
                                  PREPROCESSING, ["a", "b"])
    assert f"{path} is a model bundle: it is evaluated with its own architecture" in caplog.text
    assert "encoder resnet18 (model.* says resnet34)" in caplog.text and "width 8 (model.* says 16)" in caplog.text
