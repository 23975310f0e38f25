"""Parameter validation names the bad key and what was expected."""

import math
import types
from pathlib import Path
from typing import Annotated, Literal, Union, get_args, get_origin

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from aavae.config import SCHEMAS, ConfigError, PretrainConfig, parse, validate_all
from tests.helpers.project import artifact_root, copy_project, kedro


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

    committed = (Path(__file__).resolve().parents[2] / "docs" / "parameters.md").read_text()
    assert committed == parameter_reference(), f"docs/parameters.md is out of date: run `{REFERENCE_COMMAND}`"


def test_every_parameter_has_a_meaning_in_the_reference():
    from aavae.config import SCHEMAS

    missing = [f"{group}.{name}" for group, schema in SCHEMAS.items()
               for name, info in schema.model_fields.items() if not info.description]
    assert missing == []


def test_conf_base_states_the_schemas_defaults_so_there_is_one_source_of_defaults():
    from aavae.config import SCHEMAS

    base = yaml.safe_load((Path(__file__).resolve().parents[2] / "conf/base/parameters.yml").read_text())
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
    """ViewsConfig extends ViewPolicy: the same nine fields and defaults, and a value one refuses
    the other refuses, naming the field."""
    from aavae.config import ViewsConfig
    from aavae.views import ViewPolicy

    assert set(ViewsConfig().policy_fields()) == set(ViewPolicy.model_fields)
    assert ViewPolicy(**ViewsConfig().policy_fields()) == ViewPolicy()
    bad_values = [("jitter_strength", 2.6), ("flip_p", 1.5), ("flip_p", float("nan")),
                  ("blur_kernel_fraction", 0.0), ("crop_scale", (0.5, 0.1)), ("crop_scale", (0.5, 1.5)),
                  ("crop_ratio", (0.0, 1.0)), ("crop_ratio", (0.5, float("inf"))), ("blur_sigma", (2.0, 1.0)),
                  ("flip_p", True), ("crop_scale", (True, 1.0)), ("jitter_p", "0.5")]
    for name, bad in bad_values:
        with pytest.raises(ConfigError, match=f"views.{name}"):
            parse("views", {name: bad})
        with pytest.raises(ValueError, match=name):
            ViewPolicy(**{name: bad})
    edge = ViewsConfig(jitter_strength=2.5, crop_scale=(1.0, 1.0), flip_p=1.0)
    assert ViewPolicy(**edge.policy_fields()) == ViewPolicy(jitter_strength=2.5, crop_scale=(1.0, 1.0), flip_p=1.0)


# -- the input space: any value --params or a YAML file can hold --------------------------------
yaml_scalars = (st.none() | st.booleans() | st.integers() | st.integers(-10**12, 10**12)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
yaml_values = st.recursive(yaml_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
every_key = [(group, key) for group, schema in SCHEMAS.items() for key in schema.model_fields]


def _names_its_type(annotation, value) -> bool:
    """Whether ``value`` is of a type ``annotation`` names, exactly: a boolean is not a number,
    a string is not a number, an int is a float (YAML writes 1 for 1.0) and a list a tuple."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _names_its_type(get_args(annotation)[0], value)
    if origin in (Union, types.UnionType):
        return any(_names_its_type(option, value) for option in get_args(annotation))
    if origin is Literal:
        return any(type(value) is type(choice) and value == choice for choice in get_args(annotation))
    if origin is tuple:
        if type(value) not in (list, tuple):
            return False
        items = get_args(annotation)
        items = (items[0],) * len(value) if items[-1] is Ellipsis else items
        return len(items) == len(value) and all(map(_names_its_type, items, value))
    if annotation is float:
        return type(value) in (int, float)
    return type(value) is annotation or (annotation is type(None) and value is None)


@settings(max_examples=500, deadline=None)
@given(where=st.sampled_from(every_key), value=yaml_values)
def test_any_value_of_any_parameter_is_taken_with_its_exact_type_or_refused_before_any_node(where, value):
    """A value either validates as the type its parameter names (``true`` is not 1, ``"3"`` is
    not 3) and within the bounds its use needs, or the validation that runs before the first
    node stops the run with a ConfigError naming its key: never another exception."""
    group, key = where
    try:
        parsed = validate_all({group: {key: value}})[group]
    except ConfigError as error:
        assert f"'{group}.{key}" in str(error) or f"'{group}'" in str(error), str(error)
        return
    annotation = SCHEMAS[group].model_fields[key].annotation
    assert _names_its_type(annotation, value), f"{group}.{key}={value!r} was taken for {annotation}"
    taken = getattr(parsed, key)
    assert type(taken) is not int or _names_its_type(annotation, taken)  # no bool came out as 1
    floats = [v for v in _leaves(parsed.model_dump()) if isinstance(v, float)]
    assert all(math.isfinite(v) for v in floats), f"{group}.{key}={value!r} validated to {floats}"
    if key == "seed":  # numpy's (and scikit-learn's, Lightning's) range
        np.random.RandomState(taken)
    if group == "views":  # what validates becomes the augmentation policy the views node builds
        from aavae.views import ViewPolicy

        assert ViewPolicy(**parsed.policy_fields()).to_dict() == {
            name: list(v) if isinstance(v, tuple) else v for name, v in parsed.policy_fields().items()}
    if group == "model":  # the network it names can be built: the spec takes what the schema takes
        from aavae.models import ModelSpec
        from aavae.models.encoder import get_stem

        ModelSpec(**parsed.model_dump(), input_size=get_stem(parsed.stem).downsampling)


@settings(max_examples=200, deadline=None)
@given(group=st.sampled_from(list(SCHEMAS)), value=yaml_values)
def test_a_group_that_is_not_a_mapping_is_refused_before_any_node(group, value):
    """``--params pretrain=5`` replaces the whole group: refused by name, as a bad key is (it
    passed validation, and the run failed in the first node that read the group)."""
    try:
        validate_all({group: value})
    except ConfigError as error:
        assert f"'{group}" in str(error), str(error)
        return
    assert value is None or isinstance(value, dict)


@pytest.mark.parametrize(("params", "named"), [
    ({"pretrain": {"learning_rate": True}}, r"'pretrain\.learning_rate': Input should be a valid number \(got True\)"),
    ({"pretrain": {"max_epochs": True}}, r"'pretrain\.max_epochs': Input should be a valid integer \(got True\)"),
    ({"model": {"width": True}}, r"'model\.width': Input should be a valid integer"),
    ({"pretrain": {"batch_size": True}}, r"'pretrain\.batch_size': Input should be a valid integer"),
    ({"pretrain": {"max_epochs": "3"}}, r"'pretrain\.max_epochs': Input should be a valid integer"),
    ({"pretrain": {"seed": -5}}, r"'pretrain\.seed': Input should be greater than or equal to 0"),
    ({"pretrain": {"seed": 2**32}}, r"'pretrain\.seed': Input should be less than or equal to 4294967295"),
    ({"dataset": {"seed": 2**64}}, r"'dataset\.seed'"),
    ({"pretrain": {"max_epochs": 10**23}}, r"'pretrain\.max_epochs': Input should be less than or equal to 2147483647"),
    ({"pretrain": {"max_time_minutes": 1e300}}, r"'pretrain\.max_time_minutes'"),
    ({"model": {"width": 100_000_000}}, r"'model\.width': Input should be less than or equal to 1024"),
    ({"model": {"width": 1000}}, r"'model': resnet18 at width 1000, .* has 3,861,076,504 parameters, 15\.4 GB in float32: over the 8 GiB"),
    ({"model": {"h_dim": 100}}, r"'model\.h_dim': Input should be a multiple of 16"),
    ({"model": {"h_dim": 60000}}, r"'model': .* h_dim 60000, .* 15\.7 GB in float32"),
    ({"pretrain": 5}, r"'pretrain': a parameter group is a mapping of its keys \(--params pretrain\.<key>=<value>\), got int 5"),
    ({"views": {"original_resize": 8}}, r"'views\.original_resize': zooms originals in, so it is at least the image side"),
])
def test_values_that_passed_validation_and_failed_in_a_node_are_refused_before_any_node(params, named):
    """Each of these validated (true as 1, a negative seed, an epoch count that overflows int64,
    a 360 PB network, a group that is a number) and failed only after ingest and views ran."""
    with pytest.raises(ConfigError, match=named):
        validate_all(params)


#: What users type after --params, and what it must mean (Kedro reads the values as OmegaConf
#: does: YAML with its float rule, so 1e-3 is a number, not YAML 1.1's string).
TYPED_ON_THE_COMMAND_LINE = {
    "pretrain.learning_rate=1e-3": ("pretrain", "learning_rate", 0.001),
    "pretrain.weight_decay=0.001": ("pretrain", "weight_decay", 0.001),
    "pretrain.max_time_minutes=8": ("pretrain", "max_time_minutes", 8.0),
    "pretrain.max_epochs=2": ("pretrain", "max_epochs", 2),
    "pretrain.compile=auto": ("pretrain", "compile", "auto"),
    "pretrain.resume=false": ("pretrain", "resume", False),
    "pretrain.kl_coeff=null": ("pretrain", "kl_coeff", None),
    "pretrain.seed=4294967295": ("pretrain", "seed", 2**32 - 1),
    "model.width=8": ("model", "width", 8),
    "dataset.path=/data/cifar10_jpeg.tar.gz": ("dataset", "path", "/data/cifar10_jpeg.tar.gz"),
    "views.crop_scale=[0.08,1]": ("views", "crop_scale", (0.08, 1.0)),
    "evaluate.few_labels=[5]": ("evaluate", "few_labels", (5,)),
    "evaluate.probe_weight_decays=[1e-4]": ("evaluate", "probe_weight_decays", (1e-4,)),
    "evaluate.baselines=[]": ("evaluate", "baselines", ()),
}


def test_what_users_type_on_the_command_line_means_what_they_meant():
    """Parsed as Kedro parses ``--params`` (OmegaConf's dot list), every value validates as the
    number, flag, list or text it reads as."""
    dot_list = list(TYPED_ON_THE_COMMAND_LINE)
    parsed = validate_all(OmegaConf.to_container(OmegaConf.from_dotlist(dot_list)))
    for group, key, meant in TYPED_ON_THE_COMMAND_LINE.values():
        taken = getattr(parsed[group], key)
        assert taken == meant and type(taken) is type(meant), f"{group}.{key}: {taken!r}"


@pytest.mark.slow
def test_kedro_run_takes_typed_values_and_refuses_others_before_ingest(tmp_path):
    """End to end through the real CLI: the values above run; a flag for a number, a seed
    numpy refuses and a group that is a number stop the run before ingest writes anything.
    (Kedro splits --params at every comma: a list of several items is set in conf/.)"""
    project = copy_project(tmp_path)
    typed = ",".join(line for line in TYPED_ON_THE_COMMAND_LINE if "," not in line and not line.startswith("dataset.path"))
    ran = kedro(project, "--pipeline", "ingest", "--env", "test", "--params", typed, timeout=300)
    assert "completed successfully" in ran.stdout + ran.stderr
    card = artifact_root(project, "test") / "03_primary" / "dataset_card.json"
    card.unlink()
    refused = kedro(project, "--pipeline", "ingest", "--env", "test", "--params",
                    "model.width=true,pretrain.seed=-5,views=5", check=False, timeout=300)
    text = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "Traceback" not in text
    for named in ("'model.width': Input should be a valid integer", "'pretrain.seed'", "'views': a parameter group"):
        assert named in text, text[-3000:]
    assert not card.exists()


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
