"""The paired comparison of a sweep: every metric at each run's validation-selected
epoch, mean ± std over the pairing key (seeds), paired differences against the
baseline value of one axis (λ = so_weight 0 by default) with Student's paired t,
and the value the validation split selects.

Nothing here reads a test split: the test metrics are those each run computed
once, at its end, with its validation-selected weights (results.json).
"""

import math
import os
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..report import metric_order, side_by_side
from ..training import checkpoints
from ..training.config import ConfigError
from .plan import format_value, read_plan, read_results, run_folder

COMPARE_JSON, COMPARE_TEXT, COMPARE_FIGURE = "compare.json", "compare.md", "compare.png"
DEFAULT_AXIS = "so_weight"
#: the final proxies' mean |cos| (SO's target) and the epoch selected, beside the
#: accuracies (these two are not fractions: shown as they are)
PROXY_METRIC, EPOCH_METRIC = "proxies/mean_abs_cos", "selected_epoch"


def run_metrics(results: Dict[str, Any]) -> Dict[str, float]:
    """``test/<m>`` (the test split, once, selected weights), ``val/<m>`` (the
    validation split at the selected epoch), the final proxies' mean |cos| and the
    selected epoch."""
    metrics = {f"test/{k}": float(v) for k, v in results["test"].items()}
    best = results.get("best_epoch")
    record = next((h for h in results.get("history", []) if h["epoch"] == best), None)
    for k, v in (record or {}).items():
        if k not in ("epoch", "loss") and not k.startswith("proxy_"):
            metrics[f"val/{k}"] = float(v)
    metrics[PROXY_METRIC] = float(results["proxy_cosines_final"]["mean_abs_cos"])
    if best is not None:
        metrics[EPOCH_METRIC] = float(best)
    return metrics


def split_metric_order(name: str):
    split, _, metric = name.partition("/")
    rank = {"test": 0, "val": 1}.get(split, 2)
    return (rank, *metric_order(metric)) if rank < 2 else (rank, 0, 0, name)


def mean_std(values: Sequence[float]) -> Tuple[float, Optional[float]]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else None)


def paired_t(after: Sequence[float], before: Sequence[float]) -> Dict[str, Any]:
    """Student's paired t-test (scipy.stats.ttest_rel) of ``after - before``."""
    from scipy import stats

    d = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    mean, std = mean_std(d) if len(d) else (math.nan, None)
    out: Dict[str, Any] = {"n": len(d), "mean": mean, "std": std, "t": None, "p": None}
    if len(d) > 1:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")  # zero variance: t is +-inf or nan
            test = stats.ttest_rel(after, before)
        t, p = float(test.statistic), float(test.pvalue)
        out["t"] = None if math.isnan(t) else t
        out["p"] = None if math.isnan(p) else p
    return out


def _same(a: Any, b: Any) -> bool:
    return format_value(a) == format_value(b)


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
    values = plan["spec"]["grid"][axis]
    levels = []  # the axis's values in grid order, as the runs hold them
    for run in plan["runs"]:
        v = run["values"][axis]
        if not any(_same(v, u) for u in levels):
            levels.append(v)
    if baseline is None:
        baseline = next((v for v in levels if _same(v, 0)), levels[0])
    if not any(_same(baseline, v) for v in levels):
        raise ConfigError(
            f"--baseline {baseline!r} is not a value of {axis} in this sweep "
            f"({', '.join(format_value(v) for v in values)})"
        )
    baseline = next(v for v in levels if _same(baseline, v))
    others = [k for k in axes if k not in (axis, pair_by)]
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
    if metric is None:
        metric = sorted(selection_metrics)[0]
    known = sorted({m[5:] for g in groups.values() for cell in g["cells"].values()
                    for r in cell.values() for m in r["metrics"] if m.startswith("test/")})  # fmt: skip
    if metric not in known:
        raise ConfigError(
            f"--metric {metric!r} is not a metric of the runs; they have "
            f"{', '.join(known)}"
        )
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


def compare_group(label, group, levels, baseline, metric) -> Dict[str, Any]:
    cells = group["cells"]
    present = [v for v in levels if format_value(v) in cells]
    names = sorted({m for cell in cells.values() for r in cell.values()
                    for m in r["metrics"]}, key=split_metric_order)  # fmt: skip
    stats: Dict[str, Dict[str, Any]] = {}
    for v in present:
        runs = cells[format_value(v)]
        stats[format_value(v)] = {}
        for m in names:
            xs = {k: r["metrics"][m] for k, r in runs.items() if m in r["metrics"]}
            if xs:
                mean, std = mean_std(list(xs.values()))
                stats[format_value(v)][m] = {"n": len(xs), "mean": mean, "std": std,
                                             "values": xs}  # fmt: skip
    paired: Dict[str, Dict[str, Any]] = {}
    base = cells.get(format_value(baseline), {})
    for v in present:
        if _same(v, baseline):
            continue
        runs = cells[format_value(v)]
        common = [k for k in runs if k in base]
        paired[format_value(v)] = {"pairs": [runs[k]["pair"] for k in common]}
        for m in names:
            keys = [k for k in common if m in runs[k]["metrics"]
                    and m in base[k]["metrics"]]  # fmt: skip
            if keys:
                paired[format_value(v)][m] = paired_t(
                    [runs[k]["metrics"][m] for k in keys],
                    [base[k]["metrics"][m] for k in keys],
                )
    selection = f"val/{metric}"
    scores = {format_value(v): stats[format_value(v)][selection]["mean"]
              for v in present if selection in stats[format_value(v)]}  # fmt: skip
    selected = next((v for v in present if format_value(v) in scores and
                     scores[format_value(v)] == max(scores.values())), None)  # fmt: skip
    return {
        "label": label,
        "values": group["values"],
        "runs": {format_value(v): {k: r["run"] for k, r in cells[format_value(v)].items()}
                 for v in present},  # fmt: skip
        "metrics": names,
        "stats": stats,
        "paired": paired,
        "selected": selected,
        "selection_scores": scores,
    }


##############
### text ###
##############


def _number(metric: str, value: float) -> str:
    if metric in (PROXY_METRIC,):
        return f"{value:.3f}"
    if metric == EPOCH_METRIC:
        return f"{value:.1f}"
    return f"{100 * value:.2f}"


def _cell(metric: str, s: Optional[Dict[str, Any]]) -> str:
    if s is None:
        return "-"
    std = "" if s["std"] is None else f" ± {_number(metric, s['std'])}"
    return f"{_number(metric, s['mean'])}{std}"


def _difference(metric: str, d: Optional[Dict[str, Any]]) -> str:
    if d is None:
        return "-"
    sign = "+" if d["mean"] >= 0 else "-"
    text = f"{sign}{_number(metric, abs(d['mean']))}"
    if d["std"] is not None:
        text += f" ± {_number(metric, d['std'])}"
    t = "n/a" if d["t"] is None else f"{d['t']:.2f}"
    p = "n/a" if d["p"] is None else f"{d['p']:.3f}"
    return f"{text} (n={d['n']}, t={t}, p={p})"


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def format_comparison(comparison: Dict[str, Any]) -> str:
    """Markdown: per group, mean ± std per axis value, paired differences against
    the baseline, and the value validation selects."""
    axis, base = comparison["axis"], format_value(comparison["baseline"])
    pair_by = comparison["pair_by"]
    lines = [
        f"Sweep {comparison['sweep_dir']}: {axis} compared with {axis}={base}, "
        f"mean ± std over {pair_by or 'single runs'}; accuracies in %, test/ = the "
        "test split once per run with its validation-selected weights, val/ = the "
        "validation classes at that epoch."
    ]
    if comparison["missing_runs"]:
        lines.append(
            f"Not finished (left out): {', '.join(comparison['missing_runs'])}."
        )
    for group in comparison["groups"]:
        levels = list(group["stats"])
        lines += ["", f"### {group['label']}", ""]
        pairs = list(dict.fromkeys(k for runs in group["runs"].values() for k in runs))
        if pair_by:
            lines.append(f"{pair_by}: {', '.join(pairs)}; paired differences use "
                         f"runs with the same {pair_by}.")  # fmt: skip
            lines.append("")
        header = ["metric"] + [f"{axis}={v}" for v in levels]
        rows = [[m] + [_cell(m, group["stats"][v].get(m)) for v in levels]
                for m in group["metrics"]]  # fmt: skip
        lines += _table(header, rows)
        if group["paired"]:
            lines += ["", f"Paired differences against {axis}={base} (mean ± std of "
                      "the differences, Student's paired t and two-sided p):", ""]  # fmt: skip
            header = ["metric"] + [
                f"{axis}={v} - {axis}={base}" for v in group["paired"]
            ]
            rows = [[m] + [_difference(m, group["paired"][v].get(m))
                           for v in group["paired"]] for m in group["metrics"]]  # fmt: skip
            lines += _table(header, rows)
        lines.append("")
        selected = group["selected"]
        metric = comparison["selection_metric"]
        if selected is None:
            lines.append(f"No {metric}: the runs have no validation split (val_fraction "
                         "0), so validation selects nothing.")  # fmt: skip
            continue
        scores = ", ".join(f"{axis}={v}: {100 * s:.2f}"
                           for v, s in group["selection_scores"].items())  # fmt: skip
        chosen = format_value(selected)
        lines.append(
            f"Validation selects **{axis}={chosen}** (mean {metric}: {scores})."
        )
        if chosen != base and base in group["stats"]:
            lines += ["", "Test split, means over the runs:", "", "```"]
            tables = {}
            for name, level in ((f"{axis}={base}", base),
                                (f"{axis}={chosen} (sel.)", chosen)):  # fmt: skip
                tables[name] = {m[5:]: s["mean"] for m, s in
                                group["stats"][level].items() if m.startswith("test/")}  # fmt: skip
            lines += [side_by_side(tables), "```"]
    return "\n".join(lines)


###############
### figure ###
###############


def comparison_figure(comparison: Dict[str, Any], path: str) -> str:
    """Per group: the test metric of each run against the axis value (lines join
    runs of the same pair), mean ± std, the validation mean, the selected value."""
    from ..figures import plt  # the Agg backend is chosen there

    groups = comparison["groups"]
    metric, selection = comparison["figure_metric"], comparison["selection_metric"]
    axis = comparison["axis"]
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.6),
                             squeeze=False)  # fmt: skip
    for ax, group in zip(axes[0], groups):
        levels = list(group["stats"])
        x = np.arange(len(levels))
        by_pair: Dict[str, List[Tuple[int, float]]] = {}
        for i, v in enumerate(levels):
            values = group["stats"][v].get(metric, {"values": {}})["values"]
            for pair, value in values.items():
                by_pair.setdefault(pair, []).append((i, value))
        for k, (pair, points) in enumerate(by_pair.items()):
            xs, ys = zip(*points)
            label = f"one {comparison['pair_by']} (paired)" if k == 0 and \
                comparison["pair_by"] else None  # fmt: skip
            ax.plot(xs, [100 * y for y in ys], color="0.7", marker=".", lw=0.8,
                    label=label)  # fmt: skip
        means = [group["stats"][v].get(metric) for v in levels]
        ax.errorbar(x, [100 * m["mean"] if m else np.nan for m in means],
                    yerr=[100 * (m["std"] or 0) if m else 0 for m in means],
                    color="k", marker="o", capsize=3, label=f"{metric} mean ± std")  # fmt: skip
        val = [group["stats"][v].get(selection) for v in levels]
        ax.plot(x, [100 * m["mean"] if m else np.nan for m in val], "--", color="C0",
                marker="s", mfc="none", label=f"{selection} mean")  # fmt: skip
        if group["selected"] is not None:
            i = levels.index(format_value(group["selected"]))
            ax.axvline(i, color="C3", alpha=0.3, lw=6, label="selected on val")
        ax.set_xticks(x, levels)
        ax.set_xlabel(axis)
        ax.set_ylabel("%")
        ax.set_title(group["label"], fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()

    def save(tmp):
        fig.savefig(tmp, dpi=120, format="png")

    checkpoints.atomic_write(path, save)
    plt.close(fig)
    return path


def write_comparison(comparison: Dict[str, Any], folder: str,
                     figure: bool = True) -> List[str]:  # fmt: skip
    """compare.json, compare.md and compare.png in ``folder``."""
    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, COMPARE_JSON), os.path.join(folder, COMPARE_TEXT)]
    checkpoints.atomic_write_json(paths[0], comparison)
    text = format_comparison(comparison) + "\n"

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    checkpoints.atomic_write(paths[1], write)
    if figure:
        paths.append(
            comparison_figure(comparison, os.path.join(folder, COMPARE_FIGURE))
        )
    return paths
