"""A CIFAR-10 batch is a pickle from wherever the user got it: whatever array state it declares
(any shape, any protocol), the reader gives the images or a DatasetError naming the file."""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aavae.data.cifar10 import read_cifar10
from aavae.data.errors import DatasetError
from tests.helpers.datasets import write_cifar_folder

try:  # where numpy's pickles say _reconstruct lives
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct


class DeclaredArray:
    """Pickles as numpy's own arrays do, with a state declaring ``shape`` over ``raw``."""

    def __init__(self, shape: tuple, raw: bytes) -> None:
        self.shape, self.raw = shape, raw

    def __reduce__(self):
        return _reconstruct, (np.ndarray, (0,), b"b"), (1, self.shape, np.dtype("u1"), False, self.raw)


SIDES = st.one_of(st.integers(-2, 4), st.sampled_from([3072, 2**31, 2**62, 2**63 - 1, -(2**63)]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.lists(SIDES, max_size=70).map(tuple), rows=st.integers(0, 3),
       protocol=st.integers(2, pickle.HIGHEST_PROTOCOL))
@example(shape=(2, 3072), rows=2, protocol=2)
@example(shape=(2**62, 2**62), rows=1, protocol=2)
def test_any_declared_array_shape_reads_or_is_a_dataset_error_naming_the_file(shape, rows, protocol):
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder) / "cifar-10-batches-py"
        write_cifar_folder(folder)
        batch = {b"data": DeclaredArray(shape, bytes(rows * 3072)), b"labels": [0] * rows}
        (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=protocol))
        try:
            result = read_cifar10(folder)
        except DatasetError as error:
            assert "data_batch_1" in str(error)
            return
    assert shape == (rows, 3072)  # only the true shape of its bytes reads
    assert len(result.splits["train"]) == rows + 4 * 3
