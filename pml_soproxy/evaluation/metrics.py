"""The metrics' arithmetic: Recall@K names, each query's first same-class rank,
label statistics from one sort, and PML's precision formulas without its
per-class loops."""

import numbers
from typing import Iterable, Tuple, Union

import torch
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils.accuracy_calculator import (
    get_label_match_counts,
    get_lone_query_labels,
)

from .inputs import _CHUNK_ROWS

#: PML metrics included by default next to the recall metrics (kNN-based only;
#: the clustering metrics NMI/AMI run k-means and are opt-in via ``include``).
DEFAULT_EXTRA_METRICS: Tuple[str, ...] = (
    "precision_at_1",
    "mean_average_precision_at_r",
    "r_precision",
)

_RECALL_PREFIX = "recall_at_"
NO_HIT = torch.iinfo(torch.long).max


def _validate_recall_at(recall_at: Union[int, Iterable[int]]) -> Tuple[int, ...]:
    if isinstance(recall_at, numbers.Integral):
        recall_at = (recall_at,)
    values = list(recall_at)
    if len(values) == 0:
        raise ValueError("recall_at must contain at least one K")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"recall_at values must be positive integers, got {v!r}")
    return tuple(sorted({int(v) for v in values}))


def recall_metric_names(recall_at: Union[int, Iterable[int]]) -> Tuple[str, ...]:
    """``(1, 10)`` -> ``("recall_at_1", "recall_at_10")``."""
    return tuple(f"{_RECALL_PREFIX}{k}" for k in _validate_recall_at(recall_at))


def _l2_normalize(x):
    x = c_f.numpy_to_torch(x)
    if not torch.is_floating_point(x):
        x = x.float()
    return torch.nn.functional.normalize(x, p=2, dim=1)


def first_hit_rank(knn_labels, query_labels, label_comparison_fn) -> torch.Tensor:
    """0-based rank of the first same-label neighbour per query (huge if none)."""
    n = knn_labels.shape[0]
    out = torch.full((n,), NO_HIT, dtype=torch.long, device=knn_labels.device)
    for s in range(0, n, _CHUNK_ROWS):
        same = label_comparison_fn(
            query_labels[s : s + _CHUNK_ROWS, None], knn_labels[s : s + _CHUNK_ROWS]
        )
        if same.ndim > 2:
            same = c_f.torch_all_from_dim_to_end(same, 2)
        first = same.to(torch.uint8).argmax(dim=1)  # first maximal index
        first[~same.any(dim=1)] = NO_HIT
        out[s : s + _CHUNK_ROWS] = first
    return out


def same_label(a, b):
    """``torch.eq``, under another identity on purpose.

    For ``label_comparison_fn is torch.eq`` PML 2.9 counts the reference items of each
    query class with one (classes x N) comparison that ``torch.sum`` turns into int64:
    5.2 GB at SOP test scale. For any other function it counts one class at a time in
    O(N) memory. Same counts, same metrics (tested against PML's own calculator).
    """
    return a == b


def _label_statistics(query_labels, reference_labels, ref_includes_query):
    """PML's ``label_counts``, ``lone_query_labels`` and ``not_lone_query_mask``
    for 1-D labels compared by equality, plus each query's number of relevant
    reference items, from one sort: PML finds them with one pass over the
    reference labels per class (about 15 s at SOP test scale, 11,316 classes)."""
    unique, inverse = torch.unique(query_labels, return_inverse=True)
    ordered = torch.sort(reference_labels).values
    counts = torch.searchsorted(ordered, unique, right=True) - torch.searchsorted(
        ordered, unique
    )
    relevant = counts[inverse] - int(ref_includes_query)
    lone = unique[counts - int(ref_includes_query) <= 0]
    return (unique, counts), lone, relevant > 0, relevant


def _precision_per_query(same, relevant, metric):
    """PML's ``r_precision`` / ``mean_average_precision`` (``at_r`` or not), the
    same float64 arithmetic, with the relevance mask built in one comparison: PML
    builds it with one pass over the queries per class (about 60 s for MAP@R at
    SOP test scale)."""
    width = same.shape[1]
    positions = torch.arange(1, width + 1, device=same.device)
    relevance_mask = positions[None, :] <= relevant[:, None]
    if metric == "r_precision":
        matches = torch.sum(same * relevance_mask, dim=1)
        return matches.type(torch.float64) / torch.sum(relevance_mask, dim=1)
    if metric == "mean_average_precision_at_r":
        knn_mask = relevance_mask
    else:
        knn_mask = torch.ones_like(relevance_mask)
    equality = same * knn_mask
    cumulative_correct = torch.cumsum(equality, dim=1)
    precision_at_ks = (cumulative_correct * equality).type(torch.float64) / positions
    summed_precision = torch.sum(precision_at_ks * knn_mask, dim=1)
    return summed_precision / relevant


def label_statistics(
    query_labels, reference_labels, ref_includes_query, label_comparison_fn
):
    """``(label_counts, lone_query_labels, not_lone_query_mask, relevant_counts)``:
    from one sort (:func:`_label_statistics`) for 1-D labels compared by equality,
    else PML's own per-class functions (``relevant_counts`` then ``None``)."""
    if query_labels.ndim == 1 and label_comparison_fn in (same_label, torch.eq):
        return _label_statistics(query_labels, reference_labels, ref_includes_query)
    label_counts = get_label_match_counts(
        query_labels, reference_labels, label_comparison_fn
    )
    lone, not_lone = get_lone_query_labels(
        query_labels, label_counts, ref_includes_query, label_comparison_fn
    )
    return label_counts, lone, not_lone, None
