"""The one config schema of the native recipe.

``TrainConfig`` is the single source of every key, its default, its type, what it
accepts and its help text. The YAML files under ``pml_soproxy/configs`` only override
keys for one dataset or preset; the command-line flags are generated from the schema
(:func:`add_config_arguments`). Every value is checked before any work starts, and an
error names the key, the value, what is allowed and where the value came from (the
default, a flag, or a YAML file and line).
"""

import difflib
import math
import os
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from ..datasets.base import DEFAULT_MAX_IMAGE_PIXELS
from ..datasets.cache import CACHE_MODES

DATASET_NAMES = ("cub200", "cars196", "sop", "inshop", "folder", "digits")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: the PML losses with class weights that ``loss`` names, and for each the config
#: keys of its hyper-parameters -> the PML constructor argument they set
LOSS_OPTIONS = {
    "proxy_anchor": {"margin": "margin", "alpha": "alpha"},
    "proxy_nca": {"proxy_nca_softmax_scale": "softmax_scale"},
    "normalized_softmax": {"normalized_softmax_temperature": "temperature"},
    "soft_triple": {
        "soft_triple_centers_per_class": "centers_per_class",
        "soft_triple_la": "la",
        "soft_triple_gamma": "gamma",
        "soft_triple_margin": "margin",
    },
    "arcface": {"arcface_margin": "margin", "arcface_scale": "scale"},
    "cosface": {"cosface_margin": "margin", "cosface_scale": "scale"},
}
LOSS_NAMES = tuple(LOSS_OPTIONS)
#: a value that is "auto" (resolved where it is used) or an integer
AutoInt = typing.Union[int, str]
#: keys accepted for backward compatibility: old name -> (new name, advice)
DEPRECATED_KEYS = {
    "checkpoint_path": (
        "pretrained_weights",
        "'checkpoint_path' (--checkpoint-path) is deprecated: it names the trunk's "
        "pretrained weights, now 'pretrained_weights' (--pretrained-weights)",
    )
}


class ConfigError(ValueError):
    """A config value, file or combination of values that cannot be used."""


def option(default, help, check=None, allowed="", flag=True, metavar=None):
    """A schema field: default, help text, a check ``value -> bool`` with the
    sentence that says what is allowed, and whether a command-line flag exists."""
    kwargs = {"default_factory": default} if callable(default) else {"default": default}
    metadata = dict(help=help, check=check, allowed=allowed, flag=flag, metavar=metavar)
    return field(metadata=metadata, **kwargs)


def _int_at_least(low):
    return lambda v: v >= low


def _finite_at_least(low, strict=False):
    return lambda v: math.isfinite(v) and (v > low if strict else v >= low)


def _device_ok(value: str) -> bool:
    import torch

    try:
        torch.device(value if value != "auto" else "cpu")
    except (RuntimeError, ValueError):
        return False
    return True


@dataclass
class TrainConfig:
    dataset: str = option(
        "digits",
        "dataset name",
        lambda v: v in DATASET_NAMES,
        f"one of {', '.join(DATASET_NAMES)}",
        flag=False,
    )
    data_root: Optional[str] = option(
        None, "dataset folder (or its parent); not needed for digits"
    )
    output_dir: Optional[str] = option(
        None, "run folder: checkpoint, weights, logs, results.json (runs/<dataset>)"
    )
    model_name: str = option(
        "deit_small_distilled_patch16_224", "timm model name of the trunk"
    )
    pretrained_weights: Optional[str] = option(
        None,
        "the trunk's starting weights, a local .pth/.safetensors file (default: the "
        "model's ImageNet weights from timm's cache or hub)",
        metavar="FILE",
    )
    random_init: bool = option(
        False, "start the trunk from random weights instead of pretrained ones"
    )
    trunk_kwargs: Dict[str, Any] = option(
        dict, "timm.create_model overrides, a YAML mapping", metavar="YAML"
    )
    augment: Dict[str, Any] = option(
        dict, "timm create_transform overrides for training, a YAML mapping",
        metavar="YAML",
    )  # fmt: skip
    embedding_size: int = option(
        0,
        "size of a linear embedder on the trunk; 0 = the trunk feature is the "
        "embedding",
        _int_at_least(0),
        "an integer >= 0",
    )
    loss: str = option(
        "proxy_anchor",
        "the PML loss whose class weights (proxies) SO regularises",
        lambda v: v in LOSS_NAMES,
        f"one of {', '.join(LOSS_NAMES)}",
    )
    so_weight: float = option(
        1.0,
        "weight of the soft-orthogonality term on the loss's class weights (0 = "
        "the plain PML loss)",
        _finite_at_least(0),
        "a finite number >= 0",
    )
    margin: float = option(
        0.1, "Proxy Anchor margin", _finite_at_least(0), "a finite number >= 0"
    )
    alpha: float = option(
        32.0, "Proxy Anchor scale", _finite_at_least(0, True), "a finite number > 0"
    )
    # the other losses' hyper-parameters; defaults are PML's (LOSS_OPTIONS maps them)
    proxy_nca_softmax_scale: float = option(
        1.0, "ProxyNCA softmax scale", _finite_at_least(0, True),
        "a finite number > 0",
    )  # fmt: skip
    normalized_softmax_temperature: float = option(
        0.05, "NormalizedSoftmax temperature", _finite_at_least(0, True),
        "a finite number > 0",
    )  # fmt: skip
    soft_triple_centers_per_class: int = option(
        10, "SoftTriple centers per class", _int_at_least(1), "an integer >= 1"
    )
    soft_triple_la: float = option(
        20.0, "SoftTriple scale lambda", _finite_at_least(0, True),
        "a finite number > 0",
    )  # fmt: skip
    soft_triple_gamma: float = option(
        0.1, "SoftTriple softmax temperature gamma over a class's centers",
        _finite_at_least(0, True), "a finite number > 0",
    )  # fmt: skip
    soft_triple_margin: float = option(
        0.01, "SoftTriple margin", _finite_at_least(0), "a finite number >= 0"
    )
    arcface_margin: float = option(
        28.6, "ArcFace additive angular margin, in degrees", _finite_at_least(0),
        "a finite number >= 0",
    )  # fmt: skip
    arcface_scale: float = option(
        64.0, "ArcFace scale", _finite_at_least(0, True), "a finite number > 0"
    )
    cosface_margin: float = option(
        0.35, "CosFace additive cosine margin", _finite_at_least(0),
        "a finite number >= 0",
    )  # fmt: skip
    cosface_scale: float = option(
        64.0, "CosFace scale", _finite_at_least(0, True), "a finite number > 0"
    )
    epochs: int = option(40, "training epochs", _int_at_least(1), "an integer >= 1")
    batch_size: int = option(
        120, "global batch size", _int_at_least(1), "an integer >= 1"
    )
    samples_per_class: int = option(
        4, "images per class in a batch (M)", _int_at_least(1), "an integer >= 1"
    )
    iterations_per_epoch: Optional[int] = option(
        None,
        "iterations per epoch (default: training images // batch size)",
        _int_at_least(1),
        "an integer >= 1, or null for one pass",
    )
    lr: float = option(
        1e-4, "base learning rate", _finite_at_least(0, True), "a finite number > 0"
    )
    proxy_lr_multiplier: float = option(
        100.0,
        "proxies' learning rate / base learning rate",
        _finite_at_least(0, True),
        "a finite number > 0",
    )
    weight_decay: float = option(
        1e-4, "AdamW weight decay", _finite_at_least(0), "a finite number >= 0"
    )
    warmup_epochs: int = option(
        1,
        "epochs that train only the new layers (embedder, proxies)",
        _int_at_least(0),
        "an integer >= 0",
    )
    grad_clip: float = option(
        10.0,
        "gradient-norm clipping of trunk + embedder (0 = off)",
        _finite_at_least(0),
        "a finite number >= 0",
    )
    val_fraction: float = option(
        0.2,
        "share of training classes held out for model selection (0 = last epoch)",
        lambda v: 0 <= v < 1,
        "a number in [0, 1)",
    )
    selection_metric: str = option(
        "precision_at_1", "validation metric that selects the epoch (= Recall@1)"
    )
    patience: Optional[int] = option(
        None,
        "stop after this many epochs without a better validation metric",
        _int_at_least(0),
        "an integer >= 0, or null",
    )
    recall_at: Optional[List[int]] = option(
        None,
        "Recall@K cut-offs (default: the dataset's standard K set)",
        lambda v: len(v) > 0 and all(k >= 1 for k in v),
        "a non-empty list of integers >= 1, or null",
    )
    eval_batch_size: int = option(
        128, "batch size of evaluation", _int_at_least(1), "an integer >= 1"
    )
    num_workers: AutoInt = option(
        "auto",
        "data loader worker processes; auto = this process's CPUs less one, "
        "capped (training/loading.py; --print-config shows it); the augmentations "
        "do not depend on it",
        lambda v: v == "auto" or v >= 0,
        "auto or an integer >= 0",
        metavar="N|auto",
    )
    cache_images: str = option(
        "none",
        "keep the training images decoded and shrunk to cache_image_size in "
        "memory or in a memory-mapped file (cache_dir); the random augmentation "
        "still runs at every draw",
        lambda v: v in CACHE_MODES,
        f"one of {', '.join(CACHE_MODES)}",
    )
    cache_image_size: int = option(
        256,
        "shorter side in pixels of cached training images (larger ones are "
        "shrunk to it, smaller ones kept as they are)",
        _int_at_least(1),
        "an integer >= 1",
    )
    cache_dir: Optional[str] = option(
        None,
        "folder of the mmap image cache (default <output_dir>/image_cache); runs "
        "over the same images may share one",
        metavar="DIR",
    )
    device: str = option("auto", "auto, cpu, cuda, cuda:1 ...", _device_ok,
                         "auto, cpu, cuda or cuda:N")  # fmt: skip
    precision: str = option(
        "auto",
        "trunk precision",
        lambda v: v in PRECISIONS,
        f"one of {', '.join(PRECISIONS)}",
    )
    seed: int = option(
        0, "random seed", lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)"
    )
    max_image_pixels: Optional[int] = option(
        DEFAULT_MAX_IMAGE_PIXELS,
        "refuse images with more pixels than this (decompression-bomb guard)",
        _int_at_least(1),
        "an integer >= 1, or null for no limit",
    )
    skip_bad_images: bool = option(
        False,
        "replace unreadable training images by another image of their class and "
        "list them in the run folder, instead of stopping",
    )
    log_every: int = option(
        10,
        "read the loss from the device every N iterations (progress bar, NaN check)",
        _int_at_least(1),
        "an integer >= 1",
    )
    figures: bool = option(
        True,
        "after the test, write figures/ in the run folder: a retrieval grid of test "
        "queries and an embedding map of the test set",
    )

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


SCHEMA = {f.name: f for f in fields(TrainConfig)}


def default_value(f) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


###########################
### sources and values ###
###########################


DEFAULT = "the default"  # the source of a value no layer set


def _type_error(key, value, source, allowed):
    return ConfigError(
        f"config key '{key}' = {value!r} (from {source}) is not allowed: "
        f"expected {allowed}"
    )


def _base_type(annotation) -> Tuple[Any, bool]:
    """``Optional[X]`` -> ``(X, True)``."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Union and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return annotation, False


def _coerce(key: str, value: Any, source: str) -> Any:
    """Check ``value``'s type against the schema; returns the typed value."""
    f = SCHEMA[key]
    kind, optional = _base_type(f.type)
    allowed = f.metadata["allowed"]
    if value is None:
        if optional:
            return None
        raise _type_error(key, value, source, allowed or kind.__name__)
    if kind == AutoInt:  # "auto", an integer, or a flag's digits
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        if isinstance(value, str) and value.isdigit():
            return int(value)
        raise _type_error(key, value, source, allowed or "auto or an integer")
    origin = typing.get_origin(kind) or kind
    if origin is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, value, source, "true or false")
    if origin is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(key, value, source, allowed or "an integer")
    if origin is float:
        # PyYAML reads 1e-4 (no dot) as a string: accept numeric strings
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _type_error(key, value, source, allowed or "a number")
    if origin is str:
        if isinstance(value, str) and value:
            return value
        raise _type_error(key, value, source, allowed or "a non-empty string")
    if origin is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
        raise _type_error(key, value, source, "a mapping of names to values")
    if origin is list:
        if isinstance(value, (list, tuple)) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            return list(value)
        raise _type_error(key, value, source, allowed or "a list of integers")
    raise TypeError(f"schema type {f.type} of {key} is not handled")  # a bug


def check_value(key: str, value: Any, source: str) -> Any:
    value = _coerce(key, value, source)
    check = SCHEMA[key].metadata["check"]
    if value is not None and check is not None and not check(value):
        raise _type_error(key, value, source, SCHEMA[key].metadata["allowed"])
    return value


def unknown_key_error(key: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(SCHEMA) + list(DEPRECATED_KEYS), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(
        f"unknown config key '{key}' (from {source}){hint} Known keys: "
        f"{', '.join(SCHEMA)}"
    )


####################
### YAML reading ###
####################


def read_yaml(path: Path, label: Optional[str] = None) -> Dict[str, Tuple[Any, str]]:
    """A YAML mapping of config keys as ``{key: (value, "file, line N")}``.

    Syntax errors, duplicate keys and non-mapping documents name the file and line.
    """
    label = label or str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {label}: {err}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        hint = " (YAML does not allow tabs: indent with spaces)" if "\\t" in problem \
            or "\t" in problem else ""  # fmt: skip
        raise ConfigError(
            f"config file {label}{where}: invalid YAML: {problem}{hint}"
        ) from None
    if values is None:
        return {}
    if not isinstance(node, yaml.MappingNode) or not isinstance(values, dict):
        raise ConfigError(
            f"config file {label} must hold a mapping of config keys to values "
            f"(key: value lines), got a {type(values).__name__}"
        )
    out, lines = {}, {}
    for key_node, _ in node.value:
        key, line = key_node.value, key_node.start_mark.line + 1
        if key in lines:
            raise ConfigError(
                f"config file {label}: key '{key}' appears twice (lines {lines[key]} "
                f"and {line})"
            )
        lines[key] = line
    for key, value in values.items():
        out[str(key)] = (value, f"{label}, line {lines.get(str(key), '?')}")
    return out


def packaged_configs():
    return resources.files("pml_soproxy") / "configs"


def preset_names() -> List[str]:
    return sorted(p.name[:-5] for p in (packaged_configs() / "presets").iterdir()
                  if p.name.endswith(".yaml"))  # fmt: skip


def read_layer(name: str) -> Dict[str, Tuple[Any, str]]:
    """A preset name (``tiny-cpu``) or a YAML file path."""
    preset = packaged_configs() / "presets" / f"{name}.yaml"
    if preset.is_file():
        return read_yaml(preset, f"preset {name} ({preset})")
    if Path(name).is_file():
        return read_yaml(Path(name))
    raise ConfigError(
        f"--config {name!r} is neither a YAML file nor a preset "
        f"(presets: {', '.join(preset_names())})"
    )


######################
### the layering ###
######################


@dataclass
class ResolvedConfig:
    config: TrainConfig
    sources: Dict[str, str]
    warnings: List[str]


def resolve_config(
    dataset: str,
    overrides: Optional[Mapping[str, Any]] = None,
    extra_configs: Sequence[str] = (),
    flag_source: Callable[[str], str] = lambda key: f"override '{key}'",
) -> ResolvedConfig:
    """Schema defaults, then ``configs/<dataset>.yaml``, then each of
    ``extra_configs`` (a YAML file or a packaged preset name), then ``overrides``
    (None values are ignored). Every value is checked; see :class:`ConfigError`."""
    if dataset not in DATASET_NAMES:
        close = difflib.get_close_matches(str(dataset), DATASET_NAMES, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"unknown dataset {dataset!r}{hint} Datasets: {', '.join(DATASET_NAMES)}"
        )
    layers: List[Dict[str, Tuple[Any, str]]] = []
    dataset_file = packaged_configs() / f"{dataset}.yaml"
    if dataset_file.is_file():
        layers.append(read_yaml(dataset_file, f"{dataset}.yaml ({dataset_file})"))
    layers += [read_layer(name) for name in extra_configs]
    layers.append(
        {k: (v, flag_source(k)) for k, v in (overrides or {}).items() if v is not None}
    )
    values: Dict[str, Any] = {k: default_value(f) for k, f in SCHEMA.items()}
    sources: Dict[str, str] = {k: DEFAULT for k in SCHEMA}
    warnings: List[str] = []
    for layer in layers:
        for key, (value, source) in layer.items():
            if key in DEPRECATED_KEYS:
                key, advice = DEPRECATED_KEYS[key]
                warnings.append(f"{advice} (from {source})")
            if key == "dataset":
                raise ConfigError(
                    f"'dataset' cannot be set in a config file ({source}): pass "
                    "--dataset"
                )
            if key not in SCHEMA:
                raise unknown_key_error(key, source)
            values[key], sources[key] = check_value(key, value, source), source
    values["dataset"] = dataset
    if values["output_dir"] is None:
        values["output_dir"] = os.path.join("runs", dataset)
    config = TrainConfig(**values)
    check_combinations(config, sources)
    return ResolvedConfig(config, sources, warnings)


def load_config(
    dataset: str,
    overrides: Optional[Mapping[str, Any]] = None,
    extra_configs: Sequence[str] = (),
) -> TrainConfig:
    """:func:`resolve_config` without the sources (Python use)."""
    resolved = resolve_config(dataset, overrides, extra_configs)
    return resolved.config


def config_from_dict(values: Mapping[str, Any], source: str) -> TrainConfig:
    """A config saved in a run (JSON), checked like any other, except that its
    starting weights need not exist any more (the run's own weights replace them)."""
    src = source
    checked = {}
    for key, value in values.items():
        if key in DEPRECATED_KEYS:
            key = DEPRECATED_KEYS[key][0]
        if key not in SCHEMA:
            raise unknown_key_error(key, src)
        checked[key] = check_value(key, value, src) if key != "dataset" else value
    config = TrainConfig(**checked)
    check_combinations(config, {k: src for k in SCHEMA}, check_files=False)
    return config


def recall_at(config: TrainConfig) -> Tuple[int, ...]:
    """The Recall@K cut-offs: ``recall_at``, else the dataset's standard K set."""
    from ..evaluation import RECALL_AT_K

    return tuple(config.recall_at or RECALL_AT_K.get(config.dataset, (1, 2, 4, 8)))


def _metric_names(config: TrainConfig) -> List[str]:
    from ..evaluation import DEFAULT_EXTRA_METRICS, recall_metric_names

    return list(recall_metric_names(recall_at(config))) + list(DEFAULT_EXTRA_METRICS)


def check_combinations(
    config: TrainConfig, sources: Mapping[str, str], check_files: bool = True
):
    """Checks that involve more than one key."""

    def where(*keys):
        return ", ".join(f"'{k}' from {sources[k]}" for k in keys)

    for name, options in LOSS_OPTIONS.items():  # another loss's hyper-parameter
        for key in options if name != config.loss else ():
            if getattr(config, key) != default_value(SCHEMA[key]):
                raise ConfigError(
                    f"config key '{key}' = {getattr(config, key)!r} (from "
                    f"{sources[key]}) is a hyper-parameter of loss {name}, but loss "
                    f"is {config.loss!r} (from {sources['loss']}); set loss to {name} "
                    f"or leave '{key}' out"
                )
    if config.batch_size % config.samples_per_class:
        raise ConfigError(
            f"batch_size ({config.batch_size}) must be a multiple of "
            f"samples_per_class ({config.samples_per_class}) ({where('batch_size', 'samples_per_class')})"
        )
    metrics = _metric_names(config)
    if config.selection_metric not in metrics:
        close = difflib.get_close_matches(config.selection_metric, metrics, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"config key 'selection_metric' = {config.selection_metric!r} (from "
            f"{sources['selection_metric']}) is not a computed metric{hint} "
            f"Computed: {', '.join(metrics)}"
        )
    if config.pretrained_weights is not None and config.random_init:
        raise ConfigError(
            f"pretrained_weights and random_init exclude each other "
            f"({where('pretrained_weights', 'random_init')}): pass one of them"
        )
    if (
        check_files
        and config.pretrained_weights is not None
        and not os.path.isfile(os.path.expanduser(config.pretrained_weights))
    ):
        raise ConfigError(
            f"config key 'pretrained_weights': no file at {config.pretrained_weights} "
            f"(from {sources['pretrained_weights']}); pass the path of a .pth or "
            ".safetensors file of the trunk's starting weights"
        )


######################
### command line ###
######################


def _yaml_mapping(text: str):
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        import argparse

        raise argparse.ArgumentTypeError(
            f"expected a YAML mapping such as '{{depth: 2}}', got {text!r}"
        )
    return value


def add_config_arguments(parser):
    """One flag per schema key (``--so-weight``, ``--random-init``, ...), all with
    default None so that only the flags given override the YAML layers."""
    import argparse

    for key, f in SCHEMA.items():
        if not f.metadata["flag"]:
            continue
        kind, _ = _base_type(f.type)
        origin = typing.get_origin(kind) or kind
        kwargs: Dict[str, Any] = dict(help=f.metadata["help"], default=None)
        if f.metadata["metavar"]:
            kwargs["metavar"] = f.metadata["metavar"]
        if origin is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is dict:
            kwargs["type"] = _yaml_mapping
        elif origin is list:
            kwargs.update(type=int, nargs="+")
        elif origin in (int, float):
            kwargs["type"] = origin
        if key in ("precision",):
            kwargs["choices"] = PRECISIONS
        parser.add_argument(flag_name(key), dest=key, **kwargs)
    parser.add_argument(
        "--checkpoint-path",
        dest="checkpoint_path",
        metavar="FILE",
        help="deprecated alias of --pretrained-weights",
    )


def overrides_from(args) -> Dict[str, Any]:
    """The schema keys given as flags (``None`` = not given)."""
    keys = [k for k, f in SCHEMA.items() if f.metadata["flag"]] + list(DEPRECATED_KEYS)
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def flag_source(key: str) -> str:
    return f"flag {flag_name(key)}"
