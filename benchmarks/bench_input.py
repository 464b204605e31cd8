"""Input pipeline throughput: can the training loader keep a GPU fed?

In one run, on the same images, times the training DataLoader exactly as
``pml-soproxy train`` builds it (pml_soproxy.training.loading.train_loader:
M-per-class sampler, batch --batch-size, per-sample seeds, pinned memory and
persistent workers on CUDA, the batch copied to the device) with the DeiT train
transform (timm create_transform of deit_small_distilled_patch16_224: random
resized crop to 224 px, flip, colour jitter, normalise), for each worker count
(--workers, ``auto`` = what ``num_workers: auto`` resolves to here) and each
source:
  cold      the image files decoded at every draw (cache_images: none)
  memory    decoded once, shrunk to --cache-size px (cache_images: memory)
  mmap      the same from a memory-mapped file (cache_images: mmap)
and, next to it, the trunk's training step (DeiT-S forward + backward + AdamW,
bf16 autocast on CUDA, float32 on CPU, random init) on --trunk-batch images.

Target: loader images/s / trunk images/s >= 1.2 (the loader keeps ahead of the
step with 20 % to spare) on the machine where it runs. Loader rates are medians
of --repeats passes of --batches batches each, after the first batch of a pass
(worker start-up, reported apart); the cache's build time is reported apart.

Images: --data-root (a folder of class sub-folders; default the shared CUB-100
subset when it is there) or --synthetic N: N JPEGs of --synthetic-size pixels
(CUB's typical 500x375 by default) written to a temporary folder.

    python benchmarks/bench_input.py                                # CPU, CUB-100
    python benchmarks/bench_input.py --synthetic 1200 --workers 1,2
    python benchmarks/bench_input.py --device cuda --synthetic 2400 --workers 4,8,auto
"""

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from benchutil import meta, peak_rss_bytes, synchronize, table, write_json

TARGET_RATIO = 1.2
MODEL = "deit_small_distilled_patch16_224"
SHARED_CUB100 = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "datasets",
    "cub100", "images",
)  # fmt: skip


def write_synthetic(folder, count, size, classes, seed=0):
    """``count`` JPEGs (quality 90) of smooth colour fields plus noise, so that
    they compress and decode like photographs rather than like pure noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = size
    for i in range(count):
        cls = os.path.join(folder, f"class{i % classes:03d}")
        os.makedirs(cls, exist_ok=True)
        coarse = rng.integers(0, 256, (height // 25 + 1, width // 25 + 1, 3), np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
        pixels = np.asarray(image, dtype=np.int16) + rng.integers(
            -12, 13, (height, width, 3), dtype=np.int16
        )
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            os.path.join(cls, f"{i:05d}.jpg"), quality=90
        )
    return folder


def train_transform(model=MODEL):
    import timm.data

    from pml_soproxy.trunks import create_trunk

    trunk = create_trunk(model, pretrained=False)
    config = dict(trunk.data_config)
    return trunk, timm.data.create_transform(**config, is_training=True), config


def loader_pass(dataset, workers, device, args, seed):
    """(seconds to the first batch, images/s over the next --batches batches)."""
    from pytorch_metric_learning.samplers import MPerClassSampler

    from pml_soproxy.training.loading import loader_settings, train_loader

    settings = loader_settings(workers, device)
    sampler = MPerClassSampler(
        dataset.labels,
        m=args.samples_per_class,
        batch_size=args.batch_size,
        length_before_new_iter=(args.batches + 1) * args.batch_size,
    )
    torch.manual_seed(seed)
    loader = train_loader(dataset, args.batch_size, sampler, settings, device)
    start = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    synchronize(device)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.batches):
        images, _ = next(iterator)
    synchronize(device)
    rate = args.batches * args.batch_size / (time.perf_counter() - start)
    assert images.shape[-2:] == (224, 224), images.shape
    del iterator, loader
    return first, rate


def trunk_rate(trunk, device, args):
    """Median seconds of a DeiT-S training step on --trunk-batch images; images/s."""
    from pml_soproxy.device import AutocastTrunk, autocast_dtype

    amp = autocast_dtype(device, "auto")
    model = AutocastTrunk(trunk.to(device).train(), device.type, amp)
    optimizer = torch.optim.AdamW(trunk.parameters(), lr=1e-4)
    images = torch.randn(args.trunk_batch, 3, 224, 224, device=device)
    grad = torch.randn(args.trunk_batch, trunk.output_size, device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(images).backward(grad)
        optimizer.step()

    times = []
    for i in range(args.trunk_repeats + 1):  # the first is the warm-up
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        if i:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    trunk.cpu()
    return {"step_s": median, "batch": args.trunk_batch, "steps_s": times,
            "images_per_s": args.trunk_batch / median,
            "precision": str(amp) if amp is not None else "float32"}  # fmt: skip


def worker_counts(text):
    from pml_soproxy.training.loading import auto_num_workers

    counts = []
    for token in text.split(","):
        n = auto_num_workers() if token.strip() == "auto" else int(token)
        if n not in counts:
            counts.append(n)
    return counts


def run(args):
    """The measurements as a dict (also used by gpu_check.py)."""
    from pml_soproxy.datasets import ImageFolder
    from pml_soproxy.datasets.cache import DecodedImageCache

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.synthetic:
            root = write_synthetic(os.path.join(tmp, "images"), args.synthetic,
                                   tuple(args.synthetic_size), args.synthetic_classes)  # fmt: skip
            data = f"{args.synthetic} synthetic JPEGs, {args.synthetic_size[0]}x{args.synthetic_size[1]}"
        else:
            root = args.data_root
            data = os.path.abspath(root)
        trunk, transform, data_config = train_transform(args.model)
        files = ImageFolder(root, "all", transform)
        counts = worker_counts(args.workers)
        sources = {"cold": files}
        builds = {}
        for mode in args.cache_modes.split(",") if args.cache_modes else []:
            start = time.perf_counter()
            sources[mode] = DecodedImageCache(
                ImageFolder(root, "all"), args.cache_size, mode,
                folder=os.path.join(tmp, "cache"), transform=transform,
                num_workers=max(counts), progress=False,
            )  # fmt: skip
            builds[mode] = {"seconds": time.perf_counter() - start,
                            "bytes": sources[mode].nbytes,
                            "build_workers": max(counts)}  # fmt: skip
            print(f"cache {mode}: built in {builds[mode]['seconds']:.1f} s, "
                  f"{builds[mode]['bytes'] / 2**20:.0f} MiB", flush=True)  # fmt: skip
        print(f"trunk step ({args.model}, batch {args.trunk_batch}) ...", flush=True)
        trunk_result = trunk_rate(trunk, device, args)
        print(f"  {1e3 * trunk_result['step_s']:.1f} ms", flush=True)
        rows = []
        for workers in counts:
            for name, dataset in sources.items():
                firsts, rates = [], []
                for r in range(args.repeats):
                    first, rate = loader_pass(dataset, workers, device, args, seed=r)
                    firsts.append(first)
                    rates.append(rate)
                rate = statistics.median(rates)
                ratio = rate / trunk_result["images_per_s"]
                rows.append({"source": name, "workers": workers,
                             "images_per_s": rate, "passes_images_per_s": rates,
                             "first_batch_s": statistics.median(firsts),
                             "ratio_to_trunk": ratio,
                             "met": bool(ratio >= TARGET_RATIO)})  # fmt: skip
                print(f"{name:>6}, {workers:2d} worker(s): {rate:8.1f} img/s "
                      f"(x{ratio:.2f} the trunk)", flush=True)  # fmt: skip
    return {
        "data": data,
        "model": args.model,
        "images": len(files),
        "classes": files.num_classes,
        "transform": str(transform),
        "data_config": data_config,
        "batch_size": args.batch_size,
        "batches_per_pass": args.batches,
        "passes": args.repeats,
        "cache_size": args.cache_size,
        "cache_builds": builds,
        "trunk": trunk_result,
        "target_ratio": TARGET_RATIO,
        "rows": rows,
        "met_by": [f"{r['source']}/{r['workers']}" for r in rows if r["met"]],
        "peak_rss_bytes": peak_rss_bytes(),
    }


def parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch threads of the main process (trunk; 0 workers)")  # fmt: skip
    p.add_argument("--model", default=MODEL, help="timm trunk: transform and step")
    p.add_argument("--data-root", default=SHARED_CUB100)
    p.add_argument("--synthetic", type=int, default=0, metavar="N")
    p.add_argument("--synthetic-size", type=int, nargs=2, default=(500, 375),
                   metavar=("W", "H"))  # fmt: skip
    p.add_argument("--synthetic-classes", type=int, default=40)
    p.add_argument("--workers", default="0,1,auto",
                   help="comma-separated worker counts; auto = num_workers: auto")  # fmt: skip
    p.add_argument("--cache-modes", default="memory,mmap")
    p.add_argument("--cache-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=120)
    p.add_argument("--samples-per-class", type=int, default=4)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--trunk-batch", type=int, default=120)
    p.add_argument("--trunk-repeats", type=int, default=3)
    p.add_argument("--output", default="benchmarks/results/input.json")
    return p


def main():
    args = parser().parse_args()
    if not args.synthetic and not os.path.isdir(args.data_root):
        raise SystemExit(
            f"bench_input.py: no image folder at {args.data_root}; pass --data-root "
            "DIR (class sub-folders of images) or --synthetic N"
        )
    result = run(args)
    trunk = result["trunk"]
    print(
        f"\n{args.device}, {result['data']} ({result['images']} images, "
        f"{result['classes']} classes), batch {args.batch_size}, DeiT train "
        f"transform at 224 px; trunk step {1e3 * trunk['step_s']:.1f} ms on "
        f"{trunk['batch']} images ({trunk['precision']}) = "
        f"{trunk['images_per_s']:.1f} img/s; target loader/trunk >= {TARGET_RATIO}"
    )
    print(
        table(
            ["source", "workers", "loader img/s", "first batch s", "loader / trunk",
             "target met"],
            [[r["source"], r["workers"], f"{r['images_per_s']:.1f}",
              f"{r['first_batch_s']:.2f}", f"{r['ratio_to_trunk']:.2f}",
              "yes" if r["met"] else "no"] for r in result["rows"]],
        )  # fmt: skip
    )
    for mode, build in result["cache_builds"].items():
        print(f"cache {mode}: {build['bytes'] / 2**20:.0f} MiB, built in "
              f"{build['seconds']:.1f} s with {build['build_workers']} worker(s)")  # fmt: skip
    write_json(args.output, {"meta": meta(args), **result})


if __name__ == "__main__":
    main()
