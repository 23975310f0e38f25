"""Artifacts follow the umask like files made by open(): a teammate sharing the data folder can
read the model, the features and the image sets under umask 0022, nobody else under 0077."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from aavae.common.file_modes import current_umask, follow_umask
from aavae.data.imageset import ImageSet
from aavae.kedro_ext.datasets import ArraysDataset, ImageSetDataset, TorchBundleDataset


@pytest.fixture(params=[0o022, 0o077], ids=["umask 0022", "umask 0077"])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_umask_is_read_without_being_changed(umask):
    assert current_umask() == umask
    assert current_umask() == umask  # reading it left it as it was


def test_model_bundle_and_features_get_the_mode_open_would_give(tmp_path, umask):
    (tmp_path / "by_open").write_bytes(b"")
    expected = mode(tmp_path / "by_open")
    assert expected == 0o666 & ~umask

    TorchBundleDataset(str(tmp_path / "06_models" / "aavae_model.pt")).save({"weights": np.zeros(3)})
    ArraysDataset(str(tmp_path / "04_feature" / "features_train.npz")).save({"features": np.ones((2, 3))})

    assert mode(tmp_path / "06_models" / "aavae_model.pt") == expected
    assert mode(tmp_path / "04_feature" / "features_train.npz") == expected


def test_an_image_set_folder_and_its_files_get_the_modes_mkdir_and_open_would_give(tmp_path, umask):
    images = ImageSet(np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 1]), ("a", "b"), "train")
    target = tmp_path / "03_primary" / "images_train"
    ImageSetDataset(str(target)).save(images)
    ImageSetDataset(str(target)).save(images)  # replacing an existing one as well

    assert mode(target) == 0o777 & ~umask
    assert {name: mode(target / name) for name in ("images.npy", "labels.npy", "meta.json")} == dict.fromkeys(
        ("images.npy", "labels.npy", "meta.json"), 0o666 & ~umask)
    assert ImageSetDataset(str(target)).load().labels.tolist() == [0, 1]


def test_follow_umask_opens_up_a_private_temporary(tmp_path):
    private = tmp_path / "private"
    private.write_bytes(b"x")
    os.chmod(private, 0o600)
    previous = os.umask(0o002)
    try:
        follow_umask(private)
    finally:
        os.umask(previous)
    assert mode(private) == 0o664
