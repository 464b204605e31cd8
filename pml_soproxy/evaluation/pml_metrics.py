"""PML's own kNN metrics, computed the way a plain ``AccuracyCalculator`` would
see them but faster: a mixin of :class:`~.calculator.RecallAtKCalculator`."""

import torch
from pytorch_metric_learning.utils.accuracy_calculator import (
    maybe_get_avg_of_avgs,
    mean_reciprocal_rank,
    nan_accuracy,
    precision_at_k,
)

from .metrics import _precision_per_query


class FastPMLMetrics:
    """PML's precision@1, MAP@R, R-precision, MAP and MRR over the neighbour
    columns PML would give them, without PML's per-class and per-query Python
    loops; for a subclass of ``AccuracyCalculator`` that sets ``_pml_k`` (PML's
    own ``k`` after :meth:`determine_k`) and ``recall_names``."""

    def _kept_columns(self, num_k, label_counts, ref_includes_query):
        """Neighbour columns the included PML metrics read (the rest of the
        ``num_k`` searched are only needed for the first-hit rank)."""
        pml_k = self._pml_k if self._pml_k is not None else num_k
        r = max(int(torch.max(label_counts[1]).item()) - int(ref_includes_query), 1)
        needs = {
            "precision_at_1": 1,
            "mean_average_precision_at_r": min(pml_k, r),
            "r_precision": min(pml_k, r),
            "mean_average_precision": pml_k,
            "mean_reciprocal_rank": pml_k,
        }
        needs.update({name: 0 for name in self.recall_names})
        knn_metrics = [m for m in self.get_curr_metrics() if m in self.requires_knn()]
        # a metric of a subclass gets every searched column
        return min(num_k, max([needs.get(m, num_k) for m in knn_metrics] + [1]))

    # PML's own kNN metrics get exactly the columns a plain calculator would give
    # them; MAP@R / R-precision only look at the first R = max_bin_count columns.
    def _pml_columns(self, knn_labels, label_counts, ref_includes_query, at_r):
        width = self._pml_k if self._pml_k is not None else knn_labels.shape[1]
        if at_r:
            r = int(torch.max(label_counts[1]).item()) - int(ref_includes_query)
            width = min(width, max(r, 1))
        return knn_labels[:, :width]

    # precision_at_1 and mean_reciprocal_rank: PML's, without the Python any() over
    # the query mask in try_getting_not_lone_labels (it unbinds N 0-d tensors)
    def calculate_precision_at_1(
        self, knn_labels, query_labels, not_lone_query_mask, label_counts, **kwargs
    ):
        return self._over_not_lone(
            precision_at_k,
            knn_labels,
            query_labels,
            not_lone_query_mask,
            label_counts,
            1,
        )

    def _over_not_lone(self, pml_function, knn_labels, query_labels, mask, counts, *k):
        """PML's ``pml_function`` over the queries that are not lone (PML's nan
        when all are)."""
        if not torch.any(mask):
            return nan_accuracy(counts[0], self.return_per_class)
        return pml_function(
            knn_labels[mask],
            query_labels[mask][:, None],
            *k,
            self.avg_of_avgs,
            self.return_per_class,
            self.label_comparison_fn,
        )

    def _precision_metric(self, metric, knn_labels, **kwargs):
        # with the per-query relevant counts of _label_statistics: PML's formula
        # without its per-class loop (_precision_per_query); else PML's own
        relevant = kwargs.get("relevant_counts")
        if relevant is None:
            return getattr(super(), f"calculate_{metric}")(knn_labels, **kwargs)
        mask, query_labels = kwargs["not_lone_query_mask"], kwargs["query_labels"]
        if not torch.any(mask):
            return nan_accuracy(kwargs["label_counts"][0], self.return_per_class)
        query_labels = query_labels[mask][:, None]
        same = self.label_comparison_fn(query_labels, knn_labels[mask])
        return maybe_get_avg_of_avgs(
            _precision_per_query(same, relevant[mask], metric),
            query_labels,
            self.avg_of_avgs,
            self.return_per_class,
        )

    def calculate_mean_average_precision_at_r(self, knn_labels, **kwargs):
        knn_labels = self._pml_columns(
            knn_labels, kwargs["label_counts"], kwargs["ref_includes_query"], True
        )
        return self._precision_metric(
            "mean_average_precision_at_r", knn_labels, **kwargs
        )

    def calculate_r_precision(self, knn_labels, **kwargs):
        knn_labels = self._pml_columns(
            knn_labels, kwargs["label_counts"], kwargs["ref_includes_query"], True
        )
        return self._precision_metric("r_precision", knn_labels, **kwargs)

    def calculate_mean_average_precision(self, knn_labels, **kwargs):
        knn_labels = self._pml_columns(
            knn_labels, kwargs["label_counts"], kwargs["ref_includes_query"], False
        )
        return self._precision_metric("mean_average_precision", knn_labels, **kwargs)

    def calculate_mean_reciprocal_rank(self, knn_labels, **kwargs):
        knn_labels = self._pml_columns(
            knn_labels, kwargs["label_counts"], kwargs["ref_includes_query"], False
        )
        return self._over_not_lone(
            mean_reciprocal_rank,
            knn_labels,
            kwargs["query_labels"],
            kwargs["not_lone_query_mask"],
            kwargs["label_counts"],
        )
