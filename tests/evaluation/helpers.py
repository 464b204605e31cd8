"""Shared references and data of the evaluation tests: an independent brute-force
Recall@K (numpy float64, explicit sort and loops), clustered data, recorders,
input formats."""

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.inference import FaissKNN

from pml_soproxy.evaluation import (
    RecallAtKCalculator,
)

PML_METRICS = {
    "precision_at_1",
    "mean_average_precision_at_r",
    "r_precision",
    "mean_average_precision",
    "mean_reciprocal_rank",
    "NMI",
    "AMI",
}
TIE_TOL = 1e-6  # a different-class item this close to the first hit = ambiguous


# --------------------------------------------------------------------------- #
# Independent brute-force reference (numpy float64, explicit sort and loops)
# --------------------------------------------------------------------------- #
def brute_force_recall(
    query, query_labels, reference, reference_labels, ks, self_retrieval
):
    """Recall@K by cosine similarity; returns (mean, per_class, ambiguous_ids).

    Self-retrieval (reference is query) removes the query's own index only.
    Lone queries (no same-class reference item) are skipped. A query is
    'ambiguous' if a different-class item ties (within TIE_TOL) with its most
    similar same-class item: then its first-hit rank depends on tie breaking.
    """
    q = np.asarray(query, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    r = r / np.linalg.norm(r, axis=1, keepdims=True)
    query_labels = np.asarray(query_labels)
    reference_labels = np.asarray(reference_labels)
    ranks, kept_labels, ambiguous = [], [], []
    for i in range(len(q)):
        sims = r @ q[i]
        idx = np.arange(len(r))
        if self_retrieval:
            idx = idx[idx != i]
        sims, labels = sims[idx], reference_labels[idx]
        same = labels == query_labels[i]
        if not same.any():
            continue
        order = np.argsort(-sims, kind="stable")
        rank = None
        for pos, j in enumerate(order):
            if same[j]:
                rank = pos
                break
        best_same = sims[same].max()
        if np.any(np.abs(sims[~same] - best_same) <= TIE_TOL):
            ambiguous.append(i)
        ranks.append(rank)
        kept_labels.append(query_labels[i])
    ranks, kept_labels = np.array(ranks), np.array(kept_labels)
    mean, per_class = {}, {}
    for k in ks:
        if len(ranks) == 0:
            mean[k], per_class[k] = float("nan"), []
            continue
        hits = (ranks < k).astype(np.float64)
        mean[k] = hits.mean()
        per_class[k] = [hits[kept_labels == c].mean() for c in np.unique(kept_labels)]
    return mean, per_class, ambiguous


def clustered(n_classes, min_size, max_size, dim, noise, seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(min_size, max_size + 1, n_classes)
    centers = rng.standard_normal((n_classes, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    labels = np.repeat(np.arange(n_classes), sizes)
    x = centers[labels] + noise * rng.standard_normal((len(labels), dim))
    perm = rng.permutation(len(labels))
    return x[perm].astype(np.float32), labels[perm]


def tie_free(x, y):
    """Drop points until no self-retrieval query is ambiguous (float32 near-ties
    would make faiss and the float64 reference legitimately disagree)."""
    while True:
        _, _, ambiguous = brute_force_recall(x, y, x, y, (1,), True)
        if not ambiguous:
            return x, y
        keep = np.ones(len(y), dtype=bool)
        keep[ambiguous] = False
        x, y = x[keep], y[keep]


def assert_recalls(result, expected, ks):
    """Mean (float) or per-class (list) recall values equal the reference."""
    for k in ks:
        got = result[f"recall_at_{k}"]
        assert got == pytest.approx(expected[k], abs=1e-12), (k, got, expected[k])


class RecordingKNN(FaissKNN):
    """PML's FaissKNN that remembers the k it was asked for."""

    def __call__(self, query, k, reference=None, ref_includes_query=False):
        self.last_k = k
        return super().__call__(query, k, reference, ref_includes_query)


FORMATS = {"torch": lambda x: x, "numpy": lambda x: x.numpy()}


class NoKNN:
    """A knn_func that fails the test if the guards let the inputs through."""

    def __call__(self, *args, **kwargs):
        raise AssertionError("the kNN search ran on invalid inputs")


def guarded_calculator():
    return RecallAtKCalculator(knn_func=NoKNN())


def small_data(n=20, d=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=generator), torch.arange(n) % 4


def raises_exactly(message, *args):
    with pytest.raises(ValueError) as excinfo:
        guarded_calculator().get_accuracy(*args)
    assert str(excinfo.value) == message


ALL_KNN_METRICS = (
    "precision_at_1",
    "mean_average_precision_at_r",
    "r_precision",
    "mean_average_precision",
    "mean_reciprocal_rank",
)


def unchunked(ks, **kwargs):
    """The previous path: PML's get_accuracy, one FaissKNN search for all queries."""
    return RecallAtKCalculator(ks, chunk_size=None, **kwargs)
