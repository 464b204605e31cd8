"""The prepared GPU check: four measurements in one process, one JSON.

Sized to finish in well under 8 minutes on one NVIDIA H200; run through
``benchmarks/gpu_check.sh`` there (it installs the carried wheels first, see
benchmarks/README.md, "GPU check"). Each section is timed on its own, with the
peak GPU memory it allocated (torch.cuda.max_memory_allocated after a reset; the
peak resident set size of the process on CPU), and a failing section is recorded
with its error while the others still run.

  training_step   bench_throughput.py's ``deit-s`` config: bf16 DeiT-S training
                  steps through ``pml-soproxy train``'s recipe (Run(config).train())
                  against a bare loop of the same modules, loss and optimizers on
                  the same batch. Target: overhead (pipeline - its get_batch -
                  bare) / bare <= 5 %; the raw overhead (with the loader) is there too.
  regularizer     bench_regularizer.py, variants ours and floor, at C = 11,318 and
                  D = 384 and 512 (each variant in its own process, its own peak).
                  Target: ours / floor <= 1.3.
  evaluation      pml_soproxy.evaluation.RecallAtKCalculator.for_dataset("sop") on
                  60,502 x 384 synthetic SOP-like embeddings (bench_evaluation.py's
                  make_embeddings) on the device: seconds, metrics, peak memory.
  input_pipeline  bench_input.py on synthetic 500x375 JPEGs: loader images/s, cold
                  and cached, for several worker counts, next to the DeiT-S step.
                  Target: loader / trunk images/s >= 1.2.

``--quick`` shrinks every section to seconds (tiny models and sizes) for the test
on CPU; its figures mean nothing.

    bash benchmarks/gpu_check.sh --wheels benchmarks/cache/wheels --output $OUT/gpu_check.json
    python benchmarks/gpu_check.py --device cpu --quick --output /tmp/gpu_check.json
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from types import SimpleNamespace

import torch
from benchutil import meta, peak_rss_bytes, table, write_json

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = {"training_step": 0.05, "regularizer": 1.3, "input_pipeline": 1.2}
SECTIONS = ("training_step", "regularizer", "evaluation", "input_pipeline")


def training_step(args):
    import bench_throughput

    from pml_soproxy.device import autocast_dtype
    from pml_soproxy.training.loading import auto_num_workers

    name = "tiny" if args.quick else "deit-s"
    options = SimpleNamespace(
        device=args.device,
        tiny_iterations=3,
        deit_s_iterations=3 if args.quick else 30,
        num_workers=0 if args.quick else auto_num_workers(),
        rounds=1 if args.quick else 3,
    )
    row = bench_throughput.bench_config(name, options)
    amp = autocast_dtype(torch.device(args.device), "auto")
    overhead = row["overhead_excluding_loading"]
    return dict(
        row,
        precision=str(amp) if amp is not None else "float32",
        target=TARGETS["training_step"],
        value=overhead,
        met=bool(overhead <= TARGETS["training_step"]),
    )


def regularizer(args):
    sizes = "300x16" if args.quick else "11318x384,11318x512"
    with tempfile.TemporaryDirectory() as tmp:
        output = os.path.join(tmp, "regularizer.json")
        command = [sys.executable, os.path.join(HERE, "bench_regularizer.py"),
                   "--device", args.device, "--sizes", sizes, "--variants",
                   "ours,floor", "--repeats", "3" if args.quick else "50",
                   "--output", output]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(
                f"bench_regularizer.py exited {done.returncode}: "
                f"{done.stderr.strip().splitlines()[-1:] or done.stdout[-500:]}"
            )
        with open(output) as f:
            report = json.load(f)
    rows = []
    for row in report["rows"]:
        ours, floor = row["ours"], row["floor"]
        ratio = ours["median_s"] / floor["median_s"]
        rows.append({"classes": row["classes"], "dims": row["dims"],
                     "ours_s": ours["median_s"], "floor_s": floor["median_s"],
                     "ours_peak_bytes": ours["peak_bytes"],
                     "floor_peak_bytes": floor["peak_bytes"], "ratio": ratio})  # fmt: skip
    worst = max(r["ratio"] for r in rows)
    target = TARGETS["regularizer"]
    return {"rows": rows, "target": target, "value": worst, "met": bool(worst <= target),
            "bench_meta": report.get("meta")}  # fmt: skip


def evaluation(args):
    import bench_evaluation

    from pml_soproxy import RecallAtKCalculator

    size, classes, dims = (2000, 400, 16) if args.quick else (60502, 11316, 384)
    x, labels = bench_evaluation.make_embeddings(size, classes, dims, noise=2.0)
    device = torch.device(args.device)
    embeddings = torch.from_numpy(x).to(device)
    labels = torch.from_numpy(labels).to(device)
    calculator = RecallAtKCalculator.for_dataset("sop", device=device)
    times = []
    for _ in range(1 if args.quick else 3):  # the first includes warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        metrics = calculator.get_accuracy(embeddings, labels)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return {"size": size, "classes": classes, "dims": dims, "seconds": times,
            "value": min(times), "metrics": {k: float(v) for k, v in metrics.items()}}  # fmt: skip


def input_pipeline(args):
    import bench_input

    if args.quick:
        flags = ["--synthetic", "48", "--synthetic-classes", "6", "--synthetic-size",
                 "120", "90", "--batch-size", "12", "--samples-per-class", "2",
                 "--workers", "0", "--cache-modes", "memory", "--batches", "2",
                 "--model", "deit_tiny_patch16_224", "--trunk-batch", "2",
                 "--trunk-repeats", "1"]  # fmt: skip
    else:
        flags = ["--synthetic", "2400", "--synthetic-classes", "60", "--workers",
                 "4,8,auto", "--cache-modes", "memory", "--batches", "10",
                 "--repeats", "2", "--trunk-repeats", "10"]  # fmt: skip
    options = bench_input.parser().parse_args(
        flags + ["--device", args.device, "--threads", str(torch.get_num_threads())]
    )
    result = bench_input.run(options)
    best = max(r["ratio_to_trunk"] for r in result["rows"])
    target = TARGETS["input_pipeline"]
    return dict(result, target=target, value=best, met=bool(best >= target))


def run_section(name, args):
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    print(f"=== {name}", flush=True)
    start = time.perf_counter()
    try:
        out = globals()[name](args)
    except Exception as err:  # recorded, so that the other sections still run
        traceback.print_exc()
        out = {"error": f"{type(err).__name__}: {err}", "met": None}
    out["section_seconds"] = time.perf_counter() - start
    out["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device) if cuda else None
    out["peak_rss_bytes_so_far"] = peak_rss_bytes()
    print(f"=== {name}: {out['section_seconds']:.1f} s", flush=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CPU test)")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--output", default="benchmarks/results/gpu_check.json")
    args = parser.parse_args()
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check.py: --device cuda but CUDA is not available here; "
                         "pass --device cpu --quick to try the script")  # fmt: skip
    sys.path.insert(0, HERE)
    start = time.perf_counter()
    sections = {}
    for name in args.sections.split(","):
        if name not in SECTIONS:
            raise SystemExit(f"gpu_check.py: unknown section {name!r}; sections: "
                             f"{', '.join(SECTIONS)}")  # fmt: skip
        sections[name] = run_section(name, args)
    total = time.perf_counter() - start
    rows = []
    for name, out in sections.items():
        value = out.get("value")
        rows.append([
            name,
            "error" if "error" in out else f"{value:.4g}",
            out.get("target", "-"),
            {True: "yes", False: "no", None: "-"}[out.get("met")],
            f"{out['section_seconds']:.1f}",
            "-" if out["peak_gpu_bytes"] is None
            else f"{out['peak_gpu_bytes'] / 2**20:.0f}",
        ])  # fmt: skip
    print(f"\n{args.device}{' (quick: sizes mean nothing)' if args.quick else ''}, "
          f"total {total:.1f} s")  # fmt: skip
    print(table(["section", "value", "target", "met", "seconds", "peak GPU MiB"], rows))
    print("values: training_step = recipe overhead over the bare loop (fraction); "
          "regularizer = worst ours/floor time; evaluation = best seconds; "
          "input_pipeline = best loader/trunk images/s")  # fmt: skip
    write_json(args.output, {"meta": meta(args, quick=args.quick), "total_seconds":
                             total, "sections": sections})  # fmt: skip


if __name__ == "__main__":
    main()
