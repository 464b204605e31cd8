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
