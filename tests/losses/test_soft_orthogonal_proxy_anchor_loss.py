import unittest

import numpy as np
import torch
from pytorch_metric_learning.distances import DotProductSimilarity
from pytorch_metric_learning.losses import ProxyAnchorLoss
from pytorch_metric_learning.reducers import MeanReducer
from pytorch_metric_learning.regularizers import LpRegularizer
from pytorch_metric_learning.utils import common_functions as c_f

from pml_soproxy.losses import SoftOrthogonalProxyAnchorLoss
from pml_soproxy.regularizers import SoftOrthogonalityRegularizer

from ..regularizers.test_soft_orthogonality_regularizer import (
    loop_soft_orthogonality,
    naive_soft_orthogonality,
)
from . import TEST_DEVICE, TEST_DTYPES

# (num_classes, embedding_size): fewer proxies than dimensions, and more
SHAPES = [(10, 32), (50, 8)]


def get_pair(num_classes, embedding_size, dtype=None, **kwargs):
    # our loss and ProxyAnchorLoss, with identical proxies (cast to dtype if given)
    loss_func = SoftOrthogonalProxyAnchorLoss(num_classes, embedding_size, **kwargs)
    loss_func = loss_func.to(TEST_DEVICE)
    proxy_anchor_func = ProxyAnchorLoss(num_classes, embedding_size).to(TEST_DEVICE)
    if dtype is not None:
        loss_func.proxies.data = loss_func.proxies.data.type(dtype)
    proxy_anchor_func.proxies.data = loss_func.proxies.data.clone()
    return loss_func, proxy_anchor_func


def get_batch(num_classes, embedding_size, dtype, batch_size=180, seed=None):
    generator = torch.Generator()
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    embeddings = torch.randn(batch_size, embedding_size, generator=generator)
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator)
    return embeddings.type(dtype).to(TEST_DEVICE), labels.to(TEST_DEVICE)


def is_close(actual, expected, rtol, atol=0.0):
    # |actual - expected| <= max(rtol * |expected|, atol), for Python numbers
    return abs(actual - expected) <= max(rtol * abs(expected), atol)


class TestSoftOrthogonalProxyAnchorLoss(unittest.TestCase):
    def test_so_weight_zero_is_proxy_anchor_loss(self):
        for dtype in TEST_DTYPES:
            rtol = 1e-2 if dtype == torch.float16 else 1e-5
            for num_classes, embedding_size in SHAPES:
                loss_func, proxy_anchor_func = get_pair(
                    num_classes, embedding_size, so_weight=0
                )
                self.assertTrue(loss_func.weight_regularizer is None)
                self.assertTrue(
                    loss_func.sub_loss_names() == proxy_anchor_func.sub_loss_names()
                )
                embeddings, labels = get_batch(num_classes, embedding_size, dtype)
                loss = loss_func(embeddings, labels)

                # ProxyAnchorLoss in float64 on the same values
                double_func = ProxyAnchorLoss(num_classes, embedding_size)
                double_func.proxies.data = loss_func.proxies.data.double().clone()
                correct_loss = double_func(embeddings.double(), labels)
                self.assertTrue(torch.isclose(loss.double(), correct_loss, rtol=rtol))

                if dtype == torch.float16:
                    continue
                # without any upcasting, the two losses are the same computation,
                # with float32 proxies and with proxies of the embeddings' dtype
                for proxy_dtype in [None, dtype]:
                    self.check_same_as_proxy_anchor_loss(
                        num_classes, embedding_size, dtype, proxy_dtype
                    )

    def check_same_as_proxy_anchor_loss(
        self, num_classes, embedding_size, dtype, proxy_dtype
    ):
        loss_func, proxy_anchor_func = get_pair(
            num_classes, embedding_size, proxy_dtype, so_weight=0
        )
        embeddings, labels = get_batch(num_classes, embedding_size, dtype, 48, 0)
        ours_emb = embeddings.clone().requires_grad_(True)
        theirs_emb = embeddings.clone().requires_grad_(True)
        loss = loss_func(ours_emb, labels)
        correct_loss = proxy_anchor_func(theirs_emb, labels)
        loss.backward()
        correct_loss.backward()
        self.assertTrue(torch.equal(loss, correct_loss))
        self.assertTrue(torch.equal(ours_emb.grad, theirs_emb.grad))
        self.assertTrue(
            torch.equal(loss_func.proxies.grad, proxy_anchor_func.proxies.grad)
        )

    def test_soft_orthogonal_proxy_anchor_loss(self):
        for dtype in TEST_DTYPES:
            for num_classes, embedding_size in SHAPES:
                for so_weight in [0.1, 3.0]:
                    # float32 proxies, and proxies of the embeddings' dtype
                    for proxy_dtype in [None, dtype]:
                        self.check_soft_orthogonal_proxy_anchor_loss(
                            num_classes, embedding_size, so_weight, dtype, proxy_dtype
                        )

    def check_soft_orthogonal_proxy_anchor_loss(
        self, num_classes, embedding_size, so_weight, dtype, proxy_dtype
    ):
        rtol = 1e-2 if dtype == torch.float16 else 1e-5
        loss_func, _ = get_pair(
            num_classes, embedding_size, proxy_dtype, so_weight=so_weight
        )
        embeddings, labels = get_batch(num_classes, embedding_size, dtype)
        loss = loss_func(embeddings, labels)
        # computed in at least float32, and proxies are not cast to float16
        correct_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        self.assertTrue(loss.dtype == correct_dtype)
        if proxy_dtype is None:
            self.assertTrue(loss_func.proxies.dtype == correct_dtype)

        double_func = ProxyAnchorLoss(num_classes, embedding_size)
        double_func.proxies.data = loss_func.proxies.data.double().clone()
        correct_loss = double_func(embeddings.double(), labels)
        correct_loss += so_weight * torch.mean(
            loop_soft_orthogonality(loss_func.proxies, True)
        )
        self.assertTrue(torch.isclose(loss.double(), correct_loss, rtol=rtol))
        # float16 inputs are upcast exactly: float32 accuracy
        tol = 1e-9 if dtype == torch.float64 else 1e-4
        self.assertTrue(is_close(loss.item(), correct_loss.item(), tol, tol))

    def test_gradients_match_naive_form(self):
        num_classes, embedding_size, so_weight = 60, 8, 2.0
        for dtype in TEST_DTYPES:
            rtol = 1e-2 if dtype == torch.float16 else 1e-5
            loss_func, _ = get_pair(num_classes, embedding_size, so_weight=so_weight)
            embeddings, labels = get_batch(num_classes, embedding_size, dtype)
            embeddings.requires_grad_(True)
            loss_func(embeddings, labels).backward()

            double_func = ProxyAnchorLoss(num_classes, embedding_size)
            double_func.proxies.data = loss_func.proxies.data.double().clone()
            double_embeddings = embeddings.detach().double().requires_grad_(True)
            naive_loss = double_func(double_embeddings, labels)
            naive_loss += so_weight * torch.mean(
                naive_soft_orthogonality(double_func.proxies, True)
            )
            naive_loss.backward()

            for grad, correct_grad, exact_tol in [
                (embeddings.grad, double_embeddings.grad, (1e-10, 1e-13)),
                (loss_func.proxies.grad, double_func.proxies.grad, (1e-9, 1e-12)),
            ]:
                atol = rtol * torch.max(torch.abs(correct_grad)).item()
                grad_rtol = rtol
                if dtype == torch.float64:
                    grad_rtol, atol = exact_tol
                self.assertTrue(
                    torch.allclose(
                        grad.double(), correct_grad, rtol=grad_rtol, atol=atol
                    )
                )

    def test_float16_embeddings_keep_float32_proxies(self):
        loss_func = SoftOrthogonalProxyAnchorLoss(20, 16).to(TEST_DEVICE)
        reference = SoftOrthogonalProxyAnchorLoss(20, 16).to(TEST_DEVICE)
        reference.load_state_dict(loss_func.state_dict())
        embeddings, labels = get_batch(20, 16, torch.float16, 48, 0)
        loss = loss_func(embeddings, labels)
        # PML alone would cast them to float16
        self.assertTrue(loss_func.proxies.dtype == torch.float32)
        self.assertTrue(loss.dtype == torch.float32)
        correct_loss = reference(embeddings.float(), labels)
        self.assertTrue(is_close(loss.item(), correct_loss.item(), 1e-6))

    def test_autocast(self):
        if not hasattr(torch, "autocast"):
            self.skipTest("torch.autocast is not available")
        autocast_dtype = torch.float16 if TEST_DEVICE.type == "cuda" else torch.bfloat16
        loss_func = SoftOrthogonalProxyAnchorLoss(20, 16).to(TEST_DEVICE)
        embeddings, labels = get_batch(20, 16, torch.float32, 48, 0)
        correct_loss = loss_func(embeddings, labels)
        with torch.autocast(TEST_DEVICE.type, dtype=autocast_dtype):
            loss = loss_func(embeddings, labels)
        self.assertTrue(loss.dtype == torch.float32)
        self.assertTrue(is_close(loss.item(), correct_loss.item(), 1e-6))

    def test_large_logits_do_not_overflow_in_half_precision(self):
        # exp(32 * (cos + 0.1)) overflows float16 once cos > ~0.25
        loss_func = SoftOrthogonalProxyAnchorLoss(4, 8).to(TEST_DEVICE)
        labels = torch.tensor([0, 1, 2, 3]).to(TEST_DEVICE)
        # cos = 1 with the own proxy
        embeddings = loss_func.proxies.detach().clone().half()
        loss = loss_func(embeddings, labels)
        self.assertTrue(torch.isfinite(loss))

    def test_weight_regularizer(self):
        loss_func = SoftOrthogonalProxyAnchorLoss(10, 8)
        self.assertTrue(
            isinstance(loss_func.weight_regularizer, SoftOrthogonalityRegularizer)
        )
        self.assertTrue(loss_func.so_weight == loss_func.weight_reg_weight == 1)
        self.assertTrue("weight_reg_loss" in loss_func.sub_loss_names())

        # another weight regularizer is weighted by so_weight
        loss_func, proxy_anchor_func = get_pair(
            10, 8, so_weight=0.25, weight_regularizer=LpRegularizer()
        )
        embeddings, labels = get_batch(10, 8, torch.float32)
        correct_loss = proxy_anchor_func(embeddings, labels)
        correct_loss += 0.25 * torch.mean(torch.norm(loss_func.proxies, p=2, dim=1))
        loss = loss_func(embeddings, labels)
        self.assertTrue(torch.isclose(loss, correct_loss, rtol=1e-6))

        with self.assertRaisesRegex(ValueError, "weight_reg_weight"):
            SoftOrthogonalProxyAnchorLoss(10, 8, so_weight=1, weight_reg_weight=2)

    def test_pml_kwargs_pass_through(self):
        init = c_f.TorchInitWrapper(torch.nn.init.constant_, val=0.5)
        loss_func = SoftOrthogonalProxyAnchorLoss(
            10,
            8,
            margin=0.2,
            alpha=16,
            so_weight=0.3,
            distance=DotProductSimilarity(),
            reducer=MeanReducer(),
            weight_init_func=init,
            collect_stats=True,
        ).to(TEST_DEVICE)
        self.assertTrue(torch.all(loss_func.proxies == 0.5))
        self.assertTrue((loss_func.margin, loss_func.alpha) == (0.2, 16))
        self.assertTrue(isinstance(loss_func.distance, DotProductSimilarity))
        self.assertTrue(isinstance(loss_func.reducer.reducers["pos_loss"], MeanReducer))
        embeddings, labels = get_batch(10, 8, torch.float32, 48, 0)
        loss_func(embeddings, labels)
        self.assertTrue(loss_func.weight_regularizer.soft_orthogonality > 0)

    def test_bad_labels(self):
        loss_func = SoftOrthogonalProxyAnchorLoss(10, 8).to(TEST_DEVICE)
        for bad_label in [-1, 10, 250]:
            embeddings, labels = get_batch(10, 8, torch.float32)
            labels[5] = bad_label
            with self.assertRaisesRegex(
                ValueError, r"label {} .*num_classes=10".format(bad_label)
            ):
                loss_func(embeddings, labels)

        embeddings, labels = get_batch(10, 8, torch.float32)
        with self.assertRaisesRegex(ValueError, "integer"):
            loss_func(embeddings, labels.float())
        with self.assertRaisesRegex(ValueError, "labels are required"):
            loss_func(embeddings)

    def test_bad_sizes(self):
        for name in ["num_classes", "embedding_size"]:
            for bad_size in [
                0,
                -3,
                8.0,
                8.5,
                True,
                False,
                "8",
                None,
                torch.tensor([8.0]),
            ]:
                kwargs = {"num_classes": 10, "embedding_size": 8}
                kwargs[name] = bad_size
                message = "{} must be an integer >= 1, got {}".format(
                    name, repr(bad_size)
                )
                with self.assertRaises(ValueError) as context:
                    SoftOrthogonalProxyAnchorLoss(**kwargs)
                self.assertTrue(str(context.exception) == message)

    def test_integral_sizes_are_accepted(self):
        for size in [1, np.int64(8), torch.Size([8])[0]]:
            loss_func = SoftOrthogonalProxyAnchorLoss(size, size).to(TEST_DEVICE)
            self.assertTrue(loss_func.proxies.shape == (size, size))
            self.assertTrue(loss_func.embedding_size == size)
            embeddings = torch.randn(4, int(size)).to(TEST_DEVICE)
            labels = torch.zeros(4, dtype=torch.long).to(TEST_DEVICE)
            self.assertTrue(torch.isfinite(loss_func(embeddings, labels)))

    def test_bad_shapes(self):
        loss_func = SoftOrthogonalProxyAnchorLoss(10, 8).to(TEST_DEVICE)
        embeddings, labels = get_batch(10, 8, torch.float32)
        with self.assertRaises(ValueError) as context:
            loss_func(embeddings[:, :7], labels)
        self.assertTrue(
            str(context.exception)
            == "embeddings have 7 dimensions but the loss was built with "
            "embedding_size=8; build the loss with embedding_size=7 or add an "
            "embedder that outputs 8"
        )
        with self.assertRaisesRegex(ValueError, "embeddings must be a 2D tensor"):
            loss_func(embeddings[0], labels)
        with self.assertRaisesRegex(ValueError, "embeddings must be a 2D tensor"):
            loss_func(embeddings.unsqueeze(0), labels)
        with self.assertRaisesRegex(ValueError, "got 180 embeddings but 179 labels"):
            loss_func(embeddings, labels[:-1])
        with self.assertRaisesRegex(ValueError, "labels must be a 1D tensor"):
            loss_func(embeddings, labels.unsqueeze(1))

    def test_embedding_size_mismatch_names_both_sizes(self):
        loss_func = SoftOrthogonalProxyAnchorLoss(10, 512).to(TEST_DEVICE)
        for actual in [384, 511, 513]:
            embeddings = torch.randn(6, actual).to(TEST_DEVICE)
            labels = torch.randint(0, 10, (6,)).to(TEST_DEVICE)
            with self.assertRaises(ValueError) as context:
                loss_func(embeddings, labels)
            self.assertTrue(
                str(context.exception)
                == "embeddings have {0} dimensions but the loss was built with "
                "embedding_size=512; build the loss with embedding_size={0} or add "
                "an embedder that outputs 512".format(actual)
            )

    def test_embeddings_must_be_2d(self):
        loss_func = SoftOrthogonalProxyAnchorLoss(10, 8).to(TEST_DEVICE)
        labels = torch.zeros(4, dtype=torch.long).to(TEST_DEVICE)
        for shape in [(8,), (4, 2, 8), (), (4, 8, 1)]:
            with self.assertRaises(ValueError) as context:
                loss_func(torch.randn(shape).to(TEST_DEVICE), labels)
            self.assertTrue(
                str(context.exception)
                == "embeddings must be a 2D tensor of shape (batch_size, "
                "embedding_size), got shape {}".format(shape)
            )

    def test_label_count_must_match_embeddings(self):
        loss_func = SoftOrthogonalProxyAnchorLoss(10, 8).to(TEST_DEVICE)
        embeddings, _ = get_batch(10, 8, torch.float32, 48)
        for num_labels in [0, 47, 49, 96]:
            labels = torch.randint(0, 10, (num_labels,)).to(TEST_DEVICE)
            with self.assertRaises(ValueError) as context:
                loss_func(embeddings, labels)
            self.assertTrue(
                str(context.exception)
                == "got 48 embeddings but {} labels; pass one label per "
                "embedding".format(num_labels)
            )

    def test_labels_must_be_1d(self):
        loss_func = SoftOrthogonalProxyAnchorLoss(10, 8).to(TEST_DEVICE)
        embeddings, _ = get_batch(10, 8, torch.float32, 48)
        for shape in [(48, 1), (), (2, 24)]:
            labels = torch.zeros(shape, dtype=torch.long).to(TEST_DEVICE)
            with self.assertRaisesRegex(
                ValueError, r"labels must be a 1D tensor .*got shape"
            ):
                loss_func(embeddings, labels)

    def test_shape_guards_read_no_tensor_values(self):
        # meta tensors have shapes but no data: a guard that read a value (a
        # device-to-host synchronization on GPU) would raise RuntimeError instead
        try:
            torch.empty(1, device="meta")
        except RuntimeError:
            self.skipTest("this torch has no meta device")
        loss_func = SoftOrthogonalProxyAnchorLoss(10, 8)
        for embedding_shape, label_shape, message in [
            ((4, 7), (4,), "embeddings have 7 dimensions"),
            ((4,), (4,), "embeddings must be a 2D tensor"),
            ((4, 8), (5,), "got 4 embeddings but 5 labels"),
            ((4, 8), (4, 1), "labels must be a 1D tensor"),
        ]:
            embeddings = torch.empty(embedding_shape, device="meta")
            labels = torch.empty(label_shape, dtype=torch.long, device="meta")
            with self.assertRaisesRegex(ValueError, message):
                loss_func.check_shapes(embeddings, labels)
        loss_func.check_shapes(torch.empty(4, 8, device="meta"), None)
        loss_func.check_shapes(
            torch.empty(4, 8, device="meta"),
            torch.empty(4, dtype=torch.long, device="meta"),
        )


if __name__ == "__main__":
    unittest.main()
