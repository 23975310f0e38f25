"""Tests of aavae.models: shapes, the paper's parameter count and names, errors.

Reading checkpoint files is tested in test_checkpoint_reading.py.
"""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from aavae.models import (
    ENCODERS,
    STEMS,
    ModelSpec,
    ProjectionHead,
    build_decoder,
    build_encoder,
    build_model,
    count_parameters,
)

SMALL_WIDTH = 8  # enough channels to exercise every layer, small enough to run in milliseconds
TINY_WIDTH = 4  # for the 15 encoder x stem builds: the widened ResNet-50s dominate the run time
TEST_INPUT_SIZE = {"cifar": 32, "stl10": 64, "imagenet": 64}


def small_spec(**overrides) -> ModelSpec:
    settings = {"encoder": "resnet18", "width": SMALL_WIDTH, "latent_dim": 16}
    settings.update(overrides)
    return ModelSpec(**settings)


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
    with pytest.raises(ValueError, match="head\n  Input should be 'vae' or 'ae'"):
        small_spec(head="gan")


@pytest.mark.parametrize(
    ("settings", "pattern"),
    [
        ({"encoder": "resnet101"}, "encoder\n  Input should be 'resnet18', 'resnet34', 'resnet50'"),
        ({"stem": "mnist"}, "stem\n  Input should be 'cifar', 'stl10' or 'imagenet'"),
        ({"stem": "cifar", "input_size": 30}, "input_size 30 .* multiple of 8"),
        ({"stem": "stl10", "input_size": 40}, "input_size 40 .* multiple of 16"),
        ({"stem": "imagenet", "input_size": 80}, "input_size 80 .* multiple of 32"),
        ({"h_dim": 100}, "h_dim\n  Input should be a multiple of 16"),
        ({"width": 0}, "width\n  Input should be greater than or equal to 1"),
        ({"width": True}, "width\n  Input should be a valid integer"),
        ({"width": 1}, "default h_dim .* not a multiple of 16"),
        ({"latent_dim": 0}, "latent_dim\n  Input should be greater than or equal to 1"),
        ({"learn_scale": "yes"}, "learn_scale\n  Input should be a valid boolean"),
        ({"log_scale": 100.0}, "log_scale\n  Input should be less than or equal to 80"),
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
    with pytest.raises(ValueError, match=r"depth: Unexpected keyword argument \(got 18\)"):
        ModelSpec.from_dict({**small_spec().to_dict(), "depth": 18})


@pytest.mark.parametrize("key", [field.name for field in fields(ModelSpec)])
def test_a_stored_spec_with_a_key_deleted_is_refused_not_filled_with_a_default(key: str) -> None:
    """A bundle's spec read back must be whole: a hand-edited one missing ``log_scale`` or
    ``head`` would otherwise build another network than the one its weights were trained in."""
    stored = small_spec(log_scale=-1.0, head="ae").to_dict()
    del stored[key]
    with pytest.raises(ValueError, match=rf"the model spec is not a complete, valid record: missing {key}\. Pretrain"):
        ModelSpec.from_dict(stored)


@pytest.mark.parametrize(("settings", "size"), [
    ({"width": 1000}, "3,862,612,504 parameters, 15.5 GB"),  # the 1.6 KB bundle asked for 42.8 GB at 1664
    ({"width": 64, "h_dim": 60000}, "4,046,691,620 parameters, 16.2 GB"),  # one 14.4 GB Linear
    ({"encoder": "resnet50w4", "width": 128}, "2,604,850,692 parameters, 10.4 GB"),
])
def test_a_spec_whose_parameters_would_not_fit_is_refused_with_its_size_before_anything_is_built(settings, size):
    """What a bundle's spec asks for is bounded like the model parameters: checked from shapes
    (a build on the meta device), so refusing a 16 GB network allocates none of it."""
    stored = {**small_spec(latent_dim=128).to_dict(), **settings}
    with pytest.raises(ValueError, match=rf"has {size} in float32: over the 8 GiB a network may take"):
        ModelSpec.from_dict(stored)


def test_the_size_estimate_counts_what_the_network_holds() -> None:
    """The ceiling is checked on the parameters the built network has, every encoder, stem and head."""
    from aavae.models.net import _parameter_count

    for encoder in ENCODERS:
        for stem in STEMS:
            for head in ("vae", "ae"):
                spec = ModelSpec(encoder=encoder, stem=stem, width=TINY_WIDTH, latent_dim=16, head=head,
                                 input_size=TEST_INPUT_SIZE[stem])
                with torch.device("meta"):
                    built = count_parameters(build_model(spec))
                assert _parameter_count(encoder, stem, TINY_WIDTH, None, 16, head) == built


def test_a_stored_spec_nested_a_million_deep_is_refused_not_a_crash() -> None:
    """pydantic's choice check hashes the value: a tuple nested 10^6 deep overflowed the C stack."""
    deep = "resnet18"
    for _ in range(10**6):
        deep = (deep,)
    with pytest.raises(ValueError, match=r"encoder: expected a number, string, true/false, null or a list of them, got tuple"):
        ModelSpec.from_dict({**small_spec().to_dict(), "encoder": deep})


stored_values = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10) | st.lists(
    st.integers(0, 64), max_size=3) | st.sampled_from(["resnet18", "resnet50w4", "imagenet", "stl10", "ae", 16, 32, 1024])


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from([field.name for field in fields(ModelSpec)]), value=stored_values)
def test_any_stored_value_of_a_spec_gives_a_spec_or_a_one_line_error(key: str, value) -> None:
    """What a bundle holds is data: any value in any field reads as a valid spec or a ValueError
    of one line naming the spec, never another exception."""
    stored = {**small_spec().to_dict(), key: value}
    try:
        spec = ModelSpec.from_dict(stored)
    except ValueError as error:
        assert str(error).startswith("the model spec is not a complete, valid record: ") and "\n" not in str(error)
        return
    assert spec.to_dict() == {**stored, "log_scale": float(stored["log_scale"])}
    assert type(stored[key]) is not bool or key == "learn_scale"
