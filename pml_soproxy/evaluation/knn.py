"""The exact kNN search of the evaluation: which backend (faiss on the CPU,
faiss-gpu, or an exact torch matmul + top-k), chunked over the queries, each
query's own row dropped for self-retrieval, and the two-pass search of the
first same-class neighbour (few neighbours for every query, then all K only for
the queries without a same-class item among those few)."""

import numbers

import torch

from .metrics import NO_HIT, first_hit_rank

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


def _faiss():
    """The faiss module with its torch wrappers (CPU tensors in, tensors out), or
    None without faiss."""
    try:
        import faiss
        import faiss.contrib.torch_utils  # noqa: F401
    except ImportError:
        return None
    return faiss


def _check_backend(name: str) -> None:
    if name not in KNN_BACKENDS:
        raise ValueError(f"knn_backend must be one of {KNN_BACKENDS}, got {name!r}")


def knn_backend(device, requested: str = "auto") -> str:
    """The kNN search for embeddings on ``device``: the one place that decides.

    ``"auto"``: faiss on the CPU; on CUDA faiss-gpu when the installed faiss has
    GPUs, else ``"torch"`` (an exact matmul + top-k on the GPU, so that the search
    never falls back to the CPU for want of faiss-gpu). Without faiss at all,
    ``"torch"`` everywhere. An explicit choice is checked, not second-guessed.
    """
    device = torch.device(device)
    _check_backend(requested)
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


def _check_search_settings(chunk_size, knn_backend: str):
    if chunk_size is not None and (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, numbers.Integral)
        or chunk_size < 1
    ):
        raise ValueError(
            f"chunk_size must be a positive integer or None, got {chunk_size!r}"
        )
    _check_backend(knn_backend)


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


def two_pass_search(
    query,
    reference,
    query_labels,
    reference_labels,
    not_lone,
    num_k: int,
    width: int,
    ref_includes_query: bool,
    label_comparison_fn,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    backend: str = "auto",
):
    """``(first_hit_rank, knn_labels, knn_distances)`` of every query, the last
    two ``width`` columns wide, with ``num_k`` neighbours searched per query.

    First pass: ``max(width, _FIRST_PASS_K)`` neighbours (at most ``num_k``) for
    every query; second pass: all ``num_k``, only for the queries (not lone:
    ``not_lone``) with no same-class item among those few. Both passes are exact
    with the same kernel, so the ranks equal those of one search for ``num_k``.
    """
    first = torch.empty(len(query), dtype=torch.long, device=query.device)
    knn_labels = reference_labels.new_empty(
        (len(query), width) + tuple(reference_labels.shape[1:])
    )
    knn_distances = query.new_empty((len(query), width))
    first_k = min(num_k, max(width, _FIRST_PASS_K))
    searches = chunked_knn(
        query, reference, first_k, ref_includes_query, chunk_size, backend
    )
    for start, distances, indices in searches:
        stop = start + len(indices)
        labels = reference_labels[indices]
        first[start:stop] = first_hit_rank(
            labels, query_labels[start:stop], label_comparison_fn
        )
        knn_labels[start:stop] = labels[:, :width]
        knn_distances[start:stop] = distances[:, :width]
        del labels, distances, indices
    if first_k < num_k:
        rows = torch.nonzero((first == NO_HIT) & not_lone).view(-1)
        searches = chunked_knn(
            query[rows],
            reference,
            num_k,
            ref_includes_query,
            chunk_size,
            backend,
            query_rows=rows,
        )
        for start, _, indices in searches:
            chunk = rows[start : start + len(indices)]
            first[chunk] = first_hit_rank(
                reference_labels[indices], query_labels[chunk], label_comparison_fn
            )
    return first, knn_labels, knn_distances
