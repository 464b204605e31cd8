"""The layering: schema defaults, the dataset's YAML, extra YAML files or presets,
then flags; each value checked, then the checks that involve more than one key."""

import difflib
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .files import packaged_configs, read_layer, read_yaml
from .schema import (
    DATASET_NAMES,
    DEPRECATED_KEYS,
    LOSS_OPTIONS,
    SCHEMA,
    ConfigError,
    TrainConfig,
    default_value,
)
from .values import DEFAULT, check_value, unknown_key_error


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
    from ...datasets import protocol_of

    record = f"the {dataset} protocol record (pml_soproxy/datasets)"
    layers: List[Dict[str, Tuple[Any, str]]] = [
        {"samples_per_class": (protocol_of(dataset).samples_per_class, record)}
    ]
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
    from ...datasets import protocol_of

    return tuple(config.recall_at or protocol_of(config.dataset).recall_at)


def _metric_names(config: TrainConfig) -> List[str]:
    from ...evaluation import DEFAULT_EXTRA_METRICS, recall_metric_names

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
