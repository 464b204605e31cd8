"""Statistics and text tables of a run (no training imports)."""

from typing import Any, Dict

import numpy as np
import torch

#: bins of the proxy-cosine histograms (100 on [-1, 1])
COSINE_BINS = np.linspace(-1, 1, 101)


def proxy_cosine_stats(proxies: torch.Tensor, chunk: int = 2048) -> Dict[str, Any]:
    """Mean and max |cos| between distinct proxies and a histogram of their cosines
    (``COSINE_BINS``), computed in row chunks so SOP's 11k proxies fit."""
    unit = torch.nn.functional.normalize(proxies.detach().float().cpu(), dim=1)
    counts = np.zeros(len(COSINE_BINS) - 1, dtype=np.int64)
    total, largest = 0.0, 0.0
    for start in range(0, len(unit), chunk):
        cos = unit[start : start + chunk] @ unit.t()
        rows = torch.arange(len(cos))
        cos[rows, rows + start] = float("nan")  # drop self-similarity
        values = cos[~torch.isnan(cos)]
        counts += np.histogram(values.numpy(), bins=COSINE_BINS)[0]
        total += values.abs().sum().item()
        largest = max(largest, values.abs().max().item() if len(values) else 0.0)
    pairs = len(unit) * (len(unit) - 1)
    return {
        "mean_abs_cos": total / max(pairs, 1),
        "max_abs_cos": largest,
        "histogram": counts.tolist(),
    }


def describe_pretrained(pretrained) -> str:
    if not pretrained:
        return "unknown starting weights"
    if pretrained["kind"] == "random init":
        return "random init"
    return f"{pretrained['kind']} {pretrained['path']}"


def results_header(results: Dict[str, Any]) -> str:
    return (
        f"{results['dataset']} test split, weights of {results['selected']}, "
        f"trunk {results['model_name']} "
        f"({describe_pretrained(results.get('pretrained_weights'))})"
    )


def results_summary(results: Dict[str, Any]) -> str:
    """The header and the test metrics of a run's results, as the CLI prints them."""
    from .evaluation import format_accuracies

    return f"{results_header(results)}\n{format_accuracies(results['test'])}"


def metric_order(name: str):
    if name.startswith("recall_at_"):
        return (0, int(name.rsplit("_", 1)[1]), name)
    return (1, 0, name)


def side_by_side(tables: Dict[str, Dict[str, float]]) -> str:
    """One column per run, one row per metric (in percent), recall_at_* first."""
    names = list(tables)
    first = tables[names[0]]
    metrics = sorted((m for m in first if isinstance(first[m], float)),
                     key=metric_order)  # fmt: skip
    width = max(len(m) for m in metrics)
    lines = [f"{'metric':<{width}}  " + "  ".join(f"{n:>14}" for n in names)]
    for m in metrics:
        lines.append(
            f"{m:<{width}}  "
            + "  ".join(f"{100 * tables[n][m]:>13.2f}%" for n in names)
        )
    return "\n".join(lines)
