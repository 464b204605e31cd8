"""The paired comparison of a sweep: every metric at each run's validation-selected
epoch, mean ± std over the pairing key (seeds), paired differences against the
baseline value of one axis (λ = so_weight 0 by default) with Student's paired t,
and the value the validation split selects.

Nothing here reads a test split: the test metrics are those each run computed
once, at its end, with its validation-selected weights (results.json).

This module gathers the finished runs of a sweep into groups (:func:`compare_sweep`);
:mod:`.paired_stats` holds the statistics and :mod:`.compare_output` the table,
figure and files.
"""

from typing import Any, Dict, List, Optional, Tuple

from ..training.config import ConfigError
from .compare_output import (  # noqa: F401 (the comparison's output, in one place)
    COMPARE_FIGURE,
    COMPARE_JSON,
    COMPARE_TEXT,
    format_comparison,
    write_comparison,
)
from .paired_stats import compare_group, paired_t, run_metrics, same_value  # noqa: F401
from .plan import format_value, read_plan, read_results, run_folder

DEFAULT_AXIS = "so_weight"


def compare_sweep(
    sweep_dir: str,
    axis: str = DEFAULT_AXIS,
    baseline: Any = None,
    pair_by: Optional[str] = None,
    metric: Optional[str] = None,
) -> Dict[str, Any]:
    """The comparison as a JSON-ready dict (see the module docstring)."""
    plan = read_plan(sweep_dir)
    axes = plan["axes"]
    if axis not in axes:
        raise ConfigError(
            f"--axis {axis!r} is not an axis of the sweep in {sweep_dir} (axes: "
            f"{', '.join(axes)}); pass one of them"
        )
    pair_by = pair_by or plan["spec"]["pair_by"]
    if pair_by not in axes:
        pair_by = None  # one run per cell: nothing to pair or average over
    levels, baseline = axis_levels(plan, axis, baseline)
    others = [k for k in axes if k not in (axis, pair_by)]
    groups, missing, selection_metrics = finished_groups(
        sweep_dir, plan, axis, pair_by, others
    )
    if metric is None:
        metric = sorted(selection_metrics)[0]
    check_metric(metric, groups)
    out = {
        "sweep_dir": sweep_dir,
        "axis": axis,
        "baseline": baseline,
        "levels": levels,
        "pair_by": pair_by,
        "selection_metric": f"val/{metric}",
        "figure_metric": f"test/{metric}",
        "missing_runs": missing,
        "groups": [],
    }
    for label, group in groups.items():
        out["groups"].append(compare_group(label, group, levels, baseline, metric))
    return out


def axis_levels(plan: Dict[str, Any], axis: str, baseline: Any) -> Tuple[list, Any]:
    """The axis's values in grid order, as the runs hold them, and the baseline
    among them (default: 0 if the axis has it, else its first value)."""
    levels: list = []
    for run in plan["runs"]:
        v = run["values"][axis]
        if not any(same_value(v, u) for u in levels):
            levels.append(v)
    if baseline is None:
        baseline = next((v for v in levels if same_value(v, 0)), levels[0])
    if not any(same_value(baseline, v) for v in levels):
        values = plan["spec"]["grid"][axis]
        raise ConfigError(
            f"--baseline {baseline!r} is not a value of {axis} in this sweep "
            f"({', '.join(format_value(v) for v in values)})"
        )
    return levels, next(v for v in levels if same_value(baseline, v))


def finished_groups(
    sweep_dir: str,
    plan: Dict[str, Any],
    axis: str,
    pair_by: Optional[str],
    others: List[str],
) -> Tuple[Dict[str, Dict[str, Any]], List[str], set]:
    """The finished runs, grouped by the values of the ``others`` axes, each
    group's cells keyed by axis value, then pair; the runs not finished; the
    runs' selection metrics."""
    groups: Dict[str, Dict[str, Any]] = {}
    missing, selection_metrics = [], set()
    for run in plan["runs"]:
        results = read_results(run_folder(sweep_dir, run))
        if results is None:
            missing.append(run["name"])
            continue
        selection_metrics.add(results["config"]["selection_metric"])
        label = ",".join(f"{k}={format_value(run['values'][k])}" for k in others)
        group = groups.setdefault(label or "all runs", {
            "values": {k: run["values"][k] for k in others}, "cells": {}})  # fmt: skip
        level = format_value(run["values"][axis])
        pair = run["values"][pair_by] if pair_by else None
        group["cells"].setdefault(level, {})[format_value(pair)] = {
            "pair": pair, "run": run["name"], "metrics": run_metrics(results)}  # fmt: skip
    if not groups:
        raise ConfigError(
            f"no run of the sweep in {sweep_dir} has finished yet (no results.json); "
            f"run `pml-soproxy sweep {sweep_dir}` first"
        )
    return groups, missing, selection_metrics


def check_metric(metric: str, groups: Dict[str, Dict[str, Any]]) -> None:
    known = sorted({m[5:] for g in groups.values() for cell in g["cells"].values()
                    for r in cell.values() for m in r["metrics"] if m.startswith("test/")})  # fmt: skip
    if metric not in known:
        raise ConfigError(
            f"--metric {metric!r} is not a metric of the runs; they have "
            f"{', '.join(known)}"
        )
