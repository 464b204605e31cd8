"""Tests for pml_soproxy.evaluation.inputs: ValueError before any work, in PML's
formats (torch or numpy)."""

import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from pml_soproxy.evaluation import (
    RecallAtKCalculator,
    evaluate_query_gallery,
)

from .helpers import (
    FORMATS,
    clustered,
    guarded_calculator,
    raises_exactly,
    small_data,
    tie_free,
)


# --------------------------------------------------------------------------- #
# Input guards: ValueError before any work, in PML's formats (torch or numpy)
# --------------------------------------------------------------------------- #
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
    from pml_soproxy.evaluation import inputs

    monkeypatch.setattr(inputs, "_CHUNK_ROWS", 3)
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
