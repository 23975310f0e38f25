"""Tests of aavae.models: shapes, the paper's parameter count and names, checkpoints, errors."""

from __future__ import annotations

import argparse
import json
import re

import pytest
import torch
import torchvision

from aavae.models import (
    ENCODERS,
    STEMS,
    AAVAENet,
    ModelSpec,
    ProjectionHead,
    build_decoder,
    build_encoder,
    build_model,
    count_parameters,
    load_paper_checkpoint,
)

SMALL_WIDTH = 8  # enough channels to exercise every layer, small enough to run in milliseconds
TINY_WIDTH = 4  # for the 15 encoder x stem builds: the widened ResNet-50s dominate the run time
TEST_INPUT_SIZE = {"cifar": 32, "stl10": 64, "imagenet": 64}


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


@pytest.mark.parametrize("stem", STEMS)
@pytest.mark.parametrize("encoder", ENCODERS)
def test_every_encoder_and_stem_round_trips_the_image_shape(encoder: str, stem: str) -> None:
    size = TEST_INPUT_SIZE[stem]
    spec = ModelSpec(encoder=encoder, stem=stem, width=TINY_WIDTH, input_size=size, latent_dim=16)
    net = build_model(spec).eval()
    images = torch.randn(2, 3, size, size)

    with torch.no_grad():
        features = net.encode(images)
        mu, logvar = net.posterior(images)
        reconstruction = net.decode(mu)

    assert features.shape == (2, net.encoder.out_dim) == (2, spec.feature_dim)
    assert mu.shape == logvar.shape == (2, 16)
    assert reconstruction.shape == images.shape


def test_builders_work_on_their_own() -> None:
    encoder = build_encoder("resnet50", stem="stl10", width=SMALL_WIDTH)
    decoder = build_decoder(
        "resnet50", "stl10", 96, latent_dim=8, h_dim=encoder.out_dim, width=SMALL_WIDTH
    )
    head = ProjectionHead(encoder.out_dim, 32, 8)

    features = encoder(torch.randn(2, 3, 96, 96))
    mu, logvar = head(features)

    assert features.shape == (2, SMALL_WIDTH * 8 * 4)
    assert mu.shape == logvar.shape == (2, 8)
    assert decoder(mu).shape == (2, 3, 96, 96)


def test_paper_resnet18_cifar_has_the_papers_parameter_count() -> None:
    net = build_model(
        ModelSpec(encoder="resnet18", stem="cifar", width=64, h_dim=512, latent_dim=128)
    )
    without_scale = sum(count_parameters(m) for m in (net.encoder, net.decoder, net.projection))
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)

    assert without_scale == 16_022_691
    assert trainable == 16_022_691  # log_scale is frozen by default...
    assert count_parameters(net) == 16_022_692  # ...but still a parameter of the module


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_encoder_names_and_shapes_match_torchvisions_resnet(name: str) -> None:
    # The paper's encoder uses torchvision's layout; matching it keeps its checkpoints loadable.
    with torch.device("meta"):
        ours = build_encoder(name, stem="imagenet", width=64)
        reference = getattr(torchvision.models, name)()
    expected = {k: v.shape for k, v in reference.state_dict().items() if not k.startswith("fc.")}

    assert {k: v.shape for k, v in ours.state_dict().items()} == expected


def test_state_dict_has_the_papers_top_level_names() -> None:
    net = build_model(small_spec())
    top_level = {key.split(".")[0] for key in net.state_dict()}

    assert top_level == {"encoder", "decoder", "projection", "log_scale"}
    for key in [
        "decoder.linear_projection1.weight",
        "decoder.layer1.0.upsample.1.weight",
        "decoder.final_conv.bias",
        "projection.first_layer.1.running_mean",
        "projection.mu.weight",
        "encoder.layer2.0.downsample.1.weight",
    ]:
        assert key in net.state_dict()


@pytest.mark.parametrize("learn_scale", [False, True])
def test_log_scale_starts_at_the_spec_value_and_trains_only_when_asked(learn_scale: bool) -> None:
    net = build_model(small_spec(log_scale=-1.5, learn_scale=learn_scale))

    assert net.log_scale.shape == (1,)
    assert net.log_scale.item() == -1.5
    assert net.log_scale.requires_grad is learn_scale


def test_channels_last_bf16_autocast_training_step_reaches_every_weight() -> None:
    net = build_model(small_spec()).to(memory_format=torch.channels_last).train()
    images = torch.randn(4, 3, 32, 32).to(memory_format=torch.channels_last)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        mu, logvar = net.posterior(images)
        reconstruction = net.decode(mu + logvar.exp())
        loss = (reconstruction.float() - images).square().mean()
    loss.backward()

    assert reconstruction.shape == images.shape
    without_grad = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert without_grad == []
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


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


def test_the_ae_head_is_the_papers_projection_head_ae() -> None:
    # ProjectionHeadAE: Linear(bias) -> BatchNorm1d -> ReLU -> Linear(no bias) to the latent
    net = build_model(small_spec(head="ae"))
    keys = {k for k in net.state_dict() if k.startswith("projection.")}
    assert keys == {
        "projection.projection_head.0.weight", "projection.projection_head.0.bias",
        "projection.projection_head.1.weight", "projection.projection_head.1.bias",
        "projection.projection_head.1.running_mean", "projection.projection_head.1.running_var",
        "projection.projection_head.1.num_batches_tracked", "projection.projection_head.3.weight",
    }
    features = torch.randn(5, net.encoder.out_dim)
    assert net.latent_mean(features).shape == (5, net.spec.latent_dim)
    with pytest.raises(ValueError, match="needs the vae head"):
        net.posterior(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="head must be one of"):
        small_spec(head="gan")


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


def test_checkpoint_with_pickled_objects_is_not_unpickled(tmp_path) -> None:
    path = tmp_path / "with_namespace.ckpt"
    state = build_model(small_spec()).state_dict()
    torch.save({"state_dict": state, "hparams": argparse.Namespace(encoder="resnet18")}, path)

    with pytest.raises(ValueError, match="argparse.Namespace.*weights_only=False"):
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
    assert "not a checkpoint" in message
    assert "Python objects" not in message and "weights_only" not in message, "not an unpickling-policy issue"


def test_a_truncated_checkpoint_is_reported_as_damaged(tmp_path) -> None:
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": build_model(small_spec()).state_dict()}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    with pytest.raises(ValueError, match=f"checkpoint {path} is damaged \\(truncated\\?\\)"):
        load_paper_checkpoint(path, small_spec())


@pytest.mark.parametrize(
    ("settings", "pattern"),
    [
        ({"encoder": "resnet101"}, "unknown encoder 'resnet101'.*resnet18, resnet34, resnet50"),
        ({"stem": "mnist"}, "unknown stem 'mnist'.*cifar, stl10, imagenet"),
        ({"stem": "cifar", "input_size": 30}, "input_size 30 .* multiple of 8"),
        ({"stem": "stl10", "input_size": 40}, "input_size 40 .* multiple of 16"),
        ({"stem": "imagenet", "input_size": 80}, "input_size 80 .* multiple of 32"),
        ({"h_dim": 100}, "h_dim must be a positive multiple of 16"),
        ({"width": 0}, "width must be a positive integer"),
        ({"width": 1}, "default h_dim .* not a multiple of 16"),
        ({"latent_dim": 0}, "latent_dim must be a positive integer"),
        ({"learn_scale": "yes"}, "learn_scale must be true or false"),
    ],
)
def test_bad_spec_is_refused_clearly(settings: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        small_spec(**settings)


def test_builders_refuse_unknown_names_and_sizes() -> None:
    with pytest.raises(ValueError, match="unknown encoder 'vgg'"):
        build_encoder("vgg")
    with pytest.raises(ValueError, match="unknown stem 'tiny'"):
        build_encoder("resnet18", stem="tiny")
    with pytest.raises(ValueError, match="input_size 100 .* multiple of 32"):
        build_decoder("resnet18", "imagenet", 100, latent_dim=8, h_dim=64, width=SMALL_WIDTH)


def test_spec_round_trips_through_json() -> None:
    spec = ModelSpec(
        encoder="resnet50",
        stem="stl10",
        width=16,
        h_dim=None,
        latent_dim=64,
        input_size=96,
        log_scale=-1.0,
        learn_scale=True,
    )

    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.resolved_h_dim == spec.feature_dim == 16 * 8 * 4


def test_spec_from_dict_names_unknown_keys() -> None:
    with pytest.raises(ValueError, match=r"unknown keys \['depth'\].*known keys are encoder"):
        ModelSpec.from_dict({"encoder": "resnet18", "depth": 18})
