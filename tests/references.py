"""Independent, deliberately plain reference implementations used by the tests."""

import math

import torch

DTYPE_TOLERANCES = {torch.float16: 1e-2, torch.float32: 1e-5, torch.float64: 1e-10}


def so_rows_loop(weights, normalize):
    """r_i = sum_j (<w_i, w_j> - delta_ij)^2 with one Python loop per (i, j) entry, float64."""
    rows = [[float(v) for v in row] for row in weights.detach().cpu().double()]
    if normalize:
        rows = [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in rows]
    out = []
    for i, w_i in enumerate(rows):
        total = 0.0
        for j, w_j in enumerate(rows):
            dot = sum(a * b for a, b in zip(w_i, w_j))
            total += (dot - (1.0 if i == j else 0.0)) ** 2
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def so_rows_naive(weights, normalize):
    """The C x C form, differentiable: sum over rows of (W W^T - I)^2."""
    if normalize:
        weights = torch.nn.functional.normalize(weights, dim=1)
    gram = weights @ weights.t()
    eye = torch.eye(len(weights), dtype=gram.dtype, device=gram.device)
    return ((gram - eye) ** 2).sum(dim=1)
