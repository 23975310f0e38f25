"""Reading checkpoint files without running them: every Lightning format of the paper's code, this
project's own, and what is refused (aavae.models.checkpoint_reading).

The paper's files are made by tests/helpers/lightning_checkpoints.py: their pickles name the
modules and classes a 2021 Lightning save names, without Lightning 1.x installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys

import numpy as np
import pytest
import torch
import torchvision

from aavae.models import (
    AAVAENet,
    ForeignObject,
    ModelSpec,
    build_model,
    load_paper_checkpoint,
    read_checkpoint,
)
from tests.conftest import copy_project, kedro
from tests.helpers.lightning_checkpoints import (
    ATTRIBUTE_DICT,
    EARLY_STOPPING,
    FORMATS,
    MODEL_CHECKPOINT,
    PAPER_EARLY_STOPPING,
    classes_named,
    paper_hyper_parameters,
    write_paper_checkpoint,
)

SMALL_WIDTH = 8


def small_spec(**overrides) -> ModelSpec:
    settings = {"encoder": "resnet18", "width": SMALL_WIDTH, "latent_dim": 16}
    settings.update(overrides)
    return ModelSpec(**settings)


def trained_looking(net: AAVAENet) -> AAVAENet:
    """Move BatchNorm running statistics off their initial values, as training would."""
    net.train()
    with torch.no_grad():
        net.posterior(torch.randn(4, 3, net.spec.input_size, net.spec.input_size))
    return net.eval()


def outputs(net: AAVAENet, images: torch.Tensor, z: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return [net.encode(images), *net.posterior(images), net.decode(z)]


# -- the paper's files, as its code wrote them ----------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_every_lightning_format_of_the_papers_code_reads_as_it_was_written(tmp_path, fmt: str) -> None:
    spec = small_spec(log_scale=-0.25)
    original = trained_looking(build_model(spec))
    path = write_paper_checkpoint(tmp_path / "aavae_cifar10.ckpt", original.state_dict(), fmt, epoch=99)

    content = read_checkpoint(path)
    loaded = load_paper_checkpoint(path, spec, content=content).eval()

    images, z = torch.randn(3, 3, 32, 32), torch.randn(3, 16)
    for expected, got in zip(outputs(original, images, z), outputs(loaded, images, z), strict=True):
        assert torch.equal(expected, got)
    assert loaded.log_scale.item() == -0.25 and loaded.log_scale.requires_grad is False
    assert (content["epoch"], content["global_step"]) == (99, 100 * 175)
    assert content["optimizer_states"][0]["state"][0]["step"] == 100 * 175, "torch 1.8's int step"
    assert content["lr_schedulers"][0]["lr_lambdas"] == [None]
    assert content["state_dict"]["online_finetuner.weight"].shape == (10, 64), "kept, not loaded"


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "lightning-2.x"])
def test_a_lightning_1x_file_names_lightnings_classes_which_weights_only_loading_refuses(tmp_path, fmt) -> None:
    path = write_paper_checkpoint(tmp_path / "last.ckpt", build_model(small_spec()).state_dict(), fmt)
    modules_before = {name for name in sys.modules if name.split(".")[0] in ("pytorch_lightning", "src")}

    # the GLOBAL opcode of a pickle: "c" module "\n" name "\n" (the zip stores data.pkl uncompressed)
    assert b"cpytorch_lightning.callbacks.model_checkpoint\nModelCheckpoint\n" in path.read_bytes()
    assert path.read_bytes().startswith(b"PK") == (fmt != "lightning-1.3-legacy-pickle")
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True)  # what needed the stand-ins
    read_checkpoint(path)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True)  # they are allowed only while read_checkpoint reads
    modules_after = {name for name in sys.modules if name.split(".")[0] in ("pytorch_lightning", "src")}
    assert modules_after == modules_before, "reading imported nothing of Lightning or the paper"


def test_the_stand_ins_keep_what_the_file_holds_as_data(tmp_path) -> None:
    state = build_model(small_spec()).state_dict()
    hparams = paper_hyper_parameters()

    callbacks = read_checkpoint(write_paper_checkpoint(tmp_path / "a.ckpt", state, "paper-callbacks"))["callbacks"]
    by_name = {key.qualified_name: value for key, value in callbacks.items()}
    assert all(issubclass(key, ForeignObject) for key in callbacks), "class keys become stand-in classes"
    assert set(by_name) == {MODEL_CHECKPOINT, PAPER_EARLY_STOPPING}
    assert by_name[MODEL_CHECKPOINT]["dirpath"] == "/home/paper/lightning_logs/version_0/checkpoints"
    assert by_name[PAPER_EARLY_STOPPING]["best_score1"].item() == pytest.approx(0.91)

    old = read_checkpoint(write_paper_checkpoint(tmp_path / "b.ckpt", state, "lightning-1.0-attributedict"))
    assert type(old["hyper_parameters"]) is dict and old["hyper_parameters"] == hparams  # ATTRIBUTE_DICT
    assert {key.qualified_name for key in old["callbacks"]} == {MODEL_CHECKPOINT, EARLY_STOPPING}

    namespace = read_checkpoint(write_paper_checkpoint(tmp_path / "c.ckpt", state, "namespace-hparams"))
    stand_in = namespace["hyper_parameters"]
    assert stand_in.qualified_name == "argparse.Namespace" and stand_in.state == hparams
    assert ATTRIBUTE_DICT.endswith("AttributeDict")


def test_a_mismatch_says_what_the_papers_hyper_parameters_say(tmp_path) -> None:
    path = write_paper_checkpoint(tmp_path / "last.ckpt", build_model(small_spec(latent_dim=32)).state_dict(),
                                  encoder_name="resnet18", latent_dim=32, h_dim=64)

    with pytest.raises(ValueError, match=r"its hyper_parameters say encoder_name='resnet18', h_dim=64, "
                                         r"latent_dim=32"):
        load_paper_checkpoint(path, small_spec(latent_dim=16))


# -- what is refused, by name, without running anything ------------------------------------------

class _Payload:
    """An object whose unpickling calls ``call(*args)``: what a malicious checkpoint carries."""

    def __init__(self, call, *args) -> None:
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize("payload", ["os.system", "io.open", "builtins.exec"])
def test_a_file_that_would_run_code_is_refused_by_name_and_nothing_runs(tmp_path, payload: str) -> None:
    marker = tmp_path / "created_by_the_checkpoint"
    call = {"os.system": _Payload(os.system, f"touch {marker}"),
            "io.open": _Payload(open, str(marker), "w"),
            "builtins.exec": _Payload(exec, f"open({str(marker)!r}, 'w').close()")}[payload]
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": build_model(small_spec()).state_dict(), "hyper_parameters": call}, path)
    torch.load(path, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.exists()
    marker.unlink()

    with pytest.raises(ValueError) as caught:
        load_paper_checkpoint(path, small_spec())

    refused = f"{os.system.__module__}.system" if payload == "os.system" else payload  # posix.system
    message = str(caught.value)
    assert f"checkpoint {path} refers to {refused}, which is not among the classes" in message
    assert "nothing in the file was run" in message and "weights_only=False" in message
    assert not marker.exists()


def test_an_unknown_class_is_refused_by_name(tmp_path) -> None:
    path = tmp_path / "other_callback.ckpt"
    with classes_named("some.unknown.Class", MODEL_CHECKPOINT) as classes:
        callbacks = {classes[MODEL_CHECKPOINT]: {"monitor": None}, classes["some.unknown.Class"]: {"x": 1}}
        torch.save({"state_dict": build_model(small_spec()).state_dict(), "callbacks": callbacks}, path)

    with pytest.raises(ValueError, match=r"refers to some\.unknown\.Class, which is not among"):
        read_checkpoint(path)


def test_a_known_name_called_with_arguments_builds_an_inert_stand_in(tmp_path) -> None:
    marker = tmp_path / "created_by_the_checkpoint"
    path = tmp_path / "called.ckpt"
    with classes_named(MODEL_CHECKPOINT) as classes:
        callback = classes[MODEL_CHECKPOINT]
        callback.__reduce__ = lambda self: (type(self), (f"touch {marker}",))
        torch.save({"state_dict": {}, "callback": callback()}, path)

    built = read_checkpoint(path)["callback"]

    assert isinstance(built, ForeignObject) and built.args == (f"touch {marker}",)
    assert repr(built) == f"<{MODEL_CHECKPOINT} stand-in, not loaded>"
    assert not marker.exists()


# -- this project's files and other layouts ------------------------------------------------------

@pytest.mark.parametrize("layout", ["lightning", "bare"])
def test_paper_layout_checkpoint_loads_and_reproduces_outputs(tmp_path, layout: str) -> None:
    spec = small_spec(log_scale=-0.25)
    original = trained_looking(build_model(spec))
    state = dict(original.state_dict())
    state["online_finetuner.block_forward.2.weight"] = torch.randn(10, 64)  # not part of the model
    content = (
        {"epoch": 3, "global_step": 120, "state_dict": state} if layout == "lightning" else state
    )
    path = tmp_path / "last.ckpt"
    torch.save(content, path)

    loaded = load_paper_checkpoint(path, spec).eval()

    images, z = torch.randn(3, 3, 32, 32), torch.randn(3, 16)
    for expected, got in zip(outputs(original, images, z), outputs(loaded, images, z), strict=True):
        assert torch.equal(expected, got)
    assert loaded.log_scale.item() == -0.25
    assert loaded.log_scale.requires_grad is False


def test_checkpoint_of_another_architecture_is_refused_with_the_keys(tmp_path) -> None:
    path = tmp_path / "resnet50.ckpt"
    torch.save({"state_dict": build_model(small_spec(encoder="resnet50")).state_dict()}, path)

    with pytest.raises(ValueError) as caught:
        load_paper_checkpoint(path, small_spec(encoder="resnet18"))

    message = str(caught.value)
    assert str(path) in message
    assert "unexpected keys" in message and "encoder.layer1.0.conv3.weight" in message
    assert (
        "wrong shapes" in message
        and "encoder.layer1.0.conv1.weight (8, 8, 1, 1) vs (8, 8, 3, 3)" in message
    )
    assert re.search(r"\(\d+ more\)", message)  # long lists are cut, with the count
    assert "encoder, stem, width, h_dim and latent_dim" in message


def test_checkpoint_with_another_latent_size_names_the_head_keys(tmp_path) -> None:
    path = tmp_path / "latent32.ckpt"
    torch.save(build_model(small_spec(latent_dim=32)).state_dict(), path)

    with pytest.raises(ValueError, match=r"projection\.mu\.weight \(32, 64\) vs \(16, 64\)"):
        load_paper_checkpoint(path, small_spec(latent_dim=16))


def test_checkpoint_missing_model_keys_is_refused(tmp_path) -> None:
    state = build_model(small_spec()).state_dict()
    path = tmp_path / "encoder_only.ckpt"
    torch.save({"state_dict": {k: v for k, v in state.items() if k.startswith("encoder.")}}, path)

    with pytest.raises(
        ValueError, match=r"missing keys \d+: log_scale, decoder\.linear_projection1"
    ):
        load_paper_checkpoint(path, small_spec())


def test_unreadable_or_absent_checkpoint_is_named(tmp_path) -> None:
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")

    with pytest.raises(ValueError, match="garbage.ckpt"):
        load_paper_checkpoint(garbage, small_spec())
    with pytest.raises(FileNotFoundError, match="absent.ckpt"):
        load_paper_checkpoint(tmp_path / "absent.ckpt", small_spec())


def test_a_checkpoint_of_this_projects_training_module_loads_from_under_its_net_prefix(tmp_path) -> None:
    # PretrainModule holds the model as ``net`` beside an online probe: keys net.encoder..., online_probe...
    spec = small_spec(head="ae")
    original = build_model(spec).train()
    with torch.no_grad():  # batch-norm statistics off their initial values
        original.latent_mean(original.encode(torch.randn(4, 3, 32, 32)))
    original.eval()
    state = {f"net.{key}": value for key, value in original.state_dict().items()}
    state |= {"online_probe.weight": torch.randn(10, 64), "online_probe.bias": torch.zeros(10)}
    path = tmp_path / "epoch0003.ckpt"
    torch.save({"epoch": 2, "global_step": 30, "state_dict": state, "loops": {}}, path)

    loaded = load_paper_checkpoint(path, small_spec()).eval()  # model.* has no head: the file's is used

    assert loaded.spec.head == "ae"
    images, z = torch.randn(3, 3, 32, 32), torch.randn(3, 16)
    with torch.no_grad():
        for net_output in (lambda net: net.encode(images), lambda net: net.latent_mean(net.encode(images)),
                           lambda net: net.decode(z)):
            assert torch.equal(net_output(original), net_output(loaded))


def test_a_prefixed_checkpoint_of_another_size_names_the_prefix_and_the_keys(tmp_path) -> None:
    state = {f"net.{k}": v for k, v in build_model(small_spec(latent_dim=32)).state_dict().items()}
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state}, path)

    with pytest.raises(ValueError, match=r"under the prefix 'net\.'.*projection\.mu\.weight \(32, 64\) vs \(16, 64\)"):
        load_paper_checkpoint(path, small_spec(latent_dim=16))


def test_a_checkpoint_of_another_model_is_refused_as_such_not_as_a_wrong_architecture(tmp_path) -> None:
    path = tmp_path / "classifier.ckpt"
    torch.save({"state_dict": torchvision.models.resnet18(num_classes=10).state_dict()}, path)

    with pytest.raises(ValueError) as caught:
        load_paper_checkpoint(path, small_spec())

    message = str(caught.value)
    assert f"checkpoint {path} holds no weights of an AAVAE model" in message
    assert "conv1." in message and "fc." in message, "it says what the file holds"
    assert "encoder, stem, width" not in message, "the architecture is not the problem"


@pytest.mark.parametrize("start", [b"", b"\x13\x37", b"\x80\x02"])
def test_random_bytes_are_reported_as_not_a_checkpoint(tmp_path, start: bytes) -> None:
    path = tmp_path / "random.ckpt"
    body = bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8))
    path.write_bytes(start + body if start else b"")

    with pytest.raises(ValueError) as caught:
        load_paper_checkpoint(path, small_spec())

    message = str(caught.value)
    assert str(path) in message
    assert "not a checkpoint" in message or "not a file torch.save wrote" in message
    assert "Python objects" not in message and "weights_only" not in message, "not an unpickling-policy issue"


def test_a_truncated_checkpoint_is_reported_as_damaged(tmp_path) -> None:
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": build_model(small_spec()).state_dict()}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    with pytest.raises(ValueError, match=f"checkpoint {path} is damaged \\(truncated\\?\\)"):
        load_paper_checkpoint(path, small_spec())




# -- evaluated end to end, to what its weights score ---------------------------------------------

@pytest.mark.slow
def test_a_2021_lightning_checkpoint_is_evaluated_by_kedro_to_what_its_weights_score(tmp_path, digits_project) -> None:
    # The trained digits model's weights, written once as the paper's code would have (Lightning
    # 1.3, class-keyed callbacks) and once as this project's bundle: the same weights must give
    # the same features and the same scores, whichever file carries them.
    project = copy_project(tmp_path)
    shutil.copytree(digits_project / "data/test/03_primary", project / "data/test/03_primary")  # its ingest
    bundle = torch.load(digits_project / "data/test/06_models/aavae_model.pt", weights_only=True)
    paper_file = write_paper_checkpoint(project / "aavae_digits.ckpt", bundle["state_dict"])
    bundle_file = project / "same_weights.pt"
    torch.save(bundle, bundle_file)
    quick = "evaluate.baselines=[],evaluate.embedding_points=50"

    scored = {}
    for name, path in (("paper", paper_file), ("bundle", bundle_file)):
        result = kedro(project, "--pipeline", "evaluate", "--env", "test", "--params",
                       f"evaluate.checkpoint={path},{quick}")
        assert "Weights only load failed" not in result.stdout + result.stderr
        metrics = json.loads((project / "data/test/08_reporting/metrics.json").read_text())
        with np.load(project / "data/test/04_feature/features_test.npz") as features:
            scored[name] = (metrics, features["features"].copy())

    (paper_metrics, paper_features), (bundle_metrics, bundle_features) = scored["paper"], scored["bundle"]
    np.testing.assert_array_equal(paper_features, bundle_features)
    for key in ("linear_top1", "linear_top5", "knn_top1", "knn_top5"):
        assert paper_metrics[key] == bundle_metrics[key], key
    assert paper_metrics["linear_top1"] > 0.5, "a trained model, not chance (10 classes)"
    assert paper_metrics["checkpoint"] == str(paper_file) and paper_metrics["objective"] == "paper checkpoint"
