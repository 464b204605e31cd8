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
    # r_i = sum_j (<w_i, w_j> - delta_ij)^2 through the D x D Gram G = W^T W:
    # r_i = w_i^T G w_i - 2 ||w_i||^2 + 1, never forming the C x C matrix.
    # Autograd through this formula would spend 4 extra (C x D)(D x D)-sized
    # products in the backward. Keeping M = W G from the forward, the gradient is
    # dL/dw_m = 2 g_m M_m + 2 (W H)_m - 4 g_m w_m, with H = W^T diag(g) W, and
    # for a uniform g (mean or sum reduction) W H = g M, so no extra product.
    @staticmethod
    def forward(ctx, weights):
        gram = torch.matmul(weights.t(), weights)
        projected = torch.matmul(weights, gram)
        sq_norms = torch.sum(weights * weights, dim=1)
        ctx.save_for_backward(weights, projected)
        return torch.sum(projected * weights, dim=1) - 2 * sq_norms + 1

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        weights, projected = ctx.saved_tensors
        g = grad_output.unsqueeze(1)
        if torch.all(grad_output == grad_output[0]):
            return 4 * g * (projected - weights)
        weighted_gram = torch.matmul(weights.t(), g * weights)
        return (
            2 * g * projected
            + 2 * torch.matmul(weights, weighted_gram)
            - 4 * g * weights
        )


# Soft orthogonality (SO), Bansal et al., "Can We Gain More from Orthogonality
# Regularizations in Training Deep CNNs?", NeurIPS 2018, https://arxiv.org/abs/1810.09102
# applied to class proxies in "Deep Metric Learning with Soft Orthogonal Proxies",
# https://arxiv.org/abs/2306.13055
class SoftOrthogonalityRegularizer(BaseRegularizer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        c_f.assert_distance_type(self, DotProductSimilarity)
        self.add_to_recordable_attributes(
            list_of_names=["soft_orthogonality"], is_stat=True
        )

    def compute_loss(self, weights):
        with autocast_disabled(weights.device.type):
            weights = self.distance.maybe_normalize(at_least_float32(weights), dim=1)
            num_rows, num_dims = weights.shape
            if num_rows <= num_dims:
                gram = torch.matmul(weights, weights.t())
                identity = torch.eye(num_rows, dtype=gram.dtype, device=gram.device)
                losses = torch.sum((gram - identity) ** 2, dim=1)
            else:
                losses = _RowwiseSoftOrthogonality.apply(weights)
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
