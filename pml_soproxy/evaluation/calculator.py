"""``RecallAtKCalculator``: PML's ``AccuracyCalculator`` with ``recall_at_<K>``
metrics, a chunked two-pass exact kNN search and each dataset's standard K set
(read from the datasets' protocol records)."""

import functools
from typing import Dict, Iterable, Optional, Sequence, Tuple, Union

import torch
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils.accuracy_calculator import (
    AccuracyCalculator,
    maybe_get_avg_of_avgs,
    nan_accuracy,
)

from ..datasets.registry import PROTOCOLS, protocol_of
from .inputs import check_evaluation_inputs
from .knn import DEFAULT_CHUNK_SIZE, _check_search_settings, _faiss, two_pass_search
from .metrics import (
    DEFAULT_EXTRA_METRICS,
    _l2_normalize,
    _validate_recall_at,
    first_hit_rank,
    label_statistics,
    recall_metric_names,
    same_label,
)
from .pml_metrics import FastPMLMetrics

#: Standard Recall@K cut-offs per dataset, read from each dataset class's
#: ``protocol`` record (:mod:`pml_soproxy.datasets.protocol`).
RECALL_AT_K: Dict[str, Tuple[int, ...]] = {
    name: protocol.recall_at for name, protocol in PROTOCOLS.items()
}


def _no_pml_knn(*args, **kwargs):
    raise NotImplementedError("RecallAtKCalculator searches with its knn_backend")


def _k_set(recall_at, dataset: Optional[str]):
    """``recall_at``, else the K set of ``dataset``'s protocol (default CUB200's)."""
    if recall_at is None:
        return protocol_of(dataset if dataset is not None else "cub200").recall_at
    if dataset is not None:
        raise ValueError(
            f"give recall_at ({recall_at!r}) or dataset ({dataset!r}), not both"
        )
    return recall_at


class RecallAtKCalculator(FastPMLMetrics, AccuracyCalculator):
    """PML ``AccuracyCalculator`` with ``recall_at_<K>`` metrics.

    Args:
        recall_at: the K values (positive ints; sorted and de-duplicated);
            ``None`` (default): the standard K set of ``dataset``.
        k: PML's ``k`` ("max_bin_count", None = all, or an int). An int smaller
            than the largest included K raises ``ValueError``. The kNN search uses
            ``max(k, max K)`` neighbours; PML's metrics still see exactly the
            columns they would see with a plain ``AccuracyCalculator(k=k)``.
        normalize_embeddings: L2-normalise query and reference first, so PML's
            default ``FaissKNN`` (IndexFlatL2) ranks by cosine similarity.
        include: metric names; ``None`` (default) means all ``recall_at_*`` plus
            ``DEFAULT_EXTRA_METRICS``; ``()`` means every metric, as in PML
            (including the clustering metrics NMI/AMI).
        chunk_size: query rows per kNN search chunk (see :mod:`pml_soproxy.evaluation`); ``None`` searches
            all queries at once through PML's ``knn_func`` (PML's own path).
        knn_backend: ``"auto"`` (see :func:`knn_backend`), ``"faiss"``,
            ``"faiss-gpu"`` or ``"torch"``.
        dataset: a dataset name (``"sop"``...) whose protocol record gives the
            K set when ``recall_at`` is ``None`` (default: CUB200's);
            what the powerful-benchmarker configs pass.
        exclude, **accuracy_calculator_kwargs: passed to ``AccuracyCalculator``
            (``avg_of_avgs``, ``return_per_class``, ``knn_func``, ``device``, ...).
            A ``knn_func`` of your own is called once on all queries, as in PML.

    Memory: O(chunk_size x k + N x W); see :mod:`pml_soproxy.evaluation`.
    """

    def __init__(
        self,
        recall_at: Union[int, Iterable[int], None] = None,
        k: Union[int, str, None] = "max_bin_count",
        normalize_embeddings: bool = True,
        include: Optional[Sequence[str]] = None,
        exclude: Sequence[str] = (),
        chunk_size: Optional[int] = DEFAULT_CHUNK_SIZE,
        knn_backend: str = "auto",
        dataset: Optional[str] = None,
        **accuracy_calculator_kwargs,
    ):
        _check_search_settings(chunk_size, knn_backend)
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.knn_backend = knn_backend
        # a knn_func of the caller's is called as PML calls it (all queries at once)
        self._own_knn_func = accuracy_calculator_kwargs.get("knn_func") is not None
        self.recall_at = _validate_recall_at(_k_set(recall_at, dataset))
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
        if not self._own_knn_func and _faiss() is None:
            # PML's default knn_func is a FaissKNN, which needs faiss to exist; ours
            # searches by itself (knn_backend), so PML's is never called
            accuracy_calculator_kwargs["knn_func"] = _no_pml_knn
        super().__init__(
            include=tuple(include), exclude=exclude, k=k, **accuracy_calculator_kwargs
        )
        if accuracy_calculator_kwargs.get("label_comparison_fn") is None:
            self.label_comparison_fn = same_label
        self._check_k_covers_recall()

    @classmethod
    def for_dataset(cls, dataset: str, **kwargs) -> "RecallAtKCalculator":
        """Calculator with the standard K set of ``dataset`` (its protocol record,
        see ``RECALL_AT_K``); ``ValueError`` naming the known datasets otherwise."""
        return cls(dataset=dataset, **kwargs)

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
        arguments = (query, query_labels, reference, reference_labels)
        if self.chunk_size is None or self._own_knn_func:
            return super().get_accuracy(
                *arguments, ref_includes_query, include, exclude
            )
        return self._chunked_accuracy(*arguments, ref_includes_query, include, exclude)

    def _chunked_accuracy(
        self,
        query,
        query_labels,
        reference,
        reference_labels,
        ref_includes_query,
        include,
        exclude,
    ):
        # PML's get_accuracy with its one kNN search replaced by the chunked search
        # (and its per-class loops by _label_statistics where labels allow)
        def to_device(x):
            return c_f.numpy_to_torch(x).to(self.device).type(torch.float)

        query, query_labels = to_device(query), to_device(query_labels)
        if reference is None:
            reference, reference_labels, ref_includes_query = query, query_labels, True
        else:
            reference, reference_labels = to_device(reference), to_device(
                reference_labels
            )
            if ref_includes_query and not (
                torch.allclose(query, reference[: len(query)])
                and torch.allclose(query_labels, reference_labels[: len(query)])
            ):
                raise ValueError(
                    "ref_includes_query=True needs the first len(query) reference "
                    "embeddings and labels to be the query embeddings and labels"
                )
        self.curr_function_dict = self.get_function_dict(include, exclude)
        kwargs = {
            "query": query,
            "reference": reference,
            "query_labels": query_labels,
            "reference_labels": reference_labels,
            "ref_includes_query": ref_includes_query,
            "label_comparison_fn": self.label_comparison_fn,
        }
        metrics = self.get_curr_metrics()
        if any(x in self.requires_knn() for x in metrics):
            kwargs.update(self._neighbours(**kwargs))
        if any(x in self.requires_clustering() for x in metrics):
            kwargs["cluster_labels"] = self.get_cluster_labels(**kwargs)
        return self._get_accuracy(self.curr_function_dict, **kwargs)

    def _neighbours(
        self, query, reference, query_labels, reference_labels, ref_includes_query,
        **kwargs,
    ):  # fmt: skip
        """The kNN inputs of the metrics (label counts, lone queries, neighbour
        labels and distances, first-hit ranks) from the two-pass search."""
        label_counts, lone, not_lone, relevant = label_statistics(
            query_labels, reference_labels, ref_includes_query, self.label_comparison_fn
        )
        num_k = self.determine_k(label_counts[1], len(reference), ref_includes_query)
        width = self._kept_columns(num_k, label_counts, ref_includes_query)
        first, knn_labels, knn_distances = two_pass_search(
            query,
            reference,
            query_labels,
            reference_labels,
            not_lone,
            num_k,
            width,
            ref_includes_query,
            self.label_comparison_fn,
            self.chunk_size,
            self.knn_backend,
        )
        if not torch.any(not_lone):
            c_f.LOGGER.warning("None of the query labels are in the reference set.")
        return dict(
            label_counts=label_counts,
            knn_labels=knn_labels,
            knn_distances=knn_distances,
            lone_query_labels=lone,
            not_lone_query_mask=not_lone,
            first_hit_rank=first,
            relevant_counts=relevant,
        )

    def _get_accuracy(self, function_dict, **kwargs):
        if "first_hit_rank" not in kwargs and any(
            name in self._k_of_name for name in function_dict
        ):
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
