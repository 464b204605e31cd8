"""Soft orthogonality regulariser: forward+backward time and peak memory.

Compares, in one run and on the same proxies:
  ours      SoftOrthogonalityRegularizer (D x D Gram when C > D, custom backward)
  naive     the C x C form ||W W^T - I||^2 through autograd
  autograd  the per-row D x D formula through autograd (no custom backward)
  floor     the two (C x D)(D x D)-sized products no exact method can avoid
            (W^T W and W G), no autograd

Time, steady loop: for each --threads value, one process runs every variant
--warmup times (allocations and kernels warmed), then --rounds rounds, each round
calling every variant once in a rotating order; medians over rounds. The naive form
(seconds per call) is timed --naive-repeats times after the loop.

Memory, and the old time figure: each variant in its own process (CUDA: max
allocated; CPU: peak resident set size above the inputs), after a warm-up call on a
small input; that process also times --repeats calls ("per process").

    python benchmarks/bench_regularizer.py                 # SOP and CUB scale, CPU
    python benchmarks/bench_regularizer.py --device cuda --threads 16
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from benchutil import (
    high_water_rss_bytes,
    meta,
    rss_bytes,
    synchronize,
    table,
    write_json,
)

from pml_soproxy import SoftOrthogonalityRegularizer

VARIANTS = ["ours", "naive", "autograd", "floor"]
#: issue 6's targets for C > D (SOP scale): naive / ours time and peak memory at
#: least, ours / floor time at most (steady loop, every thread count)
TARGETS = {"speed_vs_naive": 10.0, "memory_vs_naive": 50.0, "floor_ratio": 1.5}


def naive(weights):
    weights = torch.nn.functional.normalize(weights, dim=1)
    gram = weights @ weights.t()
    eye = torch.eye(len(weights), dtype=gram.dtype, device=gram.device)
    return ((gram - eye) ** 2).sum(dim=1).mean()


def per_row_autograd(weights):
    weights = torch.nn.functional.normalize(weights, dim=1)
    projected = weights @ (weights.t() @ weights)
    rows = (projected * weights).sum(1) - 2 * (weights * weights).sum(1) + 1
    return rows.mean()


def floor(weights):
    with torch.no_grad():
        return weights @ (weights.t() @ weights)


def make_step(variant):
    if variant == "floor":
        return floor
    function = {
        "ours": SoftOrthogonalityRegularizer(),
        "naive": naive,
        "autograd": per_row_autograd,
    }[variant]

    def step(weights):
        weights.grad = None
        function(weights).backward()

    return step


def proxies(num_classes, dims, device):
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(num_classes, dims, generator=generator).to(device)
    return weights.requires_grad_()


def timed(step, weights, device):
    synchronize(device)
    start = time.perf_counter()
    step(weights)
    synchronize(device)
    return time.perf_counter() - start


def isolated(variant, num_classes, dims, device, repeats, threads):
    """One variant alone in this process: peak memory, then `repeats` timings."""
    torch.set_num_threads(threads)
    device = torch.device(device)
    weights = proxies(num_classes, dims, device)
    step = make_step(variant)
    # load every kernel on a small input first, so the memory figure is the
    # variant's working memory, not the code pages of its first call
    step(torch.randn(2 * dims, dims, device=device, requires_grad=True))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = rss_bytes()
    step(weights)  # warm-up, also the memory measurement
    synchronize(device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = high_water_rss_bytes() - base
    times = [timed(step, weights, device) for _ in range(repeats)]
    return {"median_s": statistics.median(times), "min_s": min(times),
            "peak_bytes": max(peak, 0)}  # fmt: skip


def steady(sizes, variants, device, threads, warmup, rounds, naive_repeats):
    """All variants in this process, warmed, interleaved: {size: {variant: ...}}."""
    torch.set_num_threads(threads)
    device = torch.device(device)
    out = {}
    for c, d in sizes:
        weights = proxies(c, d, device)
        fast = [v for v in variants if v != "naive"]
        steps = {v: make_step(v) for v in variants}
        for v in fast:
            for _ in range(warmup):
                steps[v](weights)
        times = {v: [] for v in variants}
        for r in range(rounds):
            for v in fast[r % len(fast) :] + fast[: r % len(fast)]:
                times[v].append(timed(steps[v], weights, device))
        if "naive" in variants:
            steps["naive"](weights)
            times["naive"] = [
                timed(steps["naive"], weights, device) for _ in range(naive_repeats)
            ]
        out[f"{c}x{d}"] = {
            v: {"median_s": statistics.median(t), "min_s": min(t), "calls": len(t)}
            for v, t in times.items()
        }
    return out


def child(args, *extra):
    command = [sys.executable, __file__, "--device", args.device, "--repeats",
               str(args.repeats), "--warmup", str(args.warmup), "--rounds",
               str(args.rounds), "--naive-repeats", str(args.naive_repeats),
               "--sizes", args.sizes, "--variants", args.variants, *extra]  # fmt: skip
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", default="1,2", help="comma-separated counts")
    parser.add_argument("--repeats", type=int, default=5, help="per-process timings")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--naive-repeats", type=int, default=3)
    parser.add_argument(
        "--sizes",
        default="11318x384,11318x512,100x384",
        help="comma-separated CxD (classes x dims)",
    )
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--output", default="benchmarks/results/regularizer.json")
    parser.add_argument("--_isolated", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--_steady", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [tuple(int(n) for n in s.split("x")) for s in args.sizes.split(",")]
    variants = args.variants.split(",")

    if args._isolated:
        variant, c, d, threads = args._isolated
        result = isolated(variant, int(c), int(d), args.device, args.repeats,
                          int(threads))  # fmt: skip
        print(json.dumps(result))
        return
    if args._steady:
        result = steady(sizes, variants, args.device, args._steady, args.warmup,
                        args.rounds, args.naive_repeats)  # fmt: skip
        print(json.dumps(result))
        return

    thread_counts = [int(t) for t in args.threads.split(",")]
    main_threads = max(thread_counts)
    torch.set_num_threads(main_threads)  # recorded by meta()
    run_meta = meta(args, threads=thread_counts, repeats=args.repeats,
                    warmup=args.warmup, rounds=args.rounds,
                    naive_repeats=args.naive_repeats)  # fmt: skip
    loops = {}
    for threads in thread_counts:
        print(f"steady loop, {threads} thread(s) ...", flush=True)
        loops[threads] = child(args, "--_steady", str(threads))
    rows = []
    for c, d in sizes:
        row = {"classes": c, "dims": d}
        for variant in variants:
            print(f"{c}x{d} {variant} alone ...", flush=True)
            alone = child(args, "--_isolated", variant, str(c), str(d),
                          str(main_threads))  # fmt: skip
            loop = {str(t): loops[t][f"{c}x{d}"][variant] for t in thread_counts}
            row[variant] = {
                # the headline figures: steady loop at the largest thread count
                "median_s": loop[str(main_threads)]["median_s"],
                "min_s": loop[str(main_threads)]["min_s"],
                "peak_bytes": alone["peak_bytes"],
                "steady": loop,
                "per_process": {"median_s": alone["median_s"], "min_s": alone["min_s"],
                                "threads": main_threads},  # fmt: skip
            }
        if "ours" in row and "floor" in row:
            row["ours_over_floor"] = {
                f"steady_{t}_threads": row["ours"]["steady"][str(t)]["median_s"]
                / row["floor"]["steady"][str(t)]["median_s"]
                for t in thread_counts
            }
            row["ours_over_floor"][f"per_process_{main_threads}_threads"] = (
                row["ours"]["per_process"]["median_s"]
                / row["floor"]["per_process"]["median_s"]
            )
        rows.append(row)

    headers = ["C x D"] + [f"{v} s (MiB)" for v in variants]
    body = [
        [f"{r['classes']}x{r['dims']}"]
        + [f"{r[v]['median_s']:.4f} ({r[v]['peak_bytes'] / 2**20:.1f})" for v in variants]
        for r in rows
    ]  # fmt: skip
    print(f"\nforward+backward, float32, {args.device}, steady loop at {main_threads} "
          f"threads: median s (peak MiB, own process)")  # fmt: skip
    print(table(headers, body))
    for r in rows:
        line = f"{r['classes']}x{r['dims']}:"
        if "naive" in r and "ours" in r:
            line += (
                f" naive/ours time {r['naive']['median_s'] / r['ours']['median_s']:.1f}x,"
                f" memory {r['naive']['peak_bytes'] / max(r['ours']['peak_bytes'], 1):.1f}x;"
            )  # fmt: skip
        for key, value in r.get("ours_over_floor", {}).items():
            line += f" ours/floor {key} {value:.2f}x;"
        print(line)
    write_json(args.output, {"meta": run_meta, "rows": rows})


if __name__ == "__main__":
    main()
