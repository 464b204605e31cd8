"""A sweep's comparison written out: the Markdown table (``compare.md``), the figure
(``compare.png``) and the JSON (``compare.json``), from the dict that
:func:`.compare.compare_sweep` returns.
"""

import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..report import side_by_side
from ..training import checkpoints
from .paired_stats import EPOCH_METRIC, PROXY_METRIC
from .plan import format_value

COMPARE_JSON, COMPARE_TEXT, COMPARE_FIGURE = "compare.json", "compare.md", "compare.png"


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
