"""A sweep's plan: the expansion of the grid spec into checked run configs, the plan file.

A spec (:mod:`.spec`: a dataset, config layers, fixed overrides and a grid, a list
of values for each of any config keys) is expanded here: every combination becomes
one ordinary run folder, ``SWEEP_DIR/runs/<key=value,key=value>`` (Hydra's multirun
naming), whose config is resolved and checked before anything runs. The plan (spec, runs, configs) is written
to ``SWEEP_DIR/sweep.json`` atomically; ``sweep`` reads it back to resume and
``compare`` to pair the runs.

Runs that share the pairing key's value (``seed`` by default) start from the same
initialisation, sampler order and augmentation draws (every run seeds every RNG from
``seed`` before it builds anything), so they pair across the other axes.
"""

import hashlib
import itertools
import json
import os
import re
import time
import warnings
from typing import Any, Dict, List, Mapping, Optional

from .. import __version__
from ..training import checkpoints
from ..training.config import SCHEMA, ConfigError, default_value, resolve_config

PLAN = "sweep.json"
RUNS = "runs"
FORMAT, FORMAT_VERSION = "pml-soproxy-sweep", 1
#: keys that say where and how a run executes, not what it computes: a later
#: ``sweep`` of the same folder may change them (the runs' folders are kept)
RUNTIME_KEYS = ("output_dir", "data_root", "device", "num_workers",
                "eval_batch_size", "log_every")  # fmt: skip
#: characters kept in a run folder's name; a value with others is named by a hash
SAFE_VALUE = re.compile(r"^[A-Za-z0-9._+-]{1,40}$")


##################
### expansion ###
##################


def format_value(value: Any) -> str:
    """A grid value as it appears in a run folder's name."""
    if isinstance(value, bool) or value is None:
        text = json.dumps(value)
    elif isinstance(value, float):
        text = f"{value:g}"
        text = text if float(text) == value else repr(value)
    elif isinstance(value, (int, str)):
        text = str(value)
    else:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    if SAFE_VALUE.match(text):
        return text
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def run_name(values: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={format_value(v)}" for k, v in values.items())


def expand(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Every combination of the grid as a checked run config: the plan."""
    grid = spec["grid"]
    axes = list(grid)
    pair_by = spec["pair_by"]
    # the pairing axis outermost: an interrupted sweep has whole pairs first
    order = ([pair_by] if pair_by in grid else []) + [k for k in axes if k != pair_by]
    fixed = {k: v for k, (v, _) in spec["overrides"].items()}
    sources = {k: s for k, (_, s) in spec["overrides"].items()}
    runs, names = [], {}
    for combination in itertools.product(*(grid[k][0] for k in order)):
        raw = dict(zip(order, combination))
        values = {k: raw[k] for k in axes}
        source = dict(sources, **{
            k: f"grid value {k}={values[k]!r} ({grid[k][1]})" for k in axes})  # fmt: skip
        resolved = resolve_config(
            spec["dataset"],
            dict(fixed, **values, output_dir=os.devnull),
            spec["config"],
            flag_source=lambda key: source.get(key, f"override '{key}'"),
        )
        for message in resolved.warnings:
            warnings.warn(message)
        config = resolved.config.to_dict()
        checked = {k: config[k] for k in axes}
        name = run_name(checked)
        if name in names:
            raise ConfigError(
                f"the grid gives two runs the same config ({names[name]} and "
                f"{values}): list each value once"
            )
        names[name] = values
        config["output_dir"] = f"{RUNS}/{name}"  # relative to the sweep folder
        runs.append({"name": name, "folder": config["output_dir"], "values": checked,
                     "config": config})  # fmt: skip
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "spec": {
            "dataset": spec["dataset"],
            "config": list(spec["config"]),
            "overrides": fixed,
            "grid": {k: list(v) for k, (v, _) in grid.items()},
            "pair_by": pair_by,
        },
        "axes": axes,
        "runs": runs,
        "pml_soproxy": __version__,
        "created": time.strftime("%Y-%m-%d %H:%M"),
    }


######################
### the plan file ###
######################


def plan_path(sweep_dir: str) -> str:
    return os.path.join(sweep_dir, PLAN)


def spec_from_plan(sweep_dir: str, plan: Dict[str, Any]) -> Dict[str, Any]:
    """The stored spec, to resume a sweep or to change its runtime keys."""
    saved = plan["spec"]
    source = plan_path(sweep_dir)
    return {
        "dataset": saved["dataset"],
        "config": list(saved["config"]),
        "overrides": {
            k: (v, f"{source}, overrides") for k, v in saved["overrides"].items()
        },
        "grid": {k: (v, f"{source}, grid") for k, v in saved["grid"].items()},
        "pair_by": saved["pair_by"],
    }


def read_plan(sweep_dir: str) -> Dict[str, Any]:
    path = plan_path(sweep_dir)
    if not os.path.isfile(path):
        what = "no folder" if not os.path.isdir(sweep_dir) else f"no {PLAN}"
        raise ConfigError(
            f"{sweep_dir}: {what} of a sweep there; start one with `pml-soproxy "
            f"sweep {sweep_dir} --dataset NAME --grid KEY=V1,V2`"
        )
    try:
        with open(path) as f:
            plan = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path} is not a readable sweep plan ({err})") from None
    if not isinstance(plan, dict) or plan.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a pml-soproxy sweep plan (no format marker)")
    if plan.get("version") != FORMAT_VERSION:
        raise ConfigError(
            f"{path} has sweep format version {plan.get('version')}, this "
            f"pml-soproxy reads version {FORMAT_VERSION}"
        )
    return plan


def write_plan(sweep_dir: str, plan: Dict[str, Any]):
    os.makedirs(sweep_dir, exist_ok=True)
    checkpoints.atomic_write_json(plan_path(sweep_dir), plan)


def config_differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> List[str]:
    """Keys (runtime keys aside) whose values differ; a key one side lacks (a
    config of an older pml-soproxy) has its schema default, as config_from_dict
    reads it."""

    def value(config, key):
        if key in config or key not in SCHEMA:
            return config.get(key)
        return default_value(SCHEMA[key])

    keys = [k for k in dict(saved, **now) if k not in RUNTIME_KEYS]
    return [f"{k}: {value(saved, k)!r} then, {value(now, k)!r} now" for k in keys
            if value(saved, k) != value(now, k)]  # fmt: skip


def merge_plans(sweep_dir: str, old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """Check that ``new`` keeps every run of ``old`` unchanged (runtime keys aside);
    it may add runs. Returns the names of the added runs."""
    before = {r["name"]: r for r in old["runs"]}
    after = {r["name"]: r for r in new["runs"]}
    dropped = [n for n in before if n not in after]
    if dropped or old["axes"] != new["axes"]:
        raise ConfigError(
            f"{plan_path(sweep_dir)} holds another sweep (grid axes "
            f"{', '.join(old['axes'])}; runs such as {(dropped or list(before))[0]}): "
            "pass the same grid, or a grid with more values, or another SWEEP_DIR"
        )
    for name, run in after.items():
        if name in before:
            differ = config_differences(before[name]["config"], run["config"])
            if differ:
                raise ConfigError(
                    f"{plan_path(sweep_dir)}: run {name} was planned with another "
                    f"config ({'; '.join(differ)}); pass the sweep's own settings "
                    "(or none: `pml-soproxy sweep SWEEP_DIR` resumes it), or use "
                    "another SWEEP_DIR"
                )
    new["created"] = old.get("created", new["created"])
    return [n for n in after if n not in before]


#################
### run state ###
#################


def run_folder(sweep_dir: str, run: Mapping[str, Any]) -> str:
    return os.path.join(sweep_dir, run["folder"])


def read_results(folder: str) -> Optional[Dict[str, Any]]:
    path = os.path.join(folder, checkpoints.RESULTS)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(
            f"{path} is not readable JSON ({err}); delete it and run the sweep again "
            "to evaluate that run again"
        ) from None


def run_state(sweep_dir: str, run: Mapping[str, Any]) -> str:
    """``finished`` (results.json of this config), ``unfinished`` (a checkpoint to
    resume; train checks that it is this run's) or ``new``."""
    folder = run_folder(sweep_dir, run)
    results = read_results(folder)
    if results is not None:
        differ = config_differences(run["config"], results.get("config", {}))
        if differ:
            raise ConfigError(
                f"{folder} holds a finished run of another config ({'; '.join(differ)})"
                "; move it away, or sweep into another SWEEP_DIR"
            )
        return "finished"
    if os.path.isfile(os.path.join(folder, checkpoints.CHECKPOINT)):
        return "unfinished"
    return "new"
