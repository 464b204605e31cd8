"""Soft orthogonality regulariser: forward+backward time and peak memory.

Compares, in one run and on the same proxies:
  ours      SoftOrthogonalityRegularizer (D x D Gram when C > D, custom backward)
  naive     the C x C form ||W W^T - I||^2 through autograd
  autograd  the per-row D x D formula through autograd (no custom backward)
  floor     the two (C x D)(D x D)-sized products no exact method can avoid
            (W^T W and W G), no autograd

Each variant runs in its own subprocess so that its peak memory (CUDA: max allocated;
CPU: peak resident set size above the inputs) is measured alone.

    python benchmarks/bench_regularizer.py                 # SOP and CUB scale, CPU
    python benchmarks/bench_regularizer.py --device cuda
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

from pml_soproxy import SoftOrthogonalityRegularizer

VARIANTS = ["ours", "naive", "autograd", "floor"]


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


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_one(variant, num_classes, dims, device, repeats, threads):
    torch.set_num_threads(threads)
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(num_classes, dims, generator=generator).to(device)
    weights.requires_grad_()
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
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        step(weights)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "peak_bytes": max(peak, 0),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--sizes",
        default="11318x384,11318x512,100x384",
        help="comma-separated CxD (classes x dims)",
    )
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--output", default="benchmarks/results/regularizer.json")
    parser.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._child:
        variant, c, d = args._child
        result = run_one(
            variant, int(c), int(d), args.device, args.repeats, args.threads
        )
        print(json.dumps(result))
        return

    rows = []
    for size in args.sizes.split(","):
        c, d = size.split("x")
        row = {"classes": int(c), "dims": int(d)}
        for variant in args.variants.split(","):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--device",
                    args.device,
                    "--repeats",
                    str(args.repeats),
                    "--threads",
                    str(args.threads),
                    "--_child",
                    variant,
                    c,
                    d,
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            row[variant] = json.loads(out.strip().splitlines()[-1])
        rows.append(row)

    header = f"{'C x D':>12} | " + " | ".join(
        f"{v:>20}" for v in args.variants.split(",")
    )
    print(
        f"forward+backward, float32, {args.device}, {args.threads} threads: median s (peak MiB)"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = [
            f"{row[v]['median_s']:9.4f} ({row[v]['peak_bytes'] / 2**20:7.1f})"
            for v in args.variants.split(",")
        ]
        print(
            f"{row['classes']:>6}x{row['dims']:<5} | "
            + " | ".join(f"{c:>20}" for c in cells)
        )
    for row in rows:
        if "ours" in row and "naive" in row:
            speed = row["naive"]["median_s"] / row["ours"]["median_s"]
            memory = row["naive"]["peak_bytes"] / max(row["ours"]["peak_bytes"], 1)
            line = f"{row['classes']}x{row['dims']}: naive/ours time {speed:.1f}x, memory {memory:.1f}x"
            if "floor" in row:
                line += f"; ours/floor time {row['ours']['median_s'] / row['floor']['median_s']:.2f}x"
            print(line)

    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "device": args.device,
        "torch": torch.__version__,
        "repeats": args.repeats,
    }
    with open(args.output, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
