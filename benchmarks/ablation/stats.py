"""Paired statistics and summaries of the ablation's runs (pure functions of the
JSON records; no torch).

A run record holds ``seed``, ``so_weight``, ``best_epoch`` (best validation R@1),
``val_selected`` / ``val_final`` and ``test_selected`` / ``test_final`` metric dicts,
``proxy_selected`` / ``proxy_final`` cosine statistics and a per-epoch ``history``.
Runs with the same seed are paired (same initialisation, batches and views), so SO
is compared with Proxy Anchor (so_weight 0) seed by seed. The so_weight is selected
on the validation species only; the test species are only reported.
"""

import math
from typing import Dict, Iterable, List, Optional

import numpy as np

RECALL_AT = (1, 2, 4, 8)
METRICS = [f"recall_at_{k}" for k in RECALL_AT] + [
    "mean_average_precision_at_r",
    "r_precision",
]
PROXY_STATS = ("mean_abs_cos", "max_abs_cos", "mean_cos")
#: what selects the so_weight: the mean over seeds of this validation metric at
#: each run's validation-selected epoch (ties go to the smaller so_weight)
SELECTION_METRIC = "recall_at_1"


def run_record(seed, so_weight, seconds, best, history, test_selected, test_final,
               final_proxy) -> Dict:  # fmt: skip
    """The JSON record of one run (``best``: its validation-selected ``epoch`` and
    ``proxy`` statistics; ``final_proxy``: the last epoch's, with the histogram)."""
    return {
        "seed": seed,
        "so_weight": so_weight,
        "seconds": seconds,
        "best_epoch": best["epoch"],
        "test_selected": test_selected,
        "test_final": test_final,
        "val_selected": history[best["epoch"] - 1]["val"],
        "val_final": history[-1]["val"],
        "proxy_selected": best["proxy"],
        "proxy_final": {k: v for k, v in final_proxy.items() if k != "histogram"},
        "proxy_final_histogram": final_proxy["histogram"],
        "history": history,
    }


def t_quantile(p: float, df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(p, df))


def paired(diffs: Iterable[float]) -> Dict[str, float]:
    """Mean, sample sd, t, two-sided p and the 95% t-interval half-width of paired
    differences (NaN where there is one pair or no spread)."""
    from scipy import stats

    d = np.asarray(list(diffs), dtype=float)
    n = len(d)
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else float("nan")
    usable = n > 1 and sd > 1e-12 * max(1.0, abs(mean))
    t = mean / (sd / math.sqrt(n)) if usable else float("nan")
    p = float(2 * stats.t.sf(abs(t), n - 1)) if usable else float("nan")
    half = t_quantile(0.975, n - 1) * sd / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": mean, "sd": sd, "t": t, "p_two_sided": p, "n": n,
            "ci95_half_width": half}  # fmt: skip


def mean_std(values: Iterable[float]) -> Dict[str, float]:
    v = np.asarray(list(values), dtype=float)
    return {"mean": float(v.mean()),
            "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}  # fmt: skip


def epochs_to(history: List[Dict], threshold: float) -> Optional[int]:
    """The first epoch whose validation R@1 reaches ``threshold`` (None: never)."""
    for record in history:
        if record["val"]["recall_at_1"] >= threshold:
            return record["epoch"]
    return None


def _proxy_values(run: Dict, when: str, stat: str) -> Optional[float]:
    """A proxy statistic at ``selected`` / ``final`` / ``first`` (epoch 1) /
    ``training`` (mean over epochs); None where the record predates it."""
    if when in ("selected", "final"):
        return run[f"proxy_{when}"].get(stat)
    history = [r.get(f"proxy_{stat}") for r in run["history"]]
    if any(v is None for v in history):
        return None
    return history[0] if when == "first" else float(np.mean(history))


def _per_weight(rows: List[Dict], thresholds: List[float]) -> Dict:
    entry = {"n": len(rows), "seeds": [r["seed"] for r in rows]}
    for when in ("selected", "final"):
        for m in METRICS:
            entry[f"{when}_{m}"] = mean_std(r[f"test_{when}"][m] for r in rows)
            entry[f"val_{when}_{m}"] = mean_std(r[f"val_{when}"][m] for r in rows)
    for when in ("selected", "final", "first", "training"):
        for stat in PROXY_STATS:
            values = [_proxy_values(r, when, stat) for r in rows]
            if all(v is not None for v in values):
                entry[f"{when}_proxy_{stat}"] = mean_std(values)
    entry["epochs_to"] = {f"{t:.4f}": [epochs_to(r["history"], t) for r in rows]
                          for t in thresholds}  # fmt: skip
    entry["epochs_to_threshold"] = entry["epochs_to"][f"{thresholds[0]:.4f}"]
    entry["best_epoch"] = [r["best_epoch"] for r in rows]
    return entry


def _paired_vs_pa(pairs, thresholds: List[float], epochs: int) -> Dict:
    diff = {}
    for when in ("selected", "final"):
        for m in METRICS:
            diff[f"{when}_{m}"] = paired(a[f"test_{when}"][m] - b[f"test_{when}"][m]
                                         for a, b in pairs)  # fmt: skip
        diff[f"val_{when}_recall_at_1"] = paired(
            a[f"val_{when}"]["recall_at_1"] - b[f"val_{when}"]["recall_at_1"]
            for a, b in pairs
        )
        for stat in PROXY_STATS:
            values = [(_proxy_values(a, when, stat), _proxy_values(b, when, stat))
                      for a, b in pairs]  # fmt: skip
            if all(x is not None and y is not None for x, y in values):
                diff[f"{when}_proxy_{stat}"] = paired(x - y for x, y in values)
    censor = epochs + 1  # "never reached" counts as one epoch past the budget
    diff["epochs_to"] = {
        f"{t:.4f}": paired((epochs_to(a["history"], t) or censor)
                           - (epochs_to(b["history"], t) or censor)
                           for a, b in pairs)  # fmt: skip
        for t in thresholds
    }
    diff["epochs_to_threshold"] = diff["epochs_to"][f"{thresholds[0]:.4f}"]
    return diff


def select_so_weight(by_so_weight: Dict[str, Dict]) -> Dict:
    """The so_weight with the best mean validation R@1 (at each run's
    validation-selected epoch); ties go to the smaller weight. Test scores are
    never read."""
    key = f"val_selected_{SELECTION_METRIC}"
    scores = {float(w): e[key]["mean"] for w, e in by_so_weight.items()}
    best = max(scores.values())
    chosen = min(w for w, s in scores.items() if s == best)
    return {"so_weight": chosen, "metric": key, "val_mean_by_so_weight": scores}


def summarize_regime(block: Dict, thresholds: List[float]) -> Dict:
    """Per so_weight: test and validation metrics (mean ± std over seeds), proxy
    statistics, epochs to each validation threshold, paired differences vs so_weight
    0; and the so_weight validation selects."""
    runs, epochs = block["runs"], block["config"]["epochs"]
    by = {(r["seed"], r["so_weight"]): r for r in runs}
    summary = {"reach_threshold_val_r1": thresholds[0],
               "reach_thresholds_val_r1": list(thresholds), "by_so_weight": {}}  # fmt: skip
    for w in sorted({r["so_weight"] for r in runs}):
        rows = [r for r in runs if r["so_weight"] == w]
        entry = _per_weight(rows, thresholds)
        pairs = [(r, by[(r["seed"], 0.0)]) for r in rows if (r["seed"], 0.0) in by]
        if w != 0 and pairs:
            entry["paired_vs_pa"] = _paired_vs_pa(pairs, thresholds, epochs)
        summary["by_so_weight"][str(w)] = entry
    summary["validation_selected"] = select_so_weight(summary["by_so_weight"])
    return summary


DEFAULT_REACH = "baseline,0.97"


def summarize(results: Dict, reach: Optional[str] = None) -> Dict:
    """``results["summary"]`` for every regime; thresholds of ``reach`` are
    validation R@1 values, ``baseline`` = the raw-feature kNN's. ``reach=None``
    keeps the thresholds of the summary already stored in ``results`` (so that a
    re-summary reproduces the published tables), else :data:`DEFAULT_REACH`."""
    stored = next(iter((results.get("summary") or {}).values()), {})
    thresholds = stored.get("reach_thresholds_val_r1") if reach is None else None
    if thresholds is None:
        base_val = results["baseline_raw_features"]["val"]["recall_at_1"]
        thresholds = [base_val if x == "baseline" else float(x)
                      for x in (reach or DEFAULT_REACH).split(",")]  # fmt: skip
    results["summary"] = {regime: summarize_regime(block, thresholds)
                          for regime, block in results["regimes"].items()}  # fmt: skip
    return results["summary"]
