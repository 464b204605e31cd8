"""Tests for pml_soproxy.evaluation.calculator, .pml_metrics and .results: Recall@K
against the brute-force reference, ties, lone queries, PML consistency, k handling,
construction and formatting."""

import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from pml_soproxy.evaluation import (
    DEFAULT_EXTRA_METRICS,
    RECALL_AT_K,
    RecallAtKCalculator,
    evaluate_query_gallery,
    format_accuracies,
    recall_metric_names,
)

from .helpers import (
    PML_METRICS,
    RecordingKNN,
    assert_recalls,
    brute_force_recall,
    clustered,
    tie_free,
)


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
