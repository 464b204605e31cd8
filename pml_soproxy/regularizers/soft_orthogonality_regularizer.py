import torch
from pytorch_metric_learning.distances import CosineSimilarity, DotProductSimilarity
from pytorch_metric_learning.regularizers import BaseRegularizer
from pytorch_metric_learning.utils import common_functions as c_f


def autocast_disabled(device_type):
    # Under autocast, matmuls run in half precision even on float32 inputs.
    # torch < 1.10 has no torch.autocast (and no CPU autocast).
    if hasattr(torch, "autocast"):
        return torch.autocast(device_type=device_type, enabled=False)
    return torch.cuda.amp.autocast(enabled=False)


def at_least_float32(x):
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    return x


class _RowwiseSoftOrthogonality(torch.autograd.Function):
    # r_i = sum_j (<u_i, u_j> - delta_ij)^2 through the D x D Gram G = U^T U:
    # r_i = <u_i, (U G)_i - u_i> - ||u_i||^2 + 1, never forming the C x C matrix.
    # u_i = w_i / n_i with n_i = max(||w_i||, eps) when normalize, else n_i = 1.
    # The forward keeps E = U G - U. Backward: dL/du_m = 2 g_m E_m + 2 (U H)_m
    # - 2 g_m u_m with H = U^T diag(g) U; for a uniform g (mean or sum reduction)
    # U H = g (U G), so dL/du = 4 g E with no matrix product. Through the
    # normalisation, dL/dw = (dL/du - u <u, dL/du>) / n, and for a uniform g
    # <u, dL/du> = 4 g (r + ||u||^2 - 1) is known from the forward: two fused
    # passes over C x D. Written by hand because autograd would keep U and spend
    # four more products; rows are processed in chunks so that only E and the
    # gradient are C x D in memory. uniform_grad says that the caller reduces the
    # rows with equal weights (a mean or a sum): decided when the graph is built,
    # so that the backward never reads the device to find out.
    @staticmethod
    def forward(ctx, weights, normalize, chunk_size, uniform_grad=False):
        sq_norms = _rowwise_dot(weights, weights).unsqueeze(1)
        norms = torch.ones_like(sq_norms)
        if normalize:
            norms = sq_norms.sqrt().clamp_min(1e-12)
        chunks = list(zip(weights.split(chunk_size), norms.split(chunk_size)))
        excess = torch.empty_like(weights)  # U first, then E = U G - U
        gram = weights.new_zeros(weights.shape[1], weights.shape[1])
        for (w, n), u in zip(chunks, excess.split(chunk_size)):
            torch.div(w, n, out=u)
            gram.addmm_(u.t(), u)
        unit_sq_norms = (sq_norms / norms**2).view(-1)
        losses = 1 - unit_sq_norms
        for u, r in zip(excess.split(chunk_size), losses.split(chunk_size)):
            projected = torch.matmul(u, gram)
            r.add_(_rowwise_dot(u, projected))
            torch.sub(projected, u, out=u)
        losses.sub_(unit_sq_norms)
        ctx.save_for_backward(weights, norms, excess, losses, unit_sq_norms)
        ctx.normalize, ctx.chunk_size = normalize, chunk_size
        ctx.uniform_grad = uniform_grad
        return losses

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        weights, norms, excess, losses, unit_sq_norms = ctx.saved_tensors
        size = ctx.chunk_size
        g = grad_output.unsqueeze(1)
        grad = torch.empty_like(weights)
        if ctx.uniform_grad:
            radial = 4 * g * (losses + unit_sq_norms - 1).unsqueeze(1)
            scale = 4 * g / norms
            coef = radial / norms**2
            coef.masked_fill_(norms <= 1e-12, 0)  # F.normalize's eps: u = w / eps
            pieces = zip(
                weights.split(size), excess.split(size), scale.split(size),
                coef.split(size), grad.split(size),
            )  # fmt: skip
            for w, e, sc, co, out in pieces:
                torch.mul(e, sc, out=out)
                if ctx.normalize:
                    out.addcmul_(w, co, value=-1)
            return grad, None, None, None
        weighted_gram = weights.new_zeros(weights.shape[1], weights.shape[1])
        for w, n, gc in zip(weights.split(size), norms.split(size), g.split(size)):
            u = w / n
            weighted_gram.addmm_(u.t(), gc * u)
        pieces = zip(
            weights.split(size), norms.split(size), g.split(size),
            excess.split(size), grad.split(size),
        )  # fmt: skip
        for w, n, gc, e, out in pieces:
            u = w / n
            torch.matmul(u, weighted_gram, out=out)  # U H
            out.add_(gc * (e - u)).mul_(2)
            if ctx.normalize:
                radial = _rowwise_dot(u, out).unsqueeze(1)
                radial.masked_fill_(n <= 1e-12, 0)
                out.sub_(u.mul_(radial)).div_(n)
        return grad, None, None, None


def _rowwise_dot(a, b):
    # (C,) row-wise dot products without a C x D temporary
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


# Soft orthogonality (SO), Bansal et al., "Can We Gain More from Orthogonality
# Regularizations in Training Deep CNNs?", NeurIPS 2018, https://arxiv.org/abs/1810.09102
# applied to class proxies in "Deep Metric Learning with Soft Orthogonal Proxies",
# https://arxiv.org/abs/2306.13055
class SoftOrthogonalityRegularizer(BaseRegularizer):
    def __init__(self, chunk_size=2048, **kwargs):
        super().__init__(**kwargs)
        c_f.assert_distance_type(self, DotProductSimilarity)
        self.chunk_size = int(chunk_size)
        self.add_to_recordable_attributes(name="chunk_size", is_stat=False)
        self.add_to_recordable_attributes(
            list_of_names=["soft_orthogonality"], is_stat=True
        )

    def forward(self, weights):
        # BaseRegularizer.forward, telling compute_loss whether the reducer weights
        # every row equally: then the backward needs no weighted Gram matrix. The
        # default reducer (MeanReducer) does; any other takes the general backward.
        self.reset_stats()
        uniform = type(self.reducer) is type(self.get_default_reducer())
        loss_dict = self.compute_loss(weights, uniform_row_weights=uniform)
        return self.reducer(loss_dict, weights, c_f.torch_arange_from_size(weights))

    def compute_loss(self, weights, uniform_row_weights=False):
        with autocast_disabled(weights.device.type):
            weights = at_least_float32(weights)
            num_rows, num_dims = weights.shape
            if num_rows <= num_dims:
                weights = self.distance.maybe_normalize(weights, dim=1)
                gram = torch.matmul(weights, weights.t())
                identity = torch.eye(num_rows, dtype=gram.dtype, device=gram.device)
                losses = torch.sum((gram - identity) ** 2, dim=1)
            else:
                normalize = self.distance.normalize_embeddings
                if normalize and self.distance.p != 2:
                    weights, normalize = self.distance.normalize(weights, dim=1), False
                losses = _RowwiseSoftOrthogonality.apply(
                    weights, normalize, self.chunk_size, uniform_row_weights
                )
        self.set_stats(losses)
        return {
            "loss": {
                "losses": losses,
                "indices": c_f.torch_arange_from_size(weights),
                "reduction_type": "element",
            }
        }

    def set_stats(self, losses):
        if self.collect_stats:
            with torch.no_grad():
                self.soft_orthogonality = torch.sum(losses).item()

    def get_default_distance(self):
        return CosineSimilarity()
