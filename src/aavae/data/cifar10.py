"""CIFAR-10 from its official "python version": ``cifar-10-python.tar.gz`` or the extracted folder.

Each batch file pickles a dict of ``b"data"`` (uint8 ``N x 3072``: the red, green and blue
planes of a 32 x 32 image, row-major) and ``b"labels"`` (N ints in 0..9); ``batches.meta``
holds ``b"label_names"``. ``data_batch_1..5`` are the 50,000 training images, ``test_batch``
the 10,000 test images. A pickle can run code when loaded, so only the few numpy globals an
array needs are resolved, and those guarded: ``numpy.ndarray`` only reaches ``_reconstruct``,
which only builds the empty array numpy's pickles start from (no allocation of a declared size).
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np

from aavae.data.archive import Source, open_source
from aavae.data.card import ReadResult
from aavae.data.errors import DatasetError
from aavae.data.imageset import ImageSet
from aavae.data.official import OfficialArchive, archive_sha256, locate_official

try:  # numpy >= 2 moved the module numpy.core to numpy._core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

CIFAR10 = OfficialArchive(
    dataset="CIFAR-10 (python version)",
    archive_name="cifar-10-python.tar.gz",
    folder_name="cifar-10-batches-py",
    marker_files=("batches.meta", "data_batch_1", "test_batch"),
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
)
USE_OFFICIAL = (
    f"Use the official {CIFAR10.archive_name} (--params dataset.download=true fetches it)."
)
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
META_FILE = "batches.meta"
NUM_CLASSES = 10
IMAGE_SIDE = 32
ROW_LENGTH = 3 * IMAGE_SIDE * IMAGE_SIDE


def _latin1_encode(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode``, as Python 3's protocol-2 pickles of numpy arrays use it for bytes."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r:.40} is not allowed "
                                     "(numpy's pickles encode a str with 'latin1')")
    return text.encode("latin1")


# A pickled dtype state sets numpy's internal flags (one flipped bit made numpy 2.4 fail with
# SystemError): only plain numeric dtypes, built afresh from their names, reach numpy.
_DTYPE_NAMES = frozenset(
    f"{kind}{size}" for kind in "biuf" for size in (1, 2, 4, 8)
) - {"b2", "b4", "b8", "f1"}


class _NdarrayType:
    """What a pickle gets for ``numpy.ndarray``: a name to pass to ``_reconstruct``, not a
    constructor (``ndarray((10**7, 3072), "u1")`` would allocate 30 GB from a few bytes)."""

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        raise pickle.UnpicklingError(
            "calling numpy.ndarray(...) is not allowed: it would allocate an array of any "
            "declared size; numpy's own pickles never call it"
        )


_NDARRAY = _NdarrayType()


def _text(value: Any) -> Any:
    """Python 2 strings load as bytes (the official files are Python 2 pickles)."""
    return value.decode("latin1") if isinstance(value, bytes) else value


class _DtypeSpec:
    """What a pickle gets from ``numpy.dtype(name, ...)``: a checked name and byte order."""

    def __init__(self, name: Any, align: Any = False, copy: Any = False) -> None:
        name = _text(name)
        if not isinstance(name, str) or name not in _DTYPE_NAMES:
            raise pickle.UnpicklingError(f"numpy.dtype({name!r:.40}) is not allowed (not numeric)")
        self.name, self.byteorder = name, "="

    def __setstate__(self, state: Any) -> None:
        order = _text(state[1]) if isinstance(state, tuple) and len(state) >= 2 else None
        if order not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError(f"numpy dtype state {state!r:.60} is not allowed")
        self.byteorder = order

    def resolve(self) -> np.dtype:
        dtype = np.dtype(self.name)
        return dtype.newbyteorder(self.byteorder) if self.byteorder in "<>" else dtype


class _CheckedArray(np.ndarray):
    """The empty array numpy's pickles fill with ``__setstate__``; the state is checked first."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) != 5:
            raise pickle.UnpicklingError(f"numpy array state {state!r:.60} is not allowed")
        version, shape, dtype, is_fortran, raw = state
        if not isinstance(dtype, _DtypeSpec) or not isinstance(raw, bytes) or version != 1:
            raise pickle.UnpicklingError(
                "numpy array state is not allowed: expected version 1, a numeric dtype and bytes"
            )
        super().__setstate__((1, shape, dtype.resolve(), bool(is_fortran), raw))


def _reconstruct_empty(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    """numpy's ``_reconstruct`` for the one call its pickles make: an empty array to fill."""
    if subtype is not _NDARRAY or not isinstance(shape, tuple) or shape != (0,):
        raise pickle.UnpicklingError(
            f"_reconstruct({subtype!r:.50}, {shape!r:.50}, ...) is not allowed: numpy's pickles "
            "reconstruct only an empty ndarray"
        )
    return _reconstruct(_CheckedArray, (0,), b"b")


# The globals a pickled uint8 array refers to, under numpy 1's (the official files) and numpy
# 2's module names; nothing else may be constructed while unpickling.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct_empty,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct_empty,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DtypeSpec,
    ("_codecs", "encode"): _latin1_encode,
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global '{module}.{name}' is not allowed (a CIFAR-10 batch holds only "
                "dicts, lists, bytes and numpy arrays)"
            ) from None


def read_cifar10(path: str | os.PathLike, *, download: bool = False) -> ReadResult:
    """CIFAR-10's ``train`` (50,000) and ``test`` (10,000) 32 x 32 images from
    ``cifar-10-python.tar.gz``, its extracted folder or a folder holding either; ``download``
    fetches the official archive into ``path`` when there is no local copy."""
    location = locate_official(path, CIFAR10, download)
    file_sha256 = archive_sha256(location, CIFAR10)
    with open_source(location) as source:
        contents = _read_batch_files(source)
    class_names = _class_names(*contents[META_FILE])
    splits = {
        split: _imageset(split, [contents[name] for name in names], class_names)
        for split, names in (("train", TRAIN_BATCHES), ("test", TEST_BATCHES))
    }
    return ReadResult(splits, str(location), "cifar10-python", file_sha256)


def _read_batch_files(source: Source) -> dict[str, tuple[dict, str]]:
    """name -> (its unpickled content, how errors name it)."""
    needed = set(TRAIN_BATCHES + TEST_BATCHES + (META_FILE,))
    contents: dict[str, tuple[dict, str]] = {}
    for name, entry, stream in source.named_files(needed, "CIFAR-10"):
        where = source.describe(entry.name)
        contents[name] = (_unpickle(stream.read(), where), where)
    missing = sorted(needed - contents.keys())
    if missing:
        raise DatasetError(
            f"{source.describe()} lacks {', '.join(missing)}. Expected the CIFAR-10 python "
            f"batches {', '.join(sorted(needed))}: use the official {CIFAR10.archive_name} "
            f"(--params dataset.download=true fetches it). {CIFAR10.image_folder_hint()}"
        )
    return contents


def _unpickle(data: bytes, where: str) -> dict:
    try:
        # encoding="bytes" keeps the Python 2 strings of the official files as bytes
        content = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
        MemoryError,  # a length field declaring more bytes than memory holds
    ) as exc:
        raise DatasetError(
            f"Cannot unpickle {where}: {type(exc).__name__}: {exc}. Expected a CIFAR-10 python "
            f"batch. {USE_OFFICIAL}"
        ) from exc
    if not isinstance(content, Mapping):
        raise DatasetError(
            f"{where} holds a {type(content).__name__}, expected a dict (a CIFAR-10 python "
            f"batch). {USE_OFFICIAL}"
        )
    return dict(content)


def _field(batch: Mapping, key: str, where: str) -> Any:
    """A batch's value under ``key`` (bytes keys in the official files, str if re-pickled)."""
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    found = ", ".join(repr(k) for k in batch) or "none"
    raise DatasetError(
        f"{where} has no key '{key}' (found: {found}); it is not a CIFAR-10 python batch. "
        f"{USE_OFFICIAL}"
    )


def _class_names(meta: Mapping, where: str) -> tuple[str, ...]:
    names = _field(meta, "label_names", where)
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        raise DatasetError(
            f"{where}: 'label_names' must be a list of {NUM_CLASSES} names, got {names!r:.200}. "
            f"{USE_OFFICIAL}"
        )
    return tuple(name.decode() if isinstance(name, bytes) else str(name) for name in names)


def _batch_arrays(batch: Mapping, where: str) -> tuple[np.ndarray, np.ndarray]:
    """The batch's images as N x 32 x 32 x 3 (a view) and its labels, validated."""
    data = _field(batch, "data", where)
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != ROW_LENGTH
    ):
        described = (
            f"{data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise DatasetError(
            f"{where}: 'data' must be a uint8 array of shape N x {ROW_LENGTH}, got a {described}. "
            f"{USE_OFFICIAL}"
        )
    try:
        labels = np.asarray(_field(batch, "labels", where), dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DatasetError(
            f"{where}: 'labels' must be a list of integers ({exc}). {USE_OFFICIAL}"
        ) from exc
    if labels.shape != (len(data),):
        raise DatasetError(
            f"{where}: {len(data)} images but 'labels' has shape {labels.shape}. {USE_OFFICIAL}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DatasetError(
            f"{where}: 'labels' must lie in 0..{NUM_CLASSES - 1}, found "
            f"{labels.min()}..{labels.max()}. {USE_OFFICIAL}"
        )
    # Row = R plane, G plane, B plane, each row-major 32 x 32: to N x H x W x C.
    images = data.reshape(-1, 3, IMAGE_SIDE, IMAGE_SIDE).transpose(0, 2, 3, 1)
    return images, labels


def _imageset(
    split: str, batches: list[tuple[dict, str]], class_names: tuple[str, ...]
) -> ImageSet:
    arrays = [_batch_arrays(batch, where) for batch, where in batches]
    images = np.concatenate([images for images, _ in arrays])  # one contiguous copy
    labels = np.concatenate([labels for _, labels in arrays])
    return ImageSet(images, labels, class_names, split)
