"""The paper's recipes (conf/cifar10, conf/stl10) resolve to what its code trains, item by item:
parameters, the images it trains and evaluates on, the AE's target, the validation cos_sim,
the warm-up and the paper protocol's score, each against Lightning-Universe/paper-AAVAE."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from kedro.config import OmegaConfigLoader

from aavae.common.batches import batch_shape
from aavae.config import ConfigError, PretrainConfig, validate_all
from aavae.data import ReadResult
from aavae.data.digits import read_digits
from aavae.data.imageset import UNLABELED, ImageSet, load_imageset
from aavae.data.splits import hold_out_validation
from aavae.evaluation import paper_linear_eval
from aavae.evaluation.paper_protocol import paper_test_count
from aavae.models import AAVAENet, ModelSpec, build_model
from aavae.objective import Objective, reconstruction_terms
from aavae.training import PretrainModule, TrainingImages, ValidationViews
from aavae.training.data import training_images
from aavae.training.module import cos_sim_over_samples
from aavae.training.schedule import schedule_factor
from aavae.training.step import TrainStep
from aavae.views import Preprocessing, ViewPolicy
from tests.conftest import copy_project, kedro
from tests.helpers.datasets import cifar_expected, write_cifar_folder
from tests.helpers.training import small_step

CONF = Path(__file__).resolve().parents[2] / "conf"


def recipe(env: str) -> dict:
    """Parameters of an environment over base, merged as the project's settings.py does."""
    loader = OmegaConfigLoader(str(CONF), base_env="base", default_run_env=env,
                               merge_strategy={"parameters": "soft"})
    return validate_all(loader["parameters"])


@pytest.mark.parametrize("env", sorted(path.name for path in CONF.iterdir()
                                       if (path / "parameters.yml").is_file()))
def test_every_environment_validates_over_base(env):
    """A parameter the schemas tighten must not break a shipped environment (each is merged
    over base as settings.py merges it)."""
    assert recipe(env)["dataset"].name


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


# -- the paper's images: CIFAR-10's 45,000 / 5,000, STL-10's 95,000 + 4,500 ------------------------

def _read_result(counts: dict[str, int]) -> ReadResult:
    """A dataset of 1 x 1 images whose pixel value is their position in the split."""
    splits = {}
    for name, count in counts.items():
        position = np.arange(count)
        images = np.stack([position % 256, position // 256 % 256, position // 65536], axis=1)
        splits[name] = ImageSet(images.astype(np.uint8).reshape(count, 1, 1, 3), position % 10,
                                tuple("abcdefghij"), name)
    return ReadResult(splits, "memory", "test")


def _positions(imageset: ImageSet) -> np.ndarray:
    pixels = imageset.images.reshape(-1, 3).astype(np.int64)
    return pixels[:, 0] + pixels[:, 1] * 256 + pixels[:, 2] * 65536


def _papers_random_split(count: int, held_out: int) -> tuple[list[int], list[int]]:
    """What the paper's data modules call: random_split(dataset, [kept, held_out],
    generator=torch.Generator().manual_seed(42)) over a dataset of positions."""
    kept, val = torch.utils.data.random_split(range(count), [count - held_out, held_out],
                                              generator=torch.Generator().manual_seed(42))
    return sorted(kept), sorted(val)


def test_the_cifar10_recipe_trains_on_the_papers_45000_images_and_holds_out_its_5000():
    params = recipe("cifar10")
    assert params["dataset"].val_holdout == 5000, "CIFAR10DataModule(val_split=5000)"
    result = hold_out_validation(_read_result({"train": 50_000, "test": 10_000}), 5000)

    kept, val = _papers_random_split(50_000, 5000)
    assert list(result.splits) == ["train", "val", "test"]
    assert _positions(result.splits["train"]).tolist() == kept, "image for image the paper's"
    assert _positions(result.splits["val"]).tolist() == val
    assert np.array_equal(result.splits["train"].labels, np.asarray(kept) % 10)
    assert len(result.splits["test"]) == 10_000
    assert batch_shape(45_000, params["pretrain"].batch_size) == (175, 256), "its epoch: 175 steps"
    assert result.describe()["splits"]["val"]["count"] == 5000, "the card lists the held-out images"


@pytest.mark.slow
def test_the_cifar10_environment_ingests_the_papers_training_images(tmp_path):
    # `kedro run --env cifar10` ingests the official file set (a small one here, 100 training
    # images): the training split is the paper's random_split of it, the rest a 'val' split in
    # the card; with dataset.val_holdout=0 it is all of them.
    folder = tmp_path / "cifar-10-batches-py"
    batches = write_cifar_folder(folder, per_batch=20)
    images, labels = cifar_expected([batches[f"data_batch_{i}"] for i in range(1, 6)])
    (tmp_path / "project").mkdir()
    project = copy_project(tmp_path / "project")
    kept, _ = _papers_random_split(100, 10)

    for holdout, rows in ((10, kept), (0, list(range(100)))):
        kedro(project, "--pipeline", "ingest", "--env", "cifar10", "--params",
              f"dataset.path={folder},dataset.val_holdout={holdout}")
        train = load_imageset(project / "data/cifar10/03_primary/images_train")
        np.testing.assert_array_equal(train.images, images[rows])
        np.testing.assert_array_equal(train.labels, labels[rows])
        card = json.loads((project / "data/cifar10/03_primary/dataset_card.json").read_text())
        counts = {name: split["count"] for name, split in card["splits"].items()}
        assert counts == ({"train": 90, "val": 10, "test": 4} if holdout else {"train": 100, "test": 4})


def test_the_full_50000_are_one_parameter_away_and_a_holdout_is_at_most_a_tenth():
    # (pretraining then has no validation images: the views step says so, tests/data/test_validation_split.py)
    everything = _read_result({"train": 50_000, "test": 10_000})
    assert hold_out_validation(everything, 0) is everything  # --params dataset.val_holdout=0
    assert validate_all({"dataset": {"name": "cifar10", "val_holdout": 0}})["dataset"].val_holdout == 0
    assert len(hold_out_validation(everything, 50_000).splits["val"]) == 5000


def test_the_stl10_recipe_holds_out_the_papers_unlabeled_and_labelled_images():
    params = recipe("stl10")
    assert params["dataset"].val_holdout == 500, "STL10DataModule(train_val_split=500)"
    labelled = hold_out_validation(_read_result({"train": 5000, "test": 8000}), 500)
    assert _positions(labelled.splits["train"]).tolist() == _papers_random_split(5000, 500)[0]

    unlabeled = _read_result({"unlabeled": 100_000}).splits["unlabeled"]
    unlabeled = ImageSet(unlabeled.images, np.full(100_000, UNLABELED), unlabeled.class_names, "unlabeled")
    chosen = training_images(labelled.splits["train"], unlabeled, "unlabeled", holdout=5000)
    kept = _papers_random_split(100_000, 5000)[0]  # STL10DataModule(unlabeled_val_split=5000)
    assert _positions(ImageSet(np.asarray(chosen.images), np.asarray(chosen.labels), (), "x")).tolist() == kept


def test_the_paper_protocol_probe_trains_on_the_recipes_training_split_and_scores_full_batches():
    # The probe's training images are the ingested train split: after dataset.val_holdout, the
    # paper's 45,000 (4,500). Its test loader drops the last partial batch: 9,984 of 10,000.
    assert paper_test_count(10_000, 256) == 9_984 and paper_test_count(8_000, 256) == 7_936
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 50)
    images = np.where(labels[:, None, None, None] == 1, 200, 40) + rng.integers(0, 30, (50, 8, 8, 3))
    images = images.astype(np.uint8)
    encoder = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

    faithful = paper_linear_eval(encoder, images[:30], labels[:30], images[30:], labels[30:],
                                 [0.5] * 3, [0.25] * 3, 2, epochs=1, batch_size=8)
    everything = paper_linear_eval(encoder, images[:30], labels[:30], images[30:], labels[30:],
                                   [0.5] * 3, [0.25] * 3, 2, epochs=1, batch_size=8, drop_last_test=False)

    assert faithful.confusion.sum() == faithful.chosen["test_images"] == 16, "20 test images, batches of 8"
    assert everything.confusion.sum() == everything.chosen["test_images"] == 20
    np.testing.assert_array_equal(faithful.scores, everything.scores[:16])


# -- the objective, the diagnostics and the schedule against the paper's code ---------------------

def _papers_warmup_decay(warmup_steps: int, total_steps: int, schedule: str):
    """src/optimizers/scheduler.py's linear_warmup_decay, restated: step / warmup during the
    warm-up, then no decay, a cosine or a linear decay over the remaining steps."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return {"constant": 1.0, "cosine": 0.5 * (1 + math.cos(math.pi * progress)),
                "linear": 1.0 - progress}[schedule]
    return factor


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
@pytest.mark.parametrize("warmup", [0, 10])
def test_the_warm_up_is_the_papers_step_over_warmup(schedule, warmup):
    # Lightning applies LambdaLR's factor for step s to the s-th optimizer step (0-based),
    # so the paper's first step trains at rate 0 and the warm-up ends at step W.
    papers = _papers_warmup_decay(warmup, 60, schedule)
    for step in range(70):
        ours = schedule_factor(torch.tensor(step), torch.tensor(warmup), torch.tensor(60), schedule)
        assert ours.item() == pytest.approx(papers(min(step, 60)), abs=1e-6), step


def _ae_step(denoising: bool) -> TrainStep:
    """A TrainStep of the AE baseline over 64 digits in one batch, no probe, no warm-up."""
    objective = Objective.from_config(PretrainConfig(objective="ae", denoising=denoising))
    return small_step(objective, images=64, batch=64, probe=False, warmup_steps=0)


@pytest.mark.parametrize("denoising", [False, True])
def test_the_ae_reconstructs_its_own_input_as_the_papers_ae_py(denoising):
    # ae.py: (x, original) = (SimCLRTransform(img), OriginalTransform(img)) with --denoising,
    # both the original without; loss = F.mse_loss(decoder(projection(encoder(x))), x), and
    # cos_sim compares the latents of x and of the original.
    step = _ae_step(denoising)
    seen = {}

    def recording(x_in, target, labels, noise):
        seen.update(x_in=x_in, target=target, weights=copy.deepcopy(step.net.state_dict()))
        return step.loss_and_metrics(x_in, target, labels, noise)

    step.loss_fn = recording
    step()

    x, original = seen["x_in"], seen["target"]
    assert (x is original) is not denoising, "with denoising the encoder sees a view"
    reference = build_model(step.net.spec).train()
    reference.load_state_dict(seen["weights"])
    with torch.no_grad():
        z = reference.projection(reference.encode(x))
        x_hat = reference.decode(z)
        z_original = reference.projection(reference.encode(original))
    assert step.keys == ("loss", "mse", "cos_sim")
    loss, mse, cos_sim = step.sums.tolist()  # after one step, the sums are its metrics
    assert loss == mse == pytest.approx(torch.nn.functional.mse_loss(x_hat, x).item(), rel=1e-5)
    assert cos_sim == pytest.approx(
        torch.nn.functional.cosine_similarity(z_original, z, dim=1, eps=1e-6).mean().item(), rel=1e-5)
    if denoising:
        assert mse != pytest.approx(torch.nn.functional.mse_loss(x_hat, original).item(), rel=1e-3)


def test_denoising_is_the_aes_flag_only():
    assert Objective.from_config(PretrainConfig(objective="ae", denoising=True)).name == "ae-denoising"
    assert Objective.from_config(PretrainConfig(objective="ae")).name == "ae"
    assert [Objective.from_config(PretrainConfig(objective=kind)).head for kind in ("aavae", "vae", "ae")] == ["vae", "vae", "ae"]
    with pytest.raises(ConfigError, match="pretrain.denoising .* needs pretrain.objective=ae"):
        validate_all({"pretrain": {"objective": "vae", "denoising": True}})


def test_validation_cos_sim_averages_every_importance_sample_as_the_papers_vae_step():
    torch.manual_seed(0)
    net = trained_looking_vae()
    views, originals = torch.randn(6, 3, 16, 16), torch.randn(6, 3, 16, 16)
    samples = 5
    noise = torch.randn(2 * samples, 6, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        features, original_features = net.encode(views), net.encode(originals)
        _, _, latent = reconstruction_terms(net, features, originals, noise[:samples], 0.0)
        ours = cos_sim_over_samples(net, original_features, latent, noise[:samples], noise[samples:])
        # VAE.step: for each sample, z = q.rsample(), z_orig = q_orig.rsample(), cos(z_orig, z);
        # then torch.stack(cos_sims, dim=1).mean()
        mu, logvar = net.projection(features)
        mu_o, logvar_o = net.projection(original_features)
        std, std_o = torch.exp(logvar / 2) + 1e-6, torch.exp(logvar_o / 2) + 1e-6
        papers = torch.stack([torch.nn.functional.cosine_similarity(mu_o + std_o * noise[samples + s],
                                                                     mu + std * noise[s], dim=1, eps=1e-6)
                              for s in range(samples)], dim=1).mean()
        first_only = torch.nn.functional.cosine_similarity(mu_o + std_o * noise[samples], mu + std * noise[0],
                                                           dim=1, eps=1e-6).mean()
    assert ours.item() == pytest.approx(papers.item(), rel=1e-5)
    assert ours.item() != pytest.approx(first_only.item(), rel=1e-3), "not just the first sample"


def test_the_validation_step_logs_the_cos_sim_over_all_samples(monkeypatch):
    digits = read_digits(image_size=16)
    train, test = digits["train"], digits["test"]
    torch.manual_seed(0)
    net = trained_looking_vae()
    config = PretrainConfig(val_samples=4, batch_size=32, precision="32-true", accelerator="cpu", compile=False)
    module = PretrainModule(net, Objective.from_config(config), ViewPolicy(), config,
                            TrainingImages(train.images[:64], train.labels[:64]),
                            ValidationViews(test.images[:8], test.images[8:16], test.labels[:8]),
                            preprocessing=Preprocessing([0.3] * 3, [0.4] * 3), num_classes=10).eval()
    module._val_tensors = tuple(torch.as_tensor(np.asarray(a)) for a in
                                (test.images[:8], test.images[8:16], test.labels[:8]))
    logged = {}
    monkeypatch.setattr(module, "log_dict", lambda metrics, **_: logged.update(metrics))
    calls = []

    def recording(*args):
        calls.append((args[3].shape[0], cos_sim_over_samples(*args)))
        return calls[-1][1]

    monkeypatch.setattr("aavae.training.module.cos_sim_over_samples", recording)
    with torch.no_grad():
        module.validation_step(torch.arange(8), 0)

    assert [samples for samples, _ in calls] == [4], "cos_sim over the 4 importance samples"
    assert logged["val_cos_sim"] is calls[0][1]
    assert set(logged) >= {"val_cos_sim", "val_kl_augmentation", "val_log_px"}


def trained_looking_vae() -> AAVAENet:
    net = build_model(ModelSpec(width=4, latent_dim=8, input_size=16)).train()
    with torch.no_grad():
        net.posterior(torch.randn(8, 3, 16, 16))
    return net.eval()


def test_the_short_cifar10_env_is_the_budget_benchmarks_recipe_on_an_image_tree():
    """conf/cifar10_short: what README's short CIFAR-10 run trains (and budget_cifar10.py measured)."""
    params = recipe("cifar10_short")
    dataset, model, pretrain = params["dataset"], params["model"], params["pretrain"]
    assert (dataset.name, dataset.image_size, dataset.path) == ("imagefolder", 32, None)
    assert (model.encoder, model.stem, model.width, model.latent_dim) == ("resnet18", "cifar", 16, 128)
    assert (pretrain.batch_size, pretrain.learning_rate, pretrain.warmup_epochs,
            pretrain.warmup_fraction, pretrain.schedule) == (256, 1e-3, 0, 0.05, "cosine")
    # Steps, not time, end the run and its schedule, so its table is the same on any machine:
    # 500 steps, 2.58 epochs: README's table, the same on a machine seven times slower.
    assert (pretrain.max_steps, pretrain.max_time_minutes, pretrain.schedule_to_time_limit) == (500, None, False)
    assert pretrain.max_epochs * (50_000 // pretrain.batch_size) > pretrain.max_steps, "max_steps ends the run"
