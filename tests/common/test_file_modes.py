"""Artifacts are written whole or not at all (aavae.common.atomic), and follow the umask like files
made by open(): a teammate sharing the data folder can read the model, the features and the image
sets under umask 0022, nobody else under 0077."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from aavae.common.atomic import replaced_atomically
from aavae.data.imageset import ImageSet
from aavae.kedro_ext.datasets import ArraysDataset, ImageSetDataset, TorchBundleDataset


@pytest.fixture(params=[0o022, 0o077], ids=["umask 0022", "umask 0077"])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


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


class Interrupted(Exception):
    """What a kill or a full disk is to the writer: the write stops half done."""


def write(target, kind: str, text: str, fails: bool) -> None:
    with replaced_atomically(target) as temporary:
        if kind == "file":
            temporary.write_text(text[:2])
        else:
            temporary.mkdir()
            (temporary / "part").write_text(text[:2])
        if fails:
            raise Interrupted
        if kind == "file":
            temporary.write_text(text)
        else:
            (temporary / "part").write_text(text)


def content(target, kind: str) -> str | None:
    if not target.exists():
        return None
    return target.read_text() if kind == "file" else (target / "part").read_text()


@pytest.mark.parametrize("kind", ["file", "folder"])
@pytest.mark.parametrize("existing", [False, True], ids=["new", "replacing"])
@pytest.mark.parametrize("fails", [False, True], ids=["completes", "interrupted"])
def test_a_write_replaces_its_target_whole_or_leaves_it_as_it_was(tmp_path, kind, existing, fails):
    target = tmp_path / "layer" / "artifact"
    if existing:
        write(target, kind, "previous", fails=False)

    if fails:
        with pytest.raises(Interrupted):
            write(target, kind, "new content", fails=True)
    else:
        write(target, kind, "new content", fails=False)

    expected = "previous" if fails and existing else None if fails else "new content"
    assert content(target, kind) == expected
    assert sorted(p.name for p in target.parent.iterdir()) == (["artifact"] if expected else []), \
        "no temporary left beside it"
