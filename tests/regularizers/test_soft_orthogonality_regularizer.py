import unittest

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

from pml_soproxy.regularizers import SoftOrthogonalityRegularizer
from pml_soproxy.regularizers.soft_orthogonality_regularizer import (
    _RowwiseSoftOrthogonality,
)

from . import TEST_DEVICE, TEST_DTYPES

# (num_rows, num_dims): fewer rows than dimensions (C < D uses the C x C Gram),
# as many, and more (C > D uses the D x D form)
SHAPES = [(6, 16), (16, 16), (40, 8)]
# the reference's accuracy on the same (rounded) values, by input dtype:
# float16 inputs are upcast exactly, so they are met to float32 accuracy
STRICT_RTOL = {torch.float16: 1e-6, torch.float32: 1e-5, torch.float64: 1e-10}


def get_distances():
    # (distance, whether the rows are normalized before the dot products)
    return [
        (CosineSimilarity(), True),
        (DotProductSimilarity(normalize_embeddings=False), False),
    ]


def loop_soft_orthogonality(weights, normalize):
    # r_i = sum_j (<w_i, w_j> - delta_ij)^2, one (i, j) pair at a time, in float64
    weights = weights.detach().double()
    if normalize:
        weights = weights / torch.norm(weights, p=2, dim=1, keepdim=True)
    num_rows = weights.size(0)
    losses = torch.zeros(num_rows, dtype=torch.float64, device=weights.device)
    for i in range(num_rows):
        for j in range(num_rows):
            delta = 1.0 if i == j else 0.0
            losses[i] += (torch.sum(weights[i] * weights[j]) - delta) ** 2
    return losses


def naive_soft_orthogonality(weights, normalize):
    # the C x C form, differentiable
    if normalize:
        weights = torch.nn.functional.normalize(weights, p=2, dim=1)
    gram = torch.matmul(weights, weights.t())
    identity = torch.eye(weights.size(0), dtype=weights.dtype, device=weights.device)
    return torch.sum((gram - identity) ** 2, dim=1)


def get_weights(num_rows, num_dims, dtype, requires_grad=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(num_rows, num_dims, generator=generator, dtype=torch.float64)
    weights = (weights * 0.3).type(dtype).to(TEST_DEVICE)
    return weights.requires_grad_(requires_grad)


def reduce(losses, reducer):
    # SumReducer is a subclass of MeanReducer
    if isinstance(reducer, SumReducer):
        return torch.sum(losses)
    return torch.mean(losses)


def naive_gradient(weights, normalize, reduction=torch.mean):
    # the gradient of the naive form, in float64
    naive_weights = weights.detach().double().requires_grad_(True)
    reduction(naive_soft_orthogonality(naive_weights, normalize)).backward()
    return naive_weights.grad


def so_backward_node(loss):
    # the custom Function's node under the reducer's output
    nodes = [loss.grad_fn]
    while nodes:
        node = nodes.pop()
        if node is None:
            continue
        if "RowwiseSoftOrthogonality" in type(node).__name__:
            return node
        nodes.extend(next_node for next_node, _ in node.next_functions)
    raise AssertionError("no _RowwiseSoftOrthogonality in the graph")


def make_loss(loss_class, num_classes, embedding_size, **kwargs):
    if loss_class is SoftTripleLoss:
        return loss_class(num_classes, embedding_size, centers_per_class=2, **kwargs)
    return loss_class(num_classes=num_classes, embedding_size=embedding_size, **kwargs)


def class_weight_rows(loss):
    for name in ["proxies", "W", "fc"]:
        if hasattr(loss, name):
            weights = getattr(loss, name)
            return weights if name == "proxies" else weights.t()
    raise AssertionError("unknown weight attribute")


class TestSoftOrthogonalityRegularizer(unittest.TestCase):
    def test_soft_orthogonality_regularizer(self):
        for dtype in TEST_DTYPES:
            rtol = 1e-2 if dtype == torch.float16 else 1e-5
            strict_rtol = STRICT_RTOL[dtype]
            for num_rows, num_dims in SHAPES:
                for distance, normalize in get_distances():
                    for reducer in [MeanReducer(), SumReducer()]:
                        regularizer = SoftOrthogonalityRegularizer(
                            distance=distance, reducer=reducer
                        )
                        weights = get_weights(num_rows, num_dims, dtype)
                        loss = regularizer(weights)

                        # computed in at least float32
                        correct_dtype = (
                            torch.float64 if dtype == torch.float64 else torch.float32
                        )
                        self.assertTrue(loss.dtype == correct_dtype)
                        correct_losses = loop_soft_orthogonality(weights, normalize)
                        correct_loss = reduce(correct_losses, reducer)
                        self.assertTrue(
                            torch.allclose(
                                loss.double(),
                                correct_loss,
                                rtol=strict_rtol,
                                atol=strict_rtol,
                            )
                        )

                        losses = regularizer.compute_loss(weights)["loss"]["losses"]
                        self.assertTrue(
                            torch.allclose(
                                losses.double(), correct_losses, rtol=rtol, atol=rtol
                            )
                        )

    def test_frobenius_identity(self):
        # ||P P^T - I_C||_F^2 = ||P^T P||_F^2 - 2 ||P||_F^2 + C  (method.md, section 1)
        for normalize in [True, False]:
            weights = get_weights(30, 7, torch.float64)
            if normalize:
                weights = torch.nn.functional.normalize(weights, dim=1)
            lhs = torch.sum(loop_soft_orthogonality(weights, normalize=False))
            rhs = (
                torch.sum(torch.matmul(weights.t(), weights) ** 2)
                - 2 * torch.sum(weights**2)
                + len(weights)
            )
            self.assertTrue(torch.allclose(lhs, rhs, rtol=1e-12))

    def test_gradients_match_naive_form(self):
        for dtype in TEST_DTYPES:
            rtol = 1e-2 if dtype == torch.float16 else 1e-5
            for num_rows, num_dims in SHAPES:
                for distance, normalize in get_distances():
                    for reducer in [MeanReducer(), SumReducer()]:
                        regularizer = SoftOrthogonalityRegularizer(
                            distance=distance, reducer=reducer
                        )
                        weights = get_weights(
                            num_rows, num_dims, dtype, requires_grad=True
                        )
                        regularizer(weights).backward()
                        self.assertTrue(weights.grad.dtype == dtype)

                        correct_grad = naive_gradient(
                            weights, normalize, lambda x: reduce(x, reducer)
                        )
                        grad_rtol = rtol
                        grad_atol = rtol * torch.max(torch.abs(correct_grad)).item()
                        if dtype == torch.float64:
                            grad_rtol, grad_atol = 1e-10, 1e-12
                        self.assertTrue(
                            torch.allclose(
                                weights.grad.double(),
                                correct_grad,
                                rtol=grad_rtol,
                                atol=grad_atol,
                            )
                        )

    def test_gradients_with_unequal_row_weights(self):
        # ThresholdReducer drops some rows, so the rows get unequal gradient weights
        num_rows, num_dims = 40, 8
        for dtype in TEST_DTYPES:
            rtol = 1e-2 if dtype == torch.float16 else 1e-5
            for distance, normalize in get_distances():
                weights = get_weights(num_rows, num_dims, dtype, requires_grad=True)
                correct_losses = loop_soft_orthogonality(weights, normalize)
                sorted_losses = torch.sort(correct_losses)[0]
                low = ((sorted_losses[19] + sorted_losses[20]) / 2).item()
                regularizer = SoftOrthogonalityRegularizer(
                    distance=distance, reducer=ThresholdReducer(low=low)
                )
                loss = regularizer(weights)
                loss.backward()

                correct_loss = torch.mean(correct_losses[correct_losses > low])
                self.assertTrue(torch.isclose(loss.double(), correct_loss, rtol=rtol))

                naive_weights = weights.detach().double().requires_grad_(True)
                naive_losses = naive_soft_orthogonality(naive_weights, normalize)
                torch.mean(naive_losses[naive_losses > low]).backward()
                correct_grad = naive_weights.grad
                atol = rtol * torch.max(torch.abs(correct_grad)).item()
                self.assertTrue(
                    torch.allclose(
                        weights.grad.double(), correct_grad, rtol=rtol, atol=atol
                    )
                )

    def test_gradients_with_any_row_weights(self):
        # a reducer that weights rows unequally takes the general backward branch
        weights = get_weights(40, 8, torch.float64, requires_grad=True)
        row_weights = torch.rand(40, dtype=torch.float64).to(TEST_DEVICE)
        regularizer = SoftOrthogonalityRegularizer()
        losses = regularizer.compute_loss(weights)["loss"]["losses"]
        torch.sum(losses * row_weights).backward()

        correct_grad = naive_gradient(
            weights, True, lambda x: torch.sum(x * row_weights)
        )
        self.assertTrue(
            torch.allclose(weights.grad, correct_grad, rtol=1e-10, atol=1e-12)
        )

    def test_custom_backward_passes_gradcheck(self):
        row_weights = torch.arange(1.0, 13.0, dtype=torch.float64).to(TEST_DEVICE)
        for normalize in [True, False]:
            for chunk_size in [5, 1024]:

                def rows(w):  # any row weights: the general backward branch
                    return _RowwiseSoftOrthogonality.apply(w, normalize, chunk_size)

                def weighted(w):
                    return rows(w) * row_weights

                def mean_of_rows(w):  # equal row weights promised: the fused branch
                    return torch.mean(
                        _RowwiseSoftOrthogonality.apply(w, normalize, chunk_size, True)
                    )

                weights = get_weights(12, 5, torch.float64, requires_grad=True)
                for func in [rows, weighted, mean_of_rows]:
                    self.assertTrue(torch.autograd.gradcheck(func, (weights,)))

    def test_uniform_backward_is_chosen_from_the_reducer_not_the_device(self):
        for reducer, uniform in [
            (MeanReducer(), True),
            (SumReducer(), False),
            (ThresholdReducer(low=1.0), False),
            (AvgNonZeroReducer(), False),
        ]:
            regularizer = SoftOrthogonalityRegularizer(reducer=reducer)
            weights = get_weights(40, 8, torch.float64, requires_grad=True)
            loss = regularizer(weights)
            self.assertTrue(so_backward_node(loss).uniform_grad is uniform)
            loss.backward()

            def naive_reduction(losses):
                loss_dict = {
                    "loss": {
                        "losses": losses,
                        "indices": torch.arange(40, device=losses.device),
                        "reduction_type": "element",
                    }
                }
                return regularizer.reducer(loss_dict, None, None)

            correct_grad = naive_gradient(weights, True, naive_reduction)
            self.assertTrue(
                torch.allclose(weights.grad, correct_grad, rtol=1e-10, atol=1e-12)
            )
            # compute_loss on its own makes no promise about how its rows are weighted
            losses = regularizer.compute_loss(weights)["loss"]["losses"]
            self.assertTrue(so_backward_node(losses).uniform_grad is False)

    def test_row_chunking_does_not_change_values_or_gradients(self):
        for chunk_size in [1, 7, 40, 4096]:
            weights = get_weights(40, 8, torch.float64, requires_grad=True)
            loss = SoftOrthogonalityRegularizer(chunk_size=chunk_size)(weights)
            loss.backward()
            correct_loss = torch.mean(naive_soft_orthogonality(weights.detach(), True))
            correct_grad = naive_gradient(weights, True)
            self.assertTrue(torch.allclose(loss, correct_loss, rtol=1e-12))
            self.assertTrue(
                torch.allclose(weights.grad, correct_grad, rtol=1e-10, atol=1e-12)
            )

    def test_zero_row_gives_finite_values_like_pml_normalization(self):
        weights = get_weights(40, 8, torch.float64)
        weights[3] = 0
        weights.requires_grad_(True)
        loss = SoftOrthogonalityRegularizer()(weights)
        loss.backward()
        correct_loss = torch.mean(naive_soft_orthogonality(weights.detach(), True))
        correct_grad = naive_gradient(weights, True)
        self.assertTrue(torch.all(torch.isfinite(weights.grad)))
        self.assertTrue(torch.allclose(loss, correct_loss, rtol=1e-12))
        self.assertTrue(
            torch.allclose(weights.grad, correct_grad, rtol=1e-8, atol=1e-10)
        )

    def test_non_euclidean_normalization_is_respected(self):
        distance = DotProductSimilarity(normalize_embeddings=True, p=3)
        weights = get_weights(40, 8, torch.float64)
        loss = SoftOrthogonalityRegularizer(distance=distance)(weights)
        unit = weights / torch.sum(torch.abs(weights) ** 3, dim=1, keepdim=True) ** (
            1 / 3
        )
        correct_loss = torch.mean(loop_soft_orthogonality(unit, normalize=False))
        self.assertTrue(torch.allclose(loss, correct_loss, rtol=1e-10))

    def test_float16_gradient_comes_back_in_float16(self):
        weights = get_weights(40, 8, torch.float16, requires_grad=True)
        SoftOrthogonalityRegularizer()(weights).backward()
        self.assertTrue(weights.grad.dtype == torch.float16)
        self.assertTrue(torch.all(torch.isfinite(weights.grad)))

    def test_never_builds_a_class_by_class_matrix_when_classes_exceed_dims(self):
        try:
            from torch.utils._python_dispatch import TorchDispatchMode
        except ImportError:
            self.skipTest("torch.utils._python_dispatch is not available")

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

        num_rows, num_dims = 300, 12
        weights = get_weights(num_rows, num_dims, torch.float32, requires_grad=True)
        recorder = ShapeRecorder()
        with recorder:
            SoftOrthogonalityRegularizer()(weights).backward()
        # the recorder does see matrices
        self.assertTrue((num_dims, num_dims) in recorder.shapes)
        self.assertFalse((num_rows, num_rows) in recorder.shapes)

    def test_as_weight_regularizer(self):
        temperature = 0.1
        reg_weight = 0.1
        for dtype in TEST_DTYPES:
            # fewer classes than dimensions, and more
            for num_classes, embedding_size in [(10, 512), (40, 8)]:
                loss_func = NormalizedSoftmaxLoss(
                    temperature=temperature,
                    num_classes=num_classes,
                    embedding_size=embedding_size,
                    weight_regularizer=SoftOrthogonalityRegularizer(),
                    weight_reg_weight=reg_weight,
                ).to(TEST_DEVICE)

                embeddings = torch.nn.functional.normalize(
                    torch.randn((180, embedding_size), requires_grad=True)
                    .type(dtype)
                    .to(TEST_DEVICE)
                )
                labels = torch.randint(low=0, high=num_classes, size=(180,)).to(
                    TEST_DEVICE
                )

                loss = loss_func(embeddings, labels)
                loss.backward()

                weights = torch.nn.functional.normalize(loss_func.W, p=2, dim=0)
                logits = torch.matmul(embeddings, weights)
                correct_class_loss = torch.nn.functional.cross_entropy(
                    logits / temperature, labels
                )
                correct_reg_loss = torch.mean(
                    loop_soft_orthogonality(loss_func.W.t(), normalize=True)
                )
                correct_total_loss = (
                    correct_class_loss.double() + correct_reg_loss * reg_weight
                )
                rtol = 1e-2 if dtype == torch.float16 else 1e-5
                self.assertTrue(
                    torch.isclose(loss.double(), correct_total_loss, rtol=rtol)
                )

    def test_as_weight_regularizer_of_other_losses(self):
        num_classes, embedding_size, reg_weight = 12, 8, 0.5
        for loss_class in [
            ProxyNCALoss,
            NormalizedSoftmaxLoss,
            ArcFaceLoss,
            CosFaceLoss,
            SoftTripleLoss,
        ]:
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
            plain, regularized = plain.to(TEST_DEVICE), regularized.to(TEST_DEVICE)
            embeddings = torch.randn(32, embedding_size).to(TEST_DEVICE)
            labels = torch.randint(0, num_classes, (32,)).to(TEST_DEVICE)

            rows = class_weight_rows(regularized)
            self.assertTrue(rows.shape[1] == embedding_size)
            correct_reg_loss = torch.mean(loop_soft_orthogonality(rows, True)).item()
            difference = regularized(embeddings, labels) - plain(embeddings, labels)
            correct_difference = reg_weight * correct_reg_loss
            self.assertLessEqual(
                abs(difference.item() - correct_difference),
                1e-4 * abs(correct_difference),
            )

    def test_collect_stats(self):
        for dtype in TEST_DTYPES:
            rtol = 1e-2 if dtype == torch.float16 else 1e-5
            if dtype == torch.float64:
                rtol = 1e-10
            weights = get_weights(40, 8, dtype)
            regularizer = SoftOrthogonalityRegularizer(collect_stats=True)
            regularizer(weights)
            # the squared Frobenius norm ||W W^T - I||^2 of the normalized rows
            correct = torch.sum(loop_soft_orthogonality(weights, True)).item()
            self.assertTrue("soft_orthogonality" in regularizer._record_these_stats)
            self.assertAlmostEqual(
                regularizer.soft_orthogonality / correct, 1, delta=rtol
            )

    def test_no_stats_without_collect_stats(self):
        regularizer = SoftOrthogonalityRegularizer(collect_stats=False)
        regularizer(get_weights(10, 8, torch.float32))
        recorded = getattr(regularizer, "_record_these_stats", [])
        self.assertFalse("soft_orthogonality" in recorded)
        self.assertFalse(hasattr(regularizer, "soft_orthogonality"))

    def test_autocast(self):
        if not hasattr(torch, "autocast"):
            self.skipTest("torch.autocast is not available")
        autocast_dtype = torch.float16 if TEST_DEVICE.type == "cuda" else torch.bfloat16
        weights = get_weights(40, 8, torch.float32)
        correct_loss = SoftOrthogonalityRegularizer()(weights)
        with torch.autocast(TEST_DEVICE.type, dtype=autocast_dtype):
            loss = SoftOrthogonalityRegularizer()(weights)
        self.assertTrue(loss.dtype == torch.float32)
        self.assertTrue(torch.isclose(loss, correct_loss, rtol=1e-6))

    def test_distance_must_be_dot_product(self):
        with self.assertRaisesRegex(AssertionError, "DotProductSimilarity"):
            SoftOrthogonalityRegularizer(distance=LpDistance())


if __name__ == "__main__":
    unittest.main()
