"""Reading torch files with limits (aavae.common.weights): a downloaded checkpoint or bundle may
ask for anything, and is refused by name before it exhausts memory or crashes the process.

The files are assembled opcode by opcode (tests/helpers/torch_files.py). Those that would
allocate or crash are read in a child process whose address space may grow by 1 GiB
(tests/helpers/bounded_read.py): a refusal is the only acceptable outcome, never a signal.
"""

from __future__ import annotations

import re
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aavae.common import weights
from aavae.common.weights import MAX_NESTING, WeightsError, load_weights
from aavae.models import ModelSpec, build_model, load_paper_checkpoint, read_checkpoint
from tests.helpers.bounded_read import read_bounded
from tests.helpers.lightning_checkpoints import MODEL_CHECKPOINT, write_paper_checkpoint
from tests.helpers.torch_files import (
    call,
    content,
    global_,
    integer,
    legacy_file,
    nested,
    nested_value,
    storage,
    tensor,
    text,
    tuple_,
    zip_file,
)

FORMATS = ("zip", "legacy")
SMALL = ModelSpec(encoder="resnet18", width=8, latent_dim=16)
PROPERTY = settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def write(path: Path, form: str, pickled: bytes, records: dict[str, bytes] | None = None) -> Path:
    return zip_file(path, pickled, records) if form == "zip" else legacy_file(path, pickled, records)


def refused(path: Path, *fragments: str):
    """pytest.raises for a WeightsError naming ``path`` and saying each of ``fragments``."""
    return pytest.raises(WeightsError, match=re.escape(str(path)) + ".*" + ".*".join(fragments))


# -- one file per defect, each read as before the bounds it failed ----------------------------


@pytest.mark.slow
def test_a_deflated_record_is_refused_before_it_is_inflated(tmp_path):
    """A 1 MB checkpoint whose one record inflates to 1 GiB: torch's zip reader inflated it."""
    path = tmp_path / "bomb.ckpt"
    zip_file(path, content(("w", tensor(2**28, (2**28,), (1,)))))
    record = zipfile.ZipInfo("archive/data/0")
    record.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "a") as archive, archive.open(record, "w", force_zip64=True) as stream:
        for _ in range(1024):
            stream.write(bytes(1024**2))
    assert path.stat().st_size < 2 * 1024**2
    (outcome,) = read_bounded("read_checkpoint", [path])
    assert outcome["error"] == "WeightsError" and "holds the record archive/data/0 compressed" in outcome["message"]


@pytest.mark.slow
def test_a_tuple_nested_a_million_deep_as_a_dict_key_is_refused_not_a_crash(tmp_path):
    """torch's weights-only unpickler hashed it as it built the dict, and the process died."""
    path = zip_file(tmp_path / "deep.ckpt", content(("callbacks", nested("tuple-key", 10**6))))
    (outcome,) = read_bounded("read_checkpoint", [path])
    assert outcome["error"] == "WeightsError" and f"nests containers more than {MAX_NESTING} deep" in outcome["message"]


def test_hyper_parameters_nested_ten_thousand_deep_are_refused_not_a_recursion_error(tmp_path):
    """Read, they ended in a RecursionError when a mismatch message printed them."""
    hyper_parameters = b"}" + text("h_dim") + nested("lists", 10**4) + b"s"
    path = zip_file(tmp_path / "deep.ckpt", content(
        ("state_dict", b"}" + text("log_scale") + tensor(1, (1,), (1,)) + b"s"),
        ("hyper_parameters", hyper_parameters)), {"0": bytes(4)})
    with refused(path, "nests containers more than"):
        load_paper_checkpoint(path, SMALL)


@pytest.mark.slow
def test_a_legacy_file_claiming_more_storage_than_it_holds_is_refused_before_it_is_allocated(tmp_path):
    """torch allocates a legacy file's storages at their claimed size before reading them."""
    path = legacy_file(tmp_path / "claims.ckpt", content(("w", tensor(2**29, (4,), (1,), legacy=True))),
                       {"0": bytes(16)})
    (outcome,) = read_bounded("load_weights", [path])
    assert outcome["error"] == "WeightsError"
    assert f"claims {2**31:,} bytes of tensors, more than the file's {path.stat().st_size:,} bytes" in outcome["message"]


def test_a_legacy_tensor_reaching_past_its_storage_is_refused_before_the_storage_grows(tmp_path):
    path = legacy_file(tmp_path / "view.ckpt", content(("w", tensor(4, (2**20,), (1,), legacy=True))),
                       {"0": bytes(16)})
    with refused(path, f"a tensor reaching element {2**20:,} of a storage of 4"):
        load_weights(path)


ALLOCATING_CALLS = {
    "bytearray": call("builtins.bytearray", integer(2**20)),
    "legacy tensor constructor": call("torch.FloatTensor", integer(2**20)),
    "storage constructor": call("torch.FloatStorage", integer(2**20)),
    "tensor of a legacy type": call("torch._tensor._rebuild_from_type_v2", global_("torch.FloatTensor"),
                                    global_("torch.Tensor"), tuple_(integer(2**20)), b"}"),
    "quantized tensor": call("torch._utils._rebuild_qtensor", storage(1), integer(0), tuple_(integer(2**20)),
                             tuple_(integer(1)), tuple_(global_("torch.per_tensor_affine"), b"G" + bytes(8),
                                                        integer(0)), b"\x89", b"ccollections\nOrderedDict\n)R"),
    "tensor state set afterwards": tensor(1, (1,), (1,)) + tuple_(storage(1, "1"), integer(0),
                                                                  tuple_(integer(2**20)), tuple_(integer(1))) + b"b",
}


@pytest.mark.parametrize("form", FORMATS)
@pytest.mark.parametrize("what", ALLOCATING_CALLS)
def test_a_call_that_allocates_what_the_file_asks_is_refused(tmp_path, form, what):
    """Weights-only loading allows these names, which build a size given in the file."""
    path = write(tmp_path / "calls.pt", form, content(("w", ALLOCATING_CALLS[what])), {"0": bytes(4), "1": bytes(4)})
    with refused(path, "(calls|asks for|sets the state|refers to)"):
        load_weights(path)


def test_the_stand_ins_are_allowed_to_the_read_that_asked_for_them_alone(tmp_path, monkeypatch):
    """torch's allow-list is one for the process: while a checkpoint is read, another read (a
    bundle, in another thread) must still refuse the Lightning classes it did not allow."""
    paper = write_paper_checkpoint(tmp_path / "paper.ckpt", build_model(SMALL).state_dict())
    other = tmp_path / "bundle.pt"
    other.write_bytes(paper.read_bytes())
    inside, release = threading.Event(), threading.Event()
    load = torch.load

    def first_read_pauses(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            inside.set()
            assert release.wait(60), "the other read never finished"
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", first_read_pauses)
    reading = threading.Thread(target=read_checkpoint, args=(paper,))
    reading.start()
    try:
        assert inside.wait(60), "the checkpoint read never started"
        with refused(other, f"refers to {MODEL_CHECKPOINT}, which is not among the classes"):
            load_weights(other)
    finally:
        release.set()
        reading.join()


def test_what_torch_save_writes_reads_as_it_was_saved(tmp_path):
    """The bounds refuse nothing torch.save writes: parameters, views, shared storages, tensors
    with attributes, every dtype, sets, bytes, devices, in both of its formats."""
    base = torch.arange(12.0)
    flagged = torch.ones(2)
    flagged.note = "kept"  # a tensor with attributes goes through _rebuild_from_type_v2
    saved = {
        "parameter": torch.nn.Parameter(torch.randn(3, 2)), "view": base[2:8].view(2, 3), "base": base,
        "transposed": torch.randn(4, 3).t(), "empty": torch.zeros(0, 5), "flagged": flagged,
        "dtypes": [torch.zeros(2, dtype=dtype) for dtype in (torch.uint8, torch.int64, torch.bfloat16,
                                                              torch.float16, torch.bool, torch.complex64)],
        "plain": {"set": {1, 2}, "bytes": b"\x00\x01", "device": torch.device("cpu"), "size": torch.Size([2]),
                  "dtype": torch.float32, "nested": [[1, (2, 3.5)], {"a": None}]},
    }
    for form in FORMATS:
        path = tmp_path / f"{form}.pt"
        torch.save(saved, path, _use_new_zipfile_serialization=form == "zip")
        loaded = load_weights(path)
        assert loaded["plain"] == saved["plain"] and loaded["flagged"].note == "kept"
        for key in ("parameter", "view", "base", "transposed", "empty"):
            assert torch.equal(loaded[key], saved[key]), key
        assert all(torch.equal(a, b) for a, b in zip(loaded["dtypes"], saved["dtypes"], strict=True))
        assert loaded["view"].untyped_storage().data_ptr() == loaded["base"].untyped_storage().data_ptr()


def test_a_file_asking_beyond_the_stated_ceiling_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(1000)}, path)
    monkeypatch.setattr(weights, "MAX_TENSOR_BYTES", 3999)
    with refused(path, "claims 4,000 bytes of tensors, more than the 3,999 bytes this reader loads"):
        load_weights(path)


# -- the classes: generated files, read in a process that may grow 1 GiB -----------------------

NESTINGS = ("lists", "dicts", "tuple-key", "marks")


@st.composite
def nested_files(draw: st.DrawFn) -> tuple[str, str, int]:
    """(format, kind, depth): depths that must read, and depths up to a million that must not."""
    shallow = st.integers(1, MAX_NESTING - 3)
    deep = st.integers(MAX_NESTING + 1, 10**6)
    return draw(st.sampled_from(FORMATS)), draw(st.sampled_from(NESTINGS)), draw(st.one_of(shallow, deep))


@pytest.mark.slow
@PROPERTY
@given(st.lists(nested_files(), min_size=4, max_size=8))
@example([("zip", "tuple-key", 10**6), ("legacy", "dicts", 10**6), ("zip", "marks", MAX_NESTING - 3),
          ("legacy", "lists", MAX_NESTING + 1)])
def test_nesting_of_any_depth_reads_or_is_refused_by_name(tmp_path_factory, files):
    folder = tmp_path_factory.mktemp("nested")
    paths = [write(folder / f"{i}.pt", form, content(("x", nested(kind, depth))))
             for i, (form, kind, depth) in enumerate(files)]
    for path, (_, kind, depth), outcome in zip(paths, files, read_bounded("load_weights", paths), strict=True):
        if depth <= MAX_NESTING - 3:
            assert outcome["error"] is None, outcome
            assert load_weights(path)["x"] == nested_value(kind, depth)
        else:
            assert outcome["error"] == "WeightsError", outcome
            assert f"{path} nests containers more than {MAX_NESTING} deep" in outcome["message"]


@st.composite
def tensor_files(draw: st.DrawFn) -> dict:
    """A float tensor over one storage: what the pickle claims (elements, size, stride, offset)
    and what the file holds (the record's bytes, stored or deflated), each true or a lie."""
    numel = draw(st.one_of(st.integers(0, 64), st.integers(0, 2**40)))
    dims = draw(st.integers(0, 3))
    return {
        "form": draw(st.sampled_from(FORMATS)),
        "numel": numel,
        "size": tuple(draw(st.lists(st.one_of(st.integers(0, 8), st.integers(0, 2**31)), min_size=dims,
                                    max_size=dims))),
        "stride": tuple(draw(st.lists(st.integers(0, 8), min_size=dims, max_size=dims))),
        "offset": draw(st.one_of(st.just(0), st.integers(0, 2**33))),
        "held": draw(st.one_of(st.just(numel * 4), st.integers(0, 256)).filter(lambda n: n <= 2**20)) // 4 * 4,
        "deflated": draw(st.booleans()),
    }


def expected_refusal(spec: dict, file_size: int) -> str | None:
    """What the bounds must say of ``spec`` (None: it reads; "": torch itself refuses it)."""
    size, stride = spec["size"], spec["stride"]
    reach = 0 if 0 in size else spec["offset"] + 1 + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if spec["form"] == "zip" and spec["deflated"]:
        return "holds the record archive/data/0 compressed"
    if reach > spec["numel"]:
        return f"a tensor reaching element {reach:,} of a storage of {spec['numel']:,}"
    if spec["numel"] * 4 > file_size:
        return f"claims {spec['numel'] * 4:,} bytes of tensors"
    return None if spec["numel"] * 4 == spec["held"] else ""


@pytest.mark.slow
@PROPERTY
@given(st.lists(tensor_files(), min_size=6, max_size=12))
@example([{"form": "zip", "numel": 2**28, "size": (2**28,), "stride": (1,), "offset": 0, "held": 2**20,
           "deflated": True},
          {"form": "legacy", "numel": 2**38, "size": (4,), "stride": (1,), "offset": 0, "held": 16,
           "deflated": False},
          {"form": "legacy", "numel": 4, "size": (2**31,), "stride": (1,), "offset": 0, "held": 16,
           "deflated": False},
          {"form": "zip", "numel": 6, "size": (2, 3), "stride": (3, 1), "offset": 0, "held": 24,
           "deflated": False}])
def test_a_tensor_claiming_any_size_reads_or_is_refused_by_name(tmp_path_factory, specs):
    folder = tmp_path_factory.mktemp("tensors")
    paths = []
    for i, spec in enumerate(specs):
        pickled = content(("w", tensor(spec["numel"], spec["size"], spec["stride"], spec["offset"],
                                       legacy=spec["form"] == "legacy")))
        record = np.arange(spec["held"] // 4, dtype=np.float32).tobytes()
        if spec["form"] == "zip":
            method = zipfile.ZIP_DEFLATED if spec["deflated"] else zipfile.ZIP_STORED
            paths.append(zip_file(folder / f"{i}.pt", pickled, {"0": record}, method))
        else:
            paths.append(legacy_file(folder / f"{i}.pt", pickled, {"0": record}))
    for path, spec, outcome in zip(paths, specs, read_bounded("load_weights", paths), strict=True):
        expected = expected_refusal(spec, path.stat().st_size)
        if expected is None:
            assert outcome["error"] is None, (spec, outcome)
            loaded = load_weights(path)["w"]
            assert loaded.shape == spec["size"] and loaded.stride() == spec["stride"], spec
            if loaded.numel() <= 10**6:  # (a stride of 0 spreads a few elements over billions)
                values = torch.arange(spec["numel"], dtype=torch.float32)
                assert torch.equal(loaded, values.as_strided(spec["size"], spec["stride"], spec["offset"]))
        else:
            assert outcome["error"] == "WeightsError", (spec, outcome)
            assert outcome["message"].startswith(str(path)) and expected in outcome["message"], (spec, outcome)
            assert "allocate" not in outcome["message"], "refused before anything is allocated"
