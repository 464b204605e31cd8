"""The numbers of a sweep's comparison: each run's metrics at its validation-selected
epoch, mean ± std, Student's paired t, and one group's statistics per axis value
(:func:`compare_group`), its paired differences and the value validation selects.
"""

import math
import warnings
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from ..report import metric_order
from .plan import format_value

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


def same_value(a: Any, b: Any) -> bool:
    return format_value(a) == format_value(b)


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
        if same_value(v, baseline):
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
    best = max(scores.values(), default=None)
    selected = next((v for v in present if format_value(v) in scores and
                     scores[format_value(v)] == best), None)  # fmt: skip
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
