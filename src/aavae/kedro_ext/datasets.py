"""Kedro datasets for this project's artifacts, each written whole or not at all.

Every save goes to a temporary beside the artifact and is renamed into place
(:mod:`aavae.common.atomic`), so an interrupted run never leaves half a file and never destroys
the previous artifact; the artifact gets the permissions the umask gives any new file.
"""

from __future__ import annotations

import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from kedro.io import AbstractDataset, DatasetError

from aavae.common.atomic import replaced_atomically
from aavae.common.weights import load_weights
from aavae.data.imageset import ImageSet, load_imageset, save_imageset

#: Which pipeline writes the artifacts of each data layer, for messages about a missing or damaged one.
WRITERS = {
    "03_primary": "kedro run --pipeline ingest",
    "04_feature": "kedro run --pipeline evaluate",
    "05_model_input": "kedro run --pipeline prepare",
    "06_models": "kedro run --pipeline pretrain",
    "07_model_output": "kedro run --pipeline embed",
}


class MissingArtifact(DatasetError):
    """An artifact that no run has written yet (``aavae.cli`` names the pipeline to run first)."""

    def __init__(self, filepath: Path, writer: str) -> None:
        super().__init__(f"'{filepath}' does not exist: run the pipeline that writes it first ({writer}).")
        self.filepath = filepath


class _FileDataset(AbstractDataset):
    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = Path(PurePosixPath(filepath))
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}

    def _exists(self) -> bool:
        return self._filepath.exists()

    def _missing(self) -> MissingArtifact:
        return MissingArtifact(self._filepath, self._writer())

    def _writer(self) -> str:
        layer = next((part for part in self._filepath.parts if part in WRITERS), None)
        return WRITERS.get(layer, "kedro run --pipeline pretrain")


class ImageSetDataset(_FileDataset):
    """An :class:`ImageSet` as a folder of .npy files; images load memory-mapped. Images that map
    a whole .npy file (the image-folder reader's staged ones) are saved by renaming it into
    place (:func:`save_imageset`), so a set larger than RAM never passes through memory."""

    def load(self) -> ImageSet:
        if not self._filepath.exists():
            raise self._missing()
        try:
            return load_imageset(self._filepath)
        except (ValueError, FileNotFoundError) as error:
            raise DatasetError(str(error)) from error

    def save(self, data: ImageSet) -> None:
        save_imageset(data, self._filepath)


class ArraysDataset(_FileDataset):
    """A dict of NumPy arrays as one uncompressed .npz file (no pickled objects)."""

    def load(self) -> dict[str, np.ndarray]:
        if not self._filepath.exists():
            raise self._missing()
        try:
            with np.load(self._filepath, allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
            raise DatasetError(
                f"Could not read '{self._filepath}': it is damaged or truncated ({error}). Run the "
                f"pipeline that writes it again ({self._writer()}); the file is replaced whole."
            ) from error

    def save(self, data: dict[str, np.ndarray]) -> None:
        with replaced_atomically(self._filepath) as temporary, open(temporary, "wb") as handle:
            np.savez(handle, **{k: np.asarray(v) for k, v in data.items()})  # a handle: no ".npz" added


class TorchBundleDataset(_FileDataset):
    """Model weights plus the plain config needed to rebuild the model, via torch.save; read
    with :func:`load_weights`, so a file from outside cannot run code. With ``optional=True`` a
    missing file loads as None (evaluating a checkpoint given by path needs no trained bundle)."""

    def __init__(self, filepath: str, optional: bool = False, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(filepath, metadata)
        self._optional = optional

    def load(self) -> dict[str, Any] | None:
        if not self._filepath.exists():
            if self._optional:
                return None
            raise self._missing()
        try:
            return load_weights(self._filepath)
        except Exception as exc:  # corrupt or foreign file
            raise DatasetError(
                f"Could not read model bundle '{self._filepath}': {exc}. Re-run "
                "`kedro run --pipeline pretrain` to write it again."
            ) from exc

    def save(self, data: dict[str, Any]) -> None:
        with replaced_atomically(self._filepath) as temporary:
            torch.save(data, temporary)
