"""Tests for pml_soproxy.evaluation (Recall@K on top of PML's AccuracyCalculator)."""

import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import FaissKNN

from pml_soproxy.evaluation import (
    DEFAULT_EXTRA_METRICS,
    RECALL_AT_K,
    RecallAtKCalculator,
    evaluate_query_gallery,
    format_accuracies,
    recall_metric_names,
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


@pytest.fixture(scope="module")
def big_data():
    # ~2,500 points, classes of 2..8 items: max_bin_count is tiny vs K=1000.
    return tie_free(*clustered(500, 2, 8, 16, 0.9, seed=0))


# --------------------------------------------------------------------------- #
# Agreement with the brute-force reference
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "recall_at", [(1, 2, 4, 8), (1, 10, 100, 1000), (3, 17, 50), (1, 10, 20, 30, 40)]
)
def test_self_retrieval_matches_brute_force(big_data, recall_at):
    x, y = big_data
    expected, _, ambiguous = brute_force_recall(x, y, x, y, recall_at, True)
    assert ambiguous == []
    knn = RecordingKNN()
    res = RecallAtKCalculator(recall_at, knn_func=knn).get_accuracy(x, y)
    assert knn.last_k >= max(recall_at)  # searched deep enough, not max_bin_count
    assert_recalls(res, expected, recall_at)
    assert 0 < res[f"recall_at_{recall_at[0]}"] < 1  # non-trivial data


def test_recall_at_1000_not_truncated_by_max_bin_count(big_data):
    x, y = big_data
    mbc = np.bincount(y).max()
    assert mbc <= 8
    expected, _, _ = brute_force_recall(x, y, x, y, (8, 1000), True)
    assert expected[1000] > expected[8] + 0.2  # truncation would be visible
    res = RecallAtKCalculator((8, 1000)).get_accuracy(x, y)
    assert_recalls(res, expected, (8, 1000))


@pytest.mark.parametrize("recall_at", [(1, 2, 4, 8), (1, 10, 100, 1000)])
def test_query_gallery_matches_brute_force(recall_at):
    x, y = clustered(400, 2, 10, 16, 0.8, seed=1)
    rng = np.random.default_rng(1)
    is_query = rng.random(len(y)) < 0.4
    q, ql, g, gl = x[is_query], y[is_query], x[~is_query], y[~is_query]
    _, _, ambiguous = brute_force_recall(q, ql, g, gl, (1,), False)
    q, ql = np.delete(q, ambiguous, 0), np.delete(ql, ambiguous)
    expected, _, ambiguous = brute_force_recall(q, ql, g, gl, recall_at, False)
    assert ambiguous == []
    calc = RecallAtKCalculator(recall_at)
    res = evaluate_query_gallery(calc, q, ql, g, gl)
    assert_recalls(res, expected, recall_at)
    same = calc.get_accuracy(q, ql, g, gl, ref_includes_query=False)
    assert same == res


def test_avg_of_avgs_and_per_class_match_brute_force():
    x, y = tie_free(*clustered(60, 2, 12, 8, 0.7, seed=2))
    ks = (1, 5, 50)
    expected, per_class, _ = brute_force_recall(x, y, x, y, ks, True)
    res = RecallAtKCalculator(ks, return_per_class=True).get_accuracy(x, y)
    assert_recalls(res, per_class, ks)
    res = RecallAtKCalculator(ks, avg_of_avgs=True).get_accuracy(x, y)
    for k in ks:
        assert res[f"recall_at_{k}"] == pytest.approx(np.mean(per_class[k]), abs=1e-12)
        # the class-balanced average really differs from the plain one here
        assert not math.isclose(np.mean(per_class[k]), expected[k]) or k == 50


def test_fewer_reference_items_than_k():
    x, y = tie_free(*clustered(6, 3, 8, 8, 1.0, seed=3))
    ks = (1, 4, 100, 1000)
    expected, _, _ = brute_force_recall(x, y, x, y, ks, True)
    knn = RecordingKNN()
    res = RecallAtKCalculator(ks, knn_func=knn).get_accuracy(x, y)
    assert knn.last_k == len(x) - 1  # capped at the available reference items
    assert_recalls(res, expected, ks)
    assert res["recall_at_100"] == res["recall_at_1000"] == 1.0
    # query-vs-gallery: capped at the gallery size
    res = evaluate_query_gallery(
        RecallAtKCalculator(ks, knn_func=knn), x[:5], y[:5], x[5:], y[5:]
    )
    assert knn.last_k == len(x) - 5
    expected, _, _ = brute_force_recall(x[:5], y[:5], x[5:], y[5:], ks, False)
    assert_recalls(res, expected, ks)


def test_normalization_gives_cosine_ranking():
    # cosine: a is nearer (0.707 vs 0.64); Euclidean: b is nearer.
    q, ql = np.array([[1.0, 0.0]], np.float32), np.array([0])
    g = np.array([[10.0, 10.0], [0.5, -0.6]], np.float32)
    gl = np.array([0, 1])
    cos = evaluate_query_gallery(RecallAtKCalculator((1, 2)), q, ql, g, gl)
    assert cos["recall_at_1"] == 1.0
    l2 = evaluate_query_gallery(
        RecallAtKCalculator((1, 2), normalize_embeddings=False), q, ql, g, gl
    )
    assert l2["recall_at_1"] == 0.0 and l2["recall_at_2"] == 1.0
    # scale invariance with normalisation on random data
    x, y = clustered(50, 2, 6, 8, 0.8, seed=4)
    scale = np.random.default_rng(4).uniform(0.1, 10.0, (len(x), 1)).astype(np.float32)
    calc = RecallAtKCalculator((1, 2, 4, 8))
    a, b = calc.get_accuracy(x, y), calc.get_accuracy(x * scale, y)
    for name in recall_metric_names((1, 2, 4, 8)):
        assert a[name] == pytest.approx(b[name], abs=1e-12)


# --------------------------------------------------------------------------- #
# Ties and duplicates
# --------------------------------------------------------------------------- #
def test_handcrafted_ties_and_self_duplicate():
    deg = np.deg2rad([0.0, 0.0, 10.0, 90.0, 100.0])
    x = np.stack([np.cos(deg), np.sin(deg)], 1).astype(np.float32)
    y = np.array([0, 0, 1, 0, 1])
    # first-hit ranks (self excluded): p0 -> p1 dup (0), p1 -> p0 (0),
    # p2 -> tie p0/p1 (both class 0), p3, then p4 (3), p3 -> p4, p2, p0|p1 (2),
    # p4 -> p3, then p2 (1)
    res = RecallAtKCalculator((1, 2, 3, 4)).get_accuracy(x, y)
    assert [res[f"recall_at_{k}"] for k in (1, 2, 3, 4)] == pytest.approx(
        [0.4, 0.6, 0.8, 1.0], abs=1e-12
    )
    expected, _, ambiguous = brute_force_recall(x, y, x, y, (1, 2, 3, 4), True)
    assert ambiguous == [] and [expected[k] for k in (1, 2, 3, 4)] == pytest.approx(
        [0.4, 0.6, 0.8, 1.0]
    )
    # query-vs-gallery: the query's exact copy in the gallery counts (nothing excluded)
    res = evaluate_query_gallery(RecallAtKCalculator((1,)), x[:1], y[:1], x[1:], y[1:])
    assert res["recall_at_1"] == 1.0
    res = evaluate_query_gallery(RecallAtKCalculator((1, 2)), x[3:4], y[3:4], x, y)
    assert res["recall_at_1"] == 1.0  # query vector itself is in the gallery


def test_duplicates_within_class_and_across_classes_match_brute_force():
    x, y = tie_free(*clustered(120, 2, 8, 12, 0.8, seed=5))
    rng = np.random.default_rng(5)
    # exact duplicates inside a class
    dup = rng.choice(len(x), 80, replace=False)
    x, y = np.concatenate([x, x[dup]]), np.concatenate([y, y[dup]])
    # a whole class collapsed to one point (4 identical items)
    collapsed = np.repeat(rng.standard_normal((1, 12)).astype(np.float32), 4, 0)
    x, y = np.concatenate([x, collapsed]), np.concatenate([y, [1000] * 4])
    # cross-class exact duplicates v (class A) == v' (class B): tied with each other
    # but never with anyone's first same-class hit (A and B each also own a tight
    # pair elsewhere, nearer to each other than to v), so the answer is well defined
    for c in range(5):
        v, w, u = rng.standard_normal((3, 1, 12)).astype(np.float32)
        pair_a = w + 0.01 * rng.standard_normal((2, 12)).astype(np.float32)
        pair_b = u + 0.01 * rng.standard_normal((2, 12)).astype(np.float32)
        x = np.concatenate([x, v, v, pair_a, pair_b])
        y = np.concatenate([y, [2000 + c, 3000 + c] + [2000 + c] * 2 + [3000 + c] * 2])
    # in query-vs-gallery mode with the query in the gallery, v and v' as queries
    # are genuinely ambiguous at K=1 (self and v' tie), so they are not queried there
    cross_dup = np.zeros(len(y), dtype=bool)
    cross_dup[-30:] = np.tile([True, True, False, False, False, False], 5)
    perm = rng.permutation(len(y))
    x, y, cross_dup = x[perm], y[perm], cross_dup[perm]
    for ks in [(1, 2, 4, 8), (1, 10, 100, 1000)]:
        expected, _, ambiguous = brute_force_recall(x, y, x, y, ks, True)
        assert ambiguous == []
        res = RecallAtKCalculator(ks).get_accuracy(x, y)
        assert_recalls(res, expected, ks)
        assert res["recall_at_1"] == res["precision_at_1"]
        q = (rng.random(len(y)) < 0.5) & ~cross_dup
        expected, _, ambiguous = brute_force_recall(x[q], y[q], x, y, ks, False)
        assert ambiguous == []
        res = evaluate_query_gallery(RecallAtKCalculator(ks), x[q], y[q], x, y)
        assert_recalls(res, expected, ks)
        assert res["recall_at_1"] == 1.0  # every query finds itself in the gallery


def test_cross_class_tie_at_k_boundary_is_bounded():
    # a same-class and a different-class item exactly tied: the backend decides
    # Recall@1 (documented); Recall@2 is 1 either way.
    q, ql = np.array([[1.0, 0.0]], np.float32), np.array([0])
    g = np.array([[0.6, 0.8], [0.6, 0.8], [-1.0, 0.0]], np.float32)
    gl = np.array([1, 0, 0])
    res = evaluate_query_gallery(RecallAtKCalculator((1, 2)), q, ql, g, gl)
    assert res["recall_at_1"] in (0.0, 1.0)
    assert res["recall_at_1"] == res["precision_at_1"]
    assert res["recall_at_2"] == 1.0


# --------------------------------------------------------------------------- #
# Lone queries
# --------------------------------------------------------------------------- #
def test_lone_queries_excluded_self_retrieval():
    x, y = tie_free(*clustered(30, 1, 5, 8, 0.8, seed=6))
    counts = np.bincount(y)
    assert (counts == 1).sum() >= 3  # several single-item classes
    ks = (1, 2, 4, 100)
    expected, _, _ = brute_force_recall(x, y, x, y, ks, True)
    res = RecallAtKCalculator(ks).get_accuracy(x, y)
    assert_recalls(res, expected, ks)
    assert res["recall_at_1"] == res["precision_at_1"]
    assert res["recall_at_100"] == 1.0  # lone queries would make this < 1


def test_lone_queries_excluded_query_gallery():
    x, y = clustered(40, 2, 6, 8, 0.8, seed=7)
    gallery = (y % 5 != 0) | (np.arange(len(y)) % 2 == 0)
    gallery &= ~((y % 7 == 0))  # classes 0, 7, 14, ... absent from the gallery
    ks = (1, 3, 1000)
    expected, _, _ = brute_force_recall(x, y, x[gallery], y[gallery], ks, False)
    res = evaluate_query_gallery(RecallAtKCalculator(ks), x, y, x[gallery], y[gallery])
    assert_recalls(res, expected, ks)
    assert res["recall_at_1"] == res["precision_at_1"]
    assert res["recall_at_1000"] == 1.0


def test_all_lone_gives_nan():
    x = np.random.default_rng(8).standard_normal((6, 4)).astype(np.float32)
    y = np.arange(6)
    res = RecallAtKCalculator((1, 5)).get_accuracy(x, y)
    for name in ("recall_at_1", "recall_at_5", "precision_at_1"):
        assert math.isnan(res[name])
    res = evaluate_query_gallery(
        RecallAtKCalculator((1, 5), return_per_class=True), x[:3], y[:3], x[3:], y[3:]
    )
    assert len(res["recall_at_5"]) == 3 and all(
        math.isnan(v) for v in res["recall_at_5"]
    )


# --------------------------------------------------------------------------- #
# Consistency with PML
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("avg_of_avgs", [False, True])
def test_recall_at_1_equals_precision_at_1_and_monotone(big_data, avg_of_avgs):
    x, y = big_data
    ks = (1, 2, 4, 8, 16, 32, 100, 1000)
    res = RecallAtKCalculator(ks, avg_of_avgs=avg_of_avgs).get_accuracy(x, y)
    assert res["recall_at_1"] == res["precision_at_1"]
    values = [res[f"recall_at_{k}"] for k in ks]
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert values[0] < values[-1]


@pytest.mark.parametrize("k", ["max_bin_count", None])
def test_pml_metrics_identical_to_plain_calculator(big_data, k):
    x, y = big_data
    if k is None:  # N x N matrices: keep it small
        x, y = x[:800], y[:800]
    xn = torch.nn.functional.normalize(torch.from_numpy(x), dim=1)
    names = (
        "precision_at_1",
        "mean_average_precision_at_r",
        "r_precision",
        "mean_average_precision",
        "mean_reciprocal_rank",
    )
    plain = AccuracyCalculator(include=names, k=k).get_accuracy(xn, y)
    ours = RecallAtKCalculator(
        (1, 1000), k=k, include=names + ("recall_at_1000",)
    ).get_accuracy(x, y)
    for name in names:
        assert ours[name] == plain[name], name
    # query-vs-gallery, no normalisation in our calculator
    q = np.arange(len(y)) % 3 == 0
    plain = AccuracyCalculator(include=names, k=k).get_accuracy(
        xn[q], y[q], xn[~q], y[~q], False
    )
    ours = RecallAtKCalculator(
        (1, 1000), k=k, normalize_embeddings=False, include=names + ("recall_at_1000",)
    )
    ours = evaluate_query_gallery(ours, xn[q], y[q], xn[~q], y[~q])
    for name in names:
        assert ours[name] == plain[name], name


def test_map_at_r_slicing_is_exact_with_large_classes():
    # larger classes: R ~ 40, K = 1000; MAP@R/R-precision must not change
    x, y = clustered(30, 20, 40, 8, 0.9, seed=9)
    xn = torch.nn.functional.normalize(torch.from_numpy(x), dim=1)
    names = ("mean_average_precision_at_r", "r_precision")
    plain = AccuracyCalculator(include=names, k="max_bin_count").get_accuracy(xn, y)
    ours = RecallAtKCalculator((1, 1000), normalize_embeddings=False).get_accuracy(
        xn, y
    )
    for name in names:
        assert ours[name] == plain[name]
        assert 0 < ours[name] < 1


# --------------------------------------------------------------------------- #
# k handling (no silent truncation)
# --------------------------------------------------------------------------- #
def test_explicit_k_below_max_recall_raises():
    with pytest.raises(ValueError, match="smaller than the largest Recall@K"):
        RecallAtKCalculator((1, 10, 100), k=50)
    with pytest.raises(ValueError):
        RecallAtKCalculator.for_dataset("sop", k=999)
    # fine if the large K is not computed
    calc = RecallAtKCalculator((1, 100), k=50, include=("recall_at_1",))
    assert calc.get_curr_metrics() == ["recall_at_1"]


def test_explicit_k_large_enough_and_capped(big_data):
    x, y = big_data
    ks = (1, 10, 100)
    expected, _, _ = brute_force_recall(x, y, x, y, ks, True)
    knn = RecordingKNN()
    res = RecallAtKCalculator(ks, k=100, knn_func=knn).get_accuracy(x, y)
    assert knn.last_k == 100
    assert_recalls(res, expected, ks)
    small_x, small_y = x[:40], y[:40]
    expected, _, _ = brute_force_recall(small_x, small_y, small_x, small_y, ks, True)
    res = RecallAtKCalculator(ks, k=500, knn_func=knn).get_accuracy(small_x, small_y)
    assert knn.last_k == 39
    assert_recalls(res, expected, ks)


# --------------------------------------------------------------------------- #
# Construction, metric selection, formatting
# --------------------------------------------------------------------------- #
def test_for_dataset_k_sets():
    assert RECALL_AT_K["sop"] == (1, 10, 100, 1000)
    assert RECALL_AT_K["inshop"] == (1, 10, 20, 30, 40)
    for name, ks in RECALL_AT_K.items():
        calc = RecallAtKCalculator.for_dataset(name)
        assert calc.recall_at == ks
        assert set(calc.get_curr_metrics()) == set(recall_metric_names(ks)) | set(
            DEFAULT_EXTRA_METRICS
        )
    assert RecallAtKCalculator.for_dataset("CUB200").recall_at == (1, 2, 4, 8)
    assert RecallAtKCalculator.for_dataset("sop", avg_of_avgs=True).avg_of_avgs
    with pytest.raises(ValueError, match="cars196.*cub200.*inshop.*sop"):
        RecallAtKCalculator.for_dataset("imagenet")


@pytest.mark.parametrize("bad", [(), (0, 1), (-1,), (1.5,), (True,), ("1",)])
def test_recall_at_validation(bad):
    with pytest.raises(ValueError):
        RecallAtKCalculator(bad)


def test_recall_at_sorted_and_deduplicated():
    calc = RecallAtKCalculator((8, 1, 2, 2, np.int64(4)))
    assert calc.recall_at == (1, 2, 4, 8)
    assert recall_metric_names(calc.recall_at) == (
        "recall_at_1",
        "recall_at_2",
        "recall_at_4",
        "recall_at_8",
    )
    assert RecallAtKCalculator(5).recall_at == (5,)


def test_include_exclude_with_recall_names():
    x, y = clustered(20, 2, 5, 8, 0.8, seed=10)
    calc = RecallAtKCalculator((1, 2, 4), include=("recall_at_2", "r_precision"))
    assert set(calc.get_accuracy(x, y)) == {"recall_at_2", "r_precision"}
    calc = RecallAtKCalculator((1, 2, 4), exclude=("recall_at_1", "precision_at_1"))
    assert set(calc.get_accuracy(x, y)) == {
        "recall_at_2",
        "recall_at_4",
        "mean_average_precision_at_r",
        "r_precision",
    }
    calc = RecallAtKCalculator((1, 2, 4))
    expected, _, _ = brute_force_recall(x, y, x, y, (4,), True)
    res = calc.get_accuracy(x, y, include=("recall_at_4",))
    assert set(res) == {"recall_at_4"} and res["recall_at_4"] == pytest.approx(
        expected[4], abs=1e-12
    )
    with pytest.raises(ValueError):
        RecallAtKCalculator((1, 2), include=("recall_at_3",))
    with pytest.raises(ValueError):
        RecallAtKCalculator((1, 2), exclude=("recall_at_3",))


def test_all_pml_metrics_available():
    calc = RecallAtKCalculator((1, 2), include=())
    assert set(calc.get_curr_metrics()) == PML_METRICS | {"recall_at_1", "recall_at_2"}
    x, y = clustered(10, 3, 6, 8, 0.5, seed=11)
    res = calc.get_accuracy(x, y)
    assert set(res) == set(calc.get_curr_metrics())
    assert 0 <= res["NMI"] <= 1
    res = RecallAtKCalculator((1,), include=("mean_reciprocal_rank",)).get_accuracy(
        x, y
    )
    assert 0 < res["mean_reciprocal_rank"] <= 1


def test_format_accuracies():
    text = format_accuracies(
        {
            "precision_at_1": 0.5,
            "recall_at_10": 0.9,
            "recall_at_2": 0.75,
            "NMI": float("nan"),
            "recall_at_1": [0.5, 1.0, float("nan")],
        }
    )
    lines = text.splitlines()
    names = [line.split()[0] for line in lines[2:]]
    assert names == [
        "recall_at_1",
        "recall_at_2",
        "recall_at_10",
        "precision_at_1",
        "NMI",
    ]
    assert "75.00" in lines[3] and "90.00" in lines[4] and "50.00" in lines[5]
    assert "nan" in lines[6]
    assert "75.00 (mean of 2 classes)" in lines[2]
    assert "98.765" in format_accuracies({"recall_at_1": 0.98765}, digits=3)


# --------------------------------------------------------------------------- #
# Input guards: ValueError before any work, in PML's formats (torch or numpy)
# --------------------------------------------------------------------------- #
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


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_query_set(fmt):
    f = FORMATS[fmt]
    x, y = small_data()
    empty, no_labels = torch.zeros(0, 8), torch.zeros(0, dtype=torch.long)
    message = (
        "the query set is empty (shape (0, 8)); Recall@K needs at least one "
        "query embedding"
    )
    raises_exactly(message, f(empty), f(no_labels))  # self-retrieval
    raises_exactly(message, f(empty), f(no_labels), f(x), f(y))


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_reference_set(fmt):
    f = FORMATS[fmt]
    x, y = small_data()
    raises_exactly(
        "the reference set is empty (shape (0, 8)); Recall@K needs at least one "
        "reference embedding",
        f(x),
        f(y),
        f(torch.zeros(0, 8)),
        f(torch.zeros(0, dtype=torch.long)),
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_query_reference_dimension_mismatch(fmt):
    f = FORMATS[fmt]
    x, y = small_data()
    ref, ref_y = small_data(n=30, d=6)
    raises_exactly(
        "query embeddings have 8 dimensions but reference embeddings have 6 "
        "(query shape (20, 8), reference shape (30, 6))",
        f(x),
        f(y),
        f(ref),
        f(ref_y),
    )


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("which", ["query", "reference"])
@pytest.mark.parametrize("shape", [(20,), (20, 2, 4), ()])
def test_embeddings_must_be_2d(fmt, which, shape):
    f = FORMATS[fmt]
    x, y = small_data()
    bad = torch.randn(shape)
    args = [x, y, x, y]
    args[0 if which == "query" else 2] = bad
    raises_exactly(
        f"{which} embeddings must be 2-D (num_embeddings, embedding_size), "
        f"got shape {shape}",
        *[f(a) for a in args],
    )


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("which", ["query", "reference"])
@pytest.mark.parametrize("num_labels", [0, 19, 21, 40])
def test_label_count_must_match_embedding_count(fmt, which, num_labels):
    f = FORMATS[fmt]
    x, y = small_data()
    labels = torch.arange(num_labels) % 4
    args = [x, y, x, y]
    args[1 if which == "query" else 3] = labels
    raises_exactly(
        f"{which} has 20 embeddings but {which}_labels has {num_labels} labels "
        f"(shape ({num_labels},)); pass one label per embedding",
        *[f(a) for a in args],
    )


def test_self_retrieval_label_count_and_missing_labels():
    x, y = small_data()
    raises_exactly(
        "query has 20 embeddings but query_labels has 0 labels (shape ()); "
        "pass one label per embedding",
        x,
        torch.tensor(3),
    )
    raises_exactly("query_labels is None but query has 20 embeddings", x, None)
    raises_exactly(
        "reference_labels is None but reference has 20 embeddings", x, y, x, None
    )


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("which", ["query", "reference"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_non_finite_rows_are_counted(fmt, which, value, dtype):
    f = FORMATS[fmt]
    x, y = small_data()
    bad = x.clone().to(dtype)
    bad[[0, 7, 19], [1, 0, 7]] = value
    bad[7, 3] = value  # two bad values in one row count once
    args = [x, y, x, y]
    args[0 if which == "query" else 2] = bad
    raises_exactly(
        f"3 of 20 {which} embedding rows contain NaN or infinite values, which the "
        "kNN search cannot rank",
        *[f(a) for a in args],
    )


def test_non_finite_rows_counted_across_chunks(monkeypatch):
    import pml_soproxy.evaluation as evaluation

    monkeypatch.setattr(evaluation, "_CHUNK_ROWS", 3)
    x, y = small_data()
    x[[0, 2, 3, 17, 19], 0] = float("nan")
    for f in FORMATS.values():
        raises_exactly(
            "5 of 20 query embedding rows contain NaN or infinite values, which "
            "the kNN search cannot rank",
            f(x),
            f(y),
        )


def test_query_gallery_goes_through_the_guards():
    x, y = small_data()
    with pytest.raises(ValueError, match="8 dimensions but reference embeddings"):
        evaluate_query_gallery(guarded_calculator(), x, y, x[:, :4], y)


@pytest.mark.parametrize("fmt", FORMATS)
def test_valid_inputs_pass_the_guards_unchanged(fmt):
    f = FORMATS[fmt]
    x, y = tie_free(*clustered(30, 2, 5, 8, 0.9, seed=1))
    x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    calc = RecallAtKCalculator()
    ours = calc.get_accuracy(f(x), f(y))
    plain = AccuracyCalculator.get_accuracy(
        calc, torch.nn.functional.normalize(x, dim=1), y
    )
    assert ours == plain
    # integer embeddings have no NaN and are not flagged
    calc.get_accuracy(f(torch.randint(-5, 5, (20, 8))), f(y[:20]))


# --------------------------------------------------------------------------- #
# Chunked exact kNN search (the default path)
# --------------------------------------------------------------------------- #
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


@pytest.mark.parametrize(
    "ks, chunk_size, size",
    [((1, 2, 4, 8), 1, 300), ((1, 2, 4, 8), 4096, None), ((1, 10, 100, 1000), 7, 700),
     ((1, 10, 100, 1000), 300, None), ((1, 10, 100, 1000), 4096, None)],
)  # fmt: skip
def test_chunked_equals_unchunked_self_retrieval(big_data, ks, chunk_size, size):
    x, y = big_data[0][:size], big_data[1][:size]
    include = recall_metric_names(ks) + ALL_KNN_METRICS
    ours = RecallAtKCalculator(ks, include=include, chunk_size=chunk_size)
    reference = unchunked(ks, include=include)
    assert ours.get_accuracy(x, y) == reference.get_accuracy(x, y)


@pytest.mark.parametrize("chunk_size", [5, 4096])
def test_chunked_equals_unchunked_query_gallery_and_plain_pml(chunk_size):
    x, y = clustered(300, 2, 10, 16, 0.8, seed=12)
    q = np.arange(len(y)) % 3 == 0
    ks = (1, 10, 20, 30, 40)
    include = recall_metric_names(ks) + ALL_KNN_METRICS
    ours = evaluate_query_gallery(
        RecallAtKCalculator(ks, include=include, chunk_size=chunk_size),
        x[q], y[q], x[~q], y[~q],
    )  # fmt: skip
    assert ours == evaluate_query_gallery(
        unchunked(ks, include=include), x[q], y[q], x[~q], y[~q]
    )
    xn = torch.nn.functional.normalize(torch.from_numpy(x), dim=1)
    plain = AccuracyCalculator(include=ALL_KNN_METRICS, k="max_bin_count")
    plain = plain.get_accuracy(xn[q], y[q], xn[~q], y[~q], False)
    for name in ALL_KNN_METRICS:
        assert ours[name] == plain[name], name


def test_chunked_ref_includes_query_with_explicit_reference():
    # the queries are the first rows of the reference set: self excluded by index
    x, y = tie_free(*clustered(80, 2, 8, 8, 0.8, seed=13))
    q = len(y) // 2
    ks = (1, 4, 50)
    include = recall_metric_names(ks) + ALL_KNN_METRICS
    ours = RecallAtKCalculator(ks, include=include, chunk_size=16)
    ours = ours.get_accuracy(x[:q], y[:q], x, y, ref_includes_query=True)
    reference = unchunked(ks, include=include).get_accuracy(
        x[:q], y[:q], x, y, ref_includes_query=True
    )
    assert ours == reference
    with pytest.raises(ValueError, match="first len\\(query\\) reference"):
        RecallAtKCalculator(ks).get_accuracy(
            x[:q], y[:q], x[::-1].copy(), y[::-1].copy(), ref_includes_query=True
        )


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_chunked_search_matches_brute_force_neighbours(backend):
    from pml_soproxy.evaluation import chunked_knn
    from tests.references import knn_brute_force

    x, _ = clustered(20, 2, 6, 8, 0.8, seed=14)
    x = torch.from_numpy(x)
    for exclude_self in (True, False):
        expected = knn_brute_force(x, x, 12, exclude_self)
        got = torch.cat(
            [i for _, _, i in chunked_knn(x, x, 12, exclude_self, 7, backend)]
        )
        assert torch.equal(got, expected), (backend, exclude_self)
    q = x[:9] + 0.05
    got = torch.cat([i for _, _, i in chunked_knn(q, x, 5, False, 4, backend)])
    assert torch.equal(got, knn_brute_force(q, x, 5, False))


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_self_not_among_its_neighbours_drops_the_last(backend):
    # five identical points: a query's own row may rank anywhere among the ties;
    # where it is missing from the k + 1 found, the last one is dropped (PML)
    from pml_soproxy.evaluation import chunked_knn

    x = torch.ones(5, 3)
    for _, distances, indices in chunked_knn(x, x, 2, True, 2, backend):
        assert indices.shape == distances.shape == (len(indices), 2)
    found = torch.cat([i for _, _, i in chunked_knn(x, x, 2, True, 2, backend)])
    assert found.shape == (5, 2)
    assert not (found == torch.arange(5)[:, None]).any()
    assert all(len(set(row.tolist())) == 2 for row in found)


def test_torch_backend_matches_brute_force_and_faiss(big_data):
    ks = (1, 10, 100, 1000)
    x, y = tie_free(*clustered(150, 2, 8, 16, 0.9, seed=17))
    expected, _, _ = brute_force_recall(x, y, x, y, ks, True)
    torch_calc = RecallAtKCalculator(ks, knn_backend="torch", chunk_size=333)
    assert_recalls(torch_calc.get_accuracy(x, y), expected, ks)
    x, y = big_data
    res = torch_calc.get_accuracy(x, y)
    faiss_res = RecallAtKCalculator(ks).get_accuracy(x, y)
    for name in recall_metric_names(ks):
        assert res[name] == faiss_res[name]
    for name in DEFAULT_EXTRA_METRICS:
        assert res[name] == pytest.approx(faiss_res[name], abs=1e-12)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_chunked_ties_and_duplicates_match_brute_force(backend):
    # the handcrafted tie case: exact duplicates, a same-class tie for the first hit
    deg = np.deg2rad([0.0, 0.0, 10.0, 90.0, 100.0])
    x = np.stack([np.cos(deg), np.sin(deg)], 1).astype(np.float32)
    y = np.array([0, 0, 1, 0, 1])
    calc = RecallAtKCalculator((1, 2, 3, 4), knn_backend=backend, chunk_size=2)
    res = calc.get_accuracy(x, y)
    assert [res[f"recall_at_{k}"] for k in (1, 2, 3, 4)] == pytest.approx(
        [0.4, 0.6, 0.8, 1.0], abs=1e-12
    )
    res = evaluate_query_gallery(
        RecallAtKCalculator((1, 2), knn_backend=backend), x[3:4], y[3:4], x, y
    )
    assert res["recall_at_1"] == 1.0  # its own copy in the gallery counts


def test_map_at_r_and_r_precision_match_loop_reference():
    from tests.references import knn_brute_force, precision_metrics_loop

    x, y = tie_free(*clustered(40, 2, 12, 8, 0.9, seed=15))
    counts = np.bincount(y)
    relevant = counts[y] - 1
    r = relevant.max()
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    neighbours = knn_brute_force(xn, xn, r, True).numpy()
    average_precision, r_precision = precision_metrics_loop(y[neighbours], y, relevant)
    for chunk_size in (3, None):  # the vectorised mask and PML's own
        res = RecallAtKCalculator((1,), chunk_size=chunk_size).get_accuracy(x, y)
        assert res["mean_average_precision_at_r"] == pytest.approx(
            np.mean(average_precision), abs=1e-12
        )
        assert res["r_precision"] == pytest.approx(np.mean(r_precision), abs=1e-12)
        assert 0 < res["mean_average_precision_at_r"] < 1


def test_label_statistics_equal_pml():
    from pytorch_metric_learning.utils.accuracy_calculator import (
        get_label_match_counts,
        get_lone_query_labels,
    )

    from pml_soproxy.evaluation import _label_statistics

    query = torch.tensor([3.0, 1.0, 1.0, 7.0, 2.0, 3.0, 9.0])
    reference = torch.tensor([1.0, 3.0, 2.0, 2.0, 5.0, 3.0, 3.0])
    for ref, self_included in ((reference, False), (query, True)):
        (unique, counts), lone, not_lone, relevant = _label_statistics(
            query, ref, self_included
        )
        pml_counts = get_label_match_counts(query, ref, torch.eq)
        pml_lone, pml_not_lone = get_lone_query_labels(
            query, pml_counts, self_included, torch.eq
        )
        assert torch.equal(unique, pml_counts[0])
        assert torch.equal(counts, pml_counts[1])
        assert torch.equal(lone, pml_lone) and torch.equal(not_lone, pml_not_lone)
        brute = [sum(float(a) == float(b) for b in ref) for a in query]
        assert relevant.tolist() == [c - int(self_included) for c in brute]


def test_custom_label_comparison_takes_pml_label_counts():
    # 2-D labels: equal when all columns match; counted by PML's own loop
    x, y = clustered(40, 2, 6, 8, 0.8, seed=16)
    labels = np.stack([y // 5, y % 5], axis=1)

    def all_equal(a, b):
        return (a == b).all(dim=-1)

    include = ("precision_at_1", "mean_average_precision_at_r", "r_precision")
    kwargs = dict(include=("recall_at_1", "recall_at_4") + include)
    kwargs["label_comparison_fn"] = all_equal
    ours = RecallAtKCalculator((1, 4), chunk_size=9, **kwargs).get_accuracy(x, labels)
    reference = unchunked((1, 4), **kwargs).get_accuracy(x, labels)
    assert ours == reference
    plain = RecallAtKCalculator((1, 4)).get_accuracy(x, y)
    assert ours["recall_at_4"] == plain["recall_at_4"]


class LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


@pytest.mark.slow  # the unchunked reference path takes seconds
def test_memory_is_bounded_by_the_chunk_not_by_queries_times_k(big_data):
    x, y = big_data[0][:1500], big_data[1][:1500]
    n, k, chunk = len(y), 1000, 100
    recorder = LargestTensor()
    calc = RecallAtKCalculator((1, 10, 100, k), chunk_size=chunk)
    with recorder:
        calc.get_accuracy(torch.from_numpy(x), torch.from_numpy(y))
    assert recorder.largest <= chunk * (k + 1)  # one chunk's neighbours
    assert recorder.largest < n * k / 10
    recorder = LargestTensor()
    with recorder:
        unchunked((1, 10, 100, k)).get_accuracy(torch.from_numpy(x), y)
    assert recorder.largest >= n * k  # the recorder sees the N x K matrices


def test_knn_backend_selection(monkeypatch):
    import pml_soproxy.evaluation as evaluation
    from pml_soproxy.evaluation import knn_backend

    assert knn_backend("cpu") == "faiss"
    assert knn_backend(torch.device("cpu"), "torch") == "torch"
    faiss = evaluation._faiss()
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    assert knn_backend("cuda") == "torch"  # no faiss-gpu: exact search on the GPU
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    assert knn_backend("cuda") == "faiss-gpu"
    with pytest.raises(ValueError, match="needs CUDA embeddings"):
        knn_backend("cpu", "faiss-gpu")
    with pytest.raises(ValueError, match="knn_backend must be one of"):
        knn_backend("cpu", "annoy")
    monkeypatch.setattr(evaluation, "_faiss", lambda: None)
    assert knn_backend("cpu") == knn_backend("cuda") == "torch"
    with pytest.raises(ValueError, match="pip install faiss-cpu"):
        knn_backend("cpu", "faiss")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"chunk_size": 0}, "chunk_size must be a positive integer or None, got 0"),
        ({"chunk_size": 2.5}, "chunk_size must be a positive integer or None"),
        ({"knn_backend": "gpu"}, "knn_backend must be one of"),
    ],
)
def test_bad_search_settings(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", "\\(")):
        RecallAtKCalculator(**kwargs)


def test_own_knn_func_is_called_once_on_all_queries(big_data):
    x, y = big_data
    calls = []

    class Counting(RecordingKNN):
        def __call__(self, query, *args, **kwargs):
            calls.append(len(query))
            return super().__call__(query, *args, **kwargs)

    RecallAtKCalculator((1, 10), knn_func=Counting(), chunk_size=16).get_accuracy(x, y)
    assert calls == [len(y)]


@pytest.mark.parametrize("first_pass_k", [1, 3])
def test_second_pass_for_queries_without_an_early_hit(
    big_data, monkeypatch, first_pass_k
):
    # a first pass of 1 or 3 neighbours leaves many queries to the full search
    import pml_soproxy.evaluation as evaluation

    x, y = big_data[0][:900], big_data[1][:900]
    ks = (1, 2, 10, 100, 800)
    include = recall_metric_names(ks) + ALL_KNN_METRICS
    reference = unchunked(ks, include=include)
    expected_self = reference.get_accuracy(x, y)
    q = np.arange(len(y)) % 4 == 0
    expected_gallery = evaluate_query_gallery(reference, x[q], y[q], x[~q], y[~q])
    monkeypatch.setattr(evaluation, "_FIRST_PASS_K", first_pass_k)
    for backend in ("faiss", "torch"):
        calc = RecallAtKCalculator(ks, include=include, chunk_size=64,
                                   knn_backend=backend)  # fmt: skip
        got = calc.get_accuracy(x, y)
        for name in recall_metric_names(ks):
            assert got[name] == expected_self[name], (backend, name)
        got = evaluate_query_gallery(calc, x[q], y[q], x[~q], y[~q])
        for name in recall_metric_names(ks):
            assert got[name] == expected_gallery[name], (backend, name)
        assert 0 < got["recall_at_1"] < got["recall_at_100"] < 1


def test_chunked_search_of_some_queries_excludes_their_own_rows():
    from pml_soproxy.evaluation import chunked_knn
    from tests.references import knn_brute_force

    x, _ = clustered(20, 2, 6, 8, 0.8, seed=18)
    x = torch.from_numpy(x)
    rows = torch.tensor([3, 0, 17, 8, 40])
    expected = knn_brute_force(x, x, 6, True)[rows]
    for backend in ("faiss", "torch"):
        found = torch.cat([i for _, _, i in chunked_knn(
            x[rows], x, 6, True, 2, backend, query_rows=rows)])  # fmt: skip
        assert torch.equal(found, expected), backend
