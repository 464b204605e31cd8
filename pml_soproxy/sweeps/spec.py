"""A sweep's spec: the dataset, config layers, fixed overrides, grid and pairing key,
from a YAML file and/or flags, each value kept with its source for error messages,
and checked before anything is expanded (:mod:`.plan` expands it into runs).

A spec names a dataset, config layers (presets or YAML files, as ``--config``),
fixed overrides and a grid: a list of values for each of any config keys.
``pair_by`` (``seed`` by default) names the key whose value pairs runs across the
other axes.
"""

import difflib
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from ..training.config import SCHEMA, ConfigError, read_yaml

__all__ = [
    "DEFAULT_PAIR_BY",
    "SPEC_KEYS",
    "build_spec",
    "check_spec",
    "parse_grid_argument",
    "read_spec",
]

SPEC_KEYS = ("dataset", "config", "overrides", "grid", "pair_by")
DEFAULT_PAIR_BY = "seed"


def parse_grid_argument(text: str) -> Tuple[str, List[Any]]:
    """``so_weight=0,0.5,1`` -> ``("so_weight", [0, 0.5, 1])``; each value is read
    as YAML (``null``, ``true``, numbers); ``key=[[1, 2], [1, 4]]`` gives a list of
    lists."""
    key, sep, values = text.partition("=")
    key, values = key.strip(), values.strip()
    if not sep or not key or not values:
        raise ConfigError(
            f"--grid {text!r}: expected KEY=VALUE1,VALUE2,... such as so_weight=0,1"
        )
    try:
        if values.startswith("["):
            parsed = yaml.safe_load(values)
            if not isinstance(parsed, list):
                raise yaml.YAMLError("not a list")
        else:
            parsed = [yaml.safe_load(v.strip()) for v in values.split(",")]
    except yaml.YAMLError:
        raise ConfigError(
            f"--grid {text!r}: the values are not a comma-separated list or a YAML "
            "list such as [[1, 2], [1, 4]]"
        ) from None
    return key, parsed


def read_spec(path: str) -> Dict[str, Tuple[Any, str]]:
    """The spec file's top-level keys as ``{key: (value, "file, line N")}``."""
    values = read_yaml(Path(path))
    for key, (_, source) in values.items():
        if key not in SPEC_KEYS:
            close = difflib.get_close_matches(key, SPEC_KEYS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            where = (" (config keys go under 'overrides:' or 'grid:')"
                     if key in SCHEMA else "")  # fmt: skip
            raise ConfigError(
                f"sweep spec {source}: unknown key '{key}'{hint}{where} Spec keys: "
                f"{', '.join(SPEC_KEYS)}"
            )
    return values


def _config_layers(value: Any, source: str, folder: Path) -> List[str]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(
            f"sweep spec {source}: 'config' must be a preset name, a YAML file or a "
            "list of them"
        )
    # a relative YAML path is relative to the spec file
    return [str(folder / n) if (folder / n).is_file() else n for n in names]


def build_spec(
    spec_file: Optional[str] = None,
    dataset: Optional[str] = None,
    configs: Sequence[str] = (),
    overrides: Optional[Mapping[str, Any]] = None,
    grid: Sequence[str] = (),
    pair_by: Optional[str] = None,
    flag_source=lambda key: f"override '{key}'",
    base: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """The spec of a sweep from ``base`` (a stored spec), a YAML file and flags
    (flags win, ``--config`` layers come after the file's); every value keeps its
    source for error messages."""
    spec: Dict[str, Any] = base or {"dataset": None, "config": [], "overrides": {},
                                    "grid": {}, "pair_by": DEFAULT_PAIR_BY}  # fmt: skip
    if spec_file is not None:
        values = read_spec(spec_file)
        folder = Path(spec_file).resolve().parent
        if "dataset" in values:
            spec["dataset"] = values["dataset"][0]
        if "config" in values:
            spec["config"] = _config_layers(*values["config"], folder)
        for name in ("overrides", "grid"):
            if name not in values:
                continue
            mapping, source = values[name]
            if not isinstance(mapping, dict):
                raise ConfigError(
                    f"sweep spec {source}: '{name}' must be a mapping of config keys "
                    "to values"
                )
            for key, value in mapping.items():
                spec[name][str(key)] = (value, f"{spec_file}, {name} '{key}'")
        if "pair_by" in values:
            spec["pair_by"] = values["pair_by"][0]
    if dataset is not None:
        spec["dataset"] = dataset
    spec["config"] += list(configs)
    for key, value in (overrides or {}).items():
        spec["overrides"][key] = (value, flag_source(key))
    for text in grid:
        key, values = parse_grid_argument(text)
        spec["grid"][key] = (values, f"--grid {text}")
    if pair_by is not None:
        spec["pair_by"] = pair_by
    check_spec(spec)
    return spec


def check_spec(spec: Dict[str, Any]):
    if spec["dataset"] is None:
        raise ConfigError("a sweep needs a dataset: pass --dataset or set 'dataset:' "
                          "in the spec file")  # fmt: skip
    if not spec["grid"]:
        raise ConfigError(
            "a sweep needs a grid: pass --grid KEY=VALUE1,VALUE2 (for example "
            "--grid so_weight=0,1 --grid seed=0,1) or set 'grid:' in the spec file"
        )
    for key, (values, source) in spec["grid"].items():
        if key in ("dataset", "output_dir"):
            raise ConfigError(
                f"'{key}' cannot be a grid axis ({source}): "
                + ("run one sweep per dataset" if key == "dataset" else
                   "the sweep names each run's folder")  # fmt: skip
            )
        if key not in SCHEMA:
            from ..training.config import unknown_key_error

            raise unknown_key_error(key, source)
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"grid key '{key}' ({source}) must list one or more values, such as "
                f"[0, 1]; a fixed value goes under 'overrides:' (or a --{key} flag)"
            )
        if key in spec["overrides"]:
            raise ConfigError(
                f"'{key}' is both a grid axis ({source}) and a fixed override "
                f"({spec['overrides'][key][1]}): keep one"
            )
    for key in ("output_dir", "dataset"):
        if key in spec["overrides"]:
            raise ConfigError(
                f"'{key}' cannot be a sweep override ({spec['overrides'][key][1]}): "
                + ("pass --dataset" if key == "dataset" else "the runs live in "
                   "SWEEP_DIR/runs/")  # fmt: skip
            )
    if not isinstance(spec["pair_by"], str) or spec["pair_by"] not in SCHEMA:
        raise ConfigError(
            f"pair_by {spec['pair_by']!r} is not a config key: name the key whose "
            "value pairs runs across the other axes (usually seed)"
        )
