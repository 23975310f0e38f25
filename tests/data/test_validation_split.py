"""Validation never touches the test images (issue 30): in every shipped environment the views
pipeline draws its validation views from a split held out of training, never from the split
evaluation scores; the provenance says which."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

import aavae.data
from aavae.common import provenance
from aavae.config import validate_all
from aavae.data import ReadResult, pipeline_splits, validation_split
from aavae.data.imageset import UNLABELED, ImageSet
from aavae.data.splits import hold_out_validation, paper_random_split
from aavae.pipelines import ingest, views
from aavae.training.data import validation_images
from aavae.training.run import check_inputs_belong_together

CONF = Path(__file__).resolve().parents[2] / "conf"
ENVS = sorted(path.name for path in CONF.iterdir() if (path / "parameters.yml").is_file())
CODES = {"train": 1, "test": 2, "unlabeled": 3, "val": 4}  # the split an image was read from


def identified(split: str, count: int, side: int = 8) -> ImageSet:
    """``count`` images whose first pixel says where they came from: (split code, position)."""
    images = np.full((count, side, side, 3), 128, np.uint8)
    position = np.arange(count)
    images[:, 0, 0] = np.stack([np.full(count, CODES[split]), position % 256, position // 256], axis=1)
    labels = np.full(count, UNLABELED) if split == "unlabeled" else position % 2
    return ImageSet(images, labels.astype(np.int64), ("a", "b"), split)


def origins(images: np.ndarray) -> set[tuple[int, int]]:
    """(split code, position) of each image."""
    first = np.asarray(images)[:, 0, 0].astype(np.int64)
    return {(int(code), int(low + 256 * high)) for code, low, high in first}


def env_parameters(env: str) -> dict:
    """The environment's parameters over base, merged as settings.py merges them."""
    loader = OmegaConfigLoader(str(CONF), base_env="base", default_run_env=env,
                               merge_strategy={"parameters": "soft"})
    return loader["parameters"]


def the_envs_dataset(name: str) -> dict[str, ImageSet]:
    """Splits shaped like the dataset an environment reads (STL-10: more unlabeled images than
    its recipe holds out of pretraining)."""
    counts = {"train": 1400, "test": 40} | ({"unlabeled": 5100} if name == "stl10" else {})
    return {split: identified(split, count) for split, count in counts.items()}


@pytest.mark.parametrize("env", ENVS)
def test_each_shipped_environment_validates_on_images_held_out_of_training_never_on_test(env, monkeypatch):
    # The ingest and views pipelines as `kedro run --env <env>` builds them, on splits whose
    # images say where they came from; only the reader is replaced.
    params = env_parameters(env)
    params["dataset"] = {**params["dataset"], "path": "unused"}
    name = validate_all(params)["dataset"].name
    read = ReadResult(the_envs_dataset(name), "memory", name)
    monkeypatch.setattr(aavae.data, "_read", lambda config: read)
    parameters = {f"params:{group}": MemoryDataset(params[group]) for group in ("dataset", "views", "pretrain")}
    parameters["artifact_root"] = MemoryDataset(f"data/{env}")
    ingested = SequentialRunner().run(ingest.create_pipeline(), DataCatalog(parameters))
    made = SequentialRunner().run(views.create_pipeline(), DataCatalog({**parameters, **ingested}))
    val_views = made["val_views"].load()
    trained_on = origins(ingested["images_train"].load().images)

    viewed = origins(val_views["originals"])
    assert viewed and not any(code == CODES["test"] for code, _ in viewed), "no test image validates"
    assert not viewed & trained_on, "nothing that validates is trained on"
    split = provenance.stamp_of(val_views)["validation_split"]
    if name == "stl10":  # the paper's STL-10 validates on the unlabeled images it holds out
        held_out = paper_random_split(5100, params["pretrain"]["unlabeled_holdout"])[1]
        assert split == "unlabeled_holdout" and viewed <= {(CODES["unlabeled"], int(p)) for p in held_out}
    else:
        assert split == "val" and {code for code, _ in viewed} == {CODES["train"]}, "held out of train"


split_names = st.sets(st.sampled_from(["test", "val", "valid", "validation", "extra"]), min_size=1)


@settings(max_examples=60, deadline=None)
@given(names=split_names, holdout=st.integers(0, 40))
def test_whatever_a_folder_holds_the_validation_split_is_never_the_test_split(names, holdout):
    splits = {"train": identified("train", 200), **{name: identified("val", 10) for name in names}}
    try:
        train, test, _ = pipeline_splits(hold_out_validation(ReadResult(splits, "memory", "imagefolder"), holdout))
    except aavae.data.DatasetError:
        assert not names & {"test", "val", "valid", "validation"}, "only a folder with no test split is refused"
        return
    result = hold_out_validation(ReadResult(splits, "memory", "imagefolder"), holdout)
    val = validation_split(result)
    assert val is not test
    assert not origins(val.images) & origins(train.images)
    own = [name for name in ("val", "valid", "validation") if name in names and splits[name] is not test]
    if own:  # a val/ beside the test split validates, and nothing is held out of training
        assert val is splits[own[0]] and len(train) == 200
    else:  # at most a tenth of the training images, held out as the paper's random_split
        assert len(val) == min(holdout, 20) and len(train) == 200 - len(val)


def test_the_holdout_is_at_most_a_tenth_of_the_training_images(caplog):
    result = hold_out_validation(ReadResult({"train": identified("train", 50), "test": identified("test", 5)},
                                            "memory", "digits"), 128)
    assert len(result.splits["val"]) == 5 and len(result.splits["train"]) == 45
    assert "dataset.val_holdout=128 is more than a tenth of the 50 training images" in caplog.text


def test_the_digits_default_holds_out_128_of_1347_training_images():
    # conf/base: what the validation curve needs, and no more of the 1,347 training digits
    config = validate_all(env_parameters("base"))["dataset"]
    result = aavae.data.read_dataset(config)
    assert (len(result.splits["train"]), len(result.splits["val"])) == (1219, 128)
    assert len(validation_split(result)) == 128 and len(pipeline_splits(result)[1]) == 450


def test_with_nothing_held_out_the_views_step_refuses_instead_of_using_the_test_split():
    empty = ImageSet.empty("val", (8, 8, 3), ("a", "b"))
    from aavae.pipelines.views.nodes import make_validation_views

    with pytest.raises(aavae.data.DatasetError, match="No images to validate pretraining on: .* "
                       "dataset.val_holdout=0"):
        make_validation_views(empty, ImageSet.empty("unlabeled", (8, 8, 3), ("a", "b")), {}, {}, {}, "data")


def test_stl10_validates_on_its_held_out_unlabeled_images_and_otherwise_on_the_validation_split():
    val, unlabeled = identified("val", 10), identified("unlabeled", 300)
    held = validation_images(val, unlabeled, "unlabeled", holdout=30)
    assert origins(held.images) == {(CODES["unlabeled"], int(p)) for p in paper_random_split(300, 30)[1]}
    assert held.split == "unlabeled_holdout"
    assert validation_images(val, unlabeled, "auto", holdout=30).split == "unlabeled_holdout"
    assert validation_images(val, unlabeled, "train", holdout=30) is val
    assert validation_images(val, unlabeled, "unlabeled", holdout=0) is val


def test_validation_views_of_an_older_version_are_refused_before_training():
    images = identified("train", 4)
    data = "a" * 64
    images = ImageSet(images.images, images.labels, images.class_names, "train", data)
    unlabeled = ImageSet(np.zeros((0, 8, 8, 3), np.uint8), np.zeros(0, np.int64), ("a", "b"), "unlabeled", data)
    policy, card = {provenance.DATA_SHA256: data}, {"sha256": data}
    arrays = {"views": images.images, "originals": images.images, "labels": images.labels}
    current = provenance.stamp(arrays, **{provenance.DATA_SHA256: data, "validation_split": "val"})
    check_inputs_belong_together(images, unlabeled, current, policy, card, "data/test")
    older = provenance.stamp(arrays, **{provenance.DATA_SHA256: data})  # drawn from the test split
    with pytest.raises(provenance.ProvenanceError, match="val_views.npz records no validation split"):
        check_inputs_belong_together(images, unlabeled, older, policy, card, "data/test")
