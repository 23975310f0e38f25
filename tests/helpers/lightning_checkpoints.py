"""Checkpoint files as the paper's code and Lightning's versions wrote them, made without those packages.

The paper's ``src/vae.py`` (torch 1.8, Lightning's master of spring 2021, about 1.3) saved
through Lightning 1.x's ``dump_checkpoint``: ``epoch``, ``global_step``,
``pytorch-lightning_version``, ``callbacks`` (each callback's state keyed by the callback's
*class*: ``ModelCheckpoint`` returns monitor, best_model_score, best_model_path,
current_score, dirpath), ``optimizer_states`` (torch 1.8's Adam: an int ``step``),
``lr_schedulers`` (LambdaLR's state, its lambda saved as None), ``state_dict`` (the module's
parameters first: ``log_scale``; then ``encoder.``, ``decoder.``, ``projection.``, and the
``online_finetuner.`` its OnlineFineTuner callback attaches), ``hparams_name`` and
``hyper_parameters`` (the script's arguments: ``VAE(**args.__dict__)``).

Such a pickle names Lightning's classes (``GLOBAL pytorch_lightning.callbacks.model_checkpoint
ModelCheckpoint``). To write the same opcodes here, where Lightning 1.x is not installed (the
``pytorch_lightning`` of this environment is 2.x and is never imported), throw-away classes
get the module and name Lightning's had, and their modules are put into ``sys.modules`` only
while ``torch.save`` pickles, then the previous entries are put back.
"""

from __future__ import annotations

import argparse
import sys
import types
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

MODEL_CHECKPOINT = "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"
EARLY_STOPPING = "pytorch_lightning.callbacks.early_stopping.EarlyStopping"
ATTRIBUTE_DICT = "pytorch_lightning.utilities.parsing.AttributeDict"
PAPER_EARLY_STOPPING = "src.callbacks.early_stopping.EarlyStopping"

#: What the released checkpoints are: every Lightning format the paper's code could have written.
FORMATS = ("lightning-1.3", "lightning-1.3-legacy-pickle", "lightning-1.0-attributedict",
           "paper-callbacks", "namespace-hparams", "lightning-2.x")


@contextmanager
def classes_named(*qualified_names: str, base: type = object) -> Iterator[dict[str, type]]:
    """Throw-away classes that pickle as ``GLOBAL <module> <name>`` for each dotted name given.

    Pickle writes a class by reference after checking that importing its module and looking up
    its name gives the same class back, so each class's module, and the packages above it (an
    import of ``a.b.c`` imports ``a``: the real ``pytorch_lightning`` 2.x must not be), are
    registered in ``sys.modules`` for the duration; whatever was there before is restored after.
    """
    classes: dict[str, type] = {}
    modules: dict[str, types.ModuleType] = {}
    for qualified in qualified_names:
        module_name, name = qualified.rsplit(".", 1)
        parts = module_name.split(".")
        for depth in range(1, len(parts) + 1):
            modules.setdefault(".".join(parts[:depth]), types.ModuleType(".".join(parts[:depth])))
        module = modules[module_name]
        cls = type(name, (base,), {"__module__": module_name, "__qualname__": name})
        setattr(module, name, cls)
        classes[qualified] = cls
    previous = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield classes
    finally:
        for name, module in previous.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def paper_state_dict(model_state: Mapping[str, torch.Tensor], num_classes: int = 10) -> OrderedDict:
    """The paper's VAE module's state_dict holding ``model_state``: its own parameter
    (``log_scale``) first, then its submodules, then the probe the OnlineFineTuner attaches."""
    state = OrderedDict([("log_scale", model_state["log_scale"])])
    for prefix in ("encoder.", "decoder.", "projection."):
        state.update((key, value) for key, value in model_state.items() if key.startswith(prefix))
    first = next(key for key in ("projection.first_layer.0.weight", "projection.projection_head.0.weight")
                 if key in model_state)
    feature_dim = model_state[first].shape[1]  # the encoder's output: what the probe reads
    generator = torch.Generator().manual_seed(0)
    state["online_finetuner.weight"] = torch.randn(num_classes, feature_dim, generator=generator)
    state["online_finetuner.bias"] = torch.zeros(num_classes)
    return state


def paper_hyper_parameters(**overrides: Any) -> dict[str, Any]:
    """``args.__dict__`` of ``src/vae.py`` run with the paper's CIFAR-10 command and
    ``--denoising --online_ft`` (what save_hyperparameters() stores)."""
    args = {
        "seed": 0, "local_rank": 0, "ckpt_path": "", "denoising": True, "encoder_name": "resnet50",
        "decoder_name": "decoder50", "h_dim": 2048, "latent_dim": 128, "first_conv3x3": True,
        "remove_first_maxpool": True, "kl_coeff": 0.0, "log_scale": 0.0, "learn_scale": 0,
        "val_samples": 16, "optimizer": "adam", "learning_rate": 2.5e-4, "weight_decay": 0.0,
        "exclude_bn_bias": False, "warmup_epochs": 10, "max_epochs": 3200, "cosine_decay": 0,
        "linear_decay": 0, "gpus": 1, "fp16": False, "online_ft": True, "data_path": ".",
        "dataset": "cifar10", "num_samples": 45000, "batch_size": 256, "num_workers": 8,
        "input_height": 32, "gaussian_blur": False, "jitter_strength": 0.5,
    }
    args.update(overrides)
    return args


def torch18_adam_state(state: Mapping[str, torch.Tensor], steps: int) -> dict[str, Any]:
    """``Adam.state_dict()`` as torch 1.8 wrote it (an int ``step``, its param-group keys)."""
    trainable = [value for key, value in state.items()
                 if key != "log_scale" and value.is_floating_point() and "running_" not in key]
    return {
        "state": {index: {"step": steps, "exp_avg": torch.full_like(value, 1e-3),
                          "exp_avg_sq": torch.full_like(value, 1e-6)}
                  for index, value in enumerate(trainable)},
        "param_groups": [{"lr": 2.5e-4, "betas": (0.9, 0.999), "eps": 1e-08, "weight_decay": 0.0,
                          "amsgrad": False, "initial_lr": 2.5e-4,
                          "params": list(range(len(trainable)))}],
    }


def torch18_lambda_lr_state(steps: int) -> dict[str, Any]:
    """``LambdaLR.state_dict()`` of torch 1.8: its attributes, the lambda (a function) as None."""
    return {"base_lrs": [2.5e-4], "last_epoch": steps, "_step_count": steps + 1, "verbose": False,
            "_get_lr_called_within_step": False, "_last_lr": [2.5e-4], "lr_lambdas": [None]}


def write_paper_checkpoint(path: Path, model_state: Mapping[str, torch.Tensor], fmt: str = "lightning-1.3",
                           *, epoch: int = 199, steps_per_epoch: int = 175, **hyper_parameters: Any) -> Path:
    """Write ``model_state`` (an AAVAENet state_dict) as the paper's code would have, in ``fmt``
    (one of :data:`FORMATS`); returns ``path``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    steps = (epoch + 1) * steps_per_epoch
    common = {
        "epoch": epoch, "global_step": steps,
        "optimizer_states": [torch18_adam_state(model_state, steps)],
        "lr_schedulers": [torch18_lambda_lr_state(steps)],
        "state_dict": paper_state_dict(model_state),
    }
    hparams = paper_hyper_parameters(**hyper_parameters)
    checkpoint_state = {"monitor": None, "best_model_score": None, "best_model_path": "",
                        "current_score": None, "dirpath": "/home/paper/lightning_logs/version_0/checkpoints"}
    if fmt == "lightning-2.x":  # callback states under string keys: nothing but plain data
        content = {**common, "pytorch-lightning_version": "2.0.0", "loops": {"fit_loop": {}},
                   "callbacks": {"ModelCheckpoint{'monitor': None, 'mode': 'min', 'every_n_train_steps': 0, "
                                 "'every_n_epochs': 200, 'train_time_interval': None}": checkpoint_state},
                   "hparams_name": "kwargs", "hyper_parameters": hparams}
        torch.save(content, path)
        return path
    if fmt == "namespace-hparams":  # the script's parsed arguments themselves
        with classes_named(MODEL_CHECKPOINT) as classes:
            content = {**common, "pytorch-lightning_version": "1.3.0",
                       "callbacks": {classes[MODEL_CHECKPOINT]: checkpoint_state},
                       "hyper_parameters": argparse.Namespace(**hparams)}
            torch.save(content, path)
        return path
    names = [MODEL_CHECKPOINT, EARLY_STOPPING, ATTRIBUTE_DICT, PAPER_EARLY_STOPPING]
    with classes_named(*names[:2], *names[3:]) as callbacks, classes_named(ATTRIBUTE_DICT, base=dict) as dicts:
        callback_states: dict[Any, Any] = {callbacks[MODEL_CHECKPOINT]: checkpoint_state}
        content = {**common, "pytorch-lightning_version": "1.3.0rc1", "callbacks": callback_states,
                   "hparams_name": "kwargs", "hyper_parameters": hparams}
        if fmt == "lightning-1.0-attributedict":  # a 1.x that saved model.hparams itself (omegaconf installed)
            content["pytorch-lightning_version"] = "1.0.8"
            content["hyper_parameters"] = dicts[ATTRIBUTE_DICT](hparams)
            checkpoint_state["best_model_score"] = torch.tensor(-5210.25)
            callback_states[callbacks[EARLY_STOPPING]] = {
                "wait_count": 2, "stopped_epoch": 0, "best_score": torch.tensor(-5210.25), "patience": 3}
        if fmt == "paper-callbacks":  # the paper's own EarlyStopping (src/callbacks/early_stopping.py)
            callback_states[callbacks[PAPER_EARLY_STOPPING]] = {
                "wait_count1": 0, "wait_count2": 1, "stopped_epoch": 0, "best_score1": torch.tensor(0.91),
                "best_score2": torch.tensor(-5210.25), "patience": 3}
        torch.save(content, path, _use_new_zipfile_serialization=fmt != "lightning-1.3-legacy-pickle")
    return path
