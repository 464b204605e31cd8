"""Evaluation at SOP scale: wall time and peak memory of Recall@K + MAP@R + R-precision.

Embeddings: --size (default 60,502) unit vectors of --dims (384) dimensions in
--classes (11,316) classes of 2-12 items (mean ~5.3, like SOP's test split), each item
its class centre plus Gaussian noise (--noise), so that Recall@K, MAP@R and
R-precision are far from 0 and 1. Every item queries all others (ref_includes_query).

Variants, each in its own subprocess (peak = peak resident set size above the
loaded embeddings; CUDA: max allocated):
  ours          pml_soproxy RecallAtKCalculator.for_dataset("sop"): R@1/10/100/1000,
                precision_at_1, MAP@R, R-precision
  pml_k1000     PML AccuracyCalculator(include=(precision_at_1, MAP@R, R-precision),
                k=1000) plus a hand-rolled Recall@K from the same kNN result (PML has
                no R@K for K > 1; its kNN function is wrapped to keep the indices)
  pml_common    the same PML calculator without the hand-rolled recall
  pml_default   PML's default k="max_bin_count" (12 neighbours here) with the three
                metrics: what PML computes when no R@K is asked for (cannot give R@K)
  chunked_faiss a prototype of a bounded-memory evaluation (see chunked_metrics):
                query chunks of 4096 rows, faiss IndexFlatIP, keeps only first-hit
                ranks and R columns of neighbour labels
  chunked_torch the same with a matmul + topk kNN per chunk instead of faiss
(pml_common, the PML calculator of pml_k1000 without the recall, can be added with
--variants.)

    python benchmarks/bench_evaluation.py
    python benchmarks/bench_evaluation.py --device cuda
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from benchutil import meta, peak_rss_bytes, rss_bytes, synchronize, table, write_json

VARIANTS = ["ours", "pml_k1000", "pml_default", "chunked_faiss", "chunked_torch"]
COMMON = ("precision_at_1", "mean_average_precision_at_r", "r_precision")
SOP_K = (1, 10, 100, 1000)


def make_embeddings(size, classes, dims, noise, seed=0):
    rng = np.random.default_rng(seed)
    counts = np.clip(2 + rng.poisson(size / classes - 2, classes), 2, 12)
    while counts.sum() != size:  # adjust to exactly `size` items, staying in 2..12
        i = rng.integers(classes)
        if counts.sum() < size and counts[i] < 12:
            counts[i] += 1
        elif counts.sum() > size and counts[i] > 2:
            counts[i] -= 1
    labels = np.repeat(np.arange(classes), counts)
    centres = rng.standard_normal((classes, dims)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[labels] + noise / np.sqrt(dims) * rng.standard_normal(
        (size, dims)
    ).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    order = rng.permutation(size)
    return x[order], labels[order].astype(np.int64)


class KeepingKNN:
    """PML's default FaissKNN, keeping the last result for the hand-rolled recall."""

    def __init__(self):
        from pytorch_metric_learning.utils.inference import FaissKNN

        self.knn = FaissKNN()
        self.last = None

    def __call__(self, query, k, reference=None, ref_includes_query=False):
        self.last = self.knn(query, k, reference, ref_includes_query)
        return self.last


def hand_rolled_recall(knn_indices, query_labels, reference_labels, ks):
    """Recall@K from a kNN result (lone queries excluded, as PML's P@1 does)."""
    knn_labels = reference_labels[knn_indices]
    same = knn_labels == query_labels[:, None]
    counts = torch.bincount(reference_labels)
    not_lone = counts[query_labels] > 1  # the query itself is in the reference set
    hit_rank = torch.where(same.any(1), same.to(torch.uint8).argmax(1), same.shape[1])
    return {
        f"recall_at_{k}": float((hit_rank[not_lone] < k).double().mean()) for k in ks
    }


def chunked_metrics(embeddings, labels, ks=SOP_K, chunk=4096, backend="faiss"):
    """Prototype of a bounded-memory evaluation (not in the package): queries are
    searched in chunks of ``chunk`` rows; per chunk only the first-hit rank (for
    Recall@K) and the first R = max class size - 1 neighbour labels (for P@1,
    MAP@R, R-precision) are kept. Memory O(chunk * max K + N * R) instead of
    O(N * max K). Same conventions as RecallAtKCalculator: cosine, self excluded,
    lone queries excluded."""
    import faiss

    x = torch.nn.functional.normalize(embeddings.float(), dim=1)
    n, kmax = len(x), max(ks)
    counts = torch.bincount(labels)
    relevant = counts[labels] - 1  # same-class items other than the query
    width = int(relevant.max())
    first = torch.empty(n, dtype=torch.long)
    top = torch.empty(n, width, dtype=torch.bool)
    if backend == "faiss":
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x.cpu().numpy())
    for s in range(0, n, chunk):
        q = x[s : s + chunk]
        if backend == "faiss":
            _, idx = index.search(q.cpu().numpy(), kmax + 1)
            idx = torch.from_numpy(idx).to(x.device)
        else:
            idx = (q @ x.t()).topk(kmax + 1, dim=1).indices
        own = torch.arange(s, s + len(q), device=x.device)[:, None]
        is_self = idx == own
        is_self[~is_self.any(1), -1] = True  # self not found: drop the last one
        idx = idx[~is_self].view(len(q), kmax)
        same = labels[idx] == labels[s : s + chunk, None]
        first[s : s + chunk] = torch.where(
            same.any(1), same.to(torch.uint8).argmax(1), kmax
        )
        top[s : s + chunk] = same[:, :width]
    keep = relevant > 0
    out = {f"recall_at_{k}": float((first[keep] < k).double().mean()) for k in ks}
    r = relevant[keep]
    hits = top[keep]
    in_r = torch.arange(width)[None, :] < r[:, None]
    rel = hits & in_r
    precision = rel.cumsum(1).double() / torch.arange(1, width + 1)[None, :]
    out["precision_at_1"] = float(hits[:, 0].double().mean())
    out["mean_average_precision_at_r"] = float(((precision * rel).sum(1) / r).mean())
    out["r_precision"] = float((rel.sum(1).double() / r).mean())
    return out


def run_variant(variant, path, device, threads, repeats):
    torch.set_num_threads(threads)
    import faiss

    faiss.omp_set_num_threads(threads)
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    from pml_soproxy import RecallAtKCalculator

    device = torch.device(device)
    data = np.load(path)
    embeddings = torch.from_numpy(data["x"]).to(device)
    labels = torch.from_numpy(data["labels"]).to(device)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = rss_bytes()

    if variant == "ours":
        calculator = RecallAtKCalculator.for_dataset("sop", device=device)

        def evaluate():
            return calculator.get_accuracy(embeddings, labels)

    elif variant.startswith("chunked_"):

        def evaluate():
            return chunked_metrics(embeddings, labels, backend=variant[8:])

    else:
        knn = KeepingKNN()
        if variant not in ("pml_k1000", "pml_common", "pml_default"):
            raise ValueError(f"unknown variant {variant}")
        k = "max_bin_count" if variant == "pml_default" else 1000
        calculator = AccuracyCalculator(
            include=COMMON, k=k, knn_func=knn, device=device
        )

        def evaluate():
            out = calculator.get_accuracy(embeddings, labels)
            if variant == "pml_k1000":
                out.update(hand_rolled_recall(knn.last[1], labels, labels, SOP_K))
            knn.last = None
            return out

    times = []
    for r in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        accuracies = evaluate()
        synchronize(device)
        times.append(time.perf_counter() - start)
        if r == 0:
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device) - base
            else:
                peak = peak_rss_bytes() - base
    return {
        "median_s": statistics.median(times),
        "times_s": times,
        "peak_bytes": max(peak, 0),
        "metrics": {k: float(v) for k, v in accuracies.items()},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--size", type=int, default=60502)
    parser.add_argument("--classes", type=int, default=11316)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--noise", type=float, default=2.0)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--output", default="benchmarks/results/evaluation.json")
    parser.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._child:
        variant, path = args._child
        result = run_variant(variant, path, args.device, args.threads, args.repeats)
        print(json.dumps(result))
        return

    x, labels = make_embeddings(args.size, args.classes, args.dims, args.noise)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "embeddings.npz")
        np.savez(path, x=x, labels=labels)
        for variant in args.variants.split(","):
            print(f"{variant} ...", flush=True)
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--device",
                    args.device,
                    "--threads",
                    str(args.threads),
                    "--repeats",
                    str(args.repeats),
                    "--_child",
                    variant,
                    path,
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            results[variant] = json.loads(out.strip().splitlines()[-1])
            print(
                f"  {results[variant]['median_s']:.1f} s, "
                f"{results[variant]['peak_bytes'] / 2**20:.0f} MiB",
                flush=True,
            )

    names = [f"recall_at_{k}" for k in SOP_K] + list(COMMON)
    rows = []
    for variant, r in results.items():
        rows.append(
            [variant, f"{r['median_s']:.2f}", f"{r['peak_bytes'] / 2**20:.0f}"]
            + [
                f"{100 * r['metrics'][n]:.2f}" if n in r["metrics"] else "-"
                for n in names
            ]
        )
    print(
        f"\n{args.size} x {args.dims} embeddings, {args.classes} classes, "
        f"{args.device}, {args.threads} threads, median of {args.repeats}"
    )
    print(
        table(
            ["variant", "time s", "peak MiB"]
            + ["R@1", "R@10", "R@100", "R@1000", "P@1", "MAP@R", "R-prec"],
            rows,
        )
    )
    agree = {}
    if "ours" in results:
        for variant, r in results.items():
            shared = set(r["metrics"]) & set(results["ours"]["metrics"])
            agree[variant] = max(
                (abs(r["metrics"][n] - results["ours"]["metrics"][n]) for n in shared),
                default=0.0,
            )
        print("max |metric difference| vs ours:", agree)
    if "ours" in results and "pml_k1000" in results:
        ratio_t = results["pml_k1000"]["median_s"] / results["ours"]["median_s"]
        ratio_m = results["pml_k1000"]["peak_bytes"] / max(
            results["ours"]["peak_bytes"], 1
        )
        print(f"pml_k1000 / ours: time {ratio_t:.2f}x, peak memory {ratio_m:.2f}x")
    write_json(
        args.output,
        {
            "meta": meta(
                args,
                size=args.size,
                classes=args.classes,
                dims=args.dims,
                noise=args.noise,
                repeats=args.repeats,
            ),
            "variants": results,
            "max_abs_metric_difference_vs_ours": agree,
        },
    )


if __name__ == "__main__":
    main()
