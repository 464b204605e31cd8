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
O(N x K). A first pass finds max(R, 32) neighbours of every query; only the queries
with no same-class item among them are searched again for all K (exact in both
passes: the same kernel gives the same distances), which halves the search time. faiss does the search on the CPU, faiss-gpu on a GPU when installed, else
an exact matmul + top-k on the GPU (:func:`knn_backend`, the one place that decides).
"""

import functools
import numbers
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils.accuracy_calculator import (
    AccuracyCalculator,
    get_label_match_counts,
    get_lone_query_labels,
    maybe_get_avg_of_avgs,
    mean_reciprocal_rank,
    nan_accuracy,
    precision_at_k,
)

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
#: query rows per search chunk; a multiple of faiss's own query block (4096), so
#: that the chunked faiss search returns bit for bit what one whole search would
DEFAULT_CHUNK_SIZE = 4096
KNN_BACKENDS = ("auto", "faiss", "faiss-gpu", "torch")
#: the largest k that faiss's GPU search accepts
_FAISS_GPU_MAX_K = 2048
#: neighbours of the first pass over all queries (more if the PML metrics read more
#: columns): the first-hit rank of most queries is below it, and a search for few
#: neighbours costs about half as much as one for 1,000; only the queries without a
#: same-class item among them are searched again for all k (2% at SOP scale)
_FIRST_PASS_K = 32
#: bytes of one (query rows x reference items) score block of the torch search
_SCORE_BLOCK_BYTES = {"cuda": 2**29, "cpu": 2**28}


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


def _faiss():
    """The faiss module with its torch wrappers (CPU tensors in, tensors out), or
    None without faiss."""
    try:
        import faiss
        import faiss.contrib.torch_utils  # noqa: F401
    except ImportError:
        return None
    return faiss


def _no_pml_knn(*args, **kwargs):
    raise NotImplementedError("RecallAtKCalculator searches with its knn_backend")


def knn_backend(device, requested: str = "auto") -> str:
    """The kNN search for embeddings on ``device``: the one place that decides.

    ``"auto"``: faiss on the CPU; on CUDA faiss-gpu when the installed faiss has
    GPUs, else ``"torch"`` (an exact matmul + top-k on the GPU, so that the search
    never falls back to the CPU for want of faiss-gpu). Without faiss at all,
    ``"torch"`` everywhere. An explicit choice is checked, not second-guessed.
    """
    device = torch.device(device)
    if requested not in KNN_BACKENDS:
        raise ValueError(
            f"knn_backend must be one of {KNN_BACKENDS}, got {requested!r}"
        )
    faiss = _faiss()
    if requested in ("faiss", "faiss-gpu") and faiss is None:
        raise ValueError(
            f"knn_backend={requested!r} needs faiss: pip install faiss-cpu (or "
            "faiss-gpu), or use knn_backend='torch'"
        )
    if requested == "faiss-gpu" and (device.type != "cuda" or faiss.get_num_gpus() < 1):
        raise ValueError(
            "knn_backend='faiss-gpu' needs CUDA embeddings and a faiss build with "
            f"GPUs (device {device}, faiss sees {faiss.get_num_gpus()} GPUs); use "
            "knn_backend='auto'"
        )
    if requested != "auto":
        return requested
    if faiss is None:
        return "torch"
    if device.type == "cuda":
        return "faiss-gpu" if faiss.get_num_gpus() > 0 else "torch"
    return "faiss"


def _search_faiss(query, reference, k, gpu):
    faiss = _faiss()
    if not gpu:
        # faiss.knn, not an index: no copy of the reference; same kernel
        # (knn_L2sqr) as PML's FaissKNN with IndexFlatL2, so the same neighbours
        return faiss.knn(query.contiguous(), reference, k, metric=faiss.METRIC_L2)
    if not hasattr(_search_faiss, "resources"):
        _search_faiss.resources = faiss.StandardGpuResources()
    return faiss.knn_gpu(
        _search_faiss.resources,
        query.contiguous(),
        reference,
        k,
        metric=faiss.METRIC_L2,
        device=query.device.index or 0,
    )


def _search_torch(query, reference, reference_sq_norms, k):
    # squared L2 distances as faiss computes them (|q|^2 + |r|^2 - 2 q.r), so that
    # unnormalised embeddings rank as with PML's FaissKNN (IndexFlatL2)
    distances = torch.addmm(reference_sq_norms, query, reference.t(), alpha=-2)
    distances += (query * query).sum(dim=1, keepdim=True)
    return torch.topk(distances, k, dim=1, largest=False, sorted=True)


def _drop_self(distances, indices, own):
    """PML's ``return_results``: drop each query's own reference row ``own[i]``, or
    the last column where the query is not among its neighbours (several exact
    duplicates)."""
    rows, width = indices.shape
    is_self = indices == own[:, None]
    dropped = torch.where(
        is_self.any(dim=1), is_self.to(torch.uint8).argmax(dim=1), width - 1
    )
    # the columns left of the dropped one, then those right of it (a gather is
    # much faster than boolean-mask indexing here)
    columns = torch.arange(width - 1, device=indices.device)[None, :]
    columns = columns + (columns >= dropped[:, None])
    return distances.gather(1, columns), indices.gather(1, columns)


def chunked_knn(
    query,
    reference,
    k: int,
    ref_includes_query: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    backend: str = "auto",
    query_rows=None,
):
    """Exact k nearest reference items (squared L2) of each query, chunk by chunk.

    Yields ``(start, distances, indices)`` for the query rows ``start:start + n``,
    each ``(n, k)``, nearest first. With ``ref_includes_query`` query ``i`` is
    reference row ``query_rows[i]`` (default ``i``: the first ``len(query)``
    reference rows are the queries) and that row is excluded from its neighbours
    (PML's convention). Memory per chunk: ``chunk_size x (k + 1)``
    distances and indices (12 bytes each), plus for the ``"torch"`` backend a score
    block of ``(rows, len(reference))`` float32 with ``rows <= chunk_size`` chosen
    so that the block stays under 256 MiB on the CPU and 512 MiB on CUDA.
    """
    backend = knn_backend(query.device, backend)
    search_k = k + int(ref_includes_query)
    if backend == "faiss-gpu" and search_k > _FAISS_GPU_MAX_K:
        backend = "torch"  # faiss's GPU search has no k this large
    reference = reference.contiguous()
    if backend == "faiss":
        reference = reference.cpu()  # faiss's CPU search (a no-op for CPU tensors)
    rows = max(1, int(chunk_size))
    if backend == "torch":
        block = _SCORE_BLOCK_BYTES["cuda" if query.is_cuda else "cpu"]
        rows = max(1, min(rows, block // (4 * len(reference))))
        reference_sq_norms = (reference * reference).sum(dim=1)
    for start in range(0, len(query), rows):
        chunk = query[start : start + rows]
        if backend == "torch":
            distances, indices = _search_torch(
                chunk, reference, reference_sq_norms, search_k
            )
        else:
            distances, indices = _search_faiss(
                chunk if backend == "faiss-gpu" else chunk.cpu(),
                reference,
                search_k,
                gpu=backend == "faiss-gpu",
            )
            distances = distances.to(query.device)
            indices = indices.to(query.device)
        if ref_includes_query:
            own = (
                torch.arange(start, start + len(chunk), device=indices.device)
                if query_rows is None
                else query_rows[start : start + len(chunk)].to(indices.device)
            )
            distances, indices = _drop_self(distances, indices, own)
        yield start, distances, indices


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
        chunk_size: query rows per kNN search chunk (see below); ``None`` searches
            all queries at once through PML's ``knn_func`` (PML's own path).
        knn_backend: ``"auto"`` (see :func:`knn_backend`), ``"faiss"``,
            ``"faiss-gpu"`` or ``"torch"``.
        exclude, **accuracy_calculator_kwargs: passed to ``AccuracyCalculator``
            (``avg_of_avgs``, ``return_per_class``, ``knn_func``, ``device``, ...).
            A ``knn_func`` of your own is called once on all queries, as in PML.

    Memory: O(chunk_size x k + N x W). With the default search (no ``knn_func`` of
    your own), besides the inputs and their normalised float32 copies (N x D x 4
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
    """

    def __init__(
        self,
        recall_at: Union[int, Iterable[int]] = RECALL_AT_K["cub200"],
        k: Union[int, str, None] = "max_bin_count",
        normalize_embeddings: bool = True,
        include: Optional[Sequence[str]] = None,
        exclude: Sequence[str] = (),
        chunk_size: Optional[int] = DEFAULT_CHUNK_SIZE,
        knn_backend: str = "auto",
        **accuracy_calculator_kwargs,
    ):
        if chunk_size is not None and (
            isinstance(chunk_size, bool)
            or not isinstance(chunk_size, numbers.Integral)
            or chunk_size < 1
        ):
            raise ValueError(
                f"chunk_size must be a positive integer or None, got {chunk_size!r}"
            )
        if knn_backend not in KNN_BACKENDS:
            raise ValueError(
                f"knn_backend must be one of {KNN_BACKENDS}, got {knn_backend!r}"
            )
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.knn_backend = knn_backend
        # a knn_func of the caller's is called as PML calls it (all queries at once)
        self._own_knn_func = accuracy_calculator_kwargs.get("knn_func") is not None
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
            fast = query_labels.ndim == 1 and self.label_comparison_fn in (
                same_label,
                torch.eq,
            )
            if fast:
                label_counts, lone, not_lone, relevant = _label_statistics(
                    query_labels, reference_labels, ref_includes_query
                )
            else:
                label_counts = get_label_match_counts(
                    query_labels, reference_labels, self.label_comparison_fn
                )
                lone, not_lone = get_lone_query_labels(
                    query_labels,
                    label_counts,
                    ref_includes_query,
                    self.label_comparison_fn,
                )
                relevant = None
            num_k = self.determine_k(
                label_counts[1], len(reference), ref_includes_query
            )
            width = self._kept_columns(num_k, label_counts, ref_includes_query)
            first = torch.empty(len(query), dtype=torch.long, device=query.device)
            knn_labels = reference_labels.new_empty(
                (len(query), width) + tuple(reference_labels.shape[1:])
            )
            knn_distances = query.new_empty((len(query), width))
            # first pass: few neighbours for every query; second: all num_k, for
            # the queries (not lone) with no same-class item among those few
            first_k = min(num_k, max(width, _FIRST_PASS_K))
            searches = chunked_knn(
                query,
                reference,
                first_k,
                ref_includes_query,
                self.chunk_size,
                self.knn_backend,
            )
            for start, distances, indices in searches:
                stop = start + len(indices)
                labels = reference_labels[indices]
                first[start:stop] = first_hit_rank(
                    labels, query_labels[start:stop], self.label_comparison_fn
                )
                knn_labels[start:stop] = labels[:, :width]
                knn_distances[start:stop] = distances[:, :width]
                del labels, distances, indices
            if first_k < num_k:
                rows = torch.nonzero((first == _NO_HIT) & not_lone).view(-1)
                searches = chunked_knn(
                    query[rows],
                    reference,
                    num_k,
                    ref_includes_query,
                    self.chunk_size,
                    self.knn_backend,
                    query_rows=rows,
                )
                for start, _, indices in searches:
                    chunk = rows[start : start + len(indices)]
                    first[chunk] = first_hit_rank(
                        reference_labels[indices],
                        query_labels[chunk],
                        self.label_comparison_fn,
                    )
            if not torch.any(not_lone):
                c_f.LOGGER.warning("None of the query labels are in the reference set.")
            kwargs.update(
                label_counts=label_counts,
                knn_labels=knn_labels,
                knn_distances=knn_distances,
                lone_query_labels=lone,
                not_lone_query_mask=not_lone,
                first_hit_rank=first,
                relevant_counts=relevant,
            )
        if any(x in self.requires_clustering() for x in metrics):
            kwargs["cluster_labels"] = self.get_cluster_labels(**kwargs)
        return self._get_accuracy(self.curr_function_dict, **kwargs)

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
        if not torch.any(not_lone_query_mask):
            return nan_accuracy(label_counts[0], self.return_per_class)
        return precision_at_k(
            knn_labels[not_lone_query_mask],
            query_labels[not_lone_query_mask][:, None],
            1,
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
        mask, query_labels = kwargs["not_lone_query_mask"], kwargs["query_labels"]
        if not torch.any(mask):
            return nan_accuracy(kwargs["label_counts"][0], self.return_per_class)
        return mean_reciprocal_rank(
            knn_labels[mask],
            query_labels[mask][:, None],
            self.avg_of_avgs,
            self.return_per_class,
            self.label_comparison_fn,
        )


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
