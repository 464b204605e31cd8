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
    # r_i = u_i^T G u_i - 2 ||u_i||^2 + 1, never forming the C x C matrix.
    # u_i = w_i / max(||w_i||, eps) when normalize, else u_i = w_i.
    # Backward, keeping M = U G from the forward: dL/du_m = 2 g_m M_m + 2 (U H)_m
    # - 4 g_m u_m with H = U^T diag(g) U; for a uniform g (mean or sum reduction)
    # U H = g M, so no extra matrix product. Then through the normalisation:
    # dL/dw = (dL/du - u <u, dL/du>) / ||w||.
    # Written by hand because autograd would keep U and spend 4 extra products;
    # rows are processed in chunks so only M and the gradient are C x D in memory.
    @staticmethod
    def forward(ctx, weights, normalize, chunk_size):
        norms = torch.ones(len(weights), 1, dtype=weights.dtype, device=weights.device)
        if normalize:
            norms = torch.norm(weights, dim=1, keepdim=True).clamp_min(1e-12)
        chunks = list(zip(weights.split(chunk_size), norms.split(chunk_size)))
        gram = weights.new_zeros(weights.shape[1], weights.shape[1])
        for w, n in chunks:
            u = w / n
            gram.addmm_(u.t(), u)
        projected = torch.empty_like(weights)
        losses = torch.empty(len(weights), dtype=weights.dtype, device=weights.device)
        for (w, n), m, r in zip(
            chunks, projected.split(chunk_size), losses.split(chunk_size)
        ):
            u = w / n
            torch.matmul(u, gram, out=m)
            r.copy_(_rowwise_dot(u, m) - 2 * _rowwise_dot(u, u) + 1)
        ctx.save_for_backward(weights, norms, projected)
        ctx.normalize, ctx.chunk_size = normalize, chunk_size
        return losses

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        weights, norms, projected = ctx.saved_tensors
        size = ctx.chunk_size
        g_all = grad_output.unsqueeze(1)
        uniform = bool(torch.all(grad_output == grad_output[0]))
        chunks = list(zip(weights.split(size), norms.split(size), g_all.split(size)))
        if not uniform:
            weighted_gram = weights.new_zeros(weights.shape[1], weights.shape[1])
            for w, n, g in chunks:
                u = w / n
                weighted_gram.addmm_(u.t(), g * u)
        grad = torch.empty_like(weights)
        for (w, n, g), m, out in zip(chunks, projected.split(size), grad.split(size)):
            u = w / n
            if uniform:  # 4 g (m - u)
                torch.sub(m, u, out=out).mul_(4 * g)
            else:  # 2 g m + 2 u H - 4 g u
                torch.matmul(u, weighted_gram, out=out)
                out.add_(g * m).sub_(2 * g * u).mul_(2)
            if ctx.normalize:  # (grad_u - u <u, grad_u>) / ||w||, except where clamped
                radial = _rowwise_dot(u, out).unsqueeze(1)
                radial.masked_fill_(n <= 1e-12, 0)  # F.normalize's eps: u = w / eps
                out.sub_(u.mul_(radial)).div_(n)
        return grad, None, None


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

    def compute_loss(self, weights):
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
                    weights, normalize, self.chunk_size
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
