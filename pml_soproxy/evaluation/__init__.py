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

The exact kNN search runs over the queries in chunks (:func:`chunked_knn`): of each
chunk only the rank of the first same-class neighbour (all Recall@K need) and the
first few neighbour labels (R = the largest class, all MAP@R, R-precision and
precision@1 need) are kept, so memory is O(chunk x K + N x R) instead of PML's
O(N x K). A first pass finds max(W, 32) neighbours of every query; only the queries
with no same-class item among them are searched again for all K (exact in both
passes: the same kernel gives the same distances), which halves the search time.
faiss does the search on the CPU, faiss-gpu on a GPU when installed, else an exact
matmul + top-k on the GPU (:func:`knn_backend`, the one place that decides).

Memory of :class:`RecallAtKCalculator`: O(chunk_size x k + N x W). With the default
search (no ``knn_func`` of your own), besides the inputs and their normalised float32 copies (N x D x 4
bytes each), one chunk of the search holds at most ``chunk_size x (k + 1)``
neighbour indices and distances (the first pass ``max(W, 32)`` per query, the
second, for the queries whose first same-class neighbour is further, ``k``; 12
bytes each), faiss's result buffers for the chunk (about twice as much), a copy
without the query itself, and the gathered labels and matches (about 5 bytes per
neighbour): about 60 bytes per searched neighbour of one chunk in all. For the
whole query set only ``N x (8 + 8 W)`` bytes are kept: the first-hit rank and
``W`` neighbour labels and distances per query, where ``W`` is 1 for
precision_at_1, ``R`` (the largest class size) for MAP@R and R-precision and
PML's ``k`` for mean_average_precision and mean_reciprocal_rank; ``k`` = the
neighbours searched (``max(recall_at)``, or PML's ``k`` if larger). At SOP test
scale (N = 60,502 x 384, k = 1,000, W = 11, chunk 4,096) that is at most about
250 MiB of working memory plus 89 MiB for the normalised copy;
``benchmarks/bench_evaluation.py`` measures about 400 MiB above the embeddings
(160 MiB of it the first call's code and thread pools), against about 6.6 GiB
for PML's ``N x k`` path. The ``"torch"`` backend adds one score block of at
most 256 MiB (512 MiB on CUDA). ``avg_of_avgs`` and ``return_per_class``
average through PML's ``maybe_get_avg_of_avgs``, which builds an
``N x classes`` matrix: avoid them at SOP scale.

Files: ``calculator.py`` (:class:`RecallAtKCalculator`, ``RECALL_AT_K`` read from
the datasets' protocol records), ``pml_metrics.py`` (its mixin of PML's own kNN
metrics, without their Python loops), ``knn.py`` (backends, the chunked and the
two-pass search), ``metrics.py`` (metric names, first-hit ranks, label
statistics), ``inputs.py`` (input checks), ``results.py`` (query vs gallery, the
metrics table).
"""

from .calculator import RECALL_AT_K, RecallAtKCalculator
from .inputs import check_evaluation_inputs
from .knn import DEFAULT_CHUNK_SIZE, KNN_BACKENDS, _faiss, chunked_knn, knn_backend
from .metrics import (
    DEFAULT_EXTRA_METRICS,
    _label_statistics,
    first_hit_rank,
    recall_metric_names,
    same_label,
)
from .results import evaluate_query_gallery, format_accuracies

__all__ = [
    "RECALL_AT_K",
    "DEFAULT_EXTRA_METRICS",
    "RecallAtKCalculator",
    "recall_metric_names",
    "check_evaluation_inputs",
    "first_hit_rank",
    "knn_backend",
    "chunked_knn",
    "evaluate_query_gallery",
    "format_accuracies",
]
