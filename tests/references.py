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


def knn_brute_force(query, reference, k, exclude_self):
    """Indices of the k nearest reference rows by squared L2 distance, float64,
    ties in index order; ``exclude_self`` drops reference row i for query i."""
    q = torch.as_tensor(query, dtype=torch.float64).numpy()
    r = torch.as_tensor(reference, dtype=torch.float64).numpy()
    out = []
    for i in range(len(q)):
        row = ((r - q[i]) ** 2).sum(axis=1)
        distances = [(float(row[j]), j) for j in range(len(r))]
        if exclude_self:
            distances = [d for d in distances if d[1] != i]
        out.append([j for _, j in sorted(distances)[:k]])
    return torch.tensor(out, dtype=torch.long)


def precision_metrics_loop(neighbour_labels, query_labels, relevant_counts):
    """(MAP@R, R-precision) per query from its ranked neighbour labels, one loop
    per query: R = relevant_counts[i] (same-class reference items), only the first
    R neighbours count, AP@R = sum over hits at rank j <= R of precision@j / R."""
    average_precision, r_precision = [], []
    for labels, label, r in zip(neighbour_labels, query_labels, relevant_counts):
        hits, total = 0, 0.0
        for j, neighbour in enumerate(list(labels)[:r], start=1):
            if neighbour == label:
                hits += 1
                total += hits / j
        average_precision.append(total / r)
        r_precision.append(hits / min(r, len(labels)))
    return average_precision, r_precision
