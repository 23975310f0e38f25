"""Parameter validation names the bad key and what was expected."""

import math
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from aavae.config import SCHEMAS, ConfigError, PretrainConfig, parse, validate_all


def test_defaults_validate():
    with open("conf/base/parameters.yml") as handle:
        params = yaml.safe_load(handle)
    parsed = validate_all(params)
    assert parsed["dataset"].name == "digits"


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"'pretrain\.learning_rat': unknown parameter.*learning_rate"):
        parse("pretrain", {"learning_rat": 0.1})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"'pretrain\.max_epochs'.*'ten'"):
        parse("pretrain", {"max_epochs": "ten"})


def test_unknown_group_and_several_problems_reported_together():
    with pytest.raises(ConfigError) as info:
        validate_all({"pretrian": {}, "model": {"encoder": "vgg"}, "views": {"flip_p": 2}})
    message = str(info.value)
    assert "'pretrian': unknown parameter group; did you mean 'pretrain'?" in message
    assert "'model.encoder'" in message and "resnet18" in message
    assert "'views.flip_p'" in message


def test_imagefolder_needs_a_path_to_ingest_and_none_after():
    config = parse("dataset", {"name": "imagefolder"})  # evaluate and embed need no path
    with pytest.raises(ConfigError, match="dataset.path is required to ingest"):
        config.require_path()


def test_kl_coeff_follows_the_objective():
    assert PretrainConfig(objective="vae").effective_kl_coeff == 0.1
    assert PretrainConfig(objective="aavae").effective_kl_coeff == 0.0
    assert PretrainConfig(objective="vae", kl_coeff=0.5).effective_kl_coeff == 0.5


def test_a_near_miss_suggests_the_key_that_exists():
    with pytest.raises(ConfigError, match=r"'pretrain\.max_epoch': unknown parameter; did you mean max_epochs\?"):
        parse("pretrain", {"max_epoch": 3})
    with pytest.raises(ConfigError) as info:
        parse("pretrain", {"zzz": 3})
    assert "did you mean" not in str(info.value)


def test_a_misspelt_group_suggests_the_group_that_exists_and_a_foreign_one_lists_them():
    with pytest.raises(ConfigError) as info:
        validate_all({"pretrian": {"max_epochs": 1}, "zzz": {}})
    message = str(info.value)
    assert "'pretrian': unknown parameter group; did you mean 'pretrain'?" in message
    assert "'zzz': unknown parameter group (known groups: dataset, " in message


def test_the_registry_name_takes_only_known_placeholders_and_embed_defaults_need_no_path():
    assert parse("registry", {}).model_name.format(dataset="digits", objective="aavae") == "digits-aavae-encoder"
    with pytest.raises(ConfigError, match="'registry.model_name'"):
        parse("registry", {"model_name": "{user}-encoder"})
    assert parse("embed", {}).path is None


def test_the_committed_parameter_reference_is_what_the_schemas_generate():
    from aavae.config.reference import REFERENCE_COMMAND, parameter_reference

    committed = (Path(__file__).resolve().parents[1] / "docs" / "parameters.md").read_text()
    assert committed == parameter_reference(), f"docs/parameters.md is out of date: run `{REFERENCE_COMMAND}`"


def test_every_parameter_has_a_meaning_in_the_reference():
    from aavae.config import SCHEMAS

    missing = [f"{group}.{name}" for group, schema in SCHEMAS.items()
               for name, info in schema.model_fields.items() if not info.description]
    assert missing == []


def test_conf_base_states_the_schemas_defaults_so_there_is_one_source_of_defaults():
    from aavae.config import SCHEMAS

    base = yaml.safe_load((Path(__file__).resolve().parents[1] / "conf/base/parameters.yml").read_text())
    differ = []
    for group, values in base.items():
        defaults = {name: info.default for name, info in SCHEMAS[group].model_fields.items()}
        for key, value in values.items():
            default = defaults[key]
            if isinstance(default, tuple):
                default = list(default)
            if value != default:
                differ.append(f"{group}.{key}: conf/base {value!r}, schema {default!r}")
    assert differ == []


def test_the_views_parameters_are_the_view_policys_fields_with_its_bounds():
    """ViewsConfig's augmentation fields are generated from ViewPolicy: the same nine fields and
    defaults, and a value one refuses the other refuses, naming the field."""
    from dataclasses import fields

    from aavae.config import ViewsConfig
    from aavae.views import ViewPolicy

    assert set(ViewsConfig().policy_fields()) == {f.name for f in fields(ViewPolicy)}
    assert ViewPolicy(**ViewsConfig().policy_fields()) == ViewPolicy()
    bad_values = [("jitter_strength", 2.6), ("flip_p", 1.5), ("flip_p", float("nan")),
                  ("blur_kernel_fraction", 0.0), ("crop_scale", (0.5, 0.1)), ("crop_scale", (0.5, 1.5)),
                  ("crop_ratio", (0.0, 1.0)), ("crop_ratio", (0.5, float("inf"))), ("blur_sigma", (2.0, 1.0))]
    for name, bad in bad_values:
        with pytest.raises(ConfigError, match=f"views.{name}"):
            parse("views", {name: bad})
        with pytest.raises(ValueError, match=name):
            ViewPolicy(**{name: bad})
    edge = ViewsConfig(jitter_strength=2.5, crop_scale=(1.0, 1.0), flip_p=1.0)
    assert ViewPolicy(**edge.policy_fields()) == ViewPolicy(jitter_strength=2.5, crop_scale=(1.0, 1.0), flip_p=1.0)


# -- the input space: any value --params or a YAML file can hold --------------------------------
yaml_scalars = (st.none() | st.booleans() | st.integers(-10**12, 10**12)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
yaml_values = st.recursive(yaml_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
every_key = [(group, key) for group, schema in SCHEMAS.items() for key in schema.model_fields]


@settings(max_examples=400, deadline=None)
@given(where=st.sampled_from(every_key), value=yaml_values)
def test_any_value_of_any_parameter_is_accepted_or_refused_by_name(where, value):
    """A value either validates or stops the run with a ConfigError naming its key: never
    another exception from inside the schema, the policy or a validator."""
    group, key = where
    try:
        parsed = parse(group, {key: value})
    except ConfigError as error:
        assert f"'{group}.{key}" in str(error) or f"'{group}'" in str(error), str(error)
        return
    floats = [v for v in _leaves(parsed.model_dump()) if isinstance(v, float)]
    assert all(math.isfinite(v) for v in floats), f"{group}.{key}={value!r} validated to {floats}"
    if group == "views":  # what validates becomes the augmentation policy the views node builds
        from aavae.views import ViewPolicy

        assert ViewPolicy(**parsed.policy_fields()).to_dict() == {
            name: list(v) if isinstance(v, tuple) else v for name, v in parsed.policy_fields().items()}


def _leaves(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


@pytest.mark.parametrize(("values", "named"), [
    ({"probe_weight_decays": []}, r"'evaluate\.probe_weight_decays': .*at least 1"),
    ({"probe_weight_decays": [1e-3, -1.0]}, r"'evaluate\.probe_weight_decays\.1': .*greater than or equal to 0"),
    ({"few_labels": [1, 5, 5]}, r"'evaluate\.few_labels': few_labels lists 5 more than once"),
    ({"baselines": ["raw_pixels", "raw_pixels"]}, r"'evaluate\.baselines': baselines lists raw_pixels more than once"),
])
def test_evaluation_lists_a_probe_would_refuse_after_feature_extraction_are_refused_at_the_start(values, named):
    """An empty or negative L2 grid stopped the linear probe only after the features were
    extracted; a repeated count or baseline wrote the same metric twice."""
    with pytest.raises(ConfigError, match=named):
        parse("evaluate", values)
    assert parse("evaluate", {"few_labels": [], "baselines": []}).few_labels == ()


@pytest.mark.parametrize(("dataset", "stem", "named"), [
    ({"image_size": 20}, "cifar", "dataset.image_size=20, model.stem=cifar"),
    ({}, "imagenet", "dataset.image_size=16, model.stem=imagenet"),
    ({"name": "imagefolder", "image_size": 40, "path": "x"}, "stl10", "dataset.image_size=40, model.stem=stl10"),
])
def test_a_stem_that_cannot_rebuild_the_images_stops_the_run_before_ingest(dataset, stem, named):
    """The decoder rebuilds only sides its stem's downsampling divides: said at validation
    (before an image folder is read), not when pretraining builds the network."""
    with pytest.raises(ConfigError, match=rf"'model\.stem': input_size \d+ does not fit stem .*{named}"):
        validate_all({"dataset": dataset, "model": {"stem": stem}})
    for name in ("cifar10", "stl10"):  # the paper's datasets fit every stem
        for any_stem in ("cifar", "stl10", "imagenet"):
            assert validate_all({"dataset": {"name": name, "image_size": None, "path": "x"}, "model": {"stem": any_stem}})
    assert validate_all({"dataset": {"name": "imagefolder", "image_size": None, "path": "x"}, "model": {"stem": "imagenet"}})
