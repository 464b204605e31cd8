import pytest
import torch
from pytorch_metric_learning.distances import (
    CosineSimilarity,
    DotProductSimilarity,
    LpDistance,
)
from pytorch_metric_learning.losses import (
    ArcFaceLoss,
    CosFaceLoss,
    NormalizedSoftmaxLoss,
    ProxyNCALoss,
    SoftTripleLoss,
)
from pytorch_metric_learning.reducers import (
    AvgNonZeroReducer,
    MeanReducer,
    SumReducer,
    ThresholdReducer,
)
from torch.utils._python_dispatch import TorchDispatchMode

from pml_soproxy import SoftOrthogonalityRegularizer
from pml_soproxy.regularizers.soft_orthogonality_regularizer import (
    _RowwiseSoftOrthogonality,
)
from tests.references import DTYPE_TOLERANCES, so_rows_loop, so_rows_naive

DTYPES = [torch.float16, torch.float32, torch.float64]
# (num_rows, num_dims): C < D uses the C x C Gram, C > D the D x D identity.
SHAPES = [(6, 16), (16, 16), (40, 8)]
DISTANCES = {
    "cosine": (CosineSimilarity, True),
    "raw": (lambda: DotProductSimilarity(normalize_embeddings=False), False),
}


def random_weights(num_rows, num_dims, dtype, seed=0, scale=0.3):
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(num_rows, num_dims, generator=generator, dtype=torch.float64)
    return (weights * scale).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("distance_name", sorted(DISTANCES))
@pytest.mark.parametrize("reducer_class", [MeanReducer, SumReducer])
def test_matches_loop_reference(dtype, shape, distance_name, reducer_class):
    distance_factory, normalize = DISTANCES[distance_name]
    regularizer = SoftOrthogonalityRegularizer(
        distance=distance_factory(), reducer=reducer_class()
    )
    weights = random_weights(*shape, dtype)
    rows = so_rows_loop(weights, normalize)
    expected = rows.mean() if reducer_class is MeanReducer else rows.sum()

    loss = regularizer(weights)

    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    rtol = DTYPE_TOLERANCES[dtype] if dtype != torch.float16 else 1e-6
    # float16 inputs are upcast exactly, so the reference on the same (rounded)
    # values is met to float32 accuracy.
    assert torch.allclose(loss.double(), expected, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("normalize", [True, False])
def test_frobenius_identity(normalize):
    # ||P P^T - I_C||_F^2 = ||P^T P||_F^2 - 2 ||P||_F^2 + C  (method.md, section 1)
    weights = random_weights(30, 7, torch.float64)
    if normalize:
        weights = torch.nn.functional.normalize(weights, dim=1)
    lhs = so_rows_loop(weights, normalize=False).sum()
    rhs = (weights.t() @ weights).pow(2).sum() - 2 * weights.pow(2).sum() + len(weights)
    assert torch.allclose(lhs, rhs, rtol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("distance_name", sorted(DISTANCES))
@pytest.mark.parametrize("reducer_class", [MeanReducer, SumReducer])
def test_gradient_matches_naive_autograd(shape, distance_name, reducer_class):
    distance_factory, normalize = DISTANCES[distance_name]
    regularizer = SoftOrthogonalityRegularizer(
        distance=distance_factory(), reducer=reducer_class()
    )
    weights = random_weights(*shape, torch.float64).requires_grad_()
    (grad,) = torch.autograd.grad(regularizer(weights), weights)

    naive_weights = weights.detach().clone().requires_grad_()
    rows = so_rows_naive(naive_weights, normalize)
    naive_loss = rows.mean() if reducer_class is MeanReducer else rows.sum()
    (expected,) = torch.autograd.grad(naive_loss, naive_weights)
    assert torch.allclose(grad, expected, rtol=1e-10, atol=1e-12)


def test_gradient_with_non_uniform_row_weights():
    # A reducer that weights rows unequally takes the general backward branch.
    weights = random_weights(40, 8, torch.float64).requires_grad_()
    row_weights = torch.rand(40, dtype=torch.float64)
    rows = SoftOrthogonalityRegularizer().compute_loss(weights)["loss"]["losses"]
    (grad,) = torch.autograd.grad((rows * row_weights).sum(), weights)

    naive_weights = weights.detach().clone().requires_grad_()
    naive = (so_rows_naive(naive_weights, normalize=True) * row_weights).sum()
    (expected,) = torch.autograd.grad(naive, naive_weights)
    assert torch.allclose(grad, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("chunk_size", [5, 1024])
def test_custom_backward_passes_gradcheck(normalize, chunk_size):
    weights = random_weights(12, 5, torch.float64).requires_grad_()

    def rows(w):  # any row weights: the general backward branch
        return _RowwiseSoftOrthogonality.apply(w, normalize, chunk_size)

    def weighted(w):
        return rows(w) * torch.arange(1.0, 13.0, dtype=torch.float64)

    def mean_of_rows(w):  # equal row weights promised: the fused branch
        return _RowwiseSoftOrthogonality.apply(w, normalize, chunk_size, True).mean()

    assert torch.autograd.gradcheck(rows, (weights,))
    assert torch.autograd.gradcheck(weighted, (weights,))
    assert torch.autograd.gradcheck(mean_of_rows, (weights,))


def so_backward_node(loss):
    """The custom Function's node under the reducer's output."""
    nodes = [loss.grad_fn]
    while nodes:
        node = nodes.pop()
        if node is None:
            continue
        if "RowwiseSoftOrthogonality" in type(node).__name__:
            return node
        nodes.extend(next_node for next_node, _ in node.next_functions)
    raise AssertionError("no _RowwiseSoftOrthogonality in the graph")


@pytest.mark.parametrize(
    "reducer, uniform",
    [(MeanReducer(), True), (SumReducer(), False), (ThresholdReducer(low=1.0), False),
     (AvgNonZeroReducer(), False)],
)  # fmt: skip
def test_uniform_backward_is_chosen_from_the_reducer_not_the_device(reducer, uniform):
    weights = random_weights(40, 8, torch.float64).requires_grad_()
    loss = SoftOrthogonalityRegularizer(reducer=reducer)(weights)
    assert so_backward_node(loss).uniform_grad is uniform
    (grad,) = torch.autograd.grad(loss, weights)
    naive_weights = weights.detach().clone().requires_grad_()
    rows = so_rows_naive(naive_weights, normalize=True)
    naive = SoftOrthogonalityRegularizer(reducer=reducer).reducer(
        {"loss": {"losses": rows, "indices": torch.arange(40),
                  "reduction_type": "element"}}, None, None,
    )  # fmt: skip
    (expected,) = torch.autograd.grad(naive, naive_weights)
    assert torch.allclose(grad, expected, rtol=1e-10, atol=1e-12)
    # compute_loss on its own makes no promise about how its rows are weighted
    rows = SoftOrthogonalityRegularizer(reducer=reducer).compute_loss(weights)
    assert so_backward_node(rows["loss"]["losses"]).uniform_grad is False


@pytest.mark.parametrize("chunk_size", [1, 7, 40, 4096])
def test_row_chunking_does_not_change_values_or_gradients(chunk_size):
    weights = random_weights(40, 8, torch.float64).requires_grad_()
    loss = SoftOrthogonalityRegularizer(chunk_size=chunk_size)(weights)
    (grad,) = torch.autograd.grad(loss, weights)
    naive_weights = weights.detach().clone().requires_grad_()
    naive = so_rows_naive(naive_weights, normalize=True).mean()
    (expected,) = torch.autograd.grad(naive, naive_weights)
    assert torch.allclose(loss, naive, rtol=1e-12)
    assert torch.allclose(grad, expected, rtol=1e-10, atol=1e-12)


def test_zero_row_gives_finite_values_like_pml_normalisation():
    weights = random_weights(40, 8, torch.float64)
    weights[3] = 0
    weights.requires_grad_()
    loss = SoftOrthogonalityRegularizer()(weights)
    (grad,) = torch.autograd.grad(loss, weights)
    naive_weights = weights.detach().clone().requires_grad_()
    naive = so_rows_naive(naive_weights, normalize=True).mean()
    (expected,) = torch.autograd.grad(naive, naive_weights)
    assert torch.isfinite(grad).all()
    assert torch.allclose(loss, naive, rtol=1e-12)
    assert torch.allclose(grad, expected, rtol=1e-8, atol=1e-10)


def test_non_euclidean_normalisation_is_respected():
    distance = DotProductSimilarity(normalize_embeddings=True, p=3)
    weights = random_weights(40, 8, torch.float64)
    loss = SoftOrthogonalityRegularizer(distance=distance)(weights)
    unit = weights / weights.abs().pow(3).sum(1, keepdim=True).pow(1 / 3)
    expected = so_rows_loop(unit, normalize=False).mean()
    assert torch.allclose(loss, expected, rtol=1e-10)


def test_float16_gradient_comes_back_in_float16():
    weights = random_weights(40, 8, torch.float16).requires_grad_()
    SoftOrthogonalityRegularizer()(weights).backward()
    assert weights.grad.dtype == torch.float16
    assert torch.isfinite(weights.grad).all()


class ShapeRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.shapes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor):
                self.shapes.add(tuple(tensor.shape))
        return out


def test_never_builds_a_class_by_class_matrix_when_classes_exceed_dims():
    num_rows, num_dims = 300, 12
    weights = random_weights(num_rows, num_dims, torch.float32).requires_grad_()
    recorder = ShapeRecorder()
    with recorder:
        SoftOrthogonalityRegularizer()(weights).backward()
    assert (num_dims, num_dims) in recorder.shapes  # the recorder does see matrices
    assert not any(
        len(s) == 2 and s[0] == num_rows and s[1] == num_rows for s in recorder.shapes
    )


def test_autocast_does_not_lower_precision():
    weights = random_weights(40, 8, torch.float32)
    expected = SoftOrthogonalityRegularizer()(weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = SoftOrthogonalityRegularizer()(weights)
    assert loss.dtype == torch.float32
    assert torch.allclose(loss, expected, rtol=1e-6)


def test_collect_stats_records_frobenius_value():
    weights = random_weights(40, 8, torch.float64)
    regularizer = SoftOrthogonalityRegularizer(collect_stats=True)
    regularizer(weights)
    expected = so_rows_loop(weights, normalize=True).sum().item()
    assert "soft_orthogonality" in regularizer._record_these_stats
    assert regularizer.soft_orthogonality == pytest.approx(expected, rel=1e-10)


def test_no_stats_without_collect_stats():
    regularizer = SoftOrthogonalityRegularizer(collect_stats=False)
    regularizer(random_weights(10, 8, torch.float32))
    assert "soft_orthogonality" not in getattr(regularizer, "_record_these_stats", [])
    assert not hasattr(regularizer, "soft_orthogonality")


def test_rejects_a_non_dot_product_distance():
    with pytest.raises(AssertionError, match="DotProductSimilarity"):
        SoftOrthogonalityRegularizer(distance=LpDistance())


def make_loss(loss_class, num_classes, embedding_size, **kwargs):
    if loss_class is SoftTripleLoss:
        return loss_class(num_classes, embedding_size, centers_per_class=2, **kwargs)
    return loss_class(num_classes=num_classes, embedding_size=embedding_size, **kwargs)


def class_weight_rows(loss):
    for name in ("proxies", "W", "fc"):
        if hasattr(loss, name):
            weights = getattr(loss, name)
            return weights if name == "proxies" else weights.t()
    raise AssertionError("unknown weight attribute")


@pytest.mark.parametrize(
    "loss_class",
    [ProxyNCALoss, NormalizedSoftmaxLoss, ArcFaceLoss, CosFaceLoss, SoftTripleLoss],
)
def test_as_weight_regularizer_of_other_pml_losses(loss_class):
    num_classes, embedding_size, reg_weight = 12, 8, 0.5
    torch.manual_seed(0)
    plain = make_loss(loss_class, num_classes, embedding_size)
    regularized = make_loss(
        loss_class,
        num_classes,
        embedding_size,
        weight_regularizer=SoftOrthogonalityRegularizer(),
        weight_reg_weight=reg_weight,
    )
    regularized.load_state_dict(plain.state_dict())
    embeddings = torch.randn(32, embedding_size)
    labels = torch.randint(0, num_classes, (32,))

    rows = class_weight_rows(regularized)
    assert rows.shape[1] == embedding_size
    expected_reg = so_rows_loop(rows, normalize=True).mean().item()
    difference = regularized(embeddings, labels) - plain(embeddings, labels)
    assert difference.item() == pytest.approx(reg_weight * expected_reg, rel=1e-4)
