"""Recall@K evaluation on top of pytorch-metric-learning's ``AccuracyCalculator``.

Recall@K (the deep-metric-learning paper metric) is the fraction of queries with at
least one same-class item among their K nearest reference items (cosine similarity;
the query itself is excluded when the reference set contains the queries).

Conventions, all inherited from PML so that ``recall_at_1 == precision_at_1``:

* lone queries (no same-class item in the reference set) are excluded; if every
  query is lone the result is ``nan`` (a list of ``nan`` with ``return_per_class``);
* ``avg_of_avgs`` / ``return_per_class`` behave as for PML's metrics;
* ties between equidistant neighbours are broken by the kNN backend (faiss: in
  index order, but float32 rounding decides near-ties). Ties only matter when a
  different-class item is exactly as close as the nearest same-class item.

The number of neighbours is never silently smaller than ``max(recall_at)``: it is
raised to ``max(recall_at)`` (and to what MAP@R / R-precision need) and only capped
at the number of available reference items. With fewer reference items than K,
recall@K is computed over all of them, which is the exact value (a query that is
not lone has a same-class item somewhere in the reference set).
"""

import functools
import numbers
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils.accuracy_calculator import (
    AccuracyCalculator,
    maybe_get_avg_of_avgs,
    nan_accuracy,
)

__all__ = [
    "RECALL_AT_K",
    "DEFAULT_EXTRA_METRICS",
    "RecallAtKCalculator",
    "recall_metric_names",
    "check_evaluation_inputs",
    "first_hit_rank",
    "evaluate_query_gallery",
    "format_accuracies",
]

#: Standard Recall@K cut-offs per benchmark.
RECALL_AT_K: Dict[str, Tuple[int, ...]] = {
    "cub200": (1, 2, 4, 8),
    "cars196": (1, 2, 4, 8),
    "sop": (1, 10, 100, 1000),
    "inshop": (1, 10, 20, 30, 40),
}

#: PML metrics included by default next to the recall metrics (kNN-based only;
#: the clustering metrics NMI/AMI run k-means and are opt-in via ``include``).
DEFAULT_EXTRA_METRICS: Tuple[str, ...] = (
    "precision_at_1",
    "mean_average_precision_at_r",
    "r_precision",
)

_RECALL_PREFIX = "recall_at_"
_R_METRICS = ("mean_average_precision_at_r", "r_precision")
_NO_HIT = torch.iinfo(torch.long).max
_CHUNK_ROWS = 16384


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
    out = torch.full((n,), _NO_HIT, dtype=torch.long, device=knn_labels.device)
    for s in range(0, n, _CHUNK_ROWS):
        same = label_comparison_fn(
            query_labels[s : s + _CHUNK_ROWS, None], knn_labels[s : s + _CHUNK_ROWS]
        )
        if same.ndim > 2:
            same = c_f.torch_all_from_dim_to_end(same, 2)
        first = same.to(torch.uint8).argmax(dim=1)  # first maximal index
        first[~same.any(dim=1)] = _NO_HIT
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


def _shape(x) -> Tuple[int, ...]:
    return tuple(int(d) for d in np.shape(x))


def _check_embeddings(name: str, embeddings) -> None:
    shape = _shape(embeddings)
    if len(shape) != 2:
        raise ValueError(
            f"{name} embeddings must be 2-D (num_embeddings, embedding_size), "
            f"got shape {shape}"
        )
    if shape[0] == 0:
        raise ValueError(
            f"the {name} set is empty (shape {shape}); Recall@K needs at least one "
            f"{name} embedding"
        )


def _check_labels(name: str, embeddings, labels, labels_name: str) -> None:
    count = len(embeddings)
    if labels is None:
        raise ValueError(f"{labels_name} is None but {name} has {count} embeddings")
    shape = _shape(labels)
    num_labels = shape[0] if shape else 0
    if num_labels != count:
        raise ValueError(
            f"{name} has {count} embeddings but {labels_name} has {num_labels} "
            f"labels (shape {shape}); pass one label per embedding"
        )


def _count_non_finite_rows(embeddings) -> int:
    """Rows with a NaN or an infinity, counted in chunks (no N x D temporary)."""
    if isinstance(embeddings, torch.Tensor):
        if not torch.is_floating_point(embeddings):
            return 0
        bad = torch.zeros((), dtype=torch.long, device=embeddings.device)
        for chunk in embeddings.split(_CHUNK_ROWS):
            bad += (~torch.isfinite(chunk).all(dim=1)).sum()
        return int(bad)  # one device-to-host copy
    x = np.asarray(embeddings)
    if not np.issubdtype(x.dtype, np.inexact):
        return 0
    return sum(
        int((~np.isfinite(x[s : s + _CHUNK_ROWS]).all(axis=1)).sum())
        for s in range(0, len(x), _CHUNK_ROWS)
    )


def check_evaluation_inputs(
    query, query_labels, reference=None, reference_labels=None
) -> None:
    """``ValueError`` (shapes or counts in one sentence) for inputs that PML or
    faiss would reject with a misleading error, or silently mis-rank (NaN).

    ``reference=None`` means self-retrieval: the query set is the reference set.
    Accepts torch tensors and numpy arrays, like PML.
    """
    sets = [("query", query, query_labels, "query_labels")]
    if reference is query and reference_labels is query_labels:
        reference = reference_labels = None  # PML's self-retrieval: check it once
    if reference is not None:
        sets.append(("reference", reference, reference_labels, "reference_labels"))
    for name, embeddings, _, _ in sets:
        _check_embeddings(name, embeddings)
    if reference is not None and _shape(query)[1] != _shape(reference)[1]:
        raise ValueError(
            f"query embeddings have {_shape(query)[1]} dimensions but reference "
            f"embeddings have {_shape(reference)[1]} (query shape {_shape(query)}, "
            f"reference shape {_shape(reference)})"
        )
    for name, embeddings, labels, labels_name in sets:
        _check_labels(name, embeddings, labels, labels_name)
    for name, embeddings, _, _ in sets:
        bad = _count_non_finite_rows(embeddings)
        if bad:
            raise ValueError(
                f"{bad} of {len(embeddings)} {name} embedding rows contain NaN or "
                "infinite values, which the kNN search cannot rank"
            )


class RecallAtKCalculator(AccuracyCalculator):
    """PML ``AccuracyCalculator`` with ``recall_at_<K>`` metrics.

    Args:
        recall_at: the K values (positive ints; sorted and de-duplicated).
        k: PML's ``k`` ("max_bin_count", None = all, or an int). An int smaller
            than the largest included K raises ``ValueError``. The kNN search uses
            ``max(k, max K)`` neighbours; PML's metrics still see exactly the
            columns they would see with a plain ``AccuracyCalculator(k=k)``.
        normalize_embeddings: L2-normalise query and reference first, so PML's
            default ``FaissKNN`` (IndexFlatL2) ranks by cosine similarity.
        include: metric names; ``None`` (default) means all ``recall_at_*`` plus
            ``DEFAULT_EXTRA_METRICS``; ``()`` means every metric, as in PML
            (including the clustering metrics NMI/AMI).
        exclude, **accuracy_calculator_kwargs: passed to ``AccuracyCalculator``
            (``avg_of_avgs``, ``return_per_class``, ``knn_func``, ``device``, ...).
    """

    def __init__(
        self,
        recall_at: Union[int, Iterable[int]] = RECALL_AT_K["cub200"],
        k: Union[int, str, None] = "max_bin_count",
        normalize_embeddings: bool = True,
        include: Optional[Sequence[str]] = None,
        exclude: Sequence[str] = (),
        **accuracy_calculator_kwargs,
    ):
        self.recall_at = _validate_recall_at(recall_at)
        self.recall_names = recall_metric_names(self.recall_at)
        self._k_of_name = dict(zip(self.recall_names, self.recall_at))
        self.normalize_embeddings = bool(normalize_embeddings)
        self._pml_k = None
        # PML discovers metrics through dir(self) in __init__: add bound methods.
        for name, kk in self._k_of_name.items():
            setattr(self, f"calculate_{name}", functools.partial(self._recall_at, kk))
        if include is None:
            include = self.recall_names + DEFAULT_EXTRA_METRICS
        if isinstance(accuracy_calculator_kwargs.get("device"), str):  # "cpu", "cuda"
            accuracy_calculator_kwargs["device"] = torch.device(
                accuracy_calculator_kwargs["device"]
            )
        super().__init__(
            include=tuple(include), exclude=exclude, k=k, **accuracy_calculator_kwargs
        )
        if accuracy_calculator_kwargs.get("label_comparison_fn") is None:
            self.label_comparison_fn = same_label
        self._check_k_covers_recall()

    @classmethod
    def for_dataset(cls, dataset: str, **kwargs) -> "RecallAtKCalculator":
        """Calculator with the standard K set of ``dataset`` (see ``RECALL_AT_K``)."""
        key = str(dataset).lower()
        if key not in RECALL_AT_K:
            raise ValueError(
                f"Unknown dataset {dataset!r}; known datasets: {sorted(RECALL_AT_K)}"
            )
        return cls(recall_at=RECALL_AT_K[key], **kwargs)

    def requires_knn(self):
        # mean_reciprocal_rank is missing from PML 2.9's list.
        return (
            super().requires_knn() + ["mean_reciprocal_rank"] + list(self.recall_names)
        )

    def _max_recall_k(self) -> int:
        ks = [
            self._k_of_name[m] for m in self.get_curr_metrics() if m in self._k_of_name
        ]
        return max(ks, default=0)

    def _check_k_covers_recall(self):
        needed = self._max_recall_k()
        if isinstance(self.k, int) and self.k < needed:
            raise ValueError(
                f"k={self.k} is smaller than the largest Recall@K ({needed}); "
                "use k='max_bin_count' (default), k=None or k >= max(recall_at)"
            )

    def determine_k(self, bin_counts, num_reference_embeddings, ref_includes_query):
        """Neighbours to search: max(PML's k, max K), capped at the reference size."""
        self._check_k_covers_recall()
        available = num_reference_embeddings - int(ref_includes_query)
        pml_k = super().determine_k(
            bin_counts, num_reference_embeddings, ref_includes_query
        )
        self._pml_k = max(1, min(pml_k, available))
        return max(1, min(max(pml_k, self._max_recall_k()), available))

    def get_accuracy(
        self,
        query,
        query_labels,
        reference=None,
        reference_labels=None,
        ref_includes_query=False,
        include=(),
        exclude=(),
    ):
        """PML's ``get_accuracy``, with optional L2 normalisation first.

        Raises ``ValueError`` before any work for inputs PML or faiss would reject
        with a misleading message: non-2-D or empty embeddings, query and reference
        of different dimensions, a label count that is not the embedding count, and
        NaN or infinite embedding values.
        """
        check_evaluation_inputs(query, query_labels, reference, reference_labels)
        if self.normalize_embeddings:
            query = _l2_normalize(query)
            if reference is not None:
                reference = _l2_normalize(reference)
        return super().get_accuracy(
            query,
            query_labels,
            reference,
            reference_labels,
            ref_includes_query,
            include,
            exclude,
        )

    def _get_accuracy(self, function_dict, **kwargs):
        if any(name in self._k_of_name for name in function_dict):
            kwargs["first_hit_rank"] = first_hit_rank(
                kwargs["knn_labels"], kwargs["query_labels"], self.label_comparison_fn
            )
        return super()._get_accuracy(function_dict, **kwargs)

    def _recall_at(
        self,
        recall_k,
        first_hit_rank,
        query_labels,
        not_lone_query_mask,
        label_counts,
        **kwargs,
    ):
        if not torch.any(not_lone_query_mask):
            return nan_accuracy(label_counts[0], self.return_per_class)
        hits = (first_hit_rank[not_lone_query_mask] < recall_k).to(torch.float64)
        return maybe_get_avg_of_avgs(
            hits,
            query_labels[not_lone_query_mask][:, None],
            self.avg_of_avgs,
            self.return_per_class,
        )

    # PML's own kNN metrics get exactly the columns a plain calculator would give
    # them; MAP@R / R-precision only look at the first R = max_bin_count columns.
    def _pml_columns(self, knn_labels, label_counts, ref_includes_query, at_r):
        width = self._pml_k if self._pml_k is not None else knn_labels.shape[1]
        if at_r:
            r = int(torch.max(label_counts[1]).item()) - int(ref_includes_query)
            width = min(width, max(r, 1))
        return knn_labels[:, :width]

    def calculate_mean_average_precision_at_r(self, knn_labels, **kwargs):
        knn_labels = self._pml_columns(
            knn_labels, kwargs["label_counts"], kwargs["ref_includes_query"], True
        )
        return super().calculate_mean_average_precision_at_r(knn_labels, **kwargs)

    def calculate_r_precision(self, knn_labels, **kwargs):
        knn_labels = self._pml_columns(
            knn_labels, kwargs["label_counts"], kwargs["ref_includes_query"], True
        )
        return super().calculate_r_precision(knn_labels, **kwargs)

    def calculate_mean_average_precision(self, knn_labels, **kwargs):
        knn_labels = self._pml_columns(
            knn_labels, kwargs["label_counts"], kwargs["ref_includes_query"], False
        )
        return super().calculate_mean_average_precision(knn_labels, **kwargs)

    def calculate_mean_reciprocal_rank(self, knn_labels, **kwargs):
        knn_labels = self._pml_columns(
            knn_labels, kwargs["label_counts"], kwargs["ref_includes_query"], False
        )
        return super().calculate_mean_reciprocal_rank(knn_labels, **kwargs)


def evaluate_query_gallery(
    calculator: AccuracyCalculator,
    query,
    query_labels,
    gallery,
    gallery_labels,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> dict:
    """Query-vs-gallery evaluation (In-Shop): the gallery is the reference set and
    no item is excluded (a gallery copy of a query counts as a neighbour)."""
    return calculator.get_accuracy(
        query,
        query_labels,
        gallery,
        gallery_labels,
        ref_includes_query=False,
        include=include,
        exclude=exclude,
    )


def _sort_key(item):
    i, name = item
    if name.startswith(_RECALL_PREFIX) and name[len(_RECALL_PREFIX) :].isdigit():
        return (0, int(name[len(_RECALL_PREFIX) :]), i)
    return (1, 0, i)


def format_accuracies(
    accuracies: Mapping[str, Union[float, Sequence[float]]], digits: int = 2
) -> str:
    """Two-column text table, values in percent; recall_at_* first, sorted by K.

    Per-class lists (``return_per_class``) are shown as their mean over classes
    with a finite value.
    """
    names = [n for _, n in sorted(enumerate(accuracies), key=_sort_key)]
    rows = []
    for name in names:
        value = accuracies[name]
        if isinstance(value, (list, tuple)):
            finite = [float(v) for v in value if v == v]
            mean = sum(finite) / len(finite) if finite else float("nan")
            text = f"{100 * mean:.{digits}f} (mean of {len(finite)} classes)"
        else:
            text = f"{100 * float(value):.{digits}f}"
        rows.append((name, text))
    width = max([len("metric")] + [len(n) for n, _ in rows])
    lines = [f"{'metric':<{width}}  value (%)", f"{'-' * width}  ---------"]
    lines += [f"{n:<{width}}  {t}" for n, t in rows]
    return "\n".join(lines)
