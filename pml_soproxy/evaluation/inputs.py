"""Input checks of the evaluation: shapes, label counts and non-finite rows,
refused in one sentence before PML or faiss would fail with a misleading one."""

from typing import Tuple

import numpy as np
import torch

_CHUNK_ROWS = 16384


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
