"""Tests for pml_soproxy.evaluation.knn and .metrics: the chunked exact kNN
search (the default path), backends, label statistics and the two-pass search."""

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from pml_soproxy.evaluation import (
    DEFAULT_EXTRA_METRICS,
    RecallAtKCalculator,
    evaluate_query_gallery,
    recall_metric_names,
)

from .helpers import (
    ALL_KNN_METRICS,
    RecordingKNN,
    assert_recalls,
    brute_force_recall,
    clustered,
    tie_free,
    unchunked,
)


# --------------------------------------------------------------------------- #
# Chunked exact kNN search (the default path)
# --------------------------------------------------------------------------- #
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
    from pml_soproxy.evaluation import knn, knn_backend

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
    monkeypatch.setattr(knn, "_faiss", lambda: None)
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
    from pml_soproxy.evaluation import knn

    x, y = big_data[0][:900], big_data[1][:900]
    ks = (1, 2, 10, 100, 800)
    include = recall_metric_names(ks) + ALL_KNN_METRICS
    reference = unchunked(ks, include=include)
    expected_self = reference.get_accuracy(x, y)
    q = np.arange(len(y)) % 4 == 0
    expected_gallery = evaluate_query_gallery(reference, x[q], y[q], x[~q], y[~q])
    monkeypatch.setattr(knn, "_FIRST_PASS_K", first_pass_k)
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
