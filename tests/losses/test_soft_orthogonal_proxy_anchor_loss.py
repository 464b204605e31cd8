import numpy as np
import pytest
import torch
from pytorch_metric_learning.distances import DotProductSimilarity
from pytorch_metric_learning.losses import ProxyAnchorLoss
from pytorch_metric_learning.reducers import MeanReducer
from pytorch_metric_learning.regularizers import LpRegularizer
from pytorch_metric_learning.utils import common_functions as c_f

from pml_soproxy import SoftOrthogonalityRegularizer, SoftOrthogonalProxyAnchorLoss
from tests.references import DTYPE_TOLERANCES, so_rows_loop, so_rows_naive

DTYPES = [torch.float16, torch.float32, torch.float64]


def make_pair(num_classes, embedding_size, dtype=torch.float32, **kwargs):
    """Our loss and PML's ProxyAnchorLoss with identical proxies."""
    ours = SoftOrthogonalProxyAnchorLoss(num_classes, embedding_size, **kwargs)
    theirs = ProxyAnchorLoss(num_classes, embedding_size)
    proxies = ours.proxies.data.clone().to(dtype)
    ours.proxies.data = proxies.clone()
    theirs.proxies.data = proxies.clone()
    return ours, theirs


def batch(num_classes, embedding_size, dtype, batch_size=48, seed=0):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(batch_size, embedding_size, generator=generator)
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator)
    return embeddings.to(dtype), labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num_classes,embedding_size", [(10, 32), (50, 8)])
def test_so_weight_zero_is_exactly_proxy_anchor(dtype, num_classes, embedding_size):
    ours, theirs = make_pair(num_classes, embedding_size, dtype, so_weight=0)
    embeddings, labels = batch(num_classes, embedding_size, dtype)
    ours_emb = embeddings.clone().requires_grad_()
    theirs_emb = embeddings.clone().requires_grad_()

    ours_loss = ours(ours_emb, labels)
    theirs_loss = theirs(theirs_emb, labels)
    ours_loss.backward()
    theirs_loss.backward()

    assert torch.equal(ours_loss, theirs_loss)
    assert torch.equal(ours_emb.grad, theirs_emb.grad)
    assert torch.equal(ours.proxies.grad, theirs.proxies.grad)
    assert ours.sub_loss_names() == theirs.sub_loss_names()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_classes,embedding_size", [(10, 32), (50, 8)])
@pytest.mark.parametrize("so_weight", [0.1, 3.0])
def test_equals_proxy_anchor_plus_weighted_so(
    dtype, num_classes, embedding_size, so_weight
):
    ours, theirs = make_pair(num_classes, embedding_size, dtype, so_weight=so_weight)
    embeddings, labels = batch(num_classes, embedding_size, dtype)
    # Reference in float64 on the same (possibly float16-rounded) values.
    theirs.proxies.data = theirs.proxies.data.double()
    expected = (
        theirs(embeddings.double(), labels)
        + so_weight * so_rows_loop(ours.proxies, normalize=True).mean()
    )

    loss = ours(embeddings, labels)

    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = DTYPE_TOLERANCES[torch.float32 if dtype == torch.float16 else dtype]
    assert loss.item() == pytest.approx(expected.item(), rel=tol * 10, abs=tol * 10)


def test_gradients_match_naive_autograd():
    num_classes, embedding_size, so_weight = 60, 8, 2.0
    ours, theirs = make_pair(
        num_classes, embedding_size, torch.float64, so_weight=so_weight
    )
    embeddings, labels = batch(num_classes, embedding_size, torch.float64)
    ours_emb = embeddings.clone().requires_grad_()
    ours(ours_emb, labels).backward()

    theirs_emb = embeddings.clone().requires_grad_()
    naive = (
        theirs(theirs_emb, labels)
        + so_weight * so_rows_naive(theirs.proxies, normalize=True).mean()
    )
    naive.backward()

    assert torch.allclose(ours_emb.grad, theirs_emb.grad, rtol=1e-10, atol=1e-13)
    assert torch.allclose(ours.proxies.grad, theirs.proxies.grad, rtol=1e-9, atol=1e-12)


def test_float16_embeddings_keep_float32_proxies():
    ours = SoftOrthogonalProxyAnchorLoss(20, 16)
    reference = SoftOrthogonalProxyAnchorLoss(20, 16)
    reference.load_state_dict(ours.state_dict())
    embeddings, labels = batch(20, 16, torch.float16)
    loss = ours(embeddings, labels)
    assert ours.proxies.dtype == torch.float32  # PML alone would cast them to fp16
    assert loss.dtype == torch.float32
    expected = reference(embeddings.float(), labels)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_autocast_keeps_loss_in_float32():
    ours = SoftOrthogonalProxyAnchorLoss(20, 16)
    embeddings, labels = batch(20, 16, torch.float32)
    expected = ours(embeddings, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ours(embeddings, labels)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_large_logits_do_not_overflow_in_half_precision():
    # exp(32 * (cos + 0.1)) overflows float16 once cos > ~0.25.
    ours = SoftOrthogonalProxyAnchorLoss(4, 8)
    labels = torch.tensor([0, 1, 2, 3])
    embeddings = ours.proxies.detach().clone().half()  # cos = 1 with own proxy
    loss = ours(embeddings, labels)
    assert torch.isfinite(loss)


def test_default_regularizer_and_weight():
    loss = SoftOrthogonalProxyAnchorLoss(10, 8)
    assert isinstance(loss.weight_regularizer, SoftOrthogonalityRegularizer)
    assert loss.weight_reg_weight == loss.so_weight == 1.0
    assert "weight_reg_loss" in loss.sub_loss_names()


def test_pml_kwargs_pass_through():
    init = c_f.TorchInitWrapper(torch.nn.init.constant_, val=0.5)
    loss = SoftOrthogonalProxyAnchorLoss(
        10,
        8,
        margin=0.2,
        alpha=16,
        so_weight=0.3,
        distance=DotProductSimilarity(),
        reducer=MeanReducer(),
        weight_init_func=init,
        collect_stats=True,
    )
    assert torch.all(loss.proxies == 0.5)
    assert (loss.margin, loss.alpha) == (0.2, 16)
    assert isinstance(loss.distance, DotProductSimilarity)
    assert isinstance(loss.reducer.reducers["pos_loss"], MeanReducer)
    embeddings, labels = batch(10, 8, torch.float32)
    loss(embeddings, labels)
    assert loss.weight_regularizer.soft_orthogonality > 0


def test_user_supplied_weight_regularizer_takes_so_weight():
    ours = SoftOrthogonalProxyAnchorLoss(
        10, 8, so_weight=0.25, weight_regularizer=LpRegularizer()
    )
    plain = ProxyAnchorLoss(10, 8)
    plain.load_state_dict(ours.state_dict())
    embeddings, labels = batch(10, 8, torch.float32)
    expected = plain(embeddings, labels) + 0.25 * ours.proxies.norm(dim=1).mean()
    assert ours(embeddings, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_so_weight_and_weight_reg_weight_conflict():
    with pytest.raises(ValueError, match="weight_reg_weight"):
        SoftOrthogonalProxyAnchorLoss(10, 8, so_weight=1, weight_reg_weight=2)


@pytest.mark.parametrize("bad_label", [-1, 10, 250])
def test_out_of_range_label_is_named(bad_label):
    loss = SoftOrthogonalProxyAnchorLoss(10, 8)
    embeddings, labels = batch(10, 8, torch.float32)
    labels[5] = bad_label
    with pytest.raises(ValueError, match=rf"label {bad_label} .*num_classes=10"):
        loss(embeddings, labels)


def test_float_labels_are_rejected():
    loss = SoftOrthogonalProxyAnchorLoss(10, 8)
    embeddings, labels = batch(10, 8, torch.float32)
    with pytest.raises(ValueError, match="integer"):
        loss(embeddings, labels.float())


def test_labels_required():
    loss = SoftOrthogonalProxyAnchorLoss(10, 8)
    with pytest.raises(ValueError, match="labels are required"):
        loss(torch.randn(4, 8))


# --------------------------------------------------------------------------- #
# Input guards
# --------------------------------------------------------------------------- #
BAD_SIZES = {
    "zero": 0,
    "negative": -3,
    "integral_float": 8.0,
    "fractional_float": 8.5,
    "bool_true": True,
    "bool_false": False,
    "string": "8",
    "none": None,
    "tensor": torch.tensor([8.0]),
}


@pytest.mark.parametrize("argument", ["num_classes", "embedding_size"])
@pytest.mark.parametrize("bad", list(BAD_SIZES.values()), ids=list(BAD_SIZES))
def test_bad_sizes_are_rejected_with_their_name_and_value(argument, bad):
    sizes = {"num_classes": 10, "embedding_size": 8}
    sizes[argument] = bad
    message = "{} must be an integer >= 1, got {!r}".format(argument, bad)
    with pytest.raises(ValueError) as excinfo:
        SoftOrthogonalProxyAnchorLoss(**sizes)
    assert str(excinfo.value) == message


@pytest.mark.parametrize("size", [1, np.int64(8), torch.Size([8])[0]])
def test_integral_sizes_are_accepted(size):
    loss = SoftOrthogonalProxyAnchorLoss(size, size)
    assert loss.proxies.shape == (size, size)
    assert loss.embedding_size == size
    labels = torch.zeros(4, dtype=torch.long)
    assert torch.isfinite(loss(torch.randn(4, int(size)), labels))


@pytest.mark.parametrize("actual", [384, 511, 513])
def test_embedding_size_mismatch_names_both_sizes(actual):
    loss = SoftOrthogonalProxyAnchorLoss(10, 512)
    embeddings = torch.randn(6, actual)
    labels = torch.randint(0, 10, (6,))
    with pytest.raises(ValueError) as excinfo:
        loss(embeddings, labels)
    assert str(excinfo.value) == (
        "embeddings have {0} dimensions but the loss was built with "
        "embedding_size=512; build the loss with embedding_size={0} or add an "
        "embedder that outputs 512".format(actual)
    )
    assert "mat1 and mat2" not in str(excinfo.value)


@pytest.mark.parametrize("shape", [(8,), (4, 2, 8), (), (4, 8, 1)])
def test_embeddings_must_be_2d(shape):
    loss = SoftOrthogonalProxyAnchorLoss(10, 8)
    with pytest.raises(ValueError) as excinfo:
        loss(torch.randn(shape), torch.zeros(4, dtype=torch.long))
    assert str(excinfo.value) == (
        "embeddings must be a 2D tensor of shape (batch_size, embedding_size), "
        "got shape {}".format(shape)
    )


@pytest.mark.parametrize("num_labels", [0, 47, 49, 96])
def test_label_count_must_match_embeddings(num_labels):
    loss = SoftOrthogonalProxyAnchorLoss(10, 8)
    embeddings, _ = batch(10, 8, torch.float32, batch_size=48)
    labels = torch.randint(0, 10, (num_labels,))
    with pytest.raises(ValueError) as excinfo:
        loss(embeddings, labels)
    assert str(excinfo.value) == (
        "got 48 embeddings but {} labels; pass one label per embedding".format(
            num_labels
        )
    )


@pytest.mark.parametrize("shape", [(48, 1), (), (2, 24)])
def test_labels_must_be_1d(shape):
    loss = SoftOrthogonalProxyAnchorLoss(10, 8)
    embeddings, _ = batch(10, 8, torch.float32, batch_size=48)
    labels = torch.zeros(shape, dtype=torch.long)
    with pytest.raises(ValueError, match=r"labels must be a 1D tensor .*got shape"):
        loss(embeddings, labels)


@pytest.mark.parametrize(
    "embedding_shape, label_shape, message",
    [
        ((4, 7), (4,), "embeddings have 7 dimensions"),
        ((4,), (4,), "embeddings must be a 2D tensor"),
        ((4, 8), (5,), "got 4 embeddings but 5 labels"),
        ((4, 8), (4, 1), "labels must be a 1D tensor"),
    ],
)
def test_shape_guards_read_no_tensor_values(embedding_shape, label_shape, message):
    # meta tensors have shapes but no data: a guard that read a value (a
    # device-to-host synchronization on GPU) would raise RuntimeError instead
    loss = SoftOrthogonalProxyAnchorLoss(10, 8)
    embeddings = torch.empty(embedding_shape, device="meta")
    labels = torch.empty(label_shape, dtype=torch.long, device="meta")
    with pytest.raises(ValueError, match=message):
        loss.check_shapes(embeddings, labels)
    loss.check_shapes(torch.empty(4, 8, device="meta"), None)
    loss.check_shapes(
        torch.empty(4, 8, device="meta"),
        torch.empty(4, dtype=torch.long, device="meta"),
    )
